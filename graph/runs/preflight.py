"""Check, before a run is created, that the planner and critic endpoints answer at all.

A typo in a URL or a server that is not up yet then costs one clear message and nothing on disk,
instead of a failed run in the registry.
"""

from __future__ import annotations

import openai

from graph.context import Context
from tools.llm.endpoint_errors import describe

PREFLIGHT_TIMEOUT_S = 10.0


class EndpointUnreachableError(RuntimeError):
    pass


def check_endpoints(context: Context) -> None:
    seen = set()
    for role in ("planner", "critic"):
        url = getattr(context, f"{role}_base_url")
        key = getattr(context, f"{role}_api_key")
        if url in seen:
            continue
        seen.add(url)
        client = openai.OpenAI(base_url=url, api_key=key, timeout=PREFLIGHT_TIMEOUT_S, max_retries=0)
        try:
            client.models.list()
        except openai.APIConnectionError as exc:  # a timeout is one too
            raise EndpointUnreachableError(
                describe(role, url, getattr(context, f"{role}_model"), exc, PREFLIGHT_TIMEOUT_S)
                + " Nothing was written.") from None
        except openai.APIStatusError:
            pass  # it answers; some OpenAI-style servers have no /models route

"""Check, before a run is created, that what each role's backend needs is there.

``openai`` roles: the endpoint answers at all. ``transformers`` roles (in-process): nothing is
asked of any endpoint; a local model path must be a folder with a ``config.json`` (a Hub id is
left to the loader). A remote generator (``generator_base_url``): its images server answers and
takes the key (without this check a server that is down failed the first generation only after
~15 s of retries, with the run already made). A typo in a URL or path, or a server that is not
up yet, then costs one clear message and nothing on disk, instead of a failed run in the registry.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai

from graph.context import Context
from tools.logs import redact
from tools.llm.endpoint_errors import describe

PREFLIGHT_TIMEOUT_S = 10.0


class EndpointUnreachableError(RuntimeError):
    pass


def check_endpoints(context: Context) -> None:
    seen = set()
    for role in ("planner", "critic"):
        if getattr(context, f"{role}_backend") == "transformers":
            _check_local_model(context, role)
            continue
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
                + " Nothing was written."
            ) from None
        except openai.APIStatusError:
            pass  # it answers; some OpenAI-style servers have no /models route
    if context.generator_base_url:
        check_generator_endpoint(context)


def check_generator_endpoint(context: Context) -> None:
    """The images server at ``generator_base_url`` answers ``GET /models`` (any answer but a
    refused key will do: not every images server has that route)."""
    import httpx

    url = context.generator_base_url.rstrip("/")
    key = context.generator_api_key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    where = f"the generator endpoint {redact(url)} (model {context.generator_model!r})"
    try:
        response = httpx.get(f"{url}/models", headers=headers, timeout=PREFLIGHT_TIMEOUT_S)
    except httpx.TransportError as exc:
        problem = describe(
            "generator",
            url,
            context.generator_model,
            exc,
            PREFLIGHT_TIMEOUT_S,
            start="interleave serve generator --model {model} --port {port}",
            slow="Wait until it has loaded its model (a loading server answers late), then run again.",
        )
        raise EndpointUnreachableError(problem + " Nothing was written.") from None
    if response.status_code in (401, 403):
        problem = "refused the API key" if key else "asks for an API key"
        given = "" if key else " and none was given"
        raise EndpointUnreachableError(
            f"{where} {problem} (HTTP {response.status_code}){given}. Set generator_api_key "
            f"(INTERLEAVE_GENERATOR_API_KEY) to a key that server accepts. Nothing was written."
        )


def _check_local_model(context: Context, role: str) -> None:
    name = getattr(context, f"{role}_model")
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists()
    if looks_local and not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise EndpointUnreachableError(
            f"the {role} model folder {name} {what}. With --{role}-backend transformers, "
            f"--{role}-model must be a saved model folder (save_pretrained) or a Hub id. "
            f"Nothing was written."
        )
    if looks_local and role == "critic":
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if "vision_config" not in config:
            raise EndpointUnreachableError(
                f"the critic model {name} cannot see images (a text-only "
                f"{config.get('model_type', 'model')}: its config.json has no vision_config), and "
                f"the critic judges images. Use a vision-language model folder (e.g. Qwen3-VL) for "
                f"--critic-model. Nothing was written."
            )

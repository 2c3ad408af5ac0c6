"""Our generator as an OpenAI-style images server: one FastAPI app, with or without Ray.

``images_app(generate, model=..., spec=...)`` answers the wire format of
``tools.generator.images_api`` (``POST /v1/images/generations`` JSON, ``POST /v1/images/edits``
multipart with one or more ``image`` / ``image[]`` files, PNG ``b64_json`` answers), so our
graph, ``curl`` and any OpenAI-style client use it alike. ``generate`` is an async callable
taking one request dict (the keyword arguments of ``tools.generator.diffusion.generate``) and
returning its image; who runs it is the caller's choice:

* Ray Serve (``tools.generator.ray_serve``): each replica builds this app with its
  ``@serve.batch`` method as ``generate``, so Ray batches concurrent requests of a replica;
* no Ray (``local_generate``): the in-process batching worker of a loaded pipeline, served by
  uvicorn (``interleave serve generator --no-ray``; also the GPU benchmark's path).

A request the model cannot serve is refused with 400 and the same message the in-process
generator gives (naming the API field), before any GPU work. A generation that fails is
answered with a JSON error whose status says whether to try again (``failure_answer``): a client
that retries 5xx (``tools.generator.images_api``) stops at once on a failure that every retry
would repeat.
"""

import asyncio
import base64
import io
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from PIL import Image, UnidentifiedImageError

from tools.generator import models as generator_models
from tools.generator.images_api import encode_png
from tools.generator.models import ModelSpec

log = logging.getLogger(__name__)

Generate = Callable[[dict[str, Any]], Awaitable[Image.Image]]
#: Request keys and the images-API fields that carry them, for error messages.
_FIELD_NAMES = {"steps": "num_inference_steps", "guidance": "guidance_scale"}


class BadImageRequest(ValueError):
    """A request the server refuses (answered with 400 and this message)."""


def parse_size(size: str | None, spec: ModelSpec) -> tuple[int, int]:
    """``"WxH"`` as integers; None or ``"auto"`` is the model's default size.

    >>> parse_size("64x48", generator_models.FAMILIES["klein"])
    (64, 48)
    """
    if size in (None, "", "auto"):
        return spec.width, spec.height
    try:
        width, height = (int(part) for part in str(size).lower().split("x"))
    except ValueError:
        raise BadImageRequest(f"size={size!r} is not WIDTHxHEIGHT, e.g. {spec.width}x{spec.height}") from None
    return width, height


def build_request(fields: dict[str, Any], images: list[Image.Image], spec: ModelSpec) -> dict[str, Any]:
    """One generation request from the API fields, checked against the model's limits."""
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadImageRequest("prompt is required (a non-empty string)")
    if int(fields.get("n") or 1) != 1:
        raise BadImageRequest(
            f"n={fields.get('n')} is not supported: send one request per image (the server batches concurrent requests)"
        )
    if fields.get("response_format") not in (None, "", "b64_json"):
        raise BadImageRequest(f"response_format={fields['response_format']!r} is not supported; use b64_json")
    width, height = parse_size(fields.get("size"), spec)
    try:
        seed = int(fields["seed"]) if fields.get("seed") not in (None, "") else secrets.randbelow(2**31)
        steps = int(fields.get("num_inference_steps") or spec.steps)
        guidance = float(fields["guidance_scale"]) if fields.get("guidance_scale") not in (None, "") else spec.guidance
    except (TypeError, ValueError) as exc:
        raise BadImageRequest(f"seed, num_inference_steps and guidance_scale must be numbers ({exc})") from None
    request = dict(
        prompt=prompt,
        seed=seed,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        source=images[0] if images else None,
        references=images[1:],
    )
    try:
        generator_models.check_request(
            spec, width=width, height=height, steps=steps, guidance=guidance, n_images=len(images)
        )
        generator_models.check_images(spec, images)
    except ValueError as exc:
        message = str(exc)
        for key, field in _FIELD_NAMES.items():
            message = message.replace(f"{key}=", f"{field}=", 1)
        raise BadImageRequest(message) from None
    return request


def error_body(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    """An OpenAI-style error answer; ``kind`` is ``invalid_request_error`` or ``server_error``."""
    return {"error": {"message": message, "type": kind}}


def failure_answer(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for a generation that raised ``exc``.

    - ``ValueError`` / ``TypeError``: the pipeline refused these arguments (the checks of
      ``build_request`` let them through), so every retry would fail the same way: 422, which
      clients do not retry, with the first line of the pipeline's reason;
    - out of GPU memory: 503, try again later (other requests were sharing the GPU);
    - anything else (a CUDA fault, a replica that died): 500, which clients retry; the message
      names only the exception's class, and the traceback goes to the server's log.

    Ray Serve hands a replica's exception back as a ``RayTaskError`` that also subclasses the
    original class, so the same rule holds through a Serve handle."""
    kind = type(exc).__name__
    if isinstance(exc, MemoryError) or "OutOfMemoryError" in {c.__name__ for c in type(exc).__mro__}:
        return 503, error_body(f"the generator ran out of memory ({kind}); try again", "server_error")
    if isinstance(exc, (ValueError, TypeError)):
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else kind
        return 422, error_body(f"the generator cannot make this image: {reason}")
    return 500, error_body(f"the generation failed on the server ({kind}); its log has the traceback", "server_error")


def answer(image: Image.Image, prompt: str) -> dict[str, Any]:
    return {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(encode_png(image)).decode("ascii"), "revised_prompt": prompt}],
    }


def images_app(generate: Generate, *, model: str, spec: ModelSpec) -> Any:
    """The FastAPI app serving ``generate`` under the images API (imports FastAPI lazily; this
    module has no ``from __future__ import annotations`` so FastAPI sees the real ``Request``)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="interleave generator", description=f"{model} ({spec.family}) images API")

    async def run(fields: dict[str, Any], images: list[Image.Image]) -> Any:
        try:
            request = build_request(fields, images, spec)
        except BadImageRequest as exc:
            return JSONResponse(error_body(str(exc)), status_code=400)
        try:
            image = await generate(request)
        except Exception as exc:
            status, body = failure_answer(exc)
            if status == 422:  # the request's fault: its reason is enough
                log.warning("refused the prompt %r: %s", request["prompt"][:80], body["error"]["message"])
            else:
                log.exception("generation failed for the prompt %r", request["prompt"][:80])
            return JSONResponse(body, status_code=status)
        # PNG + base64 of a 1024² image is tens of ms of CPU: off the event loop, so other
        # requests (and Ray Serve's batch gathering on a replica) go on meanwhile.
        return await asyncio.to_thread(answer, image, request["prompt"])

    @app.post("/v1/images/generations")
    async def generations(http: Request) -> Any:
        try:
            fields = await http.json()
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            return JSONResponse(error_body("the body must be a JSON object"), status_code=400)
        return await run(fields, [])

    @app.post("/v1/images/edits")
    async def edits(http: Request) -> Any:
        form = await http.form()
        uploads = form.getlist("image") + form.getlist("image[]")
        if not uploads:
            return JSONResponse(error_body("an edit needs at least one 'image' file"), status_code=400)
        images = []
        for number, upload in enumerate(uploads, 1):
            try:
                image = Image.open(io.BytesIO(await upload.read()))
                images.append(image.convert("RGB"))
            except (UnidentifiedImageError, OSError, AttributeError):
                return JSONResponse(error_body(f"image {number} is not a readable image"), status_code=400)
        fields = {key: value for key, value in form.items() if key not in ("image", "image[]")}
        return await run(fields, images)

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": model, "object": "model", "family": spec.family}]}

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    return app


def local_generate(pool: Any) -> Generate:
    """``generate`` over an in-process pool or worker (its batching thread runs the pipeline)."""

    async def generate(request: dict[str, Any]) -> Image.Image:
        return await asyncio.wrap_future(pool.submit(request))

    return generate


class BackgroundServer:
    """The app under uvicorn on a thread of this process (tests, benchmarks, notebooks):
    ``with BackgroundServer(app) as server: server.base_url`` -> ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        self._thread: Any = None
        self.host = host
        self.port = port

    def __enter__(self) -> "BackgroundServer":
        import threading

        self._thread = threading.Thread(target=self._server.run, name="images-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the images server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

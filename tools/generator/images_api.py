"""The generator behind an OpenAI-style images endpoint: one client, any number of GPUs behind it.

The in-process ``GeneratorPool`` (``tools.generator.worker``) drives the GPUs of this machine. This
backend sends the same requests to a server instead -- our own Ray Serve application
(``interleave serve generator``), SGLang Diffusion (``sglang serve``) or vLLM-Omni
(``vllm serve MODEL --omni``) -- so one orchestrating process can use a fleet of GPUs on many
machines. It has the pool's interface (``spec``, ``submit``, ``run``, ``generate_batch``), so
the graph's generator node, ``interleave batch``/``datagen`` and the GRPO step-wise reward take
either one.

Wire format (what those servers document):

* text-to-image: ``POST {base}/images/generations``, a JSON body ``{"model", "prompt", "n": 1,
  "size": "WxH", "response_format": "b64_json", "output_format": "png", "seed",
  "num_inference_steps", "guidance_scale"}``. vLLM-Omni's Image Generation API takes ``seed``,
  ``num_inference_steps`` and ``guidance_scale`` as top-level fields next to OpenAI's
  (https://docs.vllm.ai/projects/vllm-omni/en/stable/serving/image_generation_api/); SGLang
  Diffusion declares the same names (with ``width``/``height``, ``true_cfg_scale``,
  ``negative_prompt``) as "SGLang extensions" of ``ImageGenerationsRequest`` in
  sgl-project/sglang python/sglang/multimodal_gen/runtime/entrypoints/openai/protocol.py (a 2026
  version; the older 97728fb has none of them, so older servers ignore them) and documents the
  endpoints in docs/diffusion/api/openai_api.md (11f22d9). SGLang's ``response_format`` defaults
  to ``url``, so ``b64_json`` is always asked for.
* edit: ``POST {base}/images/edits``, a multipart form with one ``image`` file part per input
  image (the source first, then the references) and the same fields as form fields
  (vLLM-Omni's Image Edit API, https://docs.vllm.ai/projects/vllm-omni/en/latest/serving/image_edit_api/,
  sends ``num_inference_steps``/``guidance_scale``/``seed`` this way; SGLang's edit route reads
  ``image`` or ``image[]`` file lists).
* answer: ``{"data": [{"b64_json": "<PNG>"}]}``.

Images travel as PNG both ways (lossless), so a remote image equals the in-process one pixel
for pixel when the server runs the same weights with the same seed. The same request always
gives the same fields (``request_fields``): a resumed run asks for the same image.

Failures: 429, 5xx, timeouts and broken connections are retried with exponential backoff (a
replica that died mid-request is replaced by Ray Serve, and the retry lands on a live one). A
4xx answer means the server refused a setting: ``ImagesAPIError`` names the endpoint and the
server's reason at once, no retry. An answer that is not exactly one decodable image of the
requested size is an ``ImagesAPIError`` too, so nothing wrong is ever stored.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PIL import Image, UnidentifiedImageError

from tools.generator import models as generator_models
from tools.generator.models import ModelSpec
from tools.generator.worker import run_with_progress

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class ImagesAPIError(RuntimeError):
    """The images endpoint refused a request or answered something that is not the image asked for.
    Its message names the endpoint without any ``user:password@`` (it is stored with the run)."""

    def __init__(self, message: str) -> None:
        from tools.logs import redact

        super().__init__(redact(message))


def encode_png(image: Image.Image) -> bytes:
    """Lossless PNG bytes of ``image`` (the same pixels always give the same bytes). zlib level 1:
    a 1024² image encodes several times faster than at PIL's default 6, for slightly larger bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def input_images(request: dict[str, Any]) -> list[Image.Image]:
    """The request's input images in the order the model sees them: the source, then references."""
    images = [request["source"]] if request.get("source") is not None else []
    return images + list(request.get("references") or [])


def request_fields(request: dict[str, Any], model: str) -> dict[str, str | int | float]:
    """The non-image fields sent for one generation request (deterministic: same request, same fields).

    >>> request_fields(dict(prompt="a crane", seed=7, width=64, height=48, steps=2, guidance=1.0), "m")
    ... # doctest: +NORMALIZE_WHITESPACE
    {'model': 'm', 'prompt': 'a crane', 'n': 1, 'size': '64x48', 'response_format': 'b64_json',
     'output_format': 'png', 'seed': 7, 'num_inference_steps': 2, 'guidance_scale': 1.0}
    """
    return {
        "model": model,
        "prompt": request["prompt"],
        "n": 1,
        "size": f"{int(request['width'])}x{int(request['height'])}",
        "response_format": "b64_json",
        "output_format": "png",
        "seed": int(request["seed"]),
        "num_inference_steps": int(request["steps"]),
        "guidance_scale": float(request["guidance"]),
    }


def decode_answer(body: Any, endpoint: str, width: int, height: int) -> Image.Image:
    """The one image of an images-API answer, checked: exactly one, decodable, the size asked for."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ImagesAPIError(
            f"{endpoint} answered without a 'data' list ({str(body)[:200]!r}); is it an OpenAI-style images server?"
        )
    if len(data) != 1:
        raise ImagesAPIError(
            f"{endpoint} returned {len(data)} images for a request of n=1; the server does not follow the images API"
        )
    item = data[0]
    encoded = item.get("b64_json") if isinstance(item, dict) else None
    if not isinstance(encoded, str):
        raise ImagesAPIError(f"{endpoint} returned no b64_json image (it ignored response_format=b64_json)")
    try:
        raw = base64.b64decode(encoded, validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        raise ImagesAPIError(f"{endpoint} returned bytes that are not an image ({exc})") from None
    if image.size != (width, height):
        raise ImagesAPIError(
            f"{endpoint} returned a {image.size[0]}x{image.size[1]} image for a "
            f"{width}x{height} request; the server ignored the size"
        )
    return image.convert("RGB")


class ImagesAPIGenerator:
    """A generator backend over an OpenAI-style images endpoint, with the pool's interface.

    ``base_url`` is the API root (``http://HOST:PORT/v1``); ``model`` is sent as ``model`` and
    names the family whose limits and defaults apply (a known Hub id or a local folder of the
    same model, see ``tools.generator.models.model_spec``). ``max_concurrency`` requests are in
    flight at once (the server batches what arrives together).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "",
        timeout_s: float = 600.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        max_concurrency: int = 32,
        spec: ModelSpec | None = None,
    ) -> None:
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"generator_base_url={base_url!r} must be an http(s) URL such as http://127.0.0.1:8000/v1")
        if retries < 0 or backoff_s < 0 or timeout_s <= 0 or max_concurrency < 1:
            raise ValueError("retries and backoff_s must be >= 0, timeout_s > 0 and max_concurrency >= 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.spec = spec or generator_models.model_spec(model)
        self.retries = retries
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            timeout=timeout_s, headers=headers, limits=httpx.Limits(max_connections=max_concurrency)
        )
        self._threads = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="images-api")
        self.requests_sent = 0  # HTTP attempts, retries included (for tests and benchmarks)
        self._count_lock = threading.Lock()

    # --- the pool's interface ----------------------------------------------------------------
    def submit(self, request: dict[str, Any]) -> Future:
        """Send one request (the keyword arguments of ``diffusion.generate``); a Future of the image."""
        self._check(request)
        return self._threads.submit(self._generate, dict(request))

    def run(self, request: dict[str, Any], on_step: Callable[[int, int], None] | None = None) -> Image.Image:
        """Generate one image and wait for it. The server reports no per-step progress, so
        ``on_step(steps, steps)`` is called once, when the image has arrived."""
        return run_with_progress(self.submit, request, on_step)

    def generate_batch(self, requests: list[dict[str, Any]]) -> list[Image.Image]:
        """Every request at once (the server batches them), images in order; the first error raises."""
        futures = [self.submit(request) for request in requests]
        return [future.result() for future in futures]

    __call__ = generate_batch  # a ``regenerate(requests)`` backend for StepwiseRewards

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # --- one request -------------------------------------------------------------------------
    def _check(self, request: dict[str, Any]) -> None:
        """The checks the in-process generator makes, before anything is sent."""
        images = input_images(request)
        generator_models.check_request(
            self.spec,
            width=request["width"],
            height=request["height"],
            steps=request["steps"],
            guidance=request["guidance"],
            n_images=len(images),
        )
        generator_models.check_images(self.spec, images)

    def _generate(self, request: dict[str, Any]) -> Image.Image:
        on_step = request.pop("on_step", None)
        fields = request_fields(request, self.model)
        images = input_images(request)
        if images:
            endpoint = f"{self.base_url}/images/edits"
            files = [
                ("image", (f"image{i}.png", encode_png(image.convert("RGB")), "image/png"))
                for i, image in enumerate(images)
            ]
            send = lambda: self._client.post(endpoint, data={k: str(v) for k, v in fields.items()}, files=files)
        else:
            endpoint = f"{self.base_url}/images/generations"
            send = lambda: self._client.post(endpoint, json=fields)
        response = self._send(endpoint, send)
        try:
            body = response.json()
        except ValueError:
            raise ImagesAPIError(
                f"{endpoint} answered {response.status_code} with a body that is not JSON ({response.text[:200]!r})"
            ) from None
        image = decode_answer(body, endpoint, int(request["width"]), int(request["height"]))
        if on_step is not None:
            on_step(int(request["steps"]), int(request["steps"]))
        return image

    def _send(self, endpoint: str, send: Callable[[], Any]) -> Any:
        """POST with retries on 429/5xx/timeouts/connection errors; a 4xx is the server's refusal."""
        import httpx

        for attempt in range(self.retries + 1):
            with self._count_lock:
                self.requests_sent += 1
            try:
                response = send()
            except httpx.TransportError as exc:  # refused, reset, timed out
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUS:
                    raise ImagesAPIError(
                        f"{endpoint} refused the request ({response.status_code}): "
                        f"{_reason(response)}. Change the generator setting it names (--width/--height, "
                        f"--num-inference-steps, --guidance-scale, --generator-model) or the server."
                    )
                problem = f"HTTP {response.status_code}: {_reason(response)}"
            if attempt == self.retries:
                raise ImagesAPIError(
                    f"{endpoint} failed {self.retries + 1} times; last: {problem}. "
                    f"Is the generator server up (--generator-base-url)?"
                )
            wait = self.backoff_s * 2**attempt
            log.warning(
                "images request to %s failed (%s); retry %d of %d in %.1f s",
                endpoint,
                problem,
                attempt + 1,
                self.retries,
                wait,
            )
            time.sleep(wait)
        raise AssertionError("unreachable")


def _reason(response: Any) -> str:
    """The server's own explanation: FastAPI's/OpenAI's ``detail``/``error.message``, else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("detail"):
            return str(body["detail"])
    return str(body)[:300]


_remotes: dict[tuple[str, str, str], ImagesAPIGenerator] = {}
_remotes_lock = threading.Lock()


def remote_generator(base_url: str, model: str, api_key: str = "") -> ImagesAPIGenerator:
    """The one client of an endpoint in this process (shared by concurrent runs, like the pool)."""
    key = (base_url.rstrip("/"), model, api_key)
    with _remotes_lock:
        if key not in _remotes:
            _remotes[key] = ImagesAPIGenerator(base_url, model, api_key=api_key)
        return _remotes[key]

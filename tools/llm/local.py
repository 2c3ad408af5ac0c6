"""Planner and critic VLMs run in this process with transformers, as a LangChain chat model.

Why: the OpenAI-compatible route needs a server (vLLM) next to the graph. On a GPU machine
without one, in tests, and in the training loop's own process, the model can run here
instead, behind the same ``BaseChatModel`` interface the nodes already use: messages in
(system/human/ai, content as a string or OpenAI-style parts with ``image_url`` data URLs),
an ``AIMessage`` out with ``finish_reason`` and token counts.

How:
- Weights and processor load lazily, on first use, once per process for each
  (path, device, dtype): a module-level cache shared by every ``TransformersChatModel``
  instance, so the planner and critic on one checkpoint hold one copy.
- ``batch([...])`` runs ONE left-padded ``generate`` call for all inputs (the model is
  memory-bandwidth bound while decoding, so a batch of 8 costs little more than one reply).
  Greedy results equal the one-by-one results.
- ``generate`` runs under a per-model lock (the model keeps multimodal-RoPE state between
  steps), so the chat model may be called from many threads.
- torch and transformers are imported inside functions: importing this module is cheap.
- Loading and its cache live in ``tools.llm.loading`` (``load_vlm``, ``register_vlm``,
  ``load_processor``, ``check_model_folder``, ``ModelLoadError``), and the conversion of
  LangChain messages into chat-template messages and images in ``tools.llm.messages``
  (``to_conversation``, ``load_image``); their public names are importable from here too.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from langchain_core.callbacks import CallbackManager
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult, LLMResult
from langchain_core.runnables.config import get_config_list, run_in_executor
from langchain_core.utils.utils import LC_ID_PREFIX
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from tools.devices import DTYPES
from tools.llm.loading import LoadedVLM, ModelLoadError, check_model_folder, load_processor, load_vlm, register_vlm
from tools.llm.messages import load_image, to_conversation

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

__all__ = [
    "LoadedVLM",
    "ModelLoadError",
    "TransformersChatModel",
    "check_model_folder",
    "load_image",
    "load_processor",
    "load_vlm",
    "register_vlm",
    "to_conversation",
]

logger = logging.getLogger(__name__)

#: Per-call options ``invoke``/``batch`` accept besides ``stop``.
CALL_OPTIONS = ("max_new_tokens", "min_new_tokens", "temperature")


@dataclass(frozen=True)
class Prompt:
    """One chat-templated prompt and the images its placeholders stand for, in order."""

    text: str
    images: list[Any]


# ---------------------------------------------------------------------------------------------
# The chat model


class TransformersChatModel(BaseChatModel):
    """A Qwen-VL-style ``AutoModelForImageTextToText`` run in this process.

    ``model_path`` is a local folder or a Hub id; weights load on first use and are shared
    with every other instance of the same (path, device, dtype). ``seed`` makes sampling
    reproducible: an instance's n-th call samples with seed ``seed + n``, so two fresh
    instances with one seed give the same replies, while a retry on one instance re-samples.
    ``invoke``/``batch`` accept ``stop`` and per-call ``max_new_tokens``, ``min_new_tokens``
    and ``temperature``.
    """

    #: a call takes ``temperature``: a retry can re-sample (``tools.llm.chat.can_resample``)
    accepts_call_temperature: ClassVar[bool] = True

    model_config = ConfigDict(protected_namespaces=())

    model_path: str = Field(description="Local model folder or Hub model id.")
    device: str = Field("auto", description="Torch device; auto = cuda if available, else cpu.")
    dtype: str = Field("auto", description="auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float16 or float32.")
    max_new_tokens: int = Field(4096, ge=1, description="Most new tokens per reply.")
    temperature: float = Field(0.7, ge=0.0, description="0 = greedy decoding.")
    seed: int | None = Field(None, description="Seed of sampling; None = torch's global RNG.")
    fast_decode: bool = Field(
        False,
        description="Decode with tools.llm.fast_decode (static KV cache, "
        "one CUDA graph per token step) instead of "
        "generate where the model supports it (Qwen3-VL); "
        "other models use generate.",
    )
    continuous_batching: bool = Field(
        True,
        description="With fast_decode: serve calls from every "
        "thread with tools.llm.continuous (new "
        "requests join the running batch).",
    )
    max_batch: int = Field(
        32, ge=1, description="Most rows decoded together by continuous batching (fewer when GPU memory holds fewer)."
    )

    _calls: int = PrivateAttr(default=0)
    _calls_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"dtype={value!r} is not one of {', '.join(DTYPES)}")
        return value

    @property
    def _llm_type(self) -> str:
        return "transformers-vlm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "device": self.device,
            "dtype": self.dtype,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }

    @property
    def model_name(self) -> str:
        return self.model_path

    @property
    def loaded(self) -> LoadedVLM:
        """The shared model and processor (loads them on first access)."""
        return load_vlm(self.model_path, self.device, self.dtype)

    # -- LangChain entry points --------------------------------------------------------------

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        options = self._options(stop, kwargs)
        return self._run([self._prompt(messages)], options)[0]

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Answer every input with one batched ``generate`` call. Callbacks see one run per
        input; with ``return_exceptions`` an unusable input (bad image, say) becomes its
        exception while the others are answered."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        stop = kwargs.pop("stop", None)
        options = self._options(stop, kwargs)
        params = self._get_invocation_params(stop=stop, **kwargs)
        outputs: list[Any] = [None] * len(inputs)
        pending: list[tuple[int, Prompt, Any]] = []
        for index, (item, cfg) in enumerate(zip(inputs, configs)):
            run = None
            try:
                messages = self._convert_input(item).to_messages()
                manager = CallbackManager.configure(
                    cfg.get("callbacks"),
                    self.callbacks,
                    self.verbose,
                    cfg.get("tags"),
                    self.tags,
                    {**(cfg.get("metadata") or {}), **self._get_ls_params(stop=stop, **kwargs)},
                    self.metadata,
                )
                run = manager.on_chat_model_start(
                    self._serialized,
                    [messages],
                    invocation_params=params,
                    options={"stop": stop},
                    name=cfg.get("run_name"),
                    run_id=cfg.pop("run_id", None),
                    batch_size=len(inputs),
                )[0]
                pending.append((index, self._prompt(messages), run))
            except Exception as exc:
                if run is not None:
                    run.on_llm_error(exc)
                if not return_exceptions:
                    raise
                outputs[index] = exc
        if not pending:
            return outputs
        try:
            results = self._run([prompt for _, prompt, _ in pending], options)
        except Exception as exc:
            for _, _, run in pending:
                run.on_llm_error(exc)
            if not return_exceptions:
                raise
            for index, _, _ in pending:
                outputs[index] = exc
            return outputs
        for (index, _, run), result in zip(pending, results):
            run.on_llm_end(LLMResult(generations=[result.generations]))
            message = result.generations[0].message
            if message.id is None:
                message.id = f"{LC_ID_PREFIX}-{run.run_id}-0"
            outputs[index] = message
        return outputs

    async def abatch(
        self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False, **kwargs: Any
    ) -> list[Any]:
        return await run_in_executor(None, self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs)

    # -- the work ------------------------------------------------------------------------------

    def _options(self, stop: list[str] | None, call: dict[str, Any]) -> dict[str, Any]:
        """``generate`` settings from the instance's fields and the per-call options."""
        unknown = sorted(set(call) - set(CALL_OPTIONS))
        if unknown:
            raise ValueError(
                f"unsupported option(s) {', '.join(unknown)} for the transformers "
                f"backend; supported: stop, {', '.join(CALL_OPTIONS)}"
            )
        max_new_tokens = int(call.get("max_new_tokens") or self.max_new_tokens)
        temperature = float(call["temperature"] if call.get("temperature") is not None else self.temperature)
        if temperature < 0 or max_new_tokens < 1:
            raise ValueError(f"temperature={temperature} must be >= 0 and max_new_tokens={max_new_tokens} >= 1")
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        if call.get("min_new_tokens"):
            options["min_new_tokens"] = int(call["min_new_tokens"])
        if temperature > 0:  # sampling keeps the checkpoint's top-p / top-k
            options.update(do_sample=True, temperature=temperature)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop:
            options["stop_strings"] = list(stop)
        return options

    def _prompt(self, messages: list[BaseMessage]) -> Prompt:
        """The chat-templated prompt text and its images (CPU work, done outside the lock)."""
        conversation, images = to_conversation(messages)
        text = self.loaded.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return Prompt(text, images)

    def _next_seed(self) -> int | None:
        if self.seed is None:
            return None
        with self._calls_lock:
            self._calls += 1
            return self.seed + self._calls - 1

    def batches_continuously(self) -> bool:
        """True when calls go to the continuous-batching engine (loads the model)."""
        from tools.llm.fast_decode import supports_fast_decode

        return self.fast_decode and self.continuous_batching and supports_fast_decode(self.loaded.model)

    def _run(self, prompts: list[Prompt], options: dict[str, Any]) -> list[ChatResult]:
        """One left-padded ``generate`` call for all ``prompts`` (or one request each to the
        continuous-batching engine); one ChatResult each."""
        import torch

        loaded = self.loaded
        processor, model = loaded.processor, loaded.model
        if self.batches_continuously():
            from tools.llm.continuous import answer

            done = answer(loaded, prompts, options, self._next_seed(), self.max_batch)
            return self._results(
                processor,
                [c.tokens for c in done],
                [c.prompt_tokens for c in done],
                options,
                max(c.prefill_s + c.decode_s for c in done),
                max(max(c.batch_sizes, default=1) for c in done),
            )
        images = [image for prompt in prompts for image in prompt.images]
        inputs = processor(
            text=[prompt.text for prompt in prompts], images=images or None, padding=True, return_tensors="pt"
        ).to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        if "stop_strings" in options:
            options = {**options, "tokenizer": processor.tokenizer}

        seed = self._next_seed()
        cuda = [model.device.index or 0] if model.device.type == "cuda" else []
        with loaded.lock, torch.inference_mode(), torch.random.fork_rng(devices=cuda, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            start = time.perf_counter()
            from tools.llm.fast_decode import fast_generate, supports_fast_decode

            if self.fast_decode and supports_fast_decode(model):
                sequences = fast_generate(model, inputs, **options)
            else:
                sequences = model.generate(**inputs, **options)
            seconds = time.perf_counter() - start

        prompt_len = inputs["input_ids"].shape[1]
        return self._results(
            processor,
            sequences[:, prompt_len:].tolist(),
            inputs["attention_mask"].sum(dim=1).tolist(),
            options,
            seconds,
            len(prompts),
        )

    def _results(
        self,
        processor: Any,
        rows: list[list[int]],
        input_counts: list[int],
        options: dict[str, Any],
        seconds: float,
        batch_size: int,
    ) -> list[ChatResult]:
        """ChatResults from each prompt's new tokens (cut at the end token and stop strings)."""
        eos = self.loaded.model.generation_config.eos_token_id
        end_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        stop = options.get("stop_strings") or ()
        results = []
        for row, input_tokens in zip(rows, input_counts):
            ended = next((i for i, token in enumerate(row) if token in end_ids), None)
            kept = row if ended is None else row[: ended + 1]  # counts the end token
            text = processor.tokenizer.decode(kept, skip_special_tokens=True)
            finish = "length" if ended is None and len(row) >= options["max_new_tokens"] else "stop"
            for marker in stop:  # cut at the earliest stop string, which is not part of the reply
                if marker in text:
                    text, finish = text.split(marker, 1)[0], "stop"
            usage = {
                "input_tokens": int(input_tokens),
                "output_tokens": len(kept),
                "total_tokens": int(input_tokens) + len(kept),
            }
            message = AIMessage(
                content=text,
                usage_metadata=usage,
                response_metadata={
                    "finish_reason": finish,
                    "model_name": self.model_path,
                    "model_provider": "transformers",
                    "generate_s": seconds,
                    "batch_size": batch_size,
                },
            )
            results.append(ChatResult(generations=[ChatGeneration(message=message)]))
        return results

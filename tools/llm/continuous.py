"""Continuous batching for in-process Qwen3-VL: requests join the running decode batch at the next
step, finished rows leave at once, newcomers' prefills run between decode steps.

Why: concurrent graph runs reach the planner and critic at staggered times (each run waits for
its own images). A batch that must drain before the next one starts leaves the GPU decoding 2-3
rows while 20 requests queue, and decode is memory-bound, so a row costs little as long as the
weights are read once per step for the whole batch (issue #20: 528 trajectories/hour at 32
concurrent runs with drain-then-refill batches of at most 8).

How (``ContinuousEngine``, one per loaded model, a scheduler thread that owns its GPU work):

- A slot table: per layer, static key/value buffers of (slots, KV heads, context, head dim), and
  per slot its length, its M-RoPE start position, its sampling settings and its output row. The
  number of slots is ``max_batch`` or what fits in free GPU memory after ``reserve_bytes``,
  computed from the model's KV size per token and the context length (``capacity``). Active
  rows are kept packed at the front: a finished row is replaced by the last one (one copy of
  its keys/values), so a step only runs the rows that are live.
- Each round: admit waiting requests while slots are free, install the prefills that are
  ready (copy their keys/values into a free row, choose their first token), then decode up to
  ``check_every`` steps for all active rows, then look on the host: rows that ended (EOS,
  length, stop string) are answered and leave.
- Prefill: each admitted request is prefilled alone with the model's own forward, so its
  keys/values and first token are exactly those of a run alone. By default on the scheduler's
  thread between decode rounds (at most ``prefill_tokens`` prompt tokens per round, so running
  rows keep decoding between large prefills); the running rows wait while it runs (on one H200
  beside the generator, prefills took 70 s of a 105 s wall at 32 concurrent trajectories,
  22 rows a decode round: what limits that benchmark, issue #20, 2026-12-03).
- Prefill beside decode (``prefill_beside_decode=True``, EXPERIMENTAL, off by default): a
  second thread prefills on a stream of its own while the scheduler keeps decoding; prefill is
  compute-bound and a decode step memory-bound, so the two could share the GPU. The thread
  never runs while the scheduler records a CUDA graph (an engine lock), and the staged
  keys/values stay referenced until the engine's stream has copied them (the round's host
  sync). Exact on the CPU (tests/integration/test_continuous_batching.py) and in the tiny
  bf16 GPU tests, but on one H200 with the generator beside it (``evals.perf.trajectories
  --levels 32 --prefill-beside-decode-levels 32``, 2026-12-03) the 32 trajectories stalled
  twice, after a one-trajectory warm-up that finished: the cause is not found yet (the stack
  dump did not reach the engine's threads), so it is not the default.
- The step (``tools.llm.fast_decode``'s hand-written Qwen3-VL step, per-row positions and
  lengths) is captured as a CUDA graph per (rows bucket, context bucket, sampling) and replayed;
  rows buckets are 1, 2, 4, 8, 16, 24, 32, ... and context buckets multiples of 512 tokens, so
  a step attends over about what is used, not the whole buffer. The first step of a new shape
  runs eagerly (the warm-up capture needs), the second records the graph under the GPU's
  capture lock (``tools.devices.capture_lock``).
- Sampling draws its noise from a counter-based hash of (request seed, token index, vocabulary
  id) instead of torch's generator: a seeded request samples the same tokens whatever else is
  in the batch. Greedy rows take the argmax.
- All GPU work of the engine runs on its own high-priority CUDA stream, so it overlaps with the
  generator's (default stream) kernels instead of queueing behind them (issue #20, part 2).

Greedy replies equal running each request alone: exactly in float32 on the CPU
(tests/integration/test_continuous_batching.py), up to bf16 rounding on a GPU (the batch size
changes the matmul kernels; tests/gpu/test_fast_decode_cuda.py reports the agreement).

torch is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tools.llm.fast_decode import (
    _cache_layers,
    _decode_layers,
    _prompt_positions,
    _setting,
    _stop_length,
    supports_fast_decode,
)

__all__ = ["Completion", "ContinuousEngine", "answer", "capacity", "close_engine", "engine_for"]

logger = logging.getLogger(__name__)

#: Context buckets: a step attends over the smallest multiple of this covering every live row.
CONTEXT_BUCKET = 512
#: Default context per slot on CUDA (prompt + reply); a longer request waits for the batch to
#: drain, then the buffers are rebuilt for it.
DEFAULT_CONTEXT = 8192
#: GPU memory left free for everything else (prefill activations, a generator loaded later).
DEFAULT_RESERVE_BYTES = 24 * 2**30

_MASK32 = 0xFFFFFFFF


@dataclass
class Completion:
    """One request's new tokens (up to and including its end token) and where its time went."""

    tokens: list[int]
    prompt_tokens: int
    finish: str  # "stop" (EOS or stop string) or "length"
    queued_s: float
    prefill_s: float
    decode_s: float
    batch_sizes: list[int]  # rows decoded together, per round this request was in


@dataclass
class _Request:
    inputs: Any
    max_new_tokens: int
    min_new_tokens: int
    do_sample: bool
    temperature: float
    seed: int
    stop_strings: list[str]
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    prompt_len: int = 0
    need: int = 0
    admitted: float = 0.0
    prefill_s: float = 0.0
    count: int = 0  # new tokens chosen so far (mirrors the device's count of its row)
    searched: int = 0
    stopped_at: int | None = None
    rounds: list[int] = field(default_factory=list)


@dataclass
class _Prefilled:
    """One request's prompt run through the model, waiting to be installed in a free row."""

    request: _Request
    layers: list[tuple[Any, Any]] | None = None  # (keys, values) of the prompt per layer
    logits: Any = None  # the last position's logits
    positions: Any = None  # the prompt's M-RoPE positions
    input_ids: Any = None  # on the device (the repetition penalty's seen tokens)
    error: BaseException | None = None


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of keys and values one token occupies over all layers."""
    config = model.model.language_model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    itemsize = next(model.parameters()).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * itemsize


def capacity(model: Any, context: int, max_batch: int, reserve_bytes: int) -> int:
    """Slots that fit: ``max_batch``, or fewer where free GPU memory minus ``reserve_bytes`` holds
    fewer sequences of ``context`` tokens. Raises when not even one fits, naming the fix."""
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return max_batch
    free, _total = torch.cuda.mem_get_info(device)
    per_slot = kv_bytes_per_token(model) * context
    fits = int((free - reserve_bytes) // per_slot)
    if fits < 1:
        raise RuntimeError(
            f"no room for one {context}-token sequence on {device}: {free / 2**30:.1f} GiB free, "
            f"{reserve_bytes / 2**30:.1f} GiB kept in reserve, {per_slot / 2**30:.2f} GiB per "
            f"sequence; lower the reply budget (vlm_max_tokens) or free GPU memory"
        )
    if fits < max_batch:
        logger.info("continuous batching: %d slots fit in %.1f GiB free (asked for %d)", fits, free / 2**30, max_batch)
    return min(max_batch, fits)


def _hash32(x):
    """A 32-bit integer mix (lowbias32) on int64 tensors holding values below 2**32."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _uniform(seeds, counters, vocab_ids):
    """(rows, vocab) uniforms in (0, 1) from (seed, counter) per row: no generator state."""
    row = _hash32((seeds * 0x9E3779B1 + counters * 0x85EBCA77 + 0x165667B1) & _MASK32)
    x = _hash32((row[:, None] ^ vocab_ids[None]) & _MASK32)
    x = _hash32(x ^ 0x27D4EB2F)
    return ((x >> 8).float() + 0.5) / float(1 << 24)


def _buckets(limit: int) -> list[int]:
    sizes = [1, 2, 4, 8, 16]
    while sizes[-1] < limit:
        sizes.append(sizes[-1] + 8)
    return [size for size in sizes if size < limit] + [limit]


class ContinuousEngine:
    """Serves ``submit``ted requests for one Qwen3-VL model with continuous batching."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        max_batch: int = 32,
        context: int | None = None,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        check_every: int = 8,
        prefill_tokens: int = 8192,
        attention: str = "sdpa",
        cuda_graph: bool | None = None,
        own_stream: bool = True,
        prefill_beside_decode: bool = False,
    ) -> None:
        import torch

        if not supports_fast_decode(model):
            raise ValueError(
                f"continuous batching supports Qwen3-VL models only, not model type "
                f"{getattr(model.config, 'model_type', None)!r}; use fast_decode=False"
            )
        if max_batch < 1 or check_every < 1 or prefill_tokens < 1:
            raise ValueError(
                f"max_batch={max_batch}, check_every={check_every} and prefill_tokens={prefill_tokens} must be >= 1"
            )
        self.model, self.tokenizer = model, tokenizer
        self.text = model.model.language_model
        self.device = next(model.parameters()).device
        self.max_batch, self.reserve_bytes = max_batch, reserve_bytes
        self.check_every, self.prefill_tokens, self.attention = check_every, prefill_tokens, attention
        self.context_hint = context
        cuda = self.device.type == "cuda"
        self.use_graph = cuda if cuda_graph is None else bool(cuda_graph and cuda)
        settings = model.generation_config
        eos = settings.eos_token_id
        self.eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
        self.pad = settings.pad_token_id if settings.pad_token_id is not None else (self.eos[0] if self.eos else 0)
        self.top_k = _setting(settings, "top_k")
        self.top_p = _setting(settings, "top_p")
        self.penalty = _setting(settings, "repetition_penalty")
        if self.penalty in (None, 1.0):
            self.penalty = None
        config = self.text.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

        self.rotate = apply_rotary_pos_emb
        # own_stream=False: the device's default stream, where the generator's kernels also go
        # (kept for measuring what the own stream brings: evals.perf.trajectories)
        self.stream = (
            (
                torch.cuda.Stream(device=self.device, priority=-1)
                if own_stream
                else torch.cuda.default_stream(self.device)
            )
            if cuda
            else None
        )
        self.slots = 0
        self.context = 0
        self.live: list[_Request] = []  # row i of the buffers serves live[i]
        self.graphs: dict[tuple, Any] = {}
        self.warmed: set[tuple] = set()
        self.pool = None
        self.timeline: list[tuple[str, float, float, int]] = []  # (prefill|decode, start, end, rows)
        self.steps = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # requests, tasks, prefills
        self._pending: deque[_Request] = deque()
        self._closing = False
        self._tasks: list[Future] = []
        self._ready: deque[_Prefilled] = deque()  # prefilled, to install at the next round
        self._prefilling: dict[int, _Request] = {}  # handed to the prefill thread, by id
        self._retire: list[_Prefilled] = []  # installed: kept until the engine's stream synced
        self._forward_lock = threading.Lock()  # a prefill forward and a graph capture exclude
        self._prefill_thread: threading.Thread | None = None
        if prefill_beside_decode:
            # as high a priority as decode: the critic waiting on a prefill holds its trajectory
            self.prefill_stream = torch.cuda.Stream(device=self.device, priority=-1) if cuda else None
            self._to_prefill: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
            self._prefill_thread = threading.Thread(target=self._prefill_loop, name="vlm-prefill", daemon=True)
            self._prefill_thread.start()
        self._thread = threading.Thread(target=self._serve, name="vlm-continuous", daemon=True)
        self._thread.start()

    # -- the caller's side ---------------------------------------------------------------------

    def submit(
        self,
        inputs: Any,
        *,
        max_new_tokens: int,
        min_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float | None = None,
        seed: int | None = None,
        stop_strings: list[str] | None = None,
        **_ignored: Any,
    ) -> Future:
        """Queue one prompt (the processor's output for ONE conversation, on any device); a
        Future of its ``Completion``. Options as ``fast_generate``'s; ``seed`` picks the
        sampling noise (None: drawn from torch's global generator)."""
        import torch

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
        if inputs["input_ids"].shape[0] != 1:
            raise ValueError("submit takes one prompt at a time; submit each row of a batch")
        if stop_strings and self.tokenizer is None:
            raise ValueError("stop_strings need the tokenizer: pass it to the engine")
        if do_sample:
            temperature = _setting(self.model.generation_config, "temperature") if temperature is None else temperature
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        request = _Request(
            inputs=inputs,
            max_new_tokens=int(max_new_tokens),
            min_new_tokens=int(min_new_tokens or 0),
            do_sample=bool(do_sample),
            temperature=float(temperature or 1.0),
            seed=int(seed) & 0x7FFFFFFF,
            stop_strings=list(stop_strings or []),
        )
        request.prompt_len = int(inputs["input_ids"].shape[1])
        request.need = request.prompt_len + request.max_new_tokens
        if not self._thread.is_alive():
            raise RuntimeError("the continuous-batching engine stopped; see the log for why")
        self._queue.put(request)
        return request.future

    # -- the scheduler -------------------------------------------------------------------------

    def _serve(self) -> None:
        import torch

        with torch.inference_mode(), torch.cuda.stream(self.stream) if self.stream is not None else _nothing():
            while not (self._closing and not self.live and not self._pending and not self._prefilling):
                try:
                    self._round()
                except Exception as exc:  # noqa: BLE001 -- every waiting caller gets it
                    logger.exception("continuous batching round failed")
                    if self.stream is not None:  # let queued copies finish before their inputs are dropped
                        with contextlib.suppress(Exception):  # after a CUDA fault this raises too
                            torch.cuda.synchronize(self.device)
                    # requests in the prefill thread fail too; their prefills are dropped on arrival
                    waiting = [*self._pending, *(p.request for p in self._ready), *self._prefilling.values()]
                    for request in [*self.live, *waiting]:
                        if not request.future.done():
                            request.future.set_exception(exc)
                    self.live, self._pending, self._ready, self._retire = [], deque(), deque(), []
                    self._prefilling = {}
                    self.graphs, self.warmed = {}, set()
                    self.slots = 0  # rebuild the buffers on the next request
        if self._prefill_thread is not None:
            self._to_prefill.put(None)

    def prepare(self) -> Future:
        """Capture, once the engine is idle, the step graphs of every rows bucket for each
        (context bucket, sampling) seen so far, so later rounds never wait for a capture (each
        waits for the GPU's capture lock, i.e. for a running generator call). A Future of the
        number of graphs captured."""
        future: Future = Future()
        self._queue.put(future)  # type: ignore[arg-type]
        return future

    def _prepare(self, future: Future) -> None:
        try:
            shapes = {(span, sample) for _, span, sample in self.warmed} if self.slots else set()
            before = len(self.graphs)
            for span, sample in sorted(shapes):
                for rows in _buckets(self.slots):
                    key = (rows, span, sample)
                    self.finished.fill_(True)
                    self.length.zero_()
                    while key not in self.graphs and self.use_graph:
                        self._run_step(key)
            future.set_result(len(self.graphs) - before)
        except Exception as exc:  # noqa: BLE001 -- the caller's to see
            future.set_exception(exc)

    def close(self) -> None:
        """Stop the scheduler once the requests already submitted are answered."""
        self._queue.put(None)
        self._thread.join(timeout=600)
        if self._prefill_thread is not None:
            self._prefill_thread.join(timeout=60)
        self.kv, self.graphs, self.slots = [], {}, 0  # the memory goes back to the allocator

    def _take_new(self, block: bool) -> None:
        waiting = [self._queue.get()] if block else []
        while True:
            try:
                waiting.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in waiting:
            if item is None:
                self._closing = True
            elif isinstance(item, Future):
                self._tasks.append(item)
            elif isinstance(item, _Prefilled):
                if self._prefilling.pop(id(item.request), None) is None:
                    continue  # failed with a round while it was prefilled
                if item.error is not None:
                    item.request.future.set_exception(item.error)
                else:
                    self._ready.append(item)
            else:
                self._pending.append(item)

    def _idle(self) -> bool:
        """Nothing to do until something arrives: no row to decode, no prefill to install,
        and no waiting request that could be admitted now."""
        if self.live or self._ready or self._closing:
            return False
        return not self._pending or bool(self._prefilling)

    def _round(self) -> None:
        self._take_new(block=self._idle())
        while self._tasks and not self.live and not self._prefilling and not self._ready:
            self._prepare(self._tasks.pop(0))
        budget = self.prefill_tokens
        while self._pending and budget > 0:
            request = self._pending[0]
            if request.need > self.context or self.slots == 0:
                if self.live or self._prefilling or self._ready:
                    break  # the buffers grow once the running rows have left
                try:
                    self._allocate(request.need)
                except RuntimeError as exc:  # too long for this GPU: this request's failure alone
                    self._pending.popleft().future.set_exception(exc)
                    continue
            if len(self.live) + len(self._prefilling) + len(self._ready) >= self.slots:
                break
            self._pending.popleft()
            request.admitted = time.perf_counter()
            if self._prefill_thread is not None:
                self._prefilling[id(request)] = request
                self._to_prefill.put(request)
            else:
                budget -= request.prompt_len
                try:
                    self._ready.append(self._forward(request))
                except Exception as exc:  # noqa: BLE001 -- a prompt the model refuses fails alone
                    logger.exception("prefill failed")
                    request.future.set_exception(exc)
        while self._ready:
            self._install(self._ready.popleft())
        if self.live:
            self._decode_round()

    # -- buffers -------------------------------------------------------------------------------

    def _allocate(self, need: int) -> None:
        import torch

        cuda = self.device.type == "cuda"
        wanted = max(need, self.context_hint or (DEFAULT_CONTEXT if cuda else 0))
        context = -(-wanted // CONTEXT_BUCKET) * CONTEXT_BUCKET
        self.kv = []  # free the old buffers before measuring free memory
        self.graphs, self.warmed = {}, set()
        self.slots, self.context = 0, 0
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        slots = capacity(self.model, context, self.max_batch, self.reserve_bytes)
        device, dtype = self.device, next(self.model.parameters()).dtype
        shape = (slots, self.kv_heads, context, self.head_dim)
        self.kv = [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in self.text.layers
        ]
        long = dict(dtype=torch.long, device=device)
        self.positions = torch.arange(context, **long)
        self.row_ids = torch.arange(slots, **long)
        self.vocab_ids = None
        self.length = torch.zeros(slots, **long)  # keys/values written
        self.count = torch.zeros(slots, **long)  # new tokens chosen
        self.start = torch.zeros(3, slots, **long)  # M-RoPE position of the first new token
        self.tokens = torch.full((slots,), self.pad, **long)
        self.finished = torch.ones(slots, dtype=torch.bool, device=device)
        self.max_new = torch.ones(slots, **long)
        self.min_new = torch.zeros(slots, **long)
        self.sample = torch.zeros(slots, dtype=torch.bool, device=device)
        self.temperature = torch.ones(slots, dtype=torch.float32, device=device)
        self.seeds = torch.zeros(slots, **long)
        self.out = torch.full((slots, context), self.pad, **long)
        self.eos_ids = torch.tensor(self.eos, **long)
        self.seen = None
        self.slots, self.context = slots, context
        self.pool = torch.cuda.graph_pool_handle() if self.use_graph else None
        logger.info(
            "continuous batching: %d slots of %d tokens (%.1f GiB of keys/values)",
            slots,
            context,
            kv_bytes_per_token(self.model) * context * slots / 2**30,
        )

    # -- prefill -------------------------------------------------------------------------------

    def _prefill_loop(self) -> None:
        """The prefill thread: run each admitted prompt on its own stream, hand it back."""
        import torch

        stream = self.prefill_stream
        with torch.inference_mode(), torch.cuda.stream(stream) if stream is not None else _nothing():
            while (request := self._to_prefill.get()) is not None:
                try:
                    prefilled = self._forward(request)
                except Exception as exc:  # noqa: BLE001 -- this request's failure alone
                    logger.exception("prefill failed")
                    prefilled = _Prefilled(request, error=exc)
                self._queue.put(prefilled)

    def _forward(self, request: _Request) -> _Prefilled:
        """The model's own forward over one prompt (keys/values, last logits), finished on the
        GPU when it returns; runs on the prefill thread, or the scheduler's without one. The
        engine lock is held throughout (the temporaries are freed inside it too), so nothing of
        it overlaps a graph capture."""
        import torch

        start = time.perf_counter()
        model = self.model
        with self._forward_lock:
            inputs = {
                name: value.to(self.device) if hasattr(value, "to") else value for name, value in request.inputs.items()
            }
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            if inputs.get("attention_mask") is None:
                inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            positions = _prompt_positions(model, inputs)
            output = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
            layers = [(keys[0], values[0]) for keys, values in _cache_layers(output.past_key_values)]
            prefilled = _Prefilled(request, layers, output.logits[:, -1], positions, inputs["input_ids"])
            del output, inputs
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        request.prefill_s = time.perf_counter() - start
        self.timeline.append(("prefill", start, time.perf_counter(), 1))
        return prefilled

    def _install(self, prefilled: _Prefilled) -> None:
        """Give a prefilled request the next free row: its keys/values, state, first token."""
        import torch

        request, positions = prefilled.request, prefilled.positions
        row = len(self.live)
        length = request.prompt_len
        for (k_buffer, v_buffer), (keys, values) in zip(self.kv, prefilled.layers):
            k_buffer[row, :, :length] = keys
            v_buffer[row, :, :length] = values
        self.length[row] = length
        self.count[row] = 0
        self.start[:, row] = positions[1:, 0, -1] + 1
        self.finished[row] = False
        self.max_new[row] = request.max_new_tokens
        self.min_new[row] = request.min_new_tokens
        self.sample[row] = request.do_sample
        self.temperature[row] = request.temperature if request.do_sample else 1.0
        self.seeds[row] = request.seed
        self.out[row].fill_(self.pad)
        logits = prefilled.logits
        vocab = logits.shape[-1]
        if self.vocab_ids is None:
            self.vocab_ids = torch.arange(vocab, dtype=torch.long, device=self.device)
        if self.penalty is not None:
            if self.seen is None:
                self.seen = torch.zeros(self.slots, vocab, dtype=torch.bool, device=self.device)
            self.seen[row] = False
            self.seen[row].scatter_(0, prefilled.input_ids[0], True)
        rows = self.row_ids[row : row + 1]
        self._choose(logits, rows, request.do_sample)
        request.count = 1
        self.live.append(request)
        self._retire.append(prefilled)  # its tensors live until the engine's stream has read them

    # -- choosing the next token (prefill and decode share it) ---------------------------------

    def _choose(self, logits, rows, sample: bool) -> None:
        """Next token of ``rows`` from their logits; writes tokens, out, count, finished."""
        import torch

        scores = logits.float()
        count = self.count.index_select(0, rows)
        finished = self.finished.index_select(0, rows)
        if self.seen is not None:
            seen = self.seen.index_select(0, rows)
            penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
            scores = torch.where(seen, penalised, scores)
        if self.eos:
            early = count < self.min_new.index_select(0, rows)
            scores[:, self.eos_ids] = torch.where(early[:, None], float("-inf"), scores[:, self.eos_ids])
        chosen = scores.argmax(dim=-1)
        if sample:
            scores = scores / self.temperature.index_select(0, rows)[:, None]
            if self.top_k:
                kth = torch.topk(scores, min(int(self.top_k), scores.shape[-1]), dim=-1).values[..., -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            if self.top_p is not None and self.top_p < 1.0:
                ordered, order = torch.sort(scores, descending=False)
                drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= 1 - self.top_p
                drop[..., -1:] = False
                scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
            probs = scores.softmax(dim=-1)
            noise = -torch.log(_uniform(self.seeds.index_select(0, rows), count, self.vocab_ids))
            drawn = (probs / noise).argmax(dim=-1)  # argmax(p / E), E ~ Exp(1): a draw from p
            chosen = torch.where(self.sample.index_select(0, rows), drawn, chosen)
        chosen = torch.where(finished, torch.full_like(chosen, self.pad), chosen)
        self.out[rows, count.clamp(max=self.context - 1)] = chosen
        ended = torch.isin(chosen, self.eos_ids) | (count + 1 >= self.max_new.index_select(0, rows))
        self.finished[rows] = finished | ended
        self.count[rows] = count + 1
        self.tokens[rows] = chosen
        if self.seen is not None:
            self.seen[rows, chosen] = True

    # -- decode --------------------------------------------------------------------------------

    def _step(self, rows: int, span: int, sample: bool) -> None:
        """One token for rows [0, rows), attending over the first ``span`` positions."""
        import torch

        ids = self.row_ids[:rows]
        tokens, length = self.tokens[:rows], self.length[:rows]
        write = length.clamp(max=span - 1)
        position = self.start[:, :rows] + self.count[:rows] - 1  # (3, rows)
        probe = torch.zeros(1, dtype=self.model.dtype, device=self.device)
        cos, sin = self.text.rotary_emb(probe, position[:, :, None])
        mask = (self.positions[:span][None] <= write[:, None])[:, None, None, :]

        def cache(k_buffer: Any, v_buffer: Any, k: Any, v: Any) -> tuple:  # each row at its own length
            k_buffer[ids, :, write] = k[:, :, 0]
            v_buffer[ids, :, write] = v[:, :, 0]
            return k_buffer[:rows, :, :span], v_buffer[:rows, :, :span]

        logits = _decode_layers(self, tokens, cos, sin, mask, cache)
        self.length[:rows] = (length + 1).clamp(max=self.context - 1)
        self._choose(logits, ids, sample)

    def _run_step(self, key: tuple) -> None:
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
        elif not self.use_graph or key not in self.warmed:
            self._step(*key)  # on CUDA: the warm-up a capture needs
            self.warmed.add(key)
        else:
            from tools.devices import capture_graph

            with self._forward_lock:  # no prefill launches work while the graph records
                graph = capture_graph(lambda: self._step(*key), self.device, stream=self.stream, pool=self.pool)
            self.graphs[key] = graph
            graph.replay()  # capture records without running

    def _decode_round(self) -> None:
        start = time.perf_counter()
        rows = len(self.live)
        bucket = next(size for size in _buckets(self.slots) if size >= rows)
        left = min(r.max_new_tokens - r.count for r in self.live)
        steps = max(1, min(self.check_every, left))
        longest = max(r.prompt_len + r.count for r in self.live) + steps
        span = min(self.context, -(-longest // CONTEXT_BUCKET) * CONTEXT_BUCKET)
        sample = any(r.do_sample for r in self.live)
        if bucket > rows:  # rows past the live ones compute nothing anybody reads
            self.finished[rows:bucket] = True
            self.length[rows:bucket] = 0
        for _ in range(steps):
            self._run_step((bucket, span, sample))
        self.steps += steps
        for request in self.live:
            request.rounds.append(rows)
            request.count += steps
        finished = self.finished[:rows].tolist()  # waits for the GPU
        self._retire.clear()  # the engine's stream has copied every installed prefill
        self.timeline.append(("decode", start, time.perf_counter(), rows))
        if any(r.stop_strings for r in self.live):
            self._check_stop_strings(finished)
        for row in reversed(range(rows)):
            if finished[row]:
                self._complete(row)

    def _check_stop_strings(self, finished: list[bool]) -> None:
        for row, request in enumerate(self.live):
            if not request.stop_strings or request.stopped_at is not None:
                continue
            tokens = self._tokens(row)
            length = _stop_length(self.tokenizer, tokens, request.stop_strings, request.searched)
            request.searched = len(tokens)
            if length is not None:
                request.stopped_at = length
                self.finished[row] = True
                finished[row] = True

    def _tokens(self, row: int) -> list[int]:
        request = self.live[row]
        tokens = self.out[row, : min(request.count, request.max_new_tokens)].tolist()
        end = next((i + 1 for i, token in enumerate(tokens) if token in self.eos), None)
        return tokens if end is None else tokens[:end]

    def _complete(self, row: int) -> None:
        request = self.live[row]
        tokens = self._tokens(row)
        finish = "stop" if tokens and tokens[-1] in self.eos else "length"
        if request.stopped_at is not None and request.stopped_at <= len(tokens):
            tokens, finish = tokens[: request.stopped_at], "stop"
        now = time.perf_counter()
        completion = Completion(
            tokens=tokens,
            prompt_tokens=request.prompt_len,
            finish=finish,
            queued_s=request.admitted - request.submitted,
            prefill_s=request.prefill_s,
            decode_s=now - request.admitted - request.prefill_s,
            batch_sizes=request.rounds,
        )
        last = len(self.live) - 1
        if row != last:  # keep live rows packed: the last one moves into this slot
            self._move(last, row)
            self.live[row] = self.live[last]
        self.live.pop()
        self.finished[last] = True
        request.future.set_result(completion)

    def _move(self, source: int, target: int) -> None:
        moved = self.live[source]
        length = min(moved.prompt_len + moved.count, self.context)
        for k_buffer, v_buffer in self.kv:
            k_buffer[target, :, :length] = k_buffer[source, :, :length]
            v_buffer[target, :, :length] = v_buffer[source, :, :length]
        for tensor in (
            self.length,
            self.count,
            self.tokens,
            self.finished,
            self.max_new,
            self.min_new,
            self.sample,
            self.temperature,
            self.seeds,
            self.out,
        ):
            tensor[target] = tensor[source]
        self.start[:, target] = self.start[:, source]
        if self.seen is not None:
            self.seen[target] = self.seen[source]


def close_engine(model: Any) -> None:
    """Stop and forget the engine of ``model`` (the next call starts a new one)."""
    with _engines_lock:
        engine = _engines.pop(id(model), None)
    if engine is not None:
        engine.close()


def answer(
    loaded: Any, prompts: list[Any], options: dict[str, Any], seed: int | None, max_batch: int
) -> list[Completion]:
    """Submit each prompt (``.text``, ``.images``) of one chat-model call to the model's engine
    and wait for all; the processor runs here, on the caller's thread."""
    import torch

    processor, model = loaded.processor, loaded.model
    engine = engine_for(model, processor.tokenizer, max_batch=max_batch)
    futures = []
    for index, prompt in enumerate(prompts):
        inputs = processor(text=[prompt.text], images=prompt.images or None, return_tensors="pt")
        if "pixel_values" in inputs:  # half the bytes to copy to the GPU
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        row_seed = None if seed is None else seed * 1_000_003 + index
        if row_seed is None and options.get("do_sample"):
            row_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        futures.append(engine.submit(inputs, seed=row_seed, **options))
    return [future.result() for future in futures]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_engines: dict[int, ContinuousEngine] = {}
_engines_lock = threading.Lock()


def engine_for(model: Any, tokenizer: Any = None, **settings: Any) -> ContinuousEngine:
    """The one engine of a loaded model (created on first use with the first caller's settings)."""
    with _engines_lock:
        engine = _engines.get(id(model))
        if engine is None or not engine._thread.is_alive():
            engine = _engines[id(model)] = ContinuousEngine(model, tokenizer, **settings)
        return engine

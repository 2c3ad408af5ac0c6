"""What a checkpoint may contain when it is read back: an explicit allow-list, nothing else.

LangGraph's default serializer rebuilds any ``module.name`` a msgpack blob names, by importing it
and calling it (CVE-2026-28277): whoever can write one row of the runs database can make
``interleave show``, ``history`` or ``resume`` call ``os.system``. With LangGraph's strict mode a
type off its list is not called, but the blob's raw payload is silently put in its place and
the run goes on with made-up state.

Our state is plain data (``graph/state.py``: ``TypedDict``s of str/int/float/bool/None, lists
and dicts, including ``ImageRef`` from ``tools/store/images.py`` and ``PlanStep``/``Verdict``
from ``tools/replies/contracts.py``), which msgpack stores natively. The only Python objects
LangGraph itself puts into our checkpoints and pending writes are the interrupt of plan review,
the ``Command`` that answers it, and ``Send``. So those are allowed, and any other type, at any
depth, is a ``BlockedCheckpointType`` error naming the type (the saver adds the run id), raised
before anything is constructed. Legacy ``json`` and ``pickle`` blobs, which this project never
writes, are refused the same way. Plain data of the wrong shape gets past this list;
``checkpoints.shape`` refuses it.
"""

from __future__ import annotations

import importlib
import threading
import zlib
from typing import Any

import ormsgpack
from langgraph.checkpoint.serde import jsonplus
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

#: (module, name) of every object type a checkpoint of ours may hold.
ALLOWED_TYPES: frozenset[tuple[str, str]] = frozenset(
    {
        ("langgraph.types", "Interrupt"),  # the plan-review pause (nodes/review.py)
        ("langgraph.types", "Command"),  # the answer to it: Command(resume=...)
        ("langgraph.types", "Send"),  # LangGraph's own task packets
    }
)

#: The serialization kinds this project writes (``+zlib``: compressed, see CompressedSerializer).
_PLAIN_KINDS = ("null", "bytes", "bytearray", "msgpack")

COMPRESSED_SUFFIX = "+zlib"
COMPRESS_FROM_BYTES = 512  # smaller blobs are stored as they are


class RefusedCheckpoint(ValueError):
    """A checkpoint that interleave never writes and will not load: the database was written by
    something else than this tool, or tampered with. ``what`` says what was found in it."""

    def __init__(self, what: str, run_id: str | None = None) -> None:
        self.what, self.run_id = what, run_id
        where = f"run {run_id}" if run_id else "a run of this database"
        super().__init__(
            f"the checkpoint of {where} holds {what}, which interleave never stores "
            f"and refuses to load (a tampered or foreign runs database; nothing was executed or changed). "
            f"Restore the runs folder from a copy you trust, or delete that run's rows."
        )


class BlockedCheckpointType(RefusedCheckpoint):
    """A checkpoint names a type outside ``ALLOWED_TYPES``. Nothing of it was constructed."""

    def __init__(self, type_name: str, run_id: str | None = None) -> None:
        self.type_name = type_name
        super().__init__(f"the type {type_name}", run_id)

    def for_run(self, run_id: str | None) -> "BlockedCheckpointType":
        return BlockedCheckpointType(self.type_name, run_id)


# ormsgpack replaces an exception raised in the ext hook by a bare "ext_hook failed": the hook
# notes what it blocked here (per thread), and ``StateSerializer`` raises it as our error.
_blocked = threading.local()


def _unpack(data: bytes) -> Any:
    return ormsgpack.unpackb(data, ext_hook=_ext_hook, option=ormsgpack.OPT_NON_STR_KEYS)


def _block(type_name: str) -> BlockedCheckpointType:
    if getattr(_blocked, "name", None) is None:  # the innermost refusal is the one to report
        _blocked.name = type_name
    return BlockedCheckpointType(type_name)


def _ext_hook(code: int, data: bytes) -> Any:
    """Rebuild one msgpack extension value, only for the allowed types, inner values first
    checked by this same hook (LangGraph's hook would check the outer type only)."""
    if code == jsonplus.EXT_DELTA_SNAPSHOT:
        return jsonplus._DeltaSnapshot(_unpack(data))
    if code not in (
        jsonplus.EXT_CONSTRUCTOR_SINGLE_ARG,
        jsonplus.EXT_CONSTRUCTOR_POS_ARGS,
        jsonplus.EXT_CONSTRUCTOR_KW_ARGS,
    ):
        # methods, pydantic models, numpy arrays: none of them is ever in our state
        raise _block(f"msgpack extension {code}")
    parts = _unpack(data)
    if not isinstance(parts, (list, tuple)) or len(parts) < 3:
        raise _block("a malformed msgpack extension")
    module, name, args = parts[0], parts[1], parts[2]
    if (module, name) not in ALLOWED_TYPES:
        raise _block(f"{module}.{name}")
    kind = getattr(importlib.import_module(module), name)
    if code == jsonplus.EXT_CONSTRUCTOR_SINGLE_ARG:
        return kind(args)
    if code == jsonplus.EXT_CONSTRUCTOR_POS_ARGS:
        if (module, name) == ("langgraph.types", "Send"):
            return jsonplus._send_from_args(args)
        return kind(*args)
    return kind(**args)


class StateSerializer(JsonPlusSerializer):
    """LangGraph's msgpack encoding for writing; reading accepts only ``ALLOWED_TYPES``."""

    def __init__(self) -> None:
        super().__init__(allowed_msgpack_modules=tuple(ALLOWED_TYPES), __unpack_ext_hook__=_ext_hook)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, payload = data
        if kind not in _PLAIN_KINDS:
            raise BlockedCheckpointType(f"a {kind!r} blob")
        _blocked.name = None
        try:
            return super().loads_typed(data)
        except Exception:
            name, _blocked.name = getattr(_blocked, "name", None), None
            if name is not None:
                raise BlockedCheckpointType(name) from None
            raise


class CompressedSerializer(StateSerializer):
    """The state serializer with zlib on top for blobs of 512 bytes or more.

    SqliteSaver stores the full state in every checkpoint, so the database grows with (steps x
    checkpoints); the state is mostly repetitive text (prompts, reasoning, hashes) and compresses
    several times over. The type tag records the compression, so databases written without it
    still load.
    """

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        kind, data = super().dumps_typed(obj)
        if len(data) >= COMPRESS_FROM_BYTES:
            return kind + COMPRESSED_SUFFIX, zlib.compress(data, 6)
        return kind, data

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, payload = data
        if kind.endswith(COMPRESSED_SUFFIX):
            return super().loads_typed((kind[: -len(COMPRESSED_SUFFIX)], zlib.decompress(payload)))
        return super().loads_typed(data)

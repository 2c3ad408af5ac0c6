"""The shape a checkpoint's state must have when it is read back: the types the graph declares
for its state (``graph.state.State``), checked before LangGraph or a command uses any of it.

The allow-list in ``checkpoints.serde`` stops a tampered runs database from building objects, but
plain data of the wrong shape gets through it: a ``plan`` rewritten as a string, a
``structured_output`` as a list, an attempt without its image. Such a run then fails far from the
cause, with an ``AttributeError`` or ``KeyError`` inside a node or inside ``interleave show``, and
the error names neither the run nor the field. So every state channel a checkpoint holds, and
every write still pending against it, is checked here against the type the graph declares for it.
The check uses pydantic, strict: nothing is coerced, so ``"2"`` is not an ``int``. A mismatch is a
``MalformedCheckpoint`` that names the run, the field and the first thing wrong in it. Nothing is
repaired or written back, so the database stays exactly as it was.

The graph hands its state type to the saver it is compiled with (``graph.builder``); persistence
knows nothing of the graph above it, so the type arrives as ``StateShape(State)``. Channels the
graph does not declare (LangGraph's own, such as ``__start__`` or branch channels)
are left to LangGraph. Keys a ``TypedDict`` does not declare are ignored, as they are on
``State``. A pending write to a channel with a reducer is checked against what the reducer accepts
(its ``new`` parameter: ``merge_attempts`` takes one attempt or a list of them).
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import typing_extensions
from pydantic import TypeAdapter, ValidationError

from checkpoints.serde import RefusedCheckpoint


class MalformedCheckpoint(RefusedCheckpoint):
    """A state channel of a checkpoint does not have the type the graph declares for it."""

    def __init__(self, field: str, problem: str, run_id: str | None = None) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"a malformed {field!r} ({problem})", run_id)


def _declared(hint: Any) -> tuple[Any, Any]:
    """(the stored type, the type a write may carry) of one ``State`` field's annotation."""
    if typing.get_origin(hint) in (typing.NotRequired, typing.Required):
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is typing.Annotated:
        stored, *extras = typing.get_args(hint)
        reducer = next((e for e in extras if callable(e)), None)
        if reducer is not None:
            return stored, typing.get_type_hints(reducer).get("new", stored)
        return stored, stored
    return hint, hint


def _runtime_class(kind: Any) -> type:
    """The class a value of annotation ``kind`` has at run time (a ``TypedDict`` is a dict)."""
    if typing_extensions.is_typeddict(kind):  # graph.state's come from typing_extensions
        return dict
    origin = typing.get_origin(kind) or kind
    return origin if isinstance(origin, type) else object


class _Checker:
    """The stored type of one field and the type a write to it may carry; a write whose type is
    a union (``Attempt | list[Attempt]``) is checked against the member its value's class
    matches, so the error's path is one of the data, not of pydantic's union branches."""

    def __init__(self, hint: Any) -> None:
        stored, update = _declared(hint)
        self.stored = TypeAdapter(stored)
        members = typing.get_args(update) if typing.get_origin(update) in (typing.Union, types.UnionType) else ()
        self.update = TypeAdapter(update)
        self.members = [(_runtime_class(m), TypeAdapter(m)) for m in members]

    def for_write(self, value: Any) -> TypeAdapter:
        fallback = self.members[0][1] if self.members else self.update  # matches none: say what the first wants
        return next((adapter for cls, adapter in self.members if isinstance(value, cls)), fallback)


def _where(field: str, loc: Iterable[Any]) -> str:
    """``plan[0].step_number``; keys from the database are shown escaped (repr), never raw."""
    out = field
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += f".{part}"
        else:
            out += f"[{str(part)[:40]!r}]"
    return out


def _check(field: str, checker: TypeAdapter, value: Any, run_id: str | None) -> None:
    try:
        checker.validate_python(value, strict=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = f"at {_where(field, first['loc'])}: " if first["loc"] else ""
        found = type(first.get("input")).__name__
        raise MalformedCheckpoint(field, f"{where}{first['msg']}, found {found}", run_id) from None


class StateShape:
    """The declared types of a graph's state (a ``TypedDict`` such as ``graph.state.State``),
    for checking what a checkpoint holds. The pydantic validators are built on first use."""

    def __init__(self, schema: type) -> None:
        self.schema = schema

    @functools.cached_property
    def _checkers(self) -> dict[str, _Checker]:
        hints = typing.get_type_hints(self.schema, include_extras=True)
        return {name: _Checker(hint) for name, hint in hints.items()}

    def check(
        self,
        channel_values: Mapping[str, Any],
        pending_writes: Iterable[tuple[str, str, Any]] = (),
        *,
        run_id: str | None = None,
    ) -> None:
        """Raise ``MalformedCheckpoint`` if a declared channel, or a pending write to one, has
        the wrong shape; return None when all is well."""
        checkers = self._checkers
        if not isinstance(channel_values, Mapping):
            raise MalformedCheckpoint("channel_values", f"a {type(channel_values).__name__}, not a mapping", run_id)
        for field, value in channel_values.items():
            if field in checkers:
                _check(field, checkers[field].stored, value, run_id)
        for _task, field, value in pending_writes or ():
            if field in checkers:
                _check(field, checkers[field].for_write(value), value, run_id)

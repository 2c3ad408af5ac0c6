"""Judge prompts read at run time from the user's local copy of a benchmark's official repository.

Why: where a benchmark's own judge prompt decides whether our scores are comparable with its
leaderboard (WISE_Verified, WISE legacy, UEval), the prompt must be the authors' text, word for
word, at the commit the user checked out, not a copy pasted into our code that silently ages.
So the harness takes ``--wise-repo PATH`` / ``--ueval-repo PATH``, checks up front that the
folder holds the official file, and reads the prompt out of it without running it: the Python
source is parsed (``ast``) and only string constants are taken.

Two shapes are read, the two the official scripts use:

* module-level strings (``NAME = \"\"\"...\"\"\"`` or ``NAME = \"\"\"...\"\"\".strip()``), e.g.
  UEval's ``TEXT_TEMPLATE`` in ``ueval_eval.py`` (``module_strings``);
* the chat messages a function returns, whose user text is an f-string over fields of the
  benchmark item, e.g. WISE's ``build_evaluation_messages(prompt_data, image_base64)`` in
  ``vllm_eval.py`` (``MessagesTemplate``).

A file that does not have the expected shape (a fork, a much older or newer commit) is refused
with an error naming the file and what was missing, before anything is generated or asked.
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class OfficialRepoError(ValueError):
    """The official repository folder, or a file in it, is not what the harness can read."""


def check_repo(path: str | Path | None, option: str, repo: str, files: tuple[str, ...]) -> Path:
    """The repository folder, after checking it holds ``files``; raises OfficialRepoError."""
    clone = f"git clone https://github.com/{repo} and pass {option} PATH_OF_THE_CLONE"
    if path is None:
        raise OfficialRepoError(
            f"{option} is required: the judge prompt is read from your local "
            f"copy of the official repository {repo}; {clone}"
        )
    root = Path(path).expanduser()
    if not root.is_dir():
        raise OfficialRepoError(f"{option} {root} is not a folder; {clone}")
    missing = [name for name in files if not (root / name).is_file()]
    if missing:
        raise OfficialRepoError(f"{option} {root} is not a copy of {repo}: it has no {', '.join(missing)}; {clone}")
    return root


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        raise OfficialRepoError(f"{path} cannot be read as Python ({exc})") from None


def _string(node: ast.AST) -> str | None:
    """The text of ``"..."`` or ``"...".strip()``; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "strip"
        and not node.args
        and not node.keywords
    ):
        inner = _string(node.func.value)
        return None if inner is None else inner.strip()
    return None


def module_strings(path: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The module-level string constants ``names`` of the Python file ``path``."""
    found: dict[str, str] = {}
    for node in _parse(path).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in names
        ):
            text = _string(node.value)
            if text is not None:
                found[node.targets[0].id] = text
    missing = [name for name in names if name not in found]
    if missing:
        raise OfficialRepoError(
            f"{path} has no string constant {', '.join(missing)}; the "
            f"harness reads the judge prompt from it (check the checkout)"
        )
    return found


@dataclass(frozen=True)
class MessagesTemplate:
    """The system text and the user text (with item fields to fill in) of official chat
    messages, and whether the text comes before the image in the user message."""

    source: str  # "path:function"
    system: str
    user: tuple[str | tuple[str], ...]  # literal text, or (field name,) to fill in
    text_first: bool

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(part[0] for part in self.user if isinstance(part, tuple))

    def render(self, values: dict[str, Any]) -> str:
        """The user text with ``values`` filled in, exactly as the f-string formats them."""
        return "".join(part if isinstance(part, str) else format(values[part[0]]) for part in self.user)

    @property
    def digest(self) -> str:
        """A short hash of the texts, part of the prompt version (another text asks anew)."""
        text = repr((self.system, self.user, self.text_first))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _dict_items(node: ast.Dict) -> dict[str, ast.AST]:
    return {
        k.value: v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant) and isinstance(k.value, str)
    }


def _fstring(node: ast.AST, argument: str, where: str) -> tuple[str | tuple[str], ...]:
    """Literal pieces and ``argument['Field']`` placeholders of an f-string (or a constant)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return (node.value,)
    if not isinstance(node, ast.JoinedStr):
        raise OfficialRepoError(f"{where}: the user text is not a string or an f-string")
    parts: list[str | tuple[str]] = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(value.value)
            continue
        expr = value.value if isinstance(value, ast.FormattedValue) else None
        if (
            value.conversion != -1
            or value.format_spec is not None
            or not isinstance(expr, ast.Subscript)
            or not isinstance(expr.value, ast.Name)
            or expr.value.id != argument
            or not isinstance(expr.slice, ast.Constant)
        ):
            raise OfficialRepoError(
                f"{where}: the user text fills in something other than {argument}[FIELD] ({ast.unparse(value)})"
            )
        parts.append((expr.slice.value,))
    return tuple(parts)


def messages_template(path: Path, function: str) -> MessagesTemplate:
    """Read the messages ``function(item, image)`` returns in the Python file ``path``."""
    where = f"{path}:{function}"
    tree = _parse(path)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
    if not defs or not defs[0].args.args:
        raise OfficialRepoError(
            f"{path} has no function {function}(item, image); the harness "
            f"reads the judge prompt from it (check the checkout)"
        )
    argument = defs[0].args.args[0].arg
    returned = [n.value for n in ast.walk(defs[0]) if isinstance(n, ast.Return)]
    if len(returned) != 1 or not isinstance(returned[0], ast.List):
        raise OfficialRepoError(f"{where} does not return one literal list of messages")
    system, user, text_first = None, None, None
    for message in returned[0].elts:
        if not isinstance(message, ast.Dict):
            raise OfficialRepoError(f"{where}: a message is not a literal dict")
        fields = _dict_items(message)
        role = fields.get("role")
        content = fields.get("content")
        role = role.value if isinstance(role, ast.Constant) else None
        parts = content.elts if isinstance(content, ast.List) else []
        kinds = []
        for part in parts:
            if isinstance(part, ast.Dict):
                kind = _dict_items(part).get("type")
                kinds.append((kind.value if isinstance(kind, ast.Constant) else None, part))
        texts = [p for kind, p in kinds if kind == "text"]
        if role == "system" and len(texts) == 1:
            system = _string(_dict_items(texts[0]).get("text"))
        elif role == "user" and len(texts) == 1:
            user = _fstring(_dict_items(texts[0]).get("text"), argument, where)
            order = [kind for kind, _ in kinds]
            text_first = "image_url" not in order or order.index("text") < order.index("image_url")
    if system is None or user is None:
        raise OfficialRepoError(
            f"{where}: no system message with one text part, or no user message with one text part, was found"
        )
    return MessagesTemplate(where, system, user, bool(text_first))

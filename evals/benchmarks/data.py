"""Reading benchmark data files: JSON lists, JSONL files or folders of them, with errors that name
the file, the item and the fix (``DataFormatError``), before anything is generated or asked.
Image paths a data file names are confined to its folder (``data_image``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataFormatError(ValueError):
    """A benchmark data file is not in the expected format; the message names file, item, fix."""


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for every record of a JSON list file, a JSONL file, or every such file in a
    folder (sorted by name). ``where`` names the file and line or list position for errors."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
        if not files:
            raise DataFormatError(f"{path} holds no .json or .jsonl files; pass a data file or a folder of them")
        return [pair for file in files for pair in read_records(file)]
    if not path.is_file():
        raise DataFormatError(f"data file {path} does not exist; check --data")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                records.append((f"{path} line {number}", _loads(line, f"{path} line {number}")))
    else:
        data = _loads(text, str(path))
        if not isinstance(data, list):
            raise DataFormatError(
                f"{path} must hold a JSON list of items (or be a .jsonl file with "
                f"one item per line), got a {type(data).__name__}"
            )
        records = [(f"{path} item {index}", value) for index, value in enumerate(data)]
    for where, record in records:
        if not isinstance(record, dict):
            raise DataFormatError(f"{where}: each item must be a JSON object, got {type(record).__name__}")
    return records


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{where} is not valid JSON ({exc})") from None


def need(record: dict[str, Any], fields: dict[str, type | tuple[type, ...]], where: str, expected: str) -> None:
    """Raise a DataFormatError naming the item and the fields it lacks or has of a wrong type."""
    problems = [
        f"{name} is missing"
        if name not in record
        else f"{name} must be {getattr(kind, '__name__', kind)}, got {type(record[name]).__name__}"
        for name, kind in fields.items()
        if name not in record or not isinstance(record[name], kind)
    ]
    if problems:
        raise DataFormatError(f"{where}: {'; '.join(problems)}. Expected items with {expected}")


def data_image(root: Path, value: Any, where: str, item_id: str, key: str) -> str:
    """The file an item's ``key`` names, relative to ``root`` (the data file's folder or
    ``--images-root``): resolved, symlinks followed, and refused unless it is a file inside
    ``root``, so a data file cannot make the harness read (and send to a judge) other files."""
    try:
        base = Path(root).resolve()
        path = (base / str(value)).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a symlink loop
        raise DataFormatError(f"{where} (id {item_id}): {key} {value!r} is not a usable path ({exc})") from None
    if not path.is_relative_to(base):
        raise DataFormatError(
            f"{where} (id {item_id}): {key} {value!r} resolves to {path}, outside {base}; image "
            f"paths must stay inside the data's folder (relative, no '..', no symlink leading out): "
            f"move the images there, or pass --images-root pointing at the folder that holds them"
        )
    if not path.is_file():
        raise DataFormatError(
            f"{where} (id {item_id}): {key} {path} does not exist; point --images-root at the "
            f"folder the data file's image paths are relative to"
        )
    return str(path)


def unique_ids(items: list[Item]) -> list[Item]:
    seen: dict[str, int] = {}
    for item in items:
        seen[item.id] = seen.get(item.id, 0) + 1
    repeated = sorted(i for i, n in seen.items() if n > 1)
    if repeated:
        raise DataFormatError(f"item ids must be unique; repeated: {repeated[:5]}")
    return items


@dataclass(frozen=True)
class Item:
    """One benchmark item: its id, the category it is reported under, and its record."""

    id: str
    category: str
    record: dict[str, Any] = field(hash=False, compare=False)

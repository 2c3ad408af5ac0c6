"""The taxonomy of prompt sets: domains -> subcategories, read from YAML and checked.

Why this module exists: the taxonomy (``training/data/taxonomy.yaml``) fixes which kinds of
interleaved tasks the training requests cover, and every row id derives from a subcategory id.
A slip in the file (a repeated id, a missing or misspelt key) would silently skew or break a
whole prompt set, so reading it is one job on its own: every problem is reported with its line
and the fix before any teacher is asked.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TAXONOMY = Path(__file__).with_name("taxonomy.yaml")

_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_LINE = object()  # key under which the YAML loader records the line of each mapping


@dataclass(frozen=True)
class Subcategory:
    """One leaf of the taxonomy, with its domain's name and description copied in."""

    id: str
    name: str
    description: str
    domain: str
    domain_name: str
    domain_description: str
    examples: tuple[str, ...] = ()
    needs_images: bool = False


def _yaml(text: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Loader, node: Any) -> dict:
        value = loader.construct_mapping(node, deep=True)
        value[_LINE] = node.start_mark.line + 1
        return value

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def _check_entry(
    entry: Any, where: str, required: dict[str, type], optional: dict[str, type], errors: list[str]
) -> bool:
    """Append a message per problem of one mapping; True when it can be read further."""
    if not isinstance(entry, dict):
        errors.append(f"{where}: expected a mapping with keys {sorted(required)}, got {type(entry).__name__}")
        return False
    where = f"line {entry[_LINE]} ({where})"
    ok = True
    for key, kind in {**required, **optional}.items():
        if key not in entry:
            if key in required:
                errors.append(f"{where}: missing '{key}'; add it")
                ok = False
            continue
        value = entry[key]
        if not isinstance(value, kind) or (kind is str and not value.strip()):
            errors.append(f"{where}: '{key}' must be a non-empty {kind.__name__}, got {value!r}")
            ok = False
    unknown = sorted(str(k) for k in entry if k is not _LINE and k not in required and k not in optional)
    if unknown:
        errors.append(f"{where}: unknown key(s) {unknown}; allowed: {sorted([*required, *optional])}")
    if ok and "id" in required and not _SLUG.match(entry["id"]):
        errors.append(
            f"{where}: id {entry['id']!r} is not a slug; use lower-case letters, "
            f"digits and single hyphens, e.g. 'paper-crafts'"
        )
    return ok


def load_taxonomy(path: str | os.PathLike) -> list[Subcategory]:
    """Read and check a taxonomy file (YAML; JSON is YAML too). Raises ``ValueError`` listing
    every problem with its line and the fix; see ``training/data/taxonomy.yaml`` for the shape."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        data = _yaml(raw.decode("utf-8"))
    except Exception as exc:  # yaml.YAMLError or UnicodeDecodeError; both name the position
        raise ValueError(f"{path}: not a readable YAML file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("domains"), list) or not data["domains"]:
        raise ValueError(
            f"{path}: expected a top-level 'domains:' list with at least one domain (see training/data/taxonomy.yaml)"
        )
    errors: list[str] = []
    seen_domains: dict[str, int] = {}
    seen: dict[str, int] = {}
    found: list[Subcategory] = []
    for d, domain in enumerate(data["domains"]):
        where = f"domains[{d}]"
        if not _check_entry(
            domain, where, {"id": str, "name": str, "description": str, "subcategories": list}, {}, errors
        ):
            continue
        if domain["id"] in seen_domains:
            errors.append(
                f"line {domain[_LINE]} ({where}): domain id {domain['id']!r} is also "
                f"used at line {seen_domains[domain['id']]}; rename one"
            )
        seen_domains.setdefault(domain["id"], domain[_LINE])
        if not domain["subcategories"]:
            errors.append(f"line {domain[_LINE]} ({where}): 'subcategories' is empty; add one")
        for s, sub in enumerate(domain["subcategories"]):
            here = f"{where}.subcategories[{s}]"
            if not _check_entry(
                sub,
                here,
                {"id": str, "name": str, "description": str},
                {"examples": list, "needs_images": bool},
                errors,
            ):
                continue
            examples = sub.get("examples", [])
            if any(not isinstance(e, str) or not e.strip() for e in examples):
                errors.append(f"line {sub[_LINE]} ({here}): every example must be a non-empty string")
            if sub["id"] in seen:
                errors.append(
                    f"line {sub[_LINE]} ({here}): subcategory id {sub['id']!r} is "
                    f"also used at line {seen[sub['id']]}; ids must be unique across "
                    f"the file (row ids derive from them), rename one"
                )
                continue
            seen[sub["id"]] = sub[_LINE]
            found.append(
                Subcategory(
                    id=sub["id"],
                    name=sub["name"].strip(),
                    description=sub["description"].strip(),
                    domain=domain["id"],
                    domain_name=domain["name"].strip(),
                    domain_description=domain["description"].strip(),
                    examples=tuple(e.strip() for e in examples if isinstance(e, str)),
                    needs_images=sub.get("needs_images", False),
                )
            )
    if errors:
        raise ValueError(f"{path}: {len(errors)} problem(s) in the taxonomy:\n  " + "\n  ".join(errors))
    return found

"""De-duplication of request texts: exact (after normalising) and near (word-bigram Jaccard).

Why this module exists: a prompt set whose requests repeat one another trains the planner and
critic on the same task many times over. A request is an *exact* duplicate of a kept one when
both are equal after normalising case, Unicode, punctuation and whitespace, and a *near*
duplicate when the Jaccard similarity of their word-bigram sets is at least the threshold
(default ``NEAR_THRESHOLD`` = 0.8). Comparing every pair would be quadratic in the file's size,
so ``Deduplicator`` indexes kept texts by prefix tokens and gives the same answers.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from collections.abc import Iterable

NEAR_THRESHOLD = 0.8

_PUNCT = re.compile(r"[^\w\s]|_")


def normalise(text: str) -> str:
    """The form exact duplicates are compared in: NFKC, case-folded, punctuation removed,
    whitespace collapsed.

    >>> normalise("  Fold a Paper-Crane,  please! ")
    'fold a paper crane please'
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCT.sub(" ", text).split())


def shingles(normalised: str, size: int = 2) -> frozenset[str]:
    """Word ``size``-grams of a normalised text (the whole text when it is shorter)."""
    words = normalised.split()
    if len(words) <= size:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i : i + size]) for i in range(len(words) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


class Deduplicator:
    """Remembers kept texts and says whether a new one repeats one of them.

    Near duplicates are found with prefix filtering: two sets with Jaccard >= t must share a
    token within the first ``n - ceil(t*n) + 1`` tokens of each (one fixed token order), so only
    texts sharing such a token are compared exactly. Same answers as comparing all pairs.

    >>> d = Deduplicator()
    >>> d.add("Show how to fold a paper crane."), d.add("show how to fold a paper crane")
    (None, 'exact')
    """

    def __init__(self, threshold: float = NEAR_THRESHOLD) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self._exact: set[str] = set()
        self._sets: list[frozenset[str]] = []
        self._index: dict[str, list[int]] = {}

    def _prefix(self, tokens: frozenset[str]) -> list[str]:
        ordered = sorted(tokens, key=lambda t: (zlib.crc32(t.encode()), t))
        return ordered[: len(ordered) - math.ceil(self.threshold * len(ordered) - 1e-9) + 1]

    def classify(self, text: str) -> str | None:
        """``"exact"``, ``"near"`` or None (new), without remembering ``text``."""
        key = normalise(text)
        if key in self._exact:
            return "exact"
        tokens = shingles(key)
        candidates = {i for t in self._prefix(tokens) for i in self._index.get(t, ())}
        if any(jaccard(tokens, self._sets[i]) >= self.threshold - 1e-12 for i in candidates):
            return "near"
        return None

    def add(self, text: str) -> str | None:
        """Remember ``text`` unless it is a duplicate; return why it was refused, else None."""
        reason = self.classify(text)
        if reason is None:
            key = normalise(text)
            tokens = shingles(key)
            self._exact.add(key)
            self._sets.append(tokens)
            for token in self._prefix(tokens):
                self._index.setdefault(token, []).append(len(self._sets) - 1)
        return reason


def dedupe(texts: Iterable[str], threshold: float = NEAR_THRESHOLD) -> tuple[list[str], dict[str, int]]:
    """Keep the first of each group of duplicates; return (kept, {"exact": n, "near": n})."""
    seen, kept, dropped = Deduplicator(threshold), [], {"exact": 0, "near": 0}
    for text in texts:
        reason = seen.add(text)
        if reason is None:
            kept.append(text)
        else:
            dropped[reason] += 1
    return kept, dropped

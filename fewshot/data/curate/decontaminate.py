"""Decontamination before training (GPT-3 §4, Appendix C): drop every training document that
shares a 13-gram of words with an evaluation example (an example shorter than 13 words: the
whole of it). Words are lowercased and stripped of punctuation, and hashed with the
contamination check's n-gram hash (fewshot.data.ngrams); a hash match is then confirmed
word for word, so a collision can never drop a document.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fewshot.data.curate.documents import word_ids, words
from fewshot.data.ngrams import NGRAM, ngram_hashes


class Decontaminator:
    def __init__(self, texts: Sequence[str], n: int = NGRAM) -> None:
        self.n = n
        self._grams: dict[int, dict[int, tuple[str, ...]]] = {}  # size -> hash -> the words
        for text in texts:
            tokens = words(text)
            size = min(n, len(tokens))
            if size == 0:
                continue
            for i, h in enumerate(ngram_hashes(word_ids(tokens), size).tolist()):
                self._grams.setdefault(size, {})[h] = tuple(tokens[i:i + size])
        self._sorted = {size: np.array(sorted(grams), dtype=np.uint64) for size, grams in self._grams.items()}
        self.removed: list[tuple[str, str]] = []  # (the document's start, the shared n-gram)

    def check(self, text: str) -> str | None:
        """The n-gram this document shares with an evaluation example, or None; remembered."""
        shared = self.shared(text)
        if shared is not None:
            self.removed.append((text[:80], shared))
        return shared

    def shared(self, text: str) -> str | None:
        """The same, without remembering it (a worker process's half)."""
        if not self._grams:
            return None
        tokens = words(text)
        ids = word_ids(tokens)
        for size, table in self._sorted.items():
            hashes = ngram_hashes(ids, size)
            at = np.searchsorted(table, hashes).clip(max=len(table) - 1)
            hits = np.flatnonzero(table[at] == hashes)
            for i in hits.tolist():
                gram = tuple(tokens[i:i + size])
                if self._grams[size].get(int(hashes[i])) == gram:
                    return " ".join(gram)
        return None

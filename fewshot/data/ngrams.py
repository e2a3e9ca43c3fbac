"""Hashes of every n-gram of a sequence of ids, vectorised: the one n-gram hash of the project.

The contamination check (fewshot.eval.contamination) scans token shards with it, and the
curation pipeline's decontamination stage (fewshot.data.curate.decontaminate) scans
documents' words with it.
"""

from __future__ import annotations

import numpy as np

NGRAM = 13  # GPT-3 Appendix C
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplication mod 2^64 loses no bits


def ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """Hash of every n-gram of `tokens` (len(tokens) - n + 1 of them), as uint64.

    Horner's rule over shifted views: h = ((t0 * M + t1) * M + t2) ..., wrapping mod 2^64."""
    count = len(tokens) - n + 1
    if count <= 0 or n <= 0:
        return np.zeros(0, dtype=np.uint64)
    tokens = np.asarray(tokens).astype(np.uint64, copy=False)
    hashes = tokens[:count].copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            hashes *= _MULTIPLIER
            hashes += tokens[j: j + count]
    return hashes

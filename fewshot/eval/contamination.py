"""Contamination check, as in GPT-3 §4 and Appendix C: which test examples share a 13-gram
with the training data?

An example's text is its input and target (for multiple choice: the correct choice)
joined by a space, tokenized with the *training data's* tokenizer. It is contaminated if
any of its 13-grams occurs in the train split; a text shorter than 13 tokens is
contaminated if the whole of it occurs there (GPT-3 Appendix C does the same for short
examples).

How, for corpora far larger than memory: every n-gram of the test texts is hashed
(polynomial hash over token ids, wrapping mod 2^64), and the train split is streamed in
chunks that overlap by n - 1 tokens, so no n-gram is lost at a chunk or shard boundary.
The hashes of all n-grams of a chunk come from n vectorised multiply-adds; a binary
search against the sorted test hashes finds candidates, and each candidate is compared
token by token, so a hash collision can never flag an example.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from fewshot.data.ngrams import NGRAM, ngram_hashes
from fewshot.data.shards import TokenData
from fewshot.progress import RateColumn

if TYPE_CHECKING:
    from fewshot.eval.harness import EvalTask
    from fewshot.tasks.base import Example

CHUNK_TOKENS = 1 << 22  # ~32 MB of uint64 hashes per pass over a chunk


def example_text(item: Example) -> str:
    """The text of an example that the check looks for: input, a space, the answer."""
    return f"{item.input} {item.target}"


@dataclass
class _Grams:
    """The test n-grams of one length: sorted unique hashes and where each one came from."""

    size: int
    sources: dict[int, list[tuple[int, int]]]  # hash -> [(example, offset)]
    hashes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    def refresh(self, flags: list[bool]) -> None:
        """Drop the n-grams of examples already flagged: common text is then not re-verified."""
        self.sources = {h: s for h, s in self.sources.items() if not all(flags[e] for e, _ in s)}
        self.hashes = np.array(sorted(self.sources), dtype=np.uint64)


@dataclass(frozen=True)
class ContaminationReport:
    flags: list[bool]
    tokens: int  # training tokens scanned
    seconds: float

    @property
    def contaminated(self) -> int:
        return sum(self.flags)


def check_contamination(texts: Sequence[str], data_dir: Path, n: int = NGRAM, *, chunk_tokens: int = CHUNK_TOKENS,
                        progress: bool = False) -> ContaminationReport:
    """Flag each text that shares an n-gram (or, if shorter, all of itself) with the train split of `data_dir`."""
    if n < 1 or chunk_tokens < 1:
        raise ValueError("n and chunk_tokens must be at least 1")
    started = time.perf_counter()
    data = TokenData.open(data_dir)
    encoded = [np.asarray(data.tokenizer.encode(text), dtype=np.int64) for text in texts]
    flags = [False] * len(texts)
    grams: dict[int, _Grams] = {}
    for example, ids in enumerate(encoded):
        size = min(n, len(ids))
        if size == 0:
            continue  # an empty text shares nothing
        group = grams.setdefault(size, _Grams(size, defaultdict(list)))
        for offset, h in enumerate(ngram_hashes(ids, size).tolist()):
            group.sources[h].append((example, offset))
    for group in grams.values():
        group.refresh(flags)

    train = data.split("train")
    total = len(train)
    overlap = max(grams, default=1) - 1
    columns = (TextColumn("contamination check"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} tokens"),
               RateColumn("M tokens", scale=1e6), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("scan", total=total)
        for start in range(0, total if grams else 0, chunk_tokens):
            # The window reaches n - 1 tokens past the chunk, so every n-gram that starts in
            # the chunk is whole; the window copies across a shard boundary.
            window = np.asarray(train.window(start, min(chunk_tokens + overlap, total - start)), dtype=np.int64)
            changed = False
            for group in grams.values():
                if len(group.hashes):
                    changed |= _scan(window, group, encoded, flags)
            if changed:
                for group in grams.values():
                    group.refresh(flags)
            bar.advance(task, min(chunk_tokens, total - start))
            if not any(len(g.hashes) for g in grams.values()):
                break  # every example is flagged
    return ContaminationReport(flags, total, time.perf_counter() - started)


def _scan(window: np.ndarray, group: _Grams, encoded: list[np.ndarray], flags: list[bool]) -> bool:
    """Flag examples with an n-gram of `group.size` in `window`; True if any was newly flagged."""
    hashes = ngram_hashes(window, group.size)
    if not len(hashes):
        return False
    where = np.searchsorted(group.hashes, hashes).clip(max=len(group.hashes) - 1)
    positions = np.flatnonzero(group.hashes[where] == hashes)
    if not len(positions):
        return False
    changed = False
    offsets = np.arange(group.size)
    order = np.argsort(hashes[positions], kind="stable")
    positions, candidates = positions[order], hashes[positions][order]
    unique, firsts = np.unique(candidates, return_index=True)
    for h, first, last in zip(unique.tolist(), firsts.tolist(), [*firsts[1:].tolist(), len(candidates)]):
        found = window[positions[first:last, None] + offsets]  # (hits, size): the train tokens
        for example, offset in group.sources[h]:
            if flags[example]:
                continue
            if (found == encoded[example][offset: offset + group.size]).all(axis=1).any():
                flags[example] = changed = True
    return changed


def find_contaminated(texts: Sequence[str], data_dir: Path, n: int = NGRAM, *, chunk_tokens: int = CHUNK_TOKENS,
                      progress: bool = False) -> list[bool]:
    """For each text: does it share an n-gram (or, if shorter than n tokens, all of itself)
    with the training shards of `data_dir`?"""
    return check_contamination(texts, data_dir, n, chunk_tokens=chunk_tokens, progress=progress).flags


def flag_tasks(tasks: Sequence[EvalTask], data_dir: Path, n: int = NGRAM, *, progress: bool = False) -> list[EvalTask]:
    """The tasks with `contaminated` set for every query, in one pass over the training data."""
    texts = [example_text(query) for task in tasks for query in task.queries]
    flags = find_contaminated(texts, data_dir, n, progress=progress)
    flagged, start = [], 0
    for task in tasks:
        end = start + len(task.queries)
        flagged.append(dataclasses.replace(task, contaminated=tuple(flags[start:end])))
        start = end
    return flagged

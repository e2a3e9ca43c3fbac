"""The per-document work of curation, spread over processes: what each stage can find out
about a document alone (its digest, MinHash, quality score, shared evaluation n-gram) is
computed for batches of documents in parallel; the decisions that depend on the documents
before it (was it seen? is a kept one near it? the Pareto draw) stay in the main process,
in document order, so the output is the same for any number of workers.

- `workers=1`: in this process.
- `workers=N`: N local processes (concurrent.futures, spawned; the stages are sent once each).
- `scheduler="tcp://HOST:PORT"`: a Dask distributed cluster (dask-scheduler plus dask-worker
  on each machine, or dask-jobqueue on Slurm); the stages are scattered to every worker once,
  batches go as tasks. Nothing here schedules anything itself.
Batches are computed a window at a time (2 per worker), so memory holds a few batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

BATCH_DOCUMENTS = 256


@dataclass(frozen=True)
class Stages:
    """The stages' pure parts, as sent to a worker."""

    dedup: object | None  # Deduplicator (digest, signature)
    quality: object | None  # QualityFilter (scores)
    decontaminator: object | None  # Decontaminator (shared)


@dataclass(frozen=True)
class Looked:
    digest: bytes | None
    signature: object | None  # LeanMinHash
    score: float | None
    shared: str | None
    size: int


def look(stages: Stages, texts: list[str], judged: bool) -> list[Looked]:
    scores = stages.quality.scores(texts) if stages.quality is not None and judged else [None] * len(texts)
    return [Looked(stages.dedup.digest(text) if stages.dedup else None,
                   stages.dedup.signature(text) if stages.dedup else None,
                   None if score is None else float(score),
                   stages.decontaminator.shared(text) if stages.decontaminator else None,
                   len(text.encode("utf-8", "surrogatepass")))
            for text, score in zip(texts, scores)]


_STAGES: Stages | None = None  # a local worker's copy, installed once


def _install(stages: Stages) -> None:
    global _STAGES
    _STAGES = stages


def _look_installed(texts: list[str], judged: bool) -> list[Looked]:
    return look(_STAGES, texts, judged)


def batches(texts: Iterable[str], size: int = BATCH_DOCUMENTS) -> Iterator[list[str]]:
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Pool:
    """Ordered map of `look` over batches, here, in local processes, or on a Dask cluster."""

    def __init__(self, stages: Stages, workers: int = 1, scheduler: str | None = None) -> None:
        self.stages, self.workers, self.scheduler = stages, workers, scheduler
        self._executor = self._client = self._remote = None

    def __enter__(self) -> Pool:
        if self.scheduler is not None:
            from distributed import Client

            self._client = Client(self.scheduler)
            self.workers = max(1, len(self._client.scheduler_info()["workers"]))
            self._remote = self._client.scatter(self.stages, broadcast=True)
        elif self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_install, initargs=(self.stages,))
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
        if self._client is not None:
            self._client.close()

    def map(self, texts: Iterable[str], judged: bool) -> Iterator[tuple[str, Looked]]:
        """(text, what was found) for every text, in order."""
        window: list[list[str]] = []
        for batch in batches(texts):
            window.append(batch)
            if len(window) >= 2 * self.workers:
                yield from self._flush(window, judged)
                window = []
        yield from self._flush(window, judged)

    def _flush(self, window: list[list[str]], judged: bool) -> Iterator[tuple[str, Looked]]:
        if not window:
            return
        if self._client is not None:
            results = self._client.gather([self._client.submit(look, self._remote, batch, judged, pure=False)
                                           for batch in window])
        elif self._executor is not None:
            results = list(self._executor.map(_look_installed, window, [judged] * len(window)))
        else:
            results = [look(self.stages, batch, judged) for batch in window]
        for batch, found in zip(window, results):
            yield from zip(batch, found)

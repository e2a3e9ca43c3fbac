"""Timing two implementations of the same work fairly: interleaved, warmed up, medians.

On a shared machine the load drifts from second to second. Running fewshot and its peer
in alternation (A B A B ...) lets both see the same drift, so their ratio stays honest
even when the absolute numbers move; the median then ignores the odd stalled round.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fewshot.progress import RateColumn


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], object], device: torch.device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - start, result


def progress_bar(enabled: bool) -> Progress:
    """A transient bar on stderr with its rate and ETA; disabled when stderr is not a terminal (callers pass that)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=not enabled)


def interleave(runs: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device,
               progress: bool = False, label: str = "timing") -> dict[str, list[float]]:
    """Seconds per call of each run over `repeats` rounds, after `warmup` untimed rounds.

    Every round calls each run once, in the order given: A B A B ... Warm-up rounds pay for
    lazy allocation, kernel selection and caches, which belong to neither side.
    """
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    with progress_bar(progress) as bar:
        task = bar.add_task(label, total=(warmup + repeats) * len(runs))
        for round_ in range(warmup + repeats):
            for name, run in runs.items():
                elapsed, _ = timed(run, device)
                if round_ >= warmup:
                    seconds[name].append(elapsed)
                bar.advance(task)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def pair_ratios(ours: list[float], peer: list[float]) -> list[float]:
    """Per round: peer seconds over our seconds (> 1: we are faster), from the same round's pair."""
    return [p / o for o, p in zip(ours, peer)]


def busy_cores(window: float = 0.25) -> tuple[float | None, int]:
    """(cores other work keeps busy right now, cores), measured while we wait `window` seconds.

    Linux: from /proc/stat's idle time over the window (the load average lags by a minute,
    so it would blame a job that just ended). Elsewhere: the 1-minute load average, or None.
    Under half a core is noise, not contention, and reads as 0.
    """
    cores = os.cpu_count() or 1
    busy = _busy_from_proc_stat(window)
    if busy is None and hasattr(os, "getloadavg"):
        busy = os.getloadavg()[0]
    if busy is None:
        return None, cores
    return (busy if busy >= 0.5 else 0.0), cores


def _busy_from_proc_stat(window: float) -> float | None:
    def sample() -> tuple[int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # user..steal; guest time is already inside user

    first = sample()
    if first is None:
        return None
    time.sleep(window)
    second = sample()
    if second is None or second[0] <= first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * (total - idle) / total

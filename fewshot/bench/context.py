"""`fewshot bench context`: what each sequence mixer costs as the context grows.

At every length, for every mixer: one training step's forward + backward time and its peak
memory, and one decoding step's time and its cache (or state) at that position. Each point
runs in a fresh process, so its peak is its own: on a GPU torch.cuda.max_memory_allocated,
on a CPU (no allocator statistics) the process's peak RSS over its RSS once the model and
batch exist (Linux: the high-water mark is reset first, /proc/self/clear_refs). The points of one length run back to back, mixer after mixer, so drift on a
shared machine hits them alike. Exponents are least-squares slopes in log-log space.

Dense attention runs twice: through scaled_dot_product_attention's default kernel (on a CPU
the flash kernel, memory-efficient: it never holds the T x T scores), and as `dense-math`,
with SDPA's math path forced, which materialises the scores as attention was first written.
"""

from __future__ import annotations

import math
import multiprocessing
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fewshot.errors import FewshotError

MATH = "dense-math"  # dense attention with SDPA's math path: the T x T scores in memory
DECODE_STEPS = 8


@dataclass(frozen=True)
class Point:
    mixer: str
    length: int
    train_seconds: float | None  # median forward + backward of one sequence
    train_peak_bytes: int | None  # above the process's footprint with model and batch in memory
    decode_ms: float | None  # one token at position `length`
    cache_bytes: int | None  # the decoding cache or state holding `length` positions
    error: str | None = None


def parse_lengths(text: str) -> tuple[int, ...]:
    """`256..16384` (doubling) or `256,1024,4096`."""
    try:
        if ".." in text:
            low, high = (int(part) for part in text.split(".."))
            lengths = [low]
            while low >= 1 and lengths[-1] * 2 <= high:
                lengths.append(lengths[-1] * 2)
        else:
            lengths = [int(part) for part in text.split(",")]
    except ValueError:
        raise FewshotError(f"--lengths takes 256..16384 or 256,1024,4096, got {text!r}") from None
    if not lengths or min(lengths) < 2:
        raise FewshotError(f"--lengths must be >= 2, got {text!r}")
    return tuple(sorted(set(lengths)))


def parse_mixers(text: str, extra: tuple[str, ...] = (MATH,)) -> tuple[str, ...]:
    """Comma-separated mixer names: fewshot.config.MIXERS, and `extra` (the benchmark's dense-math)."""
    from fewshot.config import MIXERS

    known = (*MIXERS, *extra)
    mixers = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [m for m in mixers if m not in known]
    if unknown or not mixers:
        raise FewshotError(f"--mixers: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(known)}")
    return mixers


def _model(mixer: str, length: int, preset: str, layers: int, device: str):
    import torch

    from fewshot.config import preset as get_preset
    from fewshot.model import GPT

    config = get_preset(preset).replace(n_layer=layers, context=length + DECODE_STEPS + 1, dropout=0.0,
                                        attention="dense" if mixer == MATH else mixer)
    torch.manual_seed(0)
    return GPT(config).to(device)


def _rss(field: str) -> int | None:
    """VmRSS or VmHWM (the peak) of this process from /proc, in bytes; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> int:
    """Start a new high-water mark; returns the footprint it starts from. On Linux, writing 5 to
    clear_refs resets VmHWM to the current RSS; elsewhere the lifetime peak is the baseline."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        current = _rss("VmRSS")
        if current is not None:
            return current
    except OSError:
        pass
    return _peak_rss()


def _peak_rss() -> int:
    peak = _rss("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # Linux reports KiB


def measure_point(mixer: str, length: int, preset: str, layers: int, repeats: int, device: str, threads: int) -> Point:
    """One point, in this process (run it in a fresh one: the peak RSS is a high-water mark)."""
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.set_num_threads(threads)
    target = torch.device(device)
    model = _model(mixer, length, preset, layers, device)
    x = torch.randint(0, model.config.vocab_size, (1, length + DECODE_STEPS), generator=torch.Generator().manual_seed(0))
    x = x.to(target)
    kernel = sdpa_kernel(SDPBackend.MATH) if mixer == MATH else contextlib.nullcontext()

    def train_step() -> None:
        _, loss = model(x[:, :length], x[:, 1 : length + 1])
        loss.backward()
        model.zero_grad(set_to_none=True)

    def sync() -> None:
        if target.type == "cuda":
            torch.cuda.synchronize(target)

    with kernel:
        if target.type == "cuda":
            torch.cuda.reset_peak_memory_stats(target)
            base = torch.cuda.memory_allocated(target)
        else:
            base = _reset_peak_rss()
        train_step()  # the first step is the memory measurement (and the warm-up)
        sync()
        peak = (torch.cuda.max_memory_allocated(target) if target.type == "cuda" else _peak_rss()) - base
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            train_step()
            sync()
            times.append(time.perf_counter() - start)
        with torch.no_grad():
            model.eval()
            cache = model.new_cache(1, capacity=length + DECODE_STEPS)
            model.step(x[:, :length], cache, last_only=True)
            cache_bytes = sum(layer.nbytes for layer in cache.layers)
            steps = []
            for t in range(DECODE_STEPS):
                sync()
                start = time.perf_counter()
                model.decode_step(x[:, length + t : length + t + 1], cache)
                sync()
                steps.append(time.perf_counter() - start)
    return Point(mixer, length, statistics.median(times), max(0, peak), 1000 * statistics.median(steps[1:]), cache_bytes)


def _in_fresh_process(args: tuple) -> Point:
    # A fork server with torch already imported hands each point a fresh process in a fraction
    # of a second (a spawned one imports torch again: seconds); the fork happens before any
    # torch thread pool exists, so it is safe.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "fewshot.model"])
    with context.Pool(1, maxtasksperchild=1) as pool:
        try:
            return pool.apply(measure_point, args)
        except Exception as error:  # noqa: BLE001  a point that fails (out of memory) is reported, not fatal
            return Point(args[0], args[1], None, None, None, None, f"{type(error).__name__}: {str(error)[:200]}")


def bench_context(mixers: tuple[str, ...], lengths: tuple[int, ...], preset: str = "nano", layers: int = 1,
                  repeats: int = 3, device: str = "cpu", threads: int | None = None, progress: bool = False) -> list[Point]:
    import torch

    from fewshot.bench.timing import progress_bar

    threads = threads or torch.get_num_threads()
    points = []
    with progress_bar(progress) as bar:
        task = bar.add_task("bench context", total=len(mixers) * len(lengths))
        for length in lengths:
            for mixer in mixers:
                bar.update(task, description=f"{mixer} at {length:,}")
                points.append(_in_fresh_process((mixer, length, preset, layers, repeats, device, threads)))
                bar.advance(task)
    return points


def exponent(lengths: list[int], values: list[float]) -> float | None:
    """The slope of log(value) against log(length); None with fewer than 2 usable points."""
    pairs = [(math.log(n), math.log(v)) for n, v in zip(lengths, values) if v is not None and v > 0]
    if len(pairs) < 2:
        return None
    x, y = np.array(pairs).T
    return float(np.polyfit(x, y, 1)[0])


METRICS = {  # key: (label, unit)
    "train_seconds": ("training step (forward + backward)", "s"),
    "train_peak_bytes": ("training peak memory", "bytes"),
    "decode_ms": ("decoding time per token", "ms"),
    "cache_bytes": ("decoding cache / state", "bytes"),
}


LONG = 8  # "long" lengths: at least the longest / LONG (the top four of a doubling sweep)


def summary(points: list[Point]) -> dict[str, Any]:
    """Per mixer and metric: the fitted exponent over all the lengths and over the long ones,
    and every point. At the short end a step's fixed costs (Python, kernel launches) hide how
    it grows, so an O(T) mixer's slope over all lengths can come out below 1."""
    mixers = list(dict.fromkeys(p.mixer for p in points))
    longest = max((p.length for p in points), default=0)
    fits, long_fits = {}, {}
    for mixer in mixers:
        mine = [p for p in points if p.mixer == mixer]
        long = [p for p in mine if p.length * LONG >= longest]
        fits[mixer] = {key: exponent([p.length for p in mine], [getattr(p, key) for p in mine]) for key in METRICS}
        long_fits[mixer] = {key: exponent([p.length for p in long], [getattr(p, key) for p in long]) for key in METRICS}
    return {"points": [asdict(p) for p in points], "exponents": fits, "exponents_long": long_fits}


def write_report(points: list[Point], out: Path, machine: dict[str, Any], settings: dict[str, Any]) -> list[Path]:
    from fewshot.bench.context_plots import plot_metric
    from fewshot.files import atomic_write_text, write_json

    out.mkdir(parents=True, exist_ok=True)
    result = {**summary(points), "machine": machine, "settings": settings}
    write_json(out / "context.json", result)
    plots = [plot_metric(points, result["exponents"], key, *METRICS[key], out / f"{key}.png") for key in METRICS]
    atomic_write_text(out / "report.md", markdown(points, result["exponents"], result["exponents_long"], machine, settings))
    return [out / "context.json", out / "report.md", *plots]


def markdown(points: list[Point], exponents: dict[str, dict[str, float | None]],
             long_exponents: dict[str, dict[str, float | None]], machine: dict[str, Any], settings: dict[str, Any]) -> str:
    lengths = sorted({p.length for p in points})
    longest = max(lengths)
    at = {(p.mixer, p.length): p for p in points}
    reference = at.get((MATH, longest))

    def fmt(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
        return "failed" if value is None else f"{value / scale:.{digits}g}"

    lines = [
        "# Sequence mixers against the context length", "",
        f"Machine: {machine.get('cpu')} ({machine.get('cores')} cores, {settings['threads']} threads), "
        f"device {settings['device']}; preset {settings['preset']} with {settings['layers']} layer(s), batch 1, "
        f"median of {settings['repeats']} training steps and of {DECODE_STEPS - 1} decoding steps per point. "
        "`dense` is scaled_dot_product_attention's default kernel (flash / memory-efficient on a CPU); "
        "`dense-math` forces its math path, which holds the T x T scores.", "",
        f"Exponents are least-squares slopes in log-log space over every length, and (\"long\") over the lengths "
        f"from {longest // LONG:,} up, where a step's fixed costs no longer hide its growth.", "",
        f"| mixer | train exp. | train exp., long | memory exp. | memory exp., long | decode exp. | train s at {longest:,} | "
        f"peak MiB at {longest:,} | dense-math's memory / this | decode ms at {longest:,} | cache KiB at {longest:,} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mixer, fits in exponents.items():
        p = at.get((mixer, longest))
        ratio = ("" if reference is None or reference.train_peak_bytes is None or p is None or not p.train_peak_bytes
                 else f"{reference.train_peak_bytes / p.train_peak_bytes:.1f}")
        long = long_exponents.get(mixer, {})
        lines.append(f"| {mixer} | {fmt(fits['train_seconds'])} | {fmt(long.get('train_seconds'))} | {fmt(fits['train_peak_bytes'])} | "
                     f"{fmt(long.get('train_peak_bytes'))} | {fmt(fits['decode_ms'])} | "
                     f"{fmt(p.train_seconds if p else None)} | {fmt(p.train_peak_bytes if p else None, 2**20)} | {ratio} | "
                     f"{fmt(p.decode_ms if p else None)} | {fmt(p.cache_bytes if p else None, 2**10)} |")
    failed = [p for p in points if p.error]
    if failed:
        lines += ["", "Points that failed: " + "; ".join(f"{p.mixer} at {p.length:,}: {p.error}" for p in failed)]
    lines += ["", "Every point:", "", "| mixer | length | train s | peak MiB | decode ms | cache KiB |", "|---|---:|---:|---:|---:|---:|"]
    for p in points:
        lines.append(f"| {p.mixer} | {p.length:,} | {fmt(p.train_seconds)} | {fmt(p.train_peak_bytes, 2**20)} | "
                     f"{fmt(p.decode_ms)} | {fmt(p.cache_bytes, 2**10)} |")
    lines += ["", *(f"![{METRICS[key][0]}]({key}.png)" for key in METRICS), ""]
    return "\n".join(lines)


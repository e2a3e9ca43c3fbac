"""`bench_serve`: what continuous batching buys, measured through the real server and client.

The same server (`python -m fewshot.serve`, a subprocess) answers the same requests from
1 sequential client and then from 1/4/16/32 concurrent ones, in one run. Each request
asks for exactly `max_tokens` new tokens (end-of-text is biased away), so throughput is
completion tokens per second of wall time and the ratio over the sequential client is the
speedup batching gives. Latency is per request, first byte to last.

    from fewshot.bench.serve import bench_serve
    result = bench_serve("runs/mine")       # or: fewshot bench serve runs/mine
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from fewshot.errors import FewshotError
from fewshot.runs import RunDir

PROMPTS = ("ROMEO:", "To be, or not to be", "KING:", "Once upon a time", "The cat sat", "Q: 2+2?\nA:")


@dataclass(frozen=True)
class LevelResult:
    clients: int  # 0 = the sequential baseline
    requests: int
    failures: int
    seconds: float
    tokens: int
    tok_per_s: float
    p50_s: float
    p99_s: float
    speedup: float  # tok_per_s over the sequential baseline's


@dataclass(frozen=True)
class ServeBench:
    model: str
    max_tokens: int
    levels: tuple[LevelResult, ...]

    def table(self) -> str:
        lines = [f"{'clients':>10} {'requests':>8} {'fail':>4} {'tok/s':>9} {'p50 s':>7} {'p99 s':>7} {'x seq':>6}"]
        for r in self.levels:
            name = "sequential" if r.clients == 0 else str(r.clients)
            lines.append(f"{name:>10} {r.requests:>8} {r.failures:>4} {r.tok_per_s:>9.1f} {r.p50_s:>7.3f} "
                         f"{r.p99_s:>7.3f} {r.speedup:>6.2f}")
        return "\n".join(lines)


def bench_serve(run_dir: str | Path, clients: Sequence[int] = (1, 4, 16, 32), requests: int = 64,
                max_tokens: int = 32, max_batch: int = 32, temperature: float = 1.0, progress: bool = True,
                threads: int | None = None) -> ServeBench:
    """Start a server on `run_dir`; run the sequential client, then each concurrency level."""
    if requests < 1 or max_tokens < 1 or any(c < 1 for c in clients):
        raise FewshotError("bench serve: requests, max_tokens and clients must be >= 1")
    RunDir.open(run_dir)  # a wrong path is told here, not by a server process that failed to start
    with _server(Path(run_dir), max_batch, threads) as url:
        levels = asyncio.run(_levels(url, clients, requests, max_tokens, temperature, progress, _stop_bias(Path(run_dir))))
    return ServeBench(Path(run_dir).resolve().name, max_tokens, tuple(levels))


async def _levels(url: str, clients: Sequence[int], requests: int, max_tokens: int, temperature: float,
                  progress: bool, stop_bias: dict[str, float]) -> list[LevelResult]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
    body = {"model": "bench", "max_tokens": max_tokens, "temperature": temperature, "logit_bias": stop_bias}
    await _run(client, body, 1, min(4, requests), None)  # warm-up: allocations, first kernels
    results = []
    with Progress(disable=not progress, transient=True) as bar:
        for level in (0, *clients):
            name = "sequential" if level == 0 else f"{level} clients"
            task = bar.add_task(name, total=requests)
            start = time.perf_counter()
            latencies, tokens, failures = await _run(client, body, max(1, level), requests,
                                                     lambda: bar.advance(task))
            seconds = time.perf_counter() - start
            latencies.sort()
            rate = tokens / seconds
            base = results[0].tok_per_s if results else rate
            results.append(LevelResult(level, requests, failures, seconds, tokens, rate, _quantile(latencies, 0.5),
                                       _quantile(latencies, 0.99), rate / base))
    await client.close()
    return results


def _stop_bias(run_dir: Path) -> dict[str, float]:
    """Bias the model's stop tokens away, so every request yields exactly max_tokens tokens."""
    from fewshot.runs import RunDir

    tokenizer = RunDir.open(run_dir).tokenizer()
    return {str(token): -100 for token in sorted(tokenizer.stop_ids)}


async def _run(client, body: dict, concurrency: int, requests: int, advance) -> tuple[list[float], int, int]:
    latencies: list[float] = []
    counts = {"tokens": 0, "failures": 0, "next": 0}

    async def worker() -> None:
        while counts["next"] < requests:
            i = counts["next"]
            counts["next"] += 1
            start = time.perf_counter()
            try:
                completion = await client.completions.create(prompt=PROMPTS[i % len(PROMPTS)], **body)
                counts["tokens"] += completion.usage.completion_tokens
            except Exception:  # counted, not raised: a failure rate is part of the result
                counts["failures"] += 1
            latencies.append(time.perf_counter() - start)
            if advance is not None:
                advance()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, counts["tokens"], counts["failures"]


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@contextlib.contextmanager
def _server(run_dir: Path, max_batch: int, threads: int | None, *options: str) -> Iterator[str]:
    import httpx2

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "fewshot.serve", str(run_dir), "--port", str(port), "--model-name", "bench",
               "--max-batch", str(max_batch), "--max-queue", "1024", "--log-level", "warning", *options]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise FewshotError(f"bench serve: the server exited: {process.stderr.read()[-2000:]}")
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise FewshotError("bench serve: the server did not start within 300 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

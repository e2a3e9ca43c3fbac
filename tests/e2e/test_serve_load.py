"""A bounded load test of the real server: many requests, 32 at a time, no failures, no leak.

The default suite sends 200 requests; `-m slow` sends the full 2,000. Server memory (RSS)
is read after a warm-up round and again at the end: growth must stay under 10%. No
request may fail (a 5xx least of all), and the server's log must hold no traceback.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import openai
import psutil
import pytest

from tests.e2e.test_serve import MODEL, served, trained_run

CONCURRENCY = 32


@pytest.fixture(scope="module")
def run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(data_dir, tmp_path_factory)


def request(i: int) -> dict:
    """A mix of what clients send: plain, sampled with a seed, streamed, echoed with logprobs, chat."""
    rng = random.Random(i)
    kind = i % 5
    base = {"model": MODEL, "max_tokens": rng.randint(1, 16)}
    if kind == 0:
        return {"kind": "completion", **base, "prompt": "ROMEO:" * rng.randint(1, 6), "temperature": 0}
    if kind == 1:
        return {"kind": "completion", **base, "prompt": ["KING:", "QUEEN:"], "seed": i, "n": 2}
    if kind == 2:
        return {"kind": "stream", **base, "prompt": "JULIET:", "top_p": 0.9, "stop": ["\n"]}
    if kind == 3:
        return {"kind": "completion", **base, "prompt": "To be, or not to be", "echo": True, "logprobs": 2,
                "max_tokens": 0}
    return {"kind": "chat", **base, "messages": [{"role": "user", "content": "Speak."}], "presence_penalty": 0.5}


async def send(client: openai.AsyncOpenAI, body: dict) -> None:
    kind = body.pop("kind")
    if kind == "chat":
        reply = await client.chat.completions.create(**body)
        assert reply.choices[0].finish_reason in ("stop", "length")
    elif kind == "stream":
        finish = [c.choices[0].finish_reason async for c in await client.completions.create(stream=True, **body)
                  if c.choices]
        assert finish[-1] in ("stop", "length")
    else:
        reply = await client.completions.create(**body)
        prompts = len(body["prompt"]) if isinstance(body["prompt"], list) else 1
        assert len(reply.choices) == prompts * body.get("n", 1)


async def load(url: str, requests: int, start: int = 0) -> list[BaseException]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    queue = list(range(start, start + requests))
    failures: list[BaseException] = []

    async def worker() -> None:
        while queue:
            body = request(queue.pop())
            try:
                await send(client, body)
            except Exception as error:  # collected: the assertion below shows them all
                failures.append(error)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    await client.close()
    return failures


def run_load(run: Path, requests: int) -> None:
    with served(run, "--max-batch", str(CONCURRENCY)) as (url, process):
        server = psutil.Process(process.pid)
        assert asyncio.run(load(url, 2 * CONCURRENCY)) == []  # warm-up: every kind of request, allocations made
        warm = server.memory_info().rss
        failures = asyncio.run(load(url, requests, start=2 * CONCURRENCY))
        end = server.memory_info().rss
    log = process.stdout.read()  # the server has exited: served() sent SIGTERM and waited
    server_errors = [f for f in failures if isinstance(f, openai.APIStatusError) and f.status_code >= 500]
    assert server_errors == [] and failures == [], (len(server_errors), failures[:3])
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]
    assert end < 1.10 * warm, f"server RSS grew from {warm / 2**20:.1f} MiB to {end / 2**20:.1f} MiB"


def test_200_requests_32_at_a_time_without_failures_or_growth(run: Path) -> None:
    run_load(run, 200)


@pytest.mark.slow
def test_2000_requests_32_at_a_time_without_failures_or_growth(run: Path) -> None:
    run_load(run, 2000)

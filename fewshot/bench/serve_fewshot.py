"""Few-shot traffic through the real server: `fewshot bench serve RUN --few-shot`.

Every request is the same K-shot prompt (`prompt_tokens` long, K = `shots`) with its own
query at the end, as a few-shot classifier sees in production. Two servers run the same
model side by side, one with the prefix cache and one without (`--prefix-cache-mb 0`), and
`clients` concurrent streaming clients drive them in rounds, interleaved A B B A, after a
warm-up (which also fills the one server's cache, as steady traffic would). Reported:
- requests/s and time to first token (first streamed text), cache on over cache off;
- guided_choice's cost: on the cache-on server, one client at a time, each query asked
  constrained to the label words and then unconstrained for exactly as many tokens (stop
  ids biased away), order alternating. The latency difference over the tokens is the
  grammar's overhead per generated token, against the server's own time per output token
  (streamed, unconstrained, 16 tokens).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.progress import Progress

from fewshot.bench.serve import _quantile, _server, _stop_bias
from fewshot.errors import FewshotError
from fewshot.runs import RunDir

# Few-shot classification: a list of words, their category. The label words are the choices.
CATEGORIES = {
    "fruit": "apple pear plum grape lemon mango peach cherry melon kiwi lime fig papaya guava apricot banana".split(),
    "animal": "horse tiger zebra otter camel eagle shark whale mouse goat llama panda wolf bison moose rabbit".split(),
    "color": "red blue green yellow purple orange violet indigo maroon teal beige ivory crimson amber navy olive".split(),
    "tool": "hammer wrench drill saw chisel pliers shovel rake axe file clamp level trowel mallet anvil spanner".split(),
}
LABELS = [f" {name}" for name in CATEGORIES]


@dataclass(frozen=True)
class CacheSide:
    prefix_cache: bool
    requests: int
    failures: int
    seconds: float
    requests_per_s: float
    ttft_p50_s: float
    ttft_mean_s: float


@dataclass(frozen=True)
class FewShotServeBench:
    model: str
    prompt_tokens: int  # of the K-shot prompt, query included (the mean)
    shots: int
    clients: int
    on: CacheSide
    off: CacheSide
    throughput_ratio: float  # requests/s, on over off
    ttft_ratio: float  # time to first token (median), off over on
    tpot_s: float  # time per output token, unconstrained, streamed (median)
    guided_pairs: int
    guided_tokens: float  # mean tokens of a guided answer
    guided_overhead_s: float  # per generated token
    guided_overhead: float  # guided_overhead_s / tpot_s
    labels_only: bool  # every guided answer was one of the labels

    def to_json(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        lines = ["| prefix cache | requests | fail | requests/s | TTFT p50 (s) | TTFT mean (s) |", "|---|---|---|---|---|---|"]
        for side in (self.on, self.off):
            lines.append(f"| {'on' if side.prefix_cache else 'off'} | {side.requests} | {side.failures} | "
                         f"{side.requests_per_s:.2f} | {side.ttft_p50_s:.3f} | {side.ttft_mean_s:.3f} |")
        lines += ["", f"{self.shots}-shot prompt of ~{self.prompt_tokens} tokens, {self.clients} concurrent clients: "
                      f"**{self.throughput_ratio:.1f}x requests/s** and **{self.ttft_ratio:.1f}x lower time to first "
                      f"token** with the cache.",
                  f"guided_choice over {len(LABELS)} labels ({self.guided_pairs} pairs, {self.guided_tokens:.1f} tokens "
                  f"per answer, labels only: {self.labels_only}): {self.guided_overhead_s * 1e3:.2f} ms per generated "
                  f"token over {self.tpot_s * 1e3:.2f} ms unconstrained = **{self.guided_overhead:+.1%}**."]
        return "\n".join(lines)


def few_shot_prompts(tokenizer, shots: int, prompt_tokens: int, count: int, seed: int = 0) -> list[str]:
    """`count` prompts sharing their `shots` demonstrations, each ending in its own query; the
    phrases grow until the prompt reaches about `prompt_tokens` tokens."""
    def build(words: int) -> list[str]:
        rng = random.Random(seed)

        def example(label: str) -> str:
            return "Input: " + " ".join(rng.choices(CATEGORIES[label], k=words)) + "\nOutput:"

        demos = "".join(f"{example(label)} {label}\n\n" for label in (rng.choice(list(CATEGORIES)) for _ in range(shots)))
        return [demos + example(rng.choice(list(CATEGORIES))) for _ in range(count)]

    words = 1
    while len(tokenizer.encode(build(words)[0])) < prompt_tokens and words < 1000:
        words += 1
    return build(words)


def bench_serve_few_shot(run_dir: str | Path, shots: int = 16, prompt_tokens: int = 600, clients: int = 16,
                         requests: int = 64, rounds: int = 2, guided_pairs: int = 32, max_tokens: int = 4,
                         progress: bool = True, threads: int | None = None) -> FewShotServeBench:
    if min(shots, prompt_tokens, clients, requests, rounds, guided_pairs, max_tokens) < 1:
        raise FewshotError("bench serve --few-shot: shots, prompt tokens, clients, requests, rounds, guided pairs "
                           "and max tokens must be >= 1")
    run = RunDir.open(run_dir)
    tokenizer, context = run.tokenizer(), run.config.model.context
    prompts = few_shot_prompts(tokenizer, shots, prompt_tokens, requests * rounds + guided_pairs + 8)
    length = sum(len(tokenizer.encode(p)) for p in prompts[:8]) // 8
    if length + 16 > context:
        raise FewshotError(f"bench serve --few-shot: a {length}-token prompt and 16 new tokens do not fit the "
                           f"context of {context}; lower --prompt-tokens or --shots")
    bias = _stop_bias(Path(run_dir))
    with _server(Path(run_dir), clients, threads) as on_url, \
            _server(Path(run_dir), clients, threads, "--prefix-cache-mb", "0") as off_url:
        return asyncio.run(_measure(Path(run_dir).resolve().name, on_url, off_url, prompts, length, shots, clients,
                                    requests, rounds, guided_pairs, max_tokens, bias, progress))


async def _measure(model: str, on_url: str, off_url: str, prompts: list[str], length: int, shots: int, clients: int,
                   requests: int, rounds: int, guided_pairs: int, max_tokens: int, bias: dict, progress: bool):
    import openai

    urls = {True: on_url, False: off_url}
    api = {cached: openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)
           for cached, url in urls.items()}
    body = {"model": "bench", "max_tokens": max_tokens, "temperature": 0, "logit_bias": bias}
    queue = iter(prompts)
    for cached in (True, False):  # warm-up: allocations, first kernels, and the demonstrations' blocks
        await _stream_many(api[cached], [next(queue) for _ in range(4)], body, clients, None)
    seen = {True: ([], 0, 0.0), False: ([], 0, 0.0)}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("cache on/off", total=2 * rounds * requests)
        for r in range(rounds):
            batch = [next(queue) for _ in range(requests)]  # both sides get the same queries
            for cached in ((True, False) if r % 2 == 0 else (False, True)):
                start = time.perf_counter()
                ttfts, failures = await _stream_many(api[cached], batch, body, clients, lambda: bar.advance(task))
                old = seen[cached]
                seen[cached] = (old[0] + ttfts, old[1] + failures, old[2] + time.perf_counter() - start)
        sides = {}
        for cached, (ttfts, failures, seconds) in seen.items():
            ttfts.sort()
            sides[cached] = CacheSide(cached, rounds * requests, failures, seconds, rounds * requests / seconds,
                                      _quantile(ttfts, 0.5), sum(ttfts) / max(1, len(ttfts)))
        guided = bar.add_task("guided_choice", total=guided_pairs)
        tpot, overhead, tokens, labels_only = await _guided(api[True], [next(queue) for _ in range(guided_pairs)], body,
                                                            lambda: bar.advance(guided))
    for client in api.values():
        await client.close()
    on, off = sides[True], sides[False]
    return FewShotServeBench(model, length, shots, clients, on, off, on.requests_per_s / off.requests_per_s,
                             off.ttft_p50_s / on.ttft_p50_s, tpot, guided_pairs, tokens, overhead, overhead / tpot,
                             labels_only)


async def _stream_one(client, prompt: str, body: dict) -> tuple[float, float, str, int]:
    """(time to first text, total seconds, text, completion tokens) of one streamed completion."""
    start = time.perf_counter()
    first, text, tokens = None, "", 0
    stream = await client.completions.create(prompt=prompt, stream=True, stream_options={"include_usage": True}, **body)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            first = first or time.perf_counter() - start
            text += chunk.choices[0].text
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    return first if first is not None else total, total, text, tokens


async def _stream_many(client, prompts: list[str], body: dict, concurrency: int, advance) -> tuple[list[float], int]:
    ttfts, failures, pending = [], 0, list(reversed(prompts))

    async def worker() -> None:
        nonlocal failures
        while pending:
            prompt = pending.pop()
            try:
                ttfts.append((await _stream_one(client, prompt, body))[0])
            except Exception:  # counted, not raised: a failure rate is part of the result
                failures += 1
            if advance is not None:
                advance()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ttfts, failures


async def _guided(client, prompts: list[str], body: dict, advance) -> tuple[float, float, float, bool]:
    """(unconstrained time per output token, guided overhead per token, mean guided tokens, labels only)."""
    tpots = []
    for prompt in prompts[:4]:
        first, total, _, tokens = await _stream_one(client, prompt, {**body, "max_tokens": 16})
        tpots.append((total - first) / max(1, tokens - 1))
    guided = {**body, "extra_body": {"guided_choice": LABELS}, "logit_bias": None, "max_tokens": 8}
    answers = [await _stream_one(client, prompt, guided) for prompt in prompts]  # also a warm-up; greedy: repeatable
    differences = []
    for i, (prompt, (_, _, text, tokens)) in enumerate(zip(prompts, answers)):
        seconds = {}
        for constrained in ((True, False) if i % 2 == 0 else (False, True)):
            options = guided if constrained else {**body, "max_tokens": max(1, tokens)}  # as many tokens
            seconds[constrained] = (await _stream_one(client, prompt, options))[1]
        differences.append((seconds[True] - seconds[False]) / max(1, tokens))
        advance()
    counts = [tokens for *_, tokens in answers]
    labels_only = all(text in LABELS for _, _, text, _ in answers)
    differences.sort()
    tpots.sort()
    return _quantile(tpots, 0.5), _quantile(differences, 0.5), sum(counts) / len(counts), labels_only


def write_report(result: FewShotServeBench, out_dir: Path, machine: dict) -> list[Path]:
    """serve-fewshot.json, serve-fewshot.md and serve-fewshot.png (TTFT and requests/s, on and off)."""
    from fewshot.figures import plt, save_figure
    from fewshot.files import atomic_write_text, write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "serve-fewshot.json", out_dir / "serve-fewshot.md", out_dir / "serve-fewshot.png"]
    write_json(paths[0], {"machine": machine, **result.to_json()})
    atomic_write_text(paths[1], f"# Few-shot serving: prefix cache on and off, guided_choice\n\n"
                                f"`fewshot bench serve {result.model} --few-shot` on {machine['cpu']} "
                                f"({machine['cores']} cores).\n\n{result.table()}\n\n![](serve-fewshot.png)\n")
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    names, sides = ["cache off", "cache on"], [result.off, result.on]
    left.bar(names, [s.requests_per_s for s in sides], color=["#999999", "#1f77b4"])
    left.set_ylabel("requests / s")
    left.set_title(f"{result.clients} clients, {result.shots}-shot (~{result.prompt_tokens} tokens)", fontsize=9)
    right.bar(names, [s.ttft_p50_s for s in sides], color=["#999999", "#1f77b4"])
    right.set_ylabel("time to first token, median (s)")
    right.set_title(f"{result.throughput_ratio:.1f}x requests/s, {result.ttft_ratio:.1f}x lower TTFT", fontsize=9)
    save_figure(figure, paths[2])
    return paths

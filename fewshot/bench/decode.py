"""Decoding speed, side by side: KV cache against recompute, and fewshot against transformers.

`bench_decode` answers "what does the KV cache buy?": the real `generate()` path against
the naive baseline that re-reads the whole prefix for every new token. Both decode
greedily from the same prompt, so they must also agree token for token; the result says
whether they did, so a speedup never hides a wrong answer.

`bench_decode_vs_hf` runs our `generate()` and transformers' `generate()` on the same
weights (bench/peer.py): greedy, KV cache on for both, the same prompt, batch and number
of new tokens (HF: do_sample=False, min_new_tokens = max_new_tokens, so neither stops
early). `decode_cost_by_context` shows what one cached step costs as the cache grows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from fewshot.bench.timing import interleave, median, pair_ratios, progress_bar, timed
from fewshot.errors import FewshotError
from fewshot.inference.decode import generate
from fewshot.inference.sampling import SamplingOptions

WARMUP_TOKENS = 4  # enough to trigger lazy allocations and kernel selection before timing


@dataclass(frozen=True)
class DecodeBench:
    tokens: int
    prompt_tokens: int
    cached_seconds: float
    recompute_seconds: float
    cached_tok_per_s: float
    recompute_tok_per_s: float
    speedup: float  # recompute_seconds / cached_seconds
    outputs_match: bool  # both paths chose the same tokens
    device: str


def greedy_recompute(model, prompt_ids: list[int], tokens: int) -> list[int]:
    """The naive baseline: a full forward over the entire prefix for every new token."""
    device = next(model.parameters()).device
    total = len(prompt_ids) + tokens
    # One preallocated buffer, so the baseline pays for attention and not for copies.
    ids = torch.zeros(1, total, dtype=torch.long, device=device)
    ids[0, : len(prompt_ids)] = torch.tensor(prompt_ids, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for end in range(len(prompt_ids), total):
                logits, _ = model(ids[:, :end])
                ids[0, end] = logits[0, -1].float().argmax()
    finally:
        model.train(was_training)
    return ids[0, len(prompt_ids) :].tolist()


def greedy_cached(model, tokenizer, prompt_ids: list[int], tokens: int) -> list[int]:
    """The generate() path, greedy, never stopping early."""
    options = SamplingOptions(max_tokens=tokens, temperature=0.0, stop_at_eot=False)
    return list(generate(model, tokenizer, prompt_ids, options)[0].token_ids)


def bench_decode(model, tokens: int = 1000, prompt_tokens: int = 16, repeats: int = 1, tokenizer=None) -> DecodeBench:
    """Time greedy decoding of `tokens` tokens with the KV cache and with full recompute.

    The model's context must hold prompt + tokens (no sliding, so both paths see the same
    prefix). Each timing is the best of `repeats`, the usual guard against a busy machine.
    `tokenizer` only decodes the text; None means the byte tokenizer.
    """
    if tokens < 1 or prompt_tokens < 1 or repeats < 1:
        raise FewshotError(f"bench: tokens, prompt_tokens and repeats must be >= 1, got {tokens}, {prompt_tokens}, {repeats}")
    context = model.config.context
    if prompt_tokens + tokens > context:
        raise FewshotError(
            f"bench: {prompt_tokens} prompt + {tokens} generated tokens exceed the model's context of {context}; "
            "build the model with a longer context (config.replace(context=...))"
        )
    tokenizer = tokenizer or _byte_tokenizer(model.config.vocab_size)
    prompt_ids = _bench_prompt(prompt_tokens, min(model.config.vocab_size, 256))
    device = next(model.parameters()).device

    greedy_cached(model, tokenizer, prompt_ids, WARMUP_TOKENS)
    greedy_recompute(model, prompt_ids, WARMUP_TOKENS)
    cached_seconds, cached = _best_time(lambda: greedy_cached(model, tokenizer, prompt_ids, tokens), repeats, device)
    recompute_seconds, recomputed = _best_time(lambda: greedy_recompute(model, prompt_ids, tokens), repeats, device)
    return DecodeBench(
        tokens=tokens,
        prompt_tokens=prompt_tokens,
        cached_seconds=cached_seconds,
        recompute_seconds=recompute_seconds,
        cached_tok_per_s=tokens / cached_seconds,
        recompute_tok_per_s=tokens / recompute_seconds,
        speedup=recompute_seconds / cached_seconds,
        outputs_match=cached == recomputed,
        device=str(device),
    )


def _byte_tokenizer(vocab_size: int):
    from fewshot.tokenizer import ByteTokenizer

    tokenizer = ByteTokenizer()
    if vocab_size != tokenizer.vocab_size:
        raise FewshotError(f"bench: the model's vocabulary is {vocab_size}, not the byte tokenizer's; pass tokenizer=")
    return tokenizer


def _bench_prompt(length: int, vocab: int) -> list[int]:
    """A fixed pseudo-random prompt, the same in every run."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (length,), generator=generator).tolist()


def _best_time(run: Callable[[], list[int]], repeats: int, device: torch.device) -> tuple[float, list[int]]:
    best, result = float("inf"), []
    for _ in range(repeats):
        seconds, result = timed(run, device)
        best = min(best, seconds)
    return best, result


@dataclass(frozen=True)
class DecodeVsHF:
    batch: int
    tokens: int  # new tokens per row
    prompt_tokens: int
    dtype: str
    threads: int
    seconds: float  # medians, prefill included on both sides
    hf_seconds: float
    tok_s: float  # batch * tokens / seconds
    hf_tok_s: float
    ratio_vs_hf: float
    pair_ratios: list[float]
    outputs_match: bool  # both chose the same tokens (greedy, same weights)
    # With compiled=True: our compiled decoding step, a third contender in the same rounds.
    compiled_seconds: float | None = None
    compiled_tok_s: float | None = None
    compiled_ratio_vs_hf: float | None = None
    compiled_pair_ratios: list[float] | None = None
    compiled_outputs_match: bool | None = None

    def to_json(self) -> dict:
        return asdict(self)


def bench_decode_vs_hf(model, peer, batch: int, tokens: int, prompt_tokens: int = 16, repeats: int = 3,
                       warmup: int = 1, tokenizer=None, progress: bool = False, compiled: bool = False) -> DecodeVsHF:
    """Greedy decoding of `tokens` new tokens for `batch` copies of one prompt, ours and HF's, interleaved.

    `compiled`: also ours with `model.compile_decoding()`, in the same rounds (eager, compiled,
    HF), so both of our numbers meet the same machine load as HF's. The warm-up round pays
    for the compilation.
    """
    if min(batch, tokens, prompt_tokens, repeats) < 1 or warmup < 0:
        raise FewshotError(f"bench: batch, tokens, prompt_tokens and repeats must be >= 1, got {batch}, {tokens}, {prompt_tokens}, {repeats}")
    if prompt_tokens + tokens > model.config.context:
        raise FewshotError(f"bench: {prompt_tokens} prompt + {tokens} new tokens exceed the model's context of {model.config.context}")
    tokenizer = tokenizer or _byte_tokenizer(model.config.vocab_size)
    prompt_ids = _bench_prompt(prompt_tokens, min(model.config.vocab_size, 256))
    device = next(model.parameters()).device
    options = SamplingOptions(max_tokens=tokens, temperature=0.0, n=batch, stop_at_eot=False)
    ids = torch.tensor([prompt_ids] * batch, device=device)
    eot = getattr(tokenizer, "eot_id", model.config.vocab_size - 1)
    outputs: dict[str, list[list[int]]] = {}

    def ours(name: str, compile_decoding: bool) -> Callable[[], None]:
        def run() -> None:
            model.compile_decoding(compile_decoding)
            outputs[name] = [list(c.token_ids) for c in generate(model, tokenizer, prompt_ids, options)]
        return run

    def theirs() -> None:
        with torch.inference_mode():
            out = peer.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                min_new_tokens=tokens, do_sample=False, use_cache=True, num_beams=1,
                                pad_token_id=eot, eos_token_id=eot)
        outputs["hf"] = out[:, prompt_tokens:].tolist()

    runs = {"fewshot": ours("fewshot", False)}
    if compiled:
        runs["fewshot compiled"] = ours("fewshot compiled", True)
    runs["hf"] = theirs
    peer.eval()
    was_compiled = model.decoding_compiled
    try:
        seconds = interleave(runs, repeats, warmup, device, progress, label=f"decode batch {batch} vs HF")
    finally:
        model.compile_decoding(was_compiled)
    mine, hf = median(seconds["fewshot"]), median(seconds["hf"])
    extra = {}
    if compiled:
        fast = median(seconds["fewshot compiled"])
        extra = dict(compiled_seconds=fast, compiled_tok_s=batch * tokens / fast, compiled_ratio_vs_hf=hf / fast,
                     compiled_pair_ratios=pair_ratios(seconds["fewshot compiled"], seconds["hf"]),
                     compiled_outputs_match=outputs["fewshot compiled"] == outputs["hf"])
    return DecodeVsHF(
        batch=batch, tokens=tokens, prompt_tokens=prompt_tokens, dtype=_dtype_name(model), threads=torch.get_num_threads(),
        seconds=mine, hf_seconds=hf, tok_s=batch * tokens / mine, hf_tok_s=batch * tokens / hf, ratio_vs_hf=hf / mine,
        pair_ratios=pair_ratios(seconds["fewshot"], seconds["hf"]), outputs_match=outputs["fewshot"] == outputs["hf"],
        **extra,
    )


def decode_cost_by_context(model, contexts: tuple[int, ...] = (64, 128, 256), steps: int = 16, batch: int = 1,
                           progress: bool = False) -> dict[int, float]:
    """Milliseconds per cached decoding step (`model.step`, one token per row) at each context length.

    The cache is prefilled to `context` tokens, then `steps` single-token steps are timed
    (median): attention reads the whole cache each step, so this shows how cost grows.
    """
    device = next(model.parameters()).device
    if max(contexts) + steps + 1 > model.config.context:
        raise FewshotError(f"bench: context {max(contexts)} + {steps} steps exceeds the model's context of {model.config.context}")
    prompt = torch.tensor([_bench_prompt(max(contexts), min(model.config.vocab_size, 256))] * batch, device=device)
    costs = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), progress_bar(progress) as bar:
            task = bar.add_task("decode cost by context", total=len(contexts))
            for context in contexts:
                cache = model.new_cache(batch, capacity=context + steps + 1)
                logits = model.step(prompt[:, :context], cache, last_only=True)[:, -1]
                times = []
                for _ in range(steps + 1):  # the first step warms up
                    elapsed, logits = timed(lambda: model.step(logits.argmax(-1, keepdim=True), cache)[:, -1], device)
                    times.append(elapsed)
                costs[context] = 1000 * median(times[1:])
                bar.advance(task)
    finally:
        model.train(was_training)
    return costs


def _dtype_name(model) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(next(model.parameters()).dtype, "other")

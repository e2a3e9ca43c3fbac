"""Prompt-lookup decoding against plain decoding, on few-shot prompts: `fewshot bench lookup`.

Both sides run `generate()` greedily on the same K-shot prompts of the harness's tasks (built
by `build_prompt`, as `fewshot eval` builds them), the same number of new tokens, without
stopping at a newline, so the model goes on answering and writing further examples as a
few-shot prompt invites. Interleaved A B A B after a warm-up; the ratio is plain seconds over
drafted seconds. The text must be the same token for token: the result says whether it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from fewshot.bench.timing import interleave, median, pair_ratios
from fewshot.errors import FewshotError
from fewshot.eval.harness import build_prompt, synthetic_tasks
from fewshot.inference.decode import generate
from fewshot.inference.lm import LM
from fewshot.inference.sampling import SamplingOptions


@dataclass(frozen=True)
class LookupBench:
    task: str
    prompts: int
    shots: int
    tokens: int  # new tokens per prompt
    draft: int  # prompt_lookup
    seconds: float  # all prompts, plain decoding (median round)
    drafted_seconds: float
    tok_s: float
    drafted_tok_s: float
    speedup: float  # plain seconds over drafted seconds
    pair_ratios: list[float]
    passes: int  # forward passes after the prefill, plain: one per token but the first
    drafted_passes: int
    identical: bool  # every prompt's tokens alike with and without drafts

    def to_json(self) -> dict:
        return asdict(self)


def bench_lookup(lm: LM, tasks: str, shots: int = 4, prompts: int = 4, tokens: int = 48, draft: int = 8,
                 repeats: int = 3, warmup: int = 1, seed: int = 0, progress: bool = False) -> list[LookupBench]:
    """One row per task: `prompts` K-shot prompts decoded `tokens` tokens each, with and without drafts."""
    if min(shots, prompts, tokens, draft, repeats) < 1:
        raise FewshotError(f"bench lookup: shots, prompts, tokens, draft and repeats must be >= 1, "
                           f"got {shots}, {prompts}, {tokens}, {draft}, {repeats}")
    budget = lm.model.config.context - tokens
    if budget < 1:
        raise FewshotError(f"bench lookup: {tokens} new tokens leave no room for a prompt in a context of {lm.model.config.context}")
    if not lm.model.rewindable:
        raise FewshotError(f"bench lookup: the {lm.model.config.attention} mixer keeps a recurrent state, and prompt "
                           "lookup needs a cache it can rewind")
    return [_one_task(lm, task, [build_prompt(lm, task, i, shots, seed, budget)[0] for i in range(prompts)], shots,
                      tokens, draft, repeats, warmup, progress)
            for task in synthetic_tasks(tasks, prompts, seed)]


def _one_task(lm: LM, task, prompts: list[list[int]], shots: int, tokens: int, draft: int, repeats: int, warmup: int,
              progress: bool) -> LookupBench:
    outputs: dict[str, list[tuple[int, ...]]] = {}
    passes = {"plain": 0, "drafted": 0}
    step = lm.model.step

    def run(name: str, lookup: int):
        options = SamplingOptions(max_tokens=tokens, temperature=0.0, stop_at_eot=False, prompt_lookup=lookup)

        def counted(*args, **kwargs):
            passes[name] += 1
            return step(*args, **kwargs)

        def go() -> None:
            passes[name] = 0
            lm.model.step = counted  # counts the passes of this side's last round
            try:
                outputs[name] = [generate(lm.model, lm.tokenizer, p, options)[0].token_ids for p in prompts]
            finally:
                del lm.model.step
        return go

    seconds = interleave({"plain": run("plain", 0), "drafted": run("drafted", draft)}, repeats, warmup,
                         torch.device("cpu"), progress, label=f"{task.name}: prompt lookup {draft}")
    plain, drafted = median(seconds["plain"]), median(seconds["drafted"])
    produced = len(prompts) * tokens
    return LookupBench(task=task.name, prompts=len(prompts), shots=shots, tokens=tokens, draft=draft, seconds=plain,
                       drafted_seconds=drafted, tok_s=produced / plain, drafted_tok_s=produced / drafted,
                       speedup=plain / drafted, pair_ratios=pair_ratios(seconds["drafted"], seconds["plain"]),
                       passes=passes["plain"] - len(prompts), drafted_passes=passes["drafted"] - len(prompts),
                       identical=outputs["plain"] == outputs["drafted"])

"""`fewshot generate` and `fewshot chat`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import app, err, out, unescape
from fewshot.config import DTYPE_HELP
from fewshot.errors import FewshotError


def parse_logit_bias(items: list[str]) -> tuple[tuple[int, float], ...]:
    pairs = []
    for item in items:
        token, sep, bias = item.partition(":")
        try:
            pairs.append((int(token), float(bias)))
        except ValueError:
            raise FewshotError(f"--logit-bias takes TOKEN_ID:BIAS, got {item!r}") from None
        if not sep:
            raise FewshotError(f"--logit-bias takes TOKEN_ID:BIAS, got {item!r}")
    return tuple(pairs)


@app.command()
def generate(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    prompt: Annotated[str, typer.Option(help="Text to continue; \\n and \\t escapes are understood.")] = "",
    adapter: Annotated[Optional[Path], typer.Option(help="A LoRA/(IA)3 run from `fewshot finetune`, applied to RUN.")] = None,
    max_tokens: Annotated[int, typer.Option()] = 200,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="0 = off.")] = 0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    presence_penalty: Annotated[float, typer.Option()] = 0.0,
    frequency_penalty: Annotated[float, typer.Option()] = 0.0,
    logit_bias: Annotated[list[str], typer.Option(help="TOKEN_ID:BIAS, repeatable.")] = [],  # noqa: B006 (typer needs a literal)
    stop: Annotated[list[str], typer.Option(help="Stop sequence, repeatable.")] = [],  # noqa: B006
    n: Annotated[int, typer.Option(help="Number of samples.")] = 1,
    seed: Annotated[Optional[int], typer.Option(help="Same seed, same text.")] = None,
    logprobs: Annotated[Optional[int], typer.Option(help="Show per-token logprobs with this many alternatives.")] = None,
    prompt_lookup: Annotated[int, typer.Option(help="Prompt-lookup decoding: up to this many draft tokens per step, copied "
                                                    "from earlier in the text; the same text, in fewer passes. 0 = off.")] = 0,
    device: Annotated[str, typer.Option()] = "cpu",
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "fp32",
    stats: Annotated[bool, typer.Option(help="Print load time, tokens/s and peak memory to stderr.")] = False,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="Decode through a compiled step: on the CPU built ahead "
                                                                          "of time once per model shape (about a minute, then cached), "
                                                                          "else torch.compile; needs a C compiler.")] = False,
) -> None:
    """Sample from a trained model, streaming to the terminal."""
    import time

    import fewshot
    from fewshot.inference.sampling import SamplingOptions
    from fewshot.train.memory import peak_rss_bytes

    options = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                   presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                   logit_bias=parse_logit_bias(logit_bias), stop=tuple(map(unescape, stop)), n=n, seed=seed,
                   logprobs=logprobs, prompt_lookup=prompt_lookup)
    sampling = SamplingOptions(**options)  # validate before loading the model or printing anything
    start = time.perf_counter()
    lm = fewshot.load(run, device=device, adapter=adapter, dtype=dtype)
    sampling.check_vocab(lm.model.config.vocab_size)
    lm.model.compile_decoding(compile)
    loaded, load_rss = time.perf_counter(), peak_rss_bytes()
    text = unescape(prompt)
    stream = n == 1
    if stream:
        out.print(text, end="", style="bold", markup=False, highlight=False)
    completions = lm.complete(text, on_text=(lambda _i, piece: out.print(piece, end="", markup=False, highlight=False)) if stream else None, **options)
    for index, completion in enumerate(completions):
        if not stream:
            out.rule(f"sample {index + 1} ({completion.finish_reason})")
            out.print(text + completion.text, markup=False, highlight=False)
        else:
            out.print()
        if completion.logprobs:
            for item in completion.logprobs:
                alternatives = ", ".join(f"{t!r} {lp:.2f}" for t, lp in item.top)
                out.print(f"{item.token!r:>12} {item.logprob:8.3f}   {alternatives}", markup=False, highlight=False)
    if stats:
        seconds, tokens = time.perf_counter() - loaded, sum(len(c.token_ids) for c in completions)
        compiling = " (a first compilation included, if there was one)" if compile else ""
        err.print(f"load {loaded - start:.1f} s (peak RSS {load_rss / 2**20:,.0f} MiB); {tokens} tokens in {seconds:.2f} s "
                  f"= {tokens / seconds:.1f} tok/s{compiling}; peak RSS {peak_rss_bytes() / 2**20:,.0f} MiB")


@app.command()
def chat(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    message: Annotated[Optional[str], typer.Option(help="Ask once and exit; without it, chat turn by turn on stdin.")] = None,
    adapter: Annotated[Optional[Path], typer.Option(help="A LoRA/(IA)3 run from `fewshot finetune`, applied to RUN.")] = None,
    system: Annotated[Optional[str], typer.Option(help="A system message to start with.")] = None,
    max_tokens: Annotated[int, typer.Option()] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option()] = 0.9,
    seed: Annotated[Optional[int], typer.Option()] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "fp32",
) -> None:
    """Chat with a model, using its own chat template (imported models) or a plain transcript."""
    import fewshot
    from fewshot.inference.sampling import SamplingOptions

    options = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    SamplingOptions(**options)
    lm = fewshot.load(run, device=device, adapter=adapter, dtype=dtype)
    messages = [{"role": "system", "content": unescape(system)}] if system else []
    interactive = message is None
    while True:
        text = unescape(message) if message is not None else _read_turn()
        if text is None:
            return
        messages.append({"role": "user", "content": text})
        [reply] = lm.chat(messages, on_text=lambda _i, piece: out.print(piece, end="", markup=False, highlight=False), **options)
        out.print()
        messages.append({"role": "assistant", "content": reply.text})
        if not interactive:
            return


def _read_turn() -> str | None:
    """One user turn from stdin; None at end of input or on /exit."""
    try:
        text = input("you> " if sys.stdin.isatty() else "")
    except EOFError:
        return None
    return None if text.strip() in ("/exit", "/quit") else text

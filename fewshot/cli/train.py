"""`fewshot prepare` and `fewshot train`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import app, err, out
from fewshot.cli.options import config_options
from fewshot.config import TrainConfig
from fewshot.errors import FewshotError


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
@config_options(TrainConfig)
def train(
    given: dict,
    data: Annotated[Optional[str], typer.Option(
        help="A directory written by `fewshot prepare`, or `icl` / `icl-nonbursty[:mb=N,text=F,seed=S]`: the "
             "in-context-learning mixture, generated into data/icl/ on first use.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory to write.")] = Path("runs/default"),
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its latest checkpoint.")] = False,
    nproc: Annotated[int, typer.Option(help="Processes on this machine: starts torchrun itself when > 1.")] = 1,
) -> None:
    """Train a model (GPT-3 recipe) on prepared data; the options are TrainConfig's fields."""
    import math

    from fewshot.train.distributed import PeerLost, World, launch
    from fewshot.train.loop import resume_config
    from fewshot.train.loop import train as run_training
    from fewshot.train.report import write_report

    world = World.from_env()
    if data is not None:
        given["data"] = str(resolve_data(data, world.main))
    if resume:
        config = resume_config(out_dir, **given)
        if config.finetune is not None:
            raise FewshotError(f"{out_dir} is a fine-tune; continue it with `fewshot finetune --resume --out {out_dir}`")
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
    """A prepared directory as given, `default` (the default corpus, prepared on first use), or
    the ICL mixture it names (generated on first use; under torchrun rank 0 generates it while
    the other ranks wait for it)."""
    from fewshot.experiments.icl import DATA_ROOT
    from fewshot.tasks.gpt3.corpus import ensure_default_data
    from fewshot.tasks.meta.mixture import ensure_mixture, parse_data_spec, wait_for_mixture

    if spec == "default":
        return ensure_default_data(progress=err.is_terminal)
    mixture = parse_data_spec(spec)
    if mixture is None:
        return Path(spec)
    if not main:
        return wait_for_mixture(DATA_ROOT, mixture)
    return ensure_mixture(DATA_ROOT, mixture, progress=err.is_terminal)

"""`fewshot prepare` and `fewshot train`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import app, err, out
from fewshot.cli.options import config_options
from fewshot.config import TrainConfig
from fewshot.data.curate.dedup import DedupConfig
from fewshot.errors import FewshotError


@app.command()
def prepare(
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="Text files, directories (recursive) or .jsonl files "
                                                                "with a `text` field.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the token shards.")] = ...,
    tokenizer: Annotated[str, typer.Option(help="byte (default) or bpe.")] = "byte",
    vocab_size: Annotated[int, typer.Option(help="BPE vocabulary size.")] = 8192,
    val_fraction: Annotated[float, typer.Option(help="Share of the tokens held out for validation.")] = 0.05,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing prepared directory.")] = False,
    source: Annotated[Optional[list[str]], typer.Option(
        help="PATH:WEIGHT, repeatable: curate each source and mix them by weight, not by size (GPT-3's data "
             "pipeline; instead of INPUTS).")] = None,
    dedup: Annotated[Optional[str], typer.Option(help="With --source: minhash (exact duplicates, then MinHash LSH).")] = None,
    dedup_threshold: Annotated[float, typer.Option(help="Jaccard similarity of word-shingle sets that makes a "
                                                        "near-duplicate.")] = DedupConfig.threshold,
    dedup_ngram: Annotated[int, typer.Option(help="Words per shingle.")] = DedupConfig.ngram,
    quality_ref: Annotated[Optional[Path], typer.Option(help="With --source: curated reference text; a classifier of "
                                                             "it vs the sources filters them.")] = None,
    quality_keep: Annotated[str, typer.Option(help="pareto:ALPHA (GPT-3: 9) or threshold:T.")] = "pareto:9",
    quality_on: Annotated[Optional[str], typer.Option(help="Sources (names, comma-separated) the quality filter judges; "
                                                           "default all. GPT-3 judged Common Crawl only.")] = None,
    decontaminate: Annotated[Optional[str], typer.Option(help="With --source: evaluation tasks and task files "
                                                              "(arithmetic,my_task.jsonl); documents sharing a 13-gram "
                                                              "with their examples are dropped.")] = None,
    mix_tokens: Annotated[Optional[int], typer.Option(help="With --source: the mixture's tokens (default: every kept "
                                                           "token once, reweighted).")] = None,
    workers: Annotated[int, typer.Option(help="With --source: local processes for the per-document work.")] = 1,
    dask_scheduler: Annotated[Optional[str], typer.Option(help="With --source: a Dask distributed scheduler "
                                                               "(tcp://HOST:8786) to run the per-document work on, "
                                                               "instead of local processes.")] = None,
) -> None:
    """Tokenise a corpus into train/val shards; with --source, curate and mix several sources first."""
    from fewshot.data.prepare import prepare as prepare_data

    if tokenizer not in ("byte", "bpe"):
        raise FewshotError(f"--tokenizer must be byte or bpe, got {tokenizer!r}")
    if source:
        if inputs:
            raise FewshotError("give INPUTS or --source, not both")
        _prepare_mixture(source, out_dir, tokenizer, vocab_size, val_fraction, overwrite, dedup, dedup_threshold,
                         dedup_ngram, quality_ref, quality_keep, quality_on, decontaminate, mix_tokens, workers,
                         dask_scheduler)
        return
    if not inputs:
        raise FewshotError("give the files to prepare (INPUTS), or --source PATH:WEIGHT")
    curation = {"--dedup": dedup, "--quality-ref": quality_ref, "--quality-on": quality_on,
                "--decontaminate": decontaminate, "--mix-tokens": mix_tokens, "--dask-scheduler": dask_scheduler,
                "--workers": workers if workers != 1 else None}
    if given := [name for name, value in curation.items() if value is not None]:
        raise FewshotError(f"{', '.join(given)} curate --source inputs; give the inputs as --source PATH:WEIGHT")
    summary = prepare_data(inputs, out_dir, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction, overwrite=overwrite)
    out.print(
        f"{out_dir}: {summary.documents:,} documents, {summary.bytes:,} bytes -> "
        f"{summary.tokens_train:,} train + {summary.tokens_val:,} val tokens; "
        f"unigram entropy {summary.unigram_entropy_bits:.3f} bits/token"
    )
    if summary.replaced_bytes:
        err.print(f"warning: {summary.replaced_bytes:,} bytes were not valid UTF-8 and became U+FFFD")


def _prepare_mixture(sources, out_dir, tokenizer, vocab_size, val_fraction, overwrite, dedup, threshold, ngram,
                     quality_ref, quality_keep, quality_on, decontaminate, mix_tokens, workers, scheduler) -> None:
    from fewshot.data.curate.documents import Source
    from fewshot.data.curate.pipeline import CurateOptions, prepare_mixture
    from fewshot.data.curate.quality import KeepRule

    parsed = [Source.parse(spec) for spec in sources]
    if dedup not in (None, "minhash"):
        raise FewshotError(f"--dedup must be minhash, got {dedup!r}")
    if not 0 < threshold < 1:
        raise FewshotError(f"--dedup-threshold must be in (0, 1), got {threshold}")
    if ngram < 1:
        raise FewshotError(f"--dedup-ngram must be >= 1, got {ngram}")
    if quality_ref is not None and not quality_ref.exists():
        raise FewshotError(f"--quality-ref {quality_ref}: no such file or directory")
    if mix_tokens is not None and mix_tokens < 1:
        raise FewshotError(f"--mix-tokens must be >= 1, got {mix_tokens}")
    if workers < 1:
        raise FewshotError(f"--workers must be >= 1, got {workers}")
    if scheduler is not None and "://" not in scheduler:
        raise FewshotError(f"--dask-scheduler takes an address like tcp://HOST:8786, got {scheduler!r}")
    options = CurateOptions(
        dedup=DedupConfig(threshold, ngram) if dedup else None, quality_ref=quality_ref,
        quality_keep=KeepRule.parse(quality_keep),
        quality_on=None if quality_on is None else tuple(n.strip() for n in quality_on.split(",") if n.strip()),
        decontaminate=_evaluation_texts(decontaminate),
        tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction, mix_tokens=mix_tokens, workers=workers,
        scheduler=scheduler)
    result = prepare_mixture(parsed, out_dir, options, progress=err.is_terminal, overwrite=overwrite,
                             announce=lambda text: out.print(text, markup=False, highlight=False))
    worst = max(abs(r.realised_tokens - r.selected_tokens) / max(1, r.selected_tokens) for r in result.rows)
    out.print(f"{out_dir}: {result.summary.tokens:,} tokens ({result.summary.tokens_train:,} train); realised tokens "
              f"per source within {worst:.3%} of the table; report: {out_dir / 'curation' / 'report.md'}",
              markup=False, highlight=False)


def _evaluation_texts(spec: str | None) -> tuple[str, ...]:
    """Every example of the named tasks (GPT-3's synthetic ones, as `fewshot eval` draws them) and task files."""
    if not spec:
        return ()
    from fewshot.eval.contamination import example_text
    from fewshot.eval.harness import load_tasks
    from fewshot.eval.options import QUERIES

    names = [part.strip() for part in spec.split(",") if part.strip()]
    files = [Path(part) for part in names if part.endswith(".jsonl")]
    synthetic = ",".join(part for part in names if not part.endswith(".jsonl")) or None
    tasks = load_tasks(synthetic, files, None, QUERIES, 0)  # `fewshot eval`'s default queries and seed
    return tuple(example_text(item) for task in tasks for item in (*task.queries, *task.pool))


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

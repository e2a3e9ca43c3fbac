"""`fewshot demo` and `fewshot icl ...`: the in-context-learning recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import app, err, icl_app, out
from fewshot.cli.options import config_options
from fewshot.errors import FewshotError
from fewshot.files import check_creatable, check_new_dir
from fewshot.experiments.recipe import FULL, SHORT, Recipe


@app.command()
@config_options(Recipe, skip=("minutes", "context", "batch_size", "optimizer", "lr", "precision"), defaults=SHORT)
def demo(
    given: dict,
    out_dir: Annotated[Path, typer.Option("--out")] = Path("runs/demo"),
    minutes: Annotated[float, typer.Option(help="Training time budget.")] = SHORT.minutes,
    n_eval: Annotated[int, typer.Option(help="Held-out queries per family (and per arithmetic cell).")] = 40,
    smollm2: Annotated[bool, typer.Option(help="Also prompt SmolLM2-135M few-shot (imported to runs/smollm2 beside --out).")] = True,
) -> None:
    """The ICL recipe, shortened (SHORT): mixture, training, samples, held-out ICL curve (then SmolLM2's few-shot)."""
    from fewshot.experiments.demo import run_demo

    if n_eval < 2:
        raise FewshotError(f"--n-eval must be >= 2, got {n_eval}")
    recipe = SHORT.replace(minutes=minutes, **given)
    run_demo(out_dir, minutes=recipe.minutes, preset=recipe.preset, console=out, n_eval=n_eval, smollm2=smollm2,
             compile=recipe.compile)


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

    check_new_dir(out_dir)
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
    check_new_dir(out_dir)
    paths = write_held_out_tasks(out_dir, n=n, seed=seed)
    out.print(f"wrote {len(paths)} task files to {out_dir}: {', '.join(p.stem for p in paths)}")


@icl_app.command("train")
@config_options(Recipe, skip=("minutes",), defaults=FULL)
def icl_train(
    given: dict,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory to write.")] = Path("runs/icl"),
    minutes: Annotated[float, typer.Option(help="Training time budget; the step count is fitted to it.")] = FULL.minutes,
    attention: Annotated[Optional[str], typer.Option(help="dense (default) or lstm: the recurrent baseline.")] = None,
    data: Annotated[str, typer.Option(help="icl, icl-nonbursty, with options as in `fewshot train --data`.")] = "icl",
    n: Annotated[int, typer.Option(help="Queries per family (the frozen set has 200) for the evaluations that follow; 0 skips them.")] = 200,
) -> None:
    """The ICL recipe (FULL: icl-deep, Muon at 6e-3, compiled): train on the mixture for a time budget, then
    evaluate on both held-out sets (frozen, then dev). The other options are the Recipe's fields; unset, they are FULL's."""
    import fewshot
    from fewshot.experiments.icl import score_both_sets, train_icl
    from fewshot.tasks.meta.mixture import parse_data_spec
    from fewshot.train.report import write_report

    mixture = parse_data_spec(data)
    if mixture is None:
        raise FewshotError(f"--data takes icl or icl-nonbursty (with options), got {data!r}")
    options = {"attention": attention} if attention else {}
    # The recipe's 6e-3 is Muon's; another optimizer without --lr takes the preset's own rate.
    if given.get("optimizer", FULL.optimizer) != FULL.optimizer and "lr" not in given:
        given["lr"] = None
    recipe = FULL.replace(minutes=minutes, mixture=mixture, **given)
    result = train_icl(out_dir, recipe, console=err, **options)
    sections = score_both_sets(out_dir.name, fewshot.load(out_dir), out_dir, n=n, console=out) if n > 0 else {}
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


@icl_app.command("mixers")
def icl_mixers(
    mixers: Annotated[str, typer.Option(help="Comma-separated mixers, one arm each (fewshot.config.MIXERS).")] =
        "dense,linear,rfa-gate,aft,aft-local,gau,xl,sru,ssm,lstm",
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for ablation.md, icl.png and the results.")] = Path("docs/mixers/icl"),
    runs_dir: Annotated[Path, typer.Option(help="Where the runs go, one per mixer.")] = Path("runs/mixers"),
    steps: Annotated[int, typer.Option(help="Optimizer steps per mixer: equal tokens, and equal FLOPs to within the mixers' own terms.")] = 6000,
    minutes: Annotated[float | None, typer.Option(help="Instead of --steps: the same training time per mixer.")] = None,
    n: Annotated[int, typer.Option(help="Held-out queries per family.")] = 100,
) -> None:
    """Every sequence mixer trained for the same steps (or minutes) on the bursty ICL mixture, in
    the same blocks at about the same size: validation loss and the held-out in-context learning curve."""
    from fewshot.bench.context import parse_mixers
    from fewshot.experiments.icl import ABLATION, mixer_arms, run_ablation

    chosen = parse_mixers(mixers, extra=())  # checked before the first arm trains for minutes
    if n < 2:
        raise FewshotError("--n must be >= 2")
    recipe = ABLATION.replace(minutes=minutes) if minutes is not None else ABLATION.replace(steps=steps)
    report = run_ablation(runs_dir, out_dir, recipe, arms=mixer_arms(chosen),
                          title="Sequence mixers in GPT-3's blocks, no q/k/v convolution", n=n, console=out)
    out.print(f"wrote {out_dir / 'ablation.md'} and {report.plot}")


@icl_app.command("eval")
def icl_eval(
    runs: Annotated[list[Path], typer.Argument(help="Run directories.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for task files, results, summary.json and icl.png.")],
    held_out: Annotated[str, typer.Option("--set", help="dev: the development held-out families; frozen: the frozen "
                                          "set (fewshot.tasks.frozen), of which only the mean is reported.")] = "dev",
    n: Annotated[int, typer.Option(help="Queries per held-out family (the frozen set has 200).")] = 200,
    shots: Annotated[str, typer.Option(help="Comma-separated K values.")] = "0,1,2,4,8,16,32",
    templates: Annotated[Optional[str], typer.Option(help="Comma-separated formats (default: all of the set's; "
                                                     "dev: input-output, q-a, arrow, equals).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    batch_size: Annotated[int, typer.Option(help="Queries decoded together.")] = 32,
    device: Annotated[str, typer.Option()] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Write into an --out directory that already holds results.")] = False,
) -> None:
    """K-shot exact match on held-out task families, per format (the same harness as `fewshot eval --task-file`)."""
    import fewshot
    from fewshot.eval.harness import parse_shots
    from fewshot.eval.heldout import SETS, check_request
    from fewshot.experiments.icl import held_out_report

    if held_out not in SETS:
        raise FewshotError(f"--set takes {' or '.join(SETS)}, got {held_out!r}")
    chosen = None if templates is None else [t.strip() for t in templates.split(",") if t.strip()]
    if n < 2 or batch_size < 1:
        raise FewshotError("--n must be >= 2 and --batch-size >= 1")
    k = parse_shots(shots)
    check_request(SETS[held_out], n, k, list(SETS[held_out].templates) if chosen is None else chosen)
    if out_dir.is_file():
        raise FewshotError(f"{out_dir} is a file; --out takes a directory")
    if not overwrite:
        check_new_dir(out_dir)
    check_creatable(out_dir)
    models = [(run.name if len(runs) == 1 or len({r.name for r in runs}) == len(runs) else str(run), fewshot.load(run, device=device))
              for run in runs]
    report = held_out_report(models, out_dir, held_out=SETS[held_out], shots=k, n=n, templates=chosen, seed=seed,
                             batch_size=batch_size, console=out)
    out.print(f"wrote {out_dir / 'summary.json'}, {out_dir / 'results.md'} and {report.plot}")

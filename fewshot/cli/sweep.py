"""`fewshot sweep` (train a size ladder and/or IsoFLOP budgets) and `fewshot sweep fit`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import app, err, out
from fewshot.cli.options import config_options
from fewshot.experiments.scaling.plan import SweepConfig

sweep_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                        help="Scaling laws: a size ladder and/or IsoFLOP budgets as ordinary runs, then the fits.")
app.add_typer(sweep_app, name="sweep")


@sweep_app.callback()
@config_options(SweepConfig)
def sweep(
    ctx: typer.Context,
    given: dict,
    data: Annotated[Optional[str], typer.Option(
        help="A directory written by `fewshot prepare`, or `default`: the default corpus (Shakespeare and GPT-3 "
             "task text), prepared into data/default on first use.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="The sweep directory (continued if it exists).")] = None,
    only: Annotated[Optional[str], typer.Option(
        help="Train just this run of the sweep (one job of a Slurm array or a Ray task; see the README).")] = None,
    list_runs: Annotated[bool, typer.Option("--list", help="Record the plan in sweep.json and print its run names, one "
                                                           "per line, without training (a cluster's job list).")] = False,
) -> None:
    """Train a sweep's runs one after another (or --parallel N at once), skipping finished ones, then fit."""
    if ctx.invoked_subcommand is not None:
        if given or data is not None or out_dir is not None or only is not None or list_runs:
            from fewshot.errors import FewshotError

            raise FewshotError(f"sweep {ctx.invoked_subcommand} takes its own options; put them after "
                               f"`{ctx.invoked_subcommand}`")
        return
    from fewshot.cli.train import resolve_data
    from fewshot.errors import FewshotError
    from fewshot.experiments.scaling.sweep import run_sweep
    from fewshot.train.distributed import World

    if data is None or out_dir is None:
        raise FewshotError("sweep needs --data (a prepared directory, or `default`) and --out (the sweep directory)")
    config = SweepConfig(data=str(resolve_data(data, main=True)), out=str(out_dir), **given)
    if list_runs:
        for point in run_sweep(config, err, plan_only=True):
            out.print(point.name, markup=False, highlight=False)
        return
    with _stopped():
        run_sweep(config, err, only=only)
    if only is None and World.from_env().main:
        _report(out_dir)


@sweep_app.command()
def fit(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory.")],
    predict: Annotated[Optional[str], typer.Option(
        help="`next`: fit L(N) on the finished ladder and predict the next size's validation loss, with a 95% interval.")] = None,
    train: Annotated[bool, typer.Option(help="With --predict next: then train that size and report prediction vs measurement.")] = False,
) -> None:
    """Fit L(N), L(D), L(C) and the IsoFLOP optima of a sweep; write sweep.json's fits, report.md and the plots."""
    from fewshot.errors import FewshotError
    from fewshot.experiments.scaling.sweep import predict_and_train

    if predict not in (None, "next"):
        raise FewshotError(f"--predict takes `next` (the ladder's next size), got {predict!r}")
    if train and predict is None:
        raise FewshotError("--train trains the predicted size: give --predict next too")
    from fewshot.experiments.scaling.report import finished
    from fewshot.experiments.scaling.sweep import open_sweep, refresh

    open_sweep(sweep_dir)  # a directory that is not a sweep fails here, before anything is written
    if not finished(refresh(sweep_dir)):
        raise FewshotError(f"{sweep_dir}: no run has finished yet; nothing to fit (continue it with `fewshot sweep --out {sweep_dir} ...`)")
    if predict is not None:
        with _stopped():
            prediction = predict_and_train(sweep_dir, err, train=train)
        low, high = prediction["ci95"]
        out.print(f"predicted {prediction['name']} (N = {prediction['n']:,}): val loss {prediction['val_loss']:.4f} "
                  f"[{low:.4f}, {high:.4f}] from L(N) on {len(prediction['fitted_on'])} sizes")
    _report(sweep_dir)


@contextlib.contextmanager
def _stopped() -> Iterator[None]:
    """Ctrl-C or SIGTERM: the sweep saved what it had; say how to continue, exit 130."""
    from fewshot.experiments.scaling.sweep import SweepStopped

    try:
        yield
    except SweepStopped as stop:
        err.print(str(stop), markup=False, highlight=False)
        raise typer.Exit(130) from None


def _report(sweep_dir: Path) -> None:
    from fewshot.experiments.scaling.report import checked_predictions, write
    from fewshot.experiments.scaling.sweep import open_sweep

    record = open_sweep(sweep_dir)
    summary = write(sweep_dir, record)
    law = summary.get("L(N)", {})
    if "alpha" in law:
        out.print(f"L(N): alpha_N = {law['alpha']:.3f} [{law['alpha_ci95'][0]:.3f}, {law['alpha_ci95'][1]:.3f}], "
                  f"E = {law['e']:.3f} (Kaplan: 0.076)")
    for optimum in summary.get("isoflop", []):
        if "n_opt" in optimum:
            low, high = optimum["n_opt_ci95"]
            out.print(f"C = {optimum['budget']:.3g}: N* = {optimum['n_opt']:,.0f} [{low:,.0f}, {high:,.0f}], "
                      f"D*/N* = {optimum['tokens_per_param']:.1f}")
    for prediction in checked_predictions(record):
        if "measured" in prediction:
            out.print(f"{prediction['name']}: predicted {prediction['val_loss']:.4f}, measured {prediction['measured']:.4f} "
                      f"({prediction['error']:+.2%})")
    out.print(f"wrote {sweep_dir / 'report.md'}")

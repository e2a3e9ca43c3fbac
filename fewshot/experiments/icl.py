"""The in-context-learning recipe: train on the meta-training mixture for a time budget, then
measure K-shot accuracy on the held-out task families under four prompt formats.

    fewshot icl train --out runs/icl --minutes 30        # the full recipe
    fewshot icl eval runs/icl --out runs/icl/heldout     # (re)measure any run

The training half is `fewshot train --data icl --preset icl-deep` (`icl` for the 8-minute demo)
with its step count fitted to the budget, so the cosine schedule ends when the time does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from fewshot.runs import RunDir
from fewshot.config import TrainConfig
from fewshot.experiments.recipe import FULL, SHORT, Recipe
from fewshot.data.shards import TokenData
from fewshot.errors import FewshotError
from fewshot.files import write_json
from fewshot.eval.context_loss import loss_by_position
from fewshot.eval.heldout import DEV, FROZEN, SHOTS, HeldOutSet, MeanCurve, evaluate_held_out, mean_curve, summary_table
from fewshot.inference.lm import LM, load
from fewshot.eval.plots import plot_loss_by_position, plot_mean_curves
from fewshot.tasks.meta.mixture import ensure_mixture
from fewshot.train.loop import TrainResult, seconds_per_step, train

# Where the commands keep generated mixtures (relative to the working directory, like runs/);
# every function here takes its own `data_root`.
DATA_ROOT = Path("data/icl")
# Evaluation, logging and checkpoints take some of a run's time; the schedule should end
# before the time cap cuts the run short.
STEP_BUDGET_SHARE = 0.92


@dataclass(frozen=True)
class HeldOutReport:
    curves: tuple[MeanCurve, ...]
    markdown: str
    plot: Path


def train_icl(out: Path, recipe: Recipe = FULL, *, data_root: Path = DATA_ROOT, console: Console | None = None,
              **options: Any) -> TrainResult:
    """Train `recipe` for about its minutes (or exactly its steps); continues `out` if it has a checkpoint.
    `options` are further TrainConfig fields (attention="lstm" for the recurrent baseline)."""
    console = console or Console(stderr=True)
    run = RunDir(out)
    if run.exists() and run.latest_checkpoint() is not None:
        console.print(f"{out} has a checkpoint: continuing it (delete it to start over)")
        config = run.config.train
        return _finished(train(config, resume=True, console=console))
    run.check_new_or_resumable(resume=False)  # before the mixture and the timing, which take a while
    data_dir = ensure_mixture(data_root, recipe.mixture, progress=console.is_terminal)
    config = TrainConfig(data=str(data_dir), out=str(out), preset=recipe.preset, batch_size=recipe.batch_size,
                         context=recipe.context, eval_every=100, save_every=100, compile=recipe.compile,
                         optimizer=recipe.optimizer, lr=recipe.lr, precision=recipe.precision, **options)
    if recipe.steps is not None:
        return _finished(train(TrainConfig.from_dict({**config.to_dict(), "max_steps": recipe.steps}), console=console))
    config = TrainConfig.from_dict({**config.to_dict(), "max_time": recipe.minutes * 60, "fit_steps_to_time": True})
    per_step = seconds_per_step(config, TokenData.open(data_dir))
    steps = max(20, int(STEP_BUDGET_SHARE * recipe.minutes * 60 / per_step))
    console.print(f"measured {per_step:.2f} seconds per step on this machine -> {steps} steps in {recipe.minutes:g} minutes")
    config = TrainConfig.from_dict({**config.to_dict(), "max_steps": steps})
    return _finished(train(config, console=console))


def _finished(result: TrainResult) -> TrainResult:
    # Ctrl-C / SIGTERM end the whole command (demo, ablation), not just its training step.
    if result.interrupted:
        raise FewshotError(f"stopped by signal at step {result.step}; the checkpoint in {result.run_dir} "
                           "is kept, and the same command continues it")
    return result


def held_out_report(runs: Sequence[tuple[str, LM]], out: Path, *, held_out: HeldOutSet = DEV, shots: Sequence[int] = SHOTS,
                    n: int = 200, templates: Sequence[str] | None = None, seed: int = 0, batch_size: int = 32,
                    console: Console | None = None) -> HeldOutReport:
    """Score each (label, model) on a held-out set under each template; write summary.json,
    results.md and icl.png, and, where the set allows per-family results, results-<label>-<template>.json
    (the eval results schema, Evaluation.to_json)."""
    from fewshot.eval.harness import results_table, write_results

    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    curves = []
    for label, lm in runs:
        evaluations = evaluate_held_out(lm, out / "tasks", held_out=held_out, shots=shots, n=n, seed=seed,
                                        templates=templates, batch_size=batch_size, model=label)
        for template, evaluation in evaluations.items():
            if held_out.per_family:
                stem = f"results-{label}-{template}" if len(runs) > 1 else f"results-{template}"
                write_results([evaluation], out / f"{stem}.json")
                console.print(results_table(evaluation, list(shots), f"{label}, format {template}: {held_out.title}, n={n} each"))
            console.print(f"{label}, format {template}: {evaluation.examples} examples in {evaluation.seconds:.1f} s: "
                          f"{evaluation.examples_per_second:.1f} examples/s")
            curves.append(mean_curve(evaluation, f"{label} · {template}" if len(runs) > 1 else template))
    markdown = summary_table(curves)
    console.print(f"{held_out.title}: mean exact match over families (n={n} each)\n{markdown}")
    write_json(out / "summary.json", {"set": held_out.name, "n": n, "seed": seed, "curves": [c.to_json() for c in curves]})
    (out / "results.md").write_text(markdown + "\n")
    plot = plot_mean_curves(curves, out / "icl.png", f"{held_out.title}: mean exact match (n={n} per family)")
    return HeldOutReport(tuple(curves), markdown, plot)


def score_both_sets(label: str, lm: LM, run_dir: Path, *, n: int, shots: Sequence[int] = SHOTS,
                    first_template_only: bool = False, console: Console | None = None) -> dict[str, str]:
    """Score one model on both held-out sets into run_dir/frozen and run_dir/heldout: the frozen set first,
    because it is the honest estimate (the dev set's families shaped the training mixture).
    Returns report.md sections, one per set."""
    console = console or Console()
    sections = {}
    for held_out, where in ((FROZEN, "frozen"), (DEV, "heldout")):
        templates = (next(iter(held_out.templates)),) if first_template_only else None
        report = held_out_report([(label, lm)], run_dir / where, held_out=held_out, shots=shots,
                                 n=min(n, held_out.max_queries or n), templates=templates, console=console)
        for curve in report.curves:
            console.print(f"{held_out.title}, ICL curve (mean exact match, format {curve.label}): "
                          + "  ".join(f"K={k}: {m:.0%}" for k, m in zip(curve.shots, curve.means)))
        console.print(f"plot: {report.plot}")
        sections[f"In-context learning: {held_out.title}"] = f"{report.markdown}\n\n![{held_out.name}]({where}/icl.png)"
    return sections


# Chan et al. (2022)'s two questions, at one time budget: does the context have to predict the
# answer (bursty vs not), and does the architecture matter (a same-size LSTM in attention's place)?
# Each arm: (name, bursty data, further TrainConfig fields).
Arm = tuple[str, bool, dict[str, Any]]
ABLATION_ARMS: tuple[Arm, ...] = (
    ("transformer-bursty", True, {}),
    ("transformer-nonbursty", False, {}),
    ("lstm-bursty", True, {"attention": "lstm"}),
)


def mixer_arms(mixers: Sequence[str]) -> tuple[Arm, ...]:
    """One arm per sequence mixer, all on bursty data, in GPT-3's blocks without the q/k/v
    convolution (what every mixer can run in: learned positions, a key and value per head),
    so the arms differ in their mixer alone. Each mixer is within 2.5% of attention's parameters,
    but xl, whose position projection W_R adds a quarter."""
    return tuple((mixer, True, {"attention": mixer, "model_overrides": {"block": "gpt3", "qkv_conv": 0}})
                 for mixer in mixers)


ABLATION_SHOTS = (0, 1, 2, 4, 8, 16)
# The demo's recipe as docs/icl-ablation measured it: eager (an LSTM gains nothing from
# torch.compile that would keep the arms on equal terms) and with AdamW at the preset's rate.
ABLATION = SHORT.replace(compile=False, optimizer="adamw", lr=None)


def run_ablation(runs_dir: Path, out: Path, recipe: Recipe = ABLATION, *, arms: Sequence[Arm] = ABLATION_ARMS,
                 title: str = "ICL ablation", n: int = 100, shots: Sequence[int] = ABLATION_SHOTS,
                 template: str = "input-output", data_root: Path = DATA_ROOT, console: Console | None = None) -> HeldOutReport:
    """Train each arm with `recipe` for the same minutes or steps (continuing any that already has a
    checkpoint), then score all of them on the held-out families; writes out/ablation.md, with
    each arm's parameters, steps, tokens and validation loss, beside the held-out files."""
    console = console or Console()
    runs = []
    for name, bursty, options in arms:
        console.rule(f"arm {name}: {recipe.budget}")
        arm = recipe.replace(mixture=dataclasses.replace(recipe.mixture, bursty=bursty))
        result = train_icl(runs_dir / name, arm, data_root=data_root, console=console, **options)
        runs.append((name, load(runs_dir / name), result))
    report = held_out_report([(name, lm) for name, lm, _ in runs], out, shots=shots, n=n, templates=(template,), console=console)
    context = runs[0][1].model.config.context
    # Every arm on the bursty mixture's windows, where the context predicts the answers.
    bursty = ensure_mixture(data_root, dataclasses.replace(recipe.mixture, bursty=True), progress=console.is_terminal)
    val = TokenData.open(bursty).split("val")
    by_position = {name: loss_by_position(lm.model, val, context) for name, lm, _ in runs}
    position_plot = plot_loss_by_position(by_position, out / "loss_by_position.png",
                                          f"validation loss by position in {context}-byte windows of the bursty mixture")
    first = next(iter(by_position.values()))
    rows = ["| arm | parameters | steps | tokens seen | training seconds | val loss (nats/byte) | "
            "loss at positions {}-{} | loss at the last {} | ICL score (late - early) |".format(*first.early_positions, first.span),
            "|---|---|---|---|---|---|---|---|---|"]
    for name, lm, result in runs:
        c = by_position[name]
        rows.append(f"| {name} | {lm.model.num_params():,} | {result.step} | {result.tokens:,} | {result.seconds:,.0f} | "
                    f"{c.mean:.3f} | {c.early:.3f} | {c.late:.3f} | {c.icl_score:+.3f} |")
    write_json(out / "loss_by_position.json", {name: {"losses": list(c.losses), "early": c.early, "late": c.late,
                                                      "icl_score": c.icl_score} for name, c in by_position.items()})
    (out / "ablation.md").write_text(
        f"# {title}: {recipe.budget} of training per arm\n\n"
        f"Recipe: preset `{recipe.preset}`, {recipe.batch_size} x {context}-byte windows per step, "
        f"{recipe.mixture.megabytes:g} MB mixture. Held-out families, format `{template}`, n={n} queries "
        f"per family, mean exact match:\n\n"
        f"{report.markdown}\n\n![ablation]({report.plot.name})\n\n"
        f"Validation loss by position, over the same 64 validation windows for every arm (Olsson et al. 2022's "
        f"in-context learning score: the loss late in the window minus the loss early in it):\n\n"
        + "\n".join(rows) + f"\n\n![loss by position]({position_plot.name})\n")
    return report

"""Few-shot results as PNGs: in-context learning curves (GPT-3 Figure 1.2) and bars per task.

The few-shot plots read eval results objects (fewshot.eval.harness Evaluation.to_json), so they can be redrawn
from a saved file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fewshot.figures import plt, save_figure


def _shots_axes(axes, shots: set[int], ylabel: str) -> None:
    """K on a symlog axis (linear below 1, so K=0 sits next to 1, 2, 4, ...), scores in [0, 1]."""
    axes.set_xscale("symlog", linthresh=1, base=2)
    axes.set_xticks(sorted(shots))
    axes.set_xticklabels([str(k) for k in sorted(shots)])
    axes.set_xlabel("number of examples in context (K)")
    axes.set_ylabel(ylabel)
    axes.set_ylim(-0.02, 1.02)


MANY_LINES = 6  # beyond this, bands would hide each other: thin task lines plus a bold mean


def plot_icl_curves(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Score against K, one line per (model, task), with 95% CI bands. The x axis is symlog
    (linear below 1) so K=0 sits on it next to 1, 2, 4, ... on a log scale.

    With many tasks (GPT-3's arithmetic + word scrambling are 15) each task is a thin line
    and every model also gets a bold line for its mean over tasks, as in GPT-3's Figure 1.2.
    """
    lines = sum(len(result["tasks"]) for result in results)
    many = lines > MANY_LINES
    figure, axes = plt.subplots(figsize=(8.5 if many else 7, 4.8), dpi=120)
    colors = plt.get_cmap("tab20" if many else "tab10")
    all_shots: set[int] = set()
    index = 0
    for result in results:
        per_k: dict[int, list[float]] = {}
        for task, data in result["tasks"].items():
            shots = sorted(data["shots"], key=int)
            ks = [int(k) for k in shots]
            all_shots.update(ks)
            scores = [data["shots"][k]["score"] for k in shots]
            for k, score in zip(ks, scores):
                per_k.setdefault(k, []).append(score)
            label = f"{result['model']} · {task}" if len(results) > 1 else task
            color = colors(index % colors.N)
            index += 1
            axes.plot(ks, scores, "o-", label=label, color=color, markersize=3 if many else 4,
                      linewidth=0.8 if many else 1.5, alpha=0.7 if many else 1.0)
            if not many:
                low = [data["shots"][k]["ci95"][0] for k in shots]
                high = [data["shots"][k]["ci95"][1] for k in shots]
                axes.fill_between(ks, low, high, color=color, alpha=0.12)
        if many:
            ks = sorted(per_k)
            means = [sum(per_k[k]) / len(per_k[k]) for k in ks]
            axes.plot(ks, means, "s-", color="black" if len(results) == 1 else colors(index % colors.N), linewidth=2.5,
                      label=f"{result['model']} · mean of {len(result['tasks'])} tasks" if len(results) > 1 else
                      f"mean of {len(result['tasks'])} tasks")
    _shots_axes(axes, all_shots, "score (exact match / accuracy)")
    axes.set_title("in-context learning" + (" (task CIs in results.json)" if many else " (95% Wilson intervals)"))
    axes.grid(alpha=0.3)
    if many:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        axes.legend(fontsize=8)
    return save_figure(figure, path)


def plot_task_bars(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """One panel per task: a bar per (model, K) with its 95% interval as an error bar."""
    tasks = list(dict.fromkeys(task for result in results for task in result["tasks"]))
    figure, panels = plt.subplots(1, len(tasks), figsize=(max(4.0, 3.2 * len(tasks)), 3.6), dpi=120, squeeze=False)
    for axes, task in zip(panels[0], tasks):
        models = [r for r in results if task in r["tasks"]]
        shots = sorted({int(k) for r in models for k in r["tasks"][task]["shots"]})
        width = 0.8 / len(models)
        for m, result in enumerate(models):
            data = result["tasks"][task]["shots"]
            xs = [i + (m - (len(models) - 1) / 2) * width for i, k in enumerate(shots) if str(k) in data]
            cells = [data[str(k)] for k in shots if str(k) in data]
            scores = [c["score"] for c in cells]
            errors = [[max(0.0, s - c["ci95"][0]) for s, c in zip(scores, cells)],
                      [max(0.0, c["ci95"][1] - s) for s, c in zip(scores, cells)]]
            axes.bar(xs, scores, width, yerr=errors, capsize=2, label=result["model"])
        axes.set_xticks(range(len(shots)))
        axes.set_xticklabels([f"K={k}" for k in shots])
        axes.set_ylim(0, 1.02)
        axes.set_title(task)
        axes.grid(axis="y", alpha=0.3)
    if len(results) > 1:
        panels[0][0].legend(fontsize=7)
    return save_figure(figure, path)


def bars_path(curve_path: Path) -> Path:
    """Where the bar chart goes for `--plot icl.png`: icl_bars.png beside it."""
    return curve_path.with_name(f"{curve_path.stem}_bars{curve_path.suffix or '.png'}")


def plot_mean_curves(curves: Sequence[Any], path: Path, title: str) -> Path:
    """Mean score over tasks against K, one line per curve (a model, format or ablation arm),
    with pooled 95% Wilson bands; `curves` are fewshot.eval.heldout.MeanCurve objects."""
    figure, axes = plt.subplots(figsize=(7.5, 4.6), dpi=120)
    colors = plt.get_cmap("tab10")
    shots: set[int] = set()
    for i, curve in enumerate(curves):
        ks = list(curve.shots)
        shots.update(ks)
        axes.plot(ks, curve.means, "o-", color=colors(i % 10), label=curve.label, linewidth=1.8, markersize=4)
        axes.fill_between(ks, [lo for lo, _ in curve.ci95], [hi for _, hi in curve.ci95], color=colors(i % 10), alpha=0.12)
    _shots_axes(axes, shots, "mean exact match over held-out families")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


SMOOTHING = 16  # positions per moving-average point: the loss at one position is noisy


def plot_loss_by_position(curves: dict[str, Any], path: Path, title: str) -> Path:
    """Loss against position in the context, one line per model (fewshot.eval.context_loss.ContextLoss),
    as a moving average; the position axis is logarithmic, so the first tokens show apart."""
    figure, axes = plt.subplots(figsize=(7.5, 4.6), dpi=120)
    colors = plt.get_cmap("tab10")
    for i, (label, curve) in enumerate(curves.items()):
        losses = list(curve.losses)
        smooth = [sum(losses[j:j + SMOOTHING]) / SMOOTHING for j in range(0, len(losses) - SMOOTHING + 1)]
        positions = [j + SMOOTHING / 2 for j in range(len(smooth))]
        axes.plot(positions, smooth, color=colors(i % 10), label=f"{label} ({curve.icl_score:+.3f})", linewidth=1.6)
    axes.set_xscale("log")
    axes.set_xlabel("position in the context (tokens)")
    axes.set_ylabel(f"validation loss, nats ({SMOOTHING}-position moving average)")
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8, title="mixer (ICL score: late - early)", title_fontsize=8)
    return save_figure(figure, path)

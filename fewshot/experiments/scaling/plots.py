"""The sweep's figures: log-log laws with their fits and residuals, IsoFLOP profiles, and
few-shot accuracy against N (GPT-3 Figure 1.2's view, one line per K)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import NullFormatter, ScalarFormatter

from fewshot.experiments.scaling.fits import PowerLaw
from fewshot.experiments.scaling.report import finished, frontier, ladder_runs
from fewshot.figures import plt, save_figure


def _log_log(ax, **labels: str) -> None:
    """Log axes with plain numbers on the loss axis and no crowded minor labels."""
    ax.set(xscale="log", yscale="log", **labels)
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _curve(ax, law: PowerLaw | None, xs: np.ndarray, label: str) -> None:
    if law is None:
        return
    low, high = law.band(xs)
    ax.fill_between(xs, low, high, alpha=0.2, color="C1")
    ax.plot(xs, law(xs), color="C1", label=f"{label}: α = {law.alpha:.3f} [{law.alpha_ci95[0]:.3f}, {law.alpha_ci95[1]:.3f}]")


def _residuals(ax, law: PowerLaw | None, x: list[float], y: list[float], label: str) -> None:
    if law is None:
        return
    ax.plot(x, 100 * (np.array(y) - law(np.array(x))) / np.array(y), "o-", label=label)


def plot_laws(path: Path, record: dict[str, Any], laws: dict[str, PowerLaw], predictions: list[dict[str, Any]]) -> Path:
    """L(N), L(D), L(C) on log-log axes with fits and 95% bands; residuals underneath."""
    figure, axes = plt.subplots(2, 3, figsize=(15, 8), height_ratios=(3, 1), sharex="col")
    ladder = ladder_runs(record)
    for column, (key, x, title) in enumerate((("L(N)", "n", "non-embedding parameters N"),
                                              ("L(D)", "d", "training tokens D"))):
        ax = axes[0, column]
        xs, ys = [r[x] for _, r in ladder], [r["val_loss"] for _, r in ladder]
        ax.plot(xs, ys, "o", color="C0", label="ladder runs (final val loss)")
        reach = max(xs + [p["n"] for p in predictions if x == "n"]) if xs else 1
        if xs:
            _curve(ax, laws.get(key), np.geomspace(min(xs) / 1.3, reach * 1.3, 100), key)
        for prediction in predictions if x == "n" else ():
            low, high = prediction["ci95"]
            ax.errorbar([prediction["n"]], [prediction["val_loss"]], yerr=[[prediction["val_loss"] - low], [high - prediction["val_loss"]]],
                        fmt="s", color="C3", capsize=4,
                        label=f"{prediction['name']} predicted from {len(prediction['fitted_on'])} smaller sizes")
            if "measured" in prediction:
                ax.plot([prediction["n"]], [prediction["measured"]], "*", color="k", markersize=12,
                        label=f"{prediction['name']} measured (prediction {prediction['error']:+.1%} off)")
        if not xs:  # an IsoFLOP-only sweep has no ladder
            ax.set(title=f"{key}: no ladder runs")
            axes[1, column].set(xlabel=title)
            continue
        fitted = f"fitted on {len(xs)} ladder runs" if key in laws else "not fitted: needs 4 distinct values"
        _log_log(ax, title=f"{key}, {fitted}", ylabel="validation loss (nats/token)")
        ax.legend(fontsize=8)
        _residuals(axes[1, column], laws.get(key), xs, ys, key)
        axes[1, column].set(xlabel=title, ylabel="residual %")
        axes[1, column].axhline(0, color="grey", linewidth=0.8)
    ax = axes[0, 2]
    for name, run in finished(record):
        tokens, loss = zip(*run["curve"])
        ax.plot(6 * run["n"] * np.array(tokens, dtype=float), loss, color="grey", alpha=0.35, linewidth=0.8)
    edge = frontier(record)
    cs, ls = [r["c"] for _, r in edge], [r["val_loss"] for _, r in edge]
    ax.plot([r["c"] for _, r in finished(record)], [r["val_loss"] for _, r in finished(record)], ".", color="grey",
            label="every run's final loss (grey: learning curves)")
    ax.plot(cs, ls, "o", color="C0", label="compute frontier")
    if cs:
        _curve(ax, laws.get("L(C)"), np.geomspace(min(cs) / 1.3, max(cs) * 1.3, 100), "L(C)")
    _log_log(ax, title="L(C) over the compute frontier", ylabel="validation loss")
    ax.legend(fontsize=8)
    _residuals(axes[1, 2], laws.get("L(C)"), cs, ls, "L(C)")
    axes[1, 2].set(xlabel="compute C = 6ND (FLOPs)", ylabel="residual %")
    axes[1, 2].axhline(0, color="grey", linewidth=0.8)
    return save_figure(figure, path)


def plot_isoflop(path: Path, record: dict[str, Any], summary: dict[str, Any]) -> Path:
    """Loss against N at each budget with the fitted parabola and optimum; then N*(C) and D*(C)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    runs = finished(record, "isoflop")
    optima = {o["budget"]: o for o in summary["isoflop"]}
    for i, budget in enumerate(sorted({r["budget"] for _, r in runs})):
        points = sorted(((r["n"], r["val_loss"]) for _, r in runs if r["budget"] == budget))
        n, loss = map(np.array, zip(*points))
        left.plot(n, loss, "o", color=f"C{i}", label=f"C = {budget:.2g}")
        if len(n) >= 3:
            c = np.polyfit(np.log(n), loss, 2)
            grid = np.geomspace(n.min(), n.max(), 100)
            left.plot(grid, np.polyval(c, np.log(grid)), color=f"C{i}", alpha=0.6)
        best = optima.get(budget, {})
        if "n_opt" in best:
            left.errorbar([best["n_opt"]], [best["loss"]], xerr=[[best["n_opt"] - best["n_opt_ci95"][0]],
                                                                 [best["n_opt_ci95"][1] - best["n_opt"]]],
                          fmt="*", color=f"C{i}", markersize=12, capsize=4)
    left.set(xscale="log", xlabel="non-embedding parameters N", ylabel="validation loss", title="IsoFLOP profiles")
    left.xaxis.set_minor_formatter(NullFormatter())
    left.legend(fontsize=8)
    found = [o for o in summary["isoflop"] if "n_opt" in o]
    if found:
        c = np.array([o["budget"] for o in found])
        for key, label, color in (("n_opt", "N*", "C0"), ("d_opt", "D*", "C2")):
            y = np.array([o[key] for o in found])
            ci = np.array([o[f"{key}_ci95"] for o in found]).T
            right.errorbar(c, y, yerr=[y - ci[0], ci[1] - y], fmt="o", color=color, capsize=4, label=label)
            if "N_opt(C)" in summary:
                fit = summary["N_opt(C)"] if key == "n_opt" else summary["D_opt(C)"]
                exponent = fit["a"] if key == "n_opt" else fit["b"]
                grid = np.geomspace(c.min() / 1.5, c.max() * 1.5, 50)
                right.plot(grid, fit["k"] * grid**exponent, color=color, alpha=0.6, label=f"{label} ~ C^{exponent:.2f}")
        grid = np.geomspace(c.min() / 1.5, c.max() * 1.5, 50)
        right.plot(grid, np.sqrt(grid / 120), "--", color="grey", label="Chinchilla: N = sqrt(C/120) (20 tokens/param)")
        right.set(xscale="log", yscale="log")
        right.xaxis.set_minor_formatter(NullFormatter())
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no budget has its optimum\nwithin the sizes tried", ha="center", va="center", transform=right.transAxes)
    right.set(xlabel="compute C (FLOPs)", ylabel="compute-optimal N*, D*", title="Optimal allocation")
    return save_figure(figure, path)


def plot_fewshot(path: Path, record: dict[str, Any]) -> Path:
    """Few-shot score against N, one line per K, a panel per task (ladder runs)."""
    ladder = [(name, r) for name, r in ladder_runs(record) if "fewshot" in r]
    tasks = list(_tasks(ladder[0][1]["fewshot"])) if ladder else []
    figure, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5 * max(1, len(tasks)), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        shots = sorted(_tasks(ladder[0][1]["fewshot"])[task]["shots"], key=int)
        for k in shots:
            n = [r["n"] for _, r in ladder]
            cells = [_tasks(r["fewshot"])[task]["shots"][k] for _, r in ladder]
            score = np.array([c["score"] for c in cells])
            low, high = np.array([c["ci95"] for c in cells]).T
            ax.plot(n, 100 * score, "o-", label=f"K = {k}")
            ax.fill_between(n, 100 * low, 100 * high, alpha=0.12)
        n = _tasks(ladder[0][1]["fewshot"])[task]["shots"][shots[0]]["n"]
        ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="score %",
               title=f"{task} (n = {n} per point; bands: 95% Wilson intervals)")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=8)
    return save_figure(figure, path)


def _tasks(results: dict[str, Any]) -> dict[str, Any]:
    return results["tasks"]

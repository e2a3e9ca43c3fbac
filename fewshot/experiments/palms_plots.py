"""The two figures of `fewshot palms`: adherence per category, and capability integrity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fewshot.figures import plt, save_figure

COLORS = {"base": "tab:gray", "control": "tab:orange", "targeted": "tab:green"}


def plot_adherence(rows: Sequence, models: Sequence[str], path: Path) -> Path:
    categories = list(dict.fromkeys(r.category for r in rows))
    by = {(r.model, r.category): r for r in rows}
    x = np.arange(len(categories))
    width = 0.8 / len(models)
    figure, axes = plt.subplots(figsize=(max(6.5, 1.6 * len(categories)), 4.2), dpi=120)
    for i, model in enumerate(models):
        mean = np.array([by[model, c].margin for c in categories])
        low = mean - np.array([by[model, c].margin_ci95[0] for c in categories])
        high = np.array([by[model, c].margin_ci95[1] for c in categories]) - mean
        axes.bar(x + (i - (len(models) - 1) / 2) * width, mean, width, yerr=[low, high], capsize=3,
                 color=COLORS.get(model), label=model)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(x, labels=categories, fontsize=8)
    axes.set_ylabel("desired - undesired, nats / token (95% CI)")
    axes.set_title("PALMS adherence on held-out probes")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_capability(rows: Sequence, models: Sequence[str], path: Path) -> Path:
    measures = list(dict.fromkeys(r.measure for r in rows))
    by = {(r.model, r.measure): r for r in rows}
    figure, panels = plt.subplots(1, len(measures), figsize=(2.4 * len(measures) + 1, 3.8), dpi=120)
    for axes, measure in zip(np.atleast_1d(panels), measures):
        for i, model in enumerate(models):
            r = by[model, measure]
            axes.errorbar([i], [r.value], yerr=[[r.value - r.ci95[0]], [r.ci95[1] - r.value]], fmt="o", capsize=3,
                          color="tab:red" if r.flagged else COLORS.get(model))
        axes.set_xticks(range(len(models)), labels=models, fontsize=7, rotation=20)
        axes.set_title(measure, fontsize=8)
    figure.suptitle("Capability integrity (red: worse than the base's 95% interval)", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)

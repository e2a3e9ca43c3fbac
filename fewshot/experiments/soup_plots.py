"""The figure of `fewshot soup`: every model's validation and held-out score, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fewshot.figures import plt, save_figure


def plot_scores(names: Sequence[str], val: dict, held: dict, path: Path, title: str) -> Path:
    shown = [n for n in names if n in held]
    x = np.arange(len(shown))
    figure, axes = plt.subplots(figsize=(max(6.5, 1.1 * len(shown) + 2), 4.2), dpi=120)
    held_scores = np.array([held[n].score for n in shown])
    low = held_scores - np.array([held[n].ci95[0] for n in shown])
    high = np.array([held[n].ci95[1] for n in shown]) - held_scores
    colors = ["tab:gray" if n not in ("uniform soup", "greedy soup", "ensemble") else
              {"uniform soup": "tab:blue", "greedy soup": "tab:green", "ensemble": "tab:purple"}[n] for n in shown]
    axes.bar(x + 0.2, held_scores, 0.4, yerr=[low, high], capsize=3, color=colors, label="held-out (95% CI)")
    axes.bar(x - 0.2, [val[n].score for n in shown], 0.4, color=colors, alpha=0.4, label="validation")
    labels = [n if n in ("uniform soup", "greedy soup", "ensemble") else f"ingredient {i + 1}" for i, n in enumerate(shown)]
    axes.set_xticks(x, labels=labels, rotation=20, ha="right", fontsize=8)
    axes.set_ylabel("score")
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)

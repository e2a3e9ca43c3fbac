"""The two figures of `fewshot compare`: accuracy against K, and what each answer costs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fewshot.figures import plt, save_figure

QUERIES = 1000  # the workload the left cost panel prices: fine-tuning once, then this many queries
COLORS = {"icl": "tab:gray", "ia3": "tab:green", "lora": "tab:blue", "full": "tab:red"}


def plot_accuracy(cells: Sequence, path: Path, task: str) -> Path:
    figure, axes = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for method in dict.fromkeys(c.method for c in cells):
        mine = sorted((c for c in cells if c.method == method), key=lambda c: c.k)
        ks = [c.k for c in mine]
        scores = np.array([c.score for c in mine])
        low, high = np.array([c.ci95[0] for c in mine]), np.array([c.ci95[1] for c in mine])
        axes.errorbar(ks, scores, yerr=[scores - low, high - scores], marker="o", capsize=3, label=method,
                      color=COLORS.get(method))
    axes.set_xscale("log", base=2)
    shown = sorted({c.k for c in cells})
    axes.set_xticks(shown, labels=[str(k) for k in shown])
    axes.set_xlabel("K (examples: in the prompt for icl, fine-tuned on for the others)")
    axes.set_ylabel("accuracy on held-out queries (95% CI)")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(f"{task}: in-context learning vs fine-tuning")
    axes.legend()
    return save_figure(figure, path)


def plot_cost(cells: Sequence, path: Path, task: str) -> Path:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for c in cells:
        total = c.train_flops + QUERIES * c.inference_flops
        left.scatter(total, c.score, color=COLORS.get(c.method), s=30)
        left.annotate(f"{c.method} K={c.k}", (total, c.score), fontsize=7, xytext=(3, 3), textcoords="offset points")
    left.set_xscale("log")
    left.set_xlabel(f"total FLOPs: training + {QUERIES:,} queries")
    left.set_ylabel("accuracy")
    left.set_title("accuracy against total compute")
    k = max(c.k for c in cells)
    at_k = [c for c in cells if c.k == k]
    queries = np.logspace(0, 6, 200)
    icl = next((c for c in at_k if c.method == "icl"), None)
    for c in at_k:
        right.plot(queries, c.train_flops + queries * c.inference_flops, label=c.method, color=COLORS.get(c.method))
        even = c.break_even(icl) if icl is not None and c.method != "icl" else None
        if even is not None and even <= queries[-1]:
            right.scatter([even], [c.train_flops + even * c.inference_flops], color=COLORS.get(c.method), marker="x", s=60)
            right.annotate(f"{even:,.0f}", (even, c.train_flops + even * c.inference_flops), fontsize=7,
                           xytext=(4, -10), textcoords="offset points")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("queries answered")
    right.set_ylabel("total FLOPs")
    right.set_title(f"K={k}: where fine-tuning becomes cheaper (x)")
    right.legend()
    return save_figure(figure, path)

"""A run's report: report.md with the numbers that matter and a loss-curve PNG."""

from __future__ import annotations

import json

import math
from collections.abc import Sequence
from pathlib import Path

from fewshot.files import atomic_write_text
from fewshot.runs import RunDir
from fewshot.train.metrics import read_metrics
from fewshot.figures import plt, save_figure

LOSS_PLOT = "loss.png"


def plot_loss(rows: Sequence[dict[str, float | None]], title: str, path: Path,
              unigram_entropy_bits: float | None = None) -> Path:
    """Train and validation loss against step (rows of metrics.csv), with the unigram
    entropy as the line a model must get under to have learned anything beyond counts."""
    train = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r["val_loss"] is not None]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    axes.plot(*zip(*train), label="train", linewidth=1)
    if val:
        axes.plot(*zip(*val), "o-", label="validation", markersize=3)
    if unigram_entropy_bits:
        axes.axhline(unigram_entropy_bits * math.log(2), color="grey", linestyle="--", label="unigram entropy")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def write_report(run_dir: Path, sections: dict[str, str] | None = None) -> Path:
    """Write report.md (and loss.png); `sections` adds titled Markdown blocks (samples, tables)."""
    run = RunDir.open(run_dir)
    config = run.config
    entropy = (config.data or {}).get("meta", {}).get("unigram_entropy_bits")
    rows = read_metrics(run.metrics_path)
    plot = plot_loss(rows, run.path.name, run.path / LOSS_PLOT, entropy) if rows else None
    model, train = config.model, config.train
    # An imported run has no training config: it says where its weights came from instead.
    origin = f"preset `{train.preset}`" if train else f"imported ({json.dumps(config.source, sort_keys=True)})"
    lines = [
        f"# Run report: {run.path.name}",
        "",
        f"- model: {origin}, {model.n_layer} layers, d_model {model.d_model}, "
        f"{model.n_head} heads, context {model.context}, vocabulary {model.vocab_size}, attention {model.attention}",
        f"- tokenizer: `{config.tokenizer['type']}`" + (f"; data: `{train.data}`" if train else ""),
    ]
    if rows:
        last = rows[-1]
        vals = [r for r in rows if r["val_loss"] is not None]
        tokens, elapsed = last["tokens"] or 0, last["elapsed_s"] or 0
        lines.append(f"- steps: {int(last['step'] or 0)}, tokens seen: {int(tokens):,}, time: {elapsed:.0f} s")
        if last["train_loss"] is not None:
            lines.append(f"- final train loss: {last['train_loss']:.4f} nats/token")
        if vals:
            best = min(vals, key=lambda r: r["val_loss"])
            lines.append(f"- final val loss: {vals[-1]['val_loss']:.4f} nats/token (best {best['val_loss']:.4f} at step {int(best['step'])})")
    if entropy:
        lines.append(f"- unigram entropy of the data: {entropy * math.log(2):.4f} nats/token ({entropy:.3f} bits)")
    if plot is not None:
        lines += ["", f"![loss curve]({plot.name})"]
    for title, body in (sections or {}).items():
        lines += ["", f"## {title}", "", body.rstrip()]
    atomic_write_text(run.report_path, "\n".join(lines) + "\n")
    return run.report_path

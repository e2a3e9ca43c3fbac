"""Held-out in-context learning: K-shot accuracy on task families the model never trained on,
under several prompt formats (`fewshot icl eval`).

The held-out families of fewshot.tasks.families are written as ordinary JSONL task files
and scored by the ordinary harness (`fewshot.eval.harness`, what `fewshot eval --task-file`
runs), once per template. The headline number is the mean exact match over families at
each K; its interval is Wilson's on the pooled queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewshot.eval.harness import Evaluation, evaluate, task_from_file, wilson_interval
from fewshot.inference.lm import LM
from fewshot.tasks.meta.mixture import EVAL_TEMPLATES, write_held_out_tasks

SHOTS = (0, 1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class MeanCurve:
    """Mean exact match over families at each K, for one model under one template."""

    label: str
    shots: tuple[int, ...]
    means: tuple[float, ...]
    ci95: tuple[tuple[float, float], ...]  # Wilson, pooled over all queries of all families
    effective_k: tuple[float, ...]

    def at(self, k: int) -> float:
        return self.means[self.shots.index(k)]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "shots": {str(k): {"mean": m, "ci95": list(ci), "effective_k": e}
                                               for k, m, ci, e in zip(self.shots, self.means, self.ci95, self.effective_k)}}


def mean_curve(evaluation: Evaluation, label: str) -> MeanCurve:
    shots = tuple(r.shots for r in evaluation.tasks[0].shots)
    means, intervals, effective = [], [], []
    for i, _ in enumerate(shots):
        cells = [task.shots[i] for task in evaluation.tasks]
        means.append(sum(c.accuracy for c in cells) / len(cells))
        intervals.append(wilson_interval(sum(c.correct for c in cells), sum(c.n for c in cells)))
        effective.append(sum(c.effective_k for c in cells) / len(cells))
    return MeanCurve(label, shots, tuple(means), tuple(intervals), tuple(effective))


def evaluate_held_out(lm: LM, tasks_dir: Path, *, shots: Sequence[int] = SHOTS, n: int = 200, seed: int = 0,
                      templates: Sequence[str] = tuple(EVAL_TEMPLATES), batch_size: int = 32,
                      model: str = "") -> dict[str, Evaluation]:
    """Write the held-out task files into `tasks_dir`, then score the first n lines of each
    under each template (a file has at least max(shots) + 1 lines, so every query has its
    demonstrations among the other lines)."""
    paths = write_held_out_tasks(tasks_dir, n=max(n, max(shots) + 1), seed=seed)
    results = {}
    for name in templates:
        tasks = [task_from_file(path, n, EVAL_TEMPLATES[name]) for path in paths]
        # Room for the longest answer plus the newline that ends it; longer answers stop early.
        max_tokens = max(len(lm.tokenizer.encode(" " + q.target)) for t in tasks for q in t.queries) + 1
        results[name] = evaluate(lm, tasks, list(shots), seed, model=model, max_tokens=max_tokens, batch_size=batch_size)
    return results


def summary_table(curves: Sequence[MeanCurve]) -> str:
    """Markdown: one row per curve, one column per K."""
    shots = curves[0].shots
    lines = ["| model · format | " + " | ".join(f"K={k}" for k in shots) + " |", "|---" * (len(shots) + 1) + "|"]
    for curve in curves:
        lines.append(f"| {curve.label} | " + " | ".join(f"{m:.1%}" for m in curve.means) + " |")
    return "\n".join(lines)

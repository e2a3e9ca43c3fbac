"""Held-out in-context learning: K-shot accuracy on task families the model never trained on,
under several prompt formats (`fewshot icl eval`).

Two sets of families, each scored by the ordinary harness (`fewshot.eval.harness`, what
`fewshot eval --task-file` runs) once per template:
- `dev`: the held-out families of fewshot.tasks.families, written as JSONL task files. Training
  families were added after reading its failures, so it is a development set.
- `frozen`: the committed task files of fewshot.tasks.frozen, written by someone who never saw
  the training families, in their own four formats. Its rule allows the mean alone to be
  reported, so no per-family result leaves this module for it.
The headline number is the mean exact match over families at each K; its interval is Wilson's
on the pooled queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewshot.errors import FewshotError
from fewshot.eval.harness import Evaluation, evaluate, task_from_file, wilson_interval
from fewshot.inference.lm import LM
from fewshot.tasks import frozen
from fewshot.tasks.meta.mixture import EVAL_TEMPLATES, write_held_out_tasks

SHOTS = (0, 1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class HeldOutSet:
    name: str
    title: str
    templates: dict[str, str]
    task_files: Callable[[Path, int, int], list[Path]]  # (directory to write into, queries, seed) -> task files
    max_queries: int | None  # per family; None: the generator draws as many as asked
    per_family: bool  # whether per-family results may be written


DEV = HeldOutSet("dev", "development held-out families", EVAL_TEMPLATES,
                 lambda out, n, seed: write_held_out_tasks(out, n=n, seed=seed), None, True)
FROZEN = HeldOutSet("frozen", "frozen held-out families", frozen.TEMPLATES,
                    lambda out, n, seed: frozen.task_files(), frozen.QUERIES, False)
SETS = {s.name: s for s in (DEV, FROZEN)}


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


def check_request(held_out: HeldOutSet, n: int, shots: Sequence[int], templates: Sequence[str]) -> None:
    unknown = [t for t in templates if t not in held_out.templates]
    if unknown or not templates:
        raise FewshotError(f"templates of the {held_out.name} set: unknown {', '.join(unknown) or '(none given)'}; "
                           f"choose from {', '.join(held_out.templates)}")
    if held_out.max_queries is not None and max(n, max(shots) + 1) > held_out.max_queries:
        raise FewshotError(f"the {held_out.name} set has {held_out.max_queries} queries per family: "
                           f"n ({n}) and the largest K + 1 ({max(shots) + 1}) must not exceed it")


def evaluate_held_out(lm: LM, tasks_dir: Path, *, held_out: HeldOutSet = DEV, shots: Sequence[int] = SHOTS, n: int = 200,
                      seed: int = 0, templates: Sequence[str] | None = None, batch_size: int = 32,
                      model: str = "") -> dict[str, Evaluation]:
    """Get the set's task files (the dev set writes them into `tasks_dir`), then score the first
    n lines of each under each template (a file has at least max(shots) + 1 lines, so every
    query has its demonstrations among the other lines)."""
    templates = list(held_out.templates) if templates is None else list(templates)
    check_request(held_out, n, shots, templates)
    paths = held_out.task_files(tasks_dir, max(n, max(shots) + 1), seed)
    results = {}
    for name in templates:
        tasks = [task_from_file(path, n, held_out.templates[name]) for path in paths]
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

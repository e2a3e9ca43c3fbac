"""K-shot evaluation, as in GPT-3 §2: K solved examples, then the query.

Protocol (the decisions a reader of the numbers needs):
- Demonstrations for query i are drawn with `random.Random(f"{seed}/{task}/{i}")` from a
  pool that never holds the query: the other lines of a task file, or a synthetic task's
  separate pool. Examples are joined by a blank line.
- If the prompt does not fit the model's context (leaving room for the answer), the last
  demonstrations are dropped until it does; the mean K actually shown is `effective_k`.
- Generation: greedy decoding, the answer is the text before the first newline (or stop
  sequence), stripped, compared exactly with the stripped target. Decoding stops early
  once a row's answer is longer than the longest target: it can no longer match.
- Multiple choice: the choice with the highest log-likelihood of " choice" after the
  prompt wins, normalised by `mc_norm` (GPT-3 §2.4): "sum" (raw), "token" (divided by
  the choice's token count), or "unconditional" (minus log P(choice | answer context),
  where the answer context is the template's text before {target}, e.g. "Output:").
- Batching: greedy generation left-pads a batch of prompts sorted by length; the model
  gives each row its own positions and masks the padding (`Cache.padding`). The choices of
  one multiple-choice item share their prefix and go through one right-padded forward
  (causal attention never lets a real position see the padding after it).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from fewshot.errors import FewshotError
from fewshot.eval.options import EvalOptions
from fewshot.inference.decode import decode
from fewshot.inference.lm import LM
from fewshot.inference.scoring import score_continuations
from fewshot.tasks.base import Example
from fewshot.tasks.taskfile import PLAIN, Template, read_task_file

SEPARATOR = "\n\n"
POOL_SIZE = 512  # demonstrations available per synthetic task; K above this is an error


def first_line(text: str, stops: Sequence[str] = ()) -> str:
    """The answer a model gave: what it wrote before its first newline (or stop), trimmed."""
    text = text.lstrip(" ")
    for stop in ("\n", *stops):
        text = text.split(stop, 1)[0]
    return text.strip()


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval: unlike the normal approximation it stays inside [0, 1]
    and is honest at 0% and 100%, which small few-shot samples often hit."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # min/max with p: at p = 0 or 1 rounding could otherwise leave p a hair outside.
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


# ---------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class EvalTask:
    """Queries, the pool their demonstrations come from, and how to format both.

    `leave_one_out`: the pool *is* the query list (a task file), so query i skips pool[i].
    """

    name: str
    metric: str  # "exact_match" | "accuracy"
    queries: tuple[Example, ...]
    pool: tuple[Example, ...]
    template: Template = PLAIN
    leave_one_out: bool = False
    contaminated: tuple[bool, ...] = ()  # per query, once checked (fewshot.eval.contamination); () = not checked

    @property
    def multiple_choice(self) -> bool:
        return self.metric == "accuracy"

    def candidates(self, index: int) -> list[Example]:
        query = self.queries[index]
        skip = index if self.leave_one_out else -1
        return [item for j, item in enumerate(self.pool) if j != skip and item != query]


def draw(task: EvalTask, index: int, k: int, seed: int) -> list[Example]:
    """The K demonstrations of query `index`: seeded by (seed, task, index), never the query."""
    candidates = task.candidates(index)
    if k > len(candidates):
        raise FewshotError(f"task {task.name}: {k} shots but its demonstration pool has only {len(candidates)} examples; "
                           "use fewer shots (or more lines in the task file)")
    return random.Random(f"{seed}/{task.name}/{index}").sample(candidates, k)


def task_from_file(path: str | Path, n: int | None = None, template: str | None = None) -> EvalTask:
    task = read_task_file(path)
    queries = task.items if n is None else task.items[:n]
    return EvalTask(task.name, task.metric, queries, task.items, Template(template) if template else Template(),
                    leave_one_out=True)


def synthetic_tasks(names: str, n: int, seed: int) -> list[EvalTask]:
    """GPT-3's synthetic tasks by name or group ("arithmetic,CL"), in their own formats."""
    from fewshot.tasks.gpt3 import resolve_tasks

    tasks = []
    for task in resolve_tasks(names):
        queries = tuple(task.examples(n, seed))
        pool = tuple(task.pool(POOL_SIZE, seed, exclude=n))
        tasks.append(EvalTask(task.name, task.metric, queries, pool, PLAIN))
    return tasks


# ---------------------------------------------------------------------------- prompts


def render(task: EvalTask, demonstrations: Sequence[Example], query: Example) -> str:
    shown = [task.template.solved(d.input, d.target) for d in demonstrations]
    return SEPARATOR.join([*shown, task.template.query(query.input)])


def build_prompt(lm: LM, task: EvalTask, index: int, k: int, seed: int, budget: int) -> tuple[list[int], int]:
    """Token ids of query `index`'s K-shot prompt, at most `budget` long, and the K it kept.

    Demonstrations are dropped from the end until the prompt fits; a 0-shot prompt that
    still does not fit keeps its last `budget` tokens."""
    demonstrations = draw(task, index, k, seed)
    while True:
        ids = lm.tokenizer.encode(render(task, demonstrations, task.queries[index]))
        if len(ids) <= budget or not demonstrations:
            break
        demonstrations = demonstrations[:-1]
    return (ids[-budget:] or [lm.tokenizer.eot_id]), len(demonstrations)


# ---------------------------------------------------------------------------- scoring


@torch.inference_mode()
def greedy_answers(lm: LM, prompts: Sequence[list[int]], max_tokens: int, stops: Sequence[str] = (),
                   max_answer: int | None = None, batch_size: int = 32, lookup: int = 0) -> list[str]:
    """Greedy answers (`first_line`) for each prompt, decoded `batch_size` at a time.

    Prompts are sorted by length so each batch pads little, then left-padded: the model
    gives every row its own positions and hides the padding (`Cache.padding`).
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        texts = _greedy_batch(lm, [prompts[i] for i in chunk], max_tokens, tuple(stops), max_answer, lookup)
        for i, text in zip(chunk, texts):
            answers[i] = first_line(text, stops)
    return answers


def _greedy_batch(lm: LM, rows: list[list[int]], max_tokens: int, stops: tuple[str, ...], max_answer: int | None,
                  lookup: int) -> list[str]:
    tokenizer = lm.tokenizer
    max_tokens = min(max_tokens, lm.model.config.context - max(map(len, rows)))
    generated: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)

    def on_tokens(next_ids: torch.Tensor, _logits: torch.Tensor) -> bool:
        for i, token in enumerate(next_ids.tolist()):
            if done[i]:
                continue
            if token in tokenizer.stop_ids:
                done[i] = True
                continue
            generated[i].append(token)
            text = tokenizer.decode(generated[i])
            finished = any(stop in text for stop in ("\n", *stops))
            # strip() of a prefix is never longer than strip() of the whole, so a row whose
            # answer already outgrew every target cannot become correct.
            done[i] = finished or (max_answer is not None and len(text.strip()) > max_answer)
        return all(done)

    # The pad id is never seen: the model hides each row's padding.
    decode(lm.model, rows, max_tokens, lambda logits: logits.argmax(dim=-1), on_tokens, pad_id=tokenizer.eot_id, lookup=lookup)
    return [tokenizer.decode(g) for g in generated]


def continuation_logprobs(lm: LM, prefix: list[int], continuations: Sequence[list[int]]) -> list[float]:
    """Summed log P(continuation | prefix) for each continuation, in one batch."""
    scored = score_continuations(lm.model, [(prefix, c) for c in continuations], batch_size=max(1, len(continuations)))
    return [logprob for logprob, _ in scored]


def choose(lm: LM, task: EvalTask, prefix: list[int], item: Example, mc_norm: str) -> int:
    """Index of the choice the model prefers after `prefix`."""
    gap = task.template.gap()
    continuations = [lm.tokenizer.encode(gap + choice) or [lm.tokenizer.eot_id] for choice in item.choices or ()]
    scores = continuation_logprobs(lm, prefix, continuations)
    if mc_norm == "token":
        scores = [s / len(c) for s, c in zip(scores, continuations)]
    elif mc_norm == "unconditional":
        context = lm.tokenizer.encode(task.template.answer_context()) or [lm.tokenizer.eot_id]
        baseline = continuation_logprobs(lm, context, continuations)
        scores = [s - b for s, b in zip(scores, baseline)]
    return max(range(len(scores)), key=scores.__getitem__)


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ShotResult:
    shots: int
    correct: int
    n: int
    ci95: tuple[float, float]
    effective_k: float = 0.0
    clean: ShotResult | None = None  # the same, on the queries the contamination check passed

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    score = accuracy

    @property
    def clean_score(self) -> float | None:
        return None if self.clean is None else self.clean.accuracy

    @property
    def clean_n(self) -> int | None:
        return None if self.clean is None else self.clean.n


@dataclass(frozen=True)
class TaskResult:
    name: str
    metric: str
    shots: tuple[ShotResult, ...]
    contaminated: int | None = None  # queries flagged by the contamination check, if it ran


@dataclass
class Evaluation:
    model: str
    tasks: list[TaskResult] = field(default_factory=list)
    examples: int = 0
    seconds: float = 0.0

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The eval results schema: {"model", "tasks": {name: {"metric", "shots": {K: {"score", "n", "ci95", "effective_k"}}}}}."""
        def cell(r: ShotResult) -> dict[str, Any]:
            out = {"score": r.accuracy, "n": r.n, "ci95": list(r.ci95), "effective_k": r.effective_k}
            if r.clean is not None:
                out["clean"] = {"score": r.clean.accuracy, "n": r.clean.n, "ci95": list(r.clean.ci95)}
            return out

        def entry(task: TaskResult) -> dict[str, Any]:
            out: dict[str, Any] = {"metric": task.metric, "shots": {str(r.shots): cell(r) for r in task.shots}}
            if task.contaminated is not None:
                out["contaminated"] = task.contaminated
            return out

        return {"model": self.model, "tasks": {task.name: entry(task) for task in self.tasks}}


def evaluate_shots(lm: LM, task: EvalTask, shots: int, seed: int = 0, **options: Any) -> ShotResult:
    """Score every query of `task` with `shots` demonstrations; options are EvalOptions' fields."""
    opts = EvalOptions(**options)
    mc_norm, max_tokens, stops, batch_size = opts.mc_norm, opts.max_tokens, tuple(opts.stops), opts.batch_size
    context = lm.model.config.context
    if task.multiple_choice:
        longest = max(len(lm.tokenizer.encode(task.template.gap() + c)) for q in task.queries for c in q.choices or ())
        budget = context - max(longest, 1)
    else:
        budget = context - max_tokens
    if budget < 1:
        raise FewshotError(f"task {task.name}: the model's context of {context} tokens leaves no room for a prompt; "
                           "use a smaller --max-tokens")
    prompts, kept = zip(*(build_prompt(lm, task, i, shots, seed, budget) for i in range(len(task.queries))))
    if task.multiple_choice:
        hits = [choose(lm, task, list(p), q, mc_norm) == q.label for p, q in zip(prompts, task.queries)]
    else:
        longest_target = max(len(q.target.strip()) for q in task.queries)
        answers = greedy_answers(lm, prompts, max_tokens, stops, longest_target, batch_size, opts.prompt_lookup)
        hits = [a == q.target.strip() for a, q in zip(answers, task.queries)]
    n, correct = len(task.queries), sum(hits)
    clean = None
    if task.contaminated:  # GPT-3 §4: the score on the examples not seen in training
        kept_hits = [hit for hit, dirty in zip(hits, task.contaminated, strict=True) if not dirty]
        clean = ShotResult(shots, sum(kept_hits), len(kept_hits), wilson_interval(sum(kept_hits), len(kept_hits)),
                           sum(k for k, dirty in zip(kept, task.contaminated) if not dirty) / max(len(kept_hits), 1))
    return ShotResult(shots, correct, n, wilson_interval(correct, n), sum(kept) / n, clean)


def evaluate(lm: LM, tasks: Sequence[EvalTask], shots: Sequence[int], seed: int = 0, model: str = "",
             **options: Any) -> Evaluation:
    """Every task at every K; options are EvalOptions' fields."""
    EvalOptions(**options)  # a bad option fails before any task is scored
    for task in tasks:  # fail before spending time on the others
        if not task.queries:
            raise FewshotError(f"task {task.name}: no queries")
        draw(task, 0, max(shots), seed)
    result = Evaluation(model)
    started = time.perf_counter()
    for task in tasks:
        rows = tuple(evaluate_shots(lm, task, k, seed, **options) for k in shots)
        result.tasks.append(TaskResult(task.name, task.metric, rows, sum(task.contaminated) if task.contaminated else None))
        result.examples += sum(r.n for r in rows)
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------- tables


def results_table(evaluation: Evaluation, shots: Sequence[int], title: str) -> Table:
    """The terminal view of one model's results: a row per task (and its clean-only row)."""
    table = Table(title=title)
    table.add_column("task")
    for k in shots:
        table.add_column(f"K={k}", justify="right")
    for task in evaluation.tasks:
        table.add_row(f"{task.name} ({task.metric})", *(format_cell(r) for r in task.shots))
        if task.contaminated is not None:
            table.add_row(f"{task.name} clean (n={task.shots[0].clean_n})", *(format_cell(r.clean) for r in task.shots))
    return table


def markdown_table(evaluations: Sequence[Evaluation]) -> str:
    """One row per model and task, one column per K: score [95% CI] (effective K if reduced)."""
    shots = sorted({r.shots for e in evaluations for t in e.tasks for r in t.shots})
    lines = ["| model | task | metric | " + " | ".join(f"K={k}" for k in shots) + " |",
             "|---" * (len(shots) + 3) + "|"]
    for evaluation in evaluations:
        for task in evaluation.tasks:
            cells = {r.shots: format_cell(r) for r in task.shots}
            lines.append(f"| {evaluation.model} | {task.name} | {task.metric} | "
                         + " | ".join(cells.get(k, "") for k in shots) + " |")
    return "\n".join(lines)


def format_cell(result: ShotResult) -> str:
    lo, hi = result.ci95
    cell = f"{result.accuracy:.1%} [{lo:.1%}, {hi:.1%}]"
    if result.effective_k < result.shots:
        cell += f" (K_eff {result.effective_k:.1f})"
    return cell


# ---------------------------------------------------------------------------- the command's pieces


def parse_shots(spec: str) -> list[int]:
    """"0,1,4" -> [0, 1, 4]."""
    try:
        shots = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise FewshotError(f"--shots must be comma-separated integers such as 0,1,4, got {spec!r}") from None
    if not shots or min(shots) < 0:
        raise FewshotError(f"--shots must be comma-separated integers >= 0, got {spec!r}")
    return list(dict.fromkeys(shots))


def load_tasks(names: str | None, task_files: Sequence[Path], template: str | None, n: int, seed: int) -> list[EvalTask]:
    """Synthetic tasks by name plus task files; `template` applies to task files only (the
    synthetic tasks keep GPT-3's formats)."""
    if n < 1:
        raise FewshotError(f"--n must be at least 1, got {n}")
    if template is not None:
        Template(template)  # a bad template fails before any model is loaded
    tasks = synthetic_tasks(names, n, seed) if names else []
    tasks += [task_from_file(path, n, template) for path in task_files]
    if not tasks:
        raise FewshotError("nothing to evaluate: give --tasks (e.g. arithmetic) and/or --task-file")
    return tasks


def results_paths(path: Path) -> tuple[Path, Path]:
    """results.json and the markdown table beside it (results.md)."""
    path = Path(path)
    return path, path.with_suffix(".md") if path.suffix != ".md" else path.with_name(path.name + ".md")


def write_results(evaluations: Sequence[Evaluation], path: Path) -> tuple[Path, Path]:
    """results.json (one results object (to_json), or a JSON list of them for several models) and a
    markdown table beside it (results.md)."""
    from fewshot.files import atomic_write_text, write_json

    objects = [e.to_json() for e in evaluations]
    path, markdown = results_paths(path)
    write_json(path, objects[0] if len(objects) == 1 else objects)
    atomic_write_text(markdown, markdown_table(evaluations) + "\n")
    return path, markdown

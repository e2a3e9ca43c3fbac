"""T-Few's question at our scale: K examples in the prompt, or K examples fine-tuned in?

Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning": (IA)3 on K examples beat K-shot ICL, at a fraction of the inference
cost, because ICL pays for its K demonstrations on every query.

For each K the task file's lines split, with a seed, into a training pool (its first K
lines are the K examples) and held-out queries, the same for every method and every K:
- icl: K-shot prompts whose demonstrations come from those K lines only;
- full / lora / ia3: `fewshot finetune` on the same K lines, then 0-shot on the queries.

Costs are counted the way scaling-law papers do (Kaplan et al. 2020): a forward pass is
2N FLOPs per token, training 6N (forward, and backward through activations and weights).
An adapter's frozen base needs no weight gradients, so its training counts 4N; the
adapter's own small products are left out. Times are measured on this machine.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from fewshot.errors import FewshotError
from fewshot.eval.harness import EvalTask, build_prompt, evaluate_shots
from fewshot.files import atomic_write_text, check_new_dir, write_json
from fewshot.inference.lm import LM, load
from fewshot.tasks.base import Example
from fewshot.tasks.taskfile import Template, read_task_file

METHODS = ("icl", "ia3", "lora", "full")
EXAMPLES_DIR = Path(__file__).with_name("examples")  # the project's own example task files (README there)


@dataclass(frozen=True)
class Cell:
    method: str
    k: int
    score: float
    ci95: tuple[float, float]
    n: int
    inference_flops: float  # per query
    ms_per_query: float  # measured
    train_flops: float
    train_seconds: float

    def break_even(self, icl: Cell) -> float | None:
        """Queries after which this method's total cost falls below K-shot ICL's; None if never."""
        saved = icl.inference_flops - self.inference_flops
        return self.train_flops / saved if saved > 0 else None


def split(items: Sequence[Example], k_max: int, queries: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(training pool, held-out queries), disjoint, seeded; pool[:K] are the K examples."""
    if len(items) < k_max + 2:
        raise FewshotError(f"the task file has {len(items)} lines; K={k_max} needs at least {k_max + 2}")
    order = np.random.default_rng([seed, 7]).permutation(len(items))
    pool = [items[i] for i in order[:k_max]]
    held = [items[i] for i in order[k_max:k_max + queries]]
    return pool, held


def training_lines(examples: Sequence[Example], template: Template) -> str:
    """The K examples as `fewshot finetune` lines: the query prompt, and what follows it."""
    lines = []
    for e in examples:
        prompt = template.query(e.input)
        lines.append(json.dumps({"prompt": prompt, "completion": template.solved(e.input, e.target)[len(prompt):]}))
    return "\n".join(lines) + "\n"


def _inference_cost(lm: LM, task: EvalTask, k: int, seed: int) -> float:
    """Mean FLOPs of one query's forward passes: 2N per prompt token plus its answer."""
    n = lm.model.num_params()
    context = lm.model.config.context
    lengths = [len(build_prompt(lm, task, i, k, seed, context)[0]) for i in range(len(task.queries))]
    answer = np.mean([len(lm.tokenizer.encode(task.template.gap() + q.target)) for q in task.queries])
    if task.multiple_choice:  # every choice is scored
        answer = np.mean([sum(len(lm.tokenizer.encode(task.template.gap() + c)) for c in q.choices) for q in task.queries])
    return 2.0 * n * (float(np.mean(lengths)) + float(answer))


def _scored(lm: LM, task: EvalTask, k: int, shots: int, seed: int, method: str, train_flops: float,
            train_seconds: float) -> Cell:
    """The cell of `method` at K=k, scored with `shots` demonstrations (k for icl, 0 once fine-tuned)."""
    started = time.perf_counter()
    result = evaluate_shots(lm, task, shots, seed)
    seconds = time.perf_counter() - started
    return Cell(method, k, result.score, result.ci95, result.n, _inference_cost(lm, task, shots, seed),
                1000 * seconds / result.n, train_flops, train_seconds)


def run_compare(base: str | Path, task_file: str | Path, ks: Sequence[int], methods: Sequence[str], out: str | Path, *,
                queries: int = 100, steps: int = 40, seed: int = 0, console: Console | None = None) -> list[Cell]:
    """Every (method, K) cell, written to OUT/compare.json, compare.md and two plots."""
    from fewshot.train.finetune import finetune_config
    from fewshot.train.loop import train

    console = console or Console(stderr=True)
    out = Path(out)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise FewshotError(f"--methods takes {', '.join(METHODS)}, got {', '.join(methods) or 'none'}")
    if not ks or min(ks) < 1:
        raise FewshotError("--k takes K values >= 1 (the examples each method learns from)")
    check_new_dir(out)
    file = read_task_file(task_file)
    template = Template()
    pool, held = split(file.items, max(ks), queries, seed)
    base_lm = load(base)
    cells = []
    for k in sorted(ks):
        task = EvalTask(file.name, file.metric, tuple(held), tuple(pool[:k]), template)
        for method in methods:
            console.rule(f"K={k}: {method}")
            if method == "icl":
                cells.append(_scored(base_lm, task, k, k, seed, "icl", 0.0, 0.0))
                continue
            run_dir = out / "runs" / f"{method}-k{k}"
            data = out / "data" / f"k{k}.jsonl"
            if not data.exists():
                data.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(data, training_lines(pool[:k], template))
            config = finetune_config(base, data, run_dir, {"max_steps": steps, "batch_size": min(k, 8), "seed": seed,
                                                           "eval_every": steps, "save_every": steps}, method=method)
            started = time.perf_counter()
            result = train(config, console=console)
            seconds = time.perf_counter() - started
            per_token = 6.0 if method == "full" else 4.0
            train_flops = per_token * base_lm.model.num_params() * _tokens_processed(pool[:k], base_lm, template, config)
            cells.append(_scored(load(run_dir), task, k, 0, seed, method, train_flops, seconds))
            console.print(f"{method} K={k}: train loss {result.train_loss:.4f} after {result.step} steps in {seconds:.1f} s")
    _write(out, cells, file.name, str(base))
    return cells


def _tokens_processed(examples: Sequence[Example], lm: LM, template: Template, config) -> float:
    """Tokens the fine-tune pushed through the model: batches are padded to their longest example."""
    longest = max(len(lm.tokenizer.encode(template.solved(e.input, e.target))) + 1 for e in examples)
    return float(config.max_steps * config.batch_size * config.grad_accum * longest)


def _write(out: Path, cells: list[Cell], task: str, base: str) -> None:
    from fewshot.experiments.compare_plots import plot_accuracy, plot_cost

    icl = {c.k: c for c in cells if c.method == "icl"}
    rows = [{**asdict(c), "break_even_queries": (c.break_even(icl[c.k]) if c.k in icl and c.method != "icl" else None)}
            for c in cells]
    write_json(out / "compare.json", {"task": task, "base": base, "cells": rows})
    lines = [f"# ICL vs fine-tuning: {task} on {base}", "",
             "| method | K | accuracy [95% CI] | GFLOPs / query | ms / query | training GFLOPs | training s | break-even queries |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        even = row["break_even_queries"]
        even = "-" if row["method"] == "icl" else ("never" if even is None else f"{math.ceil(even):,}")
        lines.append(f"| {row['method']} | {row['k']} | {row['score']:.1%} [{row['ci95'][0]:.1%}, {row['ci95'][1]:.1%}] | "
                     f"{row['inference_flops'] / 1e9:.2f} | {row['ms_per_query']:.1f} | {row['train_flops'] / 1e9:,.0f} | "
                     f"{row['train_seconds']:.1f} | {even} |")
    lines += ["", "![accuracy vs K](accuracy.png)", "", "![cost](cost.png)", ""]
    atomic_write_text(out / "compare.md", "\n".join(lines))
    plot_accuracy(cells, out / "accuracy.png", task)
    plot_cost(cells, out / "cost.png", task)

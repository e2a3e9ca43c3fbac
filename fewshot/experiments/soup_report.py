"""`fewshot soup`: make a uniform or greedy soup, and compare it on held-out queries.

The task file splits, with a seed, into a validation half (the greedy soup's only guide)
and a held-out half, on which the report scores every ingredient, the uniform soup, the
greedy soup and the logit ensemble of all ingredients (the paper's comparison, at N times
the inference cost). Scoring is 0-shot with the task file's template, as the fine-tunes
were trained (fewshot compare's training lines).

`--example` first fine-tunes the base several times on one example task file, with
different seeds (data orders) and learning rates: the ingredients.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from fewshot.errors import FewshotError
from fewshot.eval.harness import EvalTask, evaluate_shots
from fewshot.experiments.compare import EXAMPLES_DIR, training_lines
from fewshot.experiments.soup import Ingredients, adapted, average_adapters, average_into, ingredients, uniform_weights, write_soup
from fewshot.files import atomic_write_text, check_new_dir, write_json
from fewshot.inference.lm import LM, load
from fewshot.model import GPT
from fewshot.runs import RunDir
from fewshot.tasks.base import Example
from fewshot.tasks.taskfile import Template, read_task_file

EXAMPLE_TASK = "acronyms.jsonl"
# The example's ingredients: (seed, learning rate); the seed also orders the data.
EXAMPLE_RECIPES = ((0, 3e-5), (1, 5e-5), (2, 2e-5), (3, 4e-5), (4, 3e-5))


@dataclass(frozen=True)
class Score:
    model: str  # an ingredient's path, "uniform soup", "greedy soup" or "ensemble"
    split: str  # "val" | "held-out"
    score: float
    ci95: tuple[float, float]
    n: int


def split_queries(items: Sequence[Example], val: int, held_out: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(validation, held-out): disjoint, seeded."""
    if len(items) < 2:
        raise FewshotError("soup: the task file needs at least 2 lines (a validation and a held-out query)")
    order = np.random.default_rng([seed, 11]).permutation(len(items))
    half = min(val, len(items) // 2)
    return [items[i] for i in order[:half]], [items[i] for i in order[half:half + held_out]]


class Kitchen:
    """Builds the model of any weighted set of ingredients, within about two models of memory."""

    def __init__(self, found: Ingredients, device: str = "cpu") -> None:
        self.found = found
        self.tokenizer = found.runs[0].tokenizer()
        self.config = found.runs[0].config
        if found.kind == "full":
            self.model = GPT.for_loading(found.config.model, device)  # refilled for every soup
            self.base = None
        else:
            self.base = load(found.base, device=device)
            if self.base.run.weights_sha256() != found.base_sha256:
                raise FewshotError(f"soup: the base {found.base} has changed since the adapters were trained on it")

    def lm(self, chosen: Sequence[int], weights: Sequence[float] | None = None) -> LM:
        weights = list(weights or uniform_weights(len(chosen)))
        if self.found.kind == "full":
            average_into(self.model, [self.found.runs[i] for i in chosen], weights)
            return LM(self.model.eval(), self.tokenizer, self.config, "the soup")
        record, tensors = average_adapters(self.found, chosen, weights)
        return LM(adapted(self.base.model, record, tensors, "the soup"), self.tokenizer, self.config, "the soup")


def greedy_soup(found: Ingredients, score: Callable[[LM], float], kitchen: Kitchen,
                console: Console | None = None) -> tuple[list[int], list[float], list[dict]]:
    """Wortsman et al.'s recipe: ingredients by validation score, best first; each stays only
    if the soup's validation score does not fall. Returns (chosen, each ingredient's val score, steps)."""
    console = console or Console(stderr=True)
    alone = []
    with Progress(console=console, transient=True) as progress:
        job = progress.add_task("scoring ingredients", total=len(found.runs))
        for i in range(len(found.runs)):
            alone.append(score(kitchen.lm([i])))
            progress.advance(job)
    order = sorted(range(len(found.runs)), key=lambda i: -alone[i])
    chosen, best = [order[0]], alone[order[0]]
    steps = [{"tried": str(found.runs[order[0]].path), "val": best, "kept": True}]
    for i in order[1:]:
        candidate = score(kitchen.lm([*chosen, i]))
        kept = candidate >= best
        steps.append({"tried": str(found.runs[i].path), "val": candidate, "kept": kept})
        console.print(f"greedy soup: + {found.runs[i].path}: val {candidate:.1%} ({'kept' if kept else 'left out'})")
        if kept:
            chosen, best = [*chosen, i], candidate
    return chosen, alone, steps


def run_soup(paths: Sequence[str | Path], out: str | Path, *, how: str = "greedy", val_file: str | Path | None = None,
             queries: int = 100, seed: int = 0, ensemble: bool = True, console: Console | None = None) -> dict | None:
    """Write the soup to OUT (a run directory); with a task file, also OUT/soup.md, soup.json, soup.png."""
    console = console or Console(stderr=True)
    out = Path(out)
    if how not in ("greedy", "uniform"):
        raise FewshotError(f"soup: choose --greedy or --uniform, got {how!r}")
    found = ingredients(paths)
    check_new_dir(out)
    if val_file is None:
        if how == "greedy":
            raise FewshotError("soup: --greedy needs --val TASK_FILE (its validation half picks the ingredients)")
        write_soup(out, found, range(len(found.runs)), uniform_weights(len(found.runs)), "uniform")
        console.print(f"uniform soup of {len(found.runs)} ingredients: {out}")
        return None
    file = read_task_file(val_file)
    val, held = split_queries(file.items, queries, queries, seed)
    template = Template()
    tasks = {split: EvalTask(file.name, file.metric, tuple(items), (), template) for split, items in (("val", val), ("held-out", held))}

    def evaluate(lm: LM, split: str, name: str) -> Score:
        result = evaluate_shots(lm, tasks[split], 0, seed)
        return Score(name, split, result.score, result.ci95, result.n)

    kitchen = Kitchen(found)
    started = time.perf_counter()
    scores: list[Score] = []
    every = list(range(len(found.runs)))
    if how == "greedy":
        chosen, alone, steps = greedy_soup(found, lambda lm: evaluate(lm, "val", "").score, kitchen, console)
    else:
        chosen, alone, steps = every, [evaluate(kitchen.lm([i]), "val", "").score for i in every], []
    for i, run in enumerate(found.runs):
        scores.append(Score(str(run.path), "val", alone[i], (float("nan"), float("nan")), len(val)))
        scores.append(evaluate(kitchen.lm([i]), "held-out", str(run.path)))
    if how == "greedy":  # the uniform soup, for comparison; the chosen soup last, so its model is the one written
        lm = kitchen.lm(every)
        scores += [evaluate(lm, "val", "uniform soup"), evaluate(lm, "held-out", "uniform soup")]
    name = f"{how} soup"
    chosen_lm = kitchen.lm(chosen)
    scores += [evaluate(chosen_lm, "val", name), evaluate(chosen_lm, "held-out", name)]
    write_soup(out, found, chosen, uniform_weights(len(chosen)), how, model=chosen_lm.model if found.kind == "full" else None)
    if ensemble:
        scores += _ensemble_scores(found, kitchen, evaluate)
    summary = {"task": file.name, "metric": file.metric, "kind": found.kind, "base": found.base, "how": how,
               "ingredients": [str(r.path) for r in found.runs], "chosen": [str(found.runs[i].path) for i in chosen],
               "greedy_steps": steps, "val_queries": len(val), "held_out_queries": len(held), "seed": seed,
               "seconds": time.perf_counter() - started, "scores": [asdict(s) for s in scores]}
    _write_report(out, summary, scores)
    return summary


def _ensemble_scores(found: Ingredients, kitchen: Kitchen, evaluate) -> list[Score]:
    """The logit ensemble of every ingredient: N models at once (adapters share their base)."""
    from fewshot.model.ensemble import Ensemble

    members = []
    for i, run in enumerate(found.runs):
        if found.kind == "full":
            members.append(load(run.path).model)
        else:
            members.append(kitchen.lm([i]).model)
    lm = LM(Ensemble(members).eval(), kitchen.tokenizer, kitchen.config, "the ensemble")
    return [evaluate(lm, "val", "ensemble"), evaluate(lm, "held-out", "ensemble")]


def _write_report(out: Path, summary: dict, scores: list[Score]) -> None:
    from fewshot.experiments.soup_plots import plot_scores

    write_json(out / "soup.json", summary)
    held = {s.model: s for s in scores if s.split == "held-out"}
    val = {s.model: s for s in scores if s.split == "val"}
    names = [*summary["ingredients"], "uniform soup", *(["greedy soup"] if summary["how"] == "greedy" else []), "ensemble"]
    lines = [f"# Model soup ({summary['how']}, {summary['kind']}) on {summary['task']}", "",
             f"Base: {summary['base']}. In the soup: {', '.join(summary['chosen'])}. Validation {summary['val_queries']} "
             f"queries, held-out {summary['held_out_queries']} (disjoint; seed {summary['seed']}).", "",
             "| model | validation | held-out [95% CI] |", "|---|---|---|"]
    for name in names:
        if name not in held:
            continue
        h = held[name]
        lines.append(f"| {name} | {val[name].score:.1%} | {h.score:.1%} [{h.ci95[0]:.1%}, {h.ci95[1]:.1%}] |")
    if summary["greedy_steps"]:
        lines += ["", "Greedy steps (best ingredient first):", ""]
        lines += [f"- {s['tried']}: validation {s['val']:.1%}, {'kept' if s['kept'] else 'left out'}" for s in summary["greedy_steps"]]
    lines += ["", "![scores](soup.png)", ""]
    atomic_write_text(out / "soup.md", "\n".join(lines))
    plot_scores(names, val, held, out / "soup.png", f"{summary['task']}: soups vs ingredients")


def run_example(base: str | Path, out: str | Path, *, method: str = "full", task_file: str | Path | None = None,
                train_lines: int = 32, steps: int = 40, queries: int = 60, seed: int = 0,
                console: Console | None = None) -> dict:
    """Fine-tune the base once per recipe on one task file's training lines, then soup them."""
    from fewshot.train.finetune import finetune_config
    from fewshot.train.loop import train

    console = console or Console(stderr=True)
    out = Path(out)
    if RunDir.open(base).is_adapter:
        raise FewshotError(f"soup --example: {base} is an adapter; give the run to fine-tune (e.g. runs/smollm2)")
    check_new_dir(out)
    path = Path(task_file) if task_file else EXAMPLES_DIR / EXAMPLE_TASK
    file = read_task_file(path)
    order = np.random.default_rng([seed, 13]).permutation(len(file.items))
    if len(file.items) < train_lines + 4:
        raise FewshotError(f"soup --example: {path} has {len(file.items)} lines; it needs {train_lines} to train on and more to score")
    training = [file.items[i] for i in order[:train_lines]]
    rest = [file.items[i] for i in order[train_lines:]]
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    atomic_write_text(data / "train.jsonl", training_lines(training, Template()))
    queries_file = data / f"{path.stem}.jsonl"  # the report names the task after its file
    atomic_write_text(queries_file, "".join(json.dumps(_task_line(e)) + "\n" for e in rest))
    runs = []
    for n, (recipe_seed, lr) in enumerate(EXAMPLE_RECIPES):
        run_dir = out / "ingredients" / f"{method}-{n}"
        console.rule(f"ingredient {n + 1}/{len(EXAMPLE_RECIPES)}: seed {recipe_seed}, lr {lr:g}")
        lr = lr if method == "full" else lr * (1e-3 / 3e-5)  # an adapter wants a larger rate
        train(finetune_config(base, data / "train.jsonl", run_dir, {"max_steps": steps, "batch_size": 8, "seed": recipe_seed,
                                                                    "lr": lr, "eval_every": steps, "save_every": steps},
                              method=method), console=console)
        runs.append(run_dir)
    summary = run_soup(runs, out / "soup", how="greedy", val_file=queries_file, queries=queries, seed=seed,
                       console=console)
    write_soup(out / "uniform", ingredients(runs), range(len(runs)), uniform_weights(len(runs)), "uniform")
    return summary


def _task_line(example: Example) -> dict:
    line = {"input": example.input}
    if example.choices:
        line.update(choices=list(example.choices), label=example.label)
    else:
        line["target"] = example.target
    return line

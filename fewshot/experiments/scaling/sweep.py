"""Running a sweep: each point an ordinary training run, resumable, one after another or N at once.

The sweep directory holds `runs/<name>/` (ordinary run directories) and `sweep.json`. A rerun
skips finished runs and resumes an interrupted one bit for bit (it is `train --resume`).
`--parallel N` hands the runs to Dask's process pool; on a cluster the same runs are
`fewshot sweep ... --only NAME` jobs (one per Slurm array index or Ray task, each of which
may be a torchrun job), and `fewshot sweep fit` reads what they wrote.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fewshot.data.shards import TokenData
from fewshot.errors import FewshotError
from fewshot.experiments.scaling.plan import Point, SweepConfig, plan, train_config
from fewshot.files import read_json, write_json
from fewshot.runs import RunDir, step_of
from fewshot.train.distributed import World
from fewshot.train.metrics import read_metrics

SWEEP = "sweep.json"
EVAL = "fewshot.json"  # a run's few-shot scores, in the run directory
STOP = ".stopping"  # written while a parallel sweep winds down: queued runs do not start


# ---------------------------------------------------------------- the state of each run


def run_dir(config: SweepConfig, point: Point) -> Path:
    return Path(train_config(point, config).out)


def status(config: SweepConfig, point: Point) -> str:
    """"done", "partial" (started: resume it) or "new"; a run trained otherwise is refused."""
    run = RunDir(run_dir(config, point))
    if not run.exists():
        return "new"
    saved = run.config.train
    wanted = train_config(point, config)
    if saved is None or _recipe(saved) != _recipe(wanted) or run.config.model.to_dict() != _model(wanted).to_dict():
        raise FewshotError(f"{run.path} was trained with other settings than this sweep plans for it; "
                           "continue the sweep with the options it started with, or use a new --out")
    checkpoint = run.latest_checkpoint()
    return "done" if checkpoint is not None and step_of(checkpoint) >= saved.max_steps else "partial"


def _recipe(train: Any) -> dict:
    return {k: v for k, v in train.to_dict().items() if k not in ("out", "progress", "data")}


def _model(train: Any) -> Any:
    return train.model_config(RunDir(train.out).config.model.vocab_size)


def measured(config: SweepConfig, point: Point) -> dict[str, Any]:
    """What a finished run measured: its last validation loss, tokens and wall time, and the
    learning curve (for the compute frontier)."""
    rows = read_metrics(RunDir(run_dir(config, point)).metrics_path)
    curve = [(int(r["tokens"]), float(r["val_loss"])) for r in rows if r.get("val_loss") is not None]
    if not curve:
        raise FewshotError(f"{run_dir(config, point)}: no validation loss in metrics.csv")
    result = {"val_loss": curve[-1][1], "tokens": int(rows[-1]["tokens"]), "seconds": float(rows[-1]["elapsed_s"]),
              "curve": curve}
    scores = Path(run_dir(config, point)) / EVAL
    if scores.is_file():
        result["fewshot"] = read_json(scores)["results"]
    return result


# ---------------------------------------------------------------- sweep.json


def open_sweep(out: Path) -> dict[str, Any]:
    path = Path(out) / SWEEP
    if not path.is_file():
        raise FewshotError(f"{out}: no {SWEEP}; run `fewshot sweep --out {out} ...` first")
    record = read_json(path)
    if not isinstance(record, dict) or "config" not in record:
        raise FewshotError(f"{path} is not a sweep record")
    return record


def sweep_config(record: dict[str, Any], out: Path) -> SweepConfig:
    return SweepConfig(**{**record["config"], "out": str(out)})


def start(config: SweepConfig) -> tuple[SweepConfig, dict[str, Any]]:
    """The sweep's settings and record: new, or the existing one grown by this call's sizes and
    budgets (a sweep only grows: rerunning with fewer sizes keeps the runs it has)."""
    path = Path(config.out) / SWEEP
    if path.exists():
        record = open_sweep(Path(config.out))
        before = sweep_config(record, Path(config.out))
        if before.identity() != config.identity():
            changed = sorted(k for k, v in config.identity().items() if before.identity()[k] != v)
            raise FewshotError(f"{config.out} is a sweep with other settings ({', '.join(changed)} differ); "
                               "continue it with the same ones, or use a new --out")
        budgets = sorted(set(before.budgets()) | set(config.budgets()))
        config = dataclasses.replace(config, sizes=max(before.sizes, config.sizes), isoflop=",".join(f"{b:g}" for b in budgets))
    elif Path(config.out).exists() and not Path(config.out).is_dir():
        raise FewshotError(f"{config.out} is a file; --out takes a sweep directory")
    elif Path(config.out).exists() and any(Path(config.out).iterdir()):
        raise FewshotError(f"{config.out} already holds files and is not a sweep; use a new --out")
    else:
        record = {"runs": {}}
    record["config"] = {k: v for k, v in config.to_dict().items() if k != "out"}
    return config, record


def save(config: SweepConfig, record: dict[str, Any], points: Sequence[Point]) -> None:
    """Each planned run with its shape, N, D, C and, once finished, what it measured."""
    from fewshot.experiments.scaling.compute import model_flops

    runs = {}
    for point in points:
        entry = {"kind": point.kind, "rung": point.rung, "budget": point.budget, "n": point.n,
                 "n_total": point.model.num_params(), "n_layer": point.model.n_layer, "d_model": point.model.d_model,
                 "n_head": point.model.n_head, "steps": point.steps, "d": point.tokens(config),
                 "c": point.compute(config), "model_flops": model_flops(point.model, point.tokens(config), config.context),
                 "lr": train_config(point, config).peak_lr, "status": status(config, point)}
        if entry["status"] == "done":
            entry.update(measured(config, point))
            peak = record.get("peak_gflops")
            if peak and entry["seconds"] > 0:
                entry["mfu"] = entry["model_flops"] / entry["seconds"] / (peak * 1e9)
        runs[point.name] = entry
    record["runs"] = runs
    Path(config.out).mkdir(parents=True, exist_ok=True)
    write_json(Path(config.out) / SWEEP, record)


# ---------------------------------------------------------------- progress


class SweepProgress:
    """One bar for the sweep, in FLOPs (so its ETA weighs big runs properly), and one per run."""

    def __init__(self, total: float, done: float, console: Console, enabled: bool) -> None:
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                                 disable=not enabled)
        self.done, self.total = done, total
        self.sweep = self.progress.add_task("sweep", total=total, completed=done, detail="")
        self.running: dict[str, float] = {}  # name -> FLOPs done so far
        self.lock = threading.Lock()

    def __enter__(self) -> SweepProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def bar(self, point: Point, flops: float, label: str) -> RunBar:
        return RunBar(self, point.name, flops, label)

    def moved(self, name: str, flops: float, finished: bool = False) -> None:
        with self.lock:
            if finished:
                self.running.pop(name, None)
                self.done += flops
            else:
                self.running[name] = flops
            done = self.done + sum(self.running.values())
            self.progress.update(self.sweep, completed=done, detail=f"{done / self.total:.0%} of the compute (C = 6ND)")


class RunBar:
    """A run's bar on the sweep's display, with the interface of train's TrainingProgress."""

    def __init__(self, sweep: SweepProgress, name: str, flops: float, label: str) -> None:
        self.sweep, self.name, self.flops, self.label = sweep, name, flops, label
        self.total = 1
        self.task: TaskID | None = None

    def __call__(self, total: int, completed: int) -> RunBar:  # train's make_bar
        self.total = total
        self.task = self.sweep.progress.add_task(self.label, total=total, completed=completed, detail="starting")
        return self

    def __enter__(self) -> RunBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.task is not None:
            self.sweep.progress.remove_task(self.task)
            self.task = None

    def set_total(self, total: int) -> None:
        self.total = total

    def update(self, step: int, loss: float, val_loss: float | None, tok_per_s: float) -> None:
        val = "-" if val_loss is None else f"{val_loss:.3f}"
        if self.task is not None:
            self.sweep.progress.update(self.task, completed=step,
                                       detail=f"step {step}/{self.total} loss {loss:.3f} val {val} {tok_per_s:,.0f} tok/s")
        self.sweep.moved(self.name, self.flops * step / self.total)


# ---------------------------------------------------------------- running


def evaluate_run(config: SweepConfig, point: Point) -> None:
    """Score a finished run with the few-shot harness (`--eval`), unless it was scored with these settings."""
    if not config.eval:
        return
    from fewshot.eval.harness import evaluate, parse_shots
    from fewshot.inference.lm import load

    path = run_dir(config, point) / EVAL
    settings = {"eval": config.eval, "shots": config.shots, "n": config.n_eval, "seed": config.seed}
    if path.is_file() and read_json(path).get("settings") == settings:
        return
    lm = load(run_dir(config, point))
    evaluation = evaluate(lm, eval_tasks(config), parse_shots(config.shots), config.seed, model=point.name, max_tokens=8)
    write_json(path, {"settings": settings, "results": evaluation.to_json()})


def eval_tasks(config: SweepConfig) -> list:
    """--eval's parts: harness task names (arithmetic, 2D+, ...) and .jsonl task files."""
    from fewshot.eval.harness import load_tasks

    parts = [p.strip() for p in config.eval.split(",") if p.strip()]
    files = [Path(p) for p in parts if p.endswith(".jsonl") or Path(p).is_file()]
    names = ",".join(p for p in parts if Path(p) not in files)
    return load_tasks(names or None, files, None, config.n_eval, config.seed)


def train_point(config: SweepConfig, point: Point, resume: bool, bar: RunBar | None = None,
                console: Console | None = None, threads: int | None = None) -> bool:
    """Train (or resume) one run and score it; False when a signal stopped it."""
    import torch

    from fewshot.train.loop import train

    if threads is not None:
        torch.set_num_threads(threads)
    if (Path(config.out) / STOP).exists():
        return False
    result = train(train_config(point, config), resume=resume, console=console or Console(stderr=True, quiet=True),
                   make_bar=bar)
    if result.interrupted:
        return False
    if World.from_env().main:
        evaluate_run(config, point)
    return True


def run_sweep(config: SweepConfig, console: Console, only: str | None = None, plan_only: bool = False) -> list[Point]:
    """Train every planned run that is not finished (or just `only`); return the plan.
    `plan_only`: record the plan in sweep.json and train nothing (for a cluster's job array)."""
    data = TokenData.open(Path(config.data))
    config, record = start(config)
    points = plan(config, data.tokenizer.vocab_size)
    if only is not None:
        chosen = [p for p in points if p.name == only]
        if not chosen:
            raise FewshotError(f"sweep: --only {only!r} is not a run of this sweep; its runs: {', '.join(p.name for p in points)}")
    if config.eval:  # a bad task name, file or K fails before any training
        from fewshot.eval.harness import parse_shots

        parse_shots(config.shots)
        eval_tasks(config)
    states = {p.name: status(config, p) for p in points}  # refuses runs trained otherwise, before training any
    if not World.from_env().main:  # one rank of a torchrun job (`--only NAME`): rank 0 keeps the record
        for point in chosen if only is not None else points:
            if states[point.name] != "done":
                train_point(config, point, states[point.name] == "partial", console=console)
        return points
    if plan_only:
        save(config, record, points)
        return points
    if "peak_gflops" not in record:
        record["peak_gflops"] = _peak(config)
    save(config, record, points)
    todo = [p for p in (chosen if only is not None else points) if states[p.name] != "done"]
    total = sum(p.compute(config) for p in points)
    done = sum(p.compute(config) for p in points if states[p.name] == "done")
    finished = sum(state == "done" for state in states.values())
    console.print(f"sweep {config.out}: {len(points)} runs ({finished} finished), "
                  f"{total:.3g} FLOPs (C = 6ND) in all, {len(todo)} to train"
                  + (f", {config.parallel} at a time" if config.parallel > 1 and len(todo) > 1 else ""))
    stopped = False
    with SweepProgress(total, done, console, enabled=console.is_terminal) as progress:
        if config.parallel > 1 and len(todo) > 1:
            stopped = _in_parallel(config, todo, states, progress)
        else:
            for i, point in enumerate(todo):
                label = f"run {finished + i + 1}/{len(points)} {point.name}"
                console.print(f"{label}: N = {point.n:,} ({point.model.n_layer} layers x {point.model.d_model}), "
                              f"D = {point.tokens(config):,} tokens, {point.steps} steps"
                              + (" (resuming)" if states[point.name] == "partial" else ""))
                bar = progress.bar(point, point.compute(config), label)
                if not train_point(config, point, states[point.name] == "partial", bar, console):
                    stopped = True
                    break
                progress.moved(point.name, point.compute(config), finished=True)
                save(config, record, points)
    if not stopped:  # runs finished before an --eval was given (or before their scoring was cut short)
        for point in chosen if only is not None else points:
            evaluate_run(config, point)
    save(config, record, points)
    if stopped:
        raise SweepStopped(f"sweep stopped by signal; the finished runs are kept and the interrupted one saved: "
                           f"run the same command again to continue {config.out}")
    return points


class SweepStopped(Exception):
    """A signal stopped the sweep; everything it finished or interrupted is saved."""


def _peak(config: SweepConfig) -> float:
    """The measured matmul peak of this machine in the dtype the runs use (the MFU denominator)."""
    import torch

    from fewshot.bench.peak import measure_peak
    from fewshot.device import pick_device, use_bf16

    device = torch.device(pick_device("auto"))
    dtype = "bf16" if use_bf16(config.precision, device) else "fp32"
    return measure_peak(str(device), repeats=3, dtypes=(dtype,)).gflops(dtype)


def _in_parallel(config: SweepConfig, todo: Sequence[Point], states: dict[str, str], progress: SweepProgress) -> bool:
    """The runs on Dask's process pool, `config.parallel` at a time, each with its share of the
    cores; this process watches their metrics.csv for the display. A signal stops them all:
    running ones save (SIGTERM is passed on to them) and queued ones do not start."""
    import dask

    from fewshot.train.loop import stop_requests

    threads = max(1, (os.cpu_count() or 1) // config.parallel)
    stop_file = Path(config.out) / STOP
    stop_file.unlink(missing_ok=True)
    tasks = [dask.delayed(train_point, pure=False)(config, p, states[p.name] == "partial", None, None, threads) for p in todo]
    outcome: list[Any] = []

    def compute() -> None:
        try:
            outcome.extend(dask.compute(*tasks, scheduler="processes", num_workers=config.parallel, chunksize=1))
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            outcome.append(error)

    worker = threading.Thread(target=compute, daemon=True)
    bars = {p.name: progress.bar(p, p.compute(config), p.name) for p in todo}
    with stop_requests() as stop:
        worker.start()
        finished: set[str] = set()
        forwarded = False
        while worker.is_alive():
            worker.join(timeout=1.0)
            if stop.is_set() and not forwarded:
                stop_file.write_text("stopping\n", encoding="utf-8")
                for child in multiprocessing.active_children():
                    child.terminate()  # SIGTERM: each run saves a checkpoint and returns
                forwarded = True
            for point in todo:
                if point.name not in finished:
                    _watch(config, point, bars[point.name], progress, finished)
    stop_file.unlink(missing_ok=True)
    for bar in bars.values():
        bar.__exit__(None, None, None)
    if outcome and isinstance(outcome[-1], BaseException):
        if isinstance(outcome[-1], FewshotError):
            raise outcome[-1]
        if not forwarded:
            raise FewshotError(f"sweep: a run failed in its worker: {outcome[-1]!r}")
    return forwarded or not all(outcome)


def _watch(config: SweepConfig, point: Point, bar: RunBar, progress: SweepProgress, finished: set[str]) -> None:
    rows = read_metrics(RunDir(run_dir(config, point)).metrics_path)
    if not rows:
        return
    last = rows[-1]
    if bar.task is None:
        bar(point.steps, 0)
    vals = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    bar.update(int(last["step"]), float(last["train_loss"] or 0.0), vals[-1] if vals else None, float(last["tok_per_s"] or 0.0))
    if int(last["step"]) >= point.steps and (not config.eval or (run_dir(config, point) / EVAL).is_file()):
        finished.add(point.name)
        progress.moved(point.name, point.compute(config), finished=True)


def refresh(out: Path) -> dict[str, Any]:
    """The sweep record with every run's state read again from its run directory (runs that
    cluster jobs finished since sweep.json was last written)."""
    record = open_sweep(out)
    config = sweep_config(record, out)
    save(config, record, plan(config, TokenData.open(Path(config.data)).tokenizer.vocab_size))
    return record


def predict_and_train(out: Path, console: Console, train: bool = False) -> dict[str, Any]:
    """Predict the ladder's next size from the finished ones (kept in sweep.json, so the
    prediction is the one made before the run existed), then optionally train it."""
    from fewshot.experiments.scaling.plan import next_rung
    from fewshot.experiments.scaling.report import ladder_runs, predict_next

    record = refresh(out)
    config = sweep_config(record, out)
    vocab = TokenData.open(Path(config.data)).tokenizer.vocab_size
    done = ladder_runs(record)
    following = next_rung(config, vocab, len(done))
    predictions = record.setdefault("predictions", {})  # never replaced: each was made before its run
    if following.name not in predictions:
        if not len(done) >= 4:
            raise FewshotError(f"sweep fit --predict: L(N) needs at least 4 finished ladder sizes, {out} has {len(done)}")
        predictions[following.name] = predict_next(record, following.n, following.name)
        write_json(Path(out) / SWEEP, record)
    prediction = predictions[following.name]
    if train:
        run_sweep(dataclasses.replace(config, sizes=max(config.sizes, following.rung + 1)), console)
    return prediction

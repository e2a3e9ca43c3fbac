"""Where training numbers go: metrics.csv, TensorBoard, and a live progress bar."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fewshot.files import atomic_write_text

COLUMNS = ("step", "tokens", "train_loss", "val_loss", "lr", "grad_norm", "tok_per_s", "elapsed_s")


def read_metrics(path: Path) -> list[dict[str, float | None]]:
    """The rows of a metrics.csv (RunDir.metrics_path); none when it does not exist yet."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        rows = []
        for row in csv.DictReader(handle):
            try:
                rows.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items() if k is not None})
            except (TypeError, ValueError):
                continue  # the torn last line of a killed writer: the rows before it are whole
        return rows


class MetricsLog:
    """Appends one CSV row per logged step; on resume, drops rows past the checkpoint so
    the file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int, tensorboard_dir: Path | None) -> None:
        self.path = path
        kept = [row for row in read_metrics(path) if row["step"] is not None and row["step"] <= resume_step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in kept:
            writer.writerow({k: _format(row.get(k)) for k in COLUMNS})
        atomic_write_text(self.path, buffer.getvalue())
        self.handle = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=COLUMNS, lineterminator="\n")
        self.board = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: only training needs it

            self.board = SummaryWriter(log_dir=str(tensorboard_dir), purge_step=resume_step + 1)

    def log(self, **values: float | int | None) -> None:
        self.writer.writerow({k: _format(values.get(k)) for k in COLUMNS})
        self.handle.flush()
        if self.board is not None:
            step = int(values["step"])
            for name, value in values.items():
                if name != "step" and value is not None:
                    self.board.add_scalar(name, value, step)

    def close(self) -> None:
        self.handle.close()
        if self.board is not None:
            self.board.close()


def _format(value: float | int | None) -> str:
    if value is None:
        return ""
    value = float(value)  # numpy and torch scalars too, which are not `float`
    if math.isnan(value):
        return ""
    return str(int(value)) if value.is_integer() else f"{value:.6g}"


class TrainingProgress:
    """A rich progress bar showing step, loss, val loss, tok/s and ETA."""

    def __init__(self, total: int, completed: int, enabled: bool, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total, completed=completed, loss="-", val="-", speed="-")

    def __enter__(self) -> TrainingProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.progress.__exit__(kind, error, trace)

    def set_total(self, total: int) -> None:
        self.progress.update(self.task, total=total)

    def update(self, step: int, loss: float, val_loss: float | None, tok_per_s: float) -> None:
        self.progress.update(
            self.task, completed=step, loss=f"{loss:.3f}", val="-" if val_loss is None else f"{val_loss:.3f}", speed=f"{tok_per_s:,.0f}"
        )

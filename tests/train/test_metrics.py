"""metrics.csv, TensorBoard and the progress bar: what training leaves behind for plots and resumes."""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from fewshot.train.metrics import COLUMNS, MetricsLog, TrainingProgress, read_metrics

FAST = settings(max_examples=40, deadline=None)
VALUES = ("tokens", "train_loss", "val_loss", "lr", "grad_norm", "tok_per_s", "elapsed_s")


def row(step: int, loss: float, val: float | None = None) -> dict[str, float | int | None]:
    return dict(step=step, tokens=256 * step, train_loss=loss, val_loss=val, lr=1e-3 * step, grad_norm=0.5,
                tok_per_s=1234.5, elapsed_s=0.25 * step)


def write_run(path: Path, rows: list[dict], resume_step: int = 0, tensorboard_dir: Path | None = None) -> None:
    log = MetricsLog(path, resume_step=resume_step, tensorboard_dir=tensorboard_dir)
    try:
        for values in rows:
            log.log(**values)
    finally:
        log.close()


def scalars(tensorboard_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_a_missing_metrics_file_reads_as_no_rows(tmp_path: Path) -> None:
    assert read_metrics(tmp_path / "metrics.csv") == []
    assert read_metrics(tmp_path / "no" / "such" / "dir" / "metrics.csv") == []


def test_a_new_log_starts_with_the_header_and_appends_one_row_per_call(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    log = MetricsLog(path, resume_step=0, tensorboard_dir=None)
    try:
        assert path.read_text().splitlines() == [",".join(COLUMNS)]
        assert read_metrics(path) == []
        log.log(**row(1, 5.5, None))
        # Each row is on disk as soon as it is logged: a crash loses nothing already logged.
        assert [r["step"] for r in read_metrics(path)] == [1.0]
        log.log(**row(2, 5.25, 5.125))
        log.log(step=3, train_loss=4.75)  # columns not given are left blank
    finally:
        log.close()
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 4
    rows = read_metrics(path)
    assert all(list(r) == list(COLUMNS) for r in rows)
    assert rows[0] == {"step": 1.0, "tokens": 256.0, "train_loss": 5.5, "val_loss": None, "lr": 0.001,
                       "grad_norm": 0.5, "tok_per_s": 1234.5, "elapsed_s": 0.25}
    assert rows[1]["val_loss"] == 5.125 and rows[1]["lr"] == 0.002
    assert rows[2] == {"step": 3.0, "tokens": None, "train_loss": 4.75, "val_loss": None, "lr": None,
                       "grad_norm": None, "tok_per_s": None, "elapsed_s": None}
    assert all(isinstance(v, float) for r in rows for v in r.values() if v is not None)


def test_nan_is_written_as_a_blank_cell(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    write_run(path, [row(1, float("nan"), float("nan"))])
    [only] = read_metrics(path)
    assert only["train_loss"] is None and only["val_loss"] is None and only["step"] == 1.0


finite = st.floats(allow_nan=False, allow_infinity=False)
cell = st.one_of(st.none(), finite, st.integers(-(10**15), 10**15))


@FAST
@given(st.lists(st.fixed_dictionaries({name: cell for name in VALUES}), min_size=1, max_size=6))
def test_rows_round_trip_as_floats_with_blanks_as_none(rows: list[dict]) -> None:
    logged = [{"step": i + 1, **values} for i, values in enumerate(rows)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.csv"
        write_run(path, logged)
        read = read_metrics(path)
    assert len(read) == len(logged)
    for wrote, got in zip(logged, read):
        assert list(got) == list(COLUMNS)
        for name in COLUMNS:
            value = wrote[name]
            if value is None:
                assert got[name] is None, name
            elif isinstance(value, int) or float(value).is_integer():
                assert got[name] == float(value), name  # counts (steps, tokens) are never rounded
            else:
                assert isinstance(got[name], float)
                assert math.isclose(got[name], value, rel_tol=1e-5), (name, value, got[name])


@pytest.mark.parametrize("resume_step, kept", [(0, []), (3, [1, 2, 3]), (5, [1, 2, 3, 4, 5]), (9, [1, 2, 3, 4, 5])])
def test_resume_keeps_exactly_the_rows_up_to_the_checkpoint(tmp_path: Path, resume_step: int, kept: list[int]) -> None:
    path = tmp_path / "metrics.csv"
    first = [row(s, 6.0 - s / 4, 5.0 if s % 2 == 0 else None) for s in range(1, 6)]
    write_run(path, first)
    before = read_metrics(path)
    MetricsLog(path, resume_step=resume_step, tensorboard_dir=None).close()
    after = read_metrics(path)
    assert [int(r["step"]) for r in after] == kept
    assert after == before[:len(kept)]  # blank cells stay blank, values are unchanged
    assert path.read_text().count("step,tokens") == 1


def test_a_resumed_log_reads_as_one_uninterrupted_run(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    write_run(path, [row(s, 10.0 + s) for s in range(1, 7)])  # steps 4-6 were logged after the last checkpoint
    write_run(path, [row(s, 1.0 + s / 8, 0.75 if s == 6 else None) for s in range(4, 9)], resume_step=3)
    rows = read_metrics(path)
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert [r["train_loss"] for r in rows] == [11.0, 12.0, 13.0] + [1.0 + s / 8 for s in range(4, 9)]
    assert [r["val_loss"] for r in rows] == [None] * 5 + [0.75, None, None]
    lines = path.read_text().splitlines()
    assert lines.count(",".join(COLUMNS)) == 1 and len(lines) == 9


def test_rows_without_a_step_are_dropped_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(",".join(COLUMNS) + "\n1,256,5.5,,,,,\n,512,5.4,,,,,\n2,768,5.3,,,,,\n")
    MetricsLog(path, resume_step=5, tensorboard_dir=None).close()
    assert [(r["step"], r["train_loss"]) for r in read_metrics(path)] == [(1.0, 5.5), (2.0, 5.3)]


def test_without_a_tensorboard_dir_no_event_files_are_written(tmp_path: Path) -> None:
    write_run(tmp_path / "metrics.csv", [row(1, 5.0)])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["metrics.csv"]


def test_tensorboard_events_hold_the_logged_scalars(tmp_path: Path) -> None:
    board = tmp_path / "tb"
    write_run(tmp_path / "metrics.csv", [row(s, 6.0 - s, 4.5 if s == 2 else None) for s in range(1, 4)], tensorboard_dir=board)
    assert list(board.glob("events.out.tfevents.*"))
    assert scalars(board, "train_loss") == [(1, 5.0), (2, 4.0), (3, 3.0)]
    assert scalars(board, "val_loss") == [(2, 4.5)]  # a step without a val loss logs none
    assert [step for step, _ in scalars(board, "tokens")] == [1, 2, 3]
    assert scalars(board, "step") == []


def test_tensorboard_on_resume_drops_the_steps_after_the_checkpoint(tmp_path: Path) -> None:
    board = tmp_path / "tb"
    write_run(tmp_path / "metrics.csv", [row(s, 10.0 + s) for s in range(1, 6)], tensorboard_dir=board)
    write_run(tmp_path / "metrics.csv", [row(s, 1.0 + s) for s in (3, 4)], resume_step=2, tensorboard_dir=board)
    assert scalars(board, "train_loss") == [(1, 11.0), (2, 12.0), (3, 4.0), (4, 5.0)]


def progress_output(enabled: bool) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system=None, width=160)
    with TrainingProgress(10, 0, enabled=enabled, console=console) as progress:
        progress.update(3, 2.5, None, 1234.0)
        progress.set_total(20)
        progress.update(5, 2.25, 2.125, 5678.0)
    return buffer.getvalue()


def test_a_disabled_progress_bar_prints_nothing() -> None:
    assert progress_output(enabled=False) == ""


def test_an_enabled_progress_bar_shows_step_total_losses_and_speed() -> None:
    text = progress_output(enabled=True)
    assert "5/20" in text and "loss 2.250" in text and "val 2.125" in text and "5,678 tok/s" in text


def test_a_torn_last_line_is_dropped_and_the_whole_rows_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    write_run(path, [row(1, 5.5), row(2, 5.25)])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("3,768,5.1e")  # a kill in the middle of a write
    assert [r["step"] for r in read_metrics(path)] == [1.0, 2.0]


def test_numpy_and_torch_scalars_are_written_with_their_fraction(tmp_path: Path) -> None:
    import numpy as np
    import torch

    path = tmp_path / "metrics.csv"
    log = MetricsLog(path, resume_step=0, tensorboard_dir=None)
    try:
        log.log(step=1, train_loss=np.float32(2.5), lr=torch.tensor(0.125).item(), grad_norm=np.float64(0.75))
    finally:
        log.close()
    [only] = read_metrics(path)
    assert only["train_loss"] == 2.5 and only["lr"] == 0.125 and only["grad_norm"] == 0.75

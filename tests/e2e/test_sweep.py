"""`fewshot sweep` through the real CLI: a sweep killed mid-run resumes without redoing its
finished runs and ends bit for bit where an uninterrupted one does; `--parallel`, `--eval` and
`sweep fit --predict next --train` on a tiny ladder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import fewshot_command

KILL_AT = Path(__file__).with_name("kill_at.py")
# Tiny sizes on a short context: each run takes seconds on one thread.
TINY = ["--smallest", "3000", "--tokens-per-param", "3", "--context", "32", "--batch-size", "4",
        "--eval-batches", "2", "--precision", "fp32"]


def sweep(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*fewshot_command(), "sweep", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def runs(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())["runs"]


def test_a_killed_sweep_resumes_without_redoing_finished_runs(tmp_path: Path, data_dir: Path) -> None:
    common = ["--data", str(data_dir), "--sizes", "3", *TINY]
    reference = tmp_path / "reference"
    sweep(*common, "--out", str(reference))
    planned = sorted(runs(reference).values(), key=lambda r: r["n"])
    first, second = planned[0], planned[1]
    save_every = max(1, second["steps"] // 10)
    kill_step = next(s for s in range(save_every, second["steps"], save_every) if s > first["steps"])

    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, str(KILL_AT), "renamed", str(kill_step), "sweep", *common, "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    names = {r["n"]: name for name, r in runs(reference).items()}
    done_dir = out / "runs" / names[first["n"]]
    before = {p.name: p.stat().st_mtime_ns for p in done_dir.iterdir() if p.is_file()}

    third = sweep(*common, "--out", str(out), "--only", names[planned[2]["n"]])  # one cluster job: just that run
    assert "3 runs (1 finished)" in third.stderr and "1 to train" in third.stderr and "run 2/3" in third.stderr
    again = sweep(*common, "--out", str(out))
    assert "3 runs (2 finished)" in again.stderr and "(resuming)" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in done_dir.iterdir() if p.is_file()} == before  # not redone
    assert all(r["status"] == "done" for r in runs(out).values())
    for name in runs(reference):
        ours = (out / "runs" / name / "model.safetensors").read_bytes()
        assert ours == (reference / "runs" / name / "model.safetensors").read_bytes(), name
    assert runs(out)[names[second["n"]]]["val_loss"] == runs(reference)[names[second["n"]]]["val_loss"]


@pytest.mark.slow  # ~100 s: five runs, Dask's worker start-up, the harness on each
def test_a_parallel_ladder_is_scored_fitted_and_predicts_its_next_size(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "ladder"
    done = sweep("--data", str(data_dir), "--sizes", "4", *TINY, "--parallel", "2", "--eval", "2D+",
                 "--shots", "0,2", "--n-eval", "4", "--out", str(out))
    assert "2 at a time" in done.stderr
    record = json.loads((out / "sweep.json").read_text())
    assert len(record["runs"]) == 4 and all(r["status"] == "done" for r in record["runs"].values())
    for name, run in record["runs"].items():
        assert 6 * run["n"] * run["d"] == pytest.approx(run["c"])
        assert run["d"] / run["n"] == pytest.approx(3, rel=0.2) and run["mfu"] > 0
        assert set(run["fewshot"]["tasks"]["2D+"]["shots"]) == {"0", "2"}
        assert (out / "runs" / name / "model.safetensors").is_file()
    assert "alpha" in record["fits"]["L(N)"] and (out / "laws.png").is_file() and (out / "fewshot.png").is_file()

    fit = subprocess.run([*fewshot_command(), "sweep", "fit", str(out), "--predict", "next", "--train"],
                         capture_output=True, text=True, timeout=600)
    assert fit.returncode == 0, fit.stderr[-3000:]
    record = json.loads((out / "sweep.json").read_text())
    (prediction,) = record["predictions"].values()
    assert len(prediction["fitted_on"]) == 4 and prediction["name"] not in prediction["fitted_on"]
    low, high = prediction["ci95"]
    assert low <= prediction["val_loss"] <= high
    fifth = record["runs"][prediction["name"]]
    assert fifth["status"] == "done" and fifth["n"] == max(r["n"] for r in record["runs"].values())
    assert f"predicted {prediction['name']}" in fit.stdout and "measured" in fit.stdout
    assert "Measured:" in (out / "report.md").read_text()

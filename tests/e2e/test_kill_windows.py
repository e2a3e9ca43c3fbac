"""`kill -9` aimed at each window of a checkpoint write (tests/e2e/kill_at.py): the resume is
bitwise equal to a run never stopped, no temporary file outlives it, and no checkpoint that
finished is lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewshot.runs import latest_checkpoint
from tests.conftest import fewshot_command

KILL_AT = [sys.executable, str(Path(__file__).parent / "kill_at.py")]
SAVE_EVERY = 5


def train_args(data_dir: Path, out: Path, steps: int, resume: bool = False) -> list[str]:
    args = ["train", "--data", str(data_dir), "--out", str(out), "--preset", "nano", "--context", "32",
            "--batch-size", "2", "--max-steps", str(steps), "--save-every", str(SAVE_EVERY), "--eval-every", "50",
            "--eval-batches", "1", "--dropout", "0.1", "--precision", "fp32", "--no-progress", "--no-tensorboard"]
    return [*args, "--resume"] if resume else args


def temporaries(run: Path) -> list[Path]:
    return [p for p in run.rglob(".*")]


# window -> (what the kill leaves behind, the checkpoint a resume must start from)
WINDOWS = {
    "staging": (".step_000010.tmp-", 5),  # step 10 never finished: step 5 is the newest
    "renamed": (None, 10),  # LATEST still says step 5, but step 10 is complete
    "latest-temp": (".LATEST.", 10),
    "weights-temp": (".model.safetensors.", 10),
}


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run([*fewshot_command(), *train_args(data_dir, out, 15)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return load_file(str(out / "model.safetensors"))


def kill_then_resume(data_dir: Path, run: Path, window: str, at: int, steps: int) -> str:
    killed = subprocess.run([*KILL_AT, window, str(at), *train_args(data_dir, run, steps)], capture_output=True, text=True)
    assert killed.returncode == -9, f"the kill did not land: rc {killed.returncode}\n{killed.stderr[-2000:]}"
    left, resume_from = WINDOWS[window]
    if left is not None:
        assert any(p.name.startswith(left) for p in temporaries(run)), [p.name for p in temporaries(run)]
    assert latest_checkpoint(run).name == f"step_{resume_from + at - 10:06d}"
    resumed = subprocess.run([*fewshot_command(), *train_args(data_dir, run, steps, resume=True)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Traceback" not in resumed.stderr
    assert temporaries(run) == [], "temporaries outlived the resume"
    return resumed.stderr


@pytest.mark.parametrize("window", WINDOWS)
def test_a_kill_inside_each_checkpoint_write_window_resumes_bitwise(window: str, data_dir: Path, tmp_path: Path,
                                                                    reference: dict[str, torch.Tensor]) -> None:
    log = kill_then_resume(data_dir, tmp_path / "run", window, at=10, steps=15)
    assert f"steps {WINDOWS[window][1]}->15" in log  # started from the newest finished checkpoint
    actual = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert actual.keys() == reference.keys()
    for name in reference:
        assert torch.equal(reference[name], actual[name]), f"{name} differs after a kill in {window}"


@pytest.mark.slow
@pytest.mark.parametrize("window", WINDOWS)
def test_repeated_kills_in_one_window_across_a_longer_run(window: str, data_dir: Path, tmp_path: Path) -> None:
    run, straight = tmp_path / "run", tmp_path / "straight"
    done = subprocess.run([*fewshot_command(), *train_args(data_dir, straight, 40)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    killed = subprocess.run([*KILL_AT, window, "10", *train_args(data_dir, run, 40)], capture_output=True, text=True)
    assert killed.returncode == -9
    for at in (20, 30):  # each resume is killed again, in the same window of a later save
        again = subprocess.run([*KILL_AT, window, str(at), *train_args(data_dir, run, 40, resume=True)],
                               capture_output=True, text=True)
        assert again.returncode == -9, again.stderr[-2000:]
    finished = subprocess.run([*fewshot_command(), *train_args(data_dir, run, 40, resume=True)], capture_output=True, text=True)
    assert finished.returncode == 0 and temporaries(run) == []
    expected, actual = load_file(str(straight / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert all(torch.equal(expected[name], actual[name]) for name in expected)

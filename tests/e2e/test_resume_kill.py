"""kill -9 at random moments during training; every resume must end bit-for-bit where an
uninterrupted run ends, and no checkpoint may ever be unreadable."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewshot.runs import latest_checkpoint, load_checkpoint
from fewshot.config import PRESETS
from fewshot.model import GPT
from tests.conftest import fewshot_command


def train_command(data_dir: Path, out: Path, steps: int, resume: bool = False) -> list[str]:
    command = [*fewshot_command(), "train", "--data", str(data_dir), "--out", str(out), "--preset", "nano",
               "--context", "64", "--batch-size", "4", "--max-steps", str(steps), "--save-every", "7",
               "--eval-every", "25", "--dropout", "0.1", "--precision", "fp32", "--no-progress"]
    return [*command, "--resume"] if resume else command


def assert_checkpoint_readable(run: Path) -> None:
    checkpoint = latest_checkpoint(run)
    if checkpoint is not None:
        model = GPT(PRESETS["nano"].model.replace(context=64))
        load_checkpoint(checkpoint, model, torch.device("cpu"))  # raises on any damage


def run_with_kills(data_dir: Path, tmp_path: Path, steps: int, kills: int, seed: int) -> None:
    reference = tmp_path / "reference"
    subprocess.run(train_command(data_dir, reference, steps), check=True, capture_output=True)
    run = tmp_path / "killed"
    rng = random.Random(seed)
    mid_training = 0
    for _ in range(kills):
        # As a user would: --resume once the run exists (config.json is its first file).
        process = subprocess.Popen(train_command(data_dir, run, steps, resume=(run / "config.json").exists()),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        process.stderr.readline()  # "training ...": start-up is over, the loop begins
        time.sleep(rng.uniform(0.0, 0.4))  # a random moment: mid-step, mid-eval or mid-save
        mid_training += process.poll() is None
        process.kill()
        process.wait()
        process.stderr.close()
        assert_checkpoint_readable(run)
    assert mid_training >= kills * 3 // 4, f"only {mid_training} of {kills} kills landed during training"
    finished = subprocess.run(train_command(data_dir, run, steps, resume=True), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    expected, actual = load_file(str(reference / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after resuming"


def test_kill_9_then_resume_is_bitwise_exact(data_dir: Path, tmp_path: Path) -> None:
    run_with_kills(data_dir, tmp_path, steps=60, kills=3, seed=0)


@pytest.mark.slow
def test_twenty_kill_9s_during_300_steps(data_dir: Path, tmp_path: Path) -> None:
    run_with_kills(data_dir, tmp_path, steps=300, kills=20, seed=1)

"""Distributed training through the real entry points: torchrun, and `fewshot train --nproc`.

Two gloo ranks on CPU must reach the weights of one process that accumulates two micro-batches
(the same global batch), runs move between world sizes through their checkpoints, FSDP2 trains
on CPU, and a rank that dies fails the whole job without damaging the last checkpoint.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewshot.runs import LATEST, STATE, latest_checkpoint, load_checkpoint
from fewshot.config import PRESETS
from fewshot.model import GPT
from fewshot.train.loop import resume_config, train
from tests.conftest import fewshot_command, tiny_config

STEPS = 20
# fp32 sums in another order (gradients all-reduced across ranks instead of accumulated
# in place) may differ in the last bits; with dropout 0 nothing else may differ.
TOLERANCE = 1e-5


def cli_options(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data_dir), "--out", str(out), "--preset", "nano", "--context", "64",
            "--batch-size", "4", "--max-steps", str(STEPS), "--save-every", "10", "--eval-every", "10",
            "--precision", "fp32", "--no-progress", *extra]


def torchrun(*arguments: str) -> list[str]:
    # --standalone: a free port per job, so test runs side by side never collide.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fewshot", *arguments]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r["train_loss"])) for r in csv.DictReader(open(run_dir / "metrics.csv"))]


def assert_same_weights(expected_file: Path, actual_file: Path) -> None:
    expected, actual = load_file(str(expected_file)), load_file(str(actual_file))
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=TOLERANCE, msg=name)


def assert_same_losses(expected: Path, actual: Path) -> None:
    a, b = losses(expected), losses(actual)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, STEPS + 1))  # one row per step: rank 0 alone logs
    for (step, x), (_, y) in zip(a, b):
        assert y == pytest.approx(x, rel=TOLERANCE), step


def rewind(run_dir: Path, step: int) -> None:
    """Make `run_dir` look as if it had stopped after its checkpoint at `step`."""
    for later in (run_dir / STATE).glob("step_*"):
        if int(later.name.removeprefix("step_")) > step:
            shutil.rmtree(later)
    (run_dir / STATE / LATEST).write_text(f"step_{step:06d}\n")


def trainer_state(run_dir: Path) -> dict:
    model = GPT(PRESETS["nano"].model.replace(context=64))
    return load_checkpoint(latest_checkpoint(run_dir), model, torch.device("cpu"))[1]


@pytest.fixture(scope="module")
def one_process(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, micro-batch 4 x 2 accumulation steps = global batch 8."""
    out = tmp_path_factory.mktemp("one") / "run"
    train(tiny_config(data_dir, out, max_steps=STEPS, grad_accum=2, save_every=10, eval_every=10, keep_last=5))
    return out


def test_two_ranks_match_one_process_and_resume_on_one(data_dir: Path, one_process: Path, tmp_path: Path) -> None:
    ddp = tmp_path / "ddp"
    done = run(torchrun(*cli_options(data_dir, ddp, "--grad-accum", "1", "--log-every", "1")))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(one_process / "model.safetensors", ddp / "model.safetensors")
    assert_same_losses(one_process, ddp)
    # Rank 0 alone speaks: one start line, one summary.
    assert done.stderr.count("training 0.") == 1 and "on each of 2 ranks (DDP)" in done.stderr
    assert done.stdout.count("run directory:") == 1

    # Saved by two ranks at step 10, continued by one process accumulating two micro-batches.
    shrunk = tmp_path / "shrunk"
    shutil.copytree(ddp, shrunk)
    rewind(shrunk, 10)
    assert trainer_state(shrunk)["sampler"] == {"seed": 0, "position": 10, "global_batch": 8}
    result = train(resume_config(shrunk, grad_accum=2), resume=True)
    assert result.step == STEPS and trainer_state(shrunk)["sampler"]["position"] == STEPS
    assert_same_weights(one_process / "model.safetensors", shrunk / "model.safetensors")
    assert_same_losses(one_process, shrunk)


def test_fsdp_through_nproc_continues_a_one_process_run(data_dir: Path, one_process: Path, tmp_path: Path) -> None:
    # The reverse move (world size 1 -> 2), through `fewshot train --nproc 2` and FSDP2 on gloo:
    # the single-process optimizer state is sharded on load and consolidated again on save.
    grown = tmp_path / "grown"
    shutil.copytree(one_process, grown)
    rewind(grown, 10)
    done = run([*fewshot_command(), "train", "--out", str(grown), "--resume", "--nproc", "2", "--strategy", "fsdp",
                "--grad-accum", "1"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on each of 2 ranks (FSDP)" in done.stderr and "steps 10->20" in done.stderr
    state = trainer_state(grown)
    assert state["step"] == STEPS and state["sampler"] == {"seed": 0, "position": STEPS, "global_batch": 8}
    assert len(state["rng_ranks"]) == 2
    assert_same_weights(one_process / "model.safetensors", grown / "model.safetensors")
    assert_same_losses(one_process, grown)


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


def worker(root: int, rank: int) -> int:
    for pid in descendants(root):
        try:
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return pid
        except OSError:
            continue
    raise AssertionError(f"no worker with RANK={rank} under pid {root}")


def test_a_rank_that_dies_fails_the_job_and_keeps_the_last_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    options = cli_options(data_dir, run_dir, "--nproc", "2", "--save-every", "2", "--log-every", "1")
    options[options.index("--max-steps") + 1] = "100000"
    job = subprocess.Popen([*fewshot_command(), *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (run_dir / STATE / LATEST).exists():
        assert job.poll() is None and time.monotonic() < deadline, "the job never saved a checkpoint"
        time.sleep(0.05)
    os.kill(worker(job.pid, rank=1), signal.SIGKILL)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode != 0
    assert "lost contact with another rank" in stderr and "distributed training failed" in stderr, stderr[-3000:]
    saved = trainer_state(run_dir)  # verifies the manifest: complete and uncorrupted
    assert not list((run_dir / STATE).glob(".step_*"))  # no half-written checkpoint left behind
    assert saved["step"] >= 2 and saved["sampler"]["position"] == saved["step"]

    # --resume continues from that checkpoint, here on one process with the same global batch.
    result = train(resume_config(run_dir, max_steps=saved["step"] + 2, grad_accum=2, progress=False), resume=True)
    assert result.step == saved["step"] + 2
    assert [s for s, _ in losses(run_dir)][-2:] == [saved["step"] + 1, saved["step"] + 2]

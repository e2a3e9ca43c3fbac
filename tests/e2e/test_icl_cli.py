"""`fewshot icl ...` and `fewshot train --data icl` through the real CLI, on tiny budgets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fewshot.tasks.meta.mixture import MixtureConfig
from tests.conftest import fewshot_command


def fewshot(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*fewshot_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def icl_run(tmp_path_factory) -> Path:
    """A few steps on the generated mixture: `--data icl:...` generates it in ./data/icl first."""
    root = tmp_path_factory.mktemp("icl")
    result = fewshot("train", "--data", "icl:mb=0.3,seed=1", "--preset", "nano", "--max-steps", "3", "--batch-size", "2",
                     "--context", "128", "--optimizer", "muon", "--out", "runs/tiny", "--no-progress", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_train_generates_the_mixture_once_and_records_where_it_is(icl_run: Path) -> None:
    data = icl_run / "data" / "icl" / MixtureConfig(megabytes=0.3, seed=1).name
    assert json.loads((data / "mixture.json").read_text())["seed"] == 1
    config = json.loads((icl_run / "runs" / "tiny" / "config.json").read_text())
    assert config["train"]["data"] == f"data/icl/{MixtureConfig(megabytes=0.3, seed=1).name}"
    assert config["train"]["optimizer"] == "muon"
    again = fewshot("train", "--data", "icl:mb=0.3,seed=1", "--preset", "nano", "--max-steps", "2", "--batch-size", "2",
                    "--context", "128", "--out", "runs/again", "--no-progress", cwd=icl_run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(list((icl_run / "data" / "icl").iterdir())) == 1  # reused, not generated twice


def test_training_on_the_answers_alone_reads_the_mixtures_loss_mask(tmp_path: Path) -> None:
    result = fewshot("train", "--data", "icl:mb=0.1,loss=answers", "--preset", "nano", "--max-steps", "2", "--batch-size", "2",
                     "--context", "128", "--eval-every", "2", "--out", "runs/answers", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = tmp_path / "data" / "icl" / MixtureConfig(megabytes=0.1, loss="answers").name
    meta = json.loads((data / "meta.json").read_text())
    assert meta["loss_mask"]["train"]["tokens"] == meta["splits"]["train"]["tokens"]
    rows = (tmp_path / "runs" / "answers" / "metrics.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert 0 < float(last[header.index("val_loss")]) < 10  # finite: the validation batches learn some tokens


def test_icl_eval_scores_held_out_families_per_format(icl_run: Path) -> None:
    result = fewshot("icl", "eval", "runs/tiny", "--out", "heldout", "--n", "6", "--shots", "0,2",
                     "--templates", "input-output,arrow", cwd=icl_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "examples/s" in result.stdout and "| input-output |" in result.stdout
    summary = json.loads((icl_run / "heldout" / "summary.json").read_text())
    assert [c["label"] for c in summary["curves"]] == ["input-output", "arrow"]
    assert set(summary["curves"][0]["shots"]) == {"0", "2"}
    results = json.loads((icl_run / "heldout" / "results-arrow.json").read_text())
    assert len(results["tasks"]) >= 8 and all(t["shots"]["2"]["n"] == 6 for t in results["tasks"].values())
    assert (icl_run / "heldout" / "icl.png").stat().st_size > 1000
    # The files are ordinary task files: `fewshot eval --task-file` scores them the same way.
    plain = fewshot("eval", "runs/tiny", "--task-file", "heldout/tasks/suffix.jsonl", "--template", "{input} -> {target}",
                    "--shots", "0,2", "--n", "6", "--max-tokens", "16", "--out", "plain.json", cwd=icl_run)
    assert plain.returncode == 0, plain.stderr[-2000:]
    ours = json.loads((icl_run / "plain.json").read_text())["tasks"]["suffix"]["shots"]["2"]["n"]
    assert ours == 6


def test_the_frozen_set_reports_its_mean_alone(icl_run: Path) -> None:
    from fewshot.tasks import frozen

    result = fewshot("icl", "eval", "runs/tiny", "--set", "frozen", "--out", "frozen", "--n", "4", "--shots", "0,1", cwd=icl_run)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((icl_run / "frozen" / "summary.json").read_text())
    assert summary["set"] == "frozen" and [c["label"] for c in summary["curves"]] == list(frozen.TEMPLATES)
    assert (icl_run / "frozen" / "icl.png").stat().st_size > 1000
    # No per-family result on screen or on disk: the rule lets the mean alone out.
    assert not list((icl_run / "frozen").glob("results-*.json")) and not (icl_run / "frozen" / "tasks").exists()
    assert not any(f.name in result.stdout for f in frozen.kept())
    too_many = fewshot("icl", "eval", "runs/tiny", "--set", "frozen", "--out", "f2", "--n", "201", cwd=icl_run)
    assert too_many.returncode != 0 and "error: the frozen set has 200 queries per family" in too_many.stderr


def test_icl_tasks_and_data_commands(tmp_path: Path) -> None:
    result = fewshot("icl", "tasks", "tasks", "--n", "30", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "tasks").glob("*.jsonl"))
    assert len(files) >= 8 and all(len(f.read_text().splitlines()) == 30 for f in files)
    result = fewshot("icl", "data", "mix", "--mb", "0.1", "--no-bursty", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "mix" / "mixture.json").read_text())["bursty"] is False
    again = fewshot("icl", "data", "mix", "--mb", "0.1", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("args, message", [
    (("train", "--data", "icl:mb=x", "--out", "r"), "mb must be a number"),
    (("train", "--data", "icl:colour=red", "--out", "r"), "unknown option"),
    (("icl", "eval", "nowhere", "--out", "e", "--templates", "fancy"), "unknown fancy"),
    (("icl", "eval", "nowhere", "--out", "e", "--set", "secret"), "--set takes dev or frozen"),
    (("icl", "train", "--data", "data/mine", "--minutes", "1"), "takes icl or icl-nonbursty"),
    (("icl", "tasks", "t", "--n", "1"), "--n must be >= 2"),
    (("icl", "train", "--batch-size", "0"), "--batch-size >= 1"),
    (("icl", "train", "--optimizer", "sgd"), "--optimizer must be adamw or muon"),
    (("train", "--data", "d", "--optimizer", "lion"), "--optimizer must be adamw or muon"),
    (("train", "--data", "d", "--short-context-steps", "5"), "needs --short-context"),
])
def test_bad_icl_options_get_one_line_errors(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = fewshot(*args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "data").exists()

"""`fewshot eval` as a user runs it: task files, synthetic tasks, several models, plots, bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fewshot.train.loop import train
from tests.conftest import fewshot_command, tiny_config

PNG = b"\x89PNG\r\n\x1a\n"


def fewshot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*fewshot_command(), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("eval")
    out = []
    for name, steps in (("a", 6), ("b", 12)):
        train(tiny_config(data_dir, root / name, max_steps=steps, context=128))
        out.append(root / name)
    return out


def test_eval_on_a_task_file_writes_results_and_a_markdown_table(runs: list[Path], tmp_path: Path) -> None:
    task = tmp_path / "copy.jsonl"
    task.write_text("\n".join(json.dumps({"input": w, "target": w}) for w in ["ab", "cd", "ef", "gh", "ij", "kl"]) + "\n")
    mc = tmp_path / "pick.jsonl"
    mc.write_text("\n".join(json.dumps({"input": w, "choices": ["the", "zqx"], "label": 0}) for w in ["a", "b", "c"]))
    result = fewshot("eval", str(runs[0]), "--task-file", str(task), "--task-file", str(mc), "--template", "Q: {input}\\nA: {target}",
                     "--shots", "0,2", "--n", "5", "--out", str(tmp_path / "results.json"), "--mc-norm", "unconditional")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "examples/s" in result.stdout and "copy" in result.stdout
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["model"] == str(runs[0])
    assert data["tasks"]["copy"]["metric"] == "exact_match" and data["tasks"]["pick"]["metric"] == "accuracy"
    cell = data["tasks"]["copy"]["shots"]["2"]
    assert set(cell) == {"score", "n", "ci95", "effective_k"} and cell["n"] == 5 and cell["effective_k"] == 2
    assert data["tasks"]["pick"]["shots"]["0"]["n"] == 3
    assert "| copy | exact_match |" in (tmp_path / "results.md").read_text()


def test_prompt_lookup_gives_the_same_scores(runs: list[Path], tmp_path: Path) -> None:
    task = tmp_path / "copy.jsonl"
    task.write_text("\n".join(json.dumps({"input": w * 3, "target": w * 3}) for w in ["ab", "cd", "ef", "gh", "ij", "kl", "mn"]) + "\n")
    scores = []
    for name, extra in (("plain", []), ("drafted", ["--prompt-lookup", "6"])):
        result = fewshot("eval", str(runs[1]), "--task-file", str(task), "--shots", "0,3", "--n", "7",
                         "--out", str(tmp_path / f"{name}.json"), *extra)
        assert result.returncode == 0, result.stderr[-2000:]
        scores.append(json.loads((tmp_path / f"{name}.json").read_text())["tasks"]["copy"]["shots"])
    assert scores[0] == scores[1]


def test_eval_of_two_models_on_arithmetic_plots_curves_and_bars(runs: list[Path], tmp_path: Path) -> None:
    result = fewshot("eval", *map(str, runs), "--tasks", "2D+,2D-", "--shots", "0,1,4", "--n", "6",
                     "--out", str(tmp_path / "r.json"), "--plot", str(tmp_path / "icl.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "r.json").read_text())
    assert [d["model"] for d in data] == [str(r) for r in runs]  # several models: a list of DESIGN objects
    four = data[0]["tasks"]["2D+"]["shots"]["4"]
    assert 0 < four["effective_k"] < 4  # a 128-token context holds about 2 demonstrations and the answer
    assert (tmp_path / "icl.png").read_bytes()[:8] == PNG
    assert (tmp_path / "icl_bars.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize(("lines", "message"), [
    (['{"input": "a", "target": "b"}', '{"input": "a"'], ":2: not valid JSON"),
    (['{"input": "a", "choices": ["x"], "label": 3}'], ":1: label 3 is out of range"),
])
def test_a_bad_task_file_is_one_line_error(runs: list[Path], tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = fewshot("eval", str(runs[0]), "--task-file", str(path), "--shots", "0")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1


def test_too_many_shots_and_bad_templates_are_one_line_errors(runs: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "small.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n{"input": "c", "target": "d"}\n')
    too_many = fewshot("eval", str(runs[0]), "--task-file", str(path), "--shots", "0,4")
    assert too_many.returncode == 2 and "task small: 4 shots but its demonstration pool has only 1 examples" in too_many.stderr
    template = fewshot("eval", str(runs[0]), "--task-file", str(path), "--template", "Q: {input}")
    assert template.returncode == 2 and template.stderr.startswith("error: template") and template.stderr.count("\n") == 1

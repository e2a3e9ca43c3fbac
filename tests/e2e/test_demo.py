"""`fewshot demo` end to end, with a tiny time budget: mixture, training, samples, held-out ICL curve, report."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import fewshot_command


def test_demo_leaves_a_normal_run_directory_with_a_report(tmp_path: Path) -> None:
    # The SmolLM2 step is covered below on the session's import: a second import costs ~15 s.
    # Compiled training is covered in tests/experiments/test_icl.py: here it would cost two compilations.
    command = [*fewshot_command(), "demo", "--minutes", "0.1", "--preset", "nano", "--n-eval", "4", "--no-smollm2", "--no-compile"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "development held-out families, ICL curve" in result.stdout and "ROMEO:" in result.stdout and "K=16" in result.stdout
    assert "frozen held-out families, ICL curve" in result.stdout
    assert "a task family the model never trained on" in result.stdout
    run = tmp_path / "runs" / "demo"
    report = (run / "report.md").read_text()
    assert "## Samples" in report and "## In-context learning: development held-out families" in report
    assert "## In-context learning: frozen held-out families" in report and "| io |" in report
    assert "![loss curve](loss.png)" in report and "| input-output |" in report
    assert (run / "loss.png").stat().st_size > 1000 and (run / "heldout" / "icl.png").stat().st_size > 1000
    assert (run / "frozen" / "icl.png").stat().st_size > 1000 and not list((run / "frozen").glob("results-*"))
    assert len(list((run / "heldout" / "tasks").glob("*.jsonl"))) >= 8
    (mixture,) = (tmp_path / "data" / "icl").iterdir()
    assert (mixture / "mixture.json").is_file() and (mixture / "meta.json").is_file()
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "continuing it" in again.stdout + again.stderr, again.stderr[-2000:]


def test_the_smollm2_step_prompts_chats_and_scores_0_vs_4_shots(smollm2_run: Path) -> None:
    from rich.console import Console

    from fewshot.experiments.demo import smollm2_demo

    console = Console(record=True, width=120)
    markdown = smollm2_demo(smollm2_run, 3, console)  # an existing run: no second import
    shown = console.export_text()
    assert "Q: What is" in shown and "chat:" in shown and "SmolLM2-135M: few-shot exact match" in shown
    assert "| 2D+ |" in markdown and "K=4" in markdown

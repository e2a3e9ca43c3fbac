"""`fewshot demo` end to end, with a tiny time budget: corpus, BPE, training, samples, table, report."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import fewshot_command


def test_demo_leaves_a_normal_run_directory_with_a_report(tmp_path: Path) -> None:
    # The SmolLM2 step is covered below on the session's import: a second import costs ~15 s.
    result = subprocess.run([*fewshot_command(), "demo", "--minutes", "0.1", "--preset", "nano", "--n-eval", "4", "--no-smollm2"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "few-shot exact match" in result.stdout and "ROMEO:" in result.stdout
    run = tmp_path / "runs" / "demo"
    report = (run / "report.md").read_text()
    assert "## Samples" in report and "| 2D+ |" in report and "![loss curve](loss.png)" in report
    assert (run / "loss.png").stat().st_size > 1000
    assert (run / "tokenizer.json").is_file()  # the demo's BPE travels with the model
    plays = list((tmp_path / "data" / "default" / "corpus" / "plays").glob("*.txt"))
    assert len(plays) == 38
    again = subprocess.run([*fewshot_command(), "demo", "--minutes", "0.1", "--preset", "nano", "--n-eval", "4", "--no-smollm2"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "continuing it" in again.stdout, again.stderr[-2000:]


def test_the_smollm2_step_prompts_chats_and_scores_0_vs_4_shots(smollm2_run: Path) -> None:
    from rich.console import Console

    from fewshot.demo import smollm2_demo

    console = Console(record=True, width=120)
    markdown = smollm2_demo(smollm2_run, 3, console)  # an existing run: no second import
    shown = console.export_text()
    assert "Q: What is" in shown and "chat:" in shown and "SmolLM2-135M: few-shot exact match" in shown
    assert "| 2D+ |" in markdown and "K=4" in markdown

"""`fewshot bench serve --few-shot` end to end: two real servers, the report it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fewshot.bench.serve_fewshot import LABELS, few_shot_prompts
from fewshot.tokenizer import ByteTokenizer
from tests.e2e.test_serve import trained_run


def test_few_shot_prompts_share_their_demonstrations_and_reach_the_length():
    prompts = few_shot_prompts(ByteTokenizer(), shots=16, prompt_tokens=600, count=5)
    demos = prompts[0][: prompts[0].rindex("Input:")]
    assert all(p.startswith(demos) for p in prompts) and len({p[len(demos):] for p in prompts}) > 1
    assert demos.count("Input:") == 16 and all(label.strip() in demos for label in LABELS[:2])
    assert 600 <= len(prompts[0]) < 700  # bytes are tokens here; one more word per phrase would pass it by 16+


def test_bench_serve_few_shot_writes_its_report(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    run = trained_run(data_dir, tmp_path_factory)
    command = [sys.executable, "-m", "fewshot", "bench", "serve", str(run), "--few-shot", "--shots", "2", "--clients", "2",
               "--requests", "4", "--rounds", "1", "--prompt-tokens", "80", "--threads", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "serve-fewshot.json").read_text())
    assert result["on"]["failures"] == 0 and result["off"]["failures"] == 0
    assert result["on"]["requests"] == result["off"]["requests"] == 4
    assert result["labels_only"] is True and result["guided_tokens"] >= 1
    assert result["throughput_ratio"] > 0 and result["machine"]["cores"] >= 1
    assert (tmp_path / "serve-fewshot.png").stat().st_size > 1000
    assert "prefix cache" in (tmp_path / "serve-fewshot.md").read_text()

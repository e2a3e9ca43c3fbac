"""fewshot.experiments.compare: T-Few's ICL-vs-fine-tuning comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewshot.errors import FewshotError
from fewshot.experiments.compare import EXAMPLES_DIR, Cell, run_compare, split, training_lines
from fewshot.tasks.base import Example
from fewshot.tasks.taskfile import Template, read_task_file
from fewshot.train.loop import train
from tests.conftest import tiny_config

ITEMS = [Example(f"w{i}", f"t{i}") for i in range(30)]


def test_the_k_examples_and_the_queries_never_overlap_and_grow_with_k() -> None:
    pool, held = split(ITEMS, 8, 12, seed=0)
    assert len(pool) == 8 and len(held) == 12 and not set(pool) & set(held)
    assert split(ITEMS, 8, 12, seed=0) == (pool, held)  # seeded
    with pytest.raises(FewshotError, match="needs at least 34"):
        split(ITEMS, 32, 5, seed=0)


def test_training_lines_are_the_query_prompt_and_what_follows_it() -> None:
    [line] = training_lines([Example("cat", "tac")], Template()).splitlines()
    assert json.loads(line) == {"prompt": "Input: cat\nOutput:", "completion": " tac"}


def test_break_even_is_training_cost_over_the_saving_per_query() -> None:
    icl = Cell("icl", 16, 0.5, (0.4, 0.6), 100, inference_flops=1000.0, ms_per_query=1, train_flops=0, train_seconds=0)
    ia3 = Cell("ia3", 16, 0.6, (0.5, 0.7), 100, inference_flops=200.0, ms_per_query=1, train_flops=8000.0, train_seconds=1)
    assert ia3.break_even(icl) == 10.0
    assert Cell("full", 16, 0.6, (0.5, 0.7), 100, 1200.0, 1, 1.0, 1).break_even(icl) is None


def test_the_example_task_files_are_a_classification_and_a_generation_task() -> None:
    kinds = {path.stem: read_task_file(path).metric for path in EXAMPLES_DIR.glob("*.jsonl")}
    assert sorted(kinds.values()) == ["accuracy", "exact_match"] and all(len(read_task_file(p).items) >= 100
                                                                         for p in EXAMPLES_DIR.glob("*.jsonl"))


def test_a_small_comparison_writes_its_table_json_and_plots(data_dir: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    train(tiny_config(data_dir, base, max_steps=4, context=96, batch_size=2, eval_batches=1))
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"input": f"{i}", "target": f"{i % 3}"}) + "\n" for i in range(24)))
    cells = run_compare(base, task, [2, 4], ["icl", "lora"], tmp_path / "cmp", queries=10, steps=3)
    assert [(c.method, c.k) for c in cells] == [("icl", 2), ("lora", 2), ("icl", 4), ("lora", 4)]
    assert all(c.n == 10 for c in cells)  # the same held-out queries everywhere
    icl, lora = cells[2], cells[3]
    assert icl.inference_flops > lora.inference_flops and lora.train_flops > 0 == icl.train_flops
    record = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert len(record["cells"]) == 4 and record["cells"][1]["break_even_queries"] is not None
    for plot in ("accuracy.png", "cost.png"):
        assert (tmp_path / "cmp" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| lora | 4 |" in (tmp_path / "cmp" / "compare.md").read_text()

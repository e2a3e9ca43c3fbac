"""Held-out ICL: the mean curve over task families, its table, and the scoring of the held-out files.

The models are nano GPTs: one randomly initialised, one whose weights are set by hand so that
its answers are known in advance (see `arrow_answers_one`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fewshot.config import preset
from fewshot.eval.harness import Evaluation, ShotResult, TaskResult, wilson_interval
from fewshot.eval.heldout import MeanCurve, evaluate_held_out, mean_curve, summary_table
from fewshot.inference.lm import LM
from fewshot.model import GPT
from fewshot.tasks.families import HELD_OUT
from fewshot.tasks.meta.mixture import EVAL_TEMPLATES
from fewshot.tokenizer import ByteTokenizer


def cell(shots: int, correct: int, n: int, effective_k: float) -> ShotResult:
    # A deliberately wrong per-task interval: the curve's interval must be its own, pooled one.
    return ShotResult(shots, correct, n, (0.0, 1.0), effective_k)


def three_tasks() -> Evaluation:
    """Known numbers, with tasks of different sizes so a mean over tasks differs from a pooled one."""
    return Evaluation("runs/x", [
        TaskResult("a", "exact_match", (cell(0, 2, 4, 0.0), cell(4, 4, 4, 3.5))),
        TaskResult("b", "exact_match", (cell(0, 0, 10, 0.0), cell(4, 5, 10, 4.0))),
        TaskResult("c", "exact_match", (cell(0, 1, 2, 0.0), cell(4, 1, 2, 2.0))),
    ], examples=32, seconds=1.0)


def test_the_mean_curve_averages_accuracy_over_tasks_at_each_k() -> None:
    curve = mean_curve(three_tasks(), "arrow")
    assert curve.label == "arrow" and curve.shots == (0, 4)
    # (2/4 + 0/10 + 1/2) / 3 and (4/4 + 5/10 + 1/2) / 3: each family counts once, whatever its n.
    assert curve.means == pytest.approx((1 / 3, 2 / 3))
    assert curve.at(0) == pytest.approx(1 / 3) and curve.at(4) == pytest.approx(2 / 3)
    assert curve.effective_k == pytest.approx((0.0, 9.5 / 3))
    with pytest.raises(ValueError):
        curve.at(2)


def test_the_mean_curve_interval_is_wilson_on_the_pooled_queries() -> None:
    curve = mean_curve(three_tasks(), "arrow")
    # 3 of 16 queries right at K=0, 10 of 16 at K=4.
    assert curve.ci95[0] == pytest.approx(wilson_interval(3, 16))
    assert curve.ci95[1] == pytest.approx(wilson_interval(10, 16))
    for (lo, hi), pooled in zip(curve.ci95, (3 / 16, 10 / 16)):
        assert 0.0 < lo < pooled < hi < 1.0 and hi - lo < 0.5


def test_a_single_task_curve_is_that_task() -> None:
    task = TaskResult("only", "exact_match", (cell(0, 3, 8, 0.0), cell(1, 5, 8, 1.0), cell(2, 8, 8, 1.5)))
    curve = mean_curve(Evaluation("m", [task]), "q-a")
    assert curve.shots == (0, 1, 2)
    assert curve.means == pytest.approx((3 / 8, 5 / 8, 1.0))
    assert curve.ci95 == (wilson_interval(3, 8), wilson_interval(5, 8), wilson_interval(8, 8))
    assert curve.ci95[2][1] == 1.0
    assert curve.effective_k == pytest.approx((0.0, 1.0, 1.5))


def test_the_mean_curve_json_has_one_entry_per_k() -> None:
    data = json.loads(json.dumps(mean_curve(three_tasks(), "arrow").to_json()))
    assert data["label"] == "arrow" and list(data["shots"]) == ["0", "4"]
    assert data["shots"]["4"]["mean"] == pytest.approx(2 / 3)
    assert data["shots"]["4"]["ci95"] == pytest.approx(list(wilson_interval(10, 16)))
    assert data["shots"]["4"]["effective_k"] == pytest.approx(9.5 / 3)


def test_the_summary_table_has_a_row_per_curve_and_a_column_per_k() -> None:
    curves = [MeanCurve("tiny · arrow", (0, 1, 4), (0.0, 0.25, 2 / 3), ((0, 1),) * 3, (0, 1, 4)),
              MeanCurve("tiny · q-a", (0, 1, 4), (0.125, 0.5, 1.0), ((0, 1),) * 3, (0, 1, 4))]
    lines = summary_table(curves).splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert rows[0] == ["model · format", "K=0", "K=1", "K=4"]
    assert set(rows[1]) == {"---"} and len(rows[1]) == 4
    assert rows[2:] == [["tiny · arrow", "0.0%", "25.0%", "66.7%"], ["tiny · q-a", "12.5%", "50.0%", "100.0%"]]


# ---------------------------------------------------------------------------- scoring real files


@pytest.fixture(scope="module")
def untrained() -> LM:
    torch.manual_seed(0)
    return LM(GPT(preset("nano").replace(context=96)).eval(), ByteTokenizer(), {})


@pytest.fixture(scope="module")
def arrow_answers_one() -> LM:
    """A nano GPT that, whatever came before, writes '1' after '>' and a newline after '1'.

    The blocks are zeroed, so the last hidden state is the last token's embedding alone:
    '>' and '1' get their own directions and the head maps them to '1' and '\\n'; every
    other token maps to 'x', so after "A:", "=" or "Output:" the answer is x's, never right.
    Under the arrow template ("{input} ->") it answers exactly the queries whose target is 1.
    """
    model = GPT(preset("nano").replace(context=96)).eval()
    with torch.no_grad():
        for parameter in model.blocks.parameters():
            parameter.zero_()
        model.position_embedding.weight.zero_()
        embedding = torch.zeros_like(model.token_embedding.weight)
        embedding[:, 2] = 1.0
        embedding[ord(">")] = torch.nn.functional.one_hot(torch.tensor(0), embedding.shape[1]).float()
        embedding[ord("1")] = torch.nn.functional.one_hot(torch.tensor(1), embedding.shape[1]).float()
        model.token_embedding.weight.copy_(embedding)
        head = torch.zeros_like(embedding)
        head[ord("1"), 0] = head[ord("\n"), 1] = head[ord("x"), 2] = 10.0
        model.head.weight = torch.nn.Parameter(head)  # untied from the embedding
        model.norm.weight.fill_(1.0)
        model.norm.bias.zero_()
    lm = LM(model, ByteTokenizer(), {})
    assert lm.generate("7 ->", max_tokens=4).startswith("1\n")  # the construction itself
    return lm


def targets(path: Path) -> list[str]:
    return [json.loads(line)["target"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_held_out_families_are_written_and_scored_at_the_requested_shots(untrained: LM, tmp_path: Path) -> None:
    results = evaluate_held_out(untrained, tmp_path / "tasks", shots=(0, 2), n=4, templates=("arrow", "q-a"), model="tiny")
    files = sorted((tmp_path / "tasks").glob("*.jsonl"))
    assert {p.stem for p in files} == HELD_OUT
    assert all(len(targets(p)) == 4 for p in files)
    assert list(results) == ["arrow", "q-a"]
    for evaluation in results.values():
        assert evaluation.model == "tiny"
        assert sorted(t.name for t in evaluation.tasks) == sorted(HELD_OUT)
        assert all(t.metric == "exact_match" for t in evaluation.tasks)
        assert all([(r.shots, r.n) for r in t.shots] == [(0, 4), (2, 4)] for t in evaluation.tasks)
        assert all(t.shots[0].effective_k == 0 and 0 < t.shots[1].effective_k <= 2 for t in evaluation.tasks)
        assert evaluation.examples == len(HELD_OUT) * 2 * 4
        curve = mean_curve(evaluation, "tiny")
        assert curve.shots == (0, 2) and all(0.0 <= m <= 1.0 for m in curve.means)


def test_only_the_first_n_lines_are_scored_under_each_template(arrow_answers_one: LM, tmp_path: Path) -> None:
    n, shots = 4, (0, 5)
    results = evaluate_held_out(arrow_answers_one, tmp_path / "tasks", shots=shots, n=n)
    assert list(results) == list(EVAL_TEMPLATES)  # every evaluation format by default
    expected = {}
    for path in (tmp_path / "tasks").glob("*.jsonl"):
        lines = targets(path)
        assert len(lines) == max(shots) + 1  # enough lines for K=5 demonstrations besides the query
        expected[path.stem] = sum(t.strip() == "1" for t in lines[:n])
    assert sum(expected.values()) > 0, "no held-out query has the answer 1: the test would prove nothing"
    arrow = results["arrow"]
    assert {t.name: [r.correct for r in t.shots] for t in arrow.tasks} == {k: [v, v] for k, v in expected.items()}
    assert all(r.n == n for t in arrow.tasks for r in t.shots)
    for name in ("input-output", "q-a", "equals"):  # prompts not ending in '>' are answered x...
        assert all(r.correct == 0 for t in results[name].tasks for r in t.shots), name
    curve = mean_curve(arrow, "arrow")
    assert curve.means == pytest.approx([sum(expected.values()) / n / len(expected)] * 2)
    assert curve.ci95[0] == pytest.approx(wilson_interval(sum(expected.values()), n * len(expected)))


def test_held_out_scores_are_deterministic_and_independent_of_batch_size(untrained: LM, tmp_path: Path) -> None:
    one = evaluate_held_out(untrained, tmp_path / "a", shots=(0, 1), n=4, templates=("equals",), batch_size=1)
    many = evaluate_held_out(untrained, tmp_path / "b", shots=(0, 1), n=4, templates=("equals",), batch_size=32)
    assert one["equals"].to_json() == many["equals"].to_json()
    for path in (tmp_path / "a").glob("*.jsonl"):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()
    evaluate_held_out(untrained, tmp_path / "c", shots=(0,), n=4, templates=("equals",), seed=1)
    assert any(p.read_bytes() != (tmp_path / "c" / p.name).read_bytes() for p in (tmp_path / "a").glob("*.jsonl"))

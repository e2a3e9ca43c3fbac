"""The K-shot harness: prompts, batching, multiple-choice scoring, intervals and the results schema.

A randomly initialised nano GPT is a real model for these purposes: the claims tested are
about the harness (what goes in the prompt, that batching changes nothing, that scores are
the model's log-likelihoods), not about what the model has learned.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.config import preset
from fewshot.errors import FewshotError
from fewshot.eval.harness import (
    SEPARATOR,
    EvalTask,
    build_prompt,
    choose,
    continuation_logprobs,
    draw,
    evaluate,
    evaluate_shots,
    first_line,
    greedy_answers,
    load_tasks,
    markdown_table,
    parse_shots,
    synthetic_tasks,
    task_from_file,
    wilson_interval,
    write_results,
)
from fewshot.inference.lm import LM
from fewshot.model import GPT
from fewshot.tasks.base import Example
from fewshot.tasks.taskfile import Template
from fewshot.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def lm() -> LM:
    torch.manual_seed(0)
    return LM(GPT(preset("nano").replace(context=96)).eval(), ByteTokenizer(), {})


def file_task(n: int = 12, template: str = "Input: {input}\nOutput: {target}") -> EvalTask:
    items = tuple(Example(f"{i}+{i}", str(2 * i)) for i in range(n))
    return EvalTask("add", "exact_match", items, items, Template(template), leave_one_out=True)


def test_demonstrations_never_include_the_query_and_are_deterministic() -> None:
    task = file_task()
    for index, query in enumerate(task.queries):
        demos = draw(task, index, 5, seed=0)
        assert len(demos) == 5 and query not in demos and len(set(demos)) == 5
        assert demos == draw(task, index, 5, seed=0)
    assert [draw(task, i, 5, 0) for i in range(12)] != [draw(task, i, 5, 1) for i in range(12)]
    assert draw(task, 0, 11, 0) and sorted(draw(task, 0, 11, 0), key=str) == sorted(task.queries[1:], key=str)


def test_k_larger_than_the_pool_names_the_task_and_pool_size() -> None:
    with pytest.raises(FewshotError, match=r"task add: 12 shots but its demonstration pool has only 11 examples"):
        draw(file_task(), 0, 12, seed=0)


def test_the_prompt_is_k_solved_examples_then_the_cut_query(lm: LM) -> None:
    task = file_task()
    ids, kept = build_prompt(lm, task, 3, 2, seed=0, budget=1000)
    demos = draw(task, 3, 2, 0)
    expected = SEPARATOR.join([f"Input: {d.input}\nOutput: {d.target}" for d in demos] + ["Input: 3+3\nOutput:"])
    assert kept == 2 and lm.tokenizer.decode(ids) == expected


def test_demonstrations_are_dropped_from_the_end_when_the_context_is_small(lm: LM) -> None:
    task = file_task()
    full, kept = build_prompt(lm, task, 0, 6, seed=0, budget=10_000)
    assert kept == 6
    ids, kept = build_prompt(lm, task, 0, 6, seed=0, budget=len(full) - 1)
    assert kept == 5 and len(ids) < len(full)
    assert lm.tokenizer.decode(ids) == lm.tokenizer.decode(full)[:len(lm.tokenizer.decode(ids)) - len("Input: 0+0\nOutput:")] + "Input: 0+0\nOutput:"
    # The nano model's context is 96 tokens: 8 shots of ~25 tokens cannot fit.
    result = evaluate_shots(lm, task, 8, max_tokens=16)
    assert 0 < result.effective_k < 8 and result.n == 12


def test_batched_greedy_decoding_equals_one_at_a_time_and_lm_generate(lm: LM) -> None:
    prompts = [lm.tokenizer.encode(f"Input: {a}{b}\nOutput:") for a in "abcd" for b in "xyz"]
    prompts.append(lm.tokenizer.encode("a longer prompt, alone in its bucket:"))
    batched = greedy_answers(lm, prompts, max_tokens=8, batch_size=5)
    single = greedy_answers(lm, prompts, max_tokens=8, batch_size=1)
    assert batched == single
    for prompt, answer in zip(prompts[:3], batched):
        text = lm.generate(lm.tokenizer.decode(prompt), max_tokens=8, temperature=0)
        assert answer == first_line(text)


def test_first_line_is_the_text_before_a_newline_or_stop_trimmed() -> None:
    assert first_line(" 124\nQ: next") == "124"
    assert first_line("  7 ###x", stops=("###",)) == "7"
    assert first_line("\n12") == ""


@pytest.mark.parametrize("mc_norm", ["sum", "token", "unconditional"])
def test_multiple_choice_picks_the_best_scored_choice_as_lm_score_sees_it(lm: LM, mc_norm: str) -> None:
    task = EvalTask("mc", "accuracy", (), (), Template("Q: {input}\nA: {target}"))
    item = Example("which?", "a", ("a", "bb bb", "ccc", "a longer choice here"), 0)
    prefix_text = "Q: which?\nA:"
    got = choose(lm, task, lm.tokenizer.encode(prefix_text), item, mc_norm)
    scores = []
    for choice in item.choices:
        score = lm.score(prefix_text, " " + choice)  # separate forwards, no padding
        if mc_norm == "token":
            score /= len(lm.tokenizer.encode(" " + choice))
        elif mc_norm == "unconditional":
            score -= lm.score("A:", " " + choice)
        scores.append(score)
    assert got == max(range(4), key=scores.__getitem__)


def test_right_padded_choices_score_like_separate_forwards(lm: LM) -> None:
    prefix = lm.tokenizer.encode("The answer is")
    continuations = [lm.tokenizer.encode(c) for c in (" yes", " no", " perhaps not at all")]
    batched = continuation_logprobs(lm, prefix, continuations)
    for c, score in zip((" yes", " no", " perhaps not at all"), batched):
        assert score == pytest.approx(lm.score("The answer is", c), abs=1e-4)


def test_a_model_that_knows_the_answer_gets_multiple_choice_right(lm: LM) -> None:
    """A constructed case: bias the output layer towards 'y' so ' yy' beats ' nn' on every item."""
    model = GPT(lm.model.config).eval()
    with torch.no_grad():
        model.head.weight = torch.nn.Parameter(model.head.weight.clone())  # untie, then make 'y' likely
        model.head.weight[ord("y")] += 5 * model.head.weight.abs().max()
        model.norm.weight.fill_(1.0)
    biased = LM(model, lm.tokenizer, {})
    items = tuple(Example(f"q{i}", "yy", ("nn", "yy") if i % 2 else ("yy", "nn"), 1 if i % 2 else 0) for i in range(6))
    task = EvalTask("mc", "accuracy", items, items, Template(), leave_one_out=True)
    # Sanity check of the construction itself, then the harness.
    assert biased.score("Output:", " yy") > biased.score("Output:", " nn")
    assert evaluate_shots(biased, task, 0, mc_norm="sum").correct == 6


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.integers(0, 500))
def test_wilson_interval_is_inside_0_1_and_contains_p(a: int, b: int) -> None:
    correct, n = min(a, b), max(a, b)
    lo, hi = wilson_interval(correct, n)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo - 1e-12 <= correct / n <= hi + 1e-12


def test_wilson_interval_narrows_with_n() -> None:
    widths = [hi - lo for lo, hi in (wilson_interval(n // 2, n) for n in (10, 40, 160, 640))]
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.1
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_results_follow_the_design_schema(lm: LM, tmp_path: Path) -> None:
    path = tmp_path / "add.jsonl"
    path.write_text("\n".join(json.dumps({"input": f"{i}+1", "target": str(i + 1)}) for i in range(6)) + "\n")
    mc = tmp_path / "mc.jsonl"
    mc.write_text("\n".join(json.dumps({"input": f"{i}?", "choices": ["x", "y"], "label": i % 2}) for i in range(5)))
    tasks = [task_from_file(path, n=4), task_from_file(mc)]
    result = evaluate(lm, tasks, [0, 2], seed=0, model="runs/x")
    data = result.to_json()
    assert set(data) == {"model", "tasks"} and data["model"] == "runs/x"
    assert data["tasks"]["add"]["metric"] == "exact_match" and data["tasks"]["mc"]["metric"] == "accuracy"
    for task in data["tasks"].values():
        assert set(task) == {"metric", "shots"} and set(task["shots"]) == {"0", "2"}
        for cell in task["shots"].values():
            assert set(cell) == {"score", "n", "ci95", "effective_k"}
            assert 0 <= cell["ci95"][0] <= cell["score"] <= cell["ci95"][1] <= 1
    assert data["tasks"]["add"]["shots"]["2"]["n"] == 4 and data["tasks"]["mc"]["shots"]["0"]["effective_k"] == 0
    assert result.examples == 18 and result.examples_per_second > 0
    json_path, md_path = write_results([result], tmp_path / "results.json")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(data))
    assert "| runs/x | add | exact_match |" in md_path.read_text() == markdown_table([result]) + "\n"
    write_results([result, result], tmp_path / "two.json")
    assert isinstance(json.loads((tmp_path / "two.json").read_text()), list)


def test_synthetic_tasks_use_their_own_pool_and_format(lm: LM) -> None:
    (task,) = synthetic_tasks("2D+", 5, seed=0)
    assert task.metric == "exact_match" and len(task.queries) == 5
    assert not set(q.input for q in task.queries) & set(p.input for p in task.pool)
    ids, kept = build_prompt(lm, task, 0, 1, seed=0, budget=1000)
    text = lm.tokenizer.decode(ids)
    assert kept == 1 and text.endswith(task.queries[0].input.rstrip()) and text.count("Q: What is") == 2


def test_cli_inputs_are_checked_before_any_work(tmp_path: Path) -> None:
    assert parse_shots("0,1,4,1") == [0, 1, 4]
    for bad in ("", "a", "1,-2"):
        with pytest.raises(FewshotError, match="--shots"):
            parse_shots(bad)
    with pytest.raises(FewshotError, match="nothing to evaluate"):
        load_tasks(None, [], None, 10, 0)
    with pytest.raises(FewshotError, match="exactly once"):
        load_tasks("2D+", [], "no fields", 10, 0)


def test_plots_are_pngs_even_at_perfect_scores(tmp_path: Path) -> None:
    from fewshot.eval.plots import bars_path, plot_icl_curves, plot_task_bars

    cells = {str(k): {"score": s, "n": 30, "ci95": list(wilson_interval(int(s * 30), 30)), "effective_k": k}
             for k, s in ((0, 0.0), (1, 0.5), (4, 1.0))}
    data = [{"model": m, "tasks": {"t": {"metric": "exact_match", "shots": cells}}} for m in ("a", "b")]
    for path in (plot_icl_curves(data, tmp_path / "icl.png"), plot_task_bars(data, bars_path(tmp_path / "icl.png"))):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bars_path(tmp_path / "icl.png") == tmp_path / "icl_bars.png"

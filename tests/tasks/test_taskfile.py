"""Task files and templates: the parser, its one-line errors with file:line, and the template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.errors import FewshotError
from fewshot.tasks.taskfile import (
    DEFAULT_TEMPLATE,
    Example,
    Template,
    parse_task_lines,
    read_task_file,
)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_generation_and_multiple_choice_files_parse(tmp_path: Path) -> None:
    gen = read_task_file(write_lines(tmp_path / "add.jsonl", ['{"input": "1+1", "target": "2"}', "", '{"input": "2+2", "target": "4"}']))
    assert gen.name == "add" and gen.metric == "exact_match" and not gen.multiple_choice
    assert gen.items == (Example("1+1", "2"), Example("2+2", "4"))
    mc = read_task_file(write_lines(tmp_path / "mc.jsonl", ['{"input": "sky?", "choices": ["blue", "green"], "label": 0}']))
    assert mc.metric == "accuracy" and mc.items[0].target == "blue" and mc.items[0].choices == ("blue", "green")


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"target": "x"}', 'missing string field "input"'),
    ('{"input": 3, "target": "x"}', 'missing string field "input"'),
    ('{"input": "x"}', 'missing string field "target"'),
    ('{"input": "x", "target": 4}', 'missing string field "target"'),
    ('{"input": "x", "choices": "ab", "label": 0}', '"choices" must be a non-empty list of strings'),
    ('{"input": "x", "choices": [], "label": 0}', '"choices" must be a non-empty list of strings'),
    ('{"input": "x", "choices": ["a", "b"], "label": "0"}', '"label" must be an integer'),
    ('{"input": "x", "choices": ["a", "b"], "label": true}', '"label" must be an integer'),
    ('{"input": "x", "choices": ["a", "b"], "label": 2}', "label 2 is out of range for 2 choices"),
    ('{"input": "x", "choices": ["a", "b"], "label": -1}', "label -1 is out of range"),
    ('{"input": "x", "choices": ["a"], "label": 0}', "multiple choice example in a file of generation examples (line 1)"),
])
def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "t.jsonl", ['{"input": "ok", "target": "fine"}', line])
    with pytest.raises(FewshotError) as error:
        read_task_file(path)
    text = str(error.value)
    assert text.startswith(f"{path}:2: ") and message in text and "\n" not in text


def test_empty_missing_and_binary_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FewshotError, match="no examples"):
        read_task_file(write_lines(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(FewshotError, match="not found"):
        read_task_file(tmp_path / "absent.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FewshotError, match="not UTF-8"):
        read_task_file(tmp_path / "bin.jsonl")


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
generation = st.builds(Example, text, text)
multiple_choice = st.lists(text, min_size=1, max_size=4).flatmap(
    lambda choices: st.builds(lambda i, label: Example(i, choices[label], tuple(choices), label), text,
                              st.integers(0, len(choices) - 1)))


def dump(item: Example) -> str:
    if item.choices is None:
        return json.dumps({"input": item.input, "target": item.target})
    return json.dumps({"input": item.input, "choices": list(item.choices), "label": item.label}, ensure_ascii=False)


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.lists(generation, min_size=1, max_size=8), st.lists(multiple_choice, min_size=1, max_size=8)))
def test_any_valid_file_round_trips(items: list[Example]) -> None:
    assert parse_task_lines([dump(item) for item in items], "f.jsonl") == tuple(items)


@settings(max_examples=60, deadline=None)
@given(st.lists(generation, min_size=1, max_size=8), st.data())
def test_a_broken_line_anywhere_is_reported_at_its_number(items: list[Example], data: st.DataObject) -> None:
    lines = [dump(item) for item in items]
    where = data.draw(st.integers(0, len(lines)))
    lines.insert(where, data.draw(st.sampled_from(['{"input": "x"', '{"input": 1, "target": "y"}', "null"])))
    with pytest.raises(FewshotError, match=rf"^f\.jsonl:{where + 1}: "):
        parse_task_lines(lines, "f.jsonl")


def test_the_default_template_cuts_before_the_target() -> None:
    template = Template()
    assert template.text == DEFAULT_TEMPLATE
    assert template.solved("2+2", "4") == "Input: 2+2\nOutput: 4"
    assert template.query("2+2") == "Input: 2+2\nOutput:"  # the model writes " 4" itself
    assert template.gap() == " " and template.answer_context() == "Output:"


def test_user_text_with_braces_is_never_formatted() -> None:
    template = Template("Q: {input} {{x}}\nA: {target}!")
    assert template.solved("{target} {0}", "{input}") == "Q: {target} {0} {{x}}\nA: {input}!"
    assert template.query("{0}") == "Q: {0} {{x}}\nA:"


@pytest.mark.parametrize(("text", "message"), [
    ("Q: {input}", "{target}"),
    ("A: {target}", "{input}"),
    ("{target} then {input}", "must come after"),
    ("{input} {input} {target}", "exactly once"),
])
def test_bad_templates_are_refused(text: str, message: str) -> None:
    with pytest.raises(FewshotError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Template(text)

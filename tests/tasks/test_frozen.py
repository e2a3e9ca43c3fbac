"""The frozen held-out set: committed as generated, within its rule, and computed by no training family."""

from __future__ import annotations

import json
import random

import pytest

from fewshot.errors import FewshotError
from fewshot.eval.heldout import FROZEN, check_request
from fewshot.tasks import frozen
from fewshot.tasks.families import training_families
from fewshot.tasks.taskfile import Template, read_task_file
from tests.tasks.test_mixture import development_tasks


def test_the_committed_files_are_the_generators_output_and_the_manifests() -> None:
    manifest = json.loads(frozen.MANIFEST.read_text())
    assert list(manifest["files"]) == [f.name for f in frozen.kept()]  # the author's order, drops removed
    assert manifest["templates"] == frozen.TEMPLATES and manifest["queries"] == frozen.QUERIES
    for family, path in zip(frozen.kept(), frozen.task_files()):
        text = path.read_text(encoding="utf-8")
        assert frozen.digest(text) == manifest["files"][family.name], path.name
        assert text == frozen.render(family), f"{family.name}: the generator no longer writes the committed file"


def test_the_set_meets_its_rule() -> None:
    assert len(frozen.kept()) >= 12 and len(frozen.TEMPLATES) >= 4
    assert set(frozen.DROPPED) <= {f.name for f in frozen.CANDIDATES}
    assert not {f.name for f in frozen.kept()} & {f.name for f in training_families()}
    for path in frozen.task_files():
        task = read_task_file(path)
        inputs = [e.input for e in task.items]
        assert len(inputs) == frozen.QUERIES == len(set(inputs)), path.name
        for example in task.items:
            for text in (example.input, example.target):
                assert text and text == text.strip() and "\n" not in text and "\t" not in text, (path.name, example)
    for text in frozen.TEMPLATES.values():
        Template(text)  # raises unless {input} and {target} each appear once, in that order


def test_asking_for_more_queries_than_the_set_has_is_refused() -> None:
    with pytest.raises(FewshotError, match="200 queries per family"):
        check_request(FROZEN, 201, (0,), list(FROZEN.templates))
    with pytest.raises(FewshotError, match="unknown no-such-format"):
        check_request(FROZEN, 10, (0,), ["no-such-format"])


def answers_on(answer, inputs: list[str]) -> list[str] | None:
    """A frozen task's answers on another task's inputs; None where an input is not of its shape."""
    try:
        return [answer(x) for x in inputs]
    except (ValueError, IndexError, KeyError, ZeroDivisionError, TypeError, AttributeError):
        return None


# Where a frozen function agrees with a training task only on inputs of another shape than its own
# (each checked below on the frozen inputs): a word without the masked letter, a single pair.
OTHER_SHAPE = {
    ("mask_letter", "copy"): lambda x, y: x != y,  # every frozen input holds the letter it masks
    ("pairwise_combine", "two_numbers"): lambda x, y: ", " in x,  # 2-4 pairs, where two_numbers takes one
    ("pairwise_combine", "digit_product"): lambda x, y: ", " in x,
}


def checked_instructions(build, name: str, draws: int = 1500, checked: int = 300) -> set[str]:
    """The instructions of `draws` tasks of a many-task training family (`build(rng) -> Task`),
    after checking the first `checked` of them against both held-out sets: against the
    development set on the inputs both draw, and against the frozen functions on the task's own
    inputs. A family of thousands of tasks can hit a held-out function in one draw, which the
    12 tasks per family of the test above would miss."""
    held_out = development_tasks(6)
    frozen_answers = [(f.name, f.build(random.Random(f"frozen/{f.name}"))[0]) for f in frozen.kept()]
    instructions = set()
    for seed in range(draws):
        rng = random.Random(f"leak/{name}/{seed}")
        task = build(rng)
        instructions.add(task.instruction)
        if seed < checked:
            pairs = task.examples(400, rng)
            answers = dict(pairs)
            for instruction, held_answers in held_out:  # the development set, on the inputs both draw
                shared = answers.keys() & held_answers.keys()
                if len(shared) >= 20:
                    assert any(answers[x] != held_answers[x] for x in shared), (task.instruction, instruction)
            for frozen_name, answer in frozen_answers:  # the frozen set, its functions on the task's inputs
                agrees = answers_on(answer, [x for x, _ in pairs]) == [y for _, y in pairs]
                assert not agrees or (frozen_name, name) in OTHER_SHAPE, (task.instruction, frozen_name)
    return instructions


def test_no_training_task_computes_a_frozen_family() -> None:
    """Every frozen family, in its frozen parameterisation and three others, run on the inputs of
    12 tasks of every training family: none may give that training task's answers on all of them.
    (A frozen function that raises on, or differs on, a training task's inputs is another function.)"""
    frozen_tasks = [(family.name, answer) for family in frozen.kept() for answer in frozen.parameterisations(family)]
    agree = set()
    for family in training_families():
        for seed in range(12):
            rng = random.Random(f"leak/{family.name}/{seed}")
            task = family.build(rng)
            pairs = task.examples(200, rng)
            inputs, targets = [x for x, _ in pairs], [y for _, y in pairs]
            for name, answer in frozen_tasks:
                if answers_on(answer, inputs) == targets:
                    agree.add((name, family.name))
    assert agree <= set(OTHER_SHAPE), agree - set(OTHER_SHAPE)
    by_name = {f.name: f for f in frozen.kept()}
    for (name, _), own_shape in OTHER_SHAPE.items():
        assert all(own_shape(x, y) for x, y in frozen.examples(by_name[name])), name

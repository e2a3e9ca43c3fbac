"""The `pipeline` family: does what its instruction says, is thousands of tasks, computes no held-out family."""

from __future__ import annotations

import math
import random
import re

from hypothesis import given, settings, strategies as st

from fewshot.tasks.families.base import shift
from fewshot.tasks.families.pipelines import MAX_ANSWER, Pipeline, computes_held_out, pipeline
from tests.tasks.test_frozen import checked_instructions

# The instruction's steps, read here from their words alone: (pattern, what it does to a number or a list).
STEPS = [
    (r"add (\d+)", lambda c: lambda x: x + c),
    (r"subtract (\d+)", lambda c: lambda x: x - c),
    (r"multiply by (\d+)", lambda c: lambda x: x * c),
    (r"divide by (\d+), rounding down", lambda c: lambda x: x // c),
    (r"take the remainder after dividing by (\d+)", lambda c: lambda x: x % c),
    (r"add up the digits", lambda: lambda x: sum(int(d) for d in str(abs(x)))),
    (r"reverse the digits", lambda: lambda x: int(str(abs(x))[::-1])),
    (r"count the digits", lambda: lambda x: len(str(abs(x)))),
    (r"double it", lambda: lambda x: x * 2),
    (r"take the distance to (\d+)", lambda c: lambda x: abs(x - c)),
    (r"drop the last digit", lambda: lambda x: x // 10),
    (r"keep the last digit", lambda: lambda x: abs(x) % 10),
    (r"split it into digits", lambda: lambda x: [int(d) for d in str(x)]),
    (r"sort the items", lambda: sorted),
    (r"sort the items from the largest", lambda: lambda xs: sorted(xs)[::-1]),
    (r"reverse the list", lambda: lambda xs: list(reversed(xs))),
    (r"keep the first (\d+)", lambda k: lambda xs: xs[:k]),
    (r"keep the last (\d+)", lambda k: lambda xs: xs[max(len(xs) - k, 0):]),
    (r"drop the first item", lambda: lambda xs: xs[1:]),
    (r"drop the first (\d+) items", lambda k: lambda xs: xs[k:]),
    (r"drop repeated items", lambda: lambda xs: [x for i, x in enumerate(xs) if x not in xs[:i]]),
    (r"move the first item to the end", lambda: lambda xs: xs[1:] + xs[:1]),
    (r"swap the first and last items", lambda: lambda xs: [xs[-1]] + xs[1:-1] + [xs[0]] if len(xs) > 1 else xs),
    (r"keep every other item", lambda: lambda xs: [x for i, x in enumerate(xs) if i % 2 == 0]),
    (r"add (\d+) to every item", lambda c: lambda xs: [x + c for x in xs]),
    (r"multiply every item by (\d+)", lambda c: lambda xs: [x * c for x in xs]),
    (r"keep the items above (\d+)", lambda t: lambda xs: [x for x in xs if x > t]),
    (r"keep the items below (\d+)", lambda t: lambda xs: [x for x in xs if x < t]),
    (r"keep the even items", lambda: lambda xs: [x for x in xs if x % 2 == 0]),
    (r"keep the odd items", lambda: lambda xs: [x for x in xs if x % 2 == 1]),
    (r"add each item to the one before", lambda: lambda xs: [sum(xs[:i]) + x for i, x in enumerate(xs)]),
    (r"shift every letter by (\d+)", lambda c: lambda xs: [shift(x, c) for x in xs]),
    (r"write every letter in capitals", lambda: lambda xs: [x.upper() for x in xs]),
    (r"keep the consonants", lambda: lambda xs: [x for x in xs if x not in "aeiou"]),
    (r"keep the letters after ([a-z])", lambda a: lambda xs: [x for x in xs if x > a]),
    (r"take the first item", lambda: lambda xs: xs[0]),
    (r"take the largest", lambda: max),
    (r"count the items", lambda: len),
    (r"take the middle item", lambda: lambda xs: xs[len(xs) // 2]),
    (r"join them into a word|join the digits", lambda: lambda xs: "".join(map(str, xs))),
    (r"add them up", lambda: sum),
    (r"multiply them", lambda: math.prod),
    (r"take the largest minus the smallest", lambda: lambda xs: max(xs) - min(xs)),
]


def by_hand(instruction: str, x: str) -> str:
    """What the instruction says to answer to x. A list answer is compared without its joiner."""
    steps = instruction.rstrip(".").split(", then ")
    value = int(x) if x.isdigit() else [int(p) if p.isdigit() else p for p in x.replace(",", " ").split()]
    for said in steps:
        matches = [(m, make) for pattern, make in STEPS if (m := re.fullmatch(pattern, said.lower()))]
        assert len(matches) == 1, said
        m, make = matches[0]
        value = make(*(int(g) if g.isdigit() else g for g in m.groups()))(value)
        if value == []:
            return "none"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def test_a_pipeline_does_what_its_instruction_says() -> None:
    for seed in range(600):
        rng = random.Random(f"pipeline/{seed}")
        task = pipeline(rng)
        for x, y in task.examples(10, rng):
            assert " ".join(y.replace(",", " ").split()) == by_hand(task.instruction, x), (task.instruction, x, y)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**9))
def test_every_example_is_one_short_line(seed: int) -> None:
    rng = random.Random(seed)
    task = pipeline(rng)
    examples = task.examples(20, rng)
    for x, y in examples:
        for text in (x, y):
            assert text and text == text.strip() and "\n" not in text
        assert len(y) <= MAX_ANSWER
    assert len({y for _, y in examples}) > 1  # a task with one answer for everything teaches nothing


def test_the_filter_knows_the_held_out_functions_and_lets_neighbours_through() -> None:
    lists = ["3, 1, 4", "1, 5, 9, 2", "6, 5, 3, 5", "8, 9, 7", "9, 3, 2, 3, 8"]
    numbers = ["20", "47", "512", "999", "33"]

    def on_lists(f) -> Pipeline:
        return Pipeline("", lambda x: str(f([int(p) for p in x.split(", ")])), lambda r: "")

    def on_numbers(f) -> Pipeline:
        return Pipeline("", lambda x: str(f(int(x))), lambda r: "")
    assert computes_held_out(on_lists(lambda xs: xs[::-1][0]), lists)       # list_last
    assert computes_held_out(on_lists(lambda xs: sorted(xs)[0]), lists)     # list_min
    assert computes_held_out(on_numbers(lambda x: x + 4 - 9), numbers)      # subtract_constant, by 5
    assert not computes_held_out(on_lists(lambda xs: sorted(xs)[1]), lists)
    assert not computes_held_out(on_lists(lambda xs: xs[-2]), lists)
    assert not computes_held_out(on_numbers(lambda x: 2 * x - 9), numbers)


def test_pipelines_are_thousands_of_tasks_none_of_them_held_out() -> None:
    assert len(checked_instructions(pipeline, "pipeline")) > 1000

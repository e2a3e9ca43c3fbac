"""Pipelines: number and list tasks drawn from a compositional space, the `program` family's
counterpart for numbers and lists.

A task is two to four steps, drawn with their parameters: a number goes through arithmetic and
digit steps ("multiply by 3, then add up the digits"); a list of numbers or letters through list
steps (sort, reverse, keep some, change every item), and may end in one that reduces it to a
single item or number ("keep the items above 4, then add them up"); a number may also be split
into its digits and go on as a list. Tens of thousands of compositions, few of them seen twice,
so what a model learns from them is to read the composition off the examples: Kirsch et al.
(2022)'s lever, on the kinds of answer the string programs never write (numbers computed from
the input, lists rewritten item by item).

Not one of FAMILIES: a mixture takes it with `pipelines=WEIGHT` (fewshot.tasks.meta.mixture).
A pipeline that computes a family of either held-out set on its own inputs is redrawn
(`computes_held_out`), so the split stays by function.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

from fewshot.tasks.families.base import LETTERS, VOWELS, Family, Task, joiner, shift
from fewshot.tasks import frozen

MAX_ANSWER = 16  # characters
Items = list  # of ints, or of one-letter strings
Step = tuple[str, Callable]  # what the instruction says, and what the step does


@dataclass(frozen=True)
class Pipeline:
    instruction: str
    answer: Callable[[str], str]
    draw: Callable[[random.Random], str]


# ---------------------------------------------------------------- steps


def number_step(rng: random.Random) -> Step:
    c, m, d = rng.randint(1, 20), rng.randint(2, 10), rng.randint(2, 9)
    return rng.choice([
        (f"add {c}", lambda x: x + c),
        (f"subtract {c}", lambda x: x - c),
        (f"multiply by {d}", lambda x: x * d),
        (f"divide by {d}, rounding down", lambda x: x // d),
        (f"take the remainder after dividing by {m}", lambda x: x % m),
        ("add up the digits", lambda x: sum(map(int, str(abs(x))))),
        ("reverse the digits", lambda x: int(str(abs(x))[::-1])),
        ("count the digits", lambda x: len(str(abs(x)))),
        ("double it", lambda x: 2 * x),
        (f"take the distance to {c * 5}", lambda x: abs(x - c * 5)),
        ("drop the last digit", lambda x: x // 10),
        ("keep the last digit", lambda x: abs(x) % 10),
    ])


def list_step(rng: random.Random, of_letters: bool, top: int = 9) -> Step:
    """One step on a list of letters, or of numbers up to `top` (thresholds fall inside that range)."""
    k, c, t, after = rng.randint(1, 3), rng.randint(1, 9), rng.randint(1, top - 1), rng.choice(LETTERS[3:21])
    first = "the first item" if k == 1 else f"the first {k} items"
    common: list[Step] = [
        ("sort the items", sorted),
        ("sort the items from the largest", lambda xs: sorted(xs, reverse=True)),
        ("reverse the list", lambda xs: xs[::-1]),
        (f"keep the first {k + 1}", lambda xs: xs[:k + 1]),
        (f"drop {first}", lambda xs: xs[k:]),
        (f"keep the last {k + 1}", lambda xs: xs[-(k + 1):]),
        ("drop repeated items", lambda xs: list(dict.fromkeys(xs))),
        ("move the first item to the end", lambda xs: xs[1:] + xs[:1]),
        ("swap the first and last items", lambda xs: xs[-1:] + xs[1:-1] + xs[:1] if len(xs) > 1 else xs),
        ("keep every other item", lambda xs: xs[::2]),
    ]
    if of_letters:
        return rng.choice(common + [
            (f"shift every letter by {c}", lambda xs: [shift(x, c) for x in xs]),
            ("write every letter in capitals", lambda xs: [x.upper() for x in xs]),
            ("keep the consonants", lambda xs: [x for x in xs if x not in VOWELS]),
            (f"keep the letters after {after}", lambda xs: [x for x in xs if x > after]),
        ])
    return rng.choice(common + [
        (f"add {c} to every item", lambda xs: [x + c for x in xs]),
        (f"multiply every item by {min(c, 5) + 1}", lambda xs: [x * (min(c, 5) + 1) for x in xs]),
        (f"keep the items above {t}", lambda xs: [x for x in xs if x > t]),
        (f"keep the items below {t}", lambda xs: [x for x in xs if x < t]),
        ("keep the even items", lambda xs: [x for x in xs if x % 2 == 0]),
        ("keep the odd items", lambda xs: [x for x in xs if x % 2]),
        ("add each item to the one before", lambda xs: [sum(xs[:i + 1]) for i in range(len(xs))]),
    ])


def reducer(rng: random.Random, of_letters: bool) -> Step:
    both: list[Step] = [
        ("take the first item", lambda xs: xs[0]),
        ("take the largest", max),
        ("count the items", len),
        ("take the middle item", lambda xs: xs[len(xs) // 2]),
    ]
    if of_letters:
        return rng.choice(both + [("join them into a word", "".join)])
    return rng.choice(both + [("add them up", sum), ("multiply them", lambda xs: functools.reduce(int.__mul__, xs, 1)),
                              ("take the largest minus the smallest", lambda xs: max(xs) - min(xs))])


# ---------------------------------------------------------------- inputs and answers


def parse_items(text: str) -> Items:
    """The items of a list input, however it was joined ("3, 1, 4", "3 1 4", "a,b")."""
    parts = text.replace(",", " ").split()
    return [int(p) for p in parts] if all(p.lstrip("-").isdigit() for p in parts) else parts


def number_pipeline(rng: random.Random) -> Pipeline:
    top = rng.choice([20, 99, 999])
    steps = [number_step(rng) for _ in range(rng.choice([2, 2, 3]))]

    def answer(text: str) -> str:
        x = int(text)
        for _, step in steps:
            x = step(x)
        return str(x)
    return Pipeline(_said(steps), answer, lambda r: str(r.randint(0, top)))


def list_pipeline(rng: random.Random) -> Pipeline:
    of_letters, sep, out_sep = rng.random() < 0.35, joiner(rng), joiner(rng)
    top = rng.choice([9, 9, 30, 99])
    steps = [list_step(rng, of_letters, top) for _ in range(rng.choice([1, 2, 2, 3]))]
    reduce = reducer(rng, of_letters) if rng.random() < 0.5 else None

    def draw(r: random.Random) -> str:
        n = r.randint(3, 7)
        items = [r.choice(LETTERS) for _ in range(n)] if of_letters else [r.randint(0, top) for _ in range(n)]
        return sep.join(map(str, items))

    def answer(text: str) -> str:
        xs = parse_items(text)
        for _, step in steps:
            xs = step(xs)
        if not xs:
            return "none"
        return str(reduce[1](xs)) if reduce else out_sep.join(map(str, xs))
    return Pipeline(_said(steps + ([reduce] if reduce else [])), answer, draw)


def digits_pipeline(rng: random.Random) -> Pipeline:
    """A number split into its digits, which go on as a list: "sort its digits, then join them"."""
    steps = [list_step(rng, of_letters=False) for _ in range(rng.choice([1, 2]))]
    reduce = reducer(rng, of_letters=False) if rng.random() < 0.5 else ("join the digits", lambda xs: "".join(map(str, xs)))

    def answer(text: str) -> str:
        xs = [int(d) for d in text]
        for _, step in steps:
            xs = step(xs)
        return str(reduce[1](xs)) if xs else "none"
    return Pipeline(_said([("split it into digits", None)] + steps + [reduce]), answer,
                    lambda r: str(r.randint(100, 99999)))


def _said(steps: list[Step]) -> str:
    text = ", then ".join(says for says, _ in steps)
    return text[:1].upper() + text[1:] + "."


# ---------------------------------------------------------------- the held-out split


@functools.lru_cache(maxsize=1)
def _frozen_answers() -> tuple[Callable[[str], str], ...]:
    """Every frozen family's answer function, in its frozen parameterisation and three others."""
    return tuple(answer for family in frozen.kept() for answer in frozen.parameterisations(family))


def _development_answers(x: str, y: str) -> bool:
    """Whether y is what a list family of the development set answers to x: its last or smallest
    item (list_last, list_min), or its vowels counted (count_vowels). The string families write
    words and the classifiers label words, which a pipeline never writes; subtract_constant is
    checked across inputs (`computes_held_out`)."""
    items = parse_items(x)
    return len(items) > 1 and y in (str(items[-1]), str(min(items))) or y == str(sum(c in VOWELS for c in x))


def computes_held_out(pipeline: Pipeline, inputs: list[str]) -> bool:
    """Whether, on these inputs, the pipeline gives a held-out family's answers: the development
    set's list answers, the input plus or minus one constant (subtract_constant, in any
    parameterisation; adding one is a training family anyway), or a frozen function's."""
    outputs = [pipeline.answer(x) for x in inputs]
    if all(_development_answers(x, y) for x, y in zip(inputs, outputs)):
        return True
    numbers = all(x.isdigit() and y.lstrip("-").isdigit() for x, y in zip(inputs, outputs))
    if numbers and len({int(x) - int(y) for x, y in zip(inputs, outputs)}) == 1:
        return True
    for answer in _frozen_answers():
        try:
            if all(answer(x) == y for x, y in zip(inputs, outputs)):
                return True
        except Exception:  # a frozen function that fails on these inputs is not this pipeline's
            continue
    return False


def telling(pipeline: Pipeline, inputs: list[str]) -> bool:
    """Whether the examples can show what the pipeline does: several different answers, none of
    them half of all, few of them "none", and each one short line (a product of seven two-digit
    items is not)."""
    outputs = [pipeline.answer(x) for x in inputs]
    most = max(outputs.count(y) for y in set(outputs))
    return (len(set(outputs)) >= 3 and most <= len(outputs) // 2 and outputs.count("none") <= len(outputs) // 4
            and max(map(len, outputs)) <= MAX_ANSWER)


def pipeline(rng: random.Random) -> Task:
    kinds = (number_pipeline, list_pipeline, list_pipeline, digits_pipeline)
    probe = random.Random(rng.random())
    while True:
        drawn = rng.choice(kinds)(rng)
        inputs = [drawn.draw(probe) for _ in range(24)]
        if telling(drawn, inputs) and not computes_held_out(drawn, inputs):
            break

    def sample(r: random.Random) -> tuple[str, str]:
        for _ in range(100):  # an input the probes did not try can make a longer answer: draw again
            x = drawn.draw(r)
            if len(y := drawn.answer(x)) <= MAX_ANSWER:
                return x, y
        return inputs[0], drawn.answer(inputs[0])  # a probe's answer, short by `telling`
    return Task("pipeline", drawn.instruction, sample)


def pipeline_family(weight: float) -> Family:
    return Family("pipeline", "list", pipeline, weight=weight)

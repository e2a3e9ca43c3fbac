"""List families: a short list of numbers or letters in."""

from __future__ import annotations

import random
from collections.abc import Callable

from fewshot.tasks.families.base import LETTERS, Task, number_list, joiner

# ---------------------------------------------------------------- list families


def _list_task(family: str, instruction: str, f: Callable[[list], str], rng: random.Random, of_letters: bool = False) -> Task:
    sep = joiner(rng)

    def sample(r):
        items = [r.choice(LETTERS) for _ in range(r.randint(3, 6))] if of_letters else number_list(r)
        return sep.join(map(str, items)), f(items)
    return Task(family, instruction, sample)


def list_first(rng):
    return _list_task("list_first", "The first item.", lambda xs: str(xs[0]), rng, rng.random() < 0.5)


def list_count(rng):
    return _list_task("list_count", "How many items?", lambda xs: str(len(xs)), rng, rng.random() < 0.5)


def list_sum(rng):
    return _list_task("list_sum", "Add the numbers.", lambda xs: str(sum(xs)), rng)


def list_max(rng):
    return _list_task("list_max", "The largest item.", lambda xs: str(max(xs)), rng, rng.random() < 0.5)


def list_sort(rng):
    sep = joiner(rng)
    return _list_task("list_sort", "Sort the items.", lambda xs: sep.join(map(str, sorted(xs))), rng, rng.random() < 0.5)


def list_reverse(rng):
    sep = joiner(rng)
    return _list_task("list_reverse", "Reverse the list.", lambda xs: sep.join(map(str, xs[::-1])), rng, rng.random() < 0.5)


def sequence_next(rng):
    def sample(r):
        step, n = r.choice([-1, 1]) * r.randint(1, 9), r.randint(3, 5)
        start = r.randint(0, 20) if step > 0 else r.randint(50, 99)  # counting down stays above 0
        seq = [start + step * i for i in range(n + 1)]
        return ", ".join(map(str, seq[:-1])), str(seq[-1])
    return Task("sequence_next", "Continue the sequence.", sample)


# Held out ----------------------------------------------------------------


def list_last(rng):
    return _list_task("list_last", "The last item.", lambda xs: str(xs[-1]), rng, rng.random() < 0.5)


def list_min(rng):
    return _list_task("list_min", "The smallest item.", lambda xs: str(min(xs)), rng, rng.random() < 0.5)

"""Classification with arbitrary labels: the label words are drawn per task, only the rule carries over."""

from __future__ import annotations

import random
from collections.abc import Callable

from fewshot.tasks.families.base import (
    LETTERS, VOWELS, Task, word, number, text_input, label_words, _draw_balanced, joiner,
)

# ---------------------------------------------------------------- classification with arbitrary labels


def _classify(family: str, feature: Callable[[str], bool], rng: random.Random, source=None) -> Task:
    yes, no = label_words(rng, 2)
    source = source or text_input(rng)

    def sample(r):
        x = source(r)
        return x, yes if feature(x) else no
    # The instruction names the labels, never the rule: finding the rule is the task.
    return Task(family, f"Label each one {yes} or {no}.", sample)


def classify_first_letter(rng):
    cut = rng.choice(LETTERS[3:23])
    feature = lambda s: s[0] < cut  # noqa: E731
    return _classify("classify_first_letter", feature, rng, lambda r: _draw_balanced(r, feature, word))


def classify_last_letter(rng):
    cut = rng.choice(LETTERS[3:23])
    feature = lambda s: s[-1] < cut  # noqa: E731
    return _classify("classify_last_letter", feature, rng, lambda r: _draw_balanced(r, feature, word))


def classify_vowel_start(rng):
    feature = lambda s: s[0] in VOWELS  # noqa: E731
    return _classify("classify_vowel_start", feature, rng, lambda r: _draw_balanced(r, feature, word))


def classify_contains(rng):
    ch = rng.choice("aeioustrnl")
    feature = lambda s: ch in s  # noqa: E731
    return _classify("classify_contains", feature, rng, lambda r: _draw_balanced(r, feature, word))


def classify_even(rng):
    feature = lambda s: int(s) % 2 == 0  # noqa: E731
    return _classify("classify_even", feature, rng, number)


def classify_case(rng):
    feature = lambda s: s.isupper()  # noqa: E731
    return _classify("classify_case", feature, rng, lambda r: word(r).upper() if r.random() < 0.5 else word(r))


def classify_vowel_count(rng):
    cut = rng.randint(2, 3)
    feature = lambda s: sum(c in VOWELS for c in s) >= cut  # noqa: E731
    return _classify("classify_vowel_count", feature, rng, lambda r: _draw_balanced(r, feature, word))


def classify_order(rng):
    """Two numbers, labelled by which is larger: comparing numbers, with no threshold to find."""
    sep = joiner(rng)

    def feature(s: str) -> bool:
        first, second = map(int, s.replace(",", " ").split())
        return first > second
    return _classify("classify_order", feature, rng,
                     lambda r: _draw_balanced(r, feature, lambda q: f"{number(q)}{sep}{number(q)}"))


def classify_multiple(rng):
    d = rng.choice([3, 4, 5, 10])
    feature = lambda s: int(s) % d == 0  # noqa: E731
    return _classify("classify_multiple", feature, rng, lambda r: _draw_balanced(r, feature, number))


# Held out ----------------------------------------------------------------


def classify_length(rng):
    cut = rng.randint(4, 6)
    feature = lambda s: len(s) > cut  # noqa: E731
    return _classify("classify_length", feature, rng, lambda r: _draw_balanced(r, feature, word))


def classify_threshold(rng):
    cut = rng.randint(200, 800)
    feature = lambda s: int(s) >= cut  # noqa: E731
    return _classify("classify_threshold", feature, rng, lambda r: _draw_balanced(r, feature, number))

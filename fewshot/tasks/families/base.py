"""The pieces every task family is built from: Task, Family, input drawers and rewrites."""

from __future__ import annotations

import functools
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

LETTERS = string.ascii_lowercase
VOWELS = set("aeiou")
WORD_LENGTHS = (3, 8)
VOCABULARY = 4000  # most frequent English words of 3-8 letters (wordfreq, read at run time)

Sampler = Callable[[random.Random], tuple[str, str]]


@dataclass(frozen=True)
class Task:
    family: str
    instruction: str  # a one-line description of this task, shown in some training episodes
    sample: Sampler

    def examples(self, n: int, rng: random.Random) -> list[tuple[str, str]]:
        return [self.sample(rng) for _ in range(n)]


@dataclass(frozen=True)
class Family:
    name: str
    category: str  # string | phrase | number | list | classify | lookup
    build: Callable[[random.Random], Task]
    weight: float = 1.0  # how often an episode shows it, relative to other families


def pick_family(rng: random.Random, families: tuple[Family, ...]) -> Family:
    return rng.choices(families, weights=[f.weight for f in families])[0]


@functools.lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
    """Common English words, most frequent first (wordfreq's list, CC-BY-SA, never committed)."""
    from wordfreq import top_n_list

    low, high = WORD_LENGTHS
    keep = (w for w in top_n_list("en", 12_000) if w.isascii() and w.isalpha() and w.islower() and low <= len(w) <= high)
    return tuple(keep)[:VOCABULARY]


# ---------------------------------------------------------------- inputs


def word(rng: random.Random) -> str:
    return rng.choice(words())


def number(rng: random.Random) -> str:
    """A number of up to three digits, the classifiers' input."""
    return str(rng.randint(0, 999))


def letters(rng: random.Random, low: int = 3, high: int = 7) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(low, high)))


def text_input(rng: random.Random) -> Callable[[random.Random], str]:
    """Each task draws its inputs from real words or from random letter strings."""
    return word if rng.random() < 0.6 else letters


def label_words(rng: random.Random, n: int) -> list[str]:
    """n distinct arbitrary answer words: a model cannot know them before it sees them."""
    pool = words()[:1500] if rng.random() < 0.7 else None
    labels: list[str] = []  # a list, not a set: set order follows PYTHONHASHSEED, not the seed
    while len(labels) < n:
        label = rng.choice(pool) if pool else letters(rng, 2, 5)
        if label not in labels:
            labels.append(label)
    return labels


def number_list(rng: random.Random, low: int = 3, high: int = 6, top: int = 9) -> list[int]:
    return [rng.randint(0, top) for _ in range(rng.randint(low, high))]


def _draw_with(r: random.Random, feature: Callable[[str], bool], source) -> str:
    """An input that has the feature (or, after 50 tries, whatever came)."""
    x = source(r)
    for _ in range(50):
        if feature(x):
            break
        x = source(r)
    return x


def _draw_balanced(r: random.Random, feature: Callable[[str], bool], source) -> str:
    """An input with the feature half the time, so neither label is the safe guess."""
    want = r.random() < 0.5
    x = source(r)
    for _ in range(50):
        if feature(x) == want:
            break
        x = source(r)
    return x


def joiner(rng: random.Random) -> str:
    return rng.choice([" ", ", ", ",", " "])


def shift(ch: str, by: int) -> str:
    return LETTERS[(LETTERS.index(ch) + by) % 26] if ch in LETTERS else ch


# Whole-word rewrites that single families teach and `compose` / `each_word` chain.
def backwards(s: str) -> str:
    return s[::-1]


def doubled(s: str) -> str:
    return "".join(c + c for c in s)


def without_vowels(s: str) -> str:
    return "".join(c for c in s if c not in VOWELS)


def shifted(s: str, by: int) -> str:
    return "".join(shift(c, by) for c in s)


def vowels_made(s: str, vowel: str) -> str:
    return "".join(vowel if c in VOWELS else c for c in s)


def deduped(s: str) -> str:
    return "".join(dict.fromkeys(s))


def ends_swapped(s: str) -> str:
    return s[-1] + s[1:-1] + s[0] if len(s) > 1 else s


def rotated(s: str, by: int) -> str:
    """The first `by` letters moved to the end; a negative `by` moves the last ones to the front."""
    return s[by:] + s[:by]

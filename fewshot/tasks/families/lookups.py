"""Lookups: answers that only the context holds."""

from __future__ import annotations

from fewshot.tasks.families.base import LETTERS, Task, words, word, letters, label_words
from fewshot.tasks.families.strings import _string_task

# ---------------------------------------------------------------- lookups (answers only the context holds)


def lookup_table(rng):
    size = rng.randint(3, 10)
    keys = rng.sample(words()[:2000], size) if rng.random() < 0.6 else [letters(rng, 2, 4) for _ in range(size)]
    values = label_words(rng, size)
    table = dict(zip(keys, values))

    def sample(r):
        k = r.choice(keys)
        return k, table[k]
    return Task("lookup_table", "Use the table.", sample)


def letter_code(rng):
    """A random substitution of the first letter, the rest kept: a table keyed by letter."""
    code = dict(zip(LETTERS, rng.sample(LETTERS, 26)))
    return _string_task("letter_code", "Change the first letter by the code.", lambda s: code[s[0]] + s[1:], rng, word)

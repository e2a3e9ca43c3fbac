"""Phrase families: a few words in; and chains of whole-word rewrites (`compose`, `each_word`)."""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable

from fewshot.tasks.families.base import (
    LETTERS, VOWELS, Task, word, text_input, backwards, doubled, without_vowels, shifted, vowels_made,
    deduped, ends_swapped, rotated,
)

# ---------------------------------------------------------------- phrase families (a few words per input)


def phrase(rng: random.Random, low: int = 2, high: int = 4) -> list[str]:
    return [word(rng) for _ in range(rng.randint(low, high))]


def _phrase_task(family: str, instruction: str, transform: Callable[[list[str]], str], low: int = 2, high: int = 4) -> Task:
    def sample(r):
        ws = phrase(r, low, high)
        return " ".join(ws), transform(ws)
    return Task(family, instruction, sample)


def pair_swap(rng):
    return _phrase_task("pair_swap", "Swap the two words.", lambda ws: f"{ws[1]} {ws[0]}", 2, 2)


def pair_join(rng):
    sep = rng.choice(["", "-", "_", "+", "/"])
    return _phrase_task("pair_join", f"Join the words with {sep!r}.", sep.join, 2, 3)


def longer_word(rng):
    return _phrase_task("longer_word", "Which word is longer?", lambda ws: max(ws, key=len), 2, 2)


def acronym(rng):
    upper = rng.random() < 0.5
    return _phrase_task("acronym", "Write the initials.",
                        lambda ws: "".join(w[0].upper() if upper else w[0] for w in ws), 2, 5)


def word_count(rng):
    return _phrase_task("word_count", "How many words?", lambda ws: str(len(ws)), 1, 7)


def pick_word(rng):
    at, which = rng.choice([(0, "first"), (1, "second"), (-1, "last"), (-2, "second-to-last")])
    return _phrase_task("pick_word", f"Write the {which} word.", lambda ws: ws[at], 3, 5)


def shortest_word(rng):
    return _phrase_task("shortest_word", "Which word is shortest?", lambda ws: min(ws, key=len), 2, 4)


def sort_words(rng):
    descending = rng.random() < 0.3
    return _phrase_task("sort_words", f"Sort the words{' in reverse' * descending}.",
                        lambda ws: " ".join(sorted(ws, reverse=descending)), 3, 4)


def reverse_words(rng):
    return _phrase_task("reverse_words", "Reverse the order of the words.", lambda ws: " ".join(ws[::-1]), 3, 4)


def interleave(rng):
    def letters_in_turn(ws: list[str]) -> str:
        return "".join(a + b for a, b in itertools.zip_longest(ws[0], ws[1], fillvalue=""))
    return _phrase_task("interleave", "Take the letters of the two words in turn.", letters_in_turn, 2, 2)


# Two rewrites in a row: thousands of tasks that no single family above is, so a model has to
# read what the examples do rather than recognise which family they come from. The pool holds
# whole-word rewrites only: no constant is added (a prefix then reversing would be a suffix),
# no part is picked out (reversing then the first letters would be the last letters) and
# nothing is counted, so no composition computes a held-out family (the test suite checks).
Rewrite = tuple[str, Callable[[str], str]]


def _rewrite(rng: random.Random) -> Rewrite:
    """One whole-word rewrite, its parameters drawn: (what the instruction calls it, the rewrite)."""
    kind = rng.randrange(14)
    if kind == 0:
        return "write it backwards", backwards
    if kind == 1:
        return "write it in capitals", str.upper
    if kind == 2:
        return "double every letter", doubled
    if kind == 3:
        return "remove the vowels", without_vowels
    if kind == 4:
        k = rng.randint(1, 3)
        return f"shift every letter {k} places", functools.partial(shifted, by=k)
    if kind == 5:
        vowel = rng.choice(sorted(VOWELS))
        return f"make every vowel {vowel}", functools.partial(vowels_made, vowel=vowel)
    if kind == 6:
        return "sort the letters", lambda s: "".join(sorted(s))
    if kind == 7:
        return "remove repeated letters", deduped
    if kind == 8:
        return "swap the first and last letters", ends_swapped
    if kind == 9:
        k = rng.randint(1, 2)
        return f"move the first {k} to the end", functools.partial(rotated, by=k)
    if kind == 10:
        k = rng.randint(1, 2)
        return f"move the last {k} to the front", functools.partial(rotated, by=-k)
    if kind == 11:
        n = rng.randint(1, 2)
        return f"remove the first {n}", lambda s: s[n:]
    if kind == 12:
        n = rng.randint(1, 2)
        return f"remove the last {n}", lambda s: s[:-n]
    old, new = rng.choice("aeioustrnl"), rng.choice(LETTERS)
    return f"replace {old} with {new}", lambda s: s.replace(old, new)


def _last_rewrite(rng: random.Random) -> Rewrite:
    """The second step may also reshape the word (separators, brackets): nothing reads it after."""
    kind = rng.randrange(5)
    if kind == 0:
        sep = rng.choice(["-", ".", "_", " "])
        return f"separate the letters with {sep!r}", sep.join
    if kind == 1:
        left, right = rng.choice(["()", "[]", "{}", "<>", "**"])
        return f"wrap it in {left}{right}", lambda s: left + s + right
    return _rewrite(rng)


def _redrawn_until_nonempty(family: str, instruction: str, transform: Callable[[str], str],
                            source: Callable[[random.Random], str]) -> Task:
    """Inputs are redrawn until the answer is a non-empty line: removing letters can leave nothing."""
    def sample(r: random.Random) -> tuple[str, str]:
        for _ in range(50):
            x = source(r)
            y = transform(x)
            if y.strip():
                break
        return x, y.strip() or "-"
    return Task(family, instruction, sample)


def compose(rng):
    (first_says, first), (then_says, then) = _rewrite(rng), _last_rewrite(rng)
    return _redrawn_until_nonempty("compose", f"{first_says.capitalize()}, then {then_says}.",
                                   lambda s: then(first(s)), text_input(rng))


def each_word(rng):
    """One rewrite applied to every word of a short phrase."""
    says, rewrite = _rewrite(rng)

    def transform(text: str) -> str:
        return " ".join(rewrite(w) or "-" for w in text.split())
    return _redrawn_until_nonempty("each_word", f"For each word, {says}.", transform,
                                   lambda r: " ".join(phrase(r, 2, 3)))

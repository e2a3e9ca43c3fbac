"""String families: one word in, a rewritten word (or a count or letter) out."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

from fewshot.tasks.families.base import (
    LETTERS, VOWELS, Task, word, letters, text_input, _draw_with, shift, backwards, doubled,
    without_vowels, shifted, vowels_made, deduped, ends_swapped, rotated,
)

# ---------------------------------------------------------------- string families


def _string_task(family: str, instruction: str, transform: Callable[[str], str], rng: random.Random,
                 source: Callable[[random.Random], str] | None = None) -> Task:
    source = source or text_input(rng)

    def sample(r: random.Random) -> tuple[str, str]:
        x = source(r)
        return x, transform(x)
    return Task(family, instruction, sample)


def copy(rng):
    return _string_task("copy", "Write the word again.", lambda s: s, rng)


def reverse(rng):
    return _string_task("reverse", "Write the word backwards.", backwards, rng)


def uppercase(rng):
    return _string_task("uppercase", "Write the word in capital letters.", str.upper, rng)


def alternate_case(rng):
    start = rng.randint(0, 1)
    return _string_task("alternate_case", "Alternate lower and upper case.",
                        lambda s: "".join(c.upper() if (i + start) % 2 else c for i, c in enumerate(s)), rng)


def first_letters(rng):
    n = rng.randint(1, 3)
    return _string_task("first_letters", f"Write the first {n} letter{'s' * (n > 1)}.", lambda s: s[:n], rng)


def drop_first(rng):
    n = rng.randint(1, 2)
    return _string_task("drop_first", f"Remove the first {n} letter{'s' * (n > 1)}.", lambda s: s[n:], rng)


def drop_last(rng):
    n = rng.randint(1, 2)
    return _string_task("drop_last", f"Remove the last {n} letter{'s' * (n > 1)}.", lambda s: s[:-n], rng)


def double_letters(rng):
    return _string_task("double_letters", "Write every letter twice.", doubled, rng)


def remove_vowels(rng):
    return _string_task("remove_vowels", "Remove the vowels.", lambda s: without_vowels(s) or "-", rng)


def only_vowels(rng):
    return _string_task("only_vowels", "Keep only the vowels.",
                        lambda s: "".join(c for c in s if c in VOWELS) or "-", rng)


def sort_letters(rng):
    descending = rng.random() < 0.3
    return _string_task("sort_letters", f"Sort the letters{' in reverse' * descending}.",
                        lambda s: "".join(sorted(s, reverse=descending)), rng)


def caesar(rng):
    k = rng.randint(1, 25)
    return _string_task("caesar", f"Shift every letter {k} places.", functools.partial(shifted, by=k), rng)


def replace_letter(rng):
    old, new = rng.sample("aeioustrnlcdm", 1) + rng.sample(LETTERS, 1)
    while new == old:
        new = rng.choice(LETTERS)
    has_old = lambda s: old in s  # noqa: E731  (mostly words that change, or the task is "copy")
    source = lambda r: word(r) if r.random() < 0.2 else _draw_with(r, has_old, word)  # noqa: E731
    return _string_task("replace_letter", f"Replace {old} with {new}.", lambda s: s.replace(old, new), rng, source)


def prefix(rng):
    p = rng.choice([letters(rng, 1, 3), word(rng)[:4], rng.choice("#@*+~")])
    sep = rng.choice(["", "", "-", " "])
    return _string_task("prefix", f"Put {p} in front.", lambda s: p + sep + s, rng)


def wrap(rng):
    left, right = rng.choice(["()", "[]", "{}", "<>", "**", "__", "''", "||"])
    return _string_task("wrap", f"Wrap the word in {left}{right}.", lambda s: left + s + right, rng)


def spell_out(rng):
    sep = rng.choice([" ", "-", ".", ", ", "_"])
    return _string_task("spell_out", f"Separate the letters with {sep!r}.", lambda s: sep.join(s), rng)


def swap_ends(rng):
    return _string_task("swap_ends", "Swap the first and last letters.", ends_swapped, rng)


def rotate(rng):
    k = rng.randint(1, 3)
    return _string_task("rotate", f"Move the first {k} letters to the end.", functools.partial(rotated, by=k), rng)


def mirror(rng):
    return _string_task("mirror", "Write the word, then the word backwards.", lambda s: s + backwards(s), rng)


def dedupe(rng):
    return _string_task("dedupe", "Remove repeated letters.", deduped, rng)


def length(rng):
    return _string_task("length", "How many letters?", lambda s: str(len(s)), rng)


def count_letter(rng):
    target = rng.choice("aeiourstln")

    def sample(r):
        s = word(r) if r.random() < 0.7 else letters(r, 3, 8)
        return s, str(s.count(target))
    return Task("count_letter", f"How many times does {target} appear?", sample)


def letter_at(rng):
    i = rng.randint(1, 3)
    return _string_task("letter_at", f"Write letter number {i}.", lambda s: s[i - 1], rng)


def _shifted_letter(family: str, which: str, at: int, rng: random.Random) -> Task:
    """The letter k places after (or before) the word's letter `at`, named `which` in the instruction."""
    k = rng.choice([1, 1, 2, -1])
    return _string_task(family, f"Write the letter {abs(k)} {'after' if k > 0 else 'before'} the {which} one.",
                        lambda s: shift(s[at], k), rng)


def next_letter(rng):
    return _shifted_letter("next_letter", "first", 0, rng)


def insert_letter(rng):
    ch, at = rng.choice(LETTERS + "-.*"), rng.randint(1, 2)
    return _string_task("insert_letter", f"Put {ch} after letter {at}.", lambda s: s[:at] + ch + s[at:], rng)


def stutter(rng):
    n, sep = rng.randint(1, 2), rng.choice(["-", "..", " "])
    return _string_task("stutter", "Stutter the start of the word.", lambda s: s[:n] + sep + s, rng)


def capitalise_at(s: str, i: int) -> str:
    return s[:i] + s[i:i + 1].upper() + s[i + 1:]


def upper_letter_at(rng):
    i = rng.randint(1, 2)  # not letter 1: capitalising the first letter is `capitalize`, held out
    return _string_task("upper_letter_at", f"Capitalise letter number {i + 1}.", lambda s: capitalise_at(s, i), rng)


def vowel_swap(rng):
    vowel = rng.choice(sorted(VOWELS))
    return _string_task("vowel_swap", f"Make every vowel {vowel}.", functools.partial(vowels_made, vowel=vowel), rng)


def middle_letter(rng):
    return _string_task("middle_letter", "Write the middle letter.", lambda s: s[len(s) // 2], rng)


def swap_halves(rng):
    return _string_task("swap_halves", "Swap the two halves.", lambda s: s[len(s) // 2:] + s[:len(s) // 2], rng)


# The families above mostly count from the start of the word; these count from its end, so
# that finding "the end of the input" is a skill training asks for as often as finding its start.


def letter_from_end(rng):
    i = rng.randint(2, 3)
    return _string_task("letter_from_end", f"Write letter number {i} from the end.", lambda s: s[-i], rng)


def upper_letter_from_end(rng):
    i = rng.randint(1, 3)
    return _string_task("upper_letter_from_end", f"Capitalise letter number {i} from the end.",
                        lambda s: capitalise_at(s, len(s) - i), rng)


def insert_from_end(rng):
    ch, at = rng.choice(LETTERS + "-.*"), rng.randint(1, 2)
    return _string_task("insert_from_end", f"Put {ch} before the last {at} letter{'s' * (at > 1)}.",
                        lambda s: s[:-at] + ch + s[-at:], rng)


def rotate_back(rng):
    k = rng.randint(1, 3)
    return _string_task("rotate_back", f"Move the last {k} letter{'s' * (k > 1)} to the front.",
                        functools.partial(rotated, by=-k), rng)


def echo_end(rng):
    n, sep = rng.randint(2, 3), rng.choice(["-", "..", " "])
    return _string_task("echo_end", "Echo the end of the word.", lambda s: s + sep + s[-n:], rng)


def shift_last(rng):
    return _shifted_letter("shift_last", "last", -1, rng)


# Skills the families above never asked for on their own: two letters picked at once, counting
# a class of letters rather than one letter, and writing something several times. None of them
# computes a held-out family: the pair is never (first, last), the class is never the vowels,
# and what is repeated is a letter, or the word next to a rewrite of itself that never leaves
# the word as it was.


def two_letters(rng):
    i, j = rng.choice([(i, j) for i in (1, 2, 3) for j in (1, 2, 3) if (i, j) != (1, 1)])
    return _string_task("two_letters", f"Write letter {i}, then letter {j} from the end.", lambda s: s[i - 1] + s[-j], rng)


def count_among(rng):
    chosen = rng.sample(LETTERS, rng.randint(2, 3))
    return _string_task("count_among", f"How many letters are {' or '.join(chosen)}?",
                        lambda s: str(sum(c in chosen for c in s)), rng)


def repeat_letter(rng):
    at, which = rng.choice([(0, "first"), (-1, "last"), (1, "second")])
    k, sep = rng.randint(2, 4), rng.choice(["", "", " ", "-"])
    return _string_task("repeat_letter", f"Write the {which} letter {k} times.", lambda s: sep.join([s[at]] * k), rng)


def repeat_part(rng):
    """The first or last 2-3 letters written 2-4 times: a chunk written k times, never the whole word."""
    n, k, sep = rng.randint(2, 3), rng.randint(2, 4), rng.choice([" ", "", "-", ", "])
    at_end = rng.random() < 0.5
    part = (lambda s: s[-n:]) if at_end else (lambda s: s[:n])
    longer_than_part = functools.partial(_draw_with, feature=lambda s: len(s) > n + 1, source=text_input(rng))
    return _string_task("repeat_part", f"Write the {'last' if at_end else 'first'} {n} letters {k} times.",
                        lambda s: sep.join([part(s)] * k), rng, longer_than_part)


def echo_rewrite(rng):
    """The word, then the word rewritten: only rewrites that change every word, or it would be `repeat_word`."""
    sep = rng.choice([" ", "-", ", ", ""])
    says, rewrite = rng.choice([("in capitals", str.upper), ("with every letter doubled", doubled),
                                ("shifted one place", functools.partial(shifted, by=1)),
                                ("shifted two places", functools.partial(shifted, by=2))])
    return _string_task("echo_rewrite", f"Write the word, then the word {says}.", lambda s: s + sep + rewrite(s), rng)


# Breadth: kinds of task that none of the families above is. A letter read as a number here;
# words picked, sorted and interleaved with the phrase families; numbers padded and written in
# a code with the number families; multiples with the classifiers.


def alphabet_position(rng):
    at, which = rng.choice([(0, "first"), (-1, "last")])
    return _string_task("alphabet_position", f"Where is the {which} letter in the alphabet?",
                        lambda s: str(LETTERS.index(s[at]) + 1), rng)


# Held out ----------------------------------------------------------------


def suffix(rng):
    p = rng.choice([letters(rng, 1, 3), word(rng)[:4], rng.choice("!?#$%")])
    sep = rng.choice(["", "", "-", " "])
    return _string_task("suffix", f"Put {p} at the end.", lambda s: s + sep + p, rng)


def last_letters(rng):
    n = rng.randint(1, 3)
    return _string_task("last_letters", f"Write the last {n} letter{'s' * (n > 1)}.", lambda s: s[-n:], rng)


def capitalize(rng):
    return _string_task("capitalize", "Capitalise the word.", str.capitalize, rng)


def repeat_word(rng):
    k, sep = rng.randint(2, 3), rng.choice([" ", "", "-", ", "])
    return _string_task("repeat_word", f"Write the word {k} times.", lambda s: sep.join([s] * k), rng)


def count_vowels(rng):
    return _string_task("count_vowels", "How many vowels?", lambda s: str(sum(c in VOWELS for c in s)), rng)


def first_and_last(rng):
    return _string_task("first_and_last", "Write the first and the last letter.", lambda s: s[0] + s[-1], rng)

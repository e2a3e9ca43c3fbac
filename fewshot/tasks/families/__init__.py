"""Procedurally generated task families for meta-training in-context learning.

A *family* is a kind of task ("append a suffix"); `family.build(rng)` draws one *task* of
that kind ("append 'ox'"), with its own parameters and an instruction line; `task.sample(rng)`
draws one (input, target) example of it. Parameters (suffixes, shifts, label words, lookup
tables, thresholds) are drawn fresh for every task, so the mixture holds many thousands of
distinct tasks and a model cannot memorise its way through it: to predict the next answer it
has to read the examples in front of it.

Families are split into training and held-out ones *by family* (`HELD_OUT`): the held-out
families never appear in training, in any parameterisation. They were chosen before any
model was trained, to combine primitives that training families teach in ways no training
family does (an appended suffix, when training has prefixes and wrappers; a label decided by
word length, when training labels by other features).

Every input and target is one short line without leading or trailing spaces, so a task fits
any template and exact match on the first line scores it.
"""

from __future__ import annotations

import functools
import itertools
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


# ---------------------------------------------------------------- number families


def _number_task(family: str, instruction: str, f: Callable[[int], int | str], low: int, high: int) -> Task:
    def sample(r):
        x = r.randint(low, high)
        return str(x), str(f(x))
    return Task(family, instruction, sample)


def add_constant(rng):
    c = rng.randint(1, 20)
    top = rng.choice([99, 999])  # three digits too: carrying past the tens is a skill of its own
    return _number_task("add_constant", f"Add {c}.", lambda x: x + c, 0, top)


def multiply(rng):
    c = rng.randint(2, 9)
    return _number_task("multiply", f"Multiply by {c}.", lambda x: x * c, 0, 20)


def modulo(rng):
    m = rng.randint(2, 10)
    return _number_task("modulo", f"The remainder after dividing by {m}.", lambda x: x % m, 0, 99)


def halve(rng):
    d = rng.randint(2, 5)
    return _number_task("integer_divide", f"Divide by {d}, rounding down.", lambda x: x // d, 0, 99)


def digit_sum(rng):
    return _number_task("digit_sum", "Add up the digits.", lambda x: sum(map(int, str(x))), 0, 999)


def reverse_digits(rng):
    return _number_task("reverse_digits", "Reverse the digits.", lambda x: str(x)[::-1], 10, 9999)


def two_sum(rng):
    op = rng.choice(["+", "-", "max", "min"])
    f = {"+": int.__add__, "-": int.__sub__, "max": max, "min": min}[op]
    sep = joiner(rng)
    top_a, top_b = rng.choice([50, 999]), rng.choice([50, 999])  # 873 - 17 is subtraction with a borrow

    def sample(r):
        a, b = r.randint(0, top_a), r.randint(0, top_b)
        return f"{a}{sep}{b}", str(f(a, b))
    return Task("two_numbers", f"Combine the two numbers with {op}.", sample)


def round_down(rng):
    unit = rng.choice([10, 10, 100, 5])
    return _number_task("round_down", f"Round down to a multiple of {unit}.", lambda x: x - x % unit, 0, 999)


def square(rng):
    return _number_task("square", "Square it.", lambda x: x * x, 0, 20)


def digit_product(rng):
    sep = rng.choice([" ", "*", " x ", ","])

    def sample(r):
        a, b = r.randint(0, 9), r.randint(0, 9)
        return f"{a}{sep}{b}", str(a * b)
    return Task("digit_product", "Multiply the digits.", sample)


def zero_pad(rng):
    width = rng.randint(3, 5)
    return _number_task("zero_pad", f"Write it with {width} digits.", lambda x: str(x).zfill(width), 0, 10 ** (width - 1) - 1)


def digits_to_letters(rng):
    """A digit-keyed code drawn per task: a lookup the examples have to reveal, on numbers."""
    code = rng.sample(LETTERS, 10)
    return _number_task("digits_to_letters", "Write each digit as its letter in the code.",
                        lambda x: "".join(code[int(d)] for d in str(x)), 0, 9999)


# Held out ----------------------------------------------------------------


def subtract_constant(rng):
    c = rng.randint(1, 20)
    return _number_task("subtract_constant", f"Subtract {c}.", lambda x: x - c, 20, 999)


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


FAMILIES: tuple[Family, ...] = (
    Family("copy", "string", copy),
    Family("reverse", "string", reverse),
    Family("uppercase", "string", uppercase),
    Family("alternate_case", "string", alternate_case),
    Family("first_letters", "string", first_letters),
    Family("drop_first", "string", drop_first),
    Family("drop_last", "string", drop_last),
    Family("double_letters", "string", double_letters),
    Family("remove_vowels", "string", remove_vowels),
    Family("only_vowels", "string", only_vowels),
    Family("sort_letters", "string", sort_letters),
    Family("caesar", "string", caesar),
    Family("replace_letter", "string", replace_letter),
    Family("prefix", "string", prefix),
    Family("wrap", "string", wrap),
    Family("spell_out", "string", spell_out),
    Family("swap_ends", "string", swap_ends),
    Family("rotate", "string", rotate),
    Family("mirror", "string", mirror),
    Family("dedupe", "string", dedupe),
    Family("length", "string", length),
    Family("count_letter", "string", count_letter),
    Family("letter_at", "string", letter_at),
    Family("next_letter", "string", next_letter),
    Family("insert_letter", "string", insert_letter),
    Family("stutter", "string", stutter),
    Family("upper_letter_at", "string", upper_letter_at),
    Family("vowel_swap", "string", vowel_swap),
    Family("middle_letter", "string", middle_letter),
    Family("swap_halves", "string", swap_halves),
    Family("letter_from_end", "string", letter_from_end),
    Family("upper_letter_from_end", "string", upper_letter_from_end),
    Family("insert_from_end", "string", insert_from_end),
    Family("rotate_back", "string", rotate_back),
    Family("echo_end", "string", echo_end),
    Family("shift_last", "string", shift_last),
    Family("two_letters", "string", two_letters),
    Family("count_among", "string", count_among),
    Family("repeat_letter", "string", repeat_letter),
    Family("repeat_part", "string", repeat_part),
    Family("echo_rewrite", "string", echo_rewrite),
    Family("alphabet_position", "string", alphabet_position),
    Family("pair_swap", "phrase", pair_swap),
    Family("pair_join", "phrase", pair_join),
    Family("longer_word", "phrase", longer_word),
    Family("acronym", "phrase", acronym),
    Family("word_count", "phrase", word_count),
    Family("pick_word", "phrase", pick_word),
    Family("shortest_word", "phrase", shortest_word),
    Family("sort_words", "phrase", sort_words),
    Family("reverse_words", "phrase", reverse_words),
    Family("interleave", "phrase", interleave),
    # Each of these two is hundreds of tasks, not one: shown as often as a few families.
    Family("compose", "string", compose, weight=3.0),
    Family("each_word", "phrase", each_word, weight=2.0),
    Family("add_constant", "number", add_constant),
    Family("multiply", "number", multiply),
    Family("modulo", "number", modulo),
    Family("integer_divide", "number", halve),
    Family("digit_sum", "number", digit_sum),
    Family("reverse_digits", "number", reverse_digits),
    Family("two_numbers", "number", two_sum),
    Family("round_down", "number", round_down),
    Family("square", "number", square),
    Family("digit_product", "number", digit_product),
    Family("zero_pad", "number", zero_pad),
    Family("digits_to_letters", "number", digits_to_letters),
    Family("list_first", "list", list_first),
    Family("list_count", "list", list_count),
    Family("list_sum", "list", list_sum),
    Family("list_max", "list", list_max),
    Family("list_sort", "list", list_sort),
    Family("list_reverse", "list", list_reverse),
    Family("sequence_next", "list", sequence_next),
    Family("classify_first_letter", "classify", classify_first_letter),
    Family("classify_last_letter", "classify", classify_last_letter),
    Family("classify_vowel_start", "classify", classify_vowel_start),
    Family("classify_contains", "classify", classify_contains),
    Family("classify_even", "classify", classify_even),
    Family("classify_case", "classify", classify_case),
    Family("classify_vowel_count", "classify", classify_vowel_count),
    Family("classify_order", "classify", classify_order),
    Family("classify_multiple", "classify", classify_multiple),
    Family("lookup_table", "lookup", lookup_table),
    Family("letter_code", "lookup", letter_code),
    # held out (see HELD_OUT)
    Family("suffix", "string", suffix),
    Family("last_letters", "string", last_letters),
    Family("capitalize", "string", capitalize),
    Family("repeat_word", "string", repeat_word),
    Family("first_and_last", "string", first_and_last),
    Family("subtract_constant", "number", subtract_constant),
    Family("count_vowels", "string", count_vowels),
    Family("list_last", "list", list_last),
    Family("list_min", "list", list_min),
    Family("classify_length", "classify", classify_length),
    Family("classify_threshold", "classify", classify_threshold),
)

HELD_OUT: frozenset[str] = frozenset({
    "suffix", "last_letters", "capitalize", "repeat_word", "first_and_last", "subtract_constant",
    "count_vowels", "list_last", "list_min", "classify_length", "classify_threshold",
})


def training_families() -> tuple[Family, ...]:
    return tuple(f for f in FAMILIES if f.name not in HELD_OUT)


def held_out_families() -> tuple[Family, ...]:
    return tuple(f for f in FAMILIES if f.name in HELD_OUT)

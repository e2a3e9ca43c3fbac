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

from fewshot.tasks.families.base import (
    LETTERS, VOWELS, Task, Family, pick_family, words, letters, label_words,
)
from fewshot.tasks.families.strings import (
    copy, reverse, uppercase, alternate_case, first_letters, drop_first, drop_last, double_letters,
    remove_vowels, only_vowels, sort_letters, caesar, replace_letter, prefix, wrap, spell_out,
    swap_ends, rotate, mirror, dedupe, length, count_letter, letter_at, next_letter, insert_letter,
    stutter, upper_letter_at, vowel_swap, middle_letter, swap_halves, letter_from_end,
    upper_letter_from_end, insert_from_end, rotate_back, echo_end, shift_last, two_letters, count_among,
    repeat_letter, repeat_part, echo_rewrite, alphabet_position, suffix, last_letters, capitalize,
    repeat_word, count_vowels, first_and_last,
)
from fewshot.tasks.families.phrases import (
    pair_swap, pair_join, longer_word, acronym, word_count, pick_word, shortest_word, sort_words,
    reverse_words, interleave, compose, each_word,
)
from fewshot.tasks.families.numbers import (
    add_constant, multiply, modulo, halve, digit_sum, reverse_digits, two_sum, round_down, square,
    digit_product, zero_pad, digits_to_letters, subtract_constant,
)
from fewshot.tasks.families.lists import (
    list_first, list_count, list_sum, list_max, list_sort, list_reverse, sequence_next, list_last,
    list_min,
)
from fewshot.tasks.families.classify import (
    classify_first_letter, classify_last_letter, classify_vowel_start, classify_contains, classify_even,
    classify_case, classify_vowel_count, classify_order, classify_multiple, classify_length,
    classify_threshold,
)
from fewshot.tasks.families.lookups import lookup_table, letter_code
# Re-exported: the mixture, the held-out tasks and the GINC and bursty generators draw from these.
__all__ = ["FAMILIES", "HELD_OUT", "LETTERS", "VOWELS", "Family", "Task", "held_out_families", "label_words", "letters",
           "pick_family", "training_families", "words"]


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

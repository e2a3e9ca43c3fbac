"""GPT-3's word scrambling tasks (Brown et al. 2020, §3.9.2), generated on the fly.

Every task shows a distorted word and asks for the original, with the one instruction that
Appendix G uses for all of them (G.26 symbol insertion, G.27 reversed words):

    Please unscramble the letters into a word, and write that word:
    r e!c.i p r o.c a/l = reciprocal

The words come from the installed `wordfreq` package at run time (its list is CC-BY-SA, so
the repository holds no copy): the 10,000 most frequent English words of 4 to 15 letters, as
§3.9.2 takes the top 10,000 words of that length from a frequency list.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
import string
from dataclasses import dataclass

from fewshot.tasks.base import Example

INSTRUCTION = "Please unscramble the letters into a word, and write that word:"
WORD_LENGTHS = (4, 15)
VOCABULARY = 10_000
INSERTED = string.punctuation + " "   # RI inserts "a random punctuation or space character"
_TRIES = 100


@functools.lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
    """The task vocabulary, most frequent first; read once per process."""
    from wordfreq import top_n_list

    low, high = WORD_LENGTHS
    # 20,000 raw entries leave well over 10,000 after the filter (names, numbers, short words go)
    keep = (w for w in top_n_list("en", 20_000) if w.isascii() and w.isalpha() and w.islower() and low <= len(w) <= high)
    return tuple(keep)[:VOCABULARY]


def _shuffled(rng: random.Random, letters: str) -> str:
    chars = list(letters)
    rng.shuffle(chars)
    return "".join(chars)


def cycle(rng: random.Random, word: str) -> str:
    """CL: rotate the letters ("lyinevitab" = inevitably)."""
    k = rng.randrange(1, len(word))
    return word[k:] + word[:k]


def anagram(keep: int):
    """A1 / A2: shuffle all but the first and last `keep` letters ("criroptuon" = corruption)."""
    def scramble(rng: random.Random, word: str) -> str:
        return word[:keep] + _shuffled(rng, word[keep:-keep]) + word[-keep:]
    return scramble


def insert(rng: random.Random, word: str) -> str:
    """RI: one random punctuation or space character between each pair of letters (G.26)."""
    return word[0] + "".join(rng.choice(INSERTED) + letter for letter in word[1:])


def reverse(rng: random.Random, word: str) -> str:
    """RW: the word backwards ("taefed" = defeat)."""
    return word[::-1]


SCRAMBLES = {"CL": cycle, "A1": anagram(1), "A2": anagram(2), "RI": insert, "RW": reverse}


def scramble_word(rng: random.Random, kind: str, vocabulary: Sequence[str]) -> tuple[str, str]:
    """(scrambled, word): a word of `vocabulary` under scramble `kind` (a key of SCRAMBLES).

    A scramble equal to its word (a palindrome reversed, a 5-letter word under A2, an unlucky
    shuffle) would be a free answer, so another word is drawn: most words can be scrambled.
    """
    scramble = SCRAMBLES[kind]
    for _ in range(_TRIES):
        word = rng.choice(vocabulary)
        scrambled = scramble(rng, word)
        if scrambled != word:
            break
    return scrambled, word


@dataclass(frozen=True)
class ScrambleTask:
    kind: str  # a key of SCRAMBLES

    def example(self, rng: random.Random) -> Example:
        scrambled, word = scramble_word(rng, self.kind, words())
        return Example(f"{INSTRUCTION}\n{scrambled} =", word)


WORDSCRAMBLE_TASKS: dict[str, ScrambleTask] = {name: ScrambleTask(name) for name in SCRAMBLES}

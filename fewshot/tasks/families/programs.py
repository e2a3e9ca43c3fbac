"""Programs: FlashFill-style string programs (Gulwani 2011; RobustFill's DSL), tens of thousands of
distinct tasks before their parameters.

The answer joins two or three pieces. Each piece is a part of the input (its first or last k
letters, all but those, letter i from either end, or the whole word under one of `compose`'s
rewrites) or a constant, and each part may be rewritten again (capitals, backwards, doubled,
shifted). No single program is worth memorising, so the model has to read from the shots which
pieces the answer is made of: Kirsch et al. (2022) found that the number of distinct training
tasks, not the number of examples, makes a meta-learner generalise.

Not one of FAMILIES: a mixture takes it with `programs=WEIGHT` (fewshot.tasks.meta.mixture), so
the default mixture stays as it was measured. A program that computes a held-out family in any
parameterisation is redrawn (`computes_held_out`), so the split stays by function.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

from fewshot.tasks.families.base import Family, Task, backwards, doubled, letters, shifted, text_input, word
from fewshot.tasks.families.phrases import Rewrite, _redrawn_until_nonempty, _rewrite


def input_piece(rng: random.Random) -> Rewrite:
    """A part of the input word, then possibly a rewrite of that part."""
    kind, k = rng.randrange(7), rng.randint(1, 3)
    if kind == 6:
        if rng.random() < 0.4:
            return "the word", lambda s: s
        says, rewrite = _rewrite(rng)
        return f"the word ({says})", rewrite
    says, part = [
        (f"the first {k + 1} letters", lambda s: s[:k + 1]),
        (f"the last {k + 1} letters", lambda s: s[-(k + 1):]),
        (f"the word without its first {k}", lambda s: s[k:]),
        (f"the word without its last {k}", lambda s: s[:-k]),
        (f"letter {k}", lambda s: s[k - 1:k]),
        (f"letter {k} from the end", lambda s: s[-k] if k <= len(s) else ""),
    ][kind]
    if rng.random() < 0.5:
        return says, part
    then_says, then = rng.choice([("in capitals", str.upper), ("backwards", backwards), ("doubled", doubled),
                                  ("shifted by one", functools.partial(shifted, by=1))])
    return f"{says} {then_says}", lambda s: then(part(s))


def constant_piece(rng: random.Random) -> Rewrite:
    text = rng.choice([rng.choice("-_.:/!#+"), letters(rng, 1, 2), word(rng)[:3], rng.choice(["()", "--", ". "])])
    return repr(text), lambda s: text


@functools.lru_cache(maxsize=1)
def probe_words() -> tuple[str, ...]:
    rng = random.Random("probe words")
    return tuple(sorted({word(rng) for _ in range(40)} | {letters(rng, 3, 8) for _ in range(20)}))


def computes_held_out(answer: Callable[[str], str]) -> bool:
    """Whether `answer` is, on a fixed set of probe words, some parameterisation of a held-out
    string family: suffix, last_letters, capitalize, repeat_word or first_and_last (the others
    answer with numbers, lists or labels, which no program writes)."""
    pairs = [(x, answer(x)) for x in probe_words()]
    tails = {y[len(x):] for x, y in pairs}

    def repeated(x: str, y: str) -> bool:  # x, k times, joined by one separator
        for k in (2, 3):
            gap, rest = divmod(len(y) - k * len(x), k - 1)
            if gap >= 0 and not rest and y == y[len(x):len(x) + gap].join([x] * k):
                return True
        return False
    return (all(y.startswith(x) for x, y in pairs) and len(tails) == 1
            or any(all(y == x[-n:] for x, y in pairs) for n in range(1, 9))
            or all(y == x[:1].upper() + x[1:] for x, y in pairs)
            or all(repeated(x, y) for x, y in pairs)
            or all(y == x[0] + x[-1] for x, y in pairs))


def program(rng: random.Random) -> Task:
    while True:
        n = rng.choice([2, 2, 3])
        pieces = [input_piece(rng)] + [input_piece(rng) if rng.random() < 0.6 else constant_piece(rng)
                                       for _ in range(n - 1)]
        rng.shuffle(pieces)
        parts = [part for _, part in pieces]

        def answer(s: str, parts=parts) -> str:
            return "".join(part(s) for part in parts)
        if not computes_held_out(answer):
            break
    instruction = "Write " + ", then ".join(says for says, _ in pieces) + "."
    return _redrawn_until_nonempty("program", instruction, answer, text_input(rng))


def program_family(weight: float) -> Family:
    return Family("program", "string", program, weight=weight)

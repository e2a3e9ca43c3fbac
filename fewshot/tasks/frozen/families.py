"""Frozen evaluation set of few-shot task families, written blind.

This file was written from a short description of the task style alone ("short string, number and list
tasks with one-line answers, in several formats"), without opening, reading or searching any other file
of the project. Its purpose is to estimate how well a model generalises to task families that its
authors never saw.

Each Family.build(rng) draws one concrete task (all of its parameters come from rng) and returns
(answer, draw): answer(x) computes the target for an input x, draw(rng) produces an input.

CANDIDATES lists 22 families in the order in which they were written. That order is fixed and meaningful
(an automatic filter may later drop some candidates); do not reorder it. TEMPLATES holds four prompt
formats, each containing "{input}" once, followed by "{target}" once.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

Answer = Callable[[str], str]          # input -> target
Draw = Callable[[random.Random], str]  # draws one input


@dataclass(frozen=True)
class Family:
    name: str      # snake_case, unique
    kind: str      # "string" | "number" | "list" | "classify" | "mixed"
    build: Callable[[random.Random], tuple[Answer, Draw]]  # one concrete task: its answer function and its input drawer


VOWELS = "aeiou"
CONSONANTS = "bcdfghjklmnpqrstvwxyz"
LETTERS = "abcdefghijklmnopqrstuvwxyz"

WORDS: tuple[str, ...] = tuple("""
apple bread chair dance eagle flame grape house juice knife lemon magic night ocean paper queen river snake
table uncle voice water youth zebra angle beach candy dream earth field ghost heart image jelly koala light
money north olive piano quiet robot sugar tiger unity valley wagon yellow badge cabin daisy elbow fancy giant
honey index jolly kite lucky melon noble orbit pearl quick radio salad tooth urban vivid whale actor blank
cloud drink enjoy fresh glove hobby igloo jumbo karma latch mango nurse order plant quilt ranch shelf train
usual vapor wheat bake cat dog sun pen cup map sky box fish tree bird book door frog goat hand king lamp milk
nest owl pig rain sand ship star toy van wolf yarn zoo arm bag bed bus car cow egg fan gum hat ink jam key leg
mud net oak pot rat sea tea web yak ant bee bat fox hen jar kit log mop nut pan rug sock tent vest wig ball
cake desk farm gift hill iron jeep kiss leaf mask nail oven pink rope seed tube vase wind yard bottle carpet
garden letter pocket rabbit silver sister window butter candle dinner flower forest jacket market orange
pencil rocket summer winter
""".split())

# Neutral label words for classification families (drawn per task, so the model cannot know them in advance).
LABELS: tuple[str, ...] = (
    "alpha", "beta", "gamma", "delta", "red", "blue", "green", "amber", "north", "south", "stone", "cloud",
    "tiger", "lamp", "moon", "sand", "plum", "fox", "gold", "mint", "zap", "blip", "kora", "vex",
)


def _pseudo(rng: random.Random, lo: int, hi: int) -> str:
    """A pronounceable-ish random lowercase string of length lo..hi (about 40% vowels)."""
    return "".join(rng.choice(VOWELS) if rng.random() < 0.4 else rng.choice(CONSONANTS)
                   for _ in range(rng.randint(lo, hi)))


# Rotate the letters of a pseudo-word left (or right) by a fixed amount: "planet" -> "lanetp".
def _rotate_letters(rng: random.Random) -> tuple[Answer, Draw]:
    k = rng.randint(1, 3) * rng.choice((1, -1))

    def answer(x: str) -> str:
        if not x.isalpha():
            raise ValueError(x)
        s = k % len(x)
        return x[s:] + x[:s]

    def draw(r: random.Random) -> str:
        return _pseudo(r, 5, 9)
    return answer, draw


# Replace every occurrence of one letter with a symbol: letter "a", symbol "#": "banana" -> "b#n#n#".
def _mask_letter(rng: random.Random) -> tuple[Answer, Draw]:
    letter, sym = rng.choice(LETTERS), rng.choice("*#_+=@%")

    def answer(x: str) -> str:
        if not x.isalpha():
            raise ValueError(x)
        return x.replace(letter, sym)

    def draw(r: random.Random) -> str:
        w = list(_pseudo(r, 4, 8))
        for _ in range(r.randint(1, 2)):
            w.insert(r.randint(0, len(w)), letter)
        return "".join(w)
    return answer, draw


# Run-length encode a string of letter runs: "aaabcc" -> "a3b1c2" (or "3a1b2c"; ones possibly omitted).
def _run_length(rng: random.Random) -> tuple[Answer, Draw]:
    count_first, omit_one = rng.random() < 0.5, rng.random() < 0.5

    def answer(x: str) -> str:
        if not x.isalpha():
            raise ValueError(x)
        runs: list[list] = []
        for ch in x:
            if runs and runs[-1][0] == ch:
                runs[-1][1] += 1
            else:
                runs.append([ch, 1])
        nums = ["" if omit_one and n == 1 else str(n) for _, n in runs]
        return "".join(n + c if count_first else c + n for (c, _), n in zip(runs, nums))

    def draw(r: random.Random) -> str:
        out = ""
        for _ in range(r.randint(2, 5)):
            c = r.choice([c for c in LETTERS if not out or c != out[-1]])
            out += c * r.randint(1, 4)
        return out
    return answer, draw


# Delete all vowels (or all consonants), then maybe reverse what is left: "robin" -> "nbr".
def _strip_class(rng: random.Random) -> tuple[Answer, Draw]:
    drop, rev = rng.choice((VOWELS, CONSONANTS)), rng.random() < 0.5

    def answer(x: str) -> str:
        if not x.isalpha():
            raise ValueError(x)
        kept = "".join(c for c in x if c not in drop)
        return kept[::-1] if rev else kept

    def draw(r: random.Random) -> str:
        while True:
            w = _pseudo(r, 5, 9)
            if any(c in VOWELS for c in w) and any(c in CONSONANTS for c in w):
                return w
    return answer, draw


# Splice two words: the first k letters of one word and the last m letters of the other: "cat dog" -> "caog".
def _splice_pair(rng: random.Random) -> tuple[Answer, Draw]:
    k, m, swap = rng.randint(1, 3), rng.randint(1, 3), rng.random() < 0.5

    def answer(x: str) -> str:
        a, b = x.split(" ")
        if swap:
            a, b = b, a
        return a[:k] + b[-m:]

    def draw(r: random.Random) -> str:
        return f"{r.choice(WORDS)} {r.choice(WORDS)}"
    return answer, draw


# Shift each letter forward (or backward) in the alphabet by the number given in the input: "3 cab" -> "fde".
def _shift_by_given(rng: random.Random) -> tuple[Answer, Draw]:
    sign, num_first = rng.choice((1, -1)), rng.random() < 0.5

    def answer(x: str) -> str:
        p, q = x.split(" ")
        n, w = (int(p), q) if num_first else (int(q), p)
        if not w.isalpha():
            raise ValueError(x)
        return "".join(chr((ord(c) - 97 + sign * n) % 26 + 97) for c in w)

    def draw(r: random.Random) -> str:
        n, w = str(r.randint(1, 9)), _pseudo(r, 3, 6)
        return f"{n} {w}" if num_first else f"{w} {n}"
    return answer, draw


# Repeat a short string as many times as the number says (plus a fixed extra), joined: "ab 3" -> "ab-ab-ab".
def _repeat_by_count(rng: random.Random) -> tuple[Answer, Draw]:
    sep, extra = rng.choice(("", "-", ".", "+", "/")), rng.choice((0, 0, 1))

    def answer(x: str) -> str:
        w, n = x.split(" ")
        if not w.isalpha():
            raise ValueError(x)
        return sep.join([w] * (int(n) + extra))

    def draw(r: random.Random) -> str:
        return f"{_pseudo(r, 2, 4)} {r.randint(1, 5)}"
    return answer, draw


# Write each letter as its position in the alphabet (from 1 or from 0), joined: "cab" -> "3-1-2".
def _letter_positions(rng: random.Random) -> tuple[Answer, Draw]:
    base, sep = rng.choice((0, 1)), rng.choice((" ", ",", "-", ".", ", "))

    def answer(x: str) -> str:
        if not (x.isalpha() and x.islower()):
            raise ValueError(x)
        return sep.join(str(ord(c) - 97 + base) for c in x)

    def draw(r: random.Random) -> str:
        return "".join(r.choice(LETTERS) for _ in range(r.randint(3, 5)))
    return answer, draw


# Count how often one letter occurs in a string over a small alphabet: letter "b": "abcbba" -> "3".
def _count_letter(rng: random.Random) -> tuple[Answer, Draw]:
    alphabet = rng.sample(LETTERS, rng.randint(3, 4))
    target = alphabet[0]

    def answer(x: str) -> str:
        if not x or set(x) - set(alphabet):
            raise ValueError(x)
        return str(x.count(target))

    def draw(r: random.Random) -> str:
        return "".join(r.choice(alphabet) for _ in range(r.randint(5, 12)))
    return answer, draw


# Apply a fixed affine map a*x + b to a number: a=3, b=-4: "10" -> "26".
def _affine_map(rng: random.Random) -> tuple[Answer, Draw]:
    a, b = rng.randint(2, 6), rng.choice([i for i in range(-20, 21) if i])

    def answer(x: str) -> str:
        if not x.isdigit():
            raise ValueError(x)
        return str(a * int(x) + b)

    def draw(r: random.Random) -> str:
        return str(r.randint(0, 1999))
    return answer, draw


# Sort the digits of a number ascending or descending, maybe dropping repeated digits: "5313" -> "135".
def _sort_digits(rng: random.Random) -> tuple[Answer, Draw]:
    desc, dedupe = rng.random() < 0.5, rng.random() < 0.5

    def answer(x: str) -> str:
        if not x.isdigit():
            raise ValueError(x)
        return "".join(sorted(set(x) if dedupe else x, reverse=desc))

    def draw(r: random.Random) -> str:
        n = r.randint(4, 7)
        return str(r.randint(10 ** (n - 1), 10 ** n - 1))
    return answer, draw


# Round a number down, up or to the nearest multiple of m (halves up): m=7, nearest: "40" -> "42".
def _round_to_multiple(rng: random.Random) -> tuple[Answer, Draw]:
    m, mode = rng.choice((4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 50)), rng.choice(("down", "up", "nearest"))

    def answer(x: str) -> str:
        if not x.isdigit():
            raise ValueError(x)
        n = int(x)
        if mode == "down":
            return str(n // m * m)
        if mode == "up":
            return str(-(-n // m) * m)
        return str((n + m // 2) // m * m)

    def draw(r: random.Random) -> str:
        return str(r.randint(0, 4999))
    return answer, draw


# Combine two numbers with a fixed operation (sum, difference, product, remainder, 2a+b, |a-b|): "7, 3" -> "21".
def _pair_arithmetic(rng: random.Random) -> tuple[Answer, Draw]:
    ops: tuple[Callable[[int, int], int], ...] = (
        lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b,
        lambda a, b: a % b, lambda a, b: 2 * a + b, lambda a, b: abs(a - b))
    op, sep = rng.choice(ops), rng.choice((", ", " ", " & ", " and "))

    def answer(x: str) -> str:
        a, b = x.split(sep)
        return str(op(int(a), int(b)))

    def draw(r: random.Random) -> str:
        return f"{r.randint(1, 60)}{sep}{r.randint(1, 60)}"
    return answer, draw


# Add a number to its digit reversal (or take the absolute difference): "120" -> "141" (120 + 21).
def _add_reverse(rng: random.Random) -> tuple[Answer, Draw]:
    subtract = rng.random() < 0.5

    def answer(x: str) -> str:
        if not x.isdigit():
            raise ValueError(x)
        n, rev = int(x), int(x[::-1])
        return str(abs(n - rev) if subtract else n + rev)

    def draw(r: random.Random) -> str:
        return str(r.randint(10, 9999))
    return answer, draw


# Keep the list items above (or below) a threshold, in order; a fixed word if none: t=20: "3, 28, 1, 42" -> "28, 42".
def _filter_threshold(rng: random.Random) -> tuple[Answer, Draw]:
    t, above = rng.randint(10, 40), rng.random() < 0.5
    empty = rng.choice(("none", "empty", "nil", "nothing"))

    def answer(x: str) -> str:
        xs = [int(v) for v in x.split(", ")]
        return ", ".join(str(v) for v in xs if (v > t if above else v < t)) or empty

    def draw(r: random.Random) -> str:
        return ", ".join(str(r.randint(0, 50)) for _ in range(r.randint(3, 7)))
    return answer, draw


# Running sum / running max / running min / adjacent differences of a bracketed list: "[4, 2, 5]" -> "[4, 6, 11]".
def _running_op(rng: random.Random) -> tuple[Answer, Draw]:
    op = rng.choice(("sum", "max", "min", "diff"))
    step: dict[str, Callable[[int, int], int]] = {"sum": lambda a, b: a + b, "max": max, "min": min}

    def answer(x: str) -> str:
        if not (x.startswith("[") and x.endswith("]")):
            raise ValueError(x)
        xs = [int(v) for v in x[1:-1].split(", ")]
        if op == "diff":
            out = [b - a for a, b in zip(xs, xs[1:])]
        else:
            out = [xs[0]]
            for v in xs[1:]:
                out.append(step[op](out[-1], v))
        return "[" + ", ".join(map(str, out)) + "]"

    def draw(r: random.Random) -> str:
        return "[" + ", ".join(str(r.randint(0, 30)) for _ in range(r.randint(3, 6))) + "]"
    return answer, draw


# The k-th smallest (or k-th largest) number of a space-separated list: k=2, smallest: "7 3 9 1 4" -> "3".
def _kth_order(rng: random.Random) -> tuple[Answer, Draw]:
    k, largest = rng.randint(1, 3), rng.random() < 0.5

    def answer(x: str) -> str:
        xs = sorted(int(v) for v in x.split(" "))
        if len(xs) < k:
            raise IndexError(x)
        return str(xs[-k] if largest else xs[k - 1])

    def draw(r: random.Random) -> str:
        return " ".join(str(r.randint(0, 99)) for _ in range(r.randint(4, 7)))
    return answer, draw


# Combine each pair of numbers with a fixed operation (sum, product, max, |a-b|): "4 7, 2 9" -> "11, 11".
def _pairwise_combine(rng: random.Random) -> tuple[Answer, Draw]:
    ops: tuple[Callable[[int, int], int], ...] = (
        lambda a, b: a + b, lambda a, b: a * b, max, lambda a, b: abs(a - b))
    op = rng.choice(ops)

    def answer(x: str) -> str:
        pairs = [p.split(" ") for p in x.split(", ")]
        return ", ".join(str(op(int(a), int(b))) for a, b in pairs)

    def draw(r: random.Random) -> str:
        return ", ".join(f"{r.randint(0, 20)} {r.randint(0, 20)}" for _ in range(r.randint(2, 4)))
    return answer, draw


# Join the first (or last) letters of a list of words, maybe in reverse order: "cat, dog, sun" -> "cds".
def _word_initials(rng: random.Random) -> tuple[Answer, Draw]:
    last, rev = rng.random() < 0.5, rng.random() < 0.5

    def answer(x: str) -> str:
        ws = x.split(", ")
        if rev:
            ws = ws[::-1]
        return "".join(w[-1] if last else w[0] for w in ws)

    def draw(r: random.Random) -> str:
        return ", ".join(r.sample(WORDS, r.randint(3, 4)))
    return answer, draw


# Classify: does the pseudo-word contain a fixed letter? (two drawn labels, balanced).
def _classify_contains_letter(rng: random.Random) -> tuple[Answer, Draw]:
    letter = rng.choice(LETTERS)
    yes, no = rng.sample(LABELS, 2)

    def answer(x: str) -> str:
        if not x.isalpha():
            raise ValueError(x)
        return yes if letter in x else no

    def draw(r: random.Random) -> str:
        w = _pseudo(r, 4, 8)
        while letter in w:
            w = _pseudo(r, 4, 8)
        if r.random() < 0.5:
            i = r.randint(0, len(w))
            w = w[:i] + letter + w[i:]
        return w
    return answer, draw


# Classify: is the sum of a ";"-separated list above a fixed threshold? (two drawn labels, balanced).
def _classify_list_sum(rng: random.Random) -> tuple[Answer, Draw]:
    t = rng.randint(30, 45)
    high, low = rng.sample(LABELS, 2)

    def answer(x: str) -> str:
        return high if sum(int(v) for v in x.split(";")) > t else low

    def draw(r: random.Random) -> str:
        want_high = r.random() < 0.5
        while True:
            xs = [r.randint(1, 20) for _ in range(r.randint(3, 5))]
            if (sum(xs) > t) == want_high:
                return ";".join(map(str, xs))
    return answer, draw


# Classify: is the first number greater than, less than, or equal to the second? "37 vs 52" (three drawn labels).
def _classify_compare_pair(rng: random.Random) -> tuple[Answer, Draw]:
    gt, lt, eq = rng.sample(LABELS, 3)

    def answer(x: str) -> str:
        a, b = (int(v) for v in x.split(" vs "))
        return gt if a > b else lt if a < b else eq

    def draw(r: random.Random) -> str:
        kind, a = r.randrange(3), r.randint(0, 199)
        if kind == 0:
            return f"{a} vs {a}"
        b = r.choice([v for v in range(200) if v != a])
        lo, hi = min(a, b), max(a, b)
        return f"{hi} vs {lo}" if kind == 1 else f"{lo} vs {hi}"
    return answer, draw


CANDIDATES: tuple[Family, ...] = (
    Family("rotate_letters", "string", _rotate_letters),
    Family("mask_letter", "string", _mask_letter),
    Family("run_length_encode", "string", _run_length),
    Family("strip_class_maybe_reverse", "string", _strip_class),
    Family("splice_word_pair", "string", _splice_pair),
    Family("shift_by_given_amount", "mixed", _shift_by_given),
    Family("repeat_by_count", "mixed", _repeat_by_count),
    Family("letter_positions", "mixed", _letter_positions),
    Family("count_letter", "mixed", _count_letter),
    Family("affine_map", "number", _affine_map),
    Family("sort_digits", "number", _sort_digits),
    Family("round_to_multiple", "number", _round_to_multiple),
    Family("pair_arithmetic", "number", _pair_arithmetic),
    Family("add_reverse", "number", _add_reverse),
    Family("filter_threshold", "list", _filter_threshold),
    Family("running_op", "list", _running_op),
    Family("kth_order_statistic", "list", _kth_order),
    Family("pairwise_combine", "list", _pairwise_combine),
    Family("word_initials", "list", _word_initials),
    Family("classify_contains_letter", "classify", _classify_contains_letter),
    Family("classify_list_sum", "classify", _classify_list_sum),
    Family("classify_compare_pair", "classify", _classify_compare_pair),
)

# The prompt formats: each contains "{input}" once and "{target}" once, {target} after {input}.
TEMPLATES: dict[str, str] = {
    "io": "input: {input}\noutput: {target}",
    "arrow": "{input} => {target}",
    "qa": "Q: {input}\nA: {target}",
    "bar": "{input} | {target}",
}

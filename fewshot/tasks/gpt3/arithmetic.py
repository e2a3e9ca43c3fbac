"""GPT-3's arithmetic tasks (Brown et al. 2020, §3.9.1), generated on the fly.

An example's input is "Q: What is 48 plus 76?\\nA:" and its target "124"; a prompt shows a
solved one as "Q: What is 48 plus 76?\\nA: 124". The wording is the paper's Appendix G
(Figures G.42-G.51), which puts the question and "A:" on separate lines; the released data
(github.com/openai/gpt-3, data/*.jsonl) separates them by a blank line, we by one newline so
a K-shot prompt stays short. Operands are drawn uniformly at random, so the task cannot be
memorised from a fixed list.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fewshot.tasks.base import Example

OPERATIONS = {"plus": int.__add__, "minus": int.__sub__, "times": int.__mul__}
SYMBOLS = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}


def question(text: str) -> str:
    return f"Q: What is {text}?\nA:"


@dataclass(frozen=True)
class ArithmeticTask:
    """nD+, nD-, 2Dx: two operands of exactly `digits` digits.

    The paper samples from [0, 10^n), so some of its "4D+" operands have 3 digits (G.49:
    9923 plus 617); we keep exactly n digits so the name says how hard a question is.
    """

    digits: int
    operation: str  # "plus", "minus" or "times"

    def example(self, rng: random.Random) -> Example:
        low, high = 10 ** (self.digits - 1), 10**self.digits - 1
        a, b = rng.randint(low, high), rng.randint(low, high)
        return Example(question(f"{a} {self.operation} {b}"), str(OPERATIONS[self.operation](a, b)))


@dataclass(frozen=True)
class CompositeTask:
    """1DC: three one-digit numbers, two operations among + - *, the first pair in brackets.

    §3.9.1 writes "6+(4*8)", but Appendix G (G.42, "(2 * 4) * 6") and the released data
    ("(9 + 8) * 2") bracket the first two with spaced operators; we follow those. Digits are
    1-9, as in the released data.
    """

    def example(self, rng: random.Random) -> Example:
        a, b, c = (rng.randint(1, 9) for _ in range(3))
        op1, op2 = rng.choice("+-*"), rng.choice("+-*")
        result = SYMBOLS[op2](SYMBOLS[op1](a, b), c)
        return Example(question(f"({a} {op1} {b}) {op2} {c}"), str(result))


ARITHMETIC_TASKS: dict[str, ArithmeticTask | CompositeTask] = {
    "2D+": ArithmeticTask(2, "plus"),
    "2D-": ArithmeticTask(2, "minus"),
    "3D+": ArithmeticTask(3, "plus"),
    "3D-": ArithmeticTask(3, "minus"),
    "4D+": ArithmeticTask(4, "plus"),
    "4D-": ArithmeticTask(4, "minus"),
    "5D+": ArithmeticTask(5, "plus"),
    "5D-": ArithmeticTask(5, "minus"),
    "2Dx": ArithmeticTask(2, "times"),
    "1DC": CompositeTask(),
}


def arithmetic_examples(task: str, n: int, seed: int) -> list[Example]:
    rng = random.Random(f"{task}/{seed}")  # string seeds hash stably across runs
    return [ARITHMETIC_TASKS[task].example(rng) for _ in range(n)]

"""Number families: one number in, one out."""

from __future__ import annotations

from collections.abc import Callable

from fewshot.tasks.families.base import LETTERS, Task, joiner

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

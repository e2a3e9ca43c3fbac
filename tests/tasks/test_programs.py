"""The `program` family: does what its instruction says, is thousands of tasks, computes no held-out family."""

from __future__ import annotations

import random
import re

from fewshot.tasks.families.programs import computes_held_out, program
from tests.tasks.test_frozen import checked_instructions


def piece_by_hand(says: str, x: str) -> str | None:
    """What one piece of a `program` instruction says to write, or None if not read here."""
    if says.startswith("'"):
        return says[1:-1]
    says, upper = (says[:-len(" in capitals")], True) if says.endswith(" in capitals") else (says, False)
    says, flip = (says[:-len(" backwards")], True) if says.endswith(" backwards") else (says, False)
    patterns = [
        (r"the word", lambda: x),
        (r"the first (\d) letters", lambda n: x[:n]),
        (r"the last (\d) letters", lambda n: x[len(x) - n:] if n <= len(x) else x),
        (r"the word without its first (\d)", lambda n: x[n:]),
        (r"the word without its last (\d)", lambda n: x[:max(len(x) - n, 0)]),
        (r"letter (\d)", lambda n: x[n - 1] if n <= len(x) else ""),
        (r"letter (\d) from the end", lambda n: x[len(x) - n] if n <= len(x) else ""),
    ]
    for pattern, part in patterns:
        if m := re.fullmatch(pattern, says):
            out = part(*map(int, m.groups()))
            out = out.upper() if upper else out
            return out[::-1] if flip else out
    return None


def test_program_does_what_its_instruction_says() -> None:
    checked = 0
    for seed in range(600):
        rng = random.Random(f"program/{seed}")
        task = program(rng)
        pieces = re.findall(r"'[^']*'|[^,]+", task.instruction.removeprefix("Write ").rstrip("."))
        pieces = [p.strip().removeprefix("then ") for p in pieces if p.strip()]
        for x, y in task.examples(10, rng):
            parts = [piece_by_hand(p, x) for p in pieces]
            if None in parts:
                break
            assert y == ("".join(parts).strip() or "-"), (task.instruction, x, y)
        else:
            checked += 1
    assert checked >= 100


def test_programs_are_thousands_of_tasks_none_of_them_held_out() -> None:
    # The filter knows each held-out string family in any parameterisation...
    for held_out in (lambda s: s + "-ox", lambda s: s + "!", lambda s: s[-2:], lambda s: s[:1].upper() + s[1:],
                     lambda s: f"{s}, {s}, {s}", lambda s: s + s, lambda s: s[0] + s[-1]):
        assert computes_held_out(held_out)
    # ...and lets their neighbours through.
    for neighbour in (lambda s: s + s[-1], lambda s: s[0] + s[-2], lambda s: s.upper() + "-" + s, lambda s: s[-2:] + "!"):
        assert not computes_held_out(neighbour)
    assert len(checked_instructions(program, "program")) > 1300

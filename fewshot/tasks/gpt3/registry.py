"""The synthetic tasks by name, for the few-shot harness: GPT-3 §3.9.1 and §3.9.2.

Queries and demonstrations come from two seeded streams of the same generator, as GPT-3
drew its K demonstrations from a task's training set and its queries from the test set (§2).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from fewshot.errors import FewshotError
from fewshot.tasks.base import Example
from fewshot.tasks.gpt3.arithmetic import ARITHMETIC_TASKS
from fewshot.tasks.gpt3.wordscramble import WORDSCRAMBLE_TASKS


class Generator(Protocol):
    def example(self, rng: random.Random) -> Example: ...


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    family: str                                   # "arithmetic" or "wordscramble"
    generator: Generator = field(repr=False)
    metric: str = "exact_match"

    def examples(self, n: int, seed: int) -> list[Example]:
        """The queries: the same (n, seed) always gives the same list, and a larger n extends it."""
        rng = random.Random(f"{self.name}/{seed}")  # string seeds hash stably across runs
        return [self.generator.example(rng) for _ in range(n)]

    def pool(self, n: int, seed: int, exclude: int | None = None) -> list[Example]:
        """n demonstrations from a separate stream, none with the input of a query examples(exclude, seed).

        `exclude` defaults to n. A demonstration equal to the query would hand the model its
        answer, and small tasks (1DC has 6,561 questions) repeat inputs often.
        """
        queries = {e.input for e in self.examples(n if exclude is None else exclude, seed)}
        rng = random.Random(f"{self.name}/pool/{seed}")
        out: list[Example] = []
        for _ in range(100 * n + 1000):           # bounded, so excluding every input fails loudly
            if len(out) == n:
                return out
            example = self.generator.example(rng)
            if example.input not in queries:
                out.append(example)
        if len(out) == n:
            return out
        raise FewshotError(f"{self.name}: cannot draw {n} demonstrations that differ from the queries; ask for fewer")


TASKS: dict[str, SyntheticTask] = {
    **{name: SyntheticTask(name, "arithmetic", gen) for name, gen in ARITHMETIC_TASKS.items()},
    **{name: SyntheticTask(name, "wordscramble", gen) for name, gen in WORDSCRAMBLE_TASKS.items()},
}
GROUPS: dict[str, tuple[str, ...]] = {
    family: tuple(name for name, task in TASKS.items() if task.family == family) for family in ("arithmetic", "wordscramble")
}


def resolve_tasks(spec: str) -> list[SyntheticTask]:
    """"arithmetic,wordscramble,2D+" -> the tasks, groups expanded, first mention kept."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part not in GROUPS and part not in TASKS:
            valid = ", ".join([*GROUPS, *TASKS])
            raise FewshotError(f"unknown task {part!r}; valid names: {valid}")
        names += GROUPS.get(part, (part,))
    if not names:
        raise FewshotError(f"no tasks given; valid names: {', '.join([*GROUPS, *TASKS])}")
    return [TASKS[name] for name in dict.fromkeys(names)]

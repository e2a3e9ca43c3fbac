"""One example type for every task: GPT-3's synthetic tasks, task files and the held-out families."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fewshot.errors import FewshotError


@dataclass(frozen=True)
class Example:
    """An input and its target; `choices` and `label` are set for multiple choice only
    (then `target` is the right choice)."""

    input: str
    target: str
    choices: tuple[str, ...] | None = None
    label: int | None = None

    @property
    def solved(self) -> str:
        """How a demonstration of a synthetic task shows it (its format is inside `input`)."""
        return f"{self.input} {self.target}"


def distinct_examples(sample: Callable[[], tuple[str, str]], n: int, what: str) -> list[tuple[str, str]]:
    """n (input, target) pairs from `sample` with n distinct inputs, the first target kept for each;
    gives up after 100 n draws, for a task with fewer inputs than that."""
    seen: dict[str, str] = {}
    for _ in range(100 * n):
        x, y = sample()
        seen.setdefault(x, y)
        if len(seen) == n:
            return list(seen.items())
    raise FewshotError(f"{what} has fewer than {n} distinct inputs")

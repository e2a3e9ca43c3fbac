"""One example type for every task: GPT-3's synthetic tasks, task files and the held-out families."""

from __future__ import annotations

from dataclasses import dataclass


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

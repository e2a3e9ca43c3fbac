"""Few-shot tasks: GPT-3's synthetic tasks (arithmetic, wordscramble, registry), and the
in-context-learning meta-training mixture (procedural task families, GINC, bursty sequences,
mixture)."""

from fewshot.tasks.base import Example
from fewshot.tasks.gpt3.arithmetic import ARITHMETIC_TASKS, arithmetic_examples
from fewshot.tasks.gpt3.registry import GROUPS, TASKS, SyntheticTask, resolve_tasks
from fewshot.tasks.gpt3.wordscramble import WORDSCRAMBLE_TASKS

__all__ = [
    "ARITHMETIC_TASKS",
    "GROUPS",
    "TASKS",
    "WORDSCRAMBLE_TASKS",
    "Example",
    "SyntheticTask",
    "arithmetic_examples",
    "resolve_tasks",
]

"""JSONL task files and prompt templates for `fewshot eval --task-file`.

One example per line, all of one kind:
- generation:      {"input": str, "target": str}                 scored by exact match
- multiple choice: {"input": str, "choices": [str], "label": int} scored by accuracy

A template shows one solved example, e.g. the default `Input: {input}\\nOutput: {target}`.
The query prompt is the template cut right before `{target}`, with trailing spaces
removed, so the model writes the space itself (" 124"), as a BPE model would; answers are
compared after `.strip()`. Substitution is plain string splicing, never `str.format`, so
braces in user text are just text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fewshot.errors import FewshotError
from fewshot.tasks.base import Example

DEFAULT_TEMPLATE = "Input: {input}\nOutput: {target}"
INPUT, TARGET = "{input}", "{target}"


@dataclass(frozen=True)
class Template:
    text: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        for field in (INPUT, TARGET):
            if self.text.count(field) != 1:
                raise FewshotError(f"template {self.text!r} must contain {field} exactly once")
        if self.text.index(TARGET) < self.text.index(INPUT):
            raise FewshotError(f"template {self.text!r}: {TARGET} must come after {INPUT}")

    @property
    def _parts(self) -> tuple[str, str, str]:
        prefix, rest = self.text.split(INPUT)
        middle, suffix = rest.split(TARGET)
        return prefix, middle, suffix

    def query(self, input: str) -> str:
        """The prompt for a query: the template up to {target}, trailing spaces removed."""
        prefix, middle, _ = self._parts
        return (prefix + input + middle).rstrip(" ")

    def gap(self) -> str:
        """The spaces the query prompt dropped; they lead every answer continuation."""
        middle = self._parts[1]
        return middle[len(middle.rstrip(" ")):]

    def solved(self, input: str, target: str) -> str:
        """A demonstration: the whole template filled in."""
        prefix, middle, suffix = self._parts
        return prefix + input + middle + target + suffix

    def answer_context(self) -> str:
        """The context of GPT-3's unconditional normalisation (§2.4, "Answer: "): the
        template's text between {input} and {target}, e.g. "Output:"; "Answer:" if none."""
        return self._parts[1].strip() or "Answer:"


# Synthetic tasks already carry their format inside `input` ("Q: ...\nA:").
PLAIN = Template("{input} {target}")


@dataclass(frozen=True)
class TaskFile:
    name: str
    items: tuple[Example, ...]

    @property
    def multiple_choice(self) -> bool:
        return self.items[0].choices is not None

    @property
    def metric(self) -> str:
        return "accuracy" if self.multiple_choice else "exact_match"


def parse_line(line: str, where: str) -> Example:
    """One JSONL line -> Example; `where` ("file:line") starts every error message."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise FewshotError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise FewshotError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("input"), str):
        raise FewshotError(f"{where}: missing string field \"input\"")
    if "choices" in record or "label" in record:
        choices, label = record.get("choices"), record.get("label")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise FewshotError(f"{where}: \"choices\" must be a non-empty list of strings")
        if isinstance(label, bool) or not isinstance(label, int):
            raise FewshotError(f"{where}: \"label\" must be an integer index into \"choices\"")
        if not 0 <= label < len(choices):
            raise FewshotError(f"{where}: label {label} is out of range for {len(choices)} choices")
        return Example(record["input"], choices[label], tuple(choices), label)
    if not isinstance(record.get("target"), str):
        raise FewshotError(f"{where}: missing string field \"target\" (or \"choices\" and \"label\" for multiple choice)")
    return Example(record["input"], record["target"])


def parse_task_lines(lines: list[str], source: str) -> tuple[Example, ...]:
    items: list[Example] = []
    first_kind: tuple[bool, int] | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline) are not examples
        item = parse_line(line, f"{source}:{number}")
        kind = item.choices is not None
        if first_kind is None:
            first_kind = (kind, number)
        elif kind != first_kind[0]:
            names = {True: "multiple choice", False: "generation"}
            raise FewshotError(f"{source}:{number}: {names[kind]} example in a file of {names[first_kind[0]]} "
                               f"examples (line {first_kind[1]}); use one kind per file")
        items.append(item)
    if not items:
        raise FewshotError(f"{source}: no examples (expected one JSON object per line)")
    return tuple(items)


def read_task_file(path: str | Path) -> TaskFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FewshotError(f"{path}: task file not found") from None
    except UnicodeDecodeError as error:
        raise FewshotError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except IsADirectoryError:
        raise FewshotError(f"{path} is a directory; --task-file takes a JSONL file") from None
    except OSError as error:
        raise FewshotError(f"{path}: cannot read ({error.strerror})") from None
    return TaskFile(path.stem, parse_task_lines(text.split("\n"), str(path)))  # not splitlines(): JSON may hold U+2028

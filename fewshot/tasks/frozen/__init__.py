"""The frozen held-out evaluation set: task families written by someone who never saw the training ones.

The project's first held-out set (fewshot.tasks.families.HELD_OUT, 11 families) was fixed before
training, but training families were later added after reading its failures, so it became a
development set. This second set is the project's honest estimate of in-context learning on
families nobody tuned toward. Its rule was written down, and the set committed, before any model
was scored on it:

1. A helper agent that was shown none of the project's files wrote `families.py`: 22 candidate
   families, in the order it wrote them, and four prompt formats, from one paragraph ("short
   string, number and list tasks with one-line answers, in several formats") and the task-file
   format alone.
2. A candidate is dropped if a training family computes it: found by the leak test
   (tests/tasks/test_frozen.py, which runs every candidate's answer function on every training
   task's inputs), or by reading the two lists side by side for a function the test cannot see
   because the inputs differ (`DROPPED`, each with its reason). Nothing else is dropped; nothing
   is added, edited or reordered after the first score.
3. Each kept family is one task, built from `random.Random("frozen/<name>")`, with 200 distinct
   inputs, written once as a JSONL task file in `data/` and committed with `data/manifest.json`
   (the kept names in order, each file's sha256); a test checks the files against both.
4. Only the mean over families is reported (`fewshot icl eval --set frozen` computes no
   per-family table), and no training family is ever added by reading this set's failures.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

from fewshot.errors import FewshotError
from fewshot.tasks.base import distinct_examples
from fewshot.tasks.frozen.families import CANDIDATES, TEMPLATES, Family

DATA = Path(__file__).parent / "data"
MANIFEST = DATA / "manifest.json"
QUERIES = 200
LEAK_SEEDS = ("frozen", "leak/0", "leak/1", "leak/2")  # "frozen" first: the set's own tasks

# Candidates that a training family computes in at least one of their parameterisations, found by
# reading both lists before any score (name -> which training family, and how).
DROPPED: dict[str, str] = {
    "rotate_letters": "rotate and rotate_back move the first or last letters to the other end",
    "strip_class_maybe_reverse": "remove_vowels and only_vowels when it does not reverse",
    "count_letter": "count_letter counts one letter of a word",
    "sort_digits": "sort_letters sorts the characters of any string, digits too, either way",
    "round_to_multiple": "round_down rounds down to a multiple of 5, 10 or 100",
    "pair_arithmetic": "two_numbers adds or subtracts two numbers",
    "kth_order_statistic": "list_max is its largest item (k = 1)",
    "word_initials": "acronym writes the first letters of the words",
    "classify_contains_letter": "classify_contains labels by whether a letter is in the word",
}


def kept() -> tuple[Family, ...]:
    return tuple(f for f in CANDIDATES if f.name not in DROPPED)


def examples(family: Family, n: int = QUERIES) -> list[tuple[str, str]]:
    """n examples of the family's one frozen task, with n distinct inputs."""
    rng = random.Random(f"frozen/{family.name}")
    answer, draw = family.build(rng)

    def sample() -> tuple[str, str]:
        x = draw(rng)
        return x, answer(x)

    return distinct_examples(sample, n, f"frozen family {family.name}")


def parameterisations(family: Family) -> list[Callable[[str], str]]:
    """The family's answer function as frozen and in three other parameterisations: what no
    training task may compute in any of (the leak tests, and the pipelines' filter)."""
    return [family.build(random.Random(f"{seed}/{family.name}"))[0] for seed in LEAK_SEEDS]


def render(family: Family) -> str:
    return "".join(json.dumps({"input": x, "target": y}) + "\n" for x, y in examples(family))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def freeze(out: Path = DATA) -> None:
    """Write every kept family's task file and the manifest into `out` (run once, when the set was frozen)."""
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for family in kept():
        text = render(family)
        (out / f"{family.name}.jsonl").write_text(text, encoding="utf-8")
        digests[family.name] = digest(text)
    (out / MANIFEST.name).write_text(json.dumps({"queries": QUERIES, "templates": TEMPLATES, "files": digests}, indent=1) + "\n")


def task_files() -> list[Path]:
    """The committed task files, one per kept family, in the author's order."""
    names = json.loads(MANIFEST.read_text())["files"]
    paths = [DATA / f"{name}.jsonl" for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FewshotError(f"the frozen held-out set is incomplete: {', '.join(missing)} missing from {DATA}")
    return paths


__all__ = ["CANDIDATES", "DATA", "DROPPED", "MANIFEST", "QUERIES", "TEMPLATES", "examples", "freeze", "kept",
           "parameterisations", "task_files"]

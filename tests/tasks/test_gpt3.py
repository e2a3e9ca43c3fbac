"""GPT-3's synthetic tasks: every answer is right, the formats are the paper's, seeds repeat."""

import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.errors import FewshotError
from fewshot.tasks.gpt3 import GROUPS, TASKS, arithmetic_examples, resolve_tasks
from fewshot.tasks.gpt3.wordscramble import INSERTED, INSTRUCTION, words

ARITHMETIC_NAMES = ("2D+", "2D-", "3D+", "3D-", "4D+", "4D-", "5D+", "5D-", "2Dx", "1DC")
SCRAMBLE_NAMES = ("CL", "A1", "A2", "RI", "RW")
TWO_OPERANDS = re.compile(r"Q: What is (\d+) (plus|minus|times) (\d+)\?\nA:")
COMPOSITE = re.compile(r"Q: What is \((\d) ([-+*]) (\d)\) ([-+*]) (\d)\?\nA:")
SCRAMBLE = re.compile(re.escape(INSTRUCTION) + r"\n(\S(?:.*\S)?) =")
seeds = st.integers(min_value=0, max_value=2**32)


def apply(op: str, a: int, b: int) -> int:
    """The tests' own arithmetic: a lookup on Python ints, never eval()."""
    return {"+": a + b, "-": a - b, "*": a * b, "plus": a + b, "minus": a - b, "times": a * b}[op]


def solve(task: str, text: str) -> int:
    if task == "1DC":
        a, op1, b, op2, c = COMPOSITE.fullmatch(text).groups()
        return apply(op2, apply(op1, int(a), int(b)), int(c))
    a, op, b = TWO_OPERANDS.fullmatch(text).groups()
    digits, symbol = int(task[0]), task[2]
    assert len(a) == len(b) == digits, text                  # 3D+ means two 3-digit operands
    assert op == {"+": "plus", "-": "minus", "x": "times"}[symbol], text
    return apply(op, int(a), int(b))


def unscramble(task: str, scrambled: str, word: str) -> bool:
    """Whether `scrambled` is a valid `task` distortion of `word` (§3.9.2)."""
    if task == "CL":
        return any(scrambled[k:] + scrambled[:k] == word for k in range(len(word)))
    if task in ("A1", "A2"):
        keep = int(task[1])
        return scrambled[:keep] == word[:keep] and scrambled[-keep:] == word[-keep:] and Counter(scrambled) == Counter(word)
    if task == "RI":
        return scrambled[::2] == word and all(c in INSERTED for c in scrambled[1::2])
    return scrambled == word[::-1]                           # RW


def test_registry_names_and_groups():
    assert tuple(TASKS) == ARITHMETIC_NAMES + SCRAMBLE_NAMES
    assert GROUPS == {"arithmetic": ARITHMETIC_NAMES, "wordscramble": SCRAMBLE_NAMES}
    assert all(task.metric == "exact_match" and task.name == name for name, task in TASKS.items())
    assert {TASKS[n].family for n in ARITHMETIC_NAMES} == {"arithmetic"}
    assert {TASKS[n].family for n in SCRAMBLE_NAMES} == {"wordscramble"}


@settings(max_examples=40, deadline=None)
@given(task=st.sampled_from(ARITHMETIC_NAMES), seed=seeds)
def test_every_arithmetic_answer_is_correct(task, seed):
    for example in TASKS[task].examples(20, seed) + TASKS[task].pool(20, seed):
        assert example.target == str(solve(task, example.input)), example
        assert example.solved == f"{example.input} {example.target}"


def test_paper_formats():
    """Appendix G: "Q: What is 98 plus 45? A: 143", "(2 * 4) * 6", the unscramble instruction."""
    assert TWO_OPERANDS.fullmatch(TASKS["2D+"].examples(1, 0)[0].input)
    assert COMPOSITE.fullmatch(TASKS["1DC"].examples(1, 0)[0].input)
    for name in SCRAMBLE_NAMES:
        assert TASKS[name].examples(1, 0)[0].input.startswith(INSTRUCTION + "\n")
    # 1DC covers all three operators, negative answers included (§3.9.1)
    inputs = " ".join(e.input for e in TASKS["1DC"].examples(300, 0))
    assert all(op in inputs for op in (" + ", " - ", " * "))
    assert any(e.target.startswith("-") for e in TASKS["1DC"].examples(300, 0))


@settings(max_examples=30, deadline=None)
@given(task=st.sampled_from(SCRAMBLE_NAMES), seed=seeds)
def test_every_scramble_unscrambles_to_its_word(task, seed):
    for example in TASKS[task].examples(20, seed) + TASKS[task].pool(20, seed):
        scrambled = SCRAMBLE.fullmatch(example.input).group(1)
        word = example.target
        assert word.isascii() and word.isalpha() and word.islower() and 4 <= len(word) <= 15, word
        assert scrambled != word, example                    # never a free answer
        assert unscramble(task, scrambled, word), example


def test_scramble_checker_can_fail():
    """The checker above rejects wrong distortions, so its passing means something."""
    assert not unscramble("CL", "tsop", "stop")
    assert not unscramble("A1", "tpos", "stop") and unscramble("A1", "sotp", "stop")
    assert not unscramble("A2", "stpo", "stop") and unscramble("A2", "stoop", "stoop")
    assert unscramble("RI", "s.t o!p", "stop") and not unscramble("RI", "sxtop", "stop")
    assert not unscramble("RW", "stop", "stop")


def test_word_list():
    vocabulary = words()
    assert len(vocabulary) == 10_000 and len(set(vocabulary)) == 10_000
    assert all(w.isascii() and w.isalpha() and w.islower() and 4 <= len(w) <= 15 for w in vocabulary)
    assert words() is vocabulary                             # read once per process


@settings(max_examples=20, deadline=None)
@given(task=st.sampled_from(tuple(TASKS)), seed=seeds)
def test_deterministic_per_seed_and_prefix_stable(task, seed):
    assert TASKS[task].examples(10, seed) == TASKS[task].examples(10, seed)
    assert TASKS[task].examples(10, seed) == TASKS[task].examples(15, seed)[:10]
    assert TASKS[task].pool(10, seed) == TASKS[task].pool(10, seed)
    assert TASKS[task].examples(10, seed) != TASKS[task].examples(10, seed + 1)


@settings(max_examples=20, deadline=None)
@given(task=st.sampled_from(tuple(TASKS)), seed=seeds)
def test_pool_never_holds_a_query(task, seed):
    queries = {e.input for e in TASKS[task].examples(50, seed)}
    assert not queries & {e.input for e in TASKS[task].pool(50, seed)}
    assert not queries & {e.input for e in TASKS[task].pool(5, seed, exclude=50)}
    assert TASKS[task].pool(50, seed) != TASKS[task].examples(50, seed)    # a separate stream


def test_pool_dedupe_is_needed_for_1dc():
    """1DC has 6,561 questions, so 3,000 queries and an unfiltered pool would overlap."""
    queries = {e.input for e in TASKS["1DC"].examples(3000, 0)}
    assert len({e.input for e in TASKS["1DC"].pool(3000, 0)} & queries) == 0
    with pytest.raises(FewshotError, match="1DC"):
        TASKS["1DC"].pool(10, 0, exclude=100_000)          # every question is a query


def test_arithmetic_examples_matches_registry():
    assert arithmetic_examples("3D-", 7, 3) == TASKS["3D-"].examples(7, 3)


def test_resolve_tasks():
    assert [t.name for t in resolve_tasks("arithmetic")] == list(ARITHMETIC_NAMES)
    assert [t.name for t in resolve_tasks("RW, 2D+,wordscramble,2D+,arithmetic")] == [
        "RW", "2D+", "CL", "A1", "A2", "RI", *[n for n in ARITHMETIC_NAMES if n != "2D+"]]
    assert resolve_tasks("1DC") == [TASKS["1DC"]]


@pytest.mark.parametrize("spec", ["3D*", "2d+", "arithmetic,nope", "", " , "])
def test_resolve_tasks_rejects_unknown_names(spec):
    with pytest.raises(FewshotError) as error:
        resolve_tasks(spec)
    assert "2D+" in str(error.value) and "wordscramble" in str(error.value)   # lists the valid names

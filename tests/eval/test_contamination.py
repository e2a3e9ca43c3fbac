"""The contamination check (GPT-3 §4): planted duplicates are all found, nothing else is."""

from __future__ import annotations

import json
import random
import string
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.eval.contamination import (
    check_contamination,
    example_text,
    find_contaminated,
    ngram_hashes,
)
from fewshot.data.shards import TokenData
from fewshot.data.prepare import prepare
from fewshot.tasks.base import Example
from fewshot.train.loop import train
from tests.conftest import fewshot_command, tiny_config


def naive_flags(texts: list[str], data_dir: Path, n: int = 13) -> list[bool]:
    """The oracle: byte tokens, so an n-gram of a text is n bytes; search the train split's bytes."""
    split = TokenData.open(data_dir).split("train")
    corpus = bytes(t if t < 256 else 0 for t in split.window(0, len(split)).tolist())
    flags = []
    for text in texts:
        raw = text.encode()
        size = min(n, len(raw))
        flags.append(size > 0 and any(raw[i:i + size] in corpus for i in range(len(raw) - size + 1)))
    return flags


def words(rng: random.Random, chars: int) -> str:
    """Random lowercase text: it never contains a digit or capital, so it shares no 13-gram with our tests by chance."""
    return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(chars))


def secret(rng: random.Random, chars: int) -> str:
    return "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(chars))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[bool]]:
    """A corpus in shards of 50 tokens with 10 long and 3 short test texts planted once each."""
    rng = random.Random(0)
    long_texts = [secret(rng, rng.randint(25, 45)) for _ in range(20)]
    short_texts = [secret(rng, rng.randint(1, 12)) for _ in range(6)]
    partial = [secret(rng, 30) for _ in range(2)]
    texts = long_texts + short_texts + partial
    plant = [*long_texts[:10], *short_texts[:3],
             partial[0][7:20],   # exactly one 13-gram of a longer text: contaminated
             partial[1][3:15]]   # only a 12-gram: clean
    expected = [True] * 10 + [False] * 10 + [True] * 3 + [False] * 3 + [True, False]
    corpus = tmp_path_factory.mktemp("planted")
    for f in range(2):
        pieces = [words(rng, 300)]
        for piece in plant[f::2]:
            pieces += [piece, words(rng, rng.randint(5, 60))]
        (corpus / f"part{f}.txt").write_text("".join(pieces) + words(rng, 400))
    out = tmp_path_factory.mktemp("planted_data") / "tokens"
    prepare([corpus], out, tokenizer="byte", val_fraction=0.01, shard_tokens=50, progress=False)
    return out, texts, expected


@pytest.mark.parametrize("chunk_tokens", [1, 7, 64, 1 << 22])
def test_every_planted_duplicate_is_found_and_nothing_else(planted, chunk_tokens: int) -> None:
    data_dir, texts, expected = planted
    assert naive_flags(texts, data_dir) == expected  # the planted texts all landed in train
    assert find_contaminated(texts, data_dir, chunk_tokens=chunk_tokens) == expected


def test_planted_texts_straddle_shard_and_chunk_boundaries(planted) -> None:
    """The layout the test above relies on: duplicates cut by a shard and by a 64-token chunk."""
    data_dir, texts, expected = planted
    split = TokenData.open(data_dir).split("train")
    assert len(split.shards) > 20
    corpus = bytes(t if t < 256 else 0 for t in split.window(0, len(split)).tolist())
    spans = [(corpus.index(t.encode()), len(t)) for t, e in zip(texts[:10], expected) if e]
    assert any(start % 64 + size > 64 for start, size in spans)
    boundaries = set(split.offsets.tolist())
    assert any(any(start < b < start + size for b in boundaries) for start, size in spans)


def test_report_and_degenerate_inputs(planted) -> None:
    data_dir, texts, _ = planted
    report = check_contamination(["", texts[0], texts[0]], data_dir)
    assert report.flags == [False, True, True] and report.contaminated == 2
    assert report.tokens == len(TokenData.open(data_dir).split("train"))
    assert find_contaminated([], data_dir) == []
    assert example_text(Example("Q: 2+2?\nA:", "4")) == "Q: 2+2?\nA: 4"


def naive_hash(tokens: list[int], n: int) -> list[int]:
    out = []
    for i in range(len(tokens) - n + 1):
        h = 0
        for t in tokens[i:i + n]:
            h = (h * 0x9E3779B97F4A7C15 + t) % 2**64
        out.append(h)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=60), st.integers(1, 15))
def test_vectorised_hash_matches_a_naive_rolling_hash(tokens: list[int], n: int) -> None:
    assert ngram_hashes(np.array(tokens, dtype=np.uint32), n).tolist() == naive_hash(tokens, n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=80), st.lists(st.integers(0, 3), min_size=1, max_size=20), st.integers(1, 6))
def test_hash_membership_matches_a_naive_ngram_set(corpus: list[int], test: list[int], n: int) -> None:
    """A small alphabet makes shared n-grams common: hash membership must equal n-gram set membership."""
    grams = {tuple(corpus[i:i + n]) for i in range(len(corpus) - n + 1)}
    expected = [tuple(test[i:i + n]) in grams for i in range(len(test) - n + 1)]
    hashes = set(ngram_hashes(np.array(corpus, dtype=np.uint16), n).tolist())
    assert [h in hashes for h in ngram_hashes(np.array(test, dtype=np.uint16), n).tolist()] == expected


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("contamination_run") / "run"
    train(tiny_config(data_dir, out, max_steps=2, context=128, eval_every=2, save_every=2))
    return out


def test_eval_reports_contaminated_counts_and_clean_scores(run: Path, data_dir: Path, corpus_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(1)
    lines = [line.strip() for f in sorted(corpus_dir.glob("*.txt")) for line in f.read_text().splitlines()]
    seen = [line for line in lines if 30 <= len(line) <= 60][:40:8]     # 5 lines of the plays
    items = [{"input": line[:-4], "target": line[-4:]} for line in seen]
    items += [{"input": secret(rng, 20), "target": secret(rng, 3)} for _ in range(5)]
    task = tmp_path / "leak.jsonl"
    task.write_text("".join(json.dumps(i) + "\n" for i in items))
    expected = naive_flags([f"{i['input']} {i['target']}" for i in items], data_dir)
    assert sum(expected[:5]) >= 3 and not any(expected[5:])

    result = subprocess.run([*fewshot_command(), "eval", str(run), "--task-file", str(task), "--shots", "0,1",
                             "--n", "10", "--max-tokens", "4", "--contamination", str(data_dir),
                             "--out", str(tmp_path / "r.json")], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"leak: {sum(expected)} of 10 queries contaminated" in result.stdout
    assert "leak clean (n=" in result.stdout
    data = json.loads((tmp_path / "r.json").read_text())["tasks"]["leak"]
    assert data["contaminated"] == sum(expected)
    for cell in data["shots"].values():
        assert cell["n"] == 10 and cell["clean"]["n"] == 10 - sum(expected)
        assert set(cell) == {"score", "n", "ci95", "effective_k", "clean"}

    missing = subprocess.run([*fewshot_command(), "eval", str(run), "--task-file", str(task), "--shots", "0",
                              "--contamination", str(tmp_path / "nope")], check=False, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "not a prepared dataset" in missing.stderr

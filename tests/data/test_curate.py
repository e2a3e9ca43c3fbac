"""The curation stages on inputs with a known answer: planted near-duplicates, Shakespeare
against its own shuffled and noised words, evaluation text planted in documents, weights."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.data.corpus import markdown_to_dialogue, shakespeare_documents
from fewshot.data.curate.decontaminate import Decontaminator
from fewshot.data.curate.dedup import DedupConfig, Deduplicator
from fewshot.data.curate.mixture import plan
from fewshot.data.curate.quality import KeepRule, QualityFilter
from fewshot.errors import FewshotError


def edited(words: list[str], fraction: float, vocab: list[str], rng: random.Random) -> list[str]:
    """A copy with `fraction` of its words replaced, inserted or deleted."""
    words = list(words)
    for _ in range(max(1, int(fraction * len(words)))):
        op, j = rng.random(), rng.randrange(len(words))
        if op < 0.6:
            words[j] = rng.choice(vocab)
        elif op < 0.8:
            words.insert(j, rng.choice(vocab))
        elif len(words) > 10:
            del words[j]
    return words


def planted_corpus(originals: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Zipf-distributed random documents, a fifth of them copied once or twice with 5-20% of
    their words edited; shuffled. Returns the texts and each one's cluster (its original)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20_000)]
    weights = [1 / (i + 10) for i in range(len(vocab))]
    docs = [rng.choices(vocab, weights, k=rng.randint(80, 300)) for _ in range(originals)]
    texts, clusters = [" ".join(d) for d in docs], list(range(originals))
    for i in range(originals // 5):
        for _ in range(rng.randint(1, 2)):
            texts.append(" ".join(edited(docs[i], rng.uniform(0.05, 0.20), vocab, rng)))
            clusters.append(i)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], [clusters[i] for i in order]


def test_near_duplicates_with_5_to_20_percent_edits_are_found_at_precision_and_recall_095():
    texts, clusters = planted_corpus(1500)
    dedup = Deduplicator(DedupConfig())  # the defaults: word bigrams, Jaccard 0.3
    removed = [i for i, text in enumerate(texts) if dedup.exact(text) or dedup.fuzzy(text)]
    members: dict[int, list[int]] = {}
    for i, cluster in enumerate(clusters):
        members.setdefault(cluster, []).append(i)
    # Right: a removal while some other member of its cluster stays. Duplicates to find: size - 1 per cluster.
    gone = set(removed)
    right = sum(min(sum(i in gone for i in m), len(m) - 1) for m in members.values())
    precision, recall = right / max(1, len(removed)), right / sum(len(m) - 1 for m in members.values())
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)


def test_exact_duplicates_differ_only_in_whitespace():
    dedup = Deduplicator(DedupConfig())
    assert not dedup.exact("to be  or not\nto be")
    assert dedup.exact(" to be or not to be ") and not dedup.exact("to be or not to bee")


def shakespeare_chunks(count: int, lines: int = 40) -> list[str]:
    chunks = []
    for _, markdown in shakespeare_documents():
        text = markdown_to_dialogue(markdown).splitlines()
        chunks += ["\n".join(text[i:i + lines]) for i in range(0, len(text) - lines, lines)]
        if len(chunks) >= count:
            break
    return chunks[:count]


def noised(text: str, rng: random.Random) -> str:
    chars = list(text)
    for i in range(len(chars)):
        if rng.random() < 0.1:
            chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz#@%&")
    return "".join(chars)


def test_the_quality_classifier_tells_shakespeare_from_shuffled_and_noised_words_auc_095():
    rng = random.Random(0)
    chunks = shakespeare_chunks(800)
    reference, raw = chunks[::2], []
    for i, chunk in enumerate(chunks[1::2]):  # other passages, damaged two ways
        words = chunk.split()
        rng.shuffle(words)
        raw.append(" ".join(words) if i % 2 else noised(chunk, rng))
    quality = QualityFilter.train(reference, raw, KeepRule("pareto", 9.0), seed=0)
    assert quality.auc is not None and quality.auc >= 0.95, quality.auc  # out of fold, over every sample
    assert quality.scores(reference).mean() > quality.scores(raw).mean() + 0.3


@pytest.mark.parametrize("score", [0.2, 0.9, 0.999])
def test_the_pareto_rule_keeps_a_document_with_probability_2_minus_score_to_the_minus_alpha(score):
    """GPT-3's rule, np.random.pareto(9) > 1 - score: P(keep) = (2 - score)^-9."""
    width = 2**20
    logit = np.log(score / (1 - score))
    quality = QualityFilter(np.zeros((2, width), dtype=np.float32), np.array([logit, logit]), KeepRule("pareto", 9.0), {})
    draws = 1000
    kept = sum(quality.keep("any text")[0] for _ in range(draws))
    expected = (2 - score) ** -9
    assert abs(kept / draws - expected) <= 4 * np.sqrt(expected * (1 - expected) / draws) + 1e-3
    assert quality.kept == kept and quality.dropped == draws - kept


def test_keep_rules_parse_or_are_refused():
    assert KeepRule.parse("pareto:9") == KeepRule("pareto", 9.0)
    assert KeepRule.parse("threshold:0.5") == KeepRule("threshold", 0.5)
    for bad in ("pareto", "pareto:0", "threshold:2", "median:3", "pareto:x"):
        with pytest.raises(FewshotError, match="--quality-keep"):
            KeepRule.parse(bad)


def test_documents_sharing_a_13_gram_with_an_evaluation_example_are_dropped():
    example = "Please unscramble the letters into a word, and write that word: r e a d y = ready"
    short = "What is 17 plus 25? 42"  # shorter than 13 words: the whole of it must appear
    decontaminator = Decontaminator([example, short])
    words = example.split()
    assert decontaminator.check("Some text. " + " ".join(words[2:15]).upper() + "! More text.") is not None
    assert decontaminator.check("Some text " + " ".join(words[2:14]) + " more") is None  # only 12 in a row
    assert decontaminator.check("a quiz: what is 17 plus 25? 42, said she") is not None
    assert decontaminator.check("what is 17 plus 25? 43") is None
    assert len(decontaminator.removed) == 2


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=60), min_size=1, max_size=4),
       weights=st.lists(st.floats(0.05, 5.0), min_size=4, max_size=4), scale=st.floats(0.2, 3.0))
def test_the_plan_gives_each_source_its_weight_of_the_tokens(sizes, weights, scale):
    named = {f"s{i}": counts for i, counts in enumerate(sizes)}
    total = int(scale * sum(map(sum, sizes)))
    rows, chosen = plan(named, {name: weights[i] for i, name in enumerate(named)}, total, seed=1)
    for row in rows:
        counts = named[row.source]
        assert row.selected_tokens == sum(counts[i] for i in chosen[row.source])
        # Within half a document of the planned share, however small or large the source is.
        assert abs(row.selected_tokens - row.planned_tokens) <= max(counts) / 2 + 1e-9
        assert row.epochs == pytest.approx(row.planned_tokens / row.tokens)
        assert np.bincount(chosen[row.source], minlength=len(counts)).max() <= int(row.epochs) + 1

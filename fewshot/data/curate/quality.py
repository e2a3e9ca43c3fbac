"""GPT-3's quality filter (Appendix A): a linear classifier that tells curated reference text
from the raw sources, and a rule that keeps raw documents by their score.

Features are hashed word bigrams (scikit-learn's HashingVectorizer, as GPT-3 used Spark's
HashingTF), and the classifier is a logistic regression (C = 10). Bigrams, not words: text made of the
right words in the wrong order, or of words broken by noise, shares the reference's
vocabulary but not its word pairs; on Shakespeare against its own shuffled and noised
passages, held-out AUC was 0.80 with unigrams and bigrams at C = 1, 0.92 at C = 10, and 0.96
to 0.97 with bigrams alone at C = 1 to 100 (tests/data/test_curate.py measures it). A document is kept by
GPT-3's Pareto rule, `np.random.pareto(alpha) > 1 - score` (alpha = 9: mostly the documents
that score high, and some that do not, for diversity), or by `score > threshold`. The model
is kept as its coefficients (`quality.npz`), never as a pickle.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np

from fewshot.errors import FewshotError

N_FEATURES = 2**20
TRAIN_DOCS = 20_000  # per class, at most: a sample of each side is enough for a linear model
C = 10.0  # inverse regularisation


@dataclass(frozen=True)
class KeepRule:
    kind: str  # "pareto" | "threshold"
    value: float  # alpha, or the threshold

    @classmethod
    def parse(cls, spec: str) -> KeepRule:
        kind, _, value = spec.partition(":")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if kind == "pareto" and number > 0:
            return cls(kind, number)
        if kind == "threshold" and 0 <= number <= 1:
            return cls(kind, number)
        raise FewshotError(f"--quality-keep must be pareto:ALPHA (ALPHA > 0, GPT-3 used 9) or threshold:T "
                           f"(0 <= T <= 1), got {spec!r}")


def _vectorizer():
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=N_FEATURES, ngram_range=(2, 2), alternate_sign=False, norm="l2",
                             lowercase=True, token_pattern=r"(?u)\b\w+\b")


class QualityFilter:
    """Two logistic regressions, each fit on one half of the sampled documents (cross-fitting):
    a sampled raw document is scored by the half that did not see it, so the filter never
    judges a document by having learnt it as "raw" (with few documents, it would); every
    other document gets the mean of the two. The AUC is over every sample, out of fold."""

    def __init__(self, coefs: np.ndarray, intercepts: np.ndarray, rule: KeepRule, folds: dict[bytes, int],
                 seed: int = 0) -> None:
        self.coefs, self.intercepts, self.rule, self.folds = coefs, intercepts, rule, folds
        self._weights = np.ascontiguousarray(coefs.T)  # (features, 2): a sparse row times it reads only its columns
        self._vectorize = _vectorizer().transform
        self._rng = np.random.default_rng(seed)
        self.auc: float | None = None
        self.kept = self.dropped = 0

    @classmethod
    def train(cls, reference: list[str], raw: list[str], rule: KeepRule, seed: int = 0) -> QualityFilter:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score

        if len(reference) < 5 or len(raw) < 5:
            raise FewshotError(f"the quality classifier needs at least 5 documents on each side, got "
                               f"{len(reference)} reference and {len(raw)} raw")
        rng = random.Random(seed)
        reference = rng.sample(reference, min(len(reference), TRAIN_DOCS))
        raw = rng.sample(raw, min(len(raw), TRAIN_DOCS))
        texts, labels = reference + raw, np.array([1] * len(reference) + [0] * len(raw))
        fold = np.random.default_rng(seed).permutation(len(texts)) % 2
        features = _vectorizer().transform(texts)
        coefs, intercepts = [], []
        for k in (0, 1):
            model = LogisticRegression(C=C, max_iter=2000, class_weight="balanced")
            model.fit(features[fold != k], labels[fold != k])
            coefs.append(model.coef_[0].astype(np.float32))
            intercepts.append(float(model.intercept_[0]))
        folds = {_digest(text): int(k) for text, k in zip(texts, fold)}
        made = cls(np.stack(coefs), np.array(intercepts), rule, folds, seed)
        out_of_fold = made._probs(features)[np.arange(len(texts)), fold]  # the features once, not again
        if len(set(labels)) == 2:
            made.auc = float(roc_auc_score(labels, out_of_fold))
        return made

    def scores(self, texts: list[str]) -> np.ndarray:
        """P(reference | text) of each text: out of fold for the sampled ones, else the mean of both."""
        probs = self._probs(self._vectorize(texts))
        picked = [self.folds.get(_digest(text)) for text in texts]
        return np.array([p.mean() if k is None else p[k] for p, k in zip(probs, picked)])

    def _probs(self, features) -> np.ndarray:
        """(texts, 2): each fold's model's P(reference)."""
        logits = features @ self._weights + self.intercepts
        return 1 / (1 + np.exp(-np.clip(logits, -60, 60)))

    def keep(self, text: str) -> tuple[bool, float]:
        score = float(self.scores([text])[0])
        return self.decide(score), score

    def decide(self, score: float) -> bool:
        """The keep rule on a score; draws in document order, so the choice never depends on workers."""
        if self.rule.kind == "pareto":
            kept = bool(self._rng.pareto(self.rule.value) > 1 - score)
        else:
            kept = score > self.rule.value
        if kept:
            self.kept += 1
        else:
            self.dropped += 1
        return kept

    def save(self, path) -> None:
        np.savez(path, coefs=self.coefs, intercepts=self.intercepts)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

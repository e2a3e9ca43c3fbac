"""GINC-style documents (Xie et al. 2021): text from a mixture of hidden Markov "concepts".

Each concept is an HMM over a shared vocabulary of words. A document picks one concept and
emits segments from it; predicting the next word well means inferring, from the document so
far, which concept is speaking. That latent-concept inference is the paper's account of how
in-context learning emerges from pretraining, and these documents give the model practice at
it with no task template at all.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from fewshot.tasks.families import words

N_CONCEPTS = 64
N_STATES = 10
N_WORDS = 80
DELIMITERS = (" / ", "\n", " . ")


@dataclass(frozen=True)
class Concept:
    start: np.ndarray       # [states]
    transition: np.ndarray  # [states, states], rows sum to 1
    emission: np.ndarray    # [states, words], rows sum to 1


@dataclass(frozen=True)
class ConceptMixture:
    vocabulary: tuple[str, ...]
    concepts: tuple[Concept, ...]


def make_mixture(seed: int, n_concepts: int = N_CONCEPTS, n_states: int = N_STATES, n_words: int = N_WORDS) -> ConceptMixture:
    rng = np.random.default_rng([seed, 0x6196])
    vocabulary = tuple(rng.choice(words()[:1000], size=n_words, replace=False).tolist())

    def sparse_rows(rows: int, cols: int, alpha: float) -> np.ndarray:
        # Dirichlet with a small alpha: each state prefers a few successors and a few words,
        # so concepts are distinguishable after a handful of words.
        return rng.dirichlet(np.full(cols, alpha), size=rows)

    concepts = tuple(
        Concept(rng.dirichlet(np.ones(n_states)), sparse_rows(n_states, n_states, 0.1), sparse_rows(n_states, n_words, 0.05))
        for _ in range(n_concepts)
    )
    return ConceptMixture(vocabulary, concepts)


def document(rng: random.Random, mixture: ConceptMixture, chars: int, one_concept: bool = True) -> str:
    """Segments of 3-8 words until `chars`; one concept throughout (or, for the non-bursty
    ablation, a fresh concept per segment, so the document holds no concept to infer)."""
    delimiter = rng.choice(DELIMITERS)
    concept = rng.choice(mixture.concepts)
    segments: list[str] = []
    total = 0
    while total < chars:
        if not one_concept:
            concept = rng.choice(mixture.concepts)
        state = _draw(rng, concept.start)
        segment = []
        for _ in range(rng.randint(3, 8)):
            segment.append(mixture.vocabulary[_draw(rng, concept.emission[state])])
            state = _draw(rng, concept.transition[state])
        segments.append(" ".join(segment))
        total += len(segments[-1]) + len(delimiter)
    return delimiter.join(segments)


def _draw(rng: random.Random, probabilities: np.ndarray) -> int:
    return min(int(np.searchsorted(np.cumsum(probabilities), rng.random())), len(probabilities) - 1)

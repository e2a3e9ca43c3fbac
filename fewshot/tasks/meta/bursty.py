"""Bursty, Zipfian item sequences (Chan et al. 2022, "Data distributional properties drive
emergent in-context learning in transformers").

A world of many classes, each a prototype string whose exemplars are noisy copies, with
class frequencies following Zipf's law (a few common classes, a long tail of rare ones) and
a label word per class. A sequence shows (exemplar, label) pairs. In a *bursty* sequence a
few classes recur, and the last pair's class is among them, so its label is in the context;
in a non-bursty one every class is drawn independently, so the context rarely helps. Some
bursty sequences relabel their classes with fresh words, which only the context can answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from fewshot.tasks.families import LETTERS, label_words, letters

N_CLASSES = 1600
ZIPF_EXPONENT = 1.0
N_LABELS = 64
NOISE = 0.15          # chance that an exemplar's letter is replaced
RELABEL = 0.3         # bursty sequences whose labels are drawn fresh for that sequence


@dataclass(frozen=True)
class ClassWorld:
    prototypes: tuple[str, ...]
    labels: tuple[str, ...]           # the fixed label of each class
    cumulative: np.ndarray            # Zipfian class distribution, as cumulative probabilities


def make_world(seed: int, n_classes: int = N_CLASSES, exponent: float = ZIPF_EXPONENT) -> ClassWorld:
    rng = random.Random(f"bursty/{seed}")
    prototypes = tuple(letters(rng, 4, 6) for _ in range(n_classes))
    label_set = label_words(rng, N_LABELS)
    labels = tuple(rng.choice(label_set) for _ in range(n_classes))
    weights = 1.0 / np.arange(1, n_classes + 1) ** exponent
    return ClassWorld(prototypes, labels, np.cumsum(weights / weights.sum()))


def exemplar(rng: random.Random, prototype: str) -> str:
    return "".join(rng.choice(LETTERS) if rng.random() < NOISE else c for c in prototype)


def sequence(rng: random.Random, world: ClassWorld, template: str, separator: str, bursty: bool = True) -> str:
    n = rng.randint(8, 24)
    if bursty:
        chosen = [_zipf_class(rng, world) for _ in range(rng.randint(2, 4))]
        classes = [rng.choice(chosen) for _ in range(n)]
        if classes[-1] not in classes[:-1]:  # the last pair's class always recurs
            classes[-1] = rng.choice(classes[:-1])
    else:
        classes = [_zipf_class(rng, world) for _ in range(n)]
    labels = {c: world.labels[c] for c in set(classes)}
    if bursty and rng.random() < RELABEL:
        labels = dict(zip(labels, label_words(rng, len(labels))))
    pairs = [template.replace("{input}", exemplar(rng, world.prototypes[c])).replace("{target}", labels[c]) for c in classes]
    return separator.join(pairs)


def _zipf_class(rng: random.Random, world: ClassWorld) -> int:
    return min(int(np.searchsorted(world.cumulative, rng.random())), len(world.prototypes) - 1)

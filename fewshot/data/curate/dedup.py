"""Exact, then fuzzy deduplication, streaming: a document is kept unless one kept before it is
the same text (a hash of its whitespace-normalised text) or a near-duplicate of it.

Near-duplicates: MinHash over word n-gram shingles, and LSH banding over the signatures
(datasketch's MinHashLSH, as GPT-3 used Spark's MinHashLSH), whose bands and rows it picks
for the Jaccard `threshold`. The index holds every kept document's bands, so memory grows
with the number of documents (about 1 KB each), not with their text; datasketch can keep it
in Redis instead for more than fits (`storage_config`). Why datasketch, not datatrove's
MinHash: docs/data/README.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from fewshot.data.curate.documents import word_ids, words
from fewshot.data.ngrams import ngram_hashes

NUM_PERM = 128


@dataclass(frozen=True)
class DedupConfig:
    # Word bigrams at Jaccard 0.3: a copy with 20% of its words edited keeps ~64% of its bigrams
    # (Jaccard ~0.47), while unrelated documents share few; 5-grams at 0.8 (FineWeb's kind of
    # setting) miss such copies (~0.2). Measured in docs/data/README.md.
    threshold: float = 0.3  # estimated Jaccard similarity of shingle sets that makes a near-duplicate
    ngram: int = 2  # words per shingle
    num_perm: int = NUM_PERM
    seed: int = 1


class Deduplicator:
    def __init__(self, config: DedupConfig) -> None:
        from datasketch import MinHashLSH

        self.config = config
        self._exact: set[bytes] = set()
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        self._next = 0
        self._template = None
        self.clusters: dict[str, int] = {}  # kept document -> near-duplicates removed against it

    # Pure: a worker process can compute these for a batch, the order-dependent checks stay here.
    @staticmethod
    def digest(text: str) -> bytes:
        return hashlib.blake2b(" ".join(text.split()).encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def signature(self, text: str):
        """The MinHash of the text's word-shingle set (a LeanMinHash: small to send between processes).

        Shingles are hashed by the project's n-gram hash over word ids, vectorised, and given to
        datasketch as 32-bit values: its default hashes each shingle's bytes with SHA-1 in a
        Python loop, half of this stage's time."""
        from datasketch import LeanMinHash, MinHash

        ids = word_ids(words(text))
        n = max(1, min(self.config.ngram, len(ids)))
        shingles = np.unique(ngram_hashes(ids, n) & np.uint64(0xFFFFFFFF))
        if self._template is None:  # permutations drawn from the seed once, not per document
            self._template = MinHash(num_perm=self.config.num_perm, seed=self.config.seed)
        signature = MinHash(num_perm=self.config.num_perm, seed=self.config.seed, hashfunc=_as_is,
                            permutations=self._template.permutations, scheme=self._template.scheme)
        signature.update_batch(shingles.tolist())
        return LeanMinHash(signature)

    def seen(self, digest: bytes) -> bool:
        """Whether this text (whitespace aside) came before; remembers it if not."""
        if digest in self._exact:
            return True
        self._exact.add(digest)
        return False

    def near(self, signature) -> bool:
        """Whether a kept document is a near-duplicate of this one; indexes it if not."""
        similar = self._lsh.query(signature)
        if similar:
            first = min(similar)
            self.clusters[first] = self.clusters.get(first, 0) + 1
            return True
        self._lsh.insert(f"{self._next:012d}", signature)
        self._next += 1
        return False

    def exact(self, text: str) -> bool:
        return self.seen(self.digest(text))

    def fuzzy(self, text: str) -> bool:
        return self.near(self.signature(text))


def _as_is(value: int) -> int:  # shingles arrive hashed (module-level: workers unpickle it)
    return value

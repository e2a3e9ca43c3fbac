"""Mixture weights (GPT-3 §2.2, Table 2.2): each source gives a share of the training tokens that
is its weight, not its size, so a small curated source is seen for several epochs and a
big raw one for less than one. A source's documents go in whole: full passes over all of
them, then a seeded sample of the rest until its share is reached.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MixtureRow:
    source: str
    weight: float  # normalised over the sources
    documents: int  # available, after curation
    tokens: int  # available, after curation (end-of-text tokens included)
    planned_tokens: int  # weight x the mixture's tokens
    epochs: float  # planned over available: GPT-3's "epochs elapsed"
    selected_tokens: int = 0  # what the selected documents add up to
    realised_tokens: int | None = None  # counted again in the written dataset

    def to_json(self) -> dict:
        return asdict(self)


def plan(sizes: dict[str, list[int]], weights: dict[str, float], total: int | None = None,
         seed: int = 0) -> tuple[list[MixtureRow], dict[str, list[int]]]:
    """Rows of the table, and for each source the indices of its documents in the mixture
    (repeated for epochs past the first). `total`: the mixture's tokens (default: all there is)."""
    available = {name: sum(counts) for name, counts in sizes.items()}
    total = sum(available.values()) if total is None else total
    norm = sum(weights.values())
    rows, chosen = [], {}
    for name, counts in sizes.items():
        weight = weights[name] / norm
        target = round(weight * total)
        picked, tokens = [], 0
        if counts and available[name] > 0:
            order = list(range(len(counts)))
            rng = random.Random(f"{seed}:{name}")
            while tokens + available[name] <= target:  # whole epochs
                picked.extend(order)
                tokens += available[name]
            rng.shuffle(order)
            for i in order:  # then part of one, document by document, to the nearer side of the target
                if tokens >= target or tokens + counts[i] - target > target - tokens:
                    break
                picked.append(i)
                tokens += counts[i]
        chosen[name] = picked
        rows.append(MixtureRow(name, weight, len(counts), available[name], target,
                               target / available[name] if available[name] else 0.0, tokens))
    return rows, chosen


def table(rows: list[MixtureRow]) -> str:
    """GPT-3's Table 2.2 for this mixture, as markdown."""
    lines = ["| source | documents | tokens | weight in mix | tokens in mix | epochs elapsed | realised tokens |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        realised = "" if r.realised_tokens is None else f"{r.realised_tokens:,}"
        lines.append(f"| {r.source} | {r.documents:,} | {r.tokens:,} | {r.weight:.1%} | {r.selected_tokens:,} | "
                     f"{r.epochs:.2f} | {realised} |")
    return "\n".join(lines)

"""The logit ensemble of several models of one architecture: the mean of their logits.

Model soups (Wortsman et al. 2022) compare a soup, one model, with this ensemble, which
costs N forward passes per token. It quacks like a GPT for scoring and for decoding:
forward, new_cache, step and decode_step run every member and average.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Ensemble(nn.Module):
    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)
        self.config = models[0].config

    def _mean(self, outputs: list[Tensor]) -> Tensor:
        return torch.stack([o.float() for o in outputs]).mean(dim=0)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, None]:
        return self._mean([member(idx)[0] for member in self.members]), None

    def new_cache(self, rows: int, capacity: int | None = None, padding: Tensor | None = None) -> Caches:
        return Caches([member.new_cache(rows, capacity=capacity, padding=padding) for member in self.members])

    def step(self, idx: Tensor, cache: Caches, last_only: bool = False) -> Tensor:
        return self._mean([m.step(idx, c, last_only=last_only) for m, c in zip(self.members, cache.caches)])

    def decode_step(self, idx: Tensor, cache: Caches) -> Tensor:
        return self._mean([m.decode_step(idx, c) for m, c in zip(self.members, cache.caches)])


class Caches:
    """One KV cache per member; they fill in step, so the first speaks for all."""

    def __init__(self, caches: list) -> None:
        self.caches = caches

    @property
    def length(self) -> int:
        return self.caches[0].length

    @property
    def capacity(self) -> int:
        return self.caches[0].capacity

"""Loss against position in the context: how much a model gains from what it has already read.

Olsson et al. (2022) score in-context learning as the loss late in the context minus the loss
early in it: a model that uses what it read predicts later tokens better. On the bursty
mixture a window holds solved examples of one task, so this gain is the mixture's own
in-context learning, measured before (and beside) exact match on held-out families.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewshot.data.sampling import fixed_batches
from fewshot.data.shards import TokenSplit
from fewshot.errors import FewshotError

SPAN = 64  # positions averaged at each end (a quarter of a shorter window): one position alone is noisy


@dataclass(frozen=True)
class ContextLoss:
    losses: tuple[float, ...]  # mean next-token loss (nats per token) at each position

    @property
    def span(self) -> int:
        return min(SPAN, len(self.losses) // 4)

    @property
    def early_positions(self) -> tuple[int, int]:
        """Half a span in: past the first tokens, which no model can guess."""
        return self.span // 2, self.span // 2 + self.span

    @property
    def early(self) -> float:
        start, stop = self.early_positions
        return sum(self.losses[start:stop]) / self.span

    @property
    def late(self) -> float:
        return sum(self.losses[-self.span:]) / self.span

    @property
    def icl_score(self) -> float:
        """late - early: negative when the model gains from its context (Olsson et al.'s sign)."""
        return self.late - self.early

    @property
    def mean(self) -> float:
        return sum(self.losses) / len(self.losses)


@torch.no_grad()
def loss_by_position(model, split: TokenSplit, context: int, windows: int = 64, batch_size: int = 8,
                     seed: int = 0) -> ContextLoss:
    """Mean loss at each position of `windows` fixed validation windows of `context` tokens."""
    if context < 8:
        raise FewshotError(f"loss by position needs windows of at least 8 tokens, got {context}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros(context, dtype=torch.float64)
    batches = fixed_batches(split, batch_size, context, math.ceil(windows / batch_size), seed)
    for x, y in batches:
        logits, _ = model(x.to(device))
        loss = F.cross_entropy(logits.float().transpose(1, 2), y.to(device), reduction="none")  # (B, T)
        total += loss.sum(dim=0).double().cpu()
    model.train(was_training)
    return ContextLoss(tuple((total / (len(batches) * batch_size)).tolist()))

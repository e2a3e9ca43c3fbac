"""Random training windows from a prepared split, resumable from a few integers.

`BatchSampler` draws (x, y) windows with a cursor that is just three integers, so a resumed run
sees exactly the batches it would have (at random over the split, or, for data whose order is a
curriculum, moving through it over the run); `StepSampler` cuts each optimizer step's global batch
between ranks and micro-steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fewshot.data.examples import TrainingExample
from fewshot.data.shards import TokenSplit
from fewshot.errors import FewshotError


class BatchSampler:
    """Random (x, y) windows from a split, resumable from three integers.

    Batch i is drawn from its own generator seeded by [seed, rank, i], so resuming needs no
    RNG state, ranks draw independent batches, and batch i is the same however it was reached.

    `in_order=S`: data whose order matters (a curriculum, `fewshot.tasks.meta.mixture`) is read
    from start to end over S batches: batch i's windows start in the i-th of S equal parts of
    the split (the last part after S), still at random within it.

    `loss_mask`: the split's loss mask (`TokenData.loss_mask`); targets it does not learn are -1,
    which the model's loss ignores.
    """

    def __init__(self, split_tokens: TokenSplit, batch_size: int, context: int, seed: int, rank: int = 0,
                 in_order: int | None = None, loss_mask: TokenSplit | None = None):
        if batch_size < 1 or context < 1:
            raise FewshotError(f"batch size and context must be at least 1 (got {batch_size} and {context})")
        if seed < 0 or rank < 0:
            raise FewshotError(f"seed and rank must be non-negative (got {seed} and {rank})")
        name = getattr(split_tokens, "name", "data")
        if len(split_tokens) < context + 1:
            raise FewshotError(
                f"context {context} is too long for the {name} split ({len(split_tokens)} tokens; a window needs "
                f"{context + 1}); use a shorter context or more data"
            )
        self.split = split_tokens
        self.batch_size, self.context = batch_size, context
        if in_order is not None and in_order < 1:
            raise FewshotError(f"reading a split in order needs at least one batch, got {in_order}")
        self.seed, self.rank = seed, rank
        self.in_order = in_order
        self.loss_mask = loss_mask
        self.position = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows(self.next_starts())

    def next_starts(self) -> np.ndarray:
        """Where the windows of batch `position` start; moves the cursor on."""
        rng = np.random.default_rng([self.seed, self.rank, self.position])
        low, high = self.span(self.position)
        self.position += 1
        return rng.integers(low, high, size=self.batch_size)

    def span(self, batch: int) -> tuple[int, int]:
        """Where batch `batch`'s windows may start: [low, high)."""
        starts = len(self.split) - self.context
        if self.in_order is None:
            return 0, starts
        part = min(batch, self.in_order - 1)
        low = starts * part // self.in_order
        return low, max(low + 1, starts * (part + 1) // self.in_order)

    def windows(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        windows = np.stack([self.split.window(int(s), self.context + 1) for s in starts]).astype(np.int64)
        windows = torch.from_numpy(windows)
        x, y = windows[:, :-1], windows[:, 1:]
        if self.loss_mask is not None:
            learned = np.stack([self.loss_mask.window(int(s) + 1, self.context) for s in starts])
            y = y.masked_fill(torch.from_numpy(learned == 0), -1)
        return x, y

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "rank": self.rank, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # The rank stays this process's own: under torchrun every rank may load rank 0's
        # saved cursor, and adopting its rank would make all ranks draw the same batches.
        self.seed = int(state["seed"])
        self.position = int(state["position"])


class StepSampler:
    """The micro-batches of each optimizer step, the same whatever the number of ranks.

    Step s draws its whole global batch (micro-batch x accumulation x world size windows)
    as BatchSampler batch s; rank r trains on the r-th contiguous slice of it and micro-step
    a on the a-th piece of that slice. So 2 ranks x 1 micro-batch and 1 rank x 2 micro-batches
    see the same windows in every step, ranks never share one, and the cursor is the step
    alone: a run saved on one number of ranks resumes on another.
    """

    def __init__(self, split_tokens: TokenSplit, batch_size: int, grad_accum: int, context: int, seed: int,
                 rank: int = 0, world_size: int = 1, in_order: int | None = None, loss_mask: TokenSplit | None = None):
        if not 0 <= rank < world_size:
            raise FewshotError(f"rank {rank} is outside a world of {world_size} processes")
        self.global_batches = BatchSampler(split_tokens, batch_size * grad_accum * world_size, context, seed,
                                           in_order=in_order, loss_mask=loss_mask)
        self.batch_size, self.grad_accum, self.rank = batch_size, grad_accum, rank

    def plan(self, steps: int) -> None:
        """The run's step count changed (a time budget refitted it): an in-order read spreads over the new one."""
        if self.global_batches.in_order is not None:
            self.global_batches.in_order = max(1, steps)

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        share = self.batch_size * self.grad_accum
        starts = self.global_batches.next_starts()[self.rank * share:(self.rank + 1) * share]
        x, y = self.global_batches.windows(starts)
        return list(zip(x.split(self.batch_size), y.split(self.batch_size)))

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.global_batches.seed, "position": self.global_batches.position,
                "global_batch": self.global_batches.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # The global batch may differ from the saved one (another --grad-accum or world size):
        # step s then draws a batch of the new size, as a run started that way would.
        self.global_batches.seed = int(state["seed"])
        self.global_batches.position = int(state["position"])


def fixed_batches(split: TokenSplit, batch_size: int, context: int, n: int, seed: int,
                  loss_mask: TokenSplit | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same n batches every call, so validation losses compare across steps and runs."""
    sampler = BatchSampler(split, batch_size, context, seed=seed, loss_mask=loss_mask)
    return [sampler.next_batch() for _ in range(n)]


class ExampleSampler:
    """Fine-tuning batches: whole examples, padded, the loss only where the example's mask is.

    Step s takes global batch s from an endless sequence of epochs, each a permutation seeded
    by [seed, epoch]; like StepSampler, ranks and micro-steps take contiguous slices, and the
    cursor is the step alone, so resume is exact and any world size sees the same batches.
    """

    def __init__(self, examples: Sequence[TrainingExample], batch_size: int, grad_accum: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if not examples:
            raise FewshotError("no fine-tuning examples to sample from")
        if not 0 <= rank < world_size:
            raise FewshotError(f"rank {rank} is outside a world of {world_size} processes")
        self.examples = list(examples)
        self.batch_size, self.grad_accum, self.rank, self.world_size = batch_size, grad_accum, rank, world_size
        self.seed, self.position = seed, 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    def plan(self, steps: int) -> None:
        """Epochs do not depend on the run's step count."""

    def indices(self, step: int) -> list[int]:
        """The examples of global batch `step`, in order."""
        n, size = len(self.examples), self.global_batch
        orders: dict[int, np.ndarray] = {}
        picked = []
        for g in range(step * size, (step + 1) * size):
            epoch, within = divmod(g, n)
            if epoch not in orders:
                orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(n)
            picked.append(int(orders[epoch][within]))
        return picked

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        share = self.batch_size * self.grad_accum
        mine = self.indices(self.position)[self.rank * share:(self.rank + 1) * share]
        self.position += 1
        return [padded_batch([self.examples[i] for i in mine[a:a + self.batch_size]])
                for a in range(0, share, self.batch_size)]

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "position": self.position, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.position = int(state["position"])


def padded_batch(examples: Sequence[TrainingExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of a few examples, right-padded to the longest; y is -1 (no loss) off the mask."""
    length = max(len(e.ids) for e in examples) - 1
    x = torch.zeros(len(examples), length, dtype=torch.long)
    y = torch.full((len(examples), length), -1, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.tensor(example.ids, dtype=torch.long)
        learned = torch.tensor(example.loss_mask[1:], dtype=torch.bool)
        x[row, : len(ids) - 1] = ids[:-1]
        y[row, : len(ids) - 1] = torch.where(learned, ids[1:], -1)
    return x, y


def example_batches(examples: Sequence[TrainingExample], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The validation examples in fixed batches."""
    return [padded_batch(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]

"""The learning-rate schedule (GPT-3 §B) and the step count that fits a time budget."""

from __future__ import annotations

import math

from fewshot.config import TrainConfig


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio of the peak at max_steps."""
    peak, warmup = config.peak_lr, config.warmup
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, config.max_steps - warmup))
    floor = peak * config.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


class StepFit:
    """Refits a run's step count to its time budget from the steps it has actually run: a
    few calibration steps before the run misjudge a noisy shared machine by tens of percent
    either way (the schedule then ends early, wasting time, or the time cap cuts it short;
    docs/code-notes.md)."""

    SKIP = 5              # steps that pay for compilation and allocations, left out of the measurement
    # Of the budget: when to refit. The second absorbs a slow spell early in the run (another
    # process); the later ones a machine that speeds up or slows down for minutes at a time. Each
    # refit moves the cosine's position by a few percent, so the learning rate barely bends.
    AT = (0.05, 0.25, 0.5, 0.75)
    SHARE = 0.96          # of the remaining time: the rest absorbs noise, the last eval and save

    def __init__(self, first_step: int) -> None:
        self.start_step = first_step + self.SKIP
        self.start_time: float | None = None
        self.pending = list(self.AT)
        self.seconds_per_step = float("nan")

    @property
    def done(self) -> bool:
        return not self.pending

    def observe(self, step: int, elapsed: float, config: TrainConfig) -> int | None:
        """The refitted max_steps at the first step after each of AT of the budget that has a
        validation and a checkpoint among its measured steps (they are part of a step's cost); else None."""
        if step == self.start_step:
            self.start_time = elapsed
        measured = step - self.start_step
        if (self.done or self.start_time is None or measured < max(config.eval_every, config.save_every)
                or elapsed < self.pending[0] * config.max_time):
            return None
        self.pending.pop(0)
        self.seconds_per_step = (elapsed - self.start_time) / measured
        remaining = self.SHARE * (config.max_time - elapsed)
        return max(step + 1, step + int(remaining / self.seconds_per_step))

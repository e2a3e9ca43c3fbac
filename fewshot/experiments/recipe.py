"""The in-context-learning recipes as data: how a time budget is spent on the meta-training mixture.

Kept apart from fewshot.experiments.icl (which trains them) so that the command line reads the
recipes' fields, its options, without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, get_args

from fewshot.config import Optimizer, Precision, check_optimizer, setting
from fewshot.errors import FewshotError
from fewshot.tasks.meta.mixture import MixtureConfig


@dataclass(frozen=True)
class Recipe:
    """How a time (or step) budget is spent on the mixture: which model, how long its windows, how big a batch."""
    minutes: float = setting(30.0, "Training time budget; the step count is fitted to it.")
    preset: str = setting("icl", "Model size (fewshot.config.PRESETS).")
    context: int | None = setting(None, "Training window in bytes (default: the preset's, 1,024 for icl).")
    batch_size: int = setting(4, "Windows per optimizer step.")
    mixture: MixtureConfig = MixtureConfig()
    # torch.compile: more optimizer steps per minute for a few seconds of compiling (inductor
    # caches the graph after the calibration steps; docs/code-notes.md).
    compile: bool = setting(False, "torch.compile the model: more steps per minute; needs a C compiler.")
    # Muon for the blocks' matrices (fewshot.train.optim): at equal steps it is ~600 steps ahead of
    # AdamW in validation loss on this mixture, for ~15% more time per step (docs/icl/sweep.md).
    optimizer: Optimizer = setting("adamw", "muon or adamw.")
    lr: float | None = setting(None, "Peak learning rate; a recipe without one uses the preset's.")
    # Comparisons across architectures (fewshot icl mixers) budget steps, not minutes: equal
    # steps of equal-size models are equal FLOPs to within the mixers' own terms, and a slow
    # implementation, or a busy machine, does not cost a model its training.
    steps: int | None = setting(None, "Optimizer steps, fixed instead of fitted to --minutes.")
    # auto trains in bf16 autocast where the hardware has bf16: more steps in the same minutes,
    # but not the same numbers, so arms compared across machine kinds fix it (docs/icl/generalisation.md).
    precision: Precision = setting("auto", "auto (bf16 autocast where the hardware has bf16), fp32 or bf16.")

    def __post_init__(self) -> None:
        # Checked here, before the mixture is generated for a run that cannot start.
        check_optimizer(self.optimizer)
        if self.precision not in get_args(Precision):
            raise FewshotError(f"--precision must be one of {', '.join(get_args(Precision))}, got {self.precision!r}")
        if self.minutes <= 0 or self.batch_size < 1:
            raise FewshotError(f"--minutes must be > 0 and --batch-size >= 1, got {self.minutes} and {self.batch_size}")
        if self.steps is not None and self.steps < 1:
            raise FewshotError(f"--steps must be >= 1, got {self.steps}")

    @property
    def budget(self) -> str:
        return f"{self.steps:,} optimizer steps" if self.steps is not None else f"{self.minutes:g} minutes"

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)


# Copying from the context (the induction circuit every task here needs) forms after a number
# of optimizer steps (~1,500-2,000 at lr 3e-3), not tokens, so small batches win (docs/icl/sweep.md).
# FULL: 30 minutes of 4 x 1,024-byte windows, long enough for 32 solved examples, on six blocks:
# 1.5x the time per step, and still the best held-out ICL at 30 minutes (docs/icl/sweep.md).
# SHORT: the demo's 8 minutes, in which only 2 x 512-byte windows give ~3,000 steps.
# Both with Muon at 6e-3, the rate and optimizer that did best on the held-out families in
# docs/icl/sweep.md.
FULL = Recipe(minutes=30.0, preset="icl-deep", compile=True, optimizer="muon", lr=6e-3)
SHORT = Recipe(minutes=8.0, context=512, batch_size=2, mixture=MixtureConfig(megabytes=4.0), compile=True,
               optimizer="muon", lr=6e-3)

"""The settings of a few-shot evaluation, declared once: `fewshot eval`'s options come from here.

Kept apart from the harness so that the command line can read them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from fewshot.config import setting
from fewshot.errors import FewshotError
from fewshot.inference.lookup import MAX_DRAFT

QUERIES = 100  # per task, `fewshot eval --n`'s default (and what `prepare --decontaminate` removes)
MC_NORMS = ("sum", "token", "unconditional")  # GPT-3 §2.4's normalisations of a choice's log-likelihood


@dataclass(frozen=True)
class EvalOptions:
    """How queries are scored; `fewshot eval`'s options are these fields."""

    mc_norm: str = setting("token", "Multiple choice: sum, token or unconditional.")
    max_tokens: int = setting(16, "Longest generated answer, in tokens.")
    batch_size: int = setting(32, "Queries decoded together.")
    prompt_lookup: int = setting(0, "Prompt-lookup decoding: up to this many draft tokens per step, copied from the "
                                    "prompt; the same answers in fewer passes. 0 = off.")
    stops: tuple[str, ...] = ()  # where a generated answer ends, besides the newline

    def __post_init__(self) -> None:
        if self.mc_norm not in MC_NORMS:
            raise FewshotError(f"--mc-norm must be one of {', '.join(MC_NORMS)}, got {self.mc_norm!r}")
        for name in ("max_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise FewshotError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.prompt_lookup <= MAX_DRAFT:
            raise FewshotError(f"--prompt-lookup must be in 0..{MAX_DRAFT}, got {self.prompt_lookup}")

"""Training compute per run, counted (Kaplan et al. 2020 §2.1): C = 6 N D plus attention.

Two numbers, both in FLOPs: Kaplan's C = 6 N D with N the non-embedding parameters (what
his compute axis uses), and the model FLOPs the run really did, ModelConfig.flops_per_token
(every matmul weight, the output head included, plus QK^T and AV over the sequence), which
MFU divides by the measured peak. At small sizes the head is a large share, so they differ.
"""

from __future__ import annotations

from fewshot.config import ModelConfig
from fewshot.experiments.scaling.shapes import non_embedding_params


def kaplan_compute(config: ModelConfig, tokens: float) -> float:
    return 6.0 * non_embedding_params(config) * tokens


def model_flops(config: ModelConfig, tokens: float, seq: int) -> float:
    return float(config.flops_per_token(seq)) * tokens


def mfu(config: ModelConfig, tokens: float, seq: int, seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilisation of a run: achieved model FLOP/s over the measured peak."""
    return model_flops(config, tokens, seq) / seconds / peak_flops

"""Will a training configuration fit? Estimate before allocating, refuse early.

A run that dies of out-of-memory after minutes of setup (or takes the machine down with
it) is worse than one that refuses at once and says what to shrink.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewshot.config import ModelConfig
from fewshot.errors import FewshotError

GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    weights_bytes: int  # fp32 weights + gradients + AdamW's two moments: 16 bytes per parameter
    activation_bytes: int
    total_bytes: int


def estimate_training_memory(config: ModelConfig, batch_size: int, context: int, autocast_bf16: bool) -> MemoryEstimate:
    """Peak bytes for one micro-batch of training, erring on the high side.

    Activations per layer follow Korthikanti et al. (2022), "Reducing Activation
    Recomputation in Large Transformer Models", Eq. 1 without sequence parallelism:
    s*b*h*(34 + 5*a*s/h) bytes at 16-bit, doubled for fp32. CPU SDPA materialises the
    attention matrix, which the a*s/h term already counts.
    """
    params = config.num_params()
    tokens = batch_size * context
    width = 2 if autocast_bf16 else 4
    per_layer = tokens * config.d_model * (34 + 5 * config.n_head * context / config.d_model) * width / 2
    # The logits and their gradient in fp32 dominate small models with big vocabularies.
    logits = 3 * tokens * config.vocab_size * 4
    activations = int(config.n_layer * per_layer + logits)
    weights = 16 * params
    return MemoryEstimate(params, weights, activations, weights + activations)


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise FewshotError("cannot read available memory from /proc/meminfo")


def check_fits(estimate: MemoryEstimate, device: torch.device) -> None:
    available = available_memory(device)
    if estimate.total_bytes > 0.9 * available:
        raise FewshotError(
            f"this configuration needs about {estimate.total_bytes / GIB:.1f} GiB "
            f"({estimate.parameters / 1e6:.1f}M parameters: {estimate.weights_bytes / GIB:.1f} GiB for weights and "
            f"optimizer, {estimate.activation_bytes / GIB:.1f} GiB for activations) but {device.type} has "
            f"{available / GIB:.1f} GiB free; use a smaller --preset, --batch-size or --context (raise --grad-accum to keep the batch)"
        )


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports it in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

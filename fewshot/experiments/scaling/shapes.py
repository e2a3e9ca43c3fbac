"""Model sizes from a rule, not a hand-picked list (Kaplan et al. 2020, §2.1 and Figure 5).

Kaplan found loss nearly flat in the shape over a wide range of aspect ratios
(d_model / n_layer from about 20 to 200) at fixed N, so a ladder aims at one aspect ratio,
fixes the head size, takes d_ff = 4 d_model, and spaces the sizes geometrically in N, the
non-embedding parameter count (about 12 n_layer d_model^2). Holding the aspect ratio exactly
would make N grow as n_layer^3, in jumps of 8x, 3.4x, 2.4x at the small end; so each rung
takes, among the shapes whose N is within a quarter-step of its target, the one whose aspect
ratio is nearest the aim.
"""

from __future__ import annotations

import math

from fewshot.config import ModelConfig
from fewshot.errors import FewshotError

ASPECT = 32  # d_model / n_layer aimed at; Kaplan's good range starts near 20, and small models want depth
HEAD_SIZE = 16  # Kaplan's 64 would leave the small rungs a single head
SMALLEST = 2.5e4  # non-embedding parameters of the ladder's first rung (one 2-core CPU trains it in seconds)
STEP = 2.0  # each rung about this many times the last in N
# A one-layer transformer cannot compose attention heads (no induction heads; Olsson et al.
# 2022), so it learns differently from deeper ones and would bend the curve at the small end.
MIN_LAYERS = 2
MAX_LAYERS = 96


def non_embedding_params(config: ModelConfig) -> int:
    """Kaplan's N: every parameter but the token and position embeddings (and an untied head)."""
    positions = config.context * config.d_model if config.block == "gpt3" else 0
    head = 0 if config.tie_embeddings else config.vocab_size * config.d_model
    return config.num_params() - config.vocab_size * config.d_model - positions - head


def _with(template: ModelConfig, n_layer: int, heads: int, head_size: int) -> ModelConfig:
    return template.replace(n_layer=n_layer, n_head=heads, d_model=heads * head_size, head_dim=None, d_ff=None,
                            mlp_ratio=4, n_kv_head=None)


def shape(target: float, template: ModelConfig, aspect: int = ASPECT, head_size: int = HEAD_SIZE,
          tolerance: float = math.sqrt(math.sqrt(STEP)), layers: int = 0) -> ModelConfig:
    """The rule's shape for `target` non-embedding parameters: nearest the aspect ratio among
    those within `tolerance` (a factor) of the target, or the nearest in N if none is.
    `layers` > 0 fixes the depth, so only the width changes from size to size."""
    candidates = []
    for n_layer in [layers] if layers else range(MIN_LAYERS, MAX_LAYERS + 1):
        width = math.sqrt(target / (12 * n_layer))
        for heads in {max(1, math.floor(width / head_size)), max(1, math.ceil(width / head_size))}:
            config = _with(template, n_layer, heads, head_size)
            off = abs(math.log(non_embedding_params(config) / target))
            candidates.append((off, abs(math.log(config.d_model / n_layer / aspect)), config))
    near = [c for c in candidates if c[0] <= math.log(tolerance)]
    if near:
        return min(near, key=lambda c: (c[1], c[0]))[2]
    return min(candidates, key=lambda c: (c[0], c[1]))[2]


def ladder(sizes: int, template: ModelConfig, smallest: float = SMALLEST, step: float = STEP,
           aspect: int = ASPECT, head_size: int = HEAD_SIZE, layers: int = 0) -> list[ModelConfig]:
    """`sizes` shapes with strictly increasing N, about `step` apart, from the rule.

    Rounding to whole layers and heads can land two targets on one shape; then the target
    moves up until the shape changes, so N always increases."""
    if sizes < 1:
        raise FewshotError(f"sweep: --sizes must be >= 1, got {sizes}")
    if not step > 1 or not smallest > 0:
        raise FewshotError("sweep: the ladder needs a step > 1 and a smallest size > 0")
    if layers and not MIN_LAYERS <= layers <= MAX_LAYERS:
        raise FewshotError(f"sweep: --layers must be 0 (the rule's depth) or {MIN_LAYERS}-{MAX_LAYERS}, got {layers}")
    shapes: list[ModelConfig] = []
    target = smallest
    tolerance = math.sqrt(math.sqrt(step))
    while len(shapes) < sizes:
        candidate = shape(target, template, aspect, head_size, tolerance, layers)
        if not shapes or non_embedding_params(candidate) > non_embedding_params(shapes[-1]):
            shapes.append(candidate)
            target *= step
        else:
            target *= math.sqrt(step)
    return shapes

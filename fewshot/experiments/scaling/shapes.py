"""Model sizes from a rule, not a hand-picked list (Kaplan et al. 2020, §2.1 and Figure 5).

Kaplan found loss nearly flat in the shape over a wide range of aspect ratios
(d_model / n_layer from about 20 to 200) at fixed N, so a ladder holds the aspect ratio and
the head size fixed, takes d_ff = 4 d_model, and spaces the sizes geometrically in N, the
non-embedding parameter count: N is about 12 n_layer d_model^2, so with d_model = aspect *
n_layer, n_layer is (N / 12 aspect^2)^(1/3).
"""

from __future__ import annotations

import math

from fewshot.config import ModelConfig
from fewshot.errors import FewshotError

ASPECT = 32  # d_model / n_layer; Kaplan's good range starts near 20, and small models want depth
HEAD_SIZE = 32
SMALLEST = 2e5  # non-embedding parameters of the ladder's first rung
STEP = 2.0  # each rung about this many times the last in N


def non_embedding_params(config: ModelConfig) -> int:
    """Kaplan's N: every parameter but the token and position embeddings (and an untied head)."""
    positions = config.context * config.d_model if config.block == "gpt3" else 0
    head = 0 if config.tie_embeddings else config.vocab_size * config.d_model
    return config.num_params() - config.vocab_size * config.d_model - positions - head


def shape(target: float, template: ModelConfig, aspect: int = ASPECT, head_size: int = HEAD_SIZE) -> ModelConfig:
    """The rule's shape nearest to `target` non-embedding parameters."""
    n_layer = max(1, round((target / (12 * aspect**2)) ** (1 / 3)))
    heads = max(1, round(aspect * n_layer / head_size))
    return template.replace(n_layer=n_layer, n_head=heads, d_model=heads * head_size, head_dim=None, d_ff=None,
                            mlp_ratio=4, n_kv_head=None)


def ladder(sizes: int, template: ModelConfig, smallest: float = SMALLEST, step: float = STEP,
           aspect: int = ASPECT, head_size: int = HEAD_SIZE) -> list[ModelConfig]:
    """`sizes` shapes with strictly increasing N, about `step` apart, from the rule.

    Rounding to whole layers and heads can land two targets on one shape; then the target
    moves up until the shape changes, so N always increases."""
    if sizes < 1:
        raise FewshotError(f"sweep: --sizes must be >= 1, got {sizes}")
    if not step > 1 or not smallest > 0:
        raise FewshotError("sweep: the ladder needs a step > 1 and a smallest size > 0")
    shapes: list[ModelConfig] = []
    target = smallest
    while len(shapes) < sizes:
        candidate = shape(target, template, aspect, head_size)
        if not shapes or non_embedding_params(candidate) > non_embedding_params(shapes[-1]):
            shapes.append(candidate)
            target *= step
        else:
            target *= math.sqrt(step)
    return shapes

"""Rotary position embedding (Su et al. 2021, "RoFormer"), as Llama-family blocks use it.

Queries and keys are rotated by an angle proportional to their position, so their dot
product depends only on the distance between them. We rotate the two halves of each head
against each other ("rotate_half", HF's layout). llama.cpp rotates adjacent pairs instead
and stores its Q/K weights permuted to match; `fewshot.convert.gguf` undoes that.
"""

from __future__ import annotations

import torch
from torch import Tensor

Rotary = tuple[Tensor, Tensor]  # (cos, sin), each (T, head_size) or (B, 1, T, head_size)


def rotary_tables(positions: Tensor, head_size: int, base: float) -> Rotary:
    """cos/sin for absolute `positions` (T,) or (B, T), in float32 whatever the model's dtype.

    Angles are computed in float32 even under bf16 autocast: at position 8000 a bf16 angle
    would be off by tens of radians.
    """
    inv_freq = base ** (-torch.arange(0, head_size, 2, device=positions.device, dtype=torch.float32) / head_size)
    angles = positions.float()[..., None] * inv_freq  # (..., T, head_size / 2)
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos(), angles.sin()
    if positions.dim() == 2:  # one row of positions per sequence: broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    return cos, sin


def apply_rotary(x: Tensor, rotary: Rotary) -> Tensor:
    """Rotate (B, H, T, head_size) queries or keys."""
    cos, sin = rotary
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)

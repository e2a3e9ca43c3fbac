"""Block-quantised weights kept quantised in memory: ggml's Q8_0, Q4_0 and Q4_1 formats.

A matrix (N, K) is cut into blocks of 32 consecutive values of a row, each with its own
float16 scale `d` (and, for Q4_1, a float16 minimum `m`). Stored planar, as safetensors
tensors beside each other (never pickle):

| format | `<name>.qweight` | value i of a block | `<name>.scales` | `<name>.mins` | bits per weight |
|---|---|---|---|---|---|
| q8_0 | int8 (N, K) | q_i * d | float16 (N, K/32) | - | 8.5 |
| q4_0 | uint8 (N, K/2) | (nibble_i - 8) * d | float16 (N, K/32) | - | 4.5 |
| q4_1 | uint8 (N, K/2) | nibble_i * d + m | float16 (N, K/32) | float16 (N, K/32) | 5 |

The 4-bit formats pack a block's 32 values into 16 bytes as ggml does: byte j holds value j
in its low nibble and value j + 16 in its high one. So a GGUF file's blocks map onto these
tensors without re-quantising (`import-gguf --keep-quant`).

`QuantLinear` multiplies a few rows (decoding) with the C++ kernel (fewshot.model.kernels)
and anything else by dequantising first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.config import QUANT_FORMATS as FORMATS
from fewshot.errors import FewshotError
from fewshot.model.kernels import FORMAT_IDS, qmatmul

BLOCK = 32
HEAD_FORMAT = "q8_0"  # the output head's, whatever the blocks': its rounding shows in every logit
KERNEL_ROWS = 16  # rows of x per kernel call (qmatmul.cpp's kMaxRows)
# Up to this many rows go through the kernel, 16 at a time (decoding, prompt-lookup checks,
# short prompts); past it, dequantising once and one float matmul cost less than re-reading W.
KERNEL_MAX_ROWS = 64


def quantize(weight: Tensor, fmt: str) -> dict[str, Tensor]:
    """(N, K) float -> {"qweight", "scales"[, "mins"]}, rounding as ggml's reference quantisers do."""
    if fmt not in FORMATS:
        raise FewshotError(f"unknown quantisation {fmt!r}; choose from {', '.join(FORMATS)}")
    if weight.dim() != 2 or weight.shape[1] % BLOCK:
        raise FewshotError(f"{fmt} quantises matrices whose rows are whole blocks of {BLOCK}, got shape {tuple(weight.shape)}")
    blocks = weight.detach().float().reshape(weight.shape[0], -1, BLOCK)
    if fmt == "q8_0":
        scale = blocks.abs().amax(-1, keepdim=True) / 127
        q = torch.round(blocks / _nonzero(scale)).clamp(-127, 127).to(torch.int8)
        return {"qweight": q.reshape(weight.shape), "scales": scale.squeeze(-1).half()}
    if fmt == "q4_0":
        # ggml: the value of largest magnitude maps to -8, so its sign decides the scale's.
        extreme = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
        scale = extreme / -8
        q = (torch.round(blocks / _nonzero(scale)) + 8).clamp(0, 15).to(torch.uint8)
        return {"qweight": _pack(q), "scales": scale.squeeze(-1).half()}
    low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    scale = (high - low) / 15
    q = torch.round((blocks - low) / _nonzero(scale)).clamp(0, 15).to(torch.uint8)
    return {"qweight": _pack(q), "scales": scale.squeeze(-1).half(), "mins": low.squeeze(-1).half()}


def dequantize(parts: dict[str, Tensor], fmt: str) -> Tensor:
    """The float32 (N, K) matrix the parts stand for."""
    scales = parts["scales"].float()[..., None]
    if fmt == "q8_0":
        q = parts["qweight"]
        return (q.reshape(q.shape[0], -1, BLOCK).float() * scales).reshape(q.shape)
    values = _unpack(parts["qweight"]).float()
    if fmt == "q4_0":
        out = (values - 8) * scales
    else:
        out = values * scales + parts["mins"].float()[..., None]
    return out.reshape(values.shape[0], -1)


def _nonzero(scale: Tensor) -> Tensor:
    return torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero block stays zero


def _pack(q: Tensor) -> Tensor:
    """(N, blocks, 32) nibbles -> (N, blocks * 16) bytes, ggml's order."""
    return (q[..., :16] | (q[..., 16:] << 4)).reshape(q.shape[0], -1)


def _unpack(packed: Tensor) -> Tensor:
    """(N, K/2) bytes -> (N, K/32, 32) nibbles."""
    blocks = packed.reshape(packed.shape[0], -1, BLOCK // 2)
    return torch.cat((blocks & 15, blocks >> 4), dim=-1)


class QuantLinear(nn.Module):
    """A bias-free linear layer whose weight stays block-quantised (inference only)."""

    def __init__(self, in_features: int, out_features: int, fmt: str, bias: bool = False,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise FewshotError(f"unknown quantisation {fmt!r}; choose from {', '.join(FORMATS)}")
        self.in_features, self.out_features, self.format = in_features, out_features, fmt
        width = in_features if fmt == "q8_0" else in_features // 2
        blocks = (out_features, in_features // BLOCK)
        self.register_buffer("qweight", torch.zeros(out_features, width, dtype=torch.int8 if fmt == "q8_0" else torch.uint8, device=device))
        self.register_buffer("scales", torch.zeros(blocks, dtype=torch.float16, device=device))
        self.register_buffer("mins", torch.zeros(blocks, dtype=torch.float16, device=device) if fmt == "q4_1" else None)
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str) -> QuantLinear:
        """`linear` quantised; on the meta device (a model about to be loaded), an empty layer."""
        weight = linear.weight
        layer = cls(linear.in_features, linear.out_features, fmt, linear.bias is not None, device=weight.device)
        if weight.device.type != "meta":
            with torch.no_grad():
                for name, value in quantize(weight, fmt).items():
                    getattr(layer, name).copy_(value)
                if linear.bias is not None:
                    layer.bias.copy_(linear.bias)
        return layer

    def parts(self) -> dict[str, Tensor]:
        parts = {"qweight": self.qweight, "scales": self.scales}
        return parts if self.mins is None else {**parts, "mins": self.mins}

    def dequantized(self) -> Tensor:
        return dequantize(self.parts(), self.format)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        kernel = qmatmul() if 0 < rows <= KERNEL_MAX_ROWS and x.device.type == "cpu" and x.dtype == torch.float32 else None
        if kernel is None:
            return F.linear(x, self.dequantized().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        flat, fmt = x.reshape(rows, self.in_features), FORMAT_IDS[self.format]
        if rows <= KERNEL_ROWS:
            y = kernel(flat, self.qweight, self.scales, self.mins, fmt)
        else:
            y = torch.cat([kernel(flat[start:start + KERNEL_ROWS], self.qweight, self.scales, self.mins, fmt)
                           for start in range(0, rows, KERNEL_ROWS)])
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}"


def quantize_layers(model: nn.Module, fmt: str) -> None:
    """Replace, in place, every linear layer of `model.blocks` whose rows are whole blocks with
    a `fmt` QuantLinear, and the output head with a HEAD_FORMAT one. The token embedding stays
    float: decoding reads one row of it per token, and a tied head gets its own quantised copy."""
    for block in model.blocks:
        for parent in block.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and child.in_features % BLOCK == 0:
                    setattr(parent, name, QuantLinear.from_linear(child, fmt))
    if model.head.in_features % BLOCK == 0:
        model.head = QuantLinear.from_linear(model.head, HEAD_FORMAT)

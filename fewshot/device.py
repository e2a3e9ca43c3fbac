"""Where a model runs and in what precision: one choice for training and inference alike."""

from __future__ import annotations

import contextlib

import torch

from fewshot.config import check_dtype
from fewshot.errors import FewshotError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # fewshot.config.Dtype's names


def dtype_named(name: str, command: str) -> torch.dtype:
    """`--dtype fp32|bf16` as a torch dtype: what an import writes, or what a loaded model computes in."""
    check_dtype(name, command)
    return DTYPES[name]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FewshotError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FewshotError("--device cuda was asked for but no CUDA GPU is available")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls in hardware. Elsewhere oneDNN emulates bf16, which
    can be slower than fp32, so `auto` stays in fp32 there."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:  # not Linux
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast where the hardware runs it natively (`fewshot bench train` measures it)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

"""Weights in other formats -> run directories (and back): GGUF, HF."""

from __future__ import annotations

import torch

from fewshot.errors import FewshotError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def weights_dtype(name: str, command: str) -> torch.dtype:
    """The dtype an import writes its weights in: `--dtype fp32|bf16`."""
    if name not in DTYPES:
        raise FewshotError(f"{command}: --dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]

"""`nn.Linear` with a faster route for a few rows on the CPU: decoding a small batch.

Decoding reads every weight once per step, so a step costs the time to stream the weights
from memory. With MKL, a few rows times a wide matrix, `x @ W.T`, streams W at well under the
memory's speed, while the same product with the operands' roles swapped, `(W @ x.T).T`,
streams it as fast as a single row does (docs/code-notes.md has the numbers;
`fewshot bench decode --vs llamacpp` measures the effect). One row, large batches (prefill,
training) and anything with gradients keep the ordinary path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SKINNY_ROWS = (2, 16)  # the row counts that take the swapped route (measured crossover: past 16 it stops helping)


class Linear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features if self.in_features else 0
        low, high = SKINNY_ROWS
        if low <= rows <= high and x.device.type == "cpu" and not torch.is_grad_enabled():
            y = torch.mm(self.weight, x.reshape(rows, self.in_features).t()).t()
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)
        return super().forward(x)

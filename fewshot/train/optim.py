"""Optimizers: AdamW (GPT-3 §B), or Muon for the hidden matrices with AdamW for the rest.

Muon (Jordan et al. 2024; torch.optim.Muon) orthogonalises each matrix's momentum before the
update, so every direction of a weight matrix moves at the same rate. It only applies to the
2-D weights inside the blocks: embeddings, the output head, gains and the q/k/v convolution
stay with AdamW, as in the original recipe. Moonshot's learning-rate adjustment
("match_rms_adamw") scales Muon's update to AdamW's RMS, so the two share one schedule and
one peak learning rate.

torch's Muon runs its Newton-Schulz iterations in bf16. On a CPU without bf16 hardware (AVX2:
oneDNN emulates it) that is 17x slower than fp32 for a 384 x 128 gradient, and it doubled the
ICL recipe's time per step, so there `Fp32Muon` runs them in fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import torch
import torch.optim._muon as torch_muon

from fewshot.config import TrainConfig
from fewshot.device import cpu_has_native_bf16
from fewshot.errors import FewshotError
from fewshot.model.mixers import DYNAMICS


class Combined:
    """Several optimizers stepped as one: the training loop sets `lr` on `param_groups`, steps,
    zeroes and checkpoints it like a single torch optimizer. The state dict has the single
    optimizer layout (parameters numbered across all groups in order), so a checkpoint holds
    one file either way."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for optimizer in self.optimizers:
            own = optimizer.state_dict()
            state.update({offset + index: value for index, value in own["state"].items()})
            groups += [{**group, "params": [offset + index for index in group["params"]]} for group in own["param_groups"]]
            offset += sum(len(group["params"]) for group in optimizer.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        shapes = [len(group["params"]) for optimizer in self.optimizers for group in optimizer.param_groups]
        if [len(group["params"]) for group in saved["param_groups"]] != shapes:
            raise FewshotError("the checkpoint's optimizer state does not match this optimizer (another --optimizer?)")
        groups = iter(saved["param_groups"])
        offset = 0
        for optimizer in self.optimizers:
            own_groups = [next(groups) for _ in optimizer.param_groups]
            count = sum(len(group["params"]) for group in own_groups)
            optimizer.load_state_dict({
                "state": {int(i) - offset: value for i, value in saved["state"].items() if offset <= int(i) < offset + count},
                "param_groups": [{**group, "params": [i - offset for i in group["params"]]} for group in own_groups],
            })
            offset += count


def _adamw(groups: list[dict[str, Any]], config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # Fused: one kernel for the whole update instead of ~6 tensor ops per parameter, which on the
    # CPU more than halves the update's time (docs/code-notes.md).
    return torch.optim.AdamW(groups, lr=config.peak_lr, betas=(config.beta1, config.beta2), eps=config.eps,
                             fused=device.type in ("cpu", "cuda"))


def newton_schulz_fp32(grad: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                       eps: float) -> torch.Tensor:
    """torch's quintic Newton-Schulz orthogonalisation (torch.optim._muon), in fp32."""
    a, b, c = coefficients
    wide = grad.size(0) <= grad.size(1)
    x = grad.float() if wide else grad.float().T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


class Fp32Muon(torch.optim.Muon):
    """torch.optim.Muon with fp32 Newton-Schulz: torch has no option for it, so its module's
    function is swapped for the length of this optimizer's step only."""

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        with mock.patch.object(torch_muon, "_zeropower_via_newtonschulz", newton_schulz_fp32):
            return super().step(closure)


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer | Combined:
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    def dynamics(name: str) -> bool:  # a recurrence's own decays and gates, shaped (channels, ...): not matrices
        return name.rsplit(".", 1)[-1] in DYNAMICS and ".mixer." in name

    def under_muon(name: str, p: torch.Tensor) -> bool:
        return config.optimizer == "muon" and p.dim() == 2 and name.startswith("blocks.") and not dynamics(name)

    def decayed(name: str, p: torch.Tensor) -> bool:
        # Matrices (embeddings included), but not biases or norm gains: shrinking those towards
        # zero only fights the normalisation. Nor (IA)3's scales (peft's `ia3_l`, shaped
        # (n, 1)): they start at one, and decay would pull the model away from its base. Nor a
        # state-space layer's A, B, C or an SRU's gate vectors (S4 trains them without decay).
        return p.dim() >= 2 and ".ia3_l." not in name and not dynamics(name)

    adamw = _adamw([{"params": [p for name, p in named if decayed(name, p) and not under_muon(name, p)],
                     "weight_decay": config.weight_decay},
                    {"params": [p for name, p in named if not decayed(name, p)], "weight_decay": 0.0}], config, device)
    if config.optimizer == "adamw":
        return adamw
    muon_class = Fp32Muon if device.type == "cpu" and not cpu_has_native_bf16() else torch.optim.Muon
    muon = muon_class([p for name, p in named if under_muon(name, p)], lr=config.peak_lr,
                      weight_decay=config.weight_decay, momentum=0.95, adjust_lr_fn="match_rms_adamw")
    return Combined(adamw, muon)

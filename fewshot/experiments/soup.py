"""Model soups (Wortsman et al. 2022): average the weights of fine-tunes of one pretrained model.

Fine-tunes of the same pretrained weights tend to lie in one basin of the loss, so their
average is a model too, often better than each of them, at the inference cost of one:
- a uniform soup averages every ingredient;
- a greedy soup takes ingredients best first (by validation score) and keeps one only if
  the soup's validation score does not fall.

Ingredients are full fine-tunes (model.safetensors), or adapters of one kind:
- LoRA: the soup of updates (alpha/r) B A is exact as one LoRA of the summed rank, whose A
  stacks the ingredients' A and whose B stacks their weighted, scaled B;
- (IA)3: the scaling vectors are averaged.

Averaging streams: the soup's tensors are summed into one model, one ingredient file open at
a time (safetensors maps a file; closing it lets its pages go), so N ingredients cost about
two models of memory, not N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from fewshot.errors import FewshotError
from fewshot.files import check_new_dir
from fewshot.model import GPT
from fewshot.model.adapters import add_adapter, config_from_json, config_to_json, load_adapter_state
from fewshot.runs import RunConfig, RunDir, weights_to_save


@dataclass(frozen=True)
class Ingredients:
    """Fine-tunes checked to share one architecture, tokenizer and base weights."""

    runs: tuple[RunDir, ...]
    kind: str  # "full" | "lora" | "ia3"
    base: str  # the base run's path and its weights' fingerprint, as the fine-tunes record them
    base_sha256: str

    @property
    def config(self) -> RunConfig:
        return self.runs[0].config


def ingredients(paths: Sequence[str | Path]) -> Ingredients:
    """Open and check the runs; a mismatch is one error that names it."""
    if len(paths) < 1:
        raise FewshotError("soup: give the runs to average (fine-tunes of one base)")
    runs = tuple(RunDir.open(p) for p in paths)
    first = runs[0]
    kinds = [_kind(run) for run in runs]
    for run, kind in zip(runs, kinds):
        source = run.config.source or {}
        if not source.get("base_sha256"):
            raise FewshotError(f"soup: {run.path} is not a fine-tune (it records no base); a soup averages "
                               "fine-tunes of one pretrained model, which share a basin")
        if kind != kinds[0]:
            raise FewshotError(f"soup: {first.path} is {_name(kinds[0])} but {run.path} is {_name(kind)}; "
                               "a soup's ingredients are all one kind")
        if run.config.model != first.config.model:
            diff = [k for k, v in run.config.model.to_dict().items() if first.config.model.to_dict().get(k) != v]
            raise FewshotError(f"soup: {run.path} has another architecture than {first.path} ({', '.join(diff)} differ)")
        if run.config.tokenizer != first.config.tokenizer:
            raise FewshotError(f"soup: {run.path} has another tokenizer than {first.path}")
        if source["base_sha256"] != first.config.source["base_sha256"]:
            raise FewshotError(f"soup: {run.path} was fine-tuned from other base weights ({source.get('base')}, "
                               f"{source['base_sha256'][:12]}...) than {first.path} ({first.config.source.get('base')}, "
                               f"{first.config.source['base_sha256'][:12]}...): not one basin")
        if kind != "full":
            _check_same_adapter(first, run)
    source = first.config.source
    return Ingredients(runs, kinds[0], str(source.get("base")), source["base_sha256"])


def _kind(run: RunDir) -> str:
    if not run.is_adapter:
        return "full"
    return {"LORA": "lora", "IA3": "ia3"}.get(str(run.config.adapter.get("peft_type")), "unknown")


def _name(kind: str) -> str:
    return {"full": "a full fine-tune", "lora": "a LoRA adapter", "ia3": "an (IA)3 adapter"}.get(kind, "an adapter of unknown type")


def _check_same_adapter(first: RunDir, run: RunDir) -> None:
    a, b = first.config.adapter, run.config.adapter
    for key in ("target_modules", "feedforward_modules"):
        if sorted(a.get(key) or []) != sorted(b.get(key) or []):
            raise FewshotError(f"soup: {run.path} adapts other layers ({key}) than {first.path}")
    for key in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern"):
        if a.get(key) or b.get(key):
            raise FewshotError(f"soup: {run.path if b.get(key) else first.path} uses {key}, which a soup does not average")


def uniform_weights(n: int) -> list[float]:
    return [1.0 / n] * n


# ---------------------------------------------------------------------------- full fine-tunes


@torch.no_grad()
def average_into(model: GPT, runs: Sequence[RunDir], weights: Sequence[float]) -> GPT:
    """Fill `model`'s parameters with sum_i weights[i] * run_i's, one file open at a time.

    The sums build up in the parameters themselves when they are float32 (else in a float32
    copy), so the memory is the model and one mapped file."""
    params = model.state_dict()
    keys = _keys(runs[0])
    stored = [name for name in params if name in keys]  # a tied head is stored once
    sums = {name: params[name] if params[name].dtype == torch.float32 else torch.zeros_like(params[name], dtype=torch.float32)
            for name in stored}
    for tensor in sums.values():
        tensor.zero_()
    for run, weight in zip(runs, weights):
        try:
            with safe_open(str(run.weights_path), framework="pt", device="cpu") as file:
                if set(file.keys()) != set(stored):
                    raise FewshotError(f"soup: {run.weights_path} holds other tensors than the model needs")
                for name in stored:
                    sums[name].add_(file.get_tensor(name).to(sums[name].device, torch.float32), alpha=weight)
        except (SafetensorError, OSError, ValueError) as error:
            raise FewshotError(f"soup: {run.weights_path} is corrupt or truncated ({error})") from None
    for name in stored:
        if sums[name] is not params[name]:
            params[name].copy_(sums[name])
    return model


def _keys(run: RunDir) -> set[str]:
    try:
        with safe_open(str(run.weights_path), framework="pt", device="cpu") as file:
            return set(file.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise FewshotError(f"soup: {run.weights_path} is unreadable ({error})") from None


# ---------------------------------------------------------------------------- adapters


def average_adapters(found: Ingredients, chosen: Sequence[int], weights: Sequence[float]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json record, adapter tensors) of the soup of the chosen adapters."""
    runs = [found.runs[i] for i in chosen]
    tensors = [run.adapter_tensors() for run in runs]
    record = dict(runs[0].config.adapter)
    if found.kind == "ia3":
        soup = {name: sum(w * t[name].float() for w, t in zip(weights, tensors)) for name in tensors[0]}
        return record, {name: t.contiguous() for name, t in soup.items()}
    # LoRA: one adapter of rank sum(r_i) with alpha = rank (scale 1), A stacked, B stacked and scaled.
    scales = [run.config.adapter["lora_alpha"] / run.config.adapter["r"] for run in runs]
    soup: dict[str, torch.Tensor] = {}
    for name in tensors[0]:
        if ".lora_A." in name:
            soup[name] = torch.cat([t[name].float() for t in tensors], dim=0).contiguous()
        elif ".lora_B." in name:
            soup[name] = torch.cat([w * s * t[name].float() for w, s, t in zip(weights, scales, tensors)], dim=1).contiguous()
        else:
            raise FewshotError(f"soup: {runs[0].adapter_weights_path} holds {name}, which is not a LoRA A or B")
    rank = sum(run.config.adapter["r"] for run in runs)
    record.update(r=rank, lora_alpha=rank)
    return record, soup


def adapted(base: GPT, record: dict, tensors: dict[str, torch.Tensor], where: str) -> GPT:
    """A model over `base`'s weights (shared, not copied) carrying this adapter."""
    model = add_adapter(GPT.sharing(base), config_from_json(record, where))
    load_adapter_state(model, tensors, where)
    return model.eval()


# ---------------------------------------------------------------------------- writing


def write_soup(out: str | Path, found: Ingredients, chosen: Sequence[int], weights: Sequence[float], how: str,
               model: GPT | None = None) -> RunDir:
    """The soup as a run directory: an ordinary run (full), or an adapter run on the same base.

    `model`, when given, already holds the averaged weights (full fine-tunes)."""
    out = Path(out)
    check_new_dir(out)
    first = found.runs[0]
    source = {"base": found.base, "base_sha256": found.base_sha256, "method": found.kind,
              "soup": {"how": how, "ingredients": [str(found.runs[i].path) for i in chosen], "weights": list(weights)}}
    if found.kind == "full":
        if model is None:
            model = average_into(GPT.for_loading(first.config.model), [found.runs[i] for i in chosen], weights)
        config = RunConfig(first.config.model, first.config.tokenizer, source=source)
        return RunDir.publish(out, config, first.tokenizer(), weights_to_save(model))
    record, tensors = average_adapters(found, chosen, weights)
    config = RunConfig(first.config.model, first.config.tokenizer, source=source, adapter=config_to_json(config_from_json(record, str(out))))
    return RunDir.publish(out, config, first.tokenizer(), tensors)


def soup_summary(found: Ingredients) -> dict[str, Any]:
    return {"kind": found.kind, "base": found.base, "base_sha256": found.base_sha256,
            "ingredients": [str(run.path) for run in found.runs]}

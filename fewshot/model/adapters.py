"""LoRA and (IA)3 on our own GPT, through peft.

peft's low-level API injects its layers into the modules named by the config and leaves
the model a plain GPT (same forward, same decoding path), with only the adapter trainable:

- LoRA (Hu et al. 2021): W x + (alpha / r) B A x on the chosen linear layers; B starts at zero.
- (IA)3 (Liu et al. 2022, T-Few): learned vectors, initialised to ones, that rescale the keys,
  the values and the FFN's inner activation. Our attention makes q, k and v with one fused
  layer (as GPT-2's c_attn), so (IA)3 scales its whole output and the query third is held
  at one (its gradient is zeroed, and the vectors take no weight decay): exactly the paper's
  keys-and-values scaling.

On disk an adapter is peft's own format (adapter_config.json + adapter_model.safetensors,
keys under `base_model.model.`), so `peft.PeftModel.from_pretrained` reads it too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fewshot.config import FinetuneConfig
from fewshot.errors import FewshotError

PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before every key
IA3_TARGETS = ("mixer.qkv", "mlp.down")  # keys and values (in qkv), and the FFN's inner activation (down's input)
IA3_FEEDFORWARD = ("mlp.down",)


def peft_config(config: FinetuneConfig, model: nn.Module) -> Any:
    """The peft config of `config.method` for this model's module names."""
    import peft

    names = [name for name, _ in model.named_modules()]

    def present(suffixes: tuple[str, ...]) -> list[str]:
        return [s for s in suffixes if any(n == s or n.endswith("." + s) for n in names)]

    if config.method == "lora":
        targets = present(config.targets())
        if not targets:
            raise FewshotError(f"finetune: this model has none of the layers --target {config.target} names")
        return peft.LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=targets,
                               lora_dropout=0.0, bias="none")
    if config.method == "ia3":
        targets = present(IA3_TARGETS)
        if "mixer.qkv" not in targets:
            raise FewshotError("finetune: (IA)3 scales attention's keys and values; this model has no attention layers")
        return peft.IA3Config(target_modules=targets, feedforward_modules=present(IA3_FEEDFORWARD),
                              init_ia3_weights=True)
    raise FewshotError(f"finetune: {config.method!r} is not an adapter method")


def config_from_json(record: dict[str, Any], where: str) -> Any:
    """A peft config from adapter_config.json's content."""
    import peft

    try:
        return peft.get_peft_config(record)
    except Exception as error:  # peft raises KeyError/TypeError/ValueError for a foreign or damaged file
        raise FewshotError(f"{where}: not a peft adapter config ({type(error).__name__}: {error})") from None


def config_to_json(adapter_config: Any) -> dict[str, Any]:
    record = adapter_config.to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in record.items()}


def add_adapter(model: nn.Module, adapter_config: Any) -> nn.Module:
    """Inject the adapter's layers into `model` in place; only they stay trainable."""
    import peft

    peft.inject_adapter_in_model(adapter_config, model)
    if adapter_config.peft_type == peft.PeftType.IA3:
        _hold_queries_at_one(model)
    return model


def _hold_queries_at_one(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if name.endswith("mixer.qkv") and hasattr(module, "ia3_l"):
            attention = model.get_submodule(name.removesuffix(".qkv"))
            for vector in module.ia3_l.values():
                vector.register_hook(_zero_rows(attention.n_head * attention.head_size))


def _zero_rows(rows: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:rows] = 0
        return grad

    return hook


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors, named as in peft's adapter_model.safetensors."""
    from peft import get_peft_model_state_dict

    return {PEFT_PREFIX + name: t.detach().contiguous() for name, t in get_peft_model_state_dict(model).items()}


def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Put saved adapter tensors into a model that already has the adapter's layers."""
    from peft import set_peft_model_state_dict

    expected = set(adapter_state(model))
    if set(tensors) != expected:
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise FewshotError(f"{where}: the adapter does not fit this model (missing {missing[:2]}, unexpected {unexpected[:2]})")
    for name, tensor in adapter_state(model).items():
        if tuple(tensors[name].shape) != tuple(tensor.shape):
            raise FewshotError(f"{where}: {name} has shape {tuple(tensors[name].shape)}, the model needs {tuple(tensor.shape)}")
    result = set_peft_model_state_dict(model, {name.removeprefix(PEFT_PREFIX): t for name, t in tensors.items()})
    if getattr(result, "unexpected_keys", None):
        raise FewshotError(f"{where}: the adapter does not fit this model (unexpected {result.unexpected_keys[:2]})")


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights and take its layers out: a plain GPT again."""
    for name, module in list(model.named_modules()):
        if hasattr(module, "merge") and hasattr(module, "get_base_layer"):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(model, attribute):
            delattr(model, attribute)
    return model

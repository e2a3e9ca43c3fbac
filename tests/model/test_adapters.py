"""fewshot.model.adapters: LoRA and (IA)3 through peft on our GPT."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import save_file

from fewshot.config import PRESETS, FinetuneConfig
from fewshot.errors import FewshotError
from fewshot.model import GPT
from fewshot.model.adapters import (
    adapter_state,
    add_adapter,
    config_from_json,
    config_to_json,
    load_adapter_state,
    merge_adapter,
    peft_config,
)

IDS = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(1))


def model(block: str = "gpt3") -> GPT:
    torch.manual_seed(0)
    config = PRESETS["nano"].model.replace(n_layer=2, context=32, block=block, bias=block == "gpt3")
    return GPT(config).eval()


def nudged(gpt: GPT, method: str, **options) -> GPT:
    """`gpt` with an adapter whose weights are moved off their start, as a little training would."""
    add_adapter(gpt, peft_config(FinetuneConfig(base="b", method=method, **options), gpt))
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return gpt


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("block", ["gpt3", "llama"])
def test_a_fresh_adapter_leaves_the_model_as_it_was_and_only_it_trains(method: str, block: str) -> None:
    base = model(block)
    before = base(IDS)[0]
    adapted = add_adapter(model(block), peft_config(FinetuneConfig(base="b", method=method), base))
    assert torch.allclose(adapted(IDS)[0], before, atol=1e-6)  # LoRA's B starts at zero, (IA)3's scales at one
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_" in n) if method == "lora" else (".ia3_l." in n) for n in trainable)


def test_lora_targets_name_the_layers_it_adapts() -> None:
    gpt = add_adapter(model(), peft_config(FinetuneConfig(base="b", method="lora", target="o"), model()))
    adapted = {name.split(".lora_")[0] for name, p in gpt.named_parameters() if p.requires_grad}
    assert adapted == {"blocks.0.mixer.proj", "blocks.1.mixer.proj"}
    with pytest.raises(FewshotError, match="--target takes qkv, o, mlp"):
        FinetuneConfig(base="b", target="q,k")


def test_ia3_scales_keys_values_and_the_ffn_activation_but_never_the_queries() -> None:
    gpt = add_adapter(model(), peft_config(FinetuneConfig(base="b", method="ia3"), model()))
    optimizer = torch.optim.AdamW([p for p in gpt.parameters() if p.requires_grad], lr=0.1, weight_decay=0.0)
    for _ in range(3):
        _, loss = gpt.train()(IDS[:, :-1], IDS[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    d = gpt.config.d_model
    for block in gpt.blocks:
        qkv = block.mixer.qkv.ia3_l["default"].detach().flatten()
        assert torch.equal(qkv[:d], torch.ones(d))  # the query third: held at one
        assert not torch.equal(qkv[d:], torch.ones(2 * d))  # keys and values: learned
        assert block.mlp.down.ia3_l["default"].shape == (1, gpt.config.hidden_size)  # the input of down: the inner activation


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_saved_adapter_tensors_load_back_to_the_same_outputs(method: str) -> None:
    trained = nudged(model(), method)
    expected = trained(IDS)[0]
    record = json.loads(json.dumps(config_to_json(trained.peft_config["default"])))  # through adapter_config.json
    fresh = add_adapter(model(), config_from_json(record, "adapter_config.json"))
    load_adapter_state(fresh, adapter_state(trained), "adapter")
    assert torch.equal(fresh(IDS)[0], expected)


def test_an_adapter_for_another_shape_is_refused() -> None:
    small = nudged(model(), "lora", lora_rank=4)
    other = add_adapter(model(), peft_config(FinetuneConfig(base="b", method="lora", lora_rank=8), model()))
    with pytest.raises(FewshotError, match="has shape"):
        load_adapter_state(other, adapter_state(small), "adapter")


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_merging_folds_the_adapter_into_plain_weights(method: str) -> None:
    trained = nudged(model(), method)
    expected = trained(IDS)[0]
    merged = merge_adapter(trained)
    assert not any("lora_" in n or "ia3_l" in n for n, _ in merged.named_parameters())
    assert set(merged.state_dict()) == set(model().state_dict())
    assert torch.allclose(merged(IDS)[0], expected, atol=1e-5)


def test_the_files_are_peft_format_peft_itself_loads(tmp_path: Path) -> None:
    trained = nudged(model(), "lora")
    expected = trained(IDS)[0]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config_to_json(trained.peft_config["default"])))
    save_file(adapter_state(trained), str(tmp_path / "adapter_model.safetensors"))
    loaded = peft.PeftModel.from_pretrained(model(), str(tmp_path))
    assert torch.allclose(loaded(IDS)[0], expected, atol=1e-6)


@pytest.mark.parametrize("block", ["gpt3", "llama"])
def test_a_sharing_model_carries_an_adapter_on_the_same_tensors_and_the_base_stays_plain(block: str) -> None:
    base = model(block)
    before = base(IDS)[0]
    tuned = nudged(GPT.sharing(base), "lora").eval()
    plain = dict(base.named_parameters())
    shared = {name.replace(".base_layer", ""): p for name, p in tuned.named_parameters() if not p.requires_grad}
    assert shared.keys() == plain.keys()
    assert all(shared[name].data_ptr() == p.data_ptr() for name, p in plain.items())  # no copy
    assert torch.equal(base(IDS)[0], before)  # the base is not adapted ...
    assert not torch.allclose(tuned(IDS)[0], before, atol=1e-3)  # ... its sharer is
    with pytest.raises(RuntimeError):
        GPT.sharing(tuned)  # a model with an adapter is not a plain base

"""Fine-tuning a run: full, LoRA or (IA)3, through the same loop as pre-training.

    config = finetune_config("runs/smollm2", "train.jsonl", "runs/ft", method="lora")
    train(config)            # fewshot.train.loop.train: schedule, bf16, accumulation, resume...

The base run gives the weights, the model config and the tokenizer; its path and the SHA-256
of its weights go into the new run, so an adapter never loads onto another base. A full
fine-tune writes an ordinary run directory. A LoRA or (IA)3 run holds only the adapter, in
peft's format, with checkpoints of the adapter and its optimizer alone.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewshot.chat import Message, render_chat
from fewshot.config import FINETUNE_LR, FinetuneConfig, TrainConfig
from fewshot.data.examples import TrainingExample, pack, read_examples
from fewshot.data.sampling import ExampleSampler, example_batches
from fewshot.errors import FewshotError
from fewshot.model import GPT
from fewshot.model.adapters import (
    add_adapter,
    adapter_state,
    config_from_json,
    config_to_json,
    load_adapter_state,
    peft_config,
)
from fewshot.runs import RunConfig, RunDir
from fewshot.tokenizer import Tokenizer
from fewshot.train.distributed import World
from fewshot.train.setup import Setup, check_memory

VAL_SHARE = 10  # one example in ten is held out for the validation loss, once there are ten


def finetune_config(base: str | Path, data: str | Path, out: str | Path, given: dict[str, Any] | None = None,
                    **finetune: Any) -> TrainConfig:
    """The TrainConfig of a fine-tune: `given` are TrainConfig fields, `finetune` FinetuneConfig's.

    Without max_steps, the step count is `epochs` passes over the training examples.
    """
    given = dict(given or {})
    run = RunDir.open(base)
    if run.is_adapter:
        raise FewshotError(f"{base} is an adapter; fine-tune its base (merge it first with --merge to build on it)")
    if run.config.model.quant is not None:
        raise FewshotError(f"{base} is quantised ({run.config.model.quant}) for inference; fine-tune the run it was "
                           f"quantised from, {(run.config.source or {}).get('quantized_from', 'its source')}")
    spec = FinetuneConfig(base=str(base), base_sha256=run.weights_sha256(), **finetune)
    given.setdefault("lr", FINETUNE_LR[spec.method])
    config = TrainConfig(data=str(data), out=str(out), finetune=spec, **given)
    if "max_steps" not in given:
        train_examples, _ = split_examples(config, load_examples(config, run))
        if spec.pack:
            train_examples = pack(train_examples, run.config.model.context)
        steps = math.ceil(spec.epochs * len(train_examples) / (config.batch_size * config.grad_accum))
        config = dataclasses.replace(config, max_steps=max(1, steps))
    if "warmup_steps" not in given:  # a fine-tune starts from a trained model: a short warm-up
        config = dataclasses.replace(config, warmup_steps=min(config.max_steps // 10, 100))
    return config




def load_examples(config: TrainConfig, base: RunDir) -> list[TrainingExample]:
    tokenizer = base.tokenizer()
    source = str(base.path)

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return render_chat([Message(m["role"], m["content"]) for m in messages], tokenizer.chat_template, source,
                           add_generation_prompt=add_generation_prompt).text

    return read_examples(config.data, tokenizer, render, base.config.model.context)


def split_examples(config: TrainConfig, examples: list[TrainingExample]) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, val): a seeded tenth held out once there are ten examples; none before."""
    order = np.random.default_rng([config.seed, 1]).permutation(len(examples))
    held = len(examples) // VAL_SHARE
    return [examples[i] for i in order[held:]], [examples[i] for i in order[:held]]


def finetuning(config: TrainConfig, run: RunDir, resume: bool, world: World, device: torch.device) -> Setup:
    """The Setup of a fine-tune (fewshot.train.setup): the base's weights, with an adapter if asked."""
    spec = config.finetune
    base = RunDir.open(spec.base)
    if base.weights_sha256() != spec.base_sha256:
        raise FewshotError(f"{spec.base}: its weights changed since this fine-tune started (SHA-256 "
                           f"{spec.base_sha256[:12]}... expected); restore that base or start a new fine-tune")
    tokenizer: Tokenizer = base.tokenizer()
    model_config = base.config.model.replace(dropout=config.dropout)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise FewshotError(f"{base.path}: tokenizer has {tokenizer.vocab_size} ids but the model only "
                           f"{model_config.vocab_size}; the tokenizer does not belong to this model")
    train_examples, val_examples = split_examples(config, load_examples(config, base))
    # Batches are as long as their longest example, which is usually far short of the context.
    check_memory(config, model_config, device, length=max(len(e.ids) for e in train_examples + val_examples))
    model = GPT.for_loading(model_config)
    base.load_weights(model)
    torch.manual_seed(config.seed)  # the adapter's initial weights (LoRA's A)
    adapter = None
    if spec.method != "full":
        adapter = peft_config(spec, model)
        add_adapter(model, adapter)
    if spec.pack:
        train_examples = pack(train_examples, model_config.context)
    sampler = ExampleSampler(train_examples, config.batch_size, config.grad_accum, config.seed, world.rank, world.size)
    record = RunConfig(model_config, tokenizer.spec(), train=config,
                       data={"path": str(config.data), "examples": len(train_examples) + len(val_examples),
                             "train": len(train_examples), "val": len(val_examples)},
                       source={"base": spec.base, "base_sha256": spec.base_sha256, "method": spec.method},
                       adapter=None if adapter is None else config_to_json(adapter))
    if adapter is None:
        return Setup(model_config, tokenizer, model, sampler, example_batches(val_examples, config.batch_size), record)
    return Setup(model_config, tokenizer, model, sampler, example_batches(val_examples, config.batch_size), record,
                 weights=lambda: adapter_state(model),
                 load=lambda path, target: load_adapter_state(target, _read(path), str(path)))


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def apply_adapter(model: GPT, adapter_dir: str | Path, base: RunDir) -> GPT:
    """`model` (the base's weights, loaded) with the adapter in `adapter_dir` on top.

    Refused when the adapter was trained on another base: its fingerprint must match.
    """
    adapter = RunDir.open(adapter_dir)
    if not adapter.is_adapter:
        raise FewshotError(f"{adapter_dir} is not an adapter run (a full fine-tune is loaded as a run of its own)")
    expected = (adapter.config.source or {}).get("base_sha256")
    actual = base.weights_sha256()
    if expected != actual:
        raise FewshotError(f"{adapter_dir} was trained on another base ({(adapter.config.source or {}).get('base')}, weights "
                           f"{str(expected)[:12]}...), not on {base.path} (weights {actual[:12]}...)")
    add_adapter(model, config_from_json(adapter.config.adapter, str(adapter.config_path)))
    load_adapter_state(model, adapter.adapter_tensors(), str(adapter.adapter_weights_path))
    return model


def merge_into_run(adapter_dir: str | Path, out: str | Path) -> RunDir:
    """An ordinary run directory: the adapter folded into its base's weights."""
    from fewshot.model.adapters import merge_adapter
    from fewshot.runs import weights_to_save
    from fewshot.files import check_new_dir

    check_new_dir(Path(out))
    adapter = RunDir.open(adapter_dir)
    source = adapter.config.source or {}
    base = RunDir.open(source.get("base", ""))
    model = GPT.for_loading(base.config.model)
    base.load_weights(model)
    merge_adapter(apply_adapter(model, adapter_dir, base))
    model.tie_weights()
    record = RunConfig(base.config.model, base.config.tokenizer,
                       source={**source, "merged_adapter": str(adapter_dir)})
    return RunDir.publish(out, record, base.tokenizer(), weights_to_save(model))

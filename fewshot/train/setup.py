"""What a run trains, built before the loop starts: the model, its data and its record.

Pre-training builds a fresh model from a preset and samples windows from prepared shards;
fine-tuning (fewshot.train.finetune) starts from a base run's weights and samples whole
examples. The loop (fewshot.train.loop) is the same for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewshot.config import ModelConfig, TrainConfig
from fewshot.data.sampling import StepSampler, fixed_batches
from fewshot.data.shards import TokenData
from fewshot.device import use_bf16
from fewshot.errors import FewshotError
from fewshot.model import GPT
from fewshot.runs import RunConfig, RunDir, load_weights
from fewshot.tokenizer import Tokenizer
from fewshot.train.distributed import World
from fewshot.train.memory import check_fits, estimate_training_memory


@dataclass
class Setup:
    model_config: ModelConfig
    tokenizer: Tokenizer
    model: GPT
    sampler: Any  # StepSampler or ExampleSampler: next_step(), plan(steps), state_dict(), load_state_dict()
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    record: RunConfig  # what config.json says about the run
    data_meta: dict[str, Any] = field(default_factory=dict)
    # The trainable part of the model, and how a checkpoint's weights load back into it.
    weights: Callable[[], dict[str, torch.Tensor]] | None = None  # None: every weight (full_state)
    load: Callable[[Path, torch.nn.Module], None] = load_weights


def check_memory(config: TrainConfig, model_config: ModelConfig, device: torch.device, length: int | None = None) -> None:
    """Before any weight is allocated: refuse what cannot fit (`length`: the longest sequence, if under the context)."""
    check_fits(estimate_training_memory(model_config, config.batch_size, length or model_config.context,
                                        use_bf16(config.precision, device)), device)


def pretraining(config: TrainConfig, run: RunDir, resume: bool, world: World, device: torch.device) -> Setup:
    """A fresh model of `config.preset` on the prepared data in `config.data`."""
    data = TokenData.open(Path(config.data))
    tokenizer = data.tokenizer
    model_config = _model_config(config, run, resume, tokenizer.spec(), tokenizer.vocab_size)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise FewshotError(f"tokenizer has {tokenizer.vocab_size} ids but the model only {model_config.vocab_size}")
    context = model_config.context
    check_memory(config, model_config, device)
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = GPT(model_config)
    # Data written as a curriculum (`prepare(..., in_order=True)`) is read from start to end over the run.
    in_order = config.max_steps if data.meta.get("in_order") else None
    # Data with a loss mask (`--data icl:loss=answers`) trains, and validates, on its learned tokens only.
    sampler = StepSampler(data.split("train"), config.batch_size, config.grad_accum, context, config.seed, world.rank,
                          world.size, in_order=in_order, loss_mask=data.loss_mask("train"))
    val_batches = fixed_batches(data.split("val"), config.batch_size, context, config.eval_batches, seed=config.seed,
                                loss_mask=data.loss_mask("val"))
    record = RunConfig(model_config, tokenizer.spec(), train=config, data={"path": str(config.data), "meta": data.meta})
    return Setup(model_config, tokenizer, model, sampler, val_batches, record, data_meta=data.meta)


def _model_config(config: TrainConfig, run: RunDir, resume: bool, tokenizer_spec: dict, vocab_size: int) -> ModelConfig:
    if not resume:
        return config.model_config(vocab_size)
    saved = run.config
    if saved.tokenizer != tokenizer_spec:
        raise FewshotError(
            f"{config.data} was prepared with tokenizer {tokenizer_spec} but {run.path} was trained with {saved.tokenizer}"
        )
    return saved.model

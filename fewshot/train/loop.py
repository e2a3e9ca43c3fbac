"""The training loop: GPT-3's recipe (Brown et al. 2020, §B) at any size.

AdamW with β = (0.9, 0.95), ε = 1e-8, weight decay 0.1 on matrices only, linear warmup
then cosine decay to 10% of the peak, gradient clipping at 1.0, gradient accumulation,
bf16 autocast, periodic validation loss and atomic checkpoints that resume bit for bit.
Under torchrun the same loop runs on every rank (DDP or FSDP2, see fewshot.train.distributed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from fewshot.config import TrainConfig
from fewshot.data.shards import TokenData
from fewshot.data.sampling import BatchSampler
from fewshot.train.distributed import (
    World,
    full_state,
    gather,
    gradient_sync,
    load_optimizer_state,
    plain_value,
    process_group,
    rank_device,
    sharded,
    sum_over_ranks,
    wrap,
)
from fewshot.device import autocast, pick_device, use_bf16
from fewshot.errors import FewshotError
from fewshot.train.metrics import MetricsLog, TrainingProgress
from fewshot.model import GPT
from fewshot.runs import RunDir, load_checkpoint, tied_aliases
from fewshot.train.checkpoint import rank_seed, restore_rng, rng_state
from fewshot.train.optim import make_optimizer
from fewshot.train.schedule import StepFit, learning_rate
from fewshot.train.setup import pretraining


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    step: int
    train_loss: float
    val_loss: float | None
    tokens: int
    seconds: float
    interrupted: bool
    unigram_entropy_bits: float | None


@torch.no_grad()
def evaluate_loss(model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, bf16: bool) -> float:
    was_training = model.training
    model.eval()
    total = 0.0
    for x, y in batches:
        with autocast(device, bf16):
            _, loss = model(x.to(device), y.to(device))
        total += loss.item()
    model.train(was_training)
    return total / len(batches)


def resume_config(out: str | Path, **overrides: Any) -> TrainConfig:
    """The saved TrainConfig of a run, with the options the user gave again on top."""
    run = RunDir.open(out)
    if run.config.train is None:
        raise FewshotError(f"{out} holds a model but no training run (it was imported); --resume continues a "
                           "run that `fewshot train` started")
    # The run is the directory given, wherever it was first written: a moved or copied run resumes in place.
    config = dataclasses.replace(run.config.train, out=str(out))
    wanted = overrides.get("optimizer")
    if wanted is not None and wanted != config.optimizer:
        raise FewshotError(f"{out} was trained with --optimizer {config.optimizer}: its optimizer state cannot continue "
                           f"under {wanted}; resume without --optimizer, or start a new run")
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


@contextlib.contextmanager
def stop_requests() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set an event; the loop saves a checkpoint and exits cleanly."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: requested.set())
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train(config: TrainConfig, resume: bool = False, console: Console | None = None,
          make_bar: Callable[[int, int], TrainingProgress] | None = None) -> TrainResult:
    """Train in this process, or as one rank of a torchrun job (see fewshot.train.distributed).

    `make_bar(total_steps, done_steps)` makes the progress bar; a sweep passes one that also moves its own."""
    world = World.from_env()
    device = rank_device(pick_device(config.device), world)
    run = RunDir(config.out)
    # Every rank checks (the run directory must be on a file system all ranks see); only rank 0
    # writes, after the barrier in _train, so no rank mistakes rank 0's new files for an old run.
    run.check_new_or_resumable(resume)
    with process_group(world, device), run.writing() if world.main else contextlib.nullcontext():
        return _train(config, run, resume, console or Console(stderr=True), world, device, make_bar)


def _train(config: TrainConfig, run: RunDir, resume: bool, console: Console, world: World, device: torch.device,
           make_bar: Callable[[int, int], TrainingProgress] | None) -> TrainResult:
    run_dir = run.path
    if config.finetune is None:
        setup = pretraining(config, run, resume, world, device)
    else:
        from fewshot.train.finetune import finetuning

        setup = finetuning(config, run, resume, world, device)
    tokenizer, model_config, sampler, val_batches = setup.tokenizer, setup.model_config, setup.sampler, setup.val_batches
    context = model_config.context
    bf16 = use_bf16(config.precision, device)
    model = setup.model.to(device)
    aliases = tied_aliases(model)
    step, tokens, elapsed = 0, 0, 0.0
    # A run killed before its first checkpoint resumes from step 0 with its saved config.
    checkpoint_dir = run.latest_checkpoint() if resume else None
    optimizer_state, state = None, None
    if checkpoint_dir is not None:
        # Every rank loads the full checkpoint, so FSDP below shards identical weights.
        optimizer_state, state = load_checkpoint(checkpoint_dir, model, device, setup.load)
    wrapped = wrap(model, config.strategy, world, device, bf16)
    optimizer = make_optimizer(model, config, device)
    if state is not None:
        load_optimizer_state(model, optimizer, optimizer_state)
        step, tokens, elapsed = int(state["step"]), int(state["tokens"]), float(state["elapsed"])
        cursor = {k: int(v) for k, v in state["sampler"].items()}
        if "global_batch" not in cursor:  # saved before the cursor counted steps: it counted micro-batches
            cursor["position"] = step
        sampler.load_state_dict(cursor)
        global_batch = sampler.state_dict()["global_batch"]
        if world.main and cursor.get("global_batch", global_batch) != global_batch:
            console.print(f"note: the global batch is now {global_batch} sequences (batch size x grad accum x world size); "
                          f"the checkpoint trained with {cursor['global_batch']}: adjust --grad-accum to keep it")
        restore_rng(state, world, device, config.seed, step)
    elif not world.main:
        torch.manual_seed(rank_seed(config.seed, world.rank, step))
    if world.active:
        torch.distributed.barrier()
    # The handlers go in before anything is written: from the first file on, a SIGINT or SIGTERM
    # must end in a checkpoint and a clean exit (the loop runs at least one step, then saves), not
    # in a KeyboardInterrupt half-way through the set-up.
    with stop_requests() as stop:
        if world.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            # config.json first: once it exists the run can be resumed, so a kill at any later
            # moment (even before the tokenizer is written, which every start rewrites) is recoverable.
            run.write_config(setup.record)
            run.save_tokenizer(tokenizer)
            if setup.record.adapter is not None:
                run.write_adapter_config(setup.record.adapter)
        forward = torch.compile(wrapped) if config.compile else wrapped

        def checkpoint() -> None:
            # Consolidated on rank 0 in the single-process format, so any world size can resume it.
            if setup.weights is None:
                weights, optimizer_state = full_state(wrapped, optimizer, aliases)  # a collective under FSDP
            else:  # an adapter: its own tensors; the frozen base is the base run's file
                weights, optimizer_state = setup.weights(), optimizer.state_dict()
            rng_ranks = gather(rng_state(device), world)
            if not world.main:
                return
            trainer_state = {
                "step": step, "tokens": tokens, "elapsed": elapsed,
                "sampler": sampler.state_dict(), "rng_cpu": torch.get_rng_state(),
            }
            if device.type == "cuda":
                trainer_state["rng_cuda"] = torch.cuda.get_rng_state(device)
            if world.active:
                trainer_state["rng_ranks"] = rng_ranks
            run.save_checkpoint(step, weights, optimizer_state, trainer_state, config.keep_last)

        metrics = (MetricsLog(run.metrics_path, resume_step=step, tensorboard_dir=run.tensorboard_dir if config.tensorboard else None)
                   if world.main else None)
        # Global batch = micro-batch x accumulation x world size (see StepSampler).
        windows_per_step = config.batch_size * config.grad_accum * world.size
        if world.main:
            ranks = f" on each of {world.size} ranks ({config.strategy.upper()})" if world.active else ""
            if config.finetune is None:
                shape = f"{config.batch_size}x{config.grad_accum}x{context}{ranks} = {windows_per_step * context} tokens per step"
            else:
                trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                shape = (f"{config.finetune.method}, {trainable / 1e6:.3g}M trainable; {config.batch_size}x{config.grad_accum}"
                         f"{ranks} = {windows_per_step} examples per step")
            console.print(
                f"training {model.num_params() / 1e6:.2f}M parameters on {device.type}"
                f"{' (bf16 autocast)' if bf16 else ''}: {shape}, steps {step}->{config.max_steps}"
            )
            if setup.data_meta.get("in_order"):
                console.print(f"the data is a curriculum: its train split is read from start to end over the {config.max_steps} steps")
            if step < config.short_context_steps:
                console.print(f"sequence-length warm-up: steps {step}->{config.short_context_steps} "
                              f"train on the first {config.window_length(step, context)} tokens of each window")
        model.train()
        train_loss, val_loss, interrupted = float("nan"), None, False
        session_start = time.perf_counter() - elapsed
        fit = StepFit(step) if config.fit_steps_to_time and config.max_time and not world.active else None
        progress_bar = (TrainingProgress(config.max_steps, step, enabled=config.progress and world.main, console=console)
                        if make_bar is None or not world.main else make_bar(config.max_steps, step))
        with progress_bar as progress:
            while step < config.max_steps:
                started = time.perf_counter()
                lr = learning_rate(step, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                total = 0.0
                micro_batches = sampler.next_step()
                length = config.window_length(step, context)
                for micro, (x, y) in enumerate(micro_batches):
                    x, y = x[:, :length], y[:, :length]
                    # Mean over the global batch: accumulation divides by A here, DDP/FSDP average over ranks.
                    with gradient_sync(wrapped, sync=micro == len(micro_batches) - 1):
                        with autocast(device, bf16):
                            _, loss = forward(x.to(device), y.to(device))
                        (loss / config.grad_accum).backward()
                    total += loss.item()
                grad_norm = plain_value(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                step_tokens = windows_per_step * length if config.finetune is None else world.size * sum(
                    int((y >= 0).sum()) for _, y in micro_batches)  # fine-tuning: the completion tokens trained on
                tokens += step_tokens
                elapsed = time.perf_counter() - session_start
                out_of_time = config.max_time is not None and elapsed >= config.max_time
                # One collective per step: the global mean loss, and whether any rank was asked to
                # stop or ran out of time, so that all ranks leave the loop at the same step.
                loss_sum, stops, timeouts = sum_over_ranks([total / config.grad_accum, stop.is_set(), out_of_time], world, device)
                train_loss = loss_sum / world.size
                if not math.isfinite(train_loss):
                    raise FewshotError(f"training diverged at step {step} (loss {train_loss}); lower --lr or raise --warmup-steps")
                interrupted, out_of_time = stops > 0, timeouts > 0
                if fit is not None and (fitted := fit.observe(step, elapsed, config)) is not None:
                    console.print(f"step {step}: {fit.seconds_per_step:.3f} seconds per step so far -> {fitted} steps "
                                  f"fit the {config.max_time:.0f} s budget (planned {config.max_steps})")
                    config = dataclasses.replace(config, max_steps=fitted, fit_steps_to_time=not fit.done)
                    run.write_config(run.config.replace(train=config))  # a resumed run keeps the fitted schedule
                    progress.set_total(fitted)
                    sampler.plan(fitted)
                    if fit.done:
                        fit = None
                last = step >= config.max_steps or interrupted or out_of_time
                val_loss_now = None
                # a run always ends with a measured val loss; under FSDP every rank takes part in the forward
                if (step % config.eval_every == 0 or last) and val_batches and (world.main or sharded(wrapped)):
                    val_loss = val_loss_now = evaluate_loss(model, val_batches, device, bf16)
                tok_per_s = step_tokens / (time.perf_counter() - started)
                if metrics is not None and (step % config.log_every == 0 or val_loss_now is not None or last):
                    metrics.log(step=step, tokens=tokens, train_loss=train_loss, val_loss=val_loss_now, lr=lr,
                                grad_norm=grad_norm, tok_per_s=tok_per_s, elapsed_s=elapsed)
                progress.update(step, train_loss, val_loss, tok_per_s)
                if step % config.save_every == 0 or last:
                    checkpoint()
                if interrupted or out_of_time:
                    break
    if metrics is not None:
        metrics.close()
    if interrupted and world.main:
        console.print(f"stopped by signal at step {step}; checkpoint saved in {run_dir} (continue with --resume)")
    return TrainResult(run_dir, step, train_loss, val_loss, tokens, elapsed, interrupted, setup.data_meta.get("unigram_entropy_bits"))


def seconds_per_step(config: TrainConfig, data: TokenData, steps: int = 8) -> float:
    """Time a few real optimizer steps on a throwaway copy of the model, so the run's
    step count (and with it the cosine schedule) fits the time budget exactly. The steps are
    the loop's: the same forward (compiled if the run compiles), clipping and loss read-back."""
    device = pick_device(config.device)
    bf16 = use_bf16(config.precision, device)
    model = GPT(config.model_config(data.tokenizer.vocab_size)).to(device)
    forward = torch.compile(model) if config.compile else model
    optimizer = make_optimizer(model, config, device)
    sampler = BatchSampler(data.split("train"), config.batch_size, model.config.context, seed=config.seed)
    # The first steps pay for one-time allocations (and torch.compile's compilation).
    warmup = 3 if config.compile else 2
    timings = []
    for _ in range(steps + warmup):
        started = time.perf_counter()
        x, y = sampler.next_batch()
        with autocast(device, bf16):
            _, loss = forward(x.to(device), y.to(device))
        loss.backward()
        loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - started)
    # The median: single steps vary a lot on a busy machine, and the fastest of a few would
    # overshoot the budget, so the time cap would end the run mid-schedule.
    return statistics.median(timings[warmup:])

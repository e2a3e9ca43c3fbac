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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from fewshot import __version__
from fewshot.train.checkpoint import CONFIG, latest_checkpoint, load_checkpoint, save_checkpoint, tied_aliases
from fewshot.config import ModelConfig, TrainConfig
from fewshot.data.prepare import BatchSampler, StepSampler, TokenData, fixed_batches
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
from fewshot.errors import FewshotError
from fewshot.files import read_json, write_json
from fewshot.train.memory import check_fits, estimate_training_memory
from fewshot.train.metrics import MetricsLog, TrainingProgress
from fewshot.model import GPT
from fewshot.train.optim import make_optimizer


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


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio of the peak at max_steps."""
    peak, warmup = config.peak_lr, config.warmup
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, config.max_steps - warmup))
    floor = peak * config.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


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
    saved = read_json(Path(out) / CONFIG)
    # The run is the directory given, wherever it was first written: a moved or copied run resumes in place.
    config = dataclasses.replace(TrainConfig.from_dict(saved["train"]), out=str(out))
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


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise FewshotError(f"{run_dir}: no run to resume (no {CONFIG}); drop --resume to start a new run")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise FewshotError(f"{run_dir} already holds files; pass --resume to continue that run or choose another --out")


def _model_config(config: TrainConfig, run_dir: Path, resume: bool, tokenizer_spec: dict, vocab_size: int) -> ModelConfig:
    if not resume:
        return config.model_config(vocab_size)
    saved = read_json(run_dir / CONFIG)
    if saved["tokenizer"] != tokenizer_spec:
        raise FewshotError(
            f"{config.data} was prepared with tokenizer {tokenizer_spec} but {run_dir} was trained with {saved['tokenizer']}"
        )
    return ModelConfig.from_dict(saved["model"])


def train(config: TrainConfig, resume: bool = False, console: Console | None = None) -> TrainResult:
    """Train in this process, or as one rank of a torchrun job (see fewshot.train.distributed)."""
    world = World.from_env()
    device = rank_device(pick_device(config.device), world)
    with process_group(world, device):
        return _train(config, resume, console or Console(stderr=True), world, device)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict, world: World, device: torch.device, seed: int, step: int) -> None:
    """Each rank's own RNG when the world size is the saved one; otherwise rank 0 takes the
    saved rank 0's and the others start fresh streams (dropout masks only: the data cursor
    is the step and does not depend on RNG state)."""
    saved = state.get("rng_ranks")
    if saved is not None and len(saved) == world.size:
        mine = saved[world.rank]
    elif world.main:
        mine = {"cpu": state["rng_cpu"], **({"cuda": state["rng_cuda"]} if "rng_cuda" in state else {})}
    else:
        torch.manual_seed(_rank_seed(seed, world.rank, step))
        return
    torch.set_rng_state(mine["cpu"])
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], device)


def _rank_seed(seed: int, rank: int, step: int) -> int:
    # Ranks other than 0 draw their own dropout masks; rank 0 keeps the single-process stream.
    return (seed * 1_000_003 + rank) * 1_000_003 + step


def _train(config: TrainConfig, resume: bool, console: Console, world: World, device: torch.device) -> TrainResult:
    run_dir = Path(config.out)
    # Every rank checks (the run directory must be on a file system all ranks see); only rank 0
    # writes, after the barrier below, so no rank mistakes rank 0's new files for an old run.
    _check_run_dir(run_dir, resume)
    data = TokenData.open(Path(config.data))
    tokenizer = data.tokenizer
    model_config = _model_config(config, run_dir, resume, tokenizer.spec(), tokenizer.vocab_size)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise FewshotError(f"tokenizer has {tokenizer.vocab_size} ids but the model only {model_config.vocab_size}")
    context = model_config.context
    bf16 = use_bf16(config.precision, device)
    check_fits(estimate_training_memory(model_config, config.batch_size, context, bf16), device)

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = GPT(model_config).to(device)
    aliases = tied_aliases(model)
    sampler = StepSampler(data.split("train"), config.batch_size, config.grad_accum, context, config.seed, world.rank, world.size)
    val_batches = fixed_batches(data.split("val"), config.batch_size, context, config.eval_batches, seed=config.seed)
    step, tokens, elapsed = 0, 0, 0.0
    # A run killed before its first checkpoint resumes from step 0 with its saved config.
    checkpoint_dir = latest_checkpoint(run_dir) if resume else None
    optimizer_state, state = None, None
    if checkpoint_dir is not None:
        # Every rank loads the full checkpoint, so FSDP below shards identical weights.
        optimizer_state, state = load_checkpoint(checkpoint_dir, model, device)
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
        _restore_rng(state, world, device, config.seed, step)
    elif not world.main:
        torch.manual_seed(_rank_seed(config.seed, world.rank, step))
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
            write_json(run_dir / CONFIG, {
                "fewshot_version": __version__,
                "model": model_config.to_dict(),
                "tokenizer": tokenizer.spec(),
                "train": config.to_dict(),
                "data": {"path": str(config.data), "meta": data.meta},
            })
            tokenizer.save(run_dir)
        forward = torch.compile(wrapped) if config.compile else wrapped

        def checkpoint() -> None:
            # Consolidated on rank 0 in the single-process format, so any world size can resume it.
            weights, optimizer_state = full_state(wrapped, optimizer, aliases)  # a collective under FSDP
            rng_ranks = gather(_rng_state(device), world)
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
            save_checkpoint(run_dir, step, weights, optimizer_state, trainer_state, config.keep_last)

        metrics = MetricsLog(run_dir, resume_step=step, tensorboard=config.tensorboard) if world.main else None
        # Global batch = micro-batch x accumulation x world size (see StepSampler).
        windows_per_step = config.batch_size * config.grad_accum * world.size
        if world.main:
            ranks = f" on each of {world.size} ranks ({config.strategy.upper()})" if world.active else ""
            console.print(
                f"training {model.num_params() / 1e6:.2f}M parameters on {device.type}"
                f"{' (bf16 autocast)' if bf16 else ''}: {config.batch_size}x{config.grad_accum}x{context}{ranks} "
                f"= {windows_per_step * context} tokens/step, steps {step}->{config.max_steps}"
            )
            if step < config.short_context_steps:
                console.print(f"sequence-length warm-up: steps {step}->{config.short_context_steps} "
                              f"train on the first {config.window_length(step, context)} tokens of each window")
        model.train()
        train_loss, val_loss, interrupted = float("nan"), None, False
        session_start = time.perf_counter() - elapsed
        fit = StepFit(step) if config.fit_steps_to_time and config.max_time and not world.active else None
        progress_bar = TrainingProgress(config.max_steps, step, enabled=config.progress and world.main, console=console)
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
                tokens += windows_per_step * length
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
                    console.print(f"step {step}: {fit.seconds_per_step:.3f} s/step so far -> {fitted} steps "
                                  f"fit the {config.max_time:.0f} s budget (planned {config.max_steps})")
                    config = dataclasses.replace(config, max_steps=fitted, fit_steps_to_time=not fit.done)
                    _save_fitted_config(run_dir, config)  # a resumed run keeps the fitted schedule
                    progress.set_total(fitted)
                    if fit.done:
                        fit = None
                last = step >= config.max_steps or interrupted or out_of_time
                val_loss_now = None
                # a run always ends with a measured val loss; under FSDP every rank takes part in the forward
                if (step % config.eval_every == 0 or last) and (world.main or sharded(wrapped)):
                    val_loss = val_loss_now = evaluate_loss(model, val_batches, device, bf16)
                tok_per_s = windows_per_step * length / (time.perf_counter() - started)
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
    return TrainResult(run_dir, step, train_loss, val_loss, tokens, elapsed, interrupted, data.meta.get("unigram_entropy_bits"))


class StepFit:
    """Refits a run's step count to its time budget from the steps it has actually run: a
    few calibration steps before the run misjudge a noisy 2-core machine by 20-30% either
    way (the schedule then ends early, wasting time, or the time cap cuts it short)."""

    SKIP = 5              # steps that pay for compilation and allocations, left out of the measurement
    # Of the budget: when to refit. The second absorbs a slow spell early in the run (another
    # process); the later ones a machine that speeds up or slows down for minutes at a time (one run
    # measured 0.357 s/step at 25%, then ran faster and finished its schedule 170 s early). Each
    # refit moves the cosine's position by a few percent, so the learning rate barely bends.
    AT = (0.05, 0.25, 0.5, 0.75)
    SHARE = 0.96          # of the remaining time: the rest absorbs noise, the last eval and save

    def __init__(self, first_step: int) -> None:
        self.start_step = first_step + self.SKIP
        self.start_time: float | None = None
        self.pending = list(self.AT)
        self.seconds_per_step = float("nan")

    @property
    def done(self) -> bool:
        return not self.pending

    def observe(self, step: int, elapsed: float, config: TrainConfig) -> int | None:
        """The refitted max_steps at the first step after each of AT of the budget that has a
        validation and a checkpoint among its measured steps (they are part of a step's cost); else None."""
        if step == self.start_step:
            self.start_time = elapsed
        measured = step - self.start_step
        if (self.done or self.start_time is None or measured < max(config.eval_every, config.save_every)
                or elapsed < self.pending[0] * config.max_time):
            return None
        self.pending.pop(0)
        self.seconds_per_step = (elapsed - self.start_time) / measured
        remaining = self.SHARE * (config.max_time - elapsed)
        return max(step + 1, step + int(remaining / self.seconds_per_step))


def _save_fitted_config(run_dir: Path, config: TrainConfig) -> None:
    saved = read_json(run_dir / CONFIG)
    write_json(run_dir / CONFIG, {**saved, "train": config.to_dict()})


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
    # The median: single steps vary by +-25% on a 2-core machine, and the fastest of a few
    # would overshoot the budget, so the time cap would end the run mid-schedule.
    return statistics.median(timings[warmup:])

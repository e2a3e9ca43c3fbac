"""Training-step throughput: fp32 against bf16 autocast, and fewshot against transformers.

MFU (model FLOPs utilisation) = achieved model FLOP/s over the machine's peak for the
dtype, with the peak measured by `fewshot bench peak` (bench/peak.py). Model FLOPs per
trained token (ModelConfig.flops_per_token) are 6N + 12·L·d·T (Kaplan et al. 2020 §2.1;
PaLM App. B adds the attention term): forward 2 FLOPs per weight per token, backward twice that, plus QK^T and AV over a
sequence of T. Here N counts every weight a matmul multiplies: all block parameters plus
the output head (the tied token embedding, counted once). The learned position embedding
is excluded, it is a lookup; biases and LayerNorm gains stay in (under 1% at these sizes).
Recomputation and the causal mask's skipped half are not credited, as MFU prescribes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from fewshot.bench.timing import interleave, median, pair_ratios, synchronize
from fewshot.errors import FewshotError


@dataclass(frozen=True)
class PrecisionBench:
    """Training-step throughput of fp32 against bf16 autocast on the same model and batch."""

    device: str
    tokens_per_step: int
    fp32_tok_per_s: float
    bf16_tok_per_s: float
    speedup: float  # bf16 over fp32
    loss_gap: float  # |fp32 loss - bf16 loss| on the same first batch: what bf16 costs in accuracy


def bench_train_precision(config, batch_size: int, steps: int = 5, device: str = "cpu") -> PrecisionBench:
    """Time `steps` optimizer steps per precision (after one warm-up), same weights, same batch."""
    from fewshot.config import TrainConfig
    from fewshot.model import GPT
    from fewshot.train.optim import make_optimizer
    from fewshot.device import autocast

    target = torch.device(device)
    x, y = _batch(config, batch_size, config.context, target)
    speeds, losses = {}, {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = GPT(config).to(target)
        optimizer = make_optimizer(model, TrainConfig(data="-", out="-"), target)  # the one training uses
        timings = []
        for step in range(steps + 1):
            synchronize(target)
            started = time.perf_counter()
            with autocast(target, bf16):
                _, loss = model(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(target)
            timings.append(time.perf_counter() - started)
            if step == 0:
                losses[bf16] = loss.item()
        speeds[bf16] = batch_size * config.context / min(timings[1:])
    return PrecisionBench(str(target), batch_size * config.context, speeds[False], speeds[True],
                          speeds[True] / speeds[False], abs(losses[False] - losses[True]))


@dataclass(frozen=True)
class TrainVsHF:
    device: str
    dtype: str  # "fp32", or "bf16" = bf16 autocast for both
    threads: int
    batch: int
    seq: int
    params: int  # both models, checked equal
    matmul_params: int
    flops_per_token: int
    steps: int  # timed steps per side (after warm-up)
    step_s: float  # medians
    hf_step_s: float
    tok_s: float
    hf_tok_s: float
    ratio_vs_hf: float  # tok_s / hf_tok_s
    pair_ratios: list[float]  # per round, HF seconds / ours
    peak_gflops: float | None
    mfu: float | None
    hf_mfu: float | None
    loss: float  # first step, same weights and batch on both sides
    hf_loss: float
    logits_gap: float  # max |logit difference| at init, fp32 inference

    def to_json(self) -> dict:
        return asdict(self)


def bench_train_vs_hf(config, batch: int, seq: int, dtype: str = "fp32", steps: int = 5, warmup: int = 1,
                      device: str = "cpu", peak_gflops: float | None = None, progress: bool = False) -> TrainVsHF:
    """Optimizer steps of our GPT and of GPT2LMHeadModel with the same weights, interleaved.

    Both take the same step: forward in `dtype` (bf16 = autocast), cross-entropy on float32
    logits against the same targets, backward, gradient clipping at 1.0 and GPT-3's AdamW
    (optim.make_optimizer). `config.context` becomes `seq`, so both have n_positions = seq.
    """
    from fewshot.bench.peer import hf_peer, logits_gap
    from fewshot.config import TrainConfig
    from fewshot.model import GPT
    from fewshot.train.optim import make_optimizer
    from fewshot.device import autocast

    if dtype not in ("fp32", "bf16"):
        raise FewshotError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    if min(batch, seq, steps) < 1 or warmup < 0:
        raise FewshotError(f"bench train: batch, seq and steps must be >= 1 (got {batch}, {seq}, {steps})")
    target = torch.device(device)
    config = config.replace(context=seq, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(config).to(target)
    peer = hf_peer(model)
    gap = logits_gap(model, peer)
    model.train(), peer.train()
    recipe = TrainConfig(data="-", out="-")  # GPT-3 §B's AdamW settings
    optimizers = make_optimizer(model, recipe, target), make_optimizer(peer, recipe, target)
    x, y = _batch(config, batch, seq, target)
    bf16 = dtype == "bf16"
    losses: dict[str, list[float]] = {"fewshot": [], "hf": []}

    def step(name: str, module, optimizer, logits_of) -> None:
        with autocast(target, bf16):
            logits = logits_of()
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not losses[name]:
            losses[name].append(loss.item())

    runs = {
        "fewshot": lambda: step("fewshot", model, optimizers[0], lambda: model(x)[0]),
        # use_cache=False: a training forward has no use for a KV cache; don't make HF build one.
        "hf": lambda: step("hf", peer, optimizers[1], lambda: peer(input_ids=x, use_cache=False).logits),
    }
    seconds = interleave(runs, steps, warmup, target, progress, label=f"train {dtype} vs HF")
    ours, theirs = median(seconds["fewshot"]), median(seconds["hf"])
    tokens, flops = batch * seq, config.flops_per_token(seq)

    def mfu(step_seconds: float) -> float | None:
        return None if not peak_gflops else flops * tokens / step_seconds / (peak_gflops * 1e9)

    return TrainVsHF(
        device=str(target), dtype=dtype, threads=torch.get_num_threads(), batch=batch, seq=seq,
        params=model.num_params(), matmul_params=config.matmul_params(), flops_per_token=flops, steps=steps,
        step_s=ours, hf_step_s=theirs, tok_s=tokens / ours, hf_tok_s=tokens / theirs, ratio_vs_hf=theirs / ours,
        pair_ratios=pair_ratios(seconds["fewshot"], seconds["hf"]), peak_gflops=peak_gflops,
        mfu=mfu(ours), hf_mfu=mfu(theirs), loss=losses["fewshot"][0], hf_loss=losses["hf"][0], logits_gap=gap,
    )


def _batch(config, batch: int, seq: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, config.vocab_size, (batch, seq), generator=generator).to(device)
    y = torch.randint(0, config.vocab_size, (batch, seq), generator=generator).to(device)
    return x, y

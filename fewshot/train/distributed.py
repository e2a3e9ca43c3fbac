"""Training on many processes: torchrun's environment, DDP or FSDP2, and what rank 0 alone does.

    torchrun --nproc_per_node 2 -m fewshot train ...       # or: fewshot train ... --nproc 2

torchrun starts one process per rank and hands each RANK, LOCAL_RANK, WORLD_SIZE and
MASTER_ADDR/MASTER_PORT. `World.from_env` reads them; a process started without them is a
world of one and never touches torch.distributed, so single-process training is unchanged.
The backend follows the device: gloo on CPU, NCCL on CUDA.

Checkpoints are consolidated on rank 0 (full state dicts, offloaded to CPU) into the ordinary
run-directory format: one safetensors file, an optimizer state keyed like a single process's,
a SHA-256 manifest, written atomically. Any world size, a single process included, resumes
from them, and every other tool reads the run as if one process had trained it. The price is
that rank 0 must hold the whole model in CPU memory while it saves, which is true of every
model this project trains; torch.distributed.checkpoint's sharded format would avoid it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fewshot.runs import weights_to_save
from fewshot.errors import FewshotError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @classmethod
    def from_env(cls) -> World:
        """The torchrun environment, or a world of one outside it."""
        try:
            world = cls(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
        except ValueError:
            raise FewshotError("RANK, LOCAL_RANK and WORLD_SIZE must be integers; start distributed training with torchrun") from None
        if not 0 <= world.rank < world.size:
            raise FewshotError(f"RANK={world.rank} is outside WORLD_SIZE={world.size}; start distributed training with torchrun")
        return world

    @property
    def main(self) -> bool:
        """Rank 0 alone logs, evaluates, draws the progress bar and writes the run directory."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


class PeerLost(FewshotError):
    """Another rank died, so this one stops too; the last complete checkpoint stands."""


def rank_device(device: torch.device, world: World) -> torch.device:
    """One GPU per rank on a node: cuda:LOCAL_RANK."""
    return torch.device("cuda", world.local_rank) if world.active and device.type == "cuda" else device


def _collective_failed(error: BaseException) -> bool:
    # gloo raises plain RuntimeErrors ("... gloo/transport/tcp/pair.cc ... Connection reset by
    # peer"); NCCL and the c10d store raise DistError subclasses.
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "gloo" in str(error))


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the job's process group for the duration; a world of one joins nothing."""
    if not world.active:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size,
                            device_id=device if device.type == "cuda" else None)
    try:
        yield
        dist.barrier()  # rank 0 may still be writing the last checkpoint: the job ends when it is saved
    except Exception as error:
        if _collective_failed(error):
            # gloo's first sentence, without its source path: "Read error [addr]: Connection reset by peer"
            reason = re.sub(r"^\[[^\]]*\.cc:\d+\]\s*", "", str(error).strip()).split(". ")[0][:200]
            raise PeerLost(
                f"rank {world.rank}: lost contact with another rank ({reason}); "
                "the job stops without saving, and --resume continues from the last complete checkpoint"
            ) from None
        raise
    finally:
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, strategy: str, world: World, device: torch.device, bf16: bool) -> torch.nn.Module:
    """DDP (a replica per rank, gradients averaged) or FSDP2 (parameters, gradients and optimizer
    state sharded per block). Every rank must hold the same weights beforehand."""
    if not world.active:
        return model
    if strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 compute and all-gathers, fp32 gradient reduction and master weights.
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)  # the rest: embeddings, final norm, (tied) head
    return model


def sharded(model: torch.nn.Module) -> bool:
    """Wrapped by FSDP2: its forward is a collective, and its state dicts hold shards."""
    # Duck-typed: importing torch.distributed.fsdp costs a second that single-process runs
    # (and everything that imports fewshot.train.loop) should not pay.
    return hasattr(model, "set_requires_gradient_sync")


def gradient_sync(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Reduce gradients only on the last micro-step of an accumulation (DDP no_sync)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if sync else model.no_sync()
    if sharded(model):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def plain_value(tensor: torch.Tensor) -> float:
    """A scalar that FSDP hands back as a DTensor (the gradient norm)."""
    return float(tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor)


def sum_over_ranks(values: Sequence[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sums over all ranks: the mean loss, and whether any rank wants to stop."""
    if not world.active:
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def gather(value: Any, world: World) -> list[Any]:
    """Every rank's value (picklable), in rank order, on every rank."""
    if not world.active:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def _parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters in its own order, by name (a tied weight once)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, aliases: set[str]) -> tuple[dict, dict]:
    """(weights, optimizer state) of the whole model, complete on rank 0 (empty elsewhere under
    FSDP), in the single-process layout. A collective under FSDP: every rank must call it.

    `aliases` are the tied names to leave out, found before sharding (FSDP's full state dict
    holds a tied weight twice, as two copies)."""
    if not sharded(model):
        plain = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        return weights_to_save(plain), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = {n: t.contiguous() for n, t in get_model_state_dict(model, options=options).items() if n not in aliases}
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not by_name:
        return {}, {}
    index = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    return weights, {
        "state": {index[name]: state for name, state in by_name["state"].items()},
        "param_groups": [{**group, "params": [index[name] for name in group["params"]]} for group in by_name["param_groups"]],
    }


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a single-process optimizer state; FSDP keeps only this rank's shard of it."""
    if not sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    names = _parameter_names(model, optimizer)
    by_name = {
        "state": {names[int(i)]: s for i, s in state["state"].items()},
        "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]} for group in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def launch(arguments: Sequence[str], nproc: int) -> None:
    """Run `fewshot <arguments>` under torchrun with `nproc` processes on this machine.

    --standalone gives the job a free port, so jobs side by side never collide. A rank that
    fails makes torchrun stop the others and exit non-zero, which becomes a FewshotError here.
    Ctrl-C reaches torchrun and the workers from the terminal, and SIGTERM is passed on to
    torchrun, which passes it to the workers: they save and stop while this process waits.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "fewshot", *arguments]
    child = subprocess.Popen(command)
    stopped = []

    def stop(sig: int, _frame: Any) -> None:
        stopped.append(sig)
        if sig == signal.SIGTERM:
            child.terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # Asked to stop, torchrun exits non-zero even when every rank saved and stopped cleanly
    # (rank 0 has said so); as in a single process, a requested stop is not a failure.
    if code != 0 and not stopped:
        raise FewshotError(
            f"distributed training failed (torchrun exit status {code}; its report above names the rank that failed); "
            "nothing after the last complete checkpoint was saved, continue with --resume"
        )

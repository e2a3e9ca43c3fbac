"""The trainer's own state in a checkpoint: random streams per rank, saved and restored so
that a resumed run draws the same dropout masks as one that never stopped."""

from __future__ import annotations

import torch

from fewshot.train.distributed import World


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, world: World, device: torch.device, seed: int, step: int) -> None:
    """Each rank's own RNG when the world size is the saved one; otherwise rank 0 takes the
    saved rank 0's and the others start fresh streams (dropout masks only: the data cursor
    is the step and does not depend on RNG state)."""
    saved = state.get("rng_ranks")
    if saved is not None and len(saved) == world.size:
        mine = saved[world.rank]
    elif world.main:
        mine = {"cpu": state["rng_cpu"], **({"cuda": state["rng_cuda"]} if "rng_cuda" in state else {})}
    else:
        torch.manual_seed(rank_seed(seed, world.rank, step))
        return
    torch.set_rng_state(mine["cpu"])
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], device)


def rank_seed(seed: int, rank: int, step: int) -> int:
    # Ranks other than 0 draw their own dropout masks; rank 0 keeps the single-process stream.
    return (seed * 1_000_003 + rank) * 1_000_003 + step

"""The pieces of distributed training that need no second process: the world-size-independent
step sampler, the torchrun environment, and the single-process fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshot.config import PRESETS, TrainConfig
from fewshot.data.sampling import BatchSampler, StepSampler
from fewshot.train.distributed import World, full_state, gradient_sync, load_optimizer_state, sum_over_ranks
from fewshot.errors import FewshotError
from fewshot.model import GPT
from fewshot.train.optim import make_optimizer


class Positions:
    """A split whose token at i is i: a window shows where it was cut."""

    name = "train"

    def __len__(self) -> int:
        return 10_000

    def window(self, start: int, length: int) -> np.ndarray:
        return np.arange(start, start + length)


def step_windows(world_size: int, grad_accum: int, batch_size: int = 2, steps: int = 3) -> list[torch.Tensor]:
    """Each step's windows, gathered in rank order then micro-step order."""
    samplers = [StepSampler(Positions(), batch_size, grad_accum, 8, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    windows = []
    for _ in range(steps):
        micro = [x for sampler in samplers for x, _ in sampler.next_step()]
        assert len(micro) == world_size * grad_accum and all(x.shape == (batch_size, 8) for x in micro)
        windows.append(torch.cat(micro))
    return windows


def test_a_global_step_is_the_same_windows_however_ranks_and_micro_steps_split_it() -> None:
    one_process = step_windows(world_size=1, grad_accum=4)
    for world_size, grad_accum in [(2, 2), (4, 1)]:
        assert all(torch.equal(a, b) for a, b in zip(one_process, step_windows(world_size, grad_accum)))
    assert not torch.equal(one_process[0], one_process[1])  # steps differ


def test_ranks_take_disjoint_slices_of_the_global_batch() -> None:
    ranks = [StepSampler(Positions(), 3, 1, 8, seed=0, rank=r, world_size=2).next_step()[0][0] for r in range(2)]
    whole = StepSampler(Positions(), 6, 1, 8, seed=0).next_step()[0][0]
    assert torch.equal(ranks[0], whole[:3]) and torch.equal(ranks[1], whole[3:])


def test_one_process_without_accumulation_draws_what_it_always_drew() -> None:
    # Runs trained before distributed training existed resume onto the same data.
    old, new = BatchSampler(Positions(), 4, 8, seed=7), StepSampler(Positions(), 4, 1, 8, seed=7)
    for _ in range(3):
        (x_old, y_old), [(x_new, y_new)] = old.next_batch(), new.next_step()
        assert torch.equal(x_old, x_new) and torch.equal(y_old, y_new)


def test_the_step_cursor_resumes_on_another_world_size() -> None:
    two_ranks = [StepSampler(Positions(), 2, 1, 8, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        for sampler in two_ranks:
            sampler.next_step()
    state = two_ranks[0].state_dict()
    assert state == {"seed": 1, "position": 3, "global_batch": 4}
    one = StepSampler(Positions(), 2, 2, 8, seed=99)
    one.load_state_dict(state)
    expected = torch.cat([x for sampler in two_ranks for x, _ in sampler.next_step()])
    assert torch.equal(torch.cat([x for x, _ in one.next_step()]), expected)


def test_a_rank_outside_the_world_is_refused() -> None:
    with pytest.raises(FewshotError, match="outside"):
        StepSampler(Positions(), 2, 1, 8, seed=0, rank=2, world_size=2)


def test_the_world_comes_from_the_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert World.from_env() == World(0, 0, 1) and World.from_env().main and not World.from_env().active
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    world = World.from_env()
    assert world == World(3, 1, 4) and world.active and not world.main
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(FewshotError, match="outside WORLD_SIZE"):
        World.from_env()


def test_a_world_of_one_needs_no_process_group() -> None:
    model = GPT(PRESETS["nano"].model.replace(context=16))
    optimizer = make_optimizer(model, TrainConfig(data="d", out="o"), torch.device("cpu"))
    with gradient_sync(model, sync=False):
        model(torch.zeros(1, 16, dtype=torch.long), torch.zeros(1, 16, dtype=torch.long))[1].backward()
    optimizer.step()
    assert sum_over_ranks([1.5, True], World(), torch.device("cpu")) == [1.5, True]
    weights, optimizer_state = full_state(model, optimizer, aliases=set())
    assert "head.weight" not in weights  # tied to the embedding: stored once
    assert optimizer_state["state"].keys() == optimizer.state_dict()["state"].keys()
    load_optimizer_state(model, optimizer, optimizer_state)

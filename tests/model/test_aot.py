"""The decoding step compiled ahead of time: eager's tokens, left padding included, read from the live weights."""

from __future__ import annotations

import copy

import pytest
import torch

from fewshot.config import PRESETS
from fewshot.inference.decode import decode
from fewshot.model import GPT
from fewshot.model.aot import MAX_ROWS, cache_dir, supports
from fewshot.model.kernels import attend_one
from tests.conftest import varied_model

needs_kernel = pytest.mark.skipif(attend_one() is None, reason="the CPU kernels cannot run on this machine")


def greedy(model: GPT, prompts: list[list[int]], tokens: int = 24) -> list[list[int]]:
    out = [[] for _ in prompts]

    def on_tokens(ids: torch.Tensor, _logits: torch.Tensor) -> bool:
        for row, token in zip(out, ids.tolist()):
            row.append(token)
        return False
    decode(model, prompts, tokens, lambda logits: logits.argmax(-1), on_tokens)
    return out


def llama_nano(seed: int) -> GPT:
    return varied_model(seed, preset="llama-nano", context=96)  # SmolLM2's kind of block: rotary, grouped keys


@needs_kernel
def test_left_padded_rows_decode_as_eager_does_and_a_second_model_reuses_the_build() -> None:
    prompts = [list(b"hello world"), list(b"a much longer prompt than that"), list(b"hi")]
    model = llama_nano(0)
    eager = greedy(model, prompts)
    model.compile_decoding(True)
    assert model.aot is not None
    assert greedy(model, prompts) == eager
    assert list(model.aot.runners) == ["many"]  # three rows: the batch-2-to-16 build ran every step
    built = sorted(cache_dir().glob("decode-many-*.pt2"))
    assert built and not list(cache_dir().glob(".partial-*"))

    # Another checkpoint of the same shape: no new build, and its own weights, not the first's.
    other = llama_nano(1)
    other_eager = greedy(other, prompts)
    other.compile_decoding(True)
    assert greedy(other, prompts) == other_eager != eager
    assert sorted(cache_dir().glob("decode-many-*.pt2")) == built

    # Weights changed in place after compiling are what the step reads.
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(torch.randn_like(parameter), alpha=0.3)
    other.compile_decoding(False)
    changed = greedy(other, prompts)
    other.compile_decoding(True)
    assert greedy(other, prompts) == changed != other_eager


@needs_kernel
def test_rows_at_their_own_positions_step_as_eager_does() -> None:
    """`GPT.step_rows`, the server's call, through the compiled step: rows at different positions."""
    model = llama_nano(0)
    steps = torch.randint(0, 256, (12, 3, 1))
    offsets = torch.tensor([0, 5, 40])

    def run() -> torch.Tensor:
        cache = model.new_cache(3, 64)
        return torch.stack([model.step_rows(idx, cache, offsets + t) for t, idx in enumerate(steps)])
    eager = run()
    model.compile_decoding(True)
    compiled = run()
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)


@needs_kernel
def test_steps_it_does_not_cover_fall_back() -> None:
    model = llama_nano(0)
    model.compile_decoding(True)
    cache = model.new_cache(MAX_ROWS + 1, 16)
    assert model.aot.step(torch.zeros(MAX_ROWS + 1, 1, dtype=torch.long), cache) is None
    assert cache.length == 0
    lstm = GPT(PRESETS["nano"].model.replace(attention="lstm", context=64))
    assert not supports(lstm)


@needs_kernel
@pytest.mark.slow  # a build of its own, ~20 s on 2 cores
def test_a_bf16_model_steps_through_its_own_build_as_close_to_fp32_as_eager_bf16() -> None:
    """bf16 rounds after each of eager's ops but inside inductor's fused ones, so the two bf16
    paths differ; each should be as near the same weights computed in fp32 as the other."""
    model = llama_nano(0).to(torch.bfloat16)
    reference = copy.deepcopy(model).float()  # the bf16-rounded weights, computed in fp32
    steps = torch.randint(0, 256, (12, 3, 1))
    offsets = torch.tensor([0, 5, 40])

    def run(m: GPT) -> torch.Tensor:
        cache = m.new_cache(3, 64)
        return torch.stack([m.step_rows(idx, cache, offsets + t) for t, idx in enumerate(steps)]).float()
    truth, eager = run(reference), run(model)
    model.compile_decoding(True)
    compiled = run(model)
    assert list(model.aot.runners) == ["many"]  # its own bf16 build ran, not torch.compile's fallback
    eager_error, compiled_error = (eager - truth).abs().max(), (compiled - truth).abs().max()
    print(f"max |logit - fp32's|: eager bf16 {eager_error:.3f}, compiled bf16 {compiled_error:.3f}")
    assert compiled_error <= 1.5 * eager_error

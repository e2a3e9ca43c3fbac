"""The other sequence mixers (`--attention lstm`, `linear`, `aft`, `aft-local`, `gau`, `xl`, `sru`, `ssm`, or a cycle such
as `linear,dense`) through everything that uses a model: the CLI, resume, `fewshot.load`,
generation, the K-shot harness and the serving engine; and the recurrences' causality and
O(1) decoding state.

The mixers' shared invariants (step == forward, padding, per-row positions, their size) are
tested with the attention mixers in test_gpt.py.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from typer.testing import CliRunner

import fewshot
from fewshot.cli import app
from fewshot.config import PRESETS, SSM_STATE
from fewshot.eval.harness import EvalTask, evaluate, greedy_answers
from fewshot.inference.decode import generate
from fewshot.inference.sampling import SamplingOptions
from fewshot.model import GPT
from fewshot.model.mixers import CausalSelfAttention
from fewshot.serve.engine import Engine, EngineConfig
from fewshot.tasks.base import Example
from fewshot.tasks.taskfile import Template
from fewshot.tokenizer import ByteTokenizer
from fewshot.train.loop import resume_config, train
from tests.conftest import varied_model
from tests.serve.test_engine import submit


@pytest.mark.parametrize("attention", ["lstm", "linear,aft,sru,ssm", "rfa-gate,rfa,aft-local,gau", "xl"])
def test_the_cli_trains_a_mixer_that_resumes_bit_for_bit_generates_and_evaluates(data_dir: Path, tmp_path: Path,
                                                                                  attention: str) -> None:
    straight = tmp_path / "straight"
    done = CliRunner().invoke(app, [
        "train", "--data", str(data_dir), "--out", str(straight), "--preset", "nano", "--attention", attention,
        "--context", "64", "--batch-size", "4", "--max-steps", "12", "--eval-every", "6", "--save-every", "6",
        "--dropout", "0.1", "--precision", "fp32", "--no-progress",
    ])
    assert done.exit_code == 0, done.output or done.exception
    # The same config, stopped half way (still in warmup, so the schedule is the same) and resumed.
    config = resume_config(straight)
    train(dataclasses.replace(config, out=str(tmp_path / "resumed"), max_steps=6))
    train(resume_config(tmp_path / "resumed", max_steps=12), resume=True)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)

    lm = fewshot.load(straight)
    assert lm.model.config.attention == attention
    assert not any(isinstance(block.mixer, CausalSelfAttention) for block in lm.model.blocks)
    text = lm.generate("ROMEO:", max_tokens=12, temperature=0)
    assert text == lm.generate("ROMEO:", max_tokens=12, temperature=0) and len(text) > 0
    prompts = [lm.tokenizer.encode(f"Input: {'x' * i}\nOutput:") for i in range(7)]
    # Left-padded batches decode each row as if it were alone.
    assert greedy_answers(lm, prompts, max_tokens=6, batch_size=4) == greedy_answers(lm, prompts, max_tokens=6, batch_size=1)
    items = tuple(Example(f"{i}+{i}", str(2 * i)) for i in range(6))
    task = EvalTask("add", "exact_match", items, items, Template("Input: {input}\nOutput: {target}"), leave_one_out=True)
    choices = tuple(Example(f"{i} is", "even" if i % 2 == 0 else "odd", ("even", "odd"), i % 2) for i in range(4))
    mc = EvalTask("parity", "accuracy", choices, choices, leave_one_out=True)
    result = evaluate(lm, [task, mc], shots=[0, 1], max_tokens=4)
    assert [[shot.n for shot in t.shots] for t in result.tasks] == [[6, 6], [4, 4]]


@pytest.mark.parametrize("attention", ["lstm", "linear", "linear,dense", "rfa-gate", "aft", "aft-local", "gau", "xl", "sru", "ssm"])
def test_the_serving_engine_decodes_a_mixer_as_generate_does(attention: str) -> None:
    """Rows join and leave, prompts prefill in chunks between decoding steps (which give a
    prefilling slot a dummy token) and the cache grows: none of it may change a row."""
    model = varied_model(context=96, attention=attention)
    tokenizer = ByteTokenizer()
    engine = Engine(model, tokenizer, EngineConfig(max_batch=3, step_tokens=8)).start()
    try:
        prompts = ["ROMEO:" * k for k in range(1, 6)] + ["x" * 70]
        budgets = [10 + 3 * i for i in range(5)] + [96 - 70]
        jobs = [submit(engine, tokenizer, [p], SamplingOptions(temperature=0), max_tokens=n) for p, n in zip(prompts, budgets)]
        for prompt, budget, job in zip(prompts, budgets, jobs):
            expected = generate(model, tokenizer, prompt, SamplingOptions(max_tokens=budget, temperature=0))[0]
            assert job.wait().finished[0].token_ids == expected.token_ids
        assert engine.stats()["capacity"] == 96  # it grew past its first 64 positions
    finally:
        engine.stop()


@settings(max_examples=20, deadline=None)
@given(attention=st.sampled_from(["linear", "rfa", "rfa-gate", "aft", "aft-local", "gau", "xl", "sru", "ssm"]), length=st.integers(2, 150),
       batch=st.integers(1, 3),
       data=st.data())
def test_a_future_token_never_changes_a_past_output(attention: str, length: int, batch: int, data) -> None:
    torch.manual_seed(0)
    model = GPT(PRESETS["nano"].model.replace(context=160, attention=attention)).eval()
    where = data.draw(st.integers(1, length - 1), label="changed position")
    idx = torch.randint(0, 260, (batch, length), generator=torch.Generator().manual_seed(length))
    changed = idx.clone()
    changed[:, where] = (idx[:, where] + 1) % 260
    before, after = model(idx)[0], model(changed)[0]
    # An FFT convolution (ssm) mixes every position, and AFT scales a chunk by the largest key in it
    # (so that exp cannot overflow): there the past moves by rounding only.
    if attention in ("ssm", "aft", "aft-local"):
        torch.testing.assert_close(before[:, :where], after[:, :where], atol=1e-5, rtol=0)
    else:  # exactly: the past is computed from the past alone
        assert torch.equal(before[:, :where], after[:, :where])
    assert (before[:, where] - after[:, where]).abs().max() > 1e-3


@pytest.mark.parametrize("attention", ["linear", "rfa-gate", "lstm", "aft", "aft-local", "gau", "sru", "ssm"])
def test_a_recurrent_mixer_decodes_in_a_state_of_one_size_at_position_10_and_10000(attention: str) -> None:
    torch.manual_seed(0)
    model = GPT(PRESETS["nano"].model.replace(context=10_016, attention=attention)).eval()
    idx = torch.randint(0, 260, (1, 10_001), generator=torch.Generator().manual_seed(0))
    sizes = {}
    for stop in (10, 10_000):
        cache = model.new_cache(1)
        model.step(idx[:, :stop], cache)  # prefill, then one decoding step from there
        before = [[part.clone() for part in layer.state] for layer in cache.layers]
        logits = model.step(idx[:, stop:stop + 1], cache)
        sizes[stop] = sum(layer.nbytes for layer in cache.layers)
        assert all(new.shape == old.shape for layer, olds in zip(cache.layers, before) for new, old in zip(layer.state, olds))
    c = model.config  # float32 numbers per layer
    per_layer = {"linear": c.n_head * (c.head_size**2 + c.head_size),  # S and z per head
                 "rfa-gate": c.n_head * 2 * (c.head_size**2 + c.head_size),  # the same over sin and cos features
                 "lstm": 2 * c.lstm_size, "aft": 3 * c.d_model, "sru": c.d_model,  # (h, c); sums and maximum; c
                 "aft-local": (3 + 2 * (c.window - 1)) * c.d_model,  # AFT's, and the window's keys and values
                 "gau": c.d_model**2 + 3 * c.window * c.d_model,  # the linear state; the chunk's two keys and values
                 "ssm": c.ssm_size * SSM_STATE}[attention]  # SSM_STATE / 2 complex numbers per channel
    assert sizes[10] == sizes[10_000] == c.n_layer * per_layer * 4
    with torch.no_grad():  # no autograd graph: at 10,001 positions it took ~20 GB for aft-local (an OOM in CI)
        full, _ = model(idx)
    torch.testing.assert_close(logits[:, 0], full[:, 10_000], atol=1e-4, rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(length=st.integers(1, 140), window=st.integers(1, 70), batch=st.integers(1, 2))
def test_aft_local_computes_the_papers_formula(length: int, window: int, batch: int) -> None:
    """y_t = sigmoid(q_t) * sum_s exp(k_s + w_{t-s}) v_s / sum_s exp(k_s + w_{t-s}), w = 0 beyond
    the window, written out as a T x T sum: the chunked sums and the window's correction agree."""
    from fewshot.model.mixers import AFTLocal

    torch.manual_seed(length)
    config = PRESETS["nano"].model.replace(window=window)
    mixer = AFTLocal(config).eval()
    with torch.no_grad():
        mixer.position_bias.normal_(0.0, 1.0)
    x = torch.randn(batch, length, config.d_model)
    q, k, v = mixer.qkv(x).chunk(3, dim=-1)
    distance = torch.arange(length)[:, None] - torch.arange(length)[None, :]  # t - s
    bias = torch.zeros(config.n_head, length, length)
    inside = (distance >= 0) & (distance < window)
    bias[:, inside] = mixer.position_bias[:, distance[inside]]
    bias = bias.masked_fill(distance < 0, -math.inf).repeat_interleave(config.head_size, dim=0)  # (D, T, T)
    logits = k.transpose(1, 2)[:, :, None, :] + bias  # (B, D, t, s)
    weights = torch.softmax(logits, dim=-1)
    expected = torch.sigmoid(q) * torch.einsum("bdts,bsd->btd", weights, v)
    torch.testing.assert_close(mixer(x), mixer.proj(expected), atol=1e-5, rtol=1e-4)


def test_aft_local_prefills_across_its_chunks_as_forward_does_with_keys_past_exps_range() -> None:
    """The window's correction goes in `_sums`'s chunks of queries, each weighting its keys by
    that chunk's peak: prefill pieces that straddle those chunks, after a cached history longer
    than the window, must give `forward`'s outputs, and keys whose bare exp overflows float32 too."""
    from fewshot.model.mixers import AFTLocal

    torch.manual_seed(0)
    config = PRESETS["nano"].model.replace(window=40)
    mixer = AFTLocal(config).eval()
    inner = config.n_head * config.head_size
    with torch.no_grad():
        mixer.position_bias.normal_(0.0, 1.0)
        mixer.qkv.bias[inner:2 * inner] += 200.0  # e^200 is inf in float32
    x = torch.randn(2, 200, config.d_model)
    cache, pieces, start = mixer.new_cache(2, 200, x.device, torch.float32), [], 0
    for size in (1, 70, 13, 66, 50):
        pieces.append(mixer.step(x[:, start:start + size], cache, start))
        start += size
    full = mixer(x)
    assert torch.isfinite(full).all()
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(length=st.integers(1, 100), chunk=st.integers(1, 40), batch=st.integers(1, 2))
def test_gau_computes_mixed_chunk_attention(length: int, chunk: int, batch: int) -> None:
    """FLASH's mixed-chunk attention written out pair by pair: key j reaches query t through the
    quadratic kernel when both sit in one chunk (j <= t), through the linear one when j's chunk is earlier."""
    from fewshot.model.mixers import GatedAttentionUnit

    torch.manual_seed(length)
    config = PRESETS["nano"].model.replace(window=chunk)
    mixer = GatedAttentionUnit(config).eval()
    with torch.no_grad():
        for param in (mixer.position_bias, mixer.gamma, mixer.beta):
            param.normal_(0.0, 1.0)
    x = torch.randn(batch, length, config.d_model)
    u, v, z = torch.nn.functional.silu(mixer.inp(x)).split([config.d_model] * 3, dim=-1)
    quad_q, quad_k, lin_q, lin_k = (z * mixer.gamma[i] + mixer.beta[i] for i in range(4))
    t, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    same, earlier = (t // chunk == j // chunk) & (j <= t), j // chunk < t // chunk
    bias = mixer.position_bias[(t - j).clamp(0, chunk - 1)]
    quadratic = torch.relu(quad_q @ quad_k.transpose(1, 2) / math.sqrt(config.d_model) + bias).square() * same
    weights = (quadratic + (lin_q @ lin_k.transpose(1, 2)) * earlier) / chunk
    torch.testing.assert_close(mixer(x), mixer.proj(u * (weights @ v)), atol=1e-4, rtol=1e-4)


def test_transformer_xl_scores_relative_positions_and_stops_the_gradient_at_the_memory() -> None:
    """Dai et al. 2019, §3.3: score(i, j) = (q_i + u).k_j + (q_i + v).W_R r_{i-j}, over the query's
    segment up to itself and the previous segment (§3.2), whose keys and values carry no gradient."""
    from fewshot.model.mixers import TransformerXL

    torch.manual_seed(0)
    config = PRESETS["nano"].model.replace(window=5)
    mixer = TransformerXL(config).eval()
    with torch.no_grad():
        mixer.content_bias.normal_(0.0, 1.0)
        mixer.position_bias.normal_(0.0, 1.0)
    x = torch.randn(1, 17, config.d_model, requires_grad=True)
    y = mixer(x)
    h, hs = config.n_head, config.head_size
    q, k, v = (part.view(17, h, hs) for part in mixer.qkv(x[0]).chunk(3, dim=-1))
    r = mixer.position(mixer.sinusoid(x.device)).view(-1, h, hs)
    expected = []
    for i in range(17):
        keys = [j for j in range(i + 1) if j // 5 >= i // 5 - 1]
        scores = torch.stack([((q[i] + mixer.content_bias) * k[j]).sum(-1) + ((q[i] + mixer.position_bias) * r[i - j]).sum(-1)
                              for j in keys], dim=-1) / math.sqrt(hs)  # (H, keys)
        expected.append(torch.einsum("hk,khd->hd", scores.softmax(-1), v[keys]).reshape(-1))
    torch.testing.assert_close(y[0], mixer.proj(torch.stack(expected)), atol=1e-5, rtol=1e-4)
    y[0, 12].sum().backward()  # position 12 sits in the third segment (10-14)
    touched = x.grad[0].abs().sum(-1) > 0
    assert touched[10:13].all() and not touched[13:].any() and not touched[:10].any()

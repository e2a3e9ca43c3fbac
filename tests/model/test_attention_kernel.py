"""The decoding step's attention kernel (fewshot/model/kernels/attention.cpp) against torch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.config import PRESETS
from fewshot.model import GPT
from fewshot.model.kernels import attend_one

needs_kernel = pytest.mark.skipif(attend_one() is None, reason="the CPU kernels cannot run on this machine")


@needs_kernel
@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 5), kv_heads=st.integers(1, 3), group=st.integers(1, 3), size=st.sampled_from([8, 12, 64]),
       capacity=st.integers(1, 40), dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**16),
       data=st.data())
def test_one_query_against_a_run_of_keys_is_torchs_attention(batch, kv_heads, group, size, capacity, dtype, seed, data):
    """In float32, and in bfloat16 (a bf16 model's cache), where the kernel widens every value to
    float32 and rounds only its result: torch's float32 attention on the same values, to one bf16 step."""
    generator = torch.Generator().manual_seed(seed)
    heads = kv_heads * group
    q = torch.randn(batch, heads, 1, size, generator=generator).to(dtype)
    keys, values = (torch.randn(batch, kv_heads, capacity, size, generator=generator).to(dtype) for _ in range(2))
    stop = torch.tensor([data.draw(st.integers(1, capacity)) for _ in range(batch)])
    first = torch.tensor([data.draw(st.integers(0, int(s) - 1)) for s in stop])
    allowed = (torch.arange(capacity) >= first[:, None]) & (torch.arange(capacity) < stop[:, None])
    expected = F.scaled_dot_product_attention(q.float(), keys.float(), values.float(), attn_mask=allowed[:, None, None, :],
                                              enable_gqa=group > 1)
    got = attend_one()(q, keys, values, first, stop)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, atol=1e-5, rtol=1e-5 if dtype == torch.float32 else 2**-8)


@needs_kernel
def test_long_runs_split_over_threads_give_torchs_attention_too():
    torch.manual_seed(0)  # past the kernel's threshold for waking a second thread
    q, keys, values = torch.randn(4, 8, 1, 64), torch.randn(4, 2, 1024, 64), torch.randn(4, 2, 1024, 64)
    first, stop = torch.tensor([0, 100, 0, 1000]), torch.tensor([1024, 900, 1, 1024])
    allowed = (torch.arange(1024) >= first[:, None]) & (torch.arange(1024) < stop[:, None])
    expected = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed[:, None, None, :], enable_gqa=True)
    torch.testing.assert_close(attend_one()(q, keys, values, first, stop), expected, atol=1e-5, rtol=1e-5)


@needs_kernel
def test_a_rows_attention_does_not_depend_on_the_rows_beside_it():
    torch.manual_seed(0)
    q, keys, values = torch.randn(4, 6, 1, 16), torch.randn(4, 2, 30, 16), torch.randn(4, 2, 30, 16)
    first, stop = torch.tensor([0, 3, 7, 0]), torch.tensor([30, 12, 8, 1])
    together = attend_one()(q, keys, values, first, stop)
    for b in range(4):
        alone = attend_one()(q[b:b + 1], keys[b:b + 1], values[b:b + 1], first[b:b + 1], stop[b:b + 1])
        assert torch.equal(alone, together[b:b + 1])


def _counted(monkeypatch) -> list:
    """Count the decoding steps whose attention goes to the kernel."""
    import fewshot.model.mixers as mixers

    calls = []

    def counting(*args):
        calls.append(1)
        return attend_one()(*args)

    monkeypatch.setattr(mixers, "attend_one", lambda: counting)
    return calls


@needs_kernel
@pytest.mark.parametrize("window,dtype", [(None, torch.float32), (5, torch.float32), (None, torch.bfloat16)])
def test_decoding_through_the_kernel_matches_the_whole_sequence(window, dtype, monkeypatch):
    """Left-padded rows of different lengths, then one token at a time, against `forward` on each row alone."""
    calls = _counted(monkeypatch)
    torch.manual_seed(0)
    config = PRESETS["llama-nano"].model.replace(context=64, window=window or 64, attention="local" if window else "dense")
    model = GPT(config).to(dtype).eval()
    rows = [torch.randint(0, config.vocab_size, (n,)) for n in (9, 4, 7)]
    longest = max(len(r) for r in rows)
    padding = torch.tensor([longest - len(r) for r in rows])
    ids = torch.stack([torch.cat([torch.zeros(longest - len(r), dtype=torch.long), r]) for r in rows])
    more = torch.randint(0, config.vocab_size, (3, 6))
    with torch.no_grad():
        cache = model.new_cache(3, capacity=32, padding=padding)
        steps = [model.step(ids, cache, last_only=True)]
        steps += [model.step(more[:, t:t + 1], cache) for t in range(more.shape[1])]
        for b, row in enumerate(rows):
            whole = model(torch.cat([row, more[b]])[None])[0][0]
            got = torch.stack([s[b, -1] for s in steps])
            # bf16: the two paths round their intermediate sums differently, each to ~3 digits
            tolerance = 1e-4 if dtype == torch.float32 else 0.1
            torch.testing.assert_close(got.float(), whole[len(row) - 1:].float(), atol=tolerance, rtol=tolerance)
    assert len(calls) == more.shape[1] * config.n_layer  # every one-token step, every layer


@needs_kernel
def test_a_row_that_is_all_padding_so_far_decodes_beside_a_real_one(monkeypatch):
    """A one-token prefill beside an empty row: that row's query is padding, and sees its past (as
    torch's path lets it) rather than an empty run; the real row is unaffected."""
    calls = _counted(monkeypatch)
    torch.manual_seed(0)
    model = GPT(PRESETS["llama-nano"].model.replace(context=32)).eval()
    with torch.no_grad():
        cache = model.new_cache(2, capacity=8, padding=torch.tensor([0, 1]))
        logits = model.step(torch.tensor([[5], [0]]), cache)
        torch.testing.assert_close(logits[0], model(torch.tensor([[5]]))[0][0], atol=1e-5, rtol=1e-5)
    assert calls and logits.isfinite().all()


@needs_kernel
@pytest.mark.slow  # compiling takes ~30 s
def test_compiled_decoding_of_a_float_model_gives_eagers_tokens():
    from fewshot.inference.decode import generate
    from fewshot.inference.sampling import SamplingOptions
    from fewshot.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    model = GPT(PRESETS["llama-nano"].model.replace(context=128)).eval()
    options = SamplingOptions(max_tokens=40, temperature=0)
    eager = generate(model, ByteTokenizer(), "hello world", options)[0].token_ids
    model.compile_decoding(True)
    assert generate(model, ByteTokenizer(), "hello world", options)[0].token_ids == eager

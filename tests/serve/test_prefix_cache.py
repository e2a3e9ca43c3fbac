"""Prefix caching: the same tokens with it on and off, fewer tokens prefilled, LRU under a budget."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.config import PRESETS
from fewshot.inference.decode import generate
from fewshot.inference.sampling import SamplingOptions
from fewshot.model import GPT
from fewshot.serve.engine import Engine, EngineConfig
from fewshot.serve.prefix_cache import BLOCK_SIZE, PrefixCache
from fewshot.tokenizer import ByteTokenizer
from tests.conftest import varied_model
from tests.serve.test_engine import submit

CONTEXT = 160
DEMOS = "".join(f"Input: {w}\nOutput: {w[::-1]}\n\n" for w in ("cat", "house", "tree", "bridge"))
QUERIES = ["dog", "window", "river", "stone", "mountain", "apple"]


@pytest.fixture(scope="module")
def tokenizer():
    return ByteTokenizer()


@pytest.fixture(scope="module")
def model():
    return varied_model(context=CONTEXT)


def _serve(model, tokenizer, cache_bytes: int, sampling: dict, concurrent: bool, adapters=None):
    """Every few-shot prompt (the demonstrations, then a query) through one engine: the
    finished samples and the engine's prefix-cache counts."""
    engine = Engine(model, tokenizer, EngineConfig(max_batch=4, step_tokens=48, prefix_cache_bytes=cache_bytes),
                    adapters=adapters).start()
    try:
        prompts = [DEMOS + f"Input: {q}\nOutput:" for q in QUERIES]
        if concurrent:  # continuous batching: later requests join while earlier ones decode
            jobs = [submit(engine, tokenizer, [p], SamplingOptions(**sampling), max_tokens=12) for p in prompts]
            results = [job.wait().finished for job in jobs]
        else:
            results = [submit(engine, tokenizer, [p], SamplingOptions(**sampling), max_tokens=12).wait().finished
                       for p in prompts]
        return results, engine.stats()
    finally:
        engine.stop()


@pytest.mark.parametrize("concurrent", [False, True])
@pytest.mark.parametrize("sampling", [dict(temperature=0, logprobs=2), dict(temperature=1.0, seed=11, n=2, logprobs=1)])
def test_tokens_are_identical_with_the_prefix_cache_on_and_off(model, tokenizer, sampling, concurrent):
    off, off_stats = _serve(model, tokenizer, 0, sampling, concurrent)
    on, on_stats = _serve(model, tokenizer, 8 * 2**20, sampling, concurrent)
    assert off_stats["prefix_cache_hit_tokens"] == 0
    # Every request after the first finds the demonstrations' full blocks (the first request's
    # prefill stored them; concurrent ones may race it, so at least the last ones hit).
    shared = (len(DEMOS) // BLOCK_SIZE) * BLOCK_SIZE
    assert on_stats["prefix_cache_hit_tokens"] >= (1 if concurrent else len(QUERIES) - 1) * shared
    for with_cache, without in zip(on, off, strict=True):
        for a, b in zip(with_cache, without, strict=True):
            assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
            # Logprobs agree to float rounding, not bit for bit: the rows a prefill chunk holds
            # change the matmuls' blocking, as they already do with the load (see prefix_cache.py).
            assert [e.token_id for e in a.logprobs] == [e.token_id for e in b.logprobs]
            assert [e.logprob for e in a.logprobs] == pytest.approx([e.logprob for e in b.logprobs], abs=1e-4)


def test_the_cache_key_holds_the_adapter(model, tokenizer):
    """Another model under an adapter's name must never read the base's keys and values."""
    other = varied_model(1, context=CONTEXT)
    engine = Engine(model, tokenizer, EngineConfig(max_batch=2, step_tokens=48), adapters={"other": other}).start()
    try:
        prompt = DEMOS + "Input: dog\nOutput:"
        submit(engine, tokenizer, [prompt], SamplingOptions(temperature=0), max_tokens=12).wait()
        hits = engine.stats()["prefix_cache_hit_tokens"]
        job = submit(engine, tokenizer, [prompt], SamplingOptions(temperature=0), max_tokens=12, adapter="other").wait()
        assert engine.stats()["prefix_cache_hit_tokens"] == hits  # nothing stored under "other" yet
        expected = generate(other, tokenizer, prompt, SamplingOptions(max_tokens=12, temperature=0))[0]
        assert job.finished[0].token_ids == expected.token_ids
        again = submit(engine, tokenizer, [prompt], SamplingOptions(temperature=0), max_tokens=12, adapter="other").wait()
        assert engine.stats()["prefix_cache_hit_tokens"] > hits and again.finished[0].token_ids == expected.token_ids
    finally:
        engine.stop()


def test_a_recurrent_mixer_serves_without_a_prefix_cache(tokenizer):
    model = GPT(PRESETS["nano"].model.replace(context=CONTEXT, attention="linear")).eval()
    engine = Engine(model, tokenizer, EngineConfig())
    assert engine.prefix_cache is None


# ---------------------------------------------------------------------------- the block store alone


def _layers(length: int, seed: int, raw: bool = False) -> list:
    from fewshot.model.mixers import AttentionCache

    g = torch.Generator().manual_seed(seed)
    return [AttentionCache(torch.randn(1, 2, length, 4, generator=g), torch.randn(1, 2, length, 4, generator=g),
                           torch.randn(1, length, 6, generator=g) if raw else None) for _ in range(2)]


def _empty(length: int, raw: bool = False) -> list:
    from fewshot.model.mixers import AttentionCache

    return [AttentionCache(torch.zeros(1, 2, length, 4), torch.zeros(1, 2, length, 4),
                           torch.zeros(1, length, 6) if raw else None) for _ in range(2)]


@settings(max_examples=40, deadline=None)
@given(stored=st.lists(st.integers(0, 9), min_size=1, max_size=70), extra=st.lists(st.integers(0, 9), max_size=40),
       cut=st.integers(0, 70), raw=st.booleans())
def test_restore_gives_back_the_longest_stored_prefix_and_never_the_last_token(stored, extra, cut, raw):
    """A prompt that shares `shared` tokens with a stored one gets every full block within
    them (and within its own length minus one) back, equal to what was stored."""
    cache = PrefixCache(2**30, block_size=4)
    source = _layers(len(stored), seed=len(stored), raw=raw)
    cache.store(stored, None, source)
    prompt = stored[:cut] + extra
    shared = next((i for i, (a, b) in enumerate(zip(stored, prompt)) if a != b), min(len(stored), len(prompt)))
    expected = min(shared // 4, len(stored) // 4, (len(prompt) - 1) // 4) * 4 if prompt else 0
    target = _empty(max(1, len(prompt)), raw=raw)
    filled = cache.restore(prompt, None, target) if prompt else 0
    assert filled == expected
    for mine, theirs in zip(target, source):
        assert torch.equal(mine.keys[:, :, :filled], theirs.keys[:, :, :filled])
        assert torch.equal(mine.values[:, :, :filled], theirs.values[:, :, :filled])
        if raw:
            assert torch.equal(mine.raw[:, :filled], theirs.raw[:, :filled])
        assert not mine.keys[:, :, filled:].any()
    assert cache.restore(stored, "an adapter", _empty(len(stored), raw)) == 0


def test_least_recently_used_blocks_go_first_under_the_budget():
    block_bytes = 2 * 2 * (2 * 4 * 4 * 4)  # layers x (keys, values) x heads x block x head_size x float32
    cache = PrefixCache(3 * block_bytes, block_size=4)
    a, b = list(range(12)), [9] * 8
    cache.store(a, None, _layers(12, 0))  # three blocks: the budget is full
    assert len(cache) == 3 and cache.nbytes == 3 * block_bytes
    cache.store(b, None, _layers(8, 1))  # two more: a's last two blocks (its least recently used) go
    assert len(cache) == 3 and cache.nbytes <= cache.budget_bytes
    assert cache.restore(a + [0], None, _empty(13)) == 4  # a's first block is still there
    assert cache.restore(b + [0], None, _empty(9)) == 8
    small = PrefixCache(block_bytes - 1, block_size=4)
    small.store(a, None, _layers(12, 0))
    assert len(small) == 0 and small.nbytes == 0  # a block bigger than the whole budget is not kept

"""Prompt-lookup decoding: the drafts against a brute-force search, then decode() with and
without drafts on real models: the same tokens (greedy and seeded sampling), in fewer passes."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.config import PRESETS
from fewshot.errors import FewshotError
from fewshot.inference.decode import decode, generate
from fewshot.inference.lookup import MAX_NGRAM, NgramDrafts
from fewshot.inference.sampling import SamplingOptions
from fewshot.model import GPT
from fewshot.tokenizer import ByteTokenizer

CONTEXT = 48


def brute_force_draft(tokens: list[int], k: int) -> list[int]:
    """The tokens after the latest earlier occurrence of the longest tail (MAX_NGRAM down to 1)."""
    for n in range(min(MAX_NGRAM, len(tokens)), 0, -1):
        tail = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):  # occurrences that end before the last token
            if tokens[start:start + n] == tail:
                return tokens[start + n:start + n + k]
    return []


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(st.integers(0, 4), max_size=40), k=st.integers(0, 6))
def test_drafts_continue_the_latest_earlier_occurrence_of_the_longest_tail(tokens, k):
    drafts = NgramDrafts()
    for i, token in enumerate(tokens):  # built one token at a time, as decoding grows it
        drafts.append(token)
        assert drafts.draft(k) == brute_force_draft(tokens[:i + 1], k)


def small_model(attention: str = "dense", **overrides) -> GPT:
    torch.manual_seed(0)
    # float64: a pass over several positions and single-position passes round differently in
    # float32, and a random model's near-ties could turn that into a different argmax.
    config = PRESETS["nano"].model.replace(context=CONTEXT, attention=attention, **overrides)
    return GPT(config).double().eval()


def run_decode(model, prompts, max_tokens, pick, lookup):
    """(tokens produced per row, forward passes) of decode() with `pick` choosing each token."""
    produced: list[list[int]] = [[] for _ in prompts]
    passes = 0
    step = model.step

    def counting_step(*args, **kwargs):
        nonlocal passes
        passes += 1
        return step(*args, **kwargs)

    def on_tokens(ids, _logits):
        for row, token in zip(produced, ids.tolist()):
            row.append(token)
        return False

    model.step = counting_step
    try:
        decode(model, prompts, max_tokens, pick, on_tokens, lookup=lookup)
    finally:
        del model.step
    return produced, passes


prompt_lists = st.lists(st.lists(st.integers(0, 8), min_size=1, max_size=20), min_size=1, max_size=3)


@pytest.mark.parametrize("attention,overrides", [("dense", {}), ("local", {"window": 8}), ("xl", {"window": 8}),
                                                 ("dense", {"block": "llama", "qkv_conv": 3})])
@settings(max_examples=12, deadline=None)
@given(prompts=prompt_lists, lookup=st.integers(1, 8), max_tokens=st.integers(1, 60))
def test_greedy_tokens_are_the_same_with_and_without_drafts(attention, overrides, prompts, lookup, max_tokens):
    """Rows of different lengths (left padding), generations past the context (re-prefill),
    every mixer whose cache can rewind; random models fall into loops, so drafts get accepted."""
    model = small_model(attention, **overrides)

    def greedy(logits):
        return logits.argmax(dim=-1)

    plain, _ = run_decode(model, prompts, max_tokens, greedy, lookup=0)
    drafted, _ = run_decode(model, prompts, max_tokens, greedy, lookup=lookup)
    assert drafted == plain


def test_accepted_drafts_save_forward_passes():
    """A pick that repeats a period-5 pattern: from the second period on, every draft is right."""
    model = small_model()
    pattern = [3, 1, 4, 1, 5]

    def script():
        counter = itertools.count()
        return lambda logits: torch.full((logits.shape[0],), pattern[next(counter) % len(pattern)])

    plain, plain_passes = run_decode(model, [[7, 7]], 40, script(), lookup=0)
    drafted, drafted_passes = run_decode(model, [[7, 7]], 40, script(), lookup=8)
    assert drafted == plain == [[pattern[i % 5] for i in range(40)]]
    assert plain_passes == 40  # the prefill and one pass per further token
    assert drafted_passes <= 15


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 3), lookup=st.integers(1, 6))
def test_seeded_samples_draw_the_same_tokens_with_and_without_drafts(seed, n, lookup):
    model, tokenizer = small_model(), ByteTokenizer()
    options = dict(max_tokens=40, temperature=0.7, top_k=3, frequency_penalty=0.5, seed=seed, n=n)
    plain = generate(model, tokenizer, "abcabcabc", SamplingOptions(**options))
    drafted = generate(model, tokenizer, "abcabcabc", SamplingOptions(**options, prompt_lookup=lookup))
    assert [c.token_ids for c in drafted] == [c.token_ids for c in plain]
    assert [c.text for c in drafted] == [c.text for c in plain]


def test_a_recurrent_mixer_refuses_drafts_by_name():
    model, tokenizer = small_model("lstm"), ByteTokenizer()
    with pytest.raises(FewshotError, match="prompt lookup.*lstm"):
        generate(model, tokenizer, "abc", SamplingOptions(max_tokens=4, temperature=0, prompt_lookup=4))


def test_only_a_kv_cache_rewinds():
    cache = small_model().new_cache(1, capacity=8)
    cache.length = 5
    cache.rewind(3)
    assert cache.length == 3
    with pytest.raises(FewshotError):
        cache.rewind(4)  # forward: nothing there to keep
    recurrent = small_model("lstm").new_cache(1, capacity=8)
    assert not recurrent.rewindable
    with pytest.raises(FewshotError):
        recurrent.rewind(0)

"""Sampling: the logit processing alone (property tests), then generate() on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.errors import FewshotError
from fewshot.inference.decode import generate
from fewshot.inference.sampling import SamplingOptions, adjust_logits, sample_next
from fewshot.tokenizer import ByteTokenizer
from tests.conftest import varied_model

CONTEXT = 64

# ---------------------------------------------------------------------------- sample_next

logit_values = st.one_of(st.floats(-20, 20, allow_nan=False, width=32), st.sampled_from([0.0, 1.0, -1.0]))  # ties too
logit_rows = st.lists(logit_values, min_size=2, max_size=40)
temperatures = st.floats(0.1, 2.0)


def row(values: list[float]) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32)


def no_counts(logits: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(logits)


@settings(max_examples=200, deadline=None)
@given(values=logit_rows, k=st.integers(1, 45), temperature=temperatures)
def test_top_k_keeps_at_most_k_candidates_including_the_best(values, k, temperature):
    logits = row(values)
    adjusted = adjust_logits(logits, no_counts(logits), SamplingOptions(top_k=k, temperature=temperature))
    kept = torch.isfinite(adjusted[0])
    assert kept.sum().item() == min(k, len(values))
    assert logits[0][kept].max() == logits[0].max()  # a best token survives (ties: any of them)
    # Kept tokens are the best ones: nothing dropped beats anything kept.
    if not kept.all():
        assert logits[0][kept].min() >= logits[0][~kept].max()


@settings(max_examples=200, deadline=None)
@given(values=logit_rows, top_p=st.floats(0.01, 1.0), temperature=temperatures)
def test_top_p_support_is_the_minimal_nucleus(values, top_p, temperature):
    logits = row(values)
    adjusted = adjust_logits(logits, no_counts(logits), SamplingOptions(top_p=top_p, temperature=temperature))
    kept = torch.isfinite(adjusted[0])
    probs = (logits[0].double() / temperature).softmax(-1)
    mass = probs[kept].sum().item()
    assert kept.any()
    if not kept.all():
        assert probs[kept].min() >= probs[~kept].max()  # the most likely tokens
    assert mass >= top_p - 1e-5  # enough mass
    assert mass - probs[kept].min().item() < top_p + 1e-5  # and minimal: one fewer is not enough


@settings(max_examples=100, deadline=None)
@given(values=logit_rows, data=st.data())
def test_temperature_zero_is_argmax_of_biased_penalized_logits(values, data):
    logits = row(values)
    vocab = len(values)
    counts = torch.tensor([data.draw(st.lists(st.integers(0, 3), min_size=vocab, max_size=vocab))], dtype=torch.float32)
    bias = data.draw(st.lists(st.tuples(st.integers(0, vocab - 1), st.floats(-5, 5)), max_size=3))
    options = SamplingOptions(temperature=0, presence_penalty=0.5, frequency_penalty=0.25, logit_bias=tuple(bias))
    expected = logits.clone() - 0.5 * (counts > 0).float() - 0.25 * counts
    for token, value in bias:
        expected[0, token] += value
    # Greedy is deterministic: no generator needed.
    assert sample_next(logits, counts, options, None).item() == expected[0].argmax().item()


@settings(max_examples=100, deadline=None)
@given(
    values=logit_rows,
    data=st.data(),
    temperature=temperatures,
    top_k=st.integers(0, 10),
    top_p=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**32),
)
def test_logit_bias_minus_100_is_never_and_plus_100_always_sampled(values, data, temperature, top_k, top_p, seed):
    vocab = len(values)
    banned, forced = data.draw(st.lists(st.integers(0, vocab - 1), min_size=2, max_size=2, unique=True))
    logits = row(values).expand(64, -1)  # 64 draws at once
    generator = torch.Generator().manual_seed(seed)
    common = dict(temperature=temperature, top_k=top_k, top_p=top_p)

    banned_only = SamplingOptions(logit_bias=((banned, -100.0),), **common)
    assert (sample_next(logits, no_counts(logits), banned_only, generator) != banned).all()
    both = SamplingOptions(logit_bias=((banned, -100.0), (forced, 100.0)), **common)
    assert (sample_next(logits, no_counts(logits), both, generator) == forced).all()


@settings(max_examples=100, deadline=None)
@given(
    values=logit_rows,
    data=st.data(),
    presence=st.floats(-2, 2),
    frequency=st.floats(-2, 2),
)
def test_penalties_follow_the_openai_formula_exactly(values, data, presence, frequency):
    logits = row(values)
    counts = torch.tensor([data.draw(st.lists(st.integers(0, 5), min_size=len(values), max_size=len(values)))])
    options = SamplingOptions(presence_penalty=presence, frequency_penalty=frequency)
    adjusted = adjust_logits(logits, counts, options)
    expected = [
        v - presence * (c > 0) - frequency * c for v, c in zip(logits[0].tolist(), counts[0].tolist())
    ]
    assert adjusted[0].tolist() == pytest.approx(expected, abs=1e-5)


def test_samples_follow_the_softmax_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(20000, -1)
    generator = torch.Generator().manual_seed(0)
    for temperature in (1.0, 0.5):
        ids = sample_next(logits, no_counts(logits), SamplingOptions(temperature=temperature), generator)
        observed = torch.bincount(ids, minlength=4).float() / len(ids)
        expected = (logits[0] / temperature).softmax(-1)
        assert torch.allclose(observed, expected, atol=0.015), (temperature, observed, expected)


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_tokens", 0),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("temperature", float("nan")),
        ("top_k", -1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("presence_penalty", 2.1),
        ("frequency_penalty", -3),
        ("n", 0),
        ("logprobs", 21),
        ("logprobs", -1),
        ("stop", ("a", "b", "c", "d", "e")),
        ("stop", ("",)),
        ("logit_bias", ((-1, 1.0),)),
        ("logit_bias", ((3, float("inf")),)),
        ("seed", "seven"),
        ("max_tokens", 2.5),
    ],
)
def test_options_reject_bad_values_with_a_one_line_message(field, value):
    with pytest.raises(FewshotError) as error:
        SamplingOptions(**{field: value})
    assert field in str(error.value) and "\n" not in str(error.value)


def test_options_accept_json_shapes_and_clamp_bias():
    options = SamplingOptions(stop="\n", logit_bias={"5": 300, 7: -2.5})
    assert options.stop == ("\n",)
    assert options.logit_bias == ((5, 100.0), (7, -2.5))
    hash(options)  # frozen and hashable, so it can key a cache of compiled samplers


# ---------------------------------------------------------------------------- generate


@pytest.fixture(scope="module")
def tokenizer():
    return ByteTokenizer()


@pytest.fixture(scope="module")
def model():
    return varied_model(context=CONTEXT)  # a wrong cache or window changes its output


def naive_decode(model, prompt_ids: list[int], options: SamplingOptions) -> list[int]:
    """One sample by full forward passes, with generate()'s documented window rules.

    The prompt keeps its last context - min(max_tokens, context // 2) tokens; when the
    window is full it restarts from its last context // 2 tokens. Same seed, same draws.
    """
    context, keep = model.config.context, model.config.context // 2
    window = prompt_ids[-(context - min(options.max_tokens, keep)) :]
    generator = torch.Generator().manual_seed(options.seed or 0)
    counts = torch.zeros(1, model.config.vocab_size)
    out = []
    with torch.no_grad():
        for _ in range(options.max_tokens):
            logits, _ = model(torch.tensor([window]))
            token = sample_next(logits[:, -1], counts, options, generator).item()
            counts[0, token] += 1
            out.append(token)
            window = window + [token] if len(window) < context else (window + [token])[-keep:]
    return out


def greedy(max_tokens: int) -> SamplingOptions:
    return SamplingOptions(max_tokens=max_tokens, temperature=0, stop_at_eot=False)


def test_same_seed_same_text_and_different_seeds_differ(model, tokenizer):
    def sample(seed):
        return generate(model, tokenizer, "Hello", SamplingOptions(max_tokens=24, seed=seed, stop_at_eot=False))[0]

    first, again, other = sample(1), sample(1), sample(2)
    assert first.token_ids == again.token_ids and first.text == again.text
    assert first.token_ids != other.token_ids


def test_n_samples_are_returned_and_independent(model, tokenizer):
    completions = generate(model, tokenizer, "Hi", SamplingOptions(n=3, max_tokens=12, seed=0, stop_at_eot=False))
    assert len(completions) == 3
    assert all(len(c.token_ids) == 12 and c.finish_reason == "length" for c in completions)
    assert len({c.token_ids for c in completions}) == 3
    assert all(c.prompt_tokens == 2 for c in completions)


def test_n_greedy_samples_of_one_prompt_share_its_one_prefill(model, tokenizer):
    # The prompt is prefilled once and copied to every row: each row then decodes as one alone.
    alone = generate(model, tokenizer, "Hello there", greedy(20))[0].token_ids
    rows = generate(model, tokenizer, "Hello there", SamplingOptions(n=4, max_tokens=20, temperature=0, stop_at_eot=False))
    assert [c.token_ids for c in rows] == [alone] * 4
    assert alone == tuple(naive_decode(model, list(tokenizer.encode("Hello there")), greedy(20)))


def test_max_tokens_ends_with_length(model, tokenizer):
    (completion,) = generate(model, tokenizer, "abc", SamplingOptions(max_tokens=7, seed=3, stop_at_eot=False))
    assert completion.finish_reason == "length"
    assert len(completion.token_ids) == 7
    assert completion.text == tokenizer.decode(list(completion.token_ids))
    assert completion.logprobs is None


def test_stop_sequence_trims_text_and_finishes_with_stop(model, tokenizer):
    # Only 'a' and 'b' are likely, so "ab" turns up within a few tokens.
    a, b = tokenizer.encode("ab")
    options = SamplingOptions(max_tokens=60, seed=0, n=4, logit_bias={a: 100, b: 100}, stop=("ab",))
    for completion in generate(model, tokenizer, "x", options):
        assert completion.finish_reason == "stop"
        assert "ab" not in completion.text
        # The token that completed the stop is kept; the text ends where the stop began.
        assert tokenizer.decode(list(completion.token_ids)) == completion.text + "ab"


def test_end_of_text_stops_unless_told_otherwise(model, tokenizer):
    eot = tokenizer.eot_id
    (stopped,) = generate(model, tokenizer, "x", SamplingOptions(max_tokens=5, logit_bias={eot: 100}))
    assert (stopped.finish_reason, stopped.text, stopped.token_ids) == ("stop", "", ())
    (kept,) = generate(model, tokenizer, "x", SamplingOptions(max_tokens=5, logit_bias={eot: 100}, stop_at_eot=False))
    assert kept.finish_reason == "length" and kept.token_ids == (eot,) * 5


def test_logprobs_match_a_full_forward_pass(model, tokenizer):
    prompt = tokenizer.encode("The cat")
    bias = {ord("e"): 3.0}
    # Temperature and penalties shape the choice, not the reported distribution.
    options = SamplingOptions(max_tokens=10, seed=5, logprobs=5, temperature=1.5, presence_penalty=1.0, logit_bias=bias, stop_at_eot=False)
    (completion,) = generate(model, tokenizer, prompt, options)
    assert len(completion.logprobs) == len(completion.token_ids) == 10
    ids = prompt + list(completion.token_ids)
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    logits[0, :, ord("e")] += 3.0
    reference = logits[0].log_softmax(-1)
    for i, item in enumerate(completion.logprobs):
        position = len(prompt) - 1 + i
        assert item.token_id == completion.token_ids[i]
        assert item.token == tokenizer.decode([item.token_id])
        assert item.logprob == pytest.approx(reference[position, item.token_id].item(), abs=1e-4)
        top_values = [lp for _, lp in item.top]
        assert len(item.top) == 5 and top_values == sorted(top_values, reverse=True)
        assert top_values[0] == pytest.approx(reference[position].max().item(), abs=1e-4)


def test_cached_greedy_equals_full_recompute(model, tokenizer):
    prompt = tokenizer.encode("Once upon a time")
    (completion,) = generate(model, tokenizer, prompt, greedy(30))
    assert list(completion.token_ids) == naive_decode(model, prompt, greedy(30))
    assert len(set(completion.token_ids)) > 5  # varied text, or the comparison proves little


def test_generation_slides_past_the_context(model, tokenizer):
    prompt = tokenizer.encode("slide")
    tokens = 4 * CONTEXT  # several slides
    (completion,) = generate(model, tokenizer, prompt, greedy(tokens))
    assert list(completion.token_ids) == naive_decode(model, prompt, greedy(tokens))
    # Sampling with penalties too: the cached path must draw the same tokens and count them
    # the same way as the reference.
    options = SamplingOptions(max_tokens=tokens, seed=3, top_k=50, presence_penalty=1.5, frequency_penalty=0.5, stop_at_eot=False)
    (sampled,) = generate(model, tokenizer, prompt, options)
    assert list(sampled.token_ids) == naive_decode(model, prompt, options)


def test_long_prompt_is_left_truncated(model, tokenizer):
    prompt = tokenizer.encode("0123456789" * 15)  # 150 tokens, context 64
    (completion,) = generate(model, tokenizer, prompt, greedy(10))
    assert completion.prompt_tokens == 150
    assert list(completion.token_ids) == naive_decode(model, prompt, greedy(10))


def test_empty_prompt_starts_from_end_of_text(model, tokenizer):
    (completion,) = generate(model, tokenizer, "", greedy(5))
    assert list(completion.token_ids) == naive_decode(model, [tokenizer.eot_id], greedy(5))
    assert completion.prompt_tokens == 0


@pytest.mark.parametrize(
    "chars, stop",
    [("xé", ()), ("xé", ("é",)), ("xé", ("xé", "éé")), ("x€", ()), ("€", ("€",)), ("x€", ("€x", "x€"))],
)
def test_streamed_text_equals_final_text(model, tokenizer, chars, stop):
    # Only the bytes of `chars` are likely ('é' is C3 A9, '€' is E2 82 AC), so the text mixes
    # whole multi-byte characters, stray bytes and prefixes of the stop sequences. Had the
    # stream shown a partial character or a stop prefix early, the concatenation would differ
    # from the text, which for "length" is the plain decode of the tokens.
    likely = set(chars.encode())
    options = SamplingOptions(max_tokens=64, seed=2, n=4, temperature=2.0, stop=stop, logit_bias={t: 100 for t in likely})
    streamed = ["", "", "", ""]

    def on_text(index, text):
        assert text
        streamed[index] += text

    completions = generate(model, tokenizer, "x", options, on_text=on_text)
    for piece, completion in zip(streamed, completions):
        assert piece == completion.text
        assert not any(s in completion.text for s in stop)
        if completion.finish_reason == "length":
            assert completion.text == tokenizer.decode(list(completion.token_ids))
    # The test exercised what it claims: whole characters, and stops where asked for.
    if stop:
        assert any(c.finish_reason == "stop" for c in completions)
    else:
        assert any(chars[-1] in c.text for c in completions)


def test_generate_restores_training_mode_and_validates_input(model, tokenizer):
    model.train()
    try:
        generate(model, tokenizer, "x", SamplingOptions(max_tokens=2, seed=0))
        assert model.training
    finally:
        model.eval()
    with pytest.raises(FewshotError, match="token ids"):
        generate(model, tokenizer, [1, 2, 999], SamplingOptions(max_tokens=2))
    with pytest.raises(FewshotError, match="logit_bias"):
        generate(model, tokenizer, "x", SamplingOptions(max_tokens=2, logit_bias={5000: 1}))


def test_logprobs_zero_gives_chosen_token_only(model, tokenizer):
    (completion,) = generate(model, tokenizer, "x", SamplingOptions(max_tokens=3, seed=0, logprobs=0, stop_at_eot=False))
    assert len(completion.logprobs) == 3
    assert all(item.top == () and item.logprob <= 0 and math.isfinite(item.logprob) for item in completion.logprobs)

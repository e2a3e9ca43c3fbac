import math

import pytest
import torch
from torch import nn
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from fewshot.config import NO_ROTARY, PRESETS
from fewshot.errors import FewshotError
from fewshot.model import GPT
from fewshot.model.mixers import causal_mask


MIXERS = ["dense", "local", "alternating", "lstm", "linear", "rfa", "rfa-gate", "aft", "aft-local", "gau", "sru", "ssm",
          "xl", "linear,dense", "ssm,aft,sru", "rfa-gate,dense", "aft-local,dense", "gau,dense", "xl,linear"]


def tiny(preset: str = "nano", **changes) -> GPT:
    # linear attention, AFT, SRU and the SSM need learned positions and no q/k/v convolution (config.py)
    if set(changes.get("attention", "").split(",")) & set(NO_ROTARY) and (preset != "nano" or changes.get("qkv_conv")):
        assume(False)
    torch.manual_seed(0)
    model = GPT(PRESETS[preset].model.replace(context=48, **changes)).eval()
    with torch.no_grad():  # a convolution that starts as the identity, or AFT-local's bias at zero, would hide a wrong one
        for name, param in model.named_parameters():
            if name.endswith(("mixer.conv", "mixer.position_bias", "mixer.content_bias")):
                param.normal_(0.0, 0.5)
    return model


@settings(max_examples=20, deadline=None)
@given(
    preset=st.sampled_from(["nano", "llama-nano"]),
    attention=st.sampled_from(MIXERS),
    window=st.integers(1, 20),
    split=st.integers(1, 30),
    conv=st.sampled_from([0, 2, 4]),
)
@example(preset="nano", attention="lstm", window=1, split=7, conv=0)  # always cover the recurrent mixer
@example(preset="llama-nano", attention="lstm", window=1, split=1, conv=0)
@example(preset="nano", attention="linear", window=1, split=30, conv=0)  # and linear attention
@example(preset="nano", attention="linear,dense", window=1, split=1, conv=0)
@example(preset="nano", attention="ssm,aft,sru", window=1, split=7, conv=0)  # and the other recurrences
@example(preset="nano", attention="rfa,rfa-gate", window=1, split=5, conv=0)
@example(preset="nano", attention="aft-local", window=6, split=9, conv=0)
@example(preset="nano", attention="gau", window=4, split=9, conv=0)
@example(preset="nano", attention="xl", window=4, split=9, conv=0)
@example(preset="llama-nano", attention="dense", window=1, split=1, conv=3)  # and the convolution
@example(preset="nano", attention="local", window=4, split=9, conv=4)
def test_step_by_step_decoding_matches_the_parallel_forward(preset: str, attention: str, window: int, split: int,
                                                            conv: int) -> None:
    model = tiny(preset, attention=attention, window=window, qkv_conv=conv)
    idx = torch.randint(0, 260, (2, 30), generator=torch.Generator().manual_seed(split))
    full, _ = model(idx)
    cache = model.new_cache(batch_size=2)
    pieces = [model.step(idx[:, :split], cache)]  # prefill a chunk, then one token at a time
    pieces += [model.step(idx[:, t : t + 1], cache) for t in range(split, 30)]
    assert cache.length == 30
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)
    # A prefill that asks for the last position only gets that row, and leaves the same cache.
    cache = model.new_cache(batch_size=2)
    last = model.step(idx[:, :split], cache, last_only=True)
    assert last.shape == (2, 1, full.shape[-1])
    torch.testing.assert_close(last[:, 0], full[:, split - 1], atol=1e-5, rtol=1e-4)
    if split < 30:
        torch.testing.assert_close(model.step(idx[:, split:split + 1], cache)[:, 0], full[:, split], atol=1e-5, rtol=1e-4)


def test_a_local_layer_cannot_see_past_its_window() -> None:
    window = 8
    model = tiny(n_layer=1, attention="local", window=window)
    idx = torch.randint(0, 260, (1, 40))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % 260
    before, _ = model(idx)
    after, _ = model(changed)
    assert not torch.allclose(before[0, 5 : 5 + window], after[0, 5 : 5 + window])
    torch.testing.assert_close(before[0, 5 + window :], after[0, 5 + window :])
    dense = tiny(n_layer=1)
    assert not torch.allclose(dense(idx)[0][0, 30], dense(changed)[0][0, 30])


def test_causal_mask_bands() -> None:
    mask = causal_mask(4, 4, 0, window=2, device=torch.device("cpu"))
    assert mask.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]


def test_embeddings_are_tied_and_initial_loss_is_near_uniform() -> None:
    model = tiny()
    assert model.head.weight is model.token_embedding.weight
    idx = torch.randint(0, 260, (4, 48))
    _, loss = model(idx, torch.randint(0, 260, (4, 48)))
    assert abs(loss.item() - math.log(260)) < 0.1


def test_residual_projections_are_scaled_down_with_depth() -> None:
    model = tiny()
    std = model.blocks[0].mlp.down.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.1)


def test_sequences_longer_than_the_context_are_refused() -> None:
    model = tiny()
    with pytest.raises(FewshotError, match="context"):
        model(torch.zeros(1, 49, dtype=torch.long))
    cache = model.new_cache(1, capacity=4)
    model.step(torch.zeros(1, 4, dtype=torch.long), cache)
    with pytest.raises(FewshotError, match="capacity"):
        model.step(torch.zeros(1, 1, dtype=torch.long), cache)


def test_dropout_is_active_in_training_only() -> None:
    model = tiny(dropout=0.5)
    idx = torch.randint(0, 260, (1, 16))
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


@settings(max_examples=12, deadline=None)
@given(preset=st.sampled_from(["nano", "llama-nano"]), attention=st.sampled_from(MIXERS),
       lengths=st.lists(st.integers(1, 20), min_size=2, max_size=4), conv=st.sampled_from([0, 3]))
@example(preset="nano", attention="lstm", lengths=[3, 17, 1], conv=0)
@example(preset="nano", attention="linear", lengths=[3, 17, 1], conv=0)
@example(preset="nano", attention="ssm,aft,sru", lengths=[3, 17, 1], conv=0)
@example(preset="nano", attention="rfa,rfa-gate", lengths=[3, 17, 1], conv=0)
@example(preset="nano", attention="aft-local", lengths=[3, 17, 1], conv=0)
@example(preset="nano", attention="gau", lengths=[3, 17, 1], conv=0)
@example(preset="nano", attention="xl", lengths=[3, 17, 1], conv=0)
@example(preset="llama-nano", attention="dense", lengths=[3, 17, 1], conv=3)
def test_left_padded_rows_decode_as_if_alone(preset: str, attention: str, lengths: list[int], conv: int) -> None:
    """Prompts of different lengths in one batch: each row's logits equal its own unpadded run."""
    model = tiny(preset, attention=attention, window=5, qkv_conv=conv)
    generator = torch.Generator().manual_seed(sum(lengths))
    prompts = [torch.randint(0, 260, (n,), generator=generator) for n in lengths]
    longest = max(lengths)
    padding = torch.tensor([longest - n for n in lengths])
    batch = torch.stack([torch.cat([torch.zeros(longest - len(p), dtype=torch.long), p]) for p in prompts])
    cache = model.new_cache(len(prompts), padding=padding)
    prefill = model.step(batch, cache)
    following = torch.randint(0, 260, (len(prompts), 3), generator=generator)
    steps = [model.step(following[:, i : i + 1], cache) for i in range(3)]
    for row, prompt in enumerate(prompts):
        alone, _ = model(torch.cat([prompt, following[row]])[None])
        torch.testing.assert_close(prefill[row, padding[row]:], alone[0, : len(prompt)], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torch.cat([s[row] for s in steps]), alone[0, len(prompt):], atol=1e-5, rtol=1e-4)


@settings(max_examples=10, deadline=None)
@given(preset=st.sampled_from(["nano", "llama-nano"]), attention=st.sampled_from(MIXERS),
       lengths=st.lists(st.integers(1, 20), min_size=1, max_size=4), conv=st.sampled_from([0, 3]))
@example(preset="nano", attention="lstm", lengths=[5, 1, 12], conv=0)
@example(preset="nano", attention="linear", lengths=[5, 1, 12], conv=0)
@example(preset="nano", attention="ssm,aft,sru", lengths=[5, 1, 12], conv=0)
@example(preset="nano", attention="rfa,rfa-gate", lengths=[5, 1, 12], conv=0)
@example(preset="nano", attention="aft-local", lengths=[5, 1, 12], conv=0)
@example(preset="nano", attention="gau", lengths=[5, 1, 12], conv=0)
@example(preset="nano", attention="xl", lengths=[5, 1, 12], conv=0)
@example(preset="llama-nano", attention="dense", lengths=[5, 1, 12], conv=3)
def test_rows_at_their_own_positions_decode_as_if_alone(preset: str, attention: str, lengths: list[int], conv: int) -> None:
    """A serving batch: each row prefilled into its own slot, then one token per row per step."""
    model = tiny(preset, attention=attention, window=5, qkv_conv=conv)
    generator = torch.Generator().manual_seed(sum(lengths))
    prompts = [torch.randint(0, 260, (n,), generator=generator) for n in lengths]
    cache = model.new_cache(len(prompts))
    for row, prompt in enumerate(prompts):
        model.step(prompt[None], cache.rows(row, row + 1))
    following = torch.randint(0, 260, (len(prompts), 3), generator=generator)
    positions = torch.tensor(lengths)
    steps = [model.step_rows(following[:, i : i + 1], cache, positions + i) for i in range(3)]
    for row, prompt in enumerate(prompts):
        alone, _ = model(torch.cat([prompt, following[row]])[None])
        torch.testing.assert_close(torch.cat([s[row] for s in steps]), alone[0, len(prompt):], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["nano", "llama-nano", "llama-mini", "smollm2-135m", "icl"])
def test_parameter_count_formula_matches_the_model(name: str) -> None:
    with torch.device("meta"):
        model = GPT(PRESETS[name].model)
    assert model.num_params() == PRESETS[name].model.num_params()


@pytest.mark.parametrize("name", ["nano", "micro", "mini", "llama-nano", "gpt3-small"])
def test_an_lstm_mixer_is_the_size_of_attention_and_counted_exactly(name: str) -> None:
    """The same-size recurrent baseline: only the mixer changes, and by under 10%."""
    attention = PRESETS[name].model
    lstm = attention.replace(attention="lstm")
    with torch.device("meta"):
        model = GPT(lstm)
    mixer = model.blocks[0].mixer
    assert sum(p.numel() for p in mixer.parameters()) == lstm.mixer_params()
    assert mixer.lstm.hidden_size == lstm.lstm_size < lstm.d_model
    assert model.num_params() == lstm.num_params()
    assert abs(lstm.mixer_params() / attention.mixer_params() - 1) < 0.1
    assert abs(lstm.num_params() / attention.num_params() - 1) < 0.01


@pytest.mark.parametrize("name", ["nano", "micro", "mini"])
def test_the_mixers_are_about_attentions_size_and_counted_exactly(name: str) -> None:
    """Linear attention and AFT have attention's parameters; RFA, AFT-local, the SRU, the SSM and GAU
    (whose scales and offsets add 8 d) are within 2.5%."""
    dense = PRESETS[name].model
    mixed = dense.replace(attention="linear,aft,sru,ssm,rfa-gate,rfa,aft-local,gau", n_layer=8, window=32)
    with torch.device("meta"):
        model = GPT(mixed)
    assert [type(block.mixer).__name__ for block in model.blocks[:8]] == [
        "LinearAttention", "AFTSimple", "SRU", "DiagonalSSM", "RandomFeatureAttention", "RandomFeatureAttention", "AFTLocal",
        "GatedAttentionUnit"]
    assert model.num_params() == mixed.num_params()
    for layer, block in enumerate(model.blocks):
        assert sum(p.numel() for p in block.mixer.parameters()) == mixed.mixer_params(layer)
        assert abs(mixed.mixer_params(layer) / dense.mixer_params() - 1) < 0.025


@pytest.mark.parametrize("name", ["nano", "micro"])
def test_transformer_xl_is_attention_plus_its_position_projection_and_counted_exactly(name: str) -> None:
    dense, xl = PRESETS[name].model, PRESETS[name].model.replace(attention="xl")
    with torch.device("meta"):
        model = GPT(xl)
    assert model.num_params() == xl.num_params()
    inner = xl.n_head * xl.head_size  # W_R, and u and v per head
    assert xl.mixer_params() - dense.mixer_params() == xl.d_model * inner + 2 * inner


@pytest.mark.parametrize("attention", MIXERS)
def test_a_model_built_for_loading_computes_what_the_saved_one_did(attention: str) -> None:
    """GPT.for_loading builds on the meta device and gives storage without values: anything a
    mixer keeps outside its state dict (a buffer, a table made in __init__) would be garbage."""
    torch.manual_seed(0)
    model = GPT(PRESETS["nano"].model.replace(context=48, attention=attention, window=5)).eval()
    loaded = GPT.for_loading(model.config)
    loaded.load_state_dict(model.state_dict())
    idx = torch.randint(0, 260, (2, 40), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(idx)[0], loaded.eval()(idx)[0])


def test_a_rewound_cache_overwrites_what_followed() -> None:
    """What the serving engine relies on for attention: a dummy token written at a slot's next
    position, then overwritten by the slot's next prompt chunk, leaves no trace. (A recurrent
    state cannot rewind: the engine marks the dummy rows instead, test_mixers.py.)"""
    model = tiny()
    idx = torch.randint(0, 260, (1, 20), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(1)
    model.step(idx[:, :10], cache)
    model.step(torch.zeros(1, 3, dtype=torch.long), cache)
    cache.length = 10
    torch.testing.assert_close(model.step(idx[:, 10:], cache), model(idx)[0][:, 10:], atol=1e-5, rtol=1e-4)


def test_llama_blocks_group_key_value_heads_and_can_untie_the_head() -> None:
    model = tiny("llama-nano", tie_embeddings=False)
    config = model.config
    assert model.position_embedding is None
    assert model.blocks[0].mixer.qkv.out_features == (config.n_head + 2 * config.n_kv_head) * config.head_size
    assert model.head.weight is not model.token_embedding.weight
    assert model.num_params() == config.num_params()


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 24), bias=st.booleans(), extra_dim=st.booleans())
def test_linear_gives_nn_linears_result_on_every_route(rows: int, bias: bool, extra_dim: bool) -> None:
    """The few-rows route (fewshot.model.linear) is only a faster order of the same product."""
    from fewshot.model.linear import Linear

    torch.manual_seed(rows)
    ours = Linear(24, 40, bias=bias)
    reference = nn.Linear(24, 40, bias=bias)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(rows, 24) if not extra_dim else torch.randn(1, rows, 24)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)
    assert ours(x).requires_grad  # with gradients it is nn.Linear itself

import pytest
import torch

from fewshot.config import PRESETS, ModelConfig, TrainConfig, preset
from fewshot.errors import FewshotError
from fewshot.model import GPT

# The paper's reported sizes (GPT-3 Table 2.1), which the presets must reproduce.
PAPER_PARAMS: dict[str, float] = {
    "gpt3-small": 125e6,
    "gpt3-medium": 350e6,
    "gpt3-large": 760e6,
    "gpt3-xl": 1.3e9,
    "gpt3-2.7b": 2.7e9,
    "gpt3-6.7b": 6.7e9,
    "gpt3-13b": 13.0e9,
    "gpt3-175b": 175.0e9,
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_gpt3_presets_match_table_2_1_within_2_percent(name: str) -> None:
    config = PRESETS[name].model
    assert (config.context, config.vocab_size) == (2048, 50257)
    with torch.device("meta"):  # 175B parameters, zero bytes allocated
        model = GPT(config)
    counted = model.num_params()
    assert counted == config.num_params()
    assert abs(counted / PAPER_PARAMS[name] - 1) < 0.02, f"{name}: {counted:,} vs {PAPER_PARAMS[name]:,.0f}"


def test_13b_keeps_the_papers_d_model_and_head_size() -> None:
    config = PRESETS["gpt3-13b"].model
    assert (config.d_model, config.n_head, config.head_size) == (5140, 40, 128)
    with torch.device("meta"):
        attention = GPT(config).blocks[0].mixer
    assert attention.qkv.weight.shape == (3 * 5120, 5140)
    assert attention.proj.weight.shape == (5140, 5120)


@pytest.mark.parametrize(("name", "target"), [("nano", 0.5e6), ("micro", 2e6), ("mini", 10e6)])
def test_tiny_presets_have_their_advertised_size(name: str, target: float) -> None:
    assert abs(PRESETS[name].model.num_params() / target - 1) < 0.1


def test_alternating_attention_starts_dense_then_bands() -> None:
    config = PRESETS["nano"].model.replace(attention="alternating")
    assert [config.layer_attention(i) for i in range(4)] == ["dense", "local", "dense", "local"]


def test_lstm_replaces_attention_in_every_layer_and_is_named_in_errors() -> None:
    config = TrainConfig(data="d", out="o", preset="nano", attention="lstm").model_config(vocab_size=260)
    assert [config.layer_attention(i) for i in range(4)] == ["lstm"] * 4
    assert config.lstm_size == 53  # ~0.55 d_model: the mixer's size matches attention's
    with pytest.raises(FewshotError, match="lstm"):
        PRESETS["nano"].model.replace(attention="rnn")


@pytest.mark.parametrize(
    "changes",
    [{"n_head": 5}, {"dropout": 1.0}, {"attention": "sparse"}, {"n_layer": 0}, {"window": 0}],
)
def test_invalid_model_configs_are_refused(changes: dict) -> None:
    with pytest.raises(FewshotError):
        PRESETS["nano"].model.replace(**changes)


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(FewshotError, match="nano, micro, mini"):
        preset("gpt5")


def test_model_config_round_trips_through_a_dict() -> None:
    config = PRESETS["gpt3-13b"].model
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(FewshotError, match="unknown fields"):
        ModelConfig.from_dict({**config.to_dict(), "n_layers": 3})


def test_train_config_validates_and_adapts_the_preset() -> None:
    config = TrainConfig(data="d", out="o", preset="nano", context=64, attention="local", window=16)
    model = config.model_config(vocab_size=300)
    assert (model.context, model.vocab_size, model.attention, model.window) == (64, 300, "local", 16)
    assert config.peak_lr == 1e-3
    with pytest.raises(FewshotError, match="batch-size"):
        TrainConfig(data="d", out="o", batch_size=0)
    with pytest.raises(FewshotError, match="unknown preset"):
        TrainConfig(data="d", out="o", preset="huge")

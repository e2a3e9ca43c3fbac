"""Every preset row trains: its learning rate resolves and one optimizer step runs.

`--preset icl-deep` without `--lr` once crashed with a KeyError, because the rates lived in a
second dict that missed that name; a preset is now one row, and this test walks all of them.
"""

from pathlib import Path

import math

import pytest

from fewshot.config import PRESETS, TrainConfig
from fewshot.train.loop import train
from tests.conftest import tiny_config

FITS_IN_A_TEST = 200e6  # parameters; larger rows train at their own block family, 8 wide per head


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_its_rate_and_trains_a_step(name: str, data_dir: Path, tmp_path: Path) -> None:
    row = PRESETS[name]
    assert TrainConfig(data="d", out="o", preset=name).peak_lr == row.lr > 0
    overrides = {}
    if row.model.num_params() > FITS_IN_A_TEST:
        overrides = {"n_layer": 1, "d_model": 8 * row.model.n_head, "head_dim": None}
    config = tiny_config(data_dir, tmp_path / name, preset=name, max_steps=1, batch_size=1, context=16,
                         eval_every=1, save_every=1, model_overrides=overrides)
    result = train(config)
    assert result.step == 1 and math.isfinite(result.train_loss)
    assert result.run_dir == tmp_path / name and (result.run_dir / "model.safetensors").is_file()

import csv
import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewshot.config import TrainConfig
from fewshot.errors import FewshotError
from fewshot.train.memory import estimate_training_memory
from fewshot.config import PRESETS
from fewshot.train.optim import make_optimizer
from fewshot.train.loop import learning_rate, resume_config, train
from tests.conftest import tiny_config


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def test_schedule_warms_up_linearly_then_decays_to_ten_percent() -> None:
    config = TrainConfig(data="d", out="o", max_steps=1000, warmup_steps=100, lr=1e-3)
    assert learning_rate(0, config) == pytest.approx(1e-5)
    assert learning_rate(99, config) == pytest.approx(1e-3)
    assert learning_rate(550, config) == pytest.approx(0.55e-3)  # half way down the cosine
    assert learning_rate(1000, config) == pytest.approx(1e-4)
    rates = [learning_rate(s, config) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_weight_decay_touches_matrices_only() -> None:
    from fewshot.model import GPT

    model = GPT(PRESETS["nano"].model)
    optimizer = make_optimizer(model, TrainConfig(data="d", out="o"), torch.device("cpu"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert optimizer.defaults["betas"] == (0.9, 0.95)


@pytest.mark.parametrize("preset", ["nano", "llama-nano"])
def test_training_lowers_the_loss_and_writes_a_run_directory(data_dir: Path, tmp_path: Path, preset: str) -> None:
    run = tmp_path / "run"
    result = train(tiny_config(data_dir, run, max_steps=40, eval_every=20, batch_size=8, preset=preset))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert last < first - 1.0, (first, last)
    assert result.val_loss is not None and result.val_loss < 4.0
    for name in ("config.json", "model.safetensors", "state/LATEST", "state/step_000040/manifest.json"):
        assert (run / name).exists(), name


@pytest.mark.parametrize("preset, optimizer", [("nano", "adamw"), ("llama-nano", "adamw"), ("llama-nano", "muon")])
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(data_dir: Path, tmp_path: Path, preset: str, optimizer: str) -> None:
    # dropout > 0 makes the result depend on the restored RNG state too
    straight = tiny_config(data_dir, tmp_path / "straight", dropout=0.1, preset=preset, optimizer=optimizer)
    train(straight)
    first_half = dataclasses.replace(straight, out=str(tmp_path / "resumed"), max_steps=6)
    train(first_half)
    train(resume_config(tmp_path / "resumed", max_steps=12), resume=True)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rows = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "resumed" / "metrics.csv"))]
    assert rows == list(range(1, 13))


def test_an_existing_run_is_never_overwritten(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(data_dir, run, max_steps=2))
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(FewshotError, match="--resume"):
        train(tiny_config(data_dir, run, max_steps=4))
    assert (run / "model.safetensors").read_bytes() == before


def test_resume_without_a_checkpoint_is_refused(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FewshotError, match="no run to resume"):
        train(tiny_config(data_dir, tmp_path / "empty"), resume=True)


def test_a_config_too_big_for_memory_is_refused_before_allocating(data_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(data_dir, tmp_path / "huge", preset="gpt3-175b", context=64)
    with pytest.raises(FewshotError, match="GiB"):
        train(config)
    assert not (tmp_path / "huge").exists()


def test_memory_estimate_grows_with_batch_and_model() -> None:
    small = estimate_training_memory(PRESETS["nano"].model, 8, 256, autocast_bf16=False)
    assert small.weights_bytes == 16 * PRESETS["nano"].model.num_params()
    assert estimate_training_memory(PRESETS["nano"].model, 16, 256, False).activation_bytes > small.activation_bytes
    assert estimate_training_memory(PRESETS["gpt3-175b"].model, 1, 2048, True).total_bytes > 2.8e12  # > 2.8 TB


def test_gradient_accumulation_counts_every_micro_batch(data_dir: Path, tmp_path: Path) -> None:
    result = train(tiny_config(data_dir, tmp_path / "run", max_steps=3, grad_accum=3))
    assert result.tokens == 3 * 3 * 4 * 64  # steps x micro-batches x batch x context
    from fewshot.runs import latest_checkpoint, load_checkpoint
    from fewshot.model import GPT

    _, state = load_checkpoint(latest_checkpoint(tmp_path / "run"), GPT(PRESETS["nano"].model.replace(context=64)), torch.device("cpu"))
    # The cursor counts optimizer steps; each step drew one global batch of 3 x 4 windows.
    assert state["sampler"] == {"seed": 0, "position": 3, "global_batch": 12}


def test_precision_choice_follows_the_flag_and_the_hardware() -> None:
    from fewshot.device import cpu_has_native_bf16, use_bf16

    cpu = torch.device("cpu")
    assert use_bf16("bf16", cpu) and not use_bf16("fp32", cpu)
    flags = open("/proc/cpuinfo").read()
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags.split() or "amx_bf16" in flags.split())
    assert use_bf16("auto", cpu) == cpu_has_native_bf16()


def test_sequence_length_warm_up_trains_short_windows_first(data_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(data_dir, tmp_path / "run", max_steps=6, short_context=16, short_context_steps=4)
    assert [config.window_length(step, 64) for step in (0, 3, 4, 5)] == [16, 16, 64, 64]
    result = train(config)
    assert result.tokens == 4 * 4 * 16 + 2 * 4 * 64  # warm-up steps x batch x 16, then full windows
    assert result.val_loss is not None  # validation always uses the full context


@pytest.mark.parametrize("stop_at", [2, 6])  # inside the warm-up, and after it
def test_resume_across_the_sequence_length_warm_up_is_bitwise_exact(data_dir: Path, tmp_path: Path, stop_at: int) -> None:
    straight = tiny_config(data_dir, tmp_path / "straight", short_context=16, short_context_steps=4)
    train(straight)
    train(dataclasses.replace(straight, out=str(tmp_path / "resumed"), max_steps=stop_at))
    train(resume_config(tmp_path / "resumed", max_steps=12), resume=True)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize(("options", "message"), [
    ({"short_context": 1, "short_context_steps": 5}, "--short-context must be >= 2"),
    ({"short_context_steps": 5}, "needs --short-context"),
    ({"short_context": 16, "short_context_steps": -1}, "--short-context-steps must be >= 0"),
])
def test_a_bad_sequence_length_warm_up_is_refused(options: dict, message: str) -> None:
    with pytest.raises(FewshotError, match=message):
        TrainConfig(data="d", out="o", **options)


def test_fit_steps_to_time_refits_the_schedule_once_and_a_resume_keeps_it(data_dir: Path, tmp_path: Path) -> None:
    """Planned far too many steps for 3 seconds: at 5% of the time the run measures itself and
    shortens the schedule to what the rest of the budget holds, and says so in config.json."""
    from fewshot.files import read_json

    run = tmp_path / "run"
    config = tiny_config(data_dir, run, max_steps=1_000_000, max_time=3.0, fit_steps_to_time=True,
                         eval_every=10, save_every=10)
    result = train(config)
    saved = read_json(run / "config.json")["train"]
    assert 20 < saved["max_steps"] < 1_000_000 and saved["fit_steps_to_time"] is False
    # The run follows the fitted schedule to its end, the cosine's last step before the floor (on
    # a quiet machine; under load the rest of the run can be slower than its start, and the cap
    # ends it).
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    if result.step == saved["max_steps"]:
        from fewshot.train.schedule import learning_rate

        fitted = dataclasses.replace(config, max_steps=saved["max_steps"])
        assert float(rows[-1]["lr"]) == pytest.approx(learning_rate(saved["max_steps"] - 1, fitted), rel=1e-5)
    else:
        assert result.seconds >= 3.0
    # A resume continues the fitted schedule instead of refitting (or restoring the plan).
    again = train(resume_config(run, max_time=60.0), resume=True)
    assert again.step == saved["max_steps"]


def test_a_signal_during_set_up_saves_a_checkpoint_instead_of_raising(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    # The signal lands after config.json is written and before the loop starts (the tokenizer
    # is saved in between): it used to end the run with a KeyboardInterrupt traceback.
    import os
    import signal

    from fewshot.runs import latest_checkpoint
    from fewshot.data.shards import TokenData

    tokenizer_class = type(TokenData.open(data_dir).tokenizer)
    save = tokenizer_class.save

    def save_then_interrupt(self, directory: Path) -> None:
        assert (Path(directory) / "config.json").is_file()
        os.kill(os.getpid(), signal.SIGINT)
        save(self, directory)

    monkeypatch.setattr(tokenizer_class, "save", save_then_interrupt)
    run = tmp_path / "run"
    result = train(tiny_config(data_dir, run, max_steps=50))
    assert result.interrupted and result.step == 1
    assert latest_checkpoint(run) is not None
    monkeypatch.undo()
    resumed = train(resume_config(run), resume=True)
    assert resumed.step == 50 and not resumed.interrupted


def test_data_written_in_order_is_read_in_order_and_resumes_exactly(corpus_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A curriculum's data (`prepare(..., in_order=True)`) is read from start to end over the
    run's steps: a run stopped half-way by a signal and resumed equals one that ran straight,
    and both differ from reading the same tokens at random."""
    import os
    import signal

    from fewshot.data.prepare import prepare
    from fewshot.data.sampling import StepSampler

    ordered, shuffled = tmp_path / "ordered", tmp_path / "shuffled"
    prepare([corpus_dir], ordered, tokenizer="byte", progress=False, in_order=True)
    prepare([corpus_dir], shuffled, tokenizer="byte", progress=False)
    train(tiny_config(ordered, tmp_path / "straight"))
    train(tiny_config(shuffled, tmp_path / "random"))
    next_step = StepSampler.next_step

    def interrupt_at_six(self):
        if self.global_batches.position == 5:  # the sixth step: it finishes, saves, and the run stops
            os.kill(os.getpid(), signal.SIGINT)
        return next_step(self)

    monkeypatch.setattr(StepSampler, "next_step", interrupt_at_six)
    stopped = train(tiny_config(ordered, tmp_path / "resumed"))
    assert stopped.interrupted and stopped.step == 6
    monkeypatch.undo()
    assert train(resume_config(tmp_path / "resumed"), resume=True).step == 12
    straight, resumed, random_order = (weights(tmp_path / name) for name in ("straight", "resumed", "random"))
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    assert not all(torch.equal(straight[name], random_order[name]) for name in straight)

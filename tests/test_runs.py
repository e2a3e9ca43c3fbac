import json
import os
import pickle
from pathlib import Path

import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fewshot.runs import (
    FORMAT_VERSION,
    RunConfig,
    RunDir,
    _prune,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    step_of,
    write_safetensors,
    weights_to_save,
)
from fewshot.config import PRESETS
from fewshot.errors import FewshotError
from fewshot.files import atomic_write_text
from fewshot.model import GPT


def model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(PRESETS["nano"].model.replace(context=32))


def save(run: Path, step: int, net: GPT, keep_last: int = 2) -> Path:
    optimizer = torch.optim.AdamW(net.parameters())
    net(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    optimizer.step()
    state = {"step": step, "rng_cpu": torch.get_rng_state(), "sampler": {"seed": 0, "rank": 0, "position": step}}
    return save_checkpoint(run, step, net, optimizer.state_dict(), state, keep_last)


def test_weights_round_trip_bit_for_bit_and_stay_tied(tmp_path: Path) -> None:
    source, target = model(0), model(1)
    write_safetensors(tmp_path / "w.safetensors", weights_to_save(source))
    load_weights(tmp_path / "w.safetensors", target)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
    assert target.head.weight is target.token_embedding.weight


def test_checkpoints_rotate_and_latest_points_at_the_newest(tmp_path: Path) -> None:
    net = model()
    for step in (10, 20, 30):
        save(tmp_path, step, net, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "state").iterdir() if p.is_dir()) == ["step_000020", "step_000030"]
    assert latest_checkpoint(tmp_path).name == "step_000030"
    # the top-level weights are the newest, loadable on their own
    load_weights(tmp_path / "model.safetensors", model(3))
    _, trainer = load_checkpoint(latest_checkpoint(tmp_path), model(4), torch.device("cpu"))
    assert trainer["step"] == 30


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.integers(0, 10**8), min_size=1, max_size=12, unique=True), keep=st.integers(1, 5))
def test_prune_keeps_the_newest_steps_by_number_not_by_name(tmp_path: Path, steps: list[int], keep: int) -> None:
    state = tmp_path / f"state-{len(list(tmp_path.iterdir()))}"
    for step in steps:
        (state / f"step_{step:06d}").mkdir(parents=True)
    _prune(state, keep)
    assert [step_of(p) for p in checkpoints(state)] == sorted(steps)[-keep:]


def test_prune_past_step_999999_keeps_the_newest(tmp_path: Path) -> None:
    for step in (999_850, 999_900, 999_950, 1_000_000):
        (tmp_path / f"step_{step:06d}").mkdir()
    _prune(tmp_path, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1000000", "step_999900", "step_999950"]


def test_a_checkpoint_newer_than_latest_is_used_when_it_is_complete(tmp_path: Path) -> None:
    """A kill between the step directory's rename and LATEST's rewrite loses no checkpoint."""
    net = model()
    save(tmp_path, 10, net)
    newer = save(tmp_path, 20, net)
    (tmp_path / "state" / "LATEST").write_text("step_000010\n")
    assert latest_checkpoint(tmp_path) == newer
    # ... but not when it does not verify: then LATEST's stands
    (newer / "trainer.pt").write_bytes(b"torn")
    assert latest_checkpoint(tmp_path).name == "step_000010"
    # and before the first LATEST was written
    (tmp_path / "state" / "LATEST").unlink()
    shutil.rmtree(newer)
    assert latest_checkpoint(tmp_path).name == "step_000010"


@pytest.mark.parametrize("pointer", ["../../etc", "step_x", "\udcff" * 3, ""])
def test_a_damaged_latest_pointer_is_one_error(tmp_path: Path, pointer: str) -> None:
    save(tmp_path, 10, model())
    (tmp_path / "state" / "LATEST").write_bytes(pointer.encode("utf-8", "surrogateescape"))
    with pytest.raises(FewshotError, match="should name a step directory"):
        latest_checkpoint(tmp_path)


@pytest.mark.parametrize("manifest", ["[]", "{}", '{"model.safetensors": 3}', '{"../x": {"bytes": 1, "sha256": "a"}}'])
def test_a_garbage_manifest_is_one_error(tmp_path: Path, manifest: str) -> None:
    checkpoint = save(tmp_path, 1, model())
    (checkpoint / "manifest.json").write_text(manifest)
    with pytest.raises(FewshotError, match="not a checkpoint manifest"):
        load_checkpoint(checkpoint, model(), torch.device("cpu"))


def test_a_writer_clears_temporaries_left_by_a_kill_and_keeps_real_files(tmp_path: Path) -> None:
    net = model()
    save(tmp_path, 10, net)
    stale = [tmp_path / ".model.safetensors.abc123.tmp", tmp_path / "state" / ".LATEST.x1y2.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    staging = tmp_path / "state" / ".step_000020.tmp-q9"
    staging.mkdir()
    (staging / "optimizer.pt").write_bytes(b"half")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                    if not any(part.startswith(".") for part in p.relative_to(tmp_path).parts))
    with RunDir(tmp_path).writing():
        pass
    assert not any(p.exists() for p in [*stale, staging])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_second_writer_is_refused_and_a_failed_start_leaves_no_directory(tmp_path: Path) -> None:
    with RunDir(tmp_path / "run").writing():
        with pytest.raises(FewshotError, match="another process is writing"):
            with RunDir(tmp_path / "run").writing():
                pass
    with pytest.raises(RuntimeError):
        with RunDir(tmp_path / "new").writing():
            raise RuntimeError
    assert not (tmp_path / "new").exists()


def test_a_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    checkpoint = save(tmp_path, 1, model())
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(FewshotError, match="truncated"):
        load_checkpoint(checkpoint, model(), torch.device("cpu"))


def test_a_flipped_byte_is_caught_by_the_manifest(tmp_path: Path) -> None:
    checkpoint = save(tmp_path, 1, model())
    optimizer = checkpoint / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    optimizer.write_bytes(bytes(data))
    with pytest.raises(FewshotError, match="corrupt"):
        load_checkpoint(checkpoint, model(), torch.device("cpu"))


def test_truncated_top_level_weights_give_a_clear_error(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "w.safetensors", weights_to_save(model()))
    (tmp_path / "w.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:-100])
    with pytest.raises(FewshotError, match="corrupt or truncated"):
        load_weights(tmp_path / "w.safetensors", model())


def test_weights_for_another_shape_are_refused(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "w.safetensors", weights_to_save(model()))
    other = GPT(PRESETS["nano"].model.replace(context=32, d_model=64))
    with pytest.raises(FewshotError, match="shape"):
        load_weights(tmp_path / "w.safetensors", other)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_loading_state_never_runs_pickled_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    checkpoint = save(tmp_path, 1, model())
    (checkpoint / "trainer.pt").write_bytes(pickle.dumps({"step": Payload()}))
    # re-sign the manifest so only the weights_only loader stands in the way
    import hashlib
    import json

    manifest = json.loads((checkpoint / "manifest.json").read_text())
    data = (checkpoint / "trainer.pt").read_bytes()
    manifest["trainer.pt"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FewshotError, match="cannot read training state"):
        load_checkpoint(checkpoint, model(), torch.device("cpu"))
    assert not (tmp_path / "pwned").exists()


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    atomic_write_text(target, "old")

    class Boom(Exception):
        pass

    from fewshot.files import atomic_write

    def explode(tmp: Path) -> None:
        tmp.write_text("half")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(target, explode)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_written_files_and_checkpoints_get_ordinary_permissions(tmp_path: Path) -> None:
    """mkstemp/mkdtemp are private (0600/0700); what we rename into place must not stay so."""
    import os

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "config.json", "{}")
        checkpoint = save(tmp_path / "run", 1, model())
    finally:
        os.umask(umask)
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o644
    assert checkpoint.stat().st_mode & 0o777 == 0o755
    assert (checkpoint / "optimizer.pt").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------- RunDir

# Written by fewshot before config.json recorded a format version (the code of stop 23): a
# one-block nano trained four steps, with its checkpoint.
OLD_RUN = Path(__file__).parent / "fixtures" / "run-v0"


def test_a_run_written_before_the_format_version_still_loads_and_gives_the_same_text() -> None:
    import fewshot

    run = RunDir.open(OLD_RUN)
    assert run.config.train is not None and run.config.train.preset == "nano"
    assert run.config.model.n_layer == 1 and run.config.tokenizer == {"type": "byte"}
    lm = fewshot.load(OLD_RUN)
    # What the code before the layout change generated and scored with these weights.
    assert lm.generate("The cat", max_tokens=12, temperature=0) == "\ufffd" + ">" * 11
    assert lm.score("The cat", " sat") == -22.294858932495117


def test_an_old_run_resumes_and_its_config_gains_the_format_version(tmp_path: Path, data_dir: Path) -> None:
    import shutil

    from fewshot.train.loop import resume_config, train

    shutil.copytree(OLD_RUN, tmp_path / "run")
    config = resume_config(tmp_path / "run", data=str(data_dir), max_steps=6, progress=False, tensorboard=False)
    result = train(config, resume=True)
    assert result.step == 6
    assert json.loads((tmp_path / "run" / "config.json").read_text())["format_version"] == FORMAT_VERSION


def write_config(tmp_path: Path, record: object) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(record) if not isinstance(record, str) else record)
    return run


def test_a_run_from_a_newer_fewshot_is_refused_with_one_clear_error(tmp_path: Path) -> None:
    record = json.loads((OLD_RUN / "config.json").read_text()) | {"format_version": FORMAT_VERSION + 1}
    with pytest.raises(FewshotError, match=f"newer fewshot \\(run format {FORMAT_VERSION + 1}"):
        RunDir.open(write_config(tmp_path, record))


@pytest.mark.parametrize("record, message", [
    ({"architectures": ["GPT2LMHeadModel"], "n_embd": 768}, "not a fewshot run config.*import-hf"),  # a Hugging Face directory
    ([1, 2, 3], "not a fewshot run config"),
    ('{"model": {"n_layer": 2', "not valid JSON"),  # truncated
    ({"model": {"n_layer": 2, "n_head": 2, "d_model": 8, "wings": 3}, "tokenizer": {"type": "byte"}}, "unknown fields"),
    ({"model": {"n_layer": 2}, "tokenizer": {"type": "byte"}}, "malformed"),
    ({"format_version": "2", "model": {}, "tokenizer": {}}, "format_version must be an integer"),
])
def test_a_foreign_or_damaged_config_is_one_fewshot_error(tmp_path: Path, record: object, message: str) -> None:
    with pytest.raises(FewshotError, match=message):
        RunDir.open(write_config(tmp_path, record))


def test_an_imported_run_cannot_be_resumed_as_training(tmp_path: Path) -> None:
    from fewshot.tokenizer import ByteTokenizer
    from fewshot.train.loop import resume_config

    tokenizer = ByteTokenizer()
    config = PRESETS["nano"].model.replace(n_layer=1, context=16)
    RunDir.publish(tmp_path / "imported", RunConfig(config, tokenizer.spec(), source={"gguf": "x.gguf"}), tokenizer,
                   weights_to_save(GPT(config)))
    with pytest.raises(FewshotError, match="imported"):
        resume_config(tmp_path / "imported")


def test_publish_writes_a_run_that_round_trips_its_config(tmp_path: Path) -> None:
    from fewshot.tokenizer import ByteTokenizer

    tokenizer = ByteTokenizer()
    config = RunConfig(PRESETS["nano"].model.replace(n_layer=1, context=16), tokenizer.spec(), source={"hf": "/models/x"})
    run = RunDir.publish(tmp_path / "run", config, tokenizer, weights_to_save(GPT(config.model)))
    again = RunDir.open(run.path).config
    assert again == config and again.train is None
    with pytest.raises(FewshotError, match="already exists"):
        RunDir.publish(tmp_path / "run", config, tokenizer, weights_to_save(GPT(config.model)))

import os
import pickle
from pathlib import Path

import pytest
import torch

from fewshot.runs import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
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
    save_weights(tmp_path / "w.safetensors", source)
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
    save_weights(tmp_path / "w.safetensors", model())
    (tmp_path / "w.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:-100])
    with pytest.raises(FewshotError, match="corrupt or truncated"):
        load_weights(tmp_path / "w.safetensors", model())


def test_weights_for_another_shape_are_refused(tmp_path: Path) -> None:
    save_weights(tmp_path / "w.safetensors", model())
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

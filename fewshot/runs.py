"""The run directory: what `train` and the importers write and everything else reads.

    runs/mine/
      config.json            format version, fewshot version, model config, tokenizer spec,
                             and the train config and data (trained runs) or source (imports)
      model.safetensors      the latest weights
      tokenizer.json         BPE only
      state/LATEST           name of the newest complete checkpoint below
      state/step_000200/     model.safetensors, optimizer.pt, trainer.pt, manifest.json
      metrics.csv, tb/, report.md, *.png

`RunDir` is the only code that knows these names and the keys of config.json. Every file is
written to a temporary name, fsynced and renamed, so a crash or `kill -9` at any moment leaves
the previous checkpoint intact. `manifest.json` records a SHA-256 per file, so a checkpoint
damaged later is refused instead of silently loaded. Nothing is unpickled: tensors load
through safetensors or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fewshot import __version__
from fewshot.config import ModelConfig, TrainConfig
from fewshot.errors import FewshotError
from fewshot.files import (
    check_creatable,
    atomic_write,
    atomic_write_text,
    default_permissions,
    fsync_dir,
    fsync_file,
    publish_dir,
    read_json,
    remove_temporaries,
    staging_dir,
    write_json,
)
from fewshot.tokenizer import Tokenizer, load_tokenizer

# Version 1 is the layout above. Runs written before config.json recorded a version have the
# same layout, so a missing version reads as 1; a later layout bumps it, and this code refuses
# a run whose version it does not know rather than misread it.
FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "state"
LATEST = "LATEST"
MANIFEST = "manifest.json"
METRICS = "metrics.csv"
TENSORBOARD = "tb"
REPORT = "report.md"
ADAPTER_CONFIG = "adapter_config.json"  # peft's own names: an adapter run is also a peft adapter directory
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tied_aliases(model: torch.nn.Module) -> set[str]:
    """State-dict names that share their tensor with an earlier name (a tied output head).

    safetensors refuses to store one tensor twice, and storing it once is what we want.
    """
    seen: set[int] = set()
    aliases = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.device.type != "meta" and tensor.data_ptr() in seen:
            aliases.add(name)
        seen.add(tensor.data_ptr())
    return aliases


def weights_to_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    aliases = tied_aliases(model)
    return {name: t.detach().contiguous() for name, t in model.state_dict().items() if name not in aliases}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors creates its files private (0600); weights are as readable as any file."""
    save_file(tensors, str(path), metadata={"format": "pt"})
    default_permissions(path)


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Load safetensors weights into `model`, refusing files that do not fit it.

    Tensor by tensor, straight into the model's parameters: peak memory is the model plus
    its largest tensor, not the model twice.
    """
    if not path.is_file():
        raise FewshotError(f"{path}: weights not found; is this a run directory written by `fewshot train`?")
    expected = model.state_dict()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as weights:
            names = set(weights.keys())
            missing = sorted(set(expected) - names - tied_aliases(model))
            unexpected = sorted(names - set(expected))
            if missing or unexpected:
                raise FewshotError(f"{path}: weights do not match the model config (missing {missing[:3]}, unexpected {unexpected[:3]})")
            for name in names:
                shape = tuple(weights.get_slice(name).get_shape())
                if shape != tuple(expected[name].shape):
                    raise FewshotError(f"{path}: {name} has shape {shape} but the config needs {tuple(expected[name].shape)}")
            with torch.no_grad():
                for name in sorted(names):
                    expected[name].copy_(weights.get_tensor(name))
    except (SafetensorError, OSError, ValueError) as error:
        raise FewshotError(f"{path}: weights are corrupt or truncated ({error}); re-run training or pick another checkpoint") from None


@dataclass(frozen=True)
class RunConfig:
    """config.json, typed. `train` and `data` belong to trained runs, `source` to imports."""

    model: ModelConfig
    tokenizer: dict[str, Any]  # Tokenizer.spec()
    train: TrainConfig | None = None
    data: dict[str, Any] | None = None  # {"path": ..., "meta": the prepared data's meta.json}
    source: dict[str, Any] | None = None  # where an imported model came from
    adapter: dict[str, Any] | None = None  # a LoRA/(IA)3 run: its peft config (also in adapter_config.json)
    fewshot_version: str = __version__

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"format_version": FORMAT_VERSION, "fewshot_version": self.fewshot_version,
                                  "model": self.model.to_dict(), "tokenizer": self.tokenizer}
        if self.train is not None:
            record["train"] = self.train.to_dict()
        for key in ("data", "source", "adapter"):
            if getattr(self, key) is not None:
                record[key] = getattr(self, key)
        return record

    @classmethod
    def from_json(cls, record: Any, where: Path) -> RunConfig:
        if not isinstance(record, dict):
            raise FewshotError(f"{where}: not a fewshot run config (expected a JSON object)")
        version = record.get("format_version", 1)
        if not isinstance(version, int) or isinstance(version, bool):
            raise FewshotError(f"{where}: format_version must be an integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise FewshotError(f"{where}: written by a newer fewshot (run format {version}; this one reads up to "
                               f"{FORMAT_VERSION}); upgrade fewshot to use this run")
        if "model" not in record or "tokenizer" not in record:
            raise FewshotError(f"{where}: not a fewshot run config (no model or tokenizer); a Hugging Face "
                               "directory is imported with `fewshot import-hf`")
        try:
            return cls(model=ModelConfig.from_dict(record["model"]), tokenizer=record["tokenizer"],
                       train=TrainConfig.from_dict(record["train"]) if "train" in record else None,
                       data=record.get("data"), source=record.get("source"), adapter=record.get("adapter"),
                       fewshot_version=record.get("fewshot_version", "unknown"))
        except (KeyError, TypeError, AttributeError) as error:
            raise FewshotError(f"{where}: malformed ({error!r})") from None


class RunDir:
    """One run directory. `RunDir.open` for one that exists; `RunDir(path)` to start one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._config: RunConfig | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run; a missing, foreign, damaged or too new one is one clear error."""
        run = cls(path)
        if not run.path.is_dir():
            raise FewshotError(f"{run.path}: no such run directory")
        if not run.exists():
            raise FewshotError(f"{run.path}: not a run directory (no {CONFIG}); train one with `fewshot train`")
        run.config  # noqa: B018 (read and checked now, not at first use)
        return run

    @classmethod
    def publish(cls, path: str | Path, config: RunConfig, tokenizer: Tokenizer, weights: dict[str, torch.Tensor]) -> RunDir:
        """A new run holding a model (or an adapter) and no training state: an import, a merge,
        a soup. Written whole or not at all; never over an existing directory."""

        def fill(staging: Path) -> None:
            if config.adapter is None:
                write_safetensors(staging / WEIGHTS, weights)
            else:  # an adapter run: peft's two files, on the base its config.json records
                write_safetensors(staging / ADAPTER_WEIGHTS, weights)
                write_json(staging / ADAPTER_CONFIG, config.adapter)
            tokenizer.save(staging)
            write_json(staging / CONFIG, config.to_json())

        return cls(publish_dir(Path(path), fill))

    # ------------------------------------------------------------------ config and tokenizer

    def exists(self) -> bool:
        return self.config_path.is_file()

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def state_dir(self) -> Path:
        return self.path / STATE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def report_path(self) -> Path:
        return self.path / REPORT

    @property
    def config(self) -> RunConfig:
        if self._config is None:
            self._config = RunConfig.from_json(read_json(self.config_path), self.config_path)
        return self._config

    def write_config(self, config: RunConfig) -> None:
        write_json(self.config_path, config.to_json())
        self._config = config

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.config.tokenizer, self.path)

    def save_tokenizer(self, tokenizer: Tokenizer) -> None:
        tokenizer.save(self.path)

    # ------------------------------------------------------------------ weights and checkpoints

    def load_weights(self, model: torch.nn.Module) -> None:
        load_weights(self.weights_path, model)

    def check_new_or_resumable(self, resume: bool) -> None:
        """Training writes into an empty directory, or resumes one that holds a run."""
        if self.path.exists() and not self.path.is_dir():
            raise FewshotError(f"{self.path} is a file; --out takes a run directory")
        if resume:
            if not self.exists():
                raise FewshotError(f"{self.path}: no run to resume (no {CONFIG}); drop --resume to start a new run")
        elif self.path.exists() and any(self.path.iterdir()):
            raise FewshotError(f"{self.path} already holds files; pass --resume to continue that run or choose another --out")
        check_creatable(self.path)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the run for one writer, and clear what a killed writer left behind.

        A second `train` into the same directory is refused, instead of interleaving its
        checkpoints with the first one's; and only because no one else writes here is it safe
        to delete the temporaries (up to a full copy of the weights) that a `kill -9` left. A
        directory made here and left empty by a failure is removed again.
        """
        made = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FewshotError(f"{self.path}: another process is writing this run (a `fewshot train` still "
                                   "running?); wait for it to finish or stop it") from None
            except OSError:  # a file system without locks (some network mounts): go on unguarded
                pass
            for directory in (self.path, self.state_dir):
                remove_temporaries(directory)
            yield
        except BaseException:
            if made and not any(self.path.iterdir()):
                self.path.rmdir()
            raise
        finally:
            os.close(handle)

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.path)

    def save_checkpoint(self, step: int, model: torch.nn.Module | dict[str, torch.Tensor], optimizer_state: dict,
                        trainer_state: dict, keep_last: int) -> Path:
        published = ADAPTER_WEIGHTS if self.config.adapter is not None else WEIGHTS
        return save_checkpoint(self.path, step, model, optimizer_state, trainer_state, keep_last, published)

    # ------------------------------------------------------------------ fine-tuning

    @property
    def is_adapter(self) -> bool:
        return self.config.adapter is not None

    @property
    def adapter_weights_path(self) -> Path:
        return self.path / ADAPTER_WEIGHTS

    def write_adapter_config(self, record: dict[str, Any]) -> None:
        """adapter_config.json beside config.json: what peft's own loaders read."""
        write_json(self.path / ADAPTER_CONFIG, record)

    def weights_sha256(self) -> str:
        """The fingerprint a fine-tuned run keeps of its base: the SHA-256 of model.safetensors."""
        if not self.weights_path.is_file():
            raise FewshotError(f"{self.weights_path}: weights not found; a base for fine-tuning needs its model.safetensors")
        return file_sha256(self.weights_path)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        path = self.adapter_weights_path
        if not path.is_file():
            raise FewshotError(f"{path}: adapter weights not found (a fine-tune killed before its first checkpoint?)")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise FewshotError(f"{path}: adapter weights are corrupt or truncated ({error})") from None


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module | dict[str, torch.Tensor], optimizer_state: dict,
                    trainer_state: dict, keep_last: int, published: str = WEIGHTS) -> Path:
    """Write state/step_N atomically, point LATEST at it, refresh the run's weights (`published`:
    model.safetensors, or an adapter run's adapter_model.safetensors), prune old ones.

    `model` is the module, or its weights already gathered onto rank 0 (sharded training).
    """
    state_dir = run_dir / STATE
    state_dir.mkdir(parents=True, exist_ok=True)
    final = state_dir / f"step_{step:06d}"
    staging = staging_dir(final)
    try:
        write_safetensors(staging / WEIGHTS, model if isinstance(model, dict) else weights_to_save(model))
        torch.save(optimizer_state, staging / "optimizer.pt")
        torch.save(trainer_state, staging / "trainer.pt")
        files = [WEIGHTS, "optimizer.pt", "trainer.pt"]
        manifest = {name: {"sha256": file_sha256(staging / name), "bytes": (staging / name).stat().st_size} for name in files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        for name in [*files, MANIFEST]:
            fsync_file(staging / name)
        fsync_dir(staging)
        if final.exists():  # the same step saved again (e.g. SIGTERM right after a save)
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_dir(state_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(state_dir / LATEST, final.name + "\n")
    # The weights are never modified in place, so a hard link is a free, atomic copy.
    atomic_write(run_dir / published, lambda tmp: _link_or_copy(final / WEIGHTS, tmp))
    _prune(state_dir, keep_last)
    return final


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def step_of(path: Path) -> int | None:
    """The step a `step_N` checkpoint directory holds; None for anything else."""
    digits = path.name.removeprefix("step_")
    return int(digits) if digits != path.name and digits.isdigit() else None


def checkpoints(state_dir: Path) -> list[Path]:
    """The step directories, oldest first: by number, since `step_1000000` sorts before
    `step_999850` as a string."""
    found = [p for p in state_dir.glob("step_*") if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of)


def _prune(state_dir: Path, keep_last: int) -> None:
    for old in checkpoints(state_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None before the first one.

    LATEST names the last checkpoint whose save finished. A kill between a step directory's
    rename and LATEST's rewrite leaves a newer checkpoint that LATEST does not name yet; it is
    complete (its files were fsynced before the rename), so it wins once its manifest checks out.
    """
    state_dir = run_dir / STATE
    pointer = state_dir / LATEST
    named = None
    if pointer.is_file():
        name = pointer.read_bytes().decode("utf-8", errors="replace").strip()
        if step_of(Path(name)) is None or Path(name).name != name:
            raise FewshotError(f"{pointer} should name a step directory (step_N), not {name[:60]!r}; the run directory is damaged")
        named = state_dir / name
    floor = -1 if named is None else step_of(named)
    for candidate in reversed(checkpoints(state_dir)):
        if step_of(candidate) <= floor:
            break
        try:
            verify_checkpoint(candidate)
        except FewshotError:
            continue  # never published through LATEST: damaged later, or not ours
        return candidate
    if named is None:
        return None
    if not named.is_dir():
        raise FewshotError(f"{pointer} names {named.name}, which is missing; the run directory is damaged")
    return named


def verify_checkpoint(checkpoint: Path) -> None:
    manifest = read_json(checkpoint / MANIFEST)
    entries = manifest.items() if isinstance(manifest, dict) else ()
    if not entries or not all(isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
                              and Path(n).name == n for n, e in entries):
        raise FewshotError(f"{checkpoint / MANIFEST}: not a checkpoint manifest; pick an earlier checkpoint in {checkpoint.parent}")
    for name, expected in entries:
        path = checkpoint / name
        if not path.is_file():
            raise FewshotError(f"{path}: missing from checkpoint")
        if path.stat().st_size != expected["bytes"]:
            raise FewshotError(f"{path}: checkpoint is truncated (expected {expected['bytes']} bytes, found {path.stat().st_size})")
        if file_sha256(path) != expected["sha256"]:
            raise FewshotError(f"{path}: checkpoint is corrupt (SHA-256 mismatch); pick an earlier checkpoint in {checkpoint.parent}")


def load_checkpoint(checkpoint: Path, model: torch.nn.Module, device: torch.device,
                    load: Callable[[Path, torch.nn.Module], None] = load_weights) -> tuple[dict, dict]:
    """Load weights into `model` (with `load`: an adapter run loads only its adapter); return
    (optimizer_state, trainer_state) without unpickling code."""
    verify_checkpoint(checkpoint)
    load(checkpoint / WEIGHTS, model)
    try:
        optimizer_state = torch.load(checkpoint / "optimizer.pt", map_location=device, weights_only=True)
        trainer_state = torch.load(checkpoint / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses anything but tensors and plain data
        raise FewshotError(f"{checkpoint}: cannot read training state ({type(error).__name__}: {error})") from None
    return optimizer_state, trainer_state

"""`fewshot export-hf` and `fewshot import-hf` through the real CLI, and their error paths.

A run goes out as a GPT-2 directory and comes back as a new run, which then generates
the same text as the original. tests/convert/test_hf.py proves the files against transformers
itself, and covers the other refusals.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

import fewshot as library
from fewshot.runs import RunConfig, RunDir, weights_to_save
from fewshot.config import PRESETS
from fewshot.model import GPT
from fewshot.tokenizer import ByteTokenizer
from tests.conftest import fewshot_command

CONFIG = PRESETS["nano"].model.replace(n_layer=2, d_model=64, context=128)


def fewshot(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([*fewshot_command(), *map(str, args)], capture_output=True, text=True, timeout=300)


def new_run(path: Path, config=CONFIG) -> Path:
    torch.manual_seed(0)
    return RunDir.publish(path, RunConfig(config, ByteTokenizer().spec()), ByteTokenizer(), weights_to_save(GPT(config))).path


def test_a_run_goes_out_to_gpt2_and_comes_back_working(tmp_path: Path) -> None:
    run = new_run(tmp_path / "run")
    exported = fewshot("export-hf", run, tmp_path / "hf")
    assert exported.returncode == 0, exported.stderr[-2000:]
    files = {path.name for path in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]

    imported = fewshot("import-hf", tmp_path / "hf", tmp_path / "back")
    assert imported.returncode == 0, imported.stderr[-2000:]
    expected = library.load(run).generate("The cat", max_tokens=12, temperature=0)
    printed = fewshot("generate", tmp_path / "back", "--prompt", "The cat", "--max-tokens", "12", "--temperature", "0")
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert printed.stdout == "The cat" + expected + "\n"


def pickle_only(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (path / "pytorch_model.bin").write_bytes(b"\x80\x04 never read")
    return path


def test_bad_input_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    llama = new_run(tmp_path / "llama", PRESETS["llama-nano"].model.replace(n_layer=1))
    cases = [
        (("export-hf", llama, tmp_path / "out1"), "cannot export to GPT-2: block 'llama'", tmp_path / "out1"),
        (("import-hf", pickle_only(tmp_path / "pickled"), tmp_path / "out2"), "fewshot never unpickles", tmp_path / "out2"),
    ]
    for args, message, not_written in cases:
        result = fewshot(*args)
        assert result.returncode == 2 and result.stdout == "", (args, result.stderr[-2000:])
        assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert not not_written.exists()

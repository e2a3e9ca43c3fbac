"""`fewshot finetune` through the real CLI: LoRA, (IA)3 and full on a model trained here."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import fewshot
from fewshot.train.loop import train
from tests.conftest import fewshot_command, tiny_config

KILL_AT = [sys.executable, str(Path(__file__).parent / "kill_at.py")]
WORDS = ["cat", "dog", "sun", "map", "hat", "pen", "cup", "box"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*fewshot_command(), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def base(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base"
    train(tiny_config(data_dir, out, max_steps=20, context=64, batch_size=4, eval_batches=1))
    return out


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A task the base cannot do: reverse a word."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("examples") / "reverse.jsonl"
    lines = []
    for _ in range(200):
        word = rng.choice(WORDS)
        lines.append(json.dumps({"prompt": f"Reverse: {word}\nAnswer:", "completion": f" {word[::-1]}"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def finetune(base: Path, examples: Path, out: Path, method: str, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("finetune", str(base), "--data", str(examples), "--out", str(out), "--method", method, "--batch-size", "8",
                   "--lr", "1e-2", "--precision", "fp32", "--no-progress", "--no-tensorboard", *extra)


def losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as handle:
        return [float(row["train_loss"]) for row in csv.DictReader(handle) if row["train_loss"]]


def greedy(lm, word: str) -> str:
    return lm.generate(f"Reverse: {word}\nAnswer:", max_tokens=4, temperature=0)


@pytest.fixture(scope="module")
def lora(base: Path, examples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "ft"
    done = finetune(base, examples, out, "lora", "--epochs", "15", "--merge")
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_lora_learns_the_task_and_writes_a_peft_adapter_on_its_recorded_base(lora: Path, base: Path) -> None:
    loss = losses(lora)
    assert loss[-1] < 0.85 * loss[0], loss
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in lora.iterdir()}
    assert not (lora / "model.safetensors").exists()  # the base's weights are the base's
    source = json.loads((lora / "config.json").read_text())["source"]
    assert source["base"] == str(base) and len(source["base_sha256"]) == 64
    tuned = fewshot.load(base, adapter=lora)
    assert sum(greedy(tuned, w).startswith(" " + w[::-1]) for w in WORDS) >= 6  # learned; the base gets none
    assert sum(greedy(fewshot.load(base), w).startswith(" " + w[::-1]) for w in WORDS) == 0


def test_generate_with_the_adapter_and_the_merged_run_give_the_same_greedy_text(lora: Path, base: Path) -> None:
    prompt = ["--prompt", "Reverse: sun\\nAnswer:", "--max-tokens", "4", "--temperature", "0"]
    with_adapter = run_cli("generate", str(base), "--adapter", str(lora), *prompt)
    merged = run_cli("generate", str(lora / "merged"), *prompt)
    assert with_adapter.returncode == 0 and merged.returncode == 0, with_adapter.stderr + merged.stderr
    assert with_adapter.stdout == merged.stdout and "nus" in with_adapter.stdout


def test_an_adapter_refuses_a_base_it_was_not_trained_on(lora: Path, data_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    train(tiny_config(data_dir, other, max_steps=2, context=64, batch_size=4, eval_batches=1, seed=5))
    done = run_cli("generate", str(other), "--adapter", str(lora), "--prompt", "x", "--max-tokens", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "was trained on another base" in line


@pytest.mark.parametrize("method", ["ia3", "full"])
def test_ia3_and_full_fine_tunes_lower_the_completion_loss(method: str, base: Path, examples: Path, tmp_path: Path) -> None:
    done = finetune(base, examples, tmp_path / method, method, "--epochs", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    loss = losses(tmp_path / method)
    assert loss[-1] < loss[0], loss
    has_weights = (tmp_path / method / "model.safetensors").exists()
    assert has_weights == (method == "full")  # a full fine-tune is an ordinary run; (IA)3 is an adapter
    fewshot.load(tmp_path / method)  # an adapter run loads onto the base it records


def test_a_kill_during_a_lora_fine_tune_then_resume_is_bitwise_equal(base: Path, examples: Path, tmp_path: Path) -> None:
    args = ["--max-steps", "15", "--save-every", "5", "--eval-every", "100"]
    straight = finetune(base, examples, tmp_path / "straight", "lora", *args)
    assert straight.returncode == 0, straight.stderr[-2000:]
    command = ["finetune", str(base), "--data", str(examples), "--out", str(tmp_path / "killed"), "--method", "lora",
               "--batch-size", "8", "--lr", "1e-2", "--precision", "fp32", "--no-progress", "--no-tensorboard", *args]
    killed = subprocess.run([*KILL_AT, "renamed", "10", *command], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_cli("finetune", "--resume", "--out", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "steps 10->15" in resumed.stderr
    a = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert [p for p in (tmp_path / "killed").rglob(".*")] == []


def test_a_lora_exported_with_export_hf_loads_in_peft_onto_gpt2(lora: Path, base: Path, tmp_path: Path) -> None:
    import peft
    import torch
    import transformers

    done = run_cli("export-hf", str(lora), str(tmp_path / "hf"))
    assert done.returncode == 0, done.stderr[-2000:]
    hf = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf"), tmp_path / "hf" / "adapter").eval()
    ours = fewshot.load(base, adapter=lora)
    ids = ours.tokenizer.encode("Reverse: sun\nAnswer: nus")
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].float()
    assert (theirs - ours.logits(ids)).abs().max() < 1e-4
    assert (theirs - fewshot.load(base).logits(ids)).abs().max() > 1e-2  # the adapter is really on

"""Model soups: averaging, the checks on ingredients, the greedy recipe, and the memory bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fewshot
from fewshot.config import PRESETS
from fewshot.errors import FewshotError
from fewshot.experiments.soup import ingredients, uniform_weights, write_soup
from fewshot.experiments.soup_report import run_soup
from fewshot.model import GPT
from fewshot.runs import RunConfig, RunDir, weights_to_save
from fewshot.tokenizer import ByteTokenizer
from fewshot.train.finetune import finetune_config
from fewshot.train.loop import train
from tests.conftest import tiny_config

WORDS = ["cat", "dog", "sun", "map", "hat", "pen", "cup", "box", "owl", "fig", "jam", "kit"]


@pytest.fixture(scope="module")
def base(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("soup-base") / "base"
    train(tiny_config(data_dir, out, max_steps=20, eval_batches=1))
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-way choice: does the word have an 'a' in it?"""
    path = tmp_path_factory.mktemp("soup-task") / "has_a.jsonl"
    path.write_text("".join(json.dumps({"input": f"{w}{i}", "choices": ["no", "yes"], "label": int("a" in w)}) + "\n"
                            for i in range(4) for w in WORDS))
    return path


def tune(base: Path, out: Path, method: str, seed: int, lr: float) -> Path:
    data = out.parent / f"{out.name}.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{w}\n", "completion": " yes" if "a" in w else " no"}) + "\n" for w in WORDS))
    train(finetune_config(base, data, out, {"max_steps": 8, "batch_size": 4, "lr": lr, "seed": seed, "precision": "fp32",
                                            "progress": False, "tensorboard": False, "eval_every": 8}, method=method))
    return out


@pytest.fixture(scope="module")
def fulls(base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    where = tmp_path_factory.mktemp("fulls")
    return [tune(base, where / f"ft{i}", "full", i, lr) for i, lr in enumerate((3e-3, 1e-3, 5e-3))]


@pytest.fixture(scope="module")
def loras(base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    where = tmp_path_factory.mktemp("loras")
    return [tune(base, where / f"lora{i}", "lora", i, 3e-2) for i in range(2)]


def logits(lm, text: str = "cat\n") -> torch.Tensor:
    return lm.logits(lm.tokenizer.encode(text))


def test_a_soup_of_one_run_thrice_is_that_run(fulls: list[Path], tmp_path: Path) -> None:
    soup = write_soup(tmp_path / "soup", ingredients([fulls[0]] * 3), range(3), uniform_weights(3), "uniform")
    mine, theirs = load_file(str(soup.weights_path)), load_file(str(RunDir.open(fulls[0]).weights_path))
    assert mine.keys() == theirs.keys()
    assert all(torch.allclose(mine[k], theirs[k], atol=1e-6, rtol=0) for k in mine)
    a, b = fewshot.load(soup.path), fewshot.load(fulls[0])
    assert a.generate("cat\n", max_tokens=8, temperature=0) == b.generate("cat\n", max_tokens=8, temperature=0)


def test_a_lora_soup_is_the_mean_of_the_updates_exactly(base: Path, loras: list[Path], tmp_path: Path) -> None:
    same = write_soup(tmp_path / "same", ingredients([loras[0]] * 2), range(2), uniform_weights(2), "uniform")
    assert torch.allclose(logits(fewshot.load(base, adapter=same.path)), logits(fewshot.load(base, adapter=loras[0])), atol=1e-5)
    mixed = write_soup(tmp_path / "mixed", ingredients(loras), range(2), uniform_weights(2), "uniform")
    assert mixed.config.adapter["r"] == 2 * RunDir.open(loras[0]).config.adapter["r"]
    # On the logits the mean of two updates is not the mean of two models, but on the weights it is:
    merged = [fewshot.load(base, adapter=p) for p in (mixed.path, *loras)]
    from fewshot.model.adapters import merge_adapter

    weights = [dict(merge_adapter(lm.model).state_dict()) for lm in merged]
    for name, soup_weight in weights[0].items():
        assert torch.allclose(soup_weight, (weights[1][name] + weights[2][name]) / 2, atol=1e-6), name


def test_the_greedy_soup_never_scores_below_its_best_ingredient(fulls: list[Path], task: Path, tmp_path: Path) -> None:
    summary = run_soup(fulls, tmp_path / "soup", how="greedy", val_file=task, queries=20)
    val = {s["model"]: s["score"] for s in summary["scores"] if s["split"] == "val"}
    assert val["greedy soup"] >= max(val[str(p)] for p in fulls)
    assert summary["chosen"][0] == max(map(str, fulls), key=val.get)  # best first
    held = {s["model"] for s in summary["scores"] if s["split"] == "held-out"}
    assert held == {*map(str, fulls), "uniform soup", "greedy soup", "ensemble"}
    assert (tmp_path / "soup" / "soup.png").stat().st_size > 0 and fewshot.load(tmp_path / "soup")
    assert "greedy soup" in (tmp_path / "soup" / "soup.md").read_text()


def test_the_ensemble_of_one_model_is_that_model(fulls: list[Path]) -> None:
    from fewshot.model.ensemble import Ensemble

    lm = fewshot.load(fulls[0])
    twice = Ensemble([lm.model, fewshot.load(fulls[0]).model]).eval()
    idx = torch.tensor([lm.tokenizer.encode("cat\ndog")])
    assert torch.allclose(twice(idx)[0], lm.model(idx)[0], atol=1e-6)
    cache = twice.new_cache(1, capacity=16)
    assert torch.allclose(twice.step(idx, cache)[0], lm.model(idx)[0][0], atol=1e-5)


def test_mismatched_ingredients_are_refused_naming_the_mismatch(base: Path, fulls: list[Path], loras: list[Path],
                                                                data_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    train(tiny_config(data_dir, other, max_steps=2, eval_batches=1, seed=5))
    foreign = tune(other, tmp_path / "foreign", "full", 0, 1e-3)
    with pytest.raises(FewshotError, match="other base weights"):
        ingredients([fulls[0], foreign])
    with pytest.raises(FewshotError, match="all one kind"):
        ingredients([fulls[0], loras[0]])
    with pytest.raises(FewshotError, match="not a fine-tune"):
        ingredients([fulls[0], base])
    short = tmp_path / "short"
    train(tiny_config(data_dir, short, max_steps=2, eval_batches=1, context=32))
    shaped = tune(short, tmp_path / "shaped", "full", 0, 1e-3)
    record = json.loads((RunDir.open(shaped).config_path).read_text())
    record["source"]["base_sha256"] = RunDir.open(fulls[0]).config.source["base_sha256"]  # claim the same base
    (shaped / "config.json").write_text(json.dumps(record))
    with pytest.raises(FewshotError, match="another architecture .*context"):
        ingredients([fulls[0], shaped])
    import shutil

    retokenized = tmp_path / "retokenized"
    shutil.copytree(fulls[1], retokenized)
    record = json.loads((retokenized / "config.json").read_text())
    record["tokenizer"] = {**record["tokenizer"], "vocab_size": 999}
    (retokenized / "config.json").write_text(json.dumps(record))
    with pytest.raises(FewshotError, match="another tokenizer"):
        ingredients([fulls[0], retokenized])
    with pytest.raises(FewshotError, match="--greedy needs --val"):
        run_soup(fulls, tmp_path / "nope", how="greedy")
    assert not (tmp_path / "nope").exists()


MEMORY_PROBE = """
import sys, torch
from pathlib import Path
from fewshot.experiments.soup import ingredients, uniform_weights, write_soup
def rss(key):
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key))
found = ingredients(sys.argv[2:])
before = rss('VmRSS:')
write_soup(sys.argv[1], found, range(len(found.runs)), uniform_weights(len(found.runs)), 'uniform')
print(rss('VmHWM:') - before)
"""


def test_a_five_ingredient_soup_stays_under_three_models_of_memory(tmp_path: Path) -> None:
    config = PRESETS["nano"].model.replace(d_model=512, n_layer=8, n_head=8, context=64, vocab_size=256)
    base_sha = "0" * 64
    paths = []
    for i in range(5):
        torch.manual_seed(i)
        model = GPT(config)
        record = RunConfig(config, ByteTokenizer().spec(), source={"base": "b", "base_sha256": base_sha, "method": "full"})
        paths.append(str(RunDir.publish(tmp_path / f"ing{i}", record, ByteTokenizer(), weights_to_save(model)).path))
    model_bytes = (tmp_path / "ing0" / "model.safetensors").stat().st_size
    assert model_bytes > 90e6  # big enough that the interpreter's own noise does not matter
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "soup"), *paths],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    extra = int(done.stdout.split()[-1])
    print(f"peak extra {extra / 1e6:.0f} MB; one model {model_bytes / 1e6:.0f} MB")
    assert model_bytes * 0.9 < extra < 3 * model_bytes, f"{extra / 1e6:.0f} MB over {model_bytes / 1e6:.0f} MB models"
    soup = load_file(str(tmp_path / "soup" / "model.safetensors"))
    parts = [load_file(f"{p}/model.safetensors") for p in paths]
    name = next(iter(soup))
    assert torch.allclose(soup[name], sum(p[name] for p in parts) / 5, atol=1e-6)


def test_a_greedy_soup_of_lora_adapters_is_an_adapter_run_on_the_same_base(base: Path, loras: list[Path], task: Path,
                                                                          tmp_path: Path) -> None:
    summary = run_soup(loras, tmp_path / "soup", how="greedy", val_file=task, queries=12, ensemble=True)
    soup = RunDir.open(tmp_path / "soup")
    assert soup.is_adapter and summary["kind"] == "lora"
    assert soup.config.source["base_sha256"] == RunDir.open(loras[0]).config.source["base_sha256"]
    tuned = fewshot.load(base, adapter=soup.path)  # loads onto its base, like any adapter
    alone = fewshot.load(base, adapter=summary["chosen"][0])
    if len(summary["chosen"]) == 1:
        assert torch.allclose(logits(tuned), logits(alone), atol=1e-5)
    assert {s["model"] for s in summary["scores"]} >= {"greedy soup", "uniform soup", "ensemble"}

"""One server, one base, two adapters (`--adapter name=DIR`, as vLLM's --lora-modules), driven
by the official openai client: each `model` name decodes with its own weights, also when
requests for all three share the engine's batch."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

import fewshot
from fewshot.train.finetune import finetune_config
from fewshot.train.loop import train
from tests.e2e.test_serve import MODEL, served, trained_run

PROMPTS = ["ROMEO:", "To be, or", "KING HENRY:\nWhat"]


def adapter(base: Path, out: Path, method: str, answer: str, lr: float) -> Path:
    """An adapter taught to answer every prompt with `answer`: it decodes unlike the base.
    (The base is barely trained, so it takes a large rate to move it in 40 steps.)"""
    data = out.parent / f"{out.name}.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{p}", "completion": answer}) + "\n" for p in PROMPTS * 4))
    train(finetune_config(base, data, out, {"max_steps": 40, "batch_size": 4, "lr": lr, "precision": "fp32",
                                            "progress": False, "tensorboard": False, "eval_every": 40},
                          method=method))
    return out


@pytest.fixture(scope="module")
def runs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = trained_run(data_dir, tmp_path_factory)
    where = tmp_path_factory.mktemp("adapters")
    lora = adapter(base, where / "lora", "lora", " zz zz zz zz", 0.3)
    return base, lora, adapter(base, where / "ia3", "ia3", " qq qq qq", 1.0)


@pytest.fixture(scope="module")
def client(runs: tuple[Path, Path, Path]):
    base, lora, ia3 = runs
    with served(base, "--max-batch", "8", "--adapter", f"tuned-lora={lora}", "--adapter", f"tuned-ia3={ia3}") as (url, _):
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def library(base: Path, adapter_dir: Path | None, prompt: str) -> str:
    return fewshot.load(base, adapter=adapter_dir).generate(prompt, max_tokens=12, temperature=0)


def test_models_lists_the_base_then_each_adapter_with_its_parent(client, runs) -> None:
    cards = client.models.list().data
    assert [c.id for c in cards] == [MODEL, "tuned-lora", "tuned-ia3"]
    assert [getattr(c, "parent", None) for c in cards] == [None, MODEL, MODEL]
    assert client.models.retrieve("tuned-ia3").root == str(runs[2])


def test_each_model_name_decodes_with_its_own_weights_even_in_one_batch(client, runs) -> None:
    base, lora, ia3 = runs
    names = {MODEL: None, "tuned-lora": lora, "tuned-ia3": ia3}
    expected = {(name, p): library(base, path, p) for name, path in names.items() for p in PROMPTS}
    assert len({expected[name, PROMPTS[0]] for name in names}) == 3  # the three really differ

    def ask(key: tuple[str, str]) -> tuple[tuple[str, str], str, str]:
        done = client.completions.create(model=key[0], prompt=key[1], max_tokens=12, temperature=0)
        return key, done.choices[0].text, done.model

    with ThreadPoolExecutor(len(expected)) as pool:  # all at once: the engine batches mixed adapters
        answers = list(pool.map(ask, list(expected) * 2))
    for key, text, model in answers:
        assert text == expected[key], key
        assert model == key[0]


def test_an_adapter_streams_and_chats_by_name(client, runs) -> None:
    base, lora, _ = runs
    stream = client.completions.create(model="tuned-lora", prompt=PROMPTS[0], max_tokens=12, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == library(base, lora, PROMPTS[0])
    assert {c.model for c in chunks} == {"tuned-lora"}
    reply = client.chat.completions.create(model="tuned-lora", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=4, temperature=0)
    assert reply.model == "tuned-lora" and reply.choices[0].finish_reason in ("stop", "length")


def test_an_unknown_adapter_name_is_a_404_naming_the_served_models(client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="tuned-nope", prompt="ROMEO:", max_tokens=2)
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    assert "tuned-lora" in caught.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("tuned-nope")

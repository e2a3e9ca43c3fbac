"""The library API that ../shared/DESIGN.md promises: fewshot.load, .logits, .generate, .score."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import fewshot
from fewshot.errors import FewshotError
from fewshot.train.loop import train
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "run"
    train(tiny_config(data_dir, out, max_steps=20))
    return out


def test_logits_are_float32_per_position_and_match_the_model(run: Path) -> None:
    lm = fewshot.load(run)
    ids = lm.tokenizer.encode("ROMEO: good night")
    logits = lm.logits(ids)
    assert logits.dtype == torch.float32 and logits.shape == (len(ids), lm.model.config.vocab_size)
    assert not lm.model.training
    expected, _ = lm.model(torch.tensor([ids]))
    torch.testing.assert_close(logits, expected[0])


def test_a_run_loads_to_compute_in_bf16_and_gives_nearly_the_fp32_logits(run: Path) -> None:
    fp32, bf16 = fewshot.load(run), fewshot.load(run, dtype="bf16")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    ids = fp32.tokenizer.encode("ROMEO: good night")
    logits = bf16.logits(ids)
    assert logits.dtype == torch.float32  # what callers get, whatever the model computes in
    # bf16 keeps 8 bits of mantissa: each logit within a few hundredths of the fp32 one here
    assert (logits - fp32.logits(ids)).abs().max() < 0.1
    assert bf16.generate("ROMEO:", max_tokens=8, temperature=0.0)  # its cache is bf16 too
    with pytest.raises(FewshotError, match="--dtype must be one of fp32, bf16"):
        fewshot.load(run, dtype="fp16")


def test_score_is_the_summed_log_probability_of_the_continuation(run: Path) -> None:
    lm = fewshot.load(run)
    context, continuation = "KING:\nWhat", " say you"
    ids = lm.tokenizer.encode(context) + lm.tokenizer.encode(continuation)
    log_probs = torch.log_softmax(lm.logits(ids), dim=-1)
    n = len(lm.tokenizer.encode(continuation))
    expected = sum(log_probs[i - 1, ids[i]].item() for i in range(len(ids) - n, len(ids)))
    assert lm.score(context, continuation) == pytest.approx(expected, abs=1e-4)
    assert lm.score(context, continuation) < 0
    with pytest.raises(FewshotError, match="empty"):
        lm.score(context, "")


def test_generate_returns_text_and_greedy_is_deterministic(run: Path) -> None:
    lm = fewshot.load(run)
    first = lm.generate("The cat", max_tokens=20, temperature=0)
    assert isinstance(first, str) and first == lm.generate("The cat", max_tokens=20, temperature=0)
    assert len(lm.tokenizer.encode(first)) <= 20


def test_a_tokenizer_that_does_not_belong_to_the_model_is_refused(run: Path, tmp_path: Path, corpus_dir: Path) -> None:
    import json

    from fewshot.tokenizer import train_bpe

    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    bigger = train_bpe([path.read_text() for path in corpus_dir.iterdir()], vocab_size=600)
    bigger.save(broken)
    config = json.loads((broken / "config.json").read_text())
    config["tokenizer"] = bigger.spec()
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(FewshotError, match="does not belong"):
        fewshot.load(broken)


def test_missing_or_truncated_weights_are_clear_errors(run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(FewshotError, match="truncated"):
        fewshot.load(broken)
    weights.unlink()
    with pytest.raises(FewshotError, match="not found"):
        fewshot.load(broken)


def test_chat_without_a_template_is_a_plain_transcript_that_stops_before_the_next_user_turn(run: Path) -> None:
    lm = fewshot.load(run)
    prompt = lm.chat_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert prompt.text == "System: Be brief.\n\nUser: Hi\nAssistant:" and prompt.stop == ("\nUser:",)
    [reply] = lm.chat([{"role": "user", "content": "Hi"}], max_tokens=40, temperature=0, stop="\n\n")
    assert "\nUser:" not in reply.text and "\n\n" not in reply.text
    with pytest.raises(FewshotError, match="role"):
        lm.chat_prompt([{"role": "robot", "content": "x"}])
    with pytest.raises(FewshotError, match="string role and content"):
        lm.chat_prompt([{"role": "user"}])

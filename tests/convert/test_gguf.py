"""GGUF import on small files the tests write with `gguf.GGUFWriter`.

The tiny model starts as Hugging Face-layout Llama weights. The test writes them the way
llama.cpp's converter does (Q/K rows permuted for adjacent-pair RoPE, optionally
quantised), imports the file, and compares fewshot's logits with transformers'
`LlamaForCausalLM` built from the original weights: two independent implementations
that must agree, with the permutation undone in between.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

import fewshot
from fewshot.convert.gguf import import_gguf
from fewshot.errors import FewshotError
from fewshot.tokenizer import _gpt2_byte_chars
from tests.conftest import fewshot_command

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{{ '<|im_start|>assistant\\n' }}"
SHAPE = dict(n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=256)  # d_ff: one K-quant super-block


def vocabulary() -> tuple[list[str], list[int]]:
    tokens = SPECIALS + list(_gpt2_byte_chars().values()) + [merge.replace(" ", "") for merge in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types


def hf_weights(seed: int = 0, tie: bool = True) -> dict[str, np.ndarray]:
    """Random weights in transformers' Llama layout (names and rotate_half row order)."""
    rng = np.random.default_rng(seed)
    d, heads, kv, ff = SHAPE["d_model"], SHAPE["n_head"], SHAPE["n_kv_head"], SHAPE["d_ff"]
    head = d // heads
    vocab = len(vocabulary()[0])

    def matrix(rows: int, columns: int) -> np.ndarray:
        return (rng.standard_normal((rows, columns)) * 0.08).astype(np.float32)

    weights = {"model.embed_tokens.weight": matrix(vocab, d), "model.norm.weight": 1 + matrix(1, d)[0]}
    if not tie:
        weights["lm_head.weight"] = matrix(vocab, d)
    for i in range(SHAPE["n_layer"]):
        p = f"model.layers.{i}."
        weights |= {
            p + "input_layernorm.weight": 1 + matrix(1, d)[0], p + "post_attention_layernorm.weight": 1 + matrix(1, d)[0],
            p + "self_attn.q_proj.weight": matrix(heads * head, d), p + "self_attn.k_proj.weight": matrix(kv * head, d),
            p + "self_attn.v_proj.weight": matrix(kv * head, d), p + "self_attn.o_proj.weight": matrix(d, heads * head),
            p + "mlp.gate_proj.weight": matrix(ff, d), p + "mlp.up_proj.weight": matrix(ff, d), p + "mlp.down_proj.weight": matrix(d, ff),
        }
    return weights


def permute_for_llama_cpp(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's HF converter does to q_proj/k_proj rows (adjacent-pair RoPE)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gguf(path: Path, weights: dict[str, np.ndarray], qtype: Q = Q.F32, arch: str = "llama",
               add_bos: bool = False, pre: str = "smollm", extra: dict[str, np.ndarray] | None = None,
               raw: dict[str, tuple[np.ndarray, Q]] | None = None) -> Path:
    """`raw` replaces tensors by (bytes, type) as they are, for types we cannot quantise."""
    tokens, types = vocabulary()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(SHAPE["n_layer"])
    writer.add_context_length(64)
    writer.add_embedding_length(SHAPE["d_model"])
    writer.add_feed_forward_length(SHAPE["d_ff"])
    writer.add_head_count(SHAPE["n_head"])
    writer.add_head_count_kv(SHAPE["n_kv_head"])
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template(TEMPLATE)

    def add(name: str, value: np.ndarray) -> None:
        if name in (raw or {}):
            writer.add_tensor(name, raw[name][0], raw_dtype=raw[name][1])
        elif value.ndim == 1 or qtype == Q.F32:  # llama.cpp keeps norms in F32
            writer.add_tensor(name, value)
        elif qtype == Q.F16:
            writer.add_tensor(name, value.astype(np.float16))
        else:  # bytes, one row of blocks per matrix row
            writer.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)

    add("token_embd.weight", weights["model.embed_tokens.weight"])
    add("output_norm.weight", weights["model.norm.weight"])
    if "lm_head.weight" in weights:
        add("output.weight", weights["lm_head.weight"])
    for i in range(SHAPE["n_layer"]):
        for hf_name, gguf_name in GGUF_NAMES.items():
            value = weights[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name in ("attn_q", "attn_k"):
                value = permute_for_llama_cpp(value, SHAPE["n_head"] if gguf_name == "attn_q" else SHAPE["n_kv_head"])
            add(f"blk.{i}.{gguf_name}.weight", value)
    for name, value in (extra or {}).items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def transformers_logits(weights: dict[str, np.ndarray], ids: list[int]) -> torch.Tensor:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=len(vocabulary()[0]), hidden_size=SHAPE["d_model"], intermediate_size=SHAPE["d_ff"],
        num_hidden_layers=SHAPE["n_layer"], num_attention_heads=SHAPE["n_head"], num_key_value_heads=SHAPE["n_kv_head"],
        max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings="lm_head.weight" not in weights)
    model = transformers.LlamaForCausalLM(config).eval()
    state = {name: torch.from_numpy(value) for name, value in weights.items()}
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


IDS = [5, 80, 200, 260, 3, 77, 1, 150, 42, 9, 250, 2]


@pytest.mark.parametrize("tie", [True, False])
def test_imported_model_matches_transformers_llama(tmp_path: Path, tie: bool) -> None:
    weights = hf_weights(tie=tie)
    run = import_gguf(write_gguf(tmp_path / "tiny.gguf", weights), tmp_path / "run")
    lm = fewshot.load(run)
    assert lm.model.config.tie_embeddings is tie
    torch.testing.assert_close(lm.logits(IDS), transformers_logits(weights, IDS), atol=1e-4, rtol=1e-4)


# Relative errors of the quantisers themselves on Gaussian weights: Q8_0 ~0.5%, Q4 ~8%;
# a mis-ordered row (the permutation undone wrongly) would be off by ~140%.
@pytest.mark.parametrize(("qtype", "weight_error", "logit_error"),
                         [(Q.F16, 0.001, 0.003), (Q.Q8_0, 0.01, 0.04), (Q.Q4_1, 0.1, 0.35), (Q.Q4_0, 0.12, 0.35)])
def test_quantised_files_dequantise_close_to_the_original(tmp_path: Path, qtype: Q, weight_error: float, logit_error: float) -> None:
    weights = hf_weights()
    lm = fewshot.load(import_gguf(write_gguf(tmp_path / "q.gguf", weights, qtype=qtype), tmp_path / "run"))
    qkv = lm.model.state_dict()["blocks.1.mixer.qkv.weight"].numpy()
    original = np.concatenate([weights[f"model.layers.1.self_attn.{name}_proj.weight"] for name in "qkv"])
    assert np.linalg.norm(qkv - original) / np.linalg.norm(original) < weight_error
    reference = transformers_logits(weights, IDS)
    assert (lm.logits(IDS) - reference).norm() / reference.norm() < logit_error
    assert lm.config.source["quantization"] == sorted({qtype.name, "F32"})


def test_bf16_import_halves_the_weights(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", hf_weights())
    full, half = import_gguf(path, tmp_path / "fp32"), import_gguf(path, tmp_path / "bf16", dtype="bf16")
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    assert next(fewshot.load(half).model.parameters()).dtype == torch.float32  # loaded into the fp32 model
    assert torch.allclose(fewshot.load(full).logits(IDS), fewshot.load(half).logits(IDS), atol=0.05)


def test_tokenizer_reads_specials_and_stops_at_end_of_turn(tmp_path: Path) -> None:
    lm = fewshot.load(import_gguf(write_gguf(tmp_path / "tiny.gguf", hf_weights()), tmp_path / "run"))
    tokenizer = lm.tokenizer
    ids = tokenizer.encode("<|im_start|>user\nthe 42<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2  # specials are one id each, as llama.cpp parses them
    assert tokenizer.decode(ids) == "<|im_start|>user\nthe 42<|im_end|>"
    assert tokenizer.encode(" the") == [tokenizer.token_id("Ġthe")]  # merges applied
    assert tokenizer.encode("42") == [tokenizer.token_id("4"), tokenizer.token_id("2")]  # digits split (smollm)
    assert tokenizer.eot_id == 0 and tokenizer.stop_ids == {0, 2}
    assert lm.chat_prompt([{"role": "user", "content": "hi"}]).text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_unsupported_files_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    weights = hf_weights()
    cases = {
        "architecture 'qwen2' is not supported": write_gguf(tmp_path / "arch.gguf", weights, arch="qwen2"),
        "pre-tokenizer 'llama-bpe' is not supported": write_gguf(tmp_path / "pre.gguf", weights, pre="llama-bpe"),
        "BOS": write_gguf(tmp_path / "bos.gguf", weights, add_bos=True),
        "unknown": write_gguf(tmp_path / "extra.gguf", weights, extra={"rope_freqs.weight": np.ones(8, np.float32)}),
    }
    for message, path in cases.items():
        with pytest.raises(FewshotError, match=message):
            import_gguf(path, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_unsupported_quantisation_is_named(tmp_path: Path) -> None:
    iq2 = np.zeros((SHAPE["d_model"], 66), np.uint8)  # IQ2_XXS: 256 values per 66-byte block, which we refuse
    path = write_gguf(tmp_path / "k.gguf", hf_weights(), raw={"blk.0.ffn_down.weight": (iq2, Q.IQ2_XXS)})
    with pytest.raises(FewshotError, match="quantisation IQ2_XXS is not supported"):
        import_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# Where each K-quant block keeps its float16 scales (d, and dmin where it has one), as
# ggml-common.h lays the blocks out; the rest of a block is packed integers, any bytes valid.
K_QUANT_SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def k_quant_blocks(rows: int, columns: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random but valid K-quant bytes: finite, small float16 scales; gguf has no K-quantiser to write them."""
    values_per_block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows, columns // values_per_block, block_bytes), dtype=np.uint8)
    for offset in K_QUANT_SCALES[qtype]:
        scale = rng.uniform(0.0005, 0.004, blocks.shape[:2]).astype(np.float16)
        blocks[..., offset:offset + 2] = scale.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("mix", [(Q.Q4_K, Q.Q6_K), (Q.Q5_K, Q.Q5_0), (Q.Q2_K, Q.Q3_K), (Q.Q6_K, Q.Q5_1)])
def test_k_quant_files_import_as_ggufs_own_dequantiser_reads_them(tmp_path: Path, mix: tuple[Q, Q]) -> None:
    """A Q4_K_M-style mix: K-quant rows where a row holds whole 256-value super-blocks (ffn_down),
    a legacy type elsewhere; every imported matrix equals gguf.quants.dequantize of its bytes."""
    rng = np.random.default_rng(0)
    weights, raw = hf_weights(), {}
    for layer, qtype in enumerate(mix):
        down = (k_quant_blocks(SHAPE["d_model"], SHAPE["d_ff"], qtype, rng) if qtype in K_QUANT_SCALES
                else gguf.quants.quantize(weights[f"model.layers.{layer}.mlp.down_proj.weight"], qtype))
        raw[f"blk.{layer}.ffn_down.weight"] = (down, qtype)
    lm = fewshot.load(import_gguf(write_gguf(tmp_path / "k.gguf", weights, qtype=Q.Q8_0, raw=raw), tmp_path / "run"))
    state = lm.model.state_dict()
    for layer, qtype in enumerate(mix):
        expected = gguf.quants.dequantize(raw[f"blk.{layer}.ffn_down.weight"][0], qtype).reshape(SHAPE["d_model"], SHAPE["d_ff"])
        np.testing.assert_array_equal(state[f"blocks.{layer}.mlp.down.weight"].numpy(), expected)
    q = state["blocks.1.mixer.qkv.weight"].numpy()[:SHAPE["d_model"]]  # Q8_0, un-permuted back to rotate_half order
    original = weights["model.layers.1.self_attn.q_proj.weight"]
    assert np.linalg.norm(q - original) / np.linalg.norm(original) < 0.01
    assert lm.config.source["quantization"] == sorted({"F32", "Q8_0", *(t.name for t in mix)})
    assert torch.isfinite(lm.logits(IDS)).all()


def test_bad_paths_and_existing_outputs(tmp_path: Path) -> None:
    (tmp_path / "garbage.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(FewshotError, match="not a readable GGUF"):
        import_gguf(tmp_path / "garbage.gguf", tmp_path / "out")
    with pytest.raises(FewshotError, match="no such GGUF"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    good = write_gguf(tmp_path / "tiny.gguf", hf_weights())
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FewshotError, match="not a readable GGUF"):
        import_gguf(truncated, tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FewshotError, match="already exists"):
        import_gguf(good, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_cli_imports_generates_and_chats(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", hf_weights())
    command = fewshot_command()
    done = subprocess.run([*command, "import-gguf", str(path), str(tmp_path / "run")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "imported" in done.stdout
    done = subprocess.run([*command, "generate", str(tmp_path / "run"), "--prompt", "the", "--max-tokens", "5",
                           "--temperature", "0"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("the"), done.stderr
    done = subprocess.run([*command, "chat", str(tmp_path / "run"), "--message", "hi", "--max-tokens", "3", "--seed", "0"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    failed = subprocess.run([*command, "import-gguf", str(tmp_path / "missing.gguf"), str(tmp_path / "run2")],
                            capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr.strip().count("\n") == 0 and failed.stderr.startswith("error:")
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_keep_quant_keeps_the_files_blocks_and_decodes_like_the_dequantised_import(tmp_path: Path, qtype: Q) -> None:
    from fewshot.model.quant import QuantLinear, dequantize

    weights = hf_weights(tie=False)
    path = write_gguf(tmp_path / "q.gguf", weights, qtype=qtype)
    floats = fewshot.load(import_gguf(path, tmp_path / "float"))
    kept = fewshot.load(import_gguf(path, tmp_path / "kept", keep_quant=True))
    assert kept.config.model.quant == qtype.name.lower() and kept.config.source["kept"]
    layer = kept.model.blocks[1].mlp.down
    assert isinstance(layer, QuantLinear) and isinstance(kept.model.head, QuantLinear)
    # The blocks are the file's: they dequantise to exactly what the float import holds.
    np.testing.assert_array_equal(layer.dequantized().numpy(), floats.model.blocks[1].mlp.down.weight.detach().numpy())
    qkv = dequantize({name: getattr(kept.model.blocks[0].mixer.qkv, name) for name in ("qweight", "scales", "mins")
                      if getattr(kept.model.blocks[0].mixer.qkv, name) is not None}, qtype.name.lower())
    np.testing.assert_array_equal(qkv.numpy(), floats.model.blocks[0].mixer.qkv.weight.detach().numpy())  # q/k rows un-permuted
    reference = floats.logits(IDS)
    # What differs is the kernel rounding activations to int8 per block (~0.5% per product, as llama.cpp does).
    assert ((kept.logits(IDS) - reference).norm() / reference.norm()).item() < 0.04
    assert (tmp_path / "kept" / "model.safetensors").stat().st_size < 0.45 * (tmp_path / "float" / "model.safetensors").stat().st_size


def test_keep_quant_refuses_files_it_cannot_keep_by_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = {"blk.0.ffn_down.weight": (k_quant_blocks(SHAPE["d_model"], SHAPE["d_ff"], Q.Q4_K, rng), Q.Q4_K)}
    path = write_gguf(tmp_path / "k.gguf", hf_weights(), qtype=Q.Q8_0, raw=raw)
    with pytest.raises(FewshotError, match="--keep-quant keeps .* this file's are Q4_K, Q8_0"):
        import_gguf(path, tmp_path / "out", keep_quant=True)
    assert not (tmp_path / "out").exists()
    # Through the CLI: one error line naming the way out, exit 2, nothing written.
    failed = subprocess.run([*fewshot_command(), "import-gguf", str(path), str(tmp_path / "out"), "--keep-quant"],
                            capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stderr.startswith("error:"), failed.stderr
    assert failed.stderr.strip().count("\n") == 0 and "without --keep-quant" in failed.stderr
    assert not (tmp_path / "out").exists()
    import_gguf(path, tmp_path / "out")  # dequantised, it imports

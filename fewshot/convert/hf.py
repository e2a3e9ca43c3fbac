"""Hugging Face GPT-2 <-> fewshot run directories.

    fewshot export-hf runs/mine out/mine-hf        # loads with GPT2LMHeadModel / AutoTokenizer
    fewshot import-hf path/to/gpt2-dir runs/gpt2   # a local GPT2LMHeadModel directory -> a run

A "gpt3" block is GPT-2's block (GPT-3 §2.1), so the two layouts differ only in names and
in one convention: GPT-2 stores its attention and MLP matrices as `Conv1D`, [in, out], the
transpose of `nn.Linear`'s [out, in]. One name table serves both directions.

Whatever GPT-2 cannot express (banded attention, llama blocks, grouped heads, no biases)
is refused with the reason, never exported as a different model. Both directions write a
staging directory and rename it into place: an interrupted conversion leaves nothing
half-written, and an existing non-empty directory is never touched. Nothing is unpickled
and nothing is downloaded; transformers itself is not needed, only its file formats.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from fewshot import __version__
from fewshot.runs import RunConfig, RunDir, write_safetensors
from fewshot.config import ModelConfig
from fewshot.device import dtype_named
from fewshot.errors import FewshotError
from fewshot.files import check_new_dir, publish_dir, read_json, write_json
from fewshot.model import GPT
from fewshot.tokenizer import BYTE_SPECIALS, EOT, TOKENIZER_FILE, BPETokenizer, ByteTokenizer, Tokenizer, _gpt2_byte_chars

# GPT2Config's fields and defaults (transformers' configuration_gpt2.py). Export writes them
# all; import fills in whichever a config.json leaves out, as transformers would.
GPT2_CONFIG: dict[str, Any] = {
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
    "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
    "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
    "add_cross_attention": False, "tie_word_embeddings": True, "use_cache": True,
    "bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": None,
}
# Our MLP uses GELU's tanh approximation (model/gpt.py); transformers has it under three names.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# transformers' own file names (a Hugging Face directory, not a run directory).
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"  # sharded safetensors
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")

# fewshot name -> GPT-2 name (without GPT2LMHeadModel's "transformer." prefix).
_GLOBAL = {"token_embedding.weight": "wte.weight", "position_embedding.weight": "wpe.weight",
           "norm.weight": "ln_f.weight", "norm.bias": "ln_f.bias", "head.weight": "lm_head.weight"}
_LAYER = {"norm_mix": "ln_1", "mixer.qkv": "attn.c_attn", "mixer.proj": "attn.c_proj",
          "norm_mlp": "ln_2", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")
# Old GPT-2 checkpoints also store the causal mask as attn.bias / attn.masked_bias: buffers, not weights.
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def gpt2_name(name: str) -> str:
    """Our state-dict name -> GPT-2's: blocks.3.mixer.qkv.weight -> h.3.attn.c_attn.weight."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    match = _BLOCK.fullmatch(name)
    return f"h.{match[1]}.{_LAYER[match[2]]}.{match[3]}"


def _is_conv1d(gpt2: str) -> bool:
    """GPT-2 keeps these matrices as Conv1D, [in, out]: the transpose of nn.Linear's."""
    return gpt2.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"))


def _gpt2_layout(config: ModelConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """GPT-2 name -> (our name, shape as GPT-2 stores it), for every weight the config has."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        shapes = {name: tuple(t.shape) for name, t in GPT(config).state_dict().items()}
    if config.tie_embeddings:
        del shapes["head.weight"]  # GPT-2 stores a tied head once, as wte
    return {gpt2_name(name): (name, shape[::-1] if _is_conv1d(gpt2_name(name)) else shape) for name, shape in shapes.items()}


# ------------------------------------------------------------------------------ export


def export_hf(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the run at `run_dir` as a transformers GPT-2 directory `out_dir` (new or empty)."""
    from fewshot.inference.lm import load  # deferred: it pulls in generation and training code

    run_dir, out = Path(run_dir), Path(out_dir)
    check_new_dir(out)
    if (run_dir / "adapter_config.json").is_file() and RunDir.open(run_dir).is_adapter:
        return export_adapter_hf(RunDir.open(run_dir), out)
    config = _run_model_config(run_dir)
    if config is not None:
        check_exportable(config, run_dir)  # before loading any weights
    lm = load(run_dir)  # also says what is wrong with a directory that is not a run
    weights = gpt2_weights(lm.model)
    dtype = str(next(iter(weights.values())).dtype).removeprefix("torch.")  # "float32", as transformers writes it

    def fill(staging: Path) -> None:
        write_safetensors(staging / HF_WEIGHTS, weights)
        write_json(staging / HF_CONFIG, gpt2_config(lm.model.config, lm.tokenizer, dtype))
        write_hf_tokenizer(staging, lm.tokenizer, lm.model.config.context)

    return publish_dir(out, fill)


ADAPTER_DIR = "adapter"  # where an exported adapter goes inside the exported base


def export_adapter_hf(adapter: RunDir, out: Path) -> Path:
    """The adapter's base as a GPT-2 directory, and the adapter, renamed for GPT-2, in OUT/adapter.

    `peft.PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(OUT), OUT/adapter)` then
    runs the model fewshot ran. GPT-2's layers are Conv1D ([in, out]); peft's adapter tensors
    keep Linear's shapes, and `fan_in_fan_out` tells peft to merge them into a transposed weight.
    """
    from fewshot.inference.lm import load
    from fewshot.model.adapters import PEFT_PREFIX

    base_path = (adapter.config.source or {}).get("base", "")
    lm = load(base_path, adapter=adapter.path)  # checks the base's fingerprint
    check_exportable(lm.model.config, adapter.path)
    base = load(base_path)
    weights = gpt2_weights(base.model)
    dtype = str(next(iter(weights.values())).dtype).removeprefix("torch.")
    tensors = {}
    for name, tensor in adapter.adapter_tensors().items():
        match = re.fullmatch(r"blocks\.(\d+)\.(.+?)\.((?:lora_|ia3_).+)", name.removeprefix(PEFT_PREFIX))
        tensors[f"{PEFT_PREFIX}transformer.h.{match[1]}.{_LAYER[match[2]]}.{match[3]}"] = tensor
    record = dict(adapter.config.adapter)
    for key in ("target_modules", "feedforward_modules"):
        if record.get(key):
            record[key] = sorted(_LAYER[name] for name in record[key])
    record["fan_in_fan_out"] = True

    def fill(staging: Path) -> None:
        write_safetensors(staging / HF_WEIGHTS, weights)
        write_json(staging / HF_CONFIG, gpt2_config(base.model.config, base.tokenizer, dtype))
        write_hf_tokenizer(staging, base.tokenizer, base.model.config.context)
        (staging / ADAPTER_DIR).mkdir()
        write_safetensors(staging / ADAPTER_DIR / "adapter_model.safetensors", tensors)
        write_json(staging / ADAPTER_DIR / "adapter_config.json", record)

    return publish_dir(out, fill)


def _run_model_config(run_dir: Path) -> ModelConfig | None:
    """The run's model config; None when config.json is missing or malformed, which load() explains."""
    try:
        return RunDir.open(run_dir).config.model
    except FewshotError:
        return None


def check_exportable(config: ModelConfig, run_dir: Path) -> None:
    """Raise the first reason GPT-2 cannot express `config`; GPT2LMHeadModel would run a different model."""
    # A band at least as wide as the context hides nothing: that model is dense (model/mixers.py).
    mixers = set(config.layer_pattern()) - ({"local"} if config.window >= config.context else set())
    others = sorted(mixers - {"dense", "local"})
    reasons = [
        (config.block != "gpt3", f"block {config.block!r} (RMSNorm, RoPE, SwiGLU) is not GPT-2's; only block 'gpt3' exports"),
        (config.kv_heads != config.n_head, f"grouped-query attention ({config.kv_heads} key/value heads for {config.n_head}) is not GPT-2's"),
        (config.head_size * config.n_head != config.d_model,
         f"heads of {config.head_size} x {config.n_head} != d_model {config.d_model}; GPT-2 needs head_dim = d_model / n_head"),
        (not config.bias, "bias=False; GPT-2's linear layers and LayerNorms all have biases"),
        (bool(others), f"the {' and '.join(others)} sequence mixer is not GPT-2's; only dense attention exports"),
        (config.qkv_conv > 0, f"a q/k/v convolution (qkv_conv={config.qkv_conv}, Primer) is not GPT-2's"),
        (config.quant is not None, f"its weights are quantised ({config.quant}); export the run it was quantised from"),
        ("local" in mixers,
         f"local attention (window {config.window} < context {config.context}) is not GPT-2's; only dense attention exports"),
    ]
    for refused, reason in reasons:
        if refused:
            raise FewshotError(f"{run_dir}: cannot export to GPT-2: {reason}")


def gpt2_weights(model: GPT) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's state dict, as its save_pretrained writes it (a tied head once, as wte)."""
    weights = {}
    for name, tensor in model.state_dict().items():
        if name == "head.weight" and model.config.tie_embeddings:
            continue
        gpt2 = gpt2_name(name)
        tensor = tensor.t() if _is_conv1d(gpt2) else tensor
        weights[gpt2 if gpt2 == "lm_head.weight" else f"transformer.{gpt2}"] = tensor.detach().contiguous()
    return weights


def gpt2_config(config: ModelConfig, tokenizer: Tokenizer, dtype: str = "float32") -> dict[str, Any]:
    """transformers' config.json for `config`; the checks of check_exportable must have passed."""
    hidden = None if config.hidden_size == 4 * config.d_model else config.hidden_size  # n_inner None = 4 d
    stop = sorted(tokenizer.stop_ids)
    return {
        **GPT2_CONFIG,
        "vocab_size": config.vocab_size, "n_positions": config.context, "n_embd": config.d_model,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": hidden,
        "activation_function": "gelu_new", "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": tokenizer.eot_id, "eos_token_id": stop[0] if len(stop) == 1 else stop,
        "dtype": dtype,
        "fewshot_version": __version__,
    }


def byte_level_tokenizer() -> HFTokenizer:
    """Our ByteTokenizer as a byte-level BPE that transformers can run.

    Ids 0..255 are the bytes, written in GPT-2's byte alphabet; with no merges every byte
    stays its own token, so the ids are exactly ByteTokenizer's. The specials follow as
    added tokens 256..259.
    """
    chars = _gpt2_byte_chars()
    hf = HFTokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)  # no merges: no need to split words
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in BYTE_SPECIALS])
    return hf


def write_hf_tokenizer(directory: Path, tokenizer: Tokenizer, context: int) -> None:
    """tokenizer.json + the two small files AutoTokenizer reads to load it offline."""
    if isinstance(tokenizer, ByteTokenizer):
        (directory / TOKENIZER_FILE).write_text(byte_level_tokenizer().to_str(pretty=True), encoding="utf-8")
        spec = {}
    else:
        tokenizer.save(directory)
        spec = tokenizer.spec()
    eot = spec.get("eot", EOT)
    specials = {"bos_token": eot, "eos_token": eot, "unk_token": eot}  # as GPT-2's own files say
    write_json(directory / "special_tokens_map.json", specials)
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",  # runs tokenizer.json as it is
        **specials,
        "model_max_length": context,
        "add_bos_token": False, "add_prefix_space": False, "clean_up_tokenization_spaces": False,
        # Ours read "<|endoftext|>" in a prompt as 13 characters of text, not as the separator
        # (tokenizer.py): transformers does the same when it splits special tokens.
        "split_special_tokens": not spec.get("parse_special", False),
        **({"chat_template": spec["chat_template"]} if spec.get("chat_template") else {}),
    })


# ------------------------------------------------------------------------------ import


def import_hf(hf_dir: str | Path, out_dir: str | Path, dtype: str = "fp32") -> Path:
    """Convert the local GPT2LMHeadModel directory `hf_dir` into the run directory `out_dir`."""
    hf_dir, out = Path(hf_dir), Path(out_dir)
    torch_dtype = dtype_named(dtype, "import-hf")
    check_new_dir(out)
    if not hf_dir.is_dir():
        raise FewshotError(f"{hf_dir}: no such directory (import-hf reads a local transformers model directory)")
    stored_config = read_json(hf_dir / HF_CONFIG)
    if not isinstance(stored_config, dict):
        raise FewshotError(f"{hf_dir / HF_CONFIG}: not a transformers config (expected a JSON object)")
    settings = {**GPT2_CONFIG, **stored_config}
    files = _safetensors_files(hf_dir)  # before the tokenizer: a pickle-only directory should say so first
    config = model_config(settings, hf_dir)
    tokenizer = hf_tokenizer(hf_dir)
    if tokenizer.vocab_size > config.vocab_size:
        raise FewshotError(f"{hf_dir}: the tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size} rows")
    with ExitStack() as stack:
        handles = {file: stack.enter_context(_open_safetensors(file)) for file in files}
        stored = _stored_names(handles)
        config = config.replace(tie_embeddings=_tied(settings, stored, hf_dir))
        weights = _read_weights(config, stored, torch_dtype, hf_dir)
    source = {"hf": str(hf_dir.resolve()), "name": settings.get("_name_or_path"), "dtype": dtype}
    return RunDir.publish(out, RunConfig(config, tokenizer.spec(), source=source), tokenizer, weights).path


def model_config(settings: dict[str, Any], hf_dir: Path) -> ModelConfig:
    """GPT2Config's fields -> a "gpt3"-block ModelConfig, refusing what our block cannot run."""
    path = hf_dir / HF_CONFIG
    if settings.get("model_type") != "gpt2":
        raise FewshotError(f"{path}: model_type {settings.get('model_type')!r} is not supported (supported: gpt2)")
    if settings["activation_function"] not in TANH_GELU:
        raise FewshotError(f"{path}: activation_function {settings['activation_function']!r} is not supported "
                           f"(fewshot's MLP uses GELU's tanh approximation: {', '.join(TANH_GELU)})")
    # reorder_and_upcast_attn only changes the arithmetic's precision, not the function: accepted.
    for flag, meaning in (("scale_attn_by_inverse_layer_idx", "scales attention by 1/layer"),
                          ("add_cross_attention", "has encoder cross-attention")):
        if settings[flag]:
            raise FewshotError(f"{path}: {flag} is true (the model {meaning}); fewshot's GPT-2 block does not")
    if not settings["scale_attn_weights"]:
        raise FewshotError(f"{path}: scale_attn_weights is false (no 1/sqrt(head_dim)); fewshot's attention always scales")
    d_model, hidden = settings["n_embd"], settings["n_inner"]
    try:
        return ModelConfig(
            n_layer=settings["n_layer"], n_head=settings["n_head"], d_model=d_model, context=settings["n_positions"],
            vocab_size=settings["vocab_size"], d_ff=None if hidden in (None, 4 * d_model) else hidden,
            norm_eps=float(settings["layer_norm_epsilon"]),
            # Dropout is a training choice, not part of the model: imports start at fewshot's default (0).
        )
    except (TypeError, ValueError) as error:
        raise FewshotError(f"{path}: malformed GPT-2 config ({error})") from None
    except FewshotError as error:
        raise FewshotError(f"{path}: {error}") from None


def hf_tokenizer(hf_dir: Path) -> BPETokenizer:
    """GPT-2's byte-level BPE from tokenizer.json, or else from vocab.json + merges.txt."""
    if (hf_dir / TOKENIZER_FILE).is_file():
        path = hf_dir / TOKENIZER_FILE
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as error:  # `tokenizers` raises a bare Exception for every parse problem
            raise FewshotError(f"{path}: not a readable tokenizer ({error})") from None
    elif (hf_dir / "vocab.json").is_file() and (hf_dir / "merges.txt").is_file():
        path = hf_dir / "vocab.json"
        try:
            hf = HFTokenizer(models.BPE.from_file(str(path), str(hf_dir / "merges.txt")))
        except Exception as error:
            raise FewshotError(f"{path}: not a readable GPT-2 vocabulary with merges.txt ({error})") from None
        # What transformers' GPT2TokenizerFast builds from these two files.
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
    else:
        raise FewshotError(f"{hf_dir}: no tokenizer (tokenizer.json, or vocab.json + merges.txt)")
    if hf.token_to_id(EOT) is None:
        raise FewshotError(f"{path}: the vocabulary has no {EOT}; fewshot needs it to separate documents")
    # vocab.json lists the separator as a plain token; make it special, as GPT-2's tokenizer.json does.
    hf.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    extra = read_json(hf_dir / "tokenizer_config.json") if (hf_dir / "tokenizer_config.json").is_file() else {}
    template = extra.get("chat_template") if isinstance(extra, dict) else None
    try:
        return BPETokenizer(hf, chat_template=template if isinstance(template, str) else None)
    except FewshotError as error:
        raise FewshotError(f"{path}: {error}") from None


def _safetensors_files(hf_dir: Path) -> list[Path]:
    if (hf_dir / HF_WEIGHTS).is_file():
        return [hf_dir / HF_WEIGHTS]
    if (hf_dir / INDEX).is_file():
        weight_map = read_json(hf_dir / INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise FewshotError(f"{hf_dir / INDEX}: has no weight_map")
        return [hf_dir / name for name in sorted(set(weight_map.values()))]
    for name in PICKLES:
        if (hf_dir / name).exists():
            raise FewshotError(
                f"{hf_dir / name}: only a pickle checkpoint, and fewshot never unpickles (it can run code); "
                "convert it where you trust it with transformers: from_pretrained(dir).save_pretrained(dir) writes model.safetensors"
            )
    raise FewshotError(f"{hf_dir}: no {HF_WEIGHTS}; is this a transformers model directory?")


def _open_safetensors(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError) as error:
        raise FewshotError(f"{file}: not a readable safetensors file ({error})") from None


def _stored_names(handles: dict) -> dict[str, tuple[Any, str]]:
    """GPT-2 name -> (file handle, key), whether or not keys carry the "transformer." prefix."""
    stored: dict[str, tuple[Any, str]] = {}
    for file, handle in handles.items():
        for key in handle.keys():
            name = key.removeprefix("transformer.")
            if _MASK_BUFFER.fullmatch(name):
                continue
            if name in stored:
                raise FewshotError(f"{file}: {name} is stored twice (with and without the transformer. prefix)")
            stored[name] = (handle, key)
    return stored


def _tensor(stored: dict, name: str) -> torch.Tensor:
    handle, key = stored[name]
    return handle.get_tensor(key)


def _tied(settings: dict[str, Any], stored: dict, hf_dir: Path) -> bool:
    """Whether the output head is the token embedding; an untied one is imported as its own matrix."""
    tie = settings["tie_word_embeddings"]
    if "lm_head.weight" not in stored:
        if not tie:
            raise FewshotError(f"{hf_dir}: config.json unties the output head but no lm_head.weight is stored")
        return True
    if tie and "wte.weight" in stored and not torch.equal(_tensor(stored, "lm_head.weight"), _tensor(stored, "wte.weight")):
        raise FewshotError(f"{hf_dir}: config.json ties lm_head to wte but the stored lm_head.weight differs; "
                           "set tie_word_embeddings to false in config.json to import it as an untied head")
    if tie:
        del stored["lm_head.weight"]  # the same matrix as wte
    return tie


def _read_weights(config: ModelConfig, stored: dict, dtype: torch.dtype, hf_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor the config needs, checked by name and shape before any is read."""
    layout = _gpt2_layout(config)
    missing, unexpected = sorted(set(layout) - set(stored)), sorted(set(stored) - set(layout))
    if missing or unexpected:
        raise FewshotError(f"{hf_dir}: tensors do not match the GPT-2 config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for gpt2, (_, shape) in layout.items():
        handle, key = stored[gpt2]
        found = tuple(handle.get_slice(key).get_shape())
        if found != shape:
            raise FewshotError(f"{hf_dir}: {key} has shape {list(found)} but config.json needs {list(shape)}")
    weights = {}
    for gpt2, (name, _) in layout.items():
        tensor = _tensor(stored, gpt2)
        weights[name] = (tensor.t() if _is_conv1d(gpt2) else tensor).to(dtype).contiguous()
    return weights

"""Hugging Face GPT-2 interop, proven against the real peer: transformers' GPT2LMHeadModel.

Export: a random fewshot model, written as a run, exported, then loaded by transformers from
the directory alone; the two must give the same logits, greedy tokens and token ids.
Import: a random GPT2LMHeadModel saved by transformers itself (both key layouts, tied and
untied heads, both tokenizer file layouts), imported, then loaded with `fewshot.load`.
Weights get std 0.2 rather than the usual 0.02, so the logits are O(1) and a 1e-4
agreement means something.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

import fewshot
from fewshot.runs import RunConfig, RunDir, weights_to_save
from fewshot.config import PRESETS, ModelConfig
from fewshot.convert.hf import export_hf, import_hf
from fewshot.errors import FewshotError
from fewshot.model import GPT
from fewshot.tokenizer import BPETokenizer, ByteTokenizer, train_bpe

SMALL = PRESETS["nano"].model.replace(n_layer=2, d_model=64, context=64)
TEXT = ("The cat sat on the mat. The dog sat on the log. Then the cat ran after the dog, "
        "and the dog ran after the cat! Café, naïve, 東京, 🙂. 12 + 30 = 42.\n")
SAMPLE = "The cat ran after the dog: <|endoftext|> café 🙂\n\t 42"


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return train_bpe([TEXT] * 20, vocab_size=320)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights of std 0.2 (LayerNorm scales around 1): O(1) logits and varied greedy text."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):  # a tied head stays one tensor
                scale = 1.0 if isinstance(module, torch.nn.LayerNorm) and name == "weight" else 0.0
                param.copy_(scale + 0.2 * torch.randn(param.shape, generator=generator))
    return model.eval()


def make_run(path: Path, config: ModelConfig, tokenizer, seed: int = 0) -> GPT:
    model = randomize(GPT(config), seed)
    RunDir.publish(path, RunConfig(config, tokenizer.spec()), tokenizer, weights_to_save(model))
    return model


def greedy_fewshot(run: Path, prompt: list[int], tokens: int) -> list[int]:
    completion = fewshot.load(run).complete(prompt, max_tokens=tokens, temperature=0, stop_at_eot=False)[0]
    assert len(set(completion.token_ids)) > 3, "a degenerate sequence would prove little"
    return list(completion.token_ids)


def greedy_transformers(model: GPT2LMHeadModel, prompt: list[int], tokens: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def leftovers(directory: Path) -> list[Path]:
    return [path for path in directory.iterdir() if ".tmp-" in path.name]


# ------------------------------------------------------------------------------ export

EXPORTABLE = {
    "byte, tied": (SMALL, "byte"),
    "bpe, untied head, MLP 2.5x": (SMALL.replace(tie_embeddings=False, d_ff=160), "bpe"),
    "local band as wide as the context (= dense)": (SMALL.replace(attention="local", window=64), "byte"),
}


@pytest.mark.parametrize("case", EXPORTABLE)
def test_transformers_runs_an_exported_run_like_fewshot(case: str, bpe: BPETokenizer, tmp_path: Path) -> None:
    config, kind = EXPORTABLE[case]
    tokenizer = bpe if kind == "bpe" else ByteTokenizer()
    config = config.replace(vocab_size=tokenizer.vocab_size)
    model = make_run(tmp_path / "run", config, tokenizer)
    out = export_hf(tmp_path / "run", tmp_path / "hf")

    settings = json.loads((out / "config.json").read_text())
    assert settings["model_type"] == "gpt2" and settings["architectures"] == ["GPT2LMHeadModel"]
    assert settings["activation_function"] == "gelu_new" and settings["tie_word_embeddings"] == config.tie_embeddings
    stored = load_file(out / "model.safetensors")
    assert stored["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)  # Conv1D: [in, out]
    assert stored["transformer.h.0.mlp.c_fc.weight"].shape == (64, config.hidden_size)
    assert ("lm_head.weight" in stored) == (not config.tie_embeddings)

    theirs = GPT2LMHeadModel.from_pretrained(out, local_files_only=True).eval()
    ids = torch.randint(0, config.vocab_size, (2, config.context), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model(ids)[0], atol=1e-4, rtol=0)
    prompt = tokenizer.encode("The cat")
    assert greedy_transformers(theirs, prompt, 20) == greedy_fewshot(tmp_path / "run", prompt, 20)

    hf_tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert hf_tokenizer.encode(SAMPLE) == tokenizer.encode(SAMPLE)
    assert hf_tokenizer.eos_token_id == tokenizer.eot_id


@pytest.fixture(scope="module")
def tokenizer_pairs(bpe: BPETokenizer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Ours and transformers' (loaded from an export) for the byte and BPE tokenizers."""
    pairs = {}
    for kind, tokenizer in (("byte", ByteTokenizer()), ("bpe", bpe)):
        root = tmp_path_factory.mktemp(kind)
        make_run(root / "run", ModelConfig(n_layer=1, n_head=2, d_model=16, context=16, vocab_size=tokenizer.vocab_size), tokenizer)
        pairs[kind] = tokenizer, AutoTokenizer.from_pretrained(export_hf(root / "run", root / "hf"), local_files_only=True)
    return pairs


TEXTS = st.lists(st.sampled_from(["<|endoftext|>", "<|reserved_1|>", " the", "cat", "é", "東", "🙂", "\n", "  "]) | st.text(), max_size=6).map("".join)


@pytest.mark.parametrize("kind", ["byte", "bpe"])
@settings(max_examples=60, deadline=None)
@given(text=TEXTS)
def test_transformers_tokenizes_like_fewshot(kind: str, tokenizer_pairs: dict, text: str) -> None:
    ours, theirs = tokenizer_pairs[kind]
    try:
        expected = ours.encode(text)
    except FewshotError:  # a lone surrogate: not valid Unicode, refused by ours
        return
    assert theirs.encode(text) == expected
    assert theirs.decode(expected) == text


REFUSED = {
    "llama": (PRESETS["llama-nano"].model.replace(n_layer=1), "block 'llama'"),
    "local": (SMALL.replace(attention="local", window=16), "local attention"),
    "alternating": (SMALL.replace(attention="alternating", window=16), "local attention"),
    "head_dim": (SMALL.replace(head_dim=8), "head_dim = d_model / n_head"),
    "gqa": (SMALL.replace(n_kv_head=2), "grouped-query attention"),
    "no biases": (SMALL.replace(bias=False), "bias=False"),
    "lstm": (SMALL.replace(attention="lstm"), "the lstm sequence mixer"),
    "linear": (SMALL.replace(attention="dense,linear"), "the linear sequence mixer"),
    "qkv_conv": (SMALL.replace(qkv_conv=3), "a q/k/v convolution"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_export_refuses_what_gpt2_cannot_express(case: str, tmp_path: Path) -> None:
    config, reason = REFUSED[case]
    make_run(tmp_path / "run", config.replace(n_layer=1), ByteTokenizer())
    with pytest.raises(FewshotError, match=f"cannot export to GPT-2: .*{reason}") as error:
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "hf").exists() and not leftovers(tmp_path)


def test_export_never_overwrites(tmp_path: Path) -> None:
    make_run(tmp_path / "run", SMALL.replace(n_layer=1), ByteTokenizer())
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(FewshotError, match="already exists"):
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["keep.txt"]
    with pytest.raises(FewshotError, match="no such run directory"):
        export_hf(tmp_path / "missing", tmp_path / "hf2")


# ------------------------------------------------------------------------------ import


def save_gpt2(path: Path, tokenizer: BPETokenizer, tie: bool = True, prefixed: bool = True, files: str = "json",
              seed: int = 0, **config) -> GPT2LMHeadModel:
    """A random GPT2LMHeadModel as transformers saves it, with the tokenizer beside it."""
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=tokenizer.vocab_size,
                        tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None, **config)
    torch.manual_seed(seed)
    model = randomize(GPT2LMHeadModel(config), seed)
    model.save_pretrained(path)
    if not prefixed:  # the layout of OpenAI's original checkpoints: bare names, plus the mask buffers
        weights = {key.removeprefix("transformer."): value for key, value in load_file(path / "model.safetensors").items()}
        for layer in range(config.n_layer):
            weights[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
            weights[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
        save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    if files == "json":
        tokenizer.save(path)
    else:
        tokenizer._hf.model.save(str(path))  # vocab.json + merges.txt, GPT-2's original files
    return model


IMPORTABLE = {
    "prefixed, tied, tokenizer.json": dict(tie=True, prefixed=True, files="json"),
    "bare names + mask buffers, tied, vocab.json": dict(tie=True, prefixed=False, files="vocab"),
    "prefixed, untied head, vocab.json": dict(tie=False, prefixed=True, files="vocab"),
    # Same function, other arithmetic (fp32 softmax in eager attention): accepted.
    "reorder_and_upcast_attn, MLP 3x": dict(tie=True, reorder_and_upcast_attn=True, n_inner=192, attn_implementation="eager"),
}


@pytest.mark.parametrize("case", IMPORTABLE)
def test_an_imported_gpt2_runs_like_transformers(case: str, bpe: BPETokenizer, tmp_path: Path) -> None:
    options = IMPORTABLE[case]
    theirs = save_gpt2(tmp_path / "gpt2", bpe, **options).eval()
    run = import_hf(tmp_path / "gpt2", tmp_path / "run")
    lm = fewshot.load(run)
    assert lm.model.config.block == "gpt3" and lm.model.config.tie_embeddings == options["tie"]
    assert json.loads((run / "config.json").read_text())["source"]["hf"] == str((tmp_path / "gpt2").resolve())

    ids = torch.randint(0, bpe.vocab_size, (2, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids)[0], theirs(ids).logits, atol=1e-4, rtol=0)
    prompt = bpe.encode("The cat sat")
    assert greedy_fewshot(run, prompt, 30) == greedy_transformers(theirs, prompt, 30)

    reference = GPT2TokenizerFast.from_pretrained(tmp_path / "gpt2", local_files_only=True)
    assert lm.tokenizer.encode(SAMPLE) == bpe.encode(SAMPLE) == reference.encode(SAMPLE, split_special_tokens=True)
    assert lm.tokenizer.decode(lm.tokenizer.encode(SAMPLE)) == SAMPLE


def test_export_then_import_gives_back_the_same_model(tmp_path: Path) -> None:
    original = make_run(tmp_path / "run", SMALL, ByteTokenizer())
    export_hf(tmp_path / "run", tmp_path / "hf")
    (tmp_path / "back").mkdir()  # an empty directory is a fine target
    lm = fewshot.load(import_hf(tmp_path / "hf", tmp_path / "back"))
    assert lm.model.config == SMALL
    for name, tensor in original.state_dict().items():
        assert torch.equal(lm.model.state_dict()[name], tensor), name
    # The byte tokenizer comes back as a byte-level BPE without merges: the same ids.
    assert lm.tokenizer.encode(SAMPLE) == ByteTokenizer().encode(SAMPLE)
    assert fewshot.load(tmp_path / "run").generate("The", max_tokens=10, temperature=0) == lm.generate("The", max_tokens=10, temperature=0)


@pytest.fixture(scope="module")
def gpt2_dir(bpe: BPETokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpt2") / "model"
    save_gpt2(path, bpe)
    return path


def edit_config(**changes):
    def edit(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps(config | changes))
    return edit


def edit_weights(change):
    def edit(path: Path) -> None:
        weights = load_file(path / "model.safetensors")
        change(weights)
        save_file(weights, path / "model.safetensors")
    return edit


def pickle_only(path: Path) -> None:
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"\x80\x04 never read")


def no_endoftext(path: Path) -> None:
    HFTokenizer(models.BPE(vocab={"a": 0}, merges=[])).save(str(path / "tokenizer.json"))


IMPORT_REFUSED = {
    "llama config": (edit_config(model_type="llama"), "model_type 'llama' is not supported"),
    "exact GELU": (edit_config(activation_function="gelu"), "activation_function 'gelu' is not supported"),
    "1/layer scaling": (edit_config(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx is true"),
    "unscaled attention": (edit_config(scale_attn_weights=False), "scale_attn_weights is false"),
    "cross-attention": (edit_config(add_cross_attention=True), "add_cross_attention is true"),
    "missing tensor": (edit_weights(lambda w: w.pop("transformer.h.1.mlp.c_fc.bias")), r"missing \['h.1.mlp.c_fc.bias'\]"),
    "extra layer": (edit_config(n_layer=1), r"unexpected \['h.1.attn.c_attn.bias'"),
    "wrong shape": (edit_config(n_positions=32), r"transformer.wpe.weight has shape \[64, 64\] but config.json needs \[32, 64\]"),
    "untied without a head": (edit_config(tie_word_embeddings=False), "no lm_head.weight is stored"),
    "tied to a different head": (edit_weights(lambda w: w.update({"lm_head.weight": torch.zeros_like(w["transformer.wte.weight"])})),
                                 "stored lm_head.weight differs"),
    "pickle only": (pickle_only, "pytorch_model.bin: only a pickle checkpoint, and fewshot never unpickles"),
    "corrupt safetensors": (lambda p: (p / "model.safetensors").write_bytes(b"junk"), "not a readable safetensors file"),
    "no tokenizer": (lambda p: (p / "tokenizer.json").unlink(), r"no tokenizer \(tokenizer.json, or vocab.json \+ merges.txt\)"),
    "no <|endoftext|>": (no_endoftext, r"the vocabulary has no <\|endoftext\|>"),
    "no config.json": (lambda p: (p / "config.json").unlink(), "config.json: not found"),
}


@pytest.mark.parametrize("case", IMPORT_REFUSED)
def test_import_refuses_with_one_line_and_writes_nothing(case: str, gpt2_dir: Path, tmp_path: Path) -> None:
    damage, reason = IMPORT_REFUSED[case]
    source = shutil.copytree(gpt2_dir, tmp_path / "gpt2")
    damage(source)
    with pytest.raises(FewshotError, match=reason) as error:
        import_hf(source, tmp_path / "run")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists() and not leftovers(tmp_path)


def test_import_never_overwrites_and_checks_its_options(gpt2_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(FewshotError, match="already exists"):
        import_hf(gpt2_dir, tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["keep.txt"]
    with pytest.raises(FewshotError, match="--dtype must be one of fp32, bf16"):
        import_hf(gpt2_dir, tmp_path / "other", dtype="fp8")
    with pytest.raises(FewshotError, match="no such directory"):
        import_hf(tmp_path / "missing", tmp_path / "other")


def test_import_in_bf16_halves_the_weights(gpt2_dir: Path, tmp_path: Path) -> None:
    run = import_hf(gpt2_dir, tmp_path / "run", dtype="bf16")
    assert {t.dtype for t in load_file(run / "model.safetensors").values()} == {torch.bfloat16}
    assert isinstance(fewshot.load(run).generate("The cat", max_tokens=5, temperature=0), str)

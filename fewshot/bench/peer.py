"""The peer: Hugging Face's GPT2LMHeadModel holding exactly our weights.

A "gpt3" block is GPT-2's block (GPT-3 §2.1), so transformers can run the very same model:
the config is the one `export-hf` writes (n_inner = our hidden size, gelu_new, the same
LayerNorm epsilon, tied embeddings, n_positions = our context) and the weights go through
fewshot.convert.hf's name table. The benchmark then compares two implementations of one
function, which it checks: equal parameter counts, and logits that agree.
"""

from __future__ import annotations

import torch

from fewshot.errors import FewshotError

HF_INSTALL = "pip install 'fewshot[bench]' (transformers==5.23.0)"


def hf_peer(model, attention: str = "sdpa"):
    """A GPT2LMHeadModel with `model`'s weights, dtype and device, in `model`'s train/eval mode.

    `attention` is transformers' attn_implementation; SDPA is also what our attention calls.
    """
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise FewshotError(f"--vs hf needs transformers; install it with: {HF_INSTALL}") from None
    from fewshot.convert.hf import check_exportable, gpt2_config, gpt2_weights
    from fewshot.tokenizer import ByteTokenizer

    config = model.config
    check_exportable(config, "the benchmark model")
    settings = gpt2_config(config, _stub_tokenizer(config.vocab_size, ByteTokenizer()))
    settings["n_inner"] = config.hidden_size  # explicit, not None-means-4d: the same number both sides
    weight = next(model.parameters())
    peer = GPT2LMHeadModel._from_config(GPT2Config(**settings), attn_implementation=attention)
    result = peer.load_state_dict(gpt2_weights(model), strict=False)
    tied_head = ["lm_head.weight"] if config.tie_embeddings else []
    if list(result.missing_keys) != tied_head or result.unexpected_keys:
        raise AssertionError(f"GPT-2 weight mapping mismatch: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    peer = peer.to(device=weight.device, dtype=weight.dtype)
    peer.train(model.training)
    ours, theirs = model.num_params(), count_params(peer)
    if ours != theirs:
        raise AssertionError(f"parameter counts differ: fewshot {ours:,}, transformers {theirs:,}")
    return peer


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # a tied weight is yielded once


def logits_gap(model, peer, length: int = 32, batch: int = 2) -> float:
    """Largest |logit difference| between the two models on the same random tokens."""
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (batch, min(length, model.config.context)), generator=generator).to(device)
    modes = model.training, peer.training
    model.eval(), peer.eval()
    try:
        with torch.inference_mode():
            ours, _ = model(ids)
            theirs = peer(input_ids=ids, use_cache=False).logits
    finally:
        model.train(modes[0]), peer.train(modes[1])
    return float((ours.float() - theirs.float()).abs().max())


def _stub_tokenizer(vocab_size: int, byte_tokenizer):
    """The exported config only reads the end-of-text ids; any vocabulary size will do for timing."""
    if vocab_size == byte_tokenizer.vocab_size:
        return byte_tokenizer

    class Ids:
        eot_id = vocab_size - 1
        stop_ids = frozenset({vocab_size - 1})

    return Ids()

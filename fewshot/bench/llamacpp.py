"""Decoding speed against llama.cpp, the CPU-inference reference, on the same GGUF file.

`fewshot bench decode --vs llamacpp` (and `bench all`, when the optional `bench-llamacpp`
extra is installed) decodes greedily from the same prompt ids, the same number of new
tokens, batch 1 and batch 8, with fewshot and with llama.cpp, interleaved A B A B after a
warm-up. What each side runs, so the ratio can be read:

- llama.cpp runs the file as it is: its quantised weights (SmolLM2's file is Q4_1, about
  4.5 bits per weight) through its hand-written kernels, called through llama-cpp-python's
  low-level API (one `llama_decode` per step, no Python sampling loop of its own).
- fewshot runs what `fewshot import-gguf` makes of the file: the weights dequantised, computing
  in fp32 and/or bf16 (each interleaved in the same rounds), or with --keep-quant the file's
  blocks kept. Decoding one token at batch 1 reads every weight once, so fp32 moves ~7x the
  bytes llama.cpp does, bf16 ~3.5x.
- Batch 8 on llama.cpp is its own batched decoding, as in its `batched` example: the prompt
  is evaluated once for all 8 sequences, then every step is one `llama_decode` holding one
  token per sequence. It is not 8 runs one after another.

The two compute in different precisions, so greedy paths may part after a while: the result
reports how many leading tokens agree rather than demanding equality.
"""

from __future__ import annotations

import ctypes
import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot.bench.timing import interleave, median, pair_ratios, progress_bar
from fewshot.errors import FewshotError
from fewshot.inference.decode import generate
from fewshot.inference.sampling import SamplingOptions

PROMPT = "The three most important things to know about the history of the city are"


def llama_cpp_module():
    """llama-cpp-python, or a one-line error saying how to get it (it is an optional extra)."""
    try:
        import llama_cpp
    except ImportError:
        raise FewshotError("llama.cpp is not installed: `pip install -e '.[bench-llamacpp]'` builds it from source "
                           "(cmake and a C++ compiler needed; a few minutes)") from None
    return llama_cpp


class LlamaCpp:
    """One llama.cpp model and context, for greedy decoding of up to `max_rows` sequences at once."""

    def __init__(self, gguf: Path, context: int, max_rows: int, threads: int) -> None:
        self.lib = lib = llama_cpp_module()
        lib.llama_backend_init()
        lib.llama_log_set(_SILENT, ctypes.c_void_p(0))  # its load log goes to stderr otherwise
        self.model = lib.llama_model_load_from_file(str(gguf).encode(), lib.llama_model_default_params())
        if not self.model:
            raise FewshotError(f"{gguf}: llama.cpp could not load this GGUF file")
        params = lib.llama_context_default_params()
        params.n_ctx = context * max_rows
        params.n_batch = params.n_ubatch = max(context, max_rows)
        params.n_seq_max = max_rows
        params.kv_unified = True  # one cache for all sequences, so they can share the prompt's entries
        params.n_threads = params.n_threads_batch = threads
        self.context = lib.llama_init_from_model(self.model, params)
        if not self.context:
            lib.llama_model_free(self.model)
            raise FewshotError(f"{gguf}: llama.cpp could not create a context of {context} x {max_rows} tokens")
        self.vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))
        self.batch = lib.llama_batch_init(params.n_batch, 0, max_rows)
        self.max_rows = max_rows

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.context)
        self.lib.llama_model_free(self.model)

    def _submit(self, entries: list[tuple[int, int, tuple[int, ...], bool]]) -> None:
        """One llama_decode of (token, position, sequence ids, wants logits) entries."""
        batch = self.batch
        batch.n_tokens = len(entries)
        for i, (token, position, sequences, wants_logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, len(sequences)
            for j, sequence in enumerate(sequences):
                batch.seq_id[i][j] = sequence
            batch.logits[i] = wants_logits
        if self.lib.llama_decode(self.context, batch) != 0:
            raise FewshotError("llama.cpp: llama_decode failed")

    def _argmax(self, index: int) -> int:
        logits = self.lib.llama_get_logits_ith(self.context, index)
        return int(torch.frombuffer((ctypes.c_float * self.vocab).from_address(ctypes.addressof(logits.contents)),
                                    dtype=torch.float32).argmax())

    def logits(self, ids: list[int]) -> torch.Tensor:
        """Next-token logits (len(ids), vocab) of one sequence, evaluated in one llama_decode."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.context), True)
        self._submit([(token, i, (0,), True) for i, token in enumerate(ids)])
        rows = [self.lib.llama_get_logits_ith(self.context, i) for i in range(len(ids))]
        return torch.stack([torch.frombuffer((ctypes.c_float * self.vocab).from_address(ctypes.addressof(row.contents)),
                                             dtype=torch.float32).clone() for row in rows])

    def greedy(self, prompt: list[int], rows: int, tokens: int) -> list[list[int]]:
        """`tokens` greedy tokens for each of `rows` copies of `prompt`."""
        if rows > self.max_rows:
            raise FewshotError(f"llama.cpp context holds {self.max_rows} sequences, asked for {rows}")
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.context), True)
        everyone = tuple(range(rows))
        self._submit([(token, i, everyone, i == len(prompt) - 1) for i, token in enumerate(prompt)])
        first = self._argmax(len(prompt) - 1)  # the same prompt: one distribution for every row
        out = [[first] for _ in range(rows)]
        for step in range(1, tokens):
            self._submit([(out[r][-1], len(prompt) + step - 1, (r,), True) for r in range(rows)])
            for r in range(rows):
                out[r].append(self._argmax(r))
        return out


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _SILENT(level, text, data) -> None:  # noqa: N802 - a C callback kept alive at module level
    return None


@dataclass(frozen=True)
class DecodeVsLlamaCpp:
    batch: int
    tokens: int
    prompt_tokens: int
    threads: int
    fewshot_dtype: str  # fp32 / bf16 (dequantised import), or the file's block format kept (import-gguf --keep-quant)
    fewshot_compiled: bool  # our decoding step compiled (GPT.compile_decoding)
    gguf_types: list[str]
    seconds: float
    llamacpp_seconds: float
    tok_s: float
    llamacpp_tok_s: float
    ratio: float  # ours over theirs in tok/s: > 1 means fewshot is faster
    pair_ratios: list[float]
    agreeing_tokens: int  # leading tokens of row 0 both chose alike

    def to_json(self) -> dict:
        return asdict(self)


def bench_decode_vs_llamacpp(gguf: Path, batches: tuple[int, ...] = (1, 8), tokens: int = 64, repeats: int = 3,
                             warmup: int = 1, dtypes: tuple[str, ...] = ("fp32",), progress: bool = False,
                             compiled: bool = False, keep_quant: bool = False) -> list[DecodeVsLlamaCpp]:
    """fewshot (the file imported, computing in each of `dtypes`) against llama.cpp (the file as
    is), greedy, all of them interleaved in each round: a result per batch size and dtype.

    `compiled`: ours decodes through its compiled step; the warm-up round pays for compiling.
    `keep_quant`: ours keeps the file's blocks (import-gguf --keep-quant), as llama.cpp does;
    those compute in fp32.
    """
    from fewshot.convert.gguf import import_gguf
    from fewshot.inference.lm import load

    gguf = Path(gguf)
    if min(batches, default=0) < 1 or tokens < 1 or repeats < 1:
        raise FewshotError(f"bench: batch sizes, tokens and repeats must be >= 1, got {batches}, {tokens}, {repeats}")
    if not dtypes or (keep_quant and set(dtypes) != {"fp32"}):
        raise FewshotError(f"bench: --keep-quant keeps the file's blocks, which compute in fp32: drop --dtype {','.join(dtypes)}")
    llama_cpp_module()  # fail before the import-gguf work if the extra is missing
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="fewshot-bench-") as scratch:
        run = import_gguf(gguf, Path(scratch) / "run", keep_quant=keep_quant)
        ours = {}
        for dtype in dtypes:
            lm = load(run, dtype=dtype)
            lm.model.compile_decoding(compiled)
            ours[lm.model.config.quant or dtype] = lm
        prompt = lm.tokenizer.encode(PROMPT)
        context = len(prompt) + tokens + 1
        if context > lm.model.config.context:
            raise FewshotError(f"bench: {len(prompt)} prompt + {tokens} new tokens exceed the model's context")
        peer = LlamaCpp(gguf, context, max(batches), threads)
        try:
            return [r for rows in batches for r in _one_batch(ours, peer, prompt, rows, tokens, repeats, warmup, progress)]
        finally:
            peer.close()


def _one_batch(ours: dict, peer: LlamaCpp, prompt: list[int], rows: int, tokens: int, repeats: int, warmup: int,
               progress: bool) -> list[DecodeVsLlamaCpp]:
    outputs: dict[str, list[list[int]]] = {}
    options = SamplingOptions(max_tokens=tokens, temperature=0.0, n=rows, stop_at_eot=False)

    def decode(name: str, lm) -> Callable[[], None]:
        def run() -> None:
            outputs[name] = [list(c.token_ids) for c in generate(lm.model, lm.tokenizer, prompt, options)]
        return run

    def theirs() -> None:
        outputs["llamacpp"] = peer.greedy(prompt, rows, tokens)

    runs = {name: decode(name, lm) for name, lm in ours.items()} | {"llamacpp": theirs}
    seconds = interleave(runs, repeats, warmup, torch.device("cpu"), progress, label=f"decode batch {rows} vs llama.cpp")
    theirs_s = median(seconds["llamacpp"])
    return [DecodeVsLlamaCpp(
        batch=rows, tokens=tokens, prompt_tokens=len(prompt), threads=torch.get_num_threads(), fewshot_dtype=name,
        fewshot_compiled=lm.model.decoding_compiled,
        gguf_types=list((lm.config.source or {}).get("quantization", [])), seconds=median(seconds[name]),
        llamacpp_seconds=theirs_s, tok_s=rows * tokens / median(seconds[name]), llamacpp_tok_s=rows * tokens / theirs_s,
        ratio=theirs_s / median(seconds[name]), pair_ratios=pair_ratios(seconds[name], seconds["llamacpp"]),
        agreeing_tokens=_common_prefix(outputs[name][0], outputs["llamacpp"][0]),
    ) for name, lm in ours.items()]


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# ---------------------------------------------------------------------------- quality

QUALITY_POSITIONS = 512


@dataclass(frozen=True)
class Quality:
    name: str  # "llama.cpp (Q4_1)", "fewshot fp32", "fewshot q4_1 (kept)"
    positions: int
    perplexity: float  # on the text, teacher-forced
    top1_vs_fp32: float  # share of positions whose argmax is fewshot fp32's

    def to_json(self) -> dict:
        return asdict(self)


def quality_vs_llamacpp(gguf: Path, positions: int = QUALITY_POSITIONS) -> list[Quality]:
    """Perplexity on a text and top-1 agreement with the float model, over `positions` positions:
    llama.cpp on the file, and ours dequantised to fp32 and with the file's blocks kept. Ours
    decode the text token by token through the cache, the path decoding takes (the quantised
    kernel sees one row at a time), so the numbers are those of generation."""
    from fewshot.convert.gguf import import_gguf
    from fewshot.data.corpus import shakespeare_documents
    from fewshot.inference.lm import load

    llama_cpp_module()
    with tempfile.TemporaryDirectory(prefix="fewshot-bench-") as scratch:
        float_lm = load(import_gguf(gguf, Path(scratch) / "fp32"))
        kept_lm = load(import_gguf(gguf, Path(scratch) / "kept", keep_quant=True))
        _, play = next(shakespeare_documents())
        ids = float_lm.tokenizer.encode(play)[1000:1001 + positions]  # past the title and cast list
        peer = LlamaCpp(gguf, len(ids), 1, torch.get_num_threads())
        try:
            theirs = peer.logits(ids)
        finally:
            peer.close()
        reference = _stepped_logits(float_lm.model, ids, "fp32, token by token")
        types = "/".join((float_lm.config.source or {}).get("quantization", []))
        rows = [(f"llama.cpp ({types})", theirs), ("fewshot fp32 (dequantised)", reference),
                (f"fewshot {kept_lm.model.config.quant} (kept, int8 activations)", _stepped_logits(kept_lm.model, ids, "kept blocks, token by token"))]
    targets = torch.tensor(ids[1:])
    best = reference[:-1].argmax(-1)
    return [Quality(name, len(ids) - 1, math.exp(F.cross_entropy(logits[:-1], targets).item()),
                    (logits[:-1].argmax(-1) == best).float().mean().item()) for name, logits in rows]


@torch.inference_mode()
def _stepped_logits(model, ids: list[int], label: str) -> torch.Tensor:
    cache = model.new_cache(1, capacity=len(ids))
    rows = []
    with progress_bar(sys.stderr.isatty()) as bar:
        task = bar.add_task(label, total=len(ids))
        for token in ids:
            rows.append(model.step(torch.tensor([[token]]), cache)[0])
            bar.advance(task)
    return torch.cat(rows).float()

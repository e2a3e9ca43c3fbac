"""Text and JSONL in, token shards out.

`prepare` streams a corpus through a tokenizer into raw little-endian uint16 (or uint32)
shards that `np.memmap` reads without parsing, with `meta.json` saying how to read them
(fewshot.data.shards is the read side).
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewshot.data.shards import FORMAT, FORMAT_VERSION, META
from fewshot.errors import FewshotError
from fewshot.files import atomic_write_text, check_creatable, fsync_dir, staging_dir
from fewshot.progress import byte_progress
from fewshot.tokenizer import ByteTokenizer, train_bpe

READ_CHUNK_BYTES = 1 << 18        # big enough for fast reads, small enough to never hold a corpus in RAM
ENCODE_BATCH_CHARS = 2 << 20      # text handed to one encode_batch call (the Rust side runs it in parallel)
MAX_CARRY_CHARS = 16 << 20        # whitespace-free text longer than this is cut anyway (see _last_cut)
SPLIT_BLOCK_TOKENS = 4096         # train/val are assigned per block of the token stream
TOKENIZERS = ("byte", "bpe")

# Invalid UTF-8 bytes come out of the "surrogateescape" decoder as U+DC80..U+DCFF, one per
# byte, which lets one regex pass both count and replace them. Lone surrogates can also
# arrive through JSON "\ud800" escapes; they are not encodable either, so they go the same way.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Searched in the reversed text: a space or newline right after a non-space character.
_CUT_REVERSED = re.compile(r"[ \n](?=\S)")


@dataclass(frozen=True)
class PrepareSummary:
    out: Path
    tokenizer: str
    vocab_size: int
    files: int
    documents: int
    bytes: int
    replaced_bytes: int         # invalid UTF-8 bytes, each replaced by U+FFFD
    tokens_train: int
    tokens_val: int
    shards: int
    unigram_entropy_bits: float  # per token over the train split: the loss of a model that ignores context
    seconds: float

    @property
    def tokens(self) -> int:
        return self.tokens_train + self.tokens_val

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)


# ---------------------------------------------------------------- reading the corpus


def find_input_files(inputs: Sequence[Path], exclude: Sequence[Path] = ()) -> list[Path]:
    """Expand directories (recursively, sorted, hidden entries skipped) into a file list."""
    excluded = [p.resolve() for p in exclude]
    files = []
    for path in map(Path, inputs):
        if not path.exists():
            raise FewshotError(f"{path}: no such file or directory")
        if path.is_dir():
            found = [p for p in _walk(path) if not any(p.resolve().is_relative_to(e) for e in excluded)]
            files.extend(sorted(found))
        else:
            files.append(path)
    if not files:
        raise FewshotError(f"no input files found in {', '.join(map(str, inputs))}; pass text files, .jsonl files or directories holding them")
    return files


def _walk(directory: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = Path(root, name)
            if not name.startswith(".") and path.is_file():
                yield path


class CorpusReader:
    """Streams a corpus as (text piece, ends_document) pairs, counting what it reads.

    Each text file is one document; each line of a .jsonl file is one (its "text" field).
    Iterating again reads the files again, which is how BPE gets its training pass.
    """

    def __init__(self, files: Sequence[Path], chunk_bytes: int = READ_CHUNK_BYTES,
                 on_bytes: Callable[[int], None] = lambda n: None):
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        self.files = list(files)
        self.chunk_bytes = chunk_bytes
        self.on_bytes = on_bytes
        self.bytes = self.replaced_bytes = self.documents = 0

    def __iter__(self) -> Iterator[tuple[str, bool]]:
        self.bytes = self.replaced_bytes = self.documents = 0
        for path in self.files:
            documents = self._jsonl_documents(path) if path.suffix.lower() == ".jsonl" else [self._text_chunks(path)]
            for chunks in documents:
                self.documents += 1
                yield from _mark_last(_cut_pieces(chunks))

    def _clean(self, text: str) -> str:
        text, replaced = _SURROGATE.subn("\ufffd", text)
        self.replaced_bytes += replaced
        return text

    def _read(self, n: int) -> None:
        self.bytes += n
        self.on_bytes(n)

    def _text_chunks(self, path: Path) -> Iterator[str]:
        # The incremental decoder holds back a multi-byte character split across two reads;
        # "utf-8-sig" drops a leading byte-order mark, which editors add and nobody means as text.
        decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="surrogateescape")
        with open(path, "rb") as f:
            while chunk := f.read(self.chunk_bytes):
                self._read(len(chunk))
                yield self._clean(decoder.decode(chunk))
        yield self._clean(decoder.decode(b"", final=True))

    def _jsonl_documents(self, path: Path) -> Iterator[Iterator[str]]:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                self._read(len(line))
                if number == 1:
                    line = line.removeprefix(codecs.BOM_UTF8)
                if line.strip():
                    yield iter([self._clean(_jsonl_text(line, path, number))])


def _jsonl_text(line: bytes, path: Path, number: int) -> str:
    try:
        record = json.loads(line.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as e:
        raise FewshotError(f"{path}:{number}: not valid JSON ({e.msg}); each line must be an object like {{\"text\": \"...\"}}") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise FewshotError(f"{path}:{number}: expected an object with a string field \"text\"")
    return record["text"]


def _last_cut(text: str) -> int:
    """The last index where `text` can be split without changing its tokens, or 0.

    A BPE pre-tokenizer (GPT-2's regex, Metaspace) never joins a non-space character with
    the whitespace that follows it, so cutting between the two gives the same tokens as
    encoding the whole text. That is what lets a document of any size stream in pieces.
    """
    match = _CUT_REVERSED.search(text[::-1])
    return len(text) - 1 - match.start() if match else 0


def _cut_pieces(chunks: Iterable[str]) -> Iterator[str]:
    carry = ""
    for chunk in chunks:
        carry += chunk
        cut = _last_cut(carry) if len(carry) < MAX_CARRY_CHARS else len(carry)
        if cut:
            yield carry[:cut]
            carry = carry[cut:]
    yield carry


def _mark_last(pieces: Iterator[str]) -> Iterator[tuple[str, bool]]:
    previous = next(pieces)
    for piece in pieces:
        if previous:
            yield previous, False
        previous = piece
    yield previous, True   # even when empty: an empty document still ends with end-of-text


# ---------------------------------------------------------------- writing shards


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype("<u2" if vocab_size <= 1 << 16 else "<u4")


class _ShardWriter:
    """Appends tokens to {split}_000000.bin, {split}_000001.bin, ... of at most shard_tokens each."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int, vocab_size: int):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.tokens = 0
        self.counts = np.zeros(vocab_size, dtype=np.int64)
        self._file = None

    def write(self, tokens: np.ndarray) -> None:
        self.tokens += len(tokens)
        self.counts += np.bincount(tokens, minlength=len(self.counts))
        while len(tokens):
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._next_shard()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            self._file.write(tokens[:room].astype(self.dtype, copy=False).tobytes())
            self.shards[-1]["tokens"] += len(tokens[:room])
            tokens = tokens[room:]

    def _next_shard(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):06d}.bin"
        self._file = open(self.directory / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def is_val_block(block: np.ndarray, val_fraction: float) -> np.ndarray:
    """Block k of the token stream goes to val when floor(k * f) ticks up.

    That sends exactly a val_fraction share of blocks to val, spread evenly through the
    corpus (so one big file splits too), with no RNG and no look-ahead.
    """
    return np.floor((block + 1) * val_fraction) > np.floor(block * val_fraction)


class _Splitter:
    """Routes the token stream to train and val writers, one block at a time.

    It holds back the last complete block and the partial one after it: if the corpus ends
    before any block went to val, the tail of what is held becomes val, so a tiny corpus
    still gets a validation split.
    """

    def __init__(self, train: _ShardWriter, val: _ShardWriter, val_fraction: float, block_tokens: int):
        self.train, self.val = train, val
        self.val_fraction, self.block_tokens = val_fraction, block_tokens
        self.blocks_written = 0
        self.held = np.zeros(0, dtype=np.int64)

    def write(self, tokens: np.ndarray) -> None:
        self.held = np.concatenate([self.held, tokens])
        ready = len(self.held) // self.block_tokens - 1
        if ready > 0:
            self._route(self.held[: ready * self.block_tokens])
            self.held = self.held[ready * self.block_tokens:]

    def finish(self) -> None:
        blocks = np.arange(self.blocks_written, self.blocks_written + math.ceil(len(self.held) / self.block_tokens))
        if self.val.tokens or is_val_block(blocks, self.val_fraction).any():
            self._route(self.held)
        else:
            total = self.train.tokens + len(self.held)
            keep = 0 if self.train.tokens else 1   # train must not end up empty either
            n_val = min(max(1, round(total * self.val_fraction)), len(self.held) - keep)
            self.train.write(self.held[: len(self.held) - n_val])
            self.val.write(self.held[len(self.held) - n_val:])
        self.held = self.held[:0]

    def _route(self, tokens: np.ndarray) -> None:
        n_blocks = math.ceil(len(tokens) / self.block_tokens)
        to_val = is_val_block(np.arange(self.blocks_written, self.blocks_written + n_blocks), self.val_fraction)
        # Write runs of consecutive blocks with the same destination in one call.
        starts = [0, *(np.flatnonzero(np.diff(to_val)) + 1), n_blocks]
        for begin, end in zip(starts[:-1], starts[1:]):
            writer = self.val if to_val[begin] else self.train
            writer.write(tokens[begin * self.block_tokens: end * self.block_tokens])
        self.blocks_written += n_blocks


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


# ---------------------------------------------------------------- prepare


def prepare(
    inputs: Sequence[Path],
    out: Path,
    tokenizer: str = "byte",
    vocab_size: int = 8192,
    val_fraction: float = 0.05,
    shard_tokens: int = 2**27,
    progress: bool = True,
    *,
    overwrite: bool = False,
    block_tokens: int = SPLIT_BLOCK_TOKENS,
    chunk_bytes: int = READ_CHUNK_BYTES,
    trained=None,
    in_order: bool = False,
) -> PrepareSummary:
    """Tokenize text/JSONL files into train/val token shards in `out`.

    An end-of-text token follows every document. The dataset appears in `out` only once it
    is complete: it is built in a hidden temp directory beside `out` and renamed into place.
    `trained`: a tokenizer already built (the curation pipeline trains BPE on what it keeps,
    before it plans the mixture in that tokenizer's tokens); `tokenizer` then names its kind.
    `in_order`: the documents' order is part of the data (a curriculum), so training reads the
    train split from start to end over its steps instead of at random (`meta.json` says so).
    """
    started = time.perf_counter()
    out = Path(out)
    _check_options(tokenizer, val_fraction, shard_tokens, block_tokens)
    check_out_dir(out, overwrite)
    files = find_input_files(inputs, exclude=[out])
    total_bytes = sum(f.stat().st_size for f in files)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out)
    try:
        with byte_progress(progress) as bar:
            def reader(description: str) -> CorpusReader:
                task = bar.add_task(description, total=total_bytes)
                return CorpusReader(files, chunk_bytes, on_bytes=lambda n: bar.advance(task, n))

            if trained is not None:
                tok = trained
            else:
                tok = ByteTokenizer() if tokenizer == "byte" else _train_bpe(reader("training BPE"), vocab_size)
            corpus = reader("tokenizing")
            train, val, text_tokens = _write_shards(corpus, tok, tmp, val_fraction, shard_tokens, block_tokens)
        if text_tokens == 0:
            raise FewshotError(f"the corpus in {', '.join(map(str, inputs))} is empty (no text in {len(files)} file(s))")
        tok.save(tmp)
        meta = _meta(tok, corpus, files, train, val, val_fraction, block_tokens)
        if in_order:
            meta["in_order"] = True
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PrepareSummary(
        out=out, tokenizer=tokenizer, vocab_size=tok.vocab_size, files=len(files), documents=corpus.documents,
        bytes=corpus.bytes, replaced_bytes=corpus.replaced_bytes, tokens_train=train.tokens, tokens_val=val.tokens,
        shards=len(train.shards) + len(val.shards), unigram_entropy_bits=meta["unigram_entropy_bits"],
        seconds=time.perf_counter() - started,
    )


def add_loss_mask(out: Path, mask: np.ndarray) -> None:
    """Give the prepared dataset in `out` a loss mask: one byte per token of its stream (the
    documents in order, end-of-text tokens included), 1 where training learns to predict the
    token. It is split into train and val block by block as the tokens were, written beside
    their shards as {split}-loss-mask_000000.bin, ..., and listed in meta.json ("loss_mask")."""
    out = Path(out)
    meta = json.loads((out / META).read_text())
    splits = meta["splits"]
    if len(mask) != splits["train"]["tokens"] + splits["val"]["tokens"]:
        raise FewshotError(f"a loss mask of {len(mask):,} tokens for {out}, which holds "
                           f"{splits['train']['tokens'] + splits['val']['tokens']:,}")
    if mask.size and mask.max() > 1:
        raise FewshotError("a loss mask holds 0 (not learned) and 1 (learned) only")
    # Mask shard i beside token shard i, of the same length.
    shard_tokens = max([shard["tokens"] for split in splits.values() for shard in split["shards"]] + [1])
    train = _ShardWriter(out, "train-loss-mask", np.dtype("u1"), shard_tokens, 2)
    val = _ShardWriter(out, "val-loss-mask", np.dtype("u1"), shard_tokens, 2)
    splitter = _Splitter(train, val, meta["split"]["val_fraction"], meta["split"]["block_tokens"])
    try:
        for begin in range(0, len(mask), 1 << 22):
            splitter.write(mask[begin:begin + (1 << 22)].astype(np.int64))
        if len(mask):
            splitter.finish()
    finally:
        train.close()
        val.close()
    meta["loss_mask"] = {"train": {"tokens": train.tokens, "shards": train.shards},
                         "val": {"tokens": val.tokens, "shards": val.shards}}
    atomic_write_text(out / META, json.dumps(meta, indent=2) + "\n")


def _check_options(tokenizer: str, val_fraction: float, shard_tokens: int, block_tokens: int) -> None:
    if tokenizer not in TOKENIZERS:
        raise FewshotError(f"unknown tokenizer {tokenizer!r}; choose one of: {', '.join(TOKENIZERS)}")
    if not 0 < val_fraction < 1:
        raise FewshotError(f"val fraction must be between 0 and 1 (got {val_fraction})")
    if shard_tokens < 1 or block_tokens < 1:
        raise FewshotError("shard and block sizes must be at least 1 token")


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an output directory that prepare may not fill (a file, a non-empty non-dataset, ...)."""
    if out.exists() and not out.is_dir():
        raise FewshotError(f"{out} is a file; pick a directory for the prepared data")
    check_creatable(out)
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FewshotError(f"{out} already exists and is not empty; pick another output directory or pass --overwrite")
    if not (out / META).is_file():
        # --overwrite replaces an older dataset, never an arbitrary directory.
        raise FewshotError(f"{out} is not a prepared dataset (no {META}); refusing to replace it even with --overwrite")


def _train_bpe(corpus: CorpusReader, vocab_size: int):
    return train_bpe((text for text, _ in corpus), vocab_size)


def _write_shards(corpus: CorpusReader, tok, directory: Path, val_fraction: float, shard_tokens: int,
                  block_tokens: int) -> tuple[_ShardWriter, _ShardWriter, int]:
    dtype = _dtype_for(tok.vocab_size)
    train = _ShardWriter(directory, "train", dtype, shard_tokens, tok.vocab_size)
    val = _ShardWriter(directory, "val", dtype, shard_tokens, tok.vocab_size)
    splitter = _Splitter(train, val, val_fraction, block_tokens)
    text_tokens = 0
    try:
        for batch in _batches(corpus, ENCODE_BATCH_CHARS):
            ids = tok.encode_batch([text for text, _ in batch])
            text_tokens += sum(map(len, ids))
            splitter.write(_with_eot(ids, [ends for _, ends in batch], tok.eot_id))
        if text_tokens:
            splitter.finish()
    finally:
        train.close()
        val.close()
    return train, val, text_tokens


def _batches(pieces: Iterable[tuple[str, bool]], max_chars: int) -> Iterator[list[tuple[str, bool]]]:
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[0])
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _with_eot(ids: list[list[int]], ends_document: list[bool], eot_id: int) -> np.ndarray:
    parts = []
    for piece, ends in zip(ids, ends_document):
        parts.append(np.asarray(piece, dtype=np.int64))
        if ends:
            parts.append(np.array([eot_id], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _meta(tok, corpus: CorpusReader, files: list[Path], train: _ShardWriter, val: _ShardWriter,
          val_fraction: float, block_tokens: int) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokenizer": tok.spec(),
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": train.dtype.name,
        "byte_order": "little",
        "files": len(files),
        "documents": corpus.documents,
        "bytes": corpus.bytes,
        "replaced_bytes": corpus.replaced_bytes,
        "split": {"val_fraction": val_fraction, "block_tokens": block_tokens},
        "unigram_entropy_bits": _entropy_bits(train.counts),
        "splits": {
            "train": {"tokens": train.tokens, "shards": train.shards},
            "val": {"tokens": val.tokens, "shards": val.shards},
        },
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    # Two renames: the old dataset (if --overwrite) moves aside first, so `out` is at every
    # moment either the complete old dataset, absent, or the complete new one.
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / "data")
    tmp.rename(out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old)

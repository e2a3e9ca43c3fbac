"""Data preparation throughput: `fewshot prepare` with the byte tokenizer and with BPE.

The corpus is the default one (Shakespeare plus GPT-3 task text, fewshot.data.corpus), cycled
to the requested size, so every run tokenizes the same bytes. Beside the end-to-end rate
(read, clean, tokenize, split, write shards; BPE also trains its vocabulary) stands the
bare `tokenizers` encode_batch rate with the very tokenizer prepare trained: the peer that
shows what our pipeline adds around the Rust encoder.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fewshot.errors import FewshotError

PART_BYTES = 1 << 20  # the corpus is written as files of about 1 MB, as a real corpus would be


@dataclass(frozen=True)
class PrepareBench:
    mb: float  # corpus size, 1e6 bytes
    vocab_size: int  # of the BPE
    byte_seconds: float
    byte_mb_s: float
    bpe_seconds: float  # train + encode + shard
    bpe_mb_s: float
    bpe_tokens: int
    encode_seconds: float  # bare tokenizers.encode_batch, same tokenizer, same text
    encode_mb_s: float
    bpe_ratio_vs_encode: float  # bpe_mb_s / encode_mb_s (< 1: what training and sharding cost)

    def to_json(self) -> dict:
        return asdict(self)


def bench_prepare(mb: float = 50, vocab_size: int = 8192, progress: bool = False) -> PrepareBench:
    from tokenizers import Tokenizer as HFTokenizer

    from fewshot.data.prepare import ENCODE_BATCH_CHARS, prepare
    from fewshot.tokenizer import TOKENIZER_FILE

    if mb <= 0:
        raise FewshotError(f"--mb must be > 0, got {mb}")
    with tempfile.TemporaryDirectory(prefix="fewshot-bench-prepare-") as tmp:
        root = Path(tmp)
        text_files = write_corpus(root / "text", int(mb * 1e6))
        size = sum(f.stat().st_size for f in text_files)
        started = time.perf_counter()
        prepare([root / "text"], root / "byte", tokenizer="byte", progress=progress)
        byte_seconds = time.perf_counter() - started
        started = time.perf_counter()
        summary = prepare([root / "text"], root / "bpe", tokenizer="bpe", vocab_size=vocab_size, progress=progress)
        bpe_seconds = time.perf_counter() - started
        tokenizer = HFTokenizer.from_file(str(root / "bpe" / TOKENIZER_FILE))
        texts = [f.read_text(encoding="utf-8") for f in text_files]
        started = time.perf_counter()
        for text in texts:
            tokenizer.encode_batch(_pieces(text, ENCODE_BATCH_CHARS // 64))
        encode_seconds = time.perf_counter() - started
    mb_real = size / 1e6
    return PrepareBench(mb=mb_real, vocab_size=vocab_size, byte_seconds=byte_seconds, byte_mb_s=mb_real / byte_seconds,
                        bpe_seconds=bpe_seconds, bpe_mb_s=mb_real / bpe_seconds, bpe_tokens=summary.tokens,
                        encode_seconds=encode_seconds, encode_mb_s=mb_real / encode_seconds,
                        bpe_ratio_vs_encode=(mb_real / bpe_seconds) / (mb_real / encode_seconds))


def write_corpus(directory: Path, size: int) -> list[Path]:
    """About `size` bytes of the default corpus, cycled, in ~1 MB text files."""
    from fewshot.tasks.gpt3.corpus import write_default_corpus

    source = write_default_corpus(directory.parent / "default-corpus")
    text = "\n".join(f.read_text(encoding="utf-8") for f in source)
    if not text:
        raise FewshotError("the default corpus is empty")
    directory.mkdir(parents=True)
    files, written, offset = [], 0, 0
    while written < size:
        part = []
        part_size = 0
        while part_size < min(PART_BYTES, size - written):
            piece = text[offset: offset + min(PART_BYTES, size - written - part_size)]
            offset = (offset + len(piece)) % len(text)
            part.append(piece)
            part_size += len(piece.encode("utf-8"))
        path = directory / f"part_{len(files):04d}.txt"
        path.write_text("".join(part), encoding="utf-8")
        files.append(path)
        written += part_size
    return files


def _pieces(text: str, size: int) -> list[str]:
    return [text[i: i + size] for i in range(0, len(text), size)]

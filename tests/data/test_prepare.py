import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fewshot.data.prepare as data_module
from fewshot.data.shards import TokenData
from fewshot.data.sampling import BatchSampler, StepSampler, fixed_batches
from fewshot.data.prepare import add_loss_mask, is_val_block, prepare
from fewshot.errors import FewshotError
from fewshot.tokenizer import ByteTokenizer

EOT = ByteTokenizer().eot_id
FAST = settings(max_examples=25, deadline=None)


def write_files(root: Path, files: dict[str, bytes | str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def full_stream(data: TokenData, split=None) -> np.ndarray:
    """Reassemble the original token stream (or, with split=data.loss_mask, its loss mask) from
    train and val using the documented block rule."""
    split = split or data.split
    train, val = (np.asarray(split(s).window(0, len(split(s)))) for s in ("train", "val"))
    block, fraction = data.meta["split"]["block_tokens"], data.meta["split"]["val_fraction"]
    n_blocks = math.ceil((len(train) + len(val)) / block)
    to_val = is_val_block(np.arange(n_blocks), fraction)
    if not to_val.any():   # tiny corpus: val is the tail of the stream
        return np.concatenate([train, val])
    parts, used = [], {True: 0, False: 0}
    for k in range(n_blocks):
        source = val if to_val[k] else train
        parts.append(source[used[bool(to_val[k])]: used[bool(to_val[k])] + block])
        used[bool(to_val[k])] += block
    return np.concatenate(parts)


def expected_stream(documents: list[str], tokenizer) -> list[int]:
    return [t for doc in documents for t in [*tokenizer.encode(doc), tokenizer.eot_id]]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_files(tmp_path / "corpus", {
        "a.txt": "Hello world.\nSecond line.\n",
        "bad.txt": b"ab\xffcd\xfe\xfe \xc3\xa9 end\xe2\x82",   # 3 stray bytes + a truncated 3-byte char (2 bytes)
        "docs.jsonl": '\ufeff{"text": "first jsonl doc"}\n\n{"text": "second \\u00e9 doc", "id": 2}\n',
        "sub/deep/b.md": "\ufeffÜnïcødé ✓ nested\n",   # a byte-order mark is not text
        ".hidden.txt": "never read",
        ".git/config": "never read",
    })


CORPUS_DOCS = [
    "Hello world.\nSecond line.\n",
    "ab\ufffdcd\ufffd\ufffd é end\ufffd\ufffd",
    "first jsonl doc",
    "second é doc",
    "Ünïcødé ✓ nested\n",
]


def test_prepare_streams_documents_in_sorted_order_with_eot(corpus, tmp_path):
    summary = prepare([corpus], tmp_path / "out", progress=False)
    data = TokenData.open(tmp_path / "out")
    assert full_stream(data).tolist() == expected_stream(CORPUS_DOCS, ByteTokenizer())
    assert (summary.files, summary.documents) == (4, 5)
    assert summary.replaced_bytes == 5
    assert summary.tokens_train + summary.tokens_val == sum(len(d.encode()) + 1 for d in CORPUS_DOCS)
    assert summary.tokens_val > 0 and summary.tokens_train > 0
    assert summary.bytes == sum((corpus / name).stat().st_size for name in ["a.txt", "bad.txt", "docs.jsonl", "sub/deep/b.md"])


def test_shards_decode_back_to_text(corpus, tmp_path):
    prepare([corpus], tmp_path / "out", progress=False)
    data = TokenData.open(tmp_path / "out")
    stream = full_stream(data).tolist()
    assert stream[-1] == EOT
    documents, start = [], 0
    for end in [i for i, t in enumerate(stream) if t == EOT]:
        documents.append(data.tokenizer.decode(stream[start:end]))
        start = end + 1
    assert documents == CORPUS_DOCS


def test_meta_describes_shards(corpus, tmp_path):
    prepare([corpus], tmp_path / "out", progress=False, shard_tokens=16)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["eot_id"] == EOT and meta["tokenizer"] == ByteTokenizer().spec()
    for split in ("train", "val"):
        shards = meta["splits"][split]["shards"]
        assert sum(s["tokens"] for s in shards) == meta["splits"][split]["tokens"]
        for shard in shards:
            assert 0 < shard["tokens"] <= 16
            assert np.fromfile(tmp_path / "out" / shard["file"], dtype="<u2").size == shard["tokens"]
    assert len(meta["splits"]["train"]["shards"]) > 1


def test_window_crosses_shard_boundaries(corpus, tmp_path):
    prepare([corpus], tmp_path / "small", progress=False, shard_tokens=7)
    prepare([corpus], tmp_path / "big", progress=False)
    small, big = TokenData.open(tmp_path / "small").split("train"), TokenData.open(tmp_path / "big").split("train")
    assert len(small) == len(big)
    for start, length in [(0, len(big)), (5, 9), (6, 1), (7, 0), (len(big) - 3, 3)]:
        assert small.window(start, length).tolist() == big.window(start, length).tolist()
    with pytest.raises(IndexError):
        small.window(len(small) - 1, 2)


def test_unigram_entropy_is_over_train_tokens(corpus, tmp_path):
    summary = prepare([corpus], tmp_path / "out", progress=False)
    train = TokenData.open(tmp_path / "out").split("train")
    counts = np.bincount(np.asarray(train.window(0, len(train))))
    p = counts[counts > 0] / counts.sum()
    assert summary.unigram_entropy_bits == pytest.approx(float(-(p * np.log2(p)).sum()))


@FAST
@given(docs=st.lists(st.text(min_size=0, max_size=40), min_size=1, max_size=5), chunk=st.integers(1, 9))
def test_chunk_boundaries_do_not_change_the_text(docs, chunk):
    # Multi-byte characters split across reads must decode whole, whatever the chunk size.
    docs = [d.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for d in docs]   # st.text may make lone surrogates
    if not "".join(docs):
        docs[0] = "x"
    with tempfile.TemporaryDirectory() as tmp:
        root = write_files(Path(tmp) / "in", {f"{i:02d}.txt": d for i, d in enumerate(docs)})
        summary = prepare([root], Path(tmp) / "out", progress=False, chunk_bytes=chunk)
        assert summary.replaced_bytes == 0
        assert full_stream(TokenData.open(Path(tmp) / "out")).tolist() == expected_stream(docs, ByteTokenizer())


@FAST
@given(raw=st.binary(min_size=1, max_size=60), chunk=st.integers(1, 8))
def test_each_invalid_byte_becomes_one_replacement_whatever_the_chunking(raw, chunk):
    raw = b"a" + raw   # never an empty corpus, and no byte-order mark
    # The spec, stated with Python's own decoder: invalid bytes escape one by one.
    escaped = raw.decode("utf-8", "surrogateescape")
    invalid = sum(0xDC80 <= ord(c) <= 0xDCFF for c in escaped)
    expected = "".join("\ufffd" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in escaped)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_files(Path(tmp) / "in", {"x.txt": raw})
        summary = prepare([root], Path(tmp) / "out", progress=False, chunk_bytes=chunk)
        assert summary.replaced_bytes == invalid
        assert full_stream(TokenData.open(Path(tmp) / "out")).tolist() == expected_stream([expected], ByteTokenizer())


@FAST
@given(n_tokens=st.integers(2, 400), block=st.integers(1, 64), val_fraction=st.floats(0.01, 0.9))
def test_split_is_blockwise_and_never_leaves_a_split_empty(n_tokens, block, val_fraction):
    text = "".join(chr(97 + i % 26) for i in range(n_tokens - 1))   # + 1 end-of-text = n_tokens
    with tempfile.TemporaryDirectory() as tmp:
        root = write_files(Path(tmp) / "in", {"one.txt": text})
        summary = prepare([root], Path(tmp) / "out", progress=False, val_fraction=val_fraction, block_tokens=block)
        data = TokenData.open(Path(tmp) / "out")
        assert summary.tokens_train + summary.tokens_val == n_tokens
        assert summary.tokens_train > 0 and summary.tokens_val > 0
        assert full_stream(data).tolist() == expected_stream([text], ByteTokenizer())
        blocks = np.arange(math.ceil(n_tokens / block))
        to_val = is_val_block(blocks, val_fraction)
        if to_val.any():
            sizes = np.minimum(block, n_tokens - blocks * block)
            assert summary.tokens_val == sizes[to_val].sum()


def test_val_blocks_are_spread_evenly():
    blocks = is_val_block(np.arange(100), 0.05)
    assert np.flatnonzero(blocks).tolist() == [19, 39, 59, 79, 99]


def test_bpe_streaming_gives_the_same_tokens_as_whole_documents(tmp_path):
    docs = [
        "To be, or not to be: that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 5,
        "  Leading spaces,\ttabs\t\tand  double  spaces  \n\n\nblank lines — and ünïcødé ✓✓ too.  ",
        "wordwithoutanyspacesatallthatislongerthanachunk" * 3,
    ]
    root = write_files(tmp_path / "in", {f"{i}.txt": d for i, d in enumerate(docs)} | {"z.jsonl": json.dumps({"text": docs[0]}) + "\n"})
    summary = prepare([root], tmp_path / "out", tokenizer="bpe", vocab_size=300, progress=False, chunk_bytes=16)
    data = TokenData.open(tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    assert data.tokenizer.vocab_size == summary.vocab_size
    assert full_stream(data).tolist() == expected_stream([*docs, docs[0]], data.tokenizer)


# ---------------------------------------------------------------- errors and atomicity


def test_missing_input_is_a_user_error(tmp_path):
    with pytest.raises(FewshotError, match="no such file"):
        prepare([tmp_path / "nope.txt"], tmp_path / "out", progress=False)


def test_directory_with_only_hidden_files_has_no_inputs(tmp_path):
    root = write_files(tmp_path / "in", {".secret.txt": "x", ".cache/a.txt": "y"})
    with pytest.raises(FewshotError, match="no input files"):
        prepare([root], tmp_path / "out", progress=False)


def test_empty_corpus_is_a_user_error(tmp_path):
    root = write_files(tmp_path / "in", {"a.txt": "", "b.jsonl": '{"text": ""}\n'})
    with pytest.raises(FewshotError, match="empty"):
        prepare([root], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('{"txt": "x"}', 'field "text"'),
    ('{"text": 3}', 'field "text"'),
    ('["text"]', 'field "text"'),
])
def test_bad_jsonl_names_file_and_line(tmp_path, line, message):
    root = write_files(tmp_path / "in", {"d.jsonl": '{"text": "ok"}\n\n' + line + "\n"})
    with pytest.raises(FewshotError, match=message) as info:
        prepare([root], tmp_path / "out", progress=False)
    assert "d.jsonl:3:" in str(info.value) and "\n" not in str(info.value)


def test_existing_output_is_never_clobbered(corpus, tmp_path):
    out = write_files(tmp_path / "out", {"precious.txt": "keep me"})
    with pytest.raises(FewshotError, match="--overwrite"):
        prepare([corpus], out, progress=False)
    with pytest.raises(FewshotError, match="not a prepared dataset"):
        prepare([corpus], out, progress=False, overwrite=True)
    assert (out / "precious.txt").read_text() == "keep me"


def test_overwrite_replaces_a_prepared_dataset(corpus, tmp_path):
    prepare([corpus], tmp_path / "out", progress=False)
    (corpus / "more.txt").write_text("more text")
    summary = prepare([corpus], tmp_path / "out", progress=False, overwrite=True)
    assert summary.documents == 6
    assert TokenData.open(tmp_path / "out").meta["documents"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]   # no temp or old dirs left


def test_output_inside_the_input_directory_is_not_read(corpus):
    prepare([corpus], corpus / "prepared", progress=False)
    summary = prepare([corpus], corpus / "prepared", progress=False, overwrite=True)
    assert summary.documents == 5


def test_a_crash_leaves_no_dataset_behind(corpus, tmp_path, monkeypatch):
    def crash(*args):
        raise RuntimeError("simulated crash")
    monkeypatch.setattr(data_module, "_with_eot", crash)
    with pytest.raises(RuntimeError):
        prepare([corpus], tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


@pytest.mark.parametrize("kwargs", [{"tokenizer": "words"}, {"val_fraction": 0.0}, {"val_fraction": 1.0}])
def test_bad_options_are_user_errors(corpus, tmp_path, kwargs):
    with pytest.raises(FewshotError):
        prepare([corpus], tmp_path / "out", progress=False, **kwargs)


def test_open_rejects_what_is_not_a_prepared_dataset(corpus, tmp_path):
    with pytest.raises(FewshotError, match="not a prepared dataset"):
        TokenData.open(tmp_path)
    (tmp_path / "meta.json").write_text("{truncated")
    with pytest.raises(FewshotError, match="corrupt"):
        TokenData.open(tmp_path)
    prepare([corpus], tmp_path / "out", progress=False)
    shard = tmp_path / "out" / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(FewshotError, match="expected"):
        TokenData.open(tmp_path / "out").split("train")


# ---------------------------------------------------------------- batches


class Positions:
    """A split whose token at position i is i, so a window shows where it came from."""

    name = "positions"

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def window(self, start: int, length: int) -> np.ndarray:
        assert 0 <= start and start + length <= self.n
        return np.arange(start, start + length)


@FAST
@given(n=st.integers(2, 500), batch=st.integers(1, 8), context=st.integers(1, 64), seed=st.integers(0, 2**32))
def test_batches_are_shifted_windows_in_range(n, batch, context, seed):
    if n < context + 1:
        with pytest.raises(FewshotError, match="too long"):
            BatchSampler(Positions(n), batch, context, seed)
        return
    x, y = BatchSampler(Positions(n), batch, context, seed).next_batch()
    assert x.shape == y.shape == (batch, context) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)                                   # y is x shifted by one token
    assert torch.equal(x - x[:, :1], torch.arange(context).expand(batch, -1))   # contiguous windows
    assert x.min() >= 0 and y.max() <= n - 1


def test_same_seed_same_batches_and_ranks_differ():
    a, b = BatchSampler(Positions(10_000), 4, 8, seed=3), BatchSampler(Positions(10_000), 4, 8, seed=3)
    other_rank = BatchSampler(Positions(10_000), 4, 8, seed=3, rank=1)
    other_seed = BatchSampler(Positions(10_000), 4, 8, seed=4)
    for _ in range(3):
        xa, xb = a.next_batch()[0], b.next_batch()[0]
        assert torch.equal(xa, xb)
        assert not torch.equal(xa, other_rank.next_batch()[0])
        assert not torch.equal(xa, other_seed.next_batch()[0])


@FAST
@given(k=st.integers(0, 20), seed=st.integers(0, 1000), rank=st.integers(0, 3))
def test_resume_from_state_dict_gives_the_same_next_batches(k, seed, rank):
    original = BatchSampler(Positions(1000), 2, 16, seed=seed, rank=rank)
    for _ in range(k):
        original.next_batch()
    state = original.state_dict()
    assert state == {"seed": seed, "rank": rank, "position": k}
    resumed = BatchSampler(Positions(1000), 2, 16, seed=12345, rank=rank)
    resumed.load_state_dict(state)
    for _ in range(3):
        assert all(torch.equal(p, q) for p, q in zip(original.next_batch(), resumed.next_batch()))


@FAST
@given(n=st.integers(40, 5000), context=st.integers(1, 32), steps=st.integers(1, 60), batch=st.integers(1, 5),
       seed=st.integers(0, 100))
def test_an_in_order_sampler_moves_through_the_split_once_over_its_steps(n, context, steps, batch, seed):
    sampler = BatchSampler(Positions(n), batch, context, seed, in_order=steps)
    starts = n - context  # where a window can start: 0 .. starts - 1
    for i in range(steps + 3):
        first = sampler.next_batch()[0][:, 0].double()  # Positions: a window's first token is where it starts
        part = min(i, steps - 1)  # the i-th of `steps` equal parts; the last one after the run's steps
        assert (first > part * starts / steps - 1).all() and (first < (part + 1) * starts / steps + 1).all(), (i, first)
    resumed = BatchSampler(Positions(n), batch, context, seed, in_order=steps)
    resumed.load_state_dict(sampler.state_dict())
    assert torch.equal(resumed.next_batch()[0], sampler.next_batch()[0])


def test_a_step_count_refitted_by_the_clock_respreads_an_in_order_read():
    planned, refitted = StepSampler(Positions(10_000), 2, 1, 8, seed=0, in_order=100), StepSampler(Positions(10_000), 2, 1, 8, seed=0, in_order=100)
    refitted.plan(50)
    for _ in range(49):
        planned.next_step(), refitted.next_step()
    # Step 49 of 50 reads the last part; of 100, the middle.
    assert planned.next_step()[0][0][:, 0].max() < 5_000 <= refitted.next_step()[0][0][:, 0].min()
    anywhere = StepSampler(Positions(10_000), 2, 1, 8, seed=0)
    anywhere.plan(50)  # random order ignores the plan
    assert anywhere.global_batches.in_order is None
    with pytest.raises(FewshotError, match="at least one batch"):
        BatchSampler(Positions(100), 2, 8, seed=0, in_order=0)


def test_sampler_reads_real_token_data(corpus, tmp_path):
    prepare([corpus], tmp_path / "out", progress=False, shard_tokens=5)
    train = TokenData.open(tmp_path / "out").split("train")
    stream = np.asarray(train.window(0, len(train)))
    x, y = BatchSampler(train, 8, 10, seed=0).next_batch()
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        starts = [s for s in range(len(stream) - 10) if (stream[s: s + 10] == row_x).all()]
        assert starts and (stream[starts[0] + 1: starts[0] + 11] == row_y).all()


def test_fixed_batches_repeat_and_context_too_long(corpus, tmp_path):
    prepare([corpus], tmp_path / "out", progress=False)
    val = TokenData.open(tmp_path / "out").split("val")
    first, second = fixed_batches(val, 2, 3, n=4, seed=1), fixed_batches(val, 2, 3, n=4, seed=1)
    assert len(first) == 4
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    with pytest.raises(FewshotError, match="context .* too long for the val split"):
        fixed_batches(val, 2, len(val), n=1, seed=1)


@FAST
@given(docs=st.lists(st.text("abc \n", min_size=1, max_size=60), min_size=1, max_size=12), block=st.integers(1, 32),
       val_fraction=st.floats(0.05, 0.6), seed=st.integers(0, 2**32 - 1))
def test_a_loss_mask_is_split_as_the_tokens_were(docs, block, val_fraction, seed):
    with tempfile.TemporaryDirectory() as tmp:
        root = write_files(Path(tmp) / "in", {"docs.jsonl": "".join(json.dumps({"text": d}) + "\n" for d in docs)})
        out = Path(tmp) / "out"
        prepare([root], out, progress=False, val_fraction=val_fraction, block_tokens=block)
        data = TokenData.open(out)
        assert data.loss_mask("train") is None  # data without one learns every token
        stream = full_stream(data)
        mask = np.random.default_rng(seed).integers(0, 2, size=len(stream), dtype=np.uint8)
        add_loss_mask(out, mask)
        data = TokenData.open(out)
        assert np.array_equal(full_stream(data, data.loss_mask), mask)
        assert np.array_equal(full_stream(data), stream)
        for wrong, message in ((mask[1:], "a loss mask of"), (mask + 2, "0 \\(not learned\\) and 1")):
            with pytest.raises(FewshotError, match=message):
                add_loss_mask(out, wrong)


def test_targets_a_loss_mask_does_not_learn_are_ignored(tmp_path):
    root = write_files(tmp_path / "in", {"a.txt": "the quick brown fox jumps over the lazy dog " * 20})
    out = tmp_path / "out"
    prepare([root], out, progress=False)
    data = TokenData.open(out)
    n = len(data.split("train")) + len(data.split("val"))
    add_loss_mask(out, (np.arange(n) % 3 == 0).astype(np.uint8))
    data = TokenData.open(out)
    plain = BatchSampler(data.split("train"), 4, 32, seed=1)
    masked = BatchSampler(data.split("train"), 4, 32, seed=1, loss_mask=data.loss_mask("train"))
    starts = plain.next_starts()
    (x, y), (mx, my) = plain.windows(starts), masked.windows(starts)
    learned = torch.from_numpy(np.stack([data.loss_mask("train").window(int(s) + 1, 32) for s in starts]) == 1)
    assert torch.equal(x, mx) and torch.equal(my[learned], y[learned])
    assert (my[~learned] == -1).all() and 0 < learned.float().mean() < 1
    val = fixed_batches(data.split("val"), 1, 8, 2, seed=0, loss_mask=data.loss_mask("val"))
    assert any((batch_y == -1).any() for _, batch_y in val)
    meta = json.loads((out / "meta.json").read_text())
    for broken in ({"train": meta["loss_mask"]["train"]}, {**meta["loss_mask"], "val": {"tokens": 1, "shards": []}}, [1]):
        (out / "meta.json").write_text(json.dumps({**meta, "loss_mask": broken}))
        with pytest.raises(FewshotError, match="loss mask does not match its tokens"):
            TokenData.open(out).loss_mask("val")

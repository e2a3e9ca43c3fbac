"""`prepare_mixture`: sources in, a prepared (tokenised) dataset of their curated mixture out.

    fewshot prepare --source web/:0.6 --source books/:0.3 --source wiki.jsonl:0.1 --out data/mix \
        --dedup minhash --quality-ref curated/ --decontaminate arithmetic,my_task.jsonl

In order, streaming batches of documents, so memory holds the stages' indexes (about 1 KB of
MinHash bands per kept document, the evaluation n-grams) and a few batches, never the corpus:
1. the quality classifier is trained on samples of the reference and of the sources;
2. per document: exact duplicates, the quality rule, near-duplicates, decontamination (the
   per-document work in `workers` processes or on a Dask cluster: parallel.py); the kept
   documents go to a scratch JSONL per source (with their byte offsets);
3. the tokenizer (bytes, or BPE trained on what was kept) counts each kept document's tokens;
4. the mixture is planned in those tokens and its table printed, then written, shuffled,
   as one JSONL file that `fewshot.data.prepare` tokenises into shards as usual;
5. each source's tokens are counted again in what was written, against the plan.
`out/curation/` holds each stage's JSON summary, report.md, its plots and quality.npz.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.progress import Progress

from fewshot.data.curate import mixture
from fewshot.data.curate.decontaminate import Decontaminator
from fewshot.data.curate.dedup import DedupConfig, Deduplicator
from fewshot.data.curate.documents import Source, read_documents
from fewshot.data.curate.parallel import Looked, Pool, Stages
from fewshot.data.curate.quality import TRAIN_DOCS, KeepRule, QualityFilter
from fewshot.data.prepare import ENCODE_BATCH_CHARS, PrepareSummary, check_out_dir, find_input_files, prepare
from fewshot.errors import FewshotError
from fewshot.files import atomic_write_text, write_json
from fewshot.progress import byte_progress
from fewshot.tokenizer import ByteTokenizer, train_bpe

EXAMPLES = 3  # kept and dropped documents shown per stage in report.md


@dataclass(frozen=True)
class CurateOptions:
    dedup: DedupConfig | None = None
    quality_ref: Path | None = None
    quality_keep: KeepRule = KeepRule("pareto", 9.0)
    # The sources the quality filter judges (and samples its raw side from); None: all of them.
    # GPT-3 filtered Common Crawl only; its curated sources were the reference, and went in whole.
    quality_on: tuple[str, ...] | None = None
    decontaminate: tuple[str, ...] = ()  # the evaluation examples' texts
    tokenizer: str = "byte"
    vocab_size: int = 8192
    val_fraction: float = 0.05
    mix_tokens: int | None = None  # the mixture's size; default: every kept token once
    seed: int = 0
    workers: int = 1  # local processes for the per-document work
    scheduler: str | None = None  # a Dask distributed scheduler's address, instead of local processes


@dataclass
class SourceStats:
    source: str
    documents: int = 0
    bytes: int = 0
    kept_documents: int = 0
    kept_bytes: int = 0
    removed: dict[str, int] = field(default_factory=lambda: {"exact": 0, "quality": 0, "fuzzy": 0, "contaminated": 0})
    removed_bytes: dict[str, int] = field(default_factory=lambda: {"exact": 0, "quality": 0, "fuzzy": 0, "contaminated": 0})


@dataclass(frozen=True)
class MixtureResult:
    summary: PrepareSummary
    rows: list[mixture.MixtureRow]
    sources: list[SourceStats]
    quality_auc: float | None


def prepare_mixture(sources: Sequence[Source], out: Path, options: CurateOptions = CurateOptions(),
                    progress: bool = True, overwrite: bool = False,
                    announce: Callable[[str], None] = print) -> MixtureResult:
    if not sources:
        raise FewshotError("prepare: give at least one --source")
    names = [s.name for s in sources]
    if len(set(names)) < len(names):
        raise FewshotError(f"prepare: two sources share a name ({', '.join(names)}); rename a folder or file")
    out = Path(out)
    check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".curate-", dir=out.parent))
    try:
        return _run(sources, out, options, progress, overwrite, announce, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(sources, out, options, progress, overwrite, announce, work) -> MixtureResult:
    examples: dict[str, list[str]] = {"kept": [], "quality": [], "fuzzy": [], "exact": [], "contaminated": []}
    judged = {s.name for s in sources} if options.quality_on is None else set(options.quality_on)
    if unknown := judged - {s.name for s in sources}:
        raise FewshotError(f"--quality-on names no source: {', '.join(sorted(unknown))} (sources: "
                           f"{', '.join(s.name for s in sources)})")
    dedup = Deduplicator(options.dedup) if options.dedup is not None else None
    decontaminator = Decontaminator(options.decontaminate) if options.decontaminate else None
    stats, kept_files = [], {}
    with byte_progress(progress) as bar:
        quality = None
        if options.quality_ref is not None:
            quality = _train_quality([s for s in sources if s.name in judged], options, bar)
        with Pool(Stages(dedup, quality, decontaminator), options.workers, options.scheduler) as pool:
            for source in sources:
                kept_files[source.name] = work / f"{len(kept_files)}.jsonl"
                judge = quality if source.name in judged else None
                stats.append(_curate(source, kept_files[source.name], pool, dedup, judge, decontaminator, examples, bar))
        tok = _tokenizer(kept_files, options)
        sizes, offsets = _count_tokens(kept_files, tok, bar)
    rows, chosen = mixture.plan(sizes, {s.name: s.weight for s in sources}, options.mix_tokens, options.seed)
    announce(f"mixture of {len(sources)} source(s), before training (GPT-3's Table 2.2):\n{mixture.table(rows)}")
    mix = work / "mixture.jsonl"
    _write_mixture(mix, kept_files, offsets, chosen, options.seed)
    summary = prepare([mix], out, tokenizer=options.tokenizer, vocab_size=options.vocab_size,
                      val_fraction=options.val_fraction, progress=progress, overwrite=overwrite, trained=tok)
    with byte_progress(progress) as bar:
        rows = _realised(rows, mix, tok, summary, bar)
    result = MixtureResult(summary, rows, stats, quality.auc if quality else None)
    _write_reports(out / "curation", result, options, dedup, quality, decontaminator, examples)
    return result


def _curate(source: Source, path: Path, pool: Pool, dedup, quality, decontaminator, examples: dict[str, list[str]],
            bar: Progress) -> SourceStats:
    """One source through the stages; its kept documents into `path` (JSONL)."""
    task = bar.add_task(f"curating {source.name}", total=sum(f.stat().st_size for f in find_input_files([source.path])))
    stat = SourceStats(source.name)
    with path.open("w", encoding="utf-8") as kept:
        for text, looked in pool.map(read_documents(source.path), quality is not None):
            stat.documents += 1
            stat.bytes += looked.size
            verdict = _verdict(text, looked, dedup, quality, decontaminator)
            if verdict is None:
                kept.write(json.dumps({"text": text}) + "\n")
                stat.kept_documents += 1
                stat.kept_bytes += looked.size
            else:
                stat.removed[verdict] += 1
                stat.removed_bytes[verdict] += looked.size
            shown = examples["kept" if verdict is None else verdict]
            if len(shown) < EXAMPLES:
                shown.append(text[:300])
            bar.advance(task, looked.size)
    return stat


def _verdict(text: str, looked: Looked, dedup, quality, decontaminator) -> str | None:
    """Why the document goes, or None: cheap stages first (GPT-3 filtered, then deduplicated)."""
    if dedup is not None and dedup.seen(looked.digest):
        return "exact"
    if quality is not None and not quality.decide(looked.score):
        return "quality"
    if dedup is not None and dedup.near(looked.signature):
        return "fuzzy"
    if looked.shared is not None:
        decontaminator.removed.append((text[:80], looked.shared))
        return "contaminated"
    return None


def _sample(texts: Iterator[str], k: int, seed: int) -> list[str]:
    """A uniform sample of k texts from a stream of unknown length (reservoir sampling)."""
    rng, sample = random.Random(seed), []
    for i, text in enumerate(texts):
        if i < k:
            sample.append(text)
        elif (j := rng.randrange(i + 1)) < k:
            sample[j] = text
    return sample


def _train_quality(sources: Sequence[Source], options: CurateOptions, bar: Progress) -> QualityFilter:
    reference = _sample(_counted(options.quality_ref, bar, "sampling the reference"), TRAIN_DOCS, options.seed)
    raw = _sample((t for s in sources for t in _counted(s.path, bar, f"sampling {s.name}")), TRAIN_DOCS, options.seed + 1)
    return QualityFilter.train(reference, raw, options.quality_keep, options.seed)


def _counted(path: Path, bar: Progress, description: str) -> Iterator[str]:
    """The documents under `path`, advancing a bar by their bytes."""
    task = bar.add_task(description, total=sum(f.stat().st_size for f in find_input_files([path])))
    for text in read_documents(path):
        bar.advance(task, len(text.encode("utf-8", "surrogatepass")))
        yield text


def _tokenizer(kept_files: dict[str, Path], options: CurateOptions):
    if options.tokenizer == "byte":
        return ByteTokenizer()
    return train_bpe((json.loads(line)["text"] for path in kept_files.values() for line in path.open(encoding="utf-8")),
                     options.vocab_size)


def _count_tokens(kept_files: dict[str, Path], tok, bar) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Tokens of each kept document (its end-of-text token included), and its line's byte offset."""
    sizes, offsets = {}, {}
    for name, path in kept_files.items():
        task = bar.add_task(f"counting tokens of {name}", total=path.stat().st_size)
        counts, starts, batch, chars, at = [], [], [], 0, 0
        with path.open("rb") as lines:
            for line in lines:
                starts.append(at)
                at += len(line)
                batch.append(json.loads(line)["text"])
                chars += len(batch[-1])
                if chars >= ENCODE_BATCH_CHARS:
                    counts.extend(len(ids) + 1 for ids in tok.encode_batch(batch))
                    batch, chars = [], 0
                bar.advance(task, len(line))
        if batch:
            counts.extend(len(ids) + 1 for ids in tok.encode_batch(batch))
        sizes[name], offsets[name] = counts, starts
    return sizes, offsets


def _write_mixture(mix: Path, kept_files: dict[str, Path], offsets: dict[str, list[int]], chosen: dict[str, list[int]],
                   seed: int) -> None:
    """The chosen documents, each tagged with its source, in a seeded random order."""
    order = [(name, i) for name, picked in chosen.items() for i in picked]
    random.Random(seed).shuffle(order)
    handles = {name: path.open("rb") for name, path in kept_files.items()}
    try:
        with mix.open("w", encoding="utf-8") as out:
            for name, i in order:
                handles[name].seek(offsets[name][i])
                text = json.loads(handles[name].readline())["text"]
                out.write(json.dumps({"text": text, "source": name}) + "\n")
    finally:
        for handle in handles.values():
            handle.close()


def _realised(rows: list[mixture.MixtureRow], mix: Path, tok, summary: PrepareSummary,
              bar: Progress) -> list[mixture.MixtureRow]:
    """Each source's tokens, counted again in the mixture as written; they must add up to the shards'."""
    counted = {row.source: 0 for row in rows}
    task = bar.add_task("counting the mixture's tokens again", total=mix.stat().st_size)
    with mix.open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            counted[record["source"]] += len(tok.encode(record["text"])) + 1
            bar.advance(task, len(line.encode()))
    if sum(counted.values()) != summary.tokens:
        raise FewshotError(f"prepare: the mixture's documents count {sum(counted.values()):,} tokens, but "
                           f"{summary.tokens:,} were written (a bug; please report it)")
    return [mixture.MixtureRow(**{**asdict(r), "realised_tokens": counted[r.source]}) for r in rows]


def _write_reports(folder: Path, result: MixtureResult, options: CurateOptions, dedup, quality, decontaminator,
                   examples: dict[str, list[str]]) -> None:
    from fewshot.figures import plt, save_figure

    folder.mkdir(parents=True, exist_ok=True)
    removed = {kind: sum(s.removed[kind] for s in result.sources) for kind in result.sources[0].removed}
    removed_bytes = {kind: sum(s.removed_bytes[kind] for s in result.sources) for kind in result.sources[0].removed}
    if dedup is not None:
        write_json(folder / "dedup.json", {
            "threshold": dedup.config.threshold, "ngram": dedup.config.ngram, "num_perm": dedup.config.num_perm,
            "exact_removed": removed["exact"], "exact_bytes": removed_bytes["exact"],
            "fuzzy_removed": removed["fuzzy"], "fuzzy_bytes": removed_bytes["fuzzy"],
            "clusters": len(dedup.clusters), "largest_cluster": 1 + max(dedup.clusters.values(), default=0)})
    if quality is not None:
        quality.save(folder / "quality.npz")
        write_json(folder / "quality.json", {
            "reference": str(options.quality_ref), "rule": asdict(options.quality_keep), "auc_held_out": quality.auc,
            "kept": quality.kept, "dropped": quality.dropped,
            "keep_rate": quality.kept / max(1, quality.kept + quality.dropped)})
    if decontaminator is not None:
        write_json(folder / "decontamination.json", {
            "ngram": decontaminator.n, "removed": len(decontaminator.removed),
            "removed_documents": [{"start": start, "shared": shared} for start, shared in decontaminator.removed]})
    write_json(folder / "mixture.json", {
        "rows": [r.to_json() for r in result.rows], "sources": [asdict(s) for s in result.sources],
        "tokens_written": result.summary.tokens})

    figure, ax = plt.subplots(figsize=(6, 3))
    ax.bar([r.source for r in result.rows], [r.selected_tokens for r in result.rows], color="#1f77b4", label="in the mix")
    ax.bar([r.source for r in result.rows], [r.tokens for r in result.rows], fill=False, edgecolor="#333", label="available")
    for i, r in enumerate(result.rows):
        ax.annotate(f"{r.epochs:.2f} ep", (i, max(r.tokens, r.selected_tokens)), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("tokens")
    ax.legend(fontsize=8)
    save_figure(figure, folder / "mixture.png")

    lines = ["# Data curation report", "", f"Prepared dataset: `{result.summary.out}` ({result.summary.tokens:,} tokens, "
             f"{result.summary.tokenizer} tokenizer).", "", "## Per source", "",
             "| source | documents | MB | exact dups | quality drops | near dups | contaminated | kept | kept MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in result.sources:
        lines.append(f"| {s.source} | {s.documents:,} | {s.bytes / 1e6:.2f} | {s.removed['exact']:,} | "
                     f"{s.removed['quality']:,} | {s.removed['fuzzy']:,} | {s.removed['contaminated']:,} | "
                     f"{s.kept_documents:,} | {s.kept_bytes / 1e6:.2f} |")
    lines += ["", "## Mixture (GPT-3's Table 2.2)", "", mixture.table(result.rows), "", "![mixture](mixture.png)"]
    if dedup is not None:
        lines += ["", "## Deduplication", "", f"Exact (hash of the whitespace-normalised text): {removed['exact']:,} "
                  f"documents, {removed_bytes['exact'] / 1e6:.2f} MB. Near-duplicates (MinHash LSH over word "
                  f"{dedup.config.ngram}-gram shingles, Jaccard threshold {dedup.config.threshold}): "
                  f"{removed['fuzzy']:,} documents, {removed_bytes['fuzzy'] / 1e6:.2f} MB, in {len(dedup.clusters):,} "
                  f"clusters."]
    if quality is not None:
        auc = "n/a" if quality.auc is None else f"{quality.auc:.4f}"
        lines += ["", "## Quality filter", "", f"Reference `{options.quality_ref}`; held-out AUC {auc}; rule "
                  f"{options.quality_keep.kind}:{options.quality_keep.value:g}; kept {quality.kept:,}, dropped "
                  f"{quality.dropped:,}."]
    if decontaminator is not None:
        lines += ["", "## Decontamination", "", f"{len(decontaminator.removed):,} documents shared a {decontaminator.n}-gram "
                  f"with the evaluation examples (decontamination.json lists them)."]
    for kind, texts in examples.items():
        if texts:
            lines += ["", f"### Examples: {kind}", ""] + [f"> {json.dumps(t)[:300]}" for t in texts]
    atomic_write_text(folder / "report.md", "\n".join(lines) + "\n")

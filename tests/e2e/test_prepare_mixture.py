"""`fewshot prepare --source ...` end to end: curated sources mixed by weight, then trained on."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from fewshot.cli.train import _evaluation_texts
from fewshot.data.curate.documents import words
from tests.conftest import fewshot_command
from tests.data.test_curate import edited, shakespeare_chunks


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """web: mostly junk (passages with their words shuffled, or 15% of their characters
    replaced) and some real passages, one of them twice, one near-duplicated, one holding an
    arithmetic test example; books: passages as text files; ref: other passages, the quality
    filter's reference. All three from the same plays."""
    root, rng = tmp_path_factory.mktemp("sources"), random.Random(0)
    chunks = shakespeare_chunks(240, lines=20)
    web_chunks, books, reference = chunks[0::3], chunks[1::3], chunks[2::3]  # the same plays in each
    web_docs = web_chunks[:20]
    for i, chunk in enumerate(web_chunks[20:]):
        words = chunk.split()
        rng.shuffle(words)
        web_docs.append(" ".join(words) if i % 2 else "".join(c if rng.random() > 0.15 else "#" for c in chunk))
    web_docs.append(web_chunks[0])  # exact duplicate
    web_docs.append(" ".join(edited(web_chunks[1].split(), 0.1, ["thee", "thou", "lord"], rng)))  # near duplicate
    example = _evaluation_texts("arithmetic")[0]
    (root / "web").mkdir()
    (root / "web" / "crawl.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in web_docs))
    (root / "books").mkdir()
    for i, chunk in enumerate(books):
        (root / "books" / f"{i:03d}.txt").write_text(chunk)
    (root / "books" / "quiz.txt").write_text(f"Exercises for the grammar school.\n{example}\nThat is all.")  # contaminated
    (root / "ref").mkdir()
    (root / "ref" / "curated.jsonl").write_text("".join(json.dumps({"text": c}) + "\n" for c in reference))
    return {"web": root / "web", "books": root / "books", "ref": root / "ref", "example": example}


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_prepare_curates_mixes_by_weight_and_the_result_trains(sources, tmp_path, tokenizer):
    out = tmp_path / "mix"
    command = [*fewshot_command(), "prepare", "--source", f"{sources['web']}:0.7", "--source", f"{sources['books']}:0.3",
               "--dedup", "minhash", "--quality-ref", str(sources["ref"]), "--quality-keep", "threshold:0.5", "--quality-on", "web",
               "--decontaminate", "arithmetic", "--tokenizer", tokenizer, "--vocab-size", "400", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert printed.index("Table 2.2") < printed.index("realised tokens per source")  # the table comes first
    curation = out / "curation"
    mixture = json.loads((curation / "mixture.json").read_text())
    for row in mixture["rows"]:  # the printed table's "tokens in mix" against what was written
        assert abs(row["realised_tokens"] - row["selected_tokens"]) <= 0.01 * row["selected_tokens"]
    assert sum(r["realised_tokens"] for r in mixture["rows"]) == mixture["tokens_written"]
    web, books = mixture["rows"]
    assert web["weight"] == pytest.approx(0.7) and web["planned_tokens"] == round(0.7 * (web["tokens"] + books["tokens"]))
    web_stats, book_stats = mixture["sources"]
    assert web_stats["removed"]["exact"] == 1 and web_stats["removed"]["fuzzy"] >= 1
    assert book_stats["removed"]["contaminated"] == 1
    assert 40 <= web_stats["removed"]["quality"] <= 70 and web_stats["kept_documents"] >= 10  # the junk goes
    decontaminated = json.loads((curation / "decontamination.json").read_text())["removed_documents"]
    assert len(decontaminated) == 1 and decontaminated[0]["shared"] == " ".join(words(sources["example"]))
    quality = json.loads((curation / "quality.json").read_text())
    assert quality["auc_held_out"] > 0.5 and quality["kept"] + quality["dropped"] == web_stats["documents"] - 1
    report = (curation / "report.md").read_text()
    assert all(part in report for part in ("## Mixture", "## Deduplication", "## Quality filter", "## Decontamination"))
    assert (curation / "mixture.png").stat().st_size > 5000

    run = tmp_path / "run"
    trained = subprocess.run([*fewshot_command(), "train", "--data", str(out), "--out", str(run), "--preset", "nano",
                              "--max-steps", "3", "--context", "64", "--batch-size", "2", "--no-progress"],
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (run / "model.safetensors").exists()


def test_local_processes_and_a_dask_cluster_give_the_same_dataset(sources, tmp_path):
    """--workers 2 and --dask-scheduler (a LocalCluster of 2 processes, as a real cluster's
    scheduler would be given) decide every document as one process does: identical shards."""
    from distributed import LocalCluster

    def run(name: str, *extra: str) -> Path:
        out = tmp_path / name
        command = [*fewshot_command(), "prepare", "--source", f"{sources['web']}:0.7", "--source",
                   f"{sources['books']}:0.3", "--dedup", "minhash", "--quality-ref", str(sources["ref"]),
                   "--quality-on", "web", "--decontaminate", "arithmetic", "--out", str(out), *extra]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return out

    alone, local = run("one"), run("two", "--workers", "2")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = run("dask", "--dask-scheduler", cluster.scheduler_address)
    for other in (local, remote):
        for shard in sorted(alone.glob("*.bin")):
            assert (other / shard.name).read_bytes() == shard.read_bytes()
        assert json.loads((other / "curation" / "mixture.json").read_text()) == \
            json.loads((alone / "curation" / "mixture.json").read_text())

"""report.md and loss.png, written from a real (tiny) run directory."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest

from fewshot.errors import FewshotError
from fewshot.runs import RunDir
from fewshot.train.metrics import read_metrics
from fewshot.train.report import write_report
from tests.conftest import tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = 4


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four steps of the nano preset on a small text file, validated at steps 2 and 4."""
    from fewshot.data.prepare import prepare
    from fewshot.train.loop import train

    root = tmp_path_factory.mktemp("report")
    (root / "text").mkdir()
    line = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n"
    (root / "text" / "hamlet.txt").write_text(line * 300, encoding="utf-8")
    prepare([root / "text"], root / "tokens", tokenizer="byte", progress=False)
    train(tiny_config(root / "tokens", root / "run", max_steps=STEPS, eval_every=2, save_every=STEPS))
    return root / "run"


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy, so every test sees the run as training left it."""
    return Path(shutil.copytree(trained_run, tmp_path / "tiny-run"))


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, (pattern, text)
    return float(found.group(1).replace(",", ""))


def test_the_report_names_the_model_tokenizer_and_data(run: Path) -> None:
    text = write_report(run).read_text()
    config = RunDir.open(run).config
    assert text.startswith("# Run report: tiny-run\n")
    assert "preset `nano`" in text
    assert f"{config.model.n_layer} layers" in text and f"d_model {config.model.d_model}" in text
    assert f"context {config.model.context}" in text and f"vocabulary {config.model.vocab_size}" in text
    assert "tokenizer: `byte`" in text
    assert f"data: `{config.train.data}`" in text


def test_the_report_numbers_match_metrics_csv(run: Path) -> None:
    text = write_report(run).read_text()
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    validated = [r for r in rows if r["val_loss"] is not None]
    assert [int(r["step"]) for r in validated] == [2, 4]
    assert number(r"steps: (\d+),", text) == STEPS
    assert number(r"tokens seen: ([\d,]+),", text) == rows[-1]["tokens"] == STEPS * 4 * 64
    assert number(r"final train loss: ([\d.]+) nats/token", text) == pytest.approx(rows[-1]["train_loss"], abs=5e-5)
    assert number(r"final val loss: ([\d.]+) nats/token", text) == pytest.approx(validated[-1]["val_loss"], abs=5e-5)
    best = min(validated, key=lambda r: r["val_loss"])
    assert number(r"\(best ([\d.]+) at step", text) == pytest.approx(best["val_loss"], abs=5e-5)
    assert number(r"at step (\d+)\)", text) == best["step"]


def test_the_report_gives_the_data_unigram_entropy_in_nats_and_bits(run: Path) -> None:
    text = write_report(run).read_text()
    bits = RunDir.open(run).config.data["meta"]["unigram_entropy_bits"]
    assert 0 < bits < 8
    assert number(r"\(([\d.]+) bits\)", text) == pytest.approx(bits, abs=5e-4)
    assert number(r"unigram entropy of the data: ([\d.]+) nats/token", text) == pytest.approx(bits * math.log(2), abs=5e-5)


def test_the_report_links_a_loss_plot_that_is_a_png(run: Path) -> None:
    report = write_report(run)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    assert links == ["loss.png"]
    plot = report.parent / links[0]
    assert plot.is_file() and plot.read_bytes()[:8] == PNG_SIGNATURE and plot.stat().st_size > 1000


def test_extra_sections_follow_as_titled_blocks_in_order(run: Path) -> None:
    sections = {"Samples": "ROMEO: a sample\n\n", "Held-out ICL": "| K | score |\n|---|---|\n| 0 | 0.0% |", "Appendix": "done"}
    text = write_report(run, sections).read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert headings == ["Samples", "Held-out ICL", "Appendix"]
    assert "## Samples\n\nROMEO: a sample\n\n## Held-out ICL\n\n| K | score |" in text
    assert text.endswith("## Appendix\n\ndone\n")
    assert text.index("![loss curve](loss.png)") < text.index("## Samples")


def test_a_second_report_replaces_the_first(run: Path) -> None:
    write_report(run, {"Old": "stale"})
    text = write_report(run, {"New": "fresh"}).read_text()
    assert "## New" in text and "Old" not in text and "stale" not in text
    assert text.count("# Run report") == 1


def test_a_run_without_metrics_gets_a_report_without_numbers_or_plot(run: Path) -> None:
    (run / "metrics.csv").unlink()
    text = write_report(run, {"Notes": "no training yet"}).read_text()
    assert "preset `nano`" in text and "## Notes" in text
    assert "steps:" not in text and "final train loss" not in text and "loss.png" not in text
    assert not (run / "loss.png").exists()


def test_a_directory_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FewshotError, match="not a run directory"):
        write_report(tmp_path / "empty")
    with pytest.raises(FewshotError, match="no such run directory"):
        write_report(tmp_path / "missing")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(FewshotError, match="not a fewshot run config"):
        write_report(tmp_path / "foreign")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.json", "empty", "foreign"]


def test_an_imported_run_gets_a_report_that_names_its_source(tmp_path: Path) -> None:
    import torch

    from fewshot.config import PRESETS
    from fewshot.model import GPT
    from fewshot.runs import RunConfig, weights_to_save
    from fewshot.tokenizer import ByteTokenizer

    config = PRESETS["nano"].model.replace(n_layer=1, context=16)
    torch.manual_seed(0)
    RunDir.publish(tmp_path / "imported", RunConfig(config, ByteTokenizer().spec(), source={"gguf": "smol.gguf"}),
                   ByteTokenizer(), weights_to_save(GPT(config)))
    text = write_report(tmp_path / "imported", {"Samples": "hi"}).read_text()
    assert "imported" in text and "smol.gguf" in text and "## Samples" in text

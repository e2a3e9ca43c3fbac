"""The real CLI, as a user runs it: prepare -> train -> generate, and its error paths."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import fewshot_command


def fewshot(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*fewshot_command(), *args], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained_run(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    prepared = fewshot("prepare", str(corpus_dir), "--out", str(root / "data"))
    assert "unigram entropy" in prepared.stdout
    trained = fewshot("train", "--data", str(root / "data"), "--out", str(root / "run"), "--preset", "nano",
                      "--context", "64", "--batch-size", "8", "--max-steps", "60", "--eval-every", "30", "--no-progress")
    assert "val loss" in trained.stdout and "unigram entropy" in trained.stdout
    return root / "run"


def test_a_trained_run_has_a_report_with_a_plot(trained_run: Path) -> None:
    report = (trained_run / "report.md").read_text()
    assert "![loss curve](loss.png)" in report
    assert (trained_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generate_with_a_seed_is_repeatable(trained_run: Path) -> None:
    args = ("generate", str(trained_run), "--prompt", "ROMEO:\\n", "--max-tokens", "60", "--seed", "1")
    first, second = fewshot(*args), fewshot(*args)
    assert first.stdout == second.stdout
    assert first.stdout.startswith("ROMEO:\n") and len(first.stdout) > len("ROMEO:\n") + 20
    other = fewshot("generate", str(trained_run), "--prompt", "ROMEO:\\n", "--max-tokens", "60", "--seed", "2")
    assert other.stdout != first.stdout


def test_prompt_lookup_prints_the_same_greedy_text(trained_run: Path) -> None:
    args = ("generate", str(trained_run), "--prompt", "ROMEO: my lord. ROMEO: my lord. ROMEO:", "--max-tokens", "80",
            "--temperature", "0")
    plain, drafted = fewshot(*args), fewshot(*args, "--prompt-lookup", "8")
    assert drafted.stdout == plain.stdout and len(plain.stdout) > 60


def test_a_quantised_run_generates_close_to_the_float_one(trained_run: Path, tmp_path: Path) -> None:
    import fewshot as library

    done = fewshot("quantize", str(trained_run), "--to", "q8_0", "--out", str(tmp_path / "q8"))
    assert "q8_0 weights" in done.stdout
    printed = fewshot("generate", str(tmp_path / "q8"), "--prompt", "KING:", "--max-tokens", "20", "--temperature", "0")
    assert printed.stdout.startswith("KING:") and len(printed.stdout) > len("KING:") + 5
    float_lm, quant_lm = library.load(trained_run), library.load(tmp_path / "q8")
    ids = float_lm.tokenizer.encode("ROMEO: what light through yonder window")
    reference = float_lm.logits(ids)
    assert ((quant_lm.logits(ids) - reference).norm() / reference.norm()).item() < 0.03
    assert quant_lm.config.model.quant == "q8_0" and quant_lm.config.train is None


def test_stop_sequences_understand_escaped_newlines(trained_run: Path) -> None:
    result = fewshot("generate", str(trained_run), "--prompt", "ROMEO:\\n", "--max-tokens", "200", "--seed", "4", "--stop", "\\n")
    assert result.stdout.startswith("ROMEO:\n")
    assert "\n" not in result.stdout[len("ROMEO:\n"):].rstrip("\n")  # cut at the first newline it generated


def test_python_dash_m_and_the_library_agree(trained_run: Path) -> None:
    import fewshot as library

    lm = library.load(trained_run)
    expected = lm.generate("KING:", max_tokens=30, temperature=0)
    printed = fewshot("generate", str(trained_run), "--prompt", "KING:", "--max-tokens", "30", "--temperature", "0")
    assert printed.stdout == "KING:" + expected + "\n"  # the prompt, the streamed text, a final newline


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("prepare", "/no/such/dir", "--out", "{tmp}/x"), "no/such/dir"),
        (("train", "--data", "/no/such/data", "--out", "{tmp}/r"), "/no/such/data"),
        (("train", "--data", "{tmp}", "--out", "{tmp}/r", "--preset", "gpt5"), "unknown preset"),
        (("train", "--data", "{tmp}", "--out", "{tmp}/r", "--max-steps", "many"), "--max-steps"),
        (("train", "--data", "{tmp}", "--out", "{tmp}/r", "--batch-size", "0"), "batch-size"),
        (("generate", "/no/such/run"), "no such run directory"),
        (("generate", "{tmp}"), "not a run directory"),
        (("generate", "{tmp}", "--top-p", "0"), "top_p"),
        (("generate", "{tmp}", "--logit-bias", "7"), "TOKEN_ID:BIAS"),
        (("prepare", "{tmp}/empty", "--out", "{tmp}/y"), "empty"),
        (("bench", "decode", "--device", "tpu"), "unknown device"),
    ],
)
def test_bad_input_gets_one_line_and_a_nonzero_exit(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("")
    result = fewshot(*(a.replace("{tmp}", str(tmp_path)) for a in args), check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert message in lines[0]


def test_sigterm_saves_a_checkpoint_and_exits_zero(trained_run: Path, tmp_path: Path) -> None:
    import json

    data = json.loads((trained_run / "config.json").read_text())["train"]["data"]
    run = tmp_path / "run"
    process = subprocess.Popen([*fewshot_command(), "train", "--data", data, "--out", str(run), "--preset", "nano",
                                "--context", "64", "--max-steps", "100000", "--save-every", "100000", "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "metrics.csv").exists() or (run / "metrics.csv").read_text().count("\n") < 3:
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "stopped by signal" in stderr
    assert (run / "state" / "LATEST").is_file()


@pytest.mark.parametrize("args", [("--help",), ("sweep", "--help"), ("train", "--data", "nowhere", "--out", "x", "--steps-typo", "1")])
def test_help_and_option_errors_answer_without_importing_torch(args: tuple[str, ...]) -> None:
    # Importing torch takes ~2 s: a user asking for --help, or mistyping an option, should not
    # wait for it. The commands import torch inside their bodies, once the options are parsed.
    probe = ("import runpy, sys; sys.argv = ['fewshot', *sys.argv[1:]]; code = 0\n"
             "try:\n    runpy.run_module('fewshot', run_name='__main__')\n"
             "except SystemExit as stop:\n    code = stop.code\n"
             "print('torch imported' if 'torch' in sys.modules else 'no torch', code, file=sys.stderr)")
    result = subprocess.run([fewshot_command()[0], "-c", probe, *args], capture_output=True, text=True, timeout=60)
    assert result.stderr.strip().splitlines()[-1].startswith("no torch"), result.stderr[-2000:]

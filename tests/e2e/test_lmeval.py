"""The lm-evaluation-harness backend: the same local task gives lm-eval and `fewshot eval` the same accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Before lm_eval (and datasets) are imported: they read these once. The task is a local file.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval")

import fewshot
from fewshot.eval.lmeval.backend import FewshotLM  # registers "fewshot"
from fewshot.train.loop import train
from tests.conftest import fewshot_command, tiny_config

WORDS = ["king", "love", "night", "sword", "crown", "ghost", "queen", "blood", "grave", "heart", "honour", "tears",
         "death", "lord", "fool", "storm", "wife", "son", "play", "soul", "time", "eyes", "hand", "heaven"]
CHOICES = ["the", "zqx", "and", "my lord"]


@pytest.fixture(scope="module")
def run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lmeval") / "run"
    train(tiny_config(data_dir, out, max_steps=12, context=128))
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The task twice: a JSONL file in our format, and an lm-eval task over the same file
    with our default template ("Input: {input}\\nOutput:" then " choice")."""
    root = tmp_path_factory.mktemp("task")
    data = root / "pick.jsonl"
    # Labels cycle, so the accuracy is neither 0 nor 1 by construction and a mismatch shows.
    data.write_text("".join(json.dumps({"input": w, "choices": CHOICES, "label": i % len(CHOICES)}) + "\n"
                            for i, w in enumerate(WORDS)))
    tasks = root / "lmeval_tasks"
    tasks.mkdir()
    spec = {  # JSON is YAML, and spares us YAML's escaping rules
        "task": "fewshot_pick",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Input: {{input}}\nOutput:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    (tasks / "fewshot_pick.yaml").write_text(json.dumps(spec, indent=2))
    return data, tasks


def fewshot_accuracy(run: Path, data: Path, out: Path) -> float:
    result = subprocess.run([*fewshot_command(), "eval", str(run), "--task-file", str(data), "--shots", "0",
                             "--mc-norm", "sum", "--out", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text())["tasks"]["pick"]["shots"]["0"]["score"]


def test_lm_eval_accuracy_equals_fewshot_eval(run: Path, task: tuple[Path, Path], tmp_path: Path) -> None:
    data, tasks = task
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(model="fewshot", model_args=f"path={run}", tasks=["fewshot_pick"],
                                      task_manager=TaskManager(include_path=str(tasks)), log_samples=True)
    ours = fewshot_accuracy(run, data, tmp_path / "r.json")
    theirs = results["results"]["fewshot_pick"]["acc,none"]
    assert theirs == pytest.approx(ours, abs=1e-12)
    assert 0 < ours < 1  # a real comparison, not two saturated scores

    # Per request, lm-eval saw exactly what `lm.score` computes.
    lm = fewshot.load(run)
    samples = results["samples"]["fewshot_pick"]
    assert len(samples) == len(WORDS)
    for sample in samples:
        for (context, continuation), (logprob, _) in zip(sample["arguments"], sample["filtered_resps"]):
            assert context == f"Input: {sample['doc']['input']}\nOutput:" and continuation[0] == " "
            assert logprob == pytest.approx(lm.score(context, continuation), abs=1e-4)


@pytest.mark.slow  # ~25 s; the .pth registration itself is in tests/eval/test_lmeval_hook.py
def test_bare_lm_eval_cli_runs_the_fewshot_model_offline(run: Path, task: tuple[Path, Path], tmp_path: Path) -> None:
    """lm-eval's own console script, in a fresh interpreter: fewshot_lmeval.pth registers the model."""
    data, tasks = task
    out = tmp_path / "lmeval_out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    lm_eval_script = Path(sys.executable).with_name("lm_eval")
    result = subprocess.run([str(lm_eval_script), "--model", "fewshot", "--model_args", f"path={run}",
                             "--tasks", "fewshot_pick", "--include_path", str(tasks), "--output_path", str(out)],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fewshot_pick" in result.stdout
    (written,) = out.rglob("results_*.json")
    theirs = json.loads(written.read_text())["results"]["fewshot_pick"]["acc,none"]
    assert theirs == pytest.approx(fewshot_accuracy(run, data, tmp_path / "r.json"), abs=1e-12)


class Request:  # what the harness hands a model: an object with .args
    def __init__(self, *args: object) -> None:
        self.args = args


def test_loglikelihood_matches_score_and_greedy_flag(run: Path) -> None:
    backend = FewshotLM(path=str(run), batch_size=3)
    lm = backend.lm
    pairs = [("Input: king\nOutput:", " the"), ("To be, or not", " to be"), ("x" * 300, " long")]  # the last is truncated
    results = backend.loglikelihood([Request(*p) for p in pairs])
    for (context, continuation), (logprob, _) in zip(pairs, results):
        assert logprob == pytest.approx(lm.score(context, continuation), abs=1e-4)
    # An empty context is conditioned on EOT; a continuation longer than the context keeps its last tokens.
    eot = lm.tokenizer.eot_id
    results += backend.loglikelihood([Request("", "Hamlet"), Request("My lord", " " + "y" * 200)])
    ids = [eot] + lm.tokenizer.encode("Hamlet")
    expected = lm.logits(ids[:-1]).log_softmax(-1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()
    assert results[3][0] == pytest.approx(expected, abs=1e-4)
    assert all(lp < 0 for lp, _ in results)
    # is_greedy: the greedy continuation of a prompt is, by definition, greedy.
    prompt = "To be, or not"
    greedy = lm.generate(prompt, max_tokens=5, temperature=0, stop_at_eot=False)
    ((logprob, is_greedy),) = backend.loglikelihood([Request(prompt, greedy)])
    assert is_greedy and logprob == pytest.approx(lm.score(prompt, greedy), abs=1e-4)
    ((_, is_greedy),) = backend.loglikelihood([Request(prompt, " zqxzqx")])
    assert not is_greedy


def test_loglikelihood_rolling_scores_every_token_once(run: Path) -> None:
    backend = FewshotLM(path=str(run))
    lm = backend.lm
    short = "Now is the winter of our discontent"
    eot = lm.tokenizer.eot_id
    # Short text: one window, each token conditioned on EOT and what came before it.
    ids = [eot] + lm.tokenizer.encode(short)
    log_probs = lm.logits(ids[:-1]).log_softmax(-1)
    expected = sum(log_probs[i, t].item() for i, t in enumerate(ids[1:]))
    long = short * 20  # several windows of the 128-token context
    rolled_short, rolled_long = backend.loglikelihood_rolling([Request(short), Request(long)])
    assert rolled_short == pytest.approx(expected, abs=1e-3)
    assert rolled_long < rolled_short < 0


def test_generate_until_is_greedy_generation_cut_at_the_stops(run: Path) -> None:
    backend = FewshotLM(path=str(run))
    lm = backend.lm
    prompt = "ROMEO:"
    free = lm.generate(prompt, max_tokens=24, temperature=0)
    (plain,) = backend.generate_until([Request(prompt, {"until": [], "max_gen_toks": 24})])
    assert plain == free
    assert len(free) > 4
    stop = free[4]  # a character the greedy text does produce (whitespace counts)
    # More stops than fewshot's (OpenAI's) four: the fifth still cuts.
    until = ["\u2603", "\u2604", "\u2605", "\u2606", stop]
    (cut,) = backend.generate_until([Request(prompt, {"until": until, "max_gen_toks": 24})])
    assert cut == free.split(stop, 1)[0]


@pytest.mark.slow  # ~40 s: a server, an export, and lm-eval's CLI twice
def test_lm_eval_local_completions_against_the_server_equals_the_fewshot_backend(
        run: Path, task: tuple[Path, Path], tmp_path: Path) -> None:
    """lm-eval's own OpenAI-style client (local-completions, the api extra) against `fewshot
    serve`, with the tokenizer of the exported run, scores as lm-eval's fewshot backend does."""
    from tests.e2e.test_serve import served

    data, tasks = task
    exported = tmp_path / "hf"
    done = subprocess.run([*fewshot_command(), "export-hf", str(run), str(exported)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    lm_eval_script = str(Path(sys.executable).with_name("lm_eval"))

    def accuracy(*model: str) -> float:
        out = tmp_path / f"out-{model[1].split('=')[0]}"
        result = subprocess.run([lm_eval_script, *model, "--tasks", "fewshot_pick", "--include_path", str(tasks),
                                 "--output_path", str(out)], capture_output=True, text=True, timeout=300, env=env,
                                check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        (written,) = out.rglob("results_*.json")
        return json.loads(written.read_text())["results"]["fewshot_pick"]["acc,none"]

    local = accuracy("--model", "fewshot", "--model_args", f"path={run}")
    with served(run) as (url, _):
        remote = accuracy("--model", "local-completions", "--model_args",
                          f"model=nano,base_url={url}/v1/completions,tokenizer={exported},"
                          f"tokenizer_backend=huggingface,num_concurrent=2")
    assert remote == pytest.approx(local, abs=1e-12) and 0 < local < 1

"""Every command against bad input: one `error:` line, exit status 2, no traceback, nothing
written or changed.

The table below is the contract. Each case runs the real CLI entry point (`fewshot.cli.main`,
what the `fewshot` script calls) in this process, with cwd in a workspace of fixtures, and
compares the SHA-256 of every file in the workspace before and after. In-process keeps 170
cases inside the default suite's time; `test_the_same_cases_hold_in_a_real_process` reruns
a sample of them through `python -m fewshot` to show nothing differs outside pytest.

A new command joins the table with its own bad inputs (finetune, soup, sweep, quantize,
`prepare --source` as they land).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from fewshot.config import PRESETS
from fewshot.model import GPT
from fewshot.runs import RunConfig, RunDir, weights_to_save
from fewshot.tokenizer import BPETokenizer, ByteTokenizer
from tests.conftest import fewshot_command, tiny_config

# A run argument that is not a usable run, by kind.
BAD_RUNS = {
    "missing": "nope",
    "a-file": "file.txt",
    "an-empty-dir": "emptydir",
    "truncated-weights": "trunc",
    "zero-byte-weights": "zero",
    "random-bytes-config": "garbage_cfg",
    "json-list-config": "list_cfg",
    "foreign-tokenizer": "foreign_tok",
    "tokenizer-bigger-than-model": "big_tok",
}
# Chat templates a downloaded model could carry (defect 2 of issue 26).
TEMPLATES = {
    "tpl-divide-by-zero": "{{ 1/0 }}",
    "tpl-type-error": "{{ 1 + 'a' }}",
    "tpl-huge-range": "{% for i in range(10**9) %}x{% endfor %}",
    "tpl-recursive-macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "tpl-slow-loop": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "tpl-huge-output": "{% for i in range(2000) %}{{ 'x' * 99999 }}{% endfor %}",
    "tpl-sandbox-escape": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "tpl-syntax": "{% for %}",
}

GEN = ["--prompt", "Hi", "--max-tokens", "2"]


def cases() -> list[tuple[str, list[str]]]:
    table: list[tuple[str, list[str]]] = []

    def add(name: str, *argv: str) -> None:
        table.append((name, list(argv)))

    for kind, run in BAD_RUNS.items():
        add(f"generate-{kind}", "generate", run, *GEN)
        add(f"chat-{kind}", "chat", run, "--message", "Hi", "--max-tokens", "2")
        add(f"eval-{kind}", "eval", run, "--tasks", "2D+", "--n", "2", "--shots", "0")
        add(f"serve-{kind}", "serve", run, "--port", "0")
        add(f"export-hf-{kind}", "export-hf", run, "exported")
        add(f"icl-eval-{kind}", "icl", "eval", run, "--out", "icl_out", "--n", "2", "--shots", "0", "--templates", "arrow")
        add(f"bench-serve-{kind}", "bench", "serve", run, "--requests", "1", "--clients", "1")
        add(f"finetune-{kind}", "finetune", run, "--data", "ex.jsonl", "--out", "ft_new", "--max-steps", "1")
    for kind in ("missing", "a-file", "an-empty-dir", "random-bytes-config", "json-list-config"):
        add(f"train-resume-{kind}", "train", "--resume", "--out", BAD_RUNS[kind])
    add("train-resume-imported", "train", "--resume", "--out", "imported")
    for name, mixers in {"unknown": "nope", "empty-cycle": ",", "linear-in-llama": "linear,dense"}.items():
        preset = ["--preset", "llama-nano"] if name == "linear-in-llama" else []
        add(f"train-attention-{name}", "train", "--data", "data", "--out", "trained_new", "--attention", mixers, *preset)
    add("train-resume-imported-with-lr", "train", "--resume", "--out", "imported", "--lr", "1e-3")
    add("train-resume-other-tokenizer", "train", "--resume", "--out", "trained", "--data", "bpe_data", "--max-steps", "4")
    add("icl-train-into-an-imported-run", "icl", "train", "--out", "imported", "--minutes", "0.01", "--n", "0")

    # generate: absurd numbers and malformed options
    for name, extra in {
        "max-tokens-negative": ["--max-tokens", "-1"], "temperature-negative": ["--temperature", "-1"],
        "temperature-nan": ["--temperature", "nan"], "top-p-zero": ["--top-p", "0"], "top-p-above-1": ["--top-p", "1.5"],
        "top-k-negative": ["--top-k", "-1"], "n-zero": ["--n", "0"], "n-huge": ["--n", "1000000000"],
        "logprobs-negative": ["--logprobs", "-1"], "logprobs-huge": ["--logprobs", "1000"],
        "logit-bias-out-of-vocab": ["--logit-bias", "99999:5"], "logit-bias-negative-id": ["--logit-bias", "-3:5"],
        "logit-bias-malformed": ["--logit-bias", "abc"], "logit-bias-infinite": ["--logit-bias", "5:inf"],
        "presence-penalty-huge": ["--presence-penalty", "50"], "max-tokens-not-a-number": ["--max-tokens", "ten"],
        "device-unknown": ["--device", "tpu"], "seed-not-a-number": ["--seed", "x"],
        "prompt-lookup-negative": ["--prompt-lookup", "-1"], "prompt-lookup-huge": ["--prompt-lookup", "65"],
    }.items():
        add(f"generate-{name}", "generate", "trained", "--prompt", "Hi", *extra)
    for name, extra in {"max-tokens-negative": ["--max-tokens", "-1"], "temperature-inf": ["--temperature", "inf"],
                        "top-p-above-1": ["--top-p", "2"], "device-unknown": ["--device", "gpu0"]}.items():
        add(f"chat-{name}", "chat", "trained", "--message", "Hi", *extra)
    for name, template in TEMPLATES.items():
        add(f"chat-{name}", "chat", name, "--message", "Hi", "--max-tokens", "2")

    # train: data, output and numbers
    train = ["train", "--data", "data", "--preset", "nano", "--context", "16", "--batch-size", "1", "--max-steps", "2"]
    for name, extra in {
        "lr-negative": ["--lr", "-1"], "lr-nan": ["--lr", "nan"], "batch-size-zero": ["--batch-size", "0"],
        "max-steps-negative": ["--max-steps", "-5"], "context-zero": ["--context", "0"],
        "context-huge": ["--context", "1000000000"], "dropout-above-1": ["--dropout", "2"],
        "preset-unknown": ["--preset", "nope"], "optimizer-unknown": ["--optimizer", "sgd9"],
        "precision-unknown": ["--precision", "fp8"], "nproc-zero": ["--nproc", "0"],
        "warmup-negative": ["--warmup-steps", "-1"], "grad-accum-zero": ["--grad-accum", "0"],
        "out-a-file": ["--out", "file.txt"], "out-under-a-file": ["--out", "file.txt/sub"],
        "out-a-non-run-dir": ["--out", "hf_garbage"], "out-an-existing-run": ["--out", "trained"],
        "data-missing": ["--data", "nope"], "data-a-file": ["--data", "file.txt"], "data-an-empty-dir": ["--data", "emptydir"],
        "data-garbage-meta": ["--data", "junk_data"], "data-bad-mixture-option": ["--data", "icl:mb=abc"],
        "data-unknown-mixture-key": ["--data", "icl:bogus=1"],
        "data-unknown-mixture-loss": ["--data", "icl:loss=inputs"], "save-every-zero": ["--save-every", "0"],
    }.items():
        add(f"train-{name}", *train, "--out", "new_run", *extra)

    # finetune: examples, methods, output, resume; adapters where runs are expected
    finetune = ["finetune", "trained", "--out", "ft_new", "--max-steps", "1", "--batch-size", "1"]
    for name, extra in {
        "data-missing": ["--data", "nope.jsonl"], "data-a-dir": ["--data", "emptydir"], "data-empty-file": ["--data", "empty.txt"],
        "data-random-bytes": ["--data", "random.jsonl"], "data-not-utf8": ["--data", "latin1.jsonl"],
        "data-missing-fields": ["--data", "notext.jsonl"], "data-too-long": ["--data", "long.jsonl"],
        "no-data": [], "method-unknown": ["--data", "ex.jsonl", "--method", "qlora"],
        "lora-rank-zero": ["--data", "ex.jsonl", "--lora-rank", "0"], "lora-alpha-negative": ["--data", "ex.jsonl", "--lora-alpha", "-1"],
        "target-unknown": ["--data", "ex.jsonl", "--target", "q,k"], "epochs-zero": ["--data", "ex.jsonl", "--epochs", "0"],
        "epochs-nan": ["--data", "ex.jsonl", "--epochs", "nan"], "lr-negative": ["--data", "ex.jsonl", "--lr", "-1"],
        "muon-with-lora": ["--data", "ex.jsonl", "--optimizer", "muon"],
        "merge-a-full-fine-tune": ["--data", "ex.jsonl", "--method", "full", "--merge"],
        "out-an-existing-run": ["--data", "ex.jsonl", "--out", "trained"], "out-a-file": ["--data", "ex.jsonl", "--out", "file.txt"],
        "out-under-a-file": ["--data", "ex.jsonl", "--out", "file.txt/sub"],
    }.items():
        add(f"finetune-{name}", *finetune, *extra)
    add("finetune-base-is-an-adapter", "finetune", "adapter", "--data", "ex.jsonl", "--out", "ft_new")
    add("finetune-resume-with-a-base", "finetune", "trained", "--resume", "--out", "adapter")
    add("finetune-resume-a-pretraining-run", "finetune", "--resume", "--out", "trained")
    add("finetune-resume-missing", "finetune", "--resume", "--out", "nope")
    add("generate-adapter-missing", "generate", "trained", "--adapter", "nope", *GEN)
    add("generate-adapter-not-an-adapter", "generate", "trained", "--adapter", "imported", *GEN)
    add("generate-adapter-on-another-base", "generate", "imported", "--adapter", "adapter", *GEN)
    add("generate-adapter-on-an-adapter", "generate", "adapter", "--adapter", "adapter", *GEN)
    add("chat-adapter-on-another-base", "chat", "imported", "--adapter", "adapter", "--message", "Hi")
    add("train-resume-an-adapter-run", "train", "--resume", "--out", "adapter", "--data", "data")

    # compare
    compare = ["compare", "trained", "--out", "cmp_new", "--k", "2", "--steps", "1", "--queries", "2"]
    for name, extra in {
        "no-task": [], "task-and-example": ["--task-file", "tasks.jsonl", "--example"],
        "task-file-missing": ["--task-file", "nope.jsonl"], "task-file-a-dir": ["--task-file", "emptydir"],
        "task-file-random-bytes": ["--task-file", "random.jsonl"], "too-few-lines": ["--task-file", "tasks.jsonl", "--k", "32"],
        "methods-unknown": ["--task-file", "tasks.jsonl", "--methods", "icl,prompt-tuning"],
        "k-zero": ["--task-file", "tasks.jsonl", "--k", "0"], "k-malformed": ["--task-file", "tasks.jsonl", "--k", "a"],
        "queries-zero": ["--task-file", "tasks.jsonl", "--queries", "0"],
        "out-exists": ["--task-file", "tasks.jsonl", "--out", "trained"],
    }.items():
        add(f"compare-{name}", *compare, *extra)
    add("compare-base-missing", "compare", "nope", "--task-file", "tasks.jsonl", "--out", "cmp_new")
    add("compare-base-a-file", "compare", "file.txt", "--task-file", "tasks.jsonl", "--out", "cmp_new")

    # prepare
    add("prepare-missing-input", "prepare", "nope.txt", "--out", "prepared_new")
    add("prepare-empty-dir", "prepare", "emptydir", "--out", "prepared_new")
    add("prepare-empty-file", "prepare", "empty.txt", "--out", "prepared_new")
    add("prepare-out-a-file", "prepare", "file.txt", "--out", "file.txt")
    add("prepare-out-under-the-input-file", "prepare", "file.txt", "--out", "file.txt/sub")
    add("prepare-out-exists", "prepare", "file.txt", "--out", "data")
    add("prepare-tokenizer-unknown", "prepare", "file.txt", "--out", "prepared_new", "--tokenizer", "wordpiece")
    add("prepare-vocab-too-small", "prepare", "file.txt", "--out", "prepared_new", "--tokenizer", "bpe", "--vocab-size", "3")
    add("prepare-val-fraction-above-1", "prepare", "file.txt", "--out", "prepared_new", "--val-fraction", "2")
    add("prepare-val-fraction-negative", "prepare", "file.txt", "--out", "prepared_new", "--val-fraction", "-0.1")
    add("prepare-jsonl-random-bytes", "prepare", "random.jsonl", "--out", "prepared_new")
    add("prepare-jsonl-without-text", "prepare", "notext.jsonl", "--out", "prepared_new")
    add("prepare-jsonl-not-utf8", "prepare", "latin1.jsonl", "--out", "prepared_new")

    # eval
    evaluate = ["eval", "trained", "--shots", "0", "--n", "2"]
    for name, extra in {
        "task-file-missing": ["--task-file", "nope.jsonl"], "task-file-a-dir": ["--task-file", "emptydir"],
        "task-file-empty": ["--task-file", "empty.txt"], "task-file-random-bytes": ["--task-file", "random.jsonl"],
        "task-file-not-utf8": ["--task-file", "latin1.jsonl"], "task-file-missing-fields": ["--task-file", "notext.jsonl"],
        "tasks-unknown": ["--tasks", "nope"], "shots-negative": ["--tasks", "2D+", "--shots", "-1"],
        "shots-not-numbers": ["--tasks", "2D+", "--shots", "a,b"], "n-zero": ["--tasks", "2D+", "--n", "0"],
        "out-a-dir": ["--tasks", "2D+", "--out", "emptydir"], "out-under-a-file": ["--tasks", "2D+", "--out", "file.txt/r.json"],
        "out-exists": ["--tasks", "2D+", "--out", "results.json"], "plot-a-dir": ["--tasks", "2D+", "--plot", "emptydir"],
        "plot-under-a-file": ["--tasks", "2D+", "--plot", "file.txt/p.png"],
        "plot-exists": ["--tasks", "2D+", "--plot", "plot.png"],
        "contamination-missing": ["--tasks", "2D+", "--contamination", "nope"],
        "template-without-placeholders": ["--task-file", "tasks.jsonl", "--template", "plain"],
        "device-unknown": ["--tasks", "2D+", "--device", "npu"], "no-tasks": [],
        "prompt-lookup-huge": ["--tasks", "2D+", "--prompt-lookup", "1000"],
        "runs-missing-second": ["nope", "--tasks", "2D+"],
    }.items():
        add(f"eval-{name}", *evaluate, *extra)

    # serve: refused before it binds a port
    for name, extra in {
        "port-too-big": ["--port", "70000"], "port-negative": ["--port", "-1"], "max-batch-zero": ["--max-batch", "0"],
        "max-queue-zero": ["--max-queue", "0"], "step-tokens-zero": ["--step-tokens", "0"],
        "request-timeout-zero": ["--request-timeout", "0"], "api-key-empty": ["--api-key", ""],
        "api-key-file-missing": ["--api-key-file", "nope"], "api-key-file-empty": ["--api-key-file", "empty.txt"],
        "max-body-zero": ["--max-body-mb", "0"], "drain-negative": ["--drain-seconds", "-1"],
    }.items():
        add(f"serve-{name}", "serve", "trained", *extra)
    for name, (run, *extra) in {
        "adapter-without-a-name": ["trained", "--adapter", "adapter"], "adapter-empty-dir": ["trained", "--adapter", "a="],
        "adapter-missing": ["trained", "--adapter", "a=nope"], "adapter-not-an-adapter": ["trained", "--adapter", "a=imported"],
        "adapter-on-another-base": ["imported", "--adapter", "a=adapter"],
        "adapter-names-clash": ["trained", "--adapter", "a=adapter", "--adapter", "a=adapter"],
        "adapter-named-as-the-base": ["trained", "--adapter", "trained=adapter"],
        "adapter-onto-an-adapter": ["adapter", "--adapter", "b=adapter"],
    }.items():
        add(f"serve-{name}", "serve", run, "--port", "0", *extra)

    # soup: ingredients, options, output
    for name, extra in {
        "no-runs": ["--uniform"], "missing-run": ["nope", "--uniform"], "not-a-finetune": ["trained", "adapter", "--uniform"],
        "imported-is-not-a-finetune": ["imported", "--uniform"], "greedy-without-val": ["adapter", "adapter"],
        "val-missing": ["adapter", "adapter", "--val", "nope.jsonl"], "val-empty": ["adapter", "adapter", "--val", "empty.txt"],
        "queries-zero": ["adapter", "--uniform", "--queries", "0"], "example-two-runs": ["trained", "adapter", "--example"],
        "example-with-val": ["trained", "--example", "--val", "ex.jsonl"], "example-bad-method": ["trained", "--example", "--method", "x"],
        "example-base-missing": ["nope", "--example"], "example-base-an-adapter": ["adapter", "--example"],
    }.items():
        add(f"soup-{name}", "soup", *extra, "--out", "soup_new")
    add("soup-out-exists", "soup", "adapter", "adapter", "--uniform", "--out", "trained")

    # palms: a base, three files (or --example), options
    files = ["--values", "ex.jsonl", "--control", "ex.jsonl"]
    for name, extra in {
        "no-args": [], "no-probes": ["trained", *files], "values-missing": ["trained", "--values", "nope.jsonl", "--control", "ex.jsonl", "--probes", "ex.jsonl"],
        "probes-wrong-shape": ["trained", *files, "--probes", "ex.jsonl"], "probes-empty": ["trained", *files, "--probes", "empty.txt"],
        "probes-random-bytes": ["trained", *files, "--probes", "random.jsonl"], "example-with-values": ["trained", "--example", *files],
        "example-without-smollm2": ["--example"], "method-ia3": ["trained", "--example", "--method", "ia3"],
        "base-an-adapter": ["adapter", "--example"], "base-missing": ["nope", "--example"],
        "queries-zero": ["trained", "--example", "--queries", "0"], "epochs-zero": ["trained", "--example", "--epochs", "0"],
    }.items():
        add(f"palms-{name}", "palms", *extra, "--out", "palms_new")
    add("palms-out-exists", "palms", "trained", "--example", "--out", "trained")

    # sweep: the plan's options, the sweep directory, fit
    tiny = ["--data", "data", "--smallest", "3000", "--context", "16"]
    for name, extra in {
        "no-data": ["--sizes", "2"], "no-sizes-or-budgets": ["--data", "data"], "sizes-negative": [*tiny, "--sizes", "-1"],
        "isoflop-malformed": [*tiny, "--isoflop", "1e9,abc"], "isoflop-zero": [*tiny, "--isoflop", "0"],
        "isoflop-repeated": [*tiny, "--isoflop", "1e9,1e9"], "per-budget-two": [*tiny, "--isoflop", "1e9", "--per-budget", "2"],
        "centre-zero": [*tiny, "--isoflop", "1e9", "--centre", "0"], "head-size-zero": [*tiny, "--sizes", "2", "--head-size", "0"],
        "layers-one": [*tiny, "--sizes", "2", "--layers", "1"],
        "step-one": [*tiny, "--sizes", "2", "--step", "1"], "smallest-zero": [*tiny, "--sizes", "2", "--smallest", "0"],
        "tokens-negative": [*tiny, "--sizes", "2", "--tokens", "-5"], "parallel-zero": [*tiny, "--sizes", "2", "--parallel", "0"],
        "data-missing": ["--data", "nope", "--sizes", "2"], "data-a-run": ["--data", "trained", "--sizes", "2"],
        "eval-unknown-task": [*tiny, "--sizes", "2", "--eval", "nope"], "eval-file-missing": [*tiny, "--sizes", "2", "--eval", "nope.jsonl"],
        "shots-malformed": [*tiny, "--sizes", "2", "--eval", "2D+", "--shots", "x"],
    }.items():
        add(f"sweep-{name}", "sweep", *extra, "--out", "sweep_new")
    add("sweep-out-not-a-sweep", "sweep", *tiny, "--sizes", "2", "--out", "trained")
    add("sweep-out-a-file", "sweep", *tiny, "--sizes", "2", "--out", "file.txt")
    add("sweep-settings-changed", "sweep", *tiny, "--sizes", "2", "--context", "32", "--out", "sweep")
    add("sweep-only-unknown", "sweep", *tiny, "--sizes", "2", "--only", "nope", "--out", "sweep")
    add("sweep-options-before-fit", "sweep", "--sizes", "2", "fit", "sweep")
    add("sweep-fit-missing", "sweep", "fit", "nope")
    add("sweep-fit-not-a-sweep", "sweep", "fit", "trained")
    add("sweep-fit-nothing-finished", "sweep", "fit", "sweep")
    add("sweep-fit-predict-unknown", "sweep", "fit", "sweep", "--predict", "last")
    add("sweep-fit-train-without-predict", "sweep", "fit", "sweep", "--train")

    # converters
    add("import-gguf-missing", "import-gguf", "nope.gguf", "gguf_run")
    add("import-gguf-random-bytes", "import-gguf", "random.gguf", "gguf_run")
    add("import-gguf-empty-file", "import-gguf", "empty.txt", "gguf_run")
    add("import-gguf-a-dir", "import-gguf", "emptydir", "gguf_run")
    add("import-gguf-out-exists", "import-gguf", "random.gguf", "trained")
    add("import-gguf-dtype-unknown", "import-gguf", "random.gguf", "gguf_run", "--dtype", "fp64")
    add("import-gguf-no-arguments", "import-gguf")
    add("import-hf-missing", "import-hf", "nope", "hf_run")
    add("import-hf-a-file", "import-hf", "file.txt", "hf_run")
    add("import-hf-empty-dir", "import-hf", "emptydir", "hf_run")
    add("import-hf-garbage-config", "import-hf", "hf_garbage", "hf_run")
    add("import-hf-truncated-weights", "import-hf", "hf_trunc", "hf_run")
    add("import-hf-out-exists", "import-hf", "hf_trunc", "trained")
    add("import-hf-dtype-unknown", "import-hf", "hf_trunc", "hf_run", "--dtype", "fp64")
    add("export-hf-out-exists", "export-hf", "trained", "hf_trunc")
    add("export-hf-out-under-a-file", "export-hf", "trained", "file.txt/sub")
    add("export-hf-imported-llama", "export-hf", "llama", "exported")

    # icl, demo, bench
    add("icl-data-out-exists", "icl", "data", "data")
    add("icl-data-mb-negative", "icl", "data", "icl_new", "--mb", "-1")
    add("icl-data-text-fraction-above-1", "icl", "data", "icl_new", "--text-fraction", "2")
    add("icl-tasks-n-one", "icl", "tasks", "tasks_new", "--n", "1")
    add("icl-tasks-out-a-file", "icl", "tasks", "file.txt")
    add("icl-tasks-out-under-a-file", "icl", "tasks", "file.txt/sub")
    icl_eval = ["icl", "eval", "trained", "--out", "icl_out", "--n", "2", "--shots", "0"]
    add("icl-eval-templates-unknown", *icl_eval, "--templates", "nope")
    add("icl-eval-n-one", *icl_eval, "--n", "1")
    add("icl-eval-batch-size-zero", *icl_eval, "--batch-size", "0")
    add("icl-eval-out-a-file", "icl", "eval", "trained", "--out", "file.txt", "--n", "2", "--shots", "0")
    add("icl-eval-shots-not-numbers", *icl_eval, "--shots", "x")
    add("icl-eval-set-unknown", *icl_eval, "--set", "secret")
    add("icl-eval-frozen-n-too-big", *icl_eval, "--set", "frozen", "--n", "500")
    add("icl-eval-frozen-template-of-dev", *icl_eval, "--set", "frozen", "--templates", "q-a")
    add("icl-train-data-unknown", "icl", "train", "--out", "icl_run", "--data", "nope", "--minutes", "0.01")
    add("icl-train-minutes-negative", "icl", "train", "--out", "icl_run", "--minutes", "-1")
    add("icl-train-precision-unknown", "icl", "train", "--out", "icl_run", "--precision", "fp16", "--minutes", "0.01")
    add("icl-train-out-a-file", "icl", "train", "--out", "file.txt", "--minutes", "0.01")
    add("icl-mixers-unknown", "icl", "mixers", "--mixers", "dense,nope", "--out", "mixers_out", "--runs-dir", "mixer_runs")
    add("icl-mixers-dense-math", "icl", "mixers", "--mixers", "dense-math", "--out", "mixers_out", "--runs-dir", "mixer_runs")
    add("icl-mixers-minutes-zero", "icl", "mixers", "--mixers", "dense", "--minutes", "0", "--out", "mixers_out")
    add("icl-mixers-steps-zero", "icl", "mixers", "--mixers", "dense", "--steps", "0", "--out", "mixers_out")
    add("icl-ablation-minutes-zero", "icl", "ablation", "--out", "abl", "--runs-dir", "abl_runs", "--minutes", "0")
    add("demo-n-eval-one", "demo", "--out", "demo_run", "--n-eval", "1")
    add("demo-minutes-negative", "demo", "--out", "demo_run", "--minutes", "-1")
    add("demo-out-a-file", "demo", "--out", "file.txt", "--minutes", "0.01")
    add("bench-decode-preset-unknown", "bench", "decode", "--preset", "nope")
    add("bench-decode-tokens-zero", "bench", "decode", "--tokens", "0")
    add("bench-decode-vs-unknown", "bench", "decode", "--vs", "vllm")
    add("bench-decode-keep-quant-without-llamacpp", "bench", "decode", "--keep-quant")
    add("bench-decode-batch-malformed", "bench", "decode", "--vs", "hf", "--batch", "x")
    add("quantize-format-unknown", "quantize", "trained", "--to", "q3_k", "--out", "quant_new")
    add("quantize-out-exists", "quantize", "trained", "--to", "q8_0", "--out", "trained")
    add("quantize-run-missing", "quantize", "nope", "--to", "q8_0", "--out", "quant_new")
    add("quantize-an-adapter", "quantize", "adapter", "--to", "q8_0", "--out", "quant_new")
    add("quantize-a-quantised-run", "quantize", "quantised", "--to", "q4_0", "--out", "quant_new")
    add("finetune-a-quantised-run", "finetune", "quantised", "--data", "ex.jsonl", "--out", "ft_new", "--max-steps", "1")
    add("generate-adapter-on-a-quantised-run", "generate", "quantised", "--adapter", "adapter", *GEN)
    # --dtype: what a loaded model computes in
    add("generate-dtype-unknown", "generate", "trained", "--dtype", "fp16", *GEN)
    add("generate-bf16-on-a-quantised-run", "generate", "quantised", "--dtype", "bf16", *GEN)
    add("chat-dtype-unknown", "chat", "trained", "--message", "Hi", "--dtype", "int8")
    add("eval-dtype-unknown", "eval", "trained", "--shots", "0", "--n", "2", "--dtype", "fp8")
    add("serve-dtype-unknown", "serve", "trained", "--port", "0", "--dtype", "float")
    add("bench-decode-dtype-unknown", "bench", "decode", "--vs", "llamacpp", "--dtype", "fp32,fp64")
    add("bench-kernel-rows-zero", "bench", "kernel", "--rows", "0")
    add("bench-kernel-rows-too-many", "bench", "kernel", "--rows", "1,17")
    add("export-hf-a-quantised-run", "export-hf", "quantised", "hf_new")
    add("bench-lookup-draft-zero", "bench", "lookup", "--run", "trained", "--draft", "0")
    add("bench-lookup-draft-huge", "bench", "lookup", "--run", "trained", "--draft", "65")
    add("bench-lookup-tasks-unknown", "bench", "lookup", "--run", "trained", "--tasks", "nope")
    add("bench-context-mixer-unknown", "bench", "context", "--mixers", "dense,nope", "--out", "ctx_new")
    add("bench-context-lengths-malformed", "bench", "context", "--lengths", "256..x", "--out", "ctx_new")
    add("bench-context-lengths-one", "bench", "context", "--lengths", "1,64", "--out", "ctx_new")
    add("bench-context-out-a-file", "bench", "context", "--lengths", "64", "--out", "file.txt")
    add("bench-train-preset-unknown", "bench", "train", "--preset", "nope")
    add("bench-train-steps-zero", "bench", "train", "--steps", "0")
    add("bench-prepare-mb-negative", "bench", "prepare", "--mb", "-1")
    add("bench-peak-device-unknown", "bench", "peak", "--device", "tpu")
    add("bench-all-out-under-a-file", "bench", "all", "--out", "file.txt/bench.json")
    add("bench-all-out-exists", "bench", "all", "--out", "results.json")
    add("bench-serve-clients-malformed", "bench", "serve", "trained", "--clients", "x")
    add("bench-serve-few-shot-two-levels", "bench", "serve", "trained", "--few-shot", "--clients", "1,2")
    add("bench-serve-few-shot-prompt-past-context", "bench", "serve", "trained", "--few-shot", "--prompt-tokens", "5000")
    add("bench-serve-few-shot-out-a-file", "bench", "serve", "trained", "--few-shot", "--out", "file.txt")
    mix = ["--out", "prepared_new"]
    add("prepare-source-missing", "prepare", "--source", "nope:1", *mix)
    add("prepare-source-weight-zero", "prepare", "--source", "file.txt:0", *mix)
    add("prepare-source-weight-not-a-number", "prepare", "--source", "file.txt:heavy", *mix)
    add("prepare-source-weight-infinite", "prepare", "--source", "file.txt:inf", *mix)
    add("prepare-sources-share-a-name", "prepare", "--source", "file.txt:1", "--source", "file.txt:2", *mix)
    add("prepare-inputs-and-source", "prepare", "file.txt", "--source", "file.txt:1", *mix)
    add("prepare-neither-inputs-nor-source", "prepare", *mix)
    add("prepare-dedup-unknown", "prepare", "--source", "file.txt:1", "--dedup", "simhash", *mix)
    add("prepare-dedup-threshold-above-1", "prepare", "--source", "file.txt:1", "--dedup", "minhash", "--dedup-threshold", "1.5", *mix)
    add("prepare-dedup-ngram-zero", "prepare", "--source", "file.txt:1", "--dedup", "minhash", "--dedup-ngram", "0", *mix)
    add("prepare-dedup-without-source", "prepare", "file.txt", "--dedup", "minhash", *mix)
    add("prepare-quality-keep-malformed", "prepare", "--source", "file.txt:1", "--quality-ref", "file.txt", "--quality-keep", "pareto:0", *mix)
    add("prepare-quality-ref-missing", "prepare", "--source", "file.txt:1", "--quality-ref", "nope", *mix)
    add("prepare-quality-on-unknown-source", "prepare", "--source", "file.txt:1", "--quality-ref", "file.txt", "--quality-on", "web", *mix)
    add("prepare-quality-too-few-documents", "prepare", "--source", "file.txt:1", "--quality-ref", "file.txt", *mix)
    add("prepare-decontaminate-unknown-task", "prepare", "--source", "file.txt:1", "--decontaminate", "nosuchtask", *mix)
    add("prepare-decontaminate-missing-file", "prepare", "--source", "file.txt:1", "--decontaminate", "nope.jsonl", *mix)
    add("prepare-mix-tokens-zero", "prepare", "--source", "file.txt:1", "--mix-tokens", "0", *mix)
    add("prepare-source-out-exists", "prepare", "--source", "file.txt:1", "--out", "data")
    add("prepare-source-out-a-file", "prepare", "--source", "file.txt:1", "--out", "file.txt")
    add("prepare-source-random-jsonl", "prepare", "--source", "random.jsonl:1", *mix)
    add("unknown-command", "fly")
    add("unknown-option", "generate", "trained", "--wings", "2")
    return table


CASES = cases()


# ---------------------------------------------------------------------------- the workspace


def tiny_model_run(path: Path, tokenizer, **spec_changes) -> None:
    config = PRESETS["nano"].model.replace(n_layer=1, context=16, vocab_size=max(tokenizer.vocab_size, 256))
    torch.manual_seed(0)
    RunDir.publish(path, RunConfig(config, {**tokenizer.spec(), **spec_changes}, source={"test": "tiny"}),
                   tokenizer, weights_to_save(GPT(config)))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return build_workspace(tmp_path_factory.mktemp("bad-input"), data_dir)


def build_workspace(w: Path, data_dir: Path) -> Path:
    from fewshot.convert.hf import export_hf
    from fewshot.train.loop import train

    shutil.copytree(data_dir, w / "data")
    train(tiny_config(w / "data", w / "trained", max_steps=2, context=16, batch_size=1, eval_batches=1))
    tiny_model_run(w / "imported", ByteTokenizer())
    from fewshot.convert.quantize import quantize_run

    quantize_run(w / "trained", w / "quantised", "q8_0")
    for name in ("trunc", "zero", "garbage_cfg", "list_cfg", "foreign_tok", "big_tok"):
        shutil.copytree(w / "imported", w / name)
    weights = (w / "trunc" / "model.safetensors").read_bytes()
    (w / "trunc" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (w / "zero" / "model.safetensors").write_bytes(b"")
    (w / "garbage_cfg" / "config.json").write_bytes(os.urandom(512))
    (w / "list_cfg" / "config.json").write_text("[1, 2, 3]")
    bpe = BPETokenizer.train(["the cat sat on the mat " * 50, "a dog ran far away " * 50], 300)
    # foreign: config.json says BPE of 300 ids, tokenizer.json is a different tokenizer's
    other = BPETokenizer.train(["zyx wvu tsr " * 80], 280)
    config = json.loads((w / "foreign_tok" / "config.json").read_text())
    config["tokenizer"] = bpe.spec()
    (w / "foreign_tok" / "config.json").write_text(json.dumps(config))
    other.save(w / "foreign_tok")
    shutil.rmtree(w / "big_tok")
    big = BPETokenizer.train([" ".join(f"w{i}" for i in range(3000))], 1200)
    config = PRESETS["nano"].model.replace(n_layer=1, context=16, vocab_size=256)
    RunDir.publish(w / "big_tok", RunConfig(config, big.spec(), source={"test": "tiny"}), big,
                   weights_to_save(GPT(config)))
    for name, template in TEMPLATES.items():
        tiny_model_run(w / name, bpe, chat_template=template)
    from fewshot.config import ModelConfig

    llama = ModelConfig(n_layer=1, n_head=2, d_model=16, context=16, vocab_size=256, block="llama", bias=False)
    torch.manual_seed(0)
    RunDir.publish(w / "llama", RunConfig(llama, ByteTokenizer().spec(), source={"test": "llama"}), ByteTokenizer(),
                   weights_to_save(GPT(llama)))
    # prepared BPE data: the trained run cannot resume on it
    from fewshot.data.prepare import prepare

    (w / "bpe_src").mkdir()
    (w / "bpe_src" / "a.txt").write_text("the cat sat on the mat. " * 400)
    prepare([w / "bpe_src"], w / "bpe_data", tokenizer="bpe", vocab_size=300, progress=False)
    (w / "junk_data").mkdir()
    (w / "junk_data" / "meta.json").write_bytes(os.urandom(200))
    (w / "emptydir").mkdir()
    (w / "file.txt").write_text("Some text for prepare to read.\n" * 20)
    (w / "empty.txt").write_bytes(b"")
    (w / "random.jsonl").write_bytes(os.urandom(4096))
    (w / "random.gguf").write_bytes(os.urandom(4096))
    (w / "latin1.jsonl").write_bytes('{"input": "caf\xe9", "target": "\xe9t\xe9"}\n'.encode("latin-1") * 5)
    (w / "notext.jsonl").write_text('{"question": 1}\n' * 5)
    (w / "ex.jsonl").write_text("".join(json.dumps({"prompt": f"{i} +1 =", "completion": f" {i + 1}"}) + "\n" for i in range(12)))
    (w / "long.jsonl").write_text(json.dumps({"prompt": "x" * 40, "completion": " y"}) + "\n")  # past the context of 16
    from fewshot.train.finetune import finetune_config

    train(finetune_config(w / "trained", w / "ex.jsonl", w / "adapter", {"max_steps": 2, "batch_size": 2, "progress": False,
                                                                          "tensorboard": False}, method="lora"))
    (w / "tasks.jsonl").write_text("".join(json.dumps({"input": f"{i}", "target": f"{i + 1}"}) + "\n" for i in range(6)))
    (w / "results.json").write_text('{"kept": true}\n')
    (w / "plot.png").write_bytes(b"\x89PNG kept")
    export_hf(w / "trained", w / "hf_trunc")
    weights = (w / "hf_trunc" / "model.safetensors").read_bytes()
    (w / "hf_trunc" / "model.safetensors").write_bytes(weights[:100])
    (w / "hf_garbage").mkdir()
    (w / "hf_garbage" / "config.json").write_bytes(os.urandom(300))
    with contextlib.chdir(w):  # a planned sweep with nothing trained yet, as `fewshot sweep` records it
        from fewshot.data.shards import TokenData
        from fewshot.experiments.scaling.plan import SweepConfig, plan
        from fewshot.experiments.scaling.sweep import save, start

        config, record = start(SweepConfig(data="data", out="sweep", sizes=2, smallest=3000, context=16))
        save(config, record, plan(config, TokenData.open(Path("data")).tokenizer.vocab_size))
    return w


def snapshot(root: Path) -> dict[str, str]:
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        state[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return state


class Hung(Exception):
    pass


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[object, str, str]:
    """(exit status or the escaped exception's traceback, stdout, stderr) of `fewshot ARGV`."""
    from fewshot.cli import main

    def hung(signum, frame):
        raise Hung("the command did not fail: it was still running after 60 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    old_argv = sys.argv
    sys.argv = ["fewshot", *argv]
    try:
        main()
        status: object = 0
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 (what the user would see as a traceback)
        status = traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        sys.argv = old_argv
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_clean_error(status: object, stdout: str, stderr: str) -> None:
    assert isinstance(status, int), f"an exception escaped:\n{status}\nstderr: {stderr[-1500:]}"
    assert "Traceback" not in stderr + stdout, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected one error: line, got {len(errors)} (rc {status}):\n{stderr[-2000:]}"
    assert status == 2, f"rc {status}: {errors[0]}"


@pytest.mark.parametrize("argv", [argv for _, argv in CASES], ids=[name for name, _ in CASES])
def test_bad_input_gets_one_error_line_and_changes_nothing(argv: list[str], workspace: Path, capsys,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    status, stdout, stderr = run_in_process(argv, capsys)
    after = snapshot(workspace)
    assert_one_clean_error(status, stdout, stderr)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the workspace changed: {changed[:10]}"


def test_the_table_covers_every_command_and_has_at_least_100_cases() -> None:
    from typer.main import get_command

    from fewshot.cli import app

    def leaves(command, prefix=()):
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            yield " ".join(prefix)
            return
        for name, sub in subcommands.items():
            yield from leaves(sub, (*prefix, name))

    commands = set(leaves(get_command(app)))
    covered = {" ".join(argv[:2]) if argv[0] in ("icl", "bench", "sweep") else argv[0] for _, argv in CASES}
    assert commands <= covered, f"commands without bad-input cases: {sorted(commands - covered)}"
    assert len(CASES) >= 100


SAMPLE = ["generate-truncated-weights", "train-out-under-a-file", "prepare-out-under-the-input-file", "eval-out-a-dir",
          "chat-tpl-divide-by-zero", "serve-api-key-empty", "train-resume-imported", "import-gguf-random-bytes"]


@pytest.mark.parametrize("name", SAMPLE)
def test_the_same_cases_hold_in_a_real_process(name: str, workspace: Path) -> None:
    argv = dict(CASES)[name]
    before = snapshot(workspace)
    done = subprocess.run([*fewshot_command(), *argv], cwd=workspace, capture_output=True, text=True, timeout=120)
    assert_one_clean_error(done.returncode, done.stdout, done.stderr)
    assert snapshot(workspace) == before

"""`fewshot bench all`: every benchmark in one run, as bench.json plus a markdown table.

bench.json keys other tools read (keep them stable): peak.fp32_gflops, peak.bf16_gflops,
train.tok_s, train.hf_tok_s, train.ratio_vs_hf, train.mfu, decode.batch1.ratio_vs_hf,
decode.batch8.ratio_vs_hf, decode.llamacpp_ratio (batch 1, when llama.cpp is installed),
machine, date. Everything else is there to explain them.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from fewshot.files import atomic_write_text, write_json

# The defaults keep `bench all` within a few minutes on 2 loaded CPU cores.
DEFAULTS = dict(preset="mini", batch=8, seq=256, train_steps=5, tokens=64, batches=(1, 8), decode_repeats=3,
                contexts=(64, 128, 256), prepare_mb=8.0)


def machine_info(device: str = "cpu") -> dict[str, Any]:
    from fewshot.device import cpu_has_native_bf16

    info: dict[str, Any] = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__, "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith("model name")), "")
        return line.partition(":")[2].strip() or platform.processor()
    except OSError:
        return platform.processor()


def bench_all(preset: str = DEFAULTS["preset"], batch: int = DEFAULTS["batch"], seq: int = DEFAULTS["seq"],
              train_steps: int = DEFAULTS["train_steps"], dtype: str = "auto", tokens: int = DEFAULTS["tokens"],
              batches: tuple[int, ...] = DEFAULTS["batches"], decode_repeats: int = DEFAULTS["decode_repeats"],
              contexts: tuple[int, ...] = DEFAULTS["contexts"], prepare_mb: float = DEFAULTS["prepare_mb"],
              device: str = "cpu", peak_sizes: tuple[int, ...] | None = None, llamacpp: bool = True,
              compile_decode: bool = True, progress: bool = False) -> dict[str, Any]:
    """Peak, train vs HF, decode vs HF and prepare; one dict, the shape of bench.json.

    dtype "auto" trains in bf16 where the hardware has it (train.use_bf16) and fp32 elsewhere:
    emulated bf16 would only measure the emulation. prepare_mb 0 skips the prepare benchmark.
    `llamacpp`: also SmolLM2 against llama.cpp on CPU, if the bench-llamacpp extra is installed.
    `compile_decode`: decode vs HF also with our compiled step (GPT.compile_decoding), in the same rounds
    (the stable `ratio_vs_hf` keys stay the eager default; `compiled_ratio_vs_hf` sits beside
    them). SmolLM2 meets llama.cpp eager here: compiling its 30 blocks takes minutes, which
    `fewshot bench decode --vs llamacpp --compile` spends on request.
    """
    from fewshot.bench.decode import bench_decode_vs_hf, decode_cost_by_context
    from fewshot.bench.peak import measure_peak
    from fewshot.bench.peer import hf_peer
    from fewshot.bench.prepare import bench_prepare
    from fewshot.bench.train import bench_train_vs_hf
    from fewshot.config import preset as get_preset
    from fewshot.model import GPT
    from fewshot.device import pick_device, use_bf16

    started = time.perf_counter()
    target = pick_device(device)
    train_dtype = dtype if dtype != "auto" else ("bf16" if use_bf16("auto", target) else "fp32")
    result: dict[str, Any] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine_info(str(target))}
    peak = measure_peak(str(target), sizes=peak_sizes, progress=progress)
    result["peak"] = peak.to_json()
    config = get_preset(preset)
    train = bench_train_vs_hf(config, batch, seq, dtype=train_dtype, steps=train_steps, device=str(target),
                              peak_gflops=peak.gflops(train_dtype), progress=progress)
    result["train"] = {"preset": preset, **train.to_json()}

    prompt_tokens = 16
    context = max(config.context, prompt_tokens + tokens, max(contexts) + 17)
    torch.manual_seed(0)
    model = GPT(config.replace(context=context, dropout=0.0)).to(target).eval()
    peer = hf_peer(model)
    decode: dict[str, Any] = {"preset": preset, "context": context, "tokens": tokens}
    for rows in batches:
        decode[f"batch{rows}"] = bench_decode_vs_hf(model, peer, rows, tokens, prompt_tokens, repeats=decode_repeats,
                                                    compiled=compile_decode,
                                                    progress=progress).to_json()
    decode["ms_per_token_by_context"] = {str(c): ms for c, ms in decode_cost_by_context(model, contexts, progress=progress).items()}
    versus = _vs_llamacpp(batches, tokens, decode_repeats, progress) if llamacpp and target.type == "cpu" else None
    if versus:
        decode["llamacpp"] = versus
        decode["llamacpp_ratio"] = versus["batch1"]["ratio"] if "batch1" in versus else None
    result["decode"] = decode
    if prepare_mb > 0:
        result["prepare"] = bench_prepare(prepare_mb, progress=progress).to_json()
    result["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["seconds"] = time.perf_counter() - started
    return result


def _vs_llamacpp(batches: tuple[int, ...], tokens: int, repeats: int, progress: bool) -> dict[str, Any] | None:
    """SmolLM2-135M against llama.cpp on its GGUF file, when the bench-llamacpp extra is installed."""
    import importlib.util

    from fewshot.bench.llamacpp import bench_decode_vs_llamacpp
    from fewshot.convert.gguf import smollm2_gguf
    from fewshot.errors import FewshotError

    if importlib.util.find_spec("llama_cpp") is None:
        return None
    try:
        gguf = smollm2_gguf()
    except FewshotError:
        return None
    rows = bench_decode_vs_llamacpp(gguf, batches, tokens, repeats, progress=progress)
    return {"gguf": gguf.name, **{f"batch{r.batch}": r.to_json() for r in rows}}


def bench_paths(out: Path) -> tuple[Path, Path]:
    """bench.json and, beside it, bench.md."""
    out = Path(out)
    return out, out.with_suffix(".md") if out.suffix != ".md" else out.with_name(out.name + ".md")


def write_bench(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """bench.json and, beside it, bench.md with the table."""
    out, table = bench_paths(out)
    write_json(out, result)
    atomic_write_text(table, markdown_table(result) + "\n")
    return out, table


def markdown_table(result: dict[str, Any]) -> str:
    machine, peak = result["machine"], result["peak"]
    load = machine.get("load_average")
    lines = [
        f"fewshot bench all, {result['date']}: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads, "
        f"torch {machine['torch']}, transformers {machine.get('transformers')}"
        + (f", load average {load[0]:.2f}" if load else ""),
        "",
        "| benchmark | fewshot | transformers | ratio |",
        "|---|---:|---:|---:|",
        f"| matmul peak fp32 / bf16 (GFLOP/s, measured) | {peak['fp32_gflops']:,.1f} / {peak['bf16_gflops']:,.1f} | | |",
    ]
    train = result.get("train")
    if train:
        mfu = f"; MFU {train['mfu']:.1%} vs {train['hf_mfu']:.1%}" if train.get("mfu") is not None else ""
        lines.append(f"| train {train['preset']} {train['dtype']}, {train['batch']}x{train['seq']} (tok/s{mfu}) | "
                     f"{train['tok_s']:,.0f} | {train['hf_tok_s']:,.0f} | {train['ratio_vs_hf']:.2f}x |")
    decode = result.get("decode", {})
    for key, row in decode.items():
        if key.startswith("batch"):
            match = "" if row["outputs_match"] else " (outputs differ)"
            lines.append(f"| decode {decode['preset']} {row['dtype']}, batch {row['batch']}, {row['tokens']} new tokens (tok/s){match} | "
                         f"{row['tok_s']:,.0f} | {row['hf_tok_s']:,.0f} | {row['ratio_vs_hf']:.2f}x |")
            if row.get("compiled_tok_s") is not None:
                match = "" if row["compiled_outputs_match"] else " (outputs differ)"
                lines.append(f"| decode {decode['preset']} {row['dtype']} compiled, batch {row['batch']}, {row['tokens']} new "
                             f"tokens (tok/s){match} | {row['compiled_tok_s']:,.0f} | {row['hf_tok_s']:,.0f} | "
                             f"{row['compiled_ratio_vs_hf']:.2f}x |")
    for key, row in decode.get("llamacpp", {}).items():
        if key.startswith("batch"):
            compiled = " compiled" if row.get("fewshot_compiled") else ""
            lines.append(f"| decode {decode['llamacpp']['gguf']} (fewshot {row['fewshot_dtype']}{compiled}, llama.cpp "
                         f"{'/'.join(row['gguf_types'])}), batch {row['batch']}, {row['tokens']} new tokens (tok/s; "
                         f"third column: llama.cpp) | {row['tok_s']:,.1f} | {row['llamacpp_tok_s']:,.1f} | {row['ratio']:.2f}x |")
    if "ms_per_token_by_context" in decode:
        costs = ", ".join(f"{c}: {ms:.2f}" for c, ms in decode["ms_per_token_by_context"].items())
        lines.append(f"| decode step, batch 1, ms/token by context ({costs}) | | | |")
    prep = result.get("prepare")
    if prep:
        lines.append(f"| prepare byte, {prep['mb']:.1f} MB (MB/s) | {prep['byte_mb_s']:,.2f} | | |")
        lines.append(f"| prepare BPE {prep['vocab_size']} incl. training vs bare encode_batch (MB/s) | "
                     f"{prep['bpe_mb_s']:,.2f} | {prep['encode_mb_s']:,.2f} | {prep['bpe_ratio_vs_encode']:.2f}x |")
    if "seconds" in result:
        lines += ["", f"{result['seconds']:.0f} s in all. Ratios > 1 mean fewshot is faster; each is the ratio of medians "
                      "over interleaved runs (A B A B) with warm-up, same weights, dtype, threads and shapes."]
    return "\n".join(lines)

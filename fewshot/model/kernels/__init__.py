"""Two CPU kernels for decoding, one small C++ extension: the quantised-weight matmul
(qmatmul.cpp; an AVX2 copy and an AVX512-VNNI one, chosen by the CPU, the same numbers from
both) and one query's attention over a run of cached keys, float32 or bfloat16 (attention.cpp).

`make` builds it once into the virtual environment (`python -m fewshot.model.kernels`, well
under a minute); later processes load the built library. Where it cannot be built (no C++
compiler) or run (a CPU without AVX2/FMA/F16C), `qmatmul()` and `attend_one()` are None and a
one-line notice says why: quantised layers then dequantise their weights and use torch's
matmul, which gives the same numbers up to the activations' int8 rounding, and attention uses
torch's scaled_dot_product_attention, more slowly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from fewshot.config import QUANT_FORMATS

SOURCES = [Path(__file__).with_name(name) for name in ("qmatmul.cpp", "attention.cpp")]
BUILD_DIR = Path(sys.prefix) / "fewshot-kernels"
FORMAT_IDS = {fmt: i for i, fmt in enumerate(QUANT_FORMATS)}  # qmatmul.cpp's Format enum, in this order

_loaded: list = []  # [(module, {name: operator}) or None], once per process


def qmatmul():
    """`qmatmul(x, weight, scales, mins, format_id)` (qmatmul.cpp) as a torch operator, or None with a notice."""
    return _operators()["qmatmul"] if _operators() else None


def attend_one():
    """`attend_one(q, keys, values, first, stop)` (attention.cpp) as a torch operator, or None with a notice."""
    return _operators()["attend_one"] if _operators() else None


def isa() -> str | None:
    """The instruction set the quantised products run on: "avx512vnni" where the CPU has it,
    else "avx2"; None where the kernels are unavailable. Both give the same numbers."""
    return _module().isa() if _module() else None


@contextlib.contextmanager
def on_isa(name: str):
    """Run the quantised products on `name` ("avx2" or "avx512vnni") inside the block: the tests
    and `fewshot bench kernel` compare the two on one machine."""
    if _module() is None:
        raise RuntimeError("fewshot's CPU kernels are unavailable")
    previous = _module().set_isa(name)
    try:
        yield
    finally:
        _module().set_isa(previous)


def _module():
    _operators()
    return _loaded[0][0] if _loaded[0] else None


def _operators() -> dict | None:
    if not _loaded:
        module = _load()
        _loaded.append(None if module is None else (module, _as_operators(module)))
    return _loaded[0][1] if _loaded[0] else None


def _load():
    # torch runs `ninja` from PATH; the pinned ninja wheel puts it beside this interpreter, which
    # is not on PATH when the venv's python is called by its path (as make does).
    if shutil.which("ninja") is None:
        os.environ["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))
    try:
        from torch.utils.cpp_extension import load

        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        module = load("fewshot_kernels", [str(source) for source in SOURCES], build_directory=str(BUILD_DIR),
                      extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as error:  # no compiler, no ninja, a failed build: the dequantised path works anyway
        print(f"notice: fewshot's CPU kernels are unavailable ({str(error).splitlines()[0][:120]}); quantised "
              "layers dequantise instead, and decoding attends with torch's attention (slower)", file=sys.stderr)
        return None
    if not module.available():
        print("notice: this CPU lacks AVX2/FMA/F16C; quantised layers dequantise instead, and decoding attends with "
              "torch's attention (slower)", file=sys.stderr)
        return None
    return module


def _as_operators(module) -> dict:
    """Each kernel as a torch operator: inside torch.compile the one the library registers in C++
    (fewshot::qmatmul, fewshot::attend_one), so the compiled graph keeps it as one opaque node and
    fuses the small ops around it, instead of breaking at every call; in eager mode the kernel
    itself, which skips even the C++ dispatcher."""
    import torch

    @torch.library.register_fake("fewshot::qmatmul")
    def _(x, weight, scales, mins, fmt):
        return x.new_empty(x.shape[0], weight.shape[0])

    @torch.library.register_fake("fewshot::attend_one")
    def _(q, keys, values, first, stop):
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    def operator(name: str):
        kernel, op = getattr(module, name), getattr(torch.ops.fewshot, name).default

        def call(*args):
            return op(*args) if torch.compiler.is_compiling() else kernel(*args)

        return call

    return {name: operator(name) for name in ("qmatmul", "attend_one")}

"""The quantised-matmul kernel on each instruction set this CPU has, against MKL's fp32 product.

`fewshot bench kernel` multiplies a few rows (a decoding step's batch) by weight matrices of
SmolLM2-135M's shapes, kept as Q8_0 or Q4_1 blocks: the kernel's AVX2 copy, its AVX512-VNNI
copy where the CPU has VNNI (both give the same numbers, tests/model/test_quant.py), and
torch's fp32 `F.linear` on the dequantised weights. All of them interleaved, medians. This is
how the copy that runs is chosen, on each CPU kind (README, "Performance").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from fewshot.bench.timing import interleave, median
from fewshot.errors import FewshotError

# (out, in) of SmolLM2-135M's products: attention in/out, the grouped keys/values, the MLP, the head
SHAPES = ((576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576))
FORMATS = ("q4_1", "q8_0")


@dataclass(frozen=True)
class KernelTiming:
    rows: int
    fmt: str
    shape: tuple[int, int]
    micros: dict[str, float]  # per product: "fp32" (MKL, dequantised), "avx2", "avx512vnni" where the CPU has it

    def to_json(self) -> dict:
        return asdict(self)


def bench_kernel(rows: tuple[int, ...] = (1, 8, 16), shapes: tuple[tuple[int, int], ...] = SHAPES,
                 formats: tuple[str, ...] = FORMATS, repeats: int = 5, calls: int = 20,
                 progress: bool = False) -> list[KernelTiming]:
    """Microseconds per product of each route, for every rows x format x shape."""
    from fewshot.model import kernels
    from fewshot.model.quant import KERNEL_ROWS, QuantLinear

    if kernels.isa() is None:
        raise FewshotError("bench kernel: fewshot's CPU kernels are unavailable here (see the notice above)")
    if min(rows, default=0) < 1 or max(rows) > KERNEL_ROWS:
        raise FewshotError(f"bench kernel: --rows must be 1 to {KERNEL_ROWS} (one kernel call), got {rows}")
    isas = ("avx2", "avx512vnni") if kernels.isa() == "avx512vnni" else ("avx2",)
    torch.manual_seed(0)
    results = []
    for fmt in formats:
        for out_features, in_features in shapes:
            layer = QuantLinear.from_linear(torch.nn.Linear(in_features, out_features, bias=False), fmt)
            dense = layer.dequantized()
            for n in rows:
                x = torch.randn(n, in_features)

                def repeat(product):
                    return lambda: [product() for _ in range(calls)]

                def on(isa):
                    def run():
                        with kernels.on_isa(isa):
                            layer(x)
                    return run

                runs = {"fp32": repeat(lambda: F.linear(x, dense))} | {isa: repeat(on(isa)) for isa in isas}
                seconds = interleave(runs, repeats, 1, torch.device("cpu"), progress,
                                     label=f"{fmt} {out_features}x{in_features}, {n} rows")
                micros = {name: median(s) / calls * 1e6 for name, s in seconds.items()}
                results.append(KernelTiming(n, fmt, (out_features, in_features), micros))
    return results

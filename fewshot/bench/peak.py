"""The machine's matmul peak, measured: the denominator of MFU.

MFU against a datasheet number says little on a CPU: the attainable rate depends on the
vector units, the BLAS build and, for bf16, on whether the hardware has bf16 instructions
at all (without AVX512-BF16/AMX, oneDNN emulates bf16 and it runs far below fp32). So the
peak is timed here: large square matmuls per dtype, best of several, in GFLOP/s. A GPU's
datasheet figure (dense, no sparsity) is printed beside it when the model is known.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from fewshot.bench.timing import progress_bar, timed
from fewshot.device import DTYPES

SLOW_CALL_S = 0.5
# Dense (non-sparse) tensor throughput from NVIDIA's datasheets, TFLOP/s; matched on the
# device name. Only for printing beside the measured peak: MFU uses the measured one.
DATASHEET_TFLOPS = {
    "H100 PCIe": {"fp32": 51.0, "bf16": 756.0},
    "H100": {"fp32": 67.0, "bf16": 989.0},  # SXM5
    "H200": {"fp32": 67.0, "bf16": 989.0},
}


@dataclass(frozen=True)
class Peak:
    device: str
    fp32_gflops: float
    bf16_gflops: float
    sizes: tuple[int, ...]  # square matmul sizes tried; the best counts
    repeats: int
    datasheet_tflops: dict[str, float] | None  # the GPU's datasheet figures, when known

    def gflops(self, dtype: str) -> float:
        return self.fp32_gflops if dtype == "fp32" else self.bf16_gflops

    def to_json(self) -> dict:
        return asdict(self)


def measure_peak(device: str = "cpu", sizes: tuple[int, ...] | None = None, repeats: int = 5,
                 progress: bool = False, dtypes: tuple[str, ...] = tuple(DTYPES)) -> Peak:
    """Best GFLOP/s of an n x n matmul per dtype, over sizes, two kernels and `repeats` runs.

    Both `torch.mm` and `F.linear` are tried: on CPU they can reach different oneDNN/BLAS
    paths (for bf16 without native support, mm can be ten times slower than linear), and
    the model's layers are linears. The better one is what the machine can do. A dtype left
    out of `dtypes` is not timed and reads 0.
    """
    target = torch.device(device)
    if sizes is None:
        sizes = (4096, 8192) if target.type == "cuda" else (1024, 2048)
    best = {name: 0.0 for name in DTYPES}
    with progress_bar(progress) as bar:
        task = bar.add_task("matmul peak", total=len(dtypes) * len(sizes) * 2)
        for name in dtypes:
            dtype = DTYPES[name]
            slow: set[str] = set()  # kernels too slow to be worth trying at a larger size
            for n in sizes:
                generator = torch.Generator().manual_seed(n)
                a = torch.randn(n, n, generator=generator).to(target, dtype)
                b = torch.randn(n, n, generator=generator).to(target, dtype)
                for kernel, run in (("mm", lambda: torch.mm(a, b)), ("linear", lambda: F.linear(a, b))):
                    bar.advance(task)
                    if kernel in slow:
                        continue
                    warmup, _ = timed(run, target)
                    # An emulated kernel can take seconds per call: time it once more, not `repeats` times.
                    for _ in range(repeats if warmup < SLOW_CALL_S else 1):
                        seconds, _ = timed(run, target)
                        best[name] = max(best[name], 2 * n**3 / seconds / 1e9)
                    if warmup >= SLOW_CALL_S:
                        slow.add(kernel)
                del a, b
    return Peak(str(target), best["fp32"], best["bf16"], tuple(sizes), repeats, datasheet(target))


def datasheet(device: torch.device) -> dict[str, float] | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((dict(figures) for key, figures in DATASHEET_TFLOPS.items() if key in name), None)

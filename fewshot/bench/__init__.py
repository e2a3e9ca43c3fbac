"""Benchmarks that compare two ways of doing the same work side by side, in one run.

One module per benchmark: decode (KV cache vs recompute; fewshot vs transformers), train
(fp32 vs bf16; fewshot vs transformers, with MFU), peak (the measured matmul peak MFU is
relative to), prepare (tokenization and sharding), report (`bench all`: bench.json and a
markdown table). The transformers peer holds exactly our weights (peer.py).
"""

from fewshot.bench.decode import (
    DecodeBench,
    DecodeVsHF,
    bench_decode,
    bench_decode_vs_hf,
    decode_cost_by_context,
    greedy_cached,
    greedy_recompute,
)
from fewshot.bench.peak import Peak, measure_peak
from fewshot.bench.train import PrecisionBench, TrainVsHF, bench_train_precision, bench_train_vs_hf

__all__ = [
    "DecodeBench", "DecodeVsHF", "Peak", "PrecisionBench", "TrainVsHF", "bench_decode", "bench_decode_vs_hf",
    "bench_train_precision", "bench_train_vs_hf", "decode_cost_by_context", "greedy_cached",
    "greedy_recompute", "measure_peak",
]

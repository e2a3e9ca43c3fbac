// Few-row matrix products with block-quantised weights (ggml's Q8_0, Q4_0, Q4_1 blocks of
// 32 values), for decoding: y (M, N) = x (M, K) @ W^T with W kept quantised in memory.
//
// As llama.cpp does, each row of x is first quantised to int8 in blocks of 32 (one float
// scale per block), so a block's dot product is 32 int8 x int8 products summed in integer
// registers, scaled once. The block loop (qblocks.h) is compiled twice, for AVX2 and for
// AVX512-VNNI, each with a function-level target attribute, so the library loads on any
// x86-64 CPU and runs the VNNI copy where the CPU has it; `available()` says whether this CPU
// can run either, and the Python side falls back to dequantising when it cannot.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <immintrin.h>
#include <string>

#include "avx2.h"

namespace {

constexpr int64_t kBlock = 32;

enum Format { Q8_0 = 0, Q4_0 = 1, Q4_1 = 2 };

// x (M, K) float -> int8 values (M, K), a scale per block (M, K/32), and per block
// scale * sum(values), which Q4_1's per-block minimum multiplies.
__attribute__((target("avx2,fma")))
void quantize_rows(const float* x, int64_t rows, int64_t k, int8_t* q, float* scale, float* scaled_sum) {
  const int64_t blocks = k / kBlock;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      const float* v = x + r * k + b * kBlock;
      __m256 amax = _mm256_setzero_ps();
      const __m256 sign = _mm256_set1_ps(-0.0f);
      for (int i = 0; i < kBlock; i += 8) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(v + i)));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float d = _mm_cvtss_f32(m4) / 127.0f;
      const float inv = d > 0.0f ? 1.0f / d : 0.0f;
      int sum = 0;
      int8_t* out = q + r * k + b * kBlock;
      for (int i = 0; i < kBlock; ++i) {
        const int value = static_cast<int>(std::nearbyint(v[i] * inv));
        out[i] = static_cast<int8_t>(value);
        sum += value;
      }
      scale[r * blocks + b] = d;
      scaled_sum[r * blocks + b] = d * static_cast<float>(sum);
    }
  }
}

constexpr int64_t kMaxRows = 16;  // rows of x per call; more go through a dequantised matmul (model/quant.py)
constexpr int64_t kTileRows = 8;  // rows of x per weight row pass: their accumulators and the operands fit 16 registers

namespace avx2 {
#define KERNEL_TARGET "avx2,fma,f16c"
#define KERNEL_VNNI 0
#include "qblocks.h"
#undef KERNEL_TARGET
#undef KERNEL_VNNI
}  // namespace avx2

namespace vnni {
#define KERNEL_TARGET "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"
#define KERNEL_VNNI 1
#include "qblocks.h"
#undef KERNEL_TARGET
#undef KERNEL_VNNI
}  // namespace vnni

bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

bool cpu_has_vnni() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw");
}

// Which copy of the block loop runs: VNNI where the CPU has it. `set_isa` lets the tests and
// `fewshot bench kernel` run both copies on one machine.
std::atomic<bool> use_vnni{cpu_has_vnni()};

template <Format F>
void matmul_rows_on_isa(const int8_t* xq, const float* xd, const float* xs, int64_t rows, int64_t k, const uint8_t* weight,
                        const at::Half* scales, const at::Half* mins, int64_t n0, int64_t n1, float* y, int64_t n) {
  if (use_vnni.load(std::memory_order_relaxed)) vnni::matmul_rows<F>(xq, xd, xs, rows, k, weight, scales, mins, n0, n1, y, n);
  else avx2::matmul_rows<F>(xq, xd, xs, rows, k, weight, scales, mins, n0, n1, y, n);
}

void matmul(Format format, const int8_t* xq, const float* xd, const float* xs, int64_t rows, int64_t k,
            const uint8_t* weight, const at::Half* scales, const at::Half* mins, int64_t n0, int64_t n1,
            float* y, int64_t n) {
  if (format == Q8_0) matmul_rows_on_isa<Q8_0>(xq, xd, xs, rows, k, weight, scales, mins, n0, n1, y, n);
  else if (format == Q4_0) matmul_rows_on_isa<Q4_0>(xq, xd, xs, rows, k, weight, scales, mins, n0, n1, y, n);
  else matmul_rows_on_isa<Q4_1>(xq, xd, xs, rows, k, weight, scales, mins, n0, n1, y, n);
}

}  // namespace

bool available() { return cpu_has_avx2(); }

std::string isa() { return use_vnni ? "avx512vnni" : "avx2"; }

// Runs the products on `name` ("avx2" or "avx512vnni") from now on; returns the previous one.
std::string set_isa(const std::string& name) {
  TORCH_CHECK(name == "avx2" || name == "avx512vnni", "set_isa: avx2 or avx512vnni, got ", name);
  TORCH_CHECK(name == "avx2" || cpu_has_vnni(), "set_isa: this CPU lacks AVX512-VNNI");
  const std::string previous = isa();
  use_vnni = name == "avx512vnni";
  return previous;
}

// x (M, K) float32; weight: int8 (N, K) for Q8_0, uint8 (N, K/2) for Q4_0/Q4_1; scales and
// mins float16 (N, K/32). Returns (M, N) float32.
torch::Tensor qmatmul(torch::Tensor x, torch::Tensor weight, torch::Tensor scales, c10::optional<torch::Tensor> mins,
                      int64_t format) {
  TORCH_CHECK(cpu_has_avx2(), "qmatmul: this CPU lacks AVX2/FMA/F16C");
  TORCH_CHECK(format >= Q8_0 && format <= Q4_1, "qmatmul: unknown format ", format);
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.device().is_cpu(), "qmatmul: x must be a 2-D float32 CPU tensor");
  TORCH_CHECK(scales.scalar_type() == torch::kFloat16 && scales.is_contiguous(), "qmatmul: scales must be contiguous float16");
  const int64_t rows = x.size(0), k = x.size(1), n = weight.size(0);
  TORCH_CHECK(k % kBlock == 0, "qmatmul: K must be a multiple of 32, got ", k);
  TORCH_CHECK(rows >= 1 && rows <= kMaxRows, "qmatmul: x must have 1 to ", kMaxRows, " rows, got ", rows);
  TORCH_CHECK(weight.is_contiguous() && weight.size(1) == (format == Q8_0 ? k : k / 2), "qmatmul: weight shape does not match K");
  TORCH_CHECK(scales.size(0) == n && scales.size(1) == k / kBlock, "qmatmul: scales must be (N, K/32)");
  const bool with_mins = format == Q4_1;
  TORCH_CHECK(with_mins == (mins.has_value() && mins->defined()), "qmatmul: Q4_1 needs mins, the others none");
  if (with_mins) TORCH_CHECK(mins->scalar_type() == torch::kFloat16 && mins->is_contiguous() && mins->sizes() == scales.sizes(),
                             "qmatmul: mins must be contiguous float16 like scales");
  auto xc = x.contiguous();
  auto xq = torch::empty({rows, k}, torch::kInt8);
  auto xd = torch::empty({rows, k / kBlock}, torch::kFloat32);
  auto xs = torch::empty({rows, k / kBlock}, torch::kFloat32);
  quantize_rows(xc.data_ptr<float>(), rows, k, xq.data_ptr<int8_t>(), xd.data_ptr<float>(), xs.data_ptr<float>());
  auto y = torch::empty({rows, n}, torch::kFloat32);
  const auto* w = static_cast<const uint8_t*>(weight.data_ptr());
  const at::Half* m = with_mins ? mins->data_ptr<at::Half>() : nullptr;
  // Threads split the weight's rows: each reads its share of W once for all M rows of x.
  at::parallel_for(0, n, 16, [&](int64_t n0, int64_t n1) {
    matmul(static_cast<Format>(format), xq.data_ptr<int8_t>(), xd.data_ptr<float>(), xs.data_ptr<float>(), rows, k,
                w, scales.data_ptr<at::Half>(), m, n0, n1, y.data_ptr<float>(), n);
  });
  return y;
}

// The same function as the operator fewshot::qmatmul, registered with torch's C++ dispatcher, so
// a torch.compile'd decoding step calls it without a trip through Python, whose dispatch cost
// more than a small product (docs/code-notes.md, "Decoding").
TORCH_LIBRARY(fewshot, m) {
  m.def("qmatmul(Tensor x, Tensor weight, Tensor scales, Tensor? mins, int fmt) -> Tensor");
}

TORCH_LIBRARY_IMPL(fewshot, CPU, m) { m.impl("qmatmul", &qmatmul); }

torch::Tensor attend_one(torch::Tensor q, torch::Tensor keys, torch::Tensor values, torch::Tensor first,
                         torch::Tensor stop);  // attention.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("available", &available, "Whether this CPU runs the AVX2 kernels");
  m.def("isa", &isa, "The instruction set the quantised products run on: avx512vnni or avx2");
  m.def("set_isa", &set_isa, "Run the quantised products on avx2 or avx512vnni; returns the previous one");
  m.def("qmatmul", &qmatmul, "y = x @ dequantize(weight)^T with x quantised to int8 blocks");
  m.def("attend_one", &attend_one, "one query per row against a run of cached keys");
}

// Few-row matrix products with block-quantised weights (ggml's Q8_0, Q4_0, Q4_1 blocks of
// 32 values), for decoding: y (M, N) = x (M, K) @ W^T with W kept quantised in memory.
//
// As llama.cpp does, each row of x is first quantised to int8 in blocks of 32 (one float
// scale per block), so a block's dot product is 32 int8 x int8 products summed in integer
// registers, scaled once. The AVX2 path is compiled with a function-level target attribute,
// so the library loads on any x86-64 CPU; `available()` says whether this CPU can run it,
// and the Python side falls back to dequantising when it cannot.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <immintrin.h>

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

// 16 bytes of nibbles -> 32 bytes: byte j's low nibble is value j, its high nibble value j+16.
__attribute__((target("avx2,fma")))
inline __m256i unpack_nibbles(const uint8_t* packed) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i low = _mm_and_si128(bytes, mask);
  const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
  return _mm256_set_m128i(high, low);
}

constexpr int64_t kMaxRows = 16;  // rows of x per call; more go through a dequantised matmul (model/quant.py)
constexpr int64_t kTileRows = 8;  // rows of x per weight row pass: their accumulators and the operands fit 16 registers

// One weight block against row block `xv` of x: 8 int32 partial sums, as floats.
template <Format F>
__attribute__((target("avx2,fma"), always_inline))
inline __m256 block_dot(__m256i wv, __m256i magnitude, __m256i xv) {
  // maddubs multiplies unsigned by signed bytes: give it |w| and x carrying w's sign.
  if (F != Q4_1) xv = _mm256_sign_epi8(xv, wv);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, xv), _mm256_set1_epi16(1)));
}

template <Format F>
__attribute__((target("avx2,fma"), always_inline))
inline __m256i load_block(const uint8_t* w, int64_t b) {
  if (F == Q8_0) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * kBlock));
  if (F == Q4_0) return _mm256_sub_epi8(unpack_nibbles(w + b * 16), _mm256_set1_epi8(8));
  return unpack_nibbles(w + b * 16);  // Q4_1: unsigned nibbles go straight into maddubs
}

// Weight block b against R rows of x, into acc; Q4_1's minimum times x's block sum into offset.
template <Format F, int R>
__attribute__((target("avx2,fma,f16c"), always_inline))
inline void block_step(const uint8_t* w, const uint16_t* d16, const uint16_t* m16, const int8_t* xq, const float* xd,
                       const float* xs, int64_t k, int64_t blocks, int64_t b, __m256* acc, float* offset) {
  const float dw = _cvtsh_ss(d16[b]);
  const __m256i wv = load_block<F>(w, b);
  const __m256i magnitude = F == Q4_1 ? wv : _mm256_sign_epi8(wv, wv);
  for (int r = 0; r < R; ++r) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + r * k + b * kBlock));
    acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xd[r * blocks + b]), block_dot<F>(wv, magnitude, xv), acc[r]);
    if (F == Q4_1) offset[r] += _cvtsh_ss(m16[b]) * xs[r * blocks + b];
  }
}

// One weight row (its blocks w, scales d16, Q4_1 minimums m16) against R rows of x; y[r * n]
// receives row r's product. The format and R are template parameters, so the accumulators live
// in registers and the per-format branches vanish from the block loop (with them in the loop and
// the accumulators in a run-time-sized array, batch-1 decoding spent its time on stack round
// trips). Each row's sum runs block by block in one accumulator, whatever R is: a row's result
// does not depend on the batch it came in. (Two accumulators for even and odd blocks were
// measured too; they change every product's rounding, and the server test that compares
// batched greedy text with generate's, whose prefill chunks differ, then diverged at a near tie.)
template <Format F, int R>
__attribute__((target("avx2,fma,f16c"), always_inline))
inline void row_tile(const uint8_t* w, const uint16_t* d16, const uint16_t* m16, const int8_t* xq, const float* xd,
                     const float* xs, int64_t k, int64_t blocks, float* y, int64_t n) {
  __m256 acc[R];
  float offset[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    offset[r] = 0.0f;
  }
  for (int64_t b = 0; b < blocks; ++b) block_step<F, R>(w, d16, m16, xq, xd, xs, k, blocks, b, acc, offset);
  for (int r = 0; r < R; ++r) y[r * n] = horizontal_sum(acc[r]) + offset[r];
}

// Weight rows n0..n1 against every row of x, kTileRows rows at a time inside each weight row, so
// each weight row is read from memory once (a second tile finds it in L1): batch-8 decoding
// reads W once, as batch 1 does.
template <Format F>
__attribute__((target("avx2,fma,f16c")))
void matmul_rows(const int8_t* xq, const float* xd, const float* xs, int64_t rows, int64_t k, const uint8_t* weight,
                 const at::Half* scales, const at::Half* mins, int64_t n0, int64_t n1, float* y, int64_t n) {
  const int64_t blocks = k / kBlock;
  const int64_t row_bytes = F == Q8_0 ? k : k / 2;
  for (int64_t j = n0; j < n1; ++j) {
    const uint8_t* w = weight + j * row_bytes;
    const uint16_t* d16 = reinterpret_cast<const uint16_t*>(scales + j * blocks);
    const uint16_t* m16 = F == Q4_1 ? reinterpret_cast<const uint16_t*>(mins + j * blocks) : nullptr;
    for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
      const int8_t* q = xq + r0 * k;
      const float* d = xd + r0 * blocks;
      const float* s = xs + r0 * blocks;
      float* out = y + r0 * n + j;
      switch (std::min(kTileRows, rows - r0)) {
        case 1: row_tile<F, 1>(w, d16, m16, q, d, s, k, blocks, out, n); break;
        case 2: row_tile<F, 2>(w, d16, m16, q, d, s, k, blocks, out, n); break;
        case 3: row_tile<F, 3>(w, d16, m16, q, d, s, k, blocks, out, n); break;
        case 4: row_tile<F, 4>(w, d16, m16, q, d, s, k, blocks, out, n); break;
        case 5: row_tile<F, 5>(w, d16, m16, q, d, s, k, blocks, out, n); break;
        case 6: row_tile<F, 6>(w, d16, m16, q, d, s, k, blocks, out, n); break;
        case 7: row_tile<F, 7>(w, d16, m16, q, d, s, k, blocks, out, n); break;
        default: row_tile<F, 8>(w, d16, m16, q, d, s, k, blocks, out, n); break;
      }
    }
  }
}

void matmul(Format format, const int8_t* xq, const float* xd, const float* xs, int64_t rows, int64_t k,
            const uint8_t* weight, const at::Half* scales, const at::Half* mins, int64_t n0, int64_t n1,
            float* y, int64_t n) {
  if (format == Q8_0) matmul_rows<Q8_0>(xq, xd, xs, rows, k, weight, scales, mins, n0, n1, y, n);
  else if (format == Q4_0) matmul_rows<Q4_0>(xq, xd, xs, rows, k, weight, scales, mins, n0, n1, y, n);
  else matmul_rows<Q4_1>(xq, xd, xs, rows, k, weight, scales, mins, n0, n1, y, n);
}

bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

}  // namespace

bool available() { return cpu_has_avx2(); }

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
  m.def("qmatmul", &qmatmul, "y = x @ dequantize(weight)^T with x quantised to int8 blocks");
  m.def("attend_one", &attend_one, "one query per row against a run of cached keys");
}

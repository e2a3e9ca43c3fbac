// One query per row against a contiguous run of cached keys: the attention of a decoding step.
//
// torch's scaled_dot_product_attention on the CPU is built for blocks of queries; for one query
// against a few hundred keys its fixed cost per call exceeds the arithmetic, more so with a
// padding mask (docs/code-notes.md, "Decoding"). Each row here sees keys first[b] <= j < stop[b]
// of its cache (left padding, a local band and rows at different positions are all such a run),
// so no mask is built, and a row's result depends on that row alone, never on the batch beside it.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <immintrin.h>
#include <vector>

#include "avx2.h"

namespace {

// Keys and values are float32 or bfloat16 (the cache of a bf16 model); either is widened to
// float32 as it is read, and all arithmetic is float32. bf16 is the top half of a float32, so
// widening is a shift, which AVX2 has.
__attribute__((target("avx2,fma")))
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

__attribute__((target("avx2,fma")))
inline __m256 load8(const at::BFloat16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

template <typename T>
__attribute__((target("avx2,fma")))
inline float dot(const float* a, const T* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), acc);
  float sum = horizontal_sum(acc);
  for (; i < n; ++i) sum += a[i] * static_cast<float>(b[i]);
  return sum;
}

template <typename T>
__attribute__((target("avx2,fma")))
inline void add_scaled(float* out, const T* v, float weight, int64_t n) {
  const __m256 w = _mm256_set1_ps(weight);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_fmadd_ps(w, load8(v + i), _mm256_loadu_ps(out + i)));
  for (; i < n; ++i) out[i] += weight * static_cast<float>(v[i]);
}

// Query head h of row b: softmax(q.k_j / sqrt(d)) over the run of keys, times the values.
template <typename T>
__attribute__((target("avx2,fma")))
void attend_head(const float* q, const T* keys, const T* values, int64_t key_stride, int64_t first,
                 int64_t stop, int64_t size, float scale, float* scores, float* out) {
  float peak = -INFINITY;
  for (int64_t j = first; j < stop; ++j) {
    scores[j - first] = dot(q, keys + j * key_stride, size) * scale;
    peak = std::max(peak, scores[j - first]);
  }
  float total = 0.0f;
  for (int64_t j = first; j < stop; ++j) total += scores[j - first] = std::exp(scores[j - first] - peak);
  std::fill(out, out + size, 0.0f);
  for (int64_t j = first; j < stop; ++j) add_scaled(out, values + j * key_stride, scores[j - first] / total, size);
}

// Every (row, head) pair of the step, split over threads.
template <typename T>
void attend_all(const float* qp, int64_t q_row, int64_t q_head, const T* kp, const T* vp, const torch::Tensor& keys,
                const int64_t* lo, const int64_t* hi, int64_t batch, int64_t heads, int64_t group, int64_t size,
                int64_t run, int64_t keys_read, float* op) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(size));
  // Rows and heads are independent. Waking a second thread costs microseconds, as much as a
  // decoding step's whole attention at short contexts, so they split only past ~a million
  // multiply-adds of scores.
  const int64_t work = keys_read * heads * size;
  at::parallel_for(0, batch * heads, work < (1 << 20) ? batch * heads : 1, [&](int64_t start, int64_t end) {
    std::vector<float> scores(run);
    for (int64_t i = start; i < end; ++i) {
      const int64_t b = i / heads, h = i % heads, g = h / group;
      const int64_t offset = b * keys.stride(0) + g * keys.stride(1);
      attend_head(qp + b * q_row + h * q_head, kp + offset, vp + offset, keys.stride(2), lo[b], hi[b], size, scale,
                  scores.data(), op + (b * heads + h) * size);
    }
  });
}

}  // namespace

// q (B, H, 1, D); keys, values (B, Hkv, C, D) with rows of D contiguous (a cache, or a slice of
// one); first, stop (B,) int64: row b attends to keys first[b] .. stop[b] - 1. Returns (B, H, 1, D).
torch::Tensor attend_one(torch::Tensor q, torch::Tensor keys, torch::Tensor values, torch::Tensor first,
                         torch::Tensor stop) {
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1, "attend_one: q must be (B, H, 1, D)");
  TORCH_CHECK(keys.dim() == 4 && keys.sizes() == values.sizes() && keys.strides() == values.strides(),
              "attend_one: keys and values must be alike (B, Hkv, C, D)");
  const auto dtype = keys.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16, "attend_one: float32 or bfloat16 tensors");
  for (const auto& t : {q, keys, values})
    TORCH_CHECK(t.scalar_type() == dtype && t.device().is_cpu(), "attend_one: q, keys and values must be alike, on the CPU");
  TORCH_CHECK(keys.stride(3) == 1, "attend_one: keys and values need their last dimension contiguous");
  auto qf = q.to(torch::kFloat32).contiguous();  // one vector per head; rotary positions can leave it in any layout
  const int64_t batch = q.size(0), heads = q.size(1), size = q.size(3), kv_heads = keys.size(1), capacity = keys.size(2);
  TORCH_CHECK(keys.size(0) == batch && keys.size(3) == size && kv_heads > 0 && heads % kv_heads == 0,
              "attend_one: shapes do not match");
  TORCH_CHECK(first.device().is_cpu() && stop.device().is_cpu(), "attend_one: first and stop must be CPU tensors");
  auto first_c = first.to(torch::kInt64).contiguous(), stop_c = stop.to(torch::kInt64).contiguous();
  TORCH_CHECK(first_c.numel() == batch && stop_c.numel() == batch, "attend_one: first and stop need one entry per row");
  const int64_t* lo = first_c.data_ptr<int64_t>();
  const int64_t* hi = stop_c.data_ptr<int64_t>();
  int64_t keys_read = 0, run = 0;  // keys over all rows; the longest run
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(0 <= lo[b] && lo[b] < hi[b] && hi[b] <= capacity, "attend_one: row ", b, " has no keys in range");
    keys_read += hi[b] - lo[b];
    run = std::max(run, hi[b] - lo[b]);
  }
  auto out = torch::empty({batch, heads, 1, size}, qf.options());
  const int64_t group = heads / kv_heads;
  if (dtype == torch::kFloat32)
    attend_all(qf.data_ptr<float>(), qf.stride(0), qf.stride(1), keys.data_ptr<float>(), values.data_ptr<float>(), keys,
               lo, hi, batch, heads, group, size, run, keys_read, out.data_ptr<float>());
  else
    attend_all(qf.data_ptr<float>(), qf.stride(0), qf.stride(1), keys.data_ptr<at::BFloat16>(),
               values.data_ptr<at::BFloat16>(), keys, lo, hi, batch, heads, group, size, run, keys_read,
               out.data_ptr<float>());
  return out.to(q.scalar_type());
}

TORCH_LIBRARY_FRAGMENT(fewshot, m) {
  m.def("attend_one(Tensor q, Tensor keys, Tensor values, Tensor first, Tensor stop) -> Tensor");
}

TORCH_LIBRARY_IMPL(fewshot, CPU, m) { m.impl("attend_one", &attend_one); }

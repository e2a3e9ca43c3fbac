// The block loop of qmatmul.cpp, included there once per instruction set: inside a namespace,
// with KERNEL_TARGET (the functions' target attribute) and KERNEL_VNNI (0 or 1) defined. The
// two copies differ only in block_dot; a function-level target keeps the AVX512 copy out of
// the AVX2 one, so the library loads and runs on either CPU kind. No include guard: by design.

// 16 bytes of nibbles -> 32 bytes: byte j's low nibble is value j, its high nibble value j+16.
__attribute__((target(KERNEL_TARGET)))
inline __m256i unpack_nibbles(const uint8_t* packed) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i low = _mm_and_si128(bytes, mask);
  const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
  return _mm256_set_m128i(high, low);
}

// One weight block against row block `xv` of x: 8 int32 partial sums, as floats. The
// multiplications take unsigned by signed bytes, so they get |w| and x carrying w's sign
// (Q4_1's nibbles are unsigned already). VNNI's dpbusd does AVX2's maddubs + madd in one
// instruction; no pair of products here can saturate maddubs's int16 (|w| <= 128, |x| <= 127),
// so both give the same integers and so the same floats.
template <Format F>
__attribute__((target(KERNEL_TARGET), always_inline))
inline __m256 block_dot(__m256i wv, __m256i magnitude, __m256i xv) {
  if (F != Q4_1) xv = _mm256_sign_epi8(xv, wv);
#if KERNEL_VNNI
  return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), magnitude, xv));
#else
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, xv), _mm256_set1_epi16(1)));
#endif
}

template <Format F>
__attribute__((target(KERNEL_TARGET), always_inline))
inline __m256i load_block(const uint8_t* w, int64_t b) {
  if (F == Q8_0) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * kBlock));
  if (F == Q4_0) return _mm256_sub_epi8(unpack_nibbles(w + b * 16), _mm256_set1_epi8(8));
  return unpack_nibbles(w + b * 16);  // Q4_1: unsigned nibbles go straight into maddubs
}

// Weight block b against R rows of x, into acc; Q4_1's minimum times x's block sum into offset.
template <Format F, int R>
__attribute__((target(KERNEL_TARGET), always_inline))
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
__attribute__((target(KERNEL_TARGET), always_inline))
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
__attribute__((target(KERNEL_TARGET)))
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


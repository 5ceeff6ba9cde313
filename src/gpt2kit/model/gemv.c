/* Matrix-vector products for decoding: y (M, N) = x (M, K) W^T + b, for a few rows M (batch-1 decode: M = 1).

   A decode step reads every weight once, so what matters is reading W at the memory's full speed: W is
   packed once into blocks of ROWS output rows, and within a block chunk by chunk of LANES inputs, so a block
   is one sequential stream (gemv.py, `pack`: (N, K) -> (N/ROWS, K/LANES, ROWS, LANES), zero-padded). Each
   thread takes whole blocks; the next PREFETCH bytes of its stream are asked for ahead of use. The x row
   of a block's ROWS dot products is loaded once per chunk; the block's few kilobytes stay in L1 for the
   other rows of x.

   Built by gemv.py for the CPU that runs it (-march=native), with OpenMP, whose runtime is the one torch
   already loaded (the same libgomp.so.1), so it shares torch's threads. Functions exist only where the CPU
   has the instructions: gk_gemv_f32 needs AVX-512F, gk_gemv_bf16 AVX-512 BF16 (vdpbf16ps: bf16 pairs
   multiplied and summed into float32), gk_gemv_s8 AVX-512 VNNI (vpdpbusd: unsigned by signed bytes, four
   at a time, summed into int32). */

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define ROWS 16
#ifndef PREFETCH
#define PREFETCH 4096
#endif

int gk_rows(void) { return ROWS; }

#ifdef __AVX512F__
/* The ROWS sums of a block plus the bias, as one float32 vector (lanes past N masked off). */
static inline __m512 block_sums(__m512 acc[ROWS], const float *b, __mmask16 valid) {
  float s[ROWS];
  for (int r = 0; r < ROWS; ++r) s[r] = _mm512_reduce_add_ps(acc[r]);
  __m512 v = _mm512_loadu_ps(s);
  return b ? _mm512_add_ps(v, _mm512_maskz_loadu_ps(valid, b)) : v;
}

static inline __mmask16 valid_rows(int64_t n, int64_t N) {
  return N - n >= ROWS ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - n)) - 1);
}

/* Every product takes the packed weight's arguments first (what gemv.py binds once), then x, y, M, threads. */

/* float32: w packed with LANES = 16 floats (one zmm) per chunk; x (M, K), b (N) or NULL, y (M, N). */
int gk_lanes_f32(void) { return 16; }

void gk_gemv_f32(const float *w, const float *b, int64_t N, int64_t K, const float *x, float *y, int64_t M,
                 int threads) {
  const int64_t chunks = (K + 15) / 16, blocks = (N + ROWS - 1) / ROWS;
  const __mmask16 tail = K % 16 ? (__mmask16)((1u << (K % 16)) - 1) : (__mmask16)0xFFFF;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t nb = 0; nb < blocks; ++nb) {
    const float *wb = w + nb * chunks * ROWS * 16;
    const __mmask16 valid = valid_rows(nb * ROWS, N);
    for (int64_t m = 0; m < M; ++m) {
      __m512 acc[ROWS];
      for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
      const float *xm = x + m * K;
      for (int64_t c = 0; c < chunks; ++c) {
        const __m512 xv = _mm512_maskz_loadu_ps(c == chunks - 1 ? tail : (__mmask16)0xFFFF, xm + 16 * c);
        const float *wc = wb + c * ROWS * 16;
        for (int r = 0; r < ROWS; ++r) _mm_prefetch((const char *)wc + PREFETCH + 64 * r, _MM_HINT_T0);
        for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(wc + 16 * r), xv, acc[r]);
      }
      _mm512_mask_storeu_ps(y + m * N + nb * ROWS, valid, block_sums(acc, b ? b + nb * ROWS : 0, valid));
    }
  }
}
#endif

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
/* bf16: w packed with LANES = 32 bf16 (16 pairs, one zmm) per chunk; x (M, K) bf16, b (N) float32 or NULL;
   y (M, N) bf16 (rounded to nearest even once, after the bias) or float32 when out_f32. */
int gk_lanes_bf16(void) { return 32; }

void gk_gemv_bf16(const uint16_t *w, const float *b, int out_f32, int64_t N, int64_t K, const uint16_t *x, void *y,
                  int64_t M, int threads) {
  const int64_t chunks = (K + 31) / 32, blocks = (N + ROWS - 1) / ROWS;
  const __mmask32 tail = K % 32 ? (__mmask32)((1u << (K % 32)) - 1) : (__mmask32)0xFFFFFFFF;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t nb = 0; nb < blocks; ++nb) {
    const uint16_t *wb = w + nb * chunks * ROWS * 32;
    const __mmask16 valid = valid_rows(nb * ROWS, N);
    for (int64_t m = 0; m < M; ++m) {
      __m512 acc[ROWS];
      for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
      const uint16_t *xm = x + m * K;
      for (int64_t c = 0; c < chunks; ++c) {
        const __m512bh xv =
            (__m512bh)_mm512_maskz_loadu_epi16(c == chunks - 1 ? tail : (__mmask32)0xFFFFFFFF, xm + 32 * c);
        const uint16_t *wc = wb + c * ROWS * 32;
        for (int r = 0; r < ROWS; ++r) _mm_prefetch((const char *)wc + PREFETCH + 64 * r, _MM_HINT_T0);
        for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(wc + 32 * r), xv);
      }
      const __m512 v = block_sums(acc, b ? b + nb * ROWS : 0, valid);
      const int64_t at = m * N + nb * ROWS;
      if (out_f32)
        _mm512_mask_storeu_ps((float *)y + at, valid, v);
      else
        _mm256_mask_storeu_epi16((uint16_t *)y + at, valid, (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* int8 weights, one scale per output row (w ~ scale[n] q[n, k], q in [-127, 127]), packed with LANES = 64
   bytes per chunk; x (M, K) float32 is quantized here, one scale per row (x ~ s[m] p[m, k], s = max |x[m]| / 127,
   p rounded to nearest even), and stored as p + 128 (vpdpbusd multiplies unsigned by signed bytes). Then
   y[m, n] = s[m] scale[n] (sum_k (p + 128) q - 128 qsum[n]) + b[n], exact in int32 up to K = 66000. */
int gk_lanes_s8(void) { return 64; }

static void quantize_rows(const float *x, uint8_t *xq, float *xs, int64_t M, int64_t K, int64_t Kp) {
  for (int64_t m = 0; m < M; ++m) {
    const float *xm = x + m * K;
    __m512 amax = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 in = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
      amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(in, xm + k)));
    }
    const float top = _mm512_reduce_max_ps(amax);
    const __m512 inv = _mm512_set1_ps(top > 0 ? 127.0f / top : 0.0f);
    xs[m] = top / 127.0f;
    for (int64_t k = 0; k < Kp; k += 16) {
      const __mmask16 in = K - k >= 16 ? (__mmask16)0xFFFF : K > k ? (__mmask16)((1u << (K - k)) - 1) : 0;
      __m512i p = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(in, xm + k), inv));
      p = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(p, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127)),
                           _mm512_set1_epi32(128));
      _mm_storeu_si128((__m128i *)(xq + m * Kp + k), _mm512_cvtepi32_epi8(p));
    }
  }
}

void gk_gemv_s8(const int8_t *w, const float *scale, const int32_t *qsum, const float *b, int64_t N, int64_t K,
                const float *x, float *y, int64_t M, int threads) {
  const int64_t chunks = (K + 63) / 64, Kp = chunks * 64, blocks = (N + ROWS - 1) / ROWS;
  uint8_t *xq = aligned_alloc(64, M * Kp);
  float *xs = malloc(M * sizeof(float));
  quantize_rows(x, xq, xs, M, K, Kp);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t nb = 0; nb < blocks; ++nb) {
    const int8_t *wb = w + nb * chunks * ROWS * 64;
    const int64_t n = nb * ROWS;
    const __mmask16 valid = valid_rows(n, N);
    for (int64_t m = 0; m < M; ++m) {
      __m512i acc[ROWS];
      for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_si512();
      const uint8_t *xm = xq + m * Kp;
      for (int64_t c = 0; c < chunks; ++c) {
        const __m512i xv = _mm512_load_si512(xm + 64 * c);
        const int8_t *wc = wb + c * ROWS * 64;
        for (int r = 0; r < ROWS; ++r) _mm_prefetch((const char *)wc + PREFETCH + 64 * r, _MM_HINT_T0);
        for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_dpbusd_epi32(acc[r], xv, _mm512_loadu_si512(wc + 64 * r));
      }
      int32_t s[ROWS];
      for (int r = 0; r < ROWS; ++r) s[r] = _mm512_reduce_add_epi32(acc[r]);
      const __m512i dot = _mm512_sub_epi32(_mm512_loadu_si512(s), _mm512_slli_epi32(_mm512_maskz_loadu_epi32(valid, qsum + n), 7));
      __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(_mm512_maskz_loadu_ps(valid, scale + n), _mm512_set1_ps(xs[m])));
      if (b) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(valid, b + n));
      _mm512_mask_storeu_ps(y + m * N + n, valid, v);
    }
  }
  free(xq);
  free(xs);
}
#endif

/* Matrix-vector products for decoding: y (M, N) = x (M, K) W^T + b, for a few rows M (batch-1 decode: M = 1).

   A decode step reads every weight once, so what matters is reading W at the memory's full speed: W is
   packed once into blocks of ROWS output rows, and within a block chunk by chunk of LANES inputs, so a block
   is one sequential stream (gemv.py, `Packed`: (N, K) -> (N/ROWS, K/LANES, ROWS, LANES), zero-padded). A
   chunk is 64 bytes of a weight row (one zmm: LANES = 16 floats, 32 bf16 or 64 int8), so every kind of
   weight runs the same loop (`block`), which differs only in the instruction that multiplies and in how
   the sums are finished. Each thread takes whole blocks; the next PREFETCH bytes of its stream are asked
   for ahead of use. The x row of a block's ROWS dot products is loaded once per chunk; the block stays in
   L1/L2 for the other rows of x.

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

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define HAVE_F32 1
#if defined(__AVX512BF16__)
#define HAVE_BF16 1
#endif
#if defined(__AVX512VNNI__)
#define HAVE_S8 1
#endif

enum kind { F32, BF16, S8 };

/* How a block's sums are finished and stored. */
struct out {
  const float *b;             /* (N) float32 bias, or NULL */
  const float *scale;         /* S8: (N) weight scales */
  const int32_t *qsum;        /* S8: (N) sum of each weight row's q */
  const float *xs;            /* S8: (M) each x row's scale */
  int bf16;                   /* BF16: store bf16 (else float32) */
  void *y;                    /* (M, N) */
};

static inline __mmask16 valid_rows(int64_t n, int64_t N) {
  return N - n >= ROWS ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - n)) - 1);
}

/* One block of ROWS output rows (from n), for every row of x: the ROWS dot products chunk by chunk, then the
   sums finished into y. x rows are x_row bytes apart; `tail` masks the bytes of x's last chunk past K. */
static inline __attribute__((always_inline)) void block(enum kind kind, const char *wb, const char *x, int64_t x_row,
                                                        int64_t chunks, __mmask64 tail, int64_t M, int64_t n,
                                                        int64_t N, const struct out *o) {
  const __mmask16 valid = valid_rows(n, N);
  for (int64_t m = 0; m < M; ++m) {
    __m512 acc[ROWS];  /* float32 sums (F32, BF16), or int32 ones in the same registers (S8) */
    for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
    const char *xm = x + m * x_row;
    for (int64_t c = 0; c < chunks; ++c) {
      const __m512i xv = _mm512_maskz_loadu_epi8(c == chunks - 1 ? tail : ~(__mmask64)0, xm + 64 * c);
      const char *wc = wb + c * ROWS * 64;
      for (int r = 0; r < ROWS; ++r) _mm_prefetch(wc + PREFETCH + 64 * r, _MM_HINT_T0);
      for (int r = 0; r < ROWS; ++r) {
        if (kind == F32)
          acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(wc + 64 * r), _mm512_castsi512_ps(xv), acc[r]);
#ifdef HAVE_BF16
        else if (kind == BF16)  /* bf16 pairs multiplied and summed into float32 */
          acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(wc + 64 * r), (__m512bh)xv);
#endif
#ifdef HAVE_S8
        else  /* unsigned x bytes by signed weight bytes, four at a time, summed into int32 */
          acc[r] = _mm512_castsi512_ps(_mm512_dpbusd_epi32(_mm512_castps_si512(acc[r]), xv, _mm512_loadu_si512(wc + 64 * r)));
#endif
      }
    }
    __m512 v;
    if (kind == S8) {  /* y = s[m] scale[n] (sum (p + 128) q - 128 qsum[n]) */
      int32_t s[ROWS];
      for (int r = 0; r < ROWS; ++r) s[r] = _mm512_reduce_add_epi32(_mm512_castps_si512(acc[r]));
      const __m512i dot = _mm512_sub_epi32(_mm512_loadu_si512(s), _mm512_slli_epi32(_mm512_maskz_loadu_epi32(valid, o->qsum + n), 7));
      v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(_mm512_maskz_loadu_ps(valid, o->scale + n), _mm512_set1_ps(o->xs[m])));
    } else {
      float s[ROWS];
      for (int r = 0; r < ROWS; ++r) s[r] = _mm512_reduce_add_ps(acc[r]);
      v = _mm512_loadu_ps(s);
    }
    if (o->b) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(valid, o->b + n));
#ifdef HAVE_BF16
    if (kind == BF16 && o->bf16) {  /* rounded to nearest even once, after the bias */
      _mm256_mask_storeu_epi16((uint16_t *)o->y + m * N + n, valid, (__m256i)_mm512_cvtneps_pbh(v));
      continue;
    }
#endif
    _mm512_mask_storeu_ps((float *)o->y + m * N + n, valid, v);
  }
}

static inline __mmask64 tail_bytes(int64_t bytes) { return bytes % 64 ? ((__mmask64)1 << (bytes % 64)) - 1 : ~(__mmask64)0; }

/* The products: each thread takes whole blocks (schedule static: one contiguous stream each). Every product
   takes the packed weight's arguments first (what gemv.py binds once), then x, y, M, threads. */
#define FOR_BLOCKS(nb, N) \
  _Pragma("omp parallel for num_threads(threads) schedule(static)") for (int64_t nb = 0; nb < ((N) + ROWS - 1) / ROWS; ++nb)

/* float32: LANES = 16; x (M, K) float32, b (N) or NULL, y (M, N) float32. */
int gk_lanes_f32(void) { return 16; }

void gk_gemv_f32(const float *w, const float *b, int64_t N, int64_t K, const float *x, float *y, int64_t M,
                 int threads) {
  const int64_t chunks = (K + 15) / 16;
  const struct out o = {b, 0, 0, 0, 0, y};
  FOR_BLOCKS(nb, N) block(F32, (const char *)w + nb * chunks * ROWS * 64, (const char *)x, 4 * K, chunks,
                          tail_bytes(4 * K), M, nb * ROWS, N, &o);
}

#ifdef HAVE_BF16
/* bf16: LANES = 32; x (M, K) bf16, b (N) float32 or NULL; y (M, N) bf16, or float32 when out_f32. */
int gk_lanes_bf16(void) { return 32; }

void gk_gemv_bf16(const uint16_t *w, const float *b, int out_f32, int64_t N, int64_t K, const uint16_t *x, void *y,
                  int64_t M, int threads) {
  const int64_t chunks = (K + 31) / 32;
  const struct out o = {b, 0, 0, 0, !out_f32, y};
  FOR_BLOCKS(nb, N) block(BF16, (const char *)w + nb * chunks * ROWS * 64, (const char *)x, 2 * K, chunks,
                          tail_bytes(2 * K), M, nb * ROWS, N, &o);
}
#endif

#ifdef HAVE_S8
/* int8 weights, one scale per output row (w ~ scale[n] q[n, k], q in [-127, 127]), LANES = 64; x (M, K)
   float32 is quantized here, one scale per row (x ~ s[m] p[m, k], s = max |x[m]| / 127, p rounded to nearest
   even), and stored as p + 128 (vpdpbusd multiplies unsigned by signed bytes), zero-padded to whole chunks.
   Then y[m, n] = s[m] scale[n] (sum_k (p + 128) q - 128 qsum[n]) + b[n], exact in int32 up to K = 66000. */
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
  const int64_t chunks = (K + 63) / 64, Kp = chunks * 64;
  uint8_t *xq = aligned_alloc(64, M * Kp);
  float *xs = malloc(M * sizeof(float));
  quantize_rows(x, xq, xs, M, K, Kp);
  const struct out o = {b, scale, qsum, xs, 0, y};
  FOR_BLOCKS(nb, N) block(S8, (const char *)w + nb * chunks * ROWS * 64, (const char *)xq, Kp, chunks,
                          ~(__mmask64)0, M, nb * ROWS, N, &o);
  free(xq);
  free(xs);
}
#endif
#endif

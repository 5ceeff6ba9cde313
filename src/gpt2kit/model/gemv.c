/* Matrix-vector products for decoding: y (M, N) = x (M, K) W^T + b, for a few rows M (batch-1 decode: M = 1).

   A decode step reads every weight once, so what matters is reading W at the memory's full speed: W is
   packed once into blocks of ROWS output rows, and within a block chunk by chunk of LANES inputs, so a block
   is one sequential stream (gemv.py, `Packed`: (N, K) -> (N/ROWS, K/LANES, ROWS, LANES), zero-padded). A
   chunk is 64 bytes of a weight row (one zmm: LANES = 16 floats, 32 bf16 or 64 int8), so every kind of
   weight runs the same loop (`block`), which differs only in the instruction that multiplies and in how
   the sums are finished. Each thread takes whole blocks, a contiguous share of them first (share.h); the next
   PREFETCH bytes of its stream are asked for ahead of use, into L1 or only into L2, or not at all (`pf`, a product's
   argument after the threads). Which reads faster depends on the CPU: on a 2-core Zen 4 VM the L2 hint read 19-31 % faster with int8 and
   bf16 weights when the memory was fast, on a 2-core Zen 3 VM no hint read 0.90 of a `sum`'s speed against 0.75-0.79, so gemv.py offers all three. The x row of a block's ROWS dot products is loaded once per chunk; the block stays in
   L1/L2 for the other rows of x.

   Built by gemv.py for the CPU that runs it (-march=native), with OpenMP, whose runtime is the one torch
   already loaded (the same libgomp.so.1), so it shares torch's threads. Functions exist only where the CPU
   has the instructions. With AVX-512 (F, BW, VL): gk_gemv_f32 (zmm FMA), gk_gemv_bf16 with AVX-512 BF16
   (vdpbf16ps: bf16 pairs multiplied and summed into float32) and gk_gemv_s8 with AVX-512 VNNI (vpdpbusd:
   unsigned by signed bytes, four at a time, summed into int32). Each kind the CPU lacks those for (all of them
   with AVX2 and FMA alone: most laptops, AMD before Zen 4) runs on 32-byte registers, 8 rows a block (below).
   Each kind says its block height (gk_rows_<kind>). */

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_math.h"
#include "share.h"
#include "tape.h"

#ifndef PREFETCH
#define PREFETCH 4096
#endif

/* `lines` lines of 64 bytes from p, asked for into L1 (pf = 0: prefetcht0) or into L2 only (pf = 1: prefetcht1), or
   not at all (pf = 2: the hardware's prefetchers alone). A prefetch into L1 holds one of L1's few miss buffers until
   its line arrives; one into L2 holds one of L2's, of which there are more. */
static inline __attribute__((always_inline)) void prefetch_lines(const char *p, int lines, int pf) {
  if (pf == 1)
    for (int r = 0; r < lines; ++r) _mm_prefetch(p + 64 * r, _MM_HINT_T1);
  else if (pf == 0)
    for (int r = 0; r < lines; ++r) _mm_prefetch(p + 64 * r, _MM_HINT_T0);
}

/* The products: each thread takes whole blocks, its own contiguous share first, then blocks left in the others'
   (share.h). Every product takes the packed weight's arguments first (what gemv.py binds once), then x, y, M,
   threads, pf (the prefetch) and gelu (1: GPT-2's GELU applied to each output as it is stored, c_fc's work). */
#define FOR_BLOCKS(nb, N, rows)                                   \
  struct gk_shares shares_;                                       \
  gk_shares_split(&shares_, ((N) + (rows) - 1) / (rows), threads); \
  _Pragma("omp parallel num_threads(threads)") for (int64_t nb = gk_claim(&shares_); nb >= 0; nb = gk_claim(&shares_))

/* The block each of n claims gets (out[i]; -1: none left) when threads who[i] claim, one at a time in that order,
   the blocks of a product split for `threads`: how FOR_BLOCKS shares them, in an order a test chooses. */
void gk_share_claims(int64_t blocks, int threads, const int32_t *who, int64_t n, int64_t *out) {
  struct gk_shares sh;
  gk_shares_split(&sh, blocks, threads);
  for (int64_t i = 0; i < n; ++i) out[i] = gk_claim_as(&sh, who[i]);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define ROWS 16
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
  int gelu;                   /* apply gelu_tanh after the bias */
};

static inline __mmask16 valid_rows(int64_t n, int64_t N) {
  return N - n >= ROWS ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - n)) - 1);
}

/* One block of ROWS output rows (from n), for every row of x: the ROWS dot products chunk by chunk, then the
   sums finished into y. x rows are x_row bytes apart; `tail` masks the bytes of x's last chunk past K. */
static inline __attribute__((always_inline)) void block(enum kind kind, const char *wb, const char *x, int64_t x_row,
                                                        int64_t chunks, __mmask64 tail, int64_t M, int64_t n,
                                                        int64_t N, const struct out *o, int pf) {
  const __mmask16 valid = valid_rows(n, N);
  for (int64_t m = 0; m < M; ++m) {
    __m512 acc[ROWS];  /* float32 sums (F32, BF16), or int32 ones in the same registers (S8) */
    for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
    const char *xm = x + m * x_row;
    for (int64_t c = 0; c < chunks; ++c) {
      const __m512i xv = _mm512_maskz_loadu_epi8(c == chunks - 1 ? tail : ~(__mmask64)0, xm + 64 * c);
      const char *wc = wb + c * ROWS * 64;
      prefetch_lines(wc + PREFETCH, ROWS, pf);
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
    if (o->gelu) {
      float t[ROWS];
      _mm512_storeu_ps(t, v);
#pragma omp simd
      for (int r = 0; r < ROWS; ++r) t[r] = gelu_tanh(t[r]);
      v = _mm512_loadu_ps(t);
    }
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

/* float32: LANES = 16; x (M, K) float32, b (N) or NULL, y (M, N) float32. */
int gk_lanes_f32(void) { return 16; }
int gk_rows_f32(void) { return ROWS; }

void gk_gemv_f32(const float *w, const float *b, int64_t N, int64_t K, const float *x, float *y, int64_t M,
                 int threads, int pf, int gelu) {
  GK_RECORD(GK_GEMV_F32, GK_P(w), GK_P(b), N, K, GK_P(x), GK_P(y), M, threads, pf, gelu);
  const int64_t chunks = (K + 15) / 16;
  const struct out o = {b, 0, 0, 0, 0, y, gelu};
  FOR_BLOCKS(nb, N, ROWS) block(F32, (const char *)w + nb * chunks * ROWS * 64, (const char *)x, 4 * K, chunks,
                          tail_bytes(4 * K), M, nb * ROWS, N, &o, pf);
}

#ifdef HAVE_BF16
/* bf16: LANES = 32; x (M, K) bf16, b (N) float32 or NULL; y (M, N) bf16, or float32 when out_f32. */
int gk_lanes_bf16(void) { return 32; }
int gk_rows_bf16(void) { return ROWS; }

void gk_gemv_bf16(const uint16_t *w, const float *b, int out_f32, int64_t N, int64_t K, const uint16_t *x, void *y,
                  int64_t M, int threads, int pf, int gelu) {
  GK_RECORD(GK_GEMV_BF16, GK_P(w), GK_P(b), out_f32, N, K, GK_P(x), GK_P(y), M, threads, pf, gelu);
  const int64_t chunks = (K + 31) / 32;
  const struct out o = {b, 0, 0, 0, !out_f32, y, gelu};
  FOR_BLOCKS(nb, N, ROWS) block(BF16, (const char *)w + nb * chunks * ROWS * 64, (const char *)x, 2 * K, chunks,
                          tail_bytes(2 * K), M, nb * ROWS, N, &o, pf);
}
#endif

#ifdef HAVE_S8
/* int8 weights, one scale per output row (w ~ scale[n] q[n, k], q in [-127, 127]), LANES = 64; x (M, K)
   float32 is quantized here, one scale per row (x ~ s[m] p[m, k], s = max |x[m]| / 127, p rounded to nearest
   even), and stored as p + 128 (vpdpbusd multiplies unsigned by signed bytes), zero-padded to whole chunks.
   Then y[m, n] = s[m] scale[n] (sum_k (p + 128) q - 128 qsum[n]) + b[n], exact in int32 up to K = 66000. */
int gk_lanes_s8(void) { return 64; }
int gk_rows_s8(void) { return ROWS; }

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
                const float *x, float *y, int64_t M, int threads, int pf, int gelu) {
  GK_RECORD(GK_GEMV_S8, GK_P(w), GK_P(scale), GK_P(qsum), GK_P(b), N, K, GK_P(x), GK_P(y), M, threads, pf, gelu);
  const int64_t chunks = (K + 63) / 64, Kp = chunks * 64;
  uint8_t *xq = aligned_alloc(64, M * Kp);
  float *xs = malloc(M * sizeof(float));
  quantize_rows(x, xq, xs, M, K, Kp);
  const struct out o = {b, scale, qsum, xs, 0, y, gelu};
  FOR_BLOCKS(nb, N, ROWS) block(S8, (const char *)w + nb * chunks * ROWS * 64, (const char *)xq, Kp, chunks,
                          ~(__mmask64)0, M, nb * ROWS, N, &o, pf);
  free(xq);
  free(xs);
}
#endif  /* HAVE_S8 */
#endif  /* AVX-512 */

#if defined(__AVX2__) && defined(__FMA__) && !(defined(HAVE_F32) && defined(HAVE_S8) && defined(HAVE_BF16))
/* ---- AVX2 (32-byte registers): float32, int8 and bf16 where AVX-512 does not give them -----------------
   The same packed layout, 64-byte chunks of a row, in blocks of ROWS2 = 8 rows: 8 accumulators, each chunk
   two registers wide, leave room for x's chunk in the 16 registers. int8 has no vpdpbusd here (unless the
   CPU has AVX-VNNI): the bytes are multiplied by vpmaddubsw, unsigned by signed into pairs of int16, which
   would overflow with x stored as p + 128 (2 x 255 x 127 > 32767). So x is kept signed, p in [-127, 127],
   and multiplied as |p| by q with p's sign (vpsignb): pairs of at most 2 x 127 x 127 = 32258. bf16 has no
   vdpbf16ps here: a bf16 is the high half of a float32, so each 32-bit lane's two bf16 become two float32 by a
   shift (the even one) and a mask (the odd one), and x, split the same way, meets them in float32 FMAs: the
   products are exact, the sums float32, as vdpbf16ps computes them (in another order). */
#define ROWS2 8
enum kind2 { W_F32, W_S8, W_BF16 };

static inline __m256i lanes_upto(int64_t n) {  /* int32 lanes 0..n-1 set (n clamped to 0..8) */
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 0 ? 0 : n > 8 ? 8 : n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(_mm_hadd_ps(s, s));
}

static inline int32_t sum8i(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_hadd_epi32(s, s);
  return _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
}

static inline __m256i dot_s8(__m256i acc, __m256i ax, __m256i w) {  /* acc += |p| (q sign(p)), 4 at a time */
#ifdef __AVXVNNI__
  return _mm256_dpbusd_avx_epi32(acc, ax, w);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ax, w), _mm256_set1_epi16(1)));
#endif
}

/* How a block's sums are finished and stored (int8: y = s[m] scale[n] sum + b; float32, bf16: y = sum + b). */
struct out2 {
  const float *b;      /* (N) float32 bias, or NULL */
  const float *scale;  /* int8: (N) weight scales */
  const float *xs;     /* int8: (M) each x row's scale */
  void *y;             /* (M, N) float32, or bf16 where bf16 is set */
  int bf16;            /* store bf16, rounded to nearest even once, after the bias (and the GELU) */
  int gelu;            /* apply gelu_tanh after the bias */
};
static inline __m256 bf16_even(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }  /* low halves */
static inline __m256 bf16_odd(__m256i v) { return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(-65536))); }

/* One block of ROWS2 rows (from n), for every row of x, x rows x_row bytes apart: float32 or bf16 (x's last chunk
   read only up to `tail` bytes, the rest zero) or int8 (x quantized and zero-padded to whole chunks). */
static inline __attribute__((always_inline)) void block2(enum kind2 kind, const char *wb, const char *x, int64_t x_row,
                                                         int64_t chunks, int64_t tail, int64_t M, int64_t n,
                                                         int64_t N, const struct out2 *o, int pf) {
  const int valid = N - n >= ROWS2 ? ROWS2 : (int)(N - n);
  for (int64_t m = 0; m < M; ++m) {
    __m256 acc[ROWS2];  /* float32 sums, or int32 ones in the same registers (int8) */
    for (int r = 0; r < ROWS2; ++r) acc[r] = _mm256_setzero_ps();
    const char *xm = x + m * x_row;
    for (int64_t c = 0; c < chunks; ++c) {
      const char *xc = xm + 64 * c, *wc = wb + c * ROWS2 * 64;
      _Alignas(32) char last[64];
      if (kind != W_S8 && c == chunks - 1 && tail < 64) {  /* nothing past x's end is read: it may be anything */
        memset(last, 0, 64);
        memcpy(last, xc, tail);
        xc = last;
      }
      const __m256i x0 = _mm256_loadu_si256((const __m256i *)xc), x1 = _mm256_loadu_si256((const __m256i *)(xc + 32));
      const __m256i a0 = _mm256_abs_epi8(x0), a1 = _mm256_abs_epi8(x1);  /* int8: |p| */
      const __m256 e0 = bf16_even(x0), o0 = bf16_odd(x0), e1 = bf16_even(x1), o1 = bf16_odd(x1);  /* bf16 */
      prefetch_lines(wc + PREFETCH, ROWS2, pf);
      for (int r = 0; r < ROWS2; ++r) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wc + 64 * r));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wc + 64 * r + 32));
        if (kind == W_S8) {
          const __m256i d = dot_s8(_mm256_castps_si256(acc[r]), a0, _mm256_sign_epi8(w0, x0));
          acc[r] = _mm256_castsi256_ps(dot_s8(d, a1, _mm256_sign_epi8(w1, x1)));
        } else if (kind == W_BF16) {
          acc[r] = _mm256_fmadd_ps(bf16_even(w0), e0, _mm256_fmadd_ps(bf16_odd(w0), o0, acc[r]));
          acc[r] = _mm256_fmadd_ps(bf16_even(w1), e1, _mm256_fmadd_ps(bf16_odd(w1), o1, acc[r]));
        } else {
          acc[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(w0), _mm256_castsi256_ps(x0), acc[r]);
          acc[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(w1), _mm256_castsi256_ps(x1), acc[r]);
        }
      }
    }
    for (int r = 0; r < valid; ++r) {
      const float v = kind == W_S8 ? o->xs[m] * o->scale[n + r] * (float)sum8i(_mm256_castps_si256(acc[r])) : sum8(acc[r]);
      const float sum = v + (o->b ? o->b[n + r] : 0.0f), out = o->gelu ? gelu_tanh(sum) : sum;
      if (o->bf16)
        ((uint16_t *)o->y)[m * N + n + r] = bf16_out(out);
      else
        ((float *)o->y)[m * N + n + r] = out;
    }
  }
}

#ifndef HAVE_F32
int gk_lanes_f32(void) { return 16; }
int gk_rows_f32(void) { return ROWS2; }

void gk_gemv_f32(const float *w, const float *b, int64_t N, int64_t K, const float *x, float *y, int64_t M,
                 int threads, int pf, int gelu) {
  GK_RECORD(GK_GEMV_F32, GK_P(w), GK_P(b), N, K, GK_P(x), GK_P(y), M, threads, pf, gelu);
  const int64_t chunks = (K + 15) / 16;
  const struct out2 o = {b, 0, 0, y, 0, gelu};
  FOR_BLOCKS(nb, N, ROWS2) block2(W_F32, (const char *)w + nb * chunks * ROWS2 * 64, (const char *)x, 4 * K, chunks,
                                  4 * K - 64 * (chunks - 1), M, nb * ROWS2, N, &o, pf);
}
#endif  /* !HAVE_F32 */

#ifndef HAVE_BF16
/* bf16 as for the AVX-512 kernel: LANES = 32; x (M, K) bf16, b (N) float32 or NULL; y (M, N) bf16, or float32
   when out_f32. */
int gk_lanes_bf16(void) { return 32; }
int gk_rows_bf16(void) { return ROWS2; }

void gk_gemv_bf16(const uint16_t *w, const float *b, int out_f32, int64_t N, int64_t K, const uint16_t *x, void *y,
                  int64_t M, int threads, int pf, int gelu) {
  GK_RECORD(GK_GEMV_BF16, GK_P(w), GK_P(b), out_f32, N, K, GK_P(x), GK_P(y), M, threads, pf, gelu);
  const int64_t chunks = (K + 31) / 32;
  const struct out2 o = {b, 0, 0, y, !out_f32, gelu};
  FOR_BLOCKS(nb, N, ROWS2) block2(W_BF16, (const char *)w + nb * chunks * ROWS2 * 64, (const char *)x, 2 * K, chunks,
                                  2 * K - 64 * (chunks - 1), M, nb * ROWS2, N, &o, pf);
}
#endif  /* !HAVE_BF16 */

#ifndef HAVE_S8
/* int8 weights as for the AVX-512 kernel (w ~ scale[n] q[n, k]); x quantized per row, x ~ s[m] p[m, k], p
   signed here, zero-padded to whole chunks; y[m, n] = s[m] scale[n] sum_k p q + b[n]. qsum is not needed. */
int gk_lanes_s8(void) { return 64; }
int gk_rows_s8(void) { return ROWS2; }

static void quantize_rows_avx2(const float *x, int8_t *xq, float *xs, int64_t M, int64_t K, int64_t Kp) {
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  /* undoes the packs' lane interleave */
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t m = 0; m < M; ++m) {
    const float *xm = x + m * K;
    __m256 amax = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8)
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_maskload_ps(xm + k, lanes_upto(K - k))));
    __m128 t = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    t = _mm_max_ps(t, _mm_movehl_ps(t, t));
    const float top = _mm_cvtss_f32(_mm_max_ss(t, _mm_movehdup_ps(t)));
    const __m256 inv = _mm256_set1_ps(top > 0 ? 127.0f / top : 0.0f);
    xs[m] = top / 127.0f;
    for (int64_t k = 0; k < Kp; k += 32) {
      __m256i p[4];
      for (int j = 0; j < 4; ++j) {  /* rounded to nearest even, as the AVX-512 kernel does; |p| <= 127 */
        const __m256 v = _mm256_mul_ps(_mm256_maskload_ps(xm + k + 8 * j, lanes_upto(K - k - 8 * j)), inv);
        p[j] = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(v), _mm256_set1_epi32(-127)), _mm256_set1_epi32(127));
      }
      const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(p[0], p[1]), _mm256_packs_epi32(p[2], p[3]));
      _mm256_storeu_si256((__m256i *)(xq + m * Kp + k), _mm256_permutevar8x32_epi32(bytes, order));
    }
  }
}

void gk_gemv_s8(const int8_t *w, const float *scale, const int32_t *qsum, const float *b, int64_t N, int64_t K,
                const float *x, float *y, int64_t M, int threads, int pf, int gelu) {
  GK_RECORD(GK_GEMV_S8, GK_P(w), GK_P(scale), GK_P(qsum), GK_P(b), N, K, GK_P(x), GK_P(y), M, threads, pf, gelu);
  (void)qsum;
  const int64_t chunks = (K + 63) / 64, Kp = chunks * 64;
  int8_t *xq = aligned_alloc(64, M * Kp);
  float *xs = malloc(M * sizeof(float));
  quantize_rows_avx2(x, xq, xs, M, K, Kp);
  const struct out2 o = {b, scale, xs, y, 0, gelu};
  FOR_BLOCKS(nb, N, ROWS2) block2(W_S8, (const char *)w + nb * chunks * ROWS2 * 64, (const char *)xq, Kp, chunks, 64,
                                  M, nb * ROWS2, N, &o, pf);
  free(xq);
  free(xs);
}
#endif  /* !HAVE_S8 */
#endif  /* AVX2 */

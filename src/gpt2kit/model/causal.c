/* Causal attention for many queries per row in bf16 (prefill, scoring windows), built into gemv.py's library.

   For row b and head h, T queries over K >= T keys: query i sees keys j <= K - T + i. s = q k^T / sqrt(hs), p =
   softmax(s) row by row, y = p v. Flash-style: a tile of QT queries walks the keys KB at a time, keeps each
   query's running maximum and sum, and rescales its float32 output as the maximum grows, so the (T, K) scores
   never exist. Both products run on AVX-512 BF16's dot product (vdpbf16ps: two bf16 pairs into each float32
   lane): the keys packed once per (b, h) as [hs / 2][K][2], so one load holds one pair of 16 keys, and each
   query's pair broadcast against it; the values as [K / 2][hs][2], against a pair of a query's probabilities
   (rounded to bf16, as torch's bf16 SDPA rounds them). Scores, softmax and sums are float32; y is rounded to
   bf16 once. Threads take tiles, largest first (a later tile sees more keys).

   Why: on a 2-core AMD EPYC VM (Zen 4: AVX-512 BF16, no AMX; torch 2.13) torch's flash kernel took 15-17 ms a
   layer for a 1024-token window of 12 heads of 64 in bf16, no faster than in float32, about a quarter of the
   bf16 dot product's peak. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#include <math.h>

#include "kernel_math.h"
#include "tape.h"

#define QT 32 /* queries per tile */
#define KB 64 /* keys per block: four vectors of 16 */
#define R 4   /* queries per micro-kernel */

/* e^x for x <= 0 in 16 lanes, exp_nonpositive's math: 2^n (scalef) times 2^f's series; below -87 (a masked -inf) 0. */
static inline __m512 exp16(__m512 x) {
  const __m512 t = _mm512_max_ps(_mm512_mul_ps(x, _mm512_set1_ps(GK_LOG2E)), _mm512_set1_ps(-126.0f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(GK_C7);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(GK_C6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(GK_C5));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(GK_C4));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(GK_C3));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(GK_C2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(GK_C1));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
  return _mm512_maskz_scalef_ps(live, p, n);
}

/* For R queries (rows of q at qr[r], hs bf16 each) against keys j0..j0+KB (kp: the packed keys): the scores
   s = q . k * scale, keys past see[r] masked; the online softmax's step: top[r] (the running maximum) and sum[r]
   (the running sum of e^(s - top)) brought up to this block, alpha[r] = the factor that rescales what the
   earlier blocks added; p[r] = e^(s - top) rounded to bf16 (R, KB). The scores stay in registers. */
static inline void scores(const uint16_t *const *qr, const uint32_t *kp, int64_t kpad, int64_t j0, int64_t hs,
                          const int64_t *see, float scale, float *top, float *sum, float *alpha, uint16_t *p) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t i = 0; i < hs / 2; ++i) {
    const uint32_t *kr = kp + i * kpad + j0;  /* pair i of keys j0.. */
    const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kr), k1 = (__m512bh)_mm512_loadu_si512(kr + 16),
                   k2 = (__m512bh)_mm512_loadu_si512(kr + 32), k3 = (__m512bh)_mm512_loadu_si512(kr + 48);
    for (int r = 0; r < R; ++r) {
      uint32_t pair; memcpy(&pair, qr[r] + 2 * i, 4);
      const __m512bh a = (__m512bh)_mm512_set1_epi32((int)pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, k0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, k1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], a, k2);
      acc[r][3] = _mm512_dpbf16_ps(acc[r][3], a, k3);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY);
  for (int r = 0; r < R; ++r) {
    __m512 m = _mm512_set1_ps(top[r]);
    for (int c = 0; c < 4; ++c) {
      const int64_t n = see[r] - 16 * c;  /* keys of these 16 the query sees */
      const __mmask16 seen = n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
      acc[r][c] = _mm512_mask_mul_ps(ninf, seen, acc[r][c], sc);
      m = _mm512_max_ps(m, acc[r][c]);
    }
    const float now = _mm512_reduce_max_ps(m);
    const __m512 mv = _mm512_set1_ps(now);
    __m512 add = _mm512_setzero_ps();
    for (int c = 0; c < 4; ++c) {
      acc[r][c] = exp16(_mm512_sub_ps(acc[r][c], mv));
      add = _mm512_add_ps(add, acc[r][c]);
    }
    _mm256_storeu_si256((__m256i *)(p + r * KB), (__m256i)_mm512_cvtneps_pbh(acc[r][0]));
    _mm256_storeu_si256((__m256i *)(p + r * KB + 16), (__m256i)_mm512_cvtneps_pbh(acc[r][1]));
    _mm256_storeu_si256((__m256i *)(p + r * KB + 32), (__m256i)_mm512_cvtneps_pbh(acc[r][2]));
    _mm256_storeu_si256((__m256i *)(p + r * KB + 48), (__m256i)_mm512_cvtneps_pbh(acc[r][3]));
    alpha[r] = exp_nonpositive(top[r] - now);
    sum[r] = sum[r] * alpha[r] + _mm512_reduce_add_ps(add), top[r] = now;
  }
}

/* o[r][d0..d0+16*NZ) = o * alpha[r] + p_r . values j0..j0+KB, for R queries; p: bf16 probabilities (R, KB);
   vp: the packed values. NZ (1..4) vectors of 16 output columns at once. */
static inline __attribute__((always_inline)) void weigh(const uint16_t *p, const uint32_t *vp, int64_t hs, int64_t j0,
                                                        int64_t d0, const float *alpha, float *o, int nz) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r) {
    const __m512 a = _mm512_set1_ps(alpha[r]);
    for (int c = 0; c < nz; ++c) acc[r][c] = _mm512_mul_ps(a, _mm512_loadu_ps(o + r * hs + d0 + 16 * c));
  }
  for (int64_t m = 0; m < KB / 2; ++m) {
    const uint32_t *vr = vp + (j0 / 2 + m) * hs + d0;  /* key pair j0/2 + m, columns d0.. */
    __m512bh v[4];
    for (int c = 0; c < nz; ++c) v[c] = (__m512bh)_mm512_loadu_si512(vr + 16 * c);
    for (int r = 0; r < R; ++r) {
      uint32_t pair; memcpy(&pair, p + r * KB + 2 * m, 4);
      const __m512bh a = (__m512bh)_mm512_set1_epi32((int)pair);
      for (int c = 0; c < nz; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, v[c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < nz; ++c) _mm512_storeu_ps(o + r * hs + d0 + 16 * c, acc[r][c]);
}

/* One (b, h)'s keys and values packed: kp [hs/2][kpad] pairs (16 keys' pair gathered at once), vp [kpad/2][hs]
   pairs (two keys' rows interleaved), zero past K. Rows kv_t elements apart, kv_t even. */
static void pack(const uint16_t *k, const uint16_t *v, int64_t kv_t, int64_t K, int64_t kpad, int64_t hs, uint32_t *kp,
                 uint32_t *vp) {
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t j = 0; j < kpad; j += 16) {
    const __m512i at = _mm512_mullo_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32((int)j)), _mm512_set1_epi32((int)(kv_t / 2)));
    const __mmask16 real = K - j >= 16 ? 0xFFFF : K - j <= 0 ? 0 : (__mmask16)((1u << (K - j)) - 1);
    for (int64_t p = 0; p < hs / 2; ++p)
      _mm512_storeu_si512(kp + p * kpad + j, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), real, at, k + 2 * p, 4));
  }
  for (int64_t m = 0; m < kpad / 2; ++m) {
    const uint16_t *v0 = v + 2 * m * kv_t, *v1 = v0 + kv_t;
    const int lo = 2 * m < K, hi = 2 * m + 1 < K;
    for (int64_t d = 0; d < hs; d += 16) {
      const __m512i a = lo ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(v0 + d))) : _mm512_setzero_si512();
      const __m512i b = hi ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(v1 + d))) : _mm512_setzero_si512();
      _mm512_storeu_si512(vp + m * hs + d, _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
    }
  }
}

/* Queries i0..i0+QT (those < T) of one (b, h). q rows q_t apart; y rows y_t apart; scratch: p (QT, KB) bf16, o (QT, hs) float32, top and sum (QT). */
static void tile(const uint16_t *q, int64_t q_t, const uint32_t *kp, const uint32_t *vp, uint16_t *y, int64_t y_t,
                 int64_t i0, int64_t T, int64_t K, int64_t kpad, int64_t hs, uint16_t *p, float *o,
                 float *top, float *sum) {
  const float scale = 1.0f / sqrtf((float)hs);
  const int64_t rows = T - i0 < QT ? T - i0 : QT, last = K - T + i0 + rows - 1;  /* the last key any row sees */
  for (int64_t r = 0; r < QT; ++r) top[r] = -INFINITY, sum[r] = 0.0f;
  memset(o, 0, QT * hs * sizeof(float));
  for (int64_t j0 = 0; j0 <= last; j0 += KB) {
    float alpha[QT];
    for (int64_t g = 0; g < rows; g += R) {
      const uint16_t *qr[R];
      int64_t see[R];
      for (int r = 0; r < R; ++r) {
        const int64_t i = g + r < rows ? g + r : rows - 1;  /* past the last row: the last row again, unused */
        qr[r] = q + (i0 + i) * q_t, see[r] = K - T + i0 + i - j0 + 1;
      }
      scores(qr, kp, kpad, j0, hs, see, scale, top + g, sum + g, alpha + g, p + g * KB);
    }
    for (int64_t r = rows; r < QT; ++r) alpha[r] = 0.0f;
    for (int64_t g = 0; g < rows; g += R) {
      int64_t d0 = 0;
      for (; d0 + 64 <= hs; d0 += 64) weigh(p + g * KB, vp, hs, j0, d0, alpha + g, o + g * hs, 4);
      switch ((hs - d0) / 16) {
        case 3: weigh(p + g * KB, vp, hs, j0, d0, alpha + g, o + g * hs, 3); break;
        case 2: weigh(p + g * KB, vp, hs, j0, d0, alpha + g, o + g * hs, 2); break;
        case 1: weigh(p + g * KB, vp, hs, j0, d0, alpha + g, o + g * hs, 1); break;
        default: break;
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = 1.0f / sum[r];
    for (int64_t d = 0; d < hs; ++d) y[(i0 + r) * y_t + d] = bf16_out(o[r * hs + d] * inv);
  }
}

/* q: (B, nh, T) rows of hs at b * q_b + h * q_h + i * q_t; k, v: (B, nh, K) rows at b * kv_b + h * kv_h + j * kv_t;
   y: (B, nh, T) rows at b * y_b + h * y_h + i * y_t. Strides in elements; each row's hs values contiguous; hs a
   multiple of 16. Returns 0, or -1 where scratch memory could not be had. */
int gk_causal_bf16(const uint16_t *q, int64_t q_b, int64_t q_h, int64_t q_t, const uint16_t *k, const uint16_t *v,
                   int64_t kv_b, int64_t kv_h, int64_t kv_t, uint16_t *y, int64_t y_b, int64_t y_h, int64_t y_t,
                   int64_t B, int64_t nh, int64_t T, int64_t K, int64_t hs, int threads) {
  GK_RECORD(GK_UNREPLAYABLE, 0);  /* a prefill's: no decode step calls it */
  const int64_t kpad = (K + KB - 1) / KB * KB, per = kpad * hs / 2;  /* uint32 pairs per (b, h), keys or values */
  uint32_t *packed = malloc((size_t)(B * nh * 2 * per) * sizeof(uint32_t));
  if (!packed) return -1;
  const int64_t tiles = (T + QT - 1) / QT, tasks = B * nh * tiles;
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * nh; ++bh) {
      const int64_t b = bh / nh, h = bh % nh, at = b * kv_b + h * kv_h;
      pack(k + at, v + at, kv_t, K, kpad, hs, packed + bh * 2 * per, packed + bh * 2 * per + per);
    }
    float *scratch = malloc((size_t)(QT * KB / 2 + QT * hs + 2 * QT) * sizeof(float));
    if (!scratch) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      if (!scratch) continue;
      const int64_t t = tiles - 1 - task / (B * nh), bh = task % (B * nh), b = bh / nh, h = bh % nh;  /* last tiles first */
      float *o = scratch + QT * KB / 2, *top = o + QT * hs;
      tile(q + b * q_b + h * q_h, q_t, packed + bh * 2 * per, packed + bh * 2 * per + per, y + b * y_b + h * y_h, y_t,
           t * QT, T, K, kpad, hs, (uint16_t *)scratch, o, top, top + QT);
    }
    free(scratch);
  }
  free(packed);
  return failed ? -1 : 0;
}
#endif

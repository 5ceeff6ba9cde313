/* Attention for one query per row (a decode step), built into gemv.py's library with gemv.c.

   For row b and head h: s_j = q . k_j / sqrt(hs) + bias[b, j] over the K cached keys, p = softmax(s),
   y = sum_j p_j v_j: two matrix-vector products (K q, then V^T p) with the softmax between, all in float32.
   torch's SDPA does the same through its flash kernel, made for many queries: in bf16 on a Zen 4 VM it took
   45 us a layer over 64 keys and 667 over 1024, this 13 and 90 (about SDPA's time in float32). Plain C that
   the compiler vectorizes (AVX2 or AVX-512, any head size): q, k, v float32 or bf16 (converted to float32 as
   read; y rounded to bf16 once). Each key's hs values are contiguous (the KV cache's layout: gemv.py checks);
   q and k/v rows of (b, h) sit at b * x_b + h * x_h. Threads take whole (b, h) pairs. A decode step hands in its
   new key and value too (gemv.attend_step), written as each (b, h)'s last key before it attends. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_math.h"
#include "tape.h"

/* One (b, h): q (hs), keys and values (K, hs), bias (K) or NULL, y (hs); s (K), qs and acc (hs) scratch. Keys
   go four at a time: four independent sums (one per key) keep the FMA units busy, where one key's sum would
   wait on itself, and the values' sums load and store acc once per four keys. */
static inline __attribute__((always_inline)) void attend_head(int bf16, const void *q, const void *k, const void *v,
                                                              const float *bias, void *y, int64_t K, int64_t hs,
                                                              float *s, float *qs, float *acc) {
  const float scale = 1.0f / sqrtf((float)hs);
  for (int64_t d = 0; d < hs; ++d) qs[d] = load_elem(q, d, bf16) * scale;
  int64_t j = 0;
  for (; j + 4 <= K; j += 4) {
    const int64_t r = j * hs;
    float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
    for (int64_t d = 0; d < hs; ++d) {
      const float x = qs[d];
      d0 += x * load_elem(k, r + d, bf16);
      d1 += x * load_elem(k, r + hs + d, bf16);
      d2 += x * load_elem(k, r + 2 * hs + d, bf16);
      d3 += x * load_elem(k, r + 3 * hs + d, bf16);
    }
    s[j] = d0, s[j + 1] = d1, s[j + 2] = d2, s[j + 3] = d3;
  }
  for (; j < K; ++j) {
    float d0 = 0.0f;
#pragma omp simd reduction(+ : d0)
    for (int64_t d = 0; d < hs; ++d) d0 += qs[d] * load_elem(k, j * hs + d, bf16);
    s[j] = d0;
  }
  float top = -INFINITY;
  for (j = 0; j < K; ++j) {
    s[j] += bias ? bias[j] : 0.0f;
    top = s[j] > top ? s[j] : top;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (j = 0; j < K; ++j) {
    s[j] = exp_nonpositive(s[j] - top);
    sum += s[j];
  }
  for (int64_t d = 0; d < hs; ++d) acc[d] = 0.0f;
  for (j = 0; j + 4 <= K; j += 4) {
    const int64_t r = j * hs;
    const float p0 = s[j], p1 = s[j + 1], p2 = s[j + 2], p3 = s[j + 3];
#pragma omp simd
    for (int64_t d = 0; d < hs; ++d)
      acc[d] += p0 * load_elem(v, r + d, bf16) + p1 * load_elem(v, r + hs + d, bf16) + p2 * load_elem(v, r + 2 * hs + d, bf16) +
                p3 * load_elem(v, r + 3 * hs + d, bf16);
  }
  for (; j < K; ++j) {
    const float p = s[j];
#pragma omp simd
    for (int64_t d = 0; d < hs; ++d) acc[d] += p * load_elem(v, j * hs + d, bf16);
  }
  const float inv = 1.0f / sum;
  for (int64_t d = 0; d < hs; ++d) store_elem(y, d, acc[d] * inv, bf16);
}

/* One thread's share of the (b, h) pairs, inside a parallel region. q: (B, nh) rows of hs at b * q_b + h * q_h;
   k, v: (B, nh) blocks of K rows of hs at b * kv_b + h * kv_h; bias: (B, K) float32 additive (0 or -inf) or
   NULL; y: (B, nh, hs) contiguous. k_new, v_new: this step's key and value rows, at the same offsets as q's,
   written as key K - 1 of each (b, h) before it attends (a decode step's cache write, so that no view of the
   cache is made for it), or NULL (the cache holds them already). Strides in elements. */
static inline __attribute__((always_inline)) void attend_share(int bf16, const void *q, int64_t q_b, int64_t q_h,
                                                               void *k, void *v, int64_t kv_b, int64_t kv_h,
                                                               const float *bias, void *y, int64_t B, int64_t nh,
                                                               int64_t K, int64_t hs, const void *k_new, const void *v_new) {
  const int size = bf16 ? 2 : 4;
  float *s = malloc((K + 2 * hs) * sizeof(float));
#pragma omp for schedule(static)
  for (int64_t bh = 0; bh < B * nh; ++bh) {
    const int64_t b = bh / nh, h = bh % nh, at = b * kv_b + h * kv_h, in = b * q_b + h * q_h;
    if (k_new) {
      memcpy((char *)k + (at + (K - 1) * hs) * size, (const char *)k_new + in * size, hs * size);
      memcpy((char *)v + (at + (K - 1) * hs) * size, (const char *)v_new + in * size, hs * size);
    }
    attend_head(bf16, (const char *)q + in * size, (const char *)k + at * size,
                (const char *)v + at * size, bias ? bias + b * K : NULL, (char *)y + bh * hs * size, K, hs, s, s + K,
                s + K + hs);
  }
  free(s);
}

void gk_attend_f32(const float *q, int64_t q_b, int64_t q_h, float *k, float *v, int64_t kv_b, int64_t kv_h,
                   const float *bias, float *y, int64_t B, int64_t nh, int64_t K, int64_t hs, int threads,
                   const float *k_new, const float *v_new) {
  GK_RECORD(GK_ATTEND_F32, GK_P(q), q_b, q_h, GK_P(k), GK_P(v), kv_b, kv_h, GK_P(bias), GK_P(y), B, nh, K, hs, threads,
            GK_P(k_new), GK_P(v_new));
#pragma omp parallel num_threads(threads)
  attend_share(0, q, q_b, q_h, k, v, kv_b, kv_h, bias, y, B, nh, K, hs, k_new, v_new);
}

void gk_attend_bf16(const uint16_t *q, int64_t q_b, int64_t q_h, uint16_t *k, uint16_t *v, int64_t kv_b, int64_t kv_h,
                    const float *bias, uint16_t *y, int64_t B, int64_t nh, int64_t K, int64_t hs, int threads,
                    const uint16_t *k_new, const uint16_t *v_new) {
  GK_RECORD(GK_ATTEND_BF16, GK_P(q), q_b, q_h, GK_P(k), GK_P(v), kv_b, kv_h, GK_P(bias), GK_P(y), B, nh, K, hs, threads,
            GK_P(k_new), GK_P(v_new));
#pragma omp parallel num_threads(threads)
  attend_share(1, q, q_b, q_h, k, v, kv_b, kv_h, bias, y, B, nh, K, hs, k_new, v_new);
}

/* The scalar math gemv.c, attend.c, causal.c and step.c share: bf16 in and out, e^x as 2^n 2^f, and GPT-2's GELU.

   2^t for t in [-126, 126]: t = n + f with n = round(t) (the 1.5 * 2^23 trick: a float's low mantissa bits then
   hold n) and f in [-0.5, 0.5], 2^n built as a float's exponent bits, 2^f by its Taylor series to f^7
   (truncation below 1e-8 relative): float32's precision, and a loop of it vectorizes. */

#ifndef GK_KERNEL_MATH_H
#define GK_KERNEL_MATH_H

#include <stdint.h>
#include <string.h>

/* 2^f = 1 + f (C1 + f (C2 + ...)): ln(2)^k / k! */
#define GK_C1 0.6931471806f
#define GK_C2 0.2402265070f
#define GK_C3 0.0555041087f
#define GK_C4 0.0096181291f
#define GK_C5 0.0013333558f
#define GK_C6 0.0001540353f
#define GK_C7 0.0000152527f
#define GK_LOG2E 1.4426950408889634f

static inline float bf16_in(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

static inline uint16_t bf16_out(float f) {  /* rounded to nearest even, as torch does; NaN stays NaN */
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}

/* Element i of a float32 (bf16 = 0) or bf16 (bf16 = 1) array, as float32; and v stored there, bf16 rounded once. */
static inline __attribute__((always_inline)) float load_elem(const void *p, int64_t i, int bf16) {
  return bf16 ? bf16_in(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline __attribute__((always_inline)) void store_elem(void *p, int64_t i, float v, int bf16) {
  if (bf16)
    ((uint16_t *)p)[i] = bf16_out(v);
  else
    ((float *)p)[i] = v;
}

static inline float pow2(float t) {  /* 2^t, t in [-126, 126] (the caller clamps) */
  const float r = t + 12582912.0f, f = t - (r - 12582912.0f);
  int32_t ri; memcpy(&ri, &r, 4);
  const int32_t bits = (ri - 0x4B400000 + 127) << 23;  /* 2^n as a float's bits */
  float two_n; memcpy(&two_n, &bits, 4);
  return two_n * (1.0f + f * (GK_C1 + f * (GK_C2 + f * (GK_C3 + f * (GK_C4 + f * (GK_C5 + f * (GK_C6 + f * GK_C7)))))));
}

/* e^x for x <= 0 (a score less the row's largest); below -87 (t < -126; a masked key's -inf) it is 0. */
static inline float exp_nonpositive(float x) {
  const float l = x * GK_LOG2E;
  return x < -87.0f ? 0.0f : pow2(l > -126.0f ? l : -126.0f);
}

/* GPT-2's GELU (tanh form) of x: 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)), u = sqrt(2 / pi) (x + 0.044715 x^3),
   e^(-2u) = 2^t with t clamped to [-125, 125]: float32's precision, and no cancellation for negative x. gemv.c applies
   it to each output as it is stored (c_fc's products); step.c's gk_gelu to a product's output in place. */
static inline float gelu_tanh(float x) {
  float t = -2.0f * GK_LOG2E * 0.7978845608028654f * (x + 0.044715f * x * x * x);
  t = t < -125.0f ? -125.0f : t;  /* NaN stays NaN; a loop of it vectorizes where nothing traps (gemv.py builds so) */
  t = t > 125.0f ? 125.0f : t;
  return x / (1.0f + pow2(t));
}

#endif

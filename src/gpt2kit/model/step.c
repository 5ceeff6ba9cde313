/* A decode step replayed from its tape (tape.h), built into gemv.py's library with gemv.c and attend.c.

   A step of an inference copy is ~10 small operations a layer between its matrix products, each a torch call
   or a ctypes call from Python: ~70 us a layer of interpreter and dispatch on a 2-core Zen 4 VM, ~0.9 ms of a
   124M token, where the products take 11-16. step_graph.py records one step of the model's own forward
   (GPT.hidden_states and the head) on a tape and replays it here, one C loop over the same kernels with the
   same buffers, so the step's math stays written once. The step's torch operations that a decode step makes
   have kernels here: an embedding lookup, an elementwise add, a LayerNorm and a dtype conversion, in float32 or bf16 (math in
   float32, bf16 rounded to nearest even once, as torch does). */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_math.h"
#include "tape.h"

struct op {
  int32_t kind;
  int64_t a[GK_MAX_ARGS];
};

struct gk_tape {
  struct op *ops;
  int64_t n, cap;
  int32_t failed;  /* an append found no memory: the tape is unusable */
  int64_t *tokens, *positions, rows;  /* the recorded step's own ids and positions, (rows) each: a replay's inputs */
  int64_t logits;  /* where the recorded step's products wrote its logits (a replay may write them elsewhere) */
};

__thread struct gk_tape *gk_recording = NULL;

static int64_t tapes_alive = 0;  /* made and not yet freed: a recording dropped frees its tape */

struct gk_tape *gk_tape_new(void) {
  struct gk_tape *t = calloc(1, sizeof(struct gk_tape));
  if (t) __atomic_add_fetch(&tapes_alive, 1, __ATOMIC_RELAXED);
  return t;
}

void gk_tape_free(struct gk_tape *t) {
  if (!t) return;
  __atomic_sub_fetch(&tapes_alive, 1, __ATOMIC_RELAXED);
  free(t->ops);
  free(t);
}

int64_t gk_tapes_alive(void) { return __atomic_load_n(&tapes_alive, __ATOMIC_RELAXED); }

/* Record this thread's kernel calls on t from now on (t NULL: stop). */
void gk_tape_record_on(struct gk_tape *t) { gk_recording = t; }

int64_t gk_tape_length(const struct gk_tape *t) { return t->failed ? -1 : t->n; }

/* Where the recorded step's embeddings read their ids and positions, `rows` of each: a replay writes them. */
void gk_tape_inputs(struct gk_tape *t, int64_t *tokens, int64_t *positions, int64_t rows) {
  t->tokens = tokens;
  t->positions = positions;
  t->rows = rows;
}

/* Where the recorded step's logits are: a product that wrote there writes a replay's `out` instead, where it has one. */
void gk_tape_output(struct gk_tape *t, void *logits) { t->logits = (int64_t)(intptr_t)logits; }

/* Op i's kind, its arguments copied to args (GK_MAX_ARGS). */
int32_t gk_tape_op(const struct gk_tape *t, int64_t i, int64_t *args) {
  memcpy(args, t->ops[i].a, sizeof t->ops[i].a);
  return t->ops[i].kind;
}

void gk_record(int32_t kind, int32_t n, const int64_t *args) {
  struct gk_tape *t = gk_recording;
  if (t->n == t->cap) {
    const int64_t cap = t->cap ? 2 * t->cap : 256;
    struct op *ops = realloc(t->ops, cap * sizeof(struct op));
    if (!ops) {
      t->failed = 1;
      return;
    }
    t->ops = ops;
    t->cap = cap;
  }
  struct op *o = &t->ops[t->n++];
  o->kind = kind;
  memset(o->a, 0, sizeof o->a);
  memcpy(o->a, args, (n < GK_MAX_ARGS ? n : GK_MAX_ARGS) * sizeof(int64_t));
}

/* The prefetch argument (gemv.c's `pf`) of each product on the tape, in order: read into pf (set 0) or written from it
   (set 1), the first n of them; returns how many products the tape holds. A replay then reads each weight as written. */
int64_t gk_tape_prefetch(struct gk_tape *t, int32_t *pf, int64_t n, int set) {
  int64_t j = 0;
  for (int64_t i = 0; i < t->n; ++i) {
    const int32_t kind = t->ops[i].kind;
    const int at = kind == GK_GEMV_F32 ? 8 : kind == GK_GEMV_BF16 ? 9 : kind == GK_GEMV_S8 ? 10 : -1;  /* tape.h */
    if (at < 0) continue;
    if (j < n) {
      if (set)
        t->ops[i].a[at] = pf[j];
      else
        pf[j] = (int32_t)t->ops[i].a[at];
    }
    ++j;
  }
  return j;
}

/* y (n, C) = w[idx] (rows of a (rows, C) table, elements of `size` bytes); -1 for an id outside the table. */
int gk_embed(const void *w, int64_t rows, const int64_t *idx, void *y, int64_t n, int64_t row_bytes) {
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i] < 0 || idx[i] >= rows) return -1;
    memcpy((char *)y + i * row_bytes, (const char *)w + idx[i] * row_bytes, row_bytes);
  }
  return 0;
}

/* y (n) = a + b, float32 or bf16 (summed in float32, rounded once). */
void gk_add(const void *a, const void *b, void *y, int64_t n, int bf16) {
  if (!bf16) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) ((float *)y)[i] = ((const float *)a)[i] + ((const float *)b)[i];
    return;
  }
  for (int64_t i = 0; i < n; ++i) store_elem(y, i, load_elem(a, i, 1) + load_elem(b, i, 1), 1);
}

/* y (n) = GPT-2's GELU (tanh form, kernel_math.h) of y, in place, float32 or bf16 (in float32, rounded once), its
   `threads` taking contiguous parts: the GELU after a prompt's c_fc product where the kernel does not apply it as it
   stores (linear.py; torch's took ~1.9 ns an element on a 2-core Zen 3 VM). */
void gk_gelu(void *y, int64_t n, int bf16, int threads) {
  if (!bf16) {
    float *f = y;
#pragma omp parallel for simd num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) f[i] = gelu_tanh(f[i]);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) store_elem(y, i, gelu_tanh(load_elem(y, i, 1)), 1);
}

/* y (n) = x in the other dtype: float32 to bf16 (to_bf16 = 1; rounded to nearest even, as torch does) or back. */
void gk_convert(const void *x, void *y, int64_t n, int to_bf16) {
  for (int64_t i = 0; i < n; ++i) store_elem(y, i, load_elem(x, i, !to_bf16), to_bf16);
}

/* y (rows, C) = (x - mean) / sqrt(var + eps) w + b over each row of x (rows, C), in float32 (two passes: the
   mean, then the variance about it); w, b (C) in x's dtype. */
void gk_layer_norm(const void *x, const void *w, const void *b, void *y, int64_t rows, int64_t C, double eps, int bf16) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t at = r * C;
    float sum = 0.0f, sq = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; ++c) sum += load_elem(x, at + c, bf16);
    const float mean = sum / (float)C;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < C; ++c) {
      const float d = load_elem(x, at + c, bf16) - mean;
      sq += d * d;
    }
    const float rstd = 1.0f / sqrtf(sq / (float)C + (float)eps);
    for (int64_t c = 0; c < C; ++c)
      store_elem(y, at + c, (load_elem(x, at + c, bf16) - mean) * rstd * load_elem(w, c, bf16) + load_elem(b, c, bf16),
                 bf16);
  }
}

/* The library's kernels (gemv.c, attend.c); the bf16 product is built only where the CPU has AVX-512 BF16, and
   a tape holds it only where it ran. */
void gk_gemv_f32(const float *, const float *, int64_t, int64_t, const float *, float *, int64_t, int, int, int);
void gk_gemv_bf16(const uint16_t *, const float *, int, int64_t, int64_t, const uint16_t *, void *, int64_t, int, int,
                  int) __attribute__((weak));
void gk_gemv_s8(const int8_t *, const float *, const int32_t *, const float *, int64_t, int64_t, const float *, float *,
                int64_t, int, int, int);
void gk_attend_f32(const float *, int64_t, int64_t, float *, float *, int64_t, int64_t, const float *, float *, int64_t,
                   int64_t, int64_t, int64_t, int, const float *, const float *);
void gk_attend_bf16(const uint16_t *, int64_t, int64_t, uint16_t *, uint16_t *, int64_t, int64_t, const float *,
                    uint16_t *, int64_t, int64_t, int64_t, int64_t, int, const uint16_t *, const uint16_t *);

#define P(i) ((void *)(intptr_t)a[i])
#define Y(i) (out && a[i] == t->logits ? out : P(i)) /* a product's output: `out` for the step's logits */

/* The step for these ids and positions (the tape's `rows` of each): they are copied into the recorded step's own,
   then the tape's ops run in order, each attention over the step's K keys (writing key K - 1); the product that
   makes the logits writes them to `out` (laid out as the recorded step's) where it is not NULL. 0, or -1 - i where
   op i failed (an embedding id outside its table) and the ops after it did not run. */
int64_t gk_replay(const struct gk_tape *t, int64_t K, const int64_t *tokens, const int64_t *positions, void *out) {
  memmove(t->tokens, tokens, t->rows * sizeof(int64_t));
  memmove(t->positions, positions, t->rows * sizeof(int64_t));
  for (int64_t i = 0; i < t->n; ++i) {
    const int64_t *a = t->ops[i].a;
    switch (t->ops[i].kind) {
      case GK_GEMV_F32: gk_gemv_f32(P(0), P(1), a[2], a[3], P(4), Y(5), a[6], (int)a[7], (int)a[8], (int)a[9]); break;
      case GK_GEMV_BF16:
        gk_gemv_bf16(P(0), P(1), (int)a[2], a[3], a[4], P(5), Y(6), a[7], (int)a[8], (int)a[9], (int)a[10]);
        break;
      case GK_GEMV_S8:
        gk_gemv_s8(P(0), P(1), P(2), P(3), a[4], a[5], P(6), Y(7), a[8], (int)a[9], (int)a[10], (int)a[11]);
        break;
      case GK_ATTEND_F32:
        gk_attend_f32(P(0), a[1], a[2], P(3), P(4), a[5], a[6], P(7), P(8), a[9], a[10], K, a[12], (int)a[13], P(14), P(15));
        break;
      case GK_ATTEND_BF16:
        gk_attend_bf16(P(0), a[1], a[2], P(3), P(4), a[5], a[6], P(7), P(8), a[9], a[10], K, a[12], (int)a[13], P(14), P(15));
        break;
      case GK_EMBED:
        if (gk_embed(P(0), a[1], P(2), P(3), a[4], a[5])) return -1 - i;
        break;
      case GK_ADD: gk_add(P(0), P(1), P(2), a[3], (int)a[4]); break;
      case GK_LAYER_NORM: {
        double eps;
        memcpy(&eps, &a[6], sizeof eps);
        gk_layer_norm(P(0), P(1), P(2), P(3), a[4], a[5], eps, (int)a[7]);
        break;
      }
      case GK_CONVERT: gk_convert(P(0), P(1), a[2], (int)a[3]); break;
      default: return -1 - i;
    }
  }
  return 0;
}

/* The tape a decode step is recorded on (step.c): what each kernel of gemv.py's library was called with, in order.

   While a thread records (gk_recording set, per thread), every kernel of the library appends its kind and its
   arguments, each as one int64 (pointers and ints alike), before it runs. The step's torch operations are
   appended by step_graph.py, which sees them through torch's dispatcher, as the kinds below that step.c
   runs itself. A kernel that no tape can replay marks the tape unusable. */

#ifndef GK_TAPE_H
#define GK_TAPE_H

#include <stdint.h>

enum gk_kind {
  GK_GEMV_F32 = 1,  /* gk_gemv_f32's 10 arguments, its prefetch (pf) the 9th (a[8]) */
  GK_GEMV_BF16,     /* gk_gemv_bf16's 11, pf a[9] */
  GK_GEMV_S8,       /* gk_gemv_s8's 12, pf a[10] */
  GK_ATTEND_F32,    /* gk_attend_f32's 16; K (argument 11) is the step's at replay */
  GK_ATTEND_BF16,   /* gk_attend_bf16's 16, the same */
  GK_EMBED,         /* gk_embed's 6 */
  GK_ADD,           /* gk_add's 5 */
  GK_LAYER_NORM,    /* gk_layer_norm's 8 */
  GK_CONVERT,       /* gk_convert's 4 */
  GK_UNREPLAYABLE,  /* a kernel no tape replays (causal.c's, a prefill's) */
};

#define GK_MAX_ARGS 16

struct gk_tape;
extern __thread struct gk_tape *gk_recording;  /* the tape this thread records on, or NULL */
void gk_record(int32_t kind, int32_t n, const int64_t *args);

#define GK_P(p) ((int64_t)(intptr_t)(p))
/* Appends the kernel's kind and arguments to this thread's tape, where it records. */
#define GK_RECORD(kind, ...)                                          \
  do {                                                                \
    if (gk_recording) {                                               \
      const int64_t args_[] = {__VA_ARGS__};                          \
      gk_record(kind, (int32_t)(sizeof args_ / sizeof args_[0]), args_); \
    }                                                                 \
  } while (0)

#endif

/* The optimizer's step on one element (sgd.c, and the fused gradient + update kernels of linear layers in sgd.c
 * and of convolutions in conv.c): PyTorch's SGD (dampening 0, no Nesterov), for a raw gradient g:
 *   g' = g + wd w;   plain (no buffer): w -= lr g';   momentum: v = mu v + g', w -= lr v.
 * Every kernel that applies a step goes through step() (or, for plain SGD without weight decay, w -= lr g), so
 * an update computes the same floats whichever kernel applies it: a fused kernel leaves the weights and buffers
 * that its gradient kernel + poet_sgd_f32 leave. Internal to the runtime. */
#ifndef POET_STEP_H
#define POET_STEP_H

#include <stddef.h>

typedef struct {
    float lr, mu, wd;
} opt_step;

static inline void step(float *restrict w, float *restrict v, size_t i, float g, const opt_step *o) {
    const float d = g + o->wd * w[i];
    if (v) {
        v[i] = o->mu * v[i] + d;
        w[i] -= o->lr * v[i];
    } else {
        w[i] -= o->lr * d;
    }
}

/* The finiteness check of every update (the train program fails with POET_ERR_NONFINITE_PARAM when it is set):
 * a kernel keeps acc = 0 and adds 0 * w for each value it wrote (nf(acc, w)), which stays 0 for finite values
 * and becomes NaN for a NaN or an infinity; one multiply-add per value, and one test per kernel call. */
extern volatile int poet_update_nonfinite;
static inline float nf(float acc, float w) { return acc + 0.0f * w; }
static inline void note_update(float acc) {
    if (acc != 0.0f) poet_update_nonfinite = 1;
}
/* The same over n values a kernel just wrote (where the update is not the cost that matters: convolutions,
 * whose weights see many multiply-adds each, biases, running statistics). */
static inline void note_range(const float *w, size_t n) {
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++) acc = nf(acc, w[i]);
    note_update(acc);
}

/* Plain SGD without weight decay (w -= lr g): the kernels' fast paths. */
static inline int plain(float mu, float wd, const float *v) { return !v && mu == 0.0f && wd == 0.0f; }

#endif

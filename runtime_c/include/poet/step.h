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

/* Plain SGD without weight decay (w -= lr g): the kernels' fast paths. */
static inline int plain(float mu, float wd, const float *v) { return !v && mu == 0.0f && wd == 0.0f; }

#endif

/* Optimizer steps, in place: PyTorch's SGD (dampening 0, no Nesterov), for a raw gradient g:
 *   g' = g + wd w;   plain (no buffer): w -= lr g';   momentum: v = mu v + g', w -= lr v.
 * Plain SGD without weight decay keeps its own code (w -= lr g, as before momentum existed); every other case
 * goes through step() (poet/step.h, shared with the fused convolution kernels of conv.c), one element at a time,
 * in the same order on every path so that the chunked (gradient capture) and blocked paths give bit-identical
 * weights and buffers. */
#include "poet/kernels.h"
#include "poet/step.h"

volatile int poet_update_nonfinite; /* the update kernels' finiteness flag (step.h); poet_run clears and reads it */

poet_status poet_sgd_f32(const poet_sgd_params *p, float lr, const float *restrict g, float *restrict w,
                         float *restrict v) {
    if (!p || !g || !w || (p->momentum != 0.0f && !v)) return POET_ERR_ARG;
    float acc = 0.0f;
    if (plain(p->momentum, p->weight_decay, v)) {
        for (uint32_t i = 0; i < p->n; i++) {
            w[i] -= lr * g[i];
            acc = nf(acc, w[i]);
        }
    } else {
        const opt_step o = {lr, p->momentum, p->weight_decay};
        for (uint32_t i = 0; i < p->n; i++) {
            step(w, v, i, g[i], &o);
            acc = nf(acc, w[i]);
        }
    }
    note_update(acc);
    return POET_OK;
}

/* Fused gradient + update, W[r][c] -= lr * alpha * sum_i a[i, r] b[i, c]: for trans_w (W is [n, k]) a = dy
 * and b = x, otherwise (W is [k, n]) a = x and b = dy. Two paths with the same arithmetic (each gradient
 * element is the sum over i in order, then times alpha, then w -= lr * g), so they give bit-identical weights:
 *  - with a sink (gradient capture): chunks of up to POET_SGD_CHUNK gradients of a row of W in a local array,
 *    in W's memory order, each handed to the sink before it is applied;
 *  - without: 4x4 register blocks of W (16 accumulators, 4 + 4 loads per 16 multiply-adds). */
static __attribute__((noinline)) void dw_sgd_chunked(uint32_t m, uint32_t rows, uint32_t cols,
                                                     const float *restrict a, size_t lda, const float *restrict b,
                                                     size_t ldb, float *restrict w, float *restrict v, float alpha,
                                                     const opt_step *o, poet_grad_sink sink, void *ctx) {
    float g[POET_SGD_CHUNK];
    for (uint32_t r = 0; r < rows; r++) {
        for (uint32_t c0 = 0; c0 < cols; c0 += POET_SGD_CHUNK) {
            uint32_t c = cols - c0 < POET_SGD_CHUNK ? cols - c0 : POET_SGD_CHUNK;
            for (uint32_t q = 0; q < c; q++) g[q] = 0.0f;
            for (uint32_t i = 0; i < m; i++) {
                const float av = a[(size_t)i * lda + r];
                const float *br = b + (size_t)i * ldb + c0;
                for (uint32_t q = 0; q < c; q++) g[q] += av * br[q];
            }
            const size_t at = (size_t)r * cols + c0;
            for (uint32_t q = 0; q < c; q++) g[q] *= alpha;
            sink(ctx, r * cols + c0, g, c);
            if (plain(o->mu, o->wd, v)) {
                float *wr = w + at;
                for (uint32_t q = 0; q < c; q++) wr[q] -= o->lr * g[q];
            } else {
                for (uint32_t q = 0; q < c; q++) step(w, v, at + q, g[q], o);
            }
        }
    }
}

/* One gradient element, plainly: alpha * sum_i a[i * sa] * b[i * sb]. */
static inline float dot_strided(const float *a, size_t sa, const float *b, size_t sb, uint32_t m, float alpha) {
    float acc = 0.0f;
    for (uint32_t i = 0; i < m; i++) acc += a[(size_t)i * sa] * b[(size_t)i * sb];
    return acc * alpha;
}

/* The 4x4 blocks; PLAIN is a constant where inlined: 1 for plain SGD (w -= lr g), 0 for step(). */
#define UPDATE(i, g)                                                                                          \
    do {                                                                                                      \
        if (PLAIN)                                                                                            \
            w[i] -= lr * (g);                                                                                 \
        else                                                                                                  \
            step(w, v, i, g, o);                                                                              \
    } while (0)

static inline __attribute__((always_inline)) float dw_sgd_blocked_t(
    uint32_t m, uint32_t rows, uint32_t cols, const float *restrict a, size_t lda, const float *restrict b,
    size_t ldb, float *restrict w, float *restrict v, float alpha, float lr, const opt_step *o, const int PLAIN) {
    float acc = 0.0f; /* the finiteness check (step.h): 0 + 0 w over the weights written */
    uint32_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        uint32_t c = 0;
        for (; c + 4 <= cols; c += 4) {
            float s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
            float s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
            const float *pa = a + r, *pb = b + c;
            for (uint32_t i = 0; i < m; i++, pa += lda, pb += ldb) {
                const float a0 = pa[0], a1 = pa[1], a2 = pa[2], a3 = pa[3];
                const float b0 = pb[0], b1 = pb[1], b2 = pb[2], b3 = pb[3];
                s00 += a0 * b0; s01 += a0 * b1; s02 += a0 * b2; s03 += a0 * b3;
                s10 += a1 * b0; s11 += a1 * b1; s12 += a1 * b2; s13 += a1 * b3;
                s20 += a2 * b0; s21 += a2 * b1; s22 += a2 * b2; s23 += a2 * b3;
                s30 += a3 * b0; s31 += a3 * b1; s32 += a3 * b2; s33 += a3 * b3;
            }
            if (PLAIN) {
                float *w0 = w + (size_t)r * cols + c, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
                w0[0] -= lr * (s00 * alpha); w0[1] -= lr * (s01 * alpha); w0[2] -= lr * (s02 * alpha); w0[3] -= lr * (s03 * alpha);
                w1[0] -= lr * (s10 * alpha); w1[1] -= lr * (s11 * alpha); w1[2] -= lr * (s12 * alpha); w1[3] -= lr * (s13 * alpha);
                w2[0] -= lr * (s20 * alpha); w2[1] -= lr * (s21 * alpha); w2[2] -= lr * (s22 * alpha); w2[3] -= lr * (s23 * alpha);
                w3[0] -= lr * (s30 * alpha); w3[1] -= lr * (s31 * alpha); w3[2] -= lr * (s32 * alpha); w3[3] -= lr * (s33 * alpha);
                acc = nf(acc, (w0[0] + w0[1] + w0[2] + w0[3]) + (w1[0] + w1[1] + w1[2] + w1[3]) +
                                  (w2[0] + w2[1] + w2[2] + w2[3]) + (w3[0] + w3[1] + w3[2] + w3[3]));
            } else {
                const size_t i0 = (size_t)r * cols + c, i1 = i0 + cols, i2 = i1 + cols, i3 = i2 + cols;
                step(w, v, i0, s00 * alpha, o); step(w, v, i0 + 1, s01 * alpha, o); step(w, v, i0 + 2, s02 * alpha, o); step(w, v, i0 + 3, s03 * alpha, o);
                step(w, v, i1, s10 * alpha, o); step(w, v, i1 + 1, s11 * alpha, o); step(w, v, i1 + 2, s12 * alpha, o); step(w, v, i1 + 3, s13 * alpha, o);
                step(w, v, i2, s20 * alpha, o); step(w, v, i2 + 1, s21 * alpha, o); step(w, v, i2 + 2, s22 * alpha, o); step(w, v, i2 + 3, s23 * alpha, o);
                step(w, v, i3, s30 * alpha, o); step(w, v, i3 + 1, s31 * alpha, o); step(w, v, i3 + 2, s32 * alpha, o); step(w, v, i3 + 3, s33 * alpha, o);
                acc = nf(acc, (w[i0] + w[i0 + 1] + w[i0 + 2] + w[i0 + 3]) + (w[i1] + w[i1 + 1] + w[i1 + 2] + w[i1 + 3]) +
                                  (w[i2] + w[i2 + 1] + w[i2 + 2] + w[i2 + 3]) + (w[i3] + w[i3 + 1] + w[i3 + 2] + w[i3 + 3]));
            }
        }
        for (; c < cols; c++)
            for (uint32_t q = 0; q < 4; q++) {
                UPDATE((size_t)(r + q) * cols + c, dot_strided(a + r + q, lda, b + c, ldb, m, alpha));
                acc = nf(acc, w[(size_t)(r + q) * cols + c]);
            }
    }
    for (; r < rows; r++)
        for (uint32_t c = 0; c < cols; c++) {
            UPDATE((size_t)r * cols + c, dot_strided(a + r, lda, b + c, ldb, m, alpha));
            acc = nf(acc, w[(size_t)r * cols + c]);
        }
    return acc;
}
#undef UPDATE

static __attribute__((noinline)) void dw_sgd_blocked_plain(uint32_t m, uint32_t rows, uint32_t cols,
                                                           const float *restrict a, size_t lda,
                                                           const float *restrict b, size_t ldb, float *restrict w,
                                                           float alpha, float lr) {
    note_update(dw_sgd_blocked_t(m, rows, cols, a, lda, b, ldb, w, NULL, alpha, lr, NULL, 1));
}

/* Each path is a function of its own (not inlined into poet_linear_dw_sgd_f32): the plain path keeps the registers
 * to itself (its instruction count is benchmarks/m4_kernel_instructions.py's dw+sgd), and the stack holds one
 * path's frame at a time (ARMv6-M boards have 1 KB of stack). */
static __attribute__((noinline)) void dw_sgd_blocked_step(uint32_t m, uint32_t rows, uint32_t cols,
                                                          const float *restrict a, size_t lda, const float *restrict b,
                                                          size_t ldb, float *restrict w, float *restrict v,
                                                          float alpha, const opt_step *o) {
    note_update(dw_sgd_blocked_t(m, rows, cols, a, lda, b, ldb, w, v, alpha, o->lr, o, 0));
}

poet_status poet_linear_dw_sgd_f32(const poet_linear_params *p, float lr, const float *restrict dy,
                                   const float *restrict x, float *restrict w, float *restrict v,
                                   poet_grad_sink sink, void *ctx) {
    if (!p || !dy || !x || !w || (p->momentum != 0.0f && !v)) return POET_ERR_ARG;
    const uint32_t rows = p->trans_w ? p->n : p->k, cols = p->trans_w ? p->k : p->n;
    const float *a = p->trans_w ? dy : x, *b = p->trans_w ? x : dy;
    const size_t lda = p->trans_w ? p->n : p->k, ldb = p->trans_w ? p->k : p->n;
    const opt_step o = {lr, p->momentum, p->weight_decay};
    if (sink) {
        dw_sgd_chunked(p->m, rows, cols, a, lda, b, ldb, w, v, p->alpha, &o, sink, ctx);
        note_range(w, (size_t)rows * cols);
    }
    else if (plain(p->momentum, p->weight_decay, v))
        dw_sgd_blocked_plain(p->m, rows, cols, a, lda, b, ldb, w, p->alpha, lr);
    else
        dw_sgd_blocked_step(p->m, rows, cols, a, lda, b, ldb, w, v, p->alpha, &o);
    return POET_OK;
}

poet_status poet_bias_grad_sgd_f32(const poet_linear_params *p, float lr, const float *restrict dy,
                                   float *restrict b, float *restrict v, poet_grad_sink sink, void *ctx) {
    if (!p || !dy || !b || (p->momentum != 0.0f && !v)) return POET_ERR_ARG;
    const opt_step o = {lr, p->momentum, p->weight_decay};
    const int fast = plain(p->momentum, p->weight_decay, v);
    float g[POET_SGD_CHUNK];
    for (uint32_t j0 = 0; j0 < p->n; j0 += POET_SGD_CHUNK) {
        uint32_t c = p->n - j0 < POET_SGD_CHUNK ? p->n - j0 : POET_SGD_CHUNK;
        for (uint32_t q = 0; q < c; q++) g[q] = 0.0f;
        for (uint32_t i = 0; i < p->m; i++) {
            const float *dr = dy + (size_t)i * p->n + j0;
            for (uint32_t q = 0; q < c; q++) g[q] += dr[q];
        }
        for (uint32_t q = 0; q < c; q++) g[q] *= p->beta;
        if (sink) sink(ctx, j0, g, c);
        if (fast)
            for (uint32_t q = 0; q < c; q++) b[j0 + q] -= lr * g[q];
        else
            for (uint32_t q = 0; q < c; q++) step(b, v, j0 + q, g[q], &o);
    }
    note_range(b, p->n);
    return POET_OK;
}

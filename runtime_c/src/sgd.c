/* Optimizer steps, in place. */
#include "poet/kernels.h"

poet_status poet_sgd_f32(const poet_sgd_params *p, float lr, const float *restrict g, float *restrict w) {
    if (!p || !g || !w) return POET_ERR_ARG;
    for (uint32_t i = 0; i < p->n; i++) w[i] -= lr * g[i];
    return POET_OK;
}

/* Fused gradient + update. The gradient of a chunk of up to POET_SGD_CHUNK parameters is accumulated in a
 * local array (row-contiguous reads of x), handed to the sink if any, then applied. */
poet_status poet_linear_dw_sgd_f32(const poet_linear_params *p, float lr, const float *restrict dy,
                                   const float *restrict x, float *restrict w, poet_grad_sink sink, void *ctx) {
    if (!p || !dy || !x || !w) return POET_ERR_ARG;
    float g[POET_SGD_CHUNK];
    if (p->trans_w) { /* W[j, kk], j < n: a chunk runs along kk, the contiguous axis of x */
        for (uint32_t j = 0; j < p->n; j++) {
            for (uint32_t k0 = 0; k0 < p->k; k0 += POET_SGD_CHUNK) {
                uint32_t c = p->k - k0 < POET_SGD_CHUNK ? p->k - k0 : POET_SGD_CHUNK;
                for (uint32_t q = 0; q < c; q++) g[q] = 0.0f;
                for (uint32_t i = 0; i < p->m; i++) {
                    const float d = dy[(size_t)i * p->n + j];
                    const float *xr = x + (size_t)i * p->k + k0;
                    for (uint32_t q = 0; q < c; q++) g[q] += d * xr[q];
                }
                float *wr = w + (size_t)j * p->k + k0;
                for (uint32_t q = 0; q < c; q++) g[q] *= p->alpha;
                if (sink) sink(ctx, j * p->k + k0, g, c);
                for (uint32_t q = 0; q < c; q++) wr[q] -= lr * g[q];
            }
        }
    } else { /* W[kk, j]: a chunk runs along j, the contiguous axis of dy */
        for (uint32_t kk = 0; kk < p->k; kk++) {
            for (uint32_t j0 = 0; j0 < p->n; j0 += POET_SGD_CHUNK) {
                uint32_t c = p->n - j0 < POET_SGD_CHUNK ? p->n - j0 : POET_SGD_CHUNK;
                for (uint32_t q = 0; q < c; q++) g[q] = 0.0f;
                for (uint32_t i = 0; i < p->m; i++) {
                    const float xv = x[(size_t)i * p->k + kk];
                    const float *dr = dy + (size_t)i * p->n + j0;
                    for (uint32_t q = 0; q < c; q++) g[q] += xv * dr[q];
                }
                float *wr = w + (size_t)kk * p->n + j0;
                for (uint32_t q = 0; q < c; q++) g[q] *= p->alpha;
                if (sink) sink(ctx, kk * p->n + j0, g, c);
                for (uint32_t q = 0; q < c; q++) wr[q] -= lr * g[q];
            }
        }
    }
    return POET_OK;
}

poet_status poet_bias_grad_sgd_f32(const poet_linear_params *p, float lr, const float *restrict dy,
                                   float *restrict b, poet_grad_sink sink, void *ctx) {
    if (!p || !dy || !b) return POET_ERR_ARG;
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
        for (uint32_t q = 0; q < c; q++) b[j0 + q] -= lr * g[q];
    }
    return POET_OK;
}

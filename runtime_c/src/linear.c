/* Linear layer kernels, reference versions: plain loops, float accumulation. */
#include "poet/kernels.h"

/* W' = trans_w ? W^T : W, a [k, n] view of the weight. */
static inline float wt(const poet_linear_params *p, const float *w, uint32_t kk, uint32_t j) {
    return p->trans_w ? w[(size_t)j * p->k + kk] : w[(size_t)kk * p->n + j];
}

poet_status poet_linear_fwd_f32(const poet_linear_params *p, const float *restrict x, const float *restrict w,
                                const float *restrict b, float *restrict y) {
    if (!p || !x || !w || !y) return POET_ERR_ARG;
    for (uint32_t i = 0; i < p->m; i++) {
        for (uint32_t j = 0; j < p->n; j++) {
            float acc = 0.0f;
            for (uint32_t kk = 0; kk < p->k; kk++) acc += x[(size_t)i * p->k + kk] * wt(p, w, kk, j);
            y[(size_t)i * p->n + j] = p->alpha * acc + (b ? p->beta * b[j] : 0.0f);
        }
    }
    return POET_OK;
}

poet_status poet_linear_dx_f32(const poet_linear_params *p, const float *restrict dy, const float *restrict w,
                               float *restrict dx) {
    if (!p || !dy || !w || !dx) return POET_ERR_ARG;
    for (uint32_t i = 0; i < p->m; i++) {
        for (uint32_t kk = 0; kk < p->k; kk++) {
            float acc = 0.0f;
            for (uint32_t j = 0; j < p->n; j++) acc += dy[(size_t)i * p->n + j] * wt(p, w, kk, j);
            dx[(size_t)i * p->k + kk] = p->alpha * acc;
        }
    }
    return POET_OK;
}

poet_status poet_linear_dw_f32(const poet_linear_params *p, const float *restrict dy, const float *restrict x,
                               float *restrict dw) {
    if (!p || !dy || !x || !dw) return POET_ERR_ARG;
    for (uint32_t kk = 0; kk < p->k; kk++) {
        for (uint32_t j = 0; j < p->n; j++) {
            float acc = 0.0f;
            for (uint32_t i = 0; i < p->m; i++) acc += dy[(size_t)i * p->n + j] * x[(size_t)i * p->k + kk];
            size_t at = p->trans_w ? (size_t)j * p->k + kk : (size_t)kk * p->n + j;
            dw[at] = p->alpha * acc;
        }
    }
    return POET_OK;
}

poet_status poet_bias_grad_f32(const poet_linear_params *p, const float *restrict dy, float *restrict db) {
    if (!p || !dy || !db) return POET_ERR_ARG;
    for (uint32_t j = 0; j < p->n; j++) {
        float acc = 0.0f;
        for (uint32_t i = 0; i < p->m; i++) acc += dy[(size_t)i * p->n + j];
        db[j] = p->beta * acc;
    }
    return POET_OK;
}

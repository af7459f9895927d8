/* Elementwise kernels. */
#include "poet/kernels.h"

poet_status poet_relu_fwd_f32(const poet_eltwise_params *p, const float *restrict x, float *restrict y) {
    if (!p || !x || !y) return POET_ERR_ARG;
    for (uint32_t i = 0; i < p->n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
    return POET_OK;
}

poet_status poet_relu_bwd_f32(const poet_eltwise_params *p, const float *restrict y, const float *restrict dy,
                              float *restrict dx) {
    if (!p || !y || !dy || !dx) return POET_ERR_ARG;
    for (uint32_t i = 0; i < p->n; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    return POET_OK;
}

poet_status poet_add_f32(const poet_eltwise_params *p, const float *restrict a, const float *restrict b,
                         float *restrict y) {
    if (!p || !a || !b || !y) return POET_ERR_ARG;
    for (uint32_t i = 0; i < p->n; i++) y[i] = a[i] + b[i];
    return POET_OK;
}

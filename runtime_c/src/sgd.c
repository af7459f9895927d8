/* Optimizer steps, in place. */
#include "poet/kernels.h"

poet_status poet_sgd_f32(const poet_sgd_params *p, float lr, const float *restrict g, float *restrict w) {
    if (!p || !g || !w) return POET_ERR_ARG;
    for (uint32_t i = 0; i < p->n; i++) w[i] -= lr * g[i];
    return POET_OK;
}

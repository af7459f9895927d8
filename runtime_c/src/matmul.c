/* Batched matrix product, reference version: y[b] = alpha op(a[b]) op(b[b]) with batch strides (0: broadcast;
 * output stride 0: the batch is summed into one matrix). */
#include <string.h>

#include "poet/kernels.h"

poet_status poet_matmul_f32(const poet_matmul_params *p, const float *restrict a, const float *restrict b,
                            float *restrict y) {
    if (!p || !a || !b || !y) return POET_ERR_ARG;
    const uint32_t m = p->m, k = p->k, n = p->n;
    if (p->so == 0) memset(y, 0, (size_t)m * n * sizeof(float));
    for (uint32_t t = 0; t < p->batch; t++) {
        const float *A = a + (size_t)t * p->sa;
        const float *B = b + (size_t)t * p->sb;
        float *Y = y + (size_t)t * p->so;
        for (uint32_t i = 0; i < m; i++) {
            for (uint32_t j = 0; j < n; j++) {
                float acc = 0.0f;
                for (uint32_t kk = 0; kk < k; kk++) {
                    const float av = p->ta ? A[(size_t)kk * m + i] : A[(size_t)i * k + kk];
                    const float bv = p->tb ? B[(size_t)j * k + kk] : B[(size_t)kk * n + j];
                    acc += av * bv;
                }
                if (p->so) Y[(size_t)i * n + j] = p->alpha * acc;
                else Y[(size_t)i * n + j] += p->alpha * acc;
            }
        }
    }
    return POET_OK;
}

/* Softmax cross-entropy, mean over the batch. The backward recomputes the softmax from the logits. */
#include <math.h>

#include "poet/kernels.h"

static float row_logsumexp(const float *z, uint32_t c) {
    float mx = z[0];
    for (uint32_t j = 1; j < c; j++) mx = z[j] > mx ? z[j] : mx;
    float s = 0.0f;
    for (uint32_t j = 0; j < c; j++) s += expf(z[j] - mx);
    return mx + logf(s);
}

poet_status poet_softmax_xent_fwd_f32(const poet_xent_params *p, const float *restrict logits,
                                      const int32_t *restrict labels, float *restrict loss) {
    if (!p || !logits || !labels || !loss || p->m == 0 || p->c == 0) return POET_ERR_ARG;
    float total = 0.0f;
    for (uint32_t i = 0; i < p->m; i++) {
        int32_t y = labels[i];
        if (y < 0 || (uint32_t)y >= p->c) return POET_ERR_ARG;
        const float *z = logits + (size_t)i * p->c;
        total += row_logsumexp(z, p->c) - z[y];
    }
    *loss = total / (float)p->m;
    return POET_OK;
}

poet_status poet_softmax_xent_bwd_f32(const poet_xent_params *p, const float *restrict logits,
                                      const int32_t *restrict labels, float *restrict dlogits) {
    if (!p || !logits || !labels || !dlogits || p->m == 0 || p->c == 0) return POET_ERR_ARG;
    const float inv_m = 1.0f / (float)p->m;
    for (uint32_t i = 0; i < p->m; i++) {
        int32_t y = labels[i];
        if (y < 0 || (uint32_t)y >= p->c) return POET_ERR_ARG;
        const float *z = logits + (size_t)i * p->c;
        float *d = dlogits + (size_t)i * p->c;
        float lse = row_logsumexp(z, p->c);
        for (uint32_t j = 0; j < p->c; j++) d[j] = expf(z[j] - lse) * inv_m;
        d[y] -= inv_m;
    }
    return POET_OK;
}

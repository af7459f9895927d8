/* Layer normalisation, reference versions: x viewed as [m, d], each row normalised with its own mean and biased
 * variance. Every kernel recomputes the row statistics (two passes), so none has to be stored. */
#include <math.h>
#include <string.h>

#include "poet/kernels.h"

static void row_stats(const float *x, uint32_t d, float eps, float *mean, float *r) {
    float s = 0.0f;
    for (uint32_t j = 0; j < d; j++) s += x[j];
    const float mu = s / (float)d;
    float ss = 0.0f;
    for (uint32_t j = 0; j < d; j++) ss += (x[j] - mu) * (x[j] - mu);
    *mean = mu;
    *r = 1.0f / sqrtf(ss / (float)d + eps);
}

poet_status poet_ln_fwd_f32(const poet_ln_params *p, const float *restrict x, const float *restrict gamma,
                            const float *restrict beta, float *restrict y) {
    if (!p || !x || !gamma || !y || p->d == 0) return POET_ERR_ARG;
    for (uint32_t i = 0; i < p->m; i++) {
        const float *xr = x + (size_t)i * p->d;
        float *yr = y + (size_t)i * p->d;
        float mean, r;
        row_stats(xr, p->d, p->eps, &mean, &r);
        for (uint32_t j = 0; j < p->d; j++) yr[j] = (xr[j] - mean) * r * gamma[j] + (beta ? beta[j] : 0.0f);
    }
    return POET_OK;
}

poet_status poet_ln_dx_f32(const poet_ln_params *p, const float *restrict dy, const float *restrict x,
                           const float *restrict gamma, float *restrict dx) {
    if (!p || !dy || !x || !gamma || !dx || p->d == 0) return POET_ERR_ARG;
    const float d = (float)p->d;
    for (uint32_t i = 0; i < p->m; i++) {
        const float *xr = x + (size_t)i * p->d, *gr = dy + (size_t)i * p->d;
        float *out = dx + (size_t)i * p->d;
        float mean, r;
        row_stats(xr, p->d, p->eps, &mean, &r);
        float s1 = 0.0f, s2 = 0.0f;
        for (uint32_t j = 0; j < p->d; j++) {
            const float g = gr[j] * gamma[j];
            s1 += g;
            s2 += g * (xr[j] - mean) * r;
        }
        for (uint32_t j = 0; j < p->d; j++) {
            const float xh = (xr[j] - mean) * r;
            out[j] = r / d * (d * gr[j] * gamma[j] - s1 - xh * s2);
        }
    }
    return POET_OK;
}

poet_status poet_ln_dgamma_f32(const poet_ln_params *p, const float *restrict dy, const float *restrict x,
                               float *restrict dgamma) {
    if (!p || !dy || !x || !dgamma || p->d == 0) return POET_ERR_ARG;
    memset(dgamma, 0, (size_t)p->d * sizeof(float));
    for (uint32_t i = 0; i < p->m; i++) {
        const float *xr = x + (size_t)i * p->d, *gr = dy + (size_t)i * p->d;
        float mean, r;
        row_stats(xr, p->d, p->eps, &mean, &r);
        for (uint32_t j = 0; j < p->d; j++) dgamma[j] += gr[j] * (xr[j] - mean) * r;
    }
    return POET_OK;
}

/* Softmax along one axis, reference versions: x viewed as [outer, n, inner], normalised over n. */
#include <math.h>

#include "poet/kernels.h"

poet_status poet_softmax_fwd_f32(const poet_softmax_params *p, const float *restrict x, float *restrict y) {
    if (!p || !x || !y || p->n == 0) return POET_ERR_ARG;
    for (uint32_t o = 0; o < p->outer; o++) {
        for (uint32_t in = 0; in < p->inner; in++) {
            const float *xr = x + (size_t)o * p->n * p->inner + in;
            float *yr = y + (size_t)o * p->n * p->inner + in;
            float mx = xr[0];
            for (uint32_t j = 1; j < p->n; j++) mx = xr[(size_t)j * p->inner] > mx ? xr[(size_t)j * p->inner] : mx;
            float s = 0.0f;
            for (uint32_t j = 0; j < p->n; j++) {
                yr[(size_t)j * p->inner] = expf(xr[(size_t)j * p->inner] - mx);
                s += yr[(size_t)j * p->inner];
            }
            const float inv = 1.0f / s;
            for (uint32_t j = 0; j < p->n; j++) yr[(size_t)j * p->inner] *= inv;
        }
    }
    return POET_OK;
}

poet_status poet_softmax_bwd_f32(const poet_softmax_params *p, const float *restrict y, const float *restrict dy,
                                 float *restrict dx) {
    if (!p || !y || !dy || !dx) return POET_ERR_ARG;
    for (uint32_t o = 0; o < p->outer; o++) {
        for (uint32_t in = 0; in < p->inner; in++) {
            const size_t at = (size_t)o * p->n * p->inner + in;
            float s = 0.0f;
            for (uint32_t j = 0; j < p->n; j++) s += dy[at + (size_t)j * p->inner] * y[at + (size_t)j * p->inner];
            for (uint32_t j = 0; j < p->n; j++) {
                const size_t k = at + (size_t)j * p->inner;
                dx[k] = y[k] * (dy[k] - s);
            }
        }
    }
    return POET_OK;
}

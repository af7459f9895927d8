/* Broadcasting arithmetic, reference versions. A loop over shape[0..rank) visits the contiguous side in order
 * and keeps one running offset per strided operand (an odometer: add the stride, wrap at the extent). */
#include <string.h>

#include "poet/kernels.h"

static size_t count(const poet_bcast_params *p) {
    size_t n = 1;
    for (uint32_t k = 0; k < p->rank; k++) n *= p->shape[k];
    return n;
}

/* Advance the index and the three offsets to the next position of the loop. */
static void step(const poet_bcast_params *p, uint32_t *idx, size_t *oa, size_t *ob, size_t *oc) {
    for (uint32_t k = p->rank; k-- > 0;) {
        idx[k]++;
        *oa += p->sa[k];
        *ob += p->sb[k];
        *oc += p->sc[k];
        if (idx[k] < p->shape[k]) return;
        *oa -= (size_t)p->sa[k] * p->shape[k];
        *ob -= (size_t)p->sb[k] * p->shape[k];
        *oc -= (size_t)p->sc[k] * p->shape[k];
        idx[k] = 0;
    }
}

static int rank_ok(const poet_bcast_params *p) { return p->rank >= 1 && p->rank <= POET_MAX_RANK; }

poet_status poet_binary_f32(const poet_bcast_params *p, const float *restrict a, const float *restrict b,
                            float *restrict y) {
    if (!p || !a || !b || !y || !rank_ok(p) || p->op > 3) return POET_ERR_ARG;
    uint32_t idx[POET_MAX_RANK] = {0};
    size_t oa = 0, ob = 0, oc = 0;
    const size_t n = count(p);
    for (size_t i = 0; i < n; i++) {
        const float u = a[oa], v = b[ob];
        switch (p->op) {
        case 0: y[i] = u + v; break;
        case 1: y[i] = u - v; break;
        case 2: y[i] = u * v; break;
        default: y[i] = u / v; break;
        }
        step(p, idx, &oa, &ob, &oc);
    }
    return POET_OK;
}

/* Number of elements of the output: one past its largest offset in the loop. */
static size_t extent(const poet_bcast_params *p, const uint32_t *s) {
    size_t e = 1;
    for (uint32_t k = 0; k < p->rank; k++) e += (size_t)(p->shape[k] - 1) * s[k];
    return e;
}

poet_status poet_reduce_f32(const poet_bcast_params *p, const float *restrict x, const float *restrict u,
                            const float *restrict v, float *restrict y) {
    if (!p || !x || !y || !rank_ok(p) || p->op > 3) return POET_ERR_ARG;
    if ((p->op >= 1 && !u) || (p->op == 3 && !v)) return POET_ERR_ARG;
    const size_t ny = extent(p, p->sa);
    memset(y, 0, ny * sizeof(float));
    uint32_t idx[POET_MAX_RANK] = {0};
    size_t oy = 0, ou = 0, ov = 0;
    const size_t n = count(p);
    for (size_t i = 0; i < n; i++) {
        float t;
        switch (p->op) {
        case 0: t = x[i]; break;
        case 1: t = x[i] * u[ou]; break;
        case 2: t = x[i] / u[ou]; break;
        default: t = -x[i] * u[ou] / (v[ov] * v[ov]); break;
        }
        y[oy] += t;
        step(p, idx, &oy, &ou, &ov);
    }
    for (size_t j = 0; j < ny; j++) y[j] *= p->scale;
    return POET_OK;
}

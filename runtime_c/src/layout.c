/* Data movement, reference versions: a strided read (transpose, slice, broadcast, copy), its adjoint (a strided
 * accumulate into a zeroed output) and concatenation. */
#include <string.h>

#include "poet/kernels.h"

static int view_ok(const poet_layout_params *p, size_t strided_n, size_t contiguous_n) {
    if (p->rank < 1 || p->rank > POET_MAX_RANK) return 0;
    size_t n = 1, last = p->base;
    for (uint32_t k = 0; k < p->rank; k++) {
        if (p->shape[k] == 0) return contiguous_n == 0;
        n *= p->shape[k];
        last += (size_t)(p->shape[k] - 1) * p->stride[k];
    }
    return n == contiguous_n && last < strided_n;
}

static void step(const poet_layout_params *p, uint32_t *idx, size_t *off) {
    for (uint32_t k = p->rank; k-- > 0;) {
        idx[k]++;
        *off += p->stride[k];
        if (idx[k] < p->shape[k]) return;
        *off -= (size_t)p->stride[k] * p->shape[k];
        idx[k] = 0;
    }
}

poet_status poet_strided_f32(const poet_layout_params *p, const float *restrict x, float *restrict y) {
    if (!p || !x || !y) return POET_ERR_ARG;
    if (!view_ok(p, p->n_src, p->n_dst)) return POET_ERR_SHAPE;
    uint32_t idx[POET_MAX_RANK] = {0};
    size_t off = p->base;
    for (size_t i = 0; i < p->n_dst; i++) {
        y[i] = p->scale * x[off];
        step(p, idx, &off);
    }
    return POET_OK;
}

poet_status poet_scatter_f32(const poet_layout_params *p, const float *restrict x, float *restrict y) {
    if (!p || !x || !y) return POET_ERR_ARG;
    if (!view_ok(p, p->n_dst, p->n_src)) return POET_ERR_SHAPE;
    memset(y, 0, (size_t)p->n_dst * sizeof(float));
    uint32_t idx[POET_MAX_RANK] = {0};
    size_t off = p->base;
    for (size_t i = 0; i < p->n_src; i++) {
        y[off] += p->scale * x[i];
        step(p, idx, &off);
    }
    return POET_OK;
}

poet_status poet_concat_f32(const poet_concat_params *p, const float *restrict x0, const float *restrict x1,
                            const float *restrict x2, const float *restrict x3, float *restrict y) {
    const float *xs[4] = {x0, x1, x2, x3};
    if (!p || !y || p->n_in < 1 || p->n_in > 4) return POET_ERR_ARG;
    size_t total = 0;
    for (uint32_t k = 0; k < p->n_in; k++) {
        if (!xs[k]) return POET_ERR_ARG;
        total += p->part[k];
    }
    for (uint32_t o = 0; o < p->outer; o++) {
        float *dst = y + (size_t)o * total;
        for (uint32_t k = 0; k < p->n_in; k++) {
            memcpy(dst, xs[k] + (size_t)o * p->part[k], (size_t)p->part[k] * sizeof(float));
            dst += p->part[k];
        }
    }
    return POET_OK;
}

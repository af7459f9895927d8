/* Linear layer kernels. The reference versions (poet_linear_*_ref_f32: plain loops, float accumulation) define
 * the results; the dispatched ones (poet_linear_*_f32) compute the same sums 4x4 outputs at a time, keeping the
 * 16 accumulators in registers and loading 8 values per 16 multiply-accumulates, which takes the Cortex-M4F
 * from about 9 to under 2 instructions per MAC (benchmarks/m4_kernel_instructions.py); edges that do not fill
 * a 4x4 block take the reference loops. tests/c/test_kernels_ops.py checks each against its reference. */
#include "poet/kernels.h"
#include "poet/tile.h"

/* W' = trans_w ? W^T : W, a [k, n] view of the weight. */
static inline float wt(const poet_linear_params *p, const float *w, uint32_t kk, uint32_t j) {
    return p->trans_w ? w[(size_t)j * p->k + kk] : w[(size_t)kk * p->n + j];
}

poet_status poet_linear_fwd_ref_f32(const poet_linear_params *p, const float *restrict x, const float *restrict w,
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

poet_status poet_linear_dx_ref_f32(const poet_linear_params *p, const float *restrict dy, const float *restrict w,
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

poet_status poet_linear_dw_ref_f32(const poet_linear_params *p, const float *restrict dy, const float *restrict x,
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

/* ---- 4x4 register-blocked versions -------------------------------------------------------------------------
 * A block computes y[r][s] = alpha * sum over t < len of a_r(t) b_s(t) (+ beta * bias[s]) for a 4x4 tile of the
 * output. Operands come in two layouts: four "streams" (row r at p + r * stride, contiguous in t) or a "quartet"
 * (the four values of step t at p + t * step, contiguous in r). The tile is stored row-major (y[r * ld + s]) or,
 * for a transposed weight gradient, column-major (y[s * ld + r]). Accumulators start from the first products.
 * (Unrolling the loop twice is slower on the M4: GCC then spills accumulators and drops the post-increment
 * loads; one step per iteration is 8 loads, 16 FMAs and 2 loop instructions.) */
typedef struct {
    float *y;
    size_t ld;
    int colmajor;
    float alpha;
    const float *bias; /* per column s, or NULL */
    float beta;
} tile_out;

#define STORE16(o)                                                                                            \
    do {                                                                                                      \
        store_row(o, 0, c00, c01, c02, c03);                                                                  \
        store_row(o, 1, c10, c11, c12, c13);                                                                  \
        store_row(o, 2, c20, c21, c22, c23);                                                                  \
        store_row(o, 3, c30, c31, c32, c33);                                                                  \
    } while (0)

static inline void store_row(const tile_out *o, uint32_t r, float v0, float v1, float v2, float v3) {
    const float a = o->alpha;
    float e0 = 0.0f, e1 = 0.0f, e2 = 0.0f, e3 = 0.0f;
    if (o->bias) {
        e0 = o->beta * o->bias[0];
        e1 = o->beta * o->bias[1];
        e2 = o->beta * o->bias[2];
        e3 = o->beta * o->bias[3];
    }
    if (o->colmajor) {
        float *y = o->y + r;
        y[0] = a * v0 + e0;
        y[o->ld] = a * v1 + e1;
        y[2 * o->ld] = a * v2 + e2;
        y[3 * o->ld] = a * v3 + e3;
    } else {
        float *y = o->y + r * o->ld;
        y[0] = a * v0 + e0;
        y[1] = a * v1 + e1;
        y[2] = a * v2 + e2;
        y[3] = a * v3 + e3;
    }
}

/* a: streams; b: streams (len >= 1) */
static void tile_ss(const float *a, size_t as, const float *b, size_t bs, uint32_t len, const tile_out *o) {
    const float *a0 = a, *a1 = a + as, *a2 = a + 2 * as, *a3 = a + 3 * as;
    const float *b0 = b, *b1 = b + bs, *b2 = b + 2 * bs, *b3 = b + 3 * bs;
    const float *const end = a0 + len;
    POET_MUL16(a0[0], a1[0], a2[0], a3[0], b0[0], b1[0], b2[0], b3[0]);
    a0++, a1++, a2++, a3++, b0++, b1++, b2++, b3++;
    while (a0 != end) {
        const float x0 = *a0++, x1 = *a1++, x2 = *a2++, x3 = *a3++;
        const float y0 = *b0++, y1 = *b1++, y2 = *b2++, y3 = *b3++;
        POET_FMA16(x0, x1, x2, x3, y0, y1, y2, y3);
    }
    STORE16(o);
}

/* a: streams; b: quartet (len >= 1) */
static void tile_sq(const float *a, size_t as, const float *b, size_t bstep, uint32_t len, const tile_out *o) {
    const float *a0 = a, *a1 = a + as, *a2 = a + 2 * as, *a3 = a + 3 * as;
    const float *const end = a0 + len;
    POET_MUL16(a0[0], a1[0], a2[0], a3[0], b[0], b[1], b[2], b[3]);
    a0++, a1++, a2++, a3++;
    for (b += bstep; a0 != end; b += bstep) {
        const float x0 = *a0++, x1 = *a1++, x2 = *a2++, x3 = *a3++;
        POET_FMA16(x0, x1, x2, x3, b[0], b[1], b[2], b[3]);
    }
    STORE16(o);
}

/* a: quartet; b: quartet (len >= 1) */
static void tile_qq(const float *a, size_t astep, const float *b, size_t bstep, uint32_t len, const tile_out *o) {
    const float *const end = a + (size_t)len * astep;
    POET_MUL16(a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]);
    for (a += astep, b += bstep; a != end; a += astep, b += bstep)
        POET_FMA16(a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]);
    STORE16(o);
}

/* The reference loops on a sub-block of rows [i0, i1) x columns [j0, j1) of y = alpha x W' + beta b. */
static void fwd_edge(const poet_linear_params *p, const float *x, const float *w, const float *b, float *y,
                     uint32_t i0, uint32_t i1, uint32_t j0, uint32_t j1) {
    for (uint32_t i = i0; i < i1; i++) {
        for (uint32_t j = j0; j < j1; j++) {
            float acc = 0.0f;
            for (uint32_t kk = 0; kk < p->k; kk++) acc += x[(size_t)i * p->k + kk] * wt(p, w, kk, j);
            y[(size_t)i * p->n + j] = p->alpha * acc + (b ? p->beta * b[j] : 0.0f);
        }
    }
}

poet_status poet_linear_fwd_f32(const poet_linear_params *p, const float *restrict x, const float *restrict w,
                                const float *restrict b, float *restrict y) {
    if (!p || !x || !w || !y) return POET_ERR_ARG;
    if (p->k == 0) return poet_linear_fwd_ref_f32(p, x, w, b, y);
    const uint32_t m4 = p->m & ~3u, n4 = p->n & ~3u;
    for (uint32_t i = 0; i < m4; i += 4) {
        for (uint32_t j = 0; j < n4; j += 4) {
            tile_out o = {y + (size_t)i * p->n + j, p->n, 0, p->alpha, b ? b + j : NULL, p->beta};
            if (p->trans_w) tile_ss(x + (size_t)i * p->k, p->k, w + (size_t)j * p->k, p->k, p->k, &o);
            else tile_sq(x + (size_t)i * p->k, p->k, w + j, p->n, p->k, &o);
        }
        fwd_edge(p, x, w, b, y, i, i + 4, n4, p->n);
    }
    fwd_edge(p, x, w, b, y, m4, p->m, 0, p->n);
    return POET_OK;
}

static void dx_edge(const poet_linear_params *p, const float *dy, const float *w, float *dx, uint32_t i0,
                    uint32_t i1, uint32_t k0, uint32_t k1) {
    for (uint32_t i = i0; i < i1; i++) {
        for (uint32_t kk = k0; kk < k1; kk++) {
            float acc = 0.0f;
            for (uint32_t j = 0; j < p->n; j++) acc += dy[(size_t)i * p->n + j] * wt(p, w, kk, j);
            dx[(size_t)i * p->k + kk] = p->alpha * acc;
        }
    }
}

poet_status poet_linear_dx_f32(const poet_linear_params *p, const float *restrict dy, const float *restrict w,
                               float *restrict dx) {
    if (!p || !dy || !w || !dx) return POET_ERR_ARG;
    if (p->n == 0) return poet_linear_dx_ref_f32(p, dy, w, dx);
    const uint32_t m4 = p->m & ~3u, k4 = p->k & ~3u;
    for (uint32_t i = 0; i < m4; i += 4) {
        for (uint32_t kk = 0; kk < k4; kk += 4) {
            /* dx[i][kk] = sum_j dy[i][j] W'(kk, j): W' = W^T reads W[j][kk..kk+3] (a quartet per j) */
            tile_out o = {dx + (size_t)i * p->k + kk, p->k, 0, p->alpha, NULL, 0.0f};
            if (p->trans_w) tile_sq(dy + (size_t)i * p->n, p->n, w + kk, p->k, p->n, &o);
            else tile_ss(dy + (size_t)i * p->n, p->n, w + (size_t)kk * p->n, p->n, p->n, &o);
        }
        dx_edge(p, dy, w, dx, i, i + 4, k4, p->k);
    }
    dx_edge(p, dy, w, dx, m4, p->m, 0, p->k);
    return POET_OK;
}

static void dw_edge(const poet_linear_params *p, const float *dy, const float *x, float *dw, uint32_t k0,
                    uint32_t k1, uint32_t j0, uint32_t j1) {
    for (uint32_t kk = k0; kk < k1; kk++) {
        for (uint32_t j = j0; j < j1; j++) {
            float acc = 0.0f;
            for (uint32_t i = 0; i < p->m; i++) acc += dy[(size_t)i * p->n + j] * x[(size_t)i * p->k + kk];
            size_t at = p->trans_w ? (size_t)j * p->k + kk : (size_t)kk * p->n + j;
            dw[at] = p->alpha * acc;
        }
    }
}

poet_status poet_linear_dw_f32(const poet_linear_params *p, const float *restrict dy, const float *restrict x,
                               float *restrict dw) {
    if (!p || !dy || !x || !dw) return POET_ERR_ARG;
    if (p->m == 0) return poet_linear_dw_ref_f32(p, dy, x, dw);
    const uint32_t k4 = p->k & ~3u, n4 = p->n & ~3u;
    for (uint32_t kk = 0; kk < k4; kk += 4) {
        for (uint32_t j = 0; j < n4; j += 4) {
            /* dW'(kk, j) = sum_i x[i][kk] dy[i][j]: both quartets, one step per row i; W' = W^T (trans_w)
             * stores the tile transposed */
            tile_out o = p->trans_w ? (tile_out){dw + (size_t)j * p->k + kk, p->k, 1, p->alpha, NULL, 0.0f}
                                    : (tile_out){dw + (size_t)kk * p->n + j, p->n, 0, p->alpha, NULL, 0.0f};
            tile_qq(x + kk, p->k, dy + j, p->n, p->m, &o);
        }
        dw_edge(p, dy, x, dw, kk, kk + 4, n4, p->n);
    }
    dw_edge(p, dy, x, dw, k4, p->k, 0, p->n);
    return POET_OK;
}

/* Optimizer steps, in place. */
#include "poet/kernels.h"

poet_status poet_sgd_f32(const poet_sgd_params *p, float lr, const float *restrict g, float *restrict w) {
    if (!p || !g || !w) return POET_ERR_ARG;
    for (uint32_t i = 0; i < p->n; i++) w[i] -= lr * g[i];
    return POET_OK;
}

/* Fused gradient + update, W[r][c] -= lr * alpha * sum_i a[i, r] b[i, c]: for trans_w (W is [n, k]) a = dy
 * and b = x, otherwise (W is [k, n]) a = x and b = dy. Two paths with the same arithmetic (each gradient
 * element is the sum over i in order, then times alpha, then w -= lr * g), so they give bit-identical weights:
 *  - with a sink (gradient capture): chunks of up to POET_SGD_CHUNK gradients of a row of W in a local array,
 *    in W's memory order, each handed to the sink before it is applied;
 *  - without: 4x4 register blocks of W (16 accumulators, 4 + 4 loads per 16 multiply-adds). */
static void dw_sgd_chunked(uint32_t m, uint32_t rows, uint32_t cols, const float *restrict a, size_t lda,
                           const float *restrict b, size_t ldb, float *restrict w, float alpha, float lr,
                           poet_grad_sink sink, void *ctx) {
    float g[POET_SGD_CHUNK];
    for (uint32_t r = 0; r < rows; r++) {
        for (uint32_t c0 = 0; c0 < cols; c0 += POET_SGD_CHUNK) {
            uint32_t c = cols - c0 < POET_SGD_CHUNK ? cols - c0 : POET_SGD_CHUNK;
            for (uint32_t q = 0; q < c; q++) g[q] = 0.0f;
            for (uint32_t i = 0; i < m; i++) {
                const float av = a[(size_t)i * lda + r];
                const float *br = b + (size_t)i * ldb + c0;
                for (uint32_t q = 0; q < c; q++) g[q] += av * br[q];
            }
            float *wr = w + (size_t)r * cols + c0;
            for (uint32_t q = 0; q < c; q++) g[q] *= alpha;
            sink(ctx, r * cols + c0, g, c);
            for (uint32_t q = 0; q < c; q++) wr[q] -= lr * g[q];
        }
    }
}

/* One gradient element, plainly: alpha * sum_i a[i * sa] * b[i * sb]. */
static inline float dot_strided(const float *a, size_t sa, const float *b, size_t sb, uint32_t m, float alpha) {
    float acc = 0.0f;
    for (uint32_t i = 0; i < m; i++) acc += a[(size_t)i * sa] * b[(size_t)i * sb];
    return acc * alpha;
}

static void dw_sgd_blocked(uint32_t m, uint32_t rows, uint32_t cols, const float *restrict a, size_t lda,
                           const float *restrict b, size_t ldb, float *restrict w, float alpha, float lr) {
    uint32_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        uint32_t c = 0;
        for (; c + 4 <= cols; c += 4) {
            float s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
            float s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
            const float *pa = a + r, *pb = b + c;
            for (uint32_t i = 0; i < m; i++, pa += lda, pb += ldb) {
                const float a0 = pa[0], a1 = pa[1], a2 = pa[2], a3 = pa[3];
                const float b0 = pb[0], b1 = pb[1], b2 = pb[2], b3 = pb[3];
                s00 += a0 * b0; s01 += a0 * b1; s02 += a0 * b2; s03 += a0 * b3;
                s10 += a1 * b0; s11 += a1 * b1; s12 += a1 * b2; s13 += a1 * b3;
                s20 += a2 * b0; s21 += a2 * b1; s22 += a2 * b2; s23 += a2 * b3;
                s30 += a3 * b0; s31 += a3 * b1; s32 += a3 * b2; s33 += a3 * b3;
            }
            float *w0 = w + (size_t)r * cols + c, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
            w0[0] -= lr * (s00 * alpha); w0[1] -= lr * (s01 * alpha); w0[2] -= lr * (s02 * alpha); w0[3] -= lr * (s03 * alpha);
            w1[0] -= lr * (s10 * alpha); w1[1] -= lr * (s11 * alpha); w1[2] -= lr * (s12 * alpha); w1[3] -= lr * (s13 * alpha);
            w2[0] -= lr * (s20 * alpha); w2[1] -= lr * (s21 * alpha); w2[2] -= lr * (s22 * alpha); w2[3] -= lr * (s23 * alpha);
            w3[0] -= lr * (s30 * alpha); w3[1] -= lr * (s31 * alpha); w3[2] -= lr * (s32 * alpha); w3[3] -= lr * (s33 * alpha);
        }
        for (; c < cols; c++)
            for (uint32_t q = 0; q < 4; q++)
                w[(size_t)(r + q) * cols + c] -= lr * dot_strided(a + r + q, lda, b + c, ldb, m, alpha);
    }
    for (; r < rows; r++)
        for (uint32_t c = 0; c < cols; c++) w[(size_t)r * cols + c] -= lr * dot_strided(a + r, lda, b + c, ldb, m, alpha);
}

poet_status poet_linear_dw_sgd_f32(const poet_linear_params *p, float lr, const float *restrict dy,
                                   const float *restrict x, float *restrict w, poet_grad_sink sink, void *ctx) {
    if (!p || !dy || !x || !w) return POET_ERR_ARG;
    const uint32_t rows = p->trans_w ? p->n : p->k, cols = p->trans_w ? p->k : p->n;
    const float *a = p->trans_w ? dy : x, *b = p->trans_w ? x : dy;
    const size_t lda = p->trans_w ? p->n : p->k, ldb = p->trans_w ? p->k : p->n;
    if (sink)
        dw_sgd_chunked(p->m, rows, cols, a, lda, b, ldb, w, p->alpha, lr, sink, ctx);
    else
        dw_sgd_blocked(p->m, rows, cols, a, lda, b, ldb, w, p->alpha, lr);
    return POET_OK;
}

poet_status poet_bias_grad_sgd_f32(const poet_linear_params *p, float lr, const float *restrict dy,
                                   float *restrict b, poet_grad_sink sink, void *ctx) {
    if (!p || !dy || !b) return POET_ERR_ARG;
    float g[POET_SGD_CHUNK];
    for (uint32_t j0 = 0; j0 < p->n; j0 += POET_SGD_CHUNK) {
        uint32_t c = p->n - j0 < POET_SGD_CHUNK ? p->n - j0 : POET_SGD_CHUNK;
        for (uint32_t q = 0; q < c; q++) g[q] = 0.0f;
        for (uint32_t i = 0; i < p->m; i++) {
            const float *dr = dy + (size_t)i * p->n + j0;
            for (uint32_t q = 0; q < c; q++) g[q] += dr[q];
        }
        for (uint32_t q = 0; q < c; q++) g[q] *= p->beta;
        if (sink) sink(ctx, j0, g, c);
        for (uint32_t q = 0; q < c; q++) b[j0 + q] -= lr * g[q];
    }
    return POET_OK;
}

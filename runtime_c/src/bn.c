/* Batch normalisation kernels, reference versions. x is [n, c, hw]; statistics are [2, c]: mean, biased variance.
 * The train program computes them from the batch; inference (training flag 0) takes the running ones.
 * Per-channel sums are compensated (Kahan): the input gradient subtracts two such sums from m dy, and their
 * float32 rounding, amplified by that cancellation and by the layers below, costs deep networks (MobileNetV2)
 * about 1e-2 relative gradient error with plain sums; compensated, about 3e-5, PyTorch's own float32 level. */
#include <math.h>

#include "poet/kernels.h"
#include "poet/step.h"

typedef struct {
    float sum, carry;
} ksum;

static void kadd(ksum *k, float v) {
    const float y = v - k->carry;
    const float t = k->sum + y;
    k->carry = (t - k->sum) - y;
    k->sum = t;
}

#define AT(p, x, n, ch, i) ((x)[((size_t)(n) * (p)->c + (ch)) * (p)->hw + (i)])

poet_status poet_bn_stats_f32(const poet_bn_params *p, const float *restrict x, const float *restrict rmean,
                              const float *restrict rvar, const float *restrict flag, float *restrict stats) {
    if (!p || !x || !rmean || !rvar || !flag || !stats || p->n * p->hw == 0) return POET_ERR_ARG;
    if (*flag == 0.0f) {
        for (uint32_t ch = 0; ch < p->c; ch++) {
            stats[ch] = rmean[ch];
            stats[p->c + ch] = rvar[ch];
        }
        return POET_OK;
    }
    const float inv_m = 1.0f / (float)(p->n * p->hw);
    for (uint32_t ch = 0; ch < p->c; ch++) {
        ksum s = {0.0f, 0.0f}, ss = {0.0f, 0.0f};
        for (uint32_t n = 0; n < p->n; n++)
            for (uint32_t i = 0; i < p->hw; i++) kadd(&s, AT(p, x, n, ch, i));
        const float mean = s.sum * inv_m;
        for (uint32_t n = 0; n < p->n; n++) {
            for (uint32_t i = 0; i < p->hw; i++) {
                const float d = AT(p, x, n, ch, i) - mean;
                kadd(&ss, d * d);
            }
        }
        stats[ch] = mean;
        stats[p->c + ch] = ss.sum * inv_m;
    }
    return POET_OK;
}

poet_status poet_bn_apply_f32(const poet_bn_params *p, const float *restrict x, const float *restrict stats,
                              const float *restrict gamma, const float *restrict beta, float *restrict y) {
    if (!p || !x || !stats || !gamma || !beta || !y) return POET_ERR_ARG;
    for (uint32_t ch = 0; ch < p->c; ch++) {
        const float mean = stats[ch], r = 1.0f / sqrtf(stats[p->c + ch] + p->eps);
        for (uint32_t n = 0; n < p->n; n++)
            for (uint32_t i = 0; i < p->hw; i++)
                AT(p, y, n, ch, i) = (AT(p, x, n, ch, i) - mean) * r * gamma[ch] + beta[ch];
    }
    return POET_OK;
}

poet_status poet_bn_dx_f32(const poet_bn_params *p, const float *restrict dy, const float *restrict x,
                           const float *restrict stats, const float *restrict gamma, float *restrict dx) {
    if (!p || !dy || !x || !stats || !gamma || !dx || p->n * p->hw == 0) return POET_ERR_ARG;
    const float m = (float)(p->n * p->hw);
    for (uint32_t ch = 0; ch < p->c; ch++) {
        const float mean = stats[ch], r = 1.0f / sqrtf(stats[p->c + ch] + p->eps);
        ksum s1 = {0.0f, 0.0f}, s2 = {0.0f, 0.0f};
        for (uint32_t n = 0; n < p->n; n++) {
            for (uint32_t i = 0; i < p->hw; i++) {
                const float d = AT(p, dy, n, ch, i);
                kadd(&s1, d);
                kadd(&s2, d * (AT(p, x, n, ch, i) - mean) * r);
            }
        }
        const float k = gamma[ch] * r / m;
        for (uint32_t n = 0; n < p->n; n++) {
            for (uint32_t i = 0; i < p->hw; i++) {
                const float xh = (AT(p, x, n, ch, i) - mean) * r;
                AT(p, dx, n, ch, i) = k * (m * AT(p, dy, n, ch, i) - s1.sum - xh * s2.sum);
            }
        }
    }
    return POET_OK;
}

poet_status poet_bn_dgamma_f32(const poet_bn_params *p, const float *restrict dy, const float *restrict x,
                               const float *restrict stats, float *restrict dgamma) {
    if (!p || !dy || !x || !stats || !dgamma) return POET_ERR_ARG;
    for (uint32_t ch = 0; ch < p->c; ch++) {
        const float mean = stats[ch], r = 1.0f / sqrtf(stats[p->c + ch] + p->eps);
        ksum s = {0.0f, 0.0f};
        for (uint32_t n = 0; n < p->n; n++)
            for (uint32_t i = 0; i < p->hw; i++) kadd(&s, AT(p, dy, n, ch, i) * (AT(p, x, n, ch, i) - mean) * r);
        dgamma[ch] = s.sum;
    }
    return POET_OK;
}

poet_status poet_bn_dbeta_f32(const poet_bn_params *p, const float *restrict dy, float *restrict dbeta) {
    if (!p || !dy || !dbeta) return POET_ERR_ARG;
    for (uint32_t ch = 0; ch < p->c; ch++) {
        ksum s = {0.0f, 0.0f};
        for (uint32_t n = 0; n < p->n; n++)
            for (uint32_t i = 0; i < p->hw; i++) kadd(&s, AT(p, dy, n, ch, i));
        dbeta[ch] = s.sum;
    }
    return POET_OK;
}

poet_status poet_bn_running_f32(const poet_bn_params *p, const float *restrict stats, float *restrict state) {
    if (!p || !stats || !state || p->which > 1) return POET_ERR_ARG;
    const float *batch = stats + (size_t)p->which * p->c;
    const float k = p->which ? p->unbias : 1.0f;
    for (uint32_t ch = 0; ch < p->c; ch++)
        state[ch] = (1.0f - p->momentum) * state[ch] + p->momentum * (batch[ch] * k);
    note_range(state, p->c); /* finiteness check: step.h */
    return POET_OK;
}

/* Frozen (running statistics in training too): BN_APPLY's arithmetic with the running mean and variance, so the
 * train and infer programs compute what a BN_STATS + BN_APPLY pair computes in inference. */
poet_status poet_bn_frozen_f32(const poet_bn_params *p, const float *restrict x, const float *restrict rmean,
                               const float *restrict rvar, const float *restrict gamma, const float *restrict beta,
                               float *restrict y) {
    if (!p || !x || !rmean || !rvar || !gamma || !beta || !y) return POET_ERR_ARG;
    for (uint32_t ch = 0; ch < p->c; ch++) {
        const float mean = rmean[ch], r = 1.0f / sqrtf(rvar[ch] + p->eps);
        for (uint32_t n = 0; n < p->n; n++)
            for (uint32_t i = 0; i < p->hw; i++)
                AT(p, y, n, ch, i) = (AT(p, x, n, ch, i) - mean) * r * gamma[ch] + beta[ch];
    }
    return POET_OK;
}

/* Statistics that are constants: the input gradient is dy times the per-channel scale gamma / sqrt(var + eps). */
poet_status poet_bn_frozen_dx_f32(const poet_bn_params *p, const float *restrict dy, const float *restrict rvar,
                                  const float *restrict gamma, float *restrict dx) {
    if (!p || !dy || !rvar || !gamma || !dx) return POET_ERR_ARG;
    for (uint32_t ch = 0; ch < p->c; ch++) {
        const float k = gamma[ch] * (1.0f / sqrtf(rvar[ch] + p->eps));
        for (uint32_t n = 0; n < p->n; n++)
            for (uint32_t i = 0; i < p->hw; i++) AT(p, dx, n, ch, i) = k * AT(p, dy, n, ch, i);
    }
    return POET_OK;
}

/* 2-D convolution kernels, reference versions: NCHW activations, OIHW weights, zero padding, groups, dilation 1.
 * Plain loops over every output (forward, weight gradient) or every input contribution (input gradient). */
#include <string.h>

#include "poet/kernels.h"

static int conv_ok(const poet_conv_params *p) {
    return p->groups > 0 && p->c_in % p->groups == 0 && p->c_out % p->groups == 0 && p->sh > 0 && p->sw > 0 &&
           p->kh > 0 && p->kw > 0;
}

/* The input row (or column) a kernel tap reads for an output row, or -1 in the padding. */
static long tap(uint32_t o, uint32_t s, uint32_t k, uint32_t pad, uint32_t size) {
    long i = (long)o * (long)s + (long)k - (long)pad;
    return (i < 0 || i >= (long)size) ? -1 : i;
}

poet_status poet_conv2d_fwd_f32(const poet_conv_params *p, const float *restrict x, const float *restrict w,
                                const float *restrict b, float *restrict y) {
    if (!p || !x || !w || !y || !conv_ok(p)) return POET_ERR_ARG;
    const uint32_t cig = p->c_in / p->groups, cog = p->c_out / p->groups;
    for (uint32_t n = 0; n < p->n; n++) {
        for (uint32_t oc = 0; oc < p->c_out; oc++) {
            const uint32_t c0 = (oc / cog) * cig;
            for (uint32_t oy = 0; oy < p->oh; oy++) {
                for (uint32_t ox = 0; ox < p->ow; ox++) {
                    float acc = 0.0f;
                    for (uint32_t ic = 0; ic < cig; ic++) {
                        const float *xp = x + ((size_t)n * p->c_in + c0 + ic) * p->h * p->w;
                        const float *wp = w + ((size_t)oc * cig + ic) * p->kh * p->kw;
                        for (uint32_t ky = 0; ky < p->kh; ky++) {
                            long iy = tap(oy, p->sh, ky, p->ph, p->h);
                            if (iy < 0) continue;
                            for (uint32_t kx = 0; kx < p->kw; kx++) {
                                long ix = tap(ox, p->sw, kx, p->pw, p->w);
                                if (ix < 0) continue;
                                acc += xp[(size_t)iy * p->w + (size_t)ix] * wp[ky * p->kw + kx];
                            }
                        }
                    }
                    y[(((size_t)n * p->c_out + oc) * p->oh + oy) * p->ow + ox] = acc + (b ? b[oc] : 0.0f);
                }
            }
        }
    }
    return POET_OK;
}

poet_status poet_conv2d_dx_f32(const poet_conv_params *p, const float *restrict dy, const float *restrict w,
                               float *restrict dx) {
    if (!p || !dy || !w || !dx || !conv_ok(p)) return POET_ERR_ARG;
    const uint32_t cig = p->c_in / p->groups, cog = p->c_out / p->groups;
    memset(dx, 0, (size_t)p->n * p->c_in * p->h * p->w * sizeof(float));
    for (uint32_t n = 0; n < p->n; n++) {
        for (uint32_t oc = 0; oc < p->c_out; oc++) {
            const uint32_t c0 = (oc / cog) * cig;
            for (uint32_t oy = 0; oy < p->oh; oy++) {
                for (uint32_t ox = 0; ox < p->ow; ox++) {
                    const float d = dy[(((size_t)n * p->c_out + oc) * p->oh + oy) * p->ow + ox];
                    for (uint32_t ic = 0; ic < cig; ic++) {
                        float *xp = dx + ((size_t)n * p->c_in + c0 + ic) * p->h * p->w;
                        const float *wp = w + ((size_t)oc * cig + ic) * p->kh * p->kw;
                        for (uint32_t ky = 0; ky < p->kh; ky++) {
                            long iy = tap(oy, p->sh, ky, p->ph, p->h);
                            if (iy < 0) continue;
                            for (uint32_t kx = 0; kx < p->kw; kx++) {
                                long ix = tap(ox, p->sw, kx, p->pw, p->w);
                                if (ix < 0) continue;
                                xp[(size_t)iy * p->w + (size_t)ix] += d * wp[ky * p->kw + kx];
                            }
                        }
                    }
                }
            }
        }
    }
    return POET_OK;
}

poet_status poet_conv2d_dw_f32(const poet_conv_params *p, const float *restrict dy, const float *restrict x,
                               float *restrict dw) {
    if (!p || !dy || !x || !dw || !conv_ok(p)) return POET_ERR_ARG;
    const uint32_t cig = p->c_in / p->groups, cog = p->c_out / p->groups;
    for (uint32_t oc = 0; oc < p->c_out; oc++) {
        const uint32_t c0 = (oc / cog) * cig;
        for (uint32_t ic = 0; ic < cig; ic++) {
            for (uint32_t ky = 0; ky < p->kh; ky++) {
                for (uint32_t kx = 0; kx < p->kw; kx++) {
                    float acc = 0.0f;
                    for (uint32_t n = 0; n < p->n; n++) {
                        const float *xp = x + ((size_t)n * p->c_in + c0 + ic) * p->h * p->w;
                        const float *dp = dy + ((size_t)n * p->c_out + oc) * p->oh * p->ow;
                        for (uint32_t oy = 0; oy < p->oh; oy++) {
                            long iy = tap(oy, p->sh, ky, p->ph, p->h);
                            if (iy < 0) continue;
                            for (uint32_t ox = 0; ox < p->ow; ox++) {
                                long ix = tap(ox, p->sw, kx, p->pw, p->w);
                                if (ix < 0) continue;
                                acc += dp[(size_t)oy * p->ow + ox] * xp[(size_t)iy * p->w + (size_t)ix];
                            }
                        }
                    }
                    dw[(((size_t)oc * cig + ic) * p->kh + ky) * p->kw + kx] = acc;
                }
            }
        }
    }
    return POET_OK;
}

poet_status poet_conv2d_db_f32(const poet_conv_params *p, const float *restrict dy, float *restrict db) {
    if (!p || !dy || !db) return POET_ERR_ARG;
    const size_t plane = (size_t)p->oh * p->ow;
    for (uint32_t oc = 0; oc < p->c_out; oc++) {
        float acc = 0.0f;
        for (uint32_t n = 0; n < p->n; n++) {
            const float *dp = dy + ((size_t)n * p->c_out + oc) * plane;
            for (size_t i = 0; i < plane; i++) acc += dp[i];
        }
        db[oc] = acc;
    }
    return POET_OK;
}

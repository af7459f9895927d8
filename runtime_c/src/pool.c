/* 2-D pooling kernels, reference versions: nc planes of [h, w], windows [kh, kw] with stride and padding.
 * Max pooling's gradient goes to the first maximum of each window in row-major order (as PyTorch's), found
 * again from x, so no index tensor is kept. */
#include <string.h>

#include "poet/kernels.h"

static int pool_ok(const poet_pool_params *p) { return p->kh > 0 && p->kw > 0 && p->sh > 0 && p->sw > 0; }

static long tap(uint32_t o, uint32_t s, uint32_t k, uint32_t pad, uint32_t size) {
    long i = (long)o * (long)s + (long)k - (long)pad;
    return (i < 0 || i >= (long)size) ? -1 : i;
}

/* Index (in the plane) of the first maximum of the window at (oy, ox), or -1 if it holds no input. */
static long window_argmax(const poet_pool_params *p, const float *plane, uint32_t oy, uint32_t ox) {
    long best = -1;
    for (uint32_t ky = 0; ky < p->kh; ky++) {
        long iy = tap(oy, p->sh, ky, p->ph, p->h);
        if (iy < 0) continue;
        for (uint32_t kx = 0; kx < p->kw; kx++) {
            long ix = tap(ox, p->sw, kx, p->pw, p->w);
            if (ix < 0) continue;
            long i = iy * (long)p->w + ix;
            if (best < 0 || plane[i] > plane[best]) best = i;
        }
    }
    return best;
}

poet_status poet_maxpool_fwd_f32(const poet_pool_params *p, const float *restrict x, float *restrict y) {
    if (!p || !x || !y || !pool_ok(p)) return POET_ERR_ARG;
    for (uint32_t c = 0; c < p->nc; c++) {
        const float *plane = x + (size_t)c * p->h * p->w;
        for (uint32_t oy = 0; oy < p->oh; oy++) {
            for (uint32_t ox = 0; ox < p->ow; ox++) {
                long i = window_argmax(p, plane, oy, ox);
                if (i < 0) return POET_ERR_ARG;
                y[((size_t)c * p->oh + oy) * p->ow + ox] = plane[i];
            }
        }
    }
    return POET_OK;
}

poet_status poet_maxpool_bwd_f32(const poet_pool_params *p, const float *restrict x, const float *restrict dy,
                                 float *restrict dx) {
    if (!p || !x || !dy || !dx || !pool_ok(p)) return POET_ERR_ARG;
    memset(dx, 0, (size_t)p->nc * p->h * p->w * sizeof(float));
    for (uint32_t c = 0; c < p->nc; c++) {
        const float *plane = x + (size_t)c * p->h * p->w;
        for (uint32_t oy = 0; oy < p->oh; oy++) {
            for (uint32_t ox = 0; ox < p->ow; ox++) {
                long i = window_argmax(p, plane, oy, ox);
                if (i < 0) return POET_ERR_ARG;
                dx[(size_t)c * p->h * p->w + (size_t)i] += dy[((size_t)c * p->oh + oy) * p->ow + ox];
            }
        }
    }
    return POET_OK;
}

/* The divisor of the window at (oy, ox): its size, or the number of its elements inside the input. */
static float divisor(const poet_pool_params *p, uint32_t oy, uint32_t ox) {
    if (p->count_pad) return (float)(p->kh * p->kw);
    uint32_t n = 0;
    for (uint32_t ky = 0; ky < p->kh; ky++)
        for (uint32_t kx = 0; kx < p->kw; kx++)
            n += tap(oy, p->sh, ky, p->ph, p->h) >= 0 && tap(ox, p->sw, kx, p->pw, p->w) >= 0;
    return (float)n;
}

poet_status poet_avgpool_fwd_f32(const poet_pool_params *p, const float *restrict x, float *restrict y) {
    if (!p || !x || !y || !pool_ok(p)) return POET_ERR_ARG;
    for (uint32_t c = 0; c < p->nc; c++) {
        const float *plane = x + (size_t)c * p->h * p->w;
        for (uint32_t oy = 0; oy < p->oh; oy++) {
            for (uint32_t ox = 0; ox < p->ow; ox++) {
                float acc = 0.0f;
                for (uint32_t ky = 0; ky < p->kh; ky++) {
                    long iy = tap(oy, p->sh, ky, p->ph, p->h);
                    if (iy < 0) continue;
                    for (uint32_t kx = 0; kx < p->kw; kx++) {
                        long ix = tap(ox, p->sw, kx, p->pw, p->w);
                        if (ix >= 0) acc += plane[iy * (long)p->w + ix];
                    }
                }
                y[((size_t)c * p->oh + oy) * p->ow + ox] = acc / divisor(p, oy, ox);
            }
        }
    }
    return POET_OK;
}

poet_status poet_avgpool_bwd_f32(const poet_pool_params *p, const float *restrict dy, float *restrict dx) {
    if (!p || !dy || !dx || !pool_ok(p)) return POET_ERR_ARG;
    memset(dx, 0, (size_t)p->nc * p->h * p->w * sizeof(float));
    for (uint32_t c = 0; c < p->nc; c++) {
        float *plane = dx + (size_t)c * p->h * p->w;
        for (uint32_t oy = 0; oy < p->oh; oy++) {
            for (uint32_t ox = 0; ox < p->ow; ox++) {
                const float g = dy[((size_t)c * p->oh + oy) * p->ow + ox] / divisor(p, oy, ox);
                for (uint32_t ky = 0; ky < p->kh; ky++) {
                    long iy = tap(oy, p->sh, ky, p->ph, p->h);
                    if (iy < 0) continue;
                    for (uint32_t kx = 0; kx < p->kw; kx++) {
                        long ix = tap(ox, p->sw, kx, p->pw, p->w);
                        if (ix >= 0) plane[iy * (long)p->w + ix] += g;
                    }
                }
            }
        }
    }
    return POET_OK;
}

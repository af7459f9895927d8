/* 2-D convolution kernels: NCHW activations, OIHW weights, zero padding, groups, dilation 1.
 * The reference versions (poet_conv2d_*_ref_f32) are plain loops over every output (forward, weight gradient) or
 * every input contribution (input gradient). The dispatched versions compute the same sums tap by tap: for one
 * kernel tap (ky, kx) the outputs it reaches form a contiguous interval of each output row, so a 4x4 tile (four
 * channels by four positions) is a small matrix product over the other channel dimension with no bounds checks,
 * keeping 16 accumulators in registers (benchmarks/m4_kernel_instructions.py: about 15-60 instructions per MAC
 * down to about 2 on the Cortex-M4F). Channels that do not fill a tile of four take the reference loops, except
 * depthwise convolutions (one input channel per group), which go plane by plane with the kernel in registers
 * (plane_conv, dx_plane, dw_plane). The forward pass with 1 to 4 input channels per group (first layers) sums
 * every tap of a tile in registers instead (fwd_taps). The weight gradient fused with its optimizer step
 * (CONV2D_DW_SGD, CONV2D_DB_SGD) runs the weight gradient's loops and applies each finished value instead of
 * storing it (put()). tests/c/test_kernels_ops.py checks each against its reference. */
#include <string.h>

#include "poet/kernels.h"
#include "poet/step.h"
#include "poet/tile.h"

static int conv_ok(const poet_conv_params *p) {
    return p->groups > 0 && p->c_in % p->groups == 0 && p->c_out % p->groups == 0 && p->sh > 0 && p->sw > 0 &&
           p->kh > 0 && p->kw > 0;
}

/* The input row (or column) a kernel tap reads for an output row, or -1 in the padding. */
static long tap(uint32_t o, uint32_t s, uint32_t k, uint32_t pad, uint32_t size) {
    long i = (long)o * (long)s + (long)k - (long)pad;
    return (i < 0 || i >= (long)size) ? -1 : i;
}

poet_status poet_conv2d_fwd_ref_f32(const poet_conv_params *p, const float *restrict x, const float *restrict w,
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

poet_status poet_conv2d_dx_ref_f32(const poet_conv_params *p, const float *restrict dy, const float *restrict w,
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

poet_status poet_conv2d_dw_ref_f32(const poet_conv_params *p, const float *restrict dy, const float *restrict x,
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

/* The bias gradient of output channel oc: dy summed over images and positions (CONV2D_DB and CONV2D_DB_SGD). */
static float db_one(const poet_conv_params *p, const float *dy, uint32_t oc) {
    const size_t plane = (size_t)p->oh * p->ow;
    float acc = 0.0f;
    for (uint32_t n = 0; n < p->n; n++) {
        const float *dp = dy + ((size_t)n * p->c_out + oc) * plane;
        for (size_t i = 0; i < plane; i++) acc += dp[i];
    }
    return acc;
}

poet_status poet_conv2d_db_f32(const poet_conv_params *p, const float *restrict dy, float *restrict db) {
    if (!p || !dy || !db) return POET_ERR_ARG;
    for (uint32_t oc = 0; oc < p->c_out; oc++) db[oc] = db_one(p, dy, oc);
    return POET_OK;
}

/* ---- tiled versions --------------------------------------------------------------------------------------- */
/* The outputs o in [0, count) that tap k reaches: o * s + k - pad inside [0, size). */
static void tap_range(uint32_t k, uint32_t s, uint32_t pad, uint32_t size, uint32_t count, uint32_t *o0, uint32_t *o1) {
    long lo = (long)pad - (long)k;                        /* o * s >= lo */
    long hi = (long)size - 1 + (long)pad - (long)k;      /* o * s <= hi */
    long a = lo <= 0 ? 0 : (lo + (long)s - 1) / (long)s;
    long b = hi < 0 ? -1 : hi / (long)s;
    if (b >= (long)count) b = (long)count - 1;
    *o0 = (uint32_t)a;
    *o1 = b < a ? (uint32_t)a : (uint32_t)(b + 1);
}

/* Add a 4x4 tile to y: row r at y + r * rs, position q at + q * qs. */
#define CV_ADD16(y, rs, qs)                                                                                   \
    do {                                                                                                      \
        float *y0_ = (y), *y1_ = y0_ + (rs), *y2_ = y1_ + (rs), *y3_ = y2_ + (rs);                            \
        y0_[0] += c00; y0_[qs] += c01; y0_[2 * (qs)] += c02; y0_[3 * (qs)] += c03;                           \
        y1_[0] += c10; y1_[qs] += c11; y1_[2 * (qs)] += c12; y1_[3 * (qs)] += c13;                           \
        y2_[0] += c20; y2_[qs] += c21; y2_[2 * (qs)] += c22; y2_[3 * (qs)] += c23;                           \
        y3_[0] += c30; y3_[qs] += c31; y3_[2 * (qs)] += c32; y3_[3 * (qs)] += c33;                           \
    } while (0)

/* y[r][q] += sum over t < len of w_r(t) x_q(t), w_r(t) = w[r * wr + t * wt], x_q(t) = x[q * xs + t * xt].
 * Four weight streams and a quartet of inputs xs apart (xs is a constant where inlined: 1 or 2). */
static inline void tile_wx(const float *w, size_t wr, size_t wt, const float *x, uint32_t xs, size_t xt,
                           uint32_t len, float *y, size_t yr, uint32_t ys) {
    const float *w0 = w, *w1 = w + wr, *w2 = w + 2 * wr, *w3 = w + 3 * wr;
    POET_MUL16(w0[0], w1[0], w2[0], w3[0], x[0], x[xs], x[2 * xs], x[3 * xs]);
    for (uint32_t t = 1; t < len; t++) {
        w0 += wt, w1 += wt, w2 += wt, w3 += wt, x += xt;
        POET_FMA16(w0[0], w1[0], w2[0], w3[0], x[0], x[xs], x[2 * xs], x[3 * xs]);
    }
    CV_ADD16(y, yr, ys);
}

/* The same for a single position: y[r] += sum over t of w_r(t) x(t). */
static inline void col_wx(const float *w, size_t wr, size_t wt, const float *x, size_t xt, uint32_t len, float *y,
                          size_t yr) {
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    for (uint32_t t = 0; t < len; t++, w += wt, x += xt) {
        const float v = x[0];
        a0 += w[0] * v;
        a1 += w[wr] * v;
        a2 += w[2 * wr] * v;
        a3 += w[3 * wr] * v;
    }
    y[0] += a0;
    y[yr] += a1;
    y[2 * yr] += a2;
    y[3 * yr] += a3;
}

/* Four output channels oc0.. (input channels from c0) of image n, row oy, tap by tap: for each tap the positions
 * it reaches are an interval; four positions at a time sum over the input channels in registers (tile_wx), the
 * rest one at a time. y holds the bias. (Summing every tap in registers instead needs three nested loops whose
 * pointers GCC spills on the M4: slower.) */
static void fwd_rows(const poet_conv_params *p, const float *x, const float *w, float *y, uint32_t n,
                     uint32_t oc0, uint32_t c0, uint32_t oy) {
    const uint32_t cig = p->c_in / p->groups, khkw = p->kh * p->kw;
    const size_t plane_y = (size_t)p->oh * p->ow, plane_x = (size_t)p->h * p->w, wr = (size_t)cig * khkw;
    float *yrow = y + ((size_t)n * p->c_out + oc0) * plane_y + (size_t)oy * p->ow;
    const float *xn = x + ((size_t)n * p->c_in + c0) * plane_x;
    for (uint32_t ky = 0; ky < p->kh; ky++) {
        const long iy = (long)oy * p->sh + ky - p->ph;
        if (iy < 0 || iy >= (long)p->h) continue;
        for (uint32_t kx = 0; kx < p->kw; kx++) {
            uint32_t o0, o1;
            tap_range(kx, p->sw, p->pw, p->w, p->ow, &o0, &o1);
            const float *wt = w + (size_t)oc0 * wr + (size_t)ky * p->kw + kx;
            const float *xrow = xn + (size_t)iy * p->w + kx - p->pw; /* + ox * sw */
            uint32_t ox = o0;
            for (; ox + 4 <= o1; ox += 4) {
                const float *xp = xrow + (size_t)ox * p->sw;
                float *yp = yrow + ox;
                /* constant strides where they are common, so that loads use immediate offsets */
                if (khkw == 1 && p->sw == 1) tile_wx(wt, wr, 1, xp, 1, plane_x, cig, yp, plane_y, 1);
                else if (khkw == 1 && p->sw == 2) tile_wx(wt, wr, 1, xp, 2, plane_x, cig, yp, plane_y, 1);
                else if (p->sw == 1) tile_wx(wt, wr, khkw, xp, 1, plane_x, cig, yp, plane_y, 1);
                else if (p->sw == 2) tile_wx(wt, wr, khkw, xp, 2, plane_x, cig, yp, plane_y, 1);
                else tile_wx(wt, wr, khkw, xp, p->sw, plane_x, cig, yp, plane_y, 1);
            }
            for (; ox < o1; ox++) col_wx(wt, wr, khkw, xrow + (size_t)ox * p->sw, plane_x, cig, yrow + ox, plane_y);
        }
    }
}

/* ---- one plane at a time (depthwise): the taps in registers, the padding outside the inner loops -------------
 * A depthwise convolution (one input channel per group) has no channel dimension to tile, so each output plane
 * is a 2-D correlation of one input plane with one kernel: y[oy][ox] = init + sum over ky, kx of
 * k[ky][kx] x[oy sy + ky - py][ox sx + kx - px], taps in the padding left out. Row by row, a kernel row whose
 * input row is in the padding gets zero weights (and reads a row that exists), so that every output row takes
 * the same loop; the positions whose taps are all inside the row (the interior columns) go four at a time with
 * the kernel in registers (plane_rows_t: kh = kw and sx constant in the instances, 3x3 and 5x5, strides 1 and 2;
 * loads at immediate offsets, the inputs of the four positions loaded once), and one edge position on each side
 * (padding up to one stride) reads the kw columns at the start or the end of the row with a shifted kernel whose
 * taps in the padding are zeros; the interior rows go in one call. Other shapes loop over the taps inside.
 * The input gradient is the same correlation: of dy with the kernel flipped for stride 1 (dx_plane; for stride
 * s, of dy with each of the s x s sub-kernels into the dx positions of that phase, s apart, but those have too
 * few taps per row to pay for a row's setup: stride 2 keeps the scatter of dx_channel, 8.5 against 8.3-13 for
 * the phases). A zero weight times an input adds 0 where the reference skips the tap (the same sum unless the
 * input holds an infinity or NaN). benchmarks/m4_kernel_instructions.py, depthwise 3x3, instructions per MAC on
 * the Cortex-M4F: forward 14.7 -> 3.4 (16x16), 2.5 (32x32), 3.1-4.8 (stride 2); input gradient 7.6 -> 3.7 and
 * 2.7; weight gradient (dw_plane) 6.5 -> 3.7 and 2.5, 6.8-8.4 -> 3.4-6.0 (stride 2). */
/* kernels up to PLANE_KMAX x PLANE_KMAX (the weights with zero rows are local copies on the stack: about 400 bytes
 * at 5, 130 at 3, so ARMv6-M boards, with 1-2 KB stacks, take 3 x 3 kernels only) */
#ifndef POET_CONV_PLANE_KMAX
#if defined(__ARM_ARCH_6M__)
#define POET_CONV_PLANE_KMAX 3
#else
#define POET_CONV_PLANE_KMAX 5
#endif
#endif
#define PLANE_KMAX POET_CONV_PLANE_KMAX

typedef struct {
    const float *x; /* input plane, h x w */
    uint32_t h, w;
    float *y;   /* output: position (oy, ox) at y + oy * yrs + ox * ys */
    uint32_t oh, ow, ys;
    size_t yrs;
    uint32_t kh, kw, sy, sx;
    long py, px;    /* input row of output row 0, tap 0: -py (negative padding for the input gradient) */
    const float *k; /* kh x kw taps, rows kw apart */
    float init;
} plane_args;

/* m output rows of one plane: the left and right edge positions (at most one each, whose taps cut by the
 * padding are zeros of the shifted kernels kl, kr: they read the kw columns at the start and at the end of the
 * row) and the interior positions between them. */
typedef struct {
    const float *r[PLANE_KMAX]; /* input row of kernel row ky for the first output row */
    size_t xos;                 /* + per output row */
    uint32_t m;
    const float *kv, *kl, *kr; /* the kernel (zero rows for the rows in the padding); kl, kr: or null */
    float *y;                  /* the first output row; + yrs per row */
    size_t yrs;
    uint32_t ox0, ni, ow; /* interior positions ox0 <= ox < ox0 + ni, of ow */
    long c0;              /* input column of tap 0 of position ox0 */
    uint32_t cr;          /* column of the right edge's window: w - kw */
    float init;
} plane_rows;

typedef void (*plane_rows_fn)(const plane_rows *a);

static inline __attribute__((always_inline)) float plane_one(const float *const *r, long c, const float *k,
                                                             float init, const uint32_t KH, const uint32_t KW) {
    float acc = init;
#pragma GCC unroll 5
    for (uint32_t ky = 0; ky < KH; ky++)
#pragma GCC unroll 5
        for (uint32_t kx = 0; kx < KW; kx++) acc += k[ky * KW + kx] * r[ky][c + (long)kx];
    return acc;
}

static inline __attribute__((always_inline)) void plane_rows_t(const plane_rows *a, const uint32_t KH,
                                                               const uint32_t KW, const uint32_t SX) {
    float k[PLANE_KMAX * PLANE_KMAX];
    const float *r[PLANE_KMAX];
    const float *kl = a->kl, *kr = a->kr;
    const float init = a->init;
    const uint32_t ni = a->ni;
#pragma GCC unroll 25
    for (uint32_t i = 0; i < KH * KW; i++) k[i] = a->kv[i];
#pragma GCC unroll 5
    for (uint32_t ky = 0; ky < KH; ky++) r[ky] = a->r[ky];
    float *yr = a->y;
    for (uint32_t row = 0; row < a->m; row++, yr += a->yrs) {
        if (kl) yr[0] = plane_one(r, 0, kl, init, KH, KW);
        const float *rr[PLANE_KMAX];
#pragma GCC unroll 5
        for (uint32_t ky = 0; ky < KH; ky++) rr[ky] = r[ky] + a->c0;
        float *y = yr + a->ox0;
        uint32_t i = 0;
        for (; i + 4 <= ni; i += 4, y += 4) {
            float a0 = init, a1 = init, a2 = init, a3 = init;
#pragma GCC unroll 5
            for (uint32_t ky = 0; ky < KH; ky++) {
                const float *xr = rr[ky];
#pragma GCC unroll 5
                for (uint32_t kx = 0; kx < KW; kx++) {
                    const float t = k[ky * KW + kx];
                    a0 += t * xr[kx], a1 += t * xr[kx + SX], a2 += t * xr[kx + 2 * SX], a3 += t * xr[kx + 3 * SX];
                }
                rr[ky] = xr + 4 * SX;
            }
            y[0] = a0, y[1] = a1, y[2] = a2, y[3] = a3;
        }
        for (; i < ni; i++, y++) *y = plane_one(r, a->c0 + (long)(i * SX), k, init, KH, KW);
        if (kr) yr[a->ow - 1] = plane_one(r, (long)a->cr, kr, init, KH, KW);
#pragma GCC unroll 5
        for (uint32_t ky = 0; ky < KH; ky++) r[ky] += a->xos;
    }
}

#define PLANE_ROWS(K, SX)                                                                                     \
    static void plane_rows_k##K##s##SX(const plane_rows *a) { plane_rows_t(a, K, K, SX); }
PLANE_ROWS(3, 1)
PLANE_ROWS(3, 2)
#if PLANE_KMAX >= 5 /* (instantiated only where their kernels fit the local copies) */
PLANE_ROWS(5, 1)
PLANE_ROWS(5, 2)
#endif

static plane_rows_fn plane_rows_for(uint32_t kh, uint32_t kw, uint32_t sx) {
    if (kh != kw || (sx != 1 && sx != 2)) return 0;
    if (kw == 3) return sx == 1 ? plane_rows_k3s1 : plane_rows_k3s2;
#if PLANE_KMAX >= 5
    if (kw == 5) return sx == 1 ? plane_rows_k5s1 : plane_rows_k5s2;
#endif
    return 0;
}

/* The outputs o < count whose taps k < kn all read inside [0, size): o s - pad >= 0, o s - pad + kn <= size. */
static void inside_range(uint32_t kn, uint32_t s, long pad, uint32_t size, uint32_t count, uint32_t *o0,
                         uint32_t *o1) {
    long a = pad <= 0 ? 0 : (pad + (long)s - 1) / (long)s;
    long hi = (long)size - (long)kn + pad; /* o s <= hi */
    long b = hi < 0 ? -1 : hi / (long)s;
    if (b >= (long)count) b = (long)count - 1;
    if (a > (long)count) a = (long)count;
    *o0 = (uint32_t)a;
    *o1 = b < a ? (uint32_t)a : (uint32_t)(b + 1);
}

/* Output position ox of a row whose kernel rows are r[ky] (kv: the kernel, zero rows for rows in the padding):
 * the taps kx0 <= kx < kx1 inside the row. */
static float plane_edge(const float *const *r, const float *kv, uint32_t kh, uint32_t kw, long c, uint32_t kx0,
                        uint32_t kx1, float init) {
    float acc = init;
    for (uint32_t ky = 0; ky < kh; ky++) {
        const float *xr = r[ky] + c, *kr = kv + ky * kw;
        for (uint32_t kx = kx0; kx < kx1; kx++) acc += kr[kx] * xr[kx];
    }
    return acc;
}

/* ks[ky][j] = kv[ky][j + shift] (zero outside the kernel): the window of an edge position moved by shift. */
static void shift_kernel(const float *kv, uint32_t kh, uint32_t kw, long shift, float *ks) {
    for (uint32_t ky = 0; ky < kh; ky++)
        for (uint32_t j = 0; j < kw; j++) {
            const long kx = (long)j + shift;
            ks[ky * kw + j] = kx >= 0 && kx < (long)kw ? kv[ky * kw + (uint32_t)kx] : 0.0f;
        }
}

static void plane_conv(const plane_args *a) {
    const uint32_t kh = a->kh, kw = a->kw, sx = a->sx, ow = a->ow, w = a->w;
    const plane_rows_fn fast = plane_rows_for(kh, kw, sx);
    const float *x = a->x;
    const long px = a->px;
    const float init = a->init;
    float wv[PLANE_KMAX * PLANE_KMAX], kl[PLANE_KMAX * PLANE_KMAX], kr[PLANE_KMAX * PLANE_KMAX];
    uint32_t ox0, ox1, oy0, oy1;
    inside_range(kw, sx, px, w, ow, &ox0, &ox1);
    inside_range(kh, a->sy, a->py, a->h, a->oh, &oy0, &oy1);
    /* the fast rows take at most one edge position on each side */
    const int rows = fast && a->ys == 1 && ox1 > ox0 && ox0 <= 1 && ow - ox1 <= 1 && w >= kw;
    plane_rows pr;
    pr.yrs = a->yrs, pr.ox0 = ox0, pr.ni = ox1 - ox0, pr.ow = ow, pr.c0 = (long)ox0 * sx - px, pr.cr = w - kw;
    pr.init = init;
    for (uint32_t oy = 0; oy < a->oh; oy++) {
        const long iy0 = (long)oy * a->sy - a->py;
        float *yr = a->y + (size_t)oy * a->yrs;
        const float *kv = a->k;
        const float *r[PLANE_KMAX];
        const int inner = oy >= oy0 && oy < oy1;
        if (inner) {
            for (uint32_t ky = 0; ky < kh; ky++) r[ky] = x + (size_t)(iy0 + (long)ky) * w;
        } else {
            for (uint32_t ky = 0; ky < kh; ky++) {
                const long iy = iy0 + (long)ky;
                const int in = iy >= 0 && iy < (long)a->h;
                r[ky] = x + (in ? (size_t)iy * w : 0);
                for (uint32_t kx = 0; kx < kw; kx++) wv[ky * kw + kx] = in ? a->k[ky * kw + kx] : 0.0f;
            }
            kv = wv;
        }
        if (rows) { /* the interior rows at once, the others one at a time */
            for (uint32_t ky = 0; ky < kh; ky++) pr.r[ky] = r[ky];
            pr.xos = (size_t)a->sy * w, pr.m = inner ? oy1 - oy0 : 1, pr.kv = kv, pr.y = yr;
            pr.kl = pr.kr = 0;
            if (ox0 == 1) shift_kernel(kv, kh, kw, px, kl), pr.kl = kl; /* position 0: columns 0.. */
            if (ox1 == ow - 1) shift_kernel(kv, kh, kw, (long)(w - kw) - ((long)(ow - 1) * sx - px), kr), pr.kr = kr;
            fast(&pr);
            oy += pr.m - 1;
            continue;
        }
        for (uint32_t ox = 0; ox < ow; ox++) {
            const long c = (long)ox * sx - px, wr = (long)w - c; /* input column of tap 0 */
            const uint32_t kx0 = c >= 0 ? 0 : -c < (long)kw ? (uint32_t)-c : kw;
            const uint32_t kx1 = wr <= (long)kx0 ? kx0 : wr < (long)kw ? (uint32_t)wr : kw;
            yr[(size_t)ox * a->ys] = plane_edge(r, kv, kh, kw, c, kx0, kx1, init);
        }
    }
}

/* The depthwise path applies: one input channel per group, a kernel of at most PLANE_KMAX x PLANE_KMAX. */
static int plane_ok(const poet_conv_params *p) {
    return p->c_in == p->groups && p->kh <= PLANE_KMAX && p->kw <= PLANE_KMAX && p->h > 0 && p->w > 0 &&
           p->oh > 0 && p->ow > 0;
}

/* Output channel oc of image n (one input channel per group). */
static void fwd_plane(const poet_conv_params *p, const float *x, const float *w, const float *b, float *y,
                      uint32_t n, uint32_t oc) {
    const uint32_t c = oc / (p->c_out / p->groups);
    plane_args a;
    a.x = x + ((size_t)n * p->c_in + c) * p->h * p->w, a.h = p->h, a.w = p->w;
    a.y = y + ((size_t)n * p->c_out + oc) * p->oh * p->ow, a.oh = p->oh, a.ow = p->ow, a.ys = 1, a.yrs = p->ow;
    a.kh = p->kh, a.kw = p->kw, a.sy = p->sh, a.sx = p->sw, a.py = p->ph, a.px = p->pw;
    a.k = w + (size_t)oc * p->kh * p->kw, a.init = b ? b[oc] : 0.0f;
    plane_conv(&a);
}

/* Input channel c of image n when its group has one output channel (depthwise; dispatched for stride 1, where
 * the one phase is dy correlated with the flipped kernel, padded kh - 1 - ph): phase by phase, dx positions
 * (ry + sh q, rx + sw q') are the stride-1 correlation of dy with the taps ky = ky_r + sh j (ky_r = (ry + ph)
 * mod sh), reversed: dy row q - pad + j' reaches tap ky_r + sh (nj - 1 - j'), pad = nj - 1 - (ry + ph) / sh. */
static void dx_plane(const poet_conv_params *p, const float *dy, const float *w, float *dx, uint32_t n,
                     uint32_t c) {
    float k[PLANE_KMAX * PLANE_KMAX];
    const float *wc = w + (size_t)c * p->kh * p->kw;
    float *dxc = dx + ((size_t)n * p->c_in + c) * p->h * p->w;
    plane_args a;
    a.x = dy + ((size_t)n * p->c_out + c) * p->oh * p->ow, a.h = p->oh, a.w = p->ow;
    a.ys = p->sw, a.yrs = (size_t)p->sh * p->w, a.sy = 1, a.sx = 1, a.k = k, a.init = 0.0f;
    for (uint32_t ry = 0; ry < p->sh && ry < p->h; ry++) {
        const uint32_t kyr = (ry + p->ph) % p->sh, nj = kyr < p->kh ? (p->kh - kyr + p->sh - 1) / p->sh : 0;
        for (uint32_t rx = 0; rx < p->sw && rx < p->w; rx++) {
            const uint32_t kxr = (rx + p->pw) % p->sw, ni = kxr < p->kw ? (p->kw - kxr + p->sw - 1) / p->sw : 0;
            a.y = dxc + (size_t)ry * p->w + rx;
            a.oh = (p->h - ry + p->sh - 1) / p->sh, a.ow = (p->w - rx + p->sw - 1) / p->sw;
            if (nj == 0 || ni == 0) { /* no tap reaches these positions */
                for (uint32_t q = 0; q < a.oh; q++)
                    for (uint32_t o = 0; o < a.ow; o++) a.y[q * a.yrs + (size_t)o * a.ys] = 0.0f;
                continue;
            }
            for (uint32_t j = 0; j < nj; j++)
                for (uint32_t i = 0; i < ni; i++)
                    k[j * ni + i] = wc[(size_t)(kyr + p->sh * (nj - 1 - j)) * p->kw + kxr + p->sw * (ni - 1 - i)];
            a.kh = nj, a.kw = ni;
            a.py = (long)nj - 1 - (long)((ry + p->ph) / p->sh), a.px = (long)ni - 1 - (long)((rx + p->pw) / p->sw);
            plane_conv(&a);
        }
    }
}

/* ---- weight gradient, one plane: the kernel's accumulators in registers -------------------------------------
 * dw[oc][ky][kx] = sum over images and positions of dy[oy][ox] x[oy sh + ky - ph][ox sw + kx - pw]. The output
 * rows and columns whose taps are all inside the input (the interior block) go four positions at a time with the
 * kh kw sums in registers, each dy value and input loaded once for all the taps it meets (dw_rows, kh, kw, sw
 * constant in the instances); the rest of each tap's positions (the rows and columns at the borders) one tap at a
 * time, as dot products of a dy row and an input row over the positions the tap reaches. */
typedef void (*dw_rows_fn)(const float *x, size_t xr, size_t xs, const float *d, size_t ds, uint32_t m, uint32_t n,
                           float *acc);

/* acc[ky][kx] += sum over m rows, n positions of d[row ds + q] x[row xs + ky xr + q sx + kx]. */
static inline __attribute__((always_inline)) void dw_rows(const float *x, size_t xr, size_t xs, const float *d,
                                                          size_t ds, uint32_t m, uint32_t n, float *acc,
                                                          const uint32_t KH, const uint32_t KW,
                                                          const uint32_t SX) {
    float c[PLANE_KMAX * PLANE_KMAX];
#pragma GCC unroll 25
    for (uint32_t i = 0; i < KH * KW; i++) c[i] = acc[i];
    for (uint32_t row = 0; row < m; row++, x += xs, d += ds) {
        const float *rr[PLANE_KMAX], *dp = d;
#pragma GCC unroll 5
        for (uint32_t ky = 0; ky < KH; ky++) rr[ky] = x + ky * xr;
        uint32_t i = 0;
        for (; i + 4 <= n; i += 4, dp += 4) {
            const float d0 = dp[0], d1 = dp[1], d2 = dp[2], d3 = dp[3];
#pragma GCC unroll 5
            for (uint32_t ky = 0; ky < KH; ky++) {
                const float *q = rr[ky];
#pragma GCC unroll 5
                for (uint32_t kx = 0; kx < KW; kx++) {
                    float t = c[ky * KW + kx];
                    t += d0 * q[kx], t += d1 * q[kx + SX], t += d2 * q[kx + 2 * SX], t += d3 * q[kx + 3 * SX];
                    c[ky * KW + kx] = t;
                }
                rr[ky] = q + 4 * SX;
            }
        }
        for (; i < n; i++, dp++) {
            const float d0 = dp[0];
#pragma GCC unroll 5
            for (uint32_t ky = 0; ky < KH; ky++) {
#pragma GCC unroll 5
                for (uint32_t kx = 0; kx < KW; kx++) c[ky * KW + kx] += d0 * rr[ky][kx];
                rr[ky] += SX;
            }
        }
    }
#pragma GCC unroll 25
    for (uint32_t i = 0; i < KH * KW; i++) acc[i] = c[i];
}

#define DW_ROWS(K, SX)                                                                                        \
    static void dw_rows_k##K##s##SX(const float *x, size_t xr, size_t xs, const float *d, size_t ds, uint32_t m, \
                                    uint32_t n, float *acc) {                                                 \
        dw_rows(x, xr, xs, d, ds, m, n, acc, K, K, SX);                                                       \
    }
DW_ROWS(3, 1)
DW_ROWS(3, 2)
#if PLANE_KMAX >= 5
DW_ROWS(5, 1)
DW_ROWS(5, 2)
#endif

static dw_rows_fn dw_rows_for(uint32_t kh, uint32_t kw, uint32_t sx) {
    if (kh != kw || sx > 2) return 0;
    if (kw == 3) return sx == 1 ? dw_rows_k3s1 : dw_rows_k3s2;
#if PLANE_KMAX >= 5
    if (kw == 5) return sx == 1 ? dw_rows_k5s1 : dw_rows_k5s2;
#endif
    return 0;
}

/* The input that tap (ky, kx) of output (oy, ox) reads (inside the input plane xc). */
static inline const float *tap_at(const poet_conv_params *p, const float *xc, uint32_t oy, uint32_t ox, uint32_t ky,
                                  uint32_t kx) {
    return xc + (size_t)(oy * p->sh + ky - p->ph) * p->w + (ox * p->sw + kx - p->pw);
}

/* The kh kw weight gradients of output channel oc (input channel oc / (c_out / groups)), into acc. */
static void dw_plane(const poet_conv_params *p, const float *dy, const float *x, float *acc, uint32_t oc) {
    const uint32_t c = oc / (p->c_out / p->groups), kh = p->kh, kw = p->kw;
    const dw_rows_fn fast = dw_rows_for(kh, kw, p->sw);
    for (uint32_t i = 0; i < kh * kw; i++) acc[i] = 0.0f;
    uint32_t oy0, oy1, ox0, ox1;
    inside_range(kh, p->sh, p->ph, p->h, p->oh, &oy0, &oy1);
    inside_range(kw, p->sw, p->pw, p->w, p->ow, &ox0, &ox1);
    const int block = fast && oy1 > oy0 && ox1 > ox0;
    for (uint32_t n = 0; n < p->n; n++) {
        const float *dyc = dy + ((size_t)n * p->c_out + oc) * p->oh * p->ow;
        const float *xc = x + ((size_t)n * p->c_in + c) * p->h * p->w;
        if (block)
            fast(xc + (size_t)(oy0 * p->sh - p->ph) * p->w + ox0 * p->sw - p->pw, p->w, (size_t)p->sh * p->w,
                 dyc + (size_t)oy0 * p->ow + ox0, p->ow, oy1 - oy0, ox1 - ox0, acc);
        for (uint32_t ky = 0; ky < kh; ky++) {
            uint32_t ya, yb;
            tap_range(ky, p->sh, p->ph, p->h, p->oh, &ya, &yb);
            for (uint32_t kx = 0; kx < kw; kx++) {
                uint32_t xa, xb;
                tap_range(kx, p->sw, p->pw, p->w, p->ow, &xa, &xb);
                float s = 0.0f;
                for (uint32_t oy = ya; oy < yb; oy++) {
                    if (block && oy == oy0 && oy1 > oy0) { /* the block's rows: the columns left and right of it */
                        const uint32_t e0 = ox0 < xb ? ox0 : xb, e1 = ox1 > xa ? ox1 : xa;
                        const size_t ds = p->ow, xs = (size_t)p->sh * p->w;
                        const uint32_t y1 = oy1 < yb ? oy1 : yb;
                        for (uint32_t ox = xa; ox < e0; ox++) {
                            const float *g = dyc + (size_t)oy * ds + ox, *v = tap_at(p, xc, oy, ox, ky, kx);
                            for (uint32_t t = oy; t < y1; t++, g += ds, v += xs) s += *g * *v;
                        }
                        for (uint32_t ox = e1 > e0 ? e1 : e0; ox < xb; ox++) {
                            const float *g = dyc + (size_t)oy * ds + ox, *v = tap_at(p, xc, oy, ox, ky, kx);
                            for (uint32_t t = oy; t < y1; t++, g += ds, v += xs) s += *g * *v;
                        }
                        oy = y1 - 1;
                        continue;
                    }
                    const float *gr = dyc + (size_t)oy * p->ow;
                    const float *xr = tap_at(p, xc, oy, xa, ky, kx);
                    for (uint32_t ox = xa; ox < xb; ox++) s += gr[ox] * xr[(size_t)(ox - xa) * p->sw];
                }
                acc[ky * kw + kx] += s;
            }
        }
    }
}

/* One output channel oc alone (channels that do not fill a tile of four: depthwise convolutions), with the taps
 * inside the input found per row and per position rather than tested per tap. */
static void fwd_channel(const poet_conv_params *p, const float *x, const float *w, const float *b, float *y,
                        uint32_t n, uint32_t oc) {
    if (plane_ok(p)) {
        fwd_plane(p, x, w, b, y, n, oc);
        return;
    }
    const uint32_t cig = p->c_in / p->groups, c0 = (oc / (p->c_out / p->groups)) * cig;
    for (uint32_t oy = 0; oy < p->oh; oy++) {
        const long lo_y = (long)p->ph - (long)oy * p->sh, hi_y = (long)p->h + p->ph - (long)oy * p->sh;
        const uint32_t ky0 = lo_y < 0 ? 0 : (uint32_t)lo_y;
        const uint32_t ky1 = hi_y > (long)p->kh ? p->kh : (hi_y < (long)ky0 ? ky0 : (uint32_t)hi_y);
        for (uint32_t ox = 0; ox < p->ow; ox++) {
            const long lo_x = (long)p->pw - (long)ox * p->sw, hi_x = (long)p->w + p->pw - (long)ox * p->sw;
            const uint32_t kx0 = lo_x < 0 ? 0 : (uint32_t)lo_x;
            const uint32_t kx1 = hi_x > (long)p->kw ? p->kw : (hi_x < (long)kx0 ? kx0 : (uint32_t)hi_x);
            float acc = 0.0f;
            for (uint32_t ic = 0; ic < cig; ic++) {
                const float *xp = x + ((size_t)n * p->c_in + c0 + ic) * p->h * p->w;
                const float *wp = w + ((size_t)oc * cig + ic) * p->kh * p->kw;
                for (uint32_t ky = ky0; ky < ky1; ky++) {
                    const float *xr = xp + (size_t)(oy * p->sh + ky - p->ph) * p->w + ox * p->sw - p->pw;
                    const float *wr = wp + (size_t)ky * p->kw;
                    for (uint32_t kx = kx0; kx < kx1; kx++) acc += xr[kx] * wr[kx];
                }
            }
            y[(((size_t)n * p->c_out + oc) * p->oh + oy) * p->ow + ox] = acc + (b ? b[oc] : 0.0f);
        }
    }
}

/* ---- forward, few input channels (first layers): every tap summed in registers ------------------------------
 * With cig = c_in / groups small (1 grayscale, 3 RGB) the tap-by-tap tiles above sum over cig inputs only, so
 * each tap costs a load and a store of all 16 outputs for 16 cig MACs (about 10 instructions per MAC for cig 1).
 * Here a 4x4 tile (four output channels by four positions of an output row) keeps its 16 accumulators in
 * registers over all cig * kh * kw taps and writes each output once, bias included. Per input row (ic, ky) the
 * tile loads the 3 sw + kw inputs its four positions span once and 4 kw weights, for 16 kw MACs; kw and sw are
 * constants in the instances (taps_k3s1...), so the taps are unrolled and the loads take immediate offsets
 * (16 + 9 + 4 of the M4's 32 float registers at most), and so are the rows of a kh = kw kernel. The kernel rows
 * in the vertical padding are skipped (ky0, khv); a tile whose columns reach into the horizontal padding or past
 * the row (and the last, partial tile) reads its rows from a zero-padded copy (TAPS_BUF floats on the stack, made
 * once for all the output channels), and small images (8x8 digits) are copied whole with their padding, so that
 * every tile reads in place. benchmarks/m4_kernel_instructions.py, instructions per MAC on the Cortex-M4F: 1->8
 * channels 3x3 on 8x8 10.4 -> 2.7, 3->16 3x3 on 32x32 4.6 -> 2.0 (stride 2: 4.8 -> 2.0). */
/* floats of stack: cig * kh * (3 sw + kw) (a tile's rows) at most. ARMv6-M boards (the 16 KB qemu-m0, the
 * MKR1000) reserve 1-2 KB of stack, so there the path is off unless a build asks for it. */
#ifndef POET_CONV_TAPS_BUF
#if defined(__ARM_ARCH_6M__)
#define POET_CONV_TAPS_BUF 0
#else
#define POET_CONV_TAPS_BUF 128
#endif
#endif
#define TAPS_BUF POET_CONV_TAPS_BUF

typedef struct {
    const float *w; /* weights of the first output channel, from row ky0; + wr per output channel */
    size_t wr;
    uint32_t wskip; /* weights of the kernel rows in the padding, skipped per input channel: (kh - khv) kw */
    const float *x; /* input row ky0 of the first input channel, column of tap kx = 0 of the first position */
    size_t xrs, xps; /* + per input row, + per input channel */
    uint32_t cig, khv;
    uint32_t tiles; /* tiles of four output channels */
    uint32_t nx;    /* tiles of four positions: x + 4 sw apart, y + 4 */
    uint32_t nq;    /* positions stored of each (1 to 4) */
    const float *b; /* bias (or null) of the first output channel */
    float *y;       /* output of the first channel and position; + yr per output channel */
    size_t yr;
} taps_args;

typedef void (*taps_fn)(const taps_args *a);

/* y[r][q] = b[r] + sum over ic < cig, ky < khv, kx < kw of w_r[ic][ky][kx] x[ic][ky][q sw + kx], r < 4 output
 * channels, q < 4 positions, for every tile of channels and of positions. kw, sw and kh (when not 0, khv == kh:
 * the weights' rows are contiguous) are constants where inlined. */
static inline __attribute__((always_inline)) void tile_taps(const taps_args *a, const uint32_t kw,
                                                            const uint32_t sw, const uint32_t kh) {
    const size_t wr = a->wr, xrs = a->xrs, xps = a->xps, yr = a->yr;
    const uint32_t wskip = a->wskip, cig = a->cig, khv = kh ? kh : a->khv, nx = a->nx, nq = a->nq;
    const float *w = a->w, *b = a->b;
    float *yt = a->y;
    for (uint32_t t = 0; t < a->tiles; t++, w += 4 * wr, yt += 4 * yr, b = b ? b + 4 : 0) {
        const float b0 = b ? b[0] : 0.0f, b1 = b ? b[1] : 0.0f, b2 = b ? b[2] : 0.0f, b3 = b ? b[3] : 0.0f;
        const float *x = a->x;
        float *y = yt;
        for (uint32_t px = 0; px < nx; px++, x += 4 * sw, y += 4) {
            const float *w0 = w, *w1 = w + wr, *w2 = w1 + wr, *w3 = w2 + wr, *xc = x;
            float c00 = b0, c01 = b0, c02 = b0, c03 = b0, c10 = b1, c11 = b1, c12 = b1, c13 = b1;
            float c20 = b2, c21 = b2, c22 = b2, c23 = b2, c30 = b3, c31 = b3, c32 = b3, c33 = b3;
            if (kh) { /* every row of the kernel, unrolled: one pointer update per input channel */
                for (uint32_t ic = 0; ic < cig; ic++, xc += xps, w0 += kh * kw, w1 += kh * kw, w2 += kh * kw,
                              w3 += kh * kw) {
#pragma GCC unroll 8
                    for (uint32_t ky = 0; ky < kh; ky++) {
                        const float *xr = xc + ky * xrs;
                        const uint32_t o = ky * kw;
#pragma GCC unroll 8
                        for (uint32_t kx = 0; kx < kw; kx++)
                            POET_FMA16(w0[o + kx], w1[o + kx], w2[o + kx], w3[o + kx], xr[kx], xr[kx + sw],
                                       xr[kx + 2 * sw], xr[kx + 3 * sw]);
                    }
                }
            } else {
                for (uint32_t ic = 0; ic < cig; ic++, xc += xps, w0 += wskip, w1 += wskip, w2 += wskip,
                              w3 += wskip) {
                    const float *xr = xc;
                    for (uint32_t ky = 0; ky < khv; ky++, xr += xrs, w0 += kw, w1 += kw, w2 += kw, w3 += kw) {
#pragma GCC unroll 8
                        for (uint32_t kx = 0; kx < kw; kx++)
                            POET_FMA16(w0[kx], w1[kx], w2[kx], w3[kx], xr[kx], xr[kx + sw], xr[kx + 2 * sw],
                                       xr[kx + 3 * sw]);
                    }
                }
            }
            float *y0 = y, *y1 = y + yr, *y2 = y1 + yr, *y3 = y2 + yr;
            y0[0] = c00, y1[0] = c10, y2[0] = c20, y3[0] = c30;
            if (nq > 1) y0[1] = c01, y1[1] = c11, y2[1] = c21, y3[1] = c31;
            if (nq > 2) y0[2] = c02, y1[2] = c12, y2[2] = c22, y3[2] = c32;
            if (nq > 3) y0[3] = c03, y1[3] = c13, y2[3] = c23, y3[3] = c33;
        }
    }
}

/* The instances: a kw x kw kernel's rows unrolled where all are inside the input, other heights looped. */
#define TAPS_INSTANCE(KW, SW)                                                                                 \
    static void taps_k##KW##s##SW(const taps_args *a) {                                                       \
        if (a->khv == KW && a->wskip == 0) tile_taps(a, KW, SW, KW);                                          \
        else tile_taps(a, KW, SW, 0);                                                                         \
    }
TAPS_INSTANCE(3, 1)
TAPS_INSTANCE(3, 2)
TAPS_INSTANCE(5, 1)
TAPS_INSTANCE(5, 2)

/* The instance for this convolution, or 0 where the tap-by-tap tiles are used: cig <= 4 (from 8 input channels
 * on, the tap-by-tap tiles' output traffic is spread over 8 MACs per output access and they are as fast), at
 * least one tile of four output channels, a kw and sw instantiated, and a tile's rows fit TAPS_BUF. */
static taps_fn taps_for(const poet_conv_params *p) {
    const uint32_t cig = p->c_in / p->groups, cog = p->c_out / p->groups;
    if (TAPS_BUF == 0 || cig > 4 || cog < 4 || p->sw > 2 || (size_t)cig * p->kh * (3 * p->sw + p->kw) > TAPS_BUF)
        return 0;
    if (p->kw == 3) return p->sw == 1 ? taps_k3s1 : taps_k3s2;
    if (p->kw == 5) return p->sw == 1 ? taps_k5s1 : taps_k5s2;
    return 0;
}

/* Copy rows of columns base + j, j < span, into d (zero outside the row: j - j0 >= j1 - j0); rows of src
 * (null: zero rows) rs apart. */
static float *pad_rows(float *d, const float *src, size_t rs, uint32_t rows, long base, uint32_t j0, uint32_t j1,
                       uint32_t span) {
    for (uint32_t i = 0; i < rows; i++, src = src ? src + rs : 0) /* one loop: GCC calls memset/memcpy for three */
        for (uint32_t j = 0; j < span; j++) *d++ = src && j - j0 < j1 - j0 ? src[base + (long)j] : 0.0f;
    return d;
}

/* The columns base + j, j0 <= j < j1 (j < span), inside a row of w. */
static void cols_inside(long base, uint32_t w, uint32_t span, uint32_t *j0, uint32_t *j1) {
    const long r = (long)w - base;
    *j0 = base >= 0 ? 0 : -base < (long)span ? (uint32_t)(-base) : span;
    *j1 = r <= (long)*j0 ? *j0 : r < (long)span ? (uint32_t)r : span;
}

/* Group g of image n, row by row, each tile of positions for all the group's output channels four at a time.
 * Where the group's input planes with their padding fit TAPS_BUF (small images) they are copied once and every
 * tile reads the copy; otherwise the runs of tiles whose inputs are all inside the rows read them in place, the
 * others a zero-padded copy of their rows. The channels that do not fill a tile of four go alone, after. */
static void fwd_taps(const poet_conv_params *p, taps_fn fn, const float *x, const float *w, const float *b,
                     float *y, uint32_t n, uint32_t g) {
    const uint32_t cig = p->c_in / p->groups, cog = p->c_out / p->groups, span = 3 * p->sw + p->kw;
    const uint32_t ntx = (p->ow + 3) / 4, full = p->ow / 4; /* tiles of positions, of four */
    const size_t plane_x = (size_t)p->h * p->w;
    const float *xg = x + ((size_t)n * p->c_in + (size_t)g * cig) * plane_x;
    if (p->oh == 0 || p->ow == 0) return;
    float buf[TAPS_BUF > 0 ? TAPS_BUF : 1];
    taps_args a;
    a.wr = (size_t)cig * p->kh * p->kw, a.cig = cig, a.tiles = cog / 4, a.b = b ? b + g * cog : 0;
    a.yr = (size_t)p->oh * p->ow;
    float *yg = y + ((size_t)n * p->c_out + (size_t)g * cog) * a.yr;
    const uint32_t pad_h = (p->oh - 1) * p->sh + p->kh, pad_w = (4 * ntx - 1) * p->sw + p->kw;
    if ((size_t)cig * pad_h * pad_w <= TAPS_BUF) {
        uint32_t j0, j1;
        cols_inside(-(long)p->pw, p->w, pad_w, &j0, &j1);
        float *d = buf;
        for (uint32_t ic = 0; ic < cig; ic++) {
            const uint32_t top = p->ph < pad_h ? p->ph : pad_h;
            const uint32_t in = p->h < pad_h - top ? p->h : pad_h - top;
            d = pad_rows(d, 0, 0, top, 0, 0, 0, pad_w);
            d = pad_rows(d, xg + ic * plane_x, p->w, in, -(long)p->pw, j0, j1, pad_w);
            d = pad_rows(d, 0, 0, pad_h - top - in, 0, 0, 0, pad_w);
        }
        a.w = w + (size_t)g * cog * a.wr, a.khv = p->kh, a.wskip = 0, a.xrs = pad_w, a.xps = (size_t)pad_h * pad_w;
        for (uint32_t oy = 0; oy < p->oh; oy++) {
            a.x = buf + (size_t)oy * p->sh * pad_w, a.y = yg + (size_t)oy * p->ow;
            if (full) a.nx = full, a.nq = 4, fn(&a);
            if (full < ntx) a.x += 4 * full * p->sw, a.y += 4 * full, a.nx = 1, a.nq = p->ow - 4 * full, fn(&a);
        }
    } else {
        /* the tiles tx0 <= tx < tx1 read their inputs in place: 4 tx sw >= pw, 4 tx sw - pw + span <= w */
        const uint32_t step = 4 * p->sw;
        uint32_t tx0 = (p->pw + step - 1) / step, tx1 = tx0;
        while (tx1 < full && (long)(tx1 * step) - (long)p->pw + (long)span <= (long)p->w) tx1++;
        for (uint32_t oy = 0; oy < p->oh; oy++) {
            const long iy0 = (long)oy * p->sh - (long)p->ph; /* input row of tap ky = 0 */
            const long lo = -iy0, hi = (long)p->h - iy0;     /* taps lo <= ky < hi are inside the input */
            const uint32_t ky0 = lo <= 0 ? 0 : lo < (long)p->kh ? (uint32_t)lo : p->kh;
            const uint32_t ky1 = hi <= (long)ky0 ? ky0 : hi < (long)p->kh ? (uint32_t)hi : p->kh;
            a.khv = ky1 - ky0, a.wskip = (p->kh - a.khv) * p->kw;
            a.w = w + (size_t)g * cog * a.wr + (size_t)ky0 * p->kw;
            float *yrow = yg + (size_t)oy * p->ow;
            for (uint32_t tx = 0; tx < ntx;) {
                const uint32_t ox = 4 * tx;
                const long base = (long)ox * p->sw - (long)p->pw; /* input column of position ox, tap kx = 0 */
                a.y = yrow + ox;
                if (tx == tx0 && tx1 > tx0 && a.khv > 0) {
                    a.x = xg + (size_t)(iy0 + (long)ky0) * p->w + (size_t)base;
                    a.xrs = p->w, a.xps = plane_x, a.nx = tx1 - tx0, a.nq = 4;
                    fn(&a);
                    tx = tx1;
                    continue;
                }
                uint32_t j0, j1;
                cols_inside(base, p->w, span, &j0, &j1);
                float *d = buf;
                for (uint32_t ic = 0; ic < cig; ic++)
                    d = pad_rows(d, a.khv ? xg + ic * plane_x + (size_t)(iy0 + (long)ky0) * p->w : 0, p->w, a.khv,
                                 base, j0, j1, span);
                a.x = buf, a.xrs = span, a.xps = (size_t)a.khv * span, a.nx = 1;
                a.nq = p->ow - ox < 4 ? p->ow - ox : 4;
                fn(&a);
                tx++;
            }
        }
    }
    for (uint32_t oc = g * cog + cog / 4 * 4; oc < (g + 1) * cog; oc++) fwd_channel(p, x, w, b, y, n, oc);
}

poet_status poet_conv2d_fwd_f32(const poet_conv_params *p, const float *restrict x, const float *restrict w,
                                const float *restrict b, float *restrict y) {
    if (!p || !x || !w || !y || !conv_ok(p)) return POET_ERR_ARG;
    const uint32_t cig = p->c_in / p->groups, cog = p->c_out / p->groups;
    const size_t plane_y = (size_t)p->oh * p->ow;
    if (cig == 0) return poet_conv2d_fwd_ref_f32(p, x, w, b, y);
    const taps_fn taps = taps_for(p);
    for (uint32_t n = 0; n < p->n; n++) {
        for (uint32_t g = 0; g < p->groups; g++) {
            if (taps) {
                fwd_taps(p, taps, x, w, b, y, n, g);
                continue;
            }
            uint32_t oc = g * cog;
            for (; oc + 4 <= (g + 1) * cog; oc += 4) {
                for (uint32_t r = 0; r < 4; r++) {
                    float *yp = y + ((size_t)n * p->c_out + oc + r) * plane_y;
                    const float v = b ? b[oc + r] : 0.0f;
                    for (size_t i = 0; i < plane_y; i++) yp[i] = v;
                }
                for (uint32_t oy = 0; oy < p->oh; oy++) fwd_rows(p, x, w, y, n, oc, g * cig, oy);
            }
            for (; oc < (g + 1) * cog; oc++) fwd_channel(p, x, w, b, y, n, oc);
        }
    }
    return POET_OK;
}

/* ---- input gradient: each tap scatters dy back; a tile is four input channels by four output positions ----- */
/* The output rows oy that tap ky reaches (iy inside the input) are tap_range(ky, sh, ph, h, oh). */
static void dx_channel(const poet_conv_params *p, const float *dy, const float *w, float *dx, uint32_t n,
                       uint32_t c) {
    const uint32_t cig = p->c_in / p->groups, cog = p->c_out / p->groups, g = c / cig, ic = c - g * cig;
    const uint32_t khkw = p->kh * p->kw;
    float *dxc = dx + ((size_t)n * p->c_in + c) * p->h * p->w;
    for (uint32_t ky = 0; ky < p->kh; ky++) {
        uint32_t oy0, oy1;
        tap_range(ky, p->sh, p->ph, p->h, p->oh, &oy0, &oy1);
        for (uint32_t kx = 0; kx < p->kw; kx++) {
            uint32_t ox0, ox1;
            tap_range(kx, p->sw, p->pw, p->w, p->ow, &ox0, &ox1);
            for (uint32_t oc = g * cog; oc < (g + 1) * cog; oc++) {
                const float wv = w[((size_t)oc * cig + ic) * khkw + (size_t)ky * p->kw + kx];
                const float *dyc = dy + ((size_t)n * p->c_out + oc) * p->oh * p->ow;
                for (uint32_t oy = oy0; oy < oy1; oy++) {
                    float *dr = dxc + (size_t)(oy * p->sh + ky - p->ph) * p->w + kx - p->pw;
                    const float *gr = dyc + (size_t)oy * p->ow;
                    for (uint32_t ox = ox0; ox < ox1; ox++) dr[(size_t)ox * p->sw] += wv * gr[ox];
                }
            }
        }
    }
}

poet_status poet_conv2d_dx_f32(const poet_conv_params *p, const float *restrict dy, const float *restrict w,
                               float *restrict dx) {
    if (!p || !dy || !w || !dx || !conv_ok(p)) return POET_ERR_ARG;
    const uint32_t cig = p->c_in / p->groups, cog = p->c_out / p->groups, khkw = p->kh * p->kw;
    const size_t plane_y = (size_t)p->oh * p->ow, plane_x = (size_t)p->h * p->w;
    memset(dx, 0, (size_t)p->n * p->c_in * plane_x * sizeof(float));
    if (cog == 0) return POET_OK;
    if (cog == 1 && p->sh == 1 && p->sw == 1 && plane_ok(p)) { /* depthwise, stride 1 */
        for (uint32_t n = 0; n < p->n; n++)
            for (uint32_t c = 0; c < p->c_in; c++) dx_plane(p, dy, w, dx, n, c);
        return POET_OK;
    }
    for (uint32_t n = 0; n < p->n; n++) {
        for (uint32_t g = 0; g < p->groups; g++) {
            uint32_t ic = 0;
            for (; ic + 4 <= cig; ic += 4) {
                const uint32_t c = g * cig + ic;
                /* weights of output channel g * cog, input channel ic, this tap; + khkw per input channel,
                 * + cig * khkw per output channel */
                const float *wg = w + ((size_t)g * cog * cig + ic) * khkw;
                const float *dyg = dy + ((size_t)n * p->c_out + g * cog) * plane_y;
                float *dxc = dx + ((size_t)n * p->c_in + c) * plane_x;
                for (uint32_t ky = 0; ky < p->kh; ky++) {
                    uint32_t oy0, oy1;
                    tap_range(ky, p->sh, p->ph, p->h, p->oh, &oy0, &oy1);
                    for (uint32_t kx = 0; kx < p->kw; kx++) {
                        uint32_t ox0, ox1;
                        tap_range(kx, p->sw, p->pw, p->w, p->ow, &ox0, &ox1);
                        const float *wt = wg + (size_t)ky * p->kw + kx;
                        for (uint32_t oy = oy0; oy < oy1; oy++) {
                            float *dr = dxc + (size_t)(oy * p->sh + ky - p->ph) * p->w + kx - p->pw;
                            const float *gr = dyg + (size_t)oy * p->ow;
                            uint32_t ox = ox0;
                            for (; ox + 4 <= ox1; ox += 4) {
                                float *d = dr + (size_t)ox * p->sw;
                                if (p->sw == 1) tile_wx(wt, khkw, (size_t)cig * khkw, gr + ox, 1, plane_y, cog, d, plane_x, 1);
                                else if (p->sw == 2) tile_wx(wt, khkw, (size_t)cig * khkw, gr + ox, 1, plane_y, cog, d, plane_x, 2);
                                else tile_wx(wt, khkw, (size_t)cig * khkw, gr + ox, 1, plane_y, cog, d, plane_x, p->sw);
                            }
                            for (; ox < ox1; ox++)
                                col_wx(wt, khkw, (size_t)cig * khkw, gr + ox, plane_y, cog, dr + (size_t)ox * p->sw, plane_x);
                        }
                    }
                }
            }
            for (; ic < cig; ic++) dx_channel(p, dy, w, dx, n, g * cig + ic);
        }
    }
    return POET_OK;
}

/* ---- weight gradient: per tap, a tile is four output by four input channels, summed over positions ------- */
static inline void dw_tile(const float *dy, size_t dyr, const float *x, size_t xr, uint32_t xs, uint32_t len,
                           float c[16]) {
    const float *d0 = dy, *d1 = dy + dyr, *d2 = dy + 2 * dyr, *d3 = dy + 3 * dyr;
    const float *x0 = x, *x1 = x + xr, *x2 = x + 2 * xr, *x3 = x + 3 * xr;
    float c00 = c[0], c01 = c[1], c02 = c[2], c03 = c[3], c10 = c[4], c11 = c[5], c12 = c[6], c13 = c[7];
    float c20 = c[8], c21 = c[9], c22 = c[10], c23 = c[11], c30 = c[12], c31 = c[13], c32 = c[14], c33 = c[15];
    for (uint32_t t = 0; t < len; t++) {
        const float a0 = *d0++, a1 = *d1++, a2 = *d2++, a3 = *d3++;
        const float b0 = *x0, b1 = *x1, b2 = *x2, b3 = *x3;
        x0 += xs, x1 += xs, x2 += xs, x3 += xs;
        POET_FMA16(a0, a1, a2, a3, b0, b1, b2, b3);
    }
    c[0] = c00, c[1] = c01, c[2] = c02, c[3] = c03, c[4] = c10, c[5] = c11, c[6] = c12, c[7] = c13;
    c[8] = c20, c[9] = c21, c[10] = c22, c[11] = c23, c[12] = c30, c[13] = c31, c[14] = c32, c[15] = c33;
}

/* One weight, the reference sum over positions with the tap's output ranges found once. */
static float dw_one(const poet_conv_params *p, const float *dy, const float *x, uint32_t oc, uint32_t c,
                    uint32_t ky, uint32_t kx) {
    uint32_t oy0, oy1, ox0, ox1;
    tap_range(ky, p->sh, p->ph, p->h, p->oh, &oy0, &oy1);
    tap_range(kx, p->sw, p->pw, p->w, p->ow, &ox0, &ox1);
    float acc = 0.0f;
    for (uint32_t n = 0; n < p->n; n++) {
        const float *dyc = dy + ((size_t)n * p->c_out + oc) * p->oh * p->ow;
        const float *xc = x + ((size_t)n * p->c_in + c) * p->h * p->w;
        for (uint32_t oy = oy0; oy < oy1; oy++) {
            const float *gr = dyc + (size_t)oy * p->ow;
            const float *xr = xc + (size_t)(oy * p->sh + ky - p->ph) * p->w + kx - p->pw;
            for (uint32_t ox = ox0; ox < ox1; ox++) acc += gr[ox] * xr[(size_t)ox * p->sw];
        }
    }
    return acc;
}

/* ---- what becomes of each finished weight gradient: stored (CONV2D_DW) or applied at once (CONV2D_DW_SGD) ----
 * The loops below hand every weight gradient to put() once it is complete (a tile's sums run over every image and
 * position in registers before they are written). CONV2D_DW stores it in dW; the fused CONV2D_DW_SGD applies it to
 * W right there (w -= lr g for plain SGD, else step() with weight decay and the momentum buffer), so only W (and
 * its buffer), x and dy are resident and no gradient buffer exists: a 64 x 64 x 3 x 3 layer's dW is 147 KB. The
 * update is the arithmetic of CONV2D_DW followed by SGD on the same floats: the weights are bit-identical. */
enum { DW_STORE = 0, DW_PLAIN = 1, DW_STEP = 2 };

/* MODE is a constant where inlined: DW_STORE out[i] = g (out is dW); DW_PLAIN out[i] -= lr g, DW_STEP step()
 * (out is W, v its momentum buffer or null). o: a local copy, so that its fields stay in registers. */
static inline __attribute__((always_inline)) void put(float *restrict out, float *restrict v, size_t i, float g,
                                                      const opt_step *o, const int MODE) {
    if (MODE == DW_STORE)
        out[i] = g;
    else if (MODE == DW_PLAIN)
        out[i] -= o->lr * g;
    else
        step(out, v, i, g, o);
}

/* Tap by tap, a tile of four output by four input channels summed over positions (dw_tile); the channels that do
 * not fill a tile, one weight at a time (dw_one: the same sum in the same order). (Depthwise layers go plane by
 * plane instead: dw_plane, in the callers.) */
static inline __attribute__((always_inline)) void dw_tiles(const poet_conv_params *p, const float *restrict dy,
                                                           const float *restrict x, float *restrict out,
                                                           float *restrict v, const opt_step *op, const int MODE) {
    const uint32_t cig = p->c_in / p->groups, cog = p->c_out / p->groups, khkw = p->kh * p->kw;
    const size_t plane_y = (size_t)p->oh * p->ow, plane_x = (size_t)p->h * p->w;
    const opt_step o = MODE == DW_STORE ? (opt_step){0.0f, 0.0f, 0.0f} : *op;
    for (uint32_t g = 0; g < p->groups; g++) {
        for (uint32_t oc = g * cog; oc < (g + 1) * cog; oc += 4) {
            const int oc_full = oc + 4 <= (g + 1) * cog;
            for (uint32_t ic = 0; ic < cig; ic += 4) {
                const int full = oc_full && ic + 4 <= cig;
                for (uint32_t ky = 0; ky < p->kh; ky++) {
                    for (uint32_t kx = 0; kx < p->kw; kx++) {
                        const size_t at = ((size_t)oc * cig + ic) * khkw + (size_t)ky * p->kw + kx;
                        if (!full) {
                            for (uint32_t r = 0; r < 4 && oc + r < (g + 1) * cog; r++)
                                for (uint32_t q = 0; q < 4 && ic + q < cig; q++)
                                    put(out, v, at + ((size_t)r * cig + q) * khkw,
                                        dw_one(p, dy, x, oc + r, g * cig + ic + q, ky, kx), &o, MODE);
                            continue;
                        }
                        uint32_t oy0, oy1, ox0, ox1;
                        tap_range(ky, p->sh, p->ph, p->h, p->oh, &oy0, &oy1);
                        tap_range(kx, p->sw, p->pw, p->w, p->ow, &ox0, &ox1);
                        float c[16] = {0};
                        for (uint32_t n = 0; n < p->n && ox1 > ox0; n++) {
                            for (uint32_t oy = oy0; oy < oy1; oy++) {
                                const float *gr = dy + (((size_t)n * p->c_out + oc) * p->oh + oy) * p->ow + ox0;
                                const float *xr = x + (((size_t)n * p->c_in + g * cig + ic) * p->h +
                                                       (oy * p->sh + ky - p->ph)) * p->w + (size_t)ox0 * p->sw + kx - p->pw;
                                if (p->sw == 1) dw_tile(gr, plane_y, xr, plane_x, 1, ox1 - ox0, c);
                                else dw_tile(gr, plane_y, xr, plane_x, p->sw, ox1 - ox0, c);
                            }
                        }
                        for (uint32_t r = 0; r < 4; r++)
                            for (uint32_t q = 0; q < 4; q++)
                                put(out, v, at + ((size_t)r * cig + q) * khkw, c[r * 4 + q], &o, MODE);
                    }
                }
            }
        }
    }
}

/* One function per use (the store keeps CONV2D_DW's registers and instruction count to itself, as plain SGD keeps
 * the update's), apart from the depthwise path's dw_plane (the stack holds one of the two frames at a time:
 * ARMv6-M boards have 1-2 KB). */
static __attribute__((noinline)) void dw_tiles_store(const poet_conv_params *p, const float *restrict dy,
                                                     const float *restrict x, float *restrict dw) {
    dw_tiles(p, dy, x, dw, NULL, NULL, DW_STORE);
}

static __attribute__((noinline)) void dw_tiles_plain(const poet_conv_params *p, const float *restrict dy,
                                                     const float *restrict x, float *restrict w, const opt_step *o) {
    dw_tiles(p, dy, x, w, NULL, o, DW_PLAIN);
}

static __attribute__((noinline)) void dw_tiles_step(const poet_conv_params *p, const float *restrict dy,
                                                    const float *restrict x, float *restrict w, float *restrict v,
                                                    const opt_step *o) {
    dw_tiles(p, dy, x, w, v, o, DW_STEP);
}

/* Depthwise: a channel's kh kw sums at a time (dw_plane), each a chunk for a sink (in W's memory order). */
static inline __attribute__((always_inline)) void dw_planes(const poet_conv_params *p, const float *restrict dy,
                                                            const float *restrict x, float *restrict w,
                                                            float *restrict v, const opt_step *op,
                                                            poet_grad_sink sink, void *ctx, const int MODE) {
    const uint32_t khkw = p->kh * p->kw;
    const opt_step o = *op;
    float acc[PLANE_KMAX * PLANE_KMAX];
    for (uint32_t oc = 0; oc < p->c_out; oc++) {
        dw_plane(p, dy, x, acc, oc);
        if (sink) sink(ctx, oc * khkw, acc, khkw);
        float *wc = w + (size_t)oc * khkw, *vc = v ? v + (size_t)oc * khkw : NULL;
        for (uint32_t i = 0; i < khkw; i++) put(wc, vc, i, acc[i], &o, MODE);
    }
}

static __attribute__((noinline)) void dw_planes_plain(const poet_conv_params *p, const float *restrict dy,
                                                      const float *restrict x, float *restrict w, const opt_step *o,
                                                      poet_grad_sink sink, void *ctx) {
    dw_planes(p, dy, x, w, NULL, o, sink, ctx, DW_PLAIN);
}

static __attribute__((noinline)) void dw_planes_step(const poet_conv_params *p, const float *restrict dy,
                                                     const float *restrict x, float *restrict w, float *restrict v,
                                                     const opt_step *o, poet_grad_sink sink, void *ctx) {
    dw_planes(p, dy, x, w, v, o, sink, ctx, DW_STEP);
}

/* One value, as the optimizer says (where a value's update is not the cost that matters). */
static void apply(float *restrict w, float *restrict v, size_t i, float g, const opt_step *o, int fast) {
    if (fast)
        put(w, v, i, g, o, DW_PLAIN);
    else
        put(w, v, i, g, o, DW_STEP);
}

/* With a sink (gradient capture), other than depthwise: output channel by output channel, in W's memory order,
 * POET_SGD_CHUNK weights at a time, each handed to the sink before it is applied. Each is dw_one's sum, which is
 * the tiles' sum in the same order, so the weights are bit-identical to those of the path without a sink.
 * (Slower than the tiles: only the steps that capture take it.) */
static __attribute__((noinline)) void dw_sgd_chunked(const poet_conv_params *p, const float *restrict dy,
                                                     const float *restrict x, float *restrict w, float *restrict v,
                                                     const opt_step *o, int fast, poet_grad_sink sink, void *ctx) {
    const uint32_t cig = p->c_in / p->groups, cog = p->c_out / p->groups, khkw = p->kh * p->kw, row = cig * khkw;
    float g[POET_SGD_CHUNK];
    for (uint32_t oc = 0; oc < p->c_out; oc++) {
        const uint32_t c0 = (oc / cog) * cig;
        for (uint32_t j0 = 0; j0 < row; j0 += POET_SGD_CHUNK) {
            const uint32_t cnt = row - j0 < POET_SGD_CHUNK ? row - j0 : POET_SGD_CHUNK;
            for (uint32_t q = 0; q < cnt; q++) {
                const uint32_t j = j0 + q, ic = j / khkw, t = j - ic * khkw;
                g[q] = dw_one(p, dy, x, oc, c0 + ic, t / p->kw, t % p->kw);
            }
            const size_t at = (size_t)oc * row + j0;
            sink(ctx, (uint32_t)at, g, cnt);
            for (uint32_t q = 0; q < cnt; q++) apply(w, v, at + q, g[q], o, fast);
        }
    }
}

poet_status poet_conv2d_dw_f32(const poet_conv_params *p, const float *restrict dy, const float *restrict x,
                               float *restrict dw) {
    if (!p || !dy || !x || !dw || !conv_ok(p)) return POET_ERR_ARG;
    if (plane_ok(p)) { /* one input channel per group (depthwise) */
        const uint32_t khkw = p->kh * p->kw;
        for (uint32_t oc = 0; oc < p->c_out; oc++) dw_plane(p, dy, x, dw + (size_t)oc * khkw, oc);
        return POET_OK;
    }
    dw_tiles_store(p, dy, x, dw);
    return POET_OK;
}

poet_status poet_conv2d_dw_sgd_f32(const poet_conv_params *p, float lr, const float *restrict dy,
                                   const float *restrict x, float *restrict w, float *restrict v,
                                   poet_grad_sink sink, void *ctx) {
    if (!p || !dy || !x || !w || !conv_ok(p) || (p->momentum != 0.0f && !v)) return POET_ERR_ARG;
    const opt_step o = {lr, p->momentum, p->weight_decay};
    const int fast = plain(p->momentum, p->weight_decay, v);
    if (plane_ok(p)) { /* one input channel per group (depthwise) */
        if (fast)
            dw_planes_plain(p, dy, x, w, &o, sink, ctx);
        else
            dw_planes_step(p, dy, x, w, v, &o, sink, ctx);
    } else if (sink) {
        dw_sgd_chunked(p, dy, x, w, v, &o, fast, sink, ctx);
    } else if (fast) {
        dw_tiles_plain(p, dy, x, w, &o);
    } else {
        dw_tiles_step(p, dy, x, w, v, &o);
    }
    note_range(w, (size_t)p->c_out * (p->c_in / p->groups) * p->kh * p->kw); /* finiteness check: step.h */
    return POET_OK;
}

/* The bias: chunks of POET_SGD_CHUNK channels, each db_one's sum (CONV2D_DB's), to the sink, then applied. */
poet_status poet_conv2d_db_sgd_f32(const poet_conv_params *p, float lr, const float *restrict dy, float *restrict b,
                                   float *restrict v, poet_grad_sink sink, void *ctx) {
    if (!p || !dy || !b || (p->momentum != 0.0f && !v)) return POET_ERR_ARG;
    const opt_step o = {lr, p->momentum, p->weight_decay};
    const int fast = plain(p->momentum, p->weight_decay, v);
    float g[POET_SGD_CHUNK];
    for (uint32_t c0 = 0; c0 < p->c_out; c0 += POET_SGD_CHUNK) {
        const uint32_t cnt = p->c_out - c0 < POET_SGD_CHUNK ? p->c_out - c0 : POET_SGD_CHUNK;
        for (uint32_t q = 0; q < cnt; q++) g[q] = db_one(p, dy, c0 + q);
        if (sink) sink(ctx, c0, g, cnt);
        for (uint32_t q = 0; q < cnt; q++) apply(b, v, c0 + q, g[q], &o, fast);
    }
    note_range(b, p->c_out);
    return POET_OK;
}

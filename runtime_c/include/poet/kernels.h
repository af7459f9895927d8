/* Kernels: one signature for all (params first, inputs const, output last; a bad shape returns a status).
 * Kernel ids come from POET_KERNELS, the single list that the interpreter's dispatch and poetc's Python side
 * (which parses this file) both use. Adding an op: docs/adding-an-op.md. */
#ifndef POET_KERNELS_H
#define POET_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#if defined(__cplusplus) && !defined(restrict) /* C++ (an Arduino sketch) includes these prototypes too */
#define restrict __restrict__
#endif

/*  X(NAME, id, params family) */
#define POET_KERNELS(X)                 \
    X(LINEAR_FWD, 1, linear)            \
    X(LINEAR_DX, 2, linear)             \
    X(LINEAR_DW, 3, linear)             \
    X(BIAS_GRAD, 4, linear)             \
    X(RELU_FWD, 5, eltwise)             \
    X(RELU_BWD, 6, eltwise)             \
    X(ADD, 7, eltwise)                  \
    X(SOFTMAX_XENT_FWD, 8, xent)        \
    X(SOFTMAX_XENT_BWD, 9, xent)        \
    X(SGD, 10, sgd)                     \
    X(CONV2D_FWD, 11, conv)             \
    X(CONV2D_DX, 12, conv)              \
    X(CONV2D_DW, 13, conv)              \
    X(CONV2D_DB, 14, conv)              \
    X(MAXPOOL_FWD, 15, pool)            \
    X(MAXPOOL_BWD, 16, pool)            \
    X(AVGPOOL_FWD, 17, pool)            \
    X(AVGPOOL_BWD, 18, pool)            \
    X(BN_STATS, 19, bn)                 \
    X(BN_APPLY, 20, bn)                 \
    X(BN_DX, 21, bn)                    \
    X(BN_DGAMMA, 22, bn)                \
    X(BN_DBETA, 23, bn)                 \
    X(BN_RUNNING, 24, bn)               \
    X(CLIP_FWD, 25, act)                \
    X(CLIP_BWD, 26, act)                \
    X(SIGMOID_FWD, 27, act)             \
    X(SIGMOID_BWD, 28, act)             \
    X(TANH_FWD, 29, act)                \
    X(TANH_BWD, 30, act)                \
    X(GELU_FWD, 31, act)                \
    X(GELU_BWD, 32, act)                \
    X(ERF_FWD, 33, act)                 \
    X(ERF_BWD, 34, act)                 \
    X(AFFINE, 35, act)                  \
    X(SQRT_FWD, 36, act)                \
    X(SQRT_BWD, 37, act)                \
    X(POW_FWD, 38, act)                 \
    X(POW_BWD, 39, act)                 \
    X(SOFTMAX_FWD, 40, softmax)         \
    X(SOFTMAX_BWD, 41, softmax)         \
    X(LN_FWD, 42, ln)                   \
    X(LN_DX, 43, ln)                    \
    X(LN_DGAMMA, 44, ln)                \
    X(MATMUL, 45, matmul)               \
    X(BINARY, 46, bcast)                \
    X(REDUCE, 47, bcast)                \
    X(STRIDED, 48, layout)              \
    X(SCATTER, 49, layout)              \
    X(CONCAT, 50, concat)               \
    X(LINEAR_DW_SGD, 51, linear)        \
    X(BIAS_GRAD_SGD, 52, linear)        \
    X(DEQUANT_U8, 53, quant)            \
    X(BN_FROZEN, 54, bn)                \
    X(BN_FROZEN_DX, 55, bn)             \
    X(CONV2D_DW_SGD, 56, conv)          \
    X(CONV2D_DB_SGD, 57, conv)

typedef enum {
#define POET_KERNEL_ENUM_(name, id, fam) POET_K_##name = id,
    POET_KERNELS(POET_KERNEL_ENUM_)
#undef POET_KERNEL_ENUM_
} poet_kernel_id;

/* ---- params structs (fields are filled by name from generated code) ---------------------------------- */
typedef struct {
    uint32_t m, k, n; /* x is [m, k]; W' = trans_w ? W^T : W is [k, n]; y is [m, n] */
    uint32_t trans_w;
    float alpha, beta; /* y = alpha * x W' + beta * b */
    float momentum, weight_decay; /* LINEAR_DW_SGD, BIAS_GRAD_SGD: the optimizer (as poet_sgd_params); else 0 */
} poet_linear_params;

typedef struct {
    uint32_t n;
} poet_eltwise_params;

typedef struct {
    uint32_t m, c; /* logits [m, c], labels [m] */
} poet_xent_params;

/* PyTorch's SGD (dampening 0, no Nesterov): g' = g + weight_decay w; with a momentum buffer v:
 * v = momentum v + g', w -= lr v; without one (momentum 0): w -= lr g'. */
typedef struct {
    uint32_t n;
    float momentum, weight_decay;
} poet_sgd_params;

#define POET_MAX_RANK 6 /* loop dimensions of strided and broadcasting kernels (after merging) */

typedef struct {
    uint32_t n, c_in, h, w;   /* x is [n, c_in, h, w] */
    uint32_t c_out, oh, ow;   /* y is [n, c_out, oh, ow] */
    uint32_t kh, kw, sh, sw;  /* weight [c_out, c_in / groups, kh, kw]; strides */
    uint32_t ph, pw;          /* zero padding before the first row / column (after the last: from oh, ow) */
    uint32_t groups;
    float momentum, weight_decay; /* CONV2D_DW_SGD, CONV2D_DB_SGD: the optimizer (as poet_sgd_params); else 0 */
} poet_conv_params;

typedef struct {
    uint32_t nc, h, w, oh, ow; /* nc planes of [h, w] -> [oh, ow] */
    uint32_t kh, kw, sh, sw, ph, pw;
    uint32_t count_pad; /* average: divide by the window size (1) or by its non-padding elements (0) */
} poet_pool_params;

typedef struct {
    uint32_t n, c, hw; /* x is [n, c, hw] */
    float eps;
    float momentum; /* running = (1 - momentum) running + momentum batch (PyTorch's convention) */
    float unbias;   /* m / (m - 1), m = n hw: the running variance is the unbiased one */
    uint32_t which; /* BN_RUNNING: 0 running mean, 1 running variance */
} poet_bn_params;

typedef struct {
    uint32_t n;
    float a, b; /* clip bounds; affine scale and offset; pow exponent (a) */
} poet_act_params;

typedef struct {
    uint32_t outer, n, inner; /* softmax over n, x viewed as [outer, n, inner] */
} poet_softmax_params;

typedef struct {
    uint32_t m, d; /* x viewed as [m, d], normalised over d */
    float eps;
} poet_ln_params;

typedef struct {
    uint32_t batch, m, k, n; /* y[b] = alpha op(a[b]) op(b[b]), op(a) [m, k], op(b) [k, n] */
    uint32_t ta, tb;         /* transpose a (stored [k, m]) / b (stored [n, k]) */
    uint32_t sa, sb, so;     /* batch strides in elements; so = 0: sum the batch into one [m, n] */
    float alpha;
} poet_matmul_params;

typedef struct {
    uint32_t op;   /* BINARY: 0 add, 1 sub, 2 mul, 3 div;  REDUCE: 0 x, 1 x u, 2 x / u, 3 -x u / v^2 */
    uint32_t rank; /* loop over shape[0..rank) */
    uint32_t shape[POET_MAX_RANK];
    uint32_t sa[POET_MAX_RANK]; /* BINARY: a's strides; REDUCE: the output's strides (0 on reduced axes) */
    uint32_t sb[POET_MAX_RANK]; /* BINARY: b's strides; REDUCE: u's strides */
    uint32_t sc[POET_MAX_RANK]; /* REDUCE: v's strides */
    float scale;                /* REDUCE: the sums are multiplied by it */
} poet_bcast_params;

typedef struct {
    uint32_t rank;
    uint32_t shape[POET_MAX_RANK];  /* STRIDED: y's loop shape; SCATTER: x's */
    uint32_t stride[POET_MAX_RANK]; /* of the strided side, in elements */
    uint32_t base;                  /* offset of the first element on the strided side */
    float scale;
    uint32_t n_src, n_dst; /* elements of the input and the output */
} poet_layout_params;

typedef struct {
    uint32_t outer, n_in;
    uint32_t part[4]; /* elements each input contributes per outer index */
} poet_concat_params;

/* ---- linear.c ------------------------------------------------------------------------------------------ */
poet_status poet_linear_fwd_f32(const poet_linear_params *p, const float *restrict x, const float *restrict w,
                                const float *restrict b, float *restrict y);
poet_status poet_linear_dx_f32(const poet_linear_params *p, const float *restrict dy, const float *restrict w,
                               float *restrict dx);
poet_status poet_linear_dw_f32(const poet_linear_params *p, const float *restrict dy, const float *restrict x,
                               float *restrict dw);
poet_status poet_bias_grad_f32(const poet_linear_params *p, const float *restrict dy, float *restrict db);
/* The reference versions the dispatched kernels above are tested against (plain loops). */
poet_status poet_linear_fwd_ref_f32(const poet_linear_params *p, const float *restrict x, const float *restrict w,
                                    const float *restrict b, float *restrict y);
poet_status poet_linear_dx_ref_f32(const poet_linear_params *p, const float *restrict dy,
                                   const float *restrict w, float *restrict dx);
poet_status poet_linear_dw_ref_f32(const poet_linear_params *p, const float *restrict dy,
                                   const float *restrict x, float *restrict dw);

/* ---- eltwise.c ----------------------------------------------------------------------------------------- */
poet_status poet_relu_fwd_f32(const poet_eltwise_params *p, const float *restrict x, float *restrict y);
poet_status poet_relu_bwd_f32(const poet_eltwise_params *p, const float *restrict y, const float *restrict dy,
                              float *restrict dx);
poet_status poet_add_f32(const poet_eltwise_params *p, const float *restrict a, const float *restrict b,
                         float *restrict y);

/* ---- xent.c -------------------------------------------------------------------------------------------- */
poet_status poet_softmax_xent_fwd_f32(const poet_xent_params *p, const float *restrict logits,
                                      const int32_t *restrict labels, float *restrict loss);
poet_status poet_softmax_xent_bwd_f32(const poet_xent_params *p, const float *restrict logits,
                                      const int32_t *restrict labels, float *restrict dlogits);

/* ---- conv.c -------------------------------------------------------------------------------------------- */
poet_status poet_conv2d_fwd_f32(const poet_conv_params *p, const float *restrict x, const float *restrict w,
                                const float *restrict b, float *restrict y);
poet_status poet_conv2d_dx_f32(const poet_conv_params *p, const float *restrict dy, const float *restrict w,
                               float *restrict dx);
poet_status poet_conv2d_dw_f32(const poet_conv_params *p, const float *restrict dy, const float *restrict x,
                               float *restrict dw);
poet_status poet_conv2d_db_f32(const poet_conv_params *p, const float *restrict dy, float *restrict db);
/* The reference versions the dispatched kernels above are tested against (plain loops). */
poet_status poet_conv2d_fwd_ref_f32(const poet_conv_params *p, const float *restrict x, const float *restrict w,
                                    const float *restrict b, float *restrict y);
poet_status poet_conv2d_dx_ref_f32(const poet_conv_params *p, const float *restrict dy, const float *restrict w,
                                   float *restrict dx);
poet_status poet_conv2d_dw_ref_f32(const poet_conv_params *p, const float *restrict dy, const float *restrict x,
                                   float *restrict dw);

/* ---- pool.c -------------------------------------------------------------------------------------------- */
poet_status poet_maxpool_fwd_f32(const poet_pool_params *p, const float *restrict x, float *restrict y);
poet_status poet_maxpool_bwd_f32(const poet_pool_params *p, const float *restrict x, const float *restrict dy,
                                 float *restrict dx);
poet_status poet_avgpool_fwd_f32(const poet_pool_params *p, const float *restrict x, float *restrict y);
poet_status poet_avgpool_bwd_f32(const poet_pool_params *p, const float *restrict dy, float *restrict dx);

/* ---- bn.c ---------------------------------------------------------------------------------------------- */
poet_status poet_bn_stats_f32(const poet_bn_params *p, const float *restrict x, const float *restrict rmean,
                              const float *restrict rvar, const float *restrict flag, float *restrict stats);
poet_status poet_bn_apply_f32(const poet_bn_params *p, const float *restrict x, const float *restrict stats,
                              const float *restrict gamma, const float *restrict beta, float *restrict y);
poet_status poet_bn_dx_f32(const poet_bn_params *p, const float *restrict dy, const float *restrict x,
                           const float *restrict stats, const float *restrict gamma, float *restrict dx);
poet_status poet_bn_dgamma_f32(const poet_bn_params *p, const float *restrict dy, const float *restrict x,
                               const float *restrict stats, float *restrict dgamma);
poet_status poet_bn_dbeta_f32(const poet_bn_params *p, const float *restrict dy, float *restrict dbeta);
/* In place: a running statistic from the batch's statistics. */
poet_status poet_bn_running_f32(const poet_bn_params *p, const float *restrict stats, float *restrict state);
/* A frozen BatchNorm on its running statistics (BN_APPLY's arithmetic), and its input gradient dy gamma r. */
poet_status poet_bn_frozen_f32(const poet_bn_params *p, const float *restrict x, const float *restrict rmean,
                               const float *restrict rvar, const float *restrict gamma, const float *restrict beta,
                               float *restrict y);
poet_status poet_bn_frozen_dx_f32(const poet_bn_params *p, const float *restrict dy, const float *restrict rvar,
                                  const float *restrict gamma, float *restrict dx);

/* ---- act.c --------------------------------------------------------------------------------------------- */
poet_status poet_clip_fwd_f32(const poet_act_params *p, const float *restrict x, float *restrict y);
poet_status poet_clip_bwd_f32(const poet_act_params *p, const float *restrict y, const float *restrict dy,
                              float *restrict dx);
poet_status poet_sigmoid_fwd_f32(const poet_act_params *p, const float *restrict x, float *restrict y);
poet_status poet_sigmoid_bwd_f32(const poet_act_params *p, const float *restrict y, const float *restrict dy,
                                 float *restrict dx);
poet_status poet_tanh_fwd_f32(const poet_act_params *p, const float *restrict x, float *restrict y);
poet_status poet_tanh_bwd_f32(const poet_act_params *p, const float *restrict y, const float *restrict dy,
                              float *restrict dx);
poet_status poet_gelu_fwd_f32(const poet_act_params *p, const float *restrict x, float *restrict y);
poet_status poet_gelu_bwd_f32(const poet_act_params *p, const float *restrict x, const float *restrict dy,
                              float *restrict dx);
poet_status poet_erf_fwd_f32(const poet_act_params *p, const float *restrict x, float *restrict y);
poet_status poet_erf_bwd_f32(const poet_act_params *p, const float *restrict x, const float *restrict dy,
                             float *restrict dx);
poet_status poet_affine_f32(const poet_act_params *p, const float *restrict x, float *restrict y);
poet_status poet_sqrt_fwd_f32(const poet_act_params *p, const float *restrict x, float *restrict y);
poet_status poet_sqrt_bwd_f32(const poet_act_params *p, const float *restrict y, const float *restrict dy,
                              float *restrict dx);
poet_status poet_pow_fwd_f32(const poet_act_params *p, const float *restrict x, float *restrict y);
poet_status poet_pow_bwd_f32(const poet_act_params *p, const float *restrict x, const float *restrict dy,
                             float *restrict dx);

/* ---- softmax.c ----------------------------------------------------------------------------------------- */
poet_status poet_softmax_fwd_f32(const poet_softmax_params *p, const float *restrict x, float *restrict y);
poet_status poet_softmax_bwd_f32(const poet_softmax_params *p, const float *restrict y, const float *restrict dy,
                                 float *restrict dx);

/* ---- layernorm.c --------------------------------------------------------------------------------------- */
poet_status poet_ln_fwd_f32(const poet_ln_params *p, const float *restrict x, const float *restrict gamma,
                            const float *restrict beta, float *restrict y);
poet_status poet_ln_dx_f32(const poet_ln_params *p, const float *restrict dy, const float *restrict x,
                           const float *restrict gamma, float *restrict dx);
poet_status poet_ln_dgamma_f32(const poet_ln_params *p, const float *restrict dy, const float *restrict x,
                               float *restrict dgamma);

/* ---- matmul.c ------------------------------------------------------------------------------------------ */
poet_status poet_matmul_f32(const poet_matmul_params *p, const float *restrict a, const float *restrict b,
                            float *restrict y);

/* ---- bcast.c ------------------------------------------------------------------------------------------- */
poet_status poet_binary_f32(const poet_bcast_params *p, const float *restrict a, const float *restrict b,
                            float *restrict y);
/* u and v may be NULL when the mode does not read them. */
poet_status poet_reduce_f32(const poet_bcast_params *p, const float *restrict x, const float *restrict u,
                            const float *restrict v, float *restrict y);

/* ---- layout.c ------------------------------------------------------------------------------------------ */
poet_status poet_strided_f32(const poet_layout_params *p, const float *restrict x, float *restrict y);
poet_status poet_scatter_f32(const poet_layout_params *p, const float *restrict x, float *restrict y);
/* Unused inputs are NULL. */
poet_status poet_concat_f32(const poet_concat_params *p, const float *restrict x0, const float *restrict x1,
                            const float *restrict x2, const float *restrict x3, float *restrict y);

/* ---- sgd.c --------------------------------------------------------------------------------------------- */
/* In place: the step of w (and of its momentum buffer v, NULL for plain SGD) with gradient g (poet_sgd_params).
 * A non-zero momentum needs v. */
poet_status poet_sgd_f32(const poet_sgd_params *p, float lr, const float *restrict g, float *restrict w,
                         float *restrict v);

/* ---- quant.c ------------------------------------------------------------------------------------------- */
typedef struct {
    uint32_t n;
    float scale; /* y = scale * q */
} poet_quant_params;

/* An input stored as bytes becomes floats: y = scale * q (one rounding, with or without FMA). */
poet_status poet_dequant_u8_f32(const poet_quant_params *p, const uint8_t *restrict q, float *restrict y);

/* Fused weight gradient + SGD: the gradient is computed a chunk at a time and applied at once, so it never
 * occupies RAM. A sink, when given, sees every chunk of the raw gradient first (element offset into the
 * parameter, values; in the parameter's memory order), before weight decay and momentum. The step is
 * poet_sgd_f32's, with the momentum and weight decay of the params (linear or conv) and the optional momentum
 * buffer v (NULL for plain SGD). */
typedef void (*poet_grad_sink)(void *ctx, uint32_t offset, const float *g, uint32_t count);
#define POET_SGD_CHUNK 32
/* gradient alpha * (dy^T x) in W's layout (trans_w: W is [n, k]; else [k, n]) */
poet_status poet_linear_dw_sgd_f32(const poet_linear_params *p, float lr, const float *restrict dy,
                                   const float *restrict x, float *restrict w, float *restrict v,
                                   poet_grad_sink sink, void *ctx);
/* gradient beta * column sums of dy */
poet_status poet_bias_grad_sgd_f32(const poet_linear_params *p, float lr, const float *restrict dy,
                                   float *restrict b, float *restrict v, poet_grad_sink sink, void *ctx);
/* conv.c: the weight gradient of CONV2D_DW in W's layout (OIHW), with the conv params' momentum and weight decay */
poet_status poet_conv2d_dw_sgd_f32(const poet_conv_params *p, float lr, const float *restrict dy,
                                   const float *restrict x, float *restrict w, float *restrict v,
                                   poet_grad_sink sink, void *ctx);
/* conv.c: the bias gradient of CONV2D_DB (dy summed over images and positions per output channel) */
poet_status poet_conv2d_db_sgd_f32(const poet_conv_params *p, float lr, const float *restrict dy,
                                   float *restrict b, float *restrict v, poet_grad_sink sink, void *ctx);

#endif

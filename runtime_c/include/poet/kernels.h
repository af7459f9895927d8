/* Kernels: one signature for all (params first, inputs const, output last; a bad shape returns a status).
 * Kernel ids come from POET_KERNELS, the single list that the interpreter's dispatch and poetc's Python side
 * (which parses this file) both use. Adding an op: docs/adding-an-op.md. */
#ifndef POET_KERNELS_H
#define POET_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

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
    X(SGD, 10, sgd)

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
} poet_linear_params;

typedef struct {
    uint32_t n;
} poet_eltwise_params;

typedef struct {
    uint32_t m, c; /* logits [m, c], labels [m] */
} poet_xent_params;

typedef struct {
    uint32_t n;
} poet_sgd_params;

/* ---- linear.c ------------------------------------------------------------------------------------------ */
poet_status poet_linear_fwd_f32(const poet_linear_params *p, const float *restrict x, const float *restrict w,
                                const float *restrict b, float *restrict y);
poet_status poet_linear_dx_f32(const poet_linear_params *p, const float *restrict dy, const float *restrict w,
                               float *restrict dx);
poet_status poet_linear_dw_f32(const poet_linear_params *p, const float *restrict dy, const float *restrict x,
                               float *restrict dw);
poet_status poet_bias_grad_f32(const poet_linear_params *p, const float *restrict dy, float *restrict db);

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

/* ---- sgd.c --------------------------------------------------------------------------------------------- */
/* In place: w -= lr * g. */
poet_status poet_sgd_f32(const poet_sgd_params *p, float lr, const float *restrict g, float *restrict w);

#endif

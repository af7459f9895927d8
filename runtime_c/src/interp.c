/* The schedule interpreter: executes a program of RUN / PAGE_OUT / PAGE_IN / FREE instructions. */
#include <math.h>
#include <string.h>

#include "poet/poet.h"
#include "poet/port.h"
#include "poet/step.h"

#define F32(i) ((float *)m->loc[nd->in[i]])
#define I32(i) ((const int32_t *)m->loc[nd->in[i]])
#define OUT ((float *)m->loc[nd->out])
#define OPT(i) (nd->n_in > (i) ? F32(i) : NULL)

/* Adapts a fused kernel's per-chunk gradient sink to the run's gradient hook. */
typedef struct {
    poet_grad_hook hook;
    void *ctx;
    uint16_t param;
} grad_sink_ctx;

static void grad_sink(void *vctx, uint32_t offset, const float *g, uint32_t count) {
    const grad_sink_ctx *c = (const grad_sink_ctx *)vctx;
    c->hook(c->ctx, c->param, 4u * offset, g, 4u * count);
}

poet_status poet_dispatch(const poet_model *m, uint16_t node, float lr, poet_grad_hook hook, void *hook_ctx) {
    const poet_node *nd = &m->nodes[node];
    for (uint16_t i = 0; i < nd->n_in; i++)
        if (m->loc[nd->in[i]] == NULL) return POET_ERR_NOT_RESIDENT;
    switch ((poet_kernel_id)nd->kernel) {
    case POET_K_LINEAR_FWD:
        return poet_linear_fwd_f32(&m->linear[nd->params], F32(0), F32(1), nd->n_in > 2 ? F32(2) : NULL, OUT);
    case POET_K_LINEAR_DX:
        return poet_linear_dx_f32(&m->linear[nd->params], F32(0), F32(1), OUT);
    case POET_K_LINEAR_DW:
        return poet_linear_dw_f32(&m->linear[nd->params], F32(0), F32(1), OUT);
    case POET_K_BIAS_GRAD:
        return poet_bias_grad_f32(&m->linear[nd->params], F32(0), OUT);
    case POET_K_RELU_FWD:
        return poet_relu_fwd_f32(&m->eltwise[nd->params], F32(0), OUT);
    case POET_K_RELU_BWD:
        return poet_relu_bwd_f32(&m->eltwise[nd->params], F32(0), F32(1), OUT);
    case POET_K_ADD:
        return poet_add_f32(&m->eltwise[nd->params], F32(0), F32(1), OUT);
    case POET_K_SOFTMAX_XENT_FWD:
        return poet_softmax_xent_fwd_f32(&m->xent[nd->params], F32(0), I32(1), OUT);
    case POET_K_SOFTMAX_XENT_BWD:
        return poet_softmax_xent_bwd_f32(&m->xent[nd->params], F32(0), I32(1), OUT);
    case POET_K_SGD:
        if (hook) hook(hook_ctx, nd->in[0], 0, F32(1), m->tensors[nd->in[1]].bytes);
        return poet_sgd_f32(&m->sgd[nd->params], lr, F32(1), F32(0), OPT(2));
    case POET_K_DEQUANT_U8:
        return poet_dequant_u8_f32(&m->quant[nd->params], (const uint8_t *)m->loc[nd->in[0]], OUT);
    case POET_K_LINEAR_DW_SGD: {
        grad_sink_ctx sc = {hook, hook_ctx, nd->in[2]};
        return poet_linear_dw_sgd_f32(&m->linear[nd->params], lr, F32(0), F32(1), F32(2), OPT(3),
                                      hook ? grad_sink : NULL, &sc);
    }
    case POET_K_BIAS_GRAD_SGD: {
        grad_sink_ctx sc = {hook, hook_ctx, nd->in[1]};
        return poet_bias_grad_sgd_f32(&m->linear[nd->params], lr, F32(0), F32(1), OPT(2), hook ? grad_sink : NULL,
                                      &sc);
    }
    case POET_K_CONV2D_FWD:
        return poet_conv2d_fwd_f32(&m->conv[nd->params], F32(0), F32(1), OPT(2), OUT);
    case POET_K_CONV2D_DX:
        return poet_conv2d_dx_f32(&m->conv[nd->params], F32(0), F32(1), OUT);
    case POET_K_CONV2D_DW:
        return poet_conv2d_dw_f32(&m->conv[nd->params], F32(0), F32(1), OUT);
    case POET_K_CONV2D_DB:
        return poet_conv2d_db_f32(&m->conv[nd->params], F32(0), OUT);
    case POET_K_CONV2D_DW_SGD: {
        grad_sink_ctx sc = {hook, hook_ctx, nd->in[2]};
        return poet_conv2d_dw_sgd_f32(&m->conv[nd->params], lr, F32(0), F32(1), F32(2), OPT(3),
                                      hook ? grad_sink : NULL, &sc);
    }
    case POET_K_CONV2D_DB_SGD: {
        grad_sink_ctx sc = {hook, hook_ctx, nd->in[1]};
        return poet_conv2d_db_sgd_f32(&m->conv[nd->params], lr, F32(0), F32(1), OPT(2), hook ? grad_sink : NULL,
                                      &sc);
    }
    case POET_K_MAXPOOL_FWD:
        return poet_maxpool_fwd_f32(&m->pool[nd->params], F32(0), OUT);
    case POET_K_MAXPOOL_BWD:
        return poet_maxpool_bwd_f32(&m->pool[nd->params], F32(0), F32(1), OUT);
    case POET_K_AVGPOOL_FWD:
        return poet_avgpool_fwd_f32(&m->pool[nd->params], F32(0), OUT);
    case POET_K_AVGPOOL_BWD:
        return poet_avgpool_bwd_f32(&m->pool[nd->params], F32(0), OUT);
    case POET_K_BN_STATS:
        return poet_bn_stats_f32(&m->bn[nd->params], F32(0), F32(1), F32(2), F32(3), OUT);
    case POET_K_BN_APPLY:
        return poet_bn_apply_f32(&m->bn[nd->params], F32(0), F32(1), F32(2), F32(3), OUT);
    case POET_K_BN_DX:
        return poet_bn_dx_f32(&m->bn[nd->params], F32(0), F32(1), F32(2), F32(3), OUT);
    case POET_K_BN_DGAMMA:
        return poet_bn_dgamma_f32(&m->bn[nd->params], F32(0), F32(1), F32(2), OUT);
    case POET_K_BN_DBETA:
        return poet_bn_dbeta_f32(&m->bn[nd->params], F32(0), OUT);
    case POET_K_BN_RUNNING: /* in place: input 0 is the running statistic */
        return poet_bn_running_f32(&m->bn[nd->params], F32(1), F32(0));
    case POET_K_BN_FROZEN:
        return poet_bn_frozen_f32(&m->bn[nd->params], F32(0), F32(1), F32(2), F32(3), F32(4), OUT);
    case POET_K_BN_FROZEN_DX:
        return poet_bn_frozen_dx_f32(&m->bn[nd->params], F32(0), F32(1), F32(2), OUT);
    case POET_K_CLIP_FWD:
        return poet_clip_fwd_f32(&m->act[nd->params], F32(0), OUT);
    case POET_K_CLIP_BWD:
        return poet_clip_bwd_f32(&m->act[nd->params], F32(0), F32(1), OUT);
    case POET_K_SIGMOID_FWD:
        return poet_sigmoid_fwd_f32(&m->act[nd->params], F32(0), OUT);
    case POET_K_SIGMOID_BWD:
        return poet_sigmoid_bwd_f32(&m->act[nd->params], F32(0), F32(1), OUT);
    case POET_K_TANH_FWD:
        return poet_tanh_fwd_f32(&m->act[nd->params], F32(0), OUT);
    case POET_K_TANH_BWD:
        return poet_tanh_bwd_f32(&m->act[nd->params], F32(0), F32(1), OUT);
    case POET_K_GELU_FWD:
        return poet_gelu_fwd_f32(&m->act[nd->params], F32(0), OUT);
    case POET_K_GELU_BWD:
        return poet_gelu_bwd_f32(&m->act[nd->params], F32(0), F32(1), OUT);
    case POET_K_ERF_FWD:
        return poet_erf_fwd_f32(&m->act[nd->params], F32(0), OUT);
    case POET_K_ERF_BWD:
        return poet_erf_bwd_f32(&m->act[nd->params], F32(0), F32(1), OUT);
    case POET_K_AFFINE:
        return poet_affine_f32(&m->act[nd->params], F32(0), OUT);
    case POET_K_SQRT_FWD:
        return poet_sqrt_fwd_f32(&m->act[nd->params], F32(0), OUT);
    case POET_K_SQRT_BWD:
        return poet_sqrt_bwd_f32(&m->act[nd->params], F32(0), F32(1), OUT);
    case POET_K_POW_FWD:
        return poet_pow_fwd_f32(&m->act[nd->params], F32(0), OUT);
    case POET_K_POW_BWD:
        return poet_pow_bwd_f32(&m->act[nd->params], F32(0), F32(1), OUT);
    case POET_K_SOFTMAX_FWD:
        return poet_softmax_fwd_f32(&m->softmax[nd->params], F32(0), OUT);
    case POET_K_SOFTMAX_BWD:
        return poet_softmax_bwd_f32(&m->softmax[nd->params], F32(0), F32(1), OUT);
    case POET_K_LN_FWD:
        return poet_ln_fwd_f32(&m->ln[nd->params], F32(0), F32(1), OPT(2), OUT);
    case POET_K_LN_DX:
        return poet_ln_dx_f32(&m->ln[nd->params], F32(0), F32(1), F32(2), OUT);
    case POET_K_LN_DGAMMA:
        return poet_ln_dgamma_f32(&m->ln[nd->params], F32(0), F32(1), OUT);
    case POET_K_MATMUL:
        return poet_matmul_f32(&m->matmul[nd->params], F32(0), F32(1), OUT);
    case POET_K_BINARY:
        return poet_binary_f32(&m->bcast[nd->params], F32(0), F32(1), OUT);
    case POET_K_REDUCE:
        return poet_reduce_f32(&m->bcast[nd->params], F32(0), OPT(1), OPT(2), OUT);
    case POET_K_STRIDED:
        return poet_strided_f32(&m->layout[nd->params], F32(0), OUT);
    case POET_K_SCATTER:
        return poet_scatter_f32(&m->layout[nd->params], F32(0), OUT);
    case POET_K_CONCAT:
        return poet_concat_f32(&m->concat[nd->params], F32(0), OPT(1), OPT(2), OPT(3), OUT);
    }
    return POET_ERR_PROGRAM;
}

/* Elements of a broadcast operand (or a reduction's output): one past its largest offset in the loop. */
static uint32_t bcast_extent(const poet_bcast_params *p, const uint32_t *s) {
    uint32_t e = 1;
    for (uint32_t k = 0; k < p->rank && k < POET_MAX_RANK; k++) e += (p->shape[k] - 1) * s[k];
    return e;
}

/* Expected element counts of a node's inputs (in[0..n_in)) and output, from its kernel's params. */
static poet_status expected_sizes(const poet_model *m, const poet_node *nd, uint32_t *in, uint32_t *out) {
    switch ((poet_kernel_id)nd->kernel) {
    case POET_K_LINEAR_FWD:
    case POET_K_LINEAR_DX:
    case POET_K_LINEAR_DW:
    case POET_K_BIAS_GRAD: {
        const poet_linear_params *p = &m->linear[nd->params];
        uint32_t mk = p->m * p->k, kn = p->k * p->n, mn = p->m * p->n;
        if (nd->kernel == POET_K_LINEAR_FWD) { in[0] = mk; in[1] = kn; in[2] = p->n; *out = mn; }
        if (nd->kernel == POET_K_LINEAR_DX) { in[0] = mn; in[1] = kn; *out = mk; }
        if (nd->kernel == POET_K_LINEAR_DW) { in[0] = mn; in[1] = mk; *out = kn; }
        if (nd->kernel == POET_K_BIAS_GRAD) { in[0] = mn; *out = p->n; }
        return POET_OK;
    }
    case POET_K_RELU_FWD:
    case POET_K_RELU_BWD:
    case POET_K_ADD: {
        uint32_t n = m->eltwise[nd->params].n;
        in[0] = in[1] = *out = n;
        return POET_OK;
    }
    case POET_K_SOFTMAX_XENT_FWD:
    case POET_K_SOFTMAX_XENT_BWD: {
        const poet_xent_params *p = &m->xent[nd->params];
        in[0] = p->m * p->c;
        in[1] = p->m;
        *out = nd->kernel == POET_K_SOFTMAX_XENT_FWD ? 1 : p->m * p->c;
        return POET_OK;
    }
    case POET_K_SGD: /* (w, g[, v]): momentum needs its buffer */
        if (m->sgd[nd->params].momentum != 0.0f && nd->n_in < 3) return POET_ERR_PROGRAM;
        in[0] = in[1] = in[2] = m->sgd[nd->params].n;
        *out = 0;
        return POET_OK;
    case POET_K_DEQUANT_U8:
        in[0] = *out = m->quant[nd->params].n;
        return POET_OK;
    case POET_K_LINEAR_DW_SGD: { /* (dy, x, W[, V]) */
        const poet_linear_params *p = &m->linear[nd->params];
        if (p->momentum != 0.0f && nd->n_in < 4) return POET_ERR_PROGRAM;
        in[0] = p->m * p->n;
        in[1] = p->m * p->k;
        in[2] = in[3] = p->k * p->n;
        *out = 0;
        return POET_OK;
    }
    case POET_K_BIAS_GRAD_SGD: { /* (dy, b[, V]) */
        const poet_linear_params *p = &m->linear[nd->params];
        if (p->momentum != 0.0f && nd->n_in < 3) return POET_ERR_PROGRAM;
        in[0] = p->m * p->n;
        in[1] = in[2] = p->n;
        *out = 0;
        return POET_OK;
    }
    case POET_K_CONV2D_FWD:
    case POET_K_CONV2D_DX:
    case POET_K_CONV2D_DW:
    case POET_K_CONV2D_DB:
    case POET_K_CONV2D_DW_SGD: /* (dy, x, W[, V]) */
    case POET_K_CONV2D_DB_SGD: { /* (dy, b[, V]) */
        const poet_conv_params *p = &m->conv[nd->params];
        if (p->groups == 0) return POET_ERR_PROGRAM;
        uint32_t x = p->n * p->c_in * p->h * p->w, y = p->n * p->c_out * p->oh * p->ow;
        uint32_t w = p->c_out * (p->c_in / p->groups) * p->kh * p->kw;
        if (nd->kernel == POET_K_CONV2D_FWD) { in[0] = x; in[1] = w; in[2] = p->c_out; *out = y; }
        if (nd->kernel == POET_K_CONV2D_DX) { in[0] = y; in[1] = w; *out = x; }
        if (nd->kernel == POET_K_CONV2D_DW) { in[0] = y; in[1] = x; *out = w; }
        if (nd->kernel == POET_K_CONV2D_DB) { in[0] = y; *out = p->c_out; }
        if (nd->kernel == POET_K_CONV2D_DW_SGD) {
            if (p->momentum != 0.0f && nd->n_in < 4) return POET_ERR_PROGRAM;
            in[0] = y; in[1] = x; in[2] = in[3] = w; *out = 0;
        }
        if (nd->kernel == POET_K_CONV2D_DB_SGD) {
            if (p->momentum != 0.0f && nd->n_in < 3) return POET_ERR_PROGRAM;
            in[0] = y; in[1] = in[2] = p->c_out; *out = 0;
        }
        return POET_OK;
    }
    case POET_K_MAXPOOL_FWD:
    case POET_K_MAXPOOL_BWD:
    case POET_K_AVGPOOL_FWD:
    case POET_K_AVGPOOL_BWD: {
        const poet_pool_params *p = &m->pool[nd->params];
        uint32_t x = p->nc * p->h * p->w, y = p->nc * p->oh * p->ow;
        if (nd->kernel == POET_K_MAXPOOL_FWD || nd->kernel == POET_K_AVGPOOL_FWD) { in[0] = x; *out = y; }
        if (nd->kernel == POET_K_MAXPOOL_BWD) { in[0] = x; in[1] = y; *out = x; }
        if (nd->kernel == POET_K_AVGPOOL_BWD) { in[0] = y; *out = x; }
        return POET_OK;
    }
    case POET_K_BN_STATS:
    case POET_K_BN_APPLY:
    case POET_K_BN_DX:
    case POET_K_BN_DGAMMA:
    case POET_K_BN_DBETA:
    case POET_K_BN_RUNNING:
    case POET_K_BN_FROZEN:
    case POET_K_BN_FROZEN_DX: {
        const poet_bn_params *p = &m->bn[nd->params];
        uint32_t x = p->n * p->c * p->hw, c = p->c;
        if (nd->kernel == POET_K_BN_STATS) { in[0] = x; in[1] = c; in[2] = c; in[3] = 1; *out = 2 * c; }
        if (nd->kernel == POET_K_BN_APPLY) { in[0] = x; in[1] = 2 * c; in[2] = c; in[3] = c; *out = x; }
        if (nd->kernel == POET_K_BN_DX) { in[0] = x; in[1] = x; in[2] = 2 * c; in[3] = c; *out = x; }
        if (nd->kernel == POET_K_BN_DGAMMA) { in[0] = x; in[1] = x; in[2] = 2 * c; *out = c; }
        if (nd->kernel == POET_K_BN_DBETA) { in[0] = x; *out = c; }
        if (nd->kernel == POET_K_BN_RUNNING) { in[0] = c; in[1] = 2 * c; *out = 0; }
        if (nd->kernel == POET_K_BN_FROZEN) { in[0] = x; in[1] = in[2] = in[3] = in[4] = c; *out = x; }
        if (nd->kernel == POET_K_BN_FROZEN_DX) { in[0] = x; in[1] = in[2] = c; *out = x; }
        return POET_OK;
    }
    case POET_K_CLIP_FWD:
    case POET_K_CLIP_BWD:
    case POET_K_SIGMOID_FWD:
    case POET_K_SIGMOID_BWD:
    case POET_K_TANH_FWD:
    case POET_K_TANH_BWD:
    case POET_K_GELU_FWD:
    case POET_K_GELU_BWD:
    case POET_K_ERF_FWD:
    case POET_K_ERF_BWD:
    case POET_K_AFFINE:
    case POET_K_SQRT_FWD:
    case POET_K_SQRT_BWD:
    case POET_K_POW_FWD:
    case POET_K_POW_BWD:
        in[0] = in[1] = *out = m->act[nd->params].n;
        return POET_OK;
    case POET_K_SOFTMAX_FWD:
    case POET_K_SOFTMAX_BWD: {
        const poet_softmax_params *p = &m->softmax[nd->params];
        in[0] = in[1] = *out = p->outer * p->n * p->inner;
        return POET_OK;
    }
    case POET_K_LN_FWD:
    case POET_K_LN_DX:
    case POET_K_LN_DGAMMA: {
        const poet_ln_params *p = &m->ln[nd->params];
        uint32_t x = p->m * p->d;
        if (nd->kernel == POET_K_LN_FWD) { in[0] = x; in[1] = in[2] = p->d; *out = x; }
        if (nd->kernel == POET_K_LN_DX) { in[0] = in[1] = x; in[2] = p->d; *out = x; }
        if (nd->kernel == POET_K_LN_DGAMMA) { in[0] = in[1] = x; *out = p->d; }
        return POET_OK;
    }
    case POET_K_MATMUL: {
        const poet_matmul_params *p = &m->matmul[nd->params];
        in[0] = (p->sa ? p->batch : 1) * p->m * p->k;
        in[1] = (p->sb ? p->batch : 1) * p->k * p->n;
        *out = (p->so ? p->batch : 1) * p->m * p->n;
        return POET_OK;
    }
    case POET_K_BINARY:
    case POET_K_REDUCE: {
        const poet_bcast_params *p = &m->bcast[nd->params];
        if (p->rank < 1 || p->rank > POET_MAX_RANK) return POET_ERR_PROGRAM;
        uint32_t n = 1;
        for (uint32_t k = 0; k < p->rank; k++) n *= p->shape[k];
        if (nd->kernel == POET_K_BINARY) {
            in[0] = bcast_extent(p, p->sa);
            in[1] = bcast_extent(p, p->sb);
            *out = n;
        } else {
            in[0] = n;
            in[1] = bcast_extent(p, p->sb);
            in[2] = bcast_extent(p, p->sc);
            *out = bcast_extent(p, p->sa);
        }
        return POET_OK;
    }
    case POET_K_STRIDED:
    case POET_K_SCATTER:
        in[0] = m->layout[nd->params].n_src;
        *out = m->layout[nd->params].n_dst;
        return POET_OK;
    case POET_K_CONCAT: {
        const poet_concat_params *p = &m->concat[nd->params];
        uint32_t total = 0;
        for (uint32_t k = 0; k < p->n_in && k < 4; k++) {
            in[k] = p->outer * p->part[k];
            total += p->part[k];
        }
        *out = p->outer * total;
        return POET_OK;
    }
    }
    return POET_ERR_PROGRAM;
}

static uint32_t elem_bytes(const poet_tensor *t) { return t->dtype == POET_U8 ? 1u : 4u; }

poet_status poet_model_validate(const poet_model *m) {
    if (m->pager_queue < 1 || m->pager_queue > POET_MAX_XFERS) return POET_ERR_PROGRAM;
    for (uint16_t i = 0; i < m->n_nodes; i++) {
        const poet_node *nd = &m->nodes[i];
        uint32_t in[POET_MAX_INPUTS] = {0}, out = 0;
        if (nd->n_in > POET_MAX_INPUTS || nd->out >= m->n_tensors) return POET_ERR_PROGRAM;
        poet_status s = expected_sizes(m, nd, in, &out);
        if (s != POET_OK) return s;
        for (uint16_t k = 0; k < nd->n_in; k++) {
            if (nd->in[k] >= m->n_tensors) return POET_ERR_PROGRAM;
            if (m->tensors[nd->in[k]].bytes != elem_bytes(&m->tensors[nd->in[k]]) * in[k]) return POET_ERR_SHAPE;
        }
        if (m->tensors[nd->out].bytes != elem_bytes(&m->tensors[nd->out]) * out) return POET_ERR_SHAPE;
    }
    for (int p = 0; p < POET_N_PROGRAMS; p++) {
        const poet_program *pr = &m->programs[p];
        for (uint32_t pc = 0; pc < pr->n; pc++) {
            const poet_instr *in = &pr->code[pc];
            uint16_t t;
            switch (in->op) {
            case POET_OP_RUN:
            case POET_OP_RECOMPUTE:
                if (in->arg >= m->n_nodes) return POET_ERR_PROGRAM;
                t = m->nodes[in->arg].out;
                break;
            case POET_OP_WAIT:
                if (in->arg >= m->n_tensors) return POET_ERR_PROGRAM;
                continue;
            case POET_OP_PAGE_OUT:
            case POET_OP_PAGE_IN:
            case POET_OP_FREE:
            case POET_OP_LOAD:
            case POET_OP_STORE:
                if (in->arg >= m->n_tensors) return POET_ERR_PROGRAM;
                t = in->arg;
                if (in->op != POET_OP_FREE &&
                    (uint64_t)m->tensors[t].slot + m->tensors[t].bytes + 4u > m->storage_bytes)
                    return POET_ERR_PROGRAM;
                /* LOAD/STORE move storage-homed tensors, PAGE_* arena tensors, FREE either */
                if ((in->op == POET_OP_LOAD || in->op == POET_OP_STORE) != (m->tensors[t].home == POET_HOME_STORAGE) &&
                    in->op != POET_OP_FREE)
                    return POET_ERR_PROGRAM;
                if (in->op == POET_OP_FREE && m->tensors[t].home != POET_HOME_ARENA &&
                    m->tensors[t].home != POET_HOME_STORAGE)
                    return POET_ERR_PROGRAM;
                break;
            default:
                return POET_ERR_PROGRAM;
            }
            const uint8_t h = m->tensors[t].home;
            if ((h == POET_HOME_ARENA || (h == POET_HOME_STORAGE && in->op == POET_OP_LOAD)) &&
                in->op != POET_OP_FREE && in->op != POET_OP_PAGE_OUT && in->op != POET_OP_STORE &&
                (uint64_t)in->off + m->tensors[t].bytes > m->arena_bytes)
                return POET_ERR_PROGRAM;
        }
    }
    return POET_OK;
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A copy on storage is tensor bytes followed by CRC32(tensor id u16 LE, write number u32 LE, bytes). The write
 * number comes from one counter for every write to storage and is remembered per tensor in m->wgen[], so the
 * check at page-in also catches a write the device acknowledged but did not do (the old copy has an older
 * number), and one that went to another tensor's slot (another id). */
static uint32_t write_count;

static uint32_t tag_crc(uint16_t id, uint32_t gen) {
    uint8_t h[6];
    h[0] = (uint8_t)id;
    h[1] = (uint8_t)(id >> 8);
    put_u32(h + 2, gen);
    return poet_crc32(0, h, 6);
}

/* The CRC a new copy of tensor id starts from; its write number is recorded. */
static uint32_t new_copy_crc(const poet_model *m, uint16_t id) {
    m->wgen[id] = ++write_count;
    return tag_crc(id, m->wgen[id]);
}

/* Zeros for storage-homed tensors without an initial value (optimizer state), written a block at a time. */
static const uint8_t zero_block[64];

poet_status poet_model_reset(const poet_model *m) {
    for (uint16_t i = 0; i < m->n_params; i++) {
        const uint16_t id = m->params[i].tensor;
        const poet_tensor *t = &m->tensors[id];
        const uint8_t *init = (const uint8_t *)m->params[i].init;
        if (t->home == POET_HOME_STATIC) {
            if (init)
                memcpy(t->data, init, t->bytes);
            else
                memset(t->data, 0, t->bytes);
        } else if (t->home == POET_HOME_STORAGE) {
            uint8_t crc[4];
            poet_status s = POET_OK;
            const uint32_t c0 = new_copy_crc(m, id);
            if (init) {
                s = poet_port_pager_write(t->slot, init, t->bytes);
                put_u32(crc, poet_crc32(c0, init, t->bytes));
            } else {
                uint32_t c = c0;
                for (uint32_t off = 0; off < t->bytes && s == POET_OK; off += sizeof zero_block) {
                    uint32_t n = t->bytes - off < sizeof zero_block ? t->bytes - off : (uint32_t)sizeof zero_block;
                    s = poet_port_pager_write(t->slot + off, zero_block, n);
                    c = poet_crc32(c, zero_block, n);
                }
                put_u32(crc, c);
            }
            if (s == POET_OK) s = poet_port_pager_write(t->slot + t->bytes, crc, 4);
            if (s != POET_OK) return s;
        }
    }
    return POET_OK;
}

uint32_t poet_storage_crc_seed(const poet_model *m, uint16_t t) { return tag_crc(t, m->wgen[t]); }

poet_status poet_storage_write(const poet_model *m, uint16_t id, uint32_t off, const void *src, uint32_t n) {
    if (id >= m->n_tensors || m->tensors[id].home != POET_HOME_STORAGE) return POET_ERR_RANGE;
    if ((uint64_t)off + n > m->tensors[id].bytes) return POET_ERR_RANGE;
    return poet_port_pager_write(m->tensors[id].slot + off, src, n);
}

poet_status poet_storage_seal(const poet_model *m, uint16_t id) {
    if (id >= m->n_tensors || m->tensors[id].home != POET_HOME_STORAGE) return POET_ERR_RANGE;
    const poet_tensor *t = &m->tensors[id];
    uint8_t buf[64];
    uint32_t c = new_copy_crc(m, id);
    for (uint32_t off = 0; off < t->bytes; off += sizeof buf) {
        uint32_t n = t->bytes - off < sizeof buf ? t->bytes - off : (uint32_t)sizeof buf;
        poet_status s = poet_port_pager_read(t->slot + off, buf, n);
        if (s != POET_OK) return s;
        c = poet_crc32(c, buf, n);
    }
    put_u32(buf, c);
    return poet_port_pager_write(t->slot + t->bytes, buf, 4);
}

poet_status poet_tensor_read(const poet_model *m, uint16_t id, uint32_t off, void *dst, uint32_t n) {
    if (id >= m->n_tensors) return POET_ERR_RANGE;
    const poet_tensor *t = &m->tensors[id];
    const uint32_t limit = t->home == POET_HOME_STORAGE && m->loc[id] == NULL ? t->bytes + 8u : t->bytes;
    if ((uint64_t)off + n > limit) return POET_ERR_RANGE;
    if (m->loc[id] != NULL) {
        memcpy(dst, (const uint8_t *)m->loc[id] + off, n);
        return POET_OK;
    }
    if (t->home != POET_HOME_STORAGE) return POET_ERR_NOT_RESIDENT;
    /* the slot: bytes, then the stored CRC; then the write number the CRC should cover (from RAM) */
    const uint32_t in_slot = off >= t->bytes + 4u ? 0u : (off + n > t->bytes + 4u ? t->bytes + 4u - off : n);
    if (in_slot) {
        poet_status s = poet_port_pager_read(t->slot + off, dst, in_slot);
        if (s != POET_OK) return s;
    }
    uint8_t gen[4];
    put_u32(gen, m->wgen[id]);
    for (uint32_t i = in_slot; i < n; i++) ((uint8_t *)dst)[i] = gen[off + i - (t->bytes + 4u)];
    return POET_OK;
}

/* ---- transfers in flight ---------------------------------------------------------------------------------
 * A slot per transfer started and not yet waited for. PAGE_OUT/STORE compute the CRC from RAM and start the
 * write of data + CRC; PAGE_IN/LOAD start the read into the arena (the tensor's location is set, but no kernel
 * may read it before its WAIT checks the CRC). */
typedef struct {
    poet_xfer x;
    uint16_t tensor;
    uint8_t busy;
} xfer_slot;

static xfer_slot xfers[POET_MAX_XFERS];

static int ranges_overlap(const uint8_t *a, uint32_t na, const uint8_t *b, uint32_t nb) {
    return a < b + nb && b < a + na;
}

static xfer_slot *in_flight(uint16_t t) {
    for (int k = 0; k < POET_MAX_XFERS; k++)
        if (xfers[k].busy && xfers[k].tensor == t) return &xfers[k];
    return NULL;
}

/* Bytes [p, p + n) are about to be written: no transfer in flight may still read or write them. */
static poet_status check_reuse(const uint8_t *p, uint32_t n) {
    for (int k = 0; k < POET_MAX_XFERS; k++)
        if (xfers[k].busy && ranges_overlap(p, n, xfers[k].x.buf, xfers[k].x.n)) return POET_ERR_IN_FLIGHT;
    return POET_OK;
}

static void progress(void) {
    for (int k = 0; k < POET_MAX_XFERS; k++)
        if (xfers[k].busy && !xfers[k].x.done) poet_port_pager_poll(&xfers[k].x);
}

static poet_status start_xfer(const poet_model *m, uint8_t op, uint16_t t, uint32_t off) {
    const poet_tensor *d = &m->tensors[t];
    const int write = op == POET_OP_PAGE_OUT || op == POET_OP_STORE;
    xfer_slot *slot = NULL;
    int busy = 0;
    if (in_flight(t)) return POET_ERR_IN_FLIGHT;
    for (int k = 0; k < POET_MAX_XFERS; k++) {
        if (xfers[k].busy)
            busy++;
        else if (!slot)
            slot = &xfers[k];
    }
    if (busy >= m->pager_queue || !slot) return POET_ERR_IN_FLIGHT;
    uint8_t *buf;
    if (write) {
        if (m->loc[t] == NULL) return POET_ERR_NOT_RESIDENT;
        buf = (uint8_t *)m->loc[t];
        put_u32(slot->x.trailer, poet_crc32(new_copy_crc(m, t), buf, d->bytes));
    } else {
        buf = m->arena + off;
        poet_status s = check_reuse(buf, d->bytes);
        if (s != POET_OK) return s;
    }
    slot->x.addr = d->slot;
    slot->x.buf = buf;
    slot->x.n = d->bytes;
    slot->x.write = (uint8_t)write;
    slot->x.done = 0;
    slot->x.status = POET_OK;
    slot->x.port_state = 0;
    poet_status s = poet_port_pager_start(&slot->x);
    if (s != POET_OK) return s;
    slot->tensor = t;
    slot->busy = 1;
    if (!write) m->loc[t] = buf;
    return POET_OK;
}

static poet_status finish(const poet_model *m, xfer_slot *slot) {
    while (!slot->x.done) poet_port_pager_poll(&slot->x);
    slot->busy = 0;
    if (slot->x.status != POET_OK) return slot->x.status;
    if (!slot->x.write &&
        poet_crc32(tag_crc(slot->tensor, m->wgen[slot->tensor]), slot->x.buf, slot->x.n) != get_u32(slot->x.trailer))
        return POET_ERR_PAGE_CHECKSUM;
    return POET_OK;
}

/* Wait for every transfer in flight (after an error, or at the end of a step); the first failure counts. */
static poet_status drain(const poet_model *m) {
    poet_status first = POET_OK;
    for (int k = 0; k < POET_MAX_XFERS; k++) {
        if (!xfers[k].busy) continue;
        poet_status s = finish(m, &xfers[k]);
        if (first == POET_OK) first = s;
    }
    return first;
}

/* A kernel may run when none of its inputs is still being read in and its output's bytes are free. */
static poet_status check_node(const poet_model *m, uint16_t node, uint8_t *out) {
    const poet_node *nd = &m->nodes[node];
    for (uint16_t i = 0; i < nd->n_in; i++) {
        const xfer_slot *x = in_flight(nd->in[i]);
        if (x && !x->x.write) return POET_ERR_IN_FLIGHT;
    }
    return out ? check_reuse(out, m->tensors[nd->out].bytes) : POET_OK;
}

void poet_reset_locations(const poet_model *m) {
    for (uint16_t t = 0; t < m->n_tensors; t++) {
        const uint8_t h = m->tensors[t].home;
        m->loc[t] = h == POET_HOME_STATIC || h == POET_HOME_FLASH ? m->tensors[t].data : NULL;
    }
}

poet_run_result poet_run(const poet_model *m, int program, float lr, poet_grad_hook hook, void *hook_ctx) {
    poet_run_result r;
    memset(&r, 0, sizeof r);
    if (program < 0 || program >= POET_N_PROGRAMS) {
        r.status = POET_ERR_PROGRAM;
        return r;
    }
    const poet_program *pr = &m->programs[program];
    if (m->train_flag) *m->train_flag = program == POET_PROG_TRAIN ? 1.0f : 0.0f;
    poet_update_nonfinite = 0;
    poet_reset_locations(m);
    for (uint16_t n = 0; n < m->n_nodes; n++) m->node_ticks[n] = 0;
    uint64_t start = poet_port_ticks();
    for (r.pc = 0; r.pc < pr->n; r.pc++) {
        const poet_instr *in = &pr->code[r.pc];
        poet_status s = POET_OK;
        switch (in->op) {
        case POET_OP_RUN:
        case POET_OP_RECOMPUTE: {
            uint16_t out = m->nodes[in->arg].out;
            const int arena_out = m->tensors[out].home == POET_HOME_ARENA;
            s = check_node(m, in->arg, arena_out ? m->arena + in->off : NULL);
            if (s != POET_OK) break;
            if (arena_out) m->loc[out] = m->arena + in->off;
            uint64_t t0 = poet_port_ticks();
            s = poet_dispatch(m, in->arg, lr, hook, hook_ctx);
            m->node_ticks[in->arg] += poet_port_ticks() - t0;
            break;
        }
        case POET_OP_PAGE_OUT:
            s = start_xfer(m, in->op, in->arg, 0);
            r.page_out_bytes += m->tensors[in->arg].bytes + 4u;
            r.page_outs++;
            break;
        case POET_OP_PAGE_IN:
            s = start_xfer(m, in->op, in->arg, in->off);
            r.page_in_bytes += m->tensors[in->arg].bytes + 4u;
            r.page_ins++;
            break;
        case POET_OP_LOAD:
            s = start_xfer(m, in->op, in->arg, in->off);
            r.load_bytes += m->tensors[in->arg].bytes + 4u;
            r.loads++;
            break;
        case POET_OP_STORE:
            s = start_xfer(m, in->op, in->arg, 0);
            r.store_bytes += m->tensors[in->arg].bytes + 4u;
            r.stores++;
            break;
        case POET_OP_FREE:
            if (m->tensors[in->arg].home == POET_HOME_ARENA || m->tensors[in->arg].home == POET_HOME_STORAGE)
                m->loc[in->arg] = NULL;
            break;
        case POET_OP_WAIT: {
            xfer_slot *x = in_flight(in->arg);
            if (!x) {
                s = POET_ERR_PROGRAM;
                break;
            }
            uint64_t t0 = poet_port_ticks();
            s = finish(m, x);
            r.wait_ticks += poet_port_ticks() - t0;
            r.waits++;
            break;
        }
        default:
            s = POET_ERR_PROGRAM;
        }
        if (s != POET_OK) {
            r.status = s;
            break;
        }
        progress();
    }
    /* nothing may stay in flight after a step: on an error the DMA must not write into the arena later */
    poet_status left = POET_OK;
    for (int k = 0; k < POET_MAX_XFERS; k++)
        if (xfers[k].busy) left = POET_ERR_IN_FLIGHT;
    poet_status drained = drain(m);
    if (r.status == POET_OK) r.status = left != POET_OK ? left : drained;
    r.ticks = poet_port_ticks() - start;
    if (r.status == POET_OK && program == POET_PROG_TRAIN && poet_update_nonfinite) r.status = POET_ERR_NONFINITE_PARAM;
    if (r.status == POET_OK && program == POET_PROG_TRAIN && !isfinite(*(const float *)m->tensors[m->loss].data))
        r.status = POET_ERR_NONFINITE;
    return r;
}

/* ---- the image's checksums ---------------------------------------------------------------------------------
 * The tables in a canonical form that poetc's codegen.image_checksums() reproduces byte for byte: per tensor
 * bytes (u32), dtype, home, writable (u8 each), slot (u32); per node kernel, params index, n_in (u16 each), its
 * inputs and output (u16), then its kernel's params struct as it lies in memory (every field is a 4-byte
 * uint32_t or float: little-endian words, no padding); per program its length (u32) and per instruction op
 * (u8), arg (u16), off (u32); then input, label, loss, logits (u16) and arena, storage, checkpoint address and
 * slot bytes (u32). The initial values: per parameter in params[] its tensor id (u16), whether it has an
 * initial value (u8) and that value's bytes; then the bytes of every FLASH tensor in tensor order. */
static uint32_t crc_u8(uint32_t c, uint8_t v) { return poet_crc32(c, &v, 1); }
static uint32_t crc_u16(uint32_t c, uint16_t v) {
    const uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    return poet_crc32(c, b, 2);
}
static uint32_t crc_u32(uint32_t c, uint32_t v) {
    uint8_t b[4];
    put_u32(b, v);
    return poet_crc32(c, b, 4);
}

static uint32_t crc_params(uint32_t c, const poet_model *m, const poet_node *nd) {
    switch ((poet_kernel_id)nd->kernel) {
#define POET_PARAMS_CRC_(name, id, fam)                                                                       \
    case POET_K_##name:                                                                                       \
        return m->fam ? poet_crc32(c, &m->fam[nd->params], sizeof *m->fam) : c;
        POET_KERNELS(POET_PARAMS_CRC_)
#undef POET_PARAMS_CRC_
    }
    return c;
}

poet_status poet_model_check_image(const poet_model *m) {
    uint32_t c = 0;
    for (uint16_t i = 0; i < m->n_tensors; i++) {
        const poet_tensor *t = &m->tensors[i];
        c = crc_u32(c, t->bytes);
        c = crc_u8(crc_u8(crc_u8(c, t->dtype), t->home), t->writable);
        c = crc_u32(c, t->slot);
    }
    for (uint16_t i = 0; i < m->n_nodes; i++) {
        const poet_node *nd = &m->nodes[i];
        c = crc_u16(crc_u16(crc_u16(c, nd->kernel), nd->params), nd->n_in);
        for (uint16_t k = 0; k < nd->n_in && k < POET_MAX_INPUTS; k++) c = crc_u16(c, nd->in[k]);
        c = crc_params(crc_u16(c, nd->out), m, nd);
    }
    for (int p = 0; p < POET_N_PROGRAMS; p++) {
        c = crc_u32(c, m->programs[p].n);
        for (uint32_t pc = 0; pc < m->programs[p].n; pc++) {
            const poet_instr *in = &m->programs[p].code[pc];
            c = crc_u32(crc_u16(crc_u8(c, in->op), in->arg), in->off);
        }
    }
    c = crc_u16(crc_u16(crc_u16(crc_u16(c, m->input), m->label), m->loss), m->logits);
    c = crc_u32(crc_u32(crc_u32(crc_u32(c, m->arena_bytes), m->storage_bytes), m->ckpt_addr), m->ckpt_slot_bytes);
    if (c != m->tables_crc) return POET_ERR_IMAGE_CHECKSUM;
    uint32_t v = 0;
    for (uint16_t i = 0; i < m->n_params; i++) {
        const uint16_t id = m->params[i].tensor;
        if (id >= m->n_tensors) return POET_ERR_PROGRAM;
        v = crc_u8(crc_u16(v, id), m->params[i].init != NULL);
        if (m->params[i].init) v = poet_crc32(v, m->params[i].init, m->tensors[id].bytes);
    }
    for (uint16_t i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].home == POET_HOME_FLASH && m->tensors[i].data)
            v = poet_crc32(v, m->tensors[i].data, m->tensors[i].bytes);
    return v == m->init_crc ? POET_OK : POET_ERR_IMAGE_CHECKSUM;
}

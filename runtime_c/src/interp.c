/* The schedule interpreter: executes a program of RUN / PAGE_OUT / PAGE_IN / FREE instructions. */
#include <math.h>
#include <string.h>

#include "poet/poet.h"
#include "poet/port.h"

#define F32(i) ((float *)m->loc[nd->in[i]])
#define I32(i) ((const int32_t *)m->loc[nd->in[i]])
#define OUT ((float *)m->loc[nd->out])

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
        if (hook) hook(hook_ctx, nd->in[0], F32(1), m->tensors[nd->in[1]].bytes);
        return poet_sgd_f32(&m->sgd[nd->params], lr, F32(1), F32(0));
    }
    return POET_ERR_PROGRAM;
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
    case POET_K_SGD:
        in[0] = in[1] = m->sgd[nd->params].n;
        *out = 0;
        return POET_OK;
    }
    return POET_ERR_PROGRAM;
}

poet_status poet_model_validate(const poet_model *m) {
    for (uint16_t i = 0; i < m->n_nodes; i++) {
        const poet_node *nd = &m->nodes[i];
        uint32_t in[POET_MAX_INPUTS] = {0}, out = 0;
        if (nd->n_in > POET_MAX_INPUTS || nd->out >= m->n_tensors) return POET_ERR_PROGRAM;
        poet_status s = expected_sizes(m, nd, in, &out);
        if (s != POET_OK) return s;
        for (uint16_t k = 0; k < nd->n_in; k++) {
            if (nd->in[k] >= m->n_tensors) return POET_ERR_PROGRAM;
            if (m->tensors[nd->in[k]].bytes != 4u * in[k]) return POET_ERR_SHAPE;
        }
        if (m->tensors[nd->out].bytes != 4u * out) return POET_ERR_SHAPE;
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
            case POET_OP_PAGE_OUT:
            case POET_OP_PAGE_IN:
            case POET_OP_FREE:
                if (in->arg >= m->n_tensors) return POET_ERR_PROGRAM;
                t = in->arg;
                if (in->op != POET_OP_FREE &&
                    (uint64_t)m->tensors[t].slot + m->tensors[t].bytes + 4u > m->storage_bytes)
                    return POET_ERR_PROGRAM;
                break;
            default:
                return POET_ERR_PROGRAM;
            }
            if (m->tensors[t].home == POET_HOME_ARENA && in->op != POET_OP_FREE && in->op != POET_OP_PAGE_OUT &&
                (uint64_t)in->off + m->tensors[t].bytes > m->arena_bytes)
                return POET_ERR_PROGRAM;
        }
    }
    return POET_OK;
}

void poet_model_reset(const poet_model *m) {
    for (uint16_t i = 0; i < m->n_params; i++) {
        const poet_tensor *t = &m->tensors[m->params[i].tensor];
        memcpy(t->data, m->params[i].init, t->bytes);
    }
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static poet_status page_out(const poet_model *m, uint16_t t) {
    const poet_tensor *d = &m->tensors[t];
    if (m->loc[t] == NULL) return POET_ERR_NOT_RESIDENT;
    uint8_t crc[4];
    put_u32(crc, poet_crc32(0, m->loc[t], d->bytes));
    poet_status s = poet_port_pager_write(d->slot, m->loc[t], d->bytes);
    if (s == POET_OK) s = poet_port_pager_write(d->slot + d->bytes, crc, 4);
    return s;
}

static poet_status page_in(const poet_model *m, uint16_t t, uint32_t off) {
    const poet_tensor *d = &m->tensors[t];
    void *dst = m->arena + off;
    uint8_t crc[4];
    poet_status s = poet_port_pager_read(d->slot, dst, d->bytes);
    if (s == POET_OK) s = poet_port_pager_read(d->slot + d->bytes, crc, 4);
    if (s != POET_OK) return s;
    uint32_t want = (uint32_t)crc[0] | (uint32_t)crc[1] << 8 | (uint32_t)crc[2] << 16 | (uint32_t)crc[3] << 24;
    if (poet_crc32(0, dst, d->bytes) != want) return POET_ERR_PAGE_CHECKSUM;
    m->loc[t] = dst;
    return POET_OK;
}

poet_run_result poet_run(const poet_model *m, int program, float lr, poet_grad_hook hook, void *hook_ctx) {
    poet_run_result r;
    memset(&r, 0, sizeof r);
    if (program < 0 || program >= POET_N_PROGRAMS) {
        r.status = POET_ERR_PROGRAM;
        return r;
    }
    const poet_program *pr = &m->programs[program];
    for (uint16_t t = 0; t < m->n_tensors; t++)
        m->loc[t] = m->tensors[t].home == POET_HOME_STATIC ? m->tensors[t].data : NULL;
    for (uint16_t n = 0; n < m->n_nodes; n++) m->node_ticks[n] = 0;
    uint64_t start = poet_port_ticks();
    for (r.pc = 0; r.pc < pr->n; r.pc++) {
        const poet_instr *in = &pr->code[r.pc];
        poet_status s = POET_OK;
        switch (in->op) {
        case POET_OP_RUN:
        case POET_OP_RECOMPUTE: {
            uint16_t out = m->nodes[in->arg].out;
            if (m->tensors[out].home == POET_HOME_ARENA) m->loc[out] = m->arena + in->off;
            uint64_t t0 = poet_port_ticks();
            s = poet_dispatch(m, in->arg, lr, hook, hook_ctx);
            m->node_ticks[in->arg] += poet_port_ticks() - t0;
            break;
        }
        case POET_OP_PAGE_OUT:
            s = page_out(m, in->arg);
            r.page_out_bytes += m->tensors[in->arg].bytes + 4u;
            r.page_outs++;
            break;
        case POET_OP_PAGE_IN:
            s = page_in(m, in->arg, in->off);
            r.page_in_bytes += m->tensors[in->arg].bytes + 4u;
            r.page_ins++;
            break;
        case POET_OP_FREE:
            if (m->tensors[in->arg].home == POET_HOME_ARENA) m->loc[in->arg] = NULL;
            break;
        default:
            s = POET_ERR_PROGRAM;
        }
        if (s != POET_OK) {
            r.status = s;
            break;
        }
    }
    r.ticks = poet_port_ticks() - start;
    if (r.status == POET_OK && program == POET_PROG_TRAIN && !isfinite(*(const float *)m->tensors[m->loss].data))
        r.status = POET_ERR_NONFINITE;
    return r;
}

/* The application's training API and its power-loss-safe checkpoints (poet/train.h, docs/c-api.md). */
#include "poet/train.h"

#include <string.h>

#include "poet/port.h"

#define CHUNK 64u /* bytes moved per storage call (stack buffer) */

static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint32_t poet_train_batch(const poet_model *m) { return m->tensors[m->label].bytes / 4u; }

uint32_t poet_train_sample_elems(const poet_model *m) {
    const poet_tensor *t = &m->tensors[m->input];
    const uint32_t b = poet_train_batch(m);
    return b ? t->bytes / (t->dtype == POET_U8 ? 1u : 4u) / b : 0u;
}

uint32_t poet_train_classes(const poet_model *m) {
    const uint32_t b = poet_train_batch(m);
    return b ? m->tensors[m->logits].bytes / 4u / b : 0u;
}

int poet_train_input_is_u8(const poet_model *m) { return m->tensors[m->input].dtype == POET_U8; }

static uint32_t payload_bytes(const poet_model *m) {
    uint32_t n = 0;
    for (uint16_t i = 0; i < m->n_params; i++) n += m->tensors[m->params[i].tensor].bytes;
    return n;
}

uint32_t poet_checkpoint_bytes(const poet_model *m) { return POET_CKPT_HEADER_BYTES + payload_bytes(m) + 4u; }

poet_status poet_train_init(poet_trainer *tr, const poet_model *m) {
    if (!tr || !m) return POET_ERR_ARG;
    memset(tr, 0, sizeof *tr);
    tr->model = m;
    poet_status s = poet_model_validate(m);
    if (s == POET_OK) s = poet_model_check_image(m);
    if (s != POET_OK) return s;
    const poet_tensor *in = &m->tensors[m->input], *lab = &m->tensors[m->label];
    if (in->home != POET_HOME_STATIC || lab->home != POET_HOME_STATIC || lab->dtype != POET_I32 ||
        m->tensors[m->logits].dtype != POET_F32 || poet_train_batch(m) == 0)
        return POET_ERR_PROGRAM;
    if (poet_checkpoint_bytes(m) > m->ckpt_slot_bytes) return POET_ERR_PROGRAM;
    if ((uint64_t)m->ckpt_addr + 2u * (uint64_t)m->ckpt_slot_bytes > poet_port_pager_bytes()) return POET_ERR_RANGE;
    return poet_model_reset(m);
}

/* The batch into the input and label tensors. */
static poet_status set_input(const poet_model *m, const float *xf, const uint8_t *xq, float scale) {
    const poet_tensor *t = &m->tensors[m->input];
    if (t->dtype == POET_U8) {
        if (!xq) return POET_ERR_ARG; /* a byte-input model takes bytes */
        memcpy(t->data, xq, t->bytes);
    } else if (xf) {
        memcpy(t->data, xf, t->bytes);
    } else {
        float *d = (float *)t->data;
        for (uint32_t i = 0; i < t->bytes / 4u; i++) d[i] = scale * (float)xq[i];
    }
    return POET_OK;
}

static poet_status set_labels(const poet_model *m, const int32_t *y) {
    const uint32_t n = poet_train_batch(m), c = poet_train_classes(m);
    for (uint32_t i = 0; i < n; i++)
        if (y[i] < 0 || (uint32_t)y[i] >= c) return POET_ERR_ARG;
    memcpy(m->tensors[m->label].data, y, 4u * n);
    return POET_OK;
}

static poet_status train_step(poet_trainer *tr, const float *xf, const uint8_t *xq, float scale, const int32_t *y,
                              float lr) {
    if (!tr || !tr->model || (!xf && !xq) || !y) return POET_ERR_ARG;
    const poet_model *m = tr->model;
    poet_status s = set_labels(m, y);
    if (s == POET_OK) s = set_input(m, xf, xq, scale);
    if (s != POET_OK) return s;
    poet_run_result r = poet_run(m, POET_PROG_TRAIN, lr, NULL, NULL);
    if (r.status != POET_OK) return r.status;
    tr->last_loss = *(const float *)m->tensors[m->loss].data;
    tr->steps++;
    return POET_OK;
}

poet_status poet_train_step_f32(poet_trainer *tr, const float *x, const int32_t *y, float lr) {
    return train_step(tr, x, NULL, 1.0f, y, lr);
}

poet_status poet_train_step_u8(poet_trainer *tr, const uint8_t *x, float scale, const int32_t *y, float lr) {
    return train_step(tr, NULL, x, scale, y, lr);
}

static poet_status infer(poet_trainer *tr, const float *xf, const uint8_t *xq, float scale, float *logits) {
    if (!tr || !tr->model || (!xf && !xq) || !logits) return POET_ERR_ARG;
    const poet_model *m = tr->model;
    poet_status s = set_input(m, xf, xq, scale);
    if (s != POET_OK) return s;
    poet_run_result r = poet_run(m, POET_PROG_INFER, 0.0f, NULL, NULL);
    if (r.status != POET_OK) return r.status;
    return poet_tensor_read(m, m->logits, 0, logits, m->tensors[m->logits].bytes);
}

poet_status poet_infer_f32(poet_trainer *tr, const float *x, float *logits) { return infer(tr, x, NULL, 1.0f, logits); }

poet_status poet_infer_u8(poet_trainer *tr, const uint8_t *x, float scale, float *logits) {
    return infer(tr, NULL, x, scale, logits);
}

/* ---- checkpoints ------------------------------------------------------------------------------------------ */
static uint32_t slot_addr(const poet_model *m, uint32_t k) { return m->ckpt_addr + k * m->ckpt_slot_bytes; }

static void header(const poet_model *m, uint8_t *h, uint32_t seq, uint32_t step, uint32_t pos, float loss) {
    uint32_t lb;
    memcpy(&lb, &loss, 4);
    put_u32(h, POET_CKPT_MAGIC);
    put_u16(h + 4, POET_CKPT_VERSION);
    put_u16(h + 6, 0);
    put_u32(h + 8, seq);
    put_u32(h + 12, step);
    put_u32(h + 16, pos);
    put_u32(h + 20, lb);
    put_u32(h + 24, payload_bytes(m));
    memcpy(h + 28, m->hash, 8);
}

poet_status poet_checkpoint_save(poet_trainer *tr, uint32_t data_pos) {
    if (!tr || !tr->model) return POET_ERR_ARG;
    const poet_model *m = tr->model;
    const uint32_t seq = tr->ckpt_seq + 1u, base = slot_addr(m, seq & 1u);
    uint8_t h[POET_CKPT_HEADER_BYTES], buf[CHUNK];
    header(m, h, seq, tr->steps, data_pos, tr->last_loss);
    uint32_t crc = poet_crc32(0, h, sizeof h), at = base + POET_CKPT_HEADER_BYTES;
    poet_status s = POET_OK;
    for (uint16_t i = 0; i < m->n_params && s == POET_OK; i++) {
        const uint16_t id = m->params[i].tensor;
        const poet_tensor *t = &m->tensors[id];
        if (t->home == POET_HOME_STORAGE) { /* the master copy on storage, checked against its own CRC on the way */
            uint32_t own = poet_storage_crc_seed(m, id);
            for (uint32_t off = 0; off < t->bytes && s == POET_OK; off += CHUNK) {
                const uint32_t n = t->bytes - off < CHUNK ? t->bytes - off : CHUNK;
                s = poet_port_pager_read(t->slot + off, buf, n);
                if (s == POET_OK) s = poet_port_pager_write(at + off, buf, n);
                own = poet_crc32(own, buf, n);
                crc = poet_crc32(crc, buf, n);
            }
            if (s == POET_OK) s = poet_port_pager_read(t->slot + t->bytes, buf, 4);
            if (s == POET_OK && get_u32(buf) != own) s = POET_ERR_PAGE_CHECKSUM;
        } else {
            s = poet_port_pager_write(at, t->data, t->bytes);
            crc = poet_crc32(crc, t->data, t->bytes);
        }
        at += t->bytes;
    }
    /* the header and the CRC last: until they are written the slot fails its check */
    if (s == POET_OK) s = poet_port_pager_write(base, h, sizeof h);
    if (s == POET_OK) {
        put_u32(buf, crc);
        s = poet_port_pager_write(at, buf, 4);
    }
    if (s != POET_OK) return s;
    tr->ckpt_seq = seq;
    tr->ckpt_writes++;
    return POET_OK;
}

/* Whether slot k holds a valid checkpoint of this build; its header in h. */
static int slot_valid(const poet_model *m, uint32_t k, uint8_t *h) {
    const uint32_t base = slot_addr(m, k), n = payload_bytes(m);
    if (poet_port_pager_read(base, h, POET_CKPT_HEADER_BYTES) != POET_OK) return 0;
    if (get_u32(h) != POET_CKPT_MAGIC || get_u16(h + 4) != POET_CKPT_VERSION || get_u32(h + 24) != n ||
        memcmp(h + 28, m->hash, 8) != 0)
        return 0;
    uint8_t buf[CHUNK];
    uint32_t crc = poet_crc32(0, h, POET_CKPT_HEADER_BYTES);
    for (uint32_t off = 0; off < n; off += CHUNK) {
        const uint32_t c = n - off < CHUNK ? n - off : CHUNK;
        if (poet_port_pager_read(base + POET_CKPT_HEADER_BYTES + off, buf, c) != POET_OK) return 0;
        crc = poet_crc32(crc, buf, c);
    }
    if (poet_port_pager_read(base + POET_CKPT_HEADER_BYTES + n, buf, 4) != POET_OK) return 0;
    return get_u32(buf) == crc;
}

poet_status poet_checkpoint_restore(poet_trainer *tr, uint32_t *data_pos) {
    if (!tr || !tr->model) return POET_ERR_ARG;
    const poet_model *m = tr->model;
    uint8_t h[2][POET_CKPT_HEADER_BYTES], buf[CHUNK];
    tr->ckpt_valid = 0;
    for (uint32_t k = 0; k < 2; k++)
        if (slot_valid(m, k, h[k])) tr->ckpt_valid |= 1u << k;
    if (!tr->ckpt_valid) return POET_ERR_NO_CHECKPOINT;
    uint32_t k = tr->ckpt_valid == 2u ? 1u : 0u;
    if (tr->ckpt_valid == 3u && (int32_t)(get_u32(h[1] + 8) - get_u32(h[0] + 8)) > 0) k = 1u;
    /* copy the payload into the tensors, checking the CRC again on the way (a flaky read is caught) */
    uint32_t at = slot_addr(m, k) + POET_CKPT_HEADER_BYTES, crc = poet_crc32(0, h[k], POET_CKPT_HEADER_BYTES);
    poet_status s = POET_OK;
    for (uint16_t i = 0; i < m->n_params && s == POET_OK; i++) {
        const uint16_t id = m->params[i].tensor;
        const poet_tensor *t = &m->tensors[id];
        for (uint32_t off = 0; off < t->bytes && s == POET_OK; off += CHUNK) {
            const uint32_t n = t->bytes - off < CHUNK ? t->bytes - off : CHUNK;
            s = poet_port_pager_read(at + off, buf, n);
            if (s != POET_OK) break;
            crc = poet_crc32(crc, buf, n);
            if (t->home == POET_HOME_STORAGE)
                s = poet_storage_write(m, id, off, buf, n);
            else
                memcpy((uint8_t *)t->data + off, buf, n);
        }
        if (s == POET_OK && t->home == POET_HOME_STORAGE) s = poet_storage_seal(m, id);
        at += t->bytes;
    }
    if (s == POET_OK) s = poet_port_pager_read(at, buf, 4);
    if (s == POET_OK && get_u32(buf) != crc) s = POET_ERR_PAGE_CHECKSUM;
    if (s != POET_OK) { /* half restored: back to the initial values rather than a mixture */
        poet_model_reset(m);
        return s;
    }
    float loss;
    const uint32_t lb = get_u32(h[k] + 20);
    memcpy(&loss, &lb, 4);
    tr->ckpt_seq = get_u32(h[k] + 8);
    tr->steps = get_u32(h[k] + 12);
    tr->last_loss = loss;
    if (data_pos) *data_pos = get_u32(h[k] + 16);
    return POET_OK;
}

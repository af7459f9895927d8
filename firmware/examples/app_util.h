/* Small helpers of the example applications: progress lines without printf (which would pull newlib's stdio
 * into a microcontroller image), the batch of a data table, held-out accuracy. Only the C API (poet/train.h)
 * and poet_port_log (poet/port.h) are used. */
#ifndef POET_APP_UTIL_H
#define POET_APP_UTIL_H

#include <stdint.h>

#include "app_config.h"
#include "data.h"
#include "model.h"
#include "poet/port.h"
#include "poet/train.h"

/* ---- text ---------------------------------------------------------------------------------------------- */
typedef struct {
    char buf[160];
    uint32_t n;
} app_line;

static inline void line_str(app_line *l, const char *s) {
    while (*s && l->n + 2 < sizeof l->buf) l->buf[l->n++] = *s++;
    l->buf[l->n] = 0;
}

static inline void line_u32(app_line *l, uint32_t v) {
    char tmp[11];
    int k = 0;
    do {
        tmp[k++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (k && l->n + 2 < sizeof l->buf) l->buf[l->n++] = tmp[--k];
    l->buf[l->n] = 0;
}

/* A float with 4 decimals (enough for a loss or an accuracy); NaN and infinities by name. */
static inline void line_f32(app_line *l, float v) {
    if (v != v) {
        line_str(l, "nan");
        return;
    }
    if (v < 0.0f) {
        line_str(l, "-");
        v = -v;
    }
    if (v > 4.0e9f) {
        line_str(l, "inf");
        return;
    }
    uint32_t whole = (uint32_t)v, frac = (uint32_t)((v - (float)whole) * 10000.0f + 0.5f);
    if (frac >= 10000u) {
        whole++;
        frac -= 10000u;
    }
    line_u32(l, whole);
    line_str(l, ".");
    for (uint32_t d = 1000u; d > 1u && frac < d; d /= 10u) line_str(l, "0");
    line_u32(l, frac);
}

static inline void line_end(app_line *l) {
    line_str(l, "\n");
    poet_port_log(l->buf);
    l->n = 0;
    l->buf[0] = 0;
}

static inline void app_log2(const char *a, const char *b) {
    app_line l = {{0}, 0};
    line_str(&l, a);
    line_str(&l, b);
    line_end(&l);
}

/* ---- data ------------------------------------------------------------------------------------------------ */
#if POET_DATA_U8
typedef uint8_t app_sample_t;
#else
typedef float app_sample_t;
#endif

/* One step on a batch laid out as the data tables are (bytes with their scale, or floats). */
static inline poet_status app_step(poet_trainer *tr, const app_sample_t *x, const int32_t *y) {
#if POET_DATA_U8
    return poet_train_step_u8(tr, x, POET_DATA_SCALE, y, POET_APP_LR);
#else
    return poet_train_step_f32(tr, x, y, POET_APP_LR);
#endif
}

static inline poet_status app_infer(poet_trainer *tr, const app_sample_t *x, float *logits) {
#if POET_DATA_U8
    return poet_infer_u8(tr, x, POET_DATA_SCALE, logits);
#else
    return poet_infer_f32(tr, x, logits);
#endif
}

/* Held-out accuracy in 1/10000 (the batches of the test table; a last partial batch is left out). */
static inline uint32_t app_accuracy(poet_trainer *tr, app_sample_t *xbuf, float *logits, uint32_t batch,
                                    uint32_t classes) {
    uint32_t right = 0, seen = 0;
    for (uint32_t i = 0; i + batch <= POET_DATA_N_TEST; i += batch) {
        for (uint32_t k = 0; k < batch * POET_DATA_SAMPLE; k++) xbuf[k] = poet_data_x_test[i * POET_DATA_SAMPLE + k];
        if (app_infer(tr, xbuf, logits) != POET_OK) return 0;
        for (uint32_t b = 0; b < batch; b++) {
            uint32_t best = 0;
            for (uint32_t c = 1; c < classes; c++)
                if (logits[b * classes + c] > logits[b * classes + best]) best = c;
            right += best == poet_data_y_test[i + b];
        }
        seen += batch;
    }
    return seen ? (uint32_t)((10000ull * right) / seen) : 0u;
}

/* A failed call: one line naming it and the status, then stop with exit code 3 (4: a corrupted image). */
static inline void app_fail(const char *what, poet_status s) {
    app_line l = {{0}, 0};
    line_str(&l, "poet-app: ");
    line_str(&l, what);
    line_str(&l, ": ");
    line_str(&l, poet_status_str(s));
    line_end(&l);
    poet_port_exit(s == POET_ERR_IMAGE_CHECKSUM || s == POET_ERR_PROGRAM || s == POET_ERR_SHAPE ? 4 : 3);
}

/* Restore the newest checkpoint, or start afresh; says which on one line. Returns the data position. */
static inline uint32_t app_restore(poet_trainer *tr) {
    uint32_t pos = 0;
    poet_status s = poet_checkpoint_restore(tr, &pos);
    app_line l = {{0}, 0};
    if (s == POET_ERR_NO_CHECKPOINT) {
        line_str(&l, "poet-app: no checkpoint, starting at step 0");
        line_end(&l);
        return 0;
    }
    if (s != POET_OK) app_fail("cannot restore the checkpoint", s);
    line_str(&l, "poet-app: restored step ");
    line_u32(&l, poet_train_step_count(tr));
    line_str(&l, " (checkpoint ");
    line_u32(&l, tr->ckpt_seq);
    line_str(&l, ", valid slots ");
    line_u32(&l, tr->ckpt_valid);
    line_str(&l, ", data position ");
    line_u32(&l, pos);
    line_str(&l, ")");
    line_end(&l);
    return pos;
}

/* Start an application: the port, the trainer on this image (its checksums), the data tables against the model's
 * batch geometry, then the newest checkpoint (app_restore). Returns the data position. */
static inline uint32_t app_start(poet_trainer *tr) {
    poet_port_init();
    poet_status s = poet_train_init(tr, &poet_generated_model);
    if (s != POET_OK) app_fail("cannot train on this image", s);
    if (poet_train_batch(&poet_generated_model) != POET_APP_BATCH ||
        poet_train_sample_elems(&poet_generated_model) != POET_DATA_SAMPLE ||
        poet_train_classes(&poet_generated_model) != POET_DATA_CLASSES)
        app_fail("the data tables do not fit the model", POET_ERR_SHAPE);
    return app_restore(tr);
}

/* After a step: a progress line now and then, and a checkpoint every POET_APP_CKPT_EVERY steps. */
static inline void app_after_step(poet_trainer *tr, uint32_t pos) {
    const uint32_t k = poet_train_step_count(tr);
    app_line l = {{0}, 0};
    if (k % POET_APP_LOG_EVERY == 0 || k == POET_APP_STEPS) {
        line_str(&l, "step ");
        line_u32(&l, k);
        line_str(&l, " loss ");
        line_f32(&l, poet_train_last_loss(tr));
        line_end(&l);
    }
#if defined(POET_APP_STOP_AT) && POET_APP_STOP_AT > 0
    if (k == POET_APP_STOP_AT) poet_port_exit(9); /* test knob: the power goes off right after this step */
#endif
    if (k % POET_APP_CKPT_EVERY == 0 || k == POET_APP_STEPS) {
        poet_port_log("checkpoint begin\n");
        poet_status s = poet_checkpoint_save(tr, pos);
        if (s != POET_OK) app_fail("cannot save a checkpoint", s);
        line_str(&l, "checkpoint ");
        line_u32(&l, tr->ckpt_seq);
        line_str(&l, " saved at step ");
        line_u32(&l, k);
        line_end(&l);
    }
}

static inline void app_accuracy_line(const char *when, uint32_t acc) {
    if (!POET_DATA_N_TEST) return;
    app_line l = {{0}, 0};
    line_str(&l, "held-out accuracy ");
    line_str(&l, when);
    line_str(&l, " ");
    line_f32(&l, (float)acc / 10000.0f);
    line_end(&l);
}

static inline void app_done(poet_trainer *tr) {
    app_line l = {{0}, 0};
    line_str(&l, "done: ");
    line_u32(&l, poet_train_step_count(tr));
    line_str(&l, " steps, last loss ");
    line_f32(&l, poet_train_last_loss(tr));
    line_str(&l, ", checkpoints written in this run ");
    line_u32(&l, tr->ckpt_writes);
    line_end(&l);
}

/* Time an application spends between steps (waiting for data); a build knob for tests: busy iterations. */
#if defined(POET_APP_STEP_DELAY) && POET_APP_STEP_DELAY > 0
static inline void app_delay(void) {
    for (volatile uint32_t i = 0; i < (uint32_t)POET_APP_STEP_DELAY; i++) {
    }
}
#else
static inline void app_delay(void) {}
#endif

#endif

/* Example application: the board trains on samples that arrive one at a time from a sensor, with no host.
 * Built by poetc build MODEL --board B --data FILE.npz --on-device sensor. A callback (on a real board: the
 * sensor's interrupt or driver) pushes each labelled sample into a ring buffer; the main loop trains whenever a
 * batch is there, and saves a checkpoint every POET_APP_CKPT_EVERY steps with the count of samples consumed as
 * its data position. The sensor here is a stand-in that replays the data set linked into flash in a scrambled
 * order, starting from the restored position, so a run that is reset and resumed sees the same samples as one
 * that is not. Only the C API (poet/train.h) is used. */
#include "app_util.h"
#include "model.h"

#define RING (2u * POET_APP_BATCH) /* samples the ring buffer holds */

typedef struct {
    app_sample_t x[RING][POET_DATA_SAMPLE];
    int32_t y[RING];
    uint32_t head, tail; /* samples pushed and popped (free-running counters) */
} ring_buffer;

static ring_buffer ring;
static poet_trainer tr;
static app_sample_t x[POET_APP_BATCH * POET_DATA_SAMPLE];
static int32_t y[POET_APP_BATCH];
static float logits[POET_APP_BATCH * POET_DATA_CLASSES];

/* ---- the application callback: one sample into the ring, if there is room ---------------------------- */
typedef int (*sensor_callback)(ring_buffer *r, void *ctx);

static int ring_push(ring_buffer *r, const app_sample_t *sample, int32_t label) {
    if (r->head - r->tail >= RING) return 0; /* full: the sample is not taken */
    const uint32_t k = r->head % RING;
    for (uint32_t i = 0; i < POET_DATA_SAMPLE; i++) r->x[k][i] = sample[i];
    r->y[k] = label;
    r->head++;
    return 1;
}

/* The sensor stand-in: sample number n is the table's sample (n * 7919) mod N (a fixed scramble). */
typedef struct {
    uint32_t produced; /* samples delivered since the start of the run */
} fake_sensor;

static int fake_sensor_read(ring_buffer *r, void *ctx) {
    fake_sensor *s = (fake_sensor *)ctx;
    const uint32_t i = (uint32_t)(((uint64_t)s->produced * 7919u) % POET_DATA_N);
    if (!ring_push(r, &poet_data_x[i * POET_DATA_SAMPLE], (int32_t)poet_data_y[i])) return 0;
    s->produced++;
    return 1;
}

/* A batch out of the ring, when one is there. */
static int ring_pop_batch(ring_buffer *r) {
    if (r->head - r->tail < POET_APP_BATCH) return 0;
    for (uint32_t b = 0; b < POET_APP_BATCH; b++, r->tail++) {
        const uint32_t k = r->tail % RING;
        for (uint32_t i = 0; i < POET_DATA_SAMPLE; i++) x[b * POET_DATA_SAMPLE + i] = r->x[k][i];
        y[b] = r->y[k];
    }
    return 1;
}

int main(void) {
    fake_sensor sensor = {app_start(&tr)}; /* the data position: samples consumed by the restored steps */
    sensor_callback callback = fake_sensor_read;
    if (poet_train_step_count(&tr) == 0)
        app_accuracy_line("before training", app_accuracy(&tr, x, logits, POET_APP_BATCH, POET_DATA_CLASSES));
    uint32_t consumed = sensor.produced;
    while (poet_train_step_count(&tr) < POET_APP_STEPS) {
        app_delay();
        callback(&ring, &sensor); /* "an interrupt": one sample per turn of the loop */
        if (!ring_pop_batch(&ring)) continue;
        poet_status s = app_step(&tr, x, y);
        if (s != POET_OK) app_fail("training step failed", s);
        consumed += POET_APP_BATCH;
        app_after_step(&tr, consumed);
    }
    app_accuracy_line("after training", app_accuracy(&tr, x, logits, POET_APP_BATCH, POET_DATA_CLASSES));
    app_done(&tr);
    poet_port_exit(0);
    return 0;
}

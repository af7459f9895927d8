/* Example application: the board trains on a data set linked into its flash, with no host.
 * Built by poetc build MODEL --board B --data FILE.npz --on-device flash (app/ of the build directory): the
 * data set is a const table (data.c), the run's length, learning rate and checkpoint interval are in
 * app_config.h. At boot it restores the newest checkpoint (or starts afresh), then trains batch after batch
 * through the table, saving a checkpoint every POET_APP_CKPT_EVERY steps; a reset at any moment loses at most
 * the steps since the last checkpoint. Only the C API (poet/train.h) is used. */
#include "app_util.h"
#include "model.h"

static poet_trainer tr;
static app_sample_t x[POET_APP_BATCH * POET_DATA_SAMPLE];
static int32_t y[POET_APP_BATCH];
static float logits[POET_APP_BATCH * POET_DATA_CLASSES];

/* The batch at data position pos (samples consumed so far): the table's samples in order, wrapping around. */
static void load_batch(uint32_t pos) {
    for (uint32_t b = 0; b < POET_APP_BATCH; b++) {
        const uint32_t i = (pos + b) % POET_DATA_N;
        for (uint32_t k = 0; k < POET_DATA_SAMPLE; k++) x[b * POET_DATA_SAMPLE + k] = poet_data_x[i * POET_DATA_SAMPLE + k];
        y[b] = (int32_t)poet_data_y[i];
    }
}

int main(void) {
    uint32_t pos = app_start(&tr);
    if (poet_train_step_count(&tr) == 0)
        app_accuracy_line("before training", app_accuracy(&tr, x, logits, POET_APP_BATCH, POET_DATA_CLASSES));
    while (poet_train_step_count(&tr) < POET_APP_STEPS) {
        app_delay();
        load_batch(pos);
        poet_status s = app_step(&tr, x, y);
        if (s != POET_OK) app_fail("training step failed", s);
        pos = (pos + POET_APP_BATCH) % POET_DATA_N;
        app_after_step(&tr, pos);
    }
    app_accuracy_line("after training", app_accuracy(&tr, x, logits, POET_APP_BATCH, POET_DATA_CLASSES));
    app_done(&tr);
    poet_port_exit(0);
    return 0;
}

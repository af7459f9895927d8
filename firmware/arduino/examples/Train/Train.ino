/* Train: the board trains the exported model on the data set linked into the library, with no host, and keeps
 * what it learned across resets (checkpoints every POET_APP_CKPT_EVERY steps). Only the C API is used
 * (docs/c-api.md). Storage here is a RAM array, so checkpoints last until power-off: give poet_arduino_io the
 * read/write of an SD card or flash driver to keep them across power cuts. */
#include <Arduino.h>
#include <PoetTrain.h>
#include <string.h>

static uint8_t storage[POET_ARDUINO_STORAGE_BYTES];

static poet_status storage_read(uint32_t addr, void *buf, uint32_t n) {
    memcpy(buf, storage + addr, n);
    return POET_OK;
}

static poet_status storage_write(uint32_t addr, const void *buf, uint32_t n) {
    memcpy(storage + addr, buf, n);
    return POET_OK;
}

static void log_line(const char *line) { Serial.print(line); }
static uint32_t micros32(void) { return (uint32_t)micros(); }

static const poet_arduino_io io = {storage_read, storage_write, sizeof storage, log_line, micros32};

#if POET_DATA_U8
typedef uint8_t sample_t;
#else
typedef float sample_t;
#endif

static poet_trainer tr;
static uint32_t pos; /* data position: the next sample of the table */
static sample_t x[POET_APP_BATCH * POET_DATA_SAMPLE];
static int32_t y[POET_APP_BATCH];

static void halt(const char *what, poet_status s) {
    Serial.print("poet: ");
    Serial.print(what);
    Serial.print(": ");
    Serial.println(poet_status_str(s));
    for (;;) delay(1000);
}

void setup() {
    Serial.begin(115200);
    poet_arduino_begin(&io);
    poet_status s = poet_train_init(&tr, &poet_generated_model);
    if (s != POET_OK) halt("cannot train on this image", s);
    s = poet_checkpoint_restore(&tr, &pos);
    if (s == POET_OK) {
        Serial.print("restored step ");
        Serial.println(poet_train_step_count(&tr));
    } else if (s != POET_ERR_NO_CHECKPOINT) {
        halt("cannot restore the checkpoint", s);
    }
}

void loop() {
    if (poet_train_step_count(&tr) >= POET_APP_STEPS) return;
    for (uint32_t b = 0; b < POET_APP_BATCH; b++) {
        const uint32_t i = (pos + b) % POET_DATA_N;
        memcpy(&x[b * POET_DATA_SAMPLE], &poet_data_x[i * POET_DATA_SAMPLE], sizeof(sample_t) * POET_DATA_SAMPLE);
        y[b] = (int32_t)poet_data_y[i];
    }
#if POET_DATA_U8
    poet_status s = poet_train_step_u8(&tr, x, POET_DATA_SCALE, y, POET_APP_LR);
#else
    poet_status s = poet_train_step_f32(&tr, x, y, POET_APP_LR);
#endif
    if (s != POET_OK) halt("training step failed", s);
    pos = (pos + POET_APP_BATCH) % POET_DATA_N;
    const uint32_t k = poet_train_step_count(&tr);
    if (k % POET_APP_LOG_EVERY == 0) {
        Serial.print("step ");
        Serial.print(k);
        Serial.print(" loss ");
        Serial.println(poet_train_last_loss(&tr), 4);
    }
    if (k % POET_APP_CKPT_EVERY == 0 || k == POET_APP_STEPS) {
        s = poet_checkpoint_save(&tr, pos);
        if (s != POET_OK) halt("cannot save a checkpoint", s);
    }
}

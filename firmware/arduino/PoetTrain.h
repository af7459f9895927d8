/* The library's header for sketches: the C API (poet/train.h, docs/c-api.md), the model this library was
 * exported from (model.h: poet_generated_model), its data set (data.h) and run settings (app_config.h), and the
 * port's callbacks (poet_arduino.h). */
#ifndef POET_TRAIN_ARDUINO_H
#define POET_TRAIN_ARDUINO_H

#ifdef __cplusplus
extern "C" {
#endif
#include "app_config.h"
#include "data.h"
#include "model.h"
#include "poet/train.h"
#include "poet_arduino.h"
#ifdef __cplusplus
}
#endif

/* Storage the checkpoints (and the schedule's paging) need: the io's storage_bytes must be at least this. */
#define POET_ARDUINO_STORAGE_BYTES (POET_MODEL_CKPT_ADDR + 2u * POET_MODEL_CKPT_SLOT_BYTES)

#endif

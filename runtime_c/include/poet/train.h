/* The application's API: train a built model on the device, with no host (docs/c-api.md).
 *
 *   poet_trainer tr;
 *   poet_train_init(&tr, &poet_generated_model);      tables, image checksums, initial parameters
 *   poet_checkpoint_restore(&tr, &pos);               the newest valid checkpoint, if any (else a fresh start)
 *   for (;;) {
 *       ... fill x (batch x sample floats or bytes) and y (batch labels) from the application's data ...
 *       poet_train_step_f32(&tr, x, y, lr);           one step; its loss: poet_train_last_loss(&tr)
 *       if (poet_train_step_count(&tr) % every == 0) poet_checkpoint_save(&tr, pos);
 *   }
 *   poet_infer_f32(&tr, x, logits);                   the inference program on a batch
 *
 * Checkpoints hold every parameter the device keeps (RAM- and storage-homed: trainable and frozen ones not in
 * flash), the optimizer's momentum buffers, BatchNorm running statistics, the step count, the last loss and the
 * application's data position. They go to two alternating slots on the port's storage (the pager: a file under
 * QEMU and on the host, the SD card or internal flash on a board) after the programs' own storage. Each slot is
 *   header (36 bytes, little-endian): magic "PCKP", version u16, 0 u16, sequence u32, step u32, data position u32,
 *                                     last loss f32, payload bytes u32, build hash [8]
 *   payload: the tensors of the model's params[] table, in its order, each its bytes
 *   CRC32 (u32) of the header and the payload
 * A save writes the slot that does not hold the newest checkpoint, payload first, header and CRC last; a write
 * torn by a reset leaves that slot failing its CRC, and a restore takes the valid slot with the higher sequence
 * number, so at most the steps since the last completed save are lost. Every function returns a poet_status
 * (poet_status_str() names it). Single-threaded; no allocation. */
#ifndef POET_TRAIN_H
#define POET_TRAIN_H

#include <stdint.h>

#include "poet.h"

#ifdef __cplusplus
extern "C" {
#endif

#define POET_CKPT_MAGIC 0x504B4350u /* "PCKP" */
#define POET_CKPT_VERSION 1u
#define POET_CKPT_HEADER_BYTES 36u

typedef struct {
    const poet_model *model;
    uint32_t steps;     /* training steps done, counting those restored from a checkpoint */
    float last_loss;    /* loss of the last step (or of the restored checkpoint); 0 before any */
    uint32_t ckpt_seq;  /* sequence number of the newest checkpoint written or restored; 0: none */
    uint32_t ckpt_valid; /* after poet_checkpoint_restore: bit k set when slot k held a valid checkpoint */
    uint32_t ckpt_writes; /* checkpoints written since poet_train_init */
} poet_trainer;

/* Check the tables against the runtime (poet_model_validate) and the image against its checksums
 * (POET_ERR_IMAGE_CHECKSUM: corrupted, do not train), then give the parameters their initial values. */
poet_status poet_train_init(poet_trainer *tr, const poet_model *m);

/* Batch geometry of the model: samples per batch, elements per sample, classes (logits per sample), and whether
 * the model takes its input as bytes (built with --input-u8). */
uint32_t poet_train_batch(const poet_model *m);
uint32_t poet_train_sample_elems(const poet_model *m);
uint32_t poet_train_classes(const poet_model *m);
int poet_train_input_is_u8(const poet_model *m);

/* One training step on a batch: x holds batch x sample values (float, or bytes: value = scale * byte; a model
 * built with --input-u8 takes the bytes as they are and its own scale), y the batch's labels in 0..classes-1.
 * A step that makes a parameter or the loss non-finite fails (POET_ERR_NONFINITE_PARAM, POET_ERR_NONFINITE) and
 * is not counted; the parameters are then damaged: restore a checkpoint. */
poet_status poet_train_step_f32(poet_trainer *tr, const float *x, const int32_t *y, float lr);
poet_status poet_train_step_u8(poet_trainer *tr, const uint8_t *x, float scale, const int32_t *y, float lr);

/* Inference on a batch: logits gets batch x classes floats. */
poet_status poet_infer_f32(poet_trainer *tr, const float *x, float *logits);
poet_status poet_infer_u8(poet_trainer *tr, const uint8_t *x, float scale, float *logits);

/* Save a checkpoint (with the application's data position, e.g. samples consumed) to the older slot. */
poet_status poet_checkpoint_save(poet_trainer *tr, uint32_t data_pos);
/* Restore the newest valid checkpoint of this build: parameters, optimizer state, running statistics, step
 * count, last loss; *data_pos gets its data position. POET_ERR_NO_CHECKPOINT when neither slot is valid (the
 * parameters keep their values). */
poet_status poet_checkpoint_restore(poet_trainer *tr, uint32_t *data_pos);

/* Bytes of one checkpoint: header, payload, CRC (a slot, m->ckpt_slot_bytes, is this rounded up). */
uint32_t poet_checkpoint_bytes(const poet_model *m);

static inline uint32_t poet_train_step_count(const poet_trainer *tr) { return tr->steps; }
static inline float poet_train_last_loss(const poet_trainer *tr) { return tr->last_loss; }

#ifdef __cplusplus
}
#endif

#endif

/* The port of an Arduino library that poetc exports (poetc export DIR --arduino OUT): the sketch hands the
 * runtime its storage (for checkpoints, and paging if the schedule pages), a clock and a text output, as
 * callbacks; nothing else of the board is used. The link to a host is not part of the library. */
#ifndef POET_ARDUINO_H
#define POET_ARDUINO_H

#include <stdint.h>

#include "poet/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    /* storage of at least storage_bytes bytes, byte-addressed: an SD card, external or internal flash, FRAM
     * (checkpoints must survive a power cut: RAM does not) */
    poet_status (*read)(uint32_t addr, void *buf, uint32_t n);
    poet_status (*write)(uint32_t addr, const void *buf, uint32_t n);
    uint32_t storage_bytes;
    void (*log)(const char *line); /* may be NULL */
    uint32_t (*micros)(void);      /* may be NULL: ticks are then 0 */
} poet_arduino_io;

/* Before poet_train_init: the callbacks the runtime uses (kept by pointer). */
void poet_arduino_begin(const poet_arduino_io *io);

#ifdef __cplusplus
}
#endif

#endif

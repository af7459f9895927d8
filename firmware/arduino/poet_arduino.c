/* poet/port.h for an exported Arduino library: everything through the sketch's callbacks (poet_arduino.h). */
#include "poet_arduino.h"

#include "poet/port.h"

static const poet_arduino_io *io;

void poet_arduino_begin(const poet_arduino_io *p) { io = p; }

void poet_port_init(void) {}

/* No link to a host in the library: the byte stream is closed. */
int poet_port_getc(void) { return -1; }
void poet_port_write(const uint8_t *buf, size_t n) {
    (void)buf;
    (void)n;
}
void poet_port_flush(void) {}

uint64_t poet_port_ticks(void) { return io && io->micros ? io->micros() : 0u; }
uint32_t poet_port_tick_hz(void) { return 1000000u; }
const char *poet_port_name(void) { return "arduino"; }

uint32_t poet_port_pager_bytes(void) { return io ? io->storage_bytes : 0u; }

poet_status poet_port_pager_write(uint32_t addr, const void *buf, uint32_t n) {
    if (!io || !io->write || (uint64_t)addr + n > io->storage_bytes) return POET_ERR_PAGER_IO;
    return io->write(addr, buf, n);
}

poet_status poet_port_pager_read(uint32_t addr, void *buf, uint32_t n) {
    if (!io || !io->read || (uint64_t)addr + n > io->storage_bytes) return POET_ERR_PAGER_IO;
    return io->read(addr, buf, n);
}

/* The application's storage callbacks are synchronous: a transfer completes when it starts (runtime_c/src/pager.c),
 * and the program's waits return at once. */
poet_status poet_port_pager_start(poet_xfer *x) { return poet_pager_now(x); }
void poet_port_pager_poll(poet_xfer *x) { (void)x; }

void poet_port_log(const char *msg) {
    if (io && io->log) io->log(msg);
}

void poet_port_exit(int code) {
    (void)code;
    for (;;) {
    }
}

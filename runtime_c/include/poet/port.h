/* The port interface: everything board-specific. One implementation per folder of firmware/. */
#ifndef POET_PORT_H
#define POET_PORT_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

void poet_port_init(void);

/* Byte stream to the host harness. getc blocks; it returns -1 when the stream is closed for good. */
int poet_port_getc(void);
void poet_port_write(const uint8_t *buf, size_t n);
void poet_port_flush(void);

/* A monotonically increasing counter (cycles on real boards, instructions on QEMU, ns on the host). */
uint64_t poet_port_ticks(void);
uint32_t poet_port_tick_hz(void);
const char *poet_port_name(void);

/* Pager backend: byte-addressed storage of at least poet_port_pager_bytes(). Synchronous calls: start-up,
 * the link's reads and writes of storage-homed tensors. */
uint32_t poet_port_pager_bytes(void);
poet_status poet_port_pager_write(uint32_t addr, const void *buf, uint32_t n);
poet_status poet_port_pager_read(uint32_t addr, void *buf, uint32_t n);

/* A line of text for a person (diagnostics, an application's progress): QEMU's console through semihosting, the
 * UART on a board, stdout on the host. Not for use while the link serves the harness on the same UART. */
void poet_port_log(const char *msg);

/* Asynchronous transfers: what programs use (PAGE_OUT, PAGE_IN, LOAD, STORE start one; WAIT waits for it).
 * A transfer moves n bytes between RAM (buf) and storage at addr, then the 4-byte trailer (the CRC32) at
 * addr + n. The runtime owns the record from start until done; at most the board's pager_queue transfers are
 * started and not done (the program's wait points see to it), and the runtime never touches buf meanwhile. */
typedef struct {
    uint32_t addr;
    uint8_t *buf;          /* RAM side: read from (write = 1) or written to (write = 0) */
    uint32_t n;
    uint8_t trailer[4];    /* written after the data (write = 1), or read after it (write = 0) */
    uint8_t write;         /* 1: RAM -> storage (PAGE_OUT, STORE); 0: storage -> RAM (PAGE_IN, LOAD) */
    volatile uint8_t done; /* set by the port once the transfer has finished, well or not (status) */
    poet_status status;
    uint32_t port_state; /* the port's own (a DMA state machine's step, a countdown) */
} poet_xfer;

/* Start a transfer; a port without DMA may do all of it here (and set done). An error status means it did not
 * start. */
poet_status poet_port_pager_start(poet_xfer *x);
/* Make progress on a started transfer and set x->done when it has finished. It must not block for long: the
 * runtime calls it in a loop to wait, and between instructions to keep queued work moving. */
void poet_port_pager_poll(poet_xfer *x);

/* Helpers the runtime gives ports (runtime_c/src/pager.c). poet_pager_now: the whole transfer at once through
 * poet_port_pager_write/read (ports without DMA). poet_pager_late_start/poll: the test pager, which completes
 * a transfer only at its `polls`-th poll (for a read the destination holds 0xFF bytes until then, for a write
 * the data is copied from RAM only then), so a missing wait shows as wrong data, and transfers complete in the
 * order they are waited for, not the order they started. */
poet_status poet_pager_now(poet_xfer *x);
void poet_pager_late_start(poet_xfer *x, uint32_t polls);
void poet_pager_late_poll(poet_xfer *x);

/* Leave the program (return to the OS, stop QEMU, or park the core). */
void poet_port_exit(int code);

#endif

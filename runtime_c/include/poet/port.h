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

/* Pager backend: byte-addressed storage of at least poet_port_pager_bytes(). */
uint32_t poet_port_pager_bytes(void);
poet_status poet_port_pager_write(uint32_t addr, const void *buf, uint32_t n);
poet_status poet_port_pager_read(uint32_t addr, void *buf, uint32_t n);

/* A line of text for a person (diagnostics, an application's progress): QEMU's console through semihosting, the
 * UART on a board, stdout on the host. Not for use while the link serves the harness on the same UART. */
void poet_port_log(const char *msg);

/* Leave the program (return to the OS, stop QEMU, or park the core). */
void poet_port_exit(int code);

#endif

/* Arm semihosting (BKPT 0xAB on M-profile): host-file I/O, console text and exit, as QEMU implements them
 * with -semihosting-config enable=on. Without that option the BKPT locks the core up: only the QEMU ports
 * use this file. SYS_READ and SYS_WRITE return the number of bytes NOT transferred. */
#ifndef POET_SEMIHOST_H
#define POET_SEMIHOST_H

#include <stdint.h>

#include "poet/status.h"

void sh_write0(const char *s);
void sh_exit(int code) __attribute__((noreturn));

/* The pager backend: a host file in QEMU's working directory, created (truncated) on first use. */
poet_status sh_pager_write(uint32_t addr, const void *buf, uint32_t n);
poet_status sh_pager_read(uint32_t addr, void *buf, uint32_t n);
void sh_pager_close(void);

#endif

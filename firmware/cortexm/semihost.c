/* Semihosting calls and the host-file pager of the QEMU ports (see semihost.h). */
#include "semihost.h"


enum {
    SYS_OPEN = 0x01,
    SYS_CLOSE = 0x02,
    SYS_WRITE0 = 0x04,
    SYS_WRITE = 0x05,
    SYS_READ = 0x06,
    SYS_SEEK = 0x0A,
    SYS_EXIT_EXTENDED = 0x20,
};
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u
#define OPEN_MODE_RPLUS_B 3 /* "r+b": an existing file, read and write */
#define OPEN_MODE_WPLUS_B 7 /* "w+b": create or truncate, read and write */

#ifndef POET_PAGER_FILE
#define POET_PAGER_FILE "poet-pager.bin"
#endif

static int32_t sh_call(uint32_t op, const void *arg) {
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return (int32_t)r0;
}

void sh_write0(const char *s) { sh_call(SYS_WRITE0, s); }

void sh_exit(int code) {
    uint32_t args[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)code};
    sh_call(SYS_EXIT_EXTENDED, args);
    for (;;) __asm__ volatile("nop"); /* not reached under QEMU */
}

static int32_t pager_fd = -1;

static poet_status pager_open(void) {
    if (pager_fd >= 0) return POET_OK;
    static const char path[] = POET_PAGER_FILE;
    /* an existing file is kept (checkpoints survive a restart of QEMU: poet/train.h), else created */
    uint32_t args[3] = {(uint32_t)(uintptr_t)path, OPEN_MODE_RPLUS_B, (uint32_t)(sizeof path - 1)};
    pager_fd = sh_call(SYS_OPEN, args);
    if (pager_fd < 0) {
        args[1] = OPEN_MODE_WPLUS_B;
        pager_fd = sh_call(SYS_OPEN, args);
    }
    return pager_fd >= 0 ? POET_OK : POET_ERR_PAGER_IO;
}

static poet_status pager_seek(uint32_t addr) {
    uint32_t args[2] = {(uint32_t)pager_fd, addr};
    return sh_call(SYS_SEEK, args) == 0 ? POET_OK : POET_ERR_PAGER_IO;
}

poet_status sh_pager_write(uint32_t addr, const void *buf, uint32_t n) {
#if defined(POET_PAGER_WRITE_DELAY) && POET_PAGER_WRITE_DELAY > 0
    /* test only (make EXTRA_CFLAGS=-DPOET_PAGER_WRITE_DELAY=N): a slow storage device, so that a test killing
     * QEMU lands inside multi-write operations (checkpoints) */
    for (volatile uint32_t i = 0; i < (uint32_t)POET_PAGER_WRITE_DELAY; i++) {
    }
#endif
    poet_status s = pager_open();
    if (s == POET_OK) s = pager_seek(addr);
    if (s != POET_OK) return s;
    uint32_t args[3] = {(uint32_t)pager_fd, (uint32_t)(uintptr_t)buf, n};
    return sh_call(SYS_WRITE, args) == 0 ? POET_OK : POET_ERR_PAGER_IO; /* 0 bytes left unwritten */
}

poet_status sh_pager_read(uint32_t addr, void *buf, uint32_t n) {
    poet_status s = pager_open();
    if (s == POET_OK) s = pager_seek(addr);
    if (s != POET_OK) return s;
    uint32_t args[3] = {(uint32_t)pager_fd, (uint32_t)(uintptr_t)buf, n};
    return sh_call(SYS_READ, args) == 0 ? POET_OK : POET_ERR_PAGER_IO; /* short read: never written */
}

void sh_pager_close(void) {
    if (pager_fd < 0) return;
    uint32_t args[1] = {(uint32_t)pager_fd};
    sh_call(SYS_CLOSE, args);
    pager_fd = -1;
}

#if defined(POET_PORT_SEMIHOST) && POET_PORT_SEMIHOST
/* ---- the semihosting half of a QEMU port (its port.c has the UART, the tick counter and the name) ---------- */
#include "cm.h"
#include "poet/port.h"

#ifndef POET_PAGER_BYTES
#define POET_PAGER_BYTES 0x4000000u
#endif

uint32_t poet_port_tick_hz(void) { return 1000000000u; } /* ticks are instructions: 1 ns each under -icount 0 */

uint32_t poet_port_pager_bytes(void) { return POET_PAGER_BYTES; }

poet_status poet_port_pager_write(uint32_t addr, const void *buf, uint32_t n) {
    if ((uint64_t)addr + n > POET_PAGER_BYTES) return POET_ERR_PAGER_IO;
    return sh_pager_write(addr, buf, n);
}

poet_status poet_port_pager_read(uint32_t addr, void *buf, uint32_t n) {
    if ((uint64_t)addr + n > POET_PAGER_BYTES) return POET_ERR_PAGER_IO;
    return sh_pager_read(addr, buf, n);
}

/* The host file is read and written at once (semihosting is synchronous); a test build with
 * -DPOET_PAGER_LATE=N makes it the runtime's late-completion test pager instead. */
#ifndef POET_PAGER_LATE
#define POET_PAGER_LATE 0
#endif

poet_status poet_port_pager_start(poet_xfer *x) {
    if ((uint64_t)x->addr + x->n + 4u > POET_PAGER_BYTES) return POET_ERR_PAGER_IO;
    if (POET_PAGER_LATE) {
        poet_pager_late_start(x, POET_PAGER_LATE);
        return POET_OK;
    }
    poet_pager_now(x);
    return POET_OK;
}

void poet_port_pager_poll(poet_xfer *x) { poet_pager_late_poll(x); }

void cm_port_log(const char *msg) { sh_write0(msg); }

void cm_port_fault_exit(void) { sh_exit(POET_EXIT_FAULT); }

void poet_port_exit(int code) {
    char msg[80], *p = msg;
    p = cm_fmt_str(p, "poet: stack high water ");
    p = cm_fmt_dec(p, cm_stack_size() - cm_stack_unused());
    p = cm_fmt_str(p, " of ");
    p = cm_fmt_dec(p, cm_stack_size());
    cm_fmt_str(p, " bytes\n");
    sh_write0(msg);
    sh_pager_close();
    sh_exit(code);
}
#endif

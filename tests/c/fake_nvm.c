/* Test doubles for the Cortex-M pagers, built on the host with the firmware's own sdcard.c and flashpager.c:
 *   - an SD card in SPI mode (command frames, R1/R7/OCR responses, data tokens, busy), SDSC or SDHC addressing
 *   - NOR flash (erase sets a page to 0xFF, programming can only clear bits)
 * and a small C API for ctypes (tests/c/test_port_pagers.py). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "flashpager.h"
#include "sdcard.h"

/* ---- fake SD card ---------------------------------------------------------------------------------------- */
#define CARD_BYTES (16u << 20)
enum { ST_CMD, ST_WRITE_TOKEN, ST_WRITE_DATA };

static struct {
    uint8_t *mem;
    int sdhc, selected, state, acmd, init_polls, fast;
    uint8_t cmd[6];
    int ncmd;
    uint8_t out[600];
    int nout, pos;
    uint8_t wbuf[514];
    int nw;
    uint32_t waddr;
    long block_reads, block_writes, bad_frames;
} sd_fake;

static void queue(const uint8_t *b, int n) {
    memcpy(sd_fake.out + sd_fake.nout, b, (size_t)n);
    sd_fake.nout += n;
}

static void queue1(uint8_t b) { queue(&b, 1); }

static uint32_t byte_addr(uint32_t arg) { return sd_fake.sdhc ? arg * 512u : arg; }

static void command(void) {
    uint8_t c = sd_fake.cmd[0] & 0x3Fu;
    uint32_t arg = (uint32_t)sd_fake.cmd[1] << 24 | (uint32_t)sd_fake.cmd[2] << 16 | (uint32_t)sd_fake.cmd[3] << 8 |
                   sd_fake.cmd[4];
    sd_fake.nout = sd_fake.pos = 0;
    queue1(0xFF); /* Ncr: one filler byte before R1 */
    int acmd = sd_fake.acmd;
    sd_fake.acmd = 0;
    if ((c == 0 && sd_fake.cmd[5] != 0x95) || (c == 8 && sd_fake.cmd[5] != 0x87)) {
        sd_fake.bad_frames++;
        queue1(0x08); /* CRC error */
        return;
    }
    if (acmd && c == 41) {
        queue1(++sd_fake.init_polls < 3 ? 0x01 : 0x00);
        return;
    }
    switch (c) {
    case 0: queue1(0x01); break;
    case 8: { uint8_t r[5] = {0x01, 0, 0, 0x01, 0xAA}; queue(r, 5); break; }
    case 55: sd_fake.acmd = 1; queue1(sd_fake.init_polls < 3 ? 0x01 : 0x00); break;
    case 58: { uint8_t r[5] = {0x00, sd_fake.sdhc ? 0xC0 : 0x80, 0xFF, 0x80, 0x00}; queue(r, 5); break; }
    case 16: queue1(arg == 512 ? 0x00 : 0x40); break;
    case 17: {
        uint32_t a = byte_addr(arg);
        if (a % 512u || a + 512u > CARD_BYTES) { queue1(0x40); break; }
        uint8_t pre[4] = {0x00, 0xFF, 0xFF, 0xFE};
        queue(pre, 4);
        queue(sd_fake.mem + a, 512);
        uint8_t crc[2] = {0x12, 0x34};
        queue(crc, 2);
        sd_fake.block_reads++;
        break;
    }
    case 24: {
        uint32_t a = byte_addr(arg);
        if (a % 512u || a + 512u > CARD_BYTES) { queue1(0x40); break; }
        queue1(0x00);
        sd_fake.waddr = a;
        sd_fake.state = ST_WRITE_TOKEN;
        break;
    }
    default: queue1(0x04); /* illegal command */
    }
}

static uint8_t fake_xfer(uint8_t in) {
    if (!sd_fake.selected) return 0xFF;
    uint8_t ret = sd_fake.pos < sd_fake.nout ? sd_fake.out[sd_fake.pos++] : 0xFF;
    switch (sd_fake.state) {
    case ST_CMD:
        if (sd_fake.ncmd == 0 && (in & 0xC0u) != 0x40u) break; /* filler */
        sd_fake.cmd[sd_fake.ncmd++] = in;
        if (sd_fake.ncmd == 6) {
            sd_fake.ncmd = 0;
            command();
        }
        break;
    case ST_WRITE_TOKEN:
        if (sd_fake.pos >= sd_fake.nout && in == 0xFE) {
            sd_fake.state = ST_WRITE_DATA;
            sd_fake.nw = 0;
        }
        break;
    case ST_WRITE_DATA:
        sd_fake.wbuf[sd_fake.nw++] = in;
        if (sd_fake.nw == 514) {
            memcpy(sd_fake.mem + sd_fake.waddr, sd_fake.wbuf, 512);
            sd_fake.block_writes++;
            sd_fake.nout = sd_fake.pos = 0;
            uint8_t r[4] = {0x05, 0x00, 0x00, 0x00}; /* data accepted, then busy */
            queue(r, 4);
            sd_fake.state = ST_CMD;
        }
        break;
    }
    return ret;
}

static void fake_select(int on) {
    sd_fake.selected = on;
    sd_fake.ncmd = 0;
}

static void fake_fast(int fast) { sd_fake.fast = fast; }

/* A DMA engine on the fake SPI: the exchange happens only after `dma_late` polls of dma_done (the bytes to send
 * are read from RAM then, as a DMA engine reads them while it runs). */
static struct {
    const uint8_t *tx;
    uint8_t *rx;
    uint32_t ntx, nrx, left;
    int busy;
    long starts, bytes;
} dma;
static uint32_t dma_late;

static void fake_dma_start(const uint8_t *tx, uint32_t ntx, uint8_t *rx, uint32_t nrx) {
    dma.tx = tx;
    dma.rx = rx;
    dma.ntx = ntx;
    dma.nrx = nrx;
    dma.left = dma_late;
    dma.busy = 1;
    dma.starts++;
}

static int dma_by_time; /* the DMA advances with the simulated clock (t_sd_async_irq), not with dma_done calls */

static void dma_complete(void);

static int fake_dma_done(void) {
    if (!dma.busy) return 1;
    if (dma_by_time) return 0;
    if (dma.left) {
        dma.left--;
        return 0;
    }
    dma_complete();
    return 1;
}

static void dma_complete(void) {
    uint32_t n = dma.ntx > dma.nrx ? dma.ntx : dma.nrx;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t in = fake_xfer(i < dma.ntx ? dma.tx[i] : 0xFF);
        if (i < dma.nrx) dma.rx[i] = in;
    }
    dma.bytes += n;
    dma.busy = 0;
}

static const sd_spi fake_spi = {fake_xfer, fake_select, fake_fast, 0, 0, fake_dma_start, fake_dma_done};
static sd_card card;

int t_sd_init(int sdhc, uint32_t first_block) {
    free(sd_fake.mem);
    memset(&sd_fake, 0, sizeof sd_fake);
    sd_fake.mem = (uint8_t *)calloc(CARD_BYTES, 1);
    sd_fake.sdhc = sdhc;
    int s = sd_init(&card, &fake_spi, first_block);
    return s == POET_OK && sd_fake.fast && card.high_capacity == sdhc ? 0 : 1;
}

int t_sd_write(uint32_t addr, const uint8_t *src, uint32_t n) { return sd_pager_write(&card, addr, src, n); }
int t_sd_read(uint32_t addr, uint8_t *dst, uint32_t n) { return sd_pager_read(&card, addr, dst, n); }
const uint8_t *t_sd_card(void) { return sd_fake.mem; }
long t_sd_block_reads(void) { return sd_fake.block_reads; }
long t_sd_block_writes(void) { return sd_fake.block_writes; }
long t_sd_bad_frames(void) { return sd_fake.bad_frames; }

/* One asynchronous transfer of n bytes + the 4-byte trailer, the DMA completing each block `late` polls after
 * it starts; returns the status, or -1 if it finished without a poll while `late` > 0 (not in the background).
 * *polls gets the number of polls it took. */
int t_sd_async(int write, uint32_t addr, uint8_t *buf, uint32_t n, uint8_t *trailer, uint32_t late, long *polls) {
    poet_xfer x;
    memset(&x, 0, sizeof x);
    x.addr = addr;
    x.buf = buf;
    x.n = n;
    x.write = (uint8_t)write;
    if (write) memcpy(x.trailer, trailer, 4);
    dma_late = late;
    poet_status s = sd_async_start(&card, &x);
    if (s != POET_OK) return (int)s;
    long k = 0;
    while (!x.done) {
        if (sd_pager_read(&card, 0, trailer, 1) != POET_ERR_PAGER_IO) return -2; /* the bus is taken */
        sd_async_poll(&card, &x);
        k++;
    }
    *polls = k;
    if (!write) memcpy(trailer, x.trailer, 4);
    return late && !k ? -1 : (int)x.status;
}
/* The same transfer driven by the DMA's end interrupt alone (card.irq: the nRF52840's SPIM2 END, IRQ 35): the
 * core never polls; each tick of the simulated clock advances the running DMA, which ends `late` ticks after it
 * started and then raises the interrupt (sd_async_irq). Returns the status, -2 if a synchronous call got the bus
 * meanwhile, -3 if the chain broke (no DMA running, transfer not done). *ticks: the ticks it took, *irqs: the
 * interrupts, *blocks: the 512-byte DMAs among them. */
int t_sd_async_irq(int write, uint32_t addr, uint8_t *buf, uint32_t n, uint8_t *trailer, uint32_t late,
                   long *ticks, long *irqs, long *blocks) {
    poet_xfer x;
    memset(&x, 0, sizeof x);
    x.addr = addr;
    x.buf = buf;
    x.n = n;
    x.write = (uint8_t)write;
    if (write) memcpy(x.trailer, trailer, 4);
    dma_late = late;
    dma_by_time = 1;
    card.irq = 1;
    poet_status s = sd_async_start(&card, &x);
    long k = 0, i = 0, b = 0;
    int rc = 0, enabled = s == POET_OK && !x.done; /* the port enables the interrupt after start */
    while (s == POET_OK && !x.done) {
        if (sd_pager_read(&card, 0, trailer, 1) != POET_ERR_PAGER_IO) {
            rc = -2;
            break;
        }
        k++;
        if (!dma.busy || !enabled) {
            rc = -3;
            break;
        }
        if (dma.left) {
            dma.left--;
            continue;
        }
        if (dma.ntx == SD_BLOCK || dma.nrx == SD_BLOCK) b++;
        dma_complete();
        i++;
        enabled = sd_async_irq(&card); /* the END interrupt; 0: the handler disables it */
    }
    dma_by_time = 0;
    card.irq = 0;
    *ticks = k;
    *irqs = i;
    *blocks = b;
    if (rc) return rc;
    if (s != POET_OK) return (int)s;
    if (enabled) return -4; /* done, but the interrupt was left enabled */
    if (!write) memcpy(trailer, x.trailer, 4);
    return (int)x.status;
}
long t_sd_dma_starts(void) { return dma.starts; }
long t_sd_dma_bytes(void) { return dma.bytes; }

/* ---- fake NOR flash -------------------------------------------------------------------------------------- */
#define PAGE 4096u
static uint8_t *flash;
static uint32_t flash_bytes;
static long erases, bad_programs;
static flash_pager fp;

static void fake_erase(uintptr_t addr) {
    if ((addr - (uintptr_t)flash) % PAGE) bad_programs++;
    memset((void *)addr, 0xFF, PAGE);
    erases++;
}

static void fake_program(uintptr_t addr, uint32_t w) {
    if (addr % 4u || addr < (uintptr_t)flash || addr + 4u > (uintptr_t)flash + flash_bytes) {
        bad_programs++;
        return;
    }
    uint32_t old;
    memcpy(&old, (void *)addr, 4);
    old &= w; /* programming can only clear bits */
    memcpy((void *)addr, &old, 4);
}

static const fp_nvm fake_nvm = {PAGE, fake_erase, fake_program};

int t_fp_init(uint32_t bytes) {
    free(flash);
    flash = (uint8_t *)aligned_alloc(PAGE, bytes);
    memset(flash, 0x5A, bytes); /* not erased: the pager must erase before programming */
    flash_bytes = bytes;
    erases = bad_programs = 0;
    return fp_init(&fp, &fake_nvm, (uintptr_t)flash, bytes);
}

uint32_t t_fp_capacity(void) { return fp_capacity(&fp); }
int t_fp_write(uint32_t addr, const uint8_t *src, uint32_t n) { return fp_write(&fp, addr, src, n); }
int t_fp_read(uint32_t addr, uint8_t *dst, uint32_t n) { return fp_read(&fp, addr, dst, n); }
long t_fp_erases(void) { return erases; }
long t_fp_bad_programs(void) { return bad_programs; }

/* SD card over SPI: initialisation (CMD0, CMD8, ACMD41, CMD58), single-block read (CMD17) and write (CMD24),
 * and the read-modify-write byte pager. See sdcard.h. Timeouts are counted in bytes exchanged, so the driver
 * needs no timer: at 400 kHz a byte takes 20 us, at 4 MHz 2 us. */
#include "sdcard.h"

#include <string.h>

#define CMD0 0
#define CMD8 8
#define CMD16 16
#define CMD17 17
#define CMD24 24
#define CMD55 55
#define CMD58 58
#define ACMD41 41
#define R1_IDLE 0x01u
#define R1_ILLEGAL 0x04u
#define TOKEN_START 0xFEu
#define INIT_TRIES 20000u     /* ACMD41 rounds (the card may take up to 1 s to leave idle) */
#define WAIT_BYTES 200000u    /* polls for a data token or the end of busy (about 0.5 s at 4 MHz) */

static uint8_t xfer(sd_card *sd, uint8_t b) { return sd->spi->xfer(b); }

static void send_buf(sd_card *sd, const uint8_t *buf, size_t n) {
    if (sd->spi->write) {
        sd->spi->write(buf, n);
        return;
    }
    for (size_t i = 0; i < n; i++) xfer(sd, buf[i]);
}

static void recv_buf(sd_card *sd, uint8_t *buf, size_t n) {
    if (sd->spi->read) {
        sd->spi->read(buf, n);
        return;
    }
    for (size_t i = 0; i < n; i++) buf[i] = xfer(sd, 0xFF);
}

static int wait_ready(sd_card *sd) {
    for (uint32_t i = 0; i < WAIT_BYTES; i++)
        if (xfer(sd, 0xFF) == 0xFF) return 1;
    return 0;
}

static void deselect(sd_card *sd) {
    sd->spi->select(0);
    xfer(sd, 0xFF); /* one more byte so the card releases MISO */
}

/* Send a command (card selected); returns R1 (0xFF: no answer). */
static uint8_t command(sd_card *sd, uint8_t cmd, uint32_t arg) {
    if (cmd == ACMD41) {
        uint8_t r = command(sd, CMD55, 0);
        if (r > R1_IDLE) return r;
    }
    if (cmd != CMD0 && !wait_ready(sd)) return 0xFF;
    uint8_t frame[6] = {(uint8_t)(0x40u | cmd), (uint8_t)(arg >> 24), (uint8_t)(arg >> 16), (uint8_t)(arg >> 8),
                        (uint8_t)arg, 0x01u};
    if (cmd == CMD0) frame[5] = 0x95u; /* the only commands whose CRC is checked in SPI mode */
    if (cmd == CMD8) frame[5] = 0x87u;
    send_buf(sd, frame, sizeof frame);
    uint8_t r = 0xFF;
    for (int i = 0; i < 10 && (r & 0x80u); i++) r = xfer(sd, 0xFF);
    return r;
}

poet_status sd_init(sd_card *sd, const sd_spi *spi, uint32_t first_block) {
    memset(sd, 0, sizeof *sd);
    sd->spi = spi;
    sd->first_block = first_block;
    spi->set_fast(0);
    spi->select(0);
    for (int i = 0; i < 10; i++) xfer(sd, 0xFF); /* >= 74 clocks with CS high */
    spi->select(1);
    uint8_t r = 0xFF;
    for (int i = 0; i < 10 && r != R1_IDLE; i++) r = command(sd, CMD0, 0);
    if (r != R1_IDLE) goto fail;
    int v2 = 0;
    r = command(sd, CMD8, 0x1AAu);
    if (!(r & R1_ILLEGAL)) { /* SD v2: an R7 follows; the card must echo the check pattern */
        uint8_t r7[4];
        recv_buf(sd, r7, 4);
        if (r != R1_IDLE || (r7[2] & 0x0Fu) != 0x01u || r7[3] != 0xAAu) goto fail;
        v2 = 1;
    }
    uint32_t tries = 0;
    do {
        r = command(sd, ACMD41, v2 ? 0x40000000u : 0u); /* HCS: we handle high-capacity cards */
    } while (r == R1_IDLE && ++tries < INIT_TRIES);
    if (r != 0) goto fail;
    if (v2) {
        uint8_t ocr[4];
        if (command(sd, CMD58, 0) != 0) goto fail;
        recv_buf(sd, ocr, 4);
        sd->high_capacity = (ocr[0] & 0x40u) != 0; /* CCS */
    }
    if (!sd->high_capacity && command(sd, CMD16, SD_BLOCK) != 0) goto fail;
    deselect(sd);
    spi->set_fast(1);
    sd->ready = 1;
    return POET_OK;
fail:
    deselect(sd);
    return POET_ERR_PAGER_IO;
}

static uint32_t card_addr(const sd_card *sd, uint32_t block) {
    return sd->high_capacity ? block : block * SD_BLOCK;
}

poet_status sd_read_block(sd_card *sd, uint32_t block, uint8_t *dst) {
    if (!sd->ready) return POET_ERR_PAGER_IO;
    sd->spi->select(1);
    poet_status s = POET_ERR_PAGER_IO;
    if (command(sd, CMD17, card_addr(sd, block)) == 0) {
        uint8_t t = 0xFF;
        for (uint32_t i = 0; i < WAIT_BYTES && t == 0xFF; i++) t = xfer(sd, 0xFF);
        if (t == TOKEN_START) {
            uint8_t crc[2];
            recv_buf(sd, dst, SD_BLOCK);
            recv_buf(sd, crc, 2);
            s = POET_OK;
        }
    }
    deselect(sd);
    return s;
}

poet_status sd_write_block(sd_card *sd, uint32_t block, const uint8_t *src) {
    if (!sd->ready) return POET_ERR_PAGER_IO;
    sd->spi->select(1);
    poet_status s = POET_ERR_PAGER_IO;
    if (command(sd, CMD24, card_addr(sd, block)) == 0) {
        static const uint8_t head[2] = {0xFF, TOKEN_START}, crc[2] = {0xFF, 0xFF};
        uint8_t pre[2], tail[2];
        memcpy(pre, head, 2); /* bulk transfers may need RAM (EasyDMA): never send from flash */
        memcpy(tail, crc, 2);
        send_buf(sd, pre, 2);
        send_buf(sd, src, SD_BLOCK);
        send_buf(sd, tail, 2);
        uint8_t resp = xfer(sd, 0xFF);
        if ((resp & 0x1Fu) == 0x05u && wait_ready(sd)) s = POET_OK; /* data accepted, then busy ends */
    }
    deselect(sd);
    return s;
}

/* the block buffer holds block b (read it unless it does already) */
static poet_status load(sd_card *sd, uint32_t b) {
    if (sd->cache_valid && sd->cached == b) return POET_OK;
    sd->cache_valid = 0;
    poet_status s = sd_read_block(sd, b, sd->buf);
    if (s == POET_OK) {
        sd->cached = b;
        sd->cache_valid = 1;
    }
    return s;
}

poet_status sd_pager_read(sd_card *sd, uint32_t addr, void *dst, uint32_t n) {
    uint8_t *out = (uint8_t *)dst;
    if (sd->op.x) return POET_ERR_PAGER_IO; /* an asynchronous transfer owns the bus */
    while (n) {
        uint32_t b = sd->first_block + addr / SD_BLOCK, off = addr % SD_BLOCK;
        uint32_t k = SD_BLOCK - off < n ? SD_BLOCK - off : n;
        poet_status s;
        if (k == SD_BLOCK && !(sd->cache_valid && sd->cached == b)) {
            s = sd_read_block(sd, b, out); /* a whole block: straight into place */
        } else {
            s = load(sd, b);
            if (s == POET_OK) memcpy(out, sd->buf + off, k);
        }
        if (s != POET_OK) return s;
        out += k;
        addr += k;
        n -= k;
    }
    return POET_OK;
}

poet_status sd_pager_write(sd_card *sd, uint32_t addr, const void *src, uint32_t n) {
    const uint8_t *in = (const uint8_t *)src;
    if (sd->op.x) return POET_ERR_PAGER_IO;
    while (n) {
        uint32_t b = sd->first_block + addr / SD_BLOCK, off = addr % SD_BLOCK;
        uint32_t k = SD_BLOCK - off < n ? SD_BLOCK - off : n;
        poet_status s;
        if (k == SD_BLOCK) {
            if (sd->cache_valid && sd->cached == b) sd->cache_valid = 0;
            s = sd_write_block(sd, b, in); /* a whole block: no read needed */
        } else {
            s = load(sd, b); /* part of a block: read, merge, write back */
            if (s == POET_OK) {
                memcpy(sd->buf + off, in, k);
                s = sd_write_block(sd, b, sd->buf);
                if (s != POET_OK) sd->cache_valid = 0;
            }
        }
        if (s != POET_OK) return s;
        in += k;
        addr += k;
        n -= k;
    }
    return POET_OK;
}

/* ---- asynchronous transfers (sdcard.h) -------------------------------------------------------------------
 * Per card block the stream touches, one of:
 *   read   CMD17 (at once) -> RTOKEN: poll for the data token -> RDMA: 512 bytes by DMA -> CRC, deselect
 *   write  CMD24, 0xFF 0xFE (at once) -> WDMA: 512 bytes by DMA -> CRC, data response -> WBUSY: poll until the
 *          card has programmed the block (MISO 0xFF), deselect
 * A partial block of a write is read first (unless cached) and merged, then written. */
enum { A_BLOCK, A_RTOKEN, A_RDMA, A_WDMA, A_WBUSY };
#define POLL_BYTES 8u /* bytes exchanged per poll while waiting for a token or the end of busy */

static uint8_t stream_byte(const poet_xfer *x, uint32_t j) { return j < x->n ? x->buf[j] : x->trailer[j - x->n]; }

static void async_end(sd_card *sd, poet_status s) {
    sd_async *a = &sd->op;
    if (s != POET_OK) {
        sd->cache_valid = 0; /* whatever the block buffer held may be half-written */
        deselect(sd);
    }
    a->x->status = s;
    a->x->done = 1;
    a->x = NULL;
}

/* The stream bytes of this step copied into (to_card) or out of sd->buf. */
static void merge(sd_card *sd, int to_card) {
    sd_async *a = &sd->op;
    poet_xfer *x = a->x;
    for (uint32_t i = 0; i < a->k; i++) {
        uint32_t j = a->pos + i;
        if (to_card)
            sd->buf[a->off + i] = stream_byte(x, j);
        else if (j < x->n)
            x->buf[j] = sd->buf[a->off + i];
        else
            x->trailer[j - x->n] = sd->buf[a->off + i];
    }
}

static int start_read(sd_card *sd, uint8_t *into) {
    sd_async *a = &sd->op;
    sd->spi->select(1);
    if (command(sd, CMD17, card_addr(sd, a->block)) != 0) return 0;
    a->data = into;
    a->polls = 0;
    a->step = A_RTOKEN;
    return 1;
}

static int start_write(sd_card *sd, const uint8_t *from) {
    sd_async *a = &sd->op;
    sd->spi->select(1);
    if (command(sd, CMD24, card_addr(sd, a->block)) != 0) return 0;
    uint8_t pre[2] = {0xFF, TOKEN_START};
    send_buf(sd, pre, 2);
    a->data = (uint8_t *)(uintptr_t)from;
    sd->spi->dma_start(from, SD_BLOCK, 0, 0);
    a->step = A_WDMA;
    return 1;
}

/* With irq: n bytes read by DMA into op.peek. 0 while that DMA runs (started now, or earlier and not ended),
 * 1 once they are there (and counted as polls). */
static int peek(sd_card *sd, uint32_t n) {
    sd_async *a = &sd->op;
    if (!a->polling) {
        sd->spi->dma_start(0, 0, a->peek, n);
        a->polling = 1;
        return 0;
    }
    if (!sd->spi->dma_done()) return 0;
    a->polling = 0;
    a->polls += n;
    return 1;
}

int sd_async_irq(sd_card *sd) {
    if (!sd->op.x) return 0;
    sd_async_poll(sd, sd->op.x);
    return sd->op.x != NULL;
}

poet_status sd_async_start(sd_card *sd, poet_xfer *x) {
    if (!sd->ready || !sd->spi->dma_start || sd->op.x) return POET_ERR_PAGER_IO;
    sd->op = (sd_async){0};
    sd->op.x = x;
    x->done = 0;
    x->status = POET_OK;
    sd_async_poll(sd, x);
    return POET_OK;
}

void sd_async_poll(sd_card *sd, poet_xfer *x) {
    sd_async *a = &sd->op;
    if (x->done || a->x != x) return;
    for (;;) {
        switch (a->step) {
        case A_BLOCK: { /* the next block of the stream, or the end */
            const uint32_t total = x->n + 4u;
            if (a->pos == total) {
                async_end(sd, POET_OK);
                return;
            }
            const uint32_t at = x->addr + a->pos;
            a->block = sd->first_block + at / SD_BLOCK;
            a->off = at % SD_BLOCK;
            a->k = SD_BLOCK - a->off < total - a->pos ? SD_BLOCK - a->off : total - a->pos;
            const int whole = a->k == SD_BLOCK && a->pos + SD_BLOCK <= x->n; /* straight from/to x->buf */
            const int cached = sd->cache_valid && sd->cached == a->block;
            int ok = 1;
            if (x->write) {
                if (whole) {
                    if (cached) sd->cache_valid = 0;
                    ok = start_write(sd, x->buf + a->pos);
                } else if (cached) {
                    merge(sd, 1);
                    ok = start_write(sd, sd->buf);
                } else {
                    sd->cache_valid = 0;
                    ok = start_read(sd, sd->buf); /* then merge and write */
                }
            } else if (cached) {
                merge(sd, 0);
                a->pos += a->k;
                continue;
            } else {
                if (!whole) sd->cache_valid = 0;
                ok = start_read(sd, whole ? x->buf + a->pos : sd->buf);
            }
            if (!ok) {
                async_end(sd, POET_ERR_PAGER_IO);
                return;
            }
            break;
        }
        case A_RTOKEN: { /* the data token, a few bytes per poll (with irq: one byte per DMA read) */
            uint8_t t = 0xFF;
            if (sd->irq) {
                if (!peek(sd, 1)) return;
                t = a->peek[0];
            } else {
                for (uint32_t i = 0; i < POLL_BYTES && t == 0xFF; i++, a->polls++) t = xfer(sd, 0xFF);
            }
            if (t == 0xFF) {
                if (sd->irq && a->polls < WAIT_BYTES) continue; /* the next byte's DMA */
                if (a->polls >= WAIT_BYTES) async_end(sd, POET_ERR_PAGER_IO);
                return;
            }
            if (t != TOKEN_START) {
                async_end(sd, POET_ERR_PAGER_IO);
                return;
            }
            sd->spi->dma_start(0, 0, a->data, SD_BLOCK);
            a->step = A_RDMA;
            return;
        }
        case A_RDMA: {
            if (!sd->spi->dma_done()) return;
            uint8_t crc[2];
            recv_buf(sd, crc, 2);
            deselect(sd);
            if (a->data == sd->buf) {
                sd->cached = a->block;
                sd->cache_valid = 1;
                if (x->write) { /* the read half of a read-modify-write */
                    merge(sd, 1);
                    if (!start_write(sd, sd->buf)) {
                        async_end(sd, POET_ERR_PAGER_IO);
                        return;
                    }
                    break;
                }
                merge(sd, 0);
            }
            a->pos += a->k;
            a->step = A_BLOCK;
            break;
        }
        case A_WDMA: {
            if (!sd->spi->dma_done()) return;
            uint8_t tail[2] = {0xFF, 0xFF};
            send_buf(sd, tail, 2);
            if ((xfer(sd, 0xFF) & 0x1Fu) != 0x05u) { /* data not accepted */
                async_end(sd, POET_ERR_PAGER_IO);
                return;
            }
            if (a->data == sd->buf) {
                sd->cached = a->block;
                sd->cache_valid = 1;
            }
            a->polls = 0;
            a->step = A_WBUSY;
            break;
        }
        case A_WBUSY: { /* the card programs the block: MISO low until it is done (with irq: DMA reads of 8
                         * bytes, done when the last is 0xFF; the card ignores clocks after busy) */
            uint8_t r = 0;
            if (sd->irq) {
                if (!peek(sd, POLL_BYTES)) return;
                r = a->peek[POLL_BYTES - 1];
            } else {
                for (uint32_t i = 0; i < POLL_BYTES && r != 0xFF; i++, a->polls++) r = xfer(sd, 0xFF);
            }
            if (r != 0xFF) {
                if (sd->irq && a->polls < WAIT_BYTES) continue; /* the next DMA read */
                if (a->polls >= WAIT_BYTES) async_end(sd, POET_ERR_PAGER_IO);
                return;
            }
            deselect(sd);
            a->pos += a->k;
            a->step = A_BLOCK;
            break;
        }
        default:
            async_end(sd, POET_ERR_PAGER_IO);
            return;
        }
    }
}

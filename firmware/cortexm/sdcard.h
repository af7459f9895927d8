/* SD card in SPI mode (raw 512-byte blocks, no file system) and a byte-addressed pager on top of it.
 *
 * The card is reached through a port's SPI: byte exchange, chip select, clock speed and (optionally) bulk
 * transfers. The pager maps pager address A to card byte POET_SD_FIRST_BLOCK * 512 + A; a write that covers
 * part of a block reads the block, merges and writes it back (one 512-byte buffer, write-through). Warning: the
 * card is used raw; whatever file system it held in that range is overwritten. */
#ifndef POET_SDCARD_H
#define POET_SDCARD_H

#include <stddef.h>
#include <stdint.h>

#include "poet/port.h"
#include "poet/status.h"

#define SD_BLOCK 512u

typedef struct {
    uint8_t (*xfer)(uint8_t out);               /* send one byte, return the byte received */
    void (*select)(int on);                      /* chip select: 1 asserts (CS low) */
    void (*set_fast)(int fast);                  /* 0: <= 400 kHz for initialisation; 1: the port's fast clock */
    void (*write)(const uint8_t *buf, size_t n); /* optional bulk send (NULL: byte by byte) */
    void (*read)(uint8_t *buf, size_t n);        /* optional bulk receive sending 0xFF (NULL: byte by byte) */
    /* optional DMA (NULL: no asynchronous transfers): start a bulk exchange of ntx bytes sent from tx (then the
     * over-read character 0xFF) and nrx bytes received into rx, and return at once; dma_done() is 1 once it has
     * ended. Only a data block's 512 bytes go this way; commands, tokens and busy polls stay byte by byte. */
    void (*dma_start)(const uint8_t *tx, uint32_t ntx, uint8_t *rx, uint32_t nrx);
    int (*dma_done)(void);
} sd_spi;

/* The asynchronous transfer in progress (sd_async_start/poll): one at a time on the one SPI bus. */
typedef struct {
    poet_xfer *x;    /* NULL: none */
    uint32_t pos;    /* stream bytes done: the stream is x->buf[0..n) then x->trailer[0..4) */
    uint32_t block;  /* the card block of the step in progress */
    uint32_t off, k; /* its bytes [off, off + k) belong to the stream at pos */
    uint8_t *data;   /* the 512 bytes the DMA moves: in x->buf (a whole block of tensor bytes) or sd->buf */
    uint32_t polls;  /* bytes exchanged waiting for a token or the end of busy */
    uint8_t step;    /* sdcard.c's state machine */
    uint8_t polling; /* with irq: a short DMA read of the token or busy bytes is running into peek */
    uint8_t peek[8];
} sd_async;

/* Card state: the SPI, its addressing mode and the pager's block buffer. */
typedef struct {
    const sd_spi *spi;
    uint32_t first_block; /* where the pager's storage starts on the card */
    int high_capacity;    /* SDHC/SDXC: commands take block numbers, not byte addresses */
    int ready;
    uint32_t cached;      /* block held in buf, when cache_valid */
    int cache_valid;
    sd_async op;
    /* set by a port whose DMA-end interrupt calls sd_async_irq: every step of a transfer then ends with a DMA
     * running (the token and busy polls become short DMA reads), so each DMA end runs the next step */
    int irq;
    uint8_t buf[SD_BLOCK];
} sd_card;

poet_status sd_init(sd_card *sd, const sd_spi *spi, uint32_t first_block);
poet_status sd_read_block(sd_card *sd, uint32_t block, uint8_t *dst);
poet_status sd_write_block(sd_card *sd, uint32_t block, const uint8_t *src);

poet_status sd_pager_read(sd_card *sd, uint32_t addr, void *dst, uint32_t n);
poet_status sd_pager_write(sd_card *sd, uint32_t addr, const void *src, uint32_t n);

/* Asynchronous pager (needs spi->dma_start): the transfer x (n bytes at pager address x->addr, then its 4-byte
 * trailer) runs as a state machine that sd_async_poll advances without blocking: commands and the few bytes
 * around a block are exchanged at once, a block's 512 data bytes are moved by DMA while the core computes,
 * tokens and the card's busy time are polled a few bytes per call. Whole blocks of tensor bytes go straight
 * between the card and x->buf; the partial blocks at either end (and the one holding the trailer) go through
 * sd->buf (read-modify-write for a write), which stays the pager's one-block cache. Sets x->done (and
 * x->status) when finished. One transfer at a time: the synchronous calls and a second start fail while one
 * runs (POET_ERR_PAGER_IO). */
poet_status sd_async_start(sd_card *sd, poet_xfer *x);
void sd_async_poll(sd_card *sd, poet_xfer *x);
/* The DMA-end interrupt's work (sd->irq set): advance the transfer in progress, if any. Returns 1 while a
 * transfer is in progress (a DMA of it is running: its end interrupts again), 0 when none is (the port
 * disables the interrupt: a synchronous exchange's end must not re-enter). */
int sd_async_irq(sd_card *sd);

#endif

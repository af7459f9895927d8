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

#include "poet/status.h"

#define SD_BLOCK 512u

typedef struct {
    uint8_t (*xfer)(uint8_t out);               /* send one byte, return the byte received */
    void (*select)(int on);                      /* chip select: 1 asserts (CS low) */
    void (*set_fast)(int fast);                  /* 0: <= 400 kHz for initialisation; 1: the port's fast clock */
    void (*write)(const uint8_t *buf, size_t n); /* optional bulk send (NULL: byte by byte) */
    void (*read)(uint8_t *buf, size_t n);        /* optional bulk receive sending 0xFF (NULL: byte by byte) */
} sd_spi;

/* Card state: the SPI, its addressing mode and the pager's block buffer. */
typedef struct {
    const sd_spi *spi;
    uint32_t first_block; /* where the pager's storage starts on the card */
    int high_capacity;    /* SDHC/SDXC: commands take block numbers, not byte addresses */
    int ready;
    uint32_t cached;      /* block held in buf, when cache_valid */
    int cache_valid;
    uint8_t buf[SD_BLOCK];
} sd_card;

poet_status sd_init(sd_card *sd, const sd_spi *spi, uint32_t first_block);
poet_status sd_read_block(sd_card *sd, uint32_t block, uint8_t *dst);
poet_status sd_write_block(sd_card *sd, uint32_t block, const uint8_t *src);

poet_status sd_pager_read(sd_card *sd, uint32_t addr, void *dst, uint32_t n);
poet_status sd_pager_write(sd_card *sd, uint32_t addr, const void *src, uint32_t n);

#endif

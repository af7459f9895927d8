/* A pager on internal flash (nRF52840 NVMC), without a RAM page buffer.
 *
 * Flash bits only go from 1 to 0; a page must be erased (all 1s) before it is rewritten. The region holds
 * n logical pages in n + 1 physical ones: writing to logical page L programs a freshly erased spare page with
 * L's old contents merged with the new bytes (read straight from flash), then L maps to it and L's old page
 * becomes the spare. One erase per page written, wear spread over the region, and only a page map in RAM.
 * Flash endures about 10,000 erase cycles per page: paging to flash suits occasional training, not a long
 * run (the SD card pager is the default). */
#ifndef POET_FLASHPAGER_H
#define POET_FLASHPAGER_H

#include <stdint.h>

#include "poet/status.h"

#ifndef FP_MAX_PAGES
#define FP_MAX_PAGES 255 /* logical pages the map can hold (about 1 MB of 4 KB pages) */
#endif

typedef struct {
    uint32_t page_bytes;
    void (*erase)(uintptr_t addr);              /* erase the page at addr (page aligned) */
    void (*program)(uintptr_t addr, uint32_t w); /* program one aligned word (only clears bits) */
} fp_nvm;

typedef struct {
    const fp_nvm *nvm;
    uintptr_t base; /* first physical page (memory-mapped: reads are plain loads) */
    uint32_t pages; /* logical pages */
    uint8_t spare;  /* physical page not mapped to any logical page */
    uint8_t map[FP_MAX_PAGES];
} flash_pager;

/* base and bytes: the region the linker reserved (page aligned, at least two pages). */
poet_status fp_init(flash_pager *fp, const fp_nvm *nvm, uintptr_t base, uint32_t bytes);
uint32_t fp_capacity(const flash_pager *fp);
poet_status fp_read(const flash_pager *fp, uint32_t addr, void *dst, uint32_t n);
poet_status fp_write(flash_pager *fp, uint32_t addr, const void *src, uint32_t n);

#endif

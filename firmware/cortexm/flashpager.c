/* Flash pager with a spare page (see flashpager.h). */
#include "flashpager.h"

#include <string.h>

static uintptr_t phys(const flash_pager *fp, uint32_t page) {
    return fp->base + (uintptr_t)page * fp->nvm->page_bytes;
}

poet_status fp_init(flash_pager *fp, const fp_nvm *nvm, uintptr_t base, uint32_t bytes) {
    memset(fp, 0, sizeof *fp);
    fp->nvm = nvm;
    fp->base = base;
    if (nvm->page_bytes == 0 || base % nvm->page_bytes || bytes % nvm->page_bytes) return POET_ERR_PAGER_IO;
    uint32_t physical = bytes / nvm->page_bytes;
    if (physical < 2) return POET_ERR_PAGER_IO;
    fp->pages = physical - 1 > FP_MAX_PAGES ? FP_MAX_PAGES : physical - 1;
    for (uint32_t i = 0; i < fp->pages; i++) fp->map[i] = (uint8_t)i;
    fp->spare = (uint8_t)fp->pages;
    return POET_OK;
}

uint32_t fp_capacity(const flash_pager *fp) { return fp->pages * (fp->nvm ? fp->nvm->page_bytes : 0); }

poet_status fp_read(const flash_pager *fp, uint32_t addr, void *dst, uint32_t n) {
    if ((uint64_t)addr + n > fp_capacity(fp)) return POET_ERR_PAGER_IO;
    uint8_t *out = (uint8_t *)dst;
    const uint32_t pb = fp->nvm->page_bytes;
    while (n) {
        uint32_t l = addr / pb, off = addr % pb, k = pb - off < n ? pb - off : n;
        memcpy(out, (const uint8_t *)(phys(fp, fp->map[l]) + off), k);
        out += k;
        addr += k;
        n -= k;
    }
    return POET_OK;
}

/* Rewrite logical page l with src[0..k) at offset off, the rest from its current page; the written page is
 * read back, so a worn-out page is an I/O error rather than silent corruption. */
static poet_status rewrite(flash_pager *fp, uint32_t l, uint32_t off, const uint8_t *src, uint32_t k) {
    const uint32_t pb = fp->nvm->page_bytes;
    uint32_t old = fp->map[l], dst = fp->spare;
    fp->nvm->erase(phys(fp, dst));
    const uint8_t *from = (const uint8_t *)phys(fp, old);
    const volatile uint32_t *to = (const volatile uint32_t *)phys(fp, dst);
    for (uint32_t w = 0; w < pb; w += 4) {
        uint8_t b[4];
        for (uint32_t i = 0; i < 4; i++) {
            uint32_t pos = w + i;
            b[i] = pos >= off && pos < off + k ? src[pos - off] : from[pos];
        }
        uint32_t word = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        if (word != 0xFFFFFFFFu) fp->nvm->program(phys(fp, dst) + w, word); /* erased words stay as they are */
        if (to[w / 4] != word) return POET_ERR_PAGER_IO;
    }
    fp->map[l] = (uint8_t)dst;
    fp->spare = (uint8_t)old;
    return POET_OK;
}

poet_status fp_write(flash_pager *fp, uint32_t addr, const void *src, uint32_t n) {
    if ((uint64_t)addr + n > fp_capacity(fp)) return POET_ERR_PAGER_IO;
    const uint8_t *in = (const uint8_t *)src;
    const uint32_t pb = fp->nvm->page_bytes;
    while (n) {
        uint32_t l = addr / pb, off = addr % pb, k = pb - off < n ? pb - off : n;
        poet_status s = rewrite(fp, l, off, in, k);
        if (s != POET_OK) return s;
        in += k;
        addr += k;
        n -= k;
    }
    return POET_OK;
}

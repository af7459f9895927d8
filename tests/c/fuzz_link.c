/* A random structured driver for the target's frame parser and command handlers (runtime_c/src/link.c), built
 * with AddressSanitizer + UndefinedBehaviorSanitizer by tests/c/test_fuzz_link.py (no libFuzzer: GCC has none).
 *
 * Each case is a byte stream of a few items: well-formed requests of every command with random arguments (tensor
 * ids, offsets and lengths in and out of range, NaN learning rates), the same mutated (a byte flipped, dropped,
 * duplicated, the frame cut short), length fields over the frame limit, and garbage. poet_serve() reads the stream
 * to its end. Whatever the input, the target must not crash or trip a sanitizer, and everything it sends must be
 * whole frames with a valid CRC and a reply, error or event header.
 *
 * usage: fuzz_link SECONDS SEED      prints "fuzz_link: N cases ..." and exits 0, or aborts on a violation. */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"
#include "poet/poet.h"
#include "poet/port.h"

#define IN_MAX (16 * (POET_FRAME_MAX + 64))
#define OUT_MAX (1 << 20)

static uint8_t in_buf[IN_MAX];
static size_t in_len, in_pos;
static uint8_t out_buf[OUT_MAX];
static size_t out_len;
static uint8_t *pager;
static uint32_t pager_size;
static jmp_buf on_exit_jmp;
static uint64_t rng_state;

static uint32_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32);
}
static uint32_t below(uint32_t n) { return n ? rnd() % n : 0; }

/* ---- the port: a byte stream from in_buf, replies into out_buf, a RAM pager ---- */
void poet_port_init(void) {}
int poet_port_getc(void) { return in_pos < in_len ? in_buf[in_pos++] : -1; }
void poet_port_write(const uint8_t *buf, size_t n) {
    if (out_len + n > OUT_MAX) out_len = 0; /* long cases: only the tail is checked */
    memcpy(out_buf + out_len, buf, n);
    out_len += n;
}
void poet_port_flush(void) {}
uint64_t poet_port_ticks(void) { return 0; }
uint32_t poet_port_tick_hz(void) { return 1000000000u; }
const char *poet_port_name(void) { return "fuzz"; }
uint32_t poet_port_pager_bytes(void) { return pager_size; }
poet_status poet_port_pager_write(uint32_t addr, const void *buf, uint32_t n) {
    if ((uint64_t)addr + n > pager_size) return POET_ERR_PAGER_IO;
    memcpy(pager + addr, buf, n);
    return POET_OK;
}
poet_status poet_port_pager_read(uint32_t addr, void *buf, uint32_t n) {
    if ((uint64_t)addr + n > pager_size) return POET_ERR_PAGER_IO;
    memcpy(buf, pager + addr, n);
    return POET_OK;
}
void poet_port_exit(int code) { longjmp(on_exit_jmp, code + 1); }
/* transfers complete at once (runtime_c/src/pager.c), as on a port without DMA */
poet_status poet_port_pager_start(poet_xfer *x) { return poet_pager_now(x); }
void poet_port_pager_poll(poet_xfer *x) { (void)x; }

/* ---- building the input ---- */
static void put(uint8_t b) {
    if (in_len < IN_MAX) in_buf[in_len++] = b;
}
static void put_u16(uint16_t v) { put((uint8_t)v), put((uint8_t)(v >> 8)); }
static void put_u32(uint32_t v) {
    for (int i = 0; i < 4; i++) put((uint8_t)(v >> (8 * i)));
}

/* A random number that is often at an edge of ``n`` (0, n - 1, n, far above). */
static uint32_t edgy(uint32_t n) {
    switch (below(6)) {
    case 0: return 0;
    case 1: return n ? n - 1 : 0;
    case 2: return n;
    case 3: return rnd();
    default: return below(n + 1);
    }
}

static void frame(const uint8_t *payload, uint16_t len) {
    uint8_t head[2] = {(uint8_t)len, (uint8_t)(len >> 8)};
    put(0xA5), put(0x5A), put(head[0]), put(head[1]);
    for (uint16_t i = 0; i < len; i++) put(payload[i]);
    put_u32(poet_crc32(poet_crc32(0, head, 2), payload, len));
}

static void request(const poet_model *m) {
    static uint8_t p[POET_FRAME_MAX + 64];
    uint16_t n = 0;
    uint8_t cmd = (uint8_t)(1 + below(11)); /* INFO .. SEAL and one unknown */
    if (cmd == 8 && below(4)) cmd = 9;       /* EXIT now and then (it ends the case) */
    p[n++] = cmd;
    p[n++] = (uint8_t)rnd();
    uint32_t t = edgy(m->n_tensors);
    uint32_t bytes = t < m->n_tensors ? m->tensors[t].bytes : 64;
    switch (cmd) {
    case 2: case 3: case 4: case 10: { /* WRITE, WRITE_Q8, READ, SEAL: tensor, offset, (len | data) */
        p[n++] = (uint8_t)t, p[n++] = (uint8_t)(t >> 8);
        uint32_t off = edgy(bytes);
        for (int i = 0; i < 4; i++) p[n++] = (uint8_t)(off >> (8 * i));
        if (cmd == 3) for (int i = 0; i < 8; i++) p[n++] = (uint8_t)rnd(); /* scale, bias: any floats */
        uint32_t len = cmd == 4 ? edgy(POET_FRAME_MAX) : below(POET_FRAME_MAX - n + 8);
        if (cmd == 4) {
            p[n++] = (uint8_t)len, p[n++] = (uint8_t)(len >> 8);
        } else {
            for (uint32_t i = 0; i < len && n < POET_FRAME_MAX + 8; i++) p[n++] = (uint8_t)rnd();
        }
        break;
    }
    case 5: { /* RUN: program, flags, lr (any bits: NaN, inf) */
        p[n++] = (uint8_t)below(3), p[n++] = (uint8_t)below(4);
        uint32_t lr = below(2) ? 0x3c23d70au /* 0.01 */ : rnd();
        for (int i = 0; i < 4; i++) p[n++] = (uint8_t)(lr >> (8 * i));
        break;
    }
    case 6: { /* TICKS: first, count */
        uint32_t first = edgy(m->n_nodes), count = edgy(m->n_nodes);
        p[n++] = (uint8_t)first, p[n++] = (uint8_t)(first >> 8), p[n++] = (uint8_t)count,
        p[n++] = (uint8_t)(count >> 8);
        break;
    }
    default: /* INFO, RESET, EXIT, ECHO, unknown: some bytes */
        for (uint32_t i = below(cmd == 9 ? POET_FRAME_MAX : 8); i > 0 && n < POET_FRAME_MAX + 8; i--)
            p[n++] = (uint8_t)rnd();
    }
    if (below(8) == 0) n = (uint16_t)below(n + 1); /* arguments cut short */
    size_t at = in_len;
    frame(p, n);
    size_t flen = in_len - at;
    switch (below(6)) { /* mutate the frame now and then */
    case 0: in_buf[at + below((uint32_t)flen)] ^= (uint8_t)(1 + below(255)); break;
    case 1: { /* drop a byte */
        size_t i = at + below((uint32_t)flen);
        memmove(in_buf + i, in_buf + i + 1, in_len - i - 1);
        in_len--;
        break;
    }
    case 2: if (in_len < IN_MAX) { /* duplicate a byte */
        size_t i = at + below((uint32_t)flen);
        memmove(in_buf + i + 1, in_buf + i, in_len - i);
        in_len++;
    } break;
    case 3: in_len = at + below((uint32_t)flen); break; /* cut short */
    default: break;
    }
    if (below(6) == 0 && in_len > at) { /* the same bytes again: a retransmission */
        size_t len = in_len - at;
        for (size_t i = 0; i < len && in_len < IN_MAX; i++) put(in_buf[at + i]);
    }
}

static void stream(const poet_model *m) {
    in_len = in_pos = 0;
    for (uint32_t k = 1 + below(8); k > 0; k--) {
        switch (below(8)) {
        case 0: for (uint32_t i = below(64); i > 0; i--) put((uint8_t)rnd()); break; /* garbage */
        case 1: put(0xA5), put(0x5A), put_u16((uint16_t)(POET_FRAME_MAX + 1 + below(1000))); break;
        default: request(m);
        }
    }
}

/* ---- checking the output: whole frames, valid CRCs, known headers ---- */
static void check_output(void) {
    size_t i = 0;
    while (i < out_len) {
        if (out_len - i < 8 || out_buf[i] != 0xA5 || out_buf[i + 1] != 0x5A) {
            fprintf(stderr, "fuzz_link: output is not a frame at byte %zu of %zu\n", i, out_len);
            abort();
        }
        uint16_t len = (uint16_t)(out_buf[i + 2] | out_buf[i + 3] << 8);
        if (len > POET_FRAME_MAX || len < 2 || i + 8 + len > out_len) {
            fprintf(stderr, "fuzz_link: reply frame of %u bytes at %zu\n", len, i);
            abort();
        }
        const uint8_t *c = out_buf + i + 4 + len;
        uint32_t crc = (uint32_t)c[0] | (uint32_t)c[1] << 8 | (uint32_t)c[2] << 16 | (uint32_t)c[3] << 24;
        uint8_t kind = out_buf[i + 4];
        if (crc != poet_crc32(0, out_buf + i + 2, (size_t)len + 2) ||
            !(kind == 0x40 || kind == 0xFF || (kind & 0x80))) {
            fprintf(stderr, "fuzz_link: bad reply frame (kind %02x) at %zu\n", kind, i);
            abort();
        }
        i += 8 + len;
    }
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 10.0;
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) * 0x9E3779B97F4A7C15ull + 1 : 1;
    const poet_model *m = &poet_generated_model;
    pager_size = m->storage_bytes + 4096;
    pager = (uint8_t *)calloc(pager_size, 1);
    if (!pager || poet_model_validate(m) != POET_OK || poet_model_reset(m) != POET_OK) return 2;
    clock_t end = clock() + (clock_t)(seconds * CLOCKS_PER_SEC);
    unsigned long cases = 0, bytes = 0, exits = 0, replied = 0;
    while (clock() < end) {
        stream(m);
        out_len = 0;
        if (setjmp(on_exit_jmp) == 0) poet_serve(m);
        else exits++;
        check_output();
        cases++;
        bytes += in_len;
        replied += out_len;
    }
    printf("fuzz_link: %lu cases, %lu bytes in, %lu bytes of replies, %lu EXITs, %.0f s\n", cases, bytes, replied,
           exits, seconds);
    free(pager);
    return 0;
}

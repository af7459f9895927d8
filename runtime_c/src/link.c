/* The link: framed request/reply protocol over the port's byte stream. Spec: docs/protocol.md.
 *
 * frame   = 0xA5 0x5A, len (u16 LE), payload[len], crc32(len bytes + payload) (u32 LE)
 * request = cmd (u8), seq (u8), args...
 * reply   = cmd | 0x80, seq, status (u8), data...      event = 0x40, seq, data... (sent before the reply)
 * A frame with a bad CRC or a length over POET_FRAME_MAX is answered with cmd 0xFF, the sequence number
 * the frame seems to carry and an error status, and its contents are never used; the host retransmits.
 * A retransmission (the same bytes as the last request) is answered with the last reply again, from tx[],
 * without running the command twice: a RUN whose reply was corrupted on its way is never repeated. */
#include <string.h>

#include "poet/poet.h"
#include "poet/port.h"

#ifndef POET_FRAME_MAX
#define POET_FRAME_MAX 1024
#endif
#if POET_FRAME_MAX < 64 || POET_FRAME_MAX > 65535
#error "POET_FRAME_MAX must be in 64..65535"
#endif

#define POET_PROTO_VERSION 4
#define SOF1 0xA5
#define SOF2 0x5A

enum {
    CMD_INFO = 0x01,
    CMD_WRITE = 0x02,
    CMD_WRITE_Q8 = 0x03,
    CMD_READ = 0x04,
    CMD_RUN = 0x05,
    CMD_TICKS = 0x06,
    CMD_RESET = 0x07,
    CMD_EXIT = 0x08,
    CMD_ECHO = 0x09,
    CMD_SEAL = 0x0A,
    EVT_GRAD = 0x40,
    CMD_BAD_FRAME = 0xFF,
};

static uint8_t rx[POET_FRAME_MAX];
static uint8_t tx[POET_FRAME_MAX + 8];
static uint16_t tx_len;     /* payload length of the frame in tx[]: after a request, its reply */
static uint32_t rx_crc;     /* CRC of the frame in rx[] */
static uint8_t rx_seq;      /* the sequence number of the last frame read, good or bad (error replies) */
static struct {             /* the last request answered: a byte-identical frame is a retransmission */
    int valid;
    uint8_t cmd, seq;
    uint16_t len;
    uint32_t crc;
} last;

static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static float get_f32(const uint8_t *p) {
    uint32_t u = get_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_f32(uint8_t *p, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    put_u32(p, u);
}

/* Send tx[4 .. 4+len) as one frame. */
static void send_frame(uint16_t len) {
    tx[0] = SOF1;
    tx[1] = SOF2;
    put_u16(tx + 2, len);
    put_u32(tx + 4 + len, poet_crc32(0, tx + 2, (size_t)len + 2));
    tx_len = len;
    poet_port_write(tx, (size_t)len + 8);
    poet_port_flush();
}

/* An error reply to a frame that could not be used, from its own buffer: tx[] keeps the last reply. */
static void send_bad_frame(uint8_t seq, poet_status st) {
    uint8_t f[11] = {SOF1, SOF2, 3, 0, CMD_BAD_FRAME, seq, (uint8_t)st};
    put_u32(f + 7, poet_crc32(0, f + 2, 5));
    poet_port_write(f, sizeof f);
    poet_port_flush();
}

/* Reply header; returns a pointer to where the data goes. */
static uint8_t *reply_begin(uint8_t cmd, uint8_t seq, poet_status st) {
    tx[4] = (uint8_t)(cmd | 0x80);
    tx[5] = seq;
    tx[6] = (uint8_t)st;
    return tx + 7;
}

static void reply(uint8_t cmd, uint8_t seq, poet_status st, uint16_t data_len) {
    reply_begin(cmd, seq, st);
    send_frame((uint16_t)(3 + data_len));
}

/* Read one frame into rx. Returns payload length, -1 on end of stream, -2 - status on a bad frame. */
static int read_frame(void) {
    int c;
    for (;;) {
        do {
            c = poet_port_getc();
            if (c < 0) return -1;
        } while (c != SOF1);
        c = poet_port_getc();
        if (c < 0) return -1;
        if (c == SOF2) break;
    }
    uint8_t hdr[2];
    for (int i = 0; i < 2; i++) {
        if ((c = poet_port_getc()) < 0) return -1;
        hdr[i] = (uint8_t)c;
    }
    uint16_t len = get_u16(hdr);
    rx_seq = 0; /* unknown: a length over the limit is never followed (resync on the next SOF) */
    if (len > POET_FRAME_MAX) return -2 - POET_ERR_OVERSIZE;
    for (uint16_t i = 0; i < len; i++) {
        if ((c = poet_port_getc()) < 0) return -1;
        rx[i] = (uint8_t)c;
    }
    if (len >= 2) rx_seq = rx[1];
    uint8_t crc[4];
    for (int i = 0; i < 4; i++) {
        if ((c = poet_port_getc()) < 0) return -1;
        crc[i] = (uint8_t)c;
    }
    rx_crc = poet_crc32(poet_crc32(0, hdr, 2), rx, len);
    if (rx_crc != get_u32(crc)) return -2 - POET_ERR_CRC;
    return len;
}

typedef struct {
    uint8_t seq;
} grad_ctx;

static void grad_hook(void *vctx, uint16_t param, uint32_t base, const float *grad, uint32_t bytes) {
    const grad_ctx *ctx = (const grad_ctx *)vctx;
    const uint8_t *src = (const uint8_t *)grad;
    const uint32_t chunk = (POET_FRAME_MAX - 8) & ~3u;
    for (uint32_t off = 0; off < bytes; off += chunk) {
        uint32_t n = bytes - off < chunk ? bytes - off : chunk;
        tx[4] = EVT_GRAD;
        tx[5] = ctx->seq;
        put_u16(tx + 6, param);
        put_u32(tx + 8, base + off);
        memcpy(tx + 12, src + off, n);
        send_frame((uint16_t)(8 + n));
    }
}

static poet_status check_range(const poet_model *m, uint16_t t, uint64_t off, uint64_t n) {
    if (t >= m->n_tensors) return POET_ERR_RANGE;
    if (off + n > m->tensors[t].bytes) return POET_ERR_RANGE;
    return POET_OK;
}

static void handle(const poet_model *m, int len) {
    if (len < 2) {
        send_bad_frame(0, POET_ERR_UNKNOWN_CMD); /* no seq to echo */
        return;
    }
    uint8_t cmd = rx[0], seq = rx[1];
    if (last.valid && cmd == last.cmd && seq == last.seq && rx_crc == last.crc && (uint16_t)len == last.len) {
        poet_port_write(tx, (size_t)tx_len + 8); /* a retransmission: its reply again, not a second run */
        poet_port_flush();
        return;
    }
    last.valid = 1; /* every path below sends exactly one reply, the last frame it sends */
    last.cmd = cmd;
    last.seq = seq;
    last.crc = rx_crc;
    last.len = (uint16_t)len;
    const uint8_t *a = rx + 2;
    int alen = len - 2;
    uint8_t *out = reply_begin(cmd, seq, POET_OK);
    switch (cmd) {
    case CMD_INFO: {
        const char *name = poet_port_name();
        size_t nl = strlen(name);
        if (nl > 32) nl = 32;
        put_u16(out, POET_PROTO_VERSION);
        memcpy(out + 2, m->hash, 8);
        put_u16(out + 10, m->n_tensors);
        put_u16(out + 12, m->n_nodes);
        put_u16(out + 14, POET_FRAME_MAX);
        put_u32(out + 16, m->arena_bytes);
        put_u32(out + 20, m->storage_bytes);
        put_u32(out + 24, poet_port_tick_hz());
        put_u32(out + 28, poet_port_pager_bytes());
        out[32] = (uint8_t)nl;
        memcpy(out + 33, name, nl);
        reply(cmd, seq, POET_OK, (uint16_t)(33 + nl));
        return;
    }
    case CMD_WRITE: {
        if (alen < 6) break;
        uint16_t t = get_u16(a);
        uint32_t off = get_u32(a + 2), n = (uint32_t)alen - 6;
        poet_status s = check_range(m, t, off, n);
        if (s == POET_OK && !m->tensors[t].writable) s = POET_ERR_READONLY;
        if (s == POET_OK && m->tensors[t].home == POET_HOME_STORAGE) /* its slot; SEAL writes the CRC */
            s = poet_port_pager_write(m->tensors[t].slot + off, a + 6, n);
        else if (s == POET_OK)
            memcpy((uint8_t *)m->tensors[t].data + off, a + 6, n);
        reply(cmd, seq, s, 0);
        return;
    }
    case CMD_SEAL: {
        if (alen < 2) break;
        reply(cmd, seq, poet_storage_seal(m, get_u16(a)), 0);
        return;
    }
    case CMD_WRITE_Q8: {
        if (alen < 14) break;
        uint16_t t = get_u16(a);
        uint32_t off = get_u32(a + 2), n = (uint32_t)alen - 14; /* off and n count elements */
        float scale = get_f32(a + 6), bias = get_f32(a + 10);
        const uint64_t eb = t < m->n_tensors && m->tensors[t].dtype == POET_U8 ? 1u : 4u;
        poet_status s = check_range(m, t, eb * off, eb * n);
        if (s == POET_OK && (!m->tensors[t].writable || m->tensors[t].home != POET_HOME_STATIC))
            s = POET_ERR_READONLY;
        if (s == POET_OK) {
            const uint8_t *q = a + 14;
            if (m->tensors[t].dtype == POET_U8) { /* stored as is; a DEQUANT_U8 node applies the scale */
                memcpy((uint8_t *)m->tensors[t].data + off, q, n);
            } else if (m->tensors[t].dtype == POET_I32) {
                int32_t *d = (int32_t *)m->tensors[t].data + off;
                for (uint32_t i = 0; i < n; i++) d[i] = (int32_t)q[i];
            } else {
                float *d = (float *)m->tensors[t].data + off;
                for (uint32_t i = 0; i < n; i++) d[i] = scale * (float)q[i] + bias;
            }
        }
        reply(cmd, seq, s, 0);
        return;
    }
    case CMD_READ: {
        if (alen < 8) break;
        uint16_t t = get_u16(a);
        uint32_t off = get_u32(a + 2);
        uint16_t n = get_u16(a + 6);
        poet_status s = n > POET_FRAME_MAX - 3 ? POET_ERR_RANGE : poet_tensor_read(m, t, off, out, n);
        reply(cmd, seq, s, s == POET_OK ? n : 0);
        return;
    }
    case CMD_RUN: {
        if (alen < 6) break;
        grad_ctx ctx = {seq};
        int capture = a[1] & POET_FLAG_CAPTURE_GRADS;
        poet_run_result r = poet_run(m, a[0], get_f32(a + 2), capture ? grad_hook : NULL, &ctx);
        out = reply_begin(cmd, seq, r.status);
        float loss = *(const float *)m->tensors[m->loss].data;
        put_u32(out, r.pc);
        put_f32(out + 4, loss);
        put_u64(out + 8, r.ticks);
        put_u32(out + 16, r.page_in_bytes);
        put_u32(out + 20, r.page_out_bytes);
        put_u32(out + 24, r.page_ins);
        put_u32(out + 28, r.page_outs);
        put_u32(out + 32, r.load_bytes);
        put_u32(out + 36, r.store_bytes);
        put_u32(out + 40, r.loads);
        put_u32(out + 44, r.stores);
        put_u64(out + 48, r.wait_ticks);
        put_u32(out + 56, r.waits);
        reply(cmd, seq, r.status, 60);
        return;
    }
    case CMD_TICKS: {
        if (alen < 4) break;
        uint16_t first = get_u16(a), count = get_u16(a + 2);
        if ((uint32_t)first + count > m->n_nodes || 8u * count > POET_FRAME_MAX - 3u) {
            reply(cmd, seq, POET_ERR_RANGE, 0);
            return;
        }
        for (uint16_t i = 0; i < count; i++) put_u64(out + 8 * i, m->node_ticks[first + i]);
        reply(cmd, seq, POET_OK, (uint16_t)(8 * count));
        return;
    }
    case CMD_RESET:
        reply(cmd, seq, poet_model_reset(m), 0);
        return;
    case CMD_EXIT:
        reply(cmd, seq, POET_OK, 0);
        poet_port_exit(alen >= 1 ? a[0] : 0);
        return;
    case CMD_ECHO:
        if (alen > POET_FRAME_MAX - 3) break;
        memcpy(out, a, (size_t)alen);
        reply(cmd, seq, POET_OK, (uint16_t)alen);
        return;
    default:
        reply(cmd, seq, POET_ERR_UNKNOWN_CMD, 0);
        return;
    }
    reply(cmd, seq, POET_ERR_RANGE, 0); /* arguments too short */
}

int poet_serve(const poet_model *m) {
    poet_reset_locations(m);
    last.valid = 0;
    for (;;) {
        int len = read_frame();
        if (len == -1) return 0;
        if (len < -1) {
            send_bad_frame(rx_seq, (poet_status)(-2 - len));
            continue;
        }
        handle(m, len);
    }
}

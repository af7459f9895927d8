/* A hand-made model and program that pages, run by the real interpreter (runtime_c/src/interp.c) on a QEMU
 * port (firmware/qemu-m4 or qemu-m0) with its semihosting pager: no scheduler involved.
 *
 *   RUN relu(x) -> t1 @0;  PAGE_OUT t1;  FREE t1;  WAIT t1;  RUN relu(x) -> t2 @0 (overwrites t1's bytes);
 *   FREE t2;  PAGE_IN t1 @256 (back at another offset);  WAIT t1;  RUN t1 + t1 -> y
 * y must equal 2 relu(x), and the paging counters must say one page-out and one page-in of 260 bytes. Then a
 * byte of the pager file is flipped and a program that pages t1 in must fail its checksum. Exit code 0 means
 * every check passed; otherwise the failing line number. tests/c/test_port_pagers.py builds and runs it. */
#include <math.h>
#include <stdint.h>

#include "cm.h"
#include "poet/poet.h"
#include "poet/port.h"
#include "semihost.h"

#define N 64
static float x[N], y[N];
static float arena_words[1024 / 4];
static void *loc[4];
static uint64_t node_ticks[3];
static uint32_t wgen[4];

static const poet_tensor tensors[4] = {
    {4u * N, POET_F32, POET_HOME_STATIC, 1, x, 0},
    {4u * N, POET_F32, POET_HOME_ARENA, 0, 0, 0}, /* paged: storage slot 0, 4 * N + 4 bytes */
    {4u * N, POET_F32, POET_HOME_ARENA, 0, 0, 0},
    {4u * N, POET_F32, POET_HOME_STATIC, 0, y, 0},
};
static const poet_eltwise_params elt[1] = {{.n = N}};
static const poet_node nodes[3] = {
    {POET_K_RELU_FWD, 0, 1, {0}, 1},
    {POET_K_RELU_FWD, 0, 1, {0}, 2},
    {POET_K_ADD, 0, 2, {1, 1}, 3},
};
static const poet_instr train[9] = {
    {POET_OP_RUN, 0, 0},  {POET_OP_PAGE_OUT, 1, 0},  {POET_OP_FREE, 1, 0}, {POET_OP_WAIT, 1, 0}, {POET_OP_RUN, 1, 0},
    {POET_OP_FREE, 2, 0}, {POET_OP_PAGE_IN, 1, 256}, {POET_OP_WAIT, 1, 0}, {POET_OP_RUN, 2, 0},
};
static const poet_instr page_in_only[2] = {{POET_OP_PAGE_IN, 1, 0}, {POET_OP_WAIT, 1, 0}};

static const poet_model model = {
    .n_tensors = 4,
    .n_nodes = 3,
    .tensors = tensors,
    .nodes = nodes,
    .programs = {[POET_PROG_TRAIN] = {train, 9}, [POET_PROG_INFER] = {page_in_only, 2}},
    .arena = (uint8_t *)arena_words,
    .arena_bytes = sizeof arena_words,
    .storage_bytes = 4u * N + 4u,
    .pager_queue = 1,
    .loss = 3,
    .eltwise = elt,
    .loc = loc,
    .node_ticks = node_ticks,
    .wgen = wgen,
};

#define CHECK(c)                                                                                            \
    do {                                                                                                    \
        if (!(c)) fail(__LINE__);                                                                           \
    } while (0)

static void fail(int line) {
    char msg[64], *p = msg;
    p = cm_fmt_str(p, "pager test failed at line ");
    p = cm_fmt_dec(p, (uint32_t)line);
    cm_fmt_str(p, "\n");
    cm_port_log(msg);
    poet_port_exit(line);
}

int main(void) {
    poet_port_init();
    CHECK(poet_model_validate(&model) == POET_OK);
    for (int i = 0; i < N; i++) x[i] = (float)(i - N / 2) * 0.25f;
    poet_run_result r = poet_run(&model, POET_PROG_TRAIN, 0.0f, 0, 0);
    CHECK(r.status == POET_OK && r.pc == 9 && r.waits == 2);
    CHECK(r.page_outs == 1 && r.page_ins == 1 && r.page_out_bytes == 4u * N + 4u && r.page_in_bytes == 4u * N + 4u);
    for (int i = 0; i < N; i++) CHECK(y[i] == 2.0f * fmaxf(x[i], 0.0f));
    CHECK(loc[1] == (uint8_t *)arena_words + 256); /* the runtime follows the tensor to its new offset */
    CHECK(r.ticks > 0);
    /* a flipped byte in storage: the page-in's checksum must catch it */
    uint8_t b;
    CHECK(poet_port_pager_read(5, &b, 1) == POET_OK);
    b ^= 0x40u;
    CHECK(poet_port_pager_write(5, &b, 1) == POET_OK);
    r = poet_run(&model, POET_PROG_INFER, 0.0f, 0, 0);
    CHECK(r.status == POET_ERR_PAGE_CHECKSUM && r.pc == 1); /* the WAIT checks the CRC */
    /* out of range, and never written: errors, not garbage */
    CHECK(poet_port_pager_read(poet_port_pager_bytes() - 2u, &b, 4) == POET_ERR_PAGER_IO);
    CHECK(poet_port_pager_read(1u << 20, &b, 1) == POET_ERR_PAGER_IO);
    cm_port_log("pager test passed\n");
    poet_port_exit(0);
    return 0;
}

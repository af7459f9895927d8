/* poet runtime: tables a generated model.c fills in, and the interpreter that executes its programs.
 *
 * Schedule as data: a program is a flat list of instructions
 *   RUN node @off     compute node; its output is placed at arena + off (static outputs: their home)
 *   RECOMPUTE node @off   the same, for a node computed before in this program (counted apart)
 *   PAGE_OUT t        write resident tensor t (+ a CRC32) to its storage slot
 *   PAGE_IN t @off    read tensor t back from storage to arena + off; the CRC must match
 *   FREE t            tensor t is no longer resident (its bytes may be reused)
 *   LOAD t @off       read a storage-homed tensor (a parameter or optimizer state whose master copy lives on
 *                     storage) from its slot into arena + off; the CRC must match
 *   STORE t           write a storage-homed tensor's new value back to its slot (+ CRC), after its update
 *   WAIT t            wait until the transfer of tensor t has completed (a read: its CRC must match)
 * PAGE_OUT, PAGE_IN, LOAD and STORE only start a transfer (the port's pager may move it by DMA while kernels
 * run); the program carries its wait points (poetc's waits.insert): before a kernel reads a tensor being read
 * in, before bytes a transfer still uses are reused, before a transfer beyond the port's queue, at the end.
 * The interpreter checks each of those and fails with POET_ERR_IN_FLIGHT on a missing wait.
 * The interpreter tracks where each tensor lives now (loc[]), so a tensor may come back at another offset.
 *
 * Homes: ARENA (placed by the program), STATIC (RAM, fixed), FLASH (const, read in place: frozen
 * parameters), STORAGE (master copy on the pager at `slot`; resident only between a LOAD and its FREE).
 */
#ifndef POET_POET_H
#define POET_POET_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "status.h"

#define POET_MAX_INPUTS 5 /* BN_FROZEN: x, running mean and variance, gamma, beta */

#if defined(__GNUC__) || defined(__clang__)
#define POET_ALIGNED __attribute__((aligned(16)))
#else
#define POET_ALIGNED
#endif

enum { POET_F32 = 0, POET_I32 = 1, POET_U8 = 2 };
enum { POET_HOME_ARENA = 0, POET_HOME_STATIC = 1, POET_HOME_FLASH = 2, POET_HOME_STORAGE = 3 };
enum {
    POET_OP_RUN = 1,
    POET_OP_PAGE_OUT = 2,
    POET_OP_PAGE_IN = 3,
    POET_OP_FREE = 4,
    POET_OP_RECOMPUTE = 5,
    POET_OP_LOAD = 6,
    POET_OP_STORE = 7,
    POET_OP_WAIT = 8
};
#define POET_MAX_XFERS 4 /* transfers in flight at once (the runtime's slots; a board's pager_queue is <= this) */
enum { POET_PROG_TRAIN = 0, POET_PROG_INFER = 1, POET_N_PROGRAMS = 2 };
enum { POET_FLAG_CAPTURE_GRADS = 1 };

typedef struct {
    uint32_t bytes;
    uint8_t dtype;
    uint8_t home;
    uint8_t writable; /* the harness may write it (inputs, labels, parameters not in flash) */
    void *data;       /* STATIC and FLASH homes (FLASH data is const: never written); NULL otherwise */
    uint32_t slot;    /* storage address when paged or STORAGE-homed; bytes + 4 (CRC) are reserved there */
} poet_tensor;

typedef struct {
    uint16_t kernel;
    uint16_t params; /* index into the params array of the kernel's family */
    uint16_t n_in;
    uint16_t in[POET_MAX_INPUTS];
    uint16_t out;
} poet_node;

typedef struct {
    uint8_t op;
    uint16_t arg;
    uint32_t off;
} poet_instr;

typedef struct {
    const poet_instr *code;
    uint32_t n;
} poet_program;

typedef struct {
    uint16_t tensor;
    const void *init; /* initial value in flash; NULL: zeros (optimizer state) */
} poet_param_init;

typedef struct {
    uint8_t hash[8];
    uint16_t n_tensors, n_nodes, n_params;
    const poet_tensor *tensors;
    const poet_node *nodes;
    poet_program programs[POET_N_PROGRAMS];
    const poet_param_init *params;
    uint8_t *arena;
    uint32_t arena_bytes;
    uint32_t storage_bytes; /* bytes of pager storage the programs use */
    /* checkpoints (poet/train.h): two slots of ckpt_slot_bytes from ckpt_addr on storage, after the programs' */
    uint32_t ckpt_addr, ckpt_slot_bytes;
    /* CRC32s the generator computed: of the tables in their canonical form and of the parameters' initial
     * values in flash (poet_model_check_image) */
    uint32_t tables_crc, init_crc;
    uint8_t pager_queue;    /* transfers the programs keep in flight at most (1..POET_MAX_XFERS) */
    uint16_t input, label, loss, logits;
    const poet_linear_params *linear;
    const poet_eltwise_params *eltwise;
    const poet_xent_params *xent;
    const poet_sgd_params *sgd;
    const poet_conv_params *conv;
    const poet_pool_params *pool;
    const poet_bn_params *bn;
    const poet_act_params *act;
    const poet_softmax_params *softmax;
    const poet_ln_params *ln;
    const poet_matmul_params *matmul;
    const poet_bcast_params *bcast;
    const poet_layout_params *layout;
    const poet_concat_params *concat;
    const poet_quant_params *quant;
    /* set to 1 before the train program and to 0 before the others: BatchNorm uses batch statistics in
     * training and its running statistics in inference. NULL when no kernel reads it. */
    float *train_flag;
    /* runtime state in RAM, sized by the generator */
    void **loc;
    uint64_t *node_ticks;
    /* per tensor: the write number of its copy on storage (page-out, STORE, reset, SEAL), which the copy's CRC
     * covers with the tensor id and the bytes; a page-in expects it, so a stale, dropped or misdirected write
     * fails the check. In RAM only: after a power cycle the storage is rewritten by poet_model_reset. */
    uint32_t *wgen;
} poet_model;

/* Sees a parameter's gradient before the update uses it, in pieces: byte offset into the parameter. */
typedef void (*poet_grad_hook)(void *ctx, uint16_t param, uint32_t offset, const float *grad, uint32_t bytes);

typedef struct {
    uint32_t pc;         /* instruction that failed, or the program length */
    poet_status status;
    uint64_t ticks;      /* ticks spent in the program */
    uint32_t page_in_bytes, page_out_bytes; /* activations paged (PAGE_IN / PAGE_OUT), CRCs included */
    uint32_t page_ins, page_outs;
    uint32_t load_bytes, store_bytes; /* storage-homed parameters read (LOAD) and written back (STORE) */
    uint32_t loads, stores;
    uint64_t wait_ticks; /* ticks spent blocked in WAIT (transfers the computation did not hide) */
    uint32_t waits;
} poet_run_result;

/* Check tables against each other: every kernel's expected sizes against the tensor table, offsets inside the
 * arena, indices in range. Run once at start-up; a mismatch means poetc and the runtime disagree. */
poet_status poet_model_validate(const poet_model *m);
/* Check the image against the checksums poetc put in it: the tables (tensors, nodes and their kernel
 * parameters, programs) and the parameters' initial values. POET_ERR_IMAGE_CHECKSUM: the image is corrupted
 * (or its tables were edited by hand); nothing may train on it. */
poet_status poet_model_check_image(const poet_model *m);
/* Initial parameter values (and zeroed optimizer state) into their homes: RAM, or the storage slot with its
 * CRC. FLASH tensors are their initial values. */
poet_status poet_model_reset(const poet_model *m);
/* Recompute and store the CRC of a storage-homed tensor after its slot was written piecewise (link WRITE). */
poet_status poet_storage_seal(const poet_model *m, uint16_t t);
/* Read bytes [off, off + n) of a tensor wherever it lives now: RAM, flash, or (STORAGE, not resident) its slot,
 * whose CRC follows the data at offset `bytes`. */
poet_status poet_tensor_read(const poet_model *m, uint16_t t, uint32_t off, void *dst, uint32_t n);
/* Where every tensor is before a program runs: STATIC and FLASH at their data, the rest nowhere. */
void poet_reset_locations(const poet_model *m);
/* Execute one program (one training step, or one inference). */
poet_run_result poet_run(const poet_model *m, int program, float lr, poet_grad_hook hook, void *hook_ctx);
/* Run one node (used by the interpreter; exposed for profiling). */
poet_status poet_dispatch(const poet_model *m, uint16_t node, float lr, poet_grad_hook hook, void *hook_ctx);

uint32_t poet_crc32(uint32_t crc, const void *data, size_t n);
/* The CRC a storage copy of tensor t starts from (its id and its current write number); the copy's CRC is
 * poet_crc32(poet_storage_crc_seed(m, t), bytes, n). */
uint32_t poet_storage_crc_seed(const poet_model *m, uint16_t t);
/* Write bytes [off, off + n) of a storage-homed tensor's slot (not its CRC: poet_storage_seal after the last). */
poet_status poet_storage_write(const poet_model *m, uint16_t t, uint32_t off, const void *src, uint32_t n);


/* The link: a framed protocol on the port's byte stream (see docs/protocol.md). Returns the exit code. */
int poet_serve(const poet_model *m);

#endif

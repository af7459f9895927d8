/* The kernels' 4x4 register tile (linear.c, conv.c): sixteen accumulators c00..c33, c_rs = sum a_r * b_s.
 * Internal to the runtime. The arguments are evaluated several times: pass plain loads, never increments. */
#ifndef POET_TILE_H
#define POET_TILE_H

/* Declare the tile and start it with one product per accumulator. */
#define POET_MUL16(a0, a1, a2, a3, b0, b1, b2, b3)                                                            \
    float c00 = a0 * b0, c01 = a0 * b1, c02 = a0 * b2, c03 = a0 * b3;                                         \
    float c10 = a1 * b0, c11 = a1 * b1, c12 = a1 * b2, c13 = a1 * b3;                                         \
    float c20 = a2 * b0, c21 = a2 * b1, c22 = a2 * b2, c23 = a2 * b3;                                         \
    float c30 = a3 * b0, c31 = a3 * b1, c32 = a3 * b2, c33 = a3 * b3

/* Add one more product to every accumulator (multiply-adds; FMA where the build contracts). */
#define POET_FMA16(a0, a1, a2, a3, b0, b1, b2, b3)                                                            \
    do {                                                                                                      \
        c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3;                                       \
        c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3;                                       \
        c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3;                                       \
        c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3;                                       \
    } while (0)

#endif

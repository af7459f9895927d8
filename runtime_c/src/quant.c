/* Inputs kept as bytes in RAM (a quarter of their float size) and dequantized by a node of the graph, so the
 * float copy is an ordinary activation that a schedule may drop and recompute. */
#include "poet/kernels.h"

poet_status poet_dequant_u8_f32(const poet_quant_params *p, const uint8_t *restrict q, float *restrict y) {
    if (!p || !q || !y) return POET_ERR_ARG;
    for (uint32_t i = 0; i < p->n; i++) y[i] = p->scale * (float)q[i];
    return POET_OK;
}

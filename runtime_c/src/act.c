/* Elementwise activations and scalar arithmetic, reference versions. Backward kernels read the forward output
 * (clip, sigmoid, tanh, sqrt) or the input (gelu, erf, pow), as their Python ops say. */
#include <math.h>

#include "poet/kernels.h"

#define ACT_UNARY(name, expr)                                                                 \
    poet_status name(const poet_act_params *p, const float *restrict x, float *restrict y) { \
        if (!p || !x || !y) return POET_ERR_ARG;                                                \
        for (uint32_t i = 0; i < p->n; i++) {                                                   \
            const float v = x[i];                                                               \
            y[i] = (expr);                                                                      \
        }                                                                                       \
        return POET_OK;                                                                         \
    }

#define ACT_BACKWARD(name, expr)                                                                 \
    poet_status name(const poet_act_params *p, const float *restrict u, const float *restrict dy, \
                     float *restrict dx) {                                                        \
        if (!p || !u || !dy || !dx) return POET_ERR_ARG;                                          \
        for (uint32_t i = 0; i < p->n; i++) {                                                     \
            const float v = u[i], g = dy[i];                                                      \
            dx[i] = (expr);                                                                       \
        }                                                                                         \
        return POET_OK;                                                                           \
    }

#define SQRT1_2 0.70710678118654752440f
#define TWO_OVER_SQRTPI 1.12837916709551257390f
#define INV_SQRT_2PI 0.39894228040143267794f

ACT_UNARY(poet_clip_fwd_f32, v < p->a ? p->a : (v > p->b ? p->b : v))
ACT_BACKWARD(poet_clip_bwd_f32, (v > p->a && v < p->b) ? g : 0.0f)
ACT_UNARY(poet_sigmoid_fwd_f32, 1.0f / (1.0f + expf(-v)))
ACT_BACKWARD(poet_sigmoid_bwd_f32, g * v * (1.0f - v))
ACT_UNARY(poet_tanh_fwd_f32, tanhf(v))
ACT_BACKWARD(poet_tanh_bwd_f32, g * (1.0f - v * v))
ACT_UNARY(poet_gelu_fwd_f32, 0.5f * v * (1.0f + erff(v * SQRT1_2)))
ACT_BACKWARD(poet_gelu_bwd_f32, g * (0.5f * (1.0f + erff(v * SQRT1_2)) + v * INV_SQRT_2PI * expf(-0.5f * v * v)))
ACT_UNARY(poet_erf_fwd_f32, erff(v))
ACT_BACKWARD(poet_erf_bwd_f32, g * TWO_OVER_SQRTPI * expf(-v * v))
ACT_UNARY(poet_affine_f32, p->a * v + p->b)
ACT_UNARY(poet_sqrt_fwd_f32, sqrtf(v))
ACT_BACKWARD(poet_sqrt_bwd_f32, g / (2.0f * v))
ACT_UNARY(poet_pow_fwd_f32, p->a == 2.0f ? v * v : powf(v, p->a))
ACT_BACKWARD(poet_pow_bwd_f32, p->a == 2.0f ? 2.0f * v * g : g * p->a * powf(v, p->a - 1.0f))

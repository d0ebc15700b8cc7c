/* half.h — f32 <-> f16 / bf16, one home for the rounding rules: the
 * safetensors reader and writer, adapter export, and the CPU backend's bf16
 * arithmetic (operands rounded as tensor cores round them) all use these.
 * Narrowing rounds to nearest, ties to even; NaN stays NaN (quiet), +-inf stays
 * inf, a finite value beyond the range becomes inf. */
#ifndef KRONA_HALF_H
#define KRONA_HALF_H

#include <stdint.h>
#include <string.h>

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

static inline float bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}
/* f to the nearest bf16, kept as f32 (what a bf16 GEMM multiplies) */
static inline float bf16_round(float f) { return bf16_to_f32(f32_to_bf16(f)); }

#endif

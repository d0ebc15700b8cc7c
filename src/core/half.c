/* half.c — see half.h. */
#include "core/half.h"

#include <math.h>

static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) {  /* zero or subnormal: m * 2^-24, exact in f32 */
        float v = (float)m * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t f32_to_f16(float f) {
    uint32_t x = f32_bits(f), ax = x & 0x7fffffffu;
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    if (ax > 0x7f800000u) return sign | 0x7e00 | (uint16_t)((ax >> 13) & 0x3ff);  /* quiet NaN */
    if (ax >= 0x47800000u) return sign | 0x7c00;                                  /* inf / overflow */
    if (ax < 0x38800000u) {  /* result is subnormal: scale by 2^24 (exact), round to nearest even */
        float v = bits_f32(ax) * 16777216.0f;
        return sign | (uint16_t)nearbyintf(v);
    }
    uint32_t h = ((((ax >> 23) - 112) << 10) | ((ax & 0x7fffff) >> 13)), rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;  /* a carry into the exponent is right */
    return sign | (uint16_t)h;
}

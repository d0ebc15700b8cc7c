#include "core/rng.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void rng_seed(Rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_u64(Rng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return out;
}

double rng_uniform(Rng *r) { return (double)(rng_u64(r) >> 11) * 0x1.0p-53; }

int rng_int(Rng *r, int n) { return n <= 1 ? 0 : (int)(rng_uniform(r) * n); }

double rng_normal(Rng *r) {
    /* Box-Muller without caching the second value keeps the stream position a
     * pure function of how many normals were drawn. */
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void rng_fill_normal(Rng *r, float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)rng_normal(r);
}

void rng_fill_uniform(Rng *r, float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)rng_uniform(r);
}

void rng_to_hex(const Rng *r, char out[65]) {
    for (int i = 0; i < 4; i++) snprintf(out + 16 * i, 17, "%016llx", (unsigned long long)r->s[i]);
}

int rng_from_hex(Rng *r, const char *hex) {
    if (!hex || strlen(hex) != 64 || strspn(hex, "0123456789abcdefABCDEF") != 64) return -1;
    for (int i = 0; i < 4; i++) {
        char part[17];
        memcpy(part, hex + 16 * i, 16);
        part[16] = 0;
        r->s[i] = strtoull(part, NULL, 16);
    }
    return 0;
}

int rng_parse_seed(const char *s, uint64_t *out, char *why, size_t n) {
    const char *p = s;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '+') p++;
    if (*p < '0' || *p > '9') {
        snprintf(why, n, *p == '-' ? "must not be negative (a seed is 0..18446744073709551615)"
                                   : "not a number (a seed is 0..18446744073709551615)");
        return -1;
    }
    uint64_t v = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) {
            snprintf(why, n, "out of range (at most 18446744073709551615)");
            return -1;
        }
        v = v * 10 + d;
    }
    while (*p == ' ' || *p == '\t') p++;
    if (*p) { snprintf(why, n, "not an integer (a seed is 0..18446744073709551615)"); return -1; }
    *out = v;
    return 0;
}

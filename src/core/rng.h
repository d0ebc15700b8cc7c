/* rng.h — small deterministic RNG (xoshiro256**, seeded by splitmix64).
 * Host-side: the same seed gives the same numbers on every backend, which is
 * what makes a resumed run end with the same adapter as an uninterrupted one. */
#ifndef KRONA_RNG_H
#define KRONA_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct Rng { uint64_t s[4]; } Rng;

void rng_seed(Rng *r, uint64_t seed);
uint64_t rng_u64(Rng *r);
double rng_uniform(Rng *r);            /* [0, 1) */
int rng_int(Rng *r, int n);            /* [0, n) */
double rng_normal(Rng *r);             /* standard normal (Box-Muller, no cache) */
void rng_fill_normal(Rng *r, float *x, int64_t n);
void rng_fill_uniform(Rng *r, float *x, int64_t n, float lo, float hi);
/* The state as 64 hex digits (checkpoints), and back: 0, or -1 if malformed. */
void rng_to_hex(const Rng *r, char out[65]);
int rng_from_hex(Rng *r, const char *hex);

/* A seed as text: a decimal integer 0..18446744073709551615 (a leading '+'
 * is fine). 0, or -1 with why ("must not be negative", "not an integer", ...):
 * the one rule for seeds in presets, --set and every subcommand's --seed. */
int rng_parse_seed(const char *s, uint64_t *out, char *why, size_t n);

#endif

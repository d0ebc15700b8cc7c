/* test_helpers.h — small shared utilities for the cmocka tests: random fills,
 * device round trips, tolerance checks and central finite differences.
 * Everything is static inline so a test that uses only part of it still
 * compiles cleanly under -Werror. Include after the cmocka headers. */
#ifndef KRONA_TEST_HELPERS_H
#define KRONA_TEST_HELPERS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dirent.h>
#include <unistd.h>

#include "core/backend.h"
#include "core/rng.h"
#include "formats/safetensors.h"

/* host buffers: abort the test on OOM rather than crash later */
static inline float *th_falloc(int64_t n) {
    float *p = calloc((size_t)(n > 0 ? n : 1), sizeof(float));
    assert_non_null(p);
    return p;
}
static inline double *th_dalloc(int64_t n) {
    double *p = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    assert_non_null(p);
    return p;
}

/* n floats uniform in [lo, hi), plus an optional double copy */
static inline float *th_rand(Rng *r, int64_t n, float lo, float hi) {
    float *p = th_falloc(n);
    rng_fill_uniform(r, p, n, lo, hi);
    return p;
}
static inline double *th_to_double(const float *x, int64_t n) {
    double *d = th_dalloc(n);
    for (int64_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

/* device buffer holding a copy of host (or zeros when host is NULL) */
static inline float *th_dev(Backend *be, const float *host, int64_t n) {
    float *d = be->alloc(be, sizeof(float) * (size_t)(n > 0 ? n : 1));
    assert_non_null(d);
    if (host && n > 0) be->upload(be, d, host, sizeof(float) * (size_t)n);
    return d;
}
/* device buffer filled with the constant v (gradient pre-fill for accumulate checks) */
static inline float *th_dev_const(Backend *be, int64_t n, float v) {
    float *h = th_falloc(n);
    for (int64_t i = 0; i < n; i++) h[i] = v;
    float *d = th_dev(be, h, n);
    free(h);
    return d;
}
/* malloc'd host copy of a device buffer */
static inline float *th_host(Backend *be, const float *dev, int64_t n) {
    float *h = th_falloc(n);
    be->sync(be);
    if (n > 0) be->download(be, h, dev, sizeof(float) * (size_t)n);
    return h;
}

/* Check |got[i] - off - want[i]| <= atol + rtol |want[i]| for all i; `off` is
 * subtracted from got (the pre-fill of an accumulated gradient). Fails the
 * test naming the first bad index. Returns the max abs error. */
static inline double th_check_off(const char *what, const float *got, float off,
                                  const double *want, int64_t n, double atol, double rtol) {
    double maxerr = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double g = (double)got[i] - off, e = fabs(g - want[i]);
        if (!(e <= atol + rtol * fabs(want[i]))) {
            fail_msg("%s: index %lld got %.9g want %.9g (|err| %.3g, atol %.1g rtol %.1g)", what,
                     (long long)i, g, want[i], e, atol, rtol);
        }
        if (e > maxerr) maxerr = e;
    }
    return maxerr;
}
static inline double th_check(const char *what, const float *got, const double *want, int64_t n,
                              double atol, double rtol) {
    return th_check_off(what, got, 0.f, want, n, atol, rtol);
}

/* Central finite differences of a scalar function of x: g[i] = dL/dx[i].
 * loss(ctx) must read x through ctx; x is restored exactly afterwards. */
static inline void th_fd_grad(double (*loss)(void *ctx), void *ctx, double *x, int64_t n,
                              double *g, double h) {
    for (int64_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + h;
        double lp = loss(ctx);
        x[i] = x0 - h;
        double lm = loss(ctx);
        x[i] = x0;
        g[i] = (lp - lm) / (2.0 * h);
    }
}

static inline double th_dot(const double *a, const double *b, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* A temporary folder per test program (flat: files only), made by setup and
 * removed with its files by teardown. */
static char tmpdir[256];
static inline int th_tmpdir_make(const char *tag) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/krona_%s_XXXXXX", tag);
    return mkdtemp(tmpdir) ? 0 : -1;
}
static inline int th_tmpdir_remove(void) {
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    char p[512];
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(tmpdir);
    return 0;
}
static inline void path_of(char *buf, const char *name) { snprintf(buf, 512, "%s/%s", tmpdir, name); }

/* Copy the safetensors file src to dst with element idx of tensor `name` made
 * non-finite in its own dtype (kind 0: NaN, 1: +Inf, 2: -Inf); every other
 * byte, the order of names and the metadata kept. Fails the test on error. */
static inline void th_poison(const char *src, const char *dst, const char *name, int64_t idx, int kind) {
    char err[512];
    SafeTensors *st = st_open(src, err, sizeof err);
    if (!st) fail_msg("%s", err);
    StWriter *w = stw_create();
    void *copy = NULL;
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *t = st_at(st, i);
        const void *data = t->data;
        if (!strcmp(t->name, name)) {
            if (idx < 0 || idx >= t->numel) fail_msg("th_poison: %s has %lld elements", name, (long long)t->numel);
            copy = malloc(t->nbytes);
            assert_non_null(copy);
            memcpy(copy, t->data, t->nbytes);
            unsigned char *e = (unsigned char *)copy + (size_t)idx * (size_t)st_dtype_size(t->dtype);
            static const uint32_t f32[3] = {0x7fc00000u, 0x7f800000u, 0xff800000u};
            static const uint16_t f16[3] = {0x7e00, 0x7c00, 0xfc00}, bf16[3] = {0x7fc0, 0x7f80, 0xff80};
            double f64 = kind == 0 ? NAN : kind == 1 ? INFINITY : -INFINITY;
            switch (t->dtype) {
            case ST_F32: memcpy(e, &f32[kind], 4); break;
            case ST_F16: memcpy(e, &f16[kind], 2); break;
            case ST_BF16: memcpy(e, &bf16[kind], 2); break;
            case ST_F64: memcpy(e, &f64, 8); break;
            default: fail_msg("th_poison: %s is %s, not a float tensor", name, st_dtype_name(t->dtype));
            }
            data = copy;
        }
        assert_int_equal(stw_add_ref(w, t->name, t->dtype, t->ndim, t->shape, data), 0);
    }
    if (!copy) fail_msg("th_poison: no tensor '%s' in %s", name, src);
    for (int i = 0; i < st_metadata_count(st); i++) {
        const char *k = st_metadata_key(st, i);
        assert_int_equal(stw_set_metadata(w, k, st_metadata(st, k)), 0);
    }
    if (stw_save(w, dst, err, sizeof err) != 0) fail_msg("%s", err);
    stw_free(w);
    free(copy);
    st_close(st);
}

#endif

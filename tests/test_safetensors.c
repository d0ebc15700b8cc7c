/* test_safetensors.c — round trips (F32 bit-exact; F16/BF16 against a
 * reference decoder written here with ldexp and a brute-force nearest-value
 * encoder), every malformed-file case, and atomic writes. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_helpers.h"
#include "core/fsutil.h"
#include "formats/json.h"
#include "formats/safetensors.h"


static int setup(void **state) {
    return th_tmpdir_make("st");
}
static int teardown(void **state) { return th_tmpdir_remove(); }


/* no "*.tmp.*" files anywhere in the test dir */
static void assert_no_temp_files(void) {
    DIR *d = opendir(tmpdir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d))) if (strstr(e->d_name, ".tmp.")) fail_msg("temp file left: %s", e->d_name);
    closedir(d);
}

/* file = u64 LE header length + header + data, written by hand (independent of the writer) */
static void write_raw_hl(const char *path, uint64_t hlen, const char *header, const void *data, size_t dlen) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hlen >> (8 * i));
    fwrite(b, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    if (dlen) fwrite(data, 1, dlen, f);
    fclose(f);
}
static void write_raw(const char *path, const char *header, const void *data, size_t dlen) {
    write_raw_hl(path, strlen(header), header, data, dlen);
}

static void test_roundtrip_f32(void **state) {
    char path[512];
    path_of(path, "rt.safetensors");
    float a[6] = { 1.0f, -2.5f, 3.14159274f, 1e-30f, -0.0f, 65504.0f };
    uint32_t special[3] = { 0x7fc00001u, 0x00000001u, 0x7f800000u };   /* nan payload, denormal, inf */
    float b[3];
    memcpy(b, special, sizeof b);
    float big[1000];
    for (int i = 0; i < 1000; i++) big[i] = sinf((float)i) * 100.0f;
    float scalar = 42.0f;
    int64_t sa[2] = { 2, 3 }, sb[1] = { 3 }, sbig[3] = { 10, 10, 10 }, sz[2] = { 0, 4 };

    StWriter *w = stw_create();
    assert_non_null(w);
    /* added out of order: the file must list names sorted */
    assert_int_equal(stw_add_f32(w, "zeta.big", 3, sbig, big), 0);
    assert_int_equal(stw_add_f32(w, "alpha.weight", 2, sa, a), 0);
    assert_int_equal(stw_add_f32(w, "beta", 1, sb, b), 0);
    assert_int_equal(stw_add_f32(w, "scalar", 0, NULL, &scalar), 0);
    assert_int_equal(stw_add_f32(w, "empty", 2, sz, NULL), 0);
    assert_int_equal(stw_set_metadata(w, "format", "pt"), 0);
    assert_int_equal(stw_set_metadata(w, "a_key", "first \"quoted\" \xC3\xA9"), 0);
    assert_int_equal(stw_set_metadata(w, "format", "pt2"), 0);   /* replaces */
    big[0] = 12345.0f;   /* stw_add_f32 copied: this must not reach the file */
    char err[256] = "";
    assert_int_equal(stw_save(w, path, err, sizeof err), 0);
    big[0] = sinf(0.0f) * 100.0f;
    stw_free(w);
    assert_no_temp_files();

    /* independent look at the bytes: header length, padding, sorted keys */
    size_t n;
    char *raw = fs_read_all(path, FS_TEXT_MAX, &n, err, sizeof err);
    assert_non_null(raw);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (unsigned char)raw[i];
    assert_int_equal(hl % 8, 0);
    assert_true(8 + hl <= n);
    const char *h = raw + 8;
    assert_int_equal(h[0], '{');
    size_t last = hl;
    while (h[last - 1] == ' ') last--;
    assert_int_equal(h[last - 1], '}');
    assert_true(hl - last < 8);
    const char *order[] = { "\"__metadata__\"", "\"alpha.weight\"", "\"beta\"", "\"empty\"", "\"scalar\"", "\"zeta.big\"" };
    char *hcopy = strndup(h, hl);
    for (int i = 1; i < 6; i++) {
        char *p0 = strstr(hcopy, order[i - 1]), *p1 = strstr(hcopy, order[i]);
        assert_non_null(p0);
        assert_non_null(p1);
        assert_true(p0 < p1);
    }
    assert_true(strstr(hcopy, "\"a_key\"") < strstr(hcopy, "\"format\""));
    free(hcopy);
    assert_int_equal(n, 8 + hl + (6 + 3 + 1000 + 1) * 4);
    free(raw);

    SafeTensors *st = st_open(path, err, sizeof err);
    if (!st) fail_msg("%s", err);
    assert_int_equal(st_count(st), 5);
    assert_string_equal(st_metadata(st, "format"), "pt2");
    assert_string_equal(st_metadata(st, "a_key"), "first \"quoted\" \xC3\xA9");
    assert_null(st_metadata(st, "nope"));
    assert_int_equal(st_metadata_count(st), 2);
    assert_string_equal(st_metadata_key(st, 0), "a_key");

    const StTensor *t = st_find(st, "alpha.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->numel, 6);
    assert_int_equal(t->nbytes, 24);
    assert_int_equal((uintptr_t)t->data % 4, 0);
    float got[1000];
    assert_int_equal(st_read_f32(t, got), 0);
    assert_memory_equal(got, a, sizeof a);
    t = st_find(st, "beta");
    /* converted bit-exact, NaN payload included, and flagged: no weight may hold one */
    assert_int_equal(st_read_f32(t, got), ST_READ_NONFINITE);
    assert_memory_equal(got, b, sizeof b);
    t = st_find(st, "zeta.big");
    assert_int_equal(t->numel, 1000);
    assert_int_equal(st_read_f32(t, got), 0);
    assert_memory_equal(got, big, sizeof big);
    t = st_find(st, "scalar");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    assert_int_equal(st_read_f32(t, got), 0);
    assert_true(got[0] == 42.0f);
    t = st_find(st, "empty");
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->nbytes, 0);
    assert_null(st_find(st, "alpha"));
    assert_null(st_find(st, "zz"));
    /* st_at walks the header order; every tensor is found by name */
    for (int i = 0; i < st_count(st); i++) assert_ptr_equal(st_find(st, st_at(st, i)->name), st_at(st, i));
    assert_null(st_at(st, 5));
    st_close(st);

    /* saving over an existing file replaces it atomically */
    w = stw_create();
    assert_int_equal(stw_add_f32(w, "only", 1, sb, b), 0);
    assert_int_equal(stw_save(w, path, err, sizeof err), 0);
    stw_free(w);
    assert_no_temp_files();
    st = st_open(path, err, sizeof err);
    assert_non_null(st);
    assert_int_equal(st_count(st), 1);
    assert_int_equal(st_metadata_count(st), 0);
    st_close(st);
}

/* ---- reference f16 / bf16, written from the format definitions ---- */

static double ref_f16(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 0) v = ldexp(m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexp(1024 + m, e - 25);
    return s ? -v : v;
}
static double ref_bf16(uint16_t b) {
    int s = b >> 15, e = (b >> 7) & 255, m = b & 127;
    double v;
    if (e == 0) v = ldexp(m, -133);
    else if (e == 255) v = m ? NAN : INFINITY;
    else v = ldexp(128 + m, e - 134);
    return s ? -v : v;
}

/* nearest representable value by search over the (monotonic) positive codes,
 * ties to the even code; overflow beyond max+half-ulp gives inf */
static uint16_t ref_encode(float x, double (*dec)(uint16_t), uint16_t max_finite, uint16_t inf) {
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double ax = fabs((double)x);
    uint16_t lo = 0, hi = max_finite;
    while (lo < hi) {   /* largest code with value <= ax */
        uint16_t mid = (uint16_t)((lo + hi + 1) / 2);
        if (dec(mid) <= ax) lo = mid; else hi = (uint16_t)(mid - 1);
    }
    if (lo == max_finite) {
        double ulp = dec(max_finite) - dec((uint16_t)(max_finite - 1));
        if (ax >= dec(max_finite) + ulp / 2) return sign | inf;
        return sign | max_finite;
    }
    double d0 = ax - dec(lo), d1 = dec((uint16_t)(lo + 1)) - ax;
    if (d1 < d0 || (d1 == d0 && (lo & 1))) lo++;
    return sign | lo;
}

static void test_f16_bf16_conversions(void **state) {
    /* known bit patterns */
    assert_true(f16_to_f32(0x3C00) == 1.0f);
    assert_true(f16_to_f32(0xC000) == -2.0f);
    assert_true(f16_to_f32(0x7BFF) == 65504.0f);
    assert_true(f16_to_f32(0x0001) == 5.9604644775390625e-08f);
    assert_true(f16_to_f32(0x0400) == 6.103515625e-05f);
    assert_true(isinf(f16_to_f32(0x7C00)) && f16_to_f32(0x7C00) > 0);
    assert_true(isnan(f16_to_f32(0x7E00)));
    assert_true(bf16_to_f32(0x3F80) == 1.0f);
    assert_true(bf16_to_f32(0x4049) == 3.140625f);
    assert_true(isinf(bf16_to_f32(0xFF80)) && bf16_to_f32(0xFF80) < 0);
    assert_true(isnan(bf16_to_f32(0x7FC0)));
    assert_int_equal(f32_to_f16(1.0f), 0x3C00);
    assert_int_equal(f32_to_bf16(1.0f), 0x3F80);
    /* every f16 and bf16 code decodes like the reference */
    for (uint32_t c = 0; c < 65536; c++) {
        double r = ref_f16((uint16_t)c);
        float v = f16_to_f32((uint16_t)c);
        if (isnan(r)) assert_true(isnan(v));
        else if ((double)v != r || !signbit(v) != !signbit(r)) fail_msg("f16 0x%04x: %g vs %g", c, v, r);
        r = ref_bf16((uint16_t)c);
        v = bf16_to_f32((uint16_t)c);
        if (isnan(r)) assert_true(isnan(v));
        else if ((double)v != r || !signbit(v) != !signbit(r)) fail_msg("bf16 0x%04x: %g vs %g", c, v, r);
    }
    /* encoding: ties, subnormals, overflow, then many random floats */
    float cases[] = { 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 65519.0f, 65520.0f, 0x1p-25f, 3 * 0x1p-26f,
                      0x1p-25f * 1.0001f, -0.0f, 1e-10f, 7e4f, 0.1f, -123.456f, 6.1e-5f };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_int_equal(f32_to_f16(cases[i]), ref_encode(cases[i], ref_f16, 0x7BFF, 0x7C00));
    assert_int_equal(f32_to_f16(1.0f + 0x1p-11f), 0x3C00);   /* tie to even */
    assert_int_equal(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);
    assert_int_equal(f32_to_f16(65520.0f), 0x7C00);
    assert_int_equal(f32_to_bf16(1.0f + 0x1p-8f), 0x3F80);
    assert_int_equal(f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);
    assert_true(isnan(f16_to_f32(f32_to_f16(NAN))));
    assert_true(isnan(bf16_to_f32(f32_to_bf16(NAN))));
    assert_int_equal(f32_to_f16(INFINITY), 0x7C00);
    assert_int_equal(f32_to_bf16(-INFINITY), 0xFF80);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 20000; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        /* log-uniform magnitudes covering subnormal..overflow for f16 */
        float x = (float)ldexp(1.0 + (double)(s & 0xFFFFF) / 0x100000, (int)((s >> 20) % 50) - 30);
        if (s >> 63) x = -x;
        uint16_t want = ref_encode(x, ref_f16, 0x7BFF, 0x7C00);
        if (f32_to_f16(x) != want) fail_msg("f16 encode %.9g: 0x%04x vs 0x%04x", x, f32_to_f16(x), want);
        float y = (float)ldexp(1.0 + (double)(s & 0xFFFFF) / 0x100000, (int)((s >> 20) % 260) - 135);
        want = ref_encode(y, ref_bf16, 0x7F7F, 0x7F80);
        if (f32_to_bf16(y) != want) fail_msg("bf16 encode %.9g: 0x%04x vs 0x%04x", y, f32_to_bf16(y), want);
    }
}

/* f32 data written as F16 / BF16 (st_from_f32, stw_add_f32_as): every value is
 * the reference encoder's nearest-even code, in place too; finite values that
 * overflow are counted and refused by the writer, naming the tensor; the header
 * says the dtype asked. */
static void test_write_from_f32(void **state) {
    float x[] = { 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 65519.0f, 65520.0f, 0x1p-25f, 3 * 0x1p-26f,
                  -0.0f, 1e-10f, 7e4f, 0.1f, -123.456f, 6.1e-5f, INFINITY, -INFINITY, NAN, 3.0e38f,
                  3.4028235e38f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f };
    enum { N = sizeof x / sizeof x[0] };
    uint16_t h[N], b[N];
    float inplace[N];
    assert_int_equal(st_from_f32(ST_F16, x, N, h), 4);   /* 65520, 7e4, 3e38, FLT_MAX */
    assert_int_equal(st_from_f32(ST_BF16, x, N, b), 1);  /* FLT_MAX rounds up to inf */
    for (int i = 0; i < N; i++) {
        if (isnan(x[i])) {
            assert_true(isnan(ref_f16(h[i])) && isnan(ref_bf16(b[i])));
            continue;
        }
        assert_int_equal(h[i], ref_encode(x[i], ref_f16, 0x7BFF, 0x7C00));
        assert_int_equal(b[i], ref_encode(x[i], ref_bf16, 0x7F7F, 0x7F80));
    }
    memcpy(inplace, x, sizeof x);
    assert_int_equal(st_from_f32(ST_F16, inplace, N, inplace), 4);
    assert_memory_equal(inplace, h, sizeof h);
    memcpy(inplace, x, sizeof x);
    assert_int_equal(st_from_f32(ST_F32, x, N, inplace), 0);
    assert_memory_equal(inplace, x, sizeof x);
    assert_int_equal(st_from_f32(ST_I32, x, N, inplace), -1);
    assert_int_equal(st_float_dtype_parse("f16"), ST_F16);
    assert_int_equal(st_float_dtype_parse("bf16"), ST_BF16);
    assert_int_equal(st_float_dtype_parse("f32"), ST_F32);
    assert_int_equal(st_float_dtype_parse("fp16"), -1);
    assert_int_equal(st_float_dtype_parse(NULL), -1);

    /* the writer: values and the header's dtype */
    char path[512], err[256] = "";
    path_of(path, "from_f32.safetensors");
    float ok[6] = { 0.1f, -2.5f, 1e-6f, 65504.0f, 0.0f, 1.0f + 0x1p-11f };
    int64_t s23[2] = { 2, 3 };
    StWriter *w = stw_create();
    assert_int_equal(stw_add_f32_as(w, "half", ST_F16, 2, s23, ok), 0);
    assert_int_equal(stw_add_f32_as(w, "brain", ST_BF16, 2, s23, ok), 0);
    assert_int_equal(stw_add_f32_as(w, "full", ST_F32, 2, s23, ok), 0);
    assert_int_equal(stw_add_f32_as(w, "scalar", ST_F16, 0, NULL, &ok[1]), 0);
    assert_int_equal(stw_save(w, path, err, sizeof err), 0);
    stw_free(w);
    SafeTensors *st = st_open(path, err, sizeof err);
    if (!st) fail_msg("%s", err);
    const StTensor *th = st_find(st, "half"), *tb = st_find(st, "brain"), *tf = st_find(st, "full"),
                   *ts = st_find(st, "scalar");
    assert_int_equal(th->dtype, ST_F16);
    assert_int_equal(tb->dtype, ST_BF16);
    assert_int_equal(tf->dtype, ST_F32);
    assert_int_equal(ts->dtype, ST_F16);
    assert_int_equal(ts->ndim, 0);
    assert_int_equal(th->nbytes, 12);
    for (int i = 0; i < 6; i++) {
        uint16_t c;
        memcpy(&c, (const char *)th->data + 2 * i, 2);
        assert_int_equal(c, ref_encode(ok[i], ref_f16, 0x7BFF, 0x7C00));
        memcpy(&c, (const char *)tb->data + 2 * i, 2);
        assert_int_equal(c, ref_encode(ok[i], ref_bf16, 0x7F7F, 0x7F80));
    }
    assert_memory_equal(tf->data, ok, sizeof ok);
    st_close(st);

    /* a value F16 cannot hold: one line naming the file, the tensor and what to do */
    float big[2] = { 1.0f, 7e4f };
    int64_t s2[1] = { 2 };
    w = stw_create();
    assert_int_equal(stw_add_f32_as(w, "too_big", ST_F16, 1, s2, big), -1);
    assert_non_null(strstr(stw_error(w), "too_big"));
    assert_int_equal(stw_save(w, path, err, sizeof err), -1);
    stw_free(w);
    assert_non_null(strstr(err, "from_f32.safetensors: tensor 'too_big': values beyond F16's range"));
    assert_non_null(strstr(err, "BF16 or F32"));
    assert_int_equal(stw_add_f32_as(w = stw_create(), "bad", ST_I32, 1, s2, big), -1);
    stw_free(w);
    assert_no_temp_files();
}

static void test_read_f16_bf16_file(void **state) {
    char path[512];
    path_of(path, "half.safetensors");
    /* F16 (13 elems = 26 bytes), then BF16 (10 = 20), F32 (2, at offset 46: unaligned), F64, I64 */
    uint16_t h[13] = { 0x3C00, 0xC000, 0x3555, 0x7BFF, 0x0400, 0x0001, 0x03FF, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0x3800, 0x4248 };
    uint16_t bf[10] = { 0x3F80, 0xC000, 0x4049, 0x7F7F, 0x0080, 0x0001, 0x7F80, 0xFF80, 0x7FC0, 0x8000 };
    float f[2] = { 0.25f, -7.0f };
    double d[2] = { 1.0 / 3.0, -1e300 };
    int64_t iv[3] = { -5, 0, 1LL << 40 };
    unsigned char data[26 + 20 + 8 + 16 + 24];
    size_t o = 0;
    memcpy(data + o, h, 26); o += 26;
    memcpy(data + o, bf, 20); o += 20;
    memcpy(data + o, f, 8); o += 8;
    memcpy(data + o, d, 16); o += 16;
    memcpy(data + o, iv, 24); o += 24;
    const char *hdr = "{\"h\":{\"dtype\":\"F16\",\"shape\":[13],\"data_offsets\":[0,26]},"
                      "\"bf\":{\"dtype\":\"BF16\",\"shape\":[2,5],\"data_offsets\":[26,46]},"
                      "\"f\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[46,54]},"
                      "\"d\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[54,70]},"
                      "\"i\":{\"dtype\":\"I64\",\"shape\":[3],\"data_offsets\":[70,94]}}";
    write_raw(path, hdr, data, o);
    char err[256] = "";
    SafeTensors *st = st_open(path, err, sizeof err);
    if (!st) fail_msg("%s", err);
    /* header order is kept */
    assert_string_equal(st_at(st, 0)->name, "h");
    assert_string_equal(st_at(st, 4)->name, "i");
    float out[16];
    const StTensor *t = st_find(st, "h");
    assert_int_equal(t->dtype, ST_F16);
    assert_int_equal(st_read_f32(t, out), ST_READ_NONFINITE);   /* converted, and flagged */
    float want_h[13] = { 1.0f, -2.0f, 0.333251953125f, 65504.0f, 6.103515625e-05f, 5.9604644775390625e-08f,
                         6.097555160522461e-05f, -0.0f, INFINITY, -INFINITY, NAN, 0.5f, 3.140625f };
    for (int i = 0; i < 13; i++) {
        if (isnan(want_h[i])) { assert_true(isnan(out[i])); continue; }
        if (out[i] != want_h[i] || !signbit(out[i]) != !signbit(want_h[i])) fail_msg("f16[%d] = %g, want %g", i, out[i], want_h[i]);
    }
    t = st_find(st, "bf");
    assert_int_equal(t->ndim, 2);
    assert_int_equal(st_read_f32(t, out), ST_READ_NONFINITE);
    float want_b[10] = { 1.0f, -2.0f, 3.140625f, 3.3895313892515355e38f, 1.1754943508222875e-38f, 9.183549615799121e-41f,
                         INFINITY, -INFINITY, NAN, -0.0f };
    for (int i = 0; i < 10; i++) {
        if (isnan(want_b[i])) { assert_true(isnan(out[i])); continue; }
        if (out[i] != want_b[i] || !signbit(out[i]) != !signbit(want_b[i])) fail_msg("bf16[%d] = %g, want %g", i, out[i], want_b[i]);
    }
    assert_int_equal(st_read_f32(st_find(st, "f"), out), 0);
    assert_true(out[0] == 0.25f && out[1] == -7.0f);
    assert_int_equal(st_read_f32(st_find(st, "d"), out), ST_READ_NONFINITE);   /* -1e300: beyond float */
    assert_true(out[0] == (float)(1.0 / 3.0) && isinf(out[1]) && out[1] < 0);
    assert_int_equal(st_read_f32(st_find(st, "i"), out), 0);
    assert_true(out[0] == -5.0f && out[1] == 0.0f && out[2] == 1099511627776.0f);
    st_close(st);
}

static void test_writer_mixed_dtypes(void **state) {
    char path[512];
    path_of(path, "mixed.safetensors");
    uint16_t h3[3] = { 0x3C00, 0x4000, 0x4200 };   /* 1, 2, 3 */
    uint16_t b3[3] = { f32_to_bf16(0.5f), f32_to_bf16(-4.0f), f32_to_bf16(1.0f) };
    float f2[2] = { 9.0f, 10.0f };
    int64_t s3[1] = { 3 }, s2[1] = { 2 };
    StWriter *w = stw_create();
    /* "a_half" sorts first by name, but F32 goes first so it stays 4-aligned */
    assert_int_equal(stw_add_ref(w, "a_half", ST_F16, 1, s3, h3), 0);
    assert_int_equal(stw_add_ref(w, "b_bf", ST_BF16, 1, s3, b3), 0);
    assert_int_equal(stw_add_f32(w, "z_f32", 1, s2, f2), 0);
    char err[256] = "";
    assert_int_equal(stw_save(w, path, err, sizeof err), 0);
    stw_free(w);
    SafeTensors *st = st_open(path, err, sizeof err);
    assert_non_null(st);
    const StTensor *t = st_find(st, "z_f32");
    assert_int_equal((uintptr_t)t->data % 4, 0);
    float out[3];
    assert_int_equal(st_read_f32(t, out), 0);
    assert_true(out[0] == 9.0f && out[1] == 10.0f);
    assert_int_equal(st_read_f32(st_find(st, "a_half"), out), 0);
    assert_true(out[0] == 1.0f && out[1] == 2.0f && out[2] == 3.0f);
    assert_int_equal(st_read_f32(st_find(st, "b_bf"), out), 0);
    assert_true(out[0] == 0.5f && out[1] == -4.0f && out[2] == 1.0f);
    st_close(st);
}

/* st_open must fail with a message naming the file and containing want */
static void expect_bad(const char *path, const char *want) {
    char err[512] = "";
    SafeTensors *st = st_open(path, err, sizeof err);
    if (st) { st_close(st); fail_msg("st_open should fail (expected '%s')", want); }
    if (!strstr(err, want)) fail_msg("error '%s' does not mention '%s'", err, want);
    if (!strstr(err, path)) fail_msg("error '%s' does not name the file", err);
}

static void bad_header(const char *name, const char *hdr, size_t dlen, const char *want) {
    char path[512];
    unsigned char data[64] = {0};
    assert_true(dlen <= sizeof data);
    path_of(path, name);
    write_raw(path, hdr, data, dlen);
    expect_bad(path, want);
}

#define T(dt, shape, b, e) "{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_malformed(void **state) {
    char path[512];
    /* shorter than 8 bytes */
    path_of(path, "short.safetensors");
    FILE *f = fopen(path, "wb");
    fwrite("abcde", 1, 5, f);
    fclose(f);
    expect_bad(path, "shorter than the 8-byte");
    /* empty file */
    path_of(path, "empty.safetensors");
    fclose(fopen(path, "wb"));
    expect_bad(path, "shorter than the 8-byte");
    /* header length larger than the file */
    path_of(path, "hlen.safetensors");
    write_raw_hl(path, 200, "{}", NULL, 0);
    expect_bad(path, "larger than the file");
    /* header length over 100 MB */
    path_of(path, "huge.safetensors");
    write_raw_hl(path, 1ull << 40, "{}", NULL, 0);
    expect_bad(path, "exceeds the 100 MB limit");
    /* missing file / a directory */
    path_of(path, "does_not_exist.safetensors");
    expect_bad(path, "No such file");
    expect_bad(tmpdir, "directory");

    bad_header("json.st", "{\"a\": ", 0, "invalid JSON header: at byte 6");
    bad_header("notobj.st", "[1, 2]", 0, "not a JSON object");
    bad_header("nodtype.st", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'a': missing dtype");
    bad_header("noshape.st", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 'a': missing shape");
    bad_header("nooffs.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor 'a': missing data_offsets");
    bad_header("notobj2.st", "{\"a\":[1]}", 0, "entry is not an object");
    bad_header("dtype.st", "{\"a\":" T("F12", "[1]", 0, 4) "}", 4, "unknown dtype 'F12'");
    bad_header("negshape.st", "{\"a\":" T("F32", "[-1]", 0, 4) "}", 4, "shape[0] is not a non-negative integer");
    bad_header("fracshape.st", "{\"a\":" T("F32", "[2, 1.5]", 0, 4) "}", 4, "shape[1] is not a non-negative integer");
    bad_header("shapestr.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", 8, "shape is not an array");
    bad_header("ovf.st", "{\"a\":" T("F32", "[4503599627370496, 4503599627370496]", 0, 4) "}", 4, "overflows");
    bad_header("ndim.st", "{\"a\":" T("F32", "[1,1,1,1,1,1,1,1,1]", 0, 4) "}", 4, "9 dimensions");
    bad_header("span.st", "{\"a\":" T("F32", "[2]", 0, 4) "}", 4, "span 4 bytes but dtype F32 with shape [2] needs 8");
    bad_header("beginend.st", "{\"a\":" T("F32", "[0]", 8, 4) "}", 8, "begin > end");
    bad_header("offs3.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, "data_offsets must be [begin, end]");
    bad_header("negoff.st", "{\"a\":" T("F32", "[1]", -4, 0) "}", 4, "data_offsets must be [begin, end]");
    bad_header("outside.st", "{\"a\":" T("F32", "[2]", 0, 8) "}", 4, "outside the data buffer");
    bad_header("overlap.st", "{\"a\":" T("F32", "[2]", 0, 8) ",\"b\":" T("F32", "[2]", 4, 12) "}", 12, "overlap");
    bad_header("hole.st", "{\"a\":" T("F32", "[2]", 0, 8) ",\"b\":" T("F32", "[2]", 12, 20) "}", 20, "not covered");
    bad_header("lead.st", "{\"a\":" T("F32", "[2]", 4, 12) "}", 12, "bytes [0, 4) are not covered");
    bad_header("trail.st", "{\"a\":" T("F32", "[2]", 0, 8) "}", 12, "trailing bytes");
    bad_header("dup.st", "{\"a\":" T("F32", "[1]", 0, 4) ",\"a\":" T("F32", "[1]", 4, 8) "}", 8, "duplicate tensor name 'a'");
    bad_header("meta.st", "{\"__metadata__\":{\"k\":1},\"a\":" T("F32", "[1]", 0, 4) "}", 4, "__metadata__ value of 'k' is not a string");
    bad_header("meta2.st", "{\"__metadata__\":[]}", 0, "__metadata__ is not an object");
    bad_header("meta3.st", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate __metadata__");

    /* the good counterparts open: an empty header, a metadata-only file, padded header */
    char err[256];
    path_of(path, "ok_empty.st");
    write_raw(path, "{}", NULL, 0);
    SafeTensors *st = st_open(path, err, sizeof err);
    if (!st) fail_msg("%s", err);
    assert_int_equal(st_count(st), 0);
    st_close(st);
    path_of(path, "ok_pad.st");
    unsigned char d8[8] = {0};
    write_raw(path, "{\"a\":" T("F32", "[2]", 0, 8) ",\"__metadata__\":{\"x\":\"y\"}}    ", d8, 8);
    st = st_open(path, err, sizeof err);
    if (!st) fail_msg("%s", err);
    assert_string_equal(st_metadata(st, "x"), "y");
    st_close(st);
}

static void test_writer_errors(void **state) {
    char path[512], err[256] = "";
    path_of(path, "w.safetensors");
    float x[2] = { 1, 2 };
    int64_t s2[1] = { 2 }, neg[1] = { -1 };
    StWriter *w = stw_create();
    assert_int_equal(stw_add_f32(w, "a", 1, s2, x), 0);
    assert_int_equal(stw_add_f32(w, "a", 1, s2, x), 0);   /* caught at save (sorted) */
    assert_int_equal(stw_save(w, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "duplicate tensor name 'a'"));
    stw_free(w);
    assert_false(fs_exists(path));

    w = stw_create();
    assert_int_equal(stw_add_f32(w, "bad", 1, neg, x), -1);
    assert_int_equal(stw_add_f32(w, "__metadata__", 1, s2, x), -1);
    assert_int_equal(stw_save(w, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "tensor 'bad': negative dimension"));
    stw_free(w);

    /* unwritable destination: error names the path, nothing left behind */
    w = stw_create();
    assert_int_equal(stw_add_f32(w, "a", 1, s2, x), 0);
    char nodir[512];
    path_of(nodir, "no/such/dir/x.safetensors");
    assert_int_equal(stw_save(w, nodir, err, sizeof err), -1);
    assert_non_null(strstr(err, "no/such/dir/x.safetensors"));
    stw_free(w);
    assert_no_temp_files();
}

static void test_fsutil(void **state) {
    char path[512], err[256] = "";
    path_of(path, "a/b/c");
    assert_int_equal(fs_mkdir_p(path, err, sizeof err), 0);
    assert_true(fs_is_dir(path));
    assert_int_equal(fs_mkdir_p(path, err, sizeof err), 0);   /* exists: fine */
    char file[600];
    snprintf(file, sizeof file, "%s/f.txt", path);
    assert_int_equal(fs_write_atomic(file, "hello", 5, err, sizeof err), 0);
    assert_true(fs_exists(file));
    assert_false(fs_is_dir(file));
    size_t n = 0;
    char *s = fs_read_all(file, FS_TEXT_MAX, &n, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(n, 5);
    assert_string_equal(s, "hello");
    free(s);
    assert_int_equal(fs_write_atomic(file, "", 0, err, sizeof err), 0);
    s = fs_read_all(file, FS_TEXT_MAX, &n, err, sizeof err);
    assert_int_equal(n, 0);
    free(s);
    /* mkdir through a file fails with a message */
    char under[700];
    snprintf(under, sizeof under, "%s/sub", file);
    assert_int_equal(fs_mkdir_p(under, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot create directory"));
    assert_null(fs_read_all(under, FS_TEXT_MAX, &n, err, sizeof err));
    assert_non_null(strstr(err, under));
    /* streaming writer: abort leaves nothing */
    char f2[600];
    snprintf(f2, sizeof f2, "%s/g.bin", path);
    FsAtomic *a = fs_atomic_open(f2, err, sizeof err);
    assert_non_null(a);
    assert_int_equal(fs_atomic_write(a, "xyz", 3), 0);
    fs_atomic_abort(a);
    assert_false(fs_exists(f2));
    /* clean up the nested dirs (teardown only removes plain files) */
    unlink(file);
    rmdir(path);
    path_of(path, "a/b");
    rmdir(path);
    path_of(path, "a");
    rmdir(path);
    assert_no_temp_files();
}

static int skip_b(void *user, const char *rel) {
    int *calls = user;
    (*calls)++;
    return !strcmp(rel, "d/b.txt");
}

/* fs_copy_tree copies files (through symlinks) and folders, leaves out what skip
 * says; fs_remove_tree removes a tree and its links, never what a link names */
static void test_fs_tree(void **state) {
    char src[512], dst[512], p[700], q[700], err[512] = "";
    path_of(src, "src");
    path_of(dst, "dst");
    snprintf(p, sizeof p, "%s/d/e", src);
    assert_int_equal(fs_mkdir_p(p, err, sizeof err), 0);
    snprintf(p, sizeof p, "%s/a.txt", src);
    assert_int_equal(fs_write_atomic(p, "alpha", 5, err, sizeof err), 0);
    snprintf(p, sizeof p, "%s/d/b.txt", src);
    assert_int_equal(fs_write_atomic(p, "beta", 4, err, sizeof err), 0);
    char target[512];
    path_of(target, "target.txt");
    assert_int_equal(fs_write_atomic(target, "gamma", 5, err, sizeof err), 0);
    snprintf(p, sizeof p, "%s/d/e/link.txt", src);
    assert_int_equal(symlink(target, p), 0);
    assert_int_equal(mkdir(dst, 0755), 0);
    int calls = 0;
    if (fs_copy_tree(src, dst, skip_b, &calls, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(calls, 3);
    size_t n;
    snprintf(q, sizeof q, "%s/a.txt", dst);
    char *t = fs_read_all(q, (size_t)1 << 32, &n, err, sizeof err);
    assert_non_null(t);
    assert_string_equal(t, "alpha");
    free(t);
    snprintf(q, sizeof q, "%s/d/b.txt", dst);
    assert_false(fs_exists(q));
    snprintf(q, sizeof q, "%s/d/e/link.txt", dst);
    struct stat sb;
    assert_int_equal(lstat(q, &sb), 0);
    assert_true(S_ISREG(sb.st_mode)); /* the bytes, not the link */
    t = fs_read_all(q, (size_t)1 << 32, &n, err, sizeof err);
    assert_string_equal(t, "gamma");
    free(t);
    /* into a folder that is not there: one line naming it */
    path_of(q, "nowhere");
    assert_int_equal(fs_copy_tree(src, q, NULL, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "nowhere"));
    /* removal: the link goes, its target stays */
    assert_int_equal(fs_remove_tree(src), 0);
    assert_int_equal(fs_remove_tree(dst), 0);
    assert_false(fs_exists(src));
    assert_false(fs_exists(dst));
    assert_true(fs_exists(target));
    assert_int_equal(fs_remove_tree(src), 0); /* gone already: fine */
    unlink(target);
    assert_no_temp_files();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_f32),
        cmocka_unit_test(test_f16_bf16_conversions),
        cmocka_unit_test(test_write_from_f32),
        cmocka_unit_test(test_read_f16_bf16_file),
        cmocka_unit_test(test_writer_mixed_dtypes),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_fsutil),
        cmocka_unit_test(test_fs_tree),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* test_tui_sixel.c — the studio's sixel previews decode back to the image.
 * The encoder (tui/sixel_enc.c, no ncurses) is compiled into this test as one
 * translation unit; libsixel's own decoder (sixel_decode_raw) is the
 * independent reference. With KRONA_SIXEL_STREAM and KRONA_SIXEL_PNG set (by
 * tests/tui/test_tui.sh) it also checks a stream the running studio wrote
 * against the preview PNG saved in the run folder (with KRONA_SIXEL_REGION,
 * the newest grid's place in a picture that holds several), and the base
 * model's grid in the same picture against its own PNG. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sixel.h>

#include "../tui/sixel_enc.c"
#include "core/fsutil.h"

/* Mean absolute channel error of the decoded region at (rx, ry) against ref
 * scaled by k (nearest). */
static double region_error(const unsigned char *px, const unsigned char *pal, int w, int rx, int ry,
                           const Image *ref, int k) {
    double err = 0;
    for (int y = 0; y < k * ref->h; y++)
        for (int x = 0; x < k * ref->w; x++) {
            const unsigned char *c = pal + 3 * px[(size_t)(ry + y) * w + rx + x];
            const unsigned char *r = ref->px + ((size_t)(y / k) * ref->w + x / k) * 3;
            for (int j = 0; j < 3; j++) err += abs((int)c[j] - (int)r[j]);
        }
    return err / ((double)k * ref->w * k * ref->h * 3);
}

/* Decode a sixel stream and compare it with ref scaled by the factor the
 * decoded size implies. Returns the mean absolute channel error; *k_out is
 * the scale (0 if the size does not match any integer scale). */
static double decode_and_compare(const char *stream, size_t len, const Image *ref, int *k_out) {
    unsigned char *px = NULL, *pal = NULL;
    int w = 0, h = 0, nc = 0;
    *k_out = 0;
    SIXELSTATUS st = sixel_decode_raw((unsigned char *)stream, (int)len, &px, &w, &h, &pal, &nc, NULL);
    assert_true(SIXEL_SUCCEEDED(st));
    assert_non_null(px);
    /* the decoder may pad the height up to a multiple of 6 (one sixel band) */
    int k = w / ref->w;
    if (k < 1 || k * ref->w != w || h < k * ref->h || h >= k * ref->h + 6) {
        free(px);
        free(pal);
        return 1e9;
    }
    *k_out = k;
    double err = region_error(px, pal, w, 0, 0, ref, k);
    free(px);
    free(pal);
    return err;
}

/* The same for a region (rx, ry, rw, rh) of a larger image that should hold
 * ref scaled by k: the studio stacks several sample grids in one picture. */
static double decode_region(const char *stream, size_t len, const Image *ref, int rx, int ry, int rw, int rh,
                            int k) {
    unsigned char *px = NULL, *pal = NULL;
    int w = 0, h = 0, nc = 0;
    SIXELSTATUS st = sixel_decode_raw((unsigned char *)stream, (int)len, &px, &w, &h, &pal, &nc, NULL);
    assert_true(SIXEL_SUCCEEDED(st));
    assert_non_null(px);
    assert_true(k >= 1);
    assert_int_equal(rw, k * ref->w);
    assert_int_equal(rh, k * ref->h);
    assert_true(rx >= 0 && ry >= 0 && rx + rw <= w && ry + rh <= h);
    double err = region_error(px, pal, w, rx, ry, ref, k);
    free(px);
    free(pal);
    return err;
}

static void check_roundtrip(const Image *im, int k) {
    char *s = NULL, err[256];
    size_t len = 0;
    assert_int_equal(sixel_encode_image(im, k, &s, &len, err, sizeof err), 0);
    assert_true(len > 10);
    assert_memory_equal(s, "\033P", 2);   /* DCS introducer ... */
    assert_memory_equal(s + len - 2, "\033\\", 2);   /* ... string terminator */
    int got_k;
    double e = decode_and_compare(s, len, im, &got_k);
    assert_int_equal(got_k, k);
    printf("round trip k=%d error %.3f\n", k, e);
    assert_true(e < 3.0);   /* 256-colour palette on a few-colour image: near exact */
    /* and it can fail: an upside-down reference must not match */
    Image mir = {0};
    assert_int_equal(image_alloc(&mir, im->w, im->h, 3), 0);
    for (int y = 0; y < im->h; y++)
        for (int x = 0; x < im->w; x++)
            memcpy(mir.px + ((size_t)y * im->w + x) * 3, im->px + ((size_t)(im->h - 1 - y) * im->w + x) * 3, 3);
    double e_wrong = decode_and_compare(s, len, &mir, &got_k);
    printf("flipped reference error %.3f\n", e_wrong);
    assert_true(e_wrong > e + 5.0);
    image_free(&mir);
    free(s);
}

static void test_synthetic(void **state) {
    (void)state;
    Image im = {0};
    assert_int_equal(image_alloc(&im, 37, 23, 3), 0);   /* odd sizes: partial sixel band */
    for (int y = 0; y < im.h; y++)
        for (int x = 0; x < im.w; x++) {
            unsigned char *p = im.px + ((size_t)y * im.w + x) * 3;
            p[0] = (unsigned char)(x < 12 ? 230 : 20);
            p[1] = (unsigned char)(y < 10 ? 200 : 40);
            p[2] = (unsigned char)((x + y) % 2 ? 180 : 60);
        }
    check_roundtrip(&im, 1);
    check_roundtrip(&im, 3);
    image_free(&im);
}

static void test_demo_image(void **state) {
    (void)state;
    Image im, small;
    char err[256];
    assert_int_equal(image_load("models/demo/subject1.png", &im, err, sizeof err), 0);
    assert_int_equal(image_center_crop_resize(&im, 24, &small), 0);
    check_roundtrip(&small, 2);
    image_free(&im);
    image_free(&small);
}

static void test_scale_factor(void **state) {
    (void)state;
    assert_int_equal(sixel_scale_factor(70, 36, 200, 120), 2);
    assert_int_equal(sixel_scale_factor(70, 36, 60, 30), 1);
    assert_int_equal(sixel_scale_factor(10, 10, 100, 100), 10);
}

/* One grid of the stream the studio itself wrote against its PNG; region
 * ("x y w h k", from the studio's dump) says where in the picture it sits when
 * the picture holds several, NULL or "" that it is the whole picture. */
static void check_studio_grid(const char *s, size_t len, const char *png, const char *rp, const char *what) {
    char err[512];
    Image ref;
    assert_int_equal(image_load(png, &ref, err, sizeof err), 0);
    int k, rx = 0, ry = 0, rw = 0, rh = 0, rk = 0;
    int region = rp && rp[0];
    if (region) assert_int_equal(sscanf(rp, "%d %d %d %d %d", &rx, &ry, &rw, &rh, &rk), 5);
    double e = region ? decode_region(s, len, &ref, rx, ry, rw, rh, rk) : decode_and_compare(s, len, &ref, &k);
    if (region) k = rk;
    printf("studio stream, %s: %zu bytes, scale %d, region %d,%d %dx%d, mean abs error %.3f\n", what, len, k, rx, ry,
           rw, rh, e);
    assert_true(k >= 1);
    /* early samples are noise with more than 256 colours: the palette costs a
     * few levels per channel; a different image costs ten times that */
    assert_true(e < 10.0);
    Image flip = {0};
    assert_int_equal(image_alloc(&flip, ref.w, ref.h, 3), 0);
    for (int y = 0; y < ref.h; y++)
        memcpy(flip.px + (size_t)y * ref.w * 3, ref.px + (size_t)(ref.h - 1 - y) * ref.w * 3, (size_t)ref.w * 3);
    double e_wrong = region ? decode_region(s, len, &flip, rx, ry, rw, rh, rk) : decode_and_compare(s, len, &flip, &k);
    printf("against the flipped PNG: %.3f\n", e_wrong);
    assert_true(e_wrong > 2 * e + 5.0);
    /* and a region one grid-row lower (the label strip and the older grid) is not it */
    if (region) {
        unsigned char *px = NULL, *pal = NULL;
        int w = 0, h = 0, nc = 0;
        assert_true(SIXEL_SUCCEEDED(sixel_decode_raw((unsigned char *)s, (int)len, &px, &w, &h, &pal, &nc, NULL)));
        int dy = ry >= rh / 2 ? -ry : rh / 2;   /* shifted onto the label strip or half a grid down */
        if (ry + dy + rh <= h) {
            double e_shift = region_error(px, pal, w, rx, ry + dy, &ref, rk);
            printf("region shifted by %d rows: %.3f\n", dy, e_shift);
            assert_true(e_shift > e + 5.0);
        }
        free(px);
        free(pal);
    }
    image_free(&flip);
    image_free(&ref);
}

/* the stream the studio itself wrote for a preview, against the run's PNGs:
 * the newest grid (KRONA_SIXEL_PNG, KRONA_SIXEL_REGION) and, when the picture
 * holds it, the base model's (KRONA_SIXEL_BASE_PNG, KRONA_SIXEL_BASE_REGION) */
static void test_studio_stream(void **state) {
    (void)state;
    const char *sp = getenv("KRONA_SIXEL_STREAM"), *pp = getenv("KRONA_SIXEL_PNG");
    const char *bp = getenv("KRONA_SIXEL_BASE_PNG");
    if (!sp || !pp) skip();
    size_t len;
    char err[512];
    char *s = fs_read_all(sp, (size_t)1 << 30, &len, err, sizeof err);
    assert_non_null(s);
    check_studio_grid(s, len, pp, getenv("KRONA_SIXEL_REGION"), "newest");
    if (bp && bp[0]) check_studio_grid(s, len, bp, getenv("KRONA_SIXEL_BASE_REGION"), "base");
    free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scale_factor),
        cmocka_unit_test(test_synthetic),
        cmocka_unit_test(test_demo_image),
        cmocka_unit_test(test_studio_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

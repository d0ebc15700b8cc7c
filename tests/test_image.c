/* test_image.c — PNG round trip (bit-exact), JPEG load, truncation and
 * not-an-image errors, centre crop on striped images, cover crops (geometry
 * against a floating-point reference, pixels), CHW conversion, flips,
 * grids; each checked against a plain loop written here. */
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
#include <unistd.h>

#include <stb_image_write.h>

#include "test_helpers.h"
#include "core/fsutil.h"
#include "formats/image.h"


static int setup(void **state) {
    return th_tmpdir_make("img");
}
static int teardown(void **state) { return th_tmpdir_remove(); }

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static void noise_image(Image *im, int w, int h, int c, uint32_t seed) {
    assert_int_equal(image_alloc(im, w, h, c), 0);
    for (size_t i = 0; i < (size_t)w * h * c; i++) {
        seed = seed * 1664525u + 1013904223u;
        im->px[i] = (unsigned char)(seed >> 24);
    }
}

static void expect_load_error(const char *path, const char *want) {
    Image im;
    char err[512] = "";
    int r = image_load(path, &im, err, sizeof err);
    if (r == 0) { image_free(&im); fail_msg("image_load('%s') should fail with '%s'", path, want); }
    assert_null(im.px);
    if (!strstr(err, want)) fail_msg("error '%s' does not contain '%s'", err, want);
    if (!strstr(err, path)) fail_msg("error '%s' does not name the file", err);
}

static void test_png_roundtrip(void **state) {
    char path[512], err[256] = "";
    path_of(path, "rt.png");
    Image a, b;
    noise_image(&a, 37, 23, 3, 1);
    assert_int_equal(image_save_png(path, &a, err, sizeof err), 0);
    assert_int_equal(image_load(path, &b, err, sizeof err), 0);
    assert_int_equal(b.w, 37);
    assert_int_equal(b.h, 23);
    assert_int_equal(b.c, 3);
    assert_memory_equal(a.px, b.px, 37 * 23 * 3);
    image_free(&a);
    image_free(&b);

    /* grey PNG loads as RGB with equal channels */
    noise_image(&a, 9, 5, 1, 2);
    assert_int_equal(image_save_png(path, &a, err, sizeof err), 0);
    assert_int_equal(image_load(path, &b, err, sizeof err), 0);
    assert_int_equal(b.c, 3);
    for (int i = 0; i < 45; i++)
        for (int k = 0; k < 3; k++) assert_int_equal(b.px[i * 3 + k], a.px[i]);
    image_free(&a);
    image_free(&b);

    /* RGBA: composited over white, round(c*a/255 + 255*(1 - a/255)) */
    noise_image(&a, 16, 8, 4, 3);
    a.px[3] = 0;
    a.px[7] = 255;
    assert_int_equal(image_save_png(path, &a, err, sizeof err), 0);
    assert_int_equal(image_load(path, &b, err, sizeof err), 0);
    assert_int_equal(b.c, 3);
    for (int i = 0; i < 16 * 8; i++) {
        double al = a.px[i * 4 + 3];
        for (int k = 0; k < 3; k++) {
            int want = (int)lround((a.px[i * 4 + k] * al + 255.0 * (255.0 - al)) / 255.0);
            assert_int_equal(b.px[i * 3 + k], want);
        }
    }
    assert_int_equal(b.px[0], 255);   /* transparent -> white */
    assert_int_equal(b.px[3], a.px[4]);   /* opaque -> itself */
    image_free(&a);
    image_free(&b);

    /* atomic: no temp files; a missing folder is an error naming the path */
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    while ((e = readdir(d))) assert_null(strstr(e->d_name, ".tmp."));
    closedir(d);
    noise_image(&a, 2, 2, 3, 4);
    char bad[512];
    path_of(bad, "nope/x.png");
    assert_int_equal(image_save_png(bad, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, bad));
    image_free(&a);
}

typedef struct { unsigned char *p; size_t n; } Mem;
static void mem_put(void *ctx, void *data, int size) {
    Mem *m = ctx;
    m->p = realloc(m->p, m->n + (size_t)size);
    memcpy(m->p + m->n, data, (size_t)size);
    m->n += (size_t)size;
}

/* a smooth 64x48 gradient as JPEG bytes */
static Mem make_jpeg(Image *src) {
    assert_int_equal(image_alloc(src, 64, 48, 3), 0);
    for (int y = 0; y < 48; y++)
        for (int x = 0; x < 64; x++) {
            unsigned char *p = src->px + (y * 64 + x) * 3;
            p[0] = (unsigned char)(x * 4);
            p[1] = (unsigned char)(y * 5);
            p[2] = 128;
        }
    Mem m = {0};
    assert_true(stbi_write_jpg_to_func(mem_put, &m, 64, 48, 3, src->px, 95));
    return m;
}

static void test_jpeg(void **state) {
    char path[512], err[256] = "";
    Image src, got;
    Mem m = make_jpeg(&src);
    path_of(path, "g.jpg");
    write_bytes(path, m.p, m.n);
    assert_int_equal(image_load(path, &got, err, sizeof err), 0);
    assert_int_equal(got.w, 64);
    assert_int_equal(got.h, 48);
    assert_int_equal(got.c, 3);
    double mad = 0;
    for (int i = 0; i < 64 * 48 * 3; i++) mad += fabs((double)got.px[i] - src.px[i]);
    mad /= 64 * 48 * 3;
    assert_true(mad < 4.0);
    image_free(&got);

    /* truncated: mid-scan, and only the EOI marker missing */
    path_of(path, "cut.jpg");
    write_bytes(path, m.p, m.n * 6 / 10);
    expect_load_error(path, "truncated");
    write_bytes(path, m.p, m.n - 2);
    expect_load_error(path, "truncated");

    /* an APP1 segment holding a thumbnail-like FF D9 must not fool the check */
    unsigned char app1[] = { 0xFF, 0xE1, 0x00, 0x0C, 'E', 'x', 'i', 'f', 0, 0, 0xFF, 0xD8, 0xFF, 0xD9 };
    size_t n2 = m.n + sizeof app1;
    unsigned char *j2 = malloc(n2);
    memcpy(j2, m.p, 2);
    memcpy(j2 + 2, app1, sizeof app1);
    memcpy(j2 + 2 + sizeof app1, m.p + 2, m.n - 2);
    path_of(path, "exif.jpg");
    write_bytes(path, j2, n2);
    assert_int_equal(image_load(path, &got, err, sizeof err), 0);
    image_free(&got);
    write_bytes(path, j2, n2 * 7 / 10);
    expect_load_error(path, "truncated");
    free(j2);
    free(m.p);
    image_free(&src);
}

static void test_bad_files(void **state) {
    char path[512], err[256] = "";
    /* truncated PNG: cut inside the data, and just the IEND chunk removed */
    Image a;
    noise_image(&a, 40, 40, 3, 5);
    path_of(path, "t.png");
    assert_int_equal(image_save_png(path, &a, err, sizeof err), 0);
    image_free(&a);
    size_t n;
    char *png = fs_read_all(path, FS_TEXT_MAX, &n, err, sizeof err);
    assert_non_null(png);
    path_of(path, "cut.png");
    write_bytes(path, png, n / 2);
    expect_load_error(path, "truncated");
    write_bytes(path, png, n - 12);
    expect_load_error(path, "truncated");
    write_bytes(path, png, 8);
    expect_load_error(path, "truncated");
    /* a PNG with a broken header chunk is "corrupt" */
    memcpy(png + 16, "\0\0\0\0", 4);   /* IHDR width = 0 */
    path_of(path, "zero.png");
    write_bytes(path, png, n);
    expect_load_error(path, "corrupt");
    free(png);

    path_of(path, "notes.txt");
    const char *txt = "this is a text file, not a picture\n";
    write_bytes(path, txt, strlen(txt));
    expect_load_error(path, "is not an image");
    path_of(path, "empty.png");
    write_bytes(path, "", 0);
    expect_load_error(path, "is not an image");
    path_of(path, "missing.png");
    expect_load_error(path, "No such file");
}

static void fill_rect(Image *im, int x0, int y0, int x1, int y1, const unsigned char *rgb) {
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) memcpy(im->px + (y * im->w + x) * 3, rgb, 3);
}

static void test_center_crop(void **state) {
    static const unsigned char red[3] = { 220, 20, 30 }, blue[3] = { 10, 30, 200 }, green[3] = { 20, 200, 40 };
    Image wide, tall, out;
    /* 60x20: blue | red | green stripes; the centre square is exactly the red one */
    assert_int_equal(image_alloc(&wide, 60, 20, 3), 0);
    fill_rect(&wide, 0, 0, 20, 20, blue);
    fill_rect(&wide, 20, 0, 40, 20, red);
    fill_rect(&wide, 40, 0, 60, 20, green);
    assert_int_equal(image_center_crop_resize(&wide, 20, &out), 0);
    for (int i = 0; i < 20 * 20; i++) assert_memory_equal(out.px + i * 3, red, 3);
    image_free(&out);
    for (int size = 8; size <= 32; size += 24) {   /* down and up: still red (±1 rounding) */
        assert_int_equal(image_center_crop_resize(&wide, size, &out), 0);
        assert_int_equal(out.w, size);
        assert_int_equal(out.h, size);
        for (int i = 0; i < size * size * 3; i++) assert_true(abs(out.px[i] - red[i % 3]) <= 1);
        image_free(&out);
    }
    /* 20x60 tall: green / red / blue bands */
    assert_int_equal(image_alloc(&tall, 20, 60, 3), 0);
    fill_rect(&tall, 0, 0, 20, 20, green);
    fill_rect(&tall, 0, 20, 20, 40, red);
    fill_rect(&tall, 0, 40, 20, 60, blue);
    assert_int_equal(image_center_crop_resize(&tall, 10, &out), 0);
    for (int i = 0; i < 10 * 10 * 3; i++) assert_true(abs(out.px[i] - red[i % 3]) <= 1);
    image_free(&out);
    image_free(&tall);
    image_free(&wide);

    /* odd sizes, no resize: compare with the naive crop loop */
    Image n;
    noise_image(&n, 7, 3, 3, 9);
    assert_int_equal(image_center_crop_resize(&n, 3, &out), 0);
    for (int y = 0; y < 3; y++)
        for (int x = 0; x < 3; x++)
            for (int k = 0; k < 3; k++) assert_int_equal(out.px[(y * 3 + x) * 3 + k], n.px[(y * 7 + x + 2) * 3 + k]);
    image_free(&out);
    /* a left-dark / right-bright square stays that way after downscaling */
    Image half;
    assert_int_equal(image_alloc(&half, 64, 64, 3), 0);
    static const unsigned char white[3] = { 255, 255, 255 };
    fill_rect(&half, 32, 0, 64, 64, white);
    assert_int_equal(image_center_crop_resize(&half, 16, &out), 0);
    for (int y = 0; y < 16; y++) {
        assert_true(out.px[(y * 16 + 2) * 3] < 10);
        assert_true(out.px[(y * 16 + 13) * 3] > 245);
    }
    image_free(&out);
    image_free(&half);
    assert_int_equal(image_center_crop_resize(&n, 0, &out), -1);
    image_free(&n);
}

/* cover-crop geometry against a floating-point reference: the image scaled
 * by max(w / in_w, h / in_h) covers the target, the crop is centred in it */
static void test_cover_crop_geometry(void **state) {
    uint32_t seed = 7;
    for (int it = 0; it < 20000; it++) {
        seed = seed * 1664525u + 1013904223u;
        int iw = 1 + (int)(seed >> 20) % 3000;
        seed = seed * 1664525u + 1013904223u;
        int ih = 1 + (int)(seed >> 20) % 3000;
        seed = seed * 1664525u + 1013904223u;
        int w = 4 * (1 + (int)(seed >> 24) % 64);
        seed = seed * 1664525u + 1013904223u;
        int h = 4 * (1 + (int)(seed >> 24) % 64);
        ImageCrop g;
        image_cover_crop_geometry(iw, ih, w, h, &g);
        double sc = fmax((double)w / iw, (double)h / ih);
        double cw = iw * sc, ch = ih * sc;
        /* the scaled image: one side exactly the target's, the other within rounding */
        assert_true(g.cover_w >= w && g.cover_h >= h);
        assert_true(fabs(g.cover_w - cw) <= 0.5 + 1e-9 || (g.cover_w == w && cw < w));
        assert_true(fabs(g.cover_h - ch) <= 0.5 + 1e-9 || (g.cover_h == h && ch < h));
        assert_true(g.cover_w == w || g.cover_h == h);
        /* the crop is centred: equal margins on both sides, to an input pixel
         * (the input region starts on one and is rounded to whole ones) */
        assert_true(g.left >= 0 && g.left <= g.cover_w - w);
        assert_true(g.top >= 0 && g.top <= g.cover_h - h);
        double tol = sc + 1.0 + 1e-9;
        if (fabs(g.left - (cw - w) / 2) > tol || fabs(g.top - (ch - h) / 2) > tol)
            fail_msg("%dx%d into %dx%d: crop at %d,%d of %dx%d, the centre is %.2f,%.2f of %.2fx%.2f",
                     iw, ih, w, h, g.left, g.top, g.cover_w, g.cover_h, (cw - w) / 2, (ch - h) / 2, cw, ch);
        /* the input region: inside the image, centred, of the target's shape (a pixel) */
        assert_true(g.src_x >= 0 && g.src_y >= 0 && g.src_w >= 1 && g.src_h >= 1);
        assert_true(g.src_x + g.src_w <= iw && g.src_y + g.src_h <= ih);
        assert_true(abs(iw - g.src_w - 2 * g.src_x) <= 1 && abs(ih - g.src_h - 2 * g.src_y) <= 1);
        assert_true(g.src_w == iw || g.src_h == ih);
        assert_true(fabs((double)g.src_w / w * h - g.src_h) <= fmax(1.0, (double)h / w) ||
                    g.src_w == 1 || g.src_h == 1);
    }
    /* by hand: 50x18 into 16x8: scaled by 8/18 to 22.2x8, so 22x8; the input
     * region is 36x18 from x = 7, 7 * 8/18 = 3.1 -> 3 px of the scaled image */
    ImageCrop g;
    image_cover_crop_geometry(50, 18, 16, 8, &g);
    assert_int_equal(g.cover_w, 22);
    assert_int_equal(g.cover_h, 8);
    assert_int_equal(g.src_x, 7);
    assert_int_equal(g.src_w, 36);
    assert_int_equal(g.src_h, 18);
    assert_int_equal(g.left, 3);
    assert_int_equal(g.top, 0);
    /* the square case is image_center_crop_resize's: side min(w, h), centred */
    image_cover_crop_geometry(7, 3, 3, 3, &g);
    assert_int_equal(g.src_x, 2);
    assert_int_equal(g.src_w, 3);
    assert_int_equal(g.src_h, 3);
}

/* cover crops keep what is in the middle, undistorted, whatever the shapes */
static void test_cover_crop_pixels(void **state) {
    static const unsigned char red[3] = { 220, 20, 30 }, blue[3] = { 10, 30, 200 }, green[3] = { 20, 200, 40 };
    Image im, out;
    ImageCrop g;
    /* 60x80, green in columns 10..49, red and blue margins: into 20x40 (1:2)
     * the input region is the 40x80 middle, all green */
    assert_int_equal(image_alloc(&im, 60, 80, 3), 0);
    fill_rect(&im, 0, 0, 10, 80, red);
    fill_rect(&im, 10, 0, 50, 80, green);
    fill_rect(&im, 50, 0, 60, 80, blue);
    assert_int_equal(image_cover_crop_resize(&im, 20, 40, &out, &g), 0);
    assert_int_equal(out.w, 20);
    assert_int_equal(out.h, 40);
    assert_int_equal(g.src_x, 10);
    assert_int_equal(g.src_w, 40);
    for (int i = 0; i < 20 * 40 * 3; i++) assert_true(abs(out.px[i] - green[i % 3]) <= 1);
    image_free(&out);
    image_free(&im);
    /* 30x90 with bands of 30 rows: into 24x12 (2:1) the middle band, upscaled */
    assert_int_equal(image_alloc(&im, 30, 90, 3), 0);
    fill_rect(&im, 0, 0, 30, 37, blue);
    fill_rect(&im, 0, 37, 30, 52, red);
    fill_rect(&im, 0, 52, 30, 90, green);
    assert_int_equal(image_cover_crop_resize(&im, 24, 12, &out, &g), 0);
    assert_int_equal(g.src_y, 37);
    assert_int_equal(g.src_h, 15);
    for (int i = 0; i < 24 * 12 * 3; i++) assert_true(abs(out.px[i] - red[i % 3]) <= 1);
    image_free(&out);
    image_free(&im);
    /* no resampling (the region is the target's size): the naive crop loop */
    Image n;
    noise_image(&n, 41, 20, 3, 5);
    assert_int_equal(image_cover_crop_resize(&n, 20, 20, &out, &g), 0);
    assert_int_equal(g.left, 10);
    assert_int_equal(g.cover_w - 20 - g.left, 11); /* the mirror's left */
    for (int y = 0; y < 20; y++)
        for (int x = 0; x < 20; x++)
            for (int k = 0; k < 3; k++) assert_int_equal(out.px[(y * 20 + x) * 3 + k], n.px[(y * 41 + x + 10) * 3 + k]);
    image_free(&out);
    /* a diagonal stays a diagonal: a 4:3 image with a line at 45 degrees
     * through its centre, into a 2:1 target: still 45 degrees */
    assert_int_equal(image_alloc(&im, 400, 300, 3), 0);
    for (int y = 0; y < 300; y++)
        for (int x = 0; x < 400; x++)
            if (abs((x - 200) - (y - 150)) <= 3) memcpy(im.px + (y * 400 + x) * 3, red, 3);
    assert_int_equal(image_cover_crop_resize(&im, 80, 40, &out, &g), 0);
    for (int y = 4; y < 36; y++) {
        int best = 0, bv = -1;
        for (int x = 0; x < 80; x++)
            if (out.px[(y * 80 + x) * 3] > bv) { bv = out.px[(y * 80 + x) * 3]; best = x; }
        assert_true(abs((best - 40) - (y - 20)) <= 1);
    }
    image_free(&out);
    image_free(&im);
    assert_int_equal(image_cover_crop_resize(&n, 0, 8, &out, &g), -1);
    assert_int_equal(image_cover_crop_resize(&n, 8, 0, &out, &g), -1);
    image_free(&n);
}

static void test_chw_flip_grid(void **state) {
    Image im, back;
    noise_image(&im, 5, 4, 3, 11);
    im.px[0] = 0;
    im.px[1] = 255;
    float *chw = malloc(sizeof(float) * 60);
    image_to_chw(&im, chw);
    for (int k = 0; k < 3; k++)
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 5; x++) {
                float want = (float)im.px[(y * 5 + x) * 3 + k] / 127.5f - 1.0f;
                assert_true(fabsf(chw[(k * 4 + y) * 5 + x] - want) < 1e-6f);
            }
    assert_true(chw[0] == -1.0f);
    assert_true(chw[20] == 1.0f);
    assert_int_equal(image_from_chw(chw, 3, 4, 5, &back), 0);
    assert_memory_equal(back.px, im.px, 60);
    image_free(&back);
    /* clamping, rounding, NaN */
    float v[5] = { -3.0f, 7.0f, NAN, 0.0f, 1.0f / 255.0f - 1.0f };
    assert_int_equal(image_from_chw(v, 1, 1, 5, &back), 0);
    assert_int_equal(back.px[0], 0);
    assert_int_equal(back.px[1], 255);
    assert_int_equal(back.px[2], 0);
    assert_int_equal(back.px[3], 128);
    assert_int_equal(back.px[4], 1);
    image_free(&back);
    free(chw);

    /* flip: reference loop; twice is the identity */
    Image orig;
    noise_image(&orig, 5, 4, 3, 11);
    orig.px[0] = 0;
    orig.px[1] = 255;
    assert_int_equal(image_flip_h(&im), 0);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 5; x++)
            assert_memory_equal(im.px + (y * 5 + x) * 3, orig.px + (y * 5 + 4 - x) * 3, 3);
    image_flip_h(&im);
    assert_memory_equal(im.px, orig.px, 60);
    image_free(&im);
    image_free(&orig);

    /* grid: 3 tiles (4x4 red, 4x4 green, 2x2 blue) in 2 columns, pad 1 */
    Image t[3], g;
    static const unsigned char col[3][3] = { { 255, 0, 0 }, { 0, 255, 0 }, { 0, 0, 255 } };
    for (int i = 0; i < 3; i++) {
        int s = i == 2 ? 2 : 4;
        assert_int_equal(image_alloc(&t[i], s, s, 3), 0);
        fill_rect(&t[i], 0, 0, s, s, col[i]);
    }
    assert_int_equal(image_grid(t, 3, 2, 1, &g), 0);
    assert_int_equal(g.w, 2 * 4 + 3);
    assert_int_equal(g.h, 2 * 4 + 3);
    /* reference: expected colour of each output pixel */
    for (int y = 0; y < g.h; y++)
        for (int x = 0; x < g.w; x++) {
            const unsigned char *want = NULL;
            if (y >= 1 && y < 5 && x >= 1 && x < 5) want = col[0];
            else if (y >= 1 && y < 5 && x >= 6 && x < 10) want = col[1];
            else if (y >= 7 && y < 9 && x >= 2 && x < 4) want = col[2];   /* 2x2 centred in the 4x4 cell at (1, 6) */
            const unsigned char *p = g.px + (y * g.w + x) * 3;
            if (want) assert_memory_equal(p, want, 3);
            else for (int k = 0; k < 3; k++) assert_int_equal(p[k], IMAGE_GRID_BG);
        }
    image_free(&g);
    Image grey;
    assert_int_equal(image_alloc(&grey, 4, 4, 1), 0);
    Image mixed[2] = { t[0], grey };
    assert_int_equal(image_grid(mixed, 2, 2, 0, &g), -1);   /* channel counts differ */
    image_free(&grey);
    for (int i = 0; i < 3; i++) image_free(&t[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_png_roundtrip),
        cmocka_unit_test(test_jpeg),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_center_crop),
        cmocka_unit_test(test_cover_crop_geometry),
        cmocka_unit_test(test_cover_crop_pixels),
        cmocka_unit_test(test_chw_flip_grid),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* test_buckets.c — aspect-ratio buckets (training/buckets.h): the bucket
 * lists written out by hand for SD 1.5's and the tiny model's steps; for many
 * resolutions and steps every bucket's rules checked one by one (multiples of
 * the step, area, 1:2..2:1, the largest of its shape, its transpose there,
 * sorted); the bucket an image goes to against a brute-force reference that
 * compares ratios without logarithms; refusals. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>

#include "training/buckets.h"

static void expect_list(int res, int step, const BucketSize *want, int n_want) {
    BucketSize got[64];
    int n = bucket_sizes(res, step, got, 64);
    printf("resolution %d step %d:", res, step);
    for (int i = 0; i < n && i < 64; i++) printf(" %dx%d", got[i].w, got[i].h);
    printf("\n");
    assert_int_equal(n, n_want);
    for (int i = 0; i < n; i++) {
        assert_int_equal(got[i].w, want[i].w);
        assert_int_equal(got[i].h, want[i].h);
    }
}

/* worked out by hand from the rule in buckets.h */
static void test_known_lists(void **state) {
    /* SD 1.5 at 512, step 64: short side 512 -> 512; 448 -> 576 (448*640 > 512^2);
     * 384 -> 640; 320 -> 640 = 2 * 320: the last */
    const BucketSize sd15[] = {{320, 640}, {384, 640}, {448, 576}, {512, 512},
                               {576, 448}, {640, 384}, {640, 320}};
    expect_list(512, 64, sd15, 7);
    /* the tiny model at 32, step 4: 32; 28 -> 36; 24 -> 40; 20 -> 40 = 2 * 20 */
    const BucketSize tiny[] = {{20, 40}, {24, 40}, {28, 36}, {32, 32}, {36, 28}, {40, 24}, {40, 20}};
    expect_list(32, 4, tiny, 7);
    /* 16, step 4: 16; 12 -> 20; 8 -> 16 = 2 * 8 */
    const BucketSize sixteen[] = {{8, 16}, {12, 20}, {16, 16}, {20, 12}, {16, 8}};
    expect_list(16, 4, sixteen, 5);
    /* the step equal to the resolution: the square alone */
    const BucketSize one[] = {{64, 64}};
    expect_list(64, 64, one, 1);
    /* SDXL at 1024 with kohya's usual step 64 */
    const BucketSize xl[] = {{704, 1408}, {768, 1344}, {832, 1216}, {896, 1152}, {960, 1088},
                             {1024, 1024}, {1088, 960}, {1152, 896}, {1216, 832}, {1344, 768},
                             {1408, 704}};
    expect_list(1024, 64, xl, 11);
}

/* every rule of buckets.h, bucket by bucket */
static void test_rules(void **state) {
    int cases = 0;
    for (int step = 4; step <= 128; step *= 2)
        for (int res = step; res <= 2048; res += step) {
            int cap = bucket_count_max(res, step);
            assert_true(cap > 0);
            BucketSize *b = malloc(sizeof *b * (size_t)cap);
            assert_non_null(b);
            int n = bucket_sizes(res, step, b, cap);
            assert_true(n >= 1 && n <= cap);
            int64_t R2 = (int64_t)res * res;
            int square = 0;
            for (int i = 0; i < n; i++) {
                int w = b[i].w, h = b[i].h, s = w < h ? w : h, l = w < h ? h : w;
                assert_int_equal(w % step, 0);
                assert_int_equal(h % step, 0);
                assert_true(w > 0 && h > 0);
                assert_true((int64_t)w * h <= R2);
                assert_true(l <= 2 * s);                               /* 1:2 .. 2:1 */
                assert_true((int64_t)s * (l + step) > R2 || l + step > 2 * s); /* the largest of its shape */
                assert_true(s <= res && s * 2 >= res - 2 * step);      /* short sides from res down to about res/2 */
                if (w == res && h == res) square = 1;
                int transposed = 0;
                for (int j = 0; j < n; j++) transposed |= b[j].w == h && b[j].h == w;
                assert_true(transposed);
                if (i > 0) assert_true((int64_t)b[i - 1].w * h < (int64_t)w * b[i - 1].h); /* sorted, no repeats */
            }
            assert_true(square);
            /* 1:2 is reached whenever the step allows a short side near res/2 */
            if (res / step >= 2) assert_true(b[0].h == 2 * b[0].w);
            free(b);
            cases++;
        }
    printf("%d (resolution, step) pairs checked\n", cases);
}

/* the reference: is bucket a nearer to a w x h image than bucket b (-1), as
 * near (0) or farther (1)? Nearness: the larger of (w/h) / (bw/bh) and its
 * inverse, compared in integers; smaller is nearer */
static int nearer(int w, int h, BucketSize a, BucketSize b) {
    /* compare max(w bh / (h bw), h bw / (w bh)) for a and b without logs:
     * that is |log| order, decided with exact integer products (< 2^63 here) */
    int64_t pa = (int64_t)w * a.h, qa = (int64_t)h * a.w; /* ratio_img / ratio_a = pa / qa */
    int64_t pb = (int64_t)w * b.h, qb = (int64_t)h * b.w;
    if (pa < qa) { int64_t t = pa; pa = qa; qa = t; }     /* now pa / qa >= 1 */
    if (pb < qb) { int64_t t = pb; pb = qb; qb = t; }
    int64_t l = pa * qb, r = pb * qa;                      /* pa/qa vs pb/qb */
    return l < r ? -1 : l > r;
}

static void test_nearest_vs_reference(void **state) {
    const int res[][2] = {{512, 64}, {1024, 32}, {32, 4}, {16, 4}, {768, 64}};
    uint32_t seed = 12345;
    int checked = 0;
    for (size_t c = 0; c < sizeof res / sizeof res[0]; c++) {
        BucketSize b[256];
        int n = bucket_sizes(res[c][0], res[c][1], b, 256);
        assert_true(n > 0 && n <= 256);
        for (int it = 0; it < 4000; it++) {
            seed = seed * 1664525u + 1013904223u;
            int w = 1 + (int)(seed >> 20) % 4000;
            seed = seed * 1664525u + 1013904223u;
            int h = 1 + (int)(seed >> 20) % 4000;
            int k = bucket_nearest(b, n, w, h);
            assert_true(k >= 0 && k < n);
            /* the reference's choice: the first of the nearest */
            int best = 0;
            for (int i = 1; i < n; i++)
                if (nearer(w, h, b[i], b[best]) < 0) best = i;
            if (k != best && nearer(w, h, b[k], b[best]) != 0)
                fail_msg("%dx%d at %d/%d: bucket %dx%d, the reference says %dx%d", w, h, res[c][0],
                         res[c][1], b[k].w, b[k].h, b[best].w, b[best].h);
            checked++;
        }
        /* shapes beyond 2:1 go to the extreme buckets, squares to the square */
        assert_int_equal(bucket_nearest(b, n, 5000, 100), n - 1);
        assert_int_equal(bucket_nearest(b, n, 100, 5000), 0);
        int sq = bucket_nearest(b, n, 777, 777);
        assert_int_equal(b[sq].w, res[c][0]);
        assert_int_equal(b[sq].h, res[c][0]);
    }
    printf("%d image shapes checked against the reference\n", checked);
    /* by hand: 1200x800 (3:2) at 512 / 64 lies between 576x448 (1.29) and
     * 640x384 (1.67); in log scale |0.405 - 0.511| < |0.405 - 0.251|: 640x384 */
    BucketSize one;
    assert_int_equal(bucket_for_image(512, 64, 1200, 800, &one), 0);
    assert_int_equal(one.w, 640);
    assert_int_equal(one.h, 384);
    assert_int_equal(bucket_for_image(512, 64, 800, 1200, &one), 0);
    assert_int_equal(one.w, 384);
    assert_int_equal(one.h, 640);
}

static void test_refusals(void **state) {
    BucketSize b[8], one;
    assert_int_equal(bucket_sizes(512, 0, b, 8), -1);
    assert_int_equal(bucket_sizes(512, -64, b, 8), -1);
    assert_int_equal(bucket_sizes(500, 64, b, 8), -1); /* the step must divide the resolution */
    assert_int_equal(bucket_count_max(500, 64), 0);
    assert_int_equal(bucket_nearest(b, 0, 10, 10), -1);
    assert_int_equal(bucket_sizes(512, 64, b, 8), 7);
    assert_int_equal(bucket_nearest(b, 7, 0, 10), -1);
    assert_int_equal(bucket_for_image(500, 64, 10, 10, &one), -1);
    /* a short array gets the first max, the count is still the whole */
    assert_int_equal(bucket_sizes(512, 64, b, 2), 7);
    assert_int_equal(b[1].w, 384);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_lists),
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_nearest_vs_reference),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

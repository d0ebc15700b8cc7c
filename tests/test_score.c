/* test_score.c — fidelity and adherence on synthetic pictures whose answer is
 * known (a subject on the right / wrong background, a blank image, another
 * shape), the descriptor against a naive re-implementation, and the sampling
 * path on the tiny model. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "training/pretrain.h"
#include "training/score.h"

/* ---------------------------------------------------------- pictures --- */

static Image blank(int side, const unsigned char rgb[3]) {
    Image im;
    assert_int_equal(image_alloc(&im, side, side, 3), 0);
    for (int i = 0; i < side * side; i++) memcpy(im.px + 3 * i, rgb, 3);
    return im;
}

static void put(Image *im, int x, int y, const unsigned char rgb[3]) {
    if (x < 0 || y < 0 || x >= im->w || y >= im->h) return;
    memcpy(im->px + ((size_t)y * im->w + x) * 3, rgb, 3);
}

/* The "subject": an orange face (disc) with two dark eyes and a red tongue,
 * centred at (cx, cy), on background bg; side 32. */
static Image subject(const unsigned char bg[3], int dx, int dy) {
    static const unsigned char face[3] = {250, 170, 60}, eye[3] = {40, 30, 30}, tongue[3] = {200, 30, 60};
    Image im = blank(32, bg);
    int cx = 16 + dx, cy = 16 + dy;
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++) {
            int ddx = x - cx, ddy = y - cy;
            if (ddx * ddx + ddy * ddy <= 11 * 11) put(&im, x, y, face);
        }
    for (int y = -1; y <= 1; y++)
        for (int x = -1; x <= 1; x++) {
            put(&im, cx - 5 + x, cy - 3 + y, eye);
            put(&im, cx + 5 + x, cy - 3 + y, eye);
        }
    for (int y = 4; y <= 7; y++)
        for (int x = -2; x <= 2; x++) put(&im, cx + x, cy + y, tongue);
    return im;
}

/* A different subject: a small green square. */
static Image square(const unsigned char bg[3]) {
    static const unsigned char green[3] = {40, 200, 60};
    Image im = blank(32, bg);
    for (int y = 4; y < 12; y++)
        for (int x = 20; x < 28; x++) put(&im, x, y, green);
    return im;
}

static const unsigned char WHITE[3] = {255, 255, 255};

static int palette_index(const char *name) {
    for (int i = 0; i < SCORE_N_PALETTE; i++)
        if (!strcmp(score_palette[i].name, name)) return i;
    fail_msg("no palette colour %s", name);
    return -1;
}

/* ------------------------------------------------------------- tests --- */

static int cmp_uc(const void *a, const void *b) { return *(const unsigned char *)a - *(const unsigned char *)b; }

/* border median vs sorting the ring's values */
static void test_border_median(void **state) {
    (void)state;
    const unsigned char bg[3] = {40, 90, 220};
    Image im = subject(bg, 0, 0);
    /* outliers on a third of one edge: the median must not move */
    const unsigned char noise[3] = {0, 255, 7};
    for (int x = 0; x < 10; x++) put(&im, x, 0, noise);
    /* a gradient on the right edge so the channels' medians differ from bg */
    for (int y = 0; y < 32; y++) {
        unsigned char c[3] = {(unsigned char)(30 + y), 90, (unsigned char)(200 + y)};
        put(&im, 31, y, c);
    }
    unsigned char got[3];
    score_border_median(&im, got);
    int bw = 32 / 16;
    unsigned char vals[3][32 * 32];
    int n = 0;
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++)
            if (x < bw || y < bw || x >= 32 - bw || y >= 32 - bw) {
                for (int k = 0; k < 3; k++) vals[k][n] = im.px[(y * 32 + x) * 3 + k];
                n++;
            }
    assert_int_equal(n, 32 * 32 - 28 * 28);
    for (int k = 0; k < 3; k++) {
        qsort(vals[k], (size_t)n, 1, cmp_uc);
        assert_int_equal(got[k], vals[k][(n + 1) / 2 - 1]);
    }
    assert_int_equal(score_nearest_colour(got), palette_index("blue"));
    image_free(&im);
    /* a 5 px image: the ring is 1 wide */
    Image tiny = blank(5, WHITE);
    score_border_median(&tiny, got);
    assert_memory_equal(got, WHITE, 3);
    image_free(&tiny);
}

static void test_palette(void **state) {
    (void)state;
    assert_true(SCORE_N_ASKED <= SCORE_N_PALETTE);
    for (int i = 0; i < SCORE_N_PALETTE; i++) {
        assert_int_equal(score_nearest_colour(score_palette[i].rgb), i);
        for (int j = 0; j < i; j++) {
            const unsigned char *a = score_palette[i].rgb, *b = score_palette[j].rgb;
            double d = sqrt((a[0] - b[0]) * (a[0] - b[0]) + (a[1] - b[1]) * (a[1] - b[1]) +
                            (a[2] - b[2]) * (a[2] - b[2]));
            assert_true(d > 60);   /* well separated */
            assert_string_not_equal(score_palette[i].name, score_palette[j].name);
        }
        /* a shade off still counts: naive argmin over the palette agrees */
        unsigned char c[3];
        for (int k = 0; k < 3; k++) {
            int v = score_palette[i].rgb[k] + (k == 1 ? 12 : -9);
            c[k] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
        int best = -1;
        long bd = 1L << 40;
        for (int j = 0; j < SCORE_N_PALETTE; j++) {
            long d = 0;
            for (int k = 0; k < 3; k++) d += (long)(c[k] - score_palette[j].rgb[k]) * (c[k] - score_palette[j].rgb[k]);
            if (d < bd) { bd = d; best = j; }
        }
        assert_int_equal(score_nearest_colour(c), best);
        assert_int_equal(best, i);
    }
    char p[128];
    score_prompt("a sks emoji", palette_index("purple"), p, sizeof p);
    assert_string_equal(p, "a sks emoji on a purple background");
}

static void test_adherence(void **state) {
    (void)state;
    for (int c = 0; c < SCORE_N_ASKED; c++) {
        Image im = subject(score_palette[c].rgb, 0, 0);
        for (int a = 0; a < SCORE_N_ASKED; a++) assert_int_equal(score_adherent(&im, a), a == c);
        image_free(&im);
    }
    /* a subject filling most of the picture still leaves the border to judge */
    const unsigned char bg[3] = {250, 220, 40};
    Image im = subject(bg, 0, 0);
    assert_int_equal(score_adherent(&im, palette_index("yellow")), 1);
    assert_int_equal(score_adherent(&im, palette_index("orange")), 0);
    image_free(&im);
    /* white / gray backgrounds are no asked colour */
    Image w = blank(32, WHITE);
    for (int a = 0; a < SCORE_N_ASKED; a++) assert_int_equal(score_adherent(&w, a), 0);
    image_free(&w);
}

/* score_describe against a naive version (32x32 input: no resampling), with
 * and without a second background to exclude */
static void test_descriptor_reference(void **state) {
    (void)state;
    const unsigned char bg[3] = {130, 60, 190}, also[3] = {250, 170, 60};
    Image im = subject(bg, 2, -1);
    ScoreSubject s;
    assert_int_equal(score_subject(&im, &s), 0);
    assert_memory_equal(s.bg, bg, 3);
    assert_memory_equal(s.px, im.px, sizeof s.px);
    for (int pass = 0; pass < 2; pass++) {
        ScoreDesc d;
        score_describe(&s, pass ? also : NULL, &d);
        float hist[64] = {0}, shape[64] = {0};
        int fg = 0;
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                const unsigned char *p = im.px + (y * 32 + x) * 3;
                double dist = sqrt((p[0] - bg[0]) * (p[0] - bg[0]) + (p[1] - bg[1]) * (p[1] - bg[1]) +
                                   (p[2] - bg[2]) * (p[2] - bg[2]));
                double dist2 = sqrt((p[0] - also[0]) * (p[0] - also[0]) + (p[1] - also[1]) * (p[1] - also[1]) +
                                    (p[2] - also[2]) * (p[2] - also[2]));
                if (dist <= 64 || (pass && dist2 <= 64)) continue;
                hist[(p[0] / 64) * 16 + (p[1] / 64) * 4 + p[2] / 64] += 1;
                shape[(y / 4) * 8 + x / 4] += 1.0f / 16;
                fg++;
            }
        if (pass == 0) assert_int_equal(s.fg_pixels, fg);
        assert_int_equal(d.fg_pixels, fg);
        assert_true(pass ? fg > 20 && fg < 100 : fg > 300);   /* the face colour drops out */
        for (int i = 0; i < 64; i++) {
            assert_float_equal(d.hist[i], hist[i] / fg, 1e-6);
            assert_float_equal(d.shape[i], shape[i], 1e-6);
        }
        assert_float_equal(score_desc_similarity(&d, &d), 1.0, 1e-6);
    }
    assert_float_equal(score_pair(&s, &s), 1.0, 1e-6);
    image_free(&im);
}

static void test_fidelity_known_answers(void **state) {
    (void)state;
    Image s0 = subject(WHITE, 0, 0);
    ScoreSubject subj[2];
    assert_int_equal(score_subject(&s0, &subj[0]), 0);
    Image sq = square(WHITE);
    assert_int_equal(score_subject(&sq, &subj[1]), 0);

    /* the subject on any asked background: the background does not matter,
     * not even yellow / orange, close to the face colour (it drops out of both) */
    for (int c = 0; c < SCORE_N_ASKED; c++) {
        Image im = subject(score_palette[c].rgb, 0, 0);
        float f = score_fidelity(&im, subj, 1);
        assert_true(f > 0.9f);
        Image wrong = square(score_palette[c].rgb);
        assert_true(score_fidelity(&wrong, subj, 1) < 0.25f);
        image_free(&wrong);
        image_free(&im);
    }
    const unsigned char blue[3] = {40, 90, 220};
    Image right = subject(blue, 0, 0), shifted = subject(blue, 2, 1), other = square(blue), empty = blank(32, blue);
    float f_right = score_fidelity(&right, subj, 1);
    float f_shift = score_fidelity(&shifted, subj, 1);
    float f_other = score_fidelity(&other, subj, 1);
    float f_empty = score_fidelity(&empty, subj, 1);
    assert_true(f_right > 0.9f);
    assert_true(f_shift > 0.6f && f_shift < f_right);
    assert_true(f_other < 0.2f);
    assert_float_equal(f_empty, 0.0f, 0);
    /* with the square among the subjects, the square matches it instead */
    assert_true(score_fidelity(&other, subj, 2) > 0.9f);
    assert_float_equal(score_fidelity(&right, subj, 2), f_right, 1e-6);
    /* a larger picture of the same subject (resampled to 32) still matches */
    Image big;
    assert_int_equal(image_alloc(&big, 64, 64, 3), 0);
    for (int y = 0; y < 64; y++)
        for (int x = 0; x < 64; x++) memcpy(big.px + (y * 64 + x) * 3, right.px + ((y / 2) * 32 + x / 2) * 3, 3);
    assert_true(score_fidelity(&big, subj, 1) > 0.8f);
    /* a grey-scale copy: right shape, wrong colours -> in between */
    Image grey = subject(blue, 0, 0);
    for (int i = 0; i < 32 * 32; i++) {
        unsigned char *p = grey.px + 3 * i;
        if (memcmp(p, blue, 3) == 0) continue;
        unsigned char g = (unsigned char)((p[0] + p[1] + p[2]) / 3);
        p[0] = p[1] = p[2] = g;
    }
    float f_grey = score_fidelity(&grey, subj, 1);
    assert_true(f_grey > f_other && f_grey < f_right && f_grey > 0.4f);
    Image *all[] = {&s0, &sq, &right, &shifted, &other, &empty, &big, &grey};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) image_free(all[i]);
}

static void test_opts_and_subjects(void **state) {
    (void)state;
    ScoreOpts o;
    score_opts_default(&o);
    char err[256];
    assert_int_equal(score_opts_check(&o, err, sizeof err), 0);
    o.n_colours = SCORE_N_ASKED + 1;
    assert_int_equal(score_opts_check(&o, err, sizeof err), -1);
    assert_non_null(strstr(err, "colours"));
    score_opts_default(&o);
    o.per_colour = 0;
    assert_int_equal(score_opts_check(&o, err, sizeof err), -1);
    score_opts_default(&o);
    o.guidance = NAN;
    assert_int_equal(score_opts_check(&o, err, sizeof err), -1);

    char paths[2][PRESET_PATH_MAX] = {"models/demo/subject1.png", "tests/data/no-such-file.png"};
    ScoreSubject d[2];
    assert_int_equal(score_load_subjects(paths, 1, d, err, sizeof err), 0);
    assert_true(d[0].fg_pixels > 100);
    assert_int_equal(score_load_subjects(paths, 2, d, err, sizeof err), -1);
    assert_non_null(strstr(err, "no-such-file"));
}

/* the sampling path: the tiny model (its shipped weights, from the source tree),
 * 2 colours x 2 seeds, a few steps; deterministic, in range */
/* The paired gain against a hand computation: differences 0.1, 0.2, 0.3 ->
 * mean 0.2, sd 0.1, se 0.1 / sqrt(3); mismatched or too few samples refuse. */
static void test_paired_gain(void **state) {
    (void)state;
    ScoreResult a = {0}, b = {0};
    a.n = b.n = 3;
    const float base[3] = {0.30f, 0.50f, 0.10f}, diff[3] = {0.1f, 0.2f, 0.3f};
    for (int i = 0; i < 3; i++) {
        b.sample_fidelity[i] = base[i];
        a.sample_fidelity[i] = base[i] + diff[i];
    }
    float g = -1, se = -1;
    assert_int_equal(score_paired_gain(&a, &b, &g, &se), 0);
    assert_float_equal(g, 0.2, 1e-6);
    assert_float_equal(se, 0.1 / sqrt(3.0), 1e-6);
    /* the same shift everywhere: a certain gain (se 0) however noisy the samples are */
    for (int i = 0; i < 3; i++) a.sample_fidelity[i] = base[i] + 0.05f;
    assert_int_equal(score_paired_gain(&a, &b, &g, &se), 0);
    assert_float_equal(g, 0.05, 1e-6);
    assert_float_equal(se, 0, 1e-6);
    b.n = 2;
    assert_int_equal(score_paired_gain(&a, &b, &g, &se), -1);
    a.n = b.n = 1;
    assert_int_equal(score_paired_gain(&a, &b, &g, &se), -1);
}

static void test_score_model(void **state) {
    (void)state;
    char err[512];
    Backend *be = backend_cpu_create();
    assert_non_null(be);
    Model *m = model_open("tiny", be, err, sizeof err);
    assert_non_null(m);
    char paths[1][PRESET_PATH_MAX] = {"models/demo/subject1.png"};
    ScoreSubject d[1];
    assert_int_equal(score_load_subjects(paths, 1, d, err, sizeof err), 0);
    ScoreOpts o;
    score_opts_default(&o);
    o.n_colours = 2;
    o.per_colour = 2;
    o.steps = 2;
    o.size = 16;
    ScoreResult r1, r2;
    Image tiles[4];
    assert_int_equal(score_model(m, "a sks emoji", d, 1, &o, &r1, tiles, err, sizeof err), 0);
    assert_int_equal(r1.n, 4);
    assert_true(r1.fidelity >= 0 && r1.fidelity <= 1);
    assert_true(r1.adherence >= 0 && r1.adherence <= 1);
    /* the result is the mean of the per-image metrics */
    double fid = 0;
    int hit = 0;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(tiles[i].w, 16);
        assert_int_equal(tiles[i].c, 3);
        fid += score_fidelity(&tiles[i], d, 1);
        hit += score_adherent(&tiles[i], i / 2);
    }
    assert_float_equal(r1.fidelity, fid / 4, 1e-6);
    assert_float_equal(r1.adherence, hit / 4.0, 1e-6);
    /* per-sample fidelities and the standard error, two-pass */
    double ss = 0;
    for (int i = 0; i < 4; i++) {
        assert_float_equal(r1.sample_fidelity[i], score_fidelity(&tiles[i], d, 1), 1e-7);
        ss += (r1.sample_fidelity[i] - fid / 4) * (r1.sample_fidelity[i] - fid / 4);
    }
    assert_float_equal(r1.fidelity_se, sqrt(ss / 3 / 4), 1e-6);
    assert_int_equal(score_model(m, "a sks emoji", d, 1, &o, &r2, NULL, err, sizeof err), 0);
    assert_float_equal(r1.fidelity, r2.fidelity, 0);
    assert_float_equal(r1.adherence, r2.adherence, 0);
    /* a size the model cannot take is an error, not a crash */
    o.size = 18;
    assert_int_equal(score_model(m, "a sks emoji", d, 1, &o, &r2, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "multiple"));
    for (int i = 0; i < 4; i++) image_free(&tiles[i]);
    model_free(m);
    backend_destroy(be);
}

/* A synthetic captioned set: 12 emoji names x their colours (the subject
 * composited on each), in two "designs" like the real data, plus plain
 * "a <name>" captions that must never be picked. */
static const char *const NAMES[12] = {"cat", "dog", "fox", "owl", "bee", "ant",
                                      "cow", "pig", "hen", "elk", "yak", "emu"};
static void make_set(PtDataset *d, char (*caps)[64]) {
    int n = 0;
    memset(d, 0, sizeof *d);
    d->w = d->h = 32;
    d->c = 3;
    d->captions = malloc(sizeof(char *) * 2 * 12 * 10);
    d->px = malloc((size_t)2 * 12 * 10 * 32 * 32 * 3);
    for (int design = 0; design < 2; design++)
        for (int e = 0; e < 12; e++)
            for (int c = -1; c < SCORE_N_ASKED; c++) {
                if (c == (e % SCORE_N_ASKED) && c >= 0) continue; /* like a colour the emoji vanishes on */
                if (c < 0) snprintf(caps[n], 64, "a %s", NAMES[e]);
                else snprintf(caps[n], 64, "a %s on a %s background", NAMES[e], score_palette[c].name);
                d->captions[n] = caps[n];
                Image im = subject(c < 0 ? score_palette[9].rgb : score_palette[c].rgb, e % 3 - 1, 0);
                memcpy(d->px + (size_t)n * 32 * 32 * 3, im.px, 32 * 32 * 3);
                image_free(&im);
                n++;
            }
    d->n = n;
}

static void test_dataset_pick(void **state) {
    (void)state;
    static char caps[2 * 12 * 10][64];
    PtDataset d;
    make_set(&d, caps);
    char prompts[12][128], err[256] = "";
    int col[12];
    assert_int_equal(score_dataset_pick(&d, 12, prompts[0], sizeof prompts[0], col, err, sizeof err), 0);
    for (int i = 0; i < 12; i++) {
        /* a real caption of the set, with an askable colour it names */
        int found = 0;
        for (int k = 0; k < d.n; k++) found |= strcmp(d.captions[k], prompts[i]) == 0;
        assert_true(found);
        char want[64];
        snprintf(want, sizeof want, " on a %s background", score_palette[col[i]].name);
        assert_non_null(strstr(prompts[i], want));
        /* colours in turn where the emoji has that colour */
        if (col[i] != i % SCORE_N_ASKED) {
            /* only when every emoji not picked yet lacks the wanted colour */
            snprintf(want, sizeof want, " on a %s background", score_palette[i % SCORE_N_ASKED].name);
            for (int k = 0; k < d.n; k++) {
                if (!strstr(d.captions[k], want)) continue;
                char nk[32], nj[32];
                int seen = 0;
                sscanf(d.captions[k], "a %31s", nk);
                for (int j = 0; j < i && !seen; j++) {
                    sscanf(prompts[j], "a %31s", nj);
                    seen = !strcmp(nk, nj);
                }
                if (!seen) fail_msg("pick %d: colour %s, but '%s' was free", i, score_palette[col[i]].name, d.captions[k]);
            }
        }
        /* one caption per emoji name */
        for (int j = 0; j < i; j++) {
            char a[32], b[32];
            sscanf(prompts[i], "a %31s", a);
            sscanf(prompts[j], "a %31s", b);
            if (!strcmp(a, b)) fail_msg("picks %d and %d share the emoji '%s'", j, i, a);
        }
    }
    /* more picks than distinct emoji: an error naming the count */
    char many[13][128];
    int c13[13];
    assert_int_equal(score_dataset_pick(&d, 13, many[0], sizeof many[0], c13, err, sizeof err), -1);
    assert_non_null(strstr(err, "13"));

    /* score_dataset on the first 4 picks: the counts are the per-image metrics of its samples */
    Backend *be = backend_cpu_create();
    Model *m = model_open("tiny", be, err, sizeof err);
    assert_non_null(m);
    ScoreOpts o;
    score_opts_default(&o);
    o.steps = 2;
    ScoreDatasetResult r;
    Image tiles[4];
    assert_int_equal(score_dataset(m, &d, prompts[0], sizeof prompts[0], col, 4, &o, &r, tiles, err,
                                   sizeof err), 0);
    assert_int_equal(r.n, 4);
    int hit = 0, tot = 0;
    for (int i = 0; i < 4; i++) hit += score_adherent(&tiles[i], col[i]);
    for (int c = 0; c < SCORE_N_ASKED; c++) tot += r.per_colour_n[c];
    assert_int_equal(r.adherent, hit);
    assert_int_equal(tot, 4);
    assert_true(r.fidelity_named >= 0 && r.fidelity_named <= 1);
    assert_true(r.fidelity_other >= 0 && r.fidelity_other <= 1);
    /* the paired difference's mean is the difference of the means */
    assert_float_equal(r.named_gain, r.fidelity_named - r.fidelity_other, 1e-5);
    assert_true(r.named_gain_se >= 0);
    for (int i = 0; i < 4; i++) image_free(&tiles[i]);
    model_free(m);
    backend_destroy(be);
    free(d.captions);
    free(d.px);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_border_median),
        cmocka_unit_test(test_palette),
        cmocka_unit_test(test_adherence),
        cmocka_unit_test(test_descriptor_reference),
        cmocka_unit_test(test_fidelity_known_answers),
        cmocka_unit_test(test_opts_and_subjects),
        cmocka_unit_test(test_paired_gain),
        cmocka_unit_test(test_score_model),
        cmocka_unit_test(test_dataset_pick),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

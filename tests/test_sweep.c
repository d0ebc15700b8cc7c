/* test_sweep.c — --vary parsing and checks, variant order and names, the font,
 * and a real 2-variant sweep on a tiny setting (results.csv rows, grid size). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "training/sweep.h"

static Preset tiny_preset(void) {
    Preset p;
    preset_defaults(&p);
    char err[512];
    assert_int_equal(preset_load(&p, "presets/default.ini", err, sizeof err), 0);
    return p;
}

static void test_vary_parse_and_errors(void **state) {
    (void)state;
    Preset p = tiny_preset();
    Sweep *s = malloc(sizeof *s);
    assert_non_null(s);
    sweep_init(s, &p);
    char err[1024];
    assert_int_equal(sweep_count(s, err, sizeof err), -1);   /* nothing varied */
    const char *bad[] = {"foo=1,2", "a1=4,x", "lr=1e-4,2", "a1=4,,8", "a1=", "=4", "a1=4,", "run_name=x",
                         "n_images=0", "n_images=5"};
    const char *why[] = {"foo", "a1=4,x", "lr", "empty", "expected", "expected", "empty", "run_name",
                         "n_images", "n_images"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        assert_int_equal(sweep_add_vary(s, bad[i], err, sizeof err), -1);
        assert_non_null(strstr(err, why[i]));
        assert_null(strchr(err, '\n'));   /* one line */
        assert_int_equal(s->n_vary, 0);
    }
    assert_int_equal(sweep_add_vary(s, "a1=4,8", err, sizeof err), 0);
    assert_int_equal(sweep_add_vary(s, "train.lr=1e-4, 6e-4 ,1e-3", err, sizeof err), 0);
    assert_int_equal(sweep_add_vary(s, "lr=1", err, sizeof err), -1);   /* twice */
    assert_int_equal(sweep_count(s, err, sizeof err), 6);
    /* cartesian, the last --vary fastest */
    const char *names[] = {"a1=4,lr=0.0001", "a1=4,lr=0.0006", "a1=4,lr=0.001",
                           "a1=8,lr=0.0001", "a1=8,lr=0.0006", "a1=8,lr=0.001"};
    const int a1s[] = {4, 4, 4, 8, 8, 8};
    const float lrs[] = {1e-4f, 6e-4f, 1e-3f, 1e-4f, 6e-4f, 1e-3f};
    for (int i = 0; i < 6; i++) {
        Preset v;
        char name[SWEEP_NAME_MAX];
        assert_int_equal(sweep_variant(s, i, &v, name, sizeof name, err, sizeof err), 0);
        assert_string_equal(name, names[i]);
        assert_int_equal(v.a1, a1s[i]);
        assert_float_equal(v.lr, lrs[i], 1e-9);
        assert_int_equal(v.iterations, p.iterations);   /* the rest untouched */
    }
    /* --list: pairs; lengths must agree */
    s->listed = 1;
    assert_int_equal(sweep_count(s, err, sizeof err), -1);
    assert_non_null(strstr(err, "same number"));
    sweep_init(s, &p);
    s->listed = 1;
    assert_int_equal(sweep_add_vary(s, "a1=2,4,8", err, sizeof err), 0);
    assert_int_equal(sweep_add_vary(s, "modules=attn,attn+ffn,attn", err, sizeof err), 0);
    assert_int_equal(sweep_add_vary(s, "n_images=1,2,4", err, sizeof err), 0);
    assert_int_equal(sweep_count(s, err, sizeof err), 3);
    Preset v;
    char name[SWEEP_NAME_MAX];
    assert_int_equal(sweep_variant(s, 1, &v, name, sizeof name, err, sizeof err), 0);
    assert_string_equal(name, "a1=4,modules=attn+ffn,n_images=2");
    assert_int_equal(v.n_images, 2);
    assert_string_equal(v.images[1], p.images[1]);
    assert_int_equal(sweep_variant(s, 3, &v, name, sizeof name, err, sizeof err), -1);
    /* too many variants */
    sweep_init(s, &p);
    assert_int_equal(sweep_add_vary(s, "seed=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16", err, sizeof err), 0);
    assert_int_equal(sweep_add_vary(s, "a1=1,2,4,8,16", err, sizeof err), 0);
    assert_int_equal(sweep_count(s, err, sizeof err), -1);
    assert_non_null(strstr(err, "variants"));
    free(s);
}

/* a1 that does not divide a layer, a missing image, a bucket step the model
 * cannot take: caught by the check, before any training */
static void test_check_model_errors(void **state) {
    (void)state;
    Preset p = tiny_preset();
    snprintf(p.output_dir, sizeof p.output_dir, "/nonexistent-dir-for-sweep-test");
    Sweep *s = malloc(sizeof *s);
    assert_non_null(s);
    sweep_init(s, &p);
    char err[1024];
    Backend *be = backend_cpu_create();
    assert_int_equal(sweep_add_vary(s, "a1=4,3", err, sizeof err), 0);   /* 3 is a valid int */
    assert_int_equal(sweep_check(s, be, err, sizeof err), -1);
    assert_non_null(strstr(err, "variant a1=3"));
    assert_non_null(strstr(err, "does not divide"));
    char dir[512];
    assert_int_equal(sweep_run(s, be, NULL, NULL, dir, sizeof dir, NULL, NULL, err, sizeof err), -1);
    assert_int_equal(fs_exists("/nonexistent-dir-for-sweep-test"), 0);   /* nothing made */
    sweep_init(s, &p);
    assert_int_equal(sweep_add_vary(s, "image=models/demo/subject1.png,models/demo/missing.png", err, sizeof err), 0);
    assert_int_equal(sweep_check(s, be, err, sizeof err), -1);
    assert_non_null(strstr(err, "variant image=models_demo_missing.png"));
    assert_non_null(strstr(err, "missing.png"));
    /* buckets with a step the tiny model (cell 4) cannot take */
    p.buckets = 1;
    sweep_init(s, &p);
    assert_int_equal(sweep_add_vary(s, "bucket_step=8,6", err, sizeof err), 0);
    assert_int_equal(sweep_check(s, be, err, sizeof err), -1);
    assert_non_null(strstr(err, "variant bucket_step=6: bucket_step = 6: must be a multiple of 4"));
    backend_destroy(be);
    free(s);
}

/* each glyph pixel against the art in tools/gen-font5x7.py for 'A' and '1' */
static void test_font(void **state) {
    (void)state;
    static const char *A[7] = {".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"};
    static const char *one[7] = {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."};
    Image im;
    assert_int_equal(image_alloc(&im, 14, 9, 3), 0);
    memset(im.px, 255, 14 * 9 * 3);
    const unsigned char ink[3] = {1, 2, 3};
    sweep_draw_text(&im, 1, 1, "A1", ink);
    for (int y = 0; y < 9; y++)
        for (int x = 0; x < 14; x++) {
            int on = 0;
            if (y >= 1 && y < 8 && x >= 1 && x < 6) on = A[y - 1][x - 1] == '#';
            if (y >= 1 && y < 8 && x >= 7 && x < 12) on = one[y - 1][x - 7] == '#';
            const unsigned char *p = im.px + (y * 14 + x) * 3;
            if (on) assert_memory_equal(p, ink, 3);
            else assert_int_equal(p[0], 255);
        }
    /* clipped at the edges, non-ASCII as '?': no crash, something drawn */
    sweep_draw_text(&im, -3, -4, "\xc3\xa9~", ink);
    sweep_draw_text(&im, 12, 8, "W", ink);
    image_free(&im);
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* a real sweep: 2 variants, 3 steps at 16 px, 2 sampler steps, 2 colours */
static void test_sweep_run_tiny(void **state) {
    (void)state;
    char tmpl[] = "/tmp/krona-sweep-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    Preset p = tiny_preset();
    char err[1024];
    const char *sets[] = {"iterations=3", "resolution=16", "sample_every=0", "checkpoint_every=0",
                          "sample_steps=2"};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) assert_int_equal(preset_set(&p, sets[i], err, sizeof err), 0);
    Sweep *s = malloc(sizeof *s);
    assert_non_null(s);
    sweep_init(s, &p);
    snprintf(s->out_dir, sizeof s->out_dir, "%s/sw", tmpl);
    s->score_opts.n_colours = 2;
    s->score_opts.steps = 2;
    assert_int_equal(sweep_add_vary(s, "a1=4,8", err, sizeof err), 0);
    Backend *be = backend_cpu_create();
    SweepRow *rows = calloc(SWEEP_MAX_VARIANTS + 1, sizeof *rows);
    assert_non_null(rows);
    int nr = 0;
    char dir[4096];
    int rc = sweep_run(s, be, NULL, NULL, dir, sizeof dir, rows, &nr, err, sizeof err);
    if (rc != 0) fail_msg("sweep_run: %s", err);
    assert_string_equal(dir, s->out_dir);
    assert_int_equal(nr, 3);
    assert_string_equal(rows[0].variant, "base");
    assert_string_equal(rows[1].variant, "a1=4");
    assert_string_equal(rows[2].variant, "a1=8");
    /* a1=4 vs a1=8 on the same layers: more of A, less of B */
    assert_true(rows[1].trainable > 0 && rows[2].trainable > 0 && rows[1].trainable != rows[2].trainable);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(rows[i].status, "ok");
        assert_int_equal(rows[i].n_tiles, 2);
        assert_int_equal(rows[i].tiles[0].w, 16);
        assert_true(rows[i].fidelity >= 0 && rows[i].fidelity <= 1);
        assert_true(rows[i].adherence >= 0 && rows[i].adherence <= 1);
    }
    /* zero-initialised adapters: the untrained variant samples == base samples
     * is not checked here (they trained 3 steps); the losses are real numbers */
    assert_true(rows[1].final_loss > 0 && rows[1].eval_loss > 0);
    /* the paired gain: none for the base row; for a variant scored on the same
     * subject, the mean of per-sample differences is the difference of means */
    assert_true(isnan(rows[0].gain));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rows[i].score.n, 2);
        float mean = (rows[i].score.sample_fidelity[0] + rows[i].score.sample_fidelity[1]) / 2;
        assert_float_equal(rows[i].fidelity, mean, 1e-6);
        assert_true(rows[i].fidelity_se >= 0);
    }
    for (int i = 1; i < 3; i++) {
        assert_float_equal(rows[i].gain, rows[i].fidelity - rows[0].fidelity, 1e-5);
        assert_true(rows[i].gain_se >= 0);
    }

    char path[4200];
    snprintf(path, sizeof path, "%s/results.csv", dir);
    size_t n;
    char *csv = fs_read_all(path, FS_TEXT_MAX, &n, err, sizeof err);
    assert_non_null(csv);
    assert_int_equal(count_lines(csv), 4);
    const char *head = "variant,trainable_params,time_s,final_loss,eval_loss,fidelity,adherence,fidelity_se,"
                       "fidelity_gain,fidelity_gain_se,adapter,status\n";
    assert_true(strncmp(csv, head, strlen(head)) == 0);
    assert_non_null(strstr(csv, "\nbase,0,"));
    char want[256];
    snprintf(want, sizeof want, "\na1=4,%lld,", (long long)rows[1].trainable);
    assert_non_null(strstr(csv, want));
    free(csv);
    snprintf(path, sizeof path, "%s/results.md", dir);
    char *md = fs_read_all(path, FS_TEXT_MAX, &n, err, sizeof err);
    assert_non_null(md);
    assert_int_equal(count_lines(md), 2 + 3);
    assert_non_null(strstr(md, "\n| `a1=8` | "));
    free(md);
    for (int i = 1; i <= 2; i++) {
        snprintf(path, sizeof path, "%s/%s/adapter.safetensors", dir, rows[i].variant);
        assert_true(fs_exists(path));
    }
    /* the grid: 3 rows x 2 prompts, 16 px tiles scaled 6x to 96 px cells,
     * label column 8 characters wide ("fid 0.42" is the longest line) */
    Image g = {0};
    snprintf(path, sizeof path, "%s/grid.png", dir);
    assert_int_equal(image_load(path, &g, err, sizeof err), 0);
    int cell = 96, chars = 8;
    assert_int_equal(g.w, 4 + 6 * chars + 4 + 2 * (cell + 4));
    assert_int_equal(g.h, 4 + 3 * 9 + 4 + 3 * (cell + 4));
    /* a tile's pixel is its sample's pixel, scaled up */
    int label_w = 4 + 6 * chars + 4, header = 4 + 27 + 4;
    const unsigned char *src = rows[2].tiles[1].px + (5 * 16 + 7) * 3;
    const unsigned char *dst = g.px + ((size_t)(header + 2 * (cell + 4) + 5 * 6 + 3) * g.w + label_w + (cell + 4) + 7 * 6 + 2) * 3;
    assert_memory_equal(src, dst, 3);
    image_free(&g);
    /* a second run into the same folder is refused */
    assert_int_equal(sweep_run(s, be, NULL, NULL, dir, sizeof dir, NULL, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "already holds a sweep"));

    sweep_rows_free(rows, nr);
    free(rows);
    free(s);
    backend_destroy(be);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vary_parse_and_errors),
        cmocka_unit_test(test_check_model_errors),
        cmocka_unit_test(test_font),
        cmocka_unit_test(test_sweep_run_tiny),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

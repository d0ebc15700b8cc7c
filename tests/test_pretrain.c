/* test_pretrain.c — the tiny model's pretraining:
 *  - unet_backward_ctx's context gradient against central finite differences,
 *  - the KSDATA1 reader (round trip, truncated file),
 *  - pretraining on 8 coloured squares (8x8): the loss goes down, sample grids
 *    and weights appear, and stopping + --resume ends bit-identical to an
 *    uninterrupted run (EMA on, so its state is checkpointed too),
 *  - a resume with other options is refused with a message. */
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

#include "core/backend.h"
#include "core/fsutil.h"
#include "training/pretrain.h"
#include "core/rng.h"
#include "models/unet.h"

static Backend *be;

static int setup(void **state) {
    (void)state;
    be = backend_cpu_create();
    return be ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    backend_destroy(be);
    return 0;
}

static float *upload_new(const float *h, int64_t n) {
    float *d = be->alloc(be, sizeof(float) * (size_t)n);
    assert_non_null(d);
    be->upload(be, d, h, sizeof(float) * (size_t)n);
    return d;
}

/* loss = sum(out * R) in double */
static double unet_loss(UNet *u, float *x, float *t, float *ctx, float *out, const float *R,
                        float *hout, int64_t n, int N, int S, int L) {
    assert_int_equal(unet_forward(u, x, t, ctx, NULL, out, N, S, S, L, 1), 0);
    be->download(be, hout, out, sizeof(float) * (size_t)n);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)hout[i] * R[i];
    return s;
}

static void test_ctx_grad_fd(void **state) {
    (void)state;
    char err[256];
    UNetConfig c;
    assert_int_equal(unet_config_builtin("tiny", &c), 0);
    UNet *u = unet_create(&c, be, err, sizeof err);
    assert_non_null(u);
    unet_init_random(u, 3);
    /* diffusers init zeroes proj_out: give every weight some size so the
     * context reaches the output */
    Rng r;
    rng_seed(&r, 9);
    for (int i = 0; i < unet_n_params(u); i++) {
        UNetParam *p = unet_param_at(u, i);
        float *h = malloc(sizeof(float) * (size_t)p->numel);
        assert_non_null(h);
        be->download(be, h, p->data, sizeof(float) * (size_t)p->numel);
        for (int64_t j = 0; j < p->numel; j++) h[j] += 0.05f * (float)rng_normal(&r);
        be->upload(be, p->data, h, sizeof(float) * (size_t)p->numel);
        free(h);
    }
    const int N = 2, S = 8, L = 5, D = c.cross_attention_dim;
    int64_t nx = (int64_t)N * 3 * S * S, nc = (int64_t)N * L * D;
    float *hx = malloc(sizeof(float) * (size_t)nx), *hc = malloc(sizeof(float) * (size_t)nc);
    float *R = malloc(sizeof(float) * (size_t)nx), *hout = malloc(sizeof(float) * (size_t)nx);
    assert_true(hx && hc && R && hout);
    rng_fill_normal(&r, hx, nx);
    rng_fill_normal(&r, hc, nc);
    rng_fill_uniform(&r, R, nx, -1, 1);
    float ht[2] = {100, 700};
    float *x = upload_new(hx, nx), *ctx = upload_new(hc, nc), *t = upload_new(ht, 2);
    float *out = upload_new(hx, nx), *dR = upload_new(R, nx);
    float *dctx = be->alloc(be, sizeof(float) * (size_t)nc);
    assert_non_null(dctx);

    /* frozen base: the context gradient must still come back */
    unet_loss(u, x, t, ctx, out, R, hout, nx, N, S, L);
    assert_int_equal(unet_backward_ctx(u, dR, NULL, dctx), 0);
    float *g = malloc(sizeof(float) * (size_t)nc);
    assert_non_null(g);
    be->download(be, g, dctx, sizeof(float) * (size_t)nc);
    double gmax = 0;
    for (int64_t i = 0; i < nc; i++) gmax = fmax(gmax, fabs(g[i]));
    assert_true(gmax > 1e-4);
    int64_t idx[5] = {0, 17, nc / 2 + 3, nc - 64 + 9, nc - 1};
    const float h = 1e-2f;
    for (int k = 0; k < 5; k++) {
        int64_t j = idx[k];
        float v = hc[j] + h;
        be->upload(be, ctx + j, &v, sizeof v);
        double lp = unet_loss(u, x, t, ctx, out, R, hout, nx, N, S, L);
        v = hc[j] - h;
        be->upload(be, ctx + j, &v, sizeof v);
        double lm = unet_loss(u, x, t, ctx, out, R, hout, nx, N, S, L);
        be->upload(be, ctx + j, &hc[j], sizeof v);
        double fd = (lp - lm) / (2 * h);
        if (fabs(fd - g[j]) > 3e-2 * fabs(fd) + 2e-2 * gmax)
            fail_msg("d ctx[%lld]: backward %g, finite difference %g", (long long)j, g[j], fd);
    }
    /* plain unet_backward leaves dctx alone (and still works after _ctx) */
    unet_loss(u, x, t, ctx, out, R, hout, nx, N, S, L);
    be->zero(be, dctx, sizeof(float) * (size_t)nc);
    assert_int_equal(unet_backward(u, dR, NULL), 0);
    be->download(be, g, dctx, sizeof(float) * (size_t)nc);
    for (int64_t i = 0; i < nc; i++) assert_true(g[i] == 0.0f);

    float *dev[] = {x, ctx, t, out, dR, dctx};
    for (int i = 0; i < 6; i++) be->free(be, dev[i]);
    free(hx); free(hc); free(R); free(hout); free(g);
    unet_free(u);
}

/* 8 coloured squares on white, 8x8, captioned by colour */
static const char *const COLOURS[8] = {"red", "green", "blue", "yellow", "purple", "cyan", "black", "orange"};
static const unsigned char RGB[8][3] = {{220, 40, 40}, {50, 170, 70}, {40, 90, 220}, {250, 220, 40},
                                        {130, 60, 190}, {40, 200, 220}, {20, 20, 20}, {245, 140, 20}};

static void make_squares(PtDataset *d, char caps[8][32], char *ptrs[8], unsigned char *px) {
    for (int i = 0; i < 8; i++) {
        snprintf(caps[i], 32, "a %s square", COLOURS[i]);
        ptrs[i] = caps[i];
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++) {
                int in = x >= 2 && x < 6 && y >= 2 && y < 6;
                for (int c = 0; c < 3; c++) px[((i * 8 + y) * 8 + x) * 3 + c] = in ? RGB[i][c] : 255;
            }
    }
    *d = (PtDataset){.n = 8, .w = 8, .h = 8, .c = 3, .captions = ptrs, .px = px};
    d->hash = pt_dataset_hash(d);
}

static void test_dataset_file(void **state) {
    (void)state;
    char caps[8][32], *ptrs[8], err[512];
    unsigned char px[8 * 8 * 8 * 3];
    PtDataset d;
    make_squares(&d, caps, ptrs, px);
    /* write the KSDATA1 layout by hand, as tools/emoji_dataset.c does */
    size_t cb = 0;
    for (int i = 0; i < 8; i++) cb += strlen(caps[i]) + 1;
    size_t total = 28 + cb + sizeof px;
    unsigned char *buf = calloc(total, 1);
    assert_non_null(buf);
    memcpy(buf, "KSDATA1", 8);
    uint32_t hdr[5] = {8, 8, 8, 3, (uint32_t)cb};
    for (int k = 0; k < 5; k++)
        for (int b = 0; b < 4; b++) buf[8 + 4 * k + b] = (unsigned char)(hdr[k] >> (8 * b));
    size_t o = 28;
    for (int i = 0; i < 8; i++) { memcpy(buf + o, caps[i], strlen(caps[i]) + 1); o += strlen(caps[i]) + 1; }
    memcpy(buf + o, px, sizeof px);
    char path[] = "/tmp/ks_data_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(fs_write_atomic(path, buf, total, err, sizeof err), 0);
    PtDataset e;
    assert_int_equal(pt_dataset_load(&e, path, err, sizeof err), 0);
    assert_int_equal(e.n, 8);
    assert_int_equal(e.w, 8);
    assert_string_equal(e.captions[5], "a cyan square");
    assert_memory_equal(e.px, px, sizeof px);
    assert_true(e.hash == d.hash);
    pt_dataset_free(&e);
    /* truncated by one byte */
    assert_int_equal(fs_write_atomic(path, buf, total - 1, err, sizeof err), 0);
    assert_int_equal(pt_dataset_load(&e, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "truncated"));
    /* not a dataset */
    assert_int_equal(fs_write_atomic(path, "hello world, not a dataset....", 30, err, sizeof err), 0);
    assert_int_equal(pt_dataset_load(&e, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "KSDATA1"));
    unlink(path);
    free(buf);
}

typedef struct { float loss[64]; int n; } Losses;

static void rec_progress(void *user, const PretrainProgress *p) {
    Losses *l = user;
    if (l->n < 64) l->loss[l->n++] = p->loss;
}

static unsigned char *slurp(const char *dir, const char *name, size_t *n) {
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *b = fs_read_all(path, FS_TEXT_MAX, n, err, sizeof err);
    if (!b) fail_msg("%s", err);
    return (unsigned char *)b;
}

static void rm_dir(const char *dir) {
    const char *files[] = {"unet.safetensors", "text_encoder.safetensors", "checkpoint.safetensors",
                           "pretrain_log.csv", "samples/step_000006.png", "samples/step_000004.png",
                           "samples/step_000008.png"};
    char path[512];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/samples", dir);
    rmdir(path);
    rmdir(dir);
}

static void test_pretrain_squares(void **state) {
    (void)state;
    char caps[8][32], *ptrs[8], err[512];
    unsigned char px[8 * 8 * 8 * 3];
    PtDataset d;
    make_squares(&d, caps, ptrs, px);
    char dirA[] = "/tmp/ks_ptA_XXXXXX", dirB[] = "/tmp/ks_ptB_XXXXXX";
    assert_non_null(mkdtemp(dirA));
    assert_non_null(mkdtemp(dirB));
    static const char *const prompts[] = {"a red square", "a blue square"};

    PretrainOpts o;
    pretrain_default_opts(&o);
    o.steps = 8;
    o.batch = 4;
    o.lr = 2e-3f;
    o.warmup = 2;
    o.ema = 0.5f;
    o.print_every = 1;
    o.checkpoint_every = 0;
    o.sample_every = 4;
    o.sample_steps = 3;
    o.sample_prompts = prompts;
    o.n_sample_prompts = 2;
    o.out_dir = dirA;
    Losses la = {0};
    PretrainCallbacks cb = {.user = &la, .progress = rec_progress};
    assert_int_equal(pretrain_run(&d, &o, be, &cb, err, sizeof err), 0);
    assert_int_equal(la.n, 8);
    char path[512];
    snprintf(path, sizeof path, "%s/samples/step_000004.png", dirA);
    assert_true(fs_exists(path));

    /* the same run, stopped after 3 steps and resumed */
    o.out_dir = dirB;
    o.stop_after = 3;
    Losses lb = {0};
    cb.user = &lb;
    assert_int_equal(pretrain_run(&d, &o, be, &cb, err, sizeof err), 1);
    assert_int_equal(lb.n, 3);
    o.stop_after = 0;
    o.resume = 1;
    PretrainOpts bad = o;
    bad.batch = 2;
    assert_int_equal(pretrain_run(&d, &bad, be, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "--batch 4"));
    assert_int_equal(pretrain_run(&d, &o, be, &cb, err, sizeof err), 0);
    assert_int_equal(lb.n, 8);
    for (int i = 0; i < 8; i++) assert_true(la.loss[i] == lb.loss[i]);
    const char *files[] = {"unet.safetensors", "text_encoder.safetensors", "checkpoint.safetensors"};
    for (int k = 0; k < 3; k++) {
        size_t na, nb;
        unsigned char *a = slurp(dirA, files[k], &na), *b = slurp(dirB, files[k], &nb);
        assert_int_equal(na, nb);
        if (memcmp(a, b, na) != 0) fail_msg("%s differs between the resumed and the straight run", files[k]);
        free(a);
        free(b);
    }
    rm_dir(dirA);
    rm_dir(dirB);

    /* loss goes down: a longer run without EMA */
    char dirC[] = "/tmp/ks_ptC_XXXXXX";
    assert_non_null(mkdtemp(dirC));
    pretrain_default_opts(&o);
    o.out_dir = dirC;
    o.steps = 40;
    o.batch = 8;
    o.lr = 3e-3f;
    o.warmup = 3;
    o.print_every = 1;
    o.checkpoint_every = 0;
    o.sample_every = 0;
    Losses lc = {0};
    cb.user = &lc;
    assert_int_equal(pretrain_run(&d, &o, be, &cb, err, sizeof err), 0);
    assert_int_equal(lc.n, 40);
    double first = 0, last = 0;
    for (int i = 0; i < 5; i++) first += lc.loss[i] / 5;
    for (int i = 30; i < 40; i++) last += lc.loss[i] / 10;
    print_message("pretrain squares: loss %.4f (first 5) -> %.4f (last 10)\n", first, last);
    assert_true(last < 0.6 * first);
    rm_dir(dirC);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctx_grad_fd),
        cmocka_unit_test(test_dataset_file),
        cmocka_unit_test(test_pretrain_squares),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

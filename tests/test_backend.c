/* test_backend.c — the backend registry and the backend lifecycle:
 * backend_open by name and for `auto` (highest rank that opens, with the
 * reasons for the ones skipped), one-line errors for unknown names and missing
 * plugins, and a device failure in the middle of training stopping it with the
 * backend's message while the last checkpoint stays as it was; the profile
 * table (core/profile.h) and the CPU backend's op-by-op profile. (Loading real
 * plugin files, good, stale and with a missing runtime: tests/cli/test_cli.sh.) */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/backend.h"
#include "core/fsutil.h"
#include "core/profile.h"
#include "formats/safetensors.h"
#include "models/model.h"
#include "training/train.h"

static void test_open_cpu(void **state) {
    char err[512];
    Backend *be = backend_open("cpu", err, sizeof err);
    assert_non_null(be);
    assert_string_equal(be->name, "cpu");
    assert_string_equal(err, "");
    /* every lifecycle slot is filled */
    assert_non_null(be->destroy);
    assert_non_null(be->last_error);
    assert_non_null(be->clear_error);
    assert_non_null(be->device_name);
    assert_non_null(be->set_precision);
    assert_non_null(be->reserved_bytes);
    assert_int_equal(strncmp(be->device_name(be), "cpu (", 5), 0);
    assert_string_equal(be->last_error(be), "");
    assert_int_equal(be->set_precision(be, KRONA_PREC_FP32), 0);
    assert_int_equal(be->set_precision(be, KRONA_PREC_TF32), -1); /* the CPU has no TF32 mode */
    assert_int_equal(be->set_precision(be, KRONA_PREC_BF16), 0);  /* the reference of CUDA's */
    assert_int_equal(be->set_precision(be, KRONA_PREC_AUTO), 0);
    assert_int_equal(be->precision(be), KRONA_PREC_FP32); /* auto, resolved */
    assert_int_equal(be->set_precision(be, KRONA_PREC_BF16), 0);
    assert_int_equal(be->precision(be), KRONA_PREC_BF16);
    assert_int_equal(be->set_precision(be, KRONA_PREC_TF32), -1);
    assert_int_equal(be->precision(be), KRONA_PREC_BF16); /* a refused mode changes nothing */
    be->set_precision(be, KRONA_PREC_AUTO);
    /* by name, with one line naming the knob */
    assert_int_equal(backend_set_precision(be, "bf16", err, sizeof err), 0);
    assert_int_equal(backend_set_precision(be, "tf32", err, sizeof err), -1);
    assert_non_null(strstr(err, "precision = tf32: the cpu device has no such mode"));
    assert_int_equal(backend_set_precision(be, "fp16", err, sizeof err), -1);
    assert_string_equal(err, "precision = fp16: use auto, fp32, tf32 or bf16");
    assert_int_equal(backend_set_precision(be, "auto", err, sizeof err), 0);
    assert_int_equal(backend_precision_parse(""), KRONA_PREC_AUTO);
    assert_string_equal(backend_precision_name(KRONA_PREC_BF16), "bf16");
    void *p = be->alloc(be, 1000);
    assert_true(be->reserved_bytes(be) >= 1000);
    /* the CPU's free memory is the kernel's MemAvailable: some, and less than all */
    assert_non_null(be->free_bytes);
    size_t fr = be->free_bytes(be);
    assert_true(fr > ((size_t)16 << 20) && fr < ((size_t)1 << 50));
    be->free(be, p);
    backend_destroy(be);
    backend_destroy(NULL);
}

/* the table every backend keeps: rows by path of open scopes, first seen first */
static void test_profile_table(void **state) {
    ProfTable t = {0};
    assert_int_equal(prof_enter(&t, "off"), -1); /* not profiling: nothing kept */
    prof_leave(&t, -1);
    prof_switch(&t, 1);
    int a = prof_enter(&t, "conv2d_bwd");
    int b = prof_enter(&t, "col2im");
    prof_add(&t, b, 2.0);
    prof_leave(&t, b);
    prof_add(&t, a, 5.0);
    prof_leave(&t, a);
    int g = prof_enter(&t, "gemm"); /* at the top again, not inside conv2d_bwd */
    prof_leave(&t, g);
    a = prof_enter(&t, "conv2d_bwd");
    b = prof_enter(&t, "col2im");
    prof_add(&t, b, 1.0);
    prof_leave(&t, b);
    prof_leave(&t, a);
    BackendProfileRow r[8];
    assert_int_equal(prof_copy(&t, r, 8), 3);
    assert_string_equal(r[0].name, "conv2d_bwd");
    assert_int_equal(r[0].depth, 0);
    assert_int_equal(r[0].calls, 2);
    assert_true(r[0].ms == 5.0);
    assert_string_equal(r[1].name, "conv2d_bwd/col2im");
    assert_int_equal(r[1].depth, 1);
    assert_int_equal(r[1].calls, 2);
    assert_true(r[1].ms == 3.0);
    assert_string_equal(r[2].name, "gemm");
    assert_int_equal(r[2].depth, 0);
    assert_int_equal(prof_copy(&t, r, 1), 3); /* how many there are, whatever fits */
    prof_switch(&t, 0);
    assert_int_equal(prof_enter(&t, "gemm"), -1); /* stopped: the rows stay */
    assert_int_equal(prof_copy(&t, r, 8), 3);
    prof_switch(&t, 1); /* started again: empty */
    assert_int_equal(prof_copy(&t, r, 8), 0);
    for (int i = 0; i < 200; i++) prof_leave(&t, prof_enter(&t, i % 2 ? "x" : "y")); /* grows */
    assert_int_equal(prof_copy(&t, r, 8), 2);
    assert_int_equal(r[0].calls, 100);
    prof_free(&t);
}

static double wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* the CPU backend times every op it is asked for, and nothing while off */
static void test_cpu_profile(void **state) {
    Backend *be = backend_cpu_create();
    assert_non_null(be->profile);
    assert_non_null(be->profile_rows);
    BackendProfileRow r[16];
    assert_int_equal(be->profile_rows(be, r, 16), 0);
    int N = 2, C = 32, H = 48, W = 48;
    int64_t n = (int64_t)N * C * H * W;
    float *x = be->alloc(be, sizeof(float) * (size_t)n), *y = be->alloc(be, sizeof(float) * (size_t)n);
    float *w = be->alloc(be, sizeof(float) * (size_t)C * C * 9);
    be->conv2d_fwd(be, x, w, NULL, y, N, C, H, W, C, 3, 1, 1); /* before: not counted */
    assert_int_equal(be->profile(be, 1), 0);
    double t0 = wall_ms();
    be->conv2d_fwd(be, x, w, NULL, y, N, C, H, W, C, 3, 1, 1);
    be->silu_fwd(be, y, x, n);
    be->conv2d_fwd(be, x, w, NULL, y, N, C, H, W, C, 3, 1, 1);
    double wall = wall_ms() - t0;
    assert_int_equal(be->profile(be, 0), 0);
    be->silu_fwd(be, y, x, n); /* after: not counted */
    be->zero(be, y, sizeof(float) * (size_t)n);
    assert_int_equal(be->profile_rows(be, r, 16), 2);
    assert_string_equal(r[0].name, "conv2d_fwd");
    assert_int_equal(r[0].calls, 2);
    assert_int_equal(r[0].depth, 0);
    assert_string_equal(r[1].name, "silu_fwd");
    assert_int_equal(r[1].calls, 1);
    /* each op's own time: some, and together no more than the whole */
    assert_true(r[0].ms > 0 && r[1].ms > 0);
    assert_true(r[0].ms + r[1].ms <= wall);
    assert_true(r[0].ms > r[1].ms); /* 2 x 2*9*32 MACs per output vs one sigmoid */
    be->free(be, x); be->free(be, y); be->free(be, w);
    backend_destroy(be);
}

static void test_unknown_names(void **state) {
    char err[512];
    const char *bad[] = {"bogus", "../../tmp/x", "CPU", "cuda;rm"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_null(backend_open(bad[i], err, sizeof err));
        char want[128];
        snprintf(want, sizeof want, "device = %s: use auto, cpu or cuda", bad[i]);
        assert_string_equal(err, want);
    }
}

/* no plugin folder holds krona-backend-cuda.so: one line naming where it looked */
static void test_missing_plugin(void **state) {
    char err[512];
    setenv("KRONA_BACKEND_PATH", "build/no-such-plugin-dir", 1);
    assert_null(backend_open("cuda", err, sizeof err));
    unsetenv("KRONA_BACKEND_PATH");
    assert_non_null(strstr(err, "device = cuda: this build has no cuda backend"));
    assert_non_null(strstr(err, "build/no-such-plugin-dir"));
    assert_null(strchr(err, '\n'));
}

/* ---- auto: the highest rank that opens; the skipped ones say why ---- */
static Backend *fails_create(char *err, size_t errlen) {
    snprintf(err, errlen, "no fake device here");
    return NULL;
}
static const BackendDriver fails_driver = {"fakefail", 100, fails_create};

static Backend *renamed_cpu(char *err, size_t errlen) {
    Backend *be = backend_cpu_create();
    if (be) be->name = "fakeok";
    return be;
}
static const BackendDriver ok_driver = {"fakeok", 50, renamed_cpu};

static void test_auto_ranks(void **state) {
    char err[512];
    setenv("KRONA_BACKEND_PATH", "build/no-such-plugin-dir", 1); /* no real plugin joins in */
    backend_register(&fails_driver);
    Backend *be = backend_open("auto", err, sizeof err);
    assert_non_null(be);
    assert_string_equal(be->name, "cpu");
    assert_string_equal(err, "fakefail: no fake device here");
    backend_destroy(be);
    assert_null(backend_open("fakefail", err, sizeof err));
    assert_string_equal(err, "device = fakefail: no fake device here");

    backend_register(&ok_driver); /* ranks above cpu: auto takes it */
    be = backend_open(NULL, err, sizeof err);
    assert_non_null(be);
    assert_string_equal(be->name, "fakeok");
    assert_string_equal(err, "fakefail: no fake device here");
    backend_destroy(be);
    unsetenv("KRONA_BACKEND_PATH");
}

/* one demo image at 16 px on the CPU, no samples: a run of a few steps in root/run */
static void small_preset(Preset *p, const char *root, const char *run, int iterations) {
    preset_defaults(p);
    p->n_images = 1;
    snprintf(p->images[0], sizeof p->images[0], "models/demo/subject1.png");
    snprintf(p->instance_prompt, sizeof p->instance_prompt, "a sks dog");
    p->resolution = 16;
    p->iterations = iterations;
    p->sample_every = 0;
    p->n_sample_prompts = 0;
    snprintf(p->device, sizeof p->device, "cpu");
    snprintf(p->output_dir, sizeof p->output_dir, "%s", root);
    snprintf(p->run_name, sizeof p->run_name, "%s", run);
}

/* ---- a device failure stops training; the last checkpoint is kept ---- */
static int g_fail;
static const char *injected_error(Backend *be) { return g_fail ? "out of memory (injected)" : ""; }
static void fail_after_step(void *user, const TrainProgress *p) {
    if (p->state == TRAIN_RUNNING && p->step == 6) g_fail = 1;
}

static void test_device_failure_stops_training(void **state) {
    char err[512], root[128];
    snprintf(root, sizeof root, "build/test-backend-%d", (int)getpid());
    assert_int_equal(fs_mkdir_p(root, err, sizeof err), 0);
    Backend *be = backend_cpu_create();
    be->last_error = injected_error;
    g_fail = 0;
    Preset p;
    small_preset(&p, root, "devfail", 12);
    p.checkpoint_every = 4;
    TrainCallbacks cb = {NULL, fail_after_step, NULL, NULL, NULL};
    Trainer *t = trainer_create(&p, NULL, be, &cb, err, sizeof err);
    if (!t) fail_msg("%s", err);
    assert_int_equal(trainer_run(t), -1);
    const char *e = trainer_error(t);
    printf("trainer error: %s\n", e);
    assert_non_null(strstr(e, "cpu device failed at step 7: out of memory (injected)"));
    assert_non_null(strstr(e, "the last checkpoint is kept"));
    assert_int_equal(trainer_progress(t).state, TRAIN_FAILED);
    assert_int_equal(trainer_progress(t).step, 6);

    /* the step-4 checkpoint is on disk, untouched; no adapter was exported */
    char path[600];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", trainer_run_dir(t));
    SafeTensors *st = st_open(path, err, sizeof err);
    if (!st) fail_msg("%s", err);
    assert_string_equal(st_metadata(st, "step"), "4");
    st_close(st);
    snprintf(path, sizeof path, "%s/adapter.safetensors", trainer_run_dir(t));
    assert_int_equal(access(path, F_OK), -1);
    trainer_free(t);
    backend_destroy(be);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

/* the UNet cannot get its activation memory on the first training step: the
 * run stops with the UNet's message (before: the failure went unnoticed) */
static int g_alloc_fail;
static void *(*real_alloc)(Backend *be, size_t bytes);
static void *failing_alloc(Backend *be, size_t bytes) { return g_alloc_fail ? NULL : real_alloc(be, bytes); }

static void test_unet_failure_stops_training(void **state) {
    char err[512], root[128];
    snprintf(root, sizeof root, "build/test-backend-oom-%d", (int)getpid());
    assert_int_equal(fs_mkdir_p(root, err, sizeof err), 0);
    Backend *be = backend_cpu_create();
    real_alloc = be->alloc;
    be->alloc = failing_alloc;
    g_alloc_fail = 0;
    Preset p;
    small_preset(&p, root, "oom", 5);
    Trainer *t = trainer_create(&p, NULL, be, NULL, err, sizeof err);
    if (!t) fail_msg("%s", err);
    g_alloc_fail = 1;
    assert_int_equal(trainer_run(t), -1);
    printf("trainer error: %s\n", trainer_error(t));
    assert_non_null(strstr(trainer_error(t), "step 1: UNet"));
    assert_int_equal(trainer_progress(t).step, 0);
    g_alloc_fail = 0;
    trainer_free(t);
    backend_destroy(be);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

/* sampling on a failing device returns an error, not an image of garbage */
static const char *always_failing(Backend *be) { return "unspecified launch failure (injected)"; }
static void test_device_failure_fails_sampling(void **state) {
    char err[512];
    Backend *be = backend_cpu_create();
    Model *m = model_open("tiny", be, err, sizeof err);
    if (!m) fail_msg("%s", err);
    size_t cb = sizeof(float) * (size_t)m->cond_floats;
    float *cc = be->alloc(be, cb), *cu = be->alloc(be, cb);
    assert_int_equal(model_encode_prompt(m, "a dog", 32, cc, err, sizeof err), 0);
    assert_int_equal(model_encode_prompt(m, "", 32, cu, err, sizeof err), 0);
    int px = m->ucfg.sample_size * m->pixel_scale;
    float *pix = malloc(sizeof(float) * (size_t)m->channels * px * px);
    SamplerOpts so = {0};
    so.steps = 2;
    so.guidance = 2.0f;
    assert_int_equal(model_generate(m, cc, cu, 1, px, &so, 1, NULL, pix, err, sizeof err), 0);
    be->last_error = always_failing;
    assert_int_equal(model_generate(m, cc, cu, 1, px, &so, 1, NULL, pix, err, sizeof err), -1);
    assert_string_equal(err, "cpu device failed while sampling: unspecified launch failure (injected)");
    free(pix);
    be->free(be, cc);
    be->free(be, cu);
    model_free(m);
    backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_cpu),
        cmocka_unit_test(test_profile_table),
        cmocka_unit_test(test_cpu_profile),
        cmocka_unit_test(test_unknown_names),
        cmocka_unit_test(test_missing_plugin),
        cmocka_unit_test(test_auto_ranks),
        cmocka_unit_test(test_device_failure_stops_training),
        cmocka_unit_test(test_device_failure_fails_sampling),
        cmocka_unit_test(test_unet_failure_stops_training),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

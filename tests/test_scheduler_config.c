/* test_scheduler_config.c — beta schedules (linear vs scaled-linear) against
 * naive long-double formulas and published anchors; diffusers'
 * scheduler_config.json read/write; errors naming the key; a model folder's
 * config reaching model_open. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_helpers.h"
#include "core/fsutil.h"
#include "models/model.h"
#include "models/scheduler_config.h"

static int setup(void **state) { return th_tmpdir_make("sched"); }
static int teardown(void **state) { return th_tmpdir_remove(); }

/* DDPM's schedule: betas evenly spaced, alphas_cumprod their running product */
static void test_linear_schedule(void **state) {
    Schedule s;
    schedule_linear(&s, 1000, 1e-4, 0.02, PRED_V);
    assert_int_equal(s.T, 1000);
    assert_int_equal(s.kind, BETAS_LINEAR);
    assert_int_equal(s.prediction, PRED_V);
    long double prod = 1.0L;
    for (int t = 0; t < 1000; t++) {
        long double beta = 1e-4L + (0.02L - 1e-4L) * t / 999.0L;
        prod *= 1.0L - beta;
        assert_true(fabsl(s.betas[t] - beta) < 1e-15L);
        assert_true(fabsl(s.alphas_cumprod[t] - prod) < 1e-12L * prod + 1e-300L);
    }
    /* published: DDPM's linear schedule ends at alpha_bar ~ 4.04e-5 (sqrt ~ 0.00635) */
    assert_true(s.alphas_cumprod[999] > 4.0e-5 && s.alphas_cumprod[999] < 4.1e-5);
    /* SD's scaled-linear one keeps far more signal at t = 999 (~0.0047): the
     * reason the pixel-space tiny model uses linear */
    Schedule sd;
    schedule_sd_default(&sd);
    assert_true(sd.alphas_cumprod[999] > 0.0046 && sd.alphas_cumprod[999] < 0.0048);
    assert_int_equal(sd.kind, BETAS_SCALED_LINEAR);
    assert_int_equal(sd.prediction, PRED_EPSILON);
}

/* SD 1.5's scheduler/scheduler_config.json as published on the Hub */
static const char *SD15_CONFIG =
    "{\n \"_class_name\": \"PNDMScheduler\",\n \"_diffusers_version\": \"0.6.0\",\n"
    " \"beta_end\": 0.012,\n \"beta_schedule\": \"scaled_linear\",\n \"beta_start\": 0.00085,\n"
    " \"num_train_timesteps\": 1000,\n \"set_alpha_to_one\": false,\n \"skip_prk_steps\": true,\n"
    " \"steps_offset\": 1,\n \"trained_betas\": null,\n \"clip_sample\": false\n}\n";

static void test_parse_sd15(void **state) {
    Schedule a, b;
    char err[300] = "";
    schedule_linear(&a, 10, 0.1, 0.2, PRED_V); /* overwritten entirely */
    assert_int_equal(schedule_from_json_text(SD15_CONFIG, &a, err, sizeof err), 0);
    schedule_sd_default(&b);
    assert_int_equal(a.T, b.T);
    assert_int_equal(a.kind, b.kind);
    assert_int_equal(a.prediction, PRED_EPSILON);
    assert_memory_equal(a.alphas_cumprod, b.alphas_cumprod, sizeof(double) * 1000);
    /* an empty object is SD's schedule too */
    assert_int_equal(schedule_from_json_text("{}", &a, err, sizeof err), 0);
    assert_memory_equal(a.betas, b.betas, sizeof(double) * 1000);
    /* SD 2.x style v-prediction */
    assert_int_equal(schedule_from_json_text("{\"prediction_type\": \"v_prediction\"}", &a, err,
                                             sizeof err), 0);
    assert_int_equal(a.prediction, PRED_V);
}

static void test_round_trip(void **state) {
    char path[400], err[300] = "";
    snprintf(path, sizeof path, "%s/scheduler_config.json", tmpdir);
    Schedule a, b;
    schedule_linear(&a, 1000, 1e-4, 0.02, PRED_V);
    assert_int_equal(schedule_save_json(path, &a, err, sizeof err), 0);
    assert_int_equal(schedule_from_json(path, &b, err, sizeof err), 0);
    assert_int_equal(b.kind, BETAS_LINEAR);
    assert_int_equal(b.prediction, PRED_V);
    assert_memory_equal(a.alphas_cumprod, b.alphas_cumprod, sizeof(double) * 1000);
    schedule_scaled_linear(&a, 500, 0.001, 0.01, PRED_EPSILON);
    assert_int_equal(schedule_save_json(path, &a, err, sizeof err), 0);
    assert_int_equal(schedule_from_json(path, &b, err, sizeof err), 0);
    assert_int_equal(b.T, 500);
    assert_int_equal(b.kind, BETAS_SCALED_LINEAR);
    assert_memory_equal(a.betas, b.betas, sizeof(double) * 500);
}

static void test_errors(void **state) {
    static const struct { const char *json, *want; } cases[] = {
        {"{\"beta_schedule\": \"squaredcos_cap_v2\"}", "beta_schedule 'squaredcos_cap_v2'"},
        {"{\"prediction_type\": \"sample\"}", "prediction_type 'sample'"},
        {"{\"num_train_timesteps\": 5000}", "num_train_timesteps"},
        {"{\"num_train_timesteps\": 10.5}", "num_train_timesteps"},
        {"{\"beta_start\": -1}", "beta_start"},
        {"{\"beta_start\": 0.1, \"beta_end\": 0.01}", "beta_end"},
        {"[1, 2]", "not a JSON object"},
        {"{\"beta_end\": ", "not JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Schedule s;
        char err[300] = "";
        assert_int_equal(schedule_from_json_text(cases[i].json, &s, err, sizeof err), -1);
        if (!strstr(err, cases[i].want)) fail_msg("case %zu: '%s' lacks '%s'", i, err, cases[i].want);
    }
    /* the file variant names the file and the fix */
    char path[400], err[400] = "";
    snprintf(path, sizeof path, "%s/bad.json", tmpdir);
    assert_int_equal(fs_write_atomic(path, "{\"beta_schedule\": 3}", 20, err, sizeof err), 0);
    Schedule s;
    assert_int_equal(schedule_from_json(path, &s, err, sizeof err), -1);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "beta_schedule"));
    snprintf(path, sizeof path, "%s/missing.json", tmpdir);
    assert_int_equal(schedule_from_json(path, &s, err, sizeof err), -1);
    assert_non_null(strstr(err, "missing.json"));
}

/* model_open("tiny") takes the schedule the shipped weights were trained with:
 * a KRONA_HOME with models/tiny/{unet,text_encoder}.safetensors + config. */
static void test_tiny_model_reads_config(void **state) {
    char dir[400], path[500], err[400] = "";
    snprintf(dir, sizeof dir, "%s/home/models/tiny", tmpdir);
    assert_int_equal(fs_mkdir_p(dir, err, sizeof err), 0);
    Backend *be = backend_cpu_create();
    setenv("KRONA_HOME", "/nonexistent-krona-home", 1);
    Model *m = model_open("tiny", be, err, sizeof err); /* the shipped weights, from the current folder */
    assert_non_null(m);
    snprintf(path, sizeof path, "%s/unet.safetensors", dir);
    assert_int_equal(unet_save_safetensors(m->unet, path, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/text_encoder.safetensors", dir);
    assert_int_equal(te_save_safetensors(m->te, path, err, sizeof err), 0);
    model_free(m);

    Schedule want;
    schedule_scaled_linear(&want, 1000, 0.001, 0.015, PRED_V);
    snprintf(path, sizeof path, "%s/scheduler_config.json", dir);
    assert_int_equal(schedule_save_json(path, &want, err, sizeof err), 0);
    char home[400];
    snprintf(home, sizeof home, "%s/home", tmpdir);
    setenv("KRONA_HOME", home, 1);
    m = model_open("tiny", be, err, sizeof err);
    if (!m) fail_msg("%s", err);
    assert_int_equal(m->sched.prediction, PRED_V);
    assert_memory_equal(m->sched.alphas_cumprod, want.alphas_cumprod, sizeof(double) * 1000);
    model_free(m);

    /* a broken config is an error naming it, not a silent fallback */
    assert_int_equal(fs_write_atomic(path, "{\"prediction_type\": 1}", 22, err, sizeof err), 0);
    m = model_open("tiny", be, err, sizeof err);
    assert_null(m);
    assert_non_null(strstr(err, "scheduler_config.json"));
    unsetenv("KRONA_HOME");
    backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_schedule),
        cmocka_unit_test(test_parse_sd15),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_tiny_model_reads_config),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

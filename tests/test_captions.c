/* test_captions.c — a caption beside a training image (subject1.txt for
 * subject1.png, kohya's convention) replaces the instance prompt for that
 * image: a caption equal to the instance prompt trains the very same adapter
 * as no caption, another caption a different one; a caption that is not a
 * small text file is refused naming it. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "formats/safetensors.h"
#include "training/run_dir.h"
#include "training/train.h"

static char g_dir[256];

static int setup(void **state) {
    snprintf(g_dir, sizeof g_dir, "build/test-captions-%d", (int)getpid());
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/img' && cp models/demo/subject1.png models/demo/subject2.png '%s/img/'",
             g_dir, g_dir);
    return system(cmd) == 0 ? 0 : -1;
}
static int teardown(void **state) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void caption(const char *name, const char *text) {
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/img/%s", g_dir, name);
    if (!text) { unlink(path); return; }
    assert_int_equal(fs_write_atomic(path, text, strlen(text), err, sizeof err), 0);
}

/* train 4 steps; returns the adapter file's bytes (or NULL with the error in err) */
static char *train(const char *run, size_t *n, char *err, size_t errlen) {
    Backend *be = backend_cpu_create();
    Preset p;
    preset_defaults(&p);
    p.n_images = 2;
    snprintf(p.images[0], sizeof p.images[0], "%s/img/subject1.png", g_dir);
    snprintf(p.images[1], sizeof p.images[1], "%s/img/subject2.png", g_dir);
    snprintf(p.instance_prompt, sizeof p.instance_prompt, "a sks dog");
    p.resolution = 16;
    p.iterations = 4;
    p.sample_every = 0;
    p.n_sample_prompts = 0;
    p.checkpoint_every = 0;
    snprintf(p.device, sizeof p.device, "cpu");
    snprintf(p.output_dir, sizeof p.output_dir, "%s/runs", g_dir);
    snprintf(p.run_name, sizeof p.run_name, "%s", run);
    char *bytes = NULL;
    Trainer *t = trainer_create(&p, NULL, be, NULL, err, errlen);
    if (t && trainer_run(t) == 0) {
        char path[800];
        run_path(trainer_run_dir(t), RUN_ADAPTER, path, sizeof path);
        SafeTensors *st = st_open(path, err, errlen);
        assert_non_null(st);
        /* the tensors only: metadata holds the run's own path */
        *n = 0;
        for (int i = 0; i < st_count(st); i++) *n += (size_t)st_at(st, i)->numel * 4;
        bytes = malloc(*n);
        size_t off = 0;
        for (int i = 0; i < st_count(st); i++) {
            st_read_f32(st_at(st, i), (float *)(bytes + off));
            off += (size_t)st_at(st, i)->numel * 4;
        }
        st_close(st);
    } else if (t) {
        snprintf(err, errlen, "%s", trainer_error(t));
    }
    trainer_free(t);
    backend_destroy(be);
    return bytes;
}

static void test_captions(void **state) {
    char err[1024];
    size_t n0, n1, n2;
    char *none = train("none", &n0, err, sizeof err);
    if (!none) fail_msg("%s", err);
    caption("subject1.txt", "  a sks\n dog \n");   /* the instance prompt, once normalised */
    char *same = train("same", &n1, err, sizeof err);
    if (!same) fail_msg("%s", err);
    assert_int_equal(n0, n1);
    assert_memory_equal(none, same, n0);
    caption("subject1.txt", "a sks dog on a red background");
    char *other = train("other", &n2, err, sizeof err);
    if (!other) fail_msg("%s", err);
    assert_int_equal(n0, n2);
    assert_true(memcmp(none, other, n0) != 0);
    free(none); free(same); free(other);

    /* a folder where the caption would be */
    caption("subject1.txt", NULL);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/img/subject2.txt", g_dir);
    assert_int_equal(fs_mkdir_p(dir, err, sizeof err), 0);
    size_t n3;
    assert_null(train("bad", &n3, err, sizeof err));
    assert_non_null(strstr(err, "subject2.txt: a caption must be a text file"));
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_captions)};
    return cmocka_run_group_tests(tests, setup, teardown);
}

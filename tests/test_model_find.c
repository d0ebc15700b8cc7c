/* test_model_find.c — finding the shipped files (models/model.h): $KRONA_HOME
 * first, the current directory last, a message naming every folder looked
 * in; a preset's relative image found among the shipped files from another
 * folder (train_find_images); the built-in model without its weight files an
 * error naming where it looked, never random weights unless "tiny-random" is
 * asked for. (The executable's ../share/krona-studio: tests/cli/test_install.sh.) */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "models/model.h"
#include "training/train.h"

static char repo[PATH_MAX];   /* the tests run from the repository root */
static char home[PATH_MAX];   /* a $KRONA_HOME with models/demo/subject1.png */
static char empty[PATH_MAX];  /* a folder with nothing of ours */
static char shadow[PATH_MAX]; /* home's copy of the demo image */

static int setup(void **state) {
    if (!getcwd(repo, sizeof repo)) return -1;
    snprintf(home, sizeof home, "/tmp/krona_find_XXXXXX");
    if (!mkdtemp(home)) return -1;
    snprintf(empty, sizeof empty, "%s/empty", home);
    char err[256], dir[PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/models/demo", home);
    if (fs_mkdir_p(dir, err, sizeof err) != 0 || mkdir(empty, 0755) != 0) return -1;
    snprintf(shadow, sizeof shadow, "%s/models/demo/subject1.png", home);
    return fs_write_atomic(shadow, "x", 1, err, sizeof err);
}

static int teardown(void **state) {
    char p[PATH_MAX + 16];
    unlink(shadow);
    snprintf(p, sizeof p, "%s/models/demo", home);
    rmdir(p);
    snprintf(p, sizeof p, "%s/models", home);
    rmdir(p);
    rmdir(empty);
    rmdir(home);
    return chdir(repo);
}

static void test_order(void **state) {
    char out[PATH_MAX], want[PATH_MAX + 64];
    /* the current directory (the source tree) when nothing comes first */
    unsetenv("KRONA_HOME");
    assert_int_equal(model_find_data("models/demo/subject1.png", out, sizeof out), 0);
    snprintf(want, sizeof want, "%s/models/demo/subject1.png", repo);
    assert_string_equal(out, want);
    /* $KRONA_HOME before it */
    setenv("KRONA_HOME", home, 1);
    assert_int_equal(model_find_data("models/demo/subject1.png", out, sizeof out), 0);
    assert_string_equal(out, shadow);
    assert_int_equal(model_find_data("models/demo/subject2.png", out, sizeof out), 0); /* not in home */
    snprintf(want, sizeof want, "%s/models/demo/subject2.png", repo);
    assert_string_equal(out, want);
    assert_int_equal(model_find_data("models/demo/nosuch.png", out, sizeof out), -1);
    unsetenv("KRONA_HOME");
}

static void test_where(void **state) {
    char where[4 * PATH_MAX], exe[PATH_MAX], want[PATH_MAX + 64];
    assert_int_equal(fs_exe_dir(exe, sizeof exe), 0);
    unsetenv("KRONA_HOME");
    model_data_where(where, sizeof where);
    /* build/tests, build/share/krona-studio, the current folder */
    snprintf(want, sizeof want, "$KRONA_HOME (not set), %s, ", exe);
    assert_memory_equal(where, want, strlen(want));
    assert_non_null(strstr(where, "/share/krona-studio, "));
    snprintf(want, sizeof want, ", %s", repo);
    assert_string_equal(where + strlen(where) - strlen(want), want);
    setenv("KRONA_HOME", home, 1);
    model_data_where(where, sizeof where);
    snprintf(want, sizeof want, "%s, %s, ", home, exe);
    assert_memory_equal(where, want, strlen(want));
    unsetenv("KRONA_HOME");
}

static void test_input(void **state) {
    char out[PATH_MAX];
    /* there as given: unchanged */
    assert_int_equal(model_find_input("models/demo/subject3.png", out, sizeof out), 0);
    assert_string_equal(out, "models/demo/subject3.png");
    /* from another folder: among the shipped files, here $KRONA_HOME = the source tree */
    assert_int_equal(chdir(empty), 0);
    assert_int_equal(model_find_input("models/demo/subject3.png", out, sizeof out), -1);
    assert_string_equal(out, "models/demo/subject3.png");
    setenv("KRONA_HOME", repo, 1);
    char want[PATH_MAX + 64];
    assert_int_equal(model_find_input("models/demo/subject3.png", out, sizeof out), 0);
    snprintf(want, sizeof want, "%s/models/demo/subject3.png", repo);
    assert_string_equal(out, want);
    /* an absolute path is never looked for elsewhere */
    assert_int_equal(model_find_input("/models/demo/subject3.png", out, sizeof out), -1);
    assert_string_equal(out, "/models/demo/subject3.png");

    /* a preset's images: the found ones replaced, the others left to be named when loaded */
    Preset p;
    preset_defaults(&p);
    p.n_images = 2;
    snprintf(p.images[0], sizeof p.images[0], "models/demo/subject1.png");
    snprintf(p.images[1], sizeof p.images[1], "photos/mine.png");
    train_find_images(&p);
    snprintf(want, sizeof want, "%s/models/demo/subject1.png", repo);
    assert_string_equal(p.images[0], want);
    assert_string_equal(p.images[1], "photos/mine.png");
    unsetenv("KRONA_HOME");
    assert_int_equal(chdir(repo), 0);
}

static void test_tiny_without_weights(void **state) {
    Backend *be = backend_cpu_create();
    char err[4096];
    assert_int_equal(chdir(empty), 0);
    unsetenv("KRONA_HOME");
    Model *m = model_open("tiny", be, err, sizeof err);
    assert_null(m);
    printf("%s\n", err);
    char want[PATH_MAX + 64];
    assert_non_null(strstr(err, "models/tiny/unet.safetensors is in none of: $KRONA_HOME (not set), "));
    snprintf(want, sizeof want, ", %s; ", empty);
    assert_non_null(strstr(err, want));
    assert_null(strchr(err, '\n'));
    /* asked for: random weights, and the model says so */
    m = model_open(MODEL_TINY_RANDOM, be, err, sizeof err);
    assert_non_null(m);
    assert_int_equal(m->pretrained, 0);
    assert_non_null(strstr(m->note, "random weights"));
    model_free(m);
    /* found again: the shipped weights */
    setenv("KRONA_HOME", repo, 1);
    m = model_open("tiny", be, err, sizeof err);
    assert_non_null(m);
    assert_int_equal(m->pretrained, 1);
    snprintf(want, sizeof want, "pretrained weights from %s/models/tiny/unet.safetensors", repo);
    assert_string_equal(m->note, want);
    model_free(m);
    unsetenv("KRONA_HOME");
    /* its architecture is the tiny one, for info and the studio's counts */
    UNetConfig a, b;
    assert_int_equal(model_unet_config("tiny", &a, err, sizeof err), 0);
    assert_int_equal(model_unet_config(MODEL_TINY_RANDOM, &b, err, sizeof err), 0);
    assert_memory_equal(&a, &b, sizeof a);
    backend_destroy(be);
    assert_int_equal(chdir(repo), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_where),
        cmocka_unit_test(test_input),
        cmocka_unit_test(test_tiny_without_weights),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

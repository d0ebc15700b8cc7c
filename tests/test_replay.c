/* test_replay.c — core/replay.h's order of things, on a fake backend that
 * records: the first call runs the ops, the second records and replays them,
 * later calls replay; a stale recording runs once and is recorded again; two
 * failed recordings (or a backend that declines) stop recording with a
 * reason; a body that fails while recorded runs again for real; a backend
 * without recordings always runs. The CUDA backend's own side is in
 * tests/gpu/test_cuda_ops.c ('recordings'). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "core/replay.h"

static struct {
    int recording, decline, fail_ends, stale, body_rc;
    int ran, recorded, begins, replays, frees;
    char rec; /* its address is the recording */
} F;

static int f_begin(Backend *be) {
    (void)be;
    if (F.decline) return -1;
    F.recording = 1;
    F.begins++;
    return 0;
}
static void *f_end(Backend *be, char *why, size_t n) {
    (void)be;
    F.recording = 0;
    if (F.fail_ends > 0) {
        F.fail_ends--;
        snprintf(why, n, "planted failure");
        return NULL;
    }
    F.stale = 0;
    return &F.rec;
}
static int f_replay(Backend *be, void *rec) {
    (void)be;
    assert_ptr_equal(rec, &F.rec);
    if (F.stale) return -1;
    F.replays++;
    return 0;
}
static void f_free(Backend *be, void *rec) {
    (void)be;
    assert_ptr_equal(rec, &F.rec);
    F.frees++;
}
static int body(void *user) {
    (void)user;
    if (F.recording) F.recorded++;
    else F.ran++;
    return F.body_rc;
}
static Backend fake(int records) {
    memset(&F, 0, sizeof F);
    Backend be;
    memset(&be, 0, sizeof be);
    be.name = "fake";
    if (records) {
        be.record_begin = f_begin;
        be.record_end = f_end;
        be.replay = f_replay;
        be.record_free = f_free;
    }
    return be;
}

static void test_run_record_replay(void **state) {
    (void)state;
    Backend be = fake(1);
    Replay r = {0};
    assert_int_equal(replay_run(&be, &r, body, NULL), 0);
    assert_int_equal(F.ran, 1); /* first: the usual way */
    assert_int_equal(F.begins, 0);
    assert_int_equal(replay_run(&be, &r, body, NULL), 0);
    assert_int_equal(F.recorded, 1); /* second: recorded, then replayed (not run) */
    assert_int_equal(F.ran, 1);
    assert_int_equal(F.replays, 1);
    for (int i = 0; i < 5; i++) assert_int_equal(replay_run(&be, &r, body, NULL), 0);
    assert_int_equal(F.replays, 6);
    assert_int_equal(F.ran + F.recorded, 2);
    assert_int_equal(r.replays, 6);
    assert_false(replay_off(&r));
    replay_free(&be, &r);
    assert_int_equal(F.frees, 1);
    assert_null(r.rec);
}

static void test_stale_runs_then_records_again(void **state) {
    (void)state;
    Backend be = fake(1);
    Replay r = {0};
    replay_run(&be, &r, body, NULL);
    replay_run(&be, &r, body, NULL);
    F.stale = 1; /* memory it used was freed */
    assert_int_equal(replay_run(&be, &r, body, NULL), 0);
    assert_int_equal(F.frees, 1);
    assert_int_equal(F.ran, 2); /* ran the usual way */
    assert_int_equal(replay_run(&be, &r, body, NULL), 0);
    assert_int_equal(F.begins, 2); /* recorded again */
    assert_int_equal(F.recorded, 2);
    assert_int_equal(F.replays, 2);
    assert_false(replay_off(&r));
    replay_free(&be, &r);
}

static void test_two_failures_stop(void **state) {
    (void)state;
    Backend be = fake(1);
    Replay r = {0};
    F.fail_ends = 2;
    for (int i = 0; i < 4; i++) assert_int_equal(replay_run(&be, &r, body, NULL), 0);
    /* run, record (fails: run), run, record (fails: run) */
    assert_int_equal(F.begins, 2);
    assert_int_equal(F.ran, 4);
    assert_true(replay_off(&r));
    assert_string_equal(r.why, "planted failure");
    for (int i = 0; i < 3; i++) replay_run(&be, &r, body, NULL);
    assert_int_equal(F.begins, 2); /* stopped for good */
    assert_int_equal(F.ran, 7);
    assert_int_equal(F.replays, 0);
    replay_free(&be, &r);
}

static void test_declined(void **state) {
    (void)state;
    Backend be = fake(1);
    Replay r = {0};
    F.decline = 1;
    for (int i = 0; i < 3; i++) assert_int_equal(replay_run(&be, &r, body, NULL), 0);
    assert_int_equal(F.ran, 3);
    assert_true(replay_off(&r));
    assert_non_null(strstr(r.why, "declined"));
    replay_free(&be, &r);
}

static void test_body_error_runs_for_real(void **state) {
    (void)state;
    Backend be = fake(1);
    Replay r = {0};
    replay_run(&be, &r, body, NULL);
    F.body_rc = -1; /* e.g. the UNet's arena did not fit */
    assert_int_equal(replay_run(&be, &r, body, NULL), -1);
    assert_int_equal(F.recorded, 1);
    assert_int_equal(F.ran, 2); /* the error comes from a real run */
    assert_int_equal(F.frees, 1); /* the recording of a failed body is dropped */
    assert_null(r.rec);
    replay_free(&be, &r);
}

/* replay_news: one line once the outcome is known (recorded, or stopped), then nothing */
static void test_news(void **state) {
    (void)state;
    char line[512];
    Backend be = fake(1);
    Replay r = {0};
    replay_run(&be, &r, body, NULL); /* ran the usual way: nothing known yet */
    assert_int_equal(replay_news(&be, &r, "UNet pass", 1, line, sizeof line), 0);
    replay_run(&be, &r, body, NULL);
    assert_int_equal(replay_news(&be, &r, "UNet pass", 2, line, sizeof line), 1);
    assert_string_equal(line, "step 2: UNet pass recorded on fake, replayed as one launch from now on");
    replay_run(&be, &r, body, NULL);
    assert_int_equal(replay_news(&be, &r, "UNet pass", 3, line, sizeof line), 0); /* said once */
    replay_free(&be, &r);

    F.decline = 1;
    replay_run(&be, &r, body, NULL);
    replay_run(&be, &r, body, NULL);
    assert_int_equal(replay_news(&be, &r, "UNet pass", 2, line, sizeof line), 1);
    assert_string_equal(line, "UNet pass not recorded (runs op by op): fake backend declined to record");
    replay_free(&be, &r);

    Backend none = fake(0); /* a backend that never records has nothing to say */
    for (int i = 0; i < 3; i++) replay_run(&none, &r, body, NULL);
    assert_int_equal(replay_news(&none, &r, "UNet pass", 3, line, sizeof line), 0);
    replay_free(&none, &r);
}

static void test_no_recordings(void **state) {
    (void)state;
    Backend be = fake(0);
    Replay r = {0};
    for (int i = 0; i < 4; i++) assert_int_equal(replay_run(&be, &r, body, NULL), 0);
    assert_int_equal(F.ran, 4);
    assert_false(replay_off(&r));
    F.body_rc = -1;
    assert_int_equal(replay_run(&be, &r, body, NULL), -1);
    replay_free(&be, &r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_record_replay),
        cmocka_unit_test(test_stale_runs_then_records_again),
        cmocka_unit_test(test_two_failures_stop),
        cmocka_unit_test(test_declined),
        cmocka_unit_test(test_body_error_runs_for_real),
        cmocka_unit_test(test_no_recordings),
        cmocka_unit_test(test_news),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

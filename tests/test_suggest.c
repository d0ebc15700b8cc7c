/* test_suggest.c — "did you mean" (core/suggest.h): edit distances worked out
 * by hand (a swap of neighbours is one edit, case does not count), the
 * closeness limit at its edges, leading dashes ignored, long names never close. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "core/suggest.h"

static void test_distance(void **state) {
    assert_int_equal(suggest_distance("steps", "steps"), 0);
    assert_int_equal(suggest_distance("STEPS", "steps"), 0);
    assert_int_equal(suggest_distance("stpes", "steps"), 1);   /* e, p swapped */
    assert_int_equal(suggest_distance("step", "steps"), 1);    /* one left out */
    assert_int_equal(suggest_distance("stepps", "steps"), 1);  /* one too many */
    assert_int_equal(suggest_distance("seed", "size"), 3);     /* e->i, e->z, d->e */
    assert_int_equal(suggest_distance("", "abc"), 3);
    assert_int_equal(suggest_distance("ca", "abc"), 3);        /* a swap is not an edit of what it moved */
    char longname[80];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    assert_int_equal(suggest_distance(longname, "a"), 1000);
}

static void test_closest(void **state) {
    const char *opts[] = {"--steps", "--seed", "--size", "--sampler", "-o", "--headless", NULL};
    int n = 7; /* a NULL entry is skipped */
    assert_string_equal(suggest_closest("--stpes", opts, n), "--steps");
    assert_string_equal(suggest_closest("--headles", opts, n), "--headless");
    assert_string_equal(suggest_closest("-O", opts, n), "-o");
    assert_string_equal(suggest_closest("--sede", opts, n), "--seed");
    /* 4 characters or fewer: one edit at most ("sz" is two from "size") */
    assert_null(suggest_closest("--sz", opts, n));
    /* longer names: len/3 + 1 edits ("smplr" is 2 from "sampler", 5/3 + 1 = 2 allowed;
     * "smpr" is 3 from it, 1 allowed; "xampxex" is 3 from it, 7/3 + 1 = 3 allowed) */
    assert_string_equal(suggest_closest("--smplr", opts, n), "--sampler");
    assert_null(suggest_closest("--smpr", opts, n));
    assert_string_equal(suggest_closest("--xampxex", opts, n), "--sampler");
    assert_null(suggest_closest("--xampxexx", opts, n)); /* 4 edits, 8/3 + 1 = 3 allowed */
    assert_null(suggest_closest("--frobnicate", opts, n));
    assert_null(suggest_closest("--", opts, n));
    /* commands, without dashes */
    const char *cmds[] = {"train", "sample", "info", "merge", "sweep", "score", "pretrain"};
    assert_string_equal(suggest_closest("trian", cmds, 7), "train");
    assert_string_equal(suggest_closest("scroe", cmds, 7), "score");
    assert_null(suggest_closest("frobnicate", cmds, 7));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_distance),
        cmocka_unit_test(test_closest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

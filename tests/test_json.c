/* test_json.c — the JSON reader against hand-written expectations: values,
 * escapes (surrogate pairs to UTF-8 bytes written out by hand), errors with
 * byte offsets, depth limit, and json_escape round trips. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/json.h"

static JsonValue *parse_ok(const char *s) {
    char err[256] = "";
    JsonValue *v = json_parse(s, strlen(s), err, sizeof err);
    if (!v) fail_msg("parse failed for %s: %s", s, err);
    return v;
}

/* parse must fail and the message must contain want */
static void parse_bad(const char *s, size_t len, const char *want) {
    char err[256] = "";
    JsonValue *v = json_parse(s, len, err, sizeof err);
    if (v) { json_free(v); fail_msg("parse of '%s' should fail", s); }
    if (!strstr(err, want)) fail_msg("error for '%s' is '%s', expected to contain '%s'", s, err, want);
}

static void test_values(void **state) {
    JsonValue *v = parse_ok(" { \"a\" : [1, -0, 2.5e2, 1.5E-2, 0.1, -12], \"b\": true, \"c\": false, \"d\": null,"
                           " \"e\": {\"x\": {}}, \"f\": [], \"g\": \"hi\" } \n");
    assert_int_equal(v->type, JSON_OBJECT);
    assert_int_equal(v->n, 7);
    assert_string_equal(v->keys[0], "a");
    assert_string_equal(v->keys[6], "g");
    const JsonValue *a = json_get(v, "a");
    assert_non_null(a);
    assert_int_equal(a->type, JSON_ARRAY);
    assert_int_equal(a->n, 6);
    double want[] = { 1, 0, 250, 0.015, 0.1, -12 };
    for (int i = 0; i < 6; i++) {
        assert_int_equal(a->items[i].type, JSON_NUMBER);
        assert_true(a->items[i].number == want[i]);
    }
    assert_true(json_get(v, "b")->type == JSON_BOOL && json_get(v, "b")->boolean == 1);
    assert_true(json_get(v, "c")->type == JSON_BOOL && json_get(v, "c")->boolean == 0);
    assert_int_equal(json_get(v, "d")->type, JSON_NULL);
    const JsonValue *e = json_get(v, "e");
    assert_int_equal(json_get(e, "x")->type, JSON_OBJECT);
    assert_int_equal(json_get(e, "x")->n, 0);
    assert_int_equal(json_get(v, "f")->n, 0);
    assert_string_equal(json_get(v, "g")->string, "hi");
    assert_null(json_get(v, "missing"));
    assert_null(json_get(a, "a"));       /* not an object */
    assert_null(json_get(NULL, "a"));
    json_free(v);

    /* scalars at top level, and the length argument is honoured (no NUL needed) */
    v = parse_ok("3.25");
    assert_true(v->type == JSON_NUMBER && v->number == 3.25);
    json_free(v);
    char err[128];
    v = json_parse("[7]garbage", 3, err, sizeof err);
    assert_non_null(v);
    assert_int_equal(v->n, 1);
    assert_true(v->items[0].number == 7);
    json_free(v);
    /* large integers used as safetensors offsets stay exact */
    v = parse_ok("[9007199254740992, 123456789012]");
    assert_true(v->items[0].number == 9007199254740992.0);
    assert_true(v->items[1].number == 123456789012.0);
    json_free(v);
}

static void test_strings(void **state) {
    JsonValue *v = parse_ok("[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\", \"\\u00e9\\u20AC\", \"\\uD83D\\uDE00\", \"caf\xC3\xA9 \xF0\x9F\x98\x80\", \"\\u0041\"]");
    assert_string_equal(v->items[0].string, "\"\\/\b\f\n\r\t");
    /* U+00E9 = C3 A9, U+20AC = E2 82 AC, U+1F600 = F0 9F 98 80 */
    assert_string_equal(v->items[1].string, "\xC3\xA9\xE2\x82\xAC");
    assert_string_equal(v->items[2].string, "\xF0\x9F\x98\x80");
    assert_string_equal(v->items[3].string, "caf\xC3\xA9 \xF0\x9F\x98\x80");
    assert_string_equal(v->items[4].string, "A");
    json_free(v);
    /* highest code point U+10FFFF = \uDBFF\uDFFF = F4 8F BF BF */
    v = parse_ok("\"\\uDBFF\\uDFFF\"");
    assert_string_equal(v->string, "\xF4\x8F\xBF\xBF");
    json_free(v);
}

static void test_errors(void **state) {
    parse_bad("{\"a\" 1}", 7, "at byte 5: expected ':'");
    parse_bad("[1,]", 4, "at byte 3:");
    parse_bad("[1 2]", 5, "at byte 3: expected ',' or ']'");
    parse_bad("{\"a\":1,}", 8, "expected a string key");
    parse_bad("{\"a\":1 \"b\":2}", 13, "expected ',' or '}'");
    parse_bad("{1:2}", 5, "expected a string key");
    parse_bad("01", 2, "leading zero");
    parse_bad("1.", 2, "after '.'");
    parse_bad("-", 1, "expected a digit");
    parse_bad("1e", 2, "exponent");
    parse_bad("+1", 2, "unexpected '+'");
    parse_bad(".5", 2, "unexpected '.'");
    parse_bad("1e400", 5, "out of range");
    parse_bad("NaN", 3, "unexpected 'N'");
    parse_bad("tru", 3, "at byte 0");
    parse_bad("nulL", 4, "at byte 0");
    parse_bad("'a'", 3, "unexpected '''");
    parse_bad("\"abc", 4, "unterminated string");
    parse_bad("\"a\\", 3, "unterminated string");
    parse_bad("\"a\nb\"", 5, "control character");
    parse_bad("\"\\x41\"", 6, "invalid escape");
    parse_bad("\"\\u12G4\"", 8, "invalid hex digit");
    parse_bad("\"\\uD800\"", 8, "unpaired high surrogate");
    parse_bad("\"\\uDC00\"", 8, "unpaired low surrogate");
    parse_bad("\"\\uD800\\u0041\"", 14, "not followed by a low surrogate");
    parse_bad("\"\\u0000\"", 8, "\\u0000");
    parse_bad("\"\xFF\"", 3, "invalid UTF-8");
    parse_bad("\"\xC0\x80\"", 4, "invalid UTF-8");          /* overlong NUL */
    parse_bad("\"\xED\xA0\x80\"", 5, "invalid UTF-8");      /* encoded surrogate */
    parse_bad("\"\xE2\x82\"", 4, "invalid UTF-8");          /* cut sequence */
    parse_bad("{} x", 4, "at byte 3: unexpected 'x' after the JSON value");
    parse_bad("", 0, "at byte 0: unexpected end of input");
    parse_bad("   ", 3, "unexpected end of input");
    parse_bad("[1, 2", 5, "unterminated array");
    parse_bad("{\"a\": 1", 7, "unterminated object");
    parse_bad("[\"a\" : 1]", 9, "expected ',' or ']'");
    parse_bad("\x01", 1, "0x01");
    /* NULL text is just empty input */
    char err[64];
    assert_null(json_parse(NULL, 0, err, sizeof err));
    /* a tiny error buffer is fine */
    assert_null(json_parse("x", 1, err, 4));
    assert_int_equal(strlen(err), 3);
}

static void test_depth(void **state) {
    enum { N = 1000 };
    char *s = malloc(2 * N + 1);
    /* 100 levels parse */
    for (int i = 0; i < 100; i++) { s[i] = '['; s[200 - 1 - i] = ']'; }
    JsonValue *v = parse_ok((s[200] = 0, s));
    const JsonValue *it = v;
    int depth = 0;
    while (it->type == JSON_ARRAY && it->n == 1) { it = &it->items[0]; depth++; }
    assert_int_equal(depth, 99);
    assert_int_equal(it->n, 0);
    json_free(v);
    /* 1000 levels are refused, not a stack overflow */
    for (int i = 0; i < N; i++) { s[i] = '['; s[2 * N - 1 - i] = ']'; }
    s[2 * N] = 0;
    parse_bad(s, 2 * N, "nesting deeper than");
    free(s);
}

static void test_big_array(void **state) {
    enum { N = 20000 };
    char *s = malloc(N * 8 + 16);
    size_t k = 0;
    s[k++] = '[';
    for (int i = 0; i < N; i++) k += (size_t)sprintf(s + k, "%s%d", i ? "," : "", i * 3);
    s[k++] = ']';
    s[k] = 0;
    JsonValue *v = parse_ok(s);
    assert_int_equal(v->n, N);
    for (int i = 0; i < N; i++) assert_true(v->items[i].number == i * 3);
    json_free(v);
    free(s);
}

static void test_escape(void **state) {
    char buf[256];
    size_t n = json_escape(buf, sizeof buf, "a\"b\\c\n\x01\x1f/\xC3\xA9");
    assert_string_equal(buf, "\"a\\\"b\\\\c\\n\\u0001\\u001f/\xC3\xA9\"");
    assert_int_equal(n, strlen(buf));
    /* needed length without writing, and truncation keeps a NUL */
    assert_int_equal(json_escape(NULL, 0, "ab\""), 6);
    char small[4];
    assert_int_equal(json_escape(small, sizeof small, "abcdef"), 8);
    assert_string_equal(small, "\"ab");
    /* every ASCII byte 1..127 round-trips through escape + parse */
    char raw[128];
    for (int i = 1; i < 128; i++) raw[i - 1] = (char)i;
    raw[127] = 0;
    char big[1024];
    n = json_escape(big, sizeof big, raw);
    assert_true(n < sizeof big);
    JsonValue *v = parse_ok(big);
    assert_int_equal(v->type, JSON_STRING);
    assert_string_equal(v->string, raw);
    json_free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_big_array),
        cmocka_unit_test(test_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

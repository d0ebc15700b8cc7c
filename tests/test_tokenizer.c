/* test_tokenizer.c — byte tokenizer, padding/length errors, CLIP BPE on a tiny
 * hand-written merges file (ids worked out by hand), vocab.json checking, and
 * OpenAI's reference ids for 16 prompts when the CLIP vocabulary is present
 * ($KRONA_CLIP_DIR or ../shared/reference/clip; skipped otherwise). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/json.h"
#include "models/tokenizer.h"

static void assert_ids(const int32_t *got, int n_got, const int32_t *want, int n_want, const char *what)
{
    if (n_got != n_want) {
        print_error("%s: %d ids, expected %d\n", what, n_got, n_want);
        fail();
    }
    for (int i = 0; i < n_want; i++) {
        if (got[i] != want[i]) {
            print_error("%s: id %d is %d, expected %d\n", what, i, got[i], want[i]);
            fail();
        }
    }
}

/* ---------------- byte tokenizer ---------------- */

static void test_bytes(void **state)
{
    (void)state;
    Tokenizer *t = tok_create_bytes();
    assert_non_null(t);
    assert_int_equal(tok_vocab_size(t), 258);
    assert_int_equal(tok_bos(t), 256);
    assert_int_equal(tok_eos(t), 257);
    assert_int_equal(tok_pad(t), 257);
    assert_null(tok_token_str(t, 5));

    char err[256];
    int32_t ids[64];
    int n;
    /* lower-cased, whitespace collapsed and trimmed; rare words are just bytes */
    const char *p = "  A Photo\tof   SKS ";
    const char *want_text = "a photo of sks";
    assert_int_equal(tok_encode(t, p, ids, 64, &n, err, sizeof err), 0);
    int32_t want[64];
    int nw = (int)strlen(want_text);
    for (int i = 0; i < nw; i++) want[i] = (unsigned char)want_text[i];
    assert_ids(ids, n, want, nw, "bytes");

    /* non-ASCII: 'É' lowers to 'é' = C3 A9; '犬' stays E7 8A AC */
    assert_int_equal(tok_encode(t, "\xC3\x89\xE7\x8A\xAC", ids, 64, &n, err, sizeof err), 0);
    int32_t want2[] = {0xC3, 0xA9, 0xE7, 0x8A, 0xAC};
    assert_ids(ids, n, want2, 5, "bytes utf8");

    /* padded: [BOS, bytes, EOS, pad...] */
    int32_t pad[12];
    assert_int_equal(tok_encode_padded(t, "Dog", 12, pad, &n, err, sizeof err), 0);
    int32_t want3[12] = {256, 'd', 'o', 'g', 257, 257, 257, 257, 257, 257, 257, 257};
    assert_int_equal(n, 5);
    assert_ids(pad, 12, want3, 12, "bytes padded");

    /* a different pad id is honoured */
    tok_set_pad(t, 0);
    assert_int_equal(tok_encode_padded(t, "dog", 8, pad, &n, err, sizeof err), 0);
    int32_t want4[8] = {256, 'd', 'o', 'g', 257, 0, 0, 0};
    assert_ids(pad, 8, want4, 8, "bytes pad 0");

    /* empty prompt: BOS EOS pad */
    tok_set_pad(t, 257);
    assert_int_equal(tok_encode_padded(t, "   ", 4, pad, &n, err, sizeof err), 0);
    int32_t want5[4] = {256, 257, 257, 257};
    assert_ids(pad, 4, want5, 4, "bytes empty");
    tok_free(t);
}

/* ---------------- length and input errors ---------------- */

static void test_errors(void **state)
{
    (void)state;
    Tokenizer *t = tok_create_bytes();
    char err[256];
    int32_t ids[16];
    int n = -1;

    /* exactly context_len - 2 tokens fit, EOS last, no pad */
    assert_int_equal(tok_encode_padded(t, "abcdef", 8, ids, &n, err, sizeof err), 0);
    assert_int_equal(n, 8);
    assert_int_equal(ids[0], 256);
    assert_int_equal(ids[6], 'f');
    assert_int_equal(ids[7], 257);

    /* one more is an error naming the prompt, the count and the limit */
    err[0] = 0;
    assert_int_equal(tok_encode_padded(t, "abcdefg", 8, ids, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "\"abcdefg\""));
    assert_non_null(strstr(err, "has 7 tokens; the model takes at most 6"));
    assert_non_null(strstr(err, "shorten it"));

    /* long prompts are shown cut, not whole */
    char longp[200];
    memset(longp, 'x', 150);
    longp[150] = 0;
    assert_int_equal(tok_encode_padded(t, longp, 16, ids, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "has 150 tokens; the model takes at most 14"));
    assert_non_null(strstr(err, "..."));

    /* tok_encode: counts everything, writes what fits, says it did not fit */
    assert_int_equal(tok_encode(t, "hello world", ids, 4, &n, err, sizeof err), -1);
    assert_int_equal(n, 11);
    assert_int_equal(ids[3], 'l');
    assert_int_equal(tok_encode(t, "hello world", NULL, 0, &n, err, sizeof err), -1);
    assert_int_equal(n, 11);

    /* invalid UTF-8 (a lone continuation byte, a truncated sequence, a surrogate) */
    assert_int_equal(tok_encode(t, "ab\x80", ids, 16, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "UTF-8"));
    assert_int_equal(tok_encode(t, "\xE7\x8A", ids, 16, &n, err, sizeof err), -1);
    assert_int_equal(tok_encode(t, "\xED\xA0\x80", ids, 16, &n, err, sizeof err), -1);

    /* context too small for BOS+EOS */
    assert_int_equal(tok_encode_padded(t, "", 1, ids, &n, err, sizeof err), -1);
    tok_free(t);

    /* missing files */
    assert_null(tok_create_clip("/nonexistent/merges.txt", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/merges.txt"));
}

/* ---------------- CLIP BPE on a tiny merges file ---------------- */

/* Merges (rank r gives id 512 + r); specials follow: BOS 518, EOS 519. */
static const char *tiny_merges =
    "#version: 0.2\n"
    "l o\n"        /* 512 lo      */
    "lo w</w>\n"   /* 513 low</w> */
    "e r</w>\n"    /* 514 er</w>  */
    "n e\n"        /* 515 ne      */
    "ne w\n"       /* 516 new     */
    "w e\n";       /* 517 we      */

/* Byte ids in bytes_to_unicode order: '!'..'~' are 0..93, so an ASCII
 * printable c is c - 33, and c - 33 + 256 at the end of a word. */
#define A(c) ((c) - 33)
#define AW(c) ((c) - 33 + 256)

static char tmpdir[256];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/krona_tok_XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void check_prompt(const Tokenizer *t, const char *prompt, const int32_t *want, int nw)
{
    int32_t ids[64];
    int n;
    char err[256];
    if (tok_encode(t, prompt, ids, 64, &n, err, sizeof err) != 0) {
        print_error("\"%s\": %s\n", prompt, err);
        fail();
    }
    assert_ids(ids, n, want, nw, prompt);
}

static void test_bpe_tiny(void **state)
{
    (void)state;
    make_tmpdir();
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/merges.txt", tmpdir);
    write_file(path, tiny_merges);
    Tokenizer *t = tok_create_clip(path, err, sizeof err);
    if (!t) print_error("%s\n", err);
    assert_non_null(t);
    assert_int_equal(tok_vocab_size(t), 520);
    assert_int_equal(tok_bos(t), 518);
    assert_int_equal(tok_eos(t), 519);
    assert_int_equal(tok_pad(t), 519);
    assert_string_equal(tok_token_str(t, A('a')), "a");
    assert_string_equal(tok_token_str(t, AW('a')), "a</w>");
    assert_string_equal(tok_token_str(t, 513), "low</w>");
    assert_string_equal(tok_token_str(t, 518), "<|startoftext|>");
    /* byte 0x20 is not printable: it maps to U+0120 'Ġ' (C4 A0); non-printables
     * 0..32 come after the 188 printable bytes */
    assert_string_equal(tok_token_str(t, 188 + 32), "\xC4\xA0");

    /* low: (l,o) r0 -> lo w</w> -> (lo,w</w>) r1 -> low</w> */
    check_prompt(t, "low", (int32_t[]){513}, 1);
    /* lower: l o w e r</w> -> r0 lo | r2 er</w> ; (lo,w) and (w,er</w>) are no merges */
    check_prompt(t, "LOWER", (int32_t[]){512, A('w'), 514}, 3);
    /* newer: r2 er</w>, r3 ne, r4 new */
    check_prompt(t, "newer", (int32_t[]){516, 514}, 2);
    /* lolo: only the first (l,o) is a pair, the second o carries </w> */
    check_prompt(t, "lolo", (int32_t[]){512, A('l'), AW('o')}, 3);
    /* every occurrence of the best pair merges in one step, left to right */
    check_prompt(t, "lolol", (int32_t[]){512, 512, AW('l')}, 3);
    /* wewe: w e w e</w> -- only the first pair is (w,e), the last e carries </w> */
    check_prompt(t, "wewe", (int32_t[]){517, A('w'), AW('e')}, 3);
    /* contractions, punctuation runs, single digits, words split by spaces */
    check_prompt(t, "it's", (int32_t[]){A('i'), AW('t'), A('\''), AW('s')}, 4);
    check_prompt(t, "they'll", (int32_t[]){A('t'), A('h'), A('e'), AW('y'), A('\''), A('l'), AW('l')}, 7);
    check_prompt(t, "!!  a1", (int32_t[]){A('!'), AW('!'), AW('a'), AW('1')}, 4);
    check_prompt(t, "12", (int32_t[]){AW('1'), AW('2')}, 2);
    check_prompt(t, "x''s", (int32_t[]){AW('x'), A('\''), AW('\''), AW('s')}, 4);
    /* 'é' is a letter: bytes C3 A9 -> ids 106 + (0xC3 - 0xAE), 94 + (0xA9 - 0xA1) + 256 */
    check_prompt(t, "\xC3\xA9", (int32_t[]){127, 358}, 2);
    check_prompt(t, "n\xC3\xA9", (int32_t[]){A('n'), 127, 358}, 3);
    /* '—' (E2 80 94) is punctuation: a word of its own. E2 -> 106+52, 80 -> 188+128-...:
     * bytes 0..32 are 188..220, 127..160 are 221..254, 0xAD is 255 */
    check_prompt(t, "a\xE2\x80\x94" "b", (int32_t[]){AW('a'), 106 + 0xE2 - 0xAE, 221 + 0x80 - 127, 256 + 221 + 0x94 - 127, AW('b')}, 5);
    /* specials are recognised only at a token start */
    check_prompt(t, "<|startoftext|>low<|endoftext|>", (int32_t[]){518, 513, 519}, 3);
    check_prompt(t, "!<|endoftext|>", (int32_t[]){A('!'), A('<'), AW('|'), A('e'), A('n'), A('d'), A('o'), A('f'), A('t'), A('e'), A('x'), AW('t'), A('|'), AW('>')}, 14);

    int32_t ids[8];
    int n;
    assert_int_equal(tok_encode_padded(t, "low newer", 8, ids, &n, err, sizeof err), 0);
    int32_t want[8] = {518, 513, 516, 514, 519, 519, 519, 519};
    assert_ids(ids, 8, want, 8, "tiny padded");
    tok_free(t);

    /* the folder works as well as the file */
    t = tok_create_clip(tmpdir, err, sizeof err);
    assert_non_null(t);
    tok_free(t);

    /* a file that is not a merges file */
    write_file(path, "#version: 0.2\nabc\n");
    assert_null(tok_create_clip(path, err, sizeof err));
    assert_non_null(strstr(err, "line 2"));
    unlink(path);
    rmdir(tmpdir);
}

/* An independent bytes_to_unicode for writing vocab.json. */
static void put_utf8(unsigned c, char **o)
{
    if (c < 0x80) *(*o)++ = (char)c;
    else { *(*o)++ = (char)(0xC0 | (c >> 6)); *(*o)++ = (char)(0x80 | (c & 0x3F)); }
}

static void write_vocab_json(const char *path, int swap)
{
    static char names[520][32];
    int k = 0;
    unsigned cs[256];
    int bs[256], nb = 0;
    for (int b = 33; b <= 126; b++) bs[nb++] = b;
    for (int b = 161; b <= 172; b++) bs[nb++] = b;
    for (int b = 174; b <= 255; b++) bs[nb++] = b;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int found = 0;
        for (int i = 0; i < 188; i++) found |= bs[i] == b;
        if (!found) bs[nb++] = b, cs[b] = 256 + (unsigned)extra++;
        else cs[b] = (unsigned)b;
    }
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 256; i++) {
            char *o = names[k];
            put_utf8(cs[bs[i]], &o);
            *o = 0;
            if (w) strcat(names[k], "</w>");
            k++;
        }
    const char *merged[] = {"lo", "low</w>", "er</w>", "ne", "new", "we", "<|startoftext|>", "<|endoftext|>"};
    for (int i = 0; i < 8; i++) strcpy(names[k++], merged[i]);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputc('{', f);
    for (int i = 0; i < 520; i++) {
        char esc[80];
        json_escape(esc, sizeof esc, names[i]);
        int id = i;
        if (swap && i == 512) id = 513;
        else if (swap && i == 513) id = 512;
        fprintf(f, "%s%s: %d", i ? ", " : "", esc, id);
    }
    fputs("}\n", f);
    fclose(f);
}

static void test_vocab_json(void **state)
{
    (void)state;
    make_tmpdir();
    char mpath[512], vpath[512], err[512];
    snprintf(mpath, sizeof mpath, "%s/merges.txt", tmpdir);
    snprintf(vpath, sizeof vpath, "%s/vocab.json", tmpdir);
    write_file(mpath, tiny_merges);

    write_vocab_json(vpath, 0);
    Tokenizer *t = tok_create_clip(mpath, err, sizeof err);
    if (!t) print_error("%s\n", err);
    assert_non_null(t);
    tok_free(t);

    write_vocab_json(vpath, 1);
    t = tok_create_clip(mpath, err, sizeof err);
    assert_null(t);
    assert_non_null(strstr(err, "vocab.json"));
    assert_non_null(strstr(err, "\"lo\""));

    write_file(vpath, "{\"a\": 0}");
    assert_null(tok_create_clip(mpath, err, sizeof err));
    assert_non_null(strstr(err, "has 1 tokens"));

    unlink(vpath);
    unlink(mpath);
    rmdir(tmpdir);
}

/* ---------------- OpenAI's reference ids ---------------- */

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    fclose(f);
    if (b) b[n] = 0;
    *len = (size_t)n;
    return b;
}

static void test_clip_golden(void **state)
{
    (void)state;
    const char *dir = getenv("KRONA_CLIP_DIR");
    if (!dir || !*dir) dir = "../shared/reference/clip";
    char vpath[512], gpath[512], err[512];
    snprintf(vpath, sizeof vpath, "%s/bpe_simple_vocab_16e6.txt.gz", dir);
    snprintf(gpath, sizeof gpath, "%s/clip_tokenizer_golden.json", dir);
    struct stat st;
    if (stat(vpath, &st) != 0 || stat(gpath, &st) != 0) {
        printf("skipping the CLIP golden: %s or %s not found (set KRONA_CLIP_DIR to the folder "
               "holding bpe_simple_vocab_16e6.txt.gz and clip_tokenizer_golden.json)\n", vpath, gpath);
        skip();
    }
    Tokenizer *t = tok_create_clip(vpath, err, sizeof err);
    if (!t) print_error("%s\n", err);
    assert_non_null(t);
    assert_int_equal(tok_vocab_size(t), 49408);
    assert_int_equal(tok_bos(t), 49406);
    assert_int_equal(tok_eos(t), 49407);
    assert_int_equal(tok_pad(t), 49407);
    assert_string_equal(tok_token_str(t, 320), "a</w>");

    size_t len = 0;
    char *text = read_all(gpath, &len);
    assert_non_null(text);
    JsonValue *g = json_parse(text, len, err, sizeof err);
    free(text);
    if (!g) print_error("%s: %s\n", gpath, err);
    assert_non_null(g);
    assert_int_equal((int)json_get(g, "bos")->number, 49406);
    assert_int_equal((int)json_get(g, "eos")->number, 49407);
    const JsonValue *cases = json_get(g, "cases");
    assert_non_null(cases);
    assert_int_equal(cases->n, 16);
    int32_t ids[256], want[256];
    for (int c = 0; c < cases->n; c++) {
        const char *prompt = json_get(&cases->items[c], "prompt")->string;
        const JsonValue *w = json_get(&cases->items[c], "ids");
        for (int i = 0; i < w->n; i++) want[i] = (int32_t)w->items[i].number;
        int n;
        if (tok_encode(t, prompt, ids, 256, &n, err, sizeof err) != 0) {
            print_error("case %d \"%s\": %s\n", c, prompt, err);
            fail();
        }
        assert_ids(ids, n, want, w->n, prompt);

        /* SD's 77-token context: BOS, ids, EOS, EOS padding, or the length error */
        int32_t pad[77];
        int np;
        int rc = tok_encode_padded(t, prompt, 77, pad, &np, err, sizeof err);
        if (w->n <= 75) {
            assert_int_equal(rc, 0);
            assert_int_equal(np, w->n + 2);
            assert_int_equal(pad[0], 49406);
            for (int i = 0; i < w->n; i++) assert_int_equal(pad[1 + i], want[i]);
            for (int i = w->n + 1; i < 77; i++) assert_int_equal(pad[i], 49407);
        } else {
            assert_int_equal(rc, -1);
            char expect[96];
            snprintf(expect, sizeof expect, "has %d tokens; the model takes at most 75", w->n);
            assert_non_null(strstr(err, expect));
        }
    }
    json_free(g);
    tok_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_bpe_tiny),
        cmocka_unit_test(test_vocab_json),
        cmocka_unit_test(test_clip_golden),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

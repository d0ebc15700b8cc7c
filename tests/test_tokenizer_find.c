/* test_tokenizer_find.c — CLIP's vocabulary is found where SD users have it,
 * in the documented order, and its absence is one line naming the places and
 * the command that fetches it. Each case builds a fake $HOME under build/. */
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
#include "models/tokenizer.h"

static char g_home[256];

static void touch(const char *rel) {
    char path[1024], dir[1024], err[256];
    snprintf(path, sizeof path, "%s/%s", g_home, rel);
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = 0;
    assert_int_equal(fs_mkdir_p(dir, err, sizeof err), 0);
    assert_int_equal(fs_write_atomic(path, "#version: 0.2\n", 14, err, sizeof err), 0);
}

static int setup(void **state) {
    snprintf(g_home, sizeof g_home, "%s/build/test-tokfind-%d", getenv("PWD") ? getenv("PWD") : ".", (int)getpid());
    char err[256];
    if (fs_mkdir_p(g_home, err, sizeof err) != 0) return -1;
    setenv("HOME", g_home, 1);
    unsetenv("HF_HOME");
    unsetenv("HF_HUB_CACHE");
    unsetenv("COMFYUI_PATH");
    unsetenv("KRONA_TOKENIZER");
    return 0;
}
static int teardown(void **state) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_home);
    return system(cmd) == 0 ? 0 : -1;
}

static void expect_found(const char *model_dir, const char *want_rel) {
    char out[1024], err[1024], want[1024];
    int rc = tok_find_clip(NULL, model_dir, out, sizeof out, err, sizeof err);
    if (rc != 0) fail_msg("not found: %s", err);
    snprintf(want, sizeof want, "%s/%s", g_home, want_rel);
    assert_string_equal(out, want);
}

static void test_nothing_anywhere(void **state) {
    char out[1024], err[1024];
    assert_int_equal(tok_find_clip(NULL, NULL, out, sizeof out, err, sizeof err), -1);
    assert_non_null(strstr(err, "no CLIP tokenizer vocabulary found"));
    assert_non_null(strstr(err, "huggingface-cli download openai/clip-vit-large-patch14 merges.txt vocab.json"));
    assert_non_null(strstr(err, "--tokenizer DIR"));
    assert_null(strchr(err, '\n'));
}

/* later places are found alone; each earlier one added then wins */
static void test_order(void **state) {
    touch(".local/lib/python3.11/site-packages/open_clip/bpe_simple_vocab_16e6.txt.gz");
    expect_found(NULL, ".local/lib/python3.11/site-packages/open_clip/bpe_simple_vocab_16e6.txt.gz");
    touch("stable-diffusion-webui/venv/lib/python3.10/site-packages/open_clip/bpe_simple_vocab_16e6.txt.gz");
    expect_found(NULL, "stable-diffusion-webui/venv/lib/python3.10/site-packages/open_clip/bpe_simple_vocab_16e6.txt.gz");
    touch("ComfyUI/comfy/sd1_tokenizer/merges.txt");
    expect_found(NULL, "ComfyUI/comfy/sd1_tokenizer/merges.txt");
    touch(".cache/huggingface/hub/models--stable-diffusion-v1-5--stable-diffusion-v1-5/snapshots/ab12/tokenizer/merges.txt");
    expect_found(NULL, ".cache/huggingface/hub/models--stable-diffusion-v1-5--stable-diffusion-v1-5/snapshots/ab12/tokenizer/merges.txt");
    touch(".cache/huggingface/hub/models--openai--clip-vit-large-patch14/snapshots/cd34/merges.txt");
    expect_found(NULL, ".cache/huggingface/hub/models--openai--clip-vit-large-patch14/snapshots/cd34/merges.txt");
    /* $HF_HOME moves the cache */
    touch("hf/hub/models--openai--clip-vit-large-patch14/snapshots/ef56/merges.txt");
    char hf[512];
    snprintf(hf, sizeof hf, "%s/hf", g_home);
    setenv("HF_HOME", hf, 1);
    expect_found(NULL, "hf/hub/models--openai--clip-vit-large-patch14/snapshots/ef56/merges.txt");
    /* the model's own folder beats every cache */
    touch("models/sd15/tokenizer/merges.txt");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/sd15", g_home);
    expect_found(dir, "models/sd15/tokenizer");
    unsetenv("HF_HOME");
}

static void test_explicit_and_env(void **state) {
    char out[1024], err[1024], path[512];
    touch("mine/merges.txt");
    snprintf(path, sizeof path, "%s/mine", g_home);
    assert_int_equal(tok_find_clip(path, NULL, out, sizeof out, err, sizeof err), 0);
    assert_string_equal(out, path);
    /* an explicit path that is not there is an error, not a search */
    assert_int_equal(tok_find_clip("/nonexistent/tok", NULL, out, sizeof out, err, sizeof err), -1);
    assert_string_equal(err, "--tokenizer /nonexistent/tok: not found (give a folder with merges.txt, or bpe_simple_vocab_16e6.txt.gz)");
    setenv("KRONA_TOKENIZER", path, 1);
    assert_int_equal(tok_find_clip(NULL, NULL, out, sizeof out, err, sizeof err), 0);
    assert_string_equal(out, path);
    unsetenv("KRONA_TOKENIZER");
}

/* what the search finds is what tok_create_clip reads: the real vocabulary, when the
 * project's reference copy is present */
static void test_found_file_loads(void **state) {
    const char *ref = "../shared/reference/clip/bpe_simple_vocab_16e6.txt.gz";
    if (!fs_exists(ref)) { printf("skipped: %s not present\n", ref); skip(); }
    char dst[512], cmd[1200], out[1024], err[1024];
    snprintf(dst, sizeof dst, "%s/.local/lib/python3.12/site-packages/open_clip", g_home);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s' '%s/'", dst, ref, dst);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(tok_find_clip(NULL, NULL, out, sizeof out, err, sizeof err), 0);
    Tokenizer *t = tok_create_clip(out, err, sizeof err);
    if (!t) fail_msg("%s", err);
    assert_int_equal(tok_vocab_size(t), 49408);
    tok_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_nothing_anywhere, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_explicit_and_env, setup, teardown),
        cmocka_unit_test_setup_teardown(test_found_file_loads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

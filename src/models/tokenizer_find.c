/* tokenizer_find.c — where CLIP's BPE vocabulary is on a machine that runs
 * Stable Diffusion already. The vocabulary is OpenAI's and not ours to ship, but
 * almost every SD user has a copy: in the model's diffusers folder, in the
 * Hugging Face cache (transformers and diffusers put it there), in ComfyUI's
 * source tree, or in the open_clip / clip Python packages AUTOMATIC1111
 * installs into its venv. The places are data (one table below), tried in order. */
#include "models/tokenizer.h"

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"

/* Patterns under a root; "*" segments are globbed. A folder holding merges.txt
 * (diffusers tokenizer/) or the gzip file itself are both accepted by
 * tok_create_clip. */
typedef struct { const char *root_env, *root_home, *pattern; } Place;

static const Place PLACES[] = {
    /* Hugging Face cache: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub */
    {"HF_HUB_CACHE", NULL, "models--openai--clip-vit-large-patch14/snapshots/*/merges.txt"},
    {"HF_HUB_CACHE", NULL, "models--*stable-diffusion-v1-5/snapshots/*/tokenizer/merges.txt"},
    {"HF_HUB_CACHE", NULL, "models--stabilityai--stable-diffusion-xl-base-1.0/snapshots/*/tokenizer/merges.txt"},
    {"HF_HOME", NULL, "hub/models--openai--clip-vit-large-patch14/snapshots/*/merges.txt"},
    {"HF_HOME", NULL, "hub/models--*stable-diffusion-v1-5/snapshots/*/tokenizer/merges.txt"},
    {"HF_HOME", NULL, "hub/models--stabilityai--stable-diffusion-xl-base-1.0/snapshots/*/tokenizer/merges.txt"},
    {NULL, ".cache/huggingface/hub", "models--openai--clip-vit-large-patch14/snapshots/*/merges.txt"},
    {NULL, ".cache/huggingface/hub", "models--*stable-diffusion-v1-5/snapshots/*/tokenizer/merges.txt"},
    {NULL, ".cache/huggingface/hub", "models--stabilityai--stable-diffusion-xl-base-1.0/snapshots/*/tokenizer/merges.txt"},
    /* ComfyUI ships the SD 1.x tokenizer in its source tree */
    {"COMFYUI_PATH", NULL, "comfy/sd1_tokenizer/merges.txt"},
    {NULL, "ComfyUI", "comfy/sd1_tokenizer/merges.txt"},
    {NULL, "comfyui", "comfy/sd1_tokenizer/merges.txt"},
    /* AUTOMATIC1111's venv carries open_clip (and often OpenAI's clip) */
    {NULL, "stable-diffusion-webui", "venv/lib/python3*/site-packages/open_clip/bpe_simple_vocab_16e6.txt.gz"},
    {NULL, "stable-diffusion-webui", "venv/lib/python3*/site-packages/clip/bpe_simple_vocab_16e6.txt.gz"},
    /* the same packages installed for the user or the system */
    {NULL, ".local", "lib/python3*/site-packages/open_clip/bpe_simple_vocab_16e6.txt.gz"},
    {NULL, NULL, "/usr/lib/python3/dist-packages/open_clip/bpe_simple_vocab_16e6.txt.gz"},
    {NULL, NULL, "/usr/local/lib/python3*/dist-packages/open_clip/bpe_simple_vocab_16e6.txt.gz"},
};

/* the first existing match of root/pattern (glob order: sorted) */
static int first_match(const char *root, const char *pattern, char *out, size_t n) {
    char pat[4096];
    if (root) snprintf(pat, sizeof pat, "%s/%s", root, pattern);
    else snprintf(pat, sizeof pat, "%s", pattern);
    glob_t g;
    int found = 0;
    if (glob(pat, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc && !found; i++)
            if (fs_exists(g.gl_pathv[i])) {
                snprintf(out, n, "%s", g.gl_pathv[i]);
                found = 1;
            }
        globfree(&g);
    }
    return found;
}

int tok_find_clip(const char *explicit_path, const char *model_dir, char *out, size_t n,
                  char *err, size_t errlen) {
    if (explicit_path && explicit_path[0]) {
        if (fs_exists(explicit_path)) {
            snprintf(out, n, "%s", explicit_path);
            return 0;
        }
        err_set(err, errlen, "--tokenizer %s: not found (give a folder with merges.txt, or "
                             "bpe_simple_vocab_16e6.txt.gz)", explicit_path);
        return -1;
    }
    if (model_dir && model_dir[0]) {
        char p[4096];
        snprintf(p, sizeof p, "%s/tokenizer/merges.txt", model_dir);
        if (fs_exists(p)) {
            snprintf(out, n, "%s/tokenizer", model_dir);
            return 0;
        }
        snprintf(p, sizeof p, "%s/merges.txt", model_dir);
        if (fs_exists(p)) {
            snprintf(out, n, "%s", model_dir);
            return 0;
        }
    }
    const char *env = getenv("KRONA_TOKENIZER");
    if (env && env[0]) {
        if (fs_exists(env)) {
            snprintf(out, n, "%s", env);
            return 0;
        }
        err_set(err, errlen, "KRONA_TOKENIZER=%s: not found", env);
        return -1;
    }
    const char *home = getenv("HOME");
    for (size_t i = 0; i < sizeof PLACES / sizeof PLACES[0]; i++) {
        const Place *pl = &PLACES[i];
        char root[4096];
        if (pl->root_env) {
            const char *r = getenv(pl->root_env);
            if (!r || !r[0]) continue;
            snprintf(root, sizeof root, "%s", r);
        } else if (pl->root_home) {
            if (!home || !home[0]) continue;
            snprintf(root, sizeof root, "%s/%s", home, pl->root_home);
        }
        if (first_match(pl->root_env || pl->root_home ? root : NULL, pl->pattern, out, n)) return 0;
    }
    err_set(err, errlen,
            "no CLIP tokenizer vocabulary found (looked in %s%sKRONA_TOKENIZER, the Hugging Face "
            "cache, ComfyUI and AUTOMATIC1111 installs, open_clip packages): fetch it with "
            "`huggingface-cli download openai/clip-vit-large-patch14 merges.txt vocab.json` "
            "and run again, or give --tokenizer DIR",
            model_dir && model_dir[0] ? model_dir : "", model_dir && model_dir[0] ? "/tokenizer, " : "");
    return -1;
}

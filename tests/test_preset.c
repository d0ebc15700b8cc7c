/* test_preset.c — defaults, presets/default.ini, error messages (unknown keys
 * with suggestions, ranges, malformed lines), exact save/load round trips, --set. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_helpers.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include "formats/preset.h"

static char ini[512];

static int setup(void **state) {
    if (th_tmpdir_make("preset") != 0) return -1;
    snprintf(ini, sizeof ini, "%s/P.ini", tmpdir);
    return 0;
}
static int teardown(void **state) { return th_tmpdir_remove(); }

static void write_ini(const char *text) {
    FILE *f = fopen(ini, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* zero-filled copy, so presets compare with memcmp */
static void put(char *dst, size_t cap, const char *s) {
    size_t n = strlen(s);
    memset(dst, 0, cap);
    memcpy(dst, s, n < cap ? n : cap - 1);
}
#define PUT(field, s) put(field, sizeof(field), s)

static void test_defaults(void **state) {
    Preset p;
    char err[256] = "";
    preset_defaults(&p);
    if (preset_validate(&p, err, sizeof err)) fail_msg("%s", err);
    assert_string_equal(p.model, "tiny");
    assert_string_equal(p.device, "auto");
    assert_string_equal(p.adapter, "krona");
    assert_int_equal(p.a1, 4);
    assert_int_equal(p.a2, 4);
    assert_int_equal(p.lora_rank, 4);
    assert_true(p.lora_alpha == 4.0f);
    assert_string_equal(p.modules, "attn");
    assert_true(p.lr == 6e-4f);
    assert_string_equal(p.lr_schedule, "constant");
    assert_int_equal(p.iterations, 500);
    assert_int_equal(p.batch, 1);
    assert_int_equal(p.grad_accum, 1);
    assert_true(p.weight_decay == 1e-2f);
    assert_int_equal(p.seed, 42);
    assert_int_equal(p.checkpoint_every, 100);
    assert_string_equal(p.prediction, "auto");
    assert_string_equal(p.vae_tiling, "auto");
    assert_int_equal(p.sample_every, 100);
    assert_string_equal(p.sampler, "ddim");
    assert_int_equal(p.sample_steps, 25);
    assert_true(p.guidance == 5.0f);
    assert_int_equal(p.resolution, 32);
    assert_int_equal(p.flip, 0);
    assert_true(p.prior_weight == 0.0f);
    assert_int_equal(p.n_class_images, 0);
    assert_string_equal(p.output_dir, "runs");
    assert_int_equal(p.n_images, 0);
    assert_int_equal(p.n_sample_prompts, 0);
}

static void test_default_ini(void **state) {
    Preset p, want;
    char err[256] = "";
    preset_defaults(&p);
    p.n_images = 7;   /* the file's image lines replace whatever was there */
    if (preset_load(&p, "presets/default.ini", err, sizeof err)) fail_msg("%s", err);
    if (preset_validate(&p, err, sizeof err)) fail_msg("%s", err);
    preset_defaults(&want);
    want.n_images = 4;
    /* "../models/demo/..." in the file, relative to presets/: the repository's, absolute */
    char root[PATH_MAX];
    assert_non_null(realpath(".", root));
    for (int i = 0; i < 4; i++) {
        char s[PATH_MAX + 64];
        snprintf(s, sizeof s, "%s/models/demo/subject%d.png", root, i + 1);
        PUT(want.images[i], s);
    }
    PUT(want.instance_prompt, "a sks cat");
    PUT(want.class_prompt, "a cat");
    want.n_sample_prompts = 2;
    PUT(want.sample_prompts[0], "a sks cat");
    PUT(want.sample_prompts[1], "a sks cat on a blue background");
    assert_memory_equal(&p, &want, sizeof p);
}

/* load must fail with exactly this message (after "<path>:") */
static void expect_error(const char *text, const char *want) {
    Preset p, before;
    char err[512] = "", full[700];
    preset_defaults(&p);
    before = p;
    write_ini(text);
    assert_int_equal(preset_load(&p, ini, err, sizeof err), -1);
    snprintf(full, sizeof full, "%s:%s", ini, want);
    if (strcmp(err, full) != 0) fail_msg("for\n%s\ngot  '%s'\nwant '%s'", text, err, full);
    assert_memory_equal(&p, &before, sizeof p);   /* nothing applied on error */
}

/* load must fail and the message must contain the line prefix and want */
static void expect_error_sub(const char *text, int line, const char *want) {
    Preset p;
    char err[512] = "", prefix[600];
    preset_defaults(&p);
    write_ini(text);
    assert_int_equal(preset_load(&p, ini, err, sizeof err), -1);
    snprintf(prefix, sizeof prefix, "%s:%d: ", ini, line);
    if (strncmp(err, prefix, strlen(prefix)) != 0) fail_msg("'%s' does not start with '%s'", err, prefix);
    if (!strstr(err, want)) fail_msg("'%s' does not contain '%s'", err, want);
}

static void test_unknown_keys(void **state) {
    expect_error("[model]\nmodel = tiny\n\n[train]\n# comment\nlr = 1e-3\n; another\n\n\n\n\nlerning_rate = 1e-3\n",
                 "12: unknown key 'lerning_rate' in [train] (did you mean 'lr'?)");
    expect_error("[train]\nitterations = 5\n", "2: unknown key 'itterations' in [train] (did you mean 'iterations'?)");
    expect_error("[sample]\nguidance_scale = 3\n", "2: unknown key 'guidance_scale' in [sample] (did you mean 'guidance'?)");
    expect_error("[data]\nlr = 1e-3\n", "2: unknown key 'lr' in [data] (it belongs in [train])");
    expect_error("[train]\nzzzzzz = 1\n", "2: unknown key 'zzzzzz' in [train]");
    expect_error("[trian]\nlr = 1\n", "1: unknown section [trian] (did you mean [train]?)");
    expect_error("[weird]\n", "1: unknown section [weird] (sections: model, data, adapter, train, sample, output)");
    expect_error("lr = 1\n[train]\n", "1: key 'lr' before any section (put it under [train])");
    expect_error("[train]\nlr = 1e-3\nthis line has no equals sign\n",
                 "3: malformed line 'this line has no equals sign' (expected 'key = value' or '[section]')");
    expect_error("[train\nlr = 1\n", "1: malformed section header (missing ']')");
}

static void test_ranges(void **state) {
    struct { const char *text; const char *want; } c[] = {
        { "[adapter]\na1 = 0\n", "a1 = '0': out of range, allowed 1..4096" },
        { "[adapter]\na2 = 4097\n", "a2 = '4097': out of range, allowed 1..4096" },
        { "[train]\nlr = 0\n", "lr = '0': out of range, allowed (0, 1]" },
        { "[train]\nlr = 1.5\n", "lr = '1.5': out of range, allowed (0, 1]" },
        { "[train]\nlr = 6e-4x\n", "lr = '6e-4x': not a number" },
        { "[train]\nlr = nan\n", "lr = 'nan': not a finite number" },
        { "[train]\nlr = inf\n", "lr = 'inf': not a finite number" },
        { "[train]\nlr =\n", "lr = '': not a number" },
        { "[train]\niterations = 0\n", "iterations = '0': out of range, allowed 1..1000000" },
        { "[train]\niterations = 1000001\n", "iterations = '1000001': out of range, allowed 1..1000000" },
        { "[train]\niterations = 1.5\n", "iterations = '1.5': not an integer" },
        { "[train]\niterations = 99999999999999999999\n", "out of range, allowed 1..1000000" },
        { "[train]\nbatch = 65\n", "batch = '65': out of range, allowed 1..64" },
        { "[train]\nseed = -1\n", "seed = '-1': must not be negative" },
        { "[train]\nseed = 18446744073709551616\n", "seed = '18446744073709551616': out of range" },
        { "[train]\nlr_schedule = cosine\n", "lr_schedule = 'cosine': must be one of: constant, warmup" },
        { "[train]\nprediction = x0\n", "prediction = 'x0': must be one of: auto, epsilon, v" },
        { "[data]\nresolution = 12\n", "resolution = '12': must be a multiple of 8" },
        { "[data]\nresolution = 4104\n", "resolution = '4104': out of range, allowed 8..4096" },
        { "[data]\nflip = 2\n", "flip = '2': not a boolean" },
        { "[data]\nbuckets = 2\n", "buckets = '2': not a boolean" },
        { "[data]\nbucket_step = 4160\n", "bucket_step = '4160': out of range, allowed 0..4096" },
        { "[data]\nbucket_step = -64\n", "bucket_step = '-64': out of range, allowed 0..4096" },
        { "[sample]\nguidance = 50.5\n", "guidance = '50.5': out of range, allowed [0, 50]" },
        { "[sample]\nsample_steps = 0\n", "sample_steps = '0': out of range, allowed 1..1000" },
        { "[sample]\nsampler = plms\n", "sampler = 'plms': must be one of: ddim, euler" },
        { "[adapter]\nmodules = ffn\n", "modules = 'ffn': must be one of: attn, attn+ffn" },
        { "[adapter]\nadapter = lokr\n", "adapter = 'lokr': must be one of: krona, lora" },
        { "[model]\ndevice = tpu\n", "device = 'tpu': must be one of: auto, cpu, cuda" },
        { "[output]\nexport_dtype = fp16\n", "export_dtype = 'fp16': must be one of: f32, f16, bf16" },
        { "[model]\nvae_tiling = yes\n", "vae_tiling = 'yes': must be one of: auto, on, off" },
        { "[data]\ninstance_prompt = \"unterminated\n", "unterminated quote" },
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) expect_error_sub(c[i].text, 2, c[i].want);

    /* a text longer than its field */
    char text[1200];
    int k = snprintf(text, sizeof text, "[data]\ninstance_prompt = ");
    memset(text + k, 'x', 300);
    strcpy(text + k + 300, "\n");
    expect_error_sub(text, 2, "too long (at most 255 characters)");
    /* more than PRESET_MAX_IMAGES images */
    k = snprintf(text, sizeof text, "[data]\n");
    for (int i = 0; i < PRESET_MAX_IMAGES + 1; i++) k += snprintf(text + k, sizeof text - (size_t)k, "image = img%d.png\n", i);
    expect_error_sub(text, PRESET_MAX_IMAGES + 2, "image = 'img16.png': too many entries (at most 16)");
}

static void test_syntax_variants(void **state) {
    /* BOM, CRLF, indentation, inline comments, key:value, bool words */
    write_ini("\xEF\xBB\xBF[train]\r\n   lr = 0.001 ; inline comment\r\n\titerations: 20\r\n[data]\r\nflip = yes\r\n"
              "  image = a.png\n  image = b.png\n");
    Preset p;
    char err[256] = "";
    preset_defaults(&p);
    if (preset_load(&p, ini, err, sizeof err)) fail_msg("%s", err);
    assert_true(p.lr == 0.001f);
    assert_int_equal(p.iterations, 20);
    assert_int_equal(p.flip, 1);
    assert_int_equal(p.n_images, 2);
    char want_b[600], real_tmp[PATH_MAX];
    assert_non_null(realpath(tmpdir, real_tmp));
    snprintf(want_b, sizeof want_b, "%s/b.png", real_tmp);   /* relative to the preset's folder */
    assert_string_equal(p.images[1], want_b);
    /* "image =" with nothing clears the list */
    write_ini("[data]\nimage =\n");
    if (preset_load(&p, ini, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(p.n_images, 0);
    /* missing file */
    char missing[600];
    snprintf(missing, sizeof missing, "%s/none.ini", tmpdir);
    assert_int_equal(preset_load(&p, missing, err, sizeof err), -1);
    assert_non_null(strstr(err, missing));
}

static void test_roundtrip(void **state) {
    Preset p, q;
    char err[256] = "", path2[600];
    preset_defaults(&p);
    PUT(p.model, "/models/some dir/sd15");
    PUT(p.device, "cuda");
    p.n_images = PRESET_MAX_IMAGES;
    for (int i = 0; i < PRESET_MAX_IMAGES; i++) {
        char s[PRESET_PATH_MAX];
        snprintf(s, sizeof s, "/data/img_%02d.png", i);
        PUT(p.images[i], s);
    }
    /* a 511-character path (longer than inih's line buffer) */
    char longp[PRESET_PATH_MAX];
    memset(longp, 'p', PRESET_PATH_MAX - 1);
    longp[0] = '/';
    longp[PRESET_PATH_MAX - 1] = 0;
    PUT(p.images[3], longp);
    PUT(p.instance_prompt, "  a sks dog; \"quoted\" \\ back ;x  ");
    PUT(p.class_prompt, "\"a dog\"");
    PUT(p.class_dir, "");
    p.n_class_images = 200;
    p.prior_weight = 1.0f;
    p.resolution = 512;
    p.flip = 1;
    PUT(p.adapter, "lora");
    p.a1 = 16;
    p.a2 = 64;
    p.lora_rank = 8;
    p.lora_alpha = 0.1f + 1e-9f;
    PUT(p.modules, "attn+ffn");
    p.lr = nextafterf(1e-4f, 1.0f);
    PUT(p.lr_schedule, "warmup");
    p.warmup_steps = 50;
    p.iterations = 1000;
    p.batch = 4;
    p.grad_accum = 2;
    p.weight_decay = 3.3333333e-3f;
    p.seed = 18446744073709551615ull;
    p.checkpoint_every = 0;
    PUT(p.prediction, "v");
    PUT(p.vae_tiling, "off");
    p.sample_every = 0;
    p.n_sample_prompts = PRESET_MAX_SAMPLES;
    for (int i = 0; i < PRESET_MAX_SAMPLES; i++) {
        char s[64];
        snprintf(s, sizeof s, "prompt number %d; with = and : and #", i);
        PUT(p.sample_prompts[i], s);
    }
    PUT(p.sampler, "euler");
    p.sample_steps = 50;
    p.guidance = 7.5f;
    PUT(p.output_dir, "out/runs");
    PUT(p.run_name, "my-run");
    if (preset_validate(&p, err, sizeof err)) fail_msg("%s", err);
    if (preset_save(&p, ini, err, sizeof err)) fail_msg("%s", err);
    preset_defaults(&q);
    if (preset_load(&q, ini, err, sizeof err)) fail_msg("%s", err);
    assert_memory_equal(&p, &q, sizeof p);
    /* stable output: saving what was loaded gives the same bytes */
    snprintf(path2, sizeof path2, "%s/Q.ini", tmpdir);
    assert_int_equal(preset_save(&q, path2, err, sizeof err), 0);
    size_t n1, n2;
    char *a = fs_read_all(ini, FS_TEXT_MAX, &n1, err, sizeof err), *b = fs_read_all(path2, FS_TEXT_MAX, &n2, err, sizeof err);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    assert_non_null(strstr(a, "\nlr = "));
    assert_non_null(strstr(a, "\nguidance = 7.5\n"));   /* shortest digits that round-trip */
    free(a);
    free(b);

    /* random floats within range survive exactly (shortest-digit printing must round-trip) */
    uint32_t s = 12345;
    for (int it = 0; it < 150; it++) {
        s = s * 1664525u + 1013904223u;
        float u = (float)(s >> 8) / 16777216.0f;   /* [0, 1) */
        p.lr = u > 0 ? u : 0.5f;
        p.guidance = u * 50.0f;
        p.weight_decay = u * u;
        p.lora_alpha = 1.0f + u * 1000.0f;
        p.prior_weight = u * 1e-3f;
        if (preset_save(&p, ini, err, sizeof err)) fail_msg("%s", err);
        preset_defaults(&q);
        if (preset_load(&q, ini, err, sizeof err)) fail_msg("%s", err);
        if (memcmp(&p, &q, sizeof p) != 0) fail_msg("round trip differs at iteration %d (lr %.9g)", it, p.lr);
    }
    /* empty lists round-trip too (written as "image =") */
    preset_defaults(&p);
    if (preset_save(&p, ini, err, sizeof err)) fail_msg("%s", err);
    preset_defaults(&q);
    q.n_images = 1;
    PUT(q.images[0], "x.png");
    memset(q.images[0], 0, sizeof q.images[0]);
    q.n_images = 0;
    if (preset_load(&q, ini, err, sizeof err)) fail_msg("%s", err);
    assert_memory_equal(&p, &q, sizeof p);
    /* a newline inside a text would inject keys into the file: refused */
    PUT(p.instance_prompt, "a dog\nlr = 1");
    assert_int_equal(preset_save(&p, ini, err, sizeof err), -1);
    assert_non_null(strstr(err, "data.instance_prompt"));
    assert_int_equal(preset_set(&p, "prompt=x\ny", err, sizeof err), -1);
    assert_non_null(strstr(err, "control characters"));
    /* no temp files left by the atomic writes */
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    while ((e = readdir(d))) assert_null(strstr(e->d_name, ".tmp."));
    closedir(d);
}

static void test_set(void **state) {
    Preset p, before;
    char err[256] = "";
    preset_defaults(&p);
    assert_int_equal(preset_set(&p, "train.lr=1e-3", err, sizeof err), 0);
    assert_true(p.lr == 1e-3f);
    assert_int_equal(preset_set(&p, "lr=2e-3", err, sizeof err), 0);
    assert_true(p.lr == 2e-3f);
    assert_int_equal(preset_set(&p, " batch = 8 ", err, sizeof err), 0);
    assert_int_equal(p.batch, 8);
    assert_int_equal(preset_set(&p, "instance_prompt=a sks dog", err, sizeof err), 0);
    assert_string_equal(p.instance_prompt, "a sks dog");
    assert_int_equal(preset_set(&p, "adapter.a1=16", err, sizeof err), 0);
    assert_int_equal(p.a1, 16);
    assert_int_equal(preset_set(&p, "image=a.png", err, sizeof err), 0);
    assert_int_equal(preset_set(&p, "data.image+=b.png", err, sizeof err), 0);
    assert_int_equal(p.n_images, 2);
    assert_string_equal(p.images[0], "a.png");
    assert_string_equal(p.images[1], "b.png");
    assert_int_equal(preset_set(&p, "image=c.png", err, sizeof err), 0);   /* '=' replaces the list */
    assert_int_equal(p.n_images, 1);
    assert_string_equal(p.images[0], "c.png");
    assert_int_equal(preset_set(&p, "seed=18446744073709551615", err, sizeof err), 0);
    assert_true(p.seed == 18446744073709551615ull);

    before = p;
    struct { const char *a; const char *want; } c[] = {
        { "lr=abc", "--set lr=abc: not a number" },
        { "train.lr=2", "--set train.lr=2: out of range, allowed (0, 1]" },
        { "lerning_rate=1e-3", "--set lerning_rate=1e-3: unknown key 'lerning_rate' (did you mean 'lr'?)" },
        { "data.lr=1", "--set data.lr=1: unknown key 'lr' in [data] (it belongs in [train])" },
        { "trian.lr=1", "--set trian.lr=1: unknown section [trian] (sections: model, data, adapter, train, sample, output)" },
        { "lr", "--set lr: expected key=value or section.key=value" },
        { "=3", "--set =3: expected key=value or section.key=value" },
        { "a1+=3", "--set a1+=3: '+=' only works for list keys (image, prompt)" },
        { "resolution=100", "--set resolution=100: must be a multiple of 8 (the latent/UNet downsampling needs it), allowed 8..4096" },
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        assert_int_equal(preset_set(&p, c[i].a, err, sizeof err), -1);
        if (strcmp(err, c[i].want) != 0) fail_msg("got '%s'\nwant '%s'", err, c[i].want);
    }
    assert_memory_equal(&p, &before, sizeof p);
}

static void test_validate(void **state) {
    Preset p;
    char err[256] = "";
    preset_defaults(&p);
    p.batch = 0;
    assert_int_equal(preset_validate(&p, err, sizeof err), -1);
    assert_string_equal(err, "train.batch = 0: out of range, allowed 1..64");
    preset_defaults(&p);
    p.lr = -1.0f;
    assert_int_equal(preset_validate(&p, err, sizeof err), -1);
    assert_non_null(strstr(err, "train.lr = -1: out of range, allowed (0, 1]"));
    preset_defaults(&p);
    PUT(p.sampler, "plms");
    assert_int_equal(preset_validate(&p, err, sizeof err), -1);
    assert_non_null(strstr(err, "sample.sampler = 'plms': must be one of: ddim, euler"));
    preset_defaults(&p);
    PUT(p.lr_schedule, "warmup");
    p.warmup_steps = 600;
    assert_int_equal(preset_validate(&p, err, sizeof err), -1);
    assert_non_null(strstr(err, "must not exceed train.iterations (500)"));
    preset_defaults(&p);
    p.prior_weight = 1.0f;
    assert_int_equal(preset_validate(&p, err, sizeof err), -1);
    assert_non_null(strstr(err, "needs data.class_prompt"));
    preset_defaults(&p);
    PUT(p.run_name, "a/b");
    assert_int_equal(preset_validate(&p, err, sizeof err), -1);
    assert_non_null(strstr(err, "output.run_name"));
    preset_defaults(&p);
    PUT(p.model, "");
    assert_int_equal(preset_validate(&p, err, sizeof err), -1);
    assert_non_null(strstr(err, "model.model = '': must not be empty"));
    preset_defaults(&p);
    p.n_images = 1;
    assert_int_equal(preset_validate(&p, err, sizeof err), -1);
    assert_non_null(strstr(err, "entry 1 is empty"));
    preset_defaults(&p);
    memset(p.device, 'x', sizeof p.device);   /* unterminated field */
    assert_int_equal(preset_validate(&p, err, sizeof err), -1);
    assert_non_null(strstr(err, "not terminated"));
}

/* Every presets/ablation-*.ini loads, validates, and sets the knob its name says
 * (ablation-lr-2e-3.ini: lr = 2e-3; -factors-4x32: a1 4, a2 32; -iters-N; -shots-N;
 * -modules-attn / -modules-attn-ffn); everything else is the default preset's. */
static void test_ablation_presets(void **state) {
    (void)state;
    Preset def;
    char err[256] = "";
    preset_defaults(&def);
    if (preset_load(&def, "presets/default.ini", err, sizeof err)) fail_msg("%s", err);
    DIR *d = opendir("presets");
    assert_non_null(d);
    int seen = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        if (strncmp(n, "ablation-", 9) != 0 || len < 13 || strcmp(n + len - 4, ".ini") != 0) continue;
        char path[300], knob[64];
        snprintf(path, sizeof path, "presets/%s", n);
        snprintf(knob, sizeof knob, "%.*s", (int)(len - 13), n + 9);
        Preset p, want = def;
        preset_defaults(&p);
        if (preset_load(&p, path, err, sizeof err)) fail_msg("%s: %s", path, err);
        if (preset_validate(&p, err, sizeof err)) fail_msg("%s: %s", path, err);
        int a1, a2, k;
        if (!strncmp(knob, "lr-", 3)) {
            want.lr = strtof(knob + 3, NULL);
            if (!(want.lr > 0)) fail_msg("%s: no lr in the name", path);
        } else if (sscanf(knob, "factors-%dx%d", &a1, &a2) == 2) {
            want.a1 = a1; want.a2 = a2;
        } else if (sscanf(knob, "iters-%d", &k) == 1) {
            want.iterations = k;
        } else if (sscanf(knob, "shots-%d", &k) == 1) {
            want.n_images = k;
            for (int i = k; i < PRESET_MAX_IMAGES; i++) memset(want.images[i], 0, sizeof want.images[i]);
        } else if (!strcmp(knob, "modules-attn") || !strcmp(knob, "modules-attn-ffn")) {
            memset(want.modules, 0, sizeof want.modules);
            snprintf(want.modules, sizeof want.modules, "%s", knob[12] ? "attn+ffn" : "attn");
        } else {
            fail_msg("%s: unknown ablation (lr-, factors-AxB, iters-, shots-, modules-)", path);
        }
        if (memcmp(&p, &want, sizeof p) != 0) fail_msg("%s differs from default.ini in more than %s", path, knob);
        seen++;
    }
    closedir(d);
    assert_true(seen >= 16);
}
/* A key set twice is an error naming both lines; list keys (image, prompt) add
 * up. Fuzz-style: the default preset's lines shuffled with one key repeated. */
static void test_duplicate_keys(void **state) {
    expect_error("[train]\nlr = 1e-3\nbatch = 2\n\nlr = 2e-3\n",
                 "5: 'lr' is set twice in [train] (first on line 2): keep one of the two lines");
    expect_error("[model]\nmodel = tiny\n[data]\nresolution = 32\n[model]\nmodel: tiny\n",
                 "6: 'model' is set twice in [model] (first on line 2): keep one of the two lines");
    expect_error("[data]\nclass_dir =\nclass_dir =\n",
                 "3: 'class_dir' is set twice in [data] (first on line 2): keep one of the two lines");
    /* list keys repeat by design */
    write_ini("[data]\nimage = /a.png\nimage = /b.png\n[sample]\nprompt = x\nprompt = y\n[data]\nimage = /c.png\n");
    Preset p;
    char err[512] = "";
    preset_defaults(&p);
    if (preset_load(&p, ini, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(p.n_images, 3);
    assert_string_equal(p.images[2], "/c.png");
    assert_int_equal(p.n_sample_prompts, 2);

    /* every non-list key of a saved preset, repeated once at a random later place */
    preset_defaults(&p);
    char saved[600];
    snprintf(saved, sizeof saved, "%s/dup_src.ini", tmpdir);
    if (preset_save(&p, saved, err, sizeof err)) fail_msg("%s", err);
    size_t n;
    char *text = fs_read_all(saved, FS_TEXT_MAX, &n, err, sizeof err);
    assert_non_null(text);
    char *lines[200];
    int nl = 0;
    for (char *s = strtok(text, "\n"); s && nl < 200; s = strtok(NULL, "\n")) lines[nl++] = s;
    uint32_t rs = 7;
    int tried = 0;
    for (int i = 0; i < nl; i++) {
        if (lines[i][0] == '#' || lines[i][0] == '[' || !strchr(lines[i], '=')) continue;
        if (!strncmp(lines[i], "image", 5) || !strncmp(lines[i], "prompt", 6)) continue;
        /* the copy goes right after a later line of the same section */
        int end = i + 1;
        while (end < nl && lines[end][0] != '[') end++;
        rs = rs * 1664525u + 1013904223u;
        int at = i + 1 + (int)((rs >> 8) % (uint32_t)(end - i));   /* insert before line index `at` */
        char buf[8192];
        size_t k = 0;
        int dup_line = 0, first_line = 0, ln = 0;
        for (int j = 0; j <= nl; j++) {
            if (j == at) { k += (size_t)snprintf(buf + k, sizeof buf - k, "%s\n", lines[i]); dup_line = ++ln; }
            if (j == nl) break;
            k += (size_t)snprintf(buf + k, sizeof buf - k, "%s\n", lines[j]);
            ln++;
            if (j == i) first_line = ln;
        }
        char want[200], key[64];
        snprintf(key, sizeof key, "%.*s", (int)strcspn(lines[i], " ="), lines[i]);
        char section[32] = "";
        for (int j = i; j >= 0; j--)
            if (lines[j][0] == '[') { snprintf(section, sizeof section, "%.*s", (int)strcspn(lines[j] + 1, "]"), lines[j] + 1); break; }
        snprintf(want, sizeof want, "%d: '%s' is set twice in [%s] (first on line %d): keep one of the two lines",
                 dup_line, key, section, first_line);
        expect_error(buf, want);
        tried++;
    }
    assert_true(tried >= 30);
    free(text);
    unlink(saved);
}

/* Paths in a preset file are relative to its folder; --set ones to the working
 * directory; saved presets (and so run folders) hold them absolute. */
static void test_relative_paths(void **state) {
    char dir[600], path[700], err[512] = "", real_tmp[PATH_MAX], want[PATH_MAX + 64];
    assert_non_null(realpath(tmpdir, real_tmp));
    snprintf(dir, sizeof dir, "%s/sub", tmpdir);
    assert_int_equal(fs_mkdir_p(dir, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/P.ini", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("[model]\nmodel = m/model.safetensors\ntokenizer = ./tok\n[data]\nimage = ../a.png\n"
          "image = b.png\nimage = /abs/c.png\nclass_dir = classes\n[output]\noutput_dir = out\n", f);
    fclose(f);
    Preset p;
    preset_defaults(&p);
    if (preset_load(&p, path, err, sizeof err)) fail_msg("%s", err);
    snprintf(want, sizeof want, "%s/sub/m/model.safetensors", real_tmp);
    assert_string_equal(p.model, want);
    snprintf(want, sizeof want, "%s/sub/tok", real_tmp);
    assert_string_equal(p.tokenizer, want);
    snprintf(want, sizeof want, "%s/a.png", real_tmp);
    assert_string_equal(p.images[0], want);
    snprintf(want, sizeof want, "%s/sub/b.png", real_tmp);
    assert_string_equal(p.images[1], want);
    assert_string_equal(p.images[2], "/abs/c.png");
    snprintf(want, sizeof want, "%s/sub/classes", real_tmp);
    assert_string_equal(p.class_dir, want);
    assert_string_equal(p.output_dir, "out");          /* the working directory's */

    /* built-in model names and empty values name no file */
    f = fopen(path, "wb");
    fputs("[model]\nmodel = sd15\ntokenizer =\n[data]\nclass_dir =\n", f);
    fclose(f);
    preset_defaults(&p);
    if (preset_load(&p, path, err, sizeof err)) fail_msg("%s", err);
    assert_string_equal(p.model, "sd15");
    assert_string_equal(p.tokenizer, "");
    assert_string_equal(p.class_dir, "");

    /* the old way (run folders of earlier versions): relative to the working directory */
    f = fopen(path, "wb");
    fputs("[data]\nimage = models/demo/subject1.png\n", f);
    fclose(f);
    preset_defaults(&p);
    if (preset_load_from(&p, path, NULL, err, sizeof err)) fail_msg("%s", err);
    char cwd[PATH_MAX];
    assert_non_null(realpath(".", cwd));
    snprintf(want, sizeof want, "%s/models/demo/subject1.png", cwd);
    assert_string_equal(p.images[0], want);

    /* --set: the working directory's, kept as given; saving writes it absolute */
    assert_int_equal(preset_set(&p, "image=rel/x.png", err, sizeof err), 0);
    assert_string_equal(p.images[0], "rel/x.png");
    assert_int_equal(preset_set(&p, "model=tiny", err, sizeof err), 0);
    if (preset_save(&p, path, err, sizeof err)) fail_msg("%s", err);
    size_t n;
    char *text = fs_read_all(path, FS_TEXT_MAX, &n, err, sizeof err);
    assert_non_null(text);
    snprintf(want, sizeof want, "\nimage = %s/rel/x.png\n", cwd);
    if (!strstr(text, want)) fail_msg("saved preset lacks '%s':\n%s", want, text);
    assert_non_null(strstr(text, "\nmodel = tiny\n"));
    assert_non_null(strstr(text, "\noutput_dir = runs\n"));
    free(text);
    /* ... and reads back the same from anywhere */
    Preset q;
    preset_defaults(&q);
    if (preset_load(&q, path, err, sizeof err)) fail_msg("%s", err);
    snprintf(want, sizeof want, "%s/rel/x.png", cwd);
    assert_string_equal(q.images[0], want);

    /* a relative path too long once joined to the folder: one line naming the key */
    char longrel[PRESET_PATH_MAX];
    memset(longrel, 'q', sizeof longrel - 20);
    longrel[sizeof longrel - 20] = 0;
    f = fopen(path, "wb");
    fprintf(f, "[data]\nimage = %s\n", longrel);
    fclose(f);
    preset_defaults(&p);
    assert_int_equal(preset_load(&p, path, err, sizeof err), -1);
    assert_non_null(strstr(err, ":2: image = 'qqqq"));
    assert_non_null(strstr(err, "the path is longer than 511 characters"));
    unlink(path);
    rmdir(dir);
}

/* A 10,000-character value: the error shows its start, an ellipsis, its length
 * and always the reason (from the file and from --set). */
static void test_long_values(void **state) {
    static char big[10100];
    memset(big, 'x', 10000);
    big[10000] = 0;
    char a[10200], err[512] = "";
    snprintf(a, sizeof a, "instance_prompt=%s", big);
    Preset p;
    preset_defaults(&p);
    assert_int_equal(preset_set(&p, a, err, sizeof err), -1);
    assert_true(strlen(err) < 300);
    assert_non_null(strstr(err, "--set instance_prompt=xxxx"));
    assert_non_null(strstr(err, "\u2026 (10016 characters): too long (at most 255 characters)"));
    /* every key, a long value: the reason is always there */
    const char *ks[] = {"model", "image", "lr", "seed", "sampler", "flip", "iterations", "run_name"};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        snprintf(a, sizeof a, "%s=%s", ks[i], big);
        assert_int_equal(preset_set(&p, a, err, sizeof err), -1);
        if (strlen(err) > 300 || !strstr(err, "characters): ")) fail_msg("--set %s=<10000 x>: '%s'", ks[i], err);
    }
    char text[10200];
    snprintf(text, sizeof text, "[data]\ninstance_prompt = %s\n", big);
    expect_error_sub(text, 2, "instance_prompt = 'xxxx");
    expect_error_sub(text, 2, "\u2026' (10000 characters): too long (at most 255 characters)");
    /* a short one is shown whole, unshortened */
    assert_int_equal(preset_set(&p, "lr=abc", err, sizeof err), -1);
    assert_string_equal(err, "--set lr=abc: not a number");
}

/* One rule for seeds (rng_parse_seed): presets, --set and every --seed. */
static void test_seeds(void **state) {
    struct { const char *s; int ok; unsigned long long v; const char *why; } c[] = {
        {"0", 1, 0, NULL}, {"+5", 1, 5, NULL}, {" 7 ", 1, 7, NULL},
        {"18446744073709551615", 1, 18446744073709551615ull, NULL},
        {"-1", 0, 0, "must not be negative"}, {"-0", 0, 0, "must not be negative"},
        {"18446744073709551616", 0, 0, "out of range"}, {"99999999999999999999999", 0, 0, "out of range"},
        {"1e3", 0, 0, "not an integer"}, {"12abc", 0, 0, "not an integer"}, {"", 0, 0, "not a number"},
        {"abc", 0, 0, "not a number"}, {"0x10", 0, 0, "not an integer"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        uint64_t v = 12345;
        char why[128] = "", a[64], err[256];
        int r = rng_parse_seed(c[i].s, &v, why, sizeof why);
        if (c[i].ok) {
            if (r != 0 || v != c[i].v) fail_msg("seed '%s': %s", c[i].s, why);
        } else {
            if (r == 0 || !strstr(why, c[i].why)) fail_msg("seed '%s': got '%s', want '%s'", c[i].s, why, c[i].why);
            assert_true(v == 12345);
        }
        /* the preset agrees */
        Preset p;
        preset_defaults(&p);
        snprintf(a, sizeof a, "seed=%s", c[i].s);
        assert_int_equal(preset_set(&p, a, err, sizeof err), c[i].ok ? 0 : -1);
        if (c[i].ok) assert_true(p.seed == c[i].v);
        else assert_non_null(strstr(err, c[i].why));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_default_ini),
        cmocka_unit_test(test_ablation_presets),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_syntax_variants),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_set),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_relative_paths),
        cmocka_unit_test(test_long_values),
        cmocka_unit_test(test_seeds),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

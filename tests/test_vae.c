/* test_vae.c — the VAE (src/models/vae.c) against PyTorch goldens
 * (tests/golden/vae_*, from gen_vae_golden.py: an independent torch AutoencoderKL),
 * the parameter table of the SD VAE against its published count, the strict
 * config.json reader, the weight loader (missing / mis-shaped tensors named,
 * old attention names, prefixes, 1x1-conv linears), the memory plan against
 * what the passes allocate, and tiled encode / decode against a blend of
 * untiled tiles written here from the documented rule (vae.h). */
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
#include "formats/safetensors.h"
#include "models/vae.h"
#include "guard_backend.h"

/* max |a - b| / max |b| (NaN in a: infinite) */
static double rel_err(const float *a, const float *b, int64_t n) {
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > md || d != d) md = d != d ? INFINITY : d;
        if (fabs(b[i]) > mr) mr = fabs(b[i]);
    }
    return mr > 0 ? md / mr : md;
}

/* ---------------------------------------------------------------- goldens */

typedef struct {
    SafeTensors *st;
    VAEConfig cfg;
    Backend *be;
    VAE *v;
    int N, H, W, h, w, f;
    char path[256];
} Golden;

static float *gt_read(SafeTensors *st, const char *name, int64_t *n) {
    const StTensor *t = st_find(st, name);
    if (!t) fail_msg("golden tensor '%s' missing", name);
    float *p = malloc((size_t)t->numel * sizeof *p);
    assert_non_null(p);
    assert_int_equal(st_read_f32(t, p), 0);
    if (n) *n = t->numel;
    return p;
}

static int meta_int(SafeTensors *st, const char *k) {
    const char *v = st_metadata(st, k);
    if (!v) fail_msg("golden metadata '%s' missing", k);
    return atoi(v);
}

static void golden_open(Golden *g, const char *stem) {
    memset(g, 0, sizeof *g);
    char path[256], err[512];
    snprintf(path, sizeof path, "tests/golden/%s.json", stem);
    if (vae_config_from_json(path, &g->cfg, err, sizeof err)) fail_msg("%s", err);
    snprintf(g->path, sizeof g->path, "tests/golden/%s.safetensors", stem);
    g->st = st_open(g->path, err, sizeof err);
    if (!g->st) fail_msg("%s", err);
    g->be = backend_cpu_create();
    assert_non_null(g->be);
    g->v = vae_create(&g->cfg, g->be, err, sizeof err);
    if (!g->v) fail_msg("%s", err);
    if (vae_load_safetensors(g->v, g->path, NULL, err, sizeof err)) fail_msg("%s", err);
    g->N = meta_int(g->st, "N"); g->H = meta_int(g->st, "H"); g->W = meta_int(g->st, "W");
    g->f = 1 << (g->cfg.n_levels - 1);
    g->h = g->H / g->f; g->w = g->W / g->f;
}

static void golden_close(Golden *g) {
    vae_free(g->v);
    backend_destroy(g->be);
    st_close(g->st);
}

static int64_t img_n(const Golden *g) { return (int64_t)g->N * g->cfg.in_channels * g->H * g->W; }
static int64_t out_n(const Golden *g) { return (int64_t)g->N * g->cfg.out_channels * g->H * g->W; }
static int64_t lat_n(const Golden *g) { return (int64_t)g->N * g->cfg.latent_channels * g->h * g->w; }

/* host in, host out, through device buffers */
static float *run_encode(Golden *g, VAE *v, const float *img, const float *noise) {
    Backend *be = g->be;
    float *dx = th_dev(be, img, img_n(g)), *dz = th_dev(be, NULL, lat_n(g));
    float *dn = noise ? th_dev(be, noise, lat_n(g)) : NULL;
    if (vae_encode(v, dx, dz, dn, g->N, g->H, g->W)) fail_msg("vae_encode: %s", vae_last_error(v));
    float *z = th_host(be, dz, lat_n(g));
    be->free(be, dx); be->free(be, dz);
    if (dn) be->free(be, dn);
    return z;
}

static float *run_decode(Golden *g, VAE *v, const float *lat) {
    Backend *be = g->be;
    float *dz = th_dev(be, lat, lat_n(g)), *dx = th_dev(be, NULL, out_n(g));
    if (vae_decode(v, dz, dx, g->N, g->h, g->w)) fail_msg("vae_decode: %s", vae_last_error(v));
    float *x = th_host(be, dx, out_n(g));
    be->free(be, dx); be->free(be, dz);
    return x;
}

static void check_golden(const char *stem) {
    Golden g;
    golden_open(&g, stem);
    /* every golden weight is a parameter of ours and vice versa */
    int nw = 0;
    for (int i = 0; i < st_count(g.st); i++) {
        const char *k = st_at(g.st, i)->name;
        if (!strncmp(k, "in.", 3) || !strncmp(k, "out.", 4)) continue;
        nw++;
        if (!vae_param(g.v, k)) fail_msg("golden weight %s is not a parameter of the C VAE", k);
    }
    assert_int_equal(nw, vae_n_params(g.v));

    float *img = gt_read(g.st, "in.image", NULL), *noise = gt_read(g.st, "in.noise", NULL);
    float *lat = gt_read(g.st, "in.latent", NULL);
    struct { const char *key; float *got; int64_t n; } res[4];
    res[0].key = "out.mean"; res[0].got = run_encode(&g, g.v, img, NULL); res[0].n = lat_n(&g);
    res[1].key = "out.sample"; res[1].got = run_encode(&g, g.v, img, noise); res[1].n = lat_n(&g);
    res[2].key = "out.decoded"; res[2].got = run_decode(&g, g.v, lat); res[2].n = out_n(&g);
    float *mean_ref = gt_read(g.st, "out.mean", NULL);
    res[3].key = "out.roundtrip"; res[3].got = run_decode(&g, g.v, mean_ref); res[3].n = out_n(&g);
    for (int k = 0; k < 4; k++) {
        float *ref = gt_read(g.st, res[k].key, NULL);
        double e = rel_err(res[k].got, ref, res[k].n);
        print_message("%s: %-13s rel err %.2e\n", stem, res[k].key, e);
        if (!(e <= 1e-4)) fail_msg("%s: %s rel err %.2e > 1e-4", stem, res[k].key, e);
        free(ref); free(res[k].got);
    }
    free(img); free(noise); free(lat); free(mean_ref);
    golden_close(&g);
}

/* The VAE keeps its set_frozen promise (backend.h): with its conv and linear
 * weights unreadable but to the ops the promise allows (guard_backend.h),
 * encode and decode give the same bits, and nothing ended the promise. */
static void test_frozen_promise_kept(void **st) {
    (void)st;
    Golden g;
    golden_open(&g, "vae_small");
    float *img = gt_read(g.st, "in.image", NULL), *lat = gt_read(g.st, "in.latent", NULL);
    float *z0 = run_encode(&g, g.v, img, NULL), *x0 = run_decode(&g, g.v, lat);
    guard_wrap(g.be);
    guard.max_protected = 0;
    guard.mapped = guard.straddles = 0;
    float *z1 = run_encode(&g, g.v, img, NULL), *x1 = run_decode(&g, g.v, lat);
    print_message("vae_small: %.2f MB of conv/linear weights unreadable through encode and decode; "
                  "%ld reads through the allowed ops, %ld across the edge\n",
                  guard.max_protected / 1e6, guard.mapped, guard.straddles);
    assert_true(guard.max_protected > 0);
    assert_int_equal(guard.straddles, 0);
    assert_non_null(guard.p);
    assert_memory_equal(z0, z1, (size_t)lat_n(&g) * sizeof(float));
    assert_memory_equal(x0, x1, (size_t)out_n(&g) * sizeof(float));
    free(img); free(lat); free(z0); free(x0); free(z1); free(x1);
    golden_close(&g);
    assert_null(guard.p);
}

static void test_golden_small(void **st) { (void)st; check_golden("vae_small"); }
static void test_golden_plain(void **st) { (void)st; check_golden("vae_plain"); }

/* the shape checks, and a failed call leaves the VAE usable */
static void test_bad_shapes(void **st) {
    (void)st;
    Golden g;
    golden_open(&g, "vae_small");
    Backend *be = g.be;
    float *dx = th_dev(be, NULL, 3 * 30 * 32), *dz = th_dev(be, NULL, 4 * 8 * 8);
    assert_int_equal(vae_encode(g.v, dx, dz, NULL, 1, 30, 32), -1);
    const char *e = vae_last_error(g.v);
    if (!strstr(e, "30x32") || !strstr(e, "multiples of 4") || strchr(e, '\n')) fail_msg("'%s'", e);
    assert_int_equal(vae_decode(g.v, dz, dx, 1, 0, 8), -1);
    assert_true(strstr(vae_last_error(g.v), "0x8") != NULL);
    be->free(be, dx); be->free(be, dz);
    golden_close(&g);
    check_golden("vae_small");
}

/* ---------------------------------------------------------------- weights */

/* copy src to dst through a rename / reshape / drop function */
typedef int (*Edit)(const char *name, char *out, size_t cap, int *ndim, int64_t *shape);

static void rewrite(const char *src, const char *dst, Edit fn) {
    char err[512];
    SafeTensors *s = st_open(src, err, sizeof err);
    if (!s) fail_msg("%s", err);
    StWriter *w = stw_create();
    assert_non_null(w);
    for (int i = 0; i < st_count(s); i++) {
        const StTensor *t = st_at(s, i);
        char name[256];
        int nd = t->ndim;
        int64_t shape[ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        snprintf(name, sizeof name, "%s", t->name);
        if (fn && !fn(t->name, name, sizeof name, &nd, shape)) continue;
        float *d = malloc((size_t)t->numel * sizeof *d);
        assert_non_null(d);
        assert_int_equal(st_read_f32(t, d), 0);
        assert_int_equal(stw_add_f32(w, name, nd, shape, d), 0);
        free(d);
    }
    if (stw_save(w, dst, err, sizeof err)) fail_msg("%s", err);
    stw_free(w);
    st_close(s);
}

static int is_weight(const char *n) { return strncmp(n, "in.", 3) && strncmp(n, "out.", 4); }

static int drop_one(const char *n, char *out, size_t cap, int *nd, int64_t *s) {
    return strcmp(n, "decoder.up_blocks.1.resnets.2.norm2.bias") != 0;
}
static int bad_shape(const char *n, char *out, size_t cap, int *nd, int64_t *s) {
    if (!strcmp(n, "encoder.down_blocks.1.resnets.0.conv_shortcut.weight")) s[1] = 4; /* [16,8,1,1] -> [16,4,1,1] */
    return 1;
}
static int drop_old_key(const char *n, char *out, size_t cap, int *nd, int64_t *s) {
    return strcmp(n, "decoder.mid_block.attentions.0.to_k.weight") != 0;
}
/* diffusers' old attention names, behind a "vae." prefix, linears as 1x1 convs */
static int old_names(const char *n, char *out, size_t cap, int *nd, int64_t *s) {
    if (!is_weight(n)) return 1;
    static const char *const map[][2] = {
        {".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."}};
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", n);
    for (int i = 0; i < 4; i++) {
        const char *at = strstr(n, map[i][0]);
        if (at && strstr(n, ".attentions.0.")) {
            snprintf(tmp, sizeof tmp, "%.*s%s%s", (int)(at - n), n, map[i][1], at + strlen(map[i][0]));
            if (*nd == 2) { s[2] = s[3] = 1; *nd = 4; }
        }
    }
    snprintf(out, cap, "vae.%s", tmp);
    return 1;
}

static int setup_tmp(void **st) { (void)st; return th_tmpdir_make("vae"); }
static int teardown_tmp(void **st) { (void)st; return th_tmpdir_remove(); }

static void test_missing_and_misshaped(void **st) {
    (void)st;
    Golden g;
    golden_open(&g, "vae_small");
    char p[512], err[512];
    path_of(p, "missing.safetensors");
    rewrite(g.path, p, drop_one);
    assert_int_equal(vae_load_safetensors(g.v, p, NULL, err, sizeof err), -1);
    if (!strstr(err, "missing tensor 'decoder.up_blocks.1.resnets.2.norm2.bias'") || !strstr(err, p))
        fail_msg("'%s'", err);
    path_of(p, "shape.safetensors");
    rewrite(g.path, p, bad_shape);
    assert_int_equal(vae_load_safetensors(g.v, p, NULL, err, sizeof err), -1);
    if (!strstr(err, "'encoder.down_blocks.1.resnets.0.conv_shortcut.weight' has shape [16,4,1,1], "
                     "the config needs [16,8,1,1]"))
        fail_msg("'%s'", err);
    /* a missing attention tensor names both its names */
    path_of(p, "nok.safetensors");
    rewrite(g.path, p, drop_old_key);
    assert_int_equal(vae_load_safetensors(g.v, p, NULL, err, sizeof err), -1);
    if (!strstr(err, "'decoder.mid_block.attentions.0.to_k.weight' (or its old name "
                     "'decoder.mid_block.attentions.0.key.weight')"))
        fail_msg("'%s'", err);
    /* an explicit prefix the file does not have */
    assert_int_equal(vae_load_safetensors(g.v, g.path, "vae.", err, sizeof err), -1);
    if (!strstr(err, "missing tensor 'vae.encoder.conv_in.weight'")) fail_msg("'%s'", err);
    /* not a VAE at all */
    assert_int_equal(vae_load_safetensors(g.v, "tests/golden/unet_sd15like.safetensors", NULL, err,
                                          sizeof err), -1);
    if (!strstr(err, "no tensor 'encoder.conv_in.weight'")) fail_msg("'%s'", err);
    golden_close(&g);
}

/* the old names load to the same weights, so to the same outputs bit for bit */
static void test_old_attention_names(void **st) {
    (void)st;
    Golden g;
    golden_open(&g, "vae_small");
    char p[512], err[512];
    path_of(p, "old.safetensors");
    rewrite(g.path, p, old_names);
    {   /* the file really has only the old names */
        SafeTensors *s = st_open(p, err, sizeof err);
        assert_non_null(s);
        assert_non_null(st_find(s, "vae.encoder.mid_block.attentions.0.proj_attn.weight"));
        assert_null(st_find(s, "vae.encoder.mid_block.attentions.0.to_out.0.weight"));
        assert_int_equal(st_find(s, "vae.decoder.mid_block.attentions.0.query.weight")->ndim, 4);
        st_close(s);
    }
    float *img = gt_read(g.st, "in.image", NULL), *lat = gt_read(g.st, "in.latent", NULL);
    float *z0 = run_encode(&g, g.v, img, NULL), *x0 = run_decode(&g, g.v, lat);
    VAE *v2 = vae_create(&g.cfg, g.be, err, sizeof err);
    assert_non_null(v2);
    if (vae_load_safetensors(v2, p, NULL, err, sizeof err)) fail_msg("%s", err);
    float *z1 = run_encode(&g, v2, img, NULL), *x1 = run_decode(&g, v2, lat);
    assert_memory_equal(z0, z1, (size_t)lat_n(&g) * sizeof(float));
    assert_memory_equal(x0, x1, (size_t)out_n(&g) * sizeof(float));
    /* and with the prefix named */
    vae_init_random(v2, 3);
    if (vae_load_safetensors(v2, p, "vae.", err, sizeof err)) fail_msg("%s", err);
    float *x2 = run_decode(&g, v2, lat);
    assert_memory_equal(x0, x2, (size_t)out_n(&g) * sizeof(float));
    vae_free(v2);
    free(img); free(lat); free(z0); free(z1); free(x0); free(x1); free(x2);
    golden_close(&g);
}

/* ---------------------------------------------------------------- tables, config */

static void test_param_table(void **st) {
    (void)st;
    VAEConfig c;
    VAEParam *p;
    int np;
    const char *names[] = {"sd15", "sdxl"};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(vae_config_builtin(names[k], &c), 0);
        assert_int_equal(vae_param_table(&c, &p, &np), 0);
        int64_t t = 0;
        for (int i = 0; i < np; i++) t += p[i].numel;
        assert_int_equal(t, 83653863LL); /* the published SD VAE, 248 tensors */
        assert_int_equal(np, 248);
        struct { const char *n; int nd; int64_t s[4]; } want[] = {
            {"encoder.conv_in.weight", 4, {128, 3, 3, 3}},
            {"encoder.down_blocks.0.downsamplers.0.conv.weight", 4, {128, 128, 3, 3}},
            {"encoder.down_blocks.1.resnets.0.conv_shortcut.weight", 4, {256, 128, 1, 1}},
            {"encoder.down_blocks.3.resnets.1.norm2.bias", 1, {512}},
            {"encoder.mid_block.attentions.0.to_q.weight", 2, {512, 512}},
            {"encoder.mid_block.attentions.0.to_out.0.bias", 1, {512}},
            {"encoder.conv_out.weight", 4, {8, 512, 3, 3}},
            {"quant_conv.weight", 4, {8, 8, 1, 1}},
            {"post_quant_conv.weight", 4, {4, 4, 1, 1}},
            {"decoder.conv_in.weight", 4, {512, 4, 3, 3}},
            {"decoder.up_blocks.2.resnets.0.conv_shortcut.weight", 4, {256, 512, 1, 1}},
            {"decoder.up_blocks.3.resnets.2.conv2.weight", 4, {128, 128, 3, 3}},
            {"decoder.up_blocks.2.upsamplers.0.conv.weight", 4, {256, 256, 3, 3}},
            {"decoder.conv_out.weight", 4, {3, 128, 3, 3}},
        };
        for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
            int i = 0;
            while (i < np && strcmp(p[i].name, want[w].n)) i++;
            if (i == np) fail_msg("%s: no parameter %s", names[k], want[w].n);
            assert_int_equal(p[i].ndim, want[w].nd);
            for (int d = 0; d < want[w].nd; d++) assert_int_equal(p[i].shape[d], want[w].s[d]);
        }
        for (int i = 0; i < np; i++) {
            if (strstr(p[i].name, "up_blocks.3.upsamplers") || strstr(p[i].name, "down_blocks.3.downsamplers"))
                fail_msg("%s: the last level has no resampler: %s", names[k], p[i].name);
        }
        free(p);
    }
    assert_int_equal(vae_config_builtin("sd15", &c), 0);
    assert_true(fabsf(c.scaling_factor - 0.18215f) < 1e-7f);
    assert_int_equal(vae_config_builtin("sdxl", &c), 0);
    assert_true(fabsf(c.scaling_factor - 0.13025f) < 1e-7f);
    assert_int_equal(vae_config_builtin("tiny", &c), -1);
    /* the options remove their parameters */
    assert_int_equal(vae_config_builtin("sd15", &c), 0);
    c.use_quant_conv = c.use_post_quant_conv = c.mid_block_add_attention = 0;
    assert_int_equal(vae_param_table(&c, &p, &np), 0);
    assert_int_equal(np, 248 - 4 - 2 * 10);
    for (int i = 0; i < np; i++)
        if (strstr(p[i].name, "quant_conv") || strstr(p[i].name, "attentions")) fail_msg("%s", p[i].name);
    free(p);
}

/* SD 1.5's and SDXL's vae/config.json as published (SD 1.5 has no scaling_factor:
 * diffusers' default 0.18215 applies) */
static const char *SD15_JSON =
    "{\"_class_name\": \"AutoencoderKL\", \"_diffusers_version\": \"0.6.0\", \"act_fn\": \"silu\","
    " \"block_out_channels\": [128, 256, 512, 512], \"down_block_types\": [\"DownEncoderBlock2D\","
    " \"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"], \"in_channels\": 3,"
    " \"latent_channels\": 4, \"layers_per_block\": 2, \"norm_num_groups\": 32, \"out_channels\": 3,"
    " \"sample_size\": 512, \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\","
    " \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}";
static const char *SDXL_JSON =
    "{\"_class_name\": \"AutoencoderKL\", \"_diffusers_version\": \"0.20.0.dev0\","
    " \"_name_or_path\": \"../sdxl-vae/\", \"act_fn\": \"silu\", \"block_out_channels\": [128, 256,"
    " 512, 512], \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\","
    " \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"], \"force_upcast\": true, \"in_channels\": 3,"
    " \"latent_channels\": 4, \"layers_per_block\": 2, \"norm_num_groups\": 32, \"out_channels\": 3,"
    " \"sample_size\": 1024, \"scaling_factor\": 0.13025, \"up_block_types\": [\"UpDecoderBlock2D\","
    " \"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}";

static void same_arch(const VAEConfig *a, const VAEConfig *b) {
    assert_int_equal(a->in_channels, b->in_channels);
    assert_int_equal(a->out_channels, b->out_channels);
    assert_int_equal(a->latent_channels, b->latent_channels);
    assert_int_equal(a->n_levels, b->n_levels);
    for (int i = 0; i < a->n_levels; i++) assert_int_equal(a->block_out_channels[i], b->block_out_channels[i]);
    assert_int_equal(a->layers_per_block, b->layers_per_block);
    assert_int_equal(a->norm_num_groups, b->norm_num_groups);
    assert_true(a->scaling_factor == b->scaling_factor);
    assert_int_equal(a->use_quant_conv, b->use_quant_conv);
    assert_int_equal(a->use_post_quant_conv, b->use_post_quant_conv);
    assert_int_equal(a->mid_block_add_attention, b->mid_block_add_attention);
}

static void test_config_published(void **st) {
    (void)st;
    VAEConfig a, b;
    char err[512];
    if (vae_config_from_json_text(SD15_JSON, &a, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(vae_config_builtin("sd15", &b), 0);
    same_arch(&a, &b);
    assert_int_equal(a.sample_size, 512);
    if (vae_config_from_json_text(SDXL_JSON, &a, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(vae_config_builtin("sdxl", &b), 0);
    same_arch(&a, &b);
    assert_int_equal(a.force_upcast, 1);
    assert_int_equal(a.sample_size, 1024);
    /* the goldens' configs, and resolve */
    if (vae_config_resolve("tests/golden/vae_plain.json", &a, err, sizeof err)) fail_msg("%s", err);
    assert_string_equal(a.name, "vae_plain");
    assert_int_equal(a.use_quant_conv, 0);
    assert_int_equal(a.mid_block_add_attention, 0);
    assert_true(fabsf(a.scaling_factor - 0.18215f) < 1e-7f);
    assert_int_equal(vae_config_resolve("sdxl", &a, err, sizeof err), 0);
    assert_int_equal(vae_config_resolve("/nonexistent/vae", &a, err, sizeof err), -1);
    assert_true(strstr(err, "/nonexistent/vae") != NULL);
}

/* SD15_JSON with one field replaced (or added when absent) */
static void cfg_with(char *out, size_t cap, const char *field, const char *value) {
    char key[96];
    snprintf(key, sizeof key, "\"%s\": ", field);
    const char *at = strstr(SD15_JSON, key);
    if (!at) {
        snprintf(out, cap, "{%s%s, %s", key, value, SD15_JSON + 1);
        return;
    }
    const char *v = at + strlen(key), *e = v;
    int depth = 0;
    for (; *e; e++) {
        if (*e == '[') depth++;
        else if (*e == ']') depth--;
        if (depth == 0 && (*e == ',' || *e == '}')) break;
        if (depth == 0 && *e == ']') { e++; break; }
    }
    snprintf(out, cap, "%.*s%s%s", (int)(v - SD15_JSON), SD15_JSON, value, e);
}

static void test_config_refuses(void **st) {
    (void)st;
    struct { const char *field, *json, *want; } bad[] = {
        {"act_fn", "\"gelu\"", "act_fn = \"gelu\" is not supported (only \"silu\" or \"swish\")"},
        {"shift_factor", "0.1159", "shift_factor = 0.1159 is not supported (only null)"},
        {"latents_mean", "[0.1, 0.2]", "latents_mean = [0.1, 0.2] is not supported (only null)"},
        {"latents_std", "[1, 1]", "latents_std"},
        {"down_block_types", "[\"DownEncoderBlock2D\", \"DownBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"]",
         "down_block_types[1] = \"DownBlock2D\" is not supported (only \"DownEncoderBlock2D\")"},
        {"up_block_types", "[\"UpDecoderBlock2D\"]", "up_block_types = [\"UpDecoderBlock2D\"] is not supported (only a list of 4"},
        {"up_block_types", "[\"UpDecoderBlock2D\", \"AttnUpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]",
         "up_block_types[1] = \"AttnUpDecoderBlock2D\""},
        {"block_out_channels", "[128, 0]", "block_out_channels = [128, 0] is not supported"},
        {"block_out_channels", "[128, 256, 512, 500]", "norm_num_groups = 32 does not divide block_out_channels[3] = 500"},
        {"norm_num_groups", "null", "norm_num_groups = null is not supported (only a positive integer)"},
        {"in_channels", "0", "in_channels = 0"},
        {"latent_channels", "4.5", "latent_channels = 4.5"},
        {"layers_per_block", "[2, 2]", "layers_per_block = [2, 2]"},
        {"scaling_factor", "-1", "scaling_factor = -1 is not supported (only a positive number or null)"},
        {"scaling_factor", "\"0.18\"", "scaling_factor = \"0.18\""},
        {"use_quant_conv", "1", "use_quant_conv = 1 is not supported (only true, false or null)"},
        {"mid_block_add_attention", "\"no\"", "mid_block_add_attention"},
        {"force_upcast", "0", "force_upcast = 0"},
        {"sample_size", "\"big\"", "sample_size = \"big\""},
        {"double_z", "true", "unknown field 'double_z'"},
        {"norm_eps", "1e-6", "unknown field 'norm_eps'"},
    };
    char js[2048], err[512];
    VAEConfig c;
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        cfg_with(js, sizeof js, bad[k].field, bad[k].json);
        err[0] = 0;
        int rc = vae_config_from_json_text(js, &c, err, sizeof err);
        if (rc != -1 || !strstr(err, bad[k].want) || strncmp(err, "config.json: ", 13) ||
            strchr(err, '\n'))
            fail_msg("%s = %s: rc %d, err '%s' (want '%s')", bad[k].field, bad[k].json, rc, err,
                     bad[k].want);
    }
    /* missing required fields, repeated ones, not an object */
    const char *miss = "{\"in_channels\": 3}";
    assert_int_equal(vae_config_from_json_text(miss, &c, err, sizeof err), -1);
    assert_string_equal(err, "config.json: block_out_channels is missing (a list of 1..6 positive integers)");
    assert_int_equal(vae_config_from_json_text("{\"block_out_channels\": [32]}", &c, err, sizeof err), -1);
    assert_true(strstr(err, "down_block_types is missing") != NULL);
    snprintf(js, sizeof js, "{\"act_fn\": \"silu\", %s", SD15_JSON + 1);
    assert_int_equal(vae_config_from_json_text(js, &c, err, sizeof err), -1);
    assert_true(strstr(err, "'act_fn' is given more than once") != NULL);
    assert_int_equal(vae_config_from_json_text("[1]", &c, err, sizeof err), -1);
    /* accepted: the values implemented, metadata, null for the defaults */
    struct { const char *field, *json; } good[] = {
        {"act_fn", "\"swish\""}, {"shift_factor", "null"}, {"latents_mean", "null"},
        {"scaling_factor", "null"}, {"force_upcast", "false"}, {"sample_size", "[256, 256]"},
        {"sample_size", "null"}, {"use_quant_conv", "false"}, {"use_post_quant_conv", "null"},
        {"mid_block_add_attention", "false"}, {"_anything", "{\"x\": 1}"},
    };
    for (size_t k = 0; k < sizeof good / sizeof good[0]; k++) {
        cfg_with(js, sizeof js, good[k].field, good[k].json);
        if (vae_config_from_json_text(js, &c, err, sizeof err))
            fail_msg("%s = %s refused: %s", good[k].field, good[k].json, err);
    }
    cfg_with(js, sizeof js, "use_quant_conv", "false");
    assert_int_equal(vae_config_from_json_text(js, &c, err, sizeof err), 0);
    assert_int_equal(c.use_quant_conv, 0);
    assert_int_equal(c.use_post_quant_conv, 1);
}


/* ---------------------------------------------------------------- memory plan */

/* a CPU backend whose alloc / free count what is live: the plan is checked
 * against every buffer the passes take (the CPU backend's own scratch is not
 * a buffer of theirs) */
static Backend *cnt_real;
static struct { void *p; size_t n; } cnt_tab[4096];
static int cnt_n;
static int64_t cnt_live, cnt_peak;

static void *cnt_alloc(Backend *be, size_t n) {
    (void)be;
    void *p = cnt_real->alloc(cnt_real, n);
    if (!p) return NULL;
    assert_true(cnt_n < 4096);
    cnt_tab[cnt_n].p = p;
    cnt_tab[cnt_n++].n = n;
    cnt_live += (int64_t)n;
    if (cnt_live > cnt_peak) cnt_peak = cnt_live;
    return p;
}

static void cnt_free(Backend *be, void *p) {
    (void)be;
    if (!p) return;
    for (int i = 0; i < cnt_n; i++)
        if (cnt_tab[i].p == p) {
            cnt_live -= (int64_t)cnt_tab[i].n;
            cnt_tab[i] = cnt_tab[--cnt_n];
            cnt_real->free(cnt_real, p);
            return;
        }
    fail_msg("free of a pointer the counting backend did not hand out");
}

/* peak bytes one call allocates, measured; decode: a latent N x H x W */
static int64_t measured(const char *stem, int decode, int N, int H, int W) {
    char path[256], err[512];
    VAEConfig cfg;
    snprintf(path, sizeof path, "tests/golden/%s.json", stem);
    if (vae_config_from_json(path, &cfg, err, sizeof err)) fail_msg("%s", err);
    cnt_real = backend_cpu_create();
    assert_non_null(cnt_real);
    Backend wrap = *cnt_real;
    wrap.alloc = cnt_alloc;
    wrap.free = cnt_free;
    cnt_n = 0;
    cnt_live = cnt_peak = 0;
    VAE *v = vae_create(&cfg, &wrap, err, sizeof err);
    if (!v) fail_msg("%s", err);
    vae_init_random(v, 3);
    assert_int_equal(vae_set_tiling(v, VAE_TILING_OFF, 0, err, sizeof err), 0);
    int f = 1 << (cfg.n_levels - 1);
    int64_t nimg = (int64_t)N * 3 * H * W * (decode ? f * f : 1);
    int64_t nlat = (int64_t)N * cfg.latent_channels * H * W / (decode ? 1 : f * f);
    Rng r;
    rng_seed(&r, 5);
    float *hi = th_rand(&r, decode ? nlat : nimg, -1, 1);
    float *in = th_dev(&wrap, hi, decode ? nlat : nimg), *out = th_dev(&wrap, NULL, decode ? nimg : nlat);
    int64_t base = cnt_live;
    cnt_peak = cnt_live;
    int rc = decode ? vae_decode(v, in, out, N, H, W) : vae_encode(v, in, out, NULL, N, H, W);
    if (rc) fail_msg("%s", vae_last_error(v));
    assert_int_equal(cnt_live, base); /* the call freed what it took */
    int64_t peak = cnt_peak - base;
    wrap.free(&wrap, in);
    wrap.free(&wrap, out);
    vae_free(v);
    backend_destroy(cnt_real);
    free(hi);
    return peak;
}

static void test_memory_plan(void **st) {
    (void)st;
    struct { const char *stem; int decode, N, H, W; } cs[] = {
        {"vae_small", 0, 1, 32, 32}, {"vae_small", 0, 2, 16, 28}, {"vae_small", 1, 1, 8, 8},
        {"vae_small", 1, 2, 5, 3},   {"vae_plain", 0, 1, 16, 10}, {"vae_plain", 1, 2, 7, 4},
    };
    for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++) {
        char path[256], err[512];
        VAEConfig cfg;
        snprintf(path, sizeof path, "tests/golden/%s.json", cs[k].stem);
        if (vae_config_from_json(path, &cfg, err, sizeof err)) fail_msg("%s", err);
        int64_t plan = -1, got = measured(cs[k].stem, cs[k].decode, cs[k].N, cs[k].H, cs[k].W);
        assert_int_equal(vae_memory_plan(&cfg, cs[k].decode, cs[k].N, cs[k].H, cs[k].W, &plan), 0);
        if (plan != got)
            fail_msg("%s %s N=%d %dx%d: plan %lld bytes, the pass took %lld", cs[k].stem,
                     cs[k].decode ? "decode" : "encode", cs[k].N, cs[k].H, cs[k].W,
                     (long long)plan, (long long)got);
    }
    /* SD 1.5 at 512x512: the activations bench_vae measured (vae.h) */
    VAEConfig sd;
    int64_t enc, dec, dec2;
    assert_int_equal(vae_config_builtin("sd15", &sd), 0);
    assert_int_equal(vae_memory_plan(&sd, 0, 1, 512, 512, &enc), 0);
    assert_int_equal(vae_memory_plan(&sd, 1, 1, 64, 64, &dec), 0);
    assert_int_equal(vae_memory_plan(&sd, 1, 2, 64, 64, &dec2), 0);
    print_message("sd15 512x512 plan: encode %.1f MB, decode %.1f MB\n", enc / 1e6, dec / 1e6);
    assert_true(fabs(enc / 1e6 - 403) < 1 && fabs(dec / 1e6 - 671) < 1);
    assert_true(dec2 > 2 * dec - 1000 && dec2 < 2 * dec + 1000);
    assert_int_equal(vae_memory_plan(&sd, 0, 1, 500, 512, &enc), -1); /* not a multiple of 8 */
    assert_int_equal(vae_memory_plan(&sd, 1, 0, 64, 64, &dec), -1);
}

/* ---------------------------------------------------------------- tiling */

/* host in, host out; decode: lat[N,L,h,w] -> img[N,3,f h,f w] */
static float *enc_host(VAE *v, Backend *be, const float *img, int N, int H, int W) {
    const VAEConfig *c = vae_config(v);
    int f = 1 << (c->n_levels - 1);
    int64_t ni = (int64_t)N * c->in_channels * H * W, nz = (int64_t)N * c->latent_channels * (H / f) * (W / f);
    float *dx = th_dev(be, img, ni), *dz = th_dev(be, NULL, nz);
    if (vae_encode(v, dx, dz, NULL, N, H, W)) fail_msg("vae_encode: %s", vae_last_error(v));
    float *z = th_host(be, dz, nz);
    be->free(be, dx); be->free(be, dz);
    return z;
}

static float *dec_host(VAE *v, Backend *be, const float *lat, int N, int h, int w) {
    const VAEConfig *c = vae_config(v);
    int f = 1 << (c->n_levels - 1);
    int64_t nz = (int64_t)N * c->latent_channels * h * w, ni = (int64_t)N * c->out_channels * h * f * w * f;
    float *dz = th_dev(be, lat, nz), *dx = th_dev(be, NULL, ni);
    if (vae_decode(v, dz, dx, N, h, w)) fail_msg("vae_decode: %s", vae_last_error(v));
    float *x = th_host(be, dx, ni);
    be->free(be, dx); be->free(be, dz);
    return x;
}

static void set_tiling(VAE *v, int mode, int px) {
    char err[256];
    if (vae_set_tiling(v, mode, px, err, sizeof err)) fail_msg("vae_set_tiling: %s", err);
}

/* The rule of vae.h, written again: tiles along one axis start at st[0..n),
 * each len cells; tile i's ramp at output y (u units per cell) */
static double ref_ramp(const int *st, int n, int len, int u, int i, long y) {
    long s = (long)st[i] * u, e = s + (long)len * u;
    if (y < s || y >= e) return 0;
    double w = 1;
    if (i > 0) w = fmin(w, (y - s + 0.5) / (double)((long)(st[i - 1] + len) * u - s));
    if (i < n - 1) w = fmin(w, (e - y - 0.5) / (double)(e - (long)st[i + 1] * u));
    return w;
}

static double ref_weight(const int *st, int n, int len, int u, int i, long y) {
    double sum = 0;
    for (int j = 0; j < n; j++) sum += ref_ramp(st, n, len, u, j, y);
    return ref_ramp(st, n, len, u, i, y) / sum;
}

/* the tiling of a latent h x w through the API: starts per axis, and the
 * layout the rule promises (first at 0, last at the edge, overlaps >= a
 * quarter tile, every tile the same size) */
typedef struct { int ny, nx, th, tw, sy[64], sx[64]; } Tiling;

static void get_tiling(const VAE *v, int h, int w, int tile_cells, Tiling *t) {
    int n = vae_tile_count(v, h, w), rect[4];
    assert_true(n >= 1);
    memset(t, 0, sizeof *t);
    for (int k = 0; k < n; k++) {
        assert_int_equal(vae_tile_at(v, 0, h, w, k, rect, NULL), 0);
        if (rect[0] == 0) t->sx[t->nx++] = rect[1];
        if (rect[1] == 0) t->sy[t->ny++] = rect[0];
        t->th = rect[2];
        t->tw = rect[3];
    }
    assert_int_equal(t->ny * t->nx, n);
    assert_int_equal(vae_tile_at(v, 0, h, w, n, rect, NULL), -1);
    int cells[2] = {h, w}, *st[2] = {t->sy, t->sx}, cnt[2] = {t->ny, t->nx}, len[2] = {t->th, t->tw};
    for (int a = 0; a < 2; a++) {
        assert_int_equal(len[a], cells[a] < tile_cells ? cells[a] : tile_cells);
        assert_int_equal(st[a][0], 0);
        assert_int_equal(st[a][cnt[a] - 1] + len[a], cells[a]);
        for (int i = 1; i < cnt[a]; i++) assert_true(st[a][i - 1] + len[a] - st[a][i] >= tile_cells / 4);
    }
}

/* (c) the weights vae_tile_at hands out add up to 1 at every output position
 * (summed here tile by tile), lie in (0, 1], are the rule's, and ramp linearly
 * across a plain two-tile overlap; layouts include one where three tiles meet */
static void test_tile_weights(void **st) {
    (void)st;
    Golden g;
    golden_open(&g, "vae_small"); /* f = 4 */
    struct { int tile_px, h, w; } cs[] = {
        {16, 8, 8}, {16, 10, 9}, {32, 15, 15} /* 3 tiles of 8 meet at cell 7 */, {24, 30, 7},
        {64, 16, 40}, {16, 3, 17},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        set_tiling(g.v, VAE_TILING_ON, cs[c].tile_px);
        Tiling t;
        int tc = cs[c].tile_px / 4;
        get_tiling(g.v, cs[c].h, cs[c].w, tc, &t);
        for (int decode = 0; decode < 2; decode++) {
            int u = decode ? 4 : 1;
            long H = (long)cs[c].h * u, W = (long)cs[c].w * u;
            double *sum = th_dalloc(H * W);
            float *wt = th_falloc((long)t.th * u * t.tw * u);
            for (int k = 0; k < t.ny * t.nx; k++) {
                int rect[4], i = k / t.nx, j = k % t.nx;
                assert_int_equal(vae_tile_at(g.v, decode, cs[c].h, cs[c].w, k, rect, wt), 0);
                for (long y = 0; y < (long)rect[2] * u; y++)
                    for (long x = 0; x < (long)rect[3] * u; x++) {
                        long Y = (long)rect[0] * u + y, X = (long)rect[1] * u + x;
                        double got = wt[y * rect[3] * u + x];
                        double want = ref_weight(t.sy, t.ny, t.th, u, i, Y) * ref_weight(t.sx, t.nx, t.tw, u, j, X);
                        if (!(got > 0 && got <= 1 && fabs(got - want) < 1e-6))
                            fail_msg("tile %d weight at (%ld,%ld) = %g, rule %g", k, Y, X, got, want);
                        sum[Y * W + X] += got;
                    }
            }
            for (long i = 0; i < H * W; i++)
                if (fabs(sum[i] - 1) > 1e-6)
                    fail_msg("tile %d px, latent %dx%d, %s: weights at (%ld,%ld) add up to %.9f", cs[c].tile_px,
                             cs[c].h, cs[c].w, decode ? "decode" : "encode", i / W, i % W, sum[i]);
            free(sum);
            free(wt);
        }
    }
    /* two tiles of 4 cells over 7 cells overlap by 1 cell = 4 pixels: weights
     * 1/8, 3/8, 5/8, 7/8 for the second tile across it */
    set_tiling(g.v, VAE_TILING_ON, 16);
    assert_int_equal(vae_tile_count(g.v, 4, 7), 2);
    float wt[16 * 16];
    int rect[4];
    assert_int_equal(vae_tile_at(g.v, 1, 4, 7, 1, rect, wt), 0);
    assert_int_equal(rect[1], 3);
    for (int x = 0; x < 4; x++) assert_float_equal(wt[x], (2 * x + 1) / 8.0f, 1e-7);
    for (int x = 4; x < 16; x++) assert_float_equal(wt[x], 1.0f, 0);
    golden_close(&g);
}

/* the blend of untiled passes over each tile's crop, with the rule's weights
 * in double: the reference tiled output. in: [N, C, h ui, w ui] */
static double *ref_tiled(Golden *g, int decode, const float *in, int N, int h, int w, int tile_cells) {
    VAE *v = g->v;
    const VAEConfig *c = vae_config(v);
    int f = g->f, ui = decode ? 1 : f, uo = decode ? f : 1;
    int cin = decode ? c->latent_channels : c->in_channels, cout = decode ? c->out_channels : c->latent_channels;
    Tiling t;
    get_tiling(v, h, w, tile_cells, &t);
    long Hi = (long)h * ui, Wi = (long)w * ui, Ho = (long)h * uo, Wo = (long)w * uo;
    double *out = th_dalloc((long)N * cout * Ho * Wo);
    long thi = (long)t.th * ui, twi = (long)t.tw * ui, tho = (long)t.th * uo, two = (long)t.tw * uo;
    float *crop = th_falloc((long)N * cin * thi * twi);
    set_tiling(v, VAE_TILING_OFF, tile_cells * f); /* untiled tiles, same tile size */
    for (int i = 0; i < t.ny; i++)
        for (int j = 0; j < t.nx; j++) {
            for (long nc = 0; nc < (long)N * cin; nc++)
                for (long y = 0; y < thi; y++)
                    for (long x = 0; x < twi; x++)
                        crop[(nc * thi + y) * twi + x] =
                            in[(nc * Hi + (long)t.sy[i] * ui + y) * Wi + (long)t.sx[j] * ui + x];
            float *o = decode ? dec_host(v, g->be, crop, N, t.th, t.tw) : enc_host(v, g->be, crop, N, (int)thi, (int)twi);
            for (long nc = 0; nc < (long)N * cout; nc++)
                for (long y = 0; y < tho; y++)
                    for (long x = 0; x < two; x++) {
                        long Y = (long)t.sy[i] * uo + y, X = (long)t.sx[j] * uo + x;
                        double wgt = ref_weight(t.sy, t.ny, t.th, uo, i, Y) * ref_weight(t.sx, t.nx, t.tw, uo, j, X);
                        out[(nc * Ho + Y) * Wo + X] += wgt * o[(nc * tho + y) * two + x];
                    }
            free(o);
        }
    free(crop);
    return out;
}

static double max_abs(const float *a, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

/* sum |a - b| / sum |b| */
static double mean_rel(const float *a, const float *b, int64_t n) {
    double sd = 0, sb = 0;
    for (int64_t i = 0; i < n; i++) { sd += fabs((double)a[i] - b[i]); sb += fabs(b[i]); }
    return sb > 0 ? sd / sb : sd;
}

/* a smooth image (what a VAE sees) with a little noise, [N,3,H,W] */
static float *smooth_image(Rng *r, int N, int H, int W) {
    int64_t ni = (int64_t)N * 3 * H * W;
    float *img = th_falloc(ni);
    for (int64_t i = 0; i < ni; i++) {
        int64_t x = i % W, y = (i / W) % H, c = (i / ((int64_t)H * W)) % 3;
        img[i] = (float)(0.6 * sin(0.2 * x + c) * cos(0.15 * y) + 0.05 * (rng_uniform(r) - 0.5));
    }
    return img;
}

/* (a) a tile at least the image size gives the untiled bytes; (b) tiled
 * encode and decode equal the blend of untiled passes over each tile computed
 * here (to float rounding), on vae_small (mid-block attention, f = 4) with
 * 3x3, 2x2 and 2x2 tiles and a batch of 2 */
static void test_tiled_passes(void **st) {
    (void)st;
    Golden g;
    golden_open(&g, "vae_small");
    Rng r;
    rng_seed(&r, 11);
    int N = 2, H = 40, W = 36, h = 10, w = 9;
    int64_t ni = (int64_t)N * 3 * H * W, nz = (int64_t)N * 4 * h * w;
    float *img = smooth_image(&r, N, H, W), *lat = th_rand(&r, nz, -1, 1);
    set_tiling(g.v, VAE_TILING_OFF, 0);
    float *z0 = enc_host(g.v, g.be, img, N, H, W), *x0 = dec_host(g.v, g.be, lat, N, h, w);

    /* (a) */
    int big[2] = {40, 64};
    for (int k = 0; k < 2; k++) {
        set_tiling(g.v, VAE_TILING_ON, big[k]);
        assert_int_equal(vae_will_tile(g.v, 0, N, H, W), 0);
        float *z1 = enc_host(g.v, g.be, img, N, H, W), *x1 = dec_host(g.v, g.be, lat, N, h, w);
        assert_memory_equal(z1, z0, sizeof(float) * nz);
        assert_memory_equal(x1, x0, sizeof(float) * ni);
        free(z1); free(x1);
    }

    /* (b) tiles of 4, 6 and 8 cells */
    int tiles[3] = {16, 24, 32};
    for (int k = 0; k < 3; k++) {
        set_tiling(g.v, VAE_TILING_ON, tiles[k]);
        assert_int_equal(vae_will_tile(g.v, 0, N, H, W), 1);
        assert_int_equal(vae_will_tile(g.v, 1, N, h, w), 1);
        float *z1 = enc_host(g.v, g.be, img, N, H, W), *x1 = dec_host(g.v, g.be, lat, N, h, w);
        double *zr = ref_tiled(&g, 0, img, N, h, w, tiles[k] / 4);
        double *xr = ref_tiled(&g, 1, lat, N, h, w, tiles[k] / 4);
        th_check("tiled encode vs reference blend", z1, zr, nz, 1e-5 * max_abs(z0, nz), 1e-5);
        th_check("tiled decode vs reference blend", x1, xr, ni, 1e-5 * max_abs(x0, ni), 1e-5);
        free(z1); free(x1); free(zr); free(xr);
    }
    free(img); free(lat); free(z0); free(x0);
    golden_close(&g);
}

/* (b) tiled vs untiled: close, not equal, since each tile's group norms and
 * zero padding see only the tile (as in diffusers). On vae_plain (no
 * attention, f = 2) at 96x96 with 64 px tiles (2x2 tiles, 8-cell overlaps),
 * measured 2026-12-05 (sum |diff| / sum |untiled|, max |diff| / max |untiled|):
 * encode 0.061, 0.111; decode 0.020, 0.034. Tiles placed one cell off, or
 * overlaps added instead of blended (weights summing to 2 there), measured
 * means of 0.30 to 0.78 here. */
static void test_tiled_close(void **st) {
    (void)st;
    Golden g;
    golden_open(&g, "vae_plain");
    Rng r;
    rng_seed(&r, 13);
    int N = 1, H = 96, W = 96, h = 48, w = 48;
    int64_t ni = (int64_t)N * 3 * H * W, nz = (int64_t)N * 4 * h * w;
    float *img = smooth_image(&r, N, H, W), *lat = th_falloc(nz);
    rng_fill_normal(&r, lat, nz);
    set_tiling(g.v, VAE_TILING_OFF, 64);
    float *z0 = enc_host(g.v, g.be, img, N, H, W), *x0 = dec_host(g.v, g.be, lat, N, h, w);
    set_tiling(g.v, VAE_TILING_ON, 64);
    assert_int_equal(vae_tile_count(g.v, h, w), 4);
    float *z1 = enc_host(g.v, g.be, img, N, H, W), *x1 = dec_host(g.v, g.be, lat, N, h, w);
    double ez = mean_rel(z1, z0, nz), mz = rel_err(z1, z0, nz);
    double ex = mean_rel(x1, x0, ni), mx = rel_err(x1, x0, ni);
    print_message("tiled vs untiled: encode mean %.3f max %.3f, decode mean %.3f max %.3f\n", ez, mz, ex, mx);
    assert_true(ez < 0.1 && mz < 0.2);
    assert_true(ex < 0.04 && mx < 0.08);
    assert_true(ez > 0 && ex > 0); /* it did tile */
    free(img); free(lat); free(z0); free(x0); free(z1); free(x1);
    golden_close(&g);
}

/* auto tiles only when the untiled pass would exceed the budget; on only when
 * the image is larger than a tile; off never */
static void test_tiling_modes(void **st) {
    (void)st;
    Golden g;
    golden_open(&g, "vae_small");
    Rng r;
    rng_seed(&r, 12);
    int N = 1, H = 32, W = 32;
    int64_t ni = (int64_t)N * 3 * H * W, nz = (int64_t)N * 4 * 8 * 8, plan;
    float *img = th_rand(&r, ni, -1, 1);
    assert_int_equal(vae_memory_plan(vae_config(g.v), 0, N, H, W, &plan), 0);
    set_tiling(g.v, VAE_TILING_ON, 16);
    float *on = enc_host(g.v, g.be, img, N, H, W);
    set_tiling(g.v, VAE_TILING_OFF, 16);
    assert_int_equal(vae_will_tile(g.v, 0, N, H, W), 0);
    float *off = enc_host(g.v, g.be, img, N, H, W);
    assert_true(memcmp(on, off, sizeof(float) * nz) != 0);
    set_tiling(g.v, VAE_TILING_AUTO, 16);
    vae_set_memory_budget(g.v, plan);     /* fits */
    assert_int_equal(vae_will_tile(g.v, 0, N, H, W), 0);
    float *a1 = enc_host(g.v, g.be, img, N, H, W);
    assert_memory_equal(a1, off, sizeof(float) * nz);
    vae_set_memory_budget(g.v, plan - 1); /* does not */
    assert_int_equal(vae_will_tile(g.v, 0, N, H, W), 1);
    float *a2 = enc_host(g.v, g.be, img, N, H, W);
    assert_memory_equal(a2, on, sizeof(float) * nz);
    set_tiling(g.v, VAE_TILING_AUTO, 32); /* one tile covers the image: nothing to cut */
    assert_int_equal(vae_will_tile(g.v, 0, N, H, W), 0);
    /* the default budget: half of MemAvailable on the CPU, far above a 32x32 pass */
    vae_set_memory_budget(g.v, 0);
    set_tiling(g.v, VAE_TILING_AUTO, 16);
    assert_true(fs_mem_available() > 0);
    assert_int_equal(vae_will_tile(g.v, 0, N, H, W), 0);
    assert_int_equal(vae_will_tile(g.v, 0, N, 30, 32), -1);
    assert_int_equal(vae_tiling_parse("auto"), VAE_TILING_AUTO);
    assert_int_equal(vae_tiling_parse("on"), VAE_TILING_ON);
    assert_int_equal(vae_tiling_parse("off"), VAE_TILING_OFF);
    assert_int_equal(vae_tiling_parse("yes"), -1);
    /* /proc/meminfo lines */
    const char *mi = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\nHugePages_Total:       0\n";
    assert_true(fs_meminfo_bytes(mi, "MemAvailable") == 2048LL * 1024);
    assert_true(fs_meminfo_bytes(mi, "MemTotal") == 24000000LL * 1024);
    assert_true(fs_meminfo_bytes(mi, "HugePages_Total") == 0);
    assert_true(fs_meminfo_bytes(mi, "Mem") == -1);
    assert_true(fs_meminfo_bytes("MemAvailable: lots\n", "MemAvailable") == -1);
    free(img); free(on); free(off); free(a1); free(a2);
    golden_close(&g);
}

/* (d) a bad mode or tile size is refused in one line naming it and what is
 * allowed, and leaves the setting as it was */
static void test_tiling_refuses(void **st) {
    (void)st;
    Golden g;
    golden_open(&g, "vae_small"); /* f = 4: tiles of 16..16384 px, multiples of 4 */
    set_tiling(g.v, VAE_TILING_ON, 16);
    struct { int mode, px; const char *want; } bad[] = {
        {VAE_TILING_ON, 18, "tile size 18 px: use a multiple of 4 (the VAE's scale factor) from 16 to 16384, or 0 for 512"},
        {VAE_TILING_ON, 12, "tile size 12 px"}, {VAE_TILING_AUTO, -8, "tile size -8 px"},
        {VAE_TILING_ON, 16388, "tile size 16388 px"}, {7, 64, "vae tiling mode 7: use off, on or auto"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        char err[256] = "";
        assert_int_equal(vae_set_tiling(g.v, bad[k].mode, bad[k].px, err, sizeof err), -1);
        if (!strstr(err, bad[k].want) || strchr(err, '\n')) fail_msg("got '%s', want '%s'", err, bad[k].want);
        assert_int_equal(vae_tile_count(g.v, 8, 8), 9); /* still 16 px tiles */
    }
    golden_close(&g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_param_table),
        cmocka_unit_test(test_config_published),
        cmocka_unit_test(test_config_refuses),
        cmocka_unit_test(test_golden_small),
        cmocka_unit_test(test_golden_plain),
        cmocka_unit_test(test_frozen_promise_kept),
        cmocka_unit_test(test_bad_shapes),
        cmocka_unit_test_setup_teardown(test_missing_and_misshaped, setup_tmp, teardown_tmp),
        cmocka_unit_test_setup_teardown(test_old_attention_names, setup_tmp, teardown_tmp),
        cmocka_unit_test(test_memory_plan),
        cmocka_unit_test(test_tile_weights),
        cmocka_unit_test(test_tiled_passes),
        cmocka_unit_test(test_tiled_close),
        cmocka_unit_test(test_tiling_modes),
        cmocka_unit_test(test_tiling_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

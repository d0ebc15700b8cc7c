/* test_make_checkpoint.c — tools/make-checkpoint writes full-size SD 1.5 and
 * SDXL base single files that the engine reads as the real thing. Run with
 * --header-only: the header of the full-size file, then a sparse file of the
 * full size whose data reads as zeros, so nothing here needs gigabytes (the
 * data itself is checked by `make check-large`, tests/large/run.sh).
 *
 * For each kind: convert_detect names it; every diffusers parameter of the
 * engine's own UNet / VAE / text encoders is found through the convert tables
 * in the file with the right shape after the transform (convert_shape on the
 * header's tensor; convert_read on the small ones); every key of the file is
 * read exactly once (a fused q/k/v once per third) or is a key
 * convert_ldm_ignored tolerates; the parameters per part are the published
 * counts; the header is laid out as the project's writer lays it out. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "test_helpers.h"

#include "core/backend.h"
#include "core/fsutil.h"
#include "formats/safetensors.h"
#include "models/convert.h"
#include "models/text_encoder.h"
#include "models/unet.h"
#include "models/vae.h"

#define TOOL "build/tools/make-checkpoint"

/* Published parameter counts (the engine's tables must reproduce them; these
 * numbers do not come from the engine):
 *  - UNets: runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-
 *    base-1.0, unet/config.json of each (../shared/reference/, README.md);
 *  - VAE: diffusers' AutoencoderKL of SD (vae/ of both repositories: the same
 *    architecture, block_out_channels 128,256,512,512, 2 layers per block),
 *    83,653,863, also stated in src/models/vae.h;
 *  - text encoders: HF CLIPTextModel of openai/clip-vit-large-patch14
 *    (text_encoder/ of both) and the CLIPTextModelWithProjection of SDXL's
 *    text_encoder_2 (OpenCLIP ViT-bigG/14). By hand from their config.json:
 *    ViT-L: (49408 + 77) x 768 embeddings + 12 x 7,087,872 per layer + 1,536
 *    final norm = 123,060,480; bigG: (49408 + 77) x 1280 + 32 x 19,677,440 +
 *    2,560 + 1280 x 1280 projection = 694,659,840. */
#define SD15_UNET 859520964LL
#define SDXL_UNET 2567463684LL
#define SD_VAE 83653863LL
#define CLIP_L_TEXT 123060480LL
#define BIGG_TEXT 694659840LL

/* The two text towers as HF configures them (only the sizes matter here). */
static const TextConfig CLIP_L = {
    .vocab_size = 49408, .hidden_size = 768, .intermediate_size = 3072, .num_hidden_layers = 12,
    .num_attention_heads = 12, .max_position_embeddings = 77, .hidden_act = TE_ACT_QUICK_GELU,
    .layer_norm_eps = 1e-5f, .projection_dim = 0, .eos_token_id = 2,
};
static const TextConfig BIGG = {
    .vocab_size = 49408, .hidden_size = 1280, .intermediate_size = 5120, .num_hidden_layers = 32,
    .num_attention_heads = 20, .max_position_embeddings = 77, .hidden_act = TE_ACT_GELU,
    .layer_norm_eps = 1e-5f, .projection_dim = 1280, .eos_token_id = 2,
};

static int setup(void **state) {
    (void)state;
    return th_tmpdir_make("mkckpt");
}
static int teardown(void **state) {
    (void)state;
    return th_tmpdir_remove();
}

/* Runs the tool; its exit status. Output goes to tmpdir/<name>.out. */
static int run_tool(const char *args, const char *name) {
    char cmd[2048], out[512];
    path_of(out, name);
    snprintf(cmd, sizeof cmd, TOOL " %s > '%s.out' 2>&1", args, out);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void make_header_only(const char *kind, const char *dtype, char *path) {
    char args[1024], name[64];
    snprintf(name, sizeof name, "%s-%s.safetensors", kind, dtype);
    path_of(path, name);
    snprintf(args, sizeof args, "--kind %s --dtype %s --header-only '%s'", kind, dtype, path);
    if (run_tool(args, name)) fail_msg(TOOL " %s failed (see %s.out)", args, path);
}

typedef struct {
    const SafeTensors *st;
    int *uses;        /* per key of the file: diffusers tensors read from it */
    unsigned *parts;  /* per key: q/k/v parts read (bits) */
    int64_t params[4];
    int reads[4];     /* convert_read calls per part */
} Seen;

static int key_index(const SafeTensors *st, const char *name) {
    for (int i = 0; i < st_count(st); i++)
        if (!strcmp(st_at(st, i)->name, name)) return i;
    return -1;
}

/* One diffusers parameter: its key exists, has the shape after the
 * transform; the first small ones of a part read through convert_read. */
static void check_param(Seen *s, const ConvertMap *m, ConvertPart part, const char *name, int ndim,
                        const int64_t *shape) {
    ConvertName c;
    if (convert_to_ldm(m, name, &c)) fail_msg("'%s' has no LDM name", name);
    int k = key_index(s->st, c.ldm);
    if (k < 0) fail_msg("'%s' -> '%s', which the file lacks", name, c.ldm);
    const StTensor *t = st_at(s->st, k);
    int nd;
    int64_t sh[ST_MAX_DIMS], numel = 1;
    if (convert_shape(&c, t, &nd, sh)) fail_msg("'%s' cannot take transform %d", c.ldm, (int)c.transform);
    if (nd != ndim) fail_msg("'%s' gives %d dimensions for '%s', want %d", c.ldm, nd, name, ndim);
    for (int d = 0; d < nd; d++) {
        if (sh[d] != shape[d]) fail_msg("'%s' gives '%s' dim %d = %lld, want %lld", c.ldm, name, d,
                                        (long long)sh[d], (long long)shape[d]);
        numel *= shape[d];
    }
    /* a few small ones through convert_read too: the data is the sparse file's
     * zeros (not more: each read faults in a readahead window of zeroed pages) */
    if (numel <= 4096 && s->reads[part] < 4) {
        s->reads[part]++;
        float *dst = th_falloc(numel);
        char err[512];
        if (convert_read(m, s->st, name, ndim, shape, dst, err, sizeof err)) fail_msg("%s", err);
        for (int64_t i = 0; i < numel; i++) assert_true(dst[i] == 0.0f);
        free(dst);
    }
    if (c.transform == CONVERT_QKV_PART) {
        if (s->parts[k] & (1u << c.part)) fail_msg("'%s' part %d read twice", c.ldm, c.part);
        s->parts[k] |= 1u << c.part;
    }
    s->uses[k]++;
    s->params[part] += numel;
}

static ConvertMap *map(ModelKind kind, ConvertPart part, const ConvertShape *shape) {
    char err[256];
    ConvertMap *m = convert_map_create(kind, part, shape, err, sizeof err);
    if (!m) fail_msg("%s", err);
    return m;
}

static void check_text(Seen *s, Backend *be, ModelKind kind, ConvertPart part, const TextConfig *tc) {
    char err[256];
    /* te_create reserves the parameters with calloc: untouched, no memory used */
    TextEncoder *te = te_create(tc, be, err, sizeof err);
    if (!te) fail_msg("%s", err);
    ConvertShape shape = {.text_layers = tc->num_hidden_layers};
    ConvertMap *m = map(kind, part, &shape);
    for (int i = 0; i < te_n_tensors(te); i++) {
        int nd;
        int64_t sh[2], off;
        const char *name = te_tensor_info(te, i, &nd, sh, &off);
        check_param(s, m, part, name, nd, sh);
    }
    assert_int_equal(s->params[part], te_n_params(te));
    convert_map_free(m);
    te_free(te);
}

static void check_file(const char *path, ModelKind want, const char *unet_name, int want_keys,
                       int dtype) {
    char err[512], desc[512];
    SafeTensors *st = st_open(path, err, sizeof err);
    if (!st) fail_msg("%s", err);

    /* what it is */
    ModelKind kind;
    if (convert_detect(st, &kind, desc, sizeof desc, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(kind, want);
    const char *family = want == MODEL_KIND_SD15
        ? "SD 1.5 single file: UNet (context 768, 4 input channels), VAE, CLIP ViT-L;"
        : "SDXL base single file: UNet (context 2048, 4 input channels), VAE, CLIP ViT-L + "
          "OpenCLIP bigG;";
    if (strncmp(desc, family, strlen(family))) fail_msg("detected as: %s", desc);
    assert_int_equal(st_count(st), want_keys);

    /* the header as stw_save writes it: format pt, 8-aligned data, keys by
     * dtype size (largest first) then name, the file exactly header + data */
    const char *fmt = st_metadata(st, "format");
    assert_non_null(fmt);
    assert_string_equal(fmt, "pt");
    assert_int_equal(st_metadata_count(st), 1);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char len8[8];
    assert_int_equal(fread(len8, 1, 8, f), 8);
    fclose(f);
    uint64_t hlen = 0, data = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)len8[i] << (8 * i);
    assert_int_equal(hlen % 8, 0);
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *a = st_at(st, i);
        data += a->nbytes;
        if (a->dtype != ST_I64 && a->dtype != ST_I32) assert_int_equal(a->dtype, dtype);
        if (!i) continue;
        const StTensor *b = st_at(st, i - 1);
        int sa = st_dtype_size(a->dtype), sb = st_dtype_size(b->dtype);
        if (sb < sa || (sb == sa && strcmp(b->name, a->name) >= 0))
            fail_msg("keys out of order: '%s' before '%s'", b->name, a->name);
    }
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal((uint64_t)sb.st_size, 8 + hlen + data);

    /* every parameter of the engine's architecture, through the tables */
    Seen s = {.st = st};
    s.uses = calloc((size_t)st_count(st), sizeof *s.uses);
    s.parts = calloc((size_t)st_count(st), sizeof *s.parts);
    assert_non_null(s.uses);
    assert_non_null(s.parts);

    UNetConfig uc;
    assert_int_equal(unet_config_builtin(unet_name, &uc), 0);
    UNetParam *up;
    UNetLinear *ul;
    int nu, nl;
    assert_int_equal(unet_param_table(&uc, &up, &nu, &ul, &nl), 0);
    ConvertShape us = {.unet = &uc};
    ConvertMap *m = map(kind, CONVERT_UNET, &us);
    for (int i = 0; i < nu; i++) check_param(&s, m, CONVERT_UNET, up[i].name, up[i].ndim, up[i].shape);
    convert_map_free(m);
    free(up);
    free(ul);

    VAEConfig vc;
    assert_int_equal(vae_config_builtin(unet_name, &vc), 0);
    VAEParam *vp;
    int nv;
    assert_int_equal(vae_param_table(&vc, &vp, &nv), 0);
    ConvertShape vs = {.vae_levels = vc.n_levels, .vae_layers_per_block = vc.layers_per_block};
    m = map(kind, CONVERT_VAE, &vs);
    for (int i = 0; i < nv; i++) check_param(&s, m, CONVERT_VAE, vp[i].name, vp[i].ndim, vp[i].shape);
    convert_map_free(m);
    free(vp);

    Backend *be = backend_cpu_create();
    assert_non_null(be);
    check_text(&s, be, kind, CONVERT_TEXT, &CLIP_L);
    if (kind == MODEL_KIND_SDXL) check_text(&s, be, kind, CONVERT_TEXT_2, &BIGG);
    backend_destroy(be);

    /* the published sizes */
    assert_int_equal(s.params[CONVERT_UNET], kind == MODEL_KIND_SD15 ? SD15_UNET : SDXL_UNET);
    assert_int_equal(s.params[CONVERT_VAE], SD_VAE);
    assert_int_equal(s.params[CONVERT_TEXT], CLIP_L_TEXT);
    assert_int_equal(s.params[CONVERT_TEXT_2], kind == MODEL_KIND_SDXL ? BIGG_TEXT : 0);

    /* nothing left over: each key read once (a fused q/k/v once per third), or
     * a key that holds no weight; those are the ones real files carry */
    int ignored = 0;
    for (int i = 0; i < st_count(st); i++) {
        const char *name = st_at(st, i)->name;
        if (convert_ldm_ignored(name)) {
            if (s.uses[i]) fail_msg("'%s' is read but called no weight", name);
            ignored++;
        } else if (s.parts[i]) {
            if (s.parts[i] != 7u || s.uses[i] != 3) fail_msg("fused '%s' not read as q, k, v", name);
        } else if (s.uses[i] != 1) {
            fail_msg("key '%s' read %d times", name, s.uses[i]);
        }
    }
    const char *pos = kind == MODEL_KIND_SD15
        ? "cond_stage_model.transformer.text_model.embeddings.position_ids"
        : "conditioner.embedders.0.transformer.text_model.embeddings.position_ids";
    const StTensor *p = st_find(st, pos);
    assert_non_null(p);
    assert_int_equal(p->dtype, ST_I64);
    assert_int_equal(p->ndim, 2);
    assert_int_equal(p->shape[1], 77);
    if (kind == MODEL_KIND_SD15) {
        /* position_ids, 12 schedule buffers, model_ema.decay / num_updates */
        assert_int_equal(ignored, 15);
        const StTensor *ac = st_find(st, "alphas_cumprod");
        assert_non_null(ac);
        assert_int_equal(ac->shape[0], 1000);
    } else {
        assert_int_equal(ignored, 2);   /* position_ids, bigG's logit_scale */
        assert_non_null(st_find(st, "conditioner.embedders.1.model.logit_scale"));
        const StTensor *t = st_find(st, "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight");
        assert_non_null(t);
        assert_int_equal(t->shape[0], 3 * 1280);
        t = st_find(st, "first_stage_model.decoder.mid.attn_1.q.weight");
        assert_non_null(t);
        assert_int_equal(t->ndim, 4);
    }
    free(s.uses);
    free(s.parts);
    st_close(st);
}

/* SD 1.5: 686 UNet + 248 VAE + 196 CLIP ViT-L keys + 15 that are no weight:
 * 1145, as many as runwayml's v1-5-pruned-emaonly.safetensors has. */
static void test_sd15(void **state) {
    (void)state;
    char path[512];
    make_header_only("sd15", "f16", path);
    check_file(path, MODEL_KIND_SD15, "sd15", 1145, ST_F16);
}

/* SDXL base: 1680 UNet + 248 VAE + 196 CLIP ViT-L + 389 bigG + 2 = 2515. */
static void test_sdxl(void **state) {
    (void)state;
    char path[512];
    make_header_only("sdxl", "bf16", path);
    check_file(path, MODEL_KIND_SDXL, "sdxl", 2515, ST_BF16);
}

/* f32 changes the dtypes and the size, nothing else; the tool's own summary
 * names the counts. */
static void test_f32_and_summary(void **state) {
    (void)state;
    char path[512], out[600];
    make_header_only("sd15", "f32", path);
    check_file(path, MODEL_KIND_SD15, "sd15", 1145, ST_F32);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    /* 4 bytes per parameter, the buffers (12 x 1000 F32 schedule, 77 I64
     * position ids, 2 scalars) and the header (about 156 kB) */
    int64_t body = 4 * (SD15_UNET + SD_VAE + CLIP_L_TEXT) + 4 * 12000 + 8 * 77 + 4 + 4;
    assert_true(sb.st_size > body + 8 + 100000);
    assert_true(sb.st_size < body + 8 + 200000);
    snprintf(out, sizeof out, "%s.out", path);
    size_t n;
    char err[256];
    char *text = fs_read_all(out, FS_TEXT_MAX, &n, err, sizeof err);
    if (!text) fail_msg("%s", err);
    assert_non_null(strstr(text, "859,520,964"));
    assert_non_null(strstr(text, "83,653,863"));
    assert_non_null(strstr(text, "123,060,480"));
    assert_non_null(strstr(text, "1145 tensors"));
    free(text);
}

/* Bad arguments fail in one line and leave nothing behind; --verify rejects a
 * file whose data is not what kind, dtype and seed give (the sparse zeros). */
static void test_errors(void **state) {
    (void)state;
    char path[512], args[1024];
    path_of(path, "bad.safetensors");
    snprintf(args, sizeof args, "--kind sd2 '%s'", path);
    assert_int_equal(run_tool(args, "bad1"), 1);
    snprintf(args, sizeof args, "--kind sd15 --dtype f8 '%s'", path);
    assert_int_equal(run_tool(args, "bad2"), 1);
    snprintf(args, sizeof args, "--kind sd15 --seed -1 '%s'", path);
    assert_int_equal(run_tool(args, "bad3"), 1);
    assert_false(fs_exists(path));
    make_header_only("sd15", "f16", path);
    snprintf(args, sizeof args, "--kind sd15 --dtype f16 --verify '%s'", path);
    assert_int_equal(run_tool(args, "verify"), 1);
    snprintf(args, sizeof args, "--kind sdxl --dtype f16 --verify '%s'", path);
    assert_int_equal(run_tool(args, "verify2"), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sd15),
        cmocka_unit_test(test_sdxl),
        cmocka_unit_test(test_f32_and_summary),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

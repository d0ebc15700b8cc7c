/* test_convert.c — the LDM single-file <-> diffusers name tables and the
 * model-kind detection (src/models/convert.c), on
 *  - small random checkpoints made by tests/golden/gen_ldm_checkpoint.py, which
 *    builds the LDM layout module by module as the original code does and
 *    renames it to diffusers as diffusers' converter does (independently of the
 *    C table): ldm_{sd15,sdxl}like.safetensors (single file) and
 *    ldm_*_diffusers.safetensors (the same values as unet.* / vae.* /
 *    text_encoder.* / text_encoder_2.*);
 *  - the full SD 1.5 / SDXL UNet parameter tables (names only);
 *  - small hand-made headers for every kind detection refuses. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_helpers.h"

#include "core/backend.h"
#include "formats/safetensors.h"
#include "models/convert.h"
#include "models/text_encoder.h"
#include "models/unet.h"

#define GOLDEN_DIR "tests/golden/"

/* ---------------------------------------------------------------- helpers */

static int same_shape(int na, const int64_t *a, int nb, const int64_t *b) {
    if (na != nb) return 0;
    for (int d = 0; d < na; d++) if (a[d] != b[d]) return 0;
    return 1;
}

static int one_line(const char *s) { return s[0] && !strchr(s, '\n'); }

typedef struct {
    const char *stem;
    ModelKind kind;
    SafeTensors *ldm, *diff;
    UNetConfig ucfg;
    TextConfig tc[2];
    int ntext;
    int vae_levels, vae_lpb;
    /* per LDM tensor: bit p set once part p (0 for a plain tensor) was read */
    unsigned *used;
    int *uses;
    int diff_seen;
} Pair;

static int ldm_index(const SafeTensors *st, const char *name) {
    for (int i = 0; i < st_count(st); i++)
        if (!strcmp(st_at(st, i)->name, name)) return i;
    return -1;
}

static void pair_open(Pair *p, const char *stem, ModelKind kind) {
    char path[256], err[512];
    memset(p, 0, sizeof *p);
    p->stem = stem;
    p->kind = kind;
    snprintf(path, sizeof path, GOLDEN_DIR "ldm_%s.safetensors", stem);
    p->ldm = st_open(path, err, sizeof err);
    if (!p->ldm) fail_msg("%s", err);
    snprintf(path, sizeof path, GOLDEN_DIR "ldm_%s_diffusers.safetensors", stem);
    p->diff = st_open(path, err, sizeof err);
    if (!p->diff) fail_msg("%s", err);
    const char *uc = st_metadata(p->diff, "unet_config");
    assert_non_null(uc);
    if (unet_config_from_json(uc, &p->ucfg, err, sizeof err)) fail_msg("%s", err);
    static const char *const tkeys[2] = {"text_encoder_config", "text_encoder_2_config"};
    for (int i = 0; i < 2; i++) {
        const char *j = st_metadata(p->diff, tkeys[i]);
        if (!j) break;
        if (te_config_parse(&p->tc[i], j, strlen(j), tkeys[i], err, sizeof err)) fail_msg("%s", err);
        p->ntext = i + 1;
    }
    const char *vj = st_metadata(p->diff, "vae_config");
    assert_non_null(vj);
    /* {"block_out_channels": [8, 16], "layers_per_block": 1, ...}: count the levels */
    const char *b = strstr(vj, "\"block_out_channels\"");
    assert_non_null(b);
    b = strchr(b, '[');
    p->vae_levels = 1;
    for (; *b && *b != ']'; b++) if (*b == ',') p->vae_levels++;
    const char *l = strstr(vj, "\"layers_per_block\":");
    assert_non_null(l);
    p->vae_lpb = atoi(l + strlen("\"layers_per_block\":"));
    p->used = calloc((size_t)st_count(p->ldm), sizeof *p->used);
    p->uses = calloc((size_t)st_count(p->ldm), sizeof *p->uses);
    assert_non_null(p->used);
    assert_non_null(p->uses);
}

static void pair_close(Pair *p) {
    st_close(p->ldm);
    st_close(p->diff);
    free(p->used);
    free(p->uses);
}

/* One diffusers tensor of a part: its LDM source exists, has the right shape
 * after the transform and, transformed, exactly the diffusers file's values;
 * the reverse lookups give the name back. */
static void check_name(Pair *p, const ConvertMap *m, const char *folder, const char *name,
                       int ndim, const int64_t *shape) {
    char dkey[CONVERT_NAME_MAX + 32];
    snprintf(dkey, sizeof dkey, "%s.%s", folder, name);
    const StTensor *dt = st_find(p->diff, dkey);
    if (!dt) fail_msg("%s: the diffusers file has no '%s'", p->stem, dkey);
    if (shape && !same_shape(ndim, shape, dt->ndim, dt->shape))
        fail_msg("%s: '%s' in the diffusers file has another shape than the engine's", p->stem, dkey);
    p->diff_seen++;

    ConvertName c;
    if (convert_to_ldm(m, name, &c)) fail_msg("%s: '%s' has no LDM name", p->stem, name);
    assert_string_equal(c.diffusers, name);
    int li = ldm_index(p->ldm, c.ldm);
    if (li < 0) fail_msg("%s: '%s' -> '%s', which the single file lacks", p->stem, name, c.ldm);
    const StTensor *lt = st_at(p->ldm, li);
    int nd;
    int64_t sh[ST_MAX_DIMS];
    if (convert_shape(&c, lt, &nd, sh) || !same_shape(nd, sh, dt->ndim, dt->shape))
        fail_msg("%s: '%s' (transform %d) does not give the shape of '%s'", p->stem, c.ldm,
                 (int)c.transform, name);
    float *a = th_falloc(dt->numel), *b = th_falloc(dt->numel);
    assert_int_equal(convert_read_f32(&c, lt, a), 0);
    assert_int_equal(st_read_f32(dt, b), 0);
    if (memcmp(a, b, (size_t)dt->numel * sizeof *a))
        fail_msg("%s: '%s' from '%s' differs from the diffusers file", p->stem, name, c.ldm);
    free(a);
    free(b);
    unsigned bit = 1u << c.part;
    if (p->used[li] & bit) fail_msg("%s: '%s' (part %d) read twice", p->stem, c.ldm, c.part);
    p->used[li] |= bit;
    p->uses[li]++;

    /* reverse: the LDM key lists this name, with the same transform */
    ConvertName back[3];
    int n = convert_from_ldm(m, c.ldm, back), found = 0;
    assert_true(n == 1 || n == 3);
    assert_int_equal(n == 3, c.transform == CONVERT_QKV_PART);
    for (int i = 0; i < n; i++) {
        assert_string_equal(back[i].ldm, c.ldm);
        if (!strcmp(back[i].diffusers, name)) {
            found = 1;
            assert_int_equal(back[i].transform, c.transform);
            assert_int_equal(back[i].part, c.part);
            assert_int_equal(back[i].part, i);
        }
    }
    if (!found) fail_msg("%s: '%s' -> '%s' does not map back", p->stem, name, c.ldm);

    /* module paths (what adapter export uses) round-trip too */
    size_t len = strlen(name);
    if (len > 7 && !strcmp(name + len - 7, ".weight")) {
        char mod[CONVERT_NAME_MAX];
        snprintf(mod, sizeof mod, "%.*s", (int)(len - 7), name);
        ConvertName cm, mb[3];
        if (convert_module_to_ldm(m, mod, &cm)) fail_msg("module '%s' has no LDM path", mod);
        assert_int_equal(cm.transform, c.transform);
        int k = convert_module_from_ldm(m, cm.ldm, mb);
        assert_int_equal(k, n);
        assert_string_equal(mb[c.part < k ? c.part : 0].diffusers, mod);
    }
}

static ConvertMap *pair_map(Pair *p, ConvertPart part) {
    ConvertShape s = {.unet = &p->ucfg, .vae_levels = p->vae_levels,
                      .vae_layers_per_block = p->vae_lpb,
                      .text_layers = p->tc[1].num_hidden_layers};
    char err[256];
    ConvertMap *m = convert_map_create(p->kind, part, &s, err, sizeof err);
    if (!m) fail_msg("%s", err);
    return m;
}

static void check_pair(const char *stem, ModelKind kind) {
    Pair p;
    pair_open(&p, stem, kind);
    char err[512];

    /* UNet: every parameter of the engine's table */
    ConvertMap *m = pair_map(&p, CONVERT_UNET);
    assert_string_equal(convert_map_ldm_prefix(m), "model.diffusion_model.");
    UNetParam *params;
    UNetLinear *lins;
    int np, nlin;
    assert_int_equal(unet_param_table(&p.ucfg, &params, &np, &lins, &nlin), 0);
    for (int i = 0; i < np; i++) check_name(&p, m, "unet", params[i].name, params[i].ndim, params[i].shape);
    free(params);
    free(lins);
    convert_map_free(m);

    /* VAE: every vae.* tensor of the diffusers file (the engine's VAE is not here yet) */
    m = pair_map(&p, CONVERT_VAE);
    for (int i = 0; i < st_count(p.diff); i++) {
        const StTensor *t = st_at(p.diff, i);
        if (!strncmp(t->name, "vae.", 4)) check_name(&p, m, "vae", t->name + 4, 0, NULL);
    }
    convert_map_free(m);

    /* text encoders: every tensor of the engine's encoder for the config */
    Backend *be = backend_cpu_create();
    assert_non_null(be);
    static const char *const folder[2] = {"text_encoder", "text_encoder_2"};
    for (int k = 0; k < p.ntext; k++) {
        m = pair_map(&p, k ? CONVERT_TEXT_2 : CONVERT_TEXT);
        TextEncoder *te = te_create(&p.tc[k], be, err, sizeof err);
        if (!te) fail_msg("%s", err);
        for (int i = 0; i < te_n_tensors(te); i++) {
            int nd;
            int64_t sh[2], off;
            const char *name = te_tensor_info(te, i, &nd, sh, &off);
            check_name(&p, m, folder[k], name, nd, sh);
        }
        te_free(te);
        convert_map_free(m);
    }

    /* nothing missing, nothing left over: every diffusers tensor was checked,
     * every LDM key read once (a fused qkv once per third) or is no weight */
    assert_int_equal(p.diff_seen, st_count(p.diff));
    const char *listed = st_metadata(p.diff, "ldm_not_weights");
    assert_non_null(listed);
    int n_ignored = 0;
    for (int i = 0; i < st_count(p.ldm); i++) {
        const char *name = st_at(p.ldm, i)->name;
        const char *why = convert_ldm_ignored(name);
        if (why) {
            if (p.uses[i]) fail_msg("%s: '%s' is read but also called no weight", stem, name);
            if (!strstr(listed, name)) fail_msg("%s: '%s' ignored, generator has it as a weight", stem, name);
            n_ignored++;
            continue;
        }
        if (p.uses[i] == 0) fail_msg("%s: LDM key '%s' is never read", stem, name);
        if (p.uses[i] == 3) assert_int_equal(p.used[i], 7u);
        else assert_int_equal(p.uses[i], 1);
    }
    int n_listed = *listed ? 1 : 0;
    for (const char *c = listed; *c; c++) n_listed += *c == ',';
    assert_int_equal(n_ignored, n_listed);
    backend_destroy(be);
    pair_close(&p);
}

static void test_sd15like_tables(void **state) {
    (void)state;
    check_pair("sd15like", MODEL_KIND_SD15);
}

static void test_sdxllike_tables(void **state) {
    (void)state;
    check_pair("sdxllike", MODEL_KIND_SDXL);
}

/* The UNet loaded from the single file through the table is bit for bit the
 * one loaded from the diffusers names. */
static void check_unet_load(const char *stem) {
    char path[256], err[512];
    Pair p;
    pair_open(&p, stem, MODEL_KIND_UNKNOWN);
    Backend *be = backend_cpu_create();
    assert_non_null(be);
    UNet *a = unet_create(&p.ucfg, be, err, sizeof err), *b = unet_create(&p.ucfg, be, err, sizeof err);
    assert_non_null(a);
    assert_non_null(b);
    snprintf(path, sizeof path, GOLDEN_DIR "ldm_%s_diffusers.safetensors", stem);
    if (unet_load_safetensors(a, path, err, sizeof err)) fail_msg("%s", err);
    if (convert_load_unet(b, p.ldm, err, sizeof err)) fail_msg("%s", err);
    int64_t differ = 0;
    for (int i = 0; i < unet_n_params(a); i++) {
        UNetParam *pa = unet_param_at(a, i), *pb = unet_param_at(b, i);
        assert_string_equal(pa->name, pb->name);
        float *ha = th_host(be, pa->data, pa->numel), *hb = th_host(be, pb->data, pb->numel);
        if (memcmp(ha, hb, (size_t)pa->numel * sizeof *ha)) differ++;
        free(ha);
        free(hb);
    }
    assert_int_equal(differ, 0);
    unet_free(a);
    unet_free(b);
    backend_destroy(be);
    pair_close(&p);
}

static void test_unet_load_sd15like(void **state) {
    (void)state;
    check_unet_load("sd15like");
}

static void test_unet_load_sdxllike(void **state) {
    (void)state;
    check_unet_load("sdxllike");
}

/* A UNet whose config does not fit the file: one line naming the tensor. */
static void test_unet_load_wrong_file(void **state) {
    (void)state;
    char err[512];
    Pair p;
    pair_open(&p, "sdxllike", MODEL_KIND_UNKNOWN);
    UNetConfig c;
    assert_int_equal(unet_config_from_json(GOLDEN_DIR "unet_sd15like.json", &c, err, sizeof err), 0);
    Backend *be = backend_cpu_create();
    UNet *u = unet_create(&c, be, err, sizeof err);
    assert_non_null(u);
    assert_int_equal(convert_load_unet(u, p.ldm, err, sizeof err), -1);
    assert_true(one_line(err));
    assert_non_null(strstr(err, "model.diffusion_model."));
    unet_free(u);
    backend_destroy(be);
    pair_close(&p);
}

/* ---------------------------------------------------------------- full size */

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void expect_ldm(const ConvertMap *m, const char *diff, const char *ldm, ConvertTransform t,
                       int part) {
    ConvertName c;
    if (convert_to_ldm(m, diff, &c)) fail_msg("'%s' has no LDM name", diff);
    if (strcmp(c.ldm, ldm)) fail_msg("'%s' -> '%s', expected '%s'", diff, c.ldm, ldm);
    assert_int_equal(c.transform, t);
    assert_int_equal(c.part, part);
}

/* Every parameter of the real UNets maps to a distinct LDM key that maps back;
 * the adaptable linears' module paths round-trip; known keys of the published
 * single files come out. */
static void check_full(const char *name, ModelKind kind, int want_params) {
    UNetConfig cfg;
    assert_int_equal(unet_config_builtin(name, &cfg), 0);
    ConvertShape s = {.unet = &cfg};
    char err[256];
    ConvertMap *m = convert_map_create(kind, CONVERT_UNET, &s, err, sizeof err);
    assert_non_null(m);
    UNetParam *params;
    UNetLinear *lins;
    int np, nlin;
    assert_int_equal(unet_param_table(&cfg, &params, &np, &lins, &nlin), 0);
    assert_int_equal(np, want_params);
    char **ldm = calloc((size_t)np, sizeof *ldm);
    assert_non_null(ldm);
    for (int i = 0; i < np; i++) {
        ConvertName c, back[3];
        if (convert_to_ldm(m, params[i].name, &c)) fail_msg("%s: '%s' unmapped", name, params[i].name);
        assert_int_equal(c.transform, CONVERT_AS_IS);   /* the UNet only renames */
        assert_int_equal(convert_from_ldm(m, c.ldm, back), 1);
        assert_string_equal(back[0].diffusers, params[i].name);
        ldm[i] = strdup(c.ldm);
    }
    qsort(ldm, (size_t)np, sizeof *ldm, cmp_str);
    for (int i = 1; i < np; i++)
        if (!strcmp(ldm[i - 1], ldm[i])) fail_msg("%s: two parameters map to '%s'", name, ldm[i]);
    for (int i = 0; i < np; i++) free(ldm[i]);
    free(ldm);
    for (int i = 0; i < nlin; i++) {
        ConvertName c, back[3];
        if (convert_module_to_ldm(m, lins[i].name, &c)) fail_msg("module '%s' unmapped", lins[i].name);
        assert_int_equal(convert_module_from_ldm(m, c.ldm, back), 1);
        assert_string_equal(back[0].diffusers, lins[i].name);
    }
    free(params);
    free(lins);
    if (kind == MODEL_KIND_SD15) {
        /* SD 1.5: level 0-2 have attention, 3 not; up block 0 has none */
        expect_ldm(m, "down_blocks.0.resnets.1.conv1.weight",
                   "model.diffusion_model.input_blocks.2.0.in_layers.2.weight", 0, 0);
        expect_ldm(m, "down_blocks.0.downsamplers.0.conv.bias", "model.diffusion_model.input_blocks.3.0.op.bias", 0, 0);
        expect_ldm(m, "down_blocks.1.resnets.0.conv_shortcut.weight",
                   "model.diffusion_model.input_blocks.4.0.skip_connection.weight", 0, 0);
        expect_ldm(m, "down_blocks.3.resnets.1.time_emb_proj.weight",
                   "model.diffusion_model.input_blocks.11.0.emb_layers.1.weight", 0, 0);
        expect_ldm(m, "up_blocks.0.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.2.1.conv.weight", 0, 0);
        expect_ldm(m, "up_blocks.1.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.5.2.conv.weight", 0, 0);
        expect_ldm(m, "up_blocks.3.attentions.2.proj_out.weight",
                   "model.diffusion_model.output_blocks.11.1.proj_out.weight", 0, 0);
        expect_ldm(m, "mid_block.resnets.1.norm2.weight", "model.diffusion_model.middle_block.2.out_layers.0.weight", 0, 0);
        expect_ldm(m, "conv_norm_out.bias", "model.diffusion_model.out.0.bias", 0, 0);
        expect_ldm(m, "time_embedding.linear_2.weight", "model.diffusion_model.time_embed.2.weight", 0, 0);
        ConvertName c;
        assert_int_equal(convert_to_ldm(m, "add_embedding.linear_1.weight", &c), -1);
        assert_int_equal(convert_to_ldm(m, "up_blocks.3.upsamplers.0.conv.weight", &c), -1);
    } else {
        /* SDXL: level 0 has no attention, up block 2 none; depth 10 at level 2 */
        expect_ldm(m, "add_embedding.linear_1.weight", "model.diffusion_model.label_emb.0.0.weight", 0, 0);
        expect_ldm(m, "add_embedding.linear_2.bias", "model.diffusion_model.label_emb.0.2.bias", 0, 0);
        expect_ldm(m, "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.weight",
                   "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight", 0, 0);
        expect_ldm(m, "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2.bias",
                   "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.ff.net.2.bias", 0, 0);
        expect_ldm(m, "mid_block.attentions.0.transformer_blocks.9.attn2.to_k.weight",
                   "model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight", 0, 0);
        expect_ldm(m, "up_blocks.0.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.2.2.conv.weight", 0, 0);
        expect_ldm(m, "up_blocks.1.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.5.2.conv.weight", 0, 0);
        expect_ldm(m, "up_blocks.2.resnets.2.conv_shortcut.weight",
                   "model.diffusion_model.output_blocks.8.0.skip_connection.weight", 0, 0);
        /* the table has no attention at SDXL's level 0: that name falls nowhere */
        ConvertName c;
        assert_int_equal(convert_to_ldm(m, "down_blocks.0.attentions.0.norm.weight", &c), -1);
    }
    convert_map_free(m);
}

static void test_full_sd15(void **state) {
    (void)state;
    check_full("sd15", MODEL_KIND_SD15, 686);
}

static void test_full_sdxl(void **state) {
    (void)state;
    check_full("sdxl", MODEL_KIND_SDXL, 1680);
}

/* SD's VAE (4 levels, 2 resnets per encoder level) and the 32-layer bigG. */
static void test_full_vae_and_text(void **state) {
    (void)state;
    char err[256];
    ConvertShape s = {.vae_levels = 4, .vae_layers_per_block = 2, .text_layers = 32};
    ConvertMap *m = convert_map_create(MODEL_KIND_SD15, CONVERT_VAE, &s, err, sizeof err);
    assert_non_null(m);
    assert_string_equal(convert_map_ldm_prefix(m), "first_stage_model.");
    expect_ldm(m, "decoder.up_blocks.0.resnets.2.conv1.weight", "first_stage_model.decoder.up.3.block.2.conv1.weight", 0, 0);
    expect_ldm(m, "decoder.up_blocks.0.upsamplers.0.conv.bias", "first_stage_model.decoder.up.3.upsample.conv.bias", 0, 0);
    expect_ldm(m, "decoder.up_blocks.3.resnets.0.conv_shortcut.weight",
               "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight", 0, 0);
    expect_ldm(m, "encoder.down_blocks.2.downsamplers.0.conv.weight",
               "first_stage_model.encoder.down.2.downsample.conv.weight", 0, 0);
    expect_ldm(m, "encoder.mid_block.attentions.0.to_out.0.weight",
               "first_stage_model.encoder.mid.attn_1.proj_out.weight", CONVERT_CONV_TO_LINEAR, 0);
    expect_ldm(m, "decoder.mid_block.attentions.0.to_k.bias", "first_stage_model.decoder.mid.attn_1.k.bias", 0, 0);
    expect_ldm(m, "decoder.mid_block.attentions.0.group_norm.weight",
               "first_stage_model.decoder.mid.attn_1.norm.weight", 0, 0);
    expect_ldm(m, "encoder.conv_norm_out.weight", "first_stage_model.encoder.norm_out.weight", 0, 0);
    expect_ldm(m, "post_quant_conv.weight", "first_stage_model.post_quant_conv.weight", 0, 0);
    ConvertName c;
    /* the deepest encoder level has no downsampler, the top decoder level no upsampler */
    assert_int_equal(convert_to_ldm(m, "encoder.down_blocks.3.downsamplers.0.conv.weight", &c), -1);
    assert_int_equal(convert_to_ldm(m, "decoder.up_blocks.3.upsamplers.0.conv.weight", &c), -1);
    assert_int_equal(convert_to_ldm(m, "encoder.down_blocks.0.resnets.0.time_emb_proj.weight", &c), -1);
    convert_map_free(m);

    m = convert_map_create(MODEL_KIND_SDXL, CONVERT_TEXT_2, &s, err, sizeof err);
    assert_non_null(m);
    expect_ldm(m, "text_model.encoder.layers.31.self_attn.v_proj.bias",
               "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_bias", CONVERT_QKV_PART, 2);
    expect_ldm(m, "text_model.encoder.layers.0.self_attn.q_proj.weight",
               "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", CONVERT_QKV_PART, 0);
    expect_ldm(m, "text_model.encoder.layers.5.mlp.fc2.weight",
               "conditioner.embedders.1.model.transformer.resblocks.5.mlp.c_proj.weight", 0, 0);
    expect_ldm(m, "text_model.embeddings.position_embedding.weight",
               "conditioner.embedders.1.model.positional_embedding", 0, 0);
    expect_ldm(m, "text_projection.weight", "conditioner.embedders.1.model.text_projection", CONVERT_TRANSPOSE, 0);
    expect_ldm(m, "text_model.final_layer_norm.bias", "conditioner.embedders.1.model.ln_final.bias", 0, 0);
    assert_int_equal(convert_to_ldm(m, "text_model.encoder.layers.32.mlp.fc1.weight", &c), -1);
    ConvertName mods[3];
    assert_int_equal(convert_module_to_ldm(m, "text_model.encoder.layers.3.self_attn.k_proj", &c), 0);
    assert_string_equal(c.ldm, "conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj");
    assert_int_equal(c.transform, CONVERT_QKV_PART);
    assert_int_equal(c.part, 1);
    assert_int_equal(convert_module_from_ldm(m, c.ldm, mods), 3);
    assert_string_equal(mods[0].diffusers, "text_model.encoder.layers.3.self_attn.q_proj");
    assert_string_equal(mods[2].diffusers, "text_model.encoder.layers.3.self_attn.v_proj");
    assert_int_equal(convert_module_to_ldm(m, "text_model.encoder.layers.3.self_attn.out_proj", &c), 0);
    assert_string_equal(c.ldm, "conditioner.embedders.1.model.transformer.resblocks.3.attn.out_proj");
    convert_map_free(m);

    m = convert_map_create(MODEL_KIND_SD15, CONVERT_TEXT, &s, err, sizeof err);
    expect_ldm(m, "text_model.encoder.layers.11.self_attn.q_proj.weight",
               "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight", 0, 0);
    convert_map_free(m);
    m = convert_map_create(MODEL_KIND_SDXL, CONVERT_TEXT, &s, err, sizeof err);
    expect_ldm(m, "text_model.embeddings.token_embedding.weight",
               "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", 0, 0);
    assert_int_equal(convert_module_to_ldm(m, "text_model.encoder.layers.0.mlp.fc1", &c), 0);
    assert_string_equal(c.ldm, "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1");
    convert_map_free(m);

    /* tables only for the loadable kinds, parts they have */
    assert_null(convert_map_create(MODEL_KIND_SD15, CONVERT_TEXT_2, &s, err, sizeof err));
    assert_non_null(strstr(err, "text_encoder_2"));
    assert_null(convert_map_create(MODEL_KIND_SD2, CONVERT_UNET, &s, err, sizeof err));
    assert_non_null(strstr(err, "SD 2.x"));
    assert_null(convert_map_create(MODEL_KIND_SD15, CONVERT_UNET, &s, err, sizeof err));   /* no config */
    s.vae_levels = 0;
    assert_null(convert_map_create(MODEL_KIND_SD15, CONVERT_VAE, &s, err, sizeof err));
}

/* Transforms on hand-made tensors: values and shapes, F16 too. */
static void test_transforms(void **state) {
    (void)state;
    float w[12];
    for (int i = 0; i < 12; i++) w[i] = (float)i;
    StTensor t = {.name = "x", .dtype = ST_F32, .ndim = 2, .shape = {6, 2}, .numel = 12, .data = w,
                  .nbytes = sizeof w};
    ConvertName c = {.transform = CONVERT_QKV_PART, .part = 2};
    int nd;
    int64_t sh[ST_MAX_DIMS];
    float out[12];
    assert_int_equal(convert_shape(&c, &t, &nd, sh), 0);
    assert_int_equal(nd, 2);
    assert_int_equal(sh[0], 2);
    assert_int_equal(convert_read_f32(&c, &t, out), 0);
    for (int i = 0; i < 4; i++) assert_true(out[i] == (float)(8 + i));
    c.transform = CONVERT_TRANSPOSE;   /* [6,2] -> [2,6] */
    assert_int_equal(convert_shape(&c, &t, &nd, sh), 0);
    assert_true(sh[0] == 2 && sh[1] == 6);
    assert_int_equal(convert_read_f32(&c, &t, out), 0);
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 2; j++) assert_true(out[j * 6 + i] == w[i * 2 + j]);
    uint16_t h[9];
    for (int i = 0; i < 9; i++) h[i] = f32_to_f16((float)i - 4);
    StTensor th = {.name = "h", .dtype = ST_F16, .ndim = 1, .shape = {9}, .numel = 9, .data = h,
                   .nbytes = sizeof h};
    c.transform = CONVERT_QKV_PART;
    c.part = 1;
    assert_int_equal(convert_read_f32(&c, &th, out), 0);
    assert_true(out[0] == -1 && out[1] == 0 && out[2] == 1);
    th.shape[0] = th.numel = 8;   /* not a multiple of 3 */
    assert_int_equal(convert_shape(&c, &th, &nd, sh), -1);
    c.transform = CONVERT_CONV_TO_LINEAR;
    StTensor tc = {.name = "c", .dtype = ST_F32, .ndim = 4, .shape = {3, 4, 1, 1}, .numel = 12, .data = w,
                   .nbytes = sizeof w};
    assert_int_equal(convert_shape(&c, &tc, &nd, sh), 0);
    assert_true(nd == 2 && sh[0] == 3 && sh[1] == 4);
    tc.ndim = 2;   /* already a linear: taken as it is */
    assert_int_equal(convert_shape(&c, &tc, &nd, sh), 0);
    tc.ndim = 4; tc.shape[2] = 3; tc.shape[3] = 3; tc.shape[1] = 1;   /* a 3x3 conv is not a linear */
    assert_int_equal(convert_shape(&c, &tc, &nd, sh), -1);
}

/* ---------------------------------------------------------------- detection */

typedef struct { const char *name; int dtype; int ndim; int64_t shape[4]; } Key;

static SafeTensors *header_file(const char *file, const Key *keys, int n) {
    static uint16_t zeros[16384];
    StWriter *w = stw_create();
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < keys[i].ndim; d++) numel *= keys[i].shape[d];
        assert_true(numel * st_dtype_size(keys[i].dtype ? keys[i].dtype : ST_F16) <= (int64_t)sizeof zeros);
        assert_int_equal(stw_add_ref(w, keys[i].name, keys[i].dtype ? keys[i].dtype : ST_F16, keys[i].ndim,
                                     keys[i].shape, zeros), 0);
    }
    char path[512], err[512];
    path_of(path, file);
    if (stw_save(w, path, err, sizeof err)) fail_msg("%s", err);
    stw_free(w);
    SafeTensors *st = st_open(path, err, sizeof err);
    if (!st) fail_msg("%s", err);
    return st;
}

/* detect and check the kind, rc, and that desc / err hold the words */
static void expect_kind(const char *file, const Key *keys, int n, ModelKind want, const char *w1,
                        const char *w2) {
    SafeTensors *st = header_file(file, keys, n);
    ModelKind k = MODEL_KIND_UNKNOWN;
    char desc[512] = "", err[512] = "";
    int rc = convert_detect(st, &k, desc, sizeof desc, err, sizeof err);
    const char *text = rc ? err : desc;
    if (k != want) fail_msg("%s: kind %s, expected %s (%s)", file, convert_kind_name(k), convert_kind_name(want), text);
    assert_int_equal(rc, want == MODEL_KIND_SD15 || want == MODEL_KIND_SDXL ? 0 : -1);
    assert_true(one_line(desc));
    if (rc) assert_true(one_line(err));
    /* the refusal names what was found and why; desc always says what and the dtypes */
    const char *w[2] = {w1, w2};
    for (int i = 0; i < 2; i++)
        if (w[i] && !strstr(err, w[i]) && !strstr(desc, w[i]))
            fail_msg("%s: '%s' / '%s' lack '%s'", file, text, desc, w[i]);
    if (rc) assert_int_equal(strncmp(err, desc, 16), 0);   /* both start with what was found */
    st_close(st);
}

#define N(a) ((int)(sizeof a / sizeof a[0]))
#define UNET "model.diffusion_model."

static void test_detect_generated(void **state) {
    (void)state;
    static const struct { const char *stem; ModelKind kind; const char *w1, *w2; } c[] = {
        {"sd15like", MODEL_KIND_SD15, "SD 1.5 single file: UNet (context 24, 4 input channels), VAE, CLIP ViT-L",
         "373 tensors: 371 F32 2 other"},
        {"sdxllike", MODEL_KIND_SDXL, "SDXL base single file: UNet (context 32, 4 input channels), VAE, "
         "CLIP ViT-L + OpenCLIP bigG", "611 tensors: 1 F32 485 F16 124 BF16 1 other"},
    };
    for (int i = 0; i < N(c); i++) {
        char path[256], err[512], desc[512];
        snprintf(path, sizeof path, GOLDEN_DIR "ldm_%s.safetensors", c[i].stem);
        SafeTensors *st = st_open(path, err, sizeof err);
        assert_non_null(st);
        ModelKind k;
        if (convert_detect(st, &k, desc, sizeof desc, err, sizeof err)) fail_msg("%s", err);
        assert_int_equal(k, c[i].kind);
        if (!strstr(desc, c[i].w1) || !strstr(desc, c[i].w2)) fail_msg("desc '%s'", desc);
        st_close(st);
        /* the diffusers-named twin is refused as a diffusers file */
        snprintf(path, sizeof path, GOLDEN_DIR "ldm_%s_diffusers.safetensors", c[i].stem);
        st = st_open(path, err, sizeof err);
        assert_non_null(st);
        assert_int_equal(convert_detect(st, &k, desc, sizeof desc, err, sizeof err), -1);
        assert_int_equal(k, MODEL_KIND_DIFFUSERS_UNET);
        st_close(st);
    }
}

static void test_detect_headers(void **state) {
    (void)state;
    /* real-size layouts, tiny tensors: detection reads keys and the shapes that tell */
    const Key sd15[] = {
        {UNET "input_blocks.0.0.weight", 0, 4, {8, 4, 3, 3}},
        {UNET "input_blocks.1.1.proj_in.weight", 0, 4, {8, 8, 1, 1}},
        {UNET "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 0, 2, {2, 768}},
        {"first_stage_model.encoder.conv_in.weight", ST_F32, 1, {4}},
        {"cond_stage_model.transformer.text_model.final_layer_norm.weight", 0, 1, {768}},
    };
    expect_kind("sd15.safetensors", sd15, N(sd15), MODEL_KIND_SD15,
                "SD 1.5 single file: UNet (context 768, 4 input channels), VAE, CLIP ViT-L", "5 tensors: 1 F32 4 F16");
    expect_kind("sd15_unet_only.safetensors", sd15, 3, MODEL_KIND_SD15, "no VAE (first_stage_model.*)",
                "no text encoder");
    const Key sdxl[] = {
        {UNET "input_blocks.0.0.weight", ST_BF16, 4, {8, 4, 3, 3}},
        {UNET "label_emb.0.0.weight", ST_BF16, 2, {2, 2816}},
        {UNET "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", ST_BF16, 2, {2, 2048}},
        {UNET "input_blocks.4.1.proj_in.weight", ST_BF16, 2, {8, 8}},
        {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", 0, 1, {768}},
        {"conditioner.embedders.1.model.ln_final.weight", 0, 1, {1280}},
        {"first_stage_model.decoder.conv_in.weight", ST_F32, 1, {4}},
    };
    expect_kind("sdxl.safetensors", sdxl, N(sdxl), MODEL_KIND_SDXL,
                "SDXL base single file: UNet (context 2048, 4 input channels), VAE, CLIP ViT-L + OpenCLIP bigG",
                "7 tensors: 1 F32 2 F16 4 BF16");
    expect_kind("sdxl_unet_only.safetensors", sdxl, 4, MODEL_KIND_SDXL, "no CLIP ViT-L", "no OpenCLIP bigG");

    const Key sd2[] = {
        {UNET "input_blocks.0.0.weight", 0, 4, {8, 4, 3, 3}},
        {UNET "input_blocks.1.1.proj_in.weight", 0, 2, {8, 8}},
        {UNET "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 0, 2, {2, 1024}},
        {"cond_stage_model.model.ln_final.weight", 0, 1, {1024}},
    };
    expect_kind("sd2.safetensors", sd2, N(sd2), MODEL_KIND_SD2, "SD 2.x single file: UNet (context 1024", "(SD 2.x 768 models are v-prediction)");
    expect_kind("sd2_unet_only.safetensors", sd2, 3, MODEL_KIND_SD2, "context 1024", "not supported");

    Key inpaint[N(sd15)];
    memcpy(inpaint, sd15, sizeof sd15);
    inpaint[0].shape[1] = 9;
    expect_kind("inpaint.safetensors", inpaint, N(inpaint), MODEL_KIND_INPAINT,
                "an inpainting SD 1.5 UNet (model.diffusion_model.input_blocks.0.0.weight has 9 input channels)",
                "only text-to-image UNets with 4 latent channels");
    Key inpaint_xl[N(sdxl)];
    memcpy(inpaint_xl, sdxl, sizeof sdxl);
    inpaint_xl[0].shape[1] = 9;
    expect_kind("inpaint_xl.safetensors", inpaint_xl, N(inpaint_xl), MODEL_KIND_INPAINT, "inpainting SDXL base UNet", NULL);

    const Key refiner[] = {
        {UNET "input_blocks.0.0.weight", 0, 4, {8, 4, 3, 3}},
        {UNET "label_emb.0.0.weight", 0, 2, {2, 2560}},
        {UNET "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", 0, 2, {2, 1280}},
        {"conditioner.embedders.0.model.ln_final.weight", 0, 1, {1280}},
    };
    expect_kind("refiner.safetensors", refiner, N(refiner), MODEL_KIND_SDXL_REFINER, "SDXL refiner single file: UNet (context 1280",
                "only SDXL base");
    expect_kind("refiner_unet_only.safetensors", refiner, 3, MODEL_KIND_SDXL_REFINER, "context 1280", NULL);

    const Key sd3[] = {
        {UNET "joint_blocks.0.x_block.attn.qkv.weight", 0, 2, {6, 2}},
        {UNET "x_embedder.proj.weight", 0, 2, {2, 2}},
    };
    expect_kind("sd3.safetensors", sd3, N(sd3), MODEL_KIND_SD3, "SD3 (MMDiT, key 'model.diffusion_model.joint_blocks.",
                "only the SD 1.5 and SDXL base UNets");
    const Key flux[] = {
        {"double_blocks.0.img_attn.qkv.weight", ST_BF16, 2, {6, 2}},
        {"single_blocks.0.linear1.weight", ST_BF16, 2, {6, 2}},
    };
    expect_kind("flux.safetensors", flux, N(flux), MODEL_KIND_FLUX, "Flux (key 'double_blocks.0.img_attn.qkv.weight')", NULL);
    const Key flux2[] = {{UNET "double_blocks.0.img_attn.qkv.weight", ST_BF16, 2, {6, 2}}};
    expect_kind("flux2.safetensors", flux2, N(flux2), MODEL_KIND_FLUX, "Flux", "not supported");

    const Key diffusers[] = {
        {"conv_in.weight", 0, 4, {8, 4, 3, 3}},
        {"down_blocks.0.resnets.0.conv1.weight", 0, 4, {8, 8, 3, 3}},
        {"time_embedding.linear_1.weight", 0, 2, {4, 8}},
    };
    expect_kind("diffusion_pytorch_model.safetensors", diffusers, N(diffusers), MODEL_KIND_DIFFUSERS_UNET,
                "a diffusers UNet weights file (key 'down_blocks.0.resnets.0.conv1.weight')",
                "pass the diffusers model folder (with unet/config.json");
    const Key vae[] = {{"encoder.down_blocks.0.resnets.0.conv1.weight", 0, 4, {8, 8, 3, 3}}};
    expect_kind("vae.safetensors", vae, N(vae), MODEL_KIND_UNKNOWN, "a diffusers VAE weights file", "not a whole model");
    const Key te[] = {{"text_model.final_layer_norm.weight", 0, 1, {8}}};
    expect_kind("te.safetensors", te, N(te), MODEL_KIND_UNKNOWN, "a text encoder weights file", NULL);
    const Key lokr[] = {{"lycoris_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lokr_w1", ST_F32, 2, {2, 2}}};
    expect_kind("adapter.safetensors", lokr, N(lokr), MODEL_KIND_ADAPTER, "an adapter (LoRA/LoKr) file", "not a base model");
    const Key lora[] = {{"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", ST_F32, 2, {2, 2}}};
    expect_kind("lora.safetensors", lora, N(lora), MODEL_KIND_ADAPTER, "adapter", NULL);
    const Key other[] = {{"encoder.layer.0.weight", ST_F32, 1, {2}}, {"head.bias", ST_F32, 1, {2}}};
    expect_kind("other.safetensors", other, N(other), MODEL_KIND_UNKNOWN,
                "no Stable Diffusion UNet (no 'model.diffusion_model.*' or 'down_blocks.*' keys; first key "
                "'encoder.layer.0.weight')", "2 tensors: 2 F32");
    expect_kind("empty.safetensors", other, 0, MODEL_KIND_UNKNOWN, "0 tensors: none", NULL);
    const Key odd[] = {
        {UNET "input_blocks.0.0.weight", 0, 4, {8, 4, 3, 3}},
        {UNET "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 0, 2, {2, 512}},
    };
    expect_kind("odd.safetensors", odd, N(odd), MODEL_KIND_UNKNOWN, "unknown family (UNet (context 512", NULL);
    const Key sd1lin[] = {
        {UNET "input_blocks.0.0.weight", 0, 4, {8, 4, 3, 3}},
        {UNET "input_blocks.1.1.proj_in.weight", 0, 2, {8, 8}},
        {UNET "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 0, 2, {2, 768}},
    };
    expect_kind("sd1lin.safetensors", sd1lin, N(sd1lin), MODEL_KIND_UNKNOWN, "linear proj_in", NULL);

    ConvertDtypes d;
    SafeTensors *st = header_file("dt.safetensors", sdxl, N(sdxl));
    convert_dtypes(st, &d);
    assert_true(d.f32 == 1 && d.f16 == 2 && d.bf16 == 4 && d.other == 0);
    st_close(st);
}

static void test_ignored(void **state) {
    (void)state;
    assert_non_null(convert_ldm_ignored("alphas_cumprod"));
    assert_non_null(convert_ldm_ignored("model_ema.decay"));
    assert_non_null(convert_ldm_ignored("cond_stage_model.transformer.text_model.embeddings.position_ids"));
    assert_non_null(convert_ldm_ignored("conditioner.embedders.0.transformer.text_model.embeddings.position_ids"));
    assert_non_null(convert_ldm_ignored("conditioner.embedders.1.model.logit_scale"));
    assert_null(convert_ldm_ignored("model.diffusion_model.out.2.weight"));
    assert_null(convert_ldm_ignored("first_stage_model.encoder.conv_in.weight"));
    assert_null(convert_ldm_ignored("alphas_cumprod.x"));
}

static int setup(void **state) {
    (void)state;
    return th_tmpdir_make("convert");
}
static int teardown(void **state) {
    (void)state;
    return th_tmpdir_remove();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sd15like_tables),
        cmocka_unit_test(test_sdxllike_tables),
        cmocka_unit_test(test_unet_load_sd15like),
        cmocka_unit_test(test_unet_load_sdxllike),
        cmocka_unit_test(test_unet_load_wrong_file),
        cmocka_unit_test(test_full_sd15),
        cmocka_unit_test(test_full_sdxl),
        cmocka_unit_test(test_full_vae_and_text),
        cmocka_unit_test(test_transforms),
        cmocka_unit_test(test_detect_generated),
        cmocka_unit_test(test_detect_headers),
        cmocka_unit_test(test_ignored),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

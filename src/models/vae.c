/* vae.c — diffusers' AutoencoderKL (the Stable Diffusion VAE), forward only, on
 * the Backend op table: the config (built-ins and a strict config.json reader),
 * the parameter table named as diffusers' state_dict, the weight loader, and
 * the encode / decode passes.
 *
 * The architecture, as diffusers builds it (all norms GroupNorm(groups, eps 1e-6),
 * every activation SiLU, every conv 3x3 padding 1 unless said):
 *   encoder: conv_in (in -> c0); per level i a DownEncoderBlock2D of
 *            layers_per_block resnets (-> c_i) and, except on the last level,
 *            Downsample2D: pad right and bottom by one, conv 3x3 stride 2
 *            padding 0; mid block (resnet, attention, resnet); conv_norm_out,
 *            silu, conv_out (-> 2 x latent: mean and logvar)
 *   quant_conv 1x1 (2 latent -> 2 latent), post_quant_conv 1x1 (latent -> latent)
 *   decoder: conv_in (latent -> c_last); mid block; per level from the last an
 *            UpDecoderBlock2D of layers_per_block + 1 resnets and, except on
 *            level 0, Upsample2D: nearest 2x then conv; conv_norm_out, silu,
 *            conv_out (-> out)
 *   resnet:  x + conv2(silu(norm2(conv1(silu(norm1(x)))))), x through a 1x1
 *            conv_shortcut when the channels change (no time embedding)
 *   attention (mid block): one head over the H*W tokens of C channels:
 *            x + to_out(attn(to_q(g), to_k(g), to_v(g))), g = group_norm(x) as
 *            [N, HW, C]; q/k/v/out all have biases; scale 1/sqrt(C)
 *
 * Memory: nothing is kept between calls. Each tensor is allocated with
 * be->alloc when a layer makes it and freed as soon as the next layer has
 * consumed it, so a call holds the weights plus the few tensors of the layer
 * being computed (the figures are in vae.h; vae_memory_plan replays the
 * allocations on sizes). Allocation failures stop the pass with a message
 * naming the layer and the size. When tiling (vae.h), run_tiled cuts the input
 * on the host, runs the same passes per tile and blends their outputs on the
 * host: the device then holds one tile's activations. */
#include "models/vae.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include "formats/config_json.h"
#include "formats/json.h"
#include "formats/safetensors.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VAE_EPS 1e-6f

/* ================================================================== config */

static void cfg_defaults(VAEConfig *c) {
    /* diffusers' AutoencoderKL defaults, for fields a config.json leaves out */
    memset(c, 0, sizeof *c);
    c->in_channels = 3; c->out_channels = 3; c->latent_channels = 4;
    c->layers_per_block = 1;
    c->norm_num_groups = 32;
    c->sample_size = 32;
    c->scaling_factor = 0.18215f;
    c->force_upcast = 1;
    c->use_quant_conv = 1; c->use_post_quant_conv = 1;
    c->mid_block_add_attention = 1;
}

int vae_config_builtin(const char *name, VAEConfig *c) {
    if (!name || (strcmp(name, "sd15") && strcmp(name, "sdxl"))) return -1;
    int xl = !strcmp(name, "sdxl");
    cfg_defaults(c);
    snprintf(c->name, sizeof c->name, "%s", name);
    c->n_levels = 4;
    int boc[4] = {128, 256, 512, 512};
    memcpy(c->block_out_channels, boc, sizeof boc);
    c->layers_per_block = 2;
    c->sample_size = xl ? 1024 : 512;
    c->scaling_factor = xl ? 0.13025f : 0.18215f;
    c->force_upcast = 1;
    return 0;
}

/* ------------------------------------------------------------------ config.json
 *
 * Every argument of diffusers' AutoencoderKL.__init__ is listed here. A field
 * that changes the computation is accepted only at the values the passes
 * compute; metadata (sample_size, force_upcast: the passes are f32 anyway) is
 * accepted as it comes; a field AutoencoderKL does not have is refused unless
 * its name starts with '_' (diffusers' metadata: _class_name, _diffusers_version,
 * _name_or_path). One line per refusal: file, field, value, what is supported. */

static const char *const VAE_FIELDS[] = {
    "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size",
    "scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast",
    "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention",
};

typedef CfgReader Reader;

static int must_be_null(Reader *r, const char *key) {
    const JsonValue *v = json_get(r->root, key);
    if (v && v->type != JSON_NULL) return cfg_refuse(r, key, v, "null");
    return 0;
}

/* a list of n copies of the string want */
static int read_types(Reader *r, const char *key, int n, const char *want) {
    const JsonValue *v = json_get(r->root, key);
    char what[160];
    snprintf(what, sizeof what, "a list of %d \"%s\", one per block_out_channels entry", n, want);
    if (!v) {
        snprintf(r->err, r->errlen, "%s: %s is missing (%s)", r->src, key, what);
        return -1;
    }
    if (v->type != JSON_ARRAY || v->n != n) return cfg_refuse(r, key, v, what);
    for (int i = 0; i < n; i++) {
        const JsonValue *e = &v->items[i];
        if (e->type == JSON_STRING && !strcmp(e->string, want)) continue;
        char k[48], only[64];
        snprintf(k, sizeof k, "%s[%d]", key, i);
        snprintf(only, sizeof only, "\"%s\"", want);
        return cfg_refuse(r, k, e, only);
    }
    return 0;
}

static int is_vae_field(const char *key) {
    for (size_t k = 0; k < sizeof VAE_FIELDS / sizeof VAE_FIELDS[0]; k++)
        if (!strcmp(VAE_FIELDS[k], key)) return 1;
    return 0;
}

static int vae_config_parse(const char *text, const char *src, VAEConfig *c, char *err,
                            size_t errlen) {
    JsonValue *root = cfg_parse_object(text, src, err, errlen);
    if (!root) return -1;
    Reader rd = {root, src, err, errlen}, *r = &rd;
    int rc = -1;
    const JsonValue *v;
    cfg_defaults(c);
    snprintf(c->name, sizeof c->name, "custom");
    if (cfg_check_fields(r, is_vae_field, "diffusers AutoencoderKL") != 0) goto done;

    char what[128];
    snprintf(what, sizeof what, "a list of 1..%d positive integers", VAE_MAX_LEVELS);
    const JsonValue *boc = json_get(root, "block_out_channels");
    if (!boc) { cfg_missing(r, "block_out_channels", what); goto done; }
    int ok = boc->type == JSON_ARRAY && boc->n >= 1 && boc->n <= VAE_MAX_LEVELS;
    for (int i = 0; ok && i < boc->n; i++)
        if (cfg_json_int(&boc->items[i], &c->block_out_channels[i]) || c->block_out_channels[i] <= 0) ok = 0;
    if (!ok) { cfg_refuse(r, "block_out_channels", boc, what); goto done; }
    c->n_levels = boc->n;

    if (cfg_read_int(r, "in_channels", 1, 0, &c->in_channels) ||
        cfg_read_int(r, "out_channels", 1, 0, &c->out_channels) ||
        cfg_read_int(r, "latent_channels", 1, 0, &c->latent_channels) ||
        cfg_read_int(r, "layers_per_block", 1, 0, &c->layers_per_block) ||
        cfg_read_int(r, "norm_num_groups", 1, 0, &c->norm_num_groups) ||
        read_types(r, "down_block_types", c->n_levels, "DownEncoderBlock2D") ||
        read_types(r, "up_block_types", c->n_levels, "UpDecoderBlock2D") ||
        cfg_read_bool(r, "force_upcast", 1, &c->force_upcast) ||
        cfg_read_bool(r, "use_quant_conv", 1, &c->use_quant_conv) ||
        cfg_read_bool(r, "use_post_quant_conv", 1, &c->use_post_quant_conv) ||
        cfg_read_bool(r, "mid_block_add_attention", 1, &c->mid_block_add_attention) ||
        must_be_null(r, "shift_factor") || must_be_null(r, "latents_mean") ||
        must_be_null(r, "latents_std"))
        goto done;
    if (c->layers_per_block > 16) {
        cfg_refuse(r, "layers_per_block", json_get(root, "layers_per_block"), "1..16");
        goto done;
    }
    v = json_get(root, "act_fn");
    if (v && !(v->type == JSON_STRING && (!strcmp(v->string, "silu") || !strcmp(v->string, "swish")))) {
        cfg_refuse(r, "act_fn", v, "\"silu\" or \"swish\"");
        goto done;
    }
    v = json_get(root, "scaling_factor");
    if (v && v->type != JSON_NULL) {
        if (v->type != JSON_NUMBER || !(v->number > 0)) {
            cfg_refuse(r, "scaling_factor", v, "a positive number or null");
            goto done;
        }
        c->scaling_factor = (float)v->number;
    }
    /* metadata: the default image size, an integer or [h, w] in newer configs */
    v = json_get(root, "sample_size");
    if (v && v->type == JSON_NUMBER) {
        int s;
        if (cfg_json_int(v, &s) || s < 1) {
            cfg_refuse(r, "sample_size", v, "a positive integer, [h, w] or null");
            goto done;
        }
        c->sample_size = s;
    } else if (v && v->type == JSON_ARRAY && v->n == 2) {
        int h, w;
        if (cfg_json_int(&v->items[0], &h) || cfg_json_int(&v->items[1], &w) || h < 1 || w < 1) {
            cfg_refuse(r, "sample_size", v, "a positive integer, [h, w] or null");
            goto done;
        }
        c->sample_size = h;
    } else if (v && v->type != JSON_NULL) {
        cfg_refuse(r, "sample_size", v, "a positive integer, [h, w] or null");
        goto done;
    }
    for (int i = 0; i < c->n_levels; i++)
        if (c->block_out_channels[i] % c->norm_num_groups) {
            snprintf(err, errlen, "%s: norm_num_groups = %d does not divide block_out_channels[%d] = %d",
                     src, c->norm_num_groups, i, c->block_out_channels[i]);
            goto done;
        }
    rc = 0;
done:
    json_free(root);
    return rc;
}

int vae_config_from_json_text(const char *text, VAEConfig *c, char *err, size_t errlen) {
    return vae_config_parse(text, "config.json", c, err, errlen);
}

int vae_config_from_json(const char *path, VAEConfig *c, char *err, size_t errlen) {
    size_t n;
    char *text = fs_read_all(path, FS_TEXT_MAX, &n, err, errlen);
    if (!text) return -1;
    int rc = vae_config_parse(text, path, c, err, errlen);
    free(text);
    if (rc) return -1;
    fs_stem(path, c->name, sizeof c->name);
    return 0;
}

int vae_config_resolve(const char *model, VAEConfig *cfg, char *err, size_t errlen) {
    if (vae_config_builtin(model, cfg) == 0) return 0;
    char path[4200];
    if (model && fs_is_dir(model)) {
        snprintf(path, sizeof path, "%s/vae/config.json", model);
        if (!fs_exists(path)) snprintf(path, sizeof path, "%s/config.json", model);
        return vae_config_from_json(path, cfg, err, errlen);
    }
    if (model && fs_exists(model)) return vae_config_from_json(model, cfg, err, errlen);
    snprintf(err, errlen, "vae %s: not sd15, sdxl, a diffusers folder or a config.json",
             model ? model : "(null)");
    return -1;
}

/* ================================================================== model */

typedef struct { int w, b; int cin, cout, k; } Conv;
typedef struct { int g, b; int C; } Norm;
typedef struct { int w, b; int din, dout; } Lin;

typedef struct {
    int cin, cout, has_sc;
    Norm n1, n2;
    Conv c1, c2, sc;
} Res;

typedef struct {
    int C;
    Norm gn;
    Lin q, k, v, o;
} Attn;

typedef struct {
    int nres, has_samp;
    Res *res;
    Conv samp;
} Blk;

typedef struct {
    Res res[2];
    int has_attn;
    Attn attn;
} Mid;

struct VAE {
    VAEConfig cfg;
    Backend *be;
    VAEParam *params;
    int n_params;
    float *wblock;
    int64_t n_base;
    int64_t n_gemm; /* the conv and linear weights: wblock's first n_gemm floats */
    Conv enc_in, enc_out, quant, post_quant, dec_in, dec_out;
    Norm enc_nout, dec_nout;
    Blk down[VAE_MAX_LEVELS], up[VAE_MAX_LEVELS];
    Mid emid, dmid;
    /* tiling (vae_set_tiling, vae_set_memory_budget) */
    int tiling, tile_cells;   /* VAE_TILING_*; tile side in latent cells */
    int64_t budget;           /* bytes; 0: the default (see vae_set_memory_budget) */
    /* per call */
    float *gmean, *grstd;  /* group norm statistics, N * groups */
    int fail;
    char err[256];
};

/* ------------------------------------------------------------------ builder */

typedef struct {
    VAEParam *p;
    int n, cap, oom;
} Builder;

static void pre_fmt(char *buf, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, n, fmt, ap);
    va_end(ap);
}
#define PRE(buf, ...) pre_fmt(buf, sizeof buf, __VA_ARGS__)

static int addp(Builder *b, const char *pre, const char *suf, int ndim, int64_t s0, int64_t s1,
                int64_t s2, int64_t s3) {
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 256;
        VAEParam *np = realloc(b->p, (size_t)cap * sizeof *np);
        if (!np) { b->oom = 1; return -1; }
        b->p = np; b->cap = cap;
    }
    VAEParam *p = &b->p[b->n];
    memset(p, 0, sizeof *p);
    pre_fmt(p->name, sizeof p->name, "%s.%s", pre, suf);
    p->ndim = ndim;
    int64_t s[4] = {s0, s1, s2, s3};
    p->numel = 1;
    for (int i = 0; i < ndim; i++) { p->shape[i] = s[i]; p->numel *= s[i]; }
    return b->n++;
}

static void b_conv(Builder *b, Conv *c, const char *pre, int cin, int cout, int k) {
    c->cin = cin; c->cout = cout; c->k = k;
    c->w = addp(b, pre, "weight", 4, cout, cin, k, k);
    c->b = addp(b, pre, "bias", 1, cout, 0, 0, 0);
}

static void b_norm(Builder *b, Norm *n, const char *pre, int C) {
    n->C = C;
    n->g = addp(b, pre, "weight", 1, C, 0, 0, 0);
    n->b = addp(b, pre, "bias", 1, C, 0, 0, 0);
}

static void b_lin(Builder *b, Lin *l, const char *pre, int din, int dout) {
    l->din = din; l->dout = dout;
    l->w = addp(b, pre, "weight", 2, dout, din, 0, 0);
    l->b = addp(b, pre, "bias", 1, dout, 0, 0, 0);
}

static void b_res(Builder *b, Res *r, const char *pre, int cin, int cout) {
    char s[VAE_NAME_MAX];
    r->cin = cin; r->cout = cout; r->has_sc = cin != cout;
    PRE(s, "%s.norm1", pre); b_norm(b, &r->n1, s, cin);
    PRE(s, "%s.conv1", pre); b_conv(b, &r->c1, s, cin, cout, 3);
    PRE(s, "%s.norm2", pre); b_norm(b, &r->n2, s, cout);
    PRE(s, "%s.conv2", pre); b_conv(b, &r->c2, s, cout, cout, 3);
    if (r->has_sc) { PRE(s, "%s.conv_shortcut", pre); b_conv(b, &r->sc, s, cin, cout, 1); }
}

static void b_mid(Builder *b, Mid *m, const char *pre, int C, int attn) {
    char s[VAE_NAME_MAX];
    m->has_attn = attn;
    if (attn) {
        Attn *a = &m->attn;
        a->C = C;
        PRE(s, "%s.attentions.0.group_norm", pre); b_norm(b, &a->gn, s, C);
        PRE(s, "%s.attentions.0.to_q", pre); b_lin(b, &a->q, s, C, C);
        PRE(s, "%s.attentions.0.to_k", pre); b_lin(b, &a->k, s, C, C);
        PRE(s, "%s.attentions.0.to_v", pre); b_lin(b, &a->v, s, C, C);
        PRE(s, "%s.attentions.0.to_out.0", pre); b_lin(b, &a->o, s, C, C);
    }
    PRE(s, "%s.resnets.0", pre); b_res(b, &m->res[0], s, C, C);
    PRE(s, "%s.resnets.1", pre); b_res(b, &m->res[1], s, C, C);
}

static void free_modules(VAE *v) {
    for (int i = 0; i < VAE_MAX_LEVELS; i++) {
        free(v->down[i].res);
        free(v->up[i].res);
        v->down[i].res = v->up[i].res = NULL;
    }
}

/* diffusers' registration order: encoder, decoder, quant_conv, post_quant_conv */
static int build(VAE *v, Builder *b) {
    const VAEConfig *c = &v->cfg;
    int nl = c->n_levels, lpb = c->layers_per_block, last = c->block_out_channels[nl - 1];
    char p[VAE_NAME_MAX];
    b_conv(b, &v->enc_in, "encoder.conv_in", c->in_channels, c->block_out_channels[0], 3);
    int cout = c->block_out_channels[0];
    for (int i = 0; i < nl; i++) {
        Blk *k = &v->down[i];
        int cin = cout;
        cout = c->block_out_channels[i];
        k->nres = lpb; k->has_samp = i != nl - 1;
        k->res = calloc((size_t)lpb, sizeof *k->res);
        if (!k->res) return -1;
        for (int j = 0; j < lpb; j++) {
            PRE(p, "encoder.down_blocks.%d.resnets.%d", i, j);
            b_res(b, &k->res[j], p, j ? cout : cin, cout);
        }
        if (k->has_samp) {
            PRE(p, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            b_conv(b, &k->samp, p, cout, cout, 3);
        }
    }
    b_mid(b, &v->emid, "encoder.mid_block", last, c->mid_block_add_attention);
    b_norm(b, &v->enc_nout, "encoder.conv_norm_out", last);
    b_conv(b, &v->enc_out, "encoder.conv_out", last, 2 * c->latent_channels, 3);

    b_conv(b, &v->dec_in, "decoder.conv_in", c->latent_channels, last, 3);
    b_mid(b, &v->dmid, "decoder.mid_block", last, c->mid_block_add_attention);
    cout = last;
    for (int i = 0; i < nl; i++) {
        Blk *k = &v->up[i];
        int prev = cout;
        cout = c->block_out_channels[nl - 1 - i];
        k->nres = lpb + 1; k->has_samp = i != nl - 1;
        k->res = calloc((size_t)(lpb + 1), sizeof *k->res);
        if (!k->res) return -1;
        for (int j = 0; j < lpb + 1; j++) {
            PRE(p, "decoder.up_blocks.%d.resnets.%d", i, j);
            b_res(b, &k->res[j], p, j ? cout : prev, cout);
        }
        if (k->has_samp) {
            PRE(p, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            b_conv(b, &k->samp, p, cout, cout, 3);
        }
    }
    b_norm(b, &v->dec_nout, "decoder.conv_norm_out", c->block_out_channels[0]);
    b_conv(b, &v->dec_out, "decoder.conv_out", c->block_out_channels[0], c->out_channels, 3);
    if (c->use_quant_conv)
        b_conv(b, &v->quant, "quant_conv", 2 * c->latent_channels, 2 * c->latent_channels, 1);
    if (c->use_post_quant_conv)
        b_conv(b, &v->post_quant, "post_quant_conv", c->latent_channels, c->latent_channels, 1);
    return b->oom ? -1 : 0;
}

static int cfg_valid(const VAEConfig *c, char *err, size_t errlen) {
    if (c->n_levels < 1 || c->n_levels > VAE_MAX_LEVELS || c->layers_per_block < 1 ||
        c->layers_per_block > 16 || c->in_channels < 1 || c->out_channels < 1 ||
        c->latent_channels < 1 || c->norm_num_groups < 1 || !(c->scaling_factor > 0)) {
        snprintf(err, errlen, "VAE config '%s' is incomplete (levels 1..%d, layers_per_block "
                 "1..16, channels, latent_channels, norm_num_groups, scaling_factor > 0)",
                 c->name, VAE_MAX_LEVELS);
        return -1;
    }
    for (int i = 0; i < c->n_levels; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] % c->norm_num_groups) {
            snprintf(err, errlen, "VAE config '%s' level %d: channels %d must be a positive "
                     "multiple of norm_num_groups %d", c->name, i, c->block_out_channels[i],
                     c->norm_num_groups);
            return -1;
        }
    return 0;
}

int vae_param_table(const VAEConfig *cfg, VAEParam **params, int *n_params) {
    char err[256];
    if (cfg_valid(cfg, err, sizeof err)) return -1;
    VAE *tmp = calloc(1, sizeof *tmp);
    if (!tmp) return -1;
    tmp->cfg = *cfg;
    Builder b = {0};
    int rc = build(tmp, &b);
    free_modules(tmp);
    free(tmp);
    if (rc) { free(b.p); return -1; }
    *params = b.p;
    *n_params = b.n;
    return 0;
}

VAE *vae_create(const VAEConfig *cfg, Backend *be, char *err, size_t errlen) {
    if (cfg_valid(cfg, err, errlen)) return NULL;
    VAE *v = calloc(1, sizeof *v);
    if (!v) { snprintf(err, errlen, "out of host memory"); return NULL; }
    v->cfg = *cfg;
    v->be = be;
    Builder b = {0};
    if (build(v, &b)) {
        free(b.p); free_modules(v); free(v);
        snprintf(err, errlen, "out of host memory building VAE '%s'", cfg->name);
        return NULL;
    }
    v->params = b.p;
    v->n_params = b.n;
    v->tiling = VAE_TILING_AUTO;
    v->tile_cells = VAE_TILE_PX_DEFAULT >> (cfg->n_levels - 1);
    int64_t total = 0;
    for (int i = 0; i < v->n_params; i++) total += v->params[i].numel;
    v->n_base = total;
    v->wblock = be->alloc(be, (size_t)total * sizeof(float));
    if (!v->wblock) {
        snprintf(err, errlen, "out of %s memory: VAE '%s' needs %.1f MB of weights", be->name,
                 cfg->name, (double)total * 4 / 1e6);
        vae_free(v);
        return NULL;
    }
    /* the conv and linear weights first (ndim >= 2: read only as GEMM weights),
     * then biases and norms: set_frozen lets the backend keep the first n_gemm
     * floats in bf16 only (BF16 mode), as the UNet's */
    int64_t off = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < v->n_params; i++)
            if ((v->params[i].ndim >= 2) == (pass == 0)) { v->params[i].data = v->wblock + off; off += v->params[i].numel; }
        if (pass == 0) v->n_gemm = off;
    }
    return v;
}

void vae_free(VAE *v) {
    if (!v) return;
    if (v->wblock) v->be->free(v->be, v->wblock);
    free_modules(v);
    free(v->params);
    free(v);
}

const VAEConfig *vae_config(const VAE *v) { return &v->cfg; }
Backend *vae_backend(const VAE *v) { return v->be; }
int vae_n_params(const VAE *v) { return v->n_params; }
VAEParam *vae_param_at(VAE *v, int i) { return i >= 0 && i < v->n_params ? &v->params[i] : NULL; }
int64_t vae_n_base_params(const VAE *v) { return v->n_base; }
const char *vae_last_error(const VAE *v) { return v->err; }

VAEParam *vae_param(VAE *v, const char *name) {
    for (int i = 0; i < v->n_params; i++)
        if (!strcmp(v->params[i].name, name)) return &v->params[i];
    return NULL;
}

void vae_init_random(VAE *v, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    int64_t maxn = 0;
    for (int i = 0; i < v->n_params; i++) if (v->params[i].numel > maxn) maxn = v->params[i].numel;
    float *h = malloc((size_t)maxn * sizeof *h);
    if (!h) return;
    for (int i = 0; i < v->n_params; i++) {
        VAEParam *p = &v->params[i];
        const char *dot = strrchr(p->name, '.');
        int is_w = dot && !strcmp(dot, ".weight");
        if (is_w && p->ndim >= 2) {
            float bound = 1.0f / sqrtf((float)(p->numel / p->shape[0]));
            rng_fill_uniform(&r, h, p->numel, -bound, bound);
        } else {
            float val = is_w ? 1.0f : 0.0f;
            for (int64_t j = 0; j < p->numel; j++) h[j] = val;
        }
        v->be->upload(v->be, p->data, h, (size_t)p->numel * sizeof *h);
    }
    free(h);
}

/* ------------------------------------------------------------------ weights */

/* diffusers before 0.15 (and VAE files converted then) name the mid-block
 * attention's linears query/key/value/proj_attn; the rest is the same */
static int old_attn_name(const char *name, char *out, size_t cap) {
    static const char *const map[][2] = {
        {".attentions.0.to_q.", ".attentions.0.query."},
        {".attentions.0.to_k.", ".attentions.0.key."},
        {".attentions.0.to_v.", ".attentions.0.value."},
        {".attentions.0.to_out.0.", ".attentions.0.proj_attn."},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        const char *at = strstr(name, map[i][0]);
        if (!at) continue;
        snprintf(out, cap, "%.*s%s%s", (int)(at - name), name, map[i][1], at + strlen(map[i][0]));
        return 1;
    }
    return 0;
}

int vae_load_safetensors(VAE *v, const char *path, const char *prefix, char *err, size_t errlen) {
    Backend *be = v->be;
    char e[256];
    SafeTensors *st = st_open(path, e, sizeof e);
    if (!st) { snprintf(err, errlen, "%s", e); return -1; }
    const char *pre = prefix;
    char name[VAE_NAME_MAX + 64], old[VAE_NAME_MAX + 64];
    if (!pre) {
        const char *cands[] = {"", "vae."};
        for (int k = 0; k < 2 && !pre; k++) {
            snprintf(name, sizeof name, "%s%s", cands[k], v->params[0].name);
            if (st_find(st, name)) pre = cands[k];
        }
        if (!pre) {
            snprintf(err, errlen, "%s: no tensor '%s' (with or without a 'vae.' prefix): not a "
                     "diffusers AutoencoderKL checkpoint", path, v->params[0].name);
            st_close(st);
            return -1;
        }
    }
    int64_t maxn = 0;
    for (int i = 0; i < v->n_params; i++) if (v->params[i].numel > maxn) maxn = v->params[i].numel;
    float *h = malloc((size_t)maxn * sizeof *h);
    int rc = -1;
    if (!h) { snprintf(err, errlen, "out of host memory"); goto out; }
    for (int i = 0; i < v->n_params; i++) {
        VAEParam *p = &v->params[i];
        snprintf(name, sizeof name, "%s%s", pre, p->name);
        const StTensor *t = st_find(st, name);
        if (!t && old_attn_name(p->name, old, sizeof old)) {
            char o2[sizeof old + 64];
            snprintf(o2, sizeof o2, "%s%s", pre, old);
            t = st_find(st, o2);
            if (!t) {
                snprintf(err, errlen, "%s: missing tensor '%s' (or its old name '%s')", path, name, o2);
                goto out;
            }
            snprintf(name, sizeof name, "%s", o2);
        }
        if (!t) { snprintf(err, errlen, "%s: missing tensor '%s'", path, name); goto out; }
        if (st_read_f32_as(t, p->ndim, p->shape, h, path, err, errlen) != 0) goto out;
        be->upload(be, p->data, h, (size_t)p->numel * sizeof *h);
    }
    rc = 0;
out:
    free(h);
    st_close(st);
    return rc;
}

/* ================================================================== passes */

#define P(i) (v->params[i].data)

/* a device buffer of n floats for `what`; NULL after recording the failure */
static float *nb(VAE *v, int64_t n, const char *what) {
    float *p = v->be->alloc(v->be, (size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!p && !v->fail) {
        v->fail = 1;
        snprintf(v->err, sizeof v->err, "out of %s memory: the VAE's %s needs %.1f MB more "
                 "(%.1f MB held)", v->be->name, what, (double)n * 4 / 1e6,
                 (double)(v->be->reserved_bytes ? v->be->reserved_bytes(v->be) : 0) / 1e6);
    }
    return p;
}

static void fr(VAE *v, float *p) {
    if (p) v->be->free(v->be, p);
}

/* conv of x[N,cin,H,W] into a new buffer (padding k/2, stride 1) */
static float *conv_new(VAE *v, const Conv *c, const float *x, int N, int H, int W, const char *what) {
    float *y = nb(v, (int64_t)N * c->cout * H * W, what);
    if (y) v->be->conv2d_fwd(v->be, x, P(c->w), P(c->b), y, N, c->cin, H, W, c->cout, c->k, 1, c->k / 2);
    return y;
}

/* silu(group_norm(x)) of x[N,C,HW] into a new buffer */
static float *norm_silu(VAE *v, const Norm *n, const float *x, int N, int64_t HW, int silu,
                        const char *what) {
    Backend *be = v->be;
    int64_t cnt = (int64_t)N * n->C * HW;
    float *y = nb(v, cnt, what);
    if (!y) return NULL;
    (silu ? be->group_norm_silu_fwd : be->group_norm_fwd)(be, x, P(n->g), P(n->b), y, v->gmean, v->grstd, N,
                                                          n->C, HW, v->cfg.norm_num_groups, VAE_EPS);
    return y;
}

static float *res_fwd(VAE *v, const Res *r, const float *x, int N, int H, int W) {
    Backend *be = v->be;
    int64_t HW = (int64_t)H * W, no = (int64_t)N * r->cout * HW;
    float *a = norm_silu(v, &r->n1, x, N, HW, 1, "resnet norm1");
    if (!a) return NULL;
    float *h = conv_new(v, &r->c1, a, N, H, W, "resnet conv1");
    fr(v, a);
    if (!h) return NULL;
    a = norm_silu(v, &r->n2, h, N, HW, 1, "resnet norm2");
    fr(v, h);
    if (!a) return NULL;
    float *out = conv_new(v, &r->c2, a, N, H, W, "resnet conv2");
    fr(v, a);
    if (!out) return NULL;
    if (r->has_sc) {
        float *s = conv_new(v, &r->sc, x, N, H, W, "resnet conv_shortcut");
        if (!s) { fr(v, out); return NULL; }
        be->add(be, out, s, out, no);
        fr(v, s);
    } else {
        be->add(be, out, x, out, no);
    }
    return out;
}

static float *attn_fwd(VAE *v, const Attn *a, const float *x, int N, int H, int W) {
    Backend *be = v->be;
    int C = a->C;
    int64_t HW = (int64_t)H * W, n = (int64_t)N * C * HW, M = (int64_t)N * HW;
    float *g = norm_silu(v, &a->gn, x, N, HW, 0, "attention group_norm");
    if (!g) return NULL;
    float *s = nb(v, n, "attention tokens");
    if (s) be->nchw_to_nlc(be, g, s, N, C, HW, 0);
    fr(v, g);
    if (!s) return NULL;
    float *q = nb(v, n, "attention q"), *k = nb(v, n, "attention k"), *vv = nb(v, n, "attention v");
    float *o = NULL, *lse = NULL, *out = NULL;
    if (q && k && vv) {
        be->linear_fwd(be, s, P(a->q.w), P(a->q.b), q, M, C, C);
        be->linear_fwd(be, s, P(a->k.w), P(a->k.b), k, M, C, C);
        be->linear_fwd(be, s, P(a->v.w), P(a->v.b), vv, M, C, C);
    }
    fr(v, s);
    if (q && k && vv) {
        o = nb(v, n, "attention output");
        lse = nb(v, M, "attention lse");
        if (o && lse)
            be->attention_fwd(be, q, k, vv, o, lse, N, (int)HW, (int)HW, 1, C,
                              1.0f / sqrtf((float)C), 0);
    }
    fr(v, q); fr(v, k); fr(v, vv); fr(v, lse);
    if (!o || v->fail) { fr(v, o); return NULL; }
    float *p = nb(v, n, "attention to_out");
    if (p) be->linear_fwd(be, o, P(a->o.w), P(a->o.b), p, M, C, C);
    fr(v, o);
    if (!p) return NULL;
    out = nb(v, n, "attention residual");
    if (out) {
        be->copy(be, out, x, (size_t)n * sizeof(float));
        be->nlc_to_nchw(be, p, out, N, C, HW, 1); /* out = x + to_out(...) */
    }
    fr(v, p);
    return out;
}

/* replaces *h by f(*h): the old tensor is freed; 0, or -1 with *h freed */
#define STEP(h, expr)                             \
    do {                                          \
        float *nh_ = (expr);                      \
        fr(v, (h));                               \
        (h) = nh_;                                \
        if (!(h)) return -1;                      \
    } while (0)

static int mid_fwd(VAE *v, const Mid *m, float **h, int N, int H, int W) {
    STEP(*h, res_fwd(v, &m->res[0], *h, N, H, W));
    if (m->has_attn) STEP(*h, attn_fwd(v, &m->attn, *h, N, H, W));
    STEP(*h, res_fwd(v, &m->res[1], *h, N, H, W));
    return 0;
}

static float *down_fwd(VAE *v, const Conv *c, const float *x, int N, int H, int W) {
    float *p = nb(v, (int64_t)N * c->cin * (H + 1) * (W + 1), "downsampler padding");
    if (!p) return NULL;
    v->be->pad2d(v->be, x, p, N, c->cin, H, W, 0, 1, 0, 1);
    float *y = nb(v, (int64_t)N * c->cout * (H / 2) * (W / 2), "downsampler conv");
    if (y) v->be->conv2d_fwd(v->be, p, P(c->w), P(c->b), y, N, c->cin, H + 1, W + 1, c->cout, 3, 2, 0);
    fr(v, p);
    return y;
}

static float *up_fwd(VAE *v, const Conv *c, const float *x, int N, int H, int W) {
    float *u = nb(v, (int64_t)N * c->cin * 4 * H * W, "upsampler nearest 2x");
    if (!u) return NULL;
    v->be->upsample2x_fwd(v->be, x, u, N, c->cin, H, W);
    float *y = conv_new(v, c, u, N, 2 * H, 2 * W, "upsampler conv");
    fr(v, u);
    return y;
}

/* group norm statistics for the call; 0 / -1 */
static int begin(VAE *v, int N, const char *what, int ok_shape) {
    v->fail = 0;
    v->err[0] = 0;
    v->be->set_frozen(v->be, v->wblock, v->n_base, v->n_gemm); /* never trained (backend.h) */
    if (!ok_shape) {
        snprintf(v->err, sizeof v->err, "%s", what);
        return -1;
    }
    int64_t ng = (int64_t)N * v->cfg.norm_num_groups;
    v->gmean = nb(v, ng, "norm statistics");
    v->grstd = nb(v, ng, "norm statistics");
    return v->fail ? -1 : 0;
}

static int finish(VAE *v, int rc) {
    Backend *be = v->be;
    fr(v, v->gmean); fr(v, v->grstd);
    v->gmean = v->grstd = NULL;
    be->sync(be);
    const char *e = be->last_error ? be->last_error(be) : "";
    if (e && e[0] && !v->err[0]) snprintf(v->err, sizeof v->err, "%s", e);
    if (e && e[0]) return -1;
    return rc ? -1 : 0;
}

/* the encoder and quant_conv: moments[N, 2 latent, H/f, W/f] (new buffer) */
static int encoder_fwd(VAE *v, const float *x, float **out, int N, int H, int W) {
    const VAEConfig *c = &v->cfg;
    float *h = conv_new(v, &v->enc_in, x, N, H, W, "encoder conv_in");
    *out = NULL;
    if (!h) return -1;
    for (int i = 0; i < c->n_levels; i++) {
        const Blk *k = &v->down[i];
        for (int j = 0; j < k->nres; j++) STEP(h, res_fwd(v, &k->res[j], h, N, H, W));
        if (k->has_samp) {
            STEP(h, down_fwd(v, &k->samp, h, N, H, W));
            H /= 2; W /= 2;
        }
    }
    if (mid_fwd(v, &v->emid, &h, N, H, W)) return -1;
    STEP(h, norm_silu(v, &v->enc_nout, h, N, (int64_t)H * W, 1, "encoder conv_norm_out"));
    STEP(h, conv_new(v, &v->enc_out, h, N, H, W, "encoder conv_out"));
    if (c->use_quant_conv) STEP(h, conv_new(v, &v->quant, h, N, H, W, "quant_conv"));
    *out = h;
    return 0;
}

/* the decoder: z[N,L,h,w] (scaled) -> x[N,out,f h,f w] (caller's buffer); 0 / -1 */
static int decoder_fwd(VAE *v, const float *z, float *x, int N, int h, int w) {
    const VAEConfig *c = &v->cfg;
    Backend *be = v->be;
    int64_t nz = (int64_t)N * c->latent_channels * h * w;
    float *t = nb(v, nz, "decoder input");
    if (!t) return -1;
    be->copy(be, t, z, (size_t)nz * sizeof(float));
    be->scale(be, t, 1.0f / c->scaling_factor, nz);
    int H = h, W = w, rc = -1;
#define DSTEP(expr) do { float *nh_ = (expr); fr(v, t); t = nh_; if (!t) goto out; } while (0)
    if (c->use_post_quant_conv) DSTEP(conv_new(v, &v->post_quant, t, N, H, W, "post_quant_conv"));
    DSTEP(conv_new(v, &v->dec_in, t, N, H, W, "decoder conv_in"));
    if (mid_fwd(v, &v->dmid, &t, N, H, W)) { t = NULL; goto out; }
    for (int i = 0; i < c->n_levels; i++) {
        const Blk *k = &v->up[i];
        for (int j = 0; j < k->nres; j++) DSTEP(res_fwd(v, &k->res[j], t, N, H, W));
        if (k->has_samp) {
            DSTEP(up_fwd(v, &k->samp, t, N, H, W));
            H *= 2; W *= 2;
        }
    }
    DSTEP(norm_silu(v, &v->dec_nout, t, N, (int64_t)H * W, 1, "decoder conv_norm_out"));
    be->conv2d_fwd(be, t, P(v->dec_out.w), P(v->dec_out.b), x, N, v->dec_out.cin, H, W,
                   v->dec_out.cout, 3, 1, 1);
    rc = 0;
#undef DSTEP
out:
    fr(v, t);
    return rc;
}

/* ================================================================== memory plan
 *
 * The passes above, replayed on sizes alone: every nb() and fr() in the order
 * the passes make them (a test compares this with what they allocate). */

typedef struct { int64_t live, peak; } Plan;

static void pl_new(Plan *p, int64_t n) {
    p->live += (n > 0 ? n : 1) * (int64_t)sizeof(float);
    if (p->live > p->peak) p->peak = p->live;
}
static void pl_free(Plan *p, int64_t n) { p->live -= (n > 0 ? n : 1) * (int64_t)sizeof(float); }

/* res_fwd with its input held; leaves its output held (the caller frees the input) */
static void pl_res(Plan *p, int N, int cin, int cout, int64_t HW) {
    int64_t a = (int64_t)N * cin * HW, o = (int64_t)N * cout * HW;
    pl_new(p, a); pl_new(p, o); pl_free(p, a);  /* norm1, conv1 */
    pl_new(p, o); pl_free(p, o);                /* norm2 */
    pl_new(p, o); pl_free(p, o);                /* conv2 */
    if (cin != cout) { pl_new(p, o); pl_free(p, o); } /* conv_shortcut */
}

static void pl_attn(Plan *p, int N, int C, int64_t HW) {
    int64_t n = (int64_t)N * C * HW, M = (int64_t)N * HW;
    pl_new(p, n); pl_new(p, n); pl_free(p, n);              /* group_norm, tokens */
    pl_new(p, n); pl_new(p, n); pl_new(p, n); pl_free(p, n); /* q, k, v */
    pl_new(p, n); pl_new(p, M);                             /* output, lse */
    pl_free(p, n); pl_free(p, n); pl_free(p, n); pl_free(p, M);
    pl_new(p, n); pl_free(p, n);                            /* to_out */
    pl_new(p, n); pl_free(p, n);                            /* residual */
}

/* a STEP: the new tensor of n floats replaces the held one of old floats */
static void pl_step(Plan *p, int64_t old) { pl_free(p, old); }

static void pl_mid(Plan *p, const VAEConfig *c, int N, int C, int64_t HW) {
    int64_t n = (int64_t)N * C * HW;
    pl_res(p, N, C, C, HW); pl_step(p, n);
    if (c->mid_block_add_attention) { pl_attn(p, N, C, HW); pl_step(p, n); }
    pl_res(p, N, C, C, HW); pl_step(p, n);
}

int vae_memory_plan(const VAEConfig *c, int decode, int N, int H, int W, int64_t *act_bytes) {
    char err[256];
    if (cfg_valid(c, err, sizeof err) || N < 1 || H < 1 || W < 1) return -1;
    int f = 1 << (c->n_levels - 1);
    if (!decode && (H % f || W % f)) return -1;
    Plan p = {0, 0};
    int64_t ng = (int64_t)N * c->norm_num_groups, L = c->latent_channels;
    int nl = c->n_levels, last = c->block_out_channels[nl - 1];
    pl_new(&p, ng); pl_new(&p, ng); /* norm statistics */
    if (!decode) {
        int64_t HW = (int64_t)H * W;
        int cout = c->block_out_channels[0];
        pl_new(&p, (int64_t)N * cout * HW); /* conv_in */
        for (int i = 0; i < nl; i++) {
            int cin = cout;
            cout = c->block_out_channels[i];
            for (int j = 0; j < c->layers_per_block; j++) {
                int ci = j ? cout : cin;
                pl_res(&p, N, ci, cout, HW);
                pl_step(&p, (int64_t)N * ci * HW);
            }
            if (i != nl - 1) {
                pl_new(&p, (int64_t)N * cout * (H + 1) * (W + 1)); /* padding */
                pl_new(&p, (int64_t)N * cout * (H / 2) * (W / 2));
                pl_free(&p, (int64_t)N * cout * (H + 1) * (W + 1));
                pl_step(&p, (int64_t)N * cout * HW);
                H /= 2; W /= 2;
                HW = (int64_t)H * W;
            }
        }
        pl_mid(&p, c, N, last, HW);
        int64_t nh = (int64_t)N * last * HW, nm = 2 * L * N * HW;
        pl_new(&p, nh); pl_step(&p, nh);           /* conv_norm_out */
        pl_new(&p, nm); pl_step(&p, nh);           /* conv_out */
        if (c->use_quant_conv) { pl_new(&p, nm); pl_step(&p, nm); }
    } else {
        int64_t HW = (int64_t)H * W, nz = (int64_t)N * L * HW;
        pl_new(&p, nz);                            /* decoder input */
        if (c->use_post_quant_conv) { pl_new(&p, nz); pl_step(&p, nz); }
        pl_new(&p, (int64_t)N * last * HW); pl_step(&p, nz); /* conv_in */
        pl_mid(&p, c, N, last, HW);
        int cout = last;
        for (int i = 0; i < nl; i++) {
            int prev = cout;
            cout = c->block_out_channels[nl - 1 - i];
            for (int j = 0; j < c->layers_per_block + 1; j++) {
                int ci = j ? cout : prev;
                pl_res(&p, N, ci, cout, HW);
                pl_step(&p, (int64_t)N * ci * HW);
            }
            if (i != nl - 1) {
                pl_new(&p, (int64_t)N * cout * 4 * HW);  /* nearest 2x */
                pl_new(&p, (int64_t)N * cout * 4 * HW);  /* conv */
                pl_free(&p, (int64_t)N * cout * 4 * HW);
                pl_step(&p, (int64_t)N * cout * HW);
                HW *= 4;
            }
        }
        pl_new(&p, (int64_t)N * cout * HW); /* conv_norm_out; conv_out writes the caller's x */
    }
    *act_bytes = p.peak;
    return 0;
}

/* ================================================================== tiling
 *
 * One axis of a tiling, in latent cells: `cells` <= tile gives one tile;
 * otherwise n = 1 + ceil((cells - tile) / (tile - overlap)) tiles of `tile`
 * cells, the first at 0, the last ending at `cells`, the others evenly between
 * (starts rounded down), so neighbours overlap by at least `overlap` cells and
 * no tile is a sliver. Overlap = tile / 4, as diffusers' AutoencoderKL tiling. */

typedef struct {
    int n;
    int *start, len; /* tile i covers [start[i], start[i] + len) */
} Axis;

static int axis_count(int cells, int tile) {
    int ov = tile / 4 > 0 ? tile / 4 : 1;
    return cells <= tile ? 1 : 1 + (cells - tile + (tile - ov) - 1) / (tile - ov);
}

static int axis_make(Axis *a, int cells, int tile) {
    a->len = cells <= tile ? cells : tile;
    a->n = axis_count(cells, tile);
    a->start = malloc((size_t)a->n * sizeof *a->start);
    if (!a->start) return -1;
    for (int i = 0; i < a->n; i++)
        a->start[i] = a->n == 1 ? 0 : (int)((int64_t)i * (cells - tile) / (a->n - 1));
    return 0;
}

/* tile i's raw weight at output position y (u output units per cell): 1,
 * ramping down linearly across each overlap with a neighbour (the two ramps of
 * an overlap add up to 1), 0 outside the tile */
static double axis_raw(const Axis *a, int i, int u, int64_t y) {
    int64_t s = (int64_t)a->start[i] * u, e = s + (int64_t)a->len * u;
    if (y < s || y >= e) return 0;
    double wt = 1;
    if (i > 0) {
        double ov = (double)((int64_t)(a->start[i - 1] + a->len) * u - s);
        double r = (y - s + 0.5) / ov;
        if (r < wt) wt = r;
    }
    if (i < a->n - 1) {
        double ov = (double)(e - (int64_t)a->start[i + 1] * u);
        double r = (e - y - 0.5) / ov;
        if (r < wt) wt = r;
    }
    return wt;
}

/* tile i's blend weights over its len*u outputs: raw weights divided by their
 * sum over the tiles there, so they add up to 1 everywhere (where three tiles
 * meet too) */
static void axis_weights(const Axis *a, int i, int u, float *w) {
    int64_t s = (int64_t)a->start[i] * u;
    for (int64_t y = 0; y < (int64_t)a->len * u; y++) {
        double sum = 0;
        for (int j = 0; j < a->n; j++) sum += axis_raw(a, j, u, s + y);
        w[y] = (float)(axis_raw(a, i, u, s + y) / sum);
    }
}

int vae_tiling_parse(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "off")) return VAE_TILING_OFF;
    if (!strcmp(s, "on")) return VAE_TILING_ON;
    if (!strcmp(s, "auto")) return VAE_TILING_AUTO;
    return -1;
}

int vae_set_tiling(VAE *v, int mode, int tile_px, char *err, size_t errlen) {
    int f = 1 << (v->cfg.n_levels - 1), lo = 4 * f;
    if (mode != VAE_TILING_OFF && mode != VAE_TILING_ON && mode != VAE_TILING_AUTO) {
        snprintf(err, errlen, "vae tiling mode %d: use off, on or auto", mode);
        return -1;
    }
    if (tile_px == 0) tile_px = VAE_TILE_PX_DEFAULT > lo ? VAE_TILE_PX_DEFAULT : lo;
    if (tile_px < lo || tile_px > 16384 || tile_px % f) {
        snprintf(err, errlen, "vae tile size %d px: use a multiple of %d (the VAE's scale factor) "
                 "from %d to 16384, or 0 for %d", tile_px, f, lo, VAE_TILE_PX_DEFAULT);
        return -1;
    }
    v->tiling = mode;
    v->tile_cells = tile_px / f;
    return 0;
}

void vae_set_memory_budget(VAE *v, int64_t bytes) { v->budget = bytes > 0 ? bytes : 0; }

int vae_get_tiling(const VAE *v, int *tile_px) {
    if (tile_px) *tile_px = v->tile_cells << (v->cfg.n_levels - 1);
    return v->tiling;
}

int vae_tile_count(const VAE *v, int h, int w) {
    if (h < 1 || w < 1) return -1;
    return axis_count(h, v->tile_cells) * axis_count(w, v->tile_cells);
}

int vae_tile_at(const VAE *v, int decode, int h, int w, int k, int rect[4], float *weights) {
    if (k < 0 || k >= vae_tile_count(v, h, w)) return -1;
    Axis ay, ax;
    if (axis_make(&ay, h, v->tile_cells)) return -1;
    if (axis_make(&ax, w, v->tile_cells)) { free(ay.start); return -1; }
    int i = k / ax.n, j = k % ax.n, u = decode ? 1 << (v->cfg.n_levels - 1) : 1, rc = 0;
    rect[0] = ay.start[i]; rect[1] = ax.start[j]; rect[2] = ay.len; rect[3] = ax.len;
    if (weights) {
        int64_t th = (int64_t)ay.len * u, tw = (int64_t)ax.len * u;
        float *wy = malloc((size_t)th * sizeof *wy), *wx = malloc((size_t)tw * sizeof *wx);
        if (wy && wx) {
            axis_weights(&ay, i, u, wy);
            axis_weights(&ax, j, u, wx);
            for (int64_t y = 0; y < th; y++)
                for (int64_t x = 0; x < tw; x++) weights[y * tw + x] = wy[y] * wx[x];
        } else {
            rc = -1;
        }
        free(wy); free(wx);
    }
    free(ay.start); free(ax.start);
    return rc;
}

/* the memory a call may use: the set budget, else half of what the device says
 * is free now (read at each call: the UNet and the training activations come
 * and go; the CPU's is the kernel's MemAvailable), else no limit (0) */
static int64_t budget_now(const VAE *v) {
    if (v->budget > 0) return v->budget;
    size_t avail = v->be->free_bytes ? v->be->free_bytes(v->be) : 0;
    return avail > 0 ? (int64_t)(avail / 2) : 0;
}

int vae_will_tile(VAE *v, int decode, int N, int H, int W) {
    int f = 1 << (v->cfg.n_levels - 1);
    int64_t plan;
    if (vae_memory_plan(&v->cfg, decode, N, H, W, &plan)) return -1;
    int h = decode ? H : H / f, w = decode ? W : W / f;
    if (v->tiling == VAE_TILING_OFF || vae_tile_count(v, h, w) == 1) return 0;
    if (v->tiling == VAE_TILING_ON) return 1;
    int64_t budget = budget_now(v);
    return budget > 0 && plan > budget;
}

typedef float *(*TileFn)(VAE *v, const float *in, int N, int h, int w);

/* a tile through the encoder: moments[N, 2 latent, h, w] (new buffer) */
static float *tile_encode(VAE *v, const float *x, int N, int h, int w) {
    int f = 1 << (v->cfg.n_levels - 1);
    float *mom = NULL;
    return encoder_fwd(v, x, &mom, N, h * f, w * f) ? NULL : mom;
}

/* a tile through the decoder: image[N, out, f h, f w] (new buffer) */
static float *tile_decode(VAE *v, const float *z, int N, int h, int w) {
    int f = 1 << (v->cfg.n_levels - 1);
    float *x = nb(v, (int64_t)N * v->cfg.out_channels * h * f * w * f, "tile output");
    if (x && decoder_fwd(v, z, x, N, h, w)) { fr(v, x); return NULL; }
    return x;
}

/* Run fn tile by tile over a latent of h x w cells: in[N, cin, h ui, w ui]
 * (device) -> out[N, cout, h uo, w uo] (device), each tile's output weighted
 * by its blend weights and summed on the host. ui, uo: input and output units
 * per latent cell (encode: f and 1; decode: 1 and f). 0 / -1. */
static int run_tiled(VAE *v, TileFn fn, const float *in, float *out, int N, int h, int w, int cin,
                     int ui, int cout, int uo) {
    Backend *be = v->be;
    Axis ay = {0}, ax = {0};
    int64_t Hi = (int64_t)h * ui, Wi = (int64_t)w * ui, Ho = (int64_t)h * uo, Wo = (int64_t)w * uo;
    int64_t nin = (int64_t)N * cin * Hi * Wi, nout = (int64_t)N * cout * Ho * Wo;
    float *hin = NULL, *hout = NULL, *tin_h = NULL, *tout_h = NULL, *wy = NULL, *wx = NULL;
    float *tin = NULL;
    int rc = -1;
    if (axis_make(&ay, h, v->tile_cells) || axis_make(&ax, w, v->tile_cells)) goto oom;
    int64_t thi = (int64_t)ay.len * ui, twi = (int64_t)ax.len * ui;
    int64_t tho = (int64_t)ay.len * uo, two = (int64_t)ax.len * uo;
    hin = malloc((size_t)nin * sizeof(float));
    hout = calloc((size_t)nout, sizeof(float));
    tin_h = malloc((size_t)(N * cin * thi * twi) * sizeof(float));
    tout_h = malloc((size_t)(N * cout * tho * two) * sizeof(float));
    wy = malloc((size_t)tho * sizeof(float));
    wx = malloc((size_t)two * sizeof(float));
    if (!hin || !hout || !tin_h || !tout_h || !wy || !wx) goto oom;
    tin = nb(v, N * cin * thi * twi, "tile input");
    if (!tin) goto done;
    be->download(be, hin, in, (size_t)nin * sizeof(float));
    for (int i = 0; i < ay.n; i++) {
        axis_weights(&ay, i, uo, wy);
        for (int j = 0; j < ax.n; j++) {
            axis_weights(&ax, j, uo, wx);
            int64_t y0 = (int64_t)ay.start[i] * ui, x0 = (int64_t)ax.start[j] * ui;
            for (int64_t nc = 0; nc < (int64_t)N * cin; nc++)
                for (int64_t y = 0; y < thi; y++)
                    memcpy(tin_h + (nc * thi + y) * twi, hin + (nc * Hi + y0 + y) * Wi + x0,
                           (size_t)twi * sizeof(float));
            be->upload(be, tin, tin_h, (size_t)(N * cin * thi * twi) * sizeof(float));
            float *tout = fn(v, tin, N, ay.len, ax.len);
            if (!tout) goto done;
            be->download(be, tout_h, tout, (size_t)(N * cout * tho * two) * sizeof(float));
            fr(v, tout);
            y0 = (int64_t)ay.start[i] * uo;
            x0 = (int64_t)ax.start[j] * uo;
            for (int64_t nc = 0; nc < (int64_t)N * cout; nc++)
                for (int64_t y = 0; y < tho; y++) {
                    float *o = hout + (nc * Ho + y0 + y) * Wo + x0;
                    const float *t = tout_h + (nc * tho + y) * two;
                    for (int64_t x = 0; x < two; x++) o[x] += wy[y] * wx[x] * t[x];
                }
        }
    }
    be->upload(be, out, hout, (size_t)nout * sizeof(float));
    rc = 0;
    goto done;
oom:
    snprintf(v->err, sizeof v->err, "out of host memory for the VAE's tiles (%.1f MB of image)",
             (double)(nin + nout) * 4 / 1e6);
done:
    fr(v, tin);
    free(ay.start); free(ax.start);
    free(hin); free(hout); free(tin_h); free(tout_h); free(wy); free(wx);
    return rc;
}

int vae_encode(VAE *v, const float *x, float *z, const float *noise, int N, int H, int W) {
    const VAEConfig *c = &v->cfg;
    Backend *be = v->be;
    int f = 1 << (c->n_levels - 1);
    char what[160];
    snprintf(what, sizeof what, "vae_encode: image %dx%d (batch %d): height and width must be "
             "positive multiples of %d", H, W, N, f);
    if (begin(v, N, what, N > 0 && H > 0 && W > 0 && H % f == 0 && W % f == 0)) return finish(v, -1);
    int L = c->latent_channels;
    int64_t hw = (int64_t)(H / f) * (W / f), per = (int64_t)L * hw;
    float *mom = NULL;
    if (vae_will_tile(v, 0, N, H, W) == 1) {
        mom = nb(v, 2 * N * per, "moments");
        if (!mom || run_tiled(v, tile_encode, x, mom, N, H / f, W / f, c->in_channels, f, 2 * L, 1)) {
            fr(v, mom);
            return finish(v, -1);
        }
    } else if (encoder_fwd(v, x, &mom, N, H, W)) {
        return finish(v, -1);
    }
    /* mean = moments[:, :L]; logvar = moments[:, L:] */
    for (int n = 0; n < N; n++)
        be->copy(be, z + n * per, mom + 2 * n * per, (size_t)per * sizeof(float));
    int rc = 0;
    if (noise) {
        /* z = mean + exp(0.5 clamp(logvar, -30, 20)) * noise, on the host: a
         * latent is small (16K floats at 512x512) and the table has no exp op */
        int64_t tot = N * per;
        float *hm = malloc((size_t)tot * 2 * sizeof(float)), *hn = malloc((size_t)tot * sizeof(float));
        if (!hm || !hn) {
            snprintf(v->err, sizeof v->err, "out of host memory");
            rc = -1;
        } else {
            be->download(be, hm, mom, (size_t)tot * 2 * sizeof(float));
            be->download(be, hn, noise, (size_t)tot * sizeof(float));
            for (int n = 0; n < N; n++)
                for (int64_t i = 0; i < per; i++) {
                    double lv = hm[(2 * n + 1) * per + i];
                    lv = lv < -30 ? -30 : lv > 20 ? 20 : lv;
                    hn[n * per + i] = (float)(hm[2 * n * per + i] + exp(0.5 * lv) * hn[n * per + i]);
                }
            be->upload(be, z, hn, (size_t)tot * sizeof(float));
        }
        free(hm); free(hn);
    }
    be->scale(be, z, c->scaling_factor, N * per);
    fr(v, mom);
    return finish(v, rc);
}

int vae_decode(VAE *v, const float *z, float *x, int N, int h, int w) {
    const VAEConfig *c = &v->cfg;
    char what[160];
    snprintf(what, sizeof what, "vae_decode: latent %dx%d (batch %d) must be positive", h, w, N);
    if (begin(v, N, what, N > 0 && h > 0 && w > 0)) return finish(v, -1);
    int f = 1 << (c->n_levels - 1), rc;
    if (vae_will_tile(v, 1, N, h, w) == 1)
        rc = run_tiled(v, tile_decode, z, x, N, h, w, c->latent_channels, 1, c->out_channels, f);
    else
        rc = decoder_fwd(v, z, x, N, h, w);
    return finish(v, rc);
}

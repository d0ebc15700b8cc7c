/* unet_config.c — what UNet to build: the built-in architectures (tiny, sd15,
 * sdxl), the reader of a diffusers unet/config.json, and the resolution of a
 * --model argument (built-in name, diffusers folder or config.json) to one of
 * them. It lives apart from unet.c because it only fills a plain UNetConfig:
 * it needs the JSON reader and the file system, never the backend, and
 * unet.c builds and runs whatever config it is handed. */
#include "models/unet_config.h"
#include "core/fsutil.h"
#include "formats/config_json.h"
#include "formats/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void cfg_common(UNetConfig *c) {
    memset(c, 0, sizeof *c);
    c->in_channels = 4; c->out_channels = 4;
    c->layers_per_block = 2;
    c->norm_num_groups = 32; c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = 1; c->freq_shift = 0;
    c->mid_block = 1;
    c->sample_size = 64;
}

int unet_config_builtin(const char *name, UNetConfig *c) {
    if (!name) return -1;
    if (!strcmp(name, "sd15")) {
        cfg_common(c);
        snprintf(c->name, sizeof c->name, "sd15");
        c->sample_size = 64; c->n_levels = 4;
        int boc[4] = {320, 640, 1280, 1280}, dc[4] = {1, 1, 1, 0}, uc[4] = {0, 1, 1, 1};
        for (int i = 0; i < 4; i++) {
            c->block_out_channels[i] = boc[i]; c->down_cross[i] = dc[i]; c->up_cross[i] = uc[i];
            c->transformer_layers[i] = 1; c->heads[i] = 8;
        }
        c->cross_attention_dim = 768;
        return 0;
    }
    if (!strcmp(name, "sdxl")) {
        cfg_common(c);
        snprintf(c->name, sizeof c->name, "sdxl");
        c->sample_size = 128; c->n_levels = 3;
        int boc[3] = {320, 640, 1280}, dc[3] = {0, 1, 1}, uc[3] = {1, 1, 0};
        int tl[3] = {1, 2, 10}, hd[3] = {5, 10, 20};
        for (int i = 0; i < 3; i++) {
            c->block_out_channels[i] = boc[i]; c->down_cross[i] = dc[i]; c->up_cross[i] = uc[i];
            c->transformer_layers[i] = tl[i]; c->heads[i] = hd[i];
        }
        c->cross_attention_dim = 2048;
        c->use_linear_projection = 1;
        c->addition_time_embed_dim = 256;
        c->projection_class_embeddings_input_dim = 2816;
        return 0;
    }
    if (!strcmp(name, "tiny")) {
        cfg_common(c);
        snprintf(c->name, sizeof c->name, "tiny");
        c->in_channels = 3; c->out_channels = 3;
        c->sample_size = 32; c->n_levels = 3;
        int boc[3] = {32, 64, 64}, dc[3] = {1, 1, 0}, uc[3] = {0, 1, 1};
        for (int i = 0; i < 3; i++) {
            c->block_out_channels[i] = boc[i]; c->down_cross[i] = dc[i]; c->up_cross[i] = uc[i];
            c->transformer_layers[i] = 1; c->heads[i] = 4;
        }
        c->layers_per_block = 1;
        c->cross_attention_dim = 64;
        c->norm_num_groups = 16;
        return 0;
    }
    return -1;
}

/* ------------------------------------------------------------------ config.json
 *
 * The reader refuses what the engine does not compute. Every field of diffusers'
 * UNet2DConditionModel config (the arguments of its __init__) is listed in
 * FIELDS below with the values at which the engine's forward pass is diffusers'
 * forward: a field that changes the computation is accepted only at those
 * values (null or diffusers' default included where they mean the same), and
 * anything else fails with one line naming the file, the field, the value found
 * and what is supported. Fields that change nothing here are accepted as they
 * come: metadata and sample_size, and the options diffusers passes only to
 * block types this reader refuses anyway (SimpleCrossAttn*, ResnetDownsample*,
 * the "text" addition embedding). A field diffusers does not know is refused
 * too (diffusers would ignore it with a warning, but a field we have never seen
 * may well change the architecture), unless its name starts with '_': that is
 * diffusers' own convention for metadata (_class_name, _diffusers_version,
 * _name_or_path), and the reference copies add their own (_source, _note). */

typedef enum {
    F_READ,   /* read (and checked) by unet_config_parse itself */
    F_ANY,    /* does not change the computation: any value */
    F_NULL,   /* only null */
    F_FALSE,  /* only false, or null (which diffusers reads as false) */
    F_NUM,    /* only the number num */
    F_STR,    /* only the string str[0] (or str[1]) */
} FieldKind;

static const struct {
    const char *key;
    FieldKind kind;
    double num;
    const char *str[2];
} FIELDS[] = {
    {"sample_size", F_READ, 0, {0}},        /* the default image size: no effect on the passes */
    {"in_channels", F_READ, 0, {0}},
    {"out_channels", F_READ, 0, {0}},
    {"center_input_sample", F_FALSE, 0, {0}},
    {"flip_sin_to_cos", F_READ, 0, {0}},
    {"freq_shift", F_READ, 0, {0}},
    {"down_block_types", F_READ, 0, {0}},
    {"mid_block_type", F_READ, 0, {0}},
    {"up_block_types", F_READ, 0, {0}},
    {"only_cross_attention", F_READ, 0, {0}},
    {"block_out_channels", F_READ, 0, {0}},
    {"layers_per_block", F_READ, 0, {0}},
    {"downsample_padding", F_NUM, 1, {0}},  /* 0 pads asymmetrically (0,1,0,1) */
    {"mid_block_scale_factor", F_NUM, 1, {0}},
    {"dropout", F_NUM, 0, {0}},             /* the engine has no dropout in training */
    {"act_fn", F_STR, 0, {"silu", "swish"}}, /* diffusers maps both to nn.SiLU */
    {"norm_num_groups", F_READ, 0, {0}},
    {"norm_eps", F_READ, 0, {0}},
    {"cross_attention_dim", F_READ, 0, {0}},
    {"transformer_layers_per_block", F_READ, 0, {0}},
    {"reverse_transformer_layers_per_block", F_NULL, 0, {0}},
    {"encoder_hid_dim", F_NULL, 0, {0}},     /* non-null alone implies "text_proj" */
    {"encoder_hid_dim_type", F_NULL, 0, {0}},
    {"attention_head_dim", F_READ, 0, {0}},
    {"num_attention_heads", F_READ, 0, {0}},
    {"dual_cross_attention", F_FALSE, 0, {0}},
    {"use_linear_projection", F_READ, 0, {0}},
    {"class_embed_type", F_NULL, 0, {0}},
    {"addition_embed_type", F_READ, 0, {0}},
    {"addition_time_embed_dim", F_READ, 0, {0}},
    {"num_class_embeds", F_NULL, 0, {0}},
    /* attention precision under fp16; the engine computes it in float32 anyway */
    {"upcast_attention", F_ANY, 0, {0}},
    {"resnet_time_scale_shift", F_STR, 0, {"default", 0}},
    {"resnet_skip_time_act", F_ANY, 0, {0}},      /* SimpleCrossAttn / ResnetDownsample blocks */
    {"resnet_out_scale_factor", F_ANY, 0, {0}},   /* SimpleCrossAttn / ResnetDownsample blocks */
    {"time_embedding_type", F_STR, 0, {"positional", 0}},
    {"time_embedding_dim", F_READ, 0, {0}},
    {"time_embedding_act_fn", F_NULL, 0, {0}},
    {"timestep_post_act", F_NULL, 0, {0}},
    {"time_cond_proj_dim", F_NULL, 0, {0}},
    {"conv_in_kernel", F_NUM, 3, {0}},
    {"conv_out_kernel", F_NUM, 3, {0}},
    {"projection_class_embeddings_input_dim", F_READ, 0, {0}},
    {"attention_type", F_STR, 0, {"default", 0}}, /* "gated..." adds GLIGEN fusers */
    {"class_embeddings_concat", F_FALSE, 0, {0}}, /* doubles the resnets' time input */
    {"mid_block_only_cross_attention", F_ANY, 0, {0}}, /* UNetMidBlock2DSimpleCrossAttn */
    {"cross_attention_norm", F_ANY, 0, {0}},      /* SimpleCrossAttn blocks */
    {"addition_embed_type_num_heads", F_ANY, 0, {0}}, /* addition_embed_type "text" */
};

typedef CfgReader Reader;

/* int or list of n ints (diffusers' per-level fields); absent keeps out[],
 * null too when null_ok */
static int read_levels(Reader *r, const char *key, int n, int null_ok, int *out) {
    const JsonValue *v = json_get(r->root, key);
    if (!v || (null_ok && v->type == JSON_NULL)) return 0;
    int x[UNET_MAX_LEVELS], ok = 0;
    if (v->type == JSON_NUMBER && !cfg_json_int(v, &x[0]) && x[0] > 0) {
        for (int i = 1; i < n; i++) x[i] = x[0];
        ok = 1;
    } else if (v->type == JSON_ARRAY && v->n == n) {
        ok = 1;
        for (int i = 0; i < n; i++)
            if (cfg_json_int(&v->items[i], &x[i]) || x[i] <= 0) ok = 0;
    }
    if (!ok) {
        char only[128];
        snprintf(only, sizeof only, "a positive integer or a list of %d of them, one per "
                 "block_out_channels entry%s", n, null_ok ? ", or null" : "");
        return cfg_refuse(r, key, v, only);
    }
    memcpy(out, x, (size_t)n * sizeof *out);
    return 0;
}

/* the F_NULL .. F_STR fields of FIELDS */
static int check_simple(Reader *r) {
    for (size_t k = 0; k < sizeof FIELDS / sizeof FIELDS[0]; k++) {
        const char *key = FIELDS[k].key;
        const JsonValue *v = json_get(r->root, key);
        if (!v) continue;
        char only[64];
        switch (FIELDS[k].kind) {
        case F_READ:
        case F_ANY:
            break;
        case F_NULL:
            if (v->type != JSON_NULL) return cfg_refuse(r, key, v, "null");
            break;
        case F_FALSE:
            if (v->type != JSON_NULL && !(v->type == JSON_BOOL && !v->boolean))
                return cfg_refuse(r, key, v, "false or null");
            break;
        case F_NUM:
            if (v->type != JSON_NUMBER || v->number != FIELDS[k].num) {
                snprintf(only, sizeof only, "%g", FIELDS[k].num);
                return cfg_refuse(r, key, v, only);
            }
            break;
        case F_STR: {
            const char *const *s = FIELDS[k].str;
            if (v->type == JSON_STRING &&
                (!strcmp(v->string, s[0]) || (s[1] && !strcmp(v->string, s[1]))))
                break;
            snprintf(only, sizeof only, "\"%s\"%s%s%s", s[0], s[1] ? " or \"" : "",
                     s[1] ? s[1] : "", s[1] ? "\"" : "");
            return cfg_refuse(r, key, v, only);
        }
        }
    }
    return 0;
}

static int is_unet_field(const char *key) {
    for (size_t k = 0; k < sizeof FIELDS / sizeof FIELDS[0]; k++)
        if (!strcmp(FIELDS[k].key, key)) return 1;
    return 0;
}

static int unet_config_parse(const char *text, const char *src, UNetConfig *c, char *err,
                             size_t errlen) {
    JsonValue *root = cfg_parse_object(text, src, err, errlen);
    if (!root) return -1;
    Reader rd = {root, src, err, errlen}, *r = &rd;
    int rc = -1;
    const JsonValue *v;
    cfg_common(c);
    snprintf(c->name, sizeof c->name, "custom");
    if (cfg_check_fields(r, is_unet_field, "diffusers UNet2DConditionModel") != 0) goto done;

    const JsonValue *boc = json_get(root, "block_out_channels");
    char what[128];
    snprintf(what, sizeof what, "a list of 1..%d positive integers", UNET_MAX_LEVELS);
    if (!boc) { cfg_missing(r, "block_out_channels", what); goto done; }
    int ok = boc->type == JSON_ARRAY && boc->n >= 1 && boc->n <= UNET_MAX_LEVELS;
    for (int i = 0; ok && i < boc->n; i++)
        if (cfg_json_int(&boc->items[i], &c->block_out_channels[i]) || c->block_out_channels[i] <= 0) ok = 0;
    if (!ok) { cfg_refuse(r, "block_out_channels", boc, what); goto done; }
    c->n_levels = boc->n;
    int nl = c->n_levels, ch0 = c->block_out_channels[0];

    if (cfg_read_int(r, "in_channels", 1, 0, &c->in_channels) ||
        cfg_read_int(r, "out_channels", 1, 0, &c->out_channels) ||
        cfg_read_int(r, "layers_per_block", 1, 0, &c->layers_per_block) ||
        cfg_read_int(r, "norm_num_groups", 1, 0, &c->norm_num_groups) ||
        cfg_read_int(r, "addition_time_embed_dim", 0, 1, &c->addition_time_embed_dim) ||
        cfg_read_int(r, "projection_class_embeddings_input_dim", 0, 1,
                 &c->projection_class_embeddings_input_dim))
        goto done;
    /* sample_size is only the default image size (square here); newer diffusers
     * may write it as [height, width] */
    v = json_get(root, "sample_size");
    if (v && v->type == JSON_ARRAY) {
        int h, w;
        if (v->n != 2 || cfg_json_int(&v->items[0], &h) || cfg_json_int(&v->items[1], &w) || h < 1 || h != w) {
            cfg_refuse(r, "sample_size", v, "a positive integer, [n, n] or null");
            goto done;
        }
        c->sample_size = h;
    } else if (cfg_read_int(r, "sample_size", 1, 1, &c->sample_size))
        goto done;
    if (!json_get(root, "cross_attention_dim")) {
        cfg_missing(r, "cross_attention_dim", "a positive integer");
        goto done;
    }
    if (cfg_read_int(r, "cross_attention_dim", 1, 0, &c->cross_attention_dim) ||
        cfg_read_float(r, "norm_eps", &c->norm_eps) || cfg_read_float(r, "freq_shift", &c->freq_shift) ||
        cfg_read_bool(r, "flip_sin_to_cos", 0, &c->flip_sin_to_cos) ||
        cfg_read_bool(r, "use_linear_projection", 1, &c->use_linear_projection))
        goto done;

    /* attention_head_dim is, for historical reasons, diffusers' number of heads;
     * num_attention_heads overrides it when set */
    for (int i = 0; i < nl; i++) { c->heads[i] = 8; c->transformer_layers[i] = 1; }
    if (read_levels(r, "attention_head_dim", nl, 0, c->heads) ||
        read_levels(r, "num_attention_heads", nl, 1, c->heads) ||
        read_levels(r, "transformer_layers_per_block", nl, 0, c->transformer_layers))
        goto done;

    const char *bk[2] = {"down_block_types", "up_block_types"};
    for (int d = 0; d < 2; d++) {
        const JsonValue *bt = json_get(root, bk[d]);
        snprintf(what, sizeof what, "a list of %d block types, one per block_out_channels entry", nl);
        if (!bt) { cfg_missing(r, bk[d], what); goto done; }
        if (bt->type != JSON_ARRAY || bt->n != nl) { cfg_refuse(r, bk[d], bt, what); goto done; }
        const char *cross = d ? "CrossAttnUpBlock2D" : "CrossAttnDownBlock2D";
        const char *plain = d ? "UpBlock2D" : "DownBlock2D";
        int *dst = d ? c->up_cross : c->down_cross;
        for (int i = 0; i < nl; i++) {
            const JsonValue *e = &bt->items[i];
            const char *s = e->type == JSON_STRING ? e->string : "";
            if (!strcmp(s, cross)) dst[i] = 1;
            else if (!strcmp(s, plain)) dst[i] = 0;
            else {
                char key[40], only[80];
                snprintf(key, sizeof key, "%s[%d]", bk[d], i);
                snprintf(only, sizeof only, "\"%s\" or \"%s\"", cross, plain);
                cfg_refuse(r, key, e, only);
                goto done;
            }
        }
    }
    v = json_get(root, "mid_block_type");
    if (v && v->type == JSON_NULL) c->mid_block = 0;
    else if (v && !(v->type == JSON_STRING && !strcmp(v->string, "UNetMidBlock2DCrossAttn"))) {
        cfg_refuse(r, "mid_block_type", v, "\"UNetMidBlock2DCrossAttn\" or null");
        goto done;
    }
    /* false, or one false per level (true: attn1 attends to the text too) */
    v = json_get(root, "only_cross_attention");
    if (v && v->type != JSON_NULL && !(v->type == JSON_BOOL && !v->boolean)) {
        int all_false = v->type == JSON_ARRAY && v->n == nl;
        for (int i = 0; all_false && i < nl; i++)
            all_false = v->items[i].type == JSON_BOOL && !v->items[i].boolean;
        if (!all_false) {
            snprintf(what, sizeof what, "false, null or a list of %d false", nl);
            cfg_refuse(r, "only_cross_attention", v, what);
            goto done;
        }
    }
    /* the time embedding width is 4 x block_out_channels[0] */
    v = json_get(root, "time_embedding_dim");
    if (v && v->type != JSON_NULL) {
        int x;
        if (cfg_json_int(v, &x) || x != 4 * ch0) {
            snprintf(what, sizeof what, "null or %d, 4 x block_out_channels[0]", 4 * ch0);
            cfg_refuse(r, "time_embedding_dim", v, what);
            goto done;
        }
    }
    v = json_get(root, "addition_embed_type");
    if (v && v->type != JSON_NULL) {
        if (v->type != JSON_STRING || strcmp(v->string, "text_time")) {
            cfg_refuse(r, "addition_embed_type", v, "\"text_time\" or null");
            goto done;
        }
        if (c->addition_time_embed_dim <= 0 ||
            c->projection_class_embeddings_input_dim <= 6 * c->addition_time_embed_dim) {
            snprintf(err, errlen, "%s: fields 'addition_time_embed_dim' and "
                     "'projection_class_embeddings_input_dim' must be set for text_time "
                     "(input dim > 6 x time embed dim)", src);
            goto done;
        }
    } else {
        c->addition_time_embed_dim = 0;
        c->projection_class_embeddings_input_dim = 0;
    }
    if (check_simple(r)) goto done;

    /* channel bookkeeping the engine relies on */
    for (int i = 0; i < nl; i++) {
        int ch = c->block_out_channels[i];
        if (ch % c->norm_num_groups) {
            snprintf(err, errlen, "%s: norm_num_groups=%d does not divide block_out_channels[%d]=%d",
                     src, c->norm_num_groups, i, ch);
            goto done;
        }
        if (ch % c->heads[i]) {
            snprintf(err, errlen, "%s: %d attention heads do not divide block_out_channels[%d]=%d",
                     src, c->heads[i], i, ch);
            goto done;
        }
    }
    rc = 0;
done:
    json_free(root);
    return rc;
}

int unet_config_from_json_text(const char *text, UNetConfig *c, char *err, size_t errlen) {
    return unet_config_parse(text, "config.json", c, err, errlen);
}

int unet_config_from_json(const char *path, UNetConfig *c, char *err, size_t errlen) {
    size_t n;
    char *text = fs_read_all(path, FS_TEXT_MAX, &n, err, errlen);
    if (!text) return -1;
    int rc = unet_config_parse(text, path, c, err, errlen);
    free(text);
    if (rc) return -1;
    fs_stem(path, c->name, sizeof c->name);
    return 0;
}

int unet_config_resolve(const char *model, UNetConfig *cfg, char *err, size_t errlen) {
    if (unet_config_builtin(model, cfg) == 0) return 0;
    char path[4200];
    if (fs_is_dir(model)) {
        snprintf(path, sizeof path, "%s/unet/config.json", model);
        if (!fs_exists(path)) snprintf(path, sizeof path, "%s/config.json", model);
        return unet_config_from_json(path, cfg, err, errlen);
    }
    if (fs_exists(model)) return unet_config_from_json(model, cfg, err, errlen);
    snprintf(err, errlen, "model %s: not tiny, sd15, sdxl, a diffusers folder or a config.json", model);
    return -1;
}

/* unet_config.c — what UNet to build: the built-in architectures (tiny, sd15,
 * sdxl), the reader of a diffusers unet/config.json, and the resolution of a
 * --model argument (built-in name, diffusers folder or config.json) to one of
 * them. It lives apart from unet.c because it only fills a plain UNetConfig:
 * it needs the JSON reader and the file system, never the backend, and
 * unet.c builds and runs whatever config it is handed. */
#include "models/unet_config.h"
#include "core/fsutil.h"
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

static int jint(const JsonValue *v, int *out) {
    if (!v || v->type != JSON_NUMBER || v->number != (double)(int)v->number) return -1;
    *out = (int)v->number;
    return 0;
}

/* int or list of n ints (diffusers' per-level fields) */
static int jint_levels(const JsonValue *root, const char *key, int n, int *out, int *present,
                       char *err, size_t errlen) {
    const JsonValue *v = json_get(root, key);
    *present = v && v->type != JSON_NULL;
    if (!*present) return 0;
    if (v->type == JSON_NUMBER) {
        int x;
        if (jint(v, &x) || x <= 0) goto bad;
        for (int i = 0; i < n; i++) out[i] = x;
        return 0;
    }
    if (v->type == JSON_ARRAY) {
        if (v->n != n) {
            snprintf(err, errlen, "config field '%s' has %d entries but block_out_channels has %d",
                     key, v->n, n);
            return -1;
        }
        for (int i = 0; i < n; i++)
            if (jint(&v->items[i], &out[i]) || out[i] <= 0) goto bad;
        return 0;
    }
bad:
    snprintf(err, errlen, "config field '%s' must be a positive integer or a list of them", key);
    return -1;
}

static const char *jstr(const JsonValue *root, const char *key) {
    const JsonValue *v = json_get(root, key);
    return v && v->type == JSON_STRING ? v->string : NULL;
}

int unet_config_from_json_text(const char *text, UNetConfig *c, char *err, size_t errlen) {
    char jerr[200];
    JsonValue *root = json_parse(text, strlen(text), jerr, sizeof jerr);
    if (!root) { snprintf(err, errlen, "config.json: %s", jerr); return -1; }
    int rc = -1, present;
    cfg_common(c);
    snprintf(c->name, sizeof c->name, "custom");
    if (root->type != JSON_OBJECT) { snprintf(err, errlen, "config.json: not a JSON object"); goto done; }

    const JsonValue *boc = json_get(root, "block_out_channels");
    if (!boc || boc->type != JSON_ARRAY || boc->n < 1 || boc->n > UNET_MAX_LEVELS) {
        snprintf(err, errlen, "config field 'block_out_channels' must be a list of 1..%d integers",
                 UNET_MAX_LEVELS);
        goto done;
    }
    c->n_levels = boc->n;
    for (int i = 0; i < boc->n; i++)
        if (jint(&boc->items[i], &c->block_out_channels[i]) || c->block_out_channels[i] <= 0) {
            snprintf(err, errlen, "config field 'block_out_channels' entry %d is not a positive integer", i);
            goto done;
        }
    int nl = c->n_levels;

    struct { const char *key; int *dst; int min; } ints[] = {
        {"in_channels", &c->in_channels, 1}, {"out_channels", &c->out_channels, 1},
        {"sample_size", &c->sample_size, 1}, {"layers_per_block", &c->layers_per_block, 1},
        {"cross_attention_dim", &c->cross_attention_dim, 1},
        {"norm_num_groups", &c->norm_num_groups, 1},
        {"addition_time_embed_dim", &c->addition_time_embed_dim, 0},
        {"projection_class_embeddings_input_dim", &c->projection_class_embeddings_input_dim, 0},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        const JsonValue *v = json_get(root, ints[i].key);
        if (!v || v->type == JSON_NULL) continue;
        int x;
        if (jint(v, &x) || x < ints[i].min) {
            snprintf(err, errlen, "config field '%s' must be an integer >= %d%s", ints[i].key,
                     ints[i].min, v->type == JSON_ARRAY ? " (per-block lists are not supported)" : "");
            goto done;
        }
        *ints[i].dst = x;
    }
    if (!json_get(root, "cross_attention_dim")) {
        snprintf(err, errlen, "config field 'cross_attention_dim' is missing");
        goto done;
    }
    const JsonValue *v;
    if ((v = json_get(root, "norm_eps")) && v->type == JSON_NUMBER) c->norm_eps = (float)v->number;
    if ((v = json_get(root, "freq_shift")) && v->type == JSON_NUMBER) c->freq_shift = (float)v->number;
    if ((v = json_get(root, "flip_sin_to_cos")) && v->type == JSON_BOOL) c->flip_sin_to_cos = v->boolean;
    if ((v = json_get(root, "use_linear_projection")) && v->type == JSON_BOOL)
        c->use_linear_projection = v->boolean;

    for (int i = 0; i < nl; i++) { c->heads[i] = 8; c->transformer_layers[i] = 1; }
    if (jint_levels(root, "attention_head_dim", nl, c->heads, &present, err, errlen)) goto done;
    if (jint_levels(root, "num_attention_heads", nl, c->heads, &present, err, errlen)) goto done;
    if (jint_levels(root, "transformer_layers_per_block", nl, c->transformer_layers, &present,
                    err, errlen)) goto done;

    const char *bk[2] = {"down_block_types", "up_block_types"};
    for (int d = 0; d < 2; d++) {
        const JsonValue *bt = json_get(root, bk[d]);
        if (!bt || bt->type != JSON_ARRAY || bt->n != nl) {
            snprintf(err, errlen, "config field '%s' must be a list of %d block types (one per "
                     "block_out_channels entry)", bk[d], nl);
            goto done;
        }
        for (int i = 0; i < nl; i++) {
            const char *s = bt->items[i].type == JSON_STRING ? bt->items[i].string : "";
            const char *cross = d ? "CrossAttnUpBlock2D" : "CrossAttnDownBlock2D";
            const char *plain = d ? "UpBlock2D" : "DownBlock2D";
            int *dst = d ? c->up_cross : c->down_cross;
            if (!strcmp(s, cross)) dst[i] = 1;
            else if (!strcmp(s, plain)) dst[i] = 0;
            else {
                snprintf(err, errlen, "config field '%s' entry %d: unsupported block type '%s' "
                         "(supported: %s, %s)", bk[d], i, s, cross, plain);
                goto done;
            }
        }
    }
    v = json_get(root, "mid_block_type");
    if (v && v->type == JSON_NULL) c->mid_block = 0;
    else if (v) {
        const char *s = v->type == JSON_STRING ? v->string : "";
        if (strcmp(s, "UNetMidBlock2DCrossAttn")) {
            snprintf(err, errlen, "config field 'mid_block_type': unsupported '%s' "
                     "(supported: UNetMidBlock2DCrossAttn or null)", s);
            goto done;
        }
    }
    v = json_get(root, "addition_embed_type");
    if (v && v->type != JSON_NULL) {
        const char *s = v->type == JSON_STRING ? v->string : "";
        if (strcmp(s, "text_time")) {
            snprintf(err, errlen, "config field 'addition_embed_type': unsupported '%s' "
                     "(supported: text_time or null)", s);
            goto done;
        }
        if (c->addition_time_embed_dim <= 0 ||
            c->projection_class_embeddings_input_dim <= 6 * c->addition_time_embed_dim) {
            snprintf(err, errlen, "config fields 'addition_time_embed_dim' and "
                     "'projection_class_embeddings_input_dim' must be set for text_time "
                     "(input dim > 6 x time embed dim)");
            goto done;
        }
    } else {
        c->addition_time_embed_dim = 0;
        c->projection_class_embeddings_input_dim = 0;
    }
    /* fields that change the architecture in ways this engine does not implement */
    struct { const char *key; const char *want; } strs[] = {
        {"act_fn", "silu"}, {"time_embedding_type", "positional"},
        {"resnet_time_scale_shift", "default"},
    };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        const char *s = jstr(root, strs[i].key);
        if (s && strcmp(s, strs[i].want)) {
            snprintf(err, errlen, "config field '%s': unsupported '%s' (supported: %s)",
                     strs[i].key, s, strs[i].want);
            goto done;
        }
    }
    const char *nulls[] = {"class_embed_type", "encoder_hid_dim", "encoder_hid_dim_type",
                           "time_cond_proj_dim", "num_class_embeds"};
    for (size_t i = 0; i < sizeof nulls / sizeof nulls[0]; i++) {
        v = json_get(root, nulls[i]);
        if (v && v->type != JSON_NULL) {
            snprintf(err, errlen, "config field '%s' is set; this engine supports only null", nulls[i]);
            goto done;
        }
    }
    const char *falses[] = {"center_input_sample", "dual_cross_attention", "only_cross_attention",
                            "class_embeddings_concat"};
    for (size_t i = 0; i < sizeof falses / sizeof falses[0]; i++) {
        v = json_get(root, falses[i]);
        if (v && v->type == JSON_BOOL && v->boolean) {
            snprintf(err, errlen, "config field '%s' is true; this engine supports only false", falses[i]);
            goto done;
        }
    }
    struct { const char *key; double want; } nums[] = {
        {"downsample_padding", 1}, {"mid_block_scale_factor", 1}, {"conv_in_kernel", 3},
        {"conv_out_kernel", 3},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        v = json_get(root, nums[i].key);
        if (v && v->type == JSON_NUMBER && v->number != nums[i].want) {
            snprintf(err, errlen, "config field '%s' = %g; this engine supports only %g",
                     nums[i].key, v->number, nums[i].want);
            goto done;
        }
    }
    /* channel bookkeeping the engine relies on */
    for (int i = 0; i < nl; i++) {
        int ch = c->block_out_channels[i];
        if (ch % c->norm_num_groups) {
            snprintf(err, errlen, "config: norm_num_groups=%d does not divide block_out_channels[%d]=%d",
                     c->norm_num_groups, i, ch);
            goto done;
        }
        if (ch % c->heads[i]) {
            snprintf(err, errlen, "config: %d attention heads do not divide block_out_channels[%d]=%d",
                     c->heads[i], i, ch);
            goto done;
        }
    }
    rc = 0;
done:
    json_free(root);
    return rc;
}

int unet_config_from_json(const char *path, UNetConfig *c, char *err, size_t errlen) {
    size_t n;
    char ferr[256];
    char *text = fs_read_all(path, &n, ferr, sizeof ferr);
    if (!text) { snprintf(err, errlen, "%s", ferr); return -1; }
    char e2[256];
    int rc = unet_config_from_json_text(text, c, e2, sizeof e2);
    free(text);
    if (rc) { snprintf(err, errlen, "%s: %s", path, e2); return -1; }
    /* name: the file stem */
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    snprintf(c->name, sizeof c->name, "%s", b);
    char *dot = strrchr(c->name, '.');
    if (dot && dot != c->name) *dot = 0;
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

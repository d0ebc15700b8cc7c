#include "models/model.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "core/replay.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "models/adapter_file.h"
#include "models/checkpoint.h"
#include "models/convert.h"
#include "models/scheduler_config.h"

/* ---- shipped files ---- */

#define DATA_DIRS 4

/* the folders shipped files are looked for in, in order (model.h): their count */
static int data_dirs(char dirs[DATA_DIRS][PATH_MAX]) {
    int n = 0;
    const char *home = getenv("KRONA_HOME");
    if (home && home[0]) snprintf(dirs[n++], PATH_MAX, "%s", home);
    char exe[PATH_MAX];
    if (fs_exe_dir(exe, sizeof exe) == 0) {
        snprintf(dirs[n++], PATH_MAX, "%s", exe);
        char *slash = strrchr(exe, '/'); /* PREFIX/bin -> PREFIX/share/krona-studio */
        if (slash) {
            *slash = 0;
            snprintf(dirs[n++], PATH_MAX, "%s/share/krona-studio", exe);
        }
    }
    if (getcwd(dirs[n], PATH_MAX)) n++;
    return n;
}

int model_find_data(const char *rel, char *out, size_t outlen) {
    char dirs[DATA_DIRS][PATH_MAX];
    int n = data_dirs(dirs);
    for (int i = 0; i < n; i++) {
        snprintf(out, outlen, "%s/%s", dirs[i], rel);
        if (fs_exists(out)) return 0;
    }
    return -1;
}

void model_data_where(char *out, size_t n) {
    char dirs[DATA_DIRS][PATH_MAX];
    int nd = data_dirs(dirs);
    const char *home = getenv("KRONA_HOME");
    size_t len = 0;
    out[0] = 0;
    if (!home || !home[0]) len += (size_t)snprintf(out, n, "$KRONA_HOME (not set)");
    for (int i = 0; i < nd && len < n; i++)
        len += (size_t)snprintf(out + len, n - len, "%s%s", len ? ", " : "", dirs[i]);
}

int model_find_input(const char *path, char *out, size_t outlen) {
    snprintf(out, outlen, "%s", path);
    if (fs_exists(path)) return 0;
    if (path[0] != '/' && model_find_data(path, out, outlen) == 0) return 0;
    snprintf(out, outlen, "%s", path);
    return -1;
}

/* The built-in model: its weights from the shipped files (model_find_data),
 * or, for MODEL_TINY_RANDOM only, random ones. */
static int open_tiny(Model *m, int random_weights, char *err, size_t errlen) {
    TextConfig tc;
    if (unet_config_builtin("tiny", &m->ucfg) != 0 ||
        te_config_builtin(&tc, "tiny-text", err, errlen) != 0) {
        snprintf(err, errlen, "built-in tiny config missing");
        return -1;
    }
    m->unet = unet_create(&m->ucfg, m->be, err, errlen);
    if (!m->unet) return -1;
    m->te = te_create(&tc, m->be, err, errlen);
    if (!m->te) return -1;
    m->tok = tok_create_bytes();
    m->context_len = tc.max_position_embeddings;
    if (random_weights) {
        /* the engine end to end without the weight files: tests, benchmarks */
        unet_init_random(m->unet, 1);
        te_init_random(m->te, 2);
        snprintf(m->note, sizeof m->note, "random weights, as asked (%s)", MODEL_TINY_RANDOM);
        return 0;
    }
    /* the first folder with the UNet's weights; the rest of the model beside them */
    char upath[PATH_MAX], dir[PATH_MAX], tpath[PATH_MAX + 32], spath[PATH_MAX + 32];
    if (model_find_data("models/tiny/unet.safetensors", upath, sizeof upath) != 0) {
        char where[4 * PATH_MAX];
        model_data_where(where, sizeof where);
        snprintf(err, errlen, "the built-in model's models/tiny/unet.safetensors is in none of: %s; reinstall "
                 "(make install) or set KRONA_HOME to the folder holding models/ (random weights: "
                 "--random-weights, or model = %s)", where, MODEL_TINY_RANDOM);
        return -1;
    }
    snprintf(dir, sizeof dir, "%s", upath);
    *strrchr(dir, '/') = 0;
    snprintf(tpath, sizeof tpath, "%s/text_encoder.safetensors", dir);
    snprintf(spath, sizeof spath, "%s/scheduler_config.json", dir);
    if (unet_load_safetensors(m->unet, upath, err, errlen) != 0) return -1;
    unet_promise_frozen(m->unet);
    if (te_load_safetensors(m->te, tpath, "", err, errlen) != 0) return -1;
    /* the schedule the weights were trained with (pretrain writes it) */
    if (fs_exists(spath) && schedule_from_json(spath, &m->sched, err, errlen) != 0) return -1;
    m->pretrained = 1;
    snprintf(m->note, sizeof m->note, "pretrained weights from %s", upath);
    return 0;
}

/* A byte-level vocabulary (the tiny model's kind) needs no files; CLIP's is
 * the explicit one (--tokenizer), else found in dir/sub or where SD users
 * already have it (tok_find_clip). dir may be NULL (a single file). */
static int open_tokenizer(const TextConfig *tc, const char *dir, const char *sub,
                          const char *tokenizer, Tokenizer **tok, char *err, size_t errlen) {
    if (tc->vocab_size == TOK_BYTES_VOCAB) {
        *tok = tok_create_bytes();
        return *tok ? 0 : -1;
    }
    char path[PATH_MAX], found[PATH_MAX];
    if (dir) snprintf(path, sizeof path, "%s/%s", dir, sub);
    if (!(tokenizer && tokenizer[0]) && dir && fs_is_dir(path)) snprintf(found, sizeof found, "%s", path);
    else if (tok_find_clip(tokenizer, dir, found, sizeof found, err, errlen) != 0) return -1;
    *tok = tok_create_clip(found, err, errlen);
    return *tok ? 0 : -1;
}

static int open_diffusers_dir(Model *m, const char *dir, const char *tokenizer, char *err,
                              size_t errlen) {
    char path[PATH_MAX], path2[PATH_MAX];
    snprintf(path, sizeof path, "%s/unet/config.json", dir);
    if (unet_config_from_json(path, &m->ucfg, err, errlen) != 0) return -1;
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir);
    if (fs_exists(path) && schedule_from_json(path, &m->sched, err, errlen) != 0) return -1;
    snprintf(path, sizeof path, "%s/vae/config.json", dir);
    if (fs_exists(path)) {
        VAEConfig vc;
        if (vae_config_from_json(path, &vc, err, errlen) != 0) return -1;
        m->vae = vae_create(&vc, m->be, err, errlen);
        if (!m->vae) return -1;
        snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model.safetensors", dir);
        if (vae_load_safetensors(m->vae, path, NULL, err, errlen) != 0) return -1;
    }
    TextConfig tc;
    snprintf(path, sizeof path, "%s/text_encoder/config.json", dir);
    if (te_config_load(&tc, path, err, errlen) != 0) return -1;
    if (open_tokenizer(&tc, dir, "tokenizer", tokenizer, &m->tok, err, errlen) != 0) return -1;
    m->context_len = tc.max_position_embeddings;
    /* the UNet first, promised frozen as soon as it is loaded: in bf16 it may
     * shrink to half (set_frozen) before the encoders take their memory */
    m->unet = unet_create(&m->ucfg, m->be, err, errlen);
    if (!m->unet) return -1;
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    if (unet_load_safetensors(m->unet, path, err, errlen) != 0) return -1;
    unet_promise_frozen(m->unet);
    m->te = te_create(&tc, m->be, err, errlen);
    if (!m->te) return -1;
    snprintf(path2, sizeof path2, "%s/text_encoder/model.safetensors", dir);
    if (te_load_safetensors(m->te, path2, "", err, errlen) != 0) return -1;
    /* SDXL: a second text encoder (OpenCLIP ViT-bigG in HF form) */
    snprintf(path, sizeof path, "%s/text_encoder_2/config.json", dir);
    if (fs_exists(path)) {
        TextConfig tc2;
        if (te_config_load(&tc2, path, err, errlen) != 0) return -1;
        m->te2 = te_create(&tc2, m->be, err, errlen);
        if (!m->te2) return -1;
        snprintf(path, sizeof path, "%s/text_encoder_2/model.safetensors", dir);
        if (te_load_safetensors(m->te2, path, "", err, errlen) != 0) return -1;
        if (open_tokenizer(&tc2, dir, "tokenizer_2", tokenizer, &m->tok2, err, errlen) != 0) return -1;
        tok_set_pad(m->tok2, 0); /* bigG pads with "!" (id 0), CLIP-L with EOS */
        if (tc2.max_position_embeddings != m->context_len) {
            snprintf(err, errlen, "%s: text_encoder_2 takes %d tokens, text_encoder %d", dir,
                     tc2.max_position_embeddings, m->context_len);
            return -1;
        }
    }
    m->pretrained = 1;
    snprintf(m->note, sizeof m->note, "diffusers folder %s", dir);
    return 0;
}

/* A single-file checkpoint (original LDM layout): the kind from its keys, the
 * architecture of that kind, every part through the name tables. */
static int open_single_file(Model *m, const char *path, const char *tokenizer, char *err,
                            size_t errlen) {
    SafeTensors *st = st_open(path, err, errlen);
    if (!st) return -1;
    ModelKind kind;
    char desc[512], e[768];
    int rc = -1;
    if (convert_detect(st, &kind, desc, sizeof desc, e, sizeof e) != 0) {
        snprintf(err, errlen, "%s: %s", path, e);
        goto done;
    }
    int xl = kind == MODEL_KIND_SDXL;
    TextConfig tc, tc2;
    VAEConfig vc;
    if (unet_config_builtin(xl ? "sdxl" : "sd15", &m->ucfg) != 0 ||
        te_config_builtin(&tc, "clip-vit-l", e, sizeof e) != 0 ||
        (xl && te_config_builtin(&tc2, "openclip-vit-bigg", e, sizeof e) != 0) ||
        vae_config_builtin(xl ? "sdxl" : "sd15", &vc) != 0) {
        snprintf(err, errlen, "built-in configs missing");
        goto done;
    }
    /* the vocabulary first: a missing one fails before gigabytes are read */
    if (open_tokenizer(&tc, NULL, NULL, tokenizer, &m->tok, err, errlen) != 0) goto done;
    if (xl) {
        if (open_tokenizer(&tc2, NULL, NULL, tokenizer, &m->tok2, err, errlen) != 0) goto done;
        tok_set_pad(m->tok2, 0);
    }
    /* the UNet first, promised frozen as soon as it is loaded: in bf16 it may
     * shrink to half (set_frozen) before the encoders and the VAE take theirs */
    if (!(m->unet = unet_create(&m->ucfg, m->be, err, errlen))) goto done;
    if (convert_load_unet(m->unet, st, e, sizeof e) != 0) {
        snprintf(err, errlen, "%s: %s", path, e);
        goto done;
    }
    unet_promise_frozen(m->unet);
    if (!(m->te = te_create(&tc, m->be, err, errlen))) goto done;
    if (xl && !(m->te2 = te_create(&tc2, m->be, err, errlen))) goto done;
    if (!(m->vae = vae_create(&vc, m->be, err, errlen))) goto done;
    m->context_len = tc.max_position_embeddings;
    if (checkpoint_load_text(m->te, st, kind, CONVERT_TEXT, e, sizeof e) != 0 ||
        (xl && checkpoint_load_text(m->te2, st, kind, CONVERT_TEXT_2, e, sizeof e) != 0) ||
        checkpoint_load_vae(m->vae, st, kind, e, sizeof e) != 0) {
        snprintf(err, errlen, "%s: %s", path, e);
        goto done;
    }
    m->pretrained = 1;
    snprintf(m->note, sizeof m->note, "%s, %s", convert_kind_name(kind), path);
    rc = 0;
done:
    st_close(st);
    return rc;
}

/* The text encoders' widths against what the UNet takes; sets ctx_dim,
 * added_dim and cond_floats. */
static int check_widths(Model *m, char *err, size_t errlen) {
    const UNetConfig *u = &m->ucfg;
    int w = te_config(m->te)->hidden_size, w2 = m->te2 ? te_config(m->te2)->hidden_size : 0;
    m->ctx_dim = u->cross_attention_dim;
    if (w + w2 != m->ctx_dim) {
        snprintf(err, errlen, "model '%s': text encoder width %d%s != UNet cross_attention_dim %d",
                 m->spec, w + w2, m->te2 ? " (both encoders)" : "", m->ctx_dim);
        return -1;
    }
    m->added_dim = 0;
    if (u->addition_time_embed_dim > 0) {
        /* the add-embedding takes [pooled P, 6 time ids each embedded to addition_time_embed_dim] */
        int P = u->projection_class_embeddings_input_dim - 6 * u->addition_time_embed_dim;
        if (!m->te2 || te_pooled_dim(m->te2) != P) {
            snprintf(err, errlen, "model '%s': the UNet's added conditioning wants a pooled text "
                     "embedding of %d, %s", m->spec, P,
                     m->te2 ? "text_encoder_2 gives another width" : "and there is no text_encoder_2");
            return -1;
        }
        m->added_dim = P + 6;
    }
    m->cond_floats = (int64_t)m->context_len * m->ctx_dim + m->added_dim;
    return 0;
}

Model *model_open(const char *spec, Backend *be, char *err, size_t errlen) {
    return model_open_with(spec, NULL, be, err, errlen);
}

int model_unet_config(const char *spec, UNetConfig *cfg, char *err, size_t errlen) {
    if (strcmp(spec, MODEL_TINY_RANDOM) == 0) spec = "tiny";
    if (!checkpoint_is_file(spec)) return unet_config_resolve(spec, cfg, err, errlen);
    CheckpointInfo ci;
    if (checkpoint_inspect(spec, &ci, err, errlen) != 0) return -1;
    *cfg = ci.unet;
    return 0;
}

/* image pixels per latent cell of a VAE: one halving per level after the first */
static int vae_scale(const VAEConfig *vc) { return 1 << (vc->n_levels - 1); }
/* input pixels per cell of the UNet's lowest level */
static int unet_down(const UNetConfig *c) { return 1 << (c->n_levels - 1); }

int model_text_configs(const char *spec, TextConfig tc[2], char *err, size_t errlen) {
    int xl = !strcmp(spec, "sdxl");
    if (!strcmp(spec, "tiny")) return te_config_builtin(&tc[0], "tiny-text", err, errlen) == 0 ? 1 : -1;
    if (fs_is_dir(spec)) {
        static const char *const sub[2] = {"text_encoder", "text_encoder_2"};
        int n = 0;
        for (int i = 0; i < 2; i++) {
            char path[PATH_MAX + 32];
            snprintf(path, sizeof path, "%s/%s/config.json", spec, sub[i]);
            if (!fs_exists(path)) break;
            if (te_config_load(&tc[i], path, err, errlen) != 0) return -1;
            n++;
        }
        if (!n) snprintf(err, errlen, "no text_encoder/config.json in %s", spec);
        return n;
    }
    if (checkpoint_is_file(spec)) {
        CheckpointInfo ci;
        if (checkpoint_inspect(spec, &ci, err, errlen) != 0) return -1;
        xl = ci.kind == MODEL_KIND_SDXL;
    } else if (strcmp(spec, "sd15") && !xl) {
        UNetConfig cfg;
        if (model_unet_config(spec, &cfg, err, errlen) != 0) return -1;
        snprintf(err, errlen, "no text encoder: %s is a UNet config alone", spec);
        return 0;
    }
    if (te_config_builtin(&tc[0], "clip-vit-l", err, errlen) != 0) return -1;
    if (xl && te_config_builtin(&tc[1], "openclip-vit-bigg", err, errlen) != 0) return -1;
    return 1 + xl;
}

Model *model_open_with(const char *spec, const char *tokenizer, Backend *be, char *err, size_t errlen) {
    Model *m = calloc(1, sizeof *m);
    if (!m) { snprintf(err, errlen, "out of memory"); return NULL; }
    snprintf(m->spec, sizeof m->spec, "%s", spec);
    m->be = be;
    schedule_sd_default(&m->sched); /* a model's scheduler config may replace it */
    int rc;
    if (strcmp(spec, "tiny") == 0 || strcmp(spec, MODEL_TINY_RANDOM) == 0) {
        rc = open_tiny(m, strcmp(spec, MODEL_TINY_RANDOM) == 0, err, errlen);
    } else if (strcmp(spec, "sd15") == 0 || strcmp(spec, "sdxl") == 0) {
        snprintf(err, errlen,
                 "model = %s names an architecture, not weights: set model to a diffusers "
                 "folder (e.g. ~/models/stable-diffusion-v1-5), or use `info --model %s`",
                 spec, spec);
        rc = -1;
    } else if (fs_is_dir(spec)) {
        rc = open_diffusers_dir(m, spec, tokenizer, err, errlen);
    } else if (checkpoint_is_file(spec)) {
        rc = open_single_file(m, spec, tokenizer, err, errlen);
    } else {
        /* say what is there when something is: a device, a FIFO, another kind of file */
        const char *kind = fs_kind(spec);
        char what[96];
        if (!kind) snprintf(what, sizeof what, "not found");
        else if (!strcmp(kind, "a regular file")) snprintf(what, sizeof what, "not a .safetensors file");
        else snprintf(what, sizeof what, "it is %s, not a file", kind);
        snprintf(err, errlen, "model '%s': %s (use tiny, a .safetensors checkpoint or a "
                 "diffusers model folder)", spec, what);
        rc = -1;
    }
    if (rc != 0) { model_free(m); return NULL; }
    if (check_widths(m, err, errlen) != 0) { model_free(m); return NULL; }
    m->channels = m->ucfg.in_channels;
    m->latent = m->vae != NULL;
    m->pixel_scale = 1;
    m->image_channels = m->channels;
    if (m->vae) {
        const VAEConfig *vc = vae_config(m->vae);
        if (vc->latent_channels != m->channels) {
            snprintf(err, errlen, "model '%s': the VAE makes %d latent channels, the UNet takes %d",
                     spec, vc->latent_channels, m->channels);
            model_free(m);
            return NULL;
        }
        m->pixel_scale = vae_scale(vc);
        m->image_channels = vc->out_channels;
    } else if (m->channels != 3) {
        snprintf(err, errlen, "model '%s': a UNet of %d input channels needs a VAE (vae/ in the folder)",
                 spec, m->channels);
        model_free(m);
        return NULL;
    }
    return m;
}

void model_free(Model *m) {
    if (!m) return;
    if (m->unet) unet_free(m->unet);
    if (m->te) te_free(m->te);
    if (m->tok) tok_free(m->tok);
    if (m->te2) te_free(m->te2);
    if (m->tok2) tok_free(m->tok2);
    if (m->vae) vae_free(m->vae);
    convert_map_free(m->unet_names);
    if (m->be) {
        m->be->free(m->be, m->split_ctx);
        m->be->free(m->be, m->split_added);
    }
    free(m);
}

/* ids of one prompt for tok (BOS, ids, EOS, pad) */
static int32_t *prompt_ids(const Model *m, const Tokenizer *tok, const char *prompt, char *err,
                           size_t errlen) {
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)m->context_len);
    if (!ids) { snprintf(err, errlen, "out of memory"); return NULL; }
    if (tok_encode_padded(tok, prompt, m->context_len, ids, NULL, err, errlen) != 0) {
        free(ids);
        return NULL;
    }
    return ids;
}

void model_release_text_encoders(Model *m) {
    te_release_weights(m->te);
    te_release_weights(m->te2);
}

int model_encode_prompt(Model *m, const char *prompt, int px, float *cond, char *err, size_t errlen) {
    Backend *be = m->be;
    int L = m->context_len;
    if (!m->te2) { /* one encoder: its last hidden state */
        int32_t *ids = prompt_ids(m, m->tok, prompt, err, errlen);
        if (!ids) return -1;
        int rc = te_forward(m->te, ids, 1, L, cond, NULL, NULL, err, errlen);
        free(ids);
        return rc;
    }
    /* SDXL: [L, w1 | w2] from both penultimate states, then [pooled | time ids] */
    int w1 = te_config(m->te)->hidden_size, w2 = te_config(m->te2)->hidden_size;
    int P = m->added_dim - 6;
    float *added = cond + (int64_t)L * m->ctx_dim;
    TimeIds ids6 = model_time_ids(px, px, 0, 0, px, px);
    if (!prompt[0]) { /* force_zeros_for_empty_prompt */
        be->zero(be, cond, sizeof(float) * (size_t)(m->cond_floats - 6));
        be->upload(be, added + P, ids6.v, sizeof ids6.v);
        return 0;
    }
    int32_t *ids1 = prompt_ids(m, m->tok, prompt, err, errlen);
    int32_t *ids2 = ids1 ? prompt_ids(m, m->tok2, prompt, err, errlen) : NULL;
    float *h1 = be->alloc(be, sizeof(float) * (size_t)L * w1);
    float *h2 = be->alloc(be, sizeof(float) * (size_t)L * w2);
    int rc = -1;
    if (!ids1 || !ids2) goto done;
    if (!h1 || !h2) { snprintf(err, errlen, "out of memory encoding the prompt"); goto done; }
    if (te_forward(m->te, ids1, 1, L, NULL, h1, NULL, err, errlen) != 0) goto done;
    if (te_forward(m->te2, ids2, 1, L, NULL, h2, added, err, errlen) != 0) goto done;
    for (int l = 0; l < L; l++) {
        be->copy(be, cond + (int64_t)l * m->ctx_dim, h1 + (int64_t)l * w1, sizeof(float) * (size_t)w1);
        be->copy(be, cond + (int64_t)l * m->ctx_dim + w1, h2 + (int64_t)l * w2, sizeof(float) * (size_t)w2);
    }
    be->upload(be, added + P, ids6.v, sizeof ids6.v);
    rc = 0;
done:
    free(ids1);
    free(ids2);
    be->free(be, h1);
    be->free(be, h2);
    return rc;
}

int model_unet_forward(Model *m, const float *x, const float *t, const float *cond, float *out,
                       int N, int H, int W, int for_backward) {
    if (!m->added_dim)
        return unet_forward(m->unet, x, t, cond, NULL, out, N, H, W, m->context_len, for_backward);
    /* records [ctx | added] -> the UNet's [N, L, D] and [N, added_dim] */
    Backend *be = m->be;
    int64_t nc = (int64_t)m->context_len * m->ctx_dim;
    if (m->split_n < N) {
        be->free(be, m->split_ctx);
        be->free(be, m->split_added);
        m->split_ctx = be->alloc(be, sizeof(float) * (size_t)(N * nc));
        m->split_added = be->alloc(be, sizeof(float) * (size_t)N * m->added_dim);
        m->split_n = m->split_ctx && m->split_added ? N : 0;
        if (!m->split_n) return -1;
    }
    for (int i = 0; i < N; i++) {
        be->copy(be, m->split_ctx + i * nc, cond + i * m->cond_floats, sizeof(float) * (size_t)nc);
        be->copy(be, m->split_added + (int64_t)i * m->added_dim, cond + i * m->cond_floats + nc,
                 sizeof(float) * (size_t)m->added_dim);
    }
    return unet_forward(m->unet, x, t, m->split_ctx, m->split_added, out, N, H, W, m->context_len,
                        for_backward);
}

int model_set_vae_tiling(Model *m, const char *mode, char *err, size_t errlen) {
    int t = vae_tiling_parse(mode);
    if (t < 0) {
        snprintf(err, errlen, "vae tiling '%s': use auto, on or off", mode ? mode : "(null)");
        return -1;
    }
    return m->vae ? vae_set_tiling(m->vae, t, 0, err, errlen) : 0;
}

TimeIds model_time_ids(int orig_w, int orig_h, int crop_left, int crop_top, int w, int h) {
    TimeIds t = {{(float)orig_h, (float)orig_w, (float)crop_top, (float)crop_left, (float)h, (float)w}};
    return t;
}

void model_set_time_ids(Model *m, float *cond, int n, const TimeIds *ids) {
    if (m->added_dim < 6) return;
    for (int i = 0; i < n; i++) /* the last six floats of each record */
        m->be->upload(m->be, cond + (int64_t)(i + 1) * m->cond_floats - 6, ids[i].v, sizeof ids[i].v);
}

int model_get_time_ids(Model *m, const float *cond, TimeIds *ids) {
    if (m->added_dim < 6) return -1;
    m->be->download(m->be, ids->v, cond + m->cond_floats - 6, sizeof ids->v);
    return 0;
}

int model_encode_images(Model *m, const float *pix_host, int N, int w, int h, float *in_host,
                        char *err, size_t errlen) {
    int64_t ipx = (int64_t)m->image_channels * w * h;
    if (!m->vae) {
        memcpy(in_host, pix_host, sizeof(float) * (size_t)(N * ipx));
        return 0;
    }
    Backend *be = m->be;
    int64_t per = (int64_t)m->channels * (h / m->pixel_scale) * (w / m->pixel_scale);
    float *x = be->alloc(be, sizeof(float) * (size_t)ipx), *z = be->alloc(be, sizeof(float) * (size_t)per);
    int rc = x && z ? 0 : -1;
    if (rc) snprintf(err, errlen, "out of memory encoding a %dx%d image", w, h);
    for (int i = 0; rc == 0 && i < N; i++) {
        be->upload(be, x, pix_host + i * ipx, sizeof(float) * (size_t)ipx);
        if (vae_encode(m->vae, x, z, NULL, 1, h, w) != 0) {
            snprintf(err, errlen, "VAE encode: %s", vae_last_error(m->vae));
            rc = -1;
        } else {
            be->download(be, in_host + i * per, z, sizeof(float) * (size_t)per);
        }
    }
    be->free(be, x);
    be->free(be, z);
    return rc;
}

int model_cell(const Model *m) { return unet_down(&m->ucfg) * m->pixel_scale; }

int model_cell_of(const char *spec, int *cell, char *err, size_t errlen) {
    /* the UNet's config, and the VAE where model_open finds one: a single
     * file's or a built-in architecture's own, a folder's vae/ */
    UNetConfig u;
    VAEConfig vc;
    const char *vae_builtin = spec;
    int has_vae = 0;
    if (checkpoint_is_file(spec)) {
        CheckpointInfo ci;
        if (checkpoint_inspect(spec, &ci, err, errlen) != 0) return -1;
        u = ci.unet;
        vae_builtin = ci.kind == MODEL_KIND_SDXL ? "sdxl" : "sd15";
    } else if (model_unet_config(spec, &u, err, errlen) != 0) {
        return -1;
    }
    if (vae_config_builtin(vae_builtin, &vc) == 0) {
        has_vae = 1;
    } else if (fs_is_dir(spec)) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/vae/config.json", spec);
        if (fs_exists(path)) {
            if (vae_config_from_json(path, &vc, err, errlen) != 0) return -1;
            has_vae = 1;
        }
    }
    *cell = unet_down(&u) * (has_vae ? vae_scale(&vc) : 1);
    return 0;
}

/* The sampler's view of the model: one doubled batch [uncond; cond]. Each
 * step's UNet pass is the same ops on the same buffers (the sampler keeps its
 * input and output; the timestep goes through tbuf), so it is recorded once
 * and replayed (replay.h): on a GPU one launch a step instead of hundreds. */
typedef struct GenCtx {
    Model *m;
    const float *ctx2;   /* [2N, cond_floats] */
    float *tbuf;         /* [2N] device */
    float *thost;
    int N, H, W;
    const atomic_int *cancel;
    Replay rp;           /* the UNet pass on (x, out, n2) below */
    const float *x;
    float *out;
    int n2, passes;
} GenCtx;

static int gen_unet(void *user) {
    GenCtx *g = user;
    return model_unet_forward(g->m, g->x, g->tbuf, g->ctx2, g->out, g->n2, g->H, g->W, 0);
}

static int gen_denoise(void *user, const float *x, float t, float *out, int n2) {
    GenCtx *g = user;
    Backend *be = g->m->be;
    if (g->cancel && *g->cancel) return -1;
    for (int i = 0; i < n2; i++) g->thost[i] = t;
    be->upload(be, g->tbuf, g->thost, sizeof(float) * (size_t)n2);
    if (x != g->x || out != g->out || n2 != g->n2) { /* other buffers: another recording */
        g->m->gen_replayed += g->rp.replays;
        replay_free(be, &g->rp);
        g->x = x, g->out = out, g->n2 = n2;
    }
    g->passes++;
    return replay_run(be, &g->rp, gen_unet, g);
}

int model_generate(Model *m, const float *ctx_cond, const float *ctx_uncond, int N, int px,
                   const SamplerOpts *o, uint64_t seed, const atomic_int *cancel,
                   float *out_host, char *err, size_t errlen) {
    Backend *be = m->be;
    int H = px / m->pixel_scale, W = H, C = m->channels;
    int64_t per = (int64_t)C * H * W;
    size_t ctx_bytes = sizeof(float) * (size_t)(N * m->cond_floats);
    if (diffusion_validate(&m->sched, o, err, errlen) != 0) return -1;
    float *x = be->alloc(be, sizeof(float) * (size_t)(N * per));
    float *ctx2 = be->alloc(be, 2 * ctx_bytes);
    float *tbuf = be->alloc(be, sizeof(float) * 2 * (size_t)N);
    float *thost = malloc(sizeof(float) * 2 * (size_t)N);
    float *noise = malloc(sizeof(float) * (size_t)(N * per));
    int rc = -1;
    if (!x || !ctx2 || !tbuf || !thost || !noise) {
        snprintf(err, errlen, "out of memory generating %d samples at %dpx", N, px);
        goto done;
    }
    Rng r;
    rng_seed(&r, seed);
    rng_fill_normal(&r, noise, N * per);
    be->upload(be, x, noise, sizeof(float) * (size_t)(N * per));
    be->copy(be, ctx2, ctx_uncond, ctx_bytes);
    be->copy(be, (char *)ctx2 + ctx_bytes, ctx_cond, ctx_bytes);
    GenCtx g = {.m = m, .ctx2 = ctx2, .tbuf = tbuf, .thost = thost, .N = N, .H = H, .W = W,
                .cancel = cancel};
    m->gen_passes = m->gen_replayed = 0;
    m->gen_why[0] = 0;
    SamplerOpts so = *o;
    so.cond_batch = 1;
    if (so.guidance <= 1.0f) {
        /* no guidance: the cond half alone (the uncond half is ignored) */
        so.cond_batch = 0;
        g.ctx2 = (const float *)((const char *)ctx2 + ctx_bytes);
    }
    int sampled = diffusion_sample(be, &m->sched, &so, gen_denoise, &g, NULL, NULL, x, N, per);
    m->gen_passes = g.passes;
    m->gen_replayed += g.rp.replays;
    snprintf(m->gen_why, sizeof m->gen_why, "%s", g.rp.why);
    replay_free(be, &g.rp); /* the recording holds its memory until freed */
    if (sampled != 0) {
        snprintf(err, errlen, (cancel && *cancel) ? "sampling cancelled" : "sampling failed");
        goto done;
    }
    if (m->vae) { /* latents to pixels, one image at a time (the decoder's activations are big) */
        int64_t ipx = (int64_t)m->image_channels * px * px;
        float *img = be->alloc(be, sizeof(float) * (size_t)ipx);
        if (!img) { snprintf(err, errlen, "out of memory decoding a %dpx image", px); goto done; }
        for (int i = 0; i < N && rc != -2; i++) {
            if (vae_decode(m->vae, x + i * per, img, 1, H, W) != 0) {
                snprintf(err, errlen, "VAE decode: %s", vae_last_error(m->vae));
                rc = -2;
            } else {
                be->download(be, out_host + i * ipx, img, sizeof(float) * (size_t)ipx);
            }
        }
        be->free(be, img);
        if (rc == -2) { rc = -1; goto done; }
    } else {
        be->download(be, out_host, x, sizeof(float) * (size_t)(N * per));
    }
    if (be->last_error(be)[0]) { /* never hand back an image the device did not finish */
        snprintf(err, errlen, "%s device failed while sampling: %s", be->name, be->last_error(be));
        goto done;
    }
    rc = 0;
done:
    be->free(be, x);
    be->free(be, ctx2);
    be->free(be, tbuf);
    free(thost);
    free(noise);
    return rc;
}

int model_generate_news(const Model *m, char *line, size_t len) {
    if (!m->be->record_begin) return 0;
    if (m->gen_replayed)
        snprintf(line, len, "UNet replayed in %d of %d sampler steps", m->gen_replayed, m->gen_passes);
    else if (m->gen_why[0])
        snprintf(line, len, "UNet op by op: %s", m->gen_why);
    else
        return 0;
    return 1;
}

/* Attach the adapters an adapter file needs (ours: its metadata; LyCORIS's or
 * kohya's: its factor shapes and modules), then load their values. */
int model_attach_adapters(Model *m, const AdapterSpec *spec, uint64_t seed, char *err, size_t errlen) {
    if (unet_attach_adapters(m->unet, spec, seed, err, errlen) != 0) return -1;
    if (!m->te2) return 0; /* SD 1.x and the tiny model keep diffusers paths */
    if (!m->unet_names) {
        ConvertShape shape = {.unet = &m->ucfg};
        m->unet_names = convert_map_create(MODEL_KIND_SDXL, CONVERT_UNET, &shape, err, errlen);
        if (!m->unet_names) return -1;
    }
    AdapterSet *set = unet_adapters(m->unet);
    set->name_map = convert_adapter_name; /* kohya names SDXL's modules by their LDM paths */
    set->name_map_user = m->unet_names;
    return 0;
}

int model_attach_text_adapters(Model *m, const AdapterSpec *spec, uint64_t seed, char *err,
                               size_t errlen) {
    TextEncoder *tes[2] = {m->te, m->te2};
    for (int i = 0; i < 2; i++) {
        if (!tes[i]) continue;
        if (te_attach_adapters(tes[i], spec, seed + 0x7465u * (uint64_t)(i + 1), err, errlen) != 0) {
            if (i == 1) { AdapterSpec none = {.kind = ADAPTER_NONE}; te_attach_adapters(m->te, &none, 0, NULL, 0); }
            return -1;
        }
        te_adapters(tes[i])->key_prefix = adapter_te_prefix(m->te2 ? 2 : 1, i);
    }
    return 0;
}

int model_text_adapter_sets(Model *m, AdapterSet **out) {
    int n = 0;
    if (m->te && te_adapters(m->te)->n) out[n++] = te_adapters(m->te);
    if (m->te2 && te_adapters(m->te2)->n) out[n++] = te_adapters(m->te2);
    return n;
}

void model_bypass_adapters(Model *m, int on) {
    unet_adapters(m->unet)->bypass = on;
    if (m->te) te_adapters(m->te)->bypass = on;
    if (m->te2) te_adapters(m->te2)->bypass = on;
}

int model_save_adapter(Model *m, const char *path, const char *metadata_json_extra, int dtype,
                       char *err, size_t errlen) {
    AdapterSet *sets[3] = {unet_adapters(m->unet)};
    int n = 1 + model_text_adapter_sets(m, sets + 1);
    return adapter_sets_save((const AdapterSet *const *)sets, n, path, metadata_json_extra, dtype,
                             err, errlen);
}

const char *model_base_version(const Model *m) {
    return m->te2 ? "sdxl_base_v1-0" : m->latent ? "sd_v1" : "krona_tiny";
}

int model_load_adapter(Model *m, const char *path, char *err, size_t errlen) {
    AdapterFileInfo info;
    if (adapter_file_probe(path, &info, err, errlen) != 0) return -1;
    char e[1024];
    if (model_attach_adapters(m, &info.spec, 0, e, sizeof e) != 0) {
        if (info.spec.kind == ADAPTER_KRONA)
            snprintf(err, errlen, "%s: its factors (A = a1 x a2 = %dx%d) do not fit this model: %s",
                     path, info.spec.a1, info.spec.a2, e);
        else
            snprintf(err, errlen, "%s: its LoRA rank %d does not fit this model: %s", path,
                     info.spec.rank, e);
        return -1;
    }
    AdapterSpec none = {.kind = ADAPTER_NONE};
    if (info.n_te_modules) {
        if (adapter_file_check_te(&info, m->te2 ? 2 : 1, path, err, errlen) != 0) return -1;
        if (model_attach_text_adapters(m, &info.spec, 0, e, sizeof e) != 0) {
            snprintf(err, errlen, "%s: its factors do not fit this model's text encoder: %s", path, e);
            return -1;
        }
    } else {
        model_attach_text_adapters(m, &none, 0, NULL, 0);
    }
    AdapterSet *sets[3] = {unet_adapters(m->unet)};
    int n = 1 + model_text_adapter_sets(m, sets + 1);
    return adapter_sets_load(sets, n, path, err, errlen);
}

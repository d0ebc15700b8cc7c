#include "models/model.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "models/adapter_file.h"
#include "models/scheduler_config.h"

#ifndef KRONA_PREFIX
#define KRONA_PREFIX "/usr/local"
#endif

int model_find_data(const char *rel, char *out, size_t outlen) {
    char exe[PATH_MAX] = "";
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
    }
    const char *home = getenv("KRONA_HOME");
    const char *roots[] = {home, ".", n > 0 ? exe : NULL, KRONA_PREFIX "/share/krona-studio"};
    for (size_t i = 0; i < sizeof roots / sizeof roots[0]; i++) {
        if (!roots[i] || !roots[i][0]) continue;
        snprintf(out, outlen, "%s/%s", roots[i], rel);
        if (fs_exists(out)) return 0;
    }
    return -1;
}

static int open_tiny(Model *m, char *err, size_t errlen) {
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
    char upath[PATH_MAX], tpath[PATH_MAX];
    if (model_find_data("models/tiny/unet.safetensors", upath, sizeof upath) == 0 &&
        model_find_data("models/tiny/text_encoder.safetensors", tpath, sizeof tpath) == 0) {
        if (unet_load_safetensors(m->unet, upath, err, errlen) != 0) return -1;
        if (te_load_safetensors(m->te, tpath, "", err, errlen) != 0) return -1;
        /* the schedule the weights were trained with (pretrain writes it) */
        char spath[PATH_MAX + 32];
        snprintf(spath, sizeof spath, "%s", upath);
        char *slash = strrchr(spath, '/');
        snprintf(slash ? slash + 1 : spath, sizeof spath - (size_t)(slash ? slash + 1 - spath : 0),
                 "scheduler_config.json");
        if (fs_exists(spath) && schedule_from_json(spath, &m->sched, err, errlen) != 0) return -1;
        m->pretrained = 1;
        snprintf(m->note, sizeof m->note, "pretrained weights from %s", upath);
    } else {
        /* Without the shipped weights the engine still works end to end on a
         * randomly initialised model: useful for tests and benchmarks. */
        unet_init_random(m->unet, 1);
        te_init_random(m->te, 2);
        snprintf(m->note, sizeof m->note,
                 "random weights (models/tiny/unet.safetensors not found)");
    }
    return 0;
}

static int open_diffusers_dir(Model *m, const char *dir, char *err, size_t errlen) {
    char path[PATH_MAX], path2[PATH_MAX];
    snprintf(path, sizeof path, "%s/unet/config.json", dir);
    if (unet_config_from_json(path, &m->ucfg, err, errlen) != 0) return -1;
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir);
    if (fs_exists(path) && schedule_from_json(path, &m->sched, err, errlen) != 0) return -1;
    snprintf(path, sizeof path, "%s/vae/config.json", dir);
    if (m->ucfg.in_channels == 4 || fs_exists(path)) {
        snprintf(err, errlen,
                 "%s: latent models (SD 1.5 / SDXL) need the VAE, which this build does not "
                 "have yet; use model = tiny, or `krona-studio info --model %s` for the parameter table",
                 dir, dir);
        return -1;
    }
    TextConfig tc;
    snprintf(path, sizeof path, "%s/text_encoder/config.json", dir);
    if (te_config_load(&tc, path, err, errlen) != 0) return -1;
    m->unet = unet_create(&m->ucfg, m->be, err, errlen);
    if (!m->unet) return -1;
    m->te = te_create(&tc, m->be, err, errlen);
    if (!m->te) return -1;
    snprintf(path, sizeof path, "%s/tokenizer", dir);
    m->tok = fs_is_dir(path) ? tok_create_clip(path, err, errlen) : tok_create_bytes();
    if (!m->tok) return -1;
    m->context_len = tc.max_position_embeddings;
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    snprintf(path2, sizeof path2, "%s/text_encoder/model.safetensors", dir);
    if (unet_load_safetensors(m->unet, path, err, errlen) != 0) return -1;
    if (te_load_safetensors(m->te, path2, "", err, errlen) != 0) return -1;
    m->pretrained = 1;
    snprintf(m->note, sizeof m->note, "diffusers folder %s", dir);
    return 0;
}

Model *model_open(const char *spec, Backend *be, char *err, size_t errlen) {
    Model *m = calloc(1, sizeof *m);
    if (!m) { snprintf(err, errlen, "out of memory"); return NULL; }
    snprintf(m->spec, sizeof m->spec, "%s", spec);
    m->be = be;
    schedule_sd_default(&m->sched); /* a model's scheduler config may replace it */
    int rc;
    if (strcmp(spec, "tiny") == 0) {
        rc = open_tiny(m, err, errlen);
    } else if (strcmp(spec, "sd15") == 0 || strcmp(spec, "sdxl") == 0) {
        snprintf(err, errlen,
                 "model = %s names an architecture, not weights: set model to a diffusers "
                 "folder (e.g. ~/models/stable-diffusion-v1-5), or use `info --model %s`",
                 spec, spec);
        rc = -1;
    } else if (fs_is_dir(spec)) {
        rc = open_diffusers_dir(m, spec, err, errlen);
    } else {
        snprintf(err, errlen, "model '%s': not found (use tiny, or a diffusers model folder)", spec);
        rc = -1;
    }
    if (rc != 0) { model_free(m); return NULL; }
    m->ctx_dim = m->ucfg.cross_attention_dim;
    if (te_config(m->te)->hidden_size != m->ctx_dim) {
        snprintf(err, errlen, "model '%s': text encoder width %d != UNet cross_attention_dim %d",
                 spec, te_config(m->te)->hidden_size, m->ctx_dim);
        model_free(m);
        return NULL;
    }
    m->channels = m->ucfg.in_channels;
    m->latent = 0;
    m->pixel_scale = 1;
    return m;
}

void model_free(Model *m) {
    if (!m) return;
    if (m->unet) unet_free(m->unet);
    if (m->te) te_free(m->te);
    if (m->tok) tok_free(m->tok);
    free(m);
}

int model_encode_prompt(Model *m, const char *prompt, float *ctx, char *err, size_t errlen) {
    int L = m->context_len;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)L);
    if (!ids) { snprintf(err, errlen, "out of memory"); return -1; }
    int rc = tok_encode_padded(m->tok, prompt, L, ids, NULL, err, errlen);
    if (rc == 0) rc = te_forward(m->te, ids, 1, L, ctx, NULL, NULL, err, errlen);
    free(ids);
    return rc;
}

/* The sampler's view of the model: one doubled batch [uncond; cond]. */
typedef struct GenCtx {
    Model *m;
    const float *ctx2;   /* [2N, L, D] */
    float *tbuf;         /* [2N] device */
    float *thost;
    int N, H, W;
    const atomic_int *cancel;
} GenCtx;

static int gen_denoise(void *user, const float *x, float t, float *out, int n2) {
    GenCtx *g = user;
    if (g->cancel && *g->cancel) return -1;
    for (int i = 0; i < n2; i++) g->thost[i] = t;
    g->m->be->upload(g->m->be, g->tbuf, g->thost, sizeof(float) * (size_t)n2);
    return unet_forward(g->m->unet, x, g->tbuf, g->ctx2, NULL, out, n2, g->H, g->W,
                        g->m->context_len, 0);
}

int model_generate(Model *m, const float *ctx_cond, const float *ctx_uncond, int N, int px,
                   const SamplerOpts *o, uint64_t seed, const atomic_int *cancel,
                   float *out_host, char *err, size_t errlen) {
    Backend *be = m->be;
    int H = px / m->pixel_scale, W = H, C = m->channels;
    int64_t per = (int64_t)C * H * W;
    size_t ctx_bytes = sizeof(float) * (size_t)N * m->context_len * m->ctx_dim;
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
    GenCtx g = {m, ctx2, tbuf, thost, N, H, W, cancel};
    SamplerOpts so = *o;
    so.cond_batch = 1;
    if (so.guidance <= 1.0f) {
        /* no guidance: the cond half alone (the uncond half is ignored) */
        so.cond_batch = 0;
        g.ctx2 = (const float *)((const char *)ctx2 + ctx_bytes);
    }
    if (diffusion_sample(be, &m->sched, &so, gen_denoise, &g, NULL, NULL, x, N, per) != 0) {
        snprintf(err, errlen, (cancel && *cancel) ? "sampling cancelled" : "sampling failed");
        goto done;
    }
    be->download(be, out_host, x, sizeof(float) * (size_t)(N * per));
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

/* Attach the adapters an adapter file needs (ours: its metadata; LyCORIS's or
 * kohya's: its factor shapes and modules), then load their values. */
int model_load_adapter(Model *m, const char *path, char *err, size_t errlen) {
    AdapterFileInfo info;
    if (adapter_file_probe(path, &info, err, errlen) != 0) return -1;
    char e[1024];
    if (unet_attach_adapters(m->unet, &info.spec, 0, e, sizeof e) != 0) {
        if (info.spec.kind == ADAPTER_KRONA)
            snprintf(err, errlen, "%s: its factors (A = a1 x a2 = %dx%d) do not fit this model: %s",
                     path, info.spec.a1, info.spec.a2, e);
        else
            snprintf(err, errlen, "%s: its LoRA rank %d does not fit this model: %s", path,
                     info.spec.rank, e);
        return -1;
    }
    return adapter_set_load(unet_adapters(m->unet), path, err, errlen);
}

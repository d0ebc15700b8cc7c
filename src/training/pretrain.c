/* pretrain.c — the tiny model's pretraining loop (see pretrain.h). */
#include "training/pretrain.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "models/diffusion.h"
#include "core/replay.h"
#include "core/fsutil.h"
#include "formats/image.h"
#include "models/model.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "models/scheduler_config.h"
#include "models/text_encoder.h"
#include "models/tokenizer.h"
#include "models/unet.h"

#define PT_FORMAT "krona-studio-pretrain-1"
#define PT_MAGIC "KSDATA1"
/* a dataset's cap (the emoji set is 40 MB; 16 GB is a million 64x64 images) */
#define PT_MAX_BYTES ((size_t)16 << 30)


static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ dataset */

static uint32_t rd_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint64_t pt_dataset_hash(const PtDataset *d) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < d->n; i++)
        for (const unsigned char *p = (const unsigned char *)d->captions[i];; p++) {
            h = (h ^ *p) * 1099511628211ull;
            if (!*p) break;
        }
    size_t n = (size_t)d->n * d->w * d->h * d->c;
    for (size_t i = 0; i < n; i++) h = (h ^ d->px[i]) * 1099511628211ull;
    return h;
}

int pt_dataset_load(PtDataset *d, const char *path, char *err, size_t errlen) {
    memset(d, 0, sizeof *d);
    size_t len;
    char *buf = fs_read_all(path, PT_MAX_BYTES, &len, err, errlen);
    if (!buf) return -1;
    const unsigned char *u = (const unsigned char *)buf;
    if (len < 28 || memcmp(buf, PT_MAGIC, 8) != 0) {
        err_set(err, errlen, "%s: not a krona-studio dataset (no KSDATA1 header) — build one with "
               "tools/build-emoji-dataset.sh", path);
        free(buf);
        return -1;
    }
    uint32_t n = rd_u32(u + 8), w = rd_u32(u + 12), h = rd_u32(u + 16), c = rd_u32(u + 20),
             cb = rd_u32(u + 24);
    if (n == 0 || c != 3 || w != h || w < 4 || w > 512 || w % 4) {
        err_set(err, errlen, "%s: %u images of %ux%ux%u — need RGB, square, a side that is a "
               "multiple of 4 (the tiny UNet downsamples twice)", path, n, w, h, c);
        free(buf);
        return -1;
    }
    uint64_t need = 28ull + cb + (uint64_t)n * w * h * c;
    if (len != need) {
        err_set(err, errlen, "%s: %zu bytes but the header says %llu — truncated or not this format; "
               "rebuild it with tools/build-emoji-dataset.sh", path, len, (unsigned long long)need);
        free(buf);
        return -1;
    }
    d->captions = malloc(sizeof *d->captions * n);
    if (!d->captions) { err_set(err, errlen, "%s: out of memory", path); free(buf); return -1; }
    char *cap = buf + 28, *end = cap + cb;
    for (uint32_t i = 0; i < n; i++) {
        char *z = memchr(cap, 0, (size_t)(end - cap));
        if (!z) {
            err_set(err, errlen, "%s: caption block ends inside caption %u of %u", path, i, n);
            free(d->captions);
            free(buf);
            d->captions = NULL;
            return -1;
        }
        d->captions[i] = cap;
        cap = z + 1;
    }
    d->n = (int)n;
    d->w = (int)w;
    d->h = (int)h;
    d->c = (int)c;
    d->px = (unsigned char *)buf + 28 + cb;
    d->blob = buf;
    d->hash = pt_dataset_hash(d);
    return 0;
}

void pt_dataset_free(PtDataset *d) {
    if (!d) return;
    if (d->blob) {
        free(d->captions);
        free(d->blob);
    }
    memset(d, 0, sizeof *d);
}

/* ------------------------------------------------------------------ options */

void pretrain_default_opts(PretrainOpts *o) {
    static const char *const prompts[] = {
        "a dog face on a blue background", "a red apple on a white background",
        "a grinning face on a green background", "a cat face on a pink background",
    };
    *o = (PretrainOpts){
        .out_dir = "models/tiny", .steps = 10000, .batch = 32, .lr = 1e-3f, .lr_min = 0.05f,
        .warmup = -1, .weight_decay = 0.01f, .clip = 1.0f, .cfg_drop = 0.1f, .flip = 1,
        .ema = 0.0f, .seed = 1234, .schedule = BETAS_LINEAR, .prediction = PRED_V, .checkpoint_every = 200, .print_every = 10,
        .sample_every = 1000, .sample_steps = 20, .sample_guidance = 4.0f,
        .sample_prompts = prompts, .n_sample_prompts = 4,
    };
}

/* ------------------------------------------------------------------ state */

typedef struct {
    const PtDataset *d;
    PretrainOpts o;
    Backend *be;
    const PretrainCallbacks *cb;
    UNetConfig ucfg;
    UNet *u;
    TextEncoder *te;
    Tokenizer *tok;
    Schedule sched;
    int L, H, W, B, warmup;
    int64_t per;               /* floats per image (3 H W) */
    int64_t nu, nt;            /* UNet / text encoder parameter counts */
    int32_t *ids;              /* [n, L] captions, tokenized once */
    int32_t *empty_ids;        /* [L] the empty prompt */
    /* device */
    float *mu, *vu, *mt, *vt;  /* AdamW moments (UNet: in its weight block's order; TE block) */
    float *emau, *emat;        /* EMA (NULL when off) */
    /* mu, vu and emau follow the UNet's weight block (unet_weight_block:
     * one AdamW and one EMA update for all of it); checkpoints hold them in
     * parameter-table order (flat_order) */
    float *x0, *noise, *xt, *target, *out, *dout, *tbuf, *ctx, *dctx;
    /* host */
    float *hx0, *hnoise, *ht, *hgrad;
    int32_t *hids;
    int *tint;
    Rng rng;
    int step;
    Replay rp; /* the UNet pass (core/replay.h): one launch a step on a GPU */
    char err[512];
} Pt;

static void ptlog(Pt *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ptlog(Pt *p, const char *fmt, ...) {
    if (!p->cb || !p->cb->log) return;
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    p->cb->log(p->cb->user, line);
}

static float lr_at(const Pt *p, int step) { /* step is 1-based */
    const PretrainOpts *o = &p->o;
    if (p->warmup > 0 && step <= p->warmup) return o->lr * (float)step / (float)p->warmup;
    int span = o->steps - p->warmup;
    double f = span > 0 ? (double)(step - p->warmup) / span : 1.0;
    if (f > 1) f = 1;
    double c = 0.5 * (1 + cos(M_PI * f));
    return (float)(o->lr * (o->lr_min + (1 - o->lr_min) * c));
}

static void pt_free(Pt *p) {
    Backend *be = p->be;
    float *dev[] = {p->mu, p->vu, p->mt, p->vt, p->emau, p->emat, p->x0, p->noise, p->xt,
                    p->target, p->out, p->dout, p->tbuf, p->ctx, p->dctx};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) be->free(be, dev[i]);
    replay_free(be, &p->rp);
    if (p->u) unet_free(p->u);
    if (p->te) te_free(p->te);
    if (p->tok) tok_free(p->tok);
    free(p->ids);
    free(p->empty_ids);
    free(p->hx0);
    free(p->hnoise);
    free(p->ht);
    free(p->hgrad);
    free(p->hids);
    free(p->tint);
}

static float *dalloc(Pt *p, int64_t n, int *fail) {
    float *x = p->be->alloc(p->be, (size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!x) *fail = 1;
    return x;
}

static int pt_setup(Pt *p) {
    const PtDataset *d = p->d;
    const PretrainOpts *o = &p->o;
    Backend *be = p->be;
    char e[400];
    if (unet_config_builtin("tiny", &p->ucfg) != 0) { snprintf(p->err, sizeof p->err, "no tiny UNet config"); return -1; }
    TextConfig tc;
    if (te_config_builtin(&tc, "tiny-text", e, sizeof e) != 0) { snprintf(p->err, sizeof p->err, "%s", e); return -1; }
    if (d->c != p->ucfg.in_channels) {
        snprintf(p->err, sizeof p->err, "dataset has %d channels but the tiny UNet takes %d", d->c, p->ucfg.in_channels);
        return -1;
    }
    p->u = unet_create(&p->ucfg, be, e, sizeof e);
    if (!p->u) { snprintf(p->err, sizeof p->err, "tiny UNet: %s", e); return -1; }
    p->te = te_create(&tc, be, e, sizeof e);
    if (!p->te) { snprintf(p->err, sizeof p->err, "tiny text encoder: %s", e); return -1; }
    unet_init_random(p->u, o->seed);
    te_init_random(p->te, o->seed + 1);
    if (o->init_from && !o->resume) {
        /* continue a shipped model without its checkpoint (moments start at zero) */
        char path[1100];
        snprintf(path, sizeof path, "%s/unet.safetensors", o->init_from);
        if (unet_load_safetensors(p->u, path, e, sizeof e) != 0) { snprintf(p->err, sizeof p->err, "--init-from: %s", e); return -1; }
        snprintf(path, sizeof path, "%s/text_encoder.safetensors", o->init_from);
        if (te_load_safetensors(p->te, path, "", e, sizeof e) != 0) { snprintf(p->err, sizeof p->err, "--init-from: %s", e); return -1; }
    }
    unet_set_base_trainable(p->u, 1);
    if (te_set_trainable(p->te, 1, e, sizeof e) != 0) { snprintf(p->err, sizeof p->err, "%s", e); return -1; }
    p->tok = tok_create_bytes();
    if (!p->tok) { snprintf(p->err, sizeof p->err, "out of memory (tokenizer)"); return -1; }
    /* Pixel space needs DDPM's linear schedule: SD's scaled-linear one leaves
     * sqrt(ac) = 0.07 of the image at t = 999, so the mean colour of a 32x32
     * x_t tells the background and the model learns to ignore the prompt. v
     * prediction then makes that colour the target at high t. */
    if (o->schedule == BETAS_LINEAR) schedule_linear(&p->sched, 1000, 1e-4, 0.02, (Prediction)o->prediction);
    else schedule_scaled_linear(&p->sched, 1000, 0.00085, 0.012, (Prediction)o->prediction);
    p->L = tc.max_position_embeddings;
    p->H = d->h;
    p->W = d->w;
    p->B = o->batch;
    p->per = (int64_t)d->c * d->h * d->w;
    p->nu = unet_n_base_params(p->u);
    p->nt = te_n_params(p->te);
    p->warmup = o->warmup >= 0 ? o->warmup : (o->steps / 10 < 500 ? o->steps / 10 : 500);

    /* every caption tokenized once; a caption the encoder cannot take is an error now */
    p->ids = malloc(sizeof(int32_t) * (size_t)d->n * p->L);
    p->empty_ids = malloc(sizeof(int32_t) * (size_t)p->L);
    if (!p->ids || !p->empty_ids) { snprintf(p->err, sizeof p->err, "out of memory for %d captions", d->n); return -1; }
    for (int i = 0; i < d->n; i++)
        if (tok_encode_padded(p->tok, d->captions[i], p->L, p->ids + (size_t)i * p->L, NULL, e, sizeof e) != 0) {
            snprintf(p->err, sizeof p->err, "dataset item %d: %s", i, e);
            return -1;
        }
    if (tok_encode_padded(p->tok, "", p->L, p->empty_ids, NULL, e, sizeof e) != 0) {
        snprintf(p->err, sizeof p->err, "%s", e);
        return -1;
    }

    int fail = 0, B = p->B;
    int64_t D = p->ucfg.cross_attention_dim;
    p->mu = dalloc(p, p->nu, &fail);
    p->vu = dalloc(p, p->nu, &fail);
    p->mt = dalloc(p, p->nt, &fail);
    p->vt = dalloc(p, p->nt, &fail);
    if (o->ema > 0) {
        p->emau = dalloc(p, p->nu, &fail);
        p->emat = dalloc(p, p->nt, &fail);
    }
    p->x0 = dalloc(p, B * p->per, &fail);
    p->noise = dalloc(p, B * p->per, &fail);
    p->xt = dalloc(p, B * p->per, &fail);
    p->target = dalloc(p, B * p->per, &fail);
    p->out = dalloc(p, B * p->per, &fail);
    p->dout = dalloc(p, B * p->per, &fail);
    p->tbuf = dalloc(p, B, &fail);
    p->ctx = dalloc(p, (int64_t)B * p->L * D, &fail);
    p->dctx = dalloc(p, (int64_t)B * p->L * D, &fail);
    p->hx0 = malloc(sizeof(float) * (size_t)(B * p->per));
    p->hnoise = malloc(sizeof(float) * (size_t)(B * p->per));
    p->ht = malloc(sizeof(float) * (size_t)B);
    p->hgrad = malloc(sizeof(float) * (size_t)(p->nu > p->nt ? p->nu : p->nt));
    p->hids = malloc(sizeof(int32_t) * (size_t)B * p->L);
    p->tint = malloc(sizeof(int) * (size_t)B);
    if (fail || !p->hx0 || !p->hnoise || !p->ht || !p->hgrad || !p->hids || !p->tint) {
        snprintf(p->err, sizeof p->err, "out of memory for a batch of %d at %dx%d on %s — lower --batch",
                 B, p->W, p->H, be->name);
        return -1;
    }
    if (p->emau) { /* EMA starts at the initial weights */
        be->copy(be, p->emau, unet_weight_block(p->u), (size_t)p->nu * sizeof(float));
        be->copy(be, p->emat, te_params(p->te), (size_t)p->nt * sizeof(float));
    }
    rng_seed(&p->rng, o->seed);
    return 0;
}

/* ------------------------------------------------------------------ one step */

/* Draws the batch (images, flips, caption dropout, timesteps, noise) from the
 * RNG in a fixed order: the same RNG state gives the same batch. */
static void draw_batch(Pt *p) {
    const PtDataset *d = p->d;
    int B = p->B, H = p->H, W = p->W, C = d->c;
    for (int b = 0; b < B; b++) {
        int i = rng_int(&p->rng, d->n);
        int flip = p->o.flip ? rng_int(&p->rng, 2) : 0;
        int drop = rng_uniform(&p->rng) < p->o.cfg_drop;
        p->tint[b] = rng_int(&p->rng, p->sched.T);
        p->ht[b] = (float)p->tint[b];
        memcpy(p->hids + (size_t)b * p->L, drop ? p->empty_ids : p->ids + (size_t)i * p->L,
               sizeof(int32_t) * (size_t)p->L);
        const unsigned char *src = d->px + (size_t)i * H * W * C;
        float *dst = p->hx0 + (size_t)b * p->per;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                int sx = flip ? W - 1 - x : x;
                for (int c = 0; c < C; c++)
                    dst[((size_t)c * H + y) * W + x] = src[((size_t)y * W + sx) * C + c] / 127.5f - 1.0f;
            }
    }
    rng_fill_normal(&p->rng, p->hnoise, B * p->per);
}

/* sum of squares of a device block, on the host in double */
static double sumsq(Pt *p, const float *g, int64_t n) {
    p->be->download(p->be, p->hgrad, g, (size_t)n * sizeof(float));
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)p->hgrad[i] * p->hgrad[i];
    return s;
}

/* A device failure (out of memory, a failed launch) stops pretraining with the
 * backend's own message, before anything is written over the last checkpoint. */
static int device_failed(Pt *p) {
    const char *e = p->be->last_error(p->be);
    if (!e[0]) return 0;
    snprintf(p->err, sizeof p->err, "%s device failed at step %d: %s (the last checkpoint is kept)",
             p->be->name, p->step + 1, e);
    return 1;
}

/* The device part of a step that is the same ops every step (replay.h): UNet
 * forward, the loss's gradient, UNet backward. Reads xt, tbuf, ctx and target,
 * written before it. */
static int unet_pass(void *user) {
    Pt *p = user;
    Backend *be = p->be;
    int64_t n = p->B * p->per;
    if (unet_forward(p->u, p->xt, p->tbuf, p->ctx, NULL, p->out, p->B, p->H, p->W, p->L, 1) != 0) {
        snprintf(p->err, sizeof p->err, "step %d: UNet forward: %s", p->step + 1, unet_last_error(p->u));
        return -1;
    }
    be->zero(be, p->dout, sizeof(float) * (size_t)n);
    be->mse_bwd(be, p->out, p->target, p->dout, n, 1.0f);
    be->zero(be, p->dctx, sizeof(float) * (size_t)p->B * p->L * p->ucfg.cross_attention_dim);
    if (unet_backward_ctx(p->u, p->dout, NULL, p->dctx) != 0) {
        snprintf(p->err, sizeof p->err, "step %d: UNet backward: %s", p->step + 1, unet_last_error(p->u));
        return -1;
    }
    return 0;
}

static int train_step(Pt *p, float *loss_out, float *gnorm_out) {
    Backend *be = p->be;
    int B = p->B;
    int64_t n = B * p->per;
    char e[400];
    draw_batch(p);
    be->upload(be, p->x0, p->hx0, sizeof(float) * (size_t)n);
    be->upload(be, p->noise, p->hnoise, sizeof(float) * (size_t)n);
    be->upload(be, p->tbuf, p->ht, sizeof(float) * (size_t)B);
    diffusion_q_sample(be, &p->sched, p->x0, p->noise, p->tint, p->xt, B, p->per);
    diffusion_target(be, &p->sched, p->x0, p->noise, p->tint, p->target, B, p->per);

    unet_zero_grad(p->u);
    te_zero_grad(p->te);
    if (te_forward(p->te, p->hids, B, p->L, p->ctx, NULL, NULL, e, sizeof e) != 0) {
        snprintf(p->err, sizeof p->err, "step %d: %s", p->step + 1, e);
        return -1;
    }
    if (replay_run(be, &p->rp, unet_pass, p) != 0) return -1;
    char line[512];
    if (replay_news(be, &p->rp, "UNet pass", p->step + 1, line, sizeof line)) ptlog(p, "%s", line);
    /* the loss after the backward: reading it waits for the device, so the
     * host queues the whole pass first */
    float loss = be->mse_fwd(be, p->out, p->target, n);
    if (device_failed(p)) return -1;
    if (!isfinite(loss)) {
        snprintf(p->err, sizeof p->err, "loss became %g at step %d — lower --lr (now %g) and "
                 "resume from the checkpoint", loss, p->step + 1, p->o.lr);
        return -1;
    }
    if (te_backward(p->te, p->dctx, e, sizeof e) != 0) {
        snprintf(p->err, sizeof p->err, "step %d: %s", p->step + 1, e);
        return -1;
    }

    /* global gradient norm over both models (each one block: one read each, not
     * one wait per tensor); clip by scaling every gradient */
    double ss = sumsq(p, te_grads(p->te), p->nt) + sumsq(p, unet_grad_block(p->u), p->nu);
    float gnorm = (float)sqrt(ss);
    if (device_failed(p)) return -1;
    if (!isfinite(gnorm)) {
        snprintf(p->err, sizeof p->err, "gradient norm became %g at step %d — lower --lr (now %g) "
                 "and resume from the checkpoint", gnorm, p->step + 1, p->o.lr);
        return -1;
    }
    if (p->o.clip > 0 && gnorm > p->o.clip) {
        float s = p->o.clip / gnorm;
        be->scale(be, te_grads(p->te), s, p->nt);
        be->scale(be, unet_grad_block(p->u), s, p->nu);
    }
    int t = p->step + 1;
    float lr = lr_at(p, t), wd = p->o.weight_decay;
    float *wu = unet_weight_block(p->u); /* AdamW and EMA are elementwise: one call for all */
    be->adamw(be, wu, unet_grad_block(p->u), p->mu, p->vu, p->nu, lr, 0.9f, 0.999f, 1e-8f, wd, t);
    if (p->emau) {
        be->scale(be, p->emau, p->o.ema, p->nu);
        be->axpy(be, 1.0f - p->o.ema, wu, p->emau, p->nu);
    }
    be->adamw(be, te_params(p->te), te_grads(p->te), p->mt, p->vt, p->nt, lr, 0.9f, 0.999f, 1e-8f, wd, t);
    if (p->emat) {
        be->scale(be, p->emat, p->o.ema, p->nt);
        be->axpy(be, 1.0f - p->o.ema, te_params(p->te), p->emat, p->nt);
    }
    be->sync(be);
    if (device_failed(p)) return -1;
    p->step = t;
    *loss_out = loss;
    *gnorm_out = gnorm;
    return 0;
}

/* ------------------------------------------------------------------ files */

/* Swap the live weights with the EMA copy (twice restores them). */
static void swap_ema(Pt *p) {
    Backend *be = p->be;
    if (!p->emau) return;
    size_t ub = (size_t)p->nu * sizeof(float);
    be->download(be, p->hgrad, unet_weight_block(p->u), ub);
    be->copy(be, unet_weight_block(p->u), p->emau, ub);
    be->upload(be, p->emau, p->hgrad, ub);
    size_t tb = (size_t)p->nt * sizeof(float);
    be->download(be, p->hgrad, te_params(p->te), tb);
    be->copy(be, te_params(p->te), p->emat, tb);
    be->upload(be, p->emat, p->hgrad, tb);
}

/* "linear/v" etc.: what a checkpoint must match to be resumed */
static const char *sched_name(const Schedule *s) {
    static const char *const names[2][2] = {{"scaled_linear/epsilon", "scaled_linear/v"},
                                            {"linear/epsilon", "linear/v"}};
    return names[s->kind == BETAS_LINEAR][s->prediction == PRED_V];
}

static int save_weights(Pt *p) {
    char path[1200], e[400];
    int rc = 0;
    swap_ema(p);
    snprintf(path, sizeof path, "%s/unet.safetensors", p->o.out_dir);
    if (unet_save_safetensors(p->u, path, e, sizeof e) != 0) {
        snprintf(p->err, sizeof p->err, "%s", e);
        rc = -1;
    }
    snprintf(path, sizeof path, "%s/text_encoder.safetensors", p->o.out_dir);
    if (rc == 0 && te_save_safetensors(p->te, path, e, sizeof e) != 0) {
        snprintf(p->err, sizeof p->err, "%s", e);
        rc = -1;
    }
    snprintf(path, sizeof path, "%s/scheduler_config.json", p->o.out_dir);
    if (rc == 0 && schedule_save_json(path, &p->sched, e, sizeof e) != 0) {
        snprintf(p->err, sizeof p->err, "%s", e);
        rc = -1;
    }
    swap_ema(p);
    return rc;
}

/* A block in the UNet's weight-block order (mu, vu, emau) to the parameter
 * table's order of checkpoints (to_file), or back: the file's order is the
 * one every version wrote. */
static void flat_order(Pt *p, float *dst, const float *src, int to_file) {
    const float *base = unet_weight_block(p->u);
    int64_t off = 0;
    for (int i = 0; i < unet_n_params(p->u); i++) {
        UNetParam *q = unet_param_at(p->u, i);
        int64_t at = q->data - base;
        if (to_file) memcpy(dst + off, src + at, sizeof(float) * (size_t)q->numel);
        else memcpy(dst + at, src + off, sizeof(float) * (size_t)q->numel);
        off += q->numel;
    }
}

/* device block -> host copy owned by the caller (in_unet_order: a UNet block,
 * put in the file's order) */
static float *host_copy(Pt *p, const float *dev, int64_t n, int in_unet_order) {
    float *h = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!h) return NULL;
    p->be->download(p->be, in_unet_order ? p->hgrad : h, dev, sizeof(float) * (size_t)n);
    if (in_unet_order) flat_order(p, h, p->hgrad, 1);
    return h;
}

static int save_checkpoint(Pt *p) {
    char path[1200], val[160], e[400];
    StWriter *w = stw_create();
    if (!w) { snprintf(p->err, sizeof p->err, "out of memory writing the checkpoint"); return -1; }
    /* UNet parameters by name, then flat blocks: moments and EMA */
    float *blocks[8] = {0};
    int nb = 0, rc = 0;
    int np = unet_n_params(p->u);
    float *uw = malloc(sizeof(float) * (size_t)p->nu);
    blocks[nb++] = uw;
    if (!uw) rc = -1;
    int64_t off = 0;
    for (int i = 0; i < np && rc == 0; i++) {
        UNetParam *q = unet_param_at(p->u, i);
        p->be->download(p->be, uw + off, q->data, sizeof(float) * (size_t)q->numel);
        char nm[UNET_NAME_MAX + 8];
        snprintf(nm, sizeof nm, "unet.%s", q->name);
        rc = stw_add_ref(w, nm, ST_F32, q->ndim, q->shape, uw + off);
        off += q->numel;
    }
    struct { const char *name; const float *dev; int64_t n; int unet; } flat[] = {
        {"opt.unet_m", p->mu, p->nu, 1}, {"opt.unet_v", p->vu, p->nu, 1},
        {"te.params", te_params(p->te), p->nt, 0}, {"opt.te_m", p->mt, p->nt, 0}, {"opt.te_v", p->vt, p->nt, 0},
        {"ema.unet", p->emau, p->nu, 1}, {"ema.te", p->emat, p->nt, 0},
    };
    for (size_t k = 0; k < sizeof flat / sizeof flat[0] && rc == 0; k++) {
        if (!flat[k].dev) continue;
        float *h = host_copy(p, flat[k].dev, flat[k].n, flat[k].unet);
        blocks[nb++] = h;
        int64_t shape[1] = {flat[k].n};
        rc = h ? stw_add_ref(w, flat[k].name, ST_F32, 1, shape, h) : -1;
    }
    stw_set_metadata(w, "format", PT_FORMAT);
    snprintf(val, sizeof val, "%d", p->step);
    stw_set_metadata(w, "step", val);
    rng_to_hex(&p->rng, val);
    stw_set_metadata(w, "rng", val);
    snprintf(val, sizeof val, "%016llx", (unsigned long long)p->d->hash);
    stw_set_metadata(w, "data_hash", val);
    snprintf(val, sizeof val, "%d", p->B);
    stw_set_metadata(w, "batch", val);
    snprintf(val, sizeof val, "%.9g", (double)p->o.ema);
    stw_set_metadata(w, "ema", val);
    stw_set_metadata(w, "schedule", sched_name(&p->sched));
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", p->o.out_dir);
    if (rc == 0) rc = stw_save(w, path, e, sizeof e);
    else snprintf(e, sizeof e, "%s: out of memory assembling the checkpoint", path);
    if (rc != 0) snprintf(p->err, sizeof p->err, "%s", e);
    stw_free(w);
    for (int i = 0; i < nb; i++) free(blocks[i]);
    return rc;
}

/* a flat block of the file; unet_order: a UNet block, put in the weight block's order */
static int load_flat_as(Pt *p, SafeTensors *st, const char *path, const char *name, float *dev, int64_t n,
                        int unet_order) {
    const StTensor *t = st_find(st, name);
    if (!t || t->dtype != ST_F32 || t->numel != n) {
        snprintf(p->err, sizeof p->err, "%s: tensor '%s' is missing or has the wrong size — made by "
                 "another model or version; delete it to start over", path, name);
        return -1;
    }
    float *h = malloc(sizeof(float) * (size_t)n);
    if (!h) { snprintf(p->err, sizeof p->err, "%s: out of memory", path); return -1; }
    if (st_load_f32(t, h, path, p->err, sizeof p->err) != 0) { free(h); return -1; }
    if (unet_order) flat_order(p, p->hgrad, h, 0);
    p->be->upload(p->be, dev, unet_order ? p->hgrad : h, sizeof(float) * (size_t)n);
    free(h);
    return 0;
}
static int load_flat(Pt *p, SafeTensors *st, const char *path, const char *name, float *dev, int64_t n) {
    return load_flat_as(p, st, path, name, dev, n, 0);
}

static int load_checkpoint(Pt *p) {
    char path[1200], e[400];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", p->o.out_dir);
    if (!fs_exists(path)) {
        snprintf(p->err, sizeof p->err, "--resume: no %s (run without --resume to start)", path);
        return -1;
    }
    SafeTensors *st = st_open(path, e, sizeof e);
    if (!st) { snprintf(p->err, sizeof p->err, "%s", e); return -1; }
    int rc = -1;
    const char *fmt = st_metadata(st, "format"), *step = st_metadata(st, "step"),
               *rng = st_metadata(st, "rng"), *hash = st_metadata(st, "data_hash"),
               *batch = st_metadata(st, "batch"), *ema = st_metadata(st, "ema"),
               *sched = st_metadata(st, "schedule");
    if (!fmt || strcmp(fmt, PT_FORMAT) != 0 || !step || rng_from_hex(&p->rng, rng) != 0 || !hash ||
        !batch || !ema) {
        snprintf(p->err, sizeof p->err, "%s: not a pretraining checkpoint", path);
        goto done;
    }
    if (strtoull(hash, NULL, 16) != p->d->hash) {
        snprintf(p->err, sizeof p->err, "%s was made on other data (hash %s) — use the same --data "
                 "or another --out", path, hash);
        goto done;
    }
    if (atoi(batch) != p->B || (strtod(ema, NULL) > 0) != (p->o.ema > 0)) {
        snprintf(p->err, sizeof p->err, "%s was made with --batch %s --ema %s: pass the same "
                 "values to resume", path, batch, ema);
        goto done;
    }
    if (!sched || strcmp(sched, sched_name(&p->sched)) != 0) {
        snprintf(p->err, sizeof p->err, "%s was trained with schedule %s, not %s: pass the same "
                 "--schedule/--prediction to resume", path, sched ? sched : "scaled_linear/epsilon",
                 sched_name(&p->sched));
        goto done;
    }
    p->step = atoi(step);
    if (p->step < 0 || p->step > p->o.steps) {
        snprintf(p->err, sizeof p->err, "%s is at step %d, past --steps %d — raise --steps",
                 path, p->step, p->o.steps);
        goto done;
    }
    for (int i = 0; i < unet_n_params(p->u); i++) {
        UNetParam *q = unet_param_at(p->u, i);
        char nm[UNET_NAME_MAX + 8];
        snprintf(nm, sizeof nm, "unet.%s", q->name);
        if (load_flat(p, st, path, nm, q->data, q->numel) != 0) goto done;
    }
    if (load_flat_as(p, st, path, "opt.unet_m", p->mu, p->nu, 1) ||
        load_flat_as(p, st, path, "opt.unet_v", p->vu, p->nu, 1) ||
        load_flat(p, st, path, "te.params", te_params(p->te), p->nt) ||
        load_flat(p, st, path, "opt.te_m", p->mt, p->nt) || load_flat(p, st, path, "opt.te_v", p->vt, p->nt))
        goto done;
    if (p->emau && (load_flat_as(p, st, path, "ema.unet", p->emau, p->nu, 1) ||
                    load_flat(p, st, path, "ema.te", p->emat, p->nt)))
        goto done;
    rc = 0;
done:
    st_close(st);
    return rc;
}

static void append_log(Pt *p, const PretrainProgress *g) {
    char path[1200];
    snprintf(path, sizeof path, "%s/pretrain_log.csv", p->o.out_dir);
    int fresh = !fs_exists(path);
    FILE *f = fopen(path, "a");
    if (!f) return; /* the log is a convenience; training goes on */
    if (fresh) fprintf(f, "step,loss,loss_avg,lr,grad_norm,samples_per_s,elapsed_s\n");
    fprintf(f, "%d,%.6f,%.6f,%.6g,%.4f,%.2f,%.1f\n", g->step, g->loss, g->loss_avg, g->lr,
            g->grad_norm, g->samples_per_s, g->elapsed_s);
    fclose(f);
}

/* A grid for the fixed sample prompts, with the (EMA) weights being trained. */
static int write_samples(Pt *p) {
    const PretrainOpts *o = &p->o;
    Backend *be = p->be;
    int n = o->n_sample_prompts;
    if (n <= 0 || !o->sample_prompts) return 0;
    Model m = {0}; /* a view of the trainer's models: never model_free'd */
    snprintf(m.spec, sizeof m.spec, "pretrain");
    m.be = be;
    m.ucfg = p->ucfg;
    m.unet = p->u;
    m.te = p->te;
    m.tok = p->tok;
    m.context_len = p->L;
    m.ctx_dim = p->ucfg.cross_attention_dim;
    m.cond_floats = (int64_t)p->L * m.ctx_dim; /* the tiny model: no added conditioning */
    m.sched = p->sched;
    m.channels = m.image_channels = p->ucfg.in_channels;
    m.pixel_scale = 1;
    char e[400], path[1200];
    int64_t cl = m.cond_floats;
    float *cond = be->alloc(be, sizeof(float) * (size_t)(n * cl));
    float *unc = be->alloc(be, sizeof(float) * (size_t)(n * cl));
    float *img = malloc(sizeof(float) * (size_t)(n * p->per));
    Image *tiles = calloc((size_t)n, sizeof *tiles);
    Image grid = {0};
    int rc = -1;
    swap_ema(p);
    if (!cond || !unc || !img || !tiles) { snprintf(e, sizeof e, "out of memory"); goto done; }
    for (int i = 0; i < n; i++) {
        if (model_encode_prompt(&m, o->sample_prompts[i], p->W, cond + i * cl, e, sizeof e) != 0 ||
            model_encode_prompt(&m, "", p->W, unc + i * cl, e, sizeof e) != 0)
            goto done;
    }
    SamplerOpts so = {.kind = SAMPLER_DDIM, .steps = o->sample_steps, .guidance = o->sample_guidance};
    if (model_generate(&m, cond, unc, n, p->W, &so, 42, NULL, img, e, sizeof e) != 0) goto done;
    for (int i = 0; i < n; i++)
        if (image_from_chw(img + i * p->per, m.channels, p->H, p->W, &tiles[i]) != 0) {
            snprintf(e, sizeof e, "out of memory");
            goto done;
        }
    if (image_grid(tiles, n, n, 2, &grid) != 0) { snprintf(e, sizeof e, "out of memory"); goto done; }
    snprintf(path, sizeof path, "%s/samples", o->out_dir);
    if (fs_mkdir_p(path, e, sizeof e) != 0) goto done;
    snprintf(path, sizeof path, "%s/samples/step_%06d.png", o->out_dir, p->step);
    if (image_save_png(path, &grid, e, sizeof e) != 0) goto done;
    ptlog(p, "samples at step %d: %s", p->step, path);
    rc = 0;
done:
    swap_ema(p);
    if (rc != 0) ptlog(p, "samples at step %d failed: %s", p->step, e); /* training goes on */
    if (tiles)
        for (int i = 0; i < n; i++) image_free(&tiles[i]);
    image_free(&grid);
    free(tiles);
    free(img);
    if (cond) be->free(be, cond);
    if (unc) be->free(be, unc);
    return 0;
}

/* ------------------------------------------------------------------ run */

int pretrain_run(const PtDataset *d, const PretrainOpts *o, Backend *be,
                 const PretrainCallbacks *cb, char *err, size_t errlen) {
    if (!d || d->n <= 0 || !d->px || !d->captions) { err_set(err, errlen, "pretrain: empty dataset"); return -1; }
    if (!o->out_dir || !o->out_dir[0]) { err_set(err, errlen, "pretrain: no output folder (--out)"); return -1; }
    if (o->steps <= 0 || o->batch <= 0 || !(o->lr > 0) || o->cfg_drop < 0 || o->cfg_drop > 1 ||
        o->ema < 0 || o->ema >= 1 || o->lr_min < 0 || o->lr_min > 1) {
        err_set(err, errlen, "pretrain: need --steps > 0, --batch > 0, --lr > 0, caption dropout in "
               "[0,1], EMA decay in [0,1), lr_min in [0,1]");
        return -1;
    }
    if (d->w != d->h || d->w % 4) {
        err_set(err, errlen, "pretrain: images are %dx%d — need square, side a multiple of 4", d->w, d->h);
        return -1;
    }
    if (fs_mkdir_p(o->out_dir, err, errlen) != 0) return -1;
    Pt *p = calloc(1, sizeof *p);
    if (!p) { err_set(err, errlen, "out of memory"); return -1; }
    p->d = d;
    p->o = *o;
    p->be = be;
    p->cb = cb;
    int rc = pt_setup(p);
    if (rc == 0 && o->resume) {
        rc = load_checkpoint(p);
        if (rc == 0) ptlog(p, "resumed at step %d from %s/checkpoint.safetensors", p->step, o->out_dir);
    }
    if (rc == 0)
        ptlog(p, "pretraining the tiny model: UNet %lld + text encoder %lld parameters (%.1f MB f32), "
              "%d images %dx%d, batch %d, %d steps, lr %g (warm-up %d, cosine to %g), on %s",
              (long long)p->nu, (long long)p->nt, (double)(p->nu + p->nt) * 4 / 1e6, d->n, d->w, d->h,
              p->B, o->steps, o->lr, p->warmup, o->lr * o->lr_min, be->name);
    double t0 = now_s(), tlast = t0, loss_sum = 0;
    int nsum = 0, last_step = p->step, start_step = p->step, stopped = 0;
    while (rc == 0 && p->step < o->steps) {
        float loss, gnorm;
        if (train_step(p, &loss, &gnorm) != 0) { rc = -1; break; }
        loss_sum += loss;
        nsum++;
        double t = now_s();
        int final = p->step == o->steps;
        /* stop before the next step would cross the time limit */
        double per_step = (t - t0) / (p->step - start_step);
        int out_of_time = o->time_limit_s > 0 && t - t0 + 1.5 * per_step > o->time_limit_s;
        int stop_here = o->stop_after > 0 && p->step >= o->stop_after;
        if (o->print_every > 0 && (p->step % o->print_every == 0 || final || out_of_time || stop_here)) {
            PretrainProgress g = {
                .step = p->step, .total = o->steps, .loss = loss, .loss_avg = (float)(loss_sum / nsum),
                .lr = lr_at(p, p->step), .grad_norm = gnorm,
                .samples_per_s = (p->step - last_step) * (double)p->B / (t - tlast > 1e-9 ? t - tlast : 1e-9),
                .elapsed_s = t - t0, .eta_s = per_step * (o->steps - p->step),
            };
            append_log(p, &g);
            if (cb && cb->progress) cb->progress(cb->user, &g);
            loss_sum = 0;
            nsum = 0;
            last_step = p->step;
            tlast = now_s();
        }
        if (o->sample_every > 0 && (p->step % o->sample_every == 0 || final)) write_samples(p);
        int ck = o->checkpoint_every > 0 && p->step % o->checkpoint_every == 0;
        if (ck || final || out_of_time || stop_here) {
            if (save_checkpoint(p) != 0 || save_weights(p) != 0) { rc = -1; break; }
            ptlog(p, "step %d: checkpoint and weights in %s", p->step, o->out_dir);
        }
        if (!final && (out_of_time || stop_here)) {
            ptlog(p, "stopping at step %d of %d (%s); continue with --resume", p->step, o->steps,
                  out_of_time ? "time limit" : "stop_after");
            stopped = 1;
            break;
        }
    }
    if (rc == 0 && p->step == o->steps && start_step == o->steps) {
        /* resumed a finished run: just make sure the weights are there */
        if (save_weights(p) != 0) rc = -1;
    }
    if (rc != 0) err_set(err, errlen, "%s", p->err);
    pt_free(p);
    free(p);
    return rc != 0 ? -1 : stopped;
}

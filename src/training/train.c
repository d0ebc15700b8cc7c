#include "training/train.h"
#include "core/fmt.h"

#include <dirent.h>
#include <stdarg.h>
#include <strings.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#include "models/adapter_census.h"
#include "models/diffusion.h"
#include "core/fsutil.h"
#include "core/replay.h"
#include "core/rng.h"
#include "formats/json.h"
#include "formats/safetensors.h"
#include "training/buckets.h"
#include "training/run_dir.h"

#define N_EVAL 8
#define CKPT_FORMAT "krona-studio-checkpoint-1"

/* Training images as the UNet takes them, each at its bucket's size. */
typedef struct ImageSet {
    int n;
    float *host;           /* [n] slots of 2 * Trainer.per floats: the image at its
                              bucket's size (bucket_floats), then its mirror */
    int *bucket;           /* [n] index into Trainer.buckets */
    TimeIds (*tid)[2];     /* [n] SDXL's time ids of the image and of its mirror */
    int *by_bucket;        /* [n] the images grouped by bucket, in order within one */
    int *first, *count;    /* [n_buckets] each bucket's run in by_bucket */
} ImageSet;

struct Trainer {
    Preset p;
    Backend *be;
    Model *m;
    TrainCallbacks cb;
    char run_dir[PATH_MAX];
    char err[512];

    int px, C;             /* resolution (pixels), UNet input channels */
    int64_t per;           /* floats per image at px x px: the largest bucket's */
    BucketSize *buckets;   /* the training sizes: training/buckets.h, or px x px alone */
    int n_buckets;
    /* [n_buckets][2]: each size's UNet pass (instance, prior), replayed as one
     * recording where the backend can (CUDA graphs) */
    Replay *replays;
    int told_samples; /* the log said how sampling ran its UNet passes (model_generate_news) */
    ImageSet img, cls;     /* instance images, class images (prior preservation) */

    /* device */
    float *ctx_class, *ctx_empty, *ctx_batch;
    float *ctx_img;        /* [n_img] records: each image's caption, or the instance prompt */
    float *ctx_samples, *ctx_samples_uncond;
    float *x0, *noise, *xt, *target, *out, *dout, *tdev;
    /* host scratch */
    float *hx0, *hnoise, *htf;
    int *ht;
    int *hidx, *hmir;      /* [batch] the batch's images and mirror flags */
    TimeIds *htid, *hseen; /* [batch] their time ids; as read back (TrainCallbacks.batch) */
    /* every trained adapter: the UNet's, then the text encoder's; AdamW's
     * moments are the adapters' own (a->mA ...) */
    Adapter **ads;
    int n_ads;
    AdapterSet *sets[3]; /* their sets (packed: one zeroing and one AdamW each per step) */
    int n_sets;
    /* text_encoder_adapters: the prompts' token ids (host), re-encoded each step */
    int te_on;
    int keep_te;           /* trainer_keep_text_encoders */
    int idw;               /* ids per prompt: L, or 2 L for SDXL (each tokenizer's) */
    int te2_first;         /* index in ads of the second encoder's first adapter (SDXL) */
    int32_t *ids_img, *ids_class, *ids_batch; /* [n_img, idw], [idw], [batch, idw] */
    int32_t *ids_b1, *ids_b2;                 /* SDXL: [batch, L] each */
    float *dctx;                              /* [batch, cond_floats] */
    float *pen1, *pen2, *pooled, *dpen1, *dpen2, *dpooled; /* SDXL: [batch, L, w1|w2], [batch, P] */

    Rng rng;
    int step;              /* optimiser steps done */
    float *loss_hist;      /* [iterations] */
    float eval_start;
    int64_t trainable;

    /* fixed evaluation set */
    int eval_img[N_EVAL], eval_t[N_EVAL];
    float *eval_noise;     /* host [N_EVAL, per] */

    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int paused, cancel, sample_req;
    int result;
    TrainProgress prog;
    double sample_s;       /* seconds this trainer_run spent sampling */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void tlog(Trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tlog(Trainer *t, const char *fmt, ...) {
    if (!t->cb.log) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    t->cb.log(t->cb.user, line);
}

/* ---------------------------------------------------------------- data --- */

static int64_t bucket_floats(const Trainer *t, int k) {
    int ps = t->m->pixel_scale;
    return (int64_t)t->C * (t->buckets[k].h / ps) * (t->buckets[k].w / ps);
}

static int image_set_alloc(Trainer *t, ImageSet *s, int n) {
    s->n = n;
    s->host = malloc(sizeof(float) * (size_t)(2 * n * t->per));
    s->bucket = calloc((size_t)n, sizeof *s->bucket);
    s->tid = calloc((size_t)n, sizeof *s->tid);
    s->by_bucket = calloc((size_t)n, sizeof *s->by_bucket);
    s->first = calloc((size_t)t->n_buckets, sizeof *s->first);
    s->count = calloc((size_t)t->n_buckets, sizeof *s->count);
    if (!s->host || !s->bucket || !s->tid || !s->by_bucket || !s->first || !s->count) {
        snprintf(t->err, sizeof t->err, "out of memory for %d training images", n);
        return -1;
    }
    return 0;
}

static void image_set_free(ImageSet *s) {
    free(s->host); free(s->bucket); free(s->tid); free(s->by_bucket); free(s->first); free(s->count);
}

/* by_bucket, first, count from bucket[] (once every image is loaded) */
static void image_set_group(const Trainer *t, ImageSet *s) {
    for (int k = 0; k < t->n_buckets; k++) s->count[k] = 0;
    for (int i = 0; i < s->n; i++) s->count[s->bucket[i]]++;
    for (int k = 0, at = 0; k < t->n_buckets; k++) {
        s->first[k] = at;
        at += s->count[k];
        s->count[k] = 0; /* counted again while filling */
    }
    for (int i = 0; i < s->n; i++) {
        int k = s->bucket[i];
        s->by_bucket[s->first[k] + s->count[k]++] = i;
    }
}

/* Load image i of set from path: scaled to cover its bucket (the square
 * px x px without buckets) and centre-cropped to it, converted to the model's
 * input for it and its mirror (pixels, or the VAE's latents: encoded once per
 * run), with SDXL's time ids of both. */
static int load_image_pair(Trainer *t, const char *path, ImageSet *set, int i) {
    Image im = {0}, fit = {0};
    if (image_load(path, &im, t->err, sizeof t->err) != 0) return -1;
    int k = t->p.buckets ? bucket_nearest(t->buckets, t->n_buckets, im.w, im.h) : 0;
    BucketSize b = t->buckets[k];
    ImageCrop g;
    int rc = image_cover_crop_resize(&im, b.w, b.h, &fit, &g);
    int orig_w = im.w, orig_h = im.h;
    image_free(&im);
    if (rc != 0) { snprintf(t->err, sizeof t->err, "%s: cannot resize to %dx%d", path, b.w, b.h); return -1; }
    set->bucket[i] = k;
    if (t->p.buckets && set == &t->img) tlog(t, "%s (%dx%d) trains at %dx%d", path, orig_w, orig_h, b.w, b.h);
    set->tid[i][0] = model_time_ids(orig_w, orig_h, g.left, g.top, b.w, b.h);
    /* the mirror: the same crop of the mirrored image, its left from its own left edge */
    set->tid[i][1] = model_time_ids(orig_w, orig_h, g.cover_w - b.w - g.left, g.top, b.w, b.h);
    int64_t ipx = (int64_t)t->m->image_channels * b.w * b.h;
    float *pix = malloc(sizeof(float) * (size_t)(2 * ipx));
    if (!pix) { image_free(&fit); snprintf(t->err, sizeof t->err, "out of memory"); return -1; }
    image_to_chw(&fit, pix);
    image_flip_h(&fit);
    image_to_chw(&fit, pix + ipx);
    image_free(&fit);
    rc = model_encode_images(t->m, pix, 2, b.w, b.h, set->host + 2 * i * t->per, t->err, sizeof t->err);
    free(pix);
    return rc;
}

static int is_image_name(const char *n) {
    const char *dot = strrchr(n, '.');
    if (!dot) return 0;
    return !strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") ||
           !strcasecmp(dot, ".bmp") || !strcasecmp(dot, ".tga") || !strcasecmp(dot, ".gif");
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted image files of a folder (at most max). */
static int list_images(const char *dir, char ***out, int max) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0, cap = 16;
    char **v = malloc(sizeof(char *) * (size_t)cap);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_image_name(e->d_name)) continue;
        if (n == cap) v = realloc(v, sizeof(char *) * (size_t)(cap *= 2));
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        v[n] = malloc(len);
        snprintf(v[n++], len, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    qsort(v, (size_t)n, sizeof(char *), cmp_str);
    if (n > max) {
        for (int i = max; i < n; i++) free(v[i]);
        n = max;
    }
    *out = v;
    return n;
}

static void free_list(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* A caption beside an image (subject1.txt for subject1.png, as kohya reads
 * them) replaces the instance prompt for that image. 1 with the caption, 0
 * when there is none, -1 with t->err for one that is not a small text file. */
static int read_caption(Trainer *t, const char *image, char *out, size_t n) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", image);
    char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash)) return 0;
    snprintf(dot, sizeof path - (size_t)(dot - path), ".txt");
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    if (!S_ISREG(st.st_mode) || st.st_size >= (off_t)n) {
        snprintf(t->err, sizeof t->err, "%s: a caption must be a text file under %zu bytes", path, n);
        return -1;
    }
    size_t len;
    char *text = fs_read_all(path, FS_TEXT_MAX, &len, t->err, sizeof t->err);
    if (!text) return -1;
    /* one line: whitespace runs (newlines too) become single spaces, ends trimmed */
    size_t k = 0;
    for (size_t i = 0; i < len && k + 1 < n; i++) {
        int sp = text[i] == ' ' || text[i] == '\n' || text[i] == '\r' || text[i] == '\t';
        if (sp) { if (k && out[k - 1] != ' ') out[k++] = ' '; }
        else out[k++] = text[i];
    }
    while (k && out[k - 1] == ' ') k--;
    out[k] = 0;
    free(text);
    return k > 0;
}

/* ------------------------------------------------------------ sampling --- */

static int generate(Trainer *t, const float *ctx_cond, const float *ctx_uncond, int n,
                    uint64_t seed, Image *grid, Image *tiles_out) {
    Model *m = t->m;
    SamplerOpts so = {0};
    so.kind = strcmp(t->p.sampler, "euler") == 0 ? SAMPLER_EULER : SAMPLER_DDIM;
    so.steps = t->p.sample_steps;
    so.guidance = t->p.guidance;
    so.seed = seed;
    int64_t ipx = (int64_t)m->image_channels * t->px * t->px;
    float *out = malloc(sizeof(float) * (size_t)(n * ipx));
    Image *tiles = calloc((size_t)n, sizeof(Image));
    int rc = -1;
    if (!out || !tiles) { snprintf(t->err, sizeof t->err, "out of memory"); goto done; }
    if (model_generate(m, ctx_cond, ctx_uncond, n, t->px, &so, seed, &t->cancel, out, t->err,
                       sizeof t->err) != 0)
        goto done;
    char news[320];
    if (!t->told_samples && model_generate_news(m, news, sizeof news)) {
        tlog(t, "samples: %s", news);
        t->told_samples = 1;
    }
    for (int i = 0; i < n; i++)
        image_from_chw(out + i * ipx, m->image_channels, t->px, t->px, &tiles[i]);
    if (grid) image_grid(tiles, n, n, 2, grid);
    if (tiles_out)
        for (int i = 0; i < n; i++) { tiles_out[i] = tiles[i]; tiles[i].px = NULL; }
    rc = 0;
done:
    if (tiles)
        for (int i = 0; i < n; i++) image_free(&tiles[i]);
    free(tiles);
    free(out);
    return rc;
}

/* The sample prompts' grid at step (saved as samples/step_<step>.png, then the
 * sample callback), with the same noise every time, so the grids show what
 * training changed. */
static int sample_grid(Trainer *t, int step) {
    int n = t->p.n_sample_prompts;
    if (n <= 0) return 0;
    Image grid = {0};
    /* the adapted text encoder: the sample prompts (and the empty one) again */
    if (t->te_on) {
        size_t cn = (size_t)t->m->cond_floats;
        for (int i = 0; i < n; i++)
            if (model_encode_prompt(t->m, t->p.sample_prompts[i], t->px, t->ctx_samples + cn * i, t->err, sizeof t->err) != 0 ||
                model_encode_prompt(t->m, "", t->px, t->ctx_samples_uncond + cn * i, t->err, sizeof t->err) != 0)
                return -1;
    }
    TrainState prev = t->prog.state;
    pthread_mutex_lock(&t->mu);
    t->prog.state = TRAIN_SAMPLING;
    pthread_mutex_unlock(&t->mu);
    if (t->cb.progress) t->cb.progress(t->cb.user, &t->prog);
    int rc = generate(t, t->ctx_samples, t->ctx_samples_uncond, n, t->p.seed + 7919, &grid, NULL);
    pthread_mutex_lock(&t->mu);
    t->prog.state = prev;
    pthread_mutex_unlock(&t->mu);
    if (rc != 0) return atomic_load(&t->cancel) ? 0 : -1;
    char path[PATH_MAX + 32];
    run_sample_path(t->run_dir, step, path, sizeof path);
    if (image_save_png(path, &grid, t->err, sizeof t->err) != 0) { image_free(&grid); return -1; }
    if (t->cb.sample) t->cb.sample(t->cb.user, step, &grid, path);
    image_free(&grid);
    return 0;
}

/* sample_grid, its time kept out of it/s and the ETA (publish) */
static int write_samples(Trainer *t, int step) {
    double s0 = now_s();
    int rc = sample_grid(t, step);
    t->sample_s += now_s() - s0;
    return rc;
}

/* The base model's grid is the step-0 grid: the one the adapters start from
 * (B, LoRA's up, at zero), sampled with the adapters bypassed, so it is the
 * base model's by construction. Every run with sample prompts has one, whatever
 * sample_every says; a resumed run without one samples it now. Nothing
 * training reads changes (the noise is the grids' own, the factors untouched). */
static int base_samples(Trainer *t) {
    char path[PATH_MAX + 32];
    if (t->p.n_sample_prompts <= 0 || fs_exists(run_sample_path(t->run_dir, 0, path, sizeof path))) return 0;
    model_bypass_adapters(t->m, 1);
    int rc = write_samples(t, 0);
    model_bypass_adapters(t->m, 0);
    return rc;
}

/* Prior preservation: class images from class_dir, cached from an earlier
 * generation in the run folder, or generated now with the base model. */
static int prepare_class_images(Trainer *t) {
    Preset *p = &t->p;
    if (p->prior_weight <= 0.0f) return 0;
    char cache[PATH_MAX + 16];
    run_path(t->run_dir, RUN_CLASS_IMAGES, cache, sizeof cache);
    const char *dir = p->class_dir[0] ? p->class_dir : (fs_is_dir(cache) ? cache : NULL);
    int want = p->n_class_images > 0 ? p->n_class_images : 4;
    char **files = NULL;
    int n = 0;
    if (dir) {
        n = list_images(dir, &files, want);
        if (n <= 0) {
            snprintf(t->err, sizeof t->err, "class_dir %s: no images (png/jpg) found", dir);
            if (n == 0) free(files);
            return -1;
        }
    }
    int count = dir ? n : want;
    if (image_set_alloc(t, &t->cls, count) != 0) {
        if (dir) free_list(files, n);
        return -1;
    }
    if (dir) {
        for (int i = 0; i < n; i++)
            if (load_image_pair(t, files[i], &t->cls, i) != 0) {
                free_list(files, n);
                return -1;
            }
        free_list(files, n);
    } else {
        tlog(t, "generating %d class images for \"%s\" with the base model", count, p->class_prompt);
        if (fs_mkdir_p(cache, t->err, sizeof t->err) != 0) return -1;
        size_t cb = sizeof(float) * (size_t)t->m->cond_floats;
        float *cc = t->be->alloc(t->be, cb * (size_t)count);
        float *cu = t->be->alloc(t->be, cb * (size_t)count);
        Image *tiles = calloc((size_t)count, sizeof(Image));
        int rc = cc && cu && tiles ? 0 : -1;
        for (int i = 0; rc == 0 && i < count; i++) {
            t->be->copy(t->be, (char *)cc + cb * i, t->ctx_class, cb);
            t->be->copy(t->be, (char *)cu + cb * i, t->ctx_empty, cb);
        }
        if (rc == 0) rc = generate(t, cc, cu, count, p->seed + 104729, NULL, tiles);
        for (int i = 0; rc == 0 && i < count; i++) {
            char path[PATH_MAX + 48];
            run_class_image_path(t->run_dir, i, path, sizeof path);
            rc = image_save_png(path, &tiles[i], t->err, sizeof t->err);
            if (rc == 0) rc = load_image_pair(t, path, &t->cls, i);
        }
        for (int i = 0; tiles && i < count; i++) image_free(&tiles[i]);
        free(tiles);
        t->be->free(t->be, cc);
        t->be->free(t->be, cu);
        if (rc != 0) return -1;
    }
    image_set_group(t, &t->cls);
    return 0;
}

/* ---------------------------------------------------------- train step --- */

static float lr_at(const Preset *p, int step) {
    if (strcmp(p->lr_schedule, "warmup") == 0 && p->warmup_steps > 0 && step < p->warmup_steps)
        return p->lr * (float)(step + 1) / (float)p->warmup_steps;
    return p->lr;
}

/* The conditioning records of n prompts (ids [n, idw] host) through the
 * adapted encoder(s), as model_encode_prompt makes them: SD 1.5 / tiny the last
 * hidden state; SDXL both penultimate states, the pooled output and the time ids. */
static int te_encode(Trainer *t, const int32_t *ids, int n, float *cond, char *e, size_t elen) {
    Model *m = t->m;
    Backend *be = t->be;
    int L = m->context_len;
    if (!m->te2) return te_forward(m->te, ids, n, L, cond, NULL, NULL, e, elen);
    int w1 = te_config(m->te)->hidden_size, w2 = te_config(m->te2)->hidden_size;
    int P = m->added_dim - 6;
    for (int b = 0; b < n; b++) {
        memcpy(t->ids_b1 + (size_t)b * L, ids + (size_t)b * t->idw, sizeof(int32_t) * (size_t)L);
        memcpy(t->ids_b2 + (size_t)b * L, ids + (size_t)b * t->idw + L, sizeof(int32_t) * (size_t)L);
    }
    if (te_forward(m->te, t->ids_b1, n, L, NULL, t->pen1, NULL, e, elen) != 0) return -1;
    if (te_forward(m->te2, t->ids_b2, n, L, NULL, t->pen2, t->pooled, e, elen) != 0) return -1;
    TimeIds ids6 = model_time_ids(t->px, t->px, 0, 0, t->px, t->px); /* as model_encode_prompt */
    for (int b = 0; b < n; b++) {
        float *c = cond + (int64_t)b * m->cond_floats;
        for (int l = 0; l < L; l++) {
            be->copy(be, c + (int64_t)l * m->ctx_dim, t->pen1 + ((int64_t)b * L + l) * w1, sizeof(float) * (size_t)w1);
            be->copy(be, c + (int64_t)l * m->ctx_dim + w1, t->pen2 + ((int64_t)b * L + l) * w2, sizeof(float) * (size_t)w2);
        }
        float *added = c + (int64_t)L * m->ctx_dim;
        be->copy(be, added, t->pooled + (int64_t)b * P, sizeof(float) * (size_t)P);
        be->upload(be, added + P, ids6.v, sizeof ids6.v);
    }
    return 0;
}

/* d(records) of the last te_encode back into the text adapters: t->dctx holds
 * d ctx [n, L, ctx_dim] and, for SDXL, d added [n, P + 6] after it. SDXL: both
 * penultimate states, and bigG's pooled output through the UNet's add embedding. */
static int te_backprop(Trainer *t, int n, char *e, size_t elen) {
    Model *m = t->m;
    Backend *be = t->be;
    if (!m->te2) return te_backward(m->te, t->dctx, e, elen);
    int L = m->context_len, w1 = te_config(m->te)->hidden_size, w2 = te_config(m->te2)->hidden_size;
    for (int b = 0; b < n; b++) {
        /* unet_backward_ctx's d(ctx) is [n, L, ctx_dim], without the added part */
        const float *d = t->dctx + (int64_t)b * L * m->ctx_dim;
        for (int l = 0; l < L; l++) {
            be->copy(be, t->dpen1 + ((int64_t)b * L + l) * w1, d + (int64_t)l * m->ctx_dim, sizeof(float) * (size_t)w1);
            be->copy(be, t->dpen2 + ((int64_t)b * L + l) * w2, d + (int64_t)l * m->ctx_dim + w1, sizeof(float) * (size_t)w2);
        }
    }
    int P = m->added_dim - 6;
    const float *dadded = t->dctx + (int64_t)n * L * m->ctx_dim;
    for (int b = 0; b < n; b++)
        be->copy(be, t->dpooled + (int64_t)b * P, dadded + (int64_t)b * (P + 6), sizeof(float) * (size_t)P);
    if (te_backward_states(m->te, NULL, t->dpen1, e, elen) != 0) return -1;
    return te_backward_all(m->te2, NULL, t->dpen2, t->dpooled, e, elen);
}

/* The device part of a pass, the same ops every step for one size and kind
 * (replay.h): UNet forward, the loss's gradient, UNet backward. Reads xt,
 * tdev, ctx_batch and target; the per-step values are in them already. */
typedef struct {
    Trainer *t;
    int H, W;
    int64_t n;
    float weight;
} UnetPass;

static int unet_pass(void *user) {
    UnetPass *ps = user;
    Trainer *t = ps->t;
    Backend *be = t->be;
    int B = t->p.batch;
    if (model_unet_forward(t->m, t->xt, t->tdev, t->ctx_batch, t->out, B, ps->H, ps->W, 1) != 0) {
        snprintf(t->err, sizeof t->err, "step %d: UNet forward: %s", t->step + 1, unet_last_error(t->m->unet));
        return -1;
    }
    be->zero(be, t->dout, sizeof(float) * (size_t)ps->n);
    be->mse_bwd(be, t->out, t->target, t->dout, ps->n, ps->weight);
    if (t->te_on) be->zero(be, t->dctx, sizeof(float) * (size_t)t->m->cond_floats * (size_t)B);
    /* dctx holds [B, L, ctx_dim] then, for SDXL, d added [B, P + 6] */
    float *dadded = t->te_on && t->m->te2 ? t->dctx + (int64_t)B * t->m->context_len * t->m->ctx_dim : NULL;
    if (unet_backward_cond(t->m->unet, t->dout, NULL, t->te_on ? t->dctx : NULL, dadded) != 0) {
        snprintf(t->err, sizeof t->err, "step %d: UNet backward: %s", t->step + 1, unet_last_error(t->m->unet));
        return -1;
    }
    return 0;
}

/* one log line per pass (size and kind) when it is first replayed, or when
 * recording it stopped */
static void say_replay(Trainer *t, Replay *r, int k, int prior) {
    char what[96], line[512];
    snprintf(what, sizeof what, "UNet pass (%dx%d%s)", t->buckets[k].w, t->buckets[k].h,
             prior ? ", prior" : "");
    if (replay_news(t->be, r, what, t->step + 1, line, sizeof line)) tlog(t, "%s", line);
}

/* One forward/backward on a batch drawn from set with the conditioning ctx
 * (per_image: one record per image, else one for all); adds weight * grads;
 * *loss = the batch loss. The batch comes from one bucket: its first image is
 * drawn from all, the others from that image's bucket (without buckets: all
 * from all). 0, or -1 with t->err when the UNet could not run (e.g. out of memory). */
static int forward_backward(Trainer *t, const ImageSet *set, const float *ctx, const int32_t *ids,
                            int per_image, int prior, float weight, float *loss_out) {
    Backend *be = t->be;
    Model *m = t->m;
    int B = t->p.batch;
    size_t cb = sizeof(float) * (size_t)m->cond_floats;
    int i0 = rng_int(&t->rng, set->n), k = set->bucket[i0];
    BucketSize bs = t->buckets[k];
    int H = bs.h / m->pixel_scale, W = bs.w / m->pixel_scale;
    int64_t per = bucket_floats(t, k);
    for (int b = 0; b < B; b++) {
        int i = b == 0 ? i0 : set->by_bucket[set->first[k] + rng_int(&t->rng, set->count[k])];
        int mirror = t->p.flip ? rng_int(&t->rng, 2) : 0;
        memcpy(t->hx0 + b * per, set->host + 2 * i * t->per + mirror * per, sizeof(float) * (size_t)per);
        t->ht[b] = rng_int(&t->rng, m->sched.T);
        t->htf[b] = (float)t->ht[b];
        t->hidx[b] = i;
        t->hmir[b] = mirror;
        t->htid[b] = set->tid[i][mirror];
        if (t->te_on) /* the records come from the adapted encoder below */
            memcpy(t->ids_batch + (size_t)b * t->idw, ids + (per_image ? (size_t)i * t->idw : 0),
                   sizeof(int32_t) * (size_t)t->idw);
        else
            be->copy(be, (char *)t->ctx_batch + cb * b, (const char *)ctx + (per_image ? cb * i : 0), cb);
    }
    char e[512];
    if (t->te_on && te_encode(t, t->ids_batch, B, t->ctx_batch, e, sizeof e) != 0) {
        snprintf(t->err, sizeof t->err, "step %d: text encoder forward: %s", t->step + 1, e);
        return -1;
    }
    /* SDXL with buckets: each image's own size and crop (else the records' px x px whole) */
    if (t->p.buckets) model_set_time_ids(m, t->ctx_batch, B, t->htid);
    if (t->cb.batch) {
        TrainBatch tb = {t->step + 1, prior, B, bs.w, bs.h, t->hidx, t->hmir, NULL};
        for (int b = 0; b < B; b++)
            if (model_get_time_ids(m, (const float *)((const char *)t->ctx_batch + cb * b), &t->hseen[b]) == 0)
                tb.time_ids = t->hseen;
        t->cb.batch(t->cb.user, &tb);
    }
    rng_fill_normal(&t->rng, t->hnoise, B * per);
    int64_t n_all = B * per;
    be->upload(be, t->x0, t->hx0, sizeof(float) * (size_t)n_all);
    be->upload(be, t->noise, t->hnoise, sizeof(float) * (size_t)n_all);
    be->upload(be, t->tdev, t->htf, sizeof(float) * (size_t)B);
    diffusion_q_sample(be, &m->sched, t->x0, t->noise, t->ht, t->xt, B, per);
    diffusion_target(be, &m->sched, t->x0, t->noise, t->ht, t->target, B, per);
    UnetPass ps = {t, H, W, n_all, weight};
    Replay *rp = &t->replays[2 * k + prior];
    if (replay_run(be, rp, unet_pass, &ps) != 0) return -1;
    say_replay(t, rp, k, prior);
    /* after the backward: reading the loss waits for the device, so the host
     * queues the whole pass first */
    *loss_out = be->mse_fwd(be, t->out, t->target, n_all);
    if (t->te_on && te_backprop(t, B, e, sizeof e) != 0) {
        snprintf(t->err, sizeof t->err, "step %d: text encoder backward: %s", t->step + 1, e);
        return -1;
    }
    return 0;
}

static void zero_grads(Trainer *t) {
    for (int s = 0; s < t->n_sets; s++) adapter_set_zero_grad(t->sets[s]);
}

static void optimizer_step(Trainer *t, float lr) {
    for (int s = 0; s < t->n_sets; s++)
        adapter_set_adamw(t->sets[s], lr, 0.9f, 0.999f, 1e-8f, t->p.weight_decay, t->step + 1);
}

float trainer_eval_loss(Trainer *t) {
    Backend *be = t->be;
    Model *m = t->m;
    size_t cb = sizeof(float) * (size_t)m->cond_floats;
    double sum = 0;
    for (int e = 0; e < N_EVAL; e++) {
        int i = t->eval_img[e], k = t->img.bucket[i];
        int H = t->buckets[k].h / m->pixel_scale, W = t->buckets[k].w / m->pixel_scale;
        int64_t per = bucket_floats(t, k);
        memcpy(t->hx0, t->img.host + 2 * i * t->per, sizeof(float) * (size_t)per);
        float tf = (float)t->eval_t[e];
        be->upload(be, t->x0, t->hx0, sizeof(float) * (size_t)per);
        be->upload(be, t->noise, t->eval_noise + e * t->per, sizeof(float) * (size_t)per);
        be->upload(be, t->tdev, &tf, sizeof(float));
        if (t->te_on) { /* the encoder as trained so far */
            char err[256];
            if (te_encode(t, t->ids_img + (size_t)i * t->idw, 1, t->ctx_batch, err, sizeof err) != 0)
                return NAN;
        } else {
            be->copy(be, t->ctx_batch, (const char *)t->ctx_img + cb * i, cb);
        }
        if (t->p.buckets) model_set_time_ids(m, t->ctx_batch, 1, &t->img.tid[i][0]);
        diffusion_q_sample(be, &m->sched, t->x0, t->noise, &t->eval_t[e], t->xt, 1, per);
        diffusion_target(be, &m->sched, t->x0, t->noise, &t->eval_t[e], t->target, 1, per);
        if (model_unet_forward(m, t->xt, t->tdev, t->ctx_batch, t->out, 1, H, W, 0) != 0)
            return NAN; /* no number rather than a wrong one */
        sum += be->mse_fwd(be, t->out, t->target, per);
    }
    return be->last_error(be)[0] ? NAN : (float)(sum / N_EVAL);
}

/* ---------------------------------------------------------- checkpoint --- */

static int64_t *shape1(int64_t n, int64_t *buf) { buf[0] = n; return buf; }

static int add_device(StWriter *w, Backend *be, const char *name, const float *dev, int64_t n) {
    float *h = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!h) return -1;
    be->download(be, h, dev, sizeof(float) * (size_t)n);
    int64_t sh[1];
    int rc = stw_add_f32(w, name, 1, shape1(n, sh), h);
    free(h);
    return rc;
}

static int write_loss_csv(Trainer *t) {
    float *lr = malloc(sizeof(float) * (size_t)(t->step > 0 ? t->step : 1));
    if (!lr) return -1;
    for (int i = 0; i < t->step; i++) lr[i] = lr_at(&t->p, i);
    int rc = run_loss_write(t->run_dir, t->loss_hist, lr, t->step, t->err, sizeof t->err);
    free(lr);
    return rc;
}

/* A device failure (out of memory, a failed launch) stops training with the
 * backend's own message; the last checkpoint on disk is left as it was. */
static int device_failed(Trainer *t) {
    const char *e = t->be->last_error(t->be);
    if (!e[0]) return 0;
    snprintf(t->err, sizeof t->err, "%s device failed at step %d: %s (the last checkpoint is kept)",
             t->be->name, t->step + 1, e);
    return 1;
}

/* Everything an exact resume needs: factors, AdamW moments, RNG, step, losses. */
static int save_checkpoint(Trainer *t) {
    StWriter *w = stw_create();
    if (!w) return -1;
    char name[300], val[128];
    int rc = 0;
    for (int i = 0; rc == 0 && i < t->n_ads; i++) {
        Adapter *a = t->ads[i];
        const char *suffix[6] = {"A", "B", "mA", "vA", "mB", "vB"};
        const float *ptr[6] = {a->A, a->B, a->mA, a->vA, a->mB, a->vB};
        int64_t nn[6] = {adapter_numel_A(a), adapter_numel_B(a), adapter_numel_A(a), adapter_numel_A(a), adapter_numel_B(a), adapter_numel_B(a)};
        for (int j = 0; rc == 0 && j < 6; j++) {
            snprintf(name, sizeof name, "%s%s.%s", i >= t->te2_first ? "text_encoder_2." : "", a->name, suffix[j]);
            rc = add_device(w, t->be, name, ptr[j], nn[j]);
        }
    }
    if (device_failed(t)) { stw_free(w); return -1; } /* never overwrite it with garbage */
    int64_t sh[1];
    if (rc == 0 && t->step > 0) rc = stw_add_f32(w, "loss_history", 1, shape1(t->step, sh), t->loss_hist);
    stw_set_metadata(w, "format", CKPT_FORMAT);
    snprintf(val, sizeof val, "%d", t->step);
    stw_set_metadata(w, "step", val);
    char hex[65];
    rng_to_hex(&t->rng, hex);
    stw_set_metadata(w, "rng", hex);
    snprintf(val, sizeof val, "%.9g", t->eval_start);
    stw_set_metadata(w, "eval_loss_start", val);
    char path[PATH_MAX + 32];
    run_path(t->run_dir, RUN_CHECKPOINT, path, sizeof path);
    if (rc == 0) rc = stw_save(w, path, t->err, sizeof t->err);
    else snprintf(t->err, sizeof t->err, "%s: cannot assemble checkpoint", path);
    stw_free(w);
    if (rc == 0) rc = write_loss_csv(t);
    return rc;
}

static int load_f32(const SafeTensors *st, const char *name, Backend *be, float *dev, int64_t n,
                    const char *path, char *err, size_t errlen) {
    const StTensor *x = st_find(st, name);
    if (!x || x->numel != n) {
        snprintf(err, errlen, "%s: %s %s (delete the checkpoint to start over)", path, name,
                 x ? "has the wrong size" : "is missing");
        return -1;
    }
    float *h = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!h) { snprintf(err, errlen, "%s: out of memory reading %s", path, name); return -1; }
    if (st_load_f32(x, h, path, err, errlen) != 0) { free(h); return -1; }
    if (dev) be->upload(be, dev, h, sizeof(float) * (size_t)n);
    free(h);
    return 0;
}

static int load_checkpoint(Trainer *t) {
    char path[PATH_MAX + 32];
    run_path(t->run_dir, RUN_CHECKPOINT, path, sizeof path);
    SafeTensors *st = st_open(path, t->err, sizeof t->err);
    if (!st) return -1;
    int rc = -1;
    const char *fmt = st_metadata(st, "format"), *step = st_metadata(st, "step"),
               *rng = st_metadata(st, "rng"), *ev = st_metadata(st, "eval_loss_start");
    if (!fmt || strcmp(fmt, CKPT_FORMAT) != 0 || !step || rng_from_hex(&t->rng, rng) != 0) {
        snprintf(t->err, sizeof t->err, "%s: not a krona-studio checkpoint", path);
        goto done;
    }
    t->step = atoi(step);
    if (t->step < 0 || t->step > t->p.iterations) {
        snprintf(t->err, sizeof t->err, "%s: step %d is outside 0..iterations=%d", path, t->step,
                 t->p.iterations);
        goto done;
    }
    if (ev) t->eval_start = strtof(ev, NULL);
    char name[300];
    for (int i = 0; i < t->n_ads; i++) {
        Adapter *a = t->ads[i];
        const char *suffix[6] = {"A", "B", "mA", "vA", "mB", "vB"};
        float *ptr[6] = {a->A, a->B, a->mA, a->vA, a->mB, a->vB};
        int64_t nn[6] = {adapter_numel_A(a), adapter_numel_B(a), adapter_numel_A(a), adapter_numel_A(a), adapter_numel_B(a), adapter_numel_B(a)};
        for (int j = 0; j < 6; j++) {
            snprintf(name, sizeof name, "%s%s.%s", i >= t->te2_first ? "text_encoder_2." : "", a->name, suffix[j]);
            if (load_f32(st, name, t->be, ptr[j], nn[j], path, t->err, sizeof t->err) != 0) goto done;
        }
    }
    if (t->step > 0) {
        const StTensor *lh = st_find(st, "loss_history");
        if (!lh || lh->numel != t->step) {
            snprintf(t->err, sizeof t->err, "%s: loss_history missing or short", path);
            goto done;
        }
        if (st_load_f32(lh, t->loss_hist, path, t->err, sizeof t->err) != 0) goto done;
    }
    rc = 0;
done:
    st_close(st);
    return rc;
}

/* -------------------------------------------------------------- set up --- */

void train_adapter_spec(const Preset *p, AdapterSpec *spec) {
    memset(spec, 0, sizeof *spec);
    spec->kind = strcmp(p->adapter, "lora") == 0 ? ADAPTER_LORA : ADAPTER_KRONA;
    spec->a1 = p->a1;
    spec->a2 = p->a2;
    spec->rank = p->lora_rank;
    spec->alpha = spec->kind == ADAPTER_LORA ? p->lora_alpha : 1.0f;
    spec->modules = ADAPT_ATTN | (strcmp(p->modules, "attn+ffn") == 0 ? ADAPT_FFN : 0);
}

int train_pick_checkpointing(const char *mode, int64_t act_bytes, size_t free_bytes) {
    if (!strcmp(mode, "on")) return 1;
    if (!strcmp(mode, "off")) return 0;
    return free_bytes > 0 && (double)act_bytes > 0.8 * (double)free_bytes;
}

/* State what a step needs and choose gradient checkpointing (auto: when the
 * activations would not fit). The plan is the UNet's own (unet_memory_plan):
 * activations kept for backward, temporaries, backward buffers. */
static int plan_memory(Trainer *t) {
    Model *m = t->m;
    int B = t->p.batch;
    int hw = t->px / m->pixel_scale; /* buckets hold at most px² pixels: the square bounds them */
    int64_t a[2], tm[2], g[2];
    for (int c = 0; c < 2; c++)
        if (unet_memory_plan(&m->ucfg, B, hw, hw, m->context_len, 1, 0, c, &a[c], &tm[c], &g[c])) {
            snprintf(t->err, sizeof t->err, "no memory plan for a %dx%d batch of %d", hw, hw, B);
            return -1;
        }
    int64_t need[2] = {a[0] + tm[0] + g[0], a[1] + tm[1] + g[1]};
    size_t fr = t->be->free_bytes ? t->be->free_bytes(t->be) : 0;
    int on = train_pick_checkpointing(t->p.grad_checkpointing, need[0], fr);
    unet_set_checkpointing(m->unet, on);
    char held[32], n0[32], n1[32], fb[32];
    fmt_bytes((double)t->be->reserved_bytes(t->be), held, sizeof held);
    fmt_bytes((double)need[0], n0, sizeof n0);
    fmt_bytes((double)need[1], n1, sizeof n1);
    fmt_bytes((double)fr, fb, sizeof fb);
    tlog(t, "memory: model %s loaded; a step's activations %s (%s with gradient checkpointing); "
         "%s free on %s", held, n0, n1, fr ? fb : "? (unknown)", t->be->name);
    if (on && !strcmp(t->p.grad_checkpointing, "auto"))
        tlog(t, "gradient checkpointing on (auto: %s of activations would not fit)", n0);
    if (fr > 0 && (double)need[on] > 0.95 * (double)fr)
        tlog(t, "warning: a step needs %s but %s are free: lower batch or resolution%s",
             on ? n1 : n0, fb, on ? "" : ", or set gradient_checkpointing = on");
    return 0;
}

static void *dev_alloc(Trainer *t, size_t floats, int *ok) {
    void *p = t->be->alloc(t->be, sizeof(float) * (floats ? floats : 1));
    if (!p) *ok = 0;
    return p;
}

/* The token ids of a training prompt for the adapted encoder(s): [L], or for
 * SDXL [L] of each tokenizer. SDXL's empty prompt is all zeros, not an
 * encoding: it cannot train the text adapters. */
static int prompt_ids(Trainer *t, const char *prompt, int32_t *out) {
    Model *m = t->m;
    if (m->te2 && !prompt[0]) {
        snprintf(t->err, sizeof t->err, "text_encoder_adapters = 1 on SDXL needs non-empty prompts "
                 "(its empty prompt is all zeros, no encoding): set instance_prompt / class_prompt");
        return -1;
    }
    if (tok_encode_padded(m->tok, prompt, m->context_len, out, NULL, t->err, sizeof t->err) != 0) return -1;
    if (m->te2 && tok_encode_padded(m->tok2, prompt, m->context_len, out + m->context_len, NULL, t->err,
                                    sizeof t->err) != 0)
        return -1;
    return 0;
}

int train_bucket_step(const Preset *p, int cell) { return p->bucket_step ? p->bucket_step : cell; }

int train_check_sizes(const Preset *p, int cell, char *err, size_t errlen) {
    if (p->resolution % cell != 0) {
        snprintf(err, errlen, "resolution = %d: must be a multiple of %d for this model (e.g. %d)",
                 p->resolution, cell, (p->resolution / cell + 1) * cell);
        return -1;
    }
    if (!p->buckets) return 0;
    int step = train_bucket_step(p, cell);
    if (step % cell != 0) {
        snprintf(err, errlen, "bucket_step = %d: must be a multiple of %d for this model (e.g. %d), "
                 "or 0 for %d", step, cell, (step / cell + 1) * cell, cell);
        return -1;
    }
    if (p->resolution % step != 0) {
        snprintf(err, errlen, "resolution = %d: with buckets it must be a multiple of bucket_step = %d "
                 "(e.g. %d)", p->resolution, step, (p->resolution / step + 1) * step);
        return -1;
    }
    return 0;
}

/* The training sizes (train_check_sizes passed): with buckets, those of
 * training/buckets.h; without, px x px alone. */
static int setup_buckets(Trainer *t, int cell) {
    const Preset *p = &t->p;
    int step = train_bucket_step(p, cell);
    int cap = p->buckets ? bucket_count_max(p->resolution, step) : 1;
    t->buckets = malloc(sizeof *t->buckets * (size_t)cap);
    t->replays = calloc((size_t)cap * 2, sizeof *t->replays);
    if (!t->buckets || !t->replays) { snprintf(t->err, sizeof t->err, "out of memory"); return -1; }
    if (!p->buckets) {
        t->buckets[0] = (BucketSize){t->px, t->px};
        t->n_buckets = 1;
        return 0;
    }
    t->n_buckets = bucket_sizes(p->resolution, step, t->buckets, cap);
    char line[400];
    int k = snprintf(line, sizeof line, "%d buckets of step %d:", t->n_buckets, step);
    for (int i = 0; i < t->n_buckets && k > 0 && (size_t)k < sizeof line; i++)
        k += snprintf(line + k, sizeof line - (size_t)k, " %dx%d", t->buckets[i].w, t->buckets[i].h);
    tlog(t, "%s", line);
    return 0;
}

void train_find_images(Preset *p) {
    for (int i = 0; i < p->n_images; i++) {
        char path[PATH_MAX];
        if (model_find_input(p->images[i], path, sizeof path) == 0 && strlen(path) < sizeof p->images[i])
            snprintf(p->images[i], sizeof p->images[i], "%s", path);
    }
}

static int make_run_dir(Trainer *t) {
    return run_dir_create(&t->p, t->run_dir, sizeof t->run_dir, t->err, sizeof t->err);
}

static int setup(Trainer *t, const char *resume_dir) {
    Preset *p = &t->p;
    Backend *be = t->be;
    if (resume_dir) {
        char path[PATH_MAX + 32];
        snprintf(t->run_dir, sizeof t->run_dir, "%s", resume_dir);
        if (run_preset_load(resume_dir, p, t->err, sizeof t->err) != 0) return -1;
        if (!fs_exists(run_path(resume_dir, RUN_CHECKPOINT, path, sizeof path))) {
            snprintf(t->err, sizeof t->err, "%s: no checkpoint to resume from", resume_dir);
            return -1;
        }
        /* a killed run leaves its half-written temps (checkpoint.safetensors.tmp.PID) */
        int stale = run_dir_remove_stale_temps(resume_dir, t->err, sizeof t->err);
        if (stale < 0) return -1;
        if (stale > 0) tlog(t, "removed %d temporary file%s a killed run left in %s", stale,
                            stale > 1 ? "s" : "", resume_dir);
    }
    if (preset_validate(p, t->err, sizeof t->err) != 0) return -1;
    if (backend_set_precision(be, p->precision, t->err, sizeof t->err) != 0) return -1;
    if (strcmp(p->precision, "auto") != 0) tlog(t, "precision %s on %s", p->precision, be->name);
    train_find_images(p);
    if (p->n_images < 1) {
        snprintf(t->err, sizeof t->err, "no training images: add `image = path` lines to [data]");
        return -1;
    }
    t->m = model_open_with(p->model, p->tokenizer, be, t->err, sizeof t->err);
    if (!t->m) return -1;
    Model *m = t->m;
    /* auto: what the model was trained for (its scheduler config) */
    if (strcmp(p->prediction, "v") == 0) m->sched.prediction = PRED_V;
    else if (strcmp(p->prediction, "epsilon") == 0) m->sched.prediction = PRED_EPSILON;
    /* the training images' encode and the previews' decode */
    if (model_set_vae_tiling(m, p->vae_tiling, t->err, sizeof t->err) != 0) return -1;
    int cell = model_cell(m);
    if (train_check_sizes(p, cell, t->err, sizeof t->err) != 0) return -1;
    t->px = p->resolution;
    t->C = m->channels;
    t->per = (int64_t)t->C * (t->px / m->pixel_scale) * (t->px / m->pixel_scale);
    if (setup_buckets(t, cell) != 0) return -1;

    /* adapters: spec errors (a1 not dividing a layer) surface here */
    AdapterSpec spec;
    train_adapter_spec(p, &spec);
    spec.merged = adapter_merge_mode(be->precision(be)); /* fp32: merged where cheaper */
    if (model_attach_adapters(m, &spec, p->seed, t->err, sizeof t->err) != 0) return -1;
    AdapterCensus census;
    if (adapter_census(unet_config(m->unet), &spec, &census) != 0) {
        snprintf(t->err, sizeof t->err, "%s", census.err);
        adapter_census_free(&census);
        return -1;
    }
    t->trainable = census.trainable;
    adapter_census_free(&census);
    /* text encoder adapters (DiffuseKronA's optional ones), trained jointly */
    t->te_on = p->text_encoder_adapters;
    t->idw = m->context_len * (m->te2 ? 2 : 1);
    if (t->te_on) {
        if (model_attach_text_adapters(m, &spec, p->seed + 1, t->err, sizeof t->err) != 0) return -1;
        if (te_set_trainable(m->te, TE_TRAIN_ADAPTERS, t->err, sizeof t->err) != 0) return -1;
        if (m->te2 && te_set_trainable(m->te2, TE_TRAIN_ADAPTERS, t->err, sizeof t->err) != 0) return -1;
        t->trainable += adapter_set_param_count(te_adapters(m->te));
        if (m->te2) t->trainable += adapter_set_param_count(te_adapters(m->te2));
    }
    {
        AdapterSet *us = unet_adapters(m->unet), *ts = t->te_on ? te_adapters(m->te) : NULL;
        AdapterSet *ts2 = t->te_on && m->te2 ? te_adapters(m->te2) : NULL;
        int n = us->n + (ts ? ts->n : 0) + (ts2 ? ts2->n : 0);
        t->ads = calloc((size_t)n + 1, sizeof *t->ads);
        if (!t->ads) { snprintf(t->err, sizeof t->err, "out of memory"); return -1; }
        for (int i = 0; i < us->n; i++) t->ads[t->n_ads++] = &us->items[i];
        t->sets[t->n_sets++] = us;
        if (ts) t->sets[t->n_sets++] = ts;
        if (ts2) t->sets[t->n_sets++] = ts2;
        for (int i = 0; ts && i < ts->n; i++) t->ads[t->n_ads++] = &ts->items[i];
        t->te2_first = t->n_ads;
        for (int i = 0; ts2 && i < ts2->n; i++) t->ads[t->n_ads++] = &ts2->items[i];
    }

    unet_promise_frozen(m->unet); /* in bf16, the weights may shrink now: let the plan see it */
    if (plan_memory(t) != 0) return -1;

    /* images */
    if (image_set_alloc(t, &t->img, p->n_images) != 0) return -1;
    for (int i = 0; i < t->img.n; i++)
        if (load_image_pair(t, p->images[i], &t->img, i) != 0) return -1;
    image_set_group(t, &t->img);

    /* device buffers */
    int ok = 1, B = p->batch, S = p->n_sample_prompts > 0 ? p->n_sample_prompts : 1;
    size_t ctxn = (size_t)m->cond_floats; /* one prompt's conditioning record */
    t->ctx_img = dev_alloc(t, ctxn * (size_t)t->img.n, &ok);
    t->ctx_class = dev_alloc(t, ctxn, &ok);
    t->ctx_empty = dev_alloc(t, ctxn, &ok);
    t->ctx_batch = dev_alloc(t, ctxn * B, &ok);
    t->ctx_samples = dev_alloc(t, ctxn * S, &ok);
    t->ctx_samples_uncond = dev_alloc(t, ctxn * S, &ok);
    size_t nb = (size_t)(B * t->per);
    t->x0 = dev_alloc(t, nb, &ok);
    t->noise = dev_alloc(t, nb, &ok);
    t->xt = dev_alloc(t, nb, &ok);
    t->target = dev_alloc(t, nb, &ok);
    t->out = dev_alloc(t, nb, &ok);
    t->dout = dev_alloc(t, nb, &ok);
    t->tdev = dev_alloc(t, (size_t)B, &ok);
    t->hx0 = malloc(sizeof(float) * nb);
    t->hnoise = malloc(sizeof(float) * nb);
    t->htf = malloc(sizeof(float) * (size_t)B);
    t->ht = malloc(sizeof(int) * (size_t)B);
    t->hidx = malloc(sizeof(int) * (size_t)B);
    t->hmir = malloc(sizeof(int) * (size_t)B);
    t->htid = malloc(sizeof(TimeIds) * (size_t)B);
    t->hseen = malloc(sizeof(TimeIds) * (size_t)B);
    t->loss_hist = calloc((size_t)p->iterations + 1, sizeof(float));
    t->eval_noise = malloc(sizeof(float) * (size_t)(N_EVAL * t->per));
    if (t->te_on) {
        int L = m->context_len;
        t->ids_img = malloc(sizeof(int32_t) * (size_t)t->idw * (size_t)t->img.n);
        t->ids_class = malloc(sizeof(int32_t) * (size_t)t->idw);
        t->ids_batch = malloc(sizeof(int32_t) * (size_t)t->idw * (size_t)B);
        t->dctx = dev_alloc(t, ctxn * (size_t)B, &ok);
        if (!t->ids_img || !t->ids_class || !t->ids_batch) ok = 0;
        if (m->te2) {
            size_t w1 = (size_t)te_config(m->te)->hidden_size, w2 = (size_t)te_config(m->te2)->hidden_size;
            size_t BL = (size_t)B * (size_t)L;
            t->ids_b1 = malloc(sizeof(int32_t) * BL);
            t->ids_b2 = malloc(sizeof(int32_t) * BL);
            if (!t->ids_b1 || !t->ids_b2) ok = 0;
            t->pen1 = dev_alloc(t, BL * w1, &ok);
            t->dpen1 = dev_alloc(t, BL * w1, &ok);
            t->pen2 = dev_alloc(t, BL * w2, &ok);
            t->dpen2 = dev_alloc(t, BL * w2, &ok);
            t->pooled = dev_alloc(t, (size_t)B * (size_t)(m->added_dim - 6), &ok);
            t->dpooled = dev_alloc(t, (size_t)B * (size_t)(m->added_dim - 6), &ok);
        }
    }
    if (!t->hx0 || !t->hnoise || !t->htf || !t->ht || !t->hidx || !t->hmir || !t->htid || !t->hseen || !t->loss_hist || !t->eval_noise) ok = 0;
    if (!ok) {
        snprintf(t->err, sizeof t->err, "out of memory allocating training buffers (lower batch)");
        return -1;
    }

    /* prompts, encoded once */
    for (int i = 0; i < t->img.n; i++) {
        char caption[PRESET_TEXT_MAX];
        int has = read_caption(t, p->images[i], caption, sizeof caption);
        if (has < 0) return -1;
        if (has) tlog(t, "caption of %s: \"%s\"", p->images[i], caption);
        if (model_encode_prompt(m, has ? caption : p->instance_prompt, t->px, t->ctx_img + ctxn * (size_t)i,
                                t->err, sizeof t->err) != 0)
            return -1;
        if (t->te_on && prompt_ids(t, has ? caption : p->instance_prompt, t->ids_img + (size_t)i * t->idw) != 0)
            return -1;
    }
    if (model_encode_prompt(m, p->class_prompt, t->px, t->ctx_class, t->err, sizeof t->err) != 0) return -1;
    if (t->te_on && (p->prior_weight > 0 || p->class_prompt[0]) && prompt_ids(t, p->class_prompt, t->ids_class) != 0)
        return -1;
    if (model_encode_prompt(m, "", t->px, t->ctx_empty, t->err, sizeof t->err) != 0) return -1;
    for (int i = 0; i < p->n_sample_prompts; i++) {
        if (model_encode_prompt(m, p->sample_prompts[i], t->px, t->ctx_samples + ctxn * i, t->err,
                                sizeof t->err) != 0)
            return -1;
        be->copy(be, t->ctx_samples_uncond + ctxn * i, t->ctx_empty, sizeof(float) * ctxn);
    }

    /* fixed evaluation set: its own seed, independent of the training stream */
    Rng er;
    rng_seed(&er, 0x6576616c);
    rng_fill_normal(&er, t->eval_noise, N_EVAL * t->per);
    for (int e = 0; e < N_EVAL; e++) {
        t->eval_img[e] = e % t->img.n;
        t->eval_t[e] = (int)((e + 0.5) * m->sched.T / N_EVAL);
    }

    rng_seed(&t->rng, p->seed);
    if (resume_dir) {
        if (load_checkpoint(t) != 0) return -1;
        tlog(t, "resumed %s at step %d", t->run_dir, t->step);
    } else {
        if (make_run_dir(t) != 0) return -1;
        t->eval_start = trainer_eval_loss(t);
    }
    if (prepare_class_images(t) != 0) return -1;

    t->prog.state = TRAIN_IDLE;
    t->prog.step = t->step;
    t->prog.total = p->iterations;
    t->prog.trainable = t->trainable;
    t->prog.base = unet_n_base_params(m->unet);
    t->prog.lr = p->lr;
    t->prog.eval_loss_start = t->prog.eval_loss = t->eval_start;
    t->prog.loss = t->prog.loss_ema = t->step > 0 ? t->loss_hist[t->step - 1] : NAN;
    return 0;
}

void trainer_keep_text_encoders(Trainer *t) { t->keep_te = 1; }

Trainer *trainer_create(const Preset *p, const char *resume_dir, Backend *be,
                        const TrainCallbacks *cb, char *err, size_t errlen) {
    Trainer *t = calloc(1, sizeof *t);
    if (!t) { snprintf(err, errlen, "out of memory"); return NULL; }
    if (p) t->p = *p;
    t->be = be;
    if (cb) t->cb = *cb;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    if (setup(t, resume_dir) != 0) {
        snprintf(err, errlen, "%s", t->err);
        trainer_free(t);
        return NULL;
    }
    return t;
}

void trainer_free(Trainer *t) {
    if (!t) return;
    if (t->thread_started) {
        trainer_cancel(t);
        trainer_join(t);
    }
    Backend *be = t->be;
    for (int i = 0; be && t->replays && i < 2 * t->n_buckets; i++) replay_free(be, &t->replays[i]);
    free(t->replays);
    float *dev[] = {t->ctx_img, t->ctx_class, t->ctx_empty, t->ctx_batch, t->ctx_samples,
                    t->ctx_samples_uncond, t->x0, t->noise, t->xt, t->target, t->out, t->dout,
                    t->tdev, t->dctx, t->pen1, t->pen2, t->pooled, t->dpen1, t->dpen2, t->dpooled};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) be->free(be, dev[i]);
    free(t->ads);
    free(t->ids_img); free(t->ids_class); free(t->ids_batch); free(t->ids_b1); free(t->ids_b2);
    free(t->hx0); free(t->hnoise); free(t->htf); free(t->ht);
    free(t->hidx); free(t->hmir); free(t->htid); free(t->hseen);
    free(t->loss_hist); free(t->eval_noise); free(t->buckets);
    image_set_free(&t->img);
    image_set_free(&t->cls);
    model_free(t->m);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
}

/* ----------------------------------------------------------------- run --- */

static void publish(Trainer *t, TrainState st, float loss, float lr, double t0, int step0) {
    pthread_mutex_lock(&t->mu);
    TrainProgress *g = &t->prog;
    g->state = st;
    g->step = t->step;
    g->loss = loss;
    g->loss_ema = isnan(g->loss_ema) ? loss : 0.9f * g->loss_ema + 0.1f * loss;
    g->lr = lr;
    g->elapsed_s = now_s() - t0;
    int done = t->step - step0;
    double train_s = g->elapsed_s - t->sample_s; /* training steps alone: no sampling, no pauses */
    g->it_per_s = done > 0 && train_s > 0 ? done / train_s : 0;
    g->eta_s = g->it_per_s > 0 ? (t->p.iterations - t->step) / g->it_per_s : 0;
    g->peak_bytes = t->be->peak_bytes(t->be);
    TrainProgress copy = *g;
    pthread_mutex_unlock(&t->mu);
    if (t->cb.progress) t->cb.progress(t->cb.user, &copy);
}

static int finish(Trainer *t) {
    char path[PATH_MAX + 32];
    run_path(t->run_dir, RUN_ADAPTER, path, sizeof path);
    char model[2 * PRESET_PATH_MAX + 8], meta[sizeof model + 160];
    json_escape(model, sizeof model, t->p.model); /* a path may hold quotes */
    snprintf(meta, sizeof meta, "{\"base_model\":%s,\"steps\":\"%d\",\"ss_base_model_version\":\"%s\"}",
             model, t->step, model_base_version(t->m));
    int dtype = st_float_dtype_parse(t->p.export_dtype);
    if (model_save_adapter(t->m, path, meta, dtype, t->err, sizeof t->err) != 0) return -1;
    if (dtype == ST_F32) tlog(t, "adapter written to %s", path);
    else tlog(t, "adapter written to %s (%s)", path, st_dtype_name(dtype));
    return 0;
}

int trainer_set_export_dtype(Trainer *t, const char *dtype, char *err, size_t errlen) {
    if (st_float_dtype_parse(dtype) < 0) {
        snprintf(err, errlen, "export dtype '%s': use f32, f16 or bf16", dtype ? dtype : "");
        return -1;
    }
    snprintf(t->p.export_dtype, sizeof t->p.export_dtype, "%s", dtype);
    return 0;
}

int trainer_run(Trainer *t) {
    Preset *p = &t->p;
    double t0 = now_s();
    int step0 = t->step, rc = 0;
    float loss = t->prog.loss;
    t->sample_s = 0;
    /* every prompt the run needs is a record now; without text adapters the
     * encoders are done (unless the caller samples new prompts afterwards) */
    if (!t->te_on && !t->keep_te) model_release_text_encoders(t->m);
    publish(t, TRAIN_RUNNING, loss, lr_at(p, t->step), t0, step0);
    if (base_samples(t) != 0) rc = -1;
    while (rc == 0 && t->step < p->iterations) {
        pthread_mutex_lock(&t->mu);
        if (atomic_load(&t->paused) && !atomic_load(&t->cancel)) {
            t->prog.state = TRAIN_PAUSED;
            TrainProgress copy = t->prog;
            pthread_mutex_unlock(&t->mu);
            if (t->cb.progress) t->cb.progress(t->cb.user, &copy);
            pthread_mutex_lock(&t->mu);
            double pause0 = now_s();
            while (atomic_load(&t->paused) && !atomic_load(&t->cancel)) pthread_cond_wait(&t->cv, &t->mu);
            t0 += now_s() - pause0; /* paused time is not training time */
        }
        pthread_mutex_unlock(&t->mu);
        if (atomic_load(&t->cancel)) { rc = 1; break; }

        float lr = lr_at(p, t->step);
        zero_grads(t);
        double acc = 0;
        float l = 0;
        int failed = 0;
        for (int k = 0; k < p->grad_accum && !failed; k++) {
            failed = forward_backward(t, &t->img, t->ctx_img, t->ids_img, 1, 0, 1.0f / p->grad_accum, &l);
            acc += l;
            if (!failed && t->cls.n > 0)
                failed = forward_backward(t, &t->cls, t->ctx_class, t->ids_class, 0, 1,
                                          p->prior_weight / p->grad_accum, &l);
        }
        loss = (float)(acc / p->grad_accum);
        /* the device's own message, when it has one, says more than the UNet's */
        if (device_failed(t) || failed) { rc = -1; break; }
        if (!isfinite(loss)) {
            snprintf(t->err, sizeof t->err,
                     "loss became %g at step %d: lower lr (now %g) and resume from the checkpoint",
                     loss, t->step + 1, p->lr);
            rc = -1;
            break;
        }
        optimizer_step(t, lr);
        t->be->sync(t->be);
        if (device_failed(t)) { rc = -1; break; }
        t->loss_hist[t->step++] = loss;
        publish(t, TRAIN_RUNNING, loss, lr, t0, step0);

        int last = t->step == p->iterations;
        if (p->checkpoint_every > 0 && (t->step % p->checkpoint_every == 0) && !last) {
            if (save_checkpoint(t) != 0) { rc = -1; break; }
            tlog(t, "checkpoint at step %d", t->step);
        }
        int want = atomic_exchange(&t->sample_req, 0) ||
                   (p->sample_every > 0 && t->step % p->sample_every == 0) || last;
        if (want && write_samples(t, t->step) != 0) { rc = -1; break; }
    }
    if (rc >= 0 && t->step > 0 && save_checkpoint(t) != 0) rc = -1;
    if (rc == 0 && finish(t) != 0) rc = -1;
    if (rc == 0) {
        float ev = trainer_eval_loss(t);
        pthread_mutex_lock(&t->mu);
        t->prog.eval_loss = ev;
        pthread_mutex_unlock(&t->mu);
    }
    publish(t, rc == 0 ? TRAIN_DONE : rc == 1 ? TRAIN_CANCELLED : TRAIN_FAILED, loss,
            lr_at(p, t->step > 0 ? t->step - 1 : 0), t0, step0);
    t->result = rc;
    return rc;
}

static void *thread_main(void *arg) {
    Trainer *t = arg;
    trainer_run(t);
    return NULL;
}

int trainer_start(Trainer *t) {
    if (t->thread_started) return -1;
    if (pthread_create(&t->thread, NULL, thread_main, t) != 0) {
        snprintf(t->err, sizeof t->err, "cannot start the training thread");
        return -1;
    }
    t->thread_started = 1;
    return 0;
}

int trainer_join(Trainer *t) {
    if (!t->thread_started) return t->result;
    pthread_join(t->thread, NULL);
    t->thread_started = 0;
    return t->result;
}

void trainer_pause(Trainer *t, int paused) {
    pthread_mutex_lock(&t->mu);
    atomic_store(&t->paused, paused);
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

void trainer_cancel(Trainer *t) {
    pthread_mutex_lock(&t->mu);
    atomic_store(&t->cancel, 1);
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

void trainer_request_sample(Trainer *t) { atomic_store(&t->sample_req, 1); }
const char *trainer_run_dir(const Trainer *t) { return t->run_dir; }
const char *trainer_error(const Trainer *t) { return t->err; }
Model *trainer_model(Trainer *t) { return t->m; }

TrainProgress trainer_progress(Trainer *t) {
    pthread_mutex_lock(&t->mu);
    TrainProgress p = t->prog;
    pthread_mutex_unlock(&t->mu);
    return p;
}

/* score.c — subject fidelity and prompt adherence (see score.h, docs/metrics.md). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/adapter.h"
#include "training/pretrain.h"
#include "formats/safetensors.h"
#include "training/run_dir.h"
#include "training/score.h"

/* Backgrounds the prompts ask for, then the catch-alls. The RGB values are the
 * ones tools/emoji_dataset.c composites the training emoji on, so "blue" means
 * the blue the model was taught. */
const ScoreColour score_palette[SCORE_N_PALETTE] = {
    {"red", {220, 40, 40}},     {"green", {50, 170, 70}},    {"blue", {40, 90, 220}},
    {"yellow", {250, 220, 40}}, {"purple", {130, 60, 190}},  {"orange", {245, 140, 20}},
    {"pink", {245, 130, 190}},  {"cyan", {40, 200, 220}},    {"brown", {120, 75, 40}},
    {"white", {255, 255, 255}}, {"gray", {128, 128, 128}},   {"black", {20, 20, 20}},
};

void score_opts_default(ScoreOpts *o) {
    memset(o, 0, sizeof *o);
    o->n_colours = 6;
    o->per_colour = 1;
    o->seed = 1234;
    o->sampler = SAMPLER_DDIM;
    o->steps = 25;
    o->guidance = 5.0f;
    o->size = 0;
}

int score_opts_check(const ScoreOpts *o, char *err, size_t errlen) {
    if (o->n_colours < 1 || o->n_colours > SCORE_N_ASKED) {
        snprintf(err, errlen, "score colours = %d: use 1..%d", o->n_colours, SCORE_N_ASKED);
        return -1;
    }
    if (o->per_colour < 1 || o->per_colour > 8) {
        snprintf(err, errlen, "score samples per colour = %d: use 1..8", o->per_colour);
        return -1;
    }
    if (o->steps < 1 || o->steps > 1000) {
        snprintf(err, errlen, "score steps = %d: use 1..1000", o->steps);
        return -1;
    }
    if (!(o->guidance >= 0 && o->guidance <= 50)) {
        snprintf(err, errlen, "score guidance = %g: use 0..50", o->guidance);
        return -1;
    }
    if (o->size < 0 || o->size > 4096) {
        snprintf(err, errlen, "score size = %d: use 0 (the model's) or a pixel size", o->size);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------- image metrics --- */

void score_border_median(const Image *im, unsigned char rgb[3]) {
    int side = im->w < im->h ? im->w : im->h;
    int bw = side / 16 > 1 ? side / 16 : 1;
    int count[3][256];
    memset(count, 0, sizeof count);
    int n = 0;
    for (int y = 0; y < im->h; y++)
        for (int x = 0; x < im->w; x++) {
            if (x >= bw && x < im->w - bw && y >= bw && y < im->h - bw) continue;
            const unsigned char *p = im->px + ((size_t)y * im->w + x) * im->c;
            for (int k = 0; k < 3; k++) count[k][p[im->c >= 3 ? k : 0]]++;
            n++;
        }
    /* the ceil(n/2)-th smallest value of each channel */
    int want = (n + 1) / 2;
    for (int k = 0; k < 3; k++) {
        int acc = 0, v = 0;
        for (; v < 255; v++) {
            acc += count[k][v];
            if (acc >= want) break;
        }
        rgb[k] = (unsigned char)v;
    }
}

static int dist2(const unsigned char *a, const unsigned char *b) {
    int d0 = a[0] - b[0], d1 = a[1] - b[1], d2 = a[2] - b[2];
    return d0 * d0 + d1 * d1 + d2 * d2;
}

int score_nearest_colour(const unsigned char rgb[3]) {
    int best = 0, bd = INT_MAX;
    for (int i = 0; i < SCORE_N_PALETTE; i++) {
        int d = dist2(rgb, score_palette[i].rgb);
        if (d < bd) { bd = d; best = i; }
    }
    return best;
}

int score_adherent(const Image *im, int asked) {
    unsigned char bg[3];
    score_border_median(im, bg);
    return score_nearest_colour(bg) == asked;
}

int score_subject(const Image *im, ScoreSubject *s) {
    memset(s, 0, sizeof *s);
    if (!im || !im->px || im->c != 3) return -1;
    Image r = {0};
    if (image_center_crop_resize(im, SCORE_SIZE, &r) != 0) return -1;
    memcpy(s->px, r.px, sizeof s->px);
    score_border_median(&r, s->bg);
    image_free(&r);
    for (int i = 0; i < SCORE_SIZE * SCORE_SIZE; i++)
        if (dist2(s->px + 3 * i, s->bg) > SCORE_FG_DIST * SCORE_FG_DIST) s->fg_pixels++;
    return 0;
}

void score_describe(const ScoreSubject *s, const unsigned char *also_bg, ScoreDesc *d) {
    memset(d, 0, sizeof *d);
    const int L = SCORE_HIST_LEVELS, G = SCORE_SHAPE_GRID, cell = SCORE_SIZE / SCORE_SHAPE_GRID;
    const int T2 = SCORE_FG_DIST * SCORE_FG_DIST;
    for (int y = 0; y < SCORE_SIZE; y++)
        for (int x = 0; x < SCORE_SIZE; x++) {
            const unsigned char *p = s->px + ((size_t)y * SCORE_SIZE + x) * 3;
            if (dist2(p, s->bg) <= T2 || (also_bg && dist2(p, also_bg) <= T2)) continue;
            int bin = (p[0] * L / 256) * L * L + (p[1] * L / 256) * L + p[2] * L / 256;
            d->hist[bin] += 1.0f;
            d->shape[(y / cell) * G + x / cell] += 1.0f;
            d->fg_pixels++;
        }
    if (d->fg_pixels > 0)
        for (int i = 0; i < L * L * L; i++) d->hist[i] /= (float)d->fg_pixels;
    for (int i = 0; i < G * G; i++) d->shape[i] /= (float)(cell * cell);
}

float score_desc_similarity(const ScoreDesc *a, const ScoreDesc *b) {
    if (a->fg_pixels == 0 || b->fg_pixels == 0) return 0.0f;
    const int NB = SCORE_HIST_LEVELS * SCORE_HIST_LEVELS * SCORE_HIST_LEVELS;
    const int NS = SCORE_SHAPE_GRID * SCORE_SHAPE_GRID;
    double hist = 0, mn = 0, mx = 0;
    for (int i = 0; i < NB; i++) hist += fminf(a->hist[i], b->hist[i]);
    for (int i = 0; i < NS; i++) {
        mn += fminf(a->shape[i], b->shape[i]);
        mx += fmaxf(a->shape[i], b->shape[i]);
    }
    double shape = mx > 0 ? mn / mx : 0;
    double s = 0.5 * hist + 0.5 * shape;
    return (float)(s < 0 ? 0 : s > 1 ? 1 : s);
}

float score_pair(const ScoreSubject *a, const ScoreSubject *b) {
    ScoreDesc da, db;
    score_describe(a, b->bg, &da);
    score_describe(b, a->bg, &db);
    return score_desc_similarity(&da, &db);
}

float score_fidelity(const Image *sample, const ScoreSubject *subjects, int n) {
    ScoreSubject s;
    if (score_subject(sample, &s) != 0) return 0.0f;
    float best = 0.0f;
    for (int i = 0; i < n; i++) {
        float v = score_pair(&s, &subjects[i]);
        if (v > best) best = v;
    }
    return best;
}

/* ------------------------------------------------------------ sampling --- */

void score_prompt(const char *instance_prompt, int c, char *out, size_t outlen) {
    snprintf(out, outlen, "%s on a %s background", instance_prompt, score_palette[c].name);
}

#define SCORE_BATCH 8

int score_generate(Model *m, const char *const *prompts, int n, const ScoreOpts *o, uint64_t seed,
                   Image *tiles, char *err, size_t errlen) {
    if (score_opts_check(o, err, errlen) != 0) return -1;
    Backend *be = m->be;
    int px = o->size > 0 ? o->size : m->ucfg.sample_size * m->pixel_scale;
    int cell = model_cell(m);
    if (px % cell != 0) {
        snprintf(err, errlen, "sample size %d: must be a multiple of %d for this model", px, cell);
        return -1;
    }
    if (m->channels != 3 || m->latent) {
        snprintf(err, errlen, "scoring needs a pixel-space RGB model");
        return -1;
    }
    size_t ctxn = (size_t)m->cond_floats;
    int64_t per = (int64_t)m->channels * px * px;
    float *cc = be->alloc(be, sizeof(float) * ctxn * SCORE_BATCH);
    float *cu = be->alloc(be, sizeof(float) * ctxn * SCORE_BATCH);
    float *out = malloc(sizeof(float) * (size_t)(per * SCORE_BATCH));
    int rc = -1;
    for (int i = 0; i < n; i++) tiles[i].px = NULL;
    if (!cc || !cu || !out) { snprintf(err, errlen, "out of memory for %d samples", n); goto done; }
    SamplerOpts so = {0};
    so.kind = o->sampler;
    so.steps = o->steps;
    so.guidance = o->guidance;
    for (int i0 = 0; i0 < n; i0 += SCORE_BATCH) {
        int nb = n - i0 < SCORE_BATCH ? n - i0 : SCORE_BATCH;
        for (int k = 0; k < nb; k++) {
            if (model_encode_prompt(m, prompts[i0 + k], px, cc + ctxn * k, err, errlen) != 0) goto done;
            if (model_encode_prompt(m, "", px, cu + ctxn * k, err, errlen) != 0) goto done;
        }
        so.seed = seed + (uint64_t)i0;
        if (model_generate(m, cc, cu, nb, px, &so, seed + (uint64_t)i0, NULL, out, err, errlen) != 0)
            goto done;
        for (int k = 0; k < nb; k++)
            if (image_from_chw(out + per * k, m->channels, px, px, &tiles[i0 + k]) != 0) {
                snprintf(err, errlen, "out of memory for sample images");
                goto done;
            }
    }
    rc = 0;
done:
    if (rc != 0)
        for (int i = 0; i < n; i++) image_free(&tiles[i]);
    be->free(be, cc);
    be->free(be, cu);
    free(out);
    return rc;
}

int score_load_subjects(const char (*paths)[PRESET_PATH_MAX], int n, ScoreSubject *out, char *err,
                        size_t errlen) {
    if (n < 1 || n > SCORE_MAX_SUBJECTS) {
        snprintf(err, errlen, "%d subject images: need 1..%d", n, SCORE_MAX_SUBJECTS);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        Image im = {0};
        char path[PATH_MAX];
        model_find_input(paths[i], path, sizeof path); /* a shipped demo image from anywhere */
        if (image_load(path, &im, err, errlen) != 0) return -1;
        int rc = score_subject(&im, &out[i]);
        image_free(&im);
        if (rc != 0) { snprintf(err, errlen, "%s: out of memory describing it", paths[i]); return -1; }
        if (out[i].fg_pixels == 0) {
            snprintf(err, errlen, "%s: no foreground stands out from its border colour; use a subject on a plain background",
                     paths[i]);
            return -1;
        }
    }
    return 0;
}

/* sample images a scorer allocated itself (the caller passed no tiles) */
static void free_own_tiles(Image *own, const Image *tiles, int n) {
    if (!own || own == tiles) return;
    for (int i = 0; i < n; i++) image_free(&own[i]);
    free(own);
}

/* Standard error of the mean of n values from their sum and sum of squares. */
static float mean_se(double sum, double sum2, int n) {
    return n > 1 ? (float)sqrt(fmax(0.0, (sum2 - sum * sum / n) / (n - 1)) / n) : 0.0f;
}

int score_paired_gain(const ScoreResult *r, const ScoreResult *base, float *gain, float *se) {
    int n = r->n;
    if (n < 2 || n != base->n || n > SCORE_MAX_SAMPLES) return -1;
    double sum = 0, sum2 = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)r->sample_fidelity[i] - base->sample_fidelity[i];
        sum += d;
        sum2 += d * d;
    }
    *gain = (float)(sum / n);
    *se = mean_se(sum, sum2, n);
    return 0;
}

int score_model(Model *m, const char *instance_prompt, const ScoreSubject *subjects, int n_subjects,
                const ScoreOpts *o, ScoreResult *r, Image *tiles, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    if (score_opts_check(o, err, errlen) != 0) return -1;
    int n = o->n_colours * o->per_colour;
    char (*text)[PRESET_TEXT_MAX + 64] = malloc(sizeof *text * (size_t)n);
    const char **prompts = calloc((size_t)n, sizeof *prompts);
    Image *own = tiles ? tiles : calloc((size_t)n, sizeof(Image));
    int rc = -1;
    if (!text || !prompts || !own) { snprintf(err, errlen, "out of memory"); goto done; }
    for (int i = 0; i < n; i++) {
        score_prompt(instance_prompt, i / o->per_colour, text[i], sizeof text[i]);
        prompts[i] = text[i];
    }
    if (score_generate(m, prompts, n, o, o->seed, own, err, errlen) != 0) goto done;
    double fid = 0, fid2 = 0;
    int hit = 0;
    for (int i = 0; i < n; i++) {
        float f = score_fidelity(&own[i], subjects, n_subjects);
        r->sample_fidelity[i] = f;
        fid += f;
        fid2 += (double)f * f;
        hit += score_adherent(&own[i], i / o->per_colour);
    }
    r->fidelity = (float)(fid / n);
    r->fidelity_se = mean_se(fid, fid2, n);
    r->adherence = (float)hit / (float)n;
    r->n = n;
    rc = 0;
done:
    free_own_tiles(own, tiles, n);
    free(text);
    free(prompts);
    return rc;
}

int score_run_dir(const char *run_dir, int base, Backend *be, const ScoreOpts *opts, ScoreResult *r,
                  const char *grid_png, char *err, size_t errlen) {
    char path[PATH_MAX];
    Preset p;
    if (run_preset_load(run_dir, &p, err, errlen) != 0) return -1;
    ScoreOpts o = *opts;
    if (o.size == 0) o.size = p.resolution;
    ScoreSubject *subj = calloc(SCORE_MAX_SUBJECTS, sizeof *subj);
    int n = o.n_colours * o.per_colour, rc = -1;
    Image *tiles = calloc((size_t)(n > 0 ? n : 1), sizeof(Image)), *order = NULL, grid = {0};
    Model *m = NULL;
    if (!subj || !tiles) { snprintf(err, errlen, "out of memory"); goto done; }
    if (score_load_subjects((const char (*)[PRESET_PATH_MAX])p.images, p.n_images, subj, err, errlen) != 0)
        goto done;
    m = model_open(p.model, be, err, errlen);
    if (!m) goto done;
    if (!base) {
        if (model_load_adapter(m, run_path(run_dir, RUN_ADAPTER, path, sizeof path), err, errlen) != 0)
            goto done;
    }
    if (score_model(m, p.instance_prompt, subj, p.n_images, &o, r, tiles, err, errlen) != 0) goto done;
    if (grid_png) {
        /* a column per colour, a row per seed */
        order = calloc((size_t)n, sizeof(Image));
        if (!order) { snprintf(err, errlen, "out of memory"); goto done; }
        for (int i = 0; i < n; i++) order[(i % o.per_colour) * o.n_colours + i / o.per_colour] = tiles[i];
        if (image_grid(order, n, o.n_colours, 2, &grid) != 0) {
            snprintf(err, errlen, "out of memory for the sample grid");
            goto done;
        }
        if (image_save_png(grid_png, &grid, err, errlen) != 0) goto done;
    }
    rc = 0;
done:
    for (int i = 0; tiles && i < n; i++) image_free(&tiles[i]);
    free(tiles);
    free(order);
    image_free(&grid);
    free(subj);
    model_free(m);
    return rc;
}

/* --------------------------------------------- base model vs its data --- */

/* The askable colour a caption "a <name> on a <colour> background" asks for, or -1. */
static int caption_colour(const char *cap) {
    size_t n = strlen(cap);
    for (int c = 0; c < SCORE_N_ASKED; c++) {
        char tail[64];
        int k = snprintf(tail, sizeof tail, " on a %s background", score_palette[c].name);
        if ((size_t)k < n && strcmp(cap + n - (size_t)k, tail) == 0) return c;
    }
    return -1;
}

/* the "a <name>" part of two such captions is the same */
static int same_name(const char *a, const char *b) {
    const char *ea = strstr(a, " on a "), *eb = strstr(b, " on a ");
    size_t na = ea ? (size_t)(ea - a) : strlen(a), nb = eb ? (size_t)(eb - b) : strlen(b);
    return na == nb && memcmp(a, b, na) == 0;
}

int score_dataset_pick(const PtDataset *d, int n, char *prompts, size_t promptlen, int *colour,
                       char *err, size_t errlen) {
    int *cand = malloc(sizeof(int) * (size_t)(d->n > 0 ? d->n : 1));
    if (!cand) { snprintf(err, errlen, "out of memory"); return -1; }
    int nc = 0;
    for (int i = 0; i < d->n; i++)
        if (strlen(d->captions[i]) < promptlen && caption_colour(d->captions[i]) >= 0) cand[nc++] = i;
    int rc = -1;
    if (n < 1 || nc < n) {
        snprintf(err, errlen, "the dataset has %d captions of the form \"a <name> on a <colour> "
                 "background\"; need at least %d", nc, n < 1 ? 1 : n);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        int want = i % SCORE_N_ASKED, found = -1;
        /* from an even spread over the data, the next caption with the wanted
         * colour not picked yet; any colour if none is left */
        for (int pass = 0; pass < 2 && found < 0; pass++)
            for (int k = 0; k < nc && found < 0; k++) {
                const char *cap = d->captions[cand[((int64_t)i * nc / n + k) % nc]];
                if (pass == 0 && caption_colour(cap) != want) continue;
                /* one caption per emoji: the data holds each name in two designs */
                int dup = 0;
                for (int j = 0; j < i && !dup; j++) dup = same_name(prompts + (size_t)j * promptlen, cap);
                if (!dup) found = cand[((int64_t)i * nc / n + k) % nc];
            }
        if (found < 0) { snprintf(err, errlen, "not enough distinct captions for %d samples", n); goto done; }
        snprintf(prompts + (size_t)i * promptlen, promptlen, "%s", d->captions[found]);
        colour[i] = caption_colour(d->captions[found]);
    }
    rc = 0;
done:
    free(cand);
    return rc;
}

/* The dataset's images with exactly this caption, described for comparison. */
static int caption_subjects(const PtDataset *d, const char *cap, ScoreSubject *out, int max) {
    int k = 0;
    for (int i = 0; i < d->n && k < max; i++) {
        if (strcmp(d->captions[i], cap) != 0) continue;
        Image im = {d->w, d->h, d->c, d->px + (size_t)i * d->w * d->h * d->c};
        if (score_subject(&im, &out[k]) == 0 && out[k].fg_pixels > 0) k++;
    }
    return k;
}

int score_dataset(Model *m, const PtDataset *d, const char *text, size_t promptlen, const int *colour,
                  int n, const ScoreOpts *o, ScoreDatasetResult *r, Image *tiles, char *err,
                  size_t errlen) {
    memset(r, 0, sizeof *r);
    const char **prompts = calloc((size_t)(n > 0 ? n : 1), sizeof *prompts);
    Image *own = tiles ? tiles : calloc((size_t)(n > 0 ? n : 1), sizeof(Image));
    ScoreSubject *ref = malloc(sizeof *ref * SCORE_MAX_SUBJECTS);
    int rc = -1;
    if (!prompts || !own || !ref) { snprintf(err, errlen, "out of memory"); goto done; }
    for (int i = 0; i < n; i++) prompts[i] = text + (size_t)i * promptlen;
    if (score_generate(m, prompts, n, o, o->seed, own, err, errlen) != 0) goto done;
    double named = 0, other = 0, diff2 = 0;
    for (int i = 0; i < n; i++) {
        int hit = score_adherent(&own[i], colour[i]);
        r->adherent += hit;
        r->per_colour_n[colour[i]]++;
        r->per_colour_hit[colour[i]] += hit;
        int k = caption_subjects(d, prompts[i], ref, SCORE_MAX_SUBJECTS);
        double fn = k ? score_fidelity(&own[i], ref, k) : 0.0;
        k = caption_subjects(d, prompts[(i + 1) % n], ref, SCORE_MAX_SUBJECTS);
        double fo = k ? score_fidelity(&own[i], ref, k) : 0.0;
        named += fn;
        other += fo;
        diff2 += (fn - fo) * (fn - fo);
    }
    r->n = n;
    r->fidelity_named = (float)(named / n);
    r->fidelity_other = (float)(other / n);
    r->named_gain = (float)((named - other) / n);
    r->named_gain_se = mean_se(named - other, diff2, n);
    rc = 0;
done:
    free_own_tiles(own, tiles, n);
    free(prompts);
    free(ref);
    return rc;
}

/* bench_train.c — `make bench`: time one training step (forward + backward +
 * AdamW on the adapters) of the tiny UNet at 32x32, batch 1 and 8, without
 * adapters, with KronA (attn, attn+ffn) and with LoRA at a similar parameter
 * count. Prints a table and writes it to the file given as the first argument.
 *   bench_train [OUT] [--device cpu|cuda] [--model tiny|sd15|sdxl] [--batch B[,...]]
 *               [--precision auto|fp32|tf32|bf16[,...]] [--profile]
 * --batch: the batch sizes (default tiny 1,8; SD 1); the GPU check asks tiny 1,32.
 * --precision: every row in each listed GEMM precision (core/backend.h; default
 * auto: cpu fp32, cuda tf32); "vs none" compares rows of the same precision.
 * --model sd15 / sdxl time SD 1.5 at 512x512 (64x64 latents, 77 tokens) and
 * SDXL at 1024x1024 (128x128 latents) with random weights: the step costs the
 * same as with real ones; their KronA rows are the paper's 4x64 (also factored
 * and with gradient checkpointing) and a 16x16, and a row whose memory plan
 * exceeds the free memory is skipped with the numbers. `make bench-sd` writes
 * bench/results-sd15-cpu.txt and bench/results-sdxl-cpu.txt.
 * --profile: after each row's timing, a few more steps run op by op with the
 * backend's profile on (core/backend.h), and a table of where a step's time
 * goes (ops by time, the stages each names under it) follows the main one.
 * --device cuda needs a `make cuda` build. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/backend.h"
#include "core/fmt.h"
#include "core/replay.h"
#include "flops.h"
#include "core/rng.h"
#include "models/adapter_census.h"
#include "models/unet.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct Row {
    char what[48];
    char prec[8];
    int batch;
    int64_t trainable;
    double ms_median, ms_min;
    double peak_mb;
    double gflop; /* one step's matrix products (flops.h) */
    char replay[8]; /* the UNet pass replayed as one recording (CUDA graph): yes, no, - (no such thing) */
    char *prof;     /* --profile: the row's op table (malloc'd), or NULL */
} Row;

/* dense tensor-core peaks of cards we know, TFLOP/s (datasheets); 0: unknown */
static double card_peak(const char *name, const char *prec, const char *device) {
    static const struct { const char *has; double fp32, tf32, bf16; } cards[] = {
        {"H200", 66.9, 494.7, 989.4},    {"H100 PCIe", 51.2, 378.0, 756.0},
        {"H100", 66.9, 494.7, 989.4},    {"A100", 19.5, 156.0, 312.0},
    };
    int p = backend_precision_parse(prec);
    if (p == KRONA_PREC_AUTO) p = strcmp(device, "cpu") ? KRONA_PREC_TF32 : KRONA_PREC_FP32;
    for (size_t i = 0; i < sizeof cards / sizeof cards[0]; i++)
        if (strstr(name, cards[i].has))
            return p == KRONA_PREC_BF16 ? cards[i].bf16 : p == KRONA_PREC_TF32 ? cards[i].tf32 : cards[i].fp32;
    return 0;
}

/* ---- --profile: where a step's time goes ---- */

typedef struct {
    char *s;
    size_t len, cap;
} Text;
static void text_add(Text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_add(Text *t, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (t->s && t->len + (size_t)k < t->cap) { t->len += (size_t)k; return; }
        size_t cap = (t->cap ? 2 * t->cap : 4096) + (size_t)k;
        char *g = realloc(t->s, cap);
        if (!g) return;
        t->s = g;
        t->cap = cap;
    }
}
/* rows under parent (-1: the ops) by time, most first, each followed by its own */
static void profile_lines(Text *t, const BackendProfileRow *r, int n, int parent, int steps, double total,
                          const FlopCounter *fc) {
    int kids[256], nk = 0;
    size_t pl = parent >= 0 ? strlen(r[parent].name) : 0;
    for (int i = 0; i < n && nk < 256; i++) {
        int under = parent < 0 ? r[i].depth == 0
                               : r[i].depth == r[parent].depth + 1 && !strncmp(r[i].name, r[parent].name, pl) &&
                                     r[i].name[pl] == '/';
        if (!under) continue;
        int k = nk++;
        while (k > 0 && r[kids[k - 1]].ms < r[i].ms) { kids[k] = kids[k - 1]; k--; }
        kids[k] = i;
    }
    for (int k = 0; k < nk; k++) {
        const BackendProfileRow *x = &r[kids[k]];
        const char *leaf = parent >= 0 ? x->name + pl + 1 : x->name;
        char label[80];
        snprintf(label, sizeof label, "%*s%s", 2 * x->depth, "", leaf);
        double fl = x->depth == 0 ? fc_flops_of(fc, x->name) : -1; /* GFLOP per ms = TFLOP/s */
        char tfs[16] = "";
        if (fl >= 0 && x->ms > 0) snprintf(tfs, sizeof tfs, "%.2f", fl / 1e9 / x->ms);
        text_add(t, "  %-30s %9.1f %10.3f %7.1f%% %10.1f %8s\n", label, (double)x->calls / steps, x->ms / steps,
                 total > 0 ? 100.0 * x->ms / total : 0.0, x->calls ? 1e3 * x->ms / (double)x->calls : 0.0, tfs);
        profile_lines(t, r, n, kids[k], steps, total, fc);
    }
}
static char *profile_text(const BackendProfileRow *r, int n, int steps, double wall_ms, const char *title,
                          const FlopCounter *fc) {
    Text t = {0};
    double total = 0;
    for (int i = 0; i < n; i++)
        if (r[i].depth == 0) total += r[i].ms;
    text_add(&t, "%s: %d step%s op by op; per step: ops %.2f ms, wall %.2f ms\n", title, steps,
             steps == 1 ? "" : "s", total / steps, wall_ms / steps);
    text_add(&t, "  %-30s %9s %10s %8s %10s %8s\n", "op / stage", "calls", "ms", "% ops", "us/call", "TFLOP/s");
    profile_lines(&t, r, n, -1, steps, total, fc);
    return t.s;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static char device_desc[128]; /* the card's name, for the table's header */

/* the step's device part, as the trainer's (core/replay.h): forward, the
 * loss's gradient, backward */
typedef struct {
    UNet *u;
    const float *x, *t, *ctx, *added, *tgt;
    float *y, *dy, *dxin;
    int B, H, W, L;
    int64_t n;
    AdapterSet *set;  /* the adapters trained, or NULL */
    float *mu, *vu;   /* all weights trained (pretraining's step): AdamW's moments, or NULL */
    int64_t nbase;
} Pass;

static int pass(void *user) {
    Pass *p = user;
    Backend *be = unet_backend(p->u);
    if (unet_forward(p->u, p->x, p->t, p->ctx, p->added, p->y, p->B, p->H, p->W, p->L, 1) != 0) return -1;
    be->zero(be, p->dy, sizeof(float) * (size_t)p->n);
    be->mse_bwd(be, p->y, p->tgt, p->dy, p->n, 1.0f);
    /* without adapters nothing upstream needs a gradient and the UNet would stop
     * its backward early: ask for d input so the row is the whole backward,
     * as its name says (and as PyTorch's reference row computes) */
    return unet_backward(p->u, p->dy, p->dxin);
}

/* one training step in the trainer's order: zero the gradients, the pass
 * (through rp, or op by op when rp is NULL), the loss, AdamW as step t */
static int step(Pass *p, Replay *rp, int t) {
    Backend *be = unet_backend(p->u);
    if (p->set) adapter_set_zero_grad(p->set);
    if (p->mu) unet_zero_grad(p->u);
    if ((rp ? replay_run(be, rp, pass, p) : pass(p)) != 0) return -1;
    be->mse_fwd(be, p->y, p->tgt, p->n); /* the trainer reads the loss after the backward */
    if (p->set) adapter_set_adamw(p->set, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
    if (p->mu)
        be->adamw(be, unet_weight_block(p->u), unet_grad_block(p->u), p->mu, p->vu, p->nbase, 1e-4f, 0.9f, 0.999f,
                  1e-8f, 0.01f, t);
    return 0;
}

static int run(const char *device, const char *prec, const char *model, const char *what,
               const AdapterSpec *spec, int ckpt, int base, int factored, int B, int reps, int profile,
               Row *row) {
    char err[512];
    row->prof = NULL;
    Backend *dev = backend_open(device, err, sizeof err);
    if (!dev) { fprintf(stderr, "bench_train: %s\n", err); return -1; }
    FlopCounter *fc = flop_counter(dev);
    if (!fc) { backend_destroy(dev); return -1; }
    Backend *be = &fc->be; /* the model runs on the counter; dev is destroyed */
    snprintf(device_desc, sizeof device_desc, "%s", be->device_name(be));
    snprintf(row->prec, sizeof row->prec, "%s", prec);
    if (backend_set_precision(be, prec, err, sizeof err) != 0) {
        fprintf(stderr, "bench_train: %s\n", err);
        backend_destroy(dev);
        free(fc);
        return -1;
    }
    if (factored && adapter_merge_mode(be->precision(be)) == ADAPTER_FACTORED) {
        backend_destroy(dev); /* this precision never merges: the plain KronA row is this one */
        free(fc);
        return 2;
    }
    UNetConfig cfg;
    unet_config_builtin(model, &cfg);
    int tiny = !strcmp(model, "tiny");
    int H = cfg.sample_size, W = cfg.sample_size, L = tiny ? 32 : 77, C = cfg.in_channels;
    {   /* weights + the activation plan against the free memory: skip what cannot fit */
        int64_t act = 0, tmp = 0, grd = 0, wts = 0;
        UNetParam *ps = NULL;
        UNetLinear *ls = NULL;
        int np = 0, nl = 0;
        unet_param_table(&cfg, &ps, &np, &ls, &nl);
        for (int i = 0; i < np; i++) wts += ps[i].numel * 4;
        free(ps); free(ls);
        unet_memory_plan(&cfg, B, H, W, L, 1, base, ckpt, &act, &tmp, &grd);
        if (base) wts *= 4; /* and their gradients and AdamW's two moments */
        double need = (double)(wts + act + tmp + grd);
        size_t fr = be->free_bytes ? be->free_bytes(be) : 0;
        if (fr && need > 0.95 * (double)fr) {
            fprintf(stderr, "bench_train: %s: skipped, needs about %.1f GB (weights %.1f, activations "
                    "%.1f), %.1f GB free\n", what, need / 1e9, wts / 1e9, (act + tmp + grd) / 1e9, fr / 1e9);
            snprintf(row->what, sizeof row->what, "%s", what);
            row->batch = B;
            row->trainable = -1;
            row->peak_mb = need / 1048576.0;
            backend_destroy(dev);
            free(fc);
            return 1;
        }
    }
    UNet *u = unet_create(&cfg, be, err, sizeof err);
    if (!u) { fprintf(stderr, "%s\n", err); backend_destroy(dev); free(fc); return -1; }
    unet_init_random(u, 1);
    AdapterSpec sp = spec ? *spec : (AdapterSpec){0};
    /* as the trainer: fp32 merges where cheaper; a `factored` row never does */
    sp.merged = factored ? ADAPTER_FACTORED : adapter_merge_mode(be->precision(be));
    if (spec && unet_attach_adapters(u, &sp, 2, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        unet_free(u);
        backend_destroy(dev);
        free(fc);
        return -1;
    }
    unet_set_checkpointing(u, ckpt);
    /* every weight trained (pretraining's step): their gradients, one AdamW over the block */
    int64_t nbase = 0;
    float *mu = NULL, *vu = NULL;
    if (base) {
        unet_set_base_trainable(u, 1);
        nbase = unet_n_base_params(u);
        mu = be->alloc(be, sizeof(float) * (size_t)nbase);
        vu = be->alloc(be, sizeof(float) * (size_t)nbase);
    }
    int D = cfg.cross_attention_dim;
    /* SDXL's added conditioning: pooled text embedding, then 6 time ids */
    int P = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim;
    int64_t n_added = cfg.addition_time_embed_dim ? (int64_t)B * (P + 6) : 0;
    int64_t n = (int64_t)B * C * H * W;
    Rng r;
    rng_seed(&r, 3);
    float *hx = malloc(sizeof(float) * (size_t)n), *hc = malloc(sizeof(float) * (size_t)B * L * D);
    float ht[64];
    rng_fill_normal(&r, hx, n);
    rng_fill_normal(&r, hc, (int64_t)B * L * D);
    for (int b = 0; b < B; b++) ht[b] = (float)(100 + 97 * b);
    float *x = be->alloc(be, sizeof(float) * (size_t)n), *y = be->alloc(be, sizeof(float) * (size_t)n);
    float *tgt = be->alloc(be, sizeof(float) * (size_t)n), *dy = be->alloc(be, sizeof(float) * (size_t)n);
    float *ctx = be->alloc(be, sizeof(float) * (size_t)B * L * D), *t = be->alloc(be, sizeof(float) * 64);
    be->upload(be, x, hx, sizeof(float) * (size_t)n);
    be->upload(be, tgt, hx, sizeof(float) * (size_t)n);
    be->upload(be, ctx, hc, sizeof(float) * (size_t)B * L * D);
    be->upload(be, t, ht, sizeof(float) * (size_t)B);
    float *added = NULL;
    if (n_added) {
        float *ha = malloc(sizeof(float) * (size_t)n_added);
        rng_fill_normal(&r, ha, n_added);
        for (int b = 0; b < B; b++) {
            float ids[6] = {1024, 1024, 0, 0, 1024, 1024};
            memcpy(ha + (int64_t)b * (P + 6) + P, ids, sizeof ids);
        }
        added = be->alloc(be, sizeof(float) * (size_t)n_added);
        be->upload(be, added, ha, sizeof(float) * (size_t)n_added);
        free(ha);
    }
    AdapterSet *set = unet_adapters(u);
    int na = set ? set->n : 0;
    float *dxin = na || base ? NULL : be->alloc(be, sizeof(float) * (size_t)n);
    double *times = malloc(sizeof(double) * (size_t)reps);
    /* SD on the CPU: minutes per step; a backend that records does so in a third */
    int warm = (tiny || strcmp(device, "cpu") ? 2 : 1) + (be->record_begin ? 1 : 0);
    Pass ps = {u, x, t, ctx, added, tgt, y, dy, dxin, B, H, W, L, n, na ? set : NULL, mu, vu, nbase};
    Replay rp = {0};
    double flops = 0; /* counted where the ops ran one by one (a replay calls none) */
    int failed = 0;
    for (int it = -warm; it < reps && !failed; it++) { /* warm-up steps first */
        double t0 = now_s();
        fc_reset(fc);
        if (step(&ps, &rp, it + 3) != 0) { /* e.g. out of device memory: say why, skip the row */
            fprintf(stderr, "bench_train: %s: %s\n", what, unet_last_error(u));
            failed = 1; /* everything below is freed all the same: the next row gets the device back */
            break;
        }
        be->sync(be);
        if (fc->flops > flops) flops = fc->flops;
        if (it >= 0) times[it] = (now_s() - t0) * 1000.0;
    }
    snprintf(row->replay, sizeof row->replay, "%s", !be->record_begin ? "-" : rp.replays >= reps ? "yes" : "no");
    if (be->record_begin && replay_off(&rp)) fprintf(stderr, "bench_train: %s: not recorded: %s\n", what, rp.why);
    replay_free(be, &rp);
    if (profile && !be->profile) fprintf(stderr, "bench_train: --profile: the %s backend has no profile\n", be->name);
    if (!failed && profile && be->profile && be->profile(be, 1) == 0) {
        /* the timed step's ops, one by one (a replay would be one row) */
        int steps = !tiny && !strcmp(device, "cpu") ? 1 : 3, ok = 1;
        fc_reset(fc);
        double t0 = now_s();
        for (int it = 0; it < steps && ok; it++) ok = step(&ps, NULL, reps + 3 + it) == 0;
        be->sync(be);
        double wall = (now_s() - t0) * 1000.0;
        be->profile(be, 0);
        BackendProfileRow pr[256];
        int np = be->profile_rows(be, pr, 256);
        char title[160];
        snprintf(title, sizeof title, "profile, %s, %s, batch %d", what, prec, B);
        if (ok) row->prof = profile_text(pr, np < 256 ? np : 256, steps, wall, title, fc);
    }
    if (!failed) qsort(times, (size_t)reps, sizeof(double), cmp_d);
    snprintf(row->what, sizeof row->what, "%s", what);
    row->batch = B;
    row->trainable = base ? nbase : set ? adapter_set_param_count(set) : 0;
    row->ms_median = failed ? 0 : times[reps / 2];
    row->ms_min = failed ? 0 : times[0];
    row->peak_mb = be->peak_bytes(be) / 1048576.0;
    row->gflop = flops / 1e9;
    free(times); free(hx); free(hc);
    be->free(be, x); be->free(be, y); be->free(be, tgt); be->free(be, dy); be->free(be, ctx); be->free(be, t);
    if (dxin) be->free(be, dxin);
    if (mu) be->free(be, mu);
    if (vu) be->free(be, vu);
    if (added) be->free(be, added);
    unet_free(u);
    backend_destroy(dev);
    free(fc);
    return failed ? -1 : 0;
}

int main(int argc, char **argv) {
    const char *out = "bench/results.txt", *device = "cpu", *model = "tiny", *precs = "auto";
    const char *batch_list = NULL;
    int profile = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--device") && v) device = argv[++i];
        else if (!strcmp(a, "--model") && v) model = argv[++i];
        else if (!strcmp(a, "--batch") && v) batch_list = argv[++i];
        else if (!strcmp(a, "--precision") && v) precs = argv[++i];
        else if (!strcmp(a, "--profile")) profile = 1;
        else if (a[0] != '-') out = a;
        else {
            fprintf(stderr, "usage: bench_train [OUT] [--device cpu|cuda] [--model tiny|sd15|sdxl] [--batch B[,...]] "
                    "[--precision auto|fp32|tf32|bf16[,...]] [--profile]\n");
            return 2;
        }
    }
    UNetConfig cfg;
    if (unet_config_builtin(model, &cfg) != 0) {
        fprintf(stderr, "bench_train: --model %s: use tiny, sd15 or sdxl\n", model);
        return 2;
    }
    char err[256];
    Backend *probe = backend_open(device, err, sizeof err); /* each row makes its own: own peak */
    if (!probe) { fprintf(stderr, "bench_train: %s\n", err); return 2; }
    backend_destroy(probe);
    int tiny = !strcmp(model, "tiny");
    /* tiny: the default preset's 4x4; SD: the paper's large factors (a1 4, a2 64),
     * small factors blow B up at SD widths */
    AdapterSpec krona = {.kind = ADAPTER_KRONA, .a1 = 4, .a2 = tiny ? 4 : 64, .alpha = 1, .modules = ADAPT_ATTN};
    AdapterSpec krona16 = {.kind = ADAPTER_KRONA, .a1 = 16, .a2 = 16, .alpha = 1, .modules = ADAPT_ATTN};
    AdapterSpec krona_ffn = krona;
    krona_ffn.modules = ADAPT_ATTN | ADAPT_FFN;
    /* LoRA rank with about KronA's parameter count */
    AdapterCensus census;
    if (adapter_census(&cfg, &krona, &census) != 0 || !census.ok) {
        fprintf(stderr, "bench_train: %s\n", census.err);
        adapter_census_free(&census);
        return 2;
    }
    int64_t per_rank = 0; /* a LoRA rank costs d_in + d_out per adapted linear */
    for (int i = 0; i < census.n_layers; i++) per_rank += census.layers[i].d_out + census.layers[i].d_in;
    int rank = (int)fmax(1.0, round((double)census.trainable / (double)per_rank));
    adapter_census_free(&census);
    AdapterSpec lora = {.kind = ADAPTER_LORA, .rank = rank, .alpha = (float)rank, .modules = ADAPT_ATTN};
    char kname[48], kfname[48], lname[48];
    snprintf(kname, sizeof kname, "KronA %dx%d attn", krona.a1, krona.a2);
    snprintf(kfname, sizeof kfname, "KronA %dx%d attn+ffn", krona.a1, krona.a2);
    snprintf(lname, sizeof lname, "LoRA r=%d attn", rank);

    char kcname[48];
    snprintf(kcname, sizeof kcname, "%s, ckpt", kname);
    char kfacname[48], k16name[48];
    snprintf(k16name, sizeof k16name, "KronA %dx%d attn", krona16.a1, krona16.a2);
    snprintf(kfacname, sizeof kfacname, "%s, factored", kname);
    struct { const char *what; const AdapterSpec *spec; int ckpt, base, factored; } cases[] = {
        {"no adapter (fwd+bwd)", NULL, 0, 0, 0},
        {kname, &krona, 0, 0, 0},
        {kfname, &krona_ffn, 0, 0, 0},
        {lname, &lora, 0, 0, 0},
        {kcname, &krona, 1, 0, 0},
        {"all weights (pretrain)", NULL, 0, 1, 0},
        {kfacname, &krona, 0, 0, 1},
        {k16name, &krona16, 0, 0, 0},
    };
    int batches[4] = {1, 8}, nb = tiny ? 2 : 1; /* SD: batch 1, as in the figures to beat */
    if (batch_list) {
        nb = 0;
        for (const char *q = batch_list; *q;) {
            char *end;
            long b = strtol(q, &end, 10);
            if (end == q || b < 1 || b > 4096 || (*end && *end != ',') || nb == 4) {
                fprintf(stderr, "bench_train: --batch %s: up to 4 sizes from 1 to 4096, comma-separated\n", batch_list);
                return 2;
            }
            batches[nb++] = (int)b;
            q = *end ? end + 1 : end;
        }
    }
    char plist[4][8];
    int np = 0;
    for (const char *q = precs; *q && np < 4;) {
        size_t l = strcspn(q, ",");
        snprintf(plist[np], sizeof plist[np], "%.*s", (int)(l < 7 ? l : 7), q);
        if (backend_precision_parse(plist[np]) == -2) {
            fprintf(stderr, "bench_train: --precision %s: use auto, fp32, tf32 or bf16 (comma-separated)\n", plist[np]);
            return 2;
        }
        np++;
        q += l + (q[l] == ',');
    }
    Row rows[4 * 4 * 8]; /* precisions x batches x cases */
    int nr = 0, failed = 0;
    /* SD: no adapter, KronA attn (the paper's 4x64, also factored and with gradient
     * checkpointing; a 16x16) */
    int pick_tiny[] = {0, 1, 6, 2, 3, 5}, pick_sd[] = {0, 1, 6, 7, 4};
    int *pick = tiny ? pick_tiny : pick_sd, nc = tiny ? 6 : 5;
    for (int pi = 0; pi < np; pi++)
        for (int b = 0; b < nb; b++)
            for (int k = 0; k < nc; k++) {
                int c = pick[k];
                int reps = batches[b] == 1 ? 20 : 6;
                if (!tiny && !strcmp(device, "cpu")) reps = 2; /* minutes per step there */
                int rc = run(device, plist[pi], model, cases[c].what, cases[c].spec, cases[c].ckpt, cases[c].base,
                             cases[c].factored, batches[b], reps, profile, &rows[nr]);
                if (rc == 0 || rc == 1) nr++;
                if (rc < 0) failed = 1;
            }
    char day[16];
    time_t now = time(NULL);
    strftime(day, sizeof day, "%Y-%m-%d", localtime(&now));

    char buf[16384];
    size_t len = 0;
    len += (size_t)snprintf(buf + len, sizeof buf - len,
                            "krona-studio bench: one training step, %s UNet, %dx%d %s, %d tokens, %s backend\n"
                            "(%s, %s)\n"
                            "%-26s %5s %5s %10s %12s %10s %10s %9s %8s %8s %7s %6s\n",
                            model, cfg.sample_size, cfg.sample_size, tiny ? "RGB" : "latents",
                            tiny ? 32 : 77, device, device_desc, day, "adapter", "math", "batch",
                            "trainable", "median ms", "min ms", "peak MB", "vs none", "GFLOP", "TFLOP/s",
                            "% peak", "replay");
    for (int i = 0; i < nr; i++)
        if (rows[i].trainable < 0) /* skipped: the plan did not fit */
            len += (size_t)snprintf(buf + len, sizeof buf - len, "%-26s %5s %5d %10s %12s %10s %10.1f  (planned; more than the free memory)\n",
                                    rows[i].what, rows[i].prec, rows[i].batch, "-", "skipped", "-", rows[i].peak_mb);
        else {
            /* the step's cost over the no-adapter row of the same batch (issue 13's overhead) */
            char over[16] = "-";
            for (int j = 0; j < nr; j++)
                if (j != i && rows[j].batch == rows[i].batch && rows[j].trainable == 0 &&
                    !strcmp(rows[j].prec, rows[i].prec) &&
                    rows[i].trainable > 0 && rows[j].ms_median > 0)
                    snprintf(over, sizeof over, "%+.0f%%", 100.0 * (rows[i].ms_median / rows[j].ms_median - 1.0));
            double tfs = rows[i].gflop / rows[i].ms_median; /* GFLOP per ms = TFLOP/s */
            double pk = card_peak(device_desc, rows[i].prec, device);
            char share[16] = "-";
            if (pk > 0) snprintf(share, sizeof share, "%.1f%%", 100.0 * tfs / pk);
            len += (size_t)snprintf(buf + len, sizeof buf - len, "%-26s %5s %5d %10lld %12.1f %10.1f %10.1f %9s %8.1f %8.2f %7s %6s\n",
                                    rows[i].what, rows[i].prec, rows[i].batch, (long long)rows[i].trainable, rows[i].ms_median,
                                    rows[i].ms_min, rows[i].peak_mb, over, rows[i].gflop, tfs, share, rows[i].replay);
        }
    fputs(buf, stdout);
    FILE *f = fopen(out, "w");
    if (!f) { fprintf(stderr, "cannot write %s\n", out); return 1; }
    fputs(buf, f);
    for (int i = 0; i < nr; i++)
        if (rows[i].prof) {
            printf("\n%s", rows[i].prof);
            fprintf(f, "\n%s", rows[i].prof);
            free(rows[i].prof);
        }
    fclose(f);
    printf("written to %s\n", out);
    return failed;
}

/* bench_train.c — `make bench`: time one training step (forward + backward +
 * AdamW on the adapters) of the tiny UNet at 32x32, batch 1 and 8, without
 * adapters, with KronA (attn, attn+ffn) and with LoRA at a similar parameter
 * count. Prints a table and writes it to the file given as argv[1]. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "rng.h"
#include "unet.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct Row {
    char what[48];
    int batch;
    int64_t trainable;
    double ms_median, ms_min;
    double peak_mb;
} Row;

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int run(const char *what, const AdapterSpec *spec, int B, int reps, Row *row) {
    char err[512];
    Backend *be = backend_cpu_create();
    UNetConfig cfg;
    unet_config_builtin("tiny", &cfg);
    UNet *u = unet_create(&cfg, be, err, sizeof err);
    if (!u) { fprintf(stderr, "%s\n", err); return -1; }
    unet_init_random(u, 1);
    if (spec && unet_attach_adapters(u, spec, 2, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    int H = 32, W = 32, L = 32, C = cfg.in_channels, D = cfg.cross_attention_dim;
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
    AdapterSet *set = unet_adapters(u);
    int na = set ? set->n : 0;
    float **m = calloc((size_t)(2 * na + 1), sizeof(float *)), **v = calloc((size_t)(2 * na + 1), sizeof(float *));
    for (int i = 0; i < na; i++)
        for (int w = 0; w < 2; w++) {
            m[2 * i + w] = be->alloc(be, sizeof(float) * (size_t)(w ? adapter_numel_B(&set->items[i]) : adapter_numel_A(&set->items[i])));
            v[2 * i + w] = be->alloc(be, sizeof(float) * (size_t)(w ? adapter_numel_B(&set->items[i]) : adapter_numel_A(&set->items[i])));
        }
    double *times = malloc(sizeof(double) * (size_t)reps);
    for (int it = -2; it < reps; it++) { /* two warm-up steps */
        double t0 = now_s();
        for (int i = 0; i < na; i++) {
            Adapter *a = &set->items[i];
            be->zero(be, a->dA, sizeof(float) * (size_t)adapter_numel_A(a));
            be->zero(be, a->dB, sizeof(float) * (size_t)adapter_numel_B(a));
        }
        unet_forward(u, x, t, ctx, NULL, y, B, H, W, L, 1);
        be->mse_fwd(be, y, tgt, n);
        be->zero(be, dy, sizeof(float) * (size_t)n);
        be->mse_bwd(be, y, tgt, dy, n, 1.0f);
        unet_backward(u, dy, NULL);
        for (int i = 0; i < na; i++) {
            Adapter *a = &set->items[i];
            be->adamw(be, a->A, a->dA, m[2 * i], v[2 * i], adapter_numel_A(a), 1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, it + 3);
            be->adamw(be, a->B, a->dB, m[2 * i + 1], v[2 * i + 1], adapter_numel_B(a), 1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, it + 3);
        }
        be->sync(be);
        if (it >= 0) times[it] = (now_s() - t0) * 1000.0;
    }
    qsort(times, (size_t)reps, sizeof(double), cmp_d);
    snprintf(row->what, sizeof row->what, "%s", what);
    row->batch = B;
    row->trainable = set ? adapter_set_param_count(set) : 0;
    row->ms_median = times[reps / 2];
    row->ms_min = times[0];
    row->peak_mb = be->peak_bytes(be) / 1048576.0;
    for (int i = 0; i < 2 * na; i++) { be->free(be, m[i]); be->free(be, v[i]); }
    free(m); free(v); free(times); free(hx); free(hc);
    be->free(be, x); be->free(be, y); be->free(be, tgt); be->free(be, dy); be->free(be, ctx); be->free(be, t);
    unet_free(u);
    backend_destroy(be);
    return 0;
}

int main(int argc, char **argv) {
    const char *out = argc > 1 ? argv[1] : "bench/results.txt";
    AdapterSpec krona = {.kind = ADAPTER_KRONA, .a1 = 4, .a2 = 4, .alpha = 1, .modules = ADAPT_ATTN};
    AdapterSpec krona_ffn = krona;
    krona_ffn.modules = ADAPT_ATTN | ADAPT_FFN;
    /* LoRA rank with about KronA(4,4)'s parameter count */
    UNetConfig cfg;
    unet_config_builtin("tiny", &cfg);
    UNetParam *params;
    UNetLinear *lin;
    int np, nl;
    unet_param_table(&cfg, &params, &np, &lin, &nl);
    int64_t kp = 0, per_rank = 0;
    for (int i = 0; i < nl; i++) {
        if (!adapter_selects(&krona, lin[i].is_attn, lin[i].is_ffn)) continue;
        kp += adapter_param_count(&krona, lin[i].d_out, lin[i].d_in);
        per_rank += lin[i].d_out + lin[i].d_in;
    }
    free(params);
    free(lin);
    int rank = (int)fmax(1.0, round((double)kp / (double)per_rank));
    AdapterSpec lora = {.kind = ADAPTER_LORA, .rank = rank, .alpha = (float)rank, .modules = ADAPT_ATTN};
    char lname[48];
    snprintf(lname, sizeof lname, "LoRA r=%d attn", rank);

    struct { const char *what; const AdapterSpec *spec; } cases[] = {
        {"no adapter (fwd+bwd)", NULL},
        {"KronA 4x4 attn", &krona},
        {"KronA 4x4 attn+ffn", &krona_ffn},
        {lname, &lora},
    };
    int batches[2] = {1, 8};
    Row rows[8];
    int nr = 0;
    for (int b = 0; b < 2; b++)
        for (int c = 0; c < 4; c++)
            if (run(cases[c].what, cases[c].spec, batches[b], batches[b] == 1 ? 20 : 6, &rows[nr]) == 0) nr++;

    char buf[4096];
    size_t len = 0;
    len += (size_t)snprintf(buf + len, sizeof buf - len,
                            "krona-studio bench: one training step, tiny UNet (32/64/64), 32x32 RGB, 32 tokens, CPU backend\n"
                            "%-24s %5s %10s %12s %10s %10s\n", "adapter", "batch", "trainable",
                            "median ms", "min ms", "peak MB");
    for (int i = 0; i < nr; i++)
        len += (size_t)snprintf(buf + len, sizeof buf - len, "%-24s %5d %10lld %12.1f %10.1f %10.1f\n",
                                rows[i].what, rows[i].batch, (long long)rows[i].trainable, rows[i].ms_median,
                                rows[i].ms_min, rows[i].peak_mb);
    fputs(buf, stdout);
    FILE *f = fopen(out, "w");
    if (!f) { fprintf(stderr, "cannot write %s\n", out); return 1; }
    fputs(buf, f);
    fclose(f);
    printf("written to %s\n", out);
    return 0;
}

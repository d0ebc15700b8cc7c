/* bench_ops.c — best-of-N timings of CPU ops: attention on the shapes the
 * tiny UNet and an SD-like UNet use, and (bench_ops conv) 3x3 convolutions of
 * the SD VAE at 512x512 and of SD 1.5's UNet at 64x64 latents, forward and
 * backward (dx, dw, db), with the backend's peak_bytes (which counts its im2col
 * scratch). Usage: bench_ops [reps] | bench_ops conv [reps] */
#include "core/backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static float *rnd(Backend *be, int64_t n, unsigned *s) {
    float *p = be->alloc(be, sizeof(float) * n);
    for (int64_t i = 0; i < n; i++) {
        *s = *s * 1664525u + 1013904223u;
        p[i] = ((*s >> 8) * (1.f / 16777216.f) - 0.5f) * 3.f;
    }
    return p;
}

static void bench(Backend *be, const char *what, int N, int Lq, int Lk, int H, int D, int causal, int reps) {
    unsigned s = 1;
    int64_t nq = (int64_t)N * Lq * H * D, nk = (int64_t)N * Lk * H * D;
    float *q = rnd(be, nq, &s), *k = rnd(be, nk, &s), *v = rnd(be, nk, &s), *dout = rnd(be, nq, &s);
    float *o = be->alloc(be, sizeof(float) * nq), *lse = be->alloc(be, sizeof(float) * N * H * Lq);
    float *dq = be->alloc(be, sizeof(float) * nq), *dk = be->alloc(be, sizeof(float) * nk);
    float *dv = be->alloc(be, sizeof(float) * nk);
    float scale = 1.f / sqrtf((float)D);
    double bf = 1e30, bb = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_ms();
        be->attention_fwd(be, q, k, v, o, lse, N, Lq, Lk, H, D, scale, causal);
        double t1 = now_ms();
        be->attention_bwd(be, dout, q, k, v, o, lse, dq, dk, dv, N, Lq, Lk, H, D, scale, causal);
        double t2 = now_ms();
        if (t1 - t0 < bf) bf = t1 - t0;
        if (t2 - t1 < bb) bb = t2 - t1;
    }
    printf("%-28s N=%d Lq=%5d Lk=%5d H=%d D=%3d%s  fwd %8.3f ms  bwd %8.3f ms\n", what, N, Lq, Lk, H, D,
           causal ? " causal" : "", bf, bb);
    be->free(be, q); be->free(be, k); be->free(be, v); be->free(be, dout); be->free(be, o);
    be->free(be, lse); be->free(be, dq); be->free(be, dk); be->free(be, dv);
}

static void bench_conv(const char *what, int Cin, int H, int Cout, int s, int p, int bwd, int reps) {
    Backend *be = backend_cpu_create(); /* fresh: its peak is this conv's */
    if (!be) return;
    unsigned sd = 1;
    int k = 3, Ho = (H + 2 * p - k) / s + 1;
    int64_t nx = (int64_t)Cin * H * H, ny = (int64_t)Cout * Ho * Ho, nw = (int64_t)Cout * Cin * k * k;
    float *x = rnd(be, nx, &sd), *w = rnd(be, nw, &sd), *b = rnd(be, Cout, &sd);
    float *y = be->alloc(be, sizeof(float) * ny);
    float *dx = bwd ? be->alloc(be, sizeof(float) * nx) : NULL;
    float *dw = bwd ? be->alloc(be, sizeof(float) * nw) : NULL, *db = bwd ? be->alloc(be, sizeof(float) * Cout) : NULL;
    double bf = 1e30, bb = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_ms();
        be->conv2d_fwd(be, x, w, b, y, 1, Cin, H, H, Cout, k, s, p);
        double t1 = now_ms();
        if (bwd) be->conv2d_bwd(be, y, x, w, dx, dw, db, 1, Cin, H, H, Cout, k, s, p);
        double t2 = now_ms();
        if (t1 - t0 < bf) bf = t1 - t0;
        if (t2 - t1 < bb) bb = t2 - t1;
    }
    size_t io = (size_t)(nx + ny + nw + Cout + (bwd ? nx + nw + Cout : 0)) * sizeof(float);
    printf("%-30s %4d->%-4d %4dx%-4d s%d  fwd %9.1f ms", what, Cin, Cout, H, H, s, bf);
    if (bwd) printf("  bwd %9.1f ms", bb);
    printf("  | peak %.0f MB (tensors %.0f MB)\n", be->peak_bytes(be) / 1e6, io / 1e6);
    backend_destroy(be);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "conv")) {
        int reps = argc > 2 ? atoi(argv[2]) : 3;
        bench_conv("VAE decode up_blocks.3 conv1", 256, 512, 128, 1, 1, 0, reps);
        bench_conv("VAE decode up_blocks.3 conv2", 128, 512, 128, 1, 1, 0, reps);
        bench_conv("VAE encode downsampler (pad)", 128, 513, 128, 2, 0, 0, reps);
        bench_conv("UNet SD1.5 64x64 resnet", 320, 64, 320, 1, 1, 1, reps);
        bench_conv("UNet SD1.5 64x64 up (concat)", 640, 64, 320, 1, 1, 1, reps);
        return 0;
    }
    int reps = argc > 1 ? atoi(argv[1]) : 10;
    Backend *be = backend_cpu_create();
    if (!be) return 1;
    bench(be, "tiny level0 self", 1, 1024, 1024, 4, 8, 0, reps);
    bench(be, "tiny level1 self", 1, 256, 256, 4, 16, 0, reps);
    bench(be, "tiny level0 cross", 1, 1024, 77, 4, 8, 0, reps);
    bench(be, "tiny level1 cross", 1, 256, 77, 4, 16, 0, reps);
    bench(be, "text encoder causal", 1, 77, 77, 4, 16, 1, reps);
    bench(be, "SD-like D=40", 1, 4096, 4096, 8, 40, 0, reps > 3 ? 3 : reps);
    bench(be, "SD-like D=80", 1, 1024, 1024, 8, 80, 0, reps > 3 ? 3 : reps);
    bench(be, "SD-like D=160", 1, 1024, 1024, 8, 160, 0, reps > 3 ? 3 : reps);
    bench(be, "SD-like D=160 (2 heads)", 1, 4096, 4096, 2, 160, 0, reps > 2 ? 2 : reps);
    bench(be, "SD-like cross D=40", 1, 4096, 77, 8, 40, 0, reps);
    backend_destroy(be);
    return 0;
}

/* backend_cpu.c — the CPU implementation of the op table in backend.h.
 *
 * Threading: OpenBLAS is pinned to one thread at create and all parallelism is
 * ours (OpenMP, static schedules), so an sgemm called inside an OpenMP loop never
 * oversubscribes the cores, and results are bitwise reproducible for a given
 * thread count. Large single GEMMs are split across threads by sgemm_par.
 *
 * Scratch: im2col columns, attention score tiles, Kronecker intermediates and
 * per-thread partial gradients live in per-thread scratch slots that only grow,
 * so steady-state training does no mallocs. The backend is therefore not
 * reentrant: one thread calls it at a time (the train thread).
 */
#include "backend.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64
#define NSLOT 4
#define PAR_MIN 32768 /* elements below which pointwise ops stay serial */

typedef struct {
    float *p;
    size_t n; /* floats */
} Scratch;

typedef struct {
    _Atomic size_t live, peak;
    int nthreads;
    Scratch s[MAX_THREADS][NSLOT];
} CpuImpl;

static CpuImpl *impl_of(Backend *be) { return (CpuImpl *)be->impl; }

/* scratch slot `slot` of thread `t`, at least n floats; NULL on OOM */
static float *scratch(CpuImpl *im, int t, int slot, size_t n) {
    Scratch *s = &im->s[t][slot];
    if (s->n < n) {
        free(s->p);
        size_t want = n + n / 4 + 64;
        s->p = aligned_alloc(64, ((want * sizeof(float)) + 63) / 64 * 64);
        s->n = s->p ? want : 0;
    }
    return s->p;
}

static int nthreads_for(CpuImpl *im, int64_t work) {
    if (omp_in_parallel()) return 1;
    return work >= PAR_MIN ? im->nthreads : 1;
}

/* ------------------------------------------------------------------ memory */

/* header before each block: base pointer from calloc and the user size */
typedef struct {
    void *base;
    size_t bytes;
} AllocHdr;

static void *cpu_alloc(Backend *be, size_t bytes) {
    CpuImpl *im = impl_of(be);
    /* calloc gives lazily-zeroed pages for big blocks; we align by hand */
    char *base = calloc(1, bytes + 64 + sizeof(AllocHdr) + 64);
    if (!base) return NULL;
    uintptr_t u = ((uintptr_t)base + sizeof(AllocHdr) + 63) & ~(uintptr_t)63;
    AllocHdr *h = (AllocHdr *)u - 1;
    h->base = base;
    h->bytes = bytes;
    size_t live = atomic_fetch_add(&im->live, bytes) + bytes;
    size_t peak = atomic_load(&im->peak);
    while (live > peak && !atomic_compare_exchange_weak(&im->peak, &peak, live)) {}
    return (void *)u;
}

static void cpu_free(Backend *be, void *p) {
    if (!p) return;
    AllocHdr *h = (AllocHdr *)p - 1;
    atomic_fetch_sub(&impl_of(be)->live, h->bytes);
    free(h->base);
}

static void cpu_memcpy(Backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memcpy(dst, src, bytes);
}
static void cpu_zero(Backend *be, void *p, size_t bytes) {
    if (bytes) memset(p, 0, bytes);
}
static void cpu_sync(Backend *be) {}
static size_t cpu_peak(Backend *be) { return atomic_load(&impl_of(be)->peak); }

/* ------------------------------------------------------------------ gemm */

static void sgemm1(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* BLAS would still scale C by beta; keep that */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(int64_t)i * ldc + j] = beta == 0.f ? 0.f : beta * C[(int64_t)i * ldc + j];
        return;
    }
    cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* one GEMM split over threads along the larger of M, N when it is big enough */
static void sgemm_par(CpuImpl *im, int tA, int tB, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C,
                      int ldc) {
    double flops = 2.0 * M * N * K;
    int nt = im->nthreads;
    if (nt <= 1 || omp_in_parallel() || flops < 2e6 || (M < 16 && N < 16)) {
        sgemm1(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int splitM = M >= N;
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        int len = splitM ? M : N;
        /* chunk boundaries on multiples of 8 keep the kernels' panels whole */
        int chunk = ((len + T - 1) / T + 7) / 8 * 8;
        int lo = t * chunk, hi = lo + chunk < len ? lo + chunk : len;
        if (lo < hi) {
            if (splitM) {
                const float *Ai = tA ? A + lo : A + (int64_t)lo * lda;
                sgemm1(tA, tB, hi - lo, N, K, alpha, Ai, lda, B, ldb, beta, C + (int64_t)lo * ldc, ldc);
            } else {
                const float *Bj = tB ? B + (int64_t)lo * ldb : B + lo;
                sgemm1(tA, tB, M, hi - lo, K, alpha, A, lda, Bj, ldb, beta, C + lo, ldc);
            }
        }
    }
}

static void cpu_gemm(Backend *be, int transA, int transB, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc) {
    sgemm_par(impl_of(be), transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static void cpu_gemm_batched(Backend *be, int transA, int transB, int M, int N, int K,
                             float alpha, const float *A, int lda, int64_t sA, const float *B,
                             int ldb, int64_t sB, float beta, float *C, int ldc, int64_t sC,
                             int batch) {
    CpuImpl *im = impl_of(be);
    double flops = 2.0 * M * N * K;
    if (batch >= 2 && im->nthreads > 1 && !omp_in_parallel() && flops * batch > 2e5) {
#pragma omp parallel for schedule(static) num_threads(im->nthreads)
        for (int b = 0; b < batch; b++)
            sgemm1(transA, transB, M, N, K, alpha, A + b * sA, lda, B + b * sB, ldb, beta, C + b * sC, ldc);
    } else {
        for (int b = 0; b < batch; b++)
            sgemm_par(im, transA, transB, M, N, K, alpha, A + b * sA, lda, B + b * sB, ldb, beta, C + b * sC, ldc);
    }
}

/* ------------------------------------------------------------------ linear */

static void cpu_linear_fwd(Backend *be, const float *x, const float *W, const float *b, float *y,
                           int64_t M, int in, int out) {
    CpuImpl *im = impl_of(be);
    float beta = 0.f;
    if (b) {
        int nt = nthreads_for(im, M * out);
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t i = 0; i < M; i++) memcpy(y + i * out, b, sizeof(float) * out);
        beta = 1.f;
    }
    sgemm_par(im, 0, 1, (int)M, out, in, 1.f, x, in, W, in, beta, y, out);
}

/* db[j] += sum_i dy[i, j]; per-thread partial sums keep it parallel and deterministic */
static void col_sum_acc(CpuImpl *im, const float *dy, float *db, int64_t M, int n) {
    int nt = nthreads_for(im, M * n);
    if (nt == 1) {
        for (int64_t i = 0; i < M; i++) {
            const float *r = dy + i * n;
            for (int j = 0; j < n; j++) db[j] += r[j];
        }
        return;
    }
    float *part[MAX_THREADS];
    for (int t = 0; t < nt; t++) part[t] = scratch(im, t, 3, n);
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        float *p = part[t];
        memset(p, 0, sizeof(float) * n);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < M; i++) {
            const float *r = dy + i * n;
            for (int j = 0; j < n; j++) p[j] += r[j];
        }
    }
    for (int t = 0; t < nt; t++)
        for (int j = 0; j < n; j++) db[j] += part[t][j];
}

static void cpu_linear_bwd(Backend *be, const float *dy, const float *x, const float *W, float *dx,
                           float *dW, float *db, int64_t M, int in, int out) {
    CpuImpl *im = impl_of(be);
    if (dx) sgemm_par(im, 0, 0, (int)M, in, out, 1.f, dy, out, W, in, 1.f, dx, in);
    if (dW) sgemm_par(im, 1, 0, out, in, (int)M, 1.f, dy, out, x, in, 1.f, dW, in);
    if (db) col_sum_acc(im, dy, db, M, out);
}

/* ------------------------------------------------------------------ conv2d */

/* col[(c*k+ki)*k+kj][oy*Wo+ox] = x[c][oy*s-p+ki][ox*s-p+kj] (0 outside) */
static void im2col(const float *x, float *col, int C, int H, int W, int k, int s, int p, int Ho,
                   int Wo) {
    for (int c = 0; c < C; c++)
        for (int ki = 0; ki < k; ki++)
            for (int kj = 0; kj < k; kj++) {
                float *dst = col + ((int64_t)(c * k + ki) * k + kj) * Ho * Wo;
                const float *xc = x + (int64_t)c * H * W;
                /* valid ox range: 0 <= ox*s - p + kj < W */
                int ox0 = 0, ox1 = Wo;
                while (ox0 < Wo && ox0 * s - p + kj < 0) ox0++;
                while (ox1 > ox0 && (ox1 - 1) * s - p + kj >= W) ox1--;
                for (int oy = 0; oy < Ho; oy++) {
                    float *d = dst + (int64_t)oy * Wo;
                    int iy = oy * s - p + ki;
                    if (iy < 0 || iy >= H) {
                        memset(d, 0, sizeof(float) * Wo);
                        continue;
                    }
                    const float *xr = xc + (int64_t)iy * W + kj - p;
                    for (int ox = 0; ox < ox0; ox++) d[ox] = 0.f;
                    if (s == 1)
                        memcpy(d + ox0, xr + ox0, sizeof(float) * (ox1 - ox0));
                    else
                        for (int ox = ox0; ox < ox1; ox++) d[ox] = xr[ox * s];
                    for (int ox = ox1; ox < Wo; ox++) d[ox] = 0.f;
                }
            }
}

/* dx[c][iy][ix] += dcol[...]: the adjoint of im2col */
static void col2im_acc(const float *col, float *dx, int C, int H, int W, int k, int s, int p,
                       int Ho, int Wo) {
    for (int c = 0; c < C; c++)
        for (int ki = 0; ki < k; ki++)
            for (int kj = 0; kj < k; kj++) {
                const float *src = col + ((int64_t)(c * k + ki) * k + kj) * Ho * Wo;
                float *xc = dx + (int64_t)c * H * W;
                int ox0 = 0, ox1 = Wo;
                while (ox0 < Wo && ox0 * s - p + kj < 0) ox0++;
                while (ox1 > ox0 && (ox1 - 1) * s - p + kj >= W) ox1--;
                for (int oy = 0; oy < Ho; oy++) {
                    int iy = oy * s - p + ki;
                    if (iy < 0 || iy >= H) continue;
                    const float *sr = src + (int64_t)oy * Wo;
                    float *xr = xc + (int64_t)iy * W + kj - p;
                    if (s == 1)
                        for (int ox = ox0; ox < ox1; ox++) xr[ox] += sr[ox];
                    else
                        for (int ox = ox0; ox < ox1; ox++) xr[ox * s] += sr[ox];
                }
            }
}

static void cpu_conv2d_fwd(Backend *be, const float *x, const float *w, const float *b, float *y,
                           int N, int Cin, int H, int W, int Cout, int k, int s, int p) {
    CpuImpl *im = impl_of(be);
    int Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    int64_t HWo = (int64_t)Ho * Wo, HWi = (int64_t)H * W, KK = (int64_t)Cin * k * k;
    int direct = (k == 1 && s == 1 && p == 0);
    int nt = (N >= 2 && !omp_in_parallel()) ? (N < im->nthreads ? N : im->nthreads) : 1;
    float *cols[MAX_THREADS];
    if (!direct)
        for (int t = 0; t < nt; t++) cols[t] = scratch(im, t, 0, (size_t)(KK * HWo));
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int n = 0; n < N; n++) {
        int t = omp_get_thread_num();
        const float *xn = x + (int64_t)n * Cin * HWi;
        float *yn = y + (int64_t)n * Cout * HWo;
        float beta = 0.f;
        if (b) {
            for (int c = 0; c < Cout; c++)
                for (int64_t i = 0; i < HWo; i++) yn[c * HWo + i] = b[c];
            beta = 1.f;
        }
        const float *src = xn;
        if (!direct) {
            im2col(xn, cols[t], Cin, H, W, k, s, p, Ho, Wo);
            src = cols[t];
        }
        /* nt == 1: the single gemm may itself split over threads */
        sgemm_par(im, 0, 0, Cout, (int)HWo, (int)KK, 1.f, w, (int)KK, src, (int)HWo, beta, yn, (int)HWo);
    }
}

static void cpu_conv2d_bwd(Backend *be, const float *dy, const float *x, const float *w, float *dx,
                           float *dw, float *db, int N, int Cin, int H, int W, int Cout, int k,
                           int s, int p) {
    CpuImpl *im = impl_of(be);
    int Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    int64_t HWo = (int64_t)Ho * Wo, HWi = (int64_t)H * W, KK = (int64_t)Cin * k * k;
    int direct = (k == 1 && s == 1 && p == 0);
    if (db)
        for (int n = 0; n < N; n++)
            for (int c = 0; c < Cout; c++) {
                const float *r = dy + ((int64_t)n * Cout + c) * HWo;
                float acc = 0.f;
                for (int64_t i = 0; i < HWo; i++) acc += r[i];
                db[c] += acc;
            }
    if (!dx && !dw) return;
    int nt = (N >= 2 && !omp_in_parallel()) ? (N < im->nthreads ? N : im->nthreads) : 1;
    float *cols[MAX_THREADS], *dcols[MAX_THREADS], *dwp[MAX_THREADS];
    for (int t = 0; t < nt; t++) {
        cols[t] = (!direct && dw) ? scratch(im, t, 0, (size_t)(KK * HWo)) : NULL;
        dcols[t] = (!direct && dx) ? scratch(im, t, 1, (size_t)(KK * HWo)) : NULL;
        /* with several threads each keeps a private dw, reduced below */
        dwp[t] = (dw && nt > 1) ? scratch(im, t, 2, (size_t)(Cout * KK)) : dw;
        if (dw && nt > 1) memset(dwp[t], 0, sizeof(float) * Cout * KK);
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int n = 0; n < N; n++) {
        int t = omp_get_thread_num();
        const float *xn = x + (int64_t)n * Cin * HWi;
        const float *dyn = dy + (int64_t)n * Cout * HWo;
        if (dw) {
            const float *src = xn;
            if (!direct) {
                im2col(xn, cols[t], Cin, H, W, k, s, p, Ho, Wo);
                src = cols[t];
            }
            sgemm_par(im, 0, 1, Cout, (int)KK, (int)HWo, 1.f, dyn, (int)HWo, src, (int)HWo, 1.f, dwp[t], (int)KK);
        }
        if (dx) {
            float *dxn = dx + (int64_t)n * Cin * HWi;
            if (direct) {
                sgemm_par(im, 1, 0, Cin, (int)HWo, Cout, 1.f, w, Cin, dyn, (int)HWo, 1.f, dxn, (int)HWo);
            } else {
                sgemm_par(im, 1, 0, (int)KK, (int)HWo, Cout, 1.f, w, (int)KK, dyn, (int)HWo, 0.f, dcols[t], (int)HWo);
                col2im_acc(dcols[t], dxn, Cin, H, W, k, s, p, Ho, Wo);
            }
        }
    }
    if (dw && nt > 1)
        for (int t = 0; t < nt; t++)
            for (int64_t i = 0; i < Cout * KK; i++) dw[i] += dwp[t][i];
}

/* ------------------------------------------------------------------ norms */

/* mean and rstd of n floats: two passes, double accumulation, biased variance */
static void moments(const float *x, int64_t n, float eps, float *mean, float *rstd) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    double mu = s / (double)n, v = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = x[i] - mu;
        v += d * d;
    }
    v /= (double)n;
    *mean = (float)mu;
    *rstd = (float)(1.0 / sqrt(v + eps));
}

static void cpu_group_norm_fwd(Backend *be, const float *x, const float *gamma, const float *beta,
                               float *y, float *mean, float *rstd, int N, int C, int64_t HW, int G,
                               float eps) {
    CpuImpl *im = impl_of(be);
    int cpg = C / G;
    int nt = nthreads_for(im, (int64_t)N * C * HW);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int ng = 0; ng < N * G; ng++) {
        int n = ng / G, g = ng % G;
        const float *xg = x + ((int64_t)n * C + (int64_t)g * cpg) * HW;
        float *yg = y + ((int64_t)n * C + (int64_t)g * cpg) * HW;
        float mu, rs;
        moments(xg, cpg * HW, eps, &mu, &rs);
        mean[ng] = mu;
        rstd[ng] = rs;
        for (int c = 0; c < cpg; c++) {
            int cc = g * cpg + c;
            float a = rs * (gamma ? gamma[cc] : 1.f);
            float bb = (beta ? beta[cc] : 0.f) - mu * a;
            const float *xr = xg + c * HW;
            float *yr = yg + c * HW;
            for (int64_t i = 0; i < HW; i++) yr[i] = xr[i] * a + bb;
        }
    }
}

static void cpu_group_norm_bwd(Backend *be, const float *dy, const float *x, const float *gamma,
                               const float *mean, const float *rstd, float *dx, float *dgamma,
                               float *dbeta, int N, int C, int64_t HW, int G) {
    CpuImpl *im = impl_of(be);
    int cpg = C / G;
    int nt = nthreads_for(im, (int64_t)N * C * HW);
    /* per (n, c) sums of dy*xhat and dy; reduced over n after the loop */
    float *sdx = scratch(im, 0, 3, (size_t)2 * N * C);
    float *sd = sdx + (int64_t)N * C;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int ng = 0; ng < N * G; ng++) {
        int n = ng / G, g = ng % G;
        int64_t off = ((int64_t)n * C + (int64_t)g * cpg) * HW;
        float mu = mean[ng], rs = rstd[ng];
        double sum_dxh = 0.0, sum_dxh_xh = 0.0; /* sums of dxhat, dxhat*xhat */
        for (int c = 0; c < cpg; c++) {
            int cc = g * cpg + c;
            float gm = gamma ? gamma[cc] : 1.f;
            const float *xr = x + off + c * HW, *dr = dy + off + c * HW;
            float a = 0.f, bsum = 0.f;
            for (int64_t i = 0; i < HW; i++) {
                float xh = (xr[i] - mu) * rs;
                a += dr[i] * xh;
                bsum += dr[i];
            }
            sdx[(int64_t)n * C + cc] = a;
            sd[(int64_t)n * C + cc] = bsum;
            sum_dxh += (double)gm * bsum;
            sum_dxh_xh += (double)gm * a;
        }
        if (dx) {
            double inv = 1.0 / ((double)cpg * HW);
            float m1 = (float)(sum_dxh * inv), m2 = (float)(sum_dxh_xh * inv);
            for (int c = 0; c < cpg; c++) {
                int cc = g * cpg + c;
                float gm = gamma ? gamma[cc] : 1.f;
                const float *xr = x + off + c * HW, *dr = dy + off + c * HW;
                float *o = dx + off + c * HW;
                for (int64_t i = 0; i < HW; i++) {
                    float xh = (xr[i] - mu) * rs;
                    o[i] += rs * (gm * dr[i] - m1 - xh * m2);
                }
            }
        }
    }
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            if (dgamma) dgamma[c] += sdx[(int64_t)n * C + c];
            if (dbeta) dbeta[c] += sd[(int64_t)n * C + c];
        }
}

static void cpu_layer_norm_fwd(Backend *be, const float *x, const float *gamma, const float *beta,
                               float *y, float *mean, float *rstd, int64_t M, int C, float eps) {
    CpuImpl *im = impl_of(be);
    int nt = nthreads_for(im, M * C);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < M; i++) {
        const float *xr = x + i * C;
        float *yr = y + i * C;
        float mu, rs;
        moments(xr, C, eps, &mu, &rs);
        mean[i] = mu;
        rstd[i] = rs;
        for (int c = 0; c < C; c++)
            yr[c] = (xr[c] - mu) * rs * (gamma ? gamma[c] : 1.f) + (beta ? beta[c] : 0.f);
    }
}

static void cpu_layer_norm_bwd(Backend *be, const float *dy, const float *x, const float *gamma,
                               const float *mean, const float *rstd, float *dx, float *dgamma,
                               float *dbeta, int64_t M, int C) {
    CpuImpl *im = impl_of(be);
    int nt = nthreads_for(im, M * C);
    float *part[MAX_THREADS];
    for (int t = 0; t < nt; t++) part[t] = scratch(im, t, 3, (size_t)2 * C);
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        float *pg = part[t], *pb = part[t] + C;
        memset(pg, 0, sizeof(float) * 2 * C);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < M; i++) {
            const float *xr = x + i * C, *dr = dy + i * C;
            float mu = mean[i], rs = rstd[i];
            float s1 = 0.f, s2 = 0.f; /* sums of dxhat, dxhat*xhat */
            for (int c = 0; c < C; c++) {
                float xh = (xr[c] - mu) * rs;
                float dxh = dr[c] * (gamma ? gamma[c] : 1.f);
                s1 += dxh;
                s2 += dxh * xh;
                pg[c] += dr[c] * xh;
                pb[c] += dr[c];
            }
            if (dx) {
                float m1 = s1 / C, m2 = s2 / C;
                float *o = dx + i * C;
                for (int c = 0; c < C; c++) {
                    float xh = (xr[c] - mu) * rs;
                    o[c] += rs * (dr[c] * (gamma ? gamma[c] : 1.f) - m1 - xh * m2);
                }
            }
        }
    }
    for (int t = 0; t < nt; t++)
        for (int c = 0; c < C; c++) {
            if (dgamma) dgamma[c] += part[t][c];
            if (dbeta) dbeta[c] += part[t][C + c];
        }
}

/* ------------------------------------------------------------------ pointwise */

static inline float sigmoidf(float x) { return 1.f / (1.f + expf(-x)); }
static inline float gelu1(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
static inline float gelu_grad1(float x) {
    return 0.5f * (1.f + erff(x * 0.70710678118654752f)) + x * 0.39894228040143268f * expf(-0.5f * x * x);
}

static void cpu_silu_fwd(Backend *be, const float *x, float *y, int64_t n) {
    int nt = nthreads_for(impl_of(be), n);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * sigmoidf(x[i]);
}
static void cpu_silu_bwd(Backend *be, const float *dy, const float *x, float *dx, int64_t n) {
    int nt = nthreads_for(impl_of(be), n);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) {
        float s = sigmoidf(x[i]);
        dx[i] += dy[i] * s * (1.f + x[i] * (1.f - s));
    }
}
static void cpu_gelu_fwd(Backend *be, const float *x, float *y, int64_t n) {
    int nt = nthreads_for(impl_of(be), n);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) y[i] = gelu1(x[i]);
}
static void cpu_gelu_bwd(Backend *be, const float *dy, const float *x, float *dx, int64_t n) {
    int nt = nthreads_for(impl_of(be), n);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * gelu_grad1(x[i]);
}
static void cpu_geglu_fwd(Backend *be, const float *x, float *y, int64_t M, int D) {
    int nt = nthreads_for(impl_of(be), M * D);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < M; i++) {
        const float *h = x + i * 2 * D, *g = h + D;
        float *yr = y + i * D;
        for (int j = 0; j < D; j++) yr[j] = h[j] * gelu1(g[j]);
    }
}
static void cpu_geglu_bwd(Backend *be, const float *dy, const float *x, float *dx, int64_t M, int D) {
    int nt = nthreads_for(impl_of(be), M * D);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < M; i++) {
        const float *h = x + i * 2 * D, *g = h + D, *d = dy + i * D;
        float *dh = dx + i * 2 * D, *dg = dh + D;
        for (int j = 0; j < D; j++) {
            dh[j] += d[j] * gelu1(g[j]);
            dg[j] += d[j] * h[j] * gelu_grad1(g[j]);
        }
    }
}
static void cpu_quick_gelu_fwd(Backend *be, const float *x, float *y, int64_t n) {
    int nt = nthreads_for(impl_of(be), n);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * sigmoidf(1.702f * x[i]);
}
static void cpu_embedding_fwd(Backend *be, const float *table, const int32_t *ids, float *out,
                              int64_t n, int dim) {
    /* ids are not range-checked against the table size (unknown here); a negative
     * id yields a zero row rather than a wild read */
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0) memset(out + i * dim, 0, sizeof(float) * dim);
        else memcpy(out + i * dim, table + (int64_t)ids[i] * dim, sizeof(float) * dim);
    }
}
static void cpu_add(Backend *be, const float *a, const float *b, float *y, int64_t n) {
    int nt = nthreads_for(impl_of(be), n);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}
static void cpu_axpy(Backend *be, float alpha, const float *x, float *y, int64_t n) {
    int nt = nthreads_for(impl_of(be), n);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}
static void cpu_scale(Backend *be, float *x, float alpha, int64_t n) {
    int nt = nthreads_for(impl_of(be), n);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) x[i] *= alpha;
}
static void cpu_add_channel_bias(Backend *be, float *x, const float *v, int N, int C, int64_t HW) {
    int nt = nthreads_for(impl_of(be), (int64_t)N * C * HW);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int nc = 0; nc < N * C; nc++) {
        float *r = x + (int64_t)nc * HW;
        float b = v[nc];
        for (int64_t i = 0; i < HW; i++) r[i] += b;
    }
}
static void cpu_channel_sum_bwd(Backend *be, const float *dy, float *dv, int N, int C, int64_t HW) {
    int nt = nthreads_for(impl_of(be), (int64_t)N * C * HW);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int nc = 0; nc < N * C; nc++) {
        const float *r = dy + (int64_t)nc * HW;
        float acc = 0.f;
        for (int64_t i = 0; i < HW; i++) acc += r[i];
        dv[nc] += acc;
    }
}

/* ------------------------------------------------------------------ shape ops */

static void cpu_concat_channels(Backend *be, const float *a, const float *b, float *y, int N,
                                int Ca, int Cb, int64_t HW) {
    for (int n = 0; n < N; n++) {
        float *yn = y + (int64_t)n * (Ca + Cb) * HW;
        memcpy(yn, a + (int64_t)n * Ca * HW, sizeof(float) * Ca * HW);
        memcpy(yn + (int64_t)Ca * HW, b + (int64_t)n * Cb * HW, sizeof(float) * Cb * HW);
    }
}
static void cpu_concat_channels_bwd(Backend *be, const float *dy, float *da, float *db, int N,
                                    int Ca, int Cb, int64_t HW) {
    int64_t na = (int64_t)Ca * HW, nb = (int64_t)Cb * HW;
    for (int n = 0; n < N; n++) {
        const float *d = dy + (int64_t)n * (na + nb);
        if (da) {
            float *o = da + n * na;
            for (int64_t i = 0; i < na; i++) o[i] += d[i];
        }
        if (db) {
            float *o = db + n * nb;
            for (int64_t i = 0; i < nb; i++) o[i] += d[na + i];
        }
    }
}
static void cpu_upsample2x_fwd(Backend *be, const float *x, float *y, int N, int C, int H, int W) {
    int nt = nthreads_for(impl_of(be), (int64_t)N * C * H * W * 4);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int nc = 0; nc < N * C; nc++) {
        const float *xc = x + (int64_t)nc * H * W;
        float *yc = y + (int64_t)nc * 4 * H * W;
        for (int i = 0; i < H; i++) {
            float *r0 = yc + (int64_t)(2 * i) * 2 * W, *r1 = r0 + 2 * W;
            const float *xr = xc + (int64_t)i * W;
            for (int j = 0; j < W; j++) r0[2 * j] = r0[2 * j + 1] = xr[j];
            memcpy(r1, r0, sizeof(float) * 2 * W);
        }
    }
}
static void cpu_upsample2x_bwd(Backend *be, const float *dy, float *dx, int N, int C, int H, int W) {
    int nt = nthreads_for(impl_of(be), (int64_t)N * C * H * W * 4);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int nc = 0; nc < N * C; nc++) {
        const float *dc = dy + (int64_t)nc * 4 * H * W;
        float *xc = dx + (int64_t)nc * H * W;
        for (int i = 0; i < H; i++) {
            const float *r0 = dc + (int64_t)(2 * i) * 2 * W, *r1 = r0 + 2 * W;
            float *xr = xc + (int64_t)i * W;
            for (int j = 0; j < W; j++) xr[j] += r0[2 * j] + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1];
        }
    }
}

/* y[n] (cols x rows) = transpose of x[n] (rows x cols), blocked for cache */
static void transpose_batch(CpuImpl *im, const float *x, float *y, int N, int64_t rows,
                            int64_t cols, int acc) {
    const int64_t BS = 32;
    int64_t nbr = (rows + BS - 1) / BS;
    int nt = nthreads_for(im, N * rows * cols);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t nb = 0; nb < N * nbr; nb++) {
        int64_t n = nb / nbr, r0 = (nb % nbr) * BS;
        const float *xn = x + n * rows * cols;
        float *yn = y + n * rows * cols;
        int64_t r1 = r0 + BS < rows ? r0 + BS : rows;
        for (int64_t c0 = 0; c0 < cols; c0 += BS) {
            int64_t c1 = c0 + BS < cols ? c0 + BS : cols;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = c0; c < c1; c++) {
                    if (acc) yn[c * rows + r] += xn[r * cols + c];
                    else yn[c * rows + r] = xn[r * cols + c];
                }
        }
    }
}
static void cpu_nchw_to_nlc(Backend *be, const float *x, float *y, int N, int C, int64_t HW, int accumulate) {
    transpose_batch(impl_of(be), x, y, N, C, HW, accumulate);
}
static void cpu_nlc_to_nchw(Backend *be, const float *x, float *y, int N, int C, int64_t HW, int accumulate) {
    transpose_batch(impl_of(be), x, y, N, HW, C, accumulate);
}

/* ------------------------------------------------------------------ attention */

/* rows of the score tile kept per thread: bounded so T*Lk floats stay ~256 KB */
static int attn_tile(int Lq, int Lk) {
    int t = 65536 / (Lk > 0 ? Lk : 1);
    if (t < 8) t = 8;
    if (t > 256) t = 256;
    return t < Lq ? t : Lq;
}

/* S[T, Lk] = scale * Q_tile K^T, masked when causal (query row i0+r sees keys <= i0+r) */
static void attn_scores(const float *qt, const float *kh, float *S, int T, int i0, int Lk, int D,
                        int ld, float scale, int causal) {
    sgemm1(0, 1, T, Lk, D, scale, qt, ld, kh, ld, 0.f, S, Lk);
    if (causal)
        for (int r = 0; r < T; r++)
            for (int j = i0 + r + 1; j < Lk; j++) S[(int64_t)r * Lk + j] = -INFINITY;
}

static void cpu_attention_fwd(Backend *be, const float *q, const float *k, const float *v, float *o,
                              float *lse, int N, int Lq, int Lk, int H, int D, float scale,
                              int causal) {
    CpuImpl *im = impl_of(be);
    int HD = H * D, T = attn_tile(Lq, Lk), ntile = (Lq + T - 1) / T;
    int64_t jobs = (int64_t)N * H * ntile;
    int nt = omp_in_parallel() ? 1 : (jobs < im->nthreads ? (int)jobs : im->nthreads);
    float *buf[MAX_THREADS];
    for (int t = 0; t < nt; t++) buf[t] = scratch(im, t, 0, (size_t)T * Lk);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t job = 0; job < jobs; job++) {
        int n = (int)(job / ((int64_t)H * ntile)), h = (int)(job / ntile % H), tile = (int)(job % ntile);
        int i0 = tile * T, Tr = i0 + T <= Lq ? T : Lq - i0;
        float *S = buf[omp_get_thread_num()];
        const float *qt = q + ((int64_t)n * Lq + i0) * HD + h * D;
        const float *kh = k + (int64_t)n * Lk * HD + h * D;
        const float *vh = v + (int64_t)n * Lk * HD + h * D;
        attn_scores(qt, kh, S, Tr, i0, Lk, D, HD, scale, causal);
        float *l = lse + ((int64_t)n * H + h) * Lq + i0;
        for (int r = 0; r < Tr; r++) {
            float *sr = S + (int64_t)r * Lk;
            float mx = -INFINITY;
            for (int j = 0; j < Lk; j++) mx = sr[j] > mx ? sr[j] : mx;
            if (mx == -INFINITY) mx = 0.f; /* fully masked row: all p = 0 */
            float sum = 0.f;
            for (int j = 0; j < Lk; j++) {
                float e = expf(sr[j] - mx);
                sr[j] = e;
                sum += e;
            }
            float inv = sum > 0.f ? 1.f / sum : 0.f;
            for (int j = 0; j < Lk; j++) sr[j] *= inv;
            l[r] = mx + logf(sum);
        }
        sgemm1(0, 0, Tr, D, Lk, 1.f, S, Lk, vh, HD, 0.f, o + ((int64_t)n * Lq + i0) * HD + h * D, HD);
    }
}

static void cpu_attention_bwd(Backend *be, const float *dout, const float *q, const float *k,
                              const float *v, const float *o, const float *lse, float *dq,
                              float *dk, float *dv, int N, int Lq, int Lk, int H, int D,
                              float scale, int causal) {
    CpuImpl *im = impl_of(be);
    int HD = H * D, T = attn_tile(Lq, Lk), ntile = (Lq + T - 1) / T;
    /* tiles of one head write the same dk, dv rows, so jobs are whole heads */
    int jobs = N * H;
    int nt = omp_in_parallel() ? 1 : (jobs < im->nthreads ? jobs : im->nthreads);
    float *Pb[MAX_THREADS], *dSb[MAX_THREADS];
    for (int t = 0; t < nt; t++) {
        Pb[t] = scratch(im, t, 0, (size_t)T * Lk);
        dSb[t] = scratch(im, t, 1, (size_t)T * Lk);
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int job = 0; job < jobs; job++) {
        int n = job / H, h = job % H, th = omp_get_thread_num();
        float *P = Pb[th], *dS = dSb[th];
        const float *kh = k + (int64_t)n * Lk * HD + h * D;
        const float *vh = v + (int64_t)n * Lk * HD + h * D;
        float *dkh = dk ? dk + (int64_t)n * Lk * HD + h * D : NULL;
        float *dvh = dv ? dv + (int64_t)n * Lk * HD + h * D : NULL;
        for (int tile = 0; tile < ntile; tile++) {
            int i0 = tile * T, Tr = i0 + T <= Lq ? T : Lq - i0;
            int64_t roff = ((int64_t)n * Lq + i0) * HD + h * D;
            const float *qt = q + roff, *dot = dout + roff, *ot = o + roff;
            const float *l = lse + ((int64_t)n * H + h) * Lq + i0;
            attn_scores(qt, kh, P, Tr, i0, Lk, D, HD, scale, causal);
            for (int r = 0; r < Tr; r++) {
                float *pr = P + (int64_t)r * Lk;
                float lr = l[r];
                for (int j = 0; j < Lk; j++) pr[j] = expf(pr[j] - lr);
            }
            if (dvh) sgemm1(1, 0, Lk, D, Tr, 1.f, P, Lk, dot, HD, 1.f, dvh, HD);
            if (!dq && !dkh) continue;
            sgemm1(0, 1, Tr, Lk, D, 1.f, dot, HD, vh, HD, 0.f, dS, Lk); /* dP */
            for (int r = 0; r < Tr; r++) {
                const float *dr = dot + (int64_t)r * HD, *orow = ot + (int64_t)r * HD;
                float di = 0.f;
                for (int d = 0; d < D; d++) di += dr[d] * orow[d];
                float *sr = dS + (int64_t)r * Lk, *pr = P + (int64_t)r * Lk;
                for (int j = 0; j < Lk; j++) sr[j] = pr[j] * (sr[j] - di);
            }
            if (dq) sgemm1(0, 0, Tr, D, Lk, scale, dS, Lk, kh, HD, 1.f, dq + roff, HD);
            if (dkh) sgemm1(1, 0, Lk, D, Tr, scale, dS, Lk, qt, HD, 1.f, dkh, HD);
        }
    }
}

/* ------------------------------------------------------------------ diffusion helpers */

static void cpu_timestep_embedding(Backend *be, const float *t, float *emb, int N, int dim,
                                   int flip_sin_to_cos, float shift, float max_period) {
    int half = dim / 2;
    /* float arithmetic in the same order as diffusers' torch code */
    float neg_log = (float)(-log((double)max_period));
    float denom = (float)half - shift;
    for (int n = 0; n < N; n++) {
        float *e = emb + (int64_t)n * dim;
        for (int j = 0; j < half; j++) {
            float f = expf((neg_log * (float)j) / denom);
            float a = t[n] * f;
            float sv = sinf(a), cv = cosf(a);
            e[j] = flip_sin_to_cos ? cv : sv;
            e[half + j] = flip_sin_to_cos ? sv : cv;
        }
        if (dim % 2) e[dim - 1] = 0.f;
    }
}

static float cpu_mse_fwd(Backend *be, const float *pred, const float *target, int64_t n) {
    double acc = 0.0;
    int nt = nthreads_for(impl_of(be), n);
#pragma omp parallel for schedule(static) reduction(+ : acc) num_threads(nt)
    for (int64_t i = 0; i < n; i++) {
        double d = (double)pred[i] - target[i];
        acc += d * d;
    }
    return n > 0 ? (float)(acc / (double)n) : 0.f;
}

static void cpu_mse_bwd(Backend *be, const float *pred, const float *target, float *dpred,
                        int64_t n, float weight) {
    float c = (float)(2.0 * weight / (double)n);
    int nt = nthreads_for(impl_of(be), n);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) dpred[i] += c * (pred[i] - target[i]);
}

static void cpu_adamw(Backend *be, float *param, const float *grad, float *m, float *v, int64_t n,
                      float lr, float beta1, float beta2, float eps, float weight_decay, int t) {
    /* torch.optim.AdamW (single-tensor path): decay, moments, then
     * p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps) */
    double bc1 = 1.0 - pow((double)beta1, t), bc2 = 1.0 - pow((double)beta2, t);
    float decay = (float)(1.0 - (double)lr * weight_decay);
    float step = (float)(lr / bc1), bc2s = (float)sqrt(bc2);
    int nt = nthreads_for(impl_of(be), n);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        float p = param[i] * decay;
        float mi = beta1 * m[i] + (1.f - beta1) * g;
        float vi = beta2 * v[i] + (1.f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = p - step * mi / (sqrtf(vi) / bc2s + eps);
    }
}

/* ------------------------------------------------------------------ Kronecker */

/* out[m] = beta*out[m] + alpha * op(L) R[m] for m < M, where R[m] is p x q,
 * op(L) is r x p (L stored r x p, or p x r when transL), out[m] is r x q.
 * Small L: direct loop over rows; large L: permute R to [p, M*q], one GEMM,
 * permute back. */
static void left_mul(CpuImpl *im, int transL, const float *L, int r, int p, int q, const float *R,
                     int64_t M, float *out, float alpha, float beta) {
    int64_t mq = M * q;
    if ((int64_t)r * p <= 64 || q < 4) {
        int nt = nthreads_for(im, M * r * q);
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t m = 0; m < M; m++) {
            const float *Rm = R + m * p * q;
            float *Om = out + m * r * q;
            for (int i = 0; i < r; i++) {
                float *o = Om + (int64_t)i * q;
                if (beta == 0.f) memset(o, 0, sizeof(float) * q);
                else if (beta != 1.f)
                    for (int c = 0; c < q; c++) o[c] *= beta;
                for (int j = 0; j < p; j++) {
                    float a = alpha * (transL ? L[(int64_t)j * r + i] : L[(int64_t)i * p + j]);
                    const float *rr = Rm + (int64_t)j * q;
                    for (int c = 0; c < q; c++) o[c] += a * rr[c];
                }
            }
        }
        return;
    }
    float *Rp = scratch(im, 0, 1, (size_t)(p * mq));
    float *Op = scratch(im, 0, 2, (size_t)(r * mq));
    int nt = nthreads_for(im, M * p * q);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t m = 0; m < M; m++)
        for (int j = 0; j < p; j++) memcpy(Rp + j * mq + m * q, R + (m * p + j) * q, sizeof(float) * q);
    sgemm_par(im, transL, 0, r, (int)mq, p, alpha, L, transL ? r : p, Rp, (int)mq, 0.f, Op, (int)mq);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t m = 0; m < M; m++)
        for (int i = 0; i < r; i++) {
            float *o = out + (m * r + i) * q;
            const float *s = Op + i * mq + m * q;
            if (beta == 0.f)
                memcpy(o, s, sizeof(float) * q);
            else
                for (int c = 0; c < q; c++) o[c] = beta * o[c] + s[c];
        }
}

/* out[r, s] += alpha * sum_m P_m Q_m^T for P[M, r, q], Q[M, s, q]. Small r*s:
 * per-thread partial sums of dot products; large: permute both to [*, M*q] and
 * do one GEMM with K = M*q. */
static void pair_contract(CpuImpl *im, const float *P, const float *Q, int64_t M, int r, int s,
                          int q, float *out, float alpha) {
    int64_t mq = M * q;
    if ((int64_t)r * s <= 64 || q < 4) {
        int nt = nthreads_for(im, M * r * s * q);
        float *part[MAX_THREADS];
        for (int t = 0; t < nt; t++) part[t] = scratch(im, t, 3, (size_t)r * s);
#pragma omp parallel num_threads(nt)
        {
            float *pa = part[omp_get_thread_num()];
            memset(pa, 0, sizeof(float) * r * s);
#pragma omp for schedule(static)
            for (int64_t m = 0; m < M; m++)
                for (int i = 0; i < r; i++) {
                    const float *pr = P + (m * r + i) * q;
                    for (int j = 0; j < s; j++) {
                        const float *qr = Q + (m * s + j) * q;
                        float acc = 0.f;
                        for (int c = 0; c < q; c++) acc += pr[c] * qr[c];
                        pa[i * s + j] += acc;
                    }
                }
        }
        for (int t = 0; t < nt; t++)
            for (int i = 0; i < r * s; i++) out[i] += alpha * part[t][i];
        return;
    }
    float *Pp = scratch(im, 0, 1, (size_t)(r * mq));
    float *Qp = scratch(im, 0, 2, (size_t)(s * mq));
    int nt = nthreads_for(im, M * (r + s) * q);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t m = 0; m < M; m++) {
        for (int i = 0; i < r; i++) memcpy(Pp + i * mq + m * q, P + (m * r + i) * q, sizeof(float) * q);
        for (int j = 0; j < s; j++) memcpy(Qp + j * mq + m * q, Q + (m * s + j) * q, sizeof(float) * q);
    }
    sgemm_par(im, 0, 1, r, s, (int)mq, alpha, Pp, (int)mq, Qp, (int)mq, 1.f, out, s);
}

static void cpu_kron_fwd(Backend *be, const float *x, const float *A, const float *B, float *y,
                         int64_t M, int a1, int a2, int b1, int b2, float scale) {
    CpuImpl *im = impl_of(be);
    /* T_m = X_m B^T for all rows at once: [(M a2), b2] x [b2, b1] */
    float *Tm = scratch(im, 0, 0, (size_t)(M * a2 * b1));
    sgemm_par(im, 0, 1, (int)(M * a2), b1, b2, 1.f, x, b2, B, b2, 0.f, Tm, b1);
    /* Y_m += scale * A T_m */
    left_mul(im, 0, A, a1, a2, b1, Tm, M, y, scale, 1.f);
}

static void cpu_kron_bwd(Backend *be, const float *dy, const float *x, const float *A,
                         const float *B, float *dx, float *dA, float *dB, int64_t M, int a1,
                         int a2, int b1, int b2, float scale) {
    CpuImpl *im = impl_of(be);
    float *buf = scratch(im, 0, 0, (size_t)(M * (int64_t)(a1 > a2 ? a1 : a2) * (b1 > b2 ? b1 : b2)));
    if (dx) {
        /* dX_m += scale A^T (dY_m B): U = dY B over all rows, then left multiply */
        sgemm_par(im, 0, 0, (int)(M * a1), b2, b1, 1.f, dy, b1, B, b2, 0.f, buf, b2);
        left_mul(im, 1, A, a2, a1, b2, buf, M, dx, scale, 1.f);
    }
    if (dA) {
        /* dA += scale sum_m dY_m T_m^T with T_m = X_m B^T */
        sgemm_par(im, 0, 1, (int)(M * a2), b1, b2, 1.f, x, b2, B, b2, 0.f, buf, b1);
        pair_contract(im, dy, buf, M, a1, a2, b1, dA, scale);
    }
    if (dB) {
        /* dB += scale dY^T Z with Z_m = A X_m, both as [(M a1), *] matrices */
        left_mul(im, 0, A, a1, a2, b2, x, M, buf, 1.f, 0.f);
        sgemm_par(im, 1, 0, b1, b2, (int)(M * a1), scale, dy, b1, buf, b2, 1.f, dB, b2);
    }
}

static void cpu_kron_merge(Backend *be, const float *A, const float *B, float *W, int a1, int a2,
                           int b1, int b2, float scale) {
    int64_t din = (int64_t)a2 * b2;
    for (int i = 0; i < a1; i++)
        for (int c = 0; c < b1; c++) {
            float *wr = W + ((int64_t)i * b1 + c) * din;
            for (int j = 0; j < a2; j++) {
                float a = scale * A[(int64_t)i * a2 + j];
                const float *br = B + (int64_t)c * b2;
                float *w = wr + (int64_t)j * b2;
                for (int e = 0; e < b2; e++) w[e] += a * br[e];
            }
        }
}

/* ------------------------------------------------------------------ create */

/* text encoder training (defined at the end of the file) */
static void cpu_embedding_bwd(Backend *be, const float *dout, const int32_t *ids, float *dtable,
                              int64_t n, int dim);

Backend *backend_cpu_create(void) {
    Backend *be = calloc(1, sizeof(Backend));
    CpuImpl *im = calloc(1, sizeof(CpuImpl));
    if (!be || !im) {
        free(be);
        free(im);
        return NULL;
    }
    openblas_set_num_threads(1);
    int nt = omp_get_max_threads();
    im->nthreads = nt < 1 ? 1 : (nt > MAX_THREADS ? MAX_THREADS : nt);
    be->name = "cpu";
    be->impl = im;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_memcpy;
    be->download = cpu_memcpy;
    be->copy = cpu_memcpy;
    be->zero = cpu_zero;
    be->sync = cpu_sync;
    be->peak_bytes = cpu_peak;
    be->gemm = cpu_gemm;
    be->gemm_batched = cpu_gemm_batched;
    be->linear_fwd = cpu_linear_fwd;
    be->linear_bwd = cpu_linear_bwd;
    be->conv2d_fwd = cpu_conv2d_fwd;
    be->conv2d_bwd = cpu_conv2d_bwd;
    be->group_norm_fwd = cpu_group_norm_fwd;
    be->group_norm_bwd = cpu_group_norm_bwd;
    be->layer_norm_fwd = cpu_layer_norm_fwd;
    be->layer_norm_bwd = cpu_layer_norm_bwd;
    be->silu_fwd = cpu_silu_fwd;
    be->silu_bwd = cpu_silu_bwd;
    be->gelu_fwd = cpu_gelu_fwd;
    be->gelu_bwd = cpu_gelu_bwd;
    be->geglu_fwd = cpu_geglu_fwd;
    be->geglu_bwd = cpu_geglu_bwd;
    be->quick_gelu_fwd = cpu_quick_gelu_fwd;
    be->embedding_fwd = cpu_embedding_fwd;
    be->add = cpu_add;
    be->axpy = cpu_axpy;
    be->scale = cpu_scale;
    be->add_channel_bias = cpu_add_channel_bias;
    be->channel_sum_bwd = cpu_channel_sum_bwd;
    be->concat_channels = cpu_concat_channels;
    be->concat_channels_bwd = cpu_concat_channels_bwd;
    be->upsample2x_fwd = cpu_upsample2x_fwd;
    be->upsample2x_bwd = cpu_upsample2x_bwd;
    be->nchw_to_nlc = cpu_nchw_to_nlc;
    be->nlc_to_nchw = cpu_nlc_to_nchw;
    be->attention_fwd = cpu_attention_fwd;
    be->attention_bwd = cpu_attention_bwd;
    be->timestep_embedding = cpu_timestep_embedding;
    be->mse_fwd = cpu_mse_fwd;
    be->mse_bwd = cpu_mse_bwd;
    be->adamw = cpu_adamw;
    be->kron_fwd = cpu_kron_fwd;
    be->kron_bwd = cpu_kron_bwd;
    be->kron_merge = cpu_kron_merge;
    be->embedding_bwd = cpu_embedding_bwd;
    return be;
}

void backend_destroy(Backend *be) {
    if (!be) return;
    if (be->name && strcmp(be->name, "cpu") == 0 && be->impl) {
        CpuImpl *im = be->impl;
        for (int t = 0; t < MAX_THREADS; t++)
            for (int s = 0; s < NSLOT; s++) free(im->s[t][s].p);
        free(im);
    }
    free(be);
}

/* ---- text encoder training: embedding backward ----
 * dtable[ids[i]] += dout[i]. Rows with the same id add up, so rows are walked
 * in order (deterministic; n x dim is small next to the encoder's GEMMs). */
static void cpu_embedding_bwd(Backend *be, const float *dout, const int32_t *ids, float *dtable,
                              int64_t n, int dim) {
    (void)be;
    if (!dtable) return;
    for (int64_t i = 0; i < n; i++) {
        float *dst = dtable + (int64_t)ids[i] * dim;
        const float *src = dout + i * dim;
        for (int j = 0; j < dim; j++) dst[j] += src[j];
    }
}

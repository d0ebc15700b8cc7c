/* backend_cpu.c — the CPU implementation of the op table in backend.h.
 *
 * Threading: OpenBLAS is pinned to one thread and all parallelism is ours, so
 * an sgemm inside a parallel loop never oversubscribes the cores. We use a
 * small pool of our own (spin briefly, then sleep on a condition variable)
 * instead of OpenMP regions: libgomp's default busy-wait barriers make every
 * op take a scheduler time slice when the machine is shared (measured 7x
 * slower than one thread at load 6 on 2 cores), while ours degrade to the
 * speed of one thread. Work is cut into chunks whose count depends only on the
 * problem size and chunks are claimed dynamically; reductions go through
 * per-chunk partials summed in chunk order, so results are bitwise identical
 * whatever the thread count or the load.
 *
 * Scratch: im2col columns, attention score tiles, Kronecker intermediates and
 * partial sums live in per-thread scratch slots that only grow, so steady-state
 * training does no mallocs. What the slots hold counts as live memory, in
 * reserved_bytes and peak_bytes, so the reported peak is what the process holds.
 * A convolution's im2col columns cover as many output rows as fit in
 * CONV_COL_FLOATS per thread, not the whole image. The backend is not
 * reentrant: one thread calls it at a time (the train thread).
 */
#include "core/backend.h"
#include "core/half.h"
#include "core/fsutil.h"
#include "core/profile.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* OpenBLAS 0.3.21 (Debian 12) does not recognise recent Xeons (e.g. Sapphire
 * Rapids) and falls back to its SSE3 "Prescott" kernels, which made our GEMMs
 * 1.5-2x slower. A DYNAMIC_ARCH build picks its kernels in a library
 * constructor, before any code of ours, and reads OPENBLAS_CORETYPE only there;
 * so when it settled on Prescott on a CPU with AVX2/AVX-512 we re-run its
 * (exported) selection with the right core type, once, before our first GEMM.
 * The symbols are weak: other OpenBLAS builds simply skip this. A user's own
 * OPENBLAS_CORETYPE is respected. */
extern void gotoblas_dynamic_init(void) __attribute__((weak));
extern void gotoblas_dynamic_quit(void) __attribute__((weak));

static void fix_openblas_core(void) {
    static atomic_int done;
    if (atomic_exchange(&done, 1)) return;
#if defined(__x86_64__)
    if (!gotoblas_dynamic_init || !gotoblas_dynamic_quit || getenv("OPENBLAS_CORETYPE")) return;
    if (strcmp(openblas_get_corename(), "Prescott") != 0) return;
    if (!strstr(openblas_get_config(), "DYNAMIC_ARCH")) return;
    __builtin_cpu_init();
    const char *core = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        core = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        core = "Haswell";
    if (!core) return;
    setenv("OPENBLAS_CORETYPE", core, 0);
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
    unsetenv("OPENBLAS_CORETYPE"); /* child processes choose for themselves */
#endif
}

#define MAX_THREADS 64
#define MAX_CHUNKS 64
#define NSLOT 5
#define SPIN 4000 /* polls before a waiting thread sleeps (~100 us) */
/* Each thread's im2col columns: at most this many floats (64 MB), whole output
 * rows at a time (at least one). Whole-image columns were Cin*9*H*W floats,
 * 2.4 GB for the SD VAE decoder at 512x512 and ~10 GB at 1024x1024; at this cap
 * the SD VAE's GEMMs still get 3,584 to 7,168 columns per band, and were not
 * slower (bench_ops conv). */
#define CONV_COL_FLOATS ((int64_t)16 << 20)

typedef struct {
    float *p;
    size_t n; /* floats */
} Scratch;

/* one parallel job: chunk c of nchunks covers [c*n/nchunks, (c+1)*n/nchunks) */
typedef void (*ChunkFn)(void *ctx, int64_t lo, int64_t hi, int chunk, int tid);

typedef struct CpuImpl CpuImpl;
typedef struct {
    CpuImpl *im;
    int tid;
} Worker;

struct CpuImpl {
    _Atomic size_t live, peak; /* be->alloc blocks plus scratch slots, bytes */
    int nthreads;
    int64_t col_floats;        /* im2col cap per thread (CONV_COL_FLOATS; tests lower it) */
    char desc[48];      /* device_name: "cpu (N threads)" */
    int bf16;           /* KRONA_PREC_BF16: linear and conv2d round their operands */
    _Atomic int failed; /* a bf16 operand copy found no memory (last_error) */
    Scratch s[MAX_THREADS][NSLOT];
    /* pool */
    pthread_t th[MAX_THREADS];
    Worker wk[MAX_THREADS];
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    _Atomic uint64_t ticket; /* see TK_* below */
    _Atomic int done;        /* chunks finished in the current job */
    _Atomic int stop;
    ChunkFn fn;
    void *ctx;
    int64_t n;
    ProfTable prof; /* profile(): wall time per op, read on the calling thread */
};

/* set while running a chunk: nested jobs run inline, on this thread's scratch */
static _Thread_local int in_pool, cur_tid;

static CpuImpl *impl_of(Backend *be) { return (CpuImpl *)be->impl; }

/* profile (backend.h): every op opens a scope named after itself (PROF_OP at
 * its top, cpu_NAME -> "NAME"); an op another op calls is a stage of it. Ops
 * are synchronous, so the wall time between entering and leaving is the op's.
 * Only the calling thread keeps the table (pool workers never profile). */
typedef struct {
    CpuImpl *im;
    int row;
    struct timespec t0;
} ProfScope;
static ProfScope prof_begin(Backend *be, const char *name) {
    ProfScope s = {impl_of(be), -1, {0, 0}};
    if (!s.im->prof.on || in_pool) return s;
    s.row = prof_enter(&s.im->prof, name);
    if (s.row >= 0) clock_gettime(CLOCK_MONOTONIC, &s.t0);
    return s;
}
static void prof_end(ProfScope *s) {
    if (s->row < 0) return;
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    prof_add(&s->im->prof, s->row, (t1.tv_sec - s->t0.tv_sec) * 1e3 + (t1.tv_nsec - s->t0.tv_nsec) * 1e-6);
    prof_leave(&s->im->prof, s->row);
}
#define PROF_OP(be) \
    ProfScope prof_scope_ __attribute__((cleanup(prof_end))) = prof_begin((be), __func__ + 4)

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* ticket layout: generation (24 bits) | chunk count (8) | next unclaimed chunk (32).
 * The count travels in the ticket so a late worker never reads the parameters
 * of a job it cannot claim; after a successful claim the job cannot finish
 * before our chunk does, so fn, ctx and n are stable. */
#define TK_GEN(t) ((uint32_t)((t) >> 40))
#define TK_NCH(t) ((int)(((t) >> 32) & 0xff))
#define TK_NEXT(t) ((uint32_t)(t))

/* claim and run chunks of generation gen until none is left */
static void run_chunks(CpuImpl *im, uint32_t gen, int tid) {
    for (;;) {
        uint64_t t = atomic_load(&im->ticket);
        if (TK_GEN(t) != gen || (int)TK_NEXT(t) >= TK_NCH(t)) return;
        if (!atomic_compare_exchange_weak(&im->ticket, &t, t + 1)) continue;
        int c = (int)TK_NEXT(t), nch = TK_NCH(t);
        int64_t lo = im->n * c / nch, hi = im->n * (c + 1) / nch;
        in_pool = 1;
        cur_tid = tid;
        im->fn(im->ctx, lo, hi, c, tid);
        in_pool = 0;
        if (atomic_fetch_add(&im->done, 1) + 1 == nch) {
            pthread_mutex_lock(&im->mu);
            pthread_cond_broadcast(&im->cv_done);
            pthread_mutex_unlock(&im->mu);
        }
    }
}

static void *worker_main(void *arg) {
    Worker *w = arg;
    CpuImpl *im = w->im;
    uint32_t last = TK_GEN(atomic_load(&im->ticket));
    for (;;) {
        uint32_t g = last;
        for (int i = 0; i < SPIN && g == last && !atomic_load(&im->stop); i++) {
            cpu_relax();
            g = TK_GEN(atomic_load(&im->ticket));
        }
        if (g == last) {
            pthread_mutex_lock(&im->mu);
            while ((g = TK_GEN(atomic_load(&im->ticket))) == last && !atomic_load(&im->stop))
                pthread_cond_wait(&im->cv_work, &im->mu);
            pthread_mutex_unlock(&im->mu);
        }
        if (atomic_load(&im->stop)) return NULL;
        last = g;
        run_chunks(im, g, w->tid);
    }
}

/* Run fn over [0, n) cut into nchunks chunks (a function of the problem size
 * only). Serial when nested, single-threaded, or one chunk. */
static void par_run(CpuImpl *im, int64_t n, int nchunks, ChunkFn fn, void *ctx) {
    if (nchunks < 1) nchunks = 1;
    if (nchunks > MAX_CHUNKS) nchunks = MAX_CHUNKS;
    if (n <= 0) return;
    if (im->nthreads <= 1 || nchunks == 1 || in_pool) {
        int tid = in_pool ? cur_tid : 0;
        for (int c = 0; c < nchunks; c++) fn(ctx, n * c / nchunks, n * (c + 1) / nchunks, c, tid);
        return;
    }
    im->fn = fn;
    im->ctx = ctx;
    im->n = n;
    atomic_store(&im->done, 0);
    uint32_t gen = (TK_GEN(atomic_load(&im->ticket)) + 1) & 0xffffff;
    pthread_mutex_lock(&im->mu);
    atomic_store(&im->ticket, (uint64_t)gen << 40 | (uint64_t)nchunks << 32); /* publishes fn, ctx, n */
    pthread_cond_broadcast(&im->cv_work);
    pthread_mutex_unlock(&im->mu);
    run_chunks(im, gen, 0);
    for (int i = 0; i < SPIN && atomic_load(&im->done) < nchunks; i++) cpu_relax();
    if (atomic_load(&im->done) < nchunks) {
        pthread_mutex_lock(&im->mu);
        while (atomic_load(&im->done) < nchunks) pthread_cond_wait(&im->cv_done, &im->mu);
        pthread_mutex_unlock(&im->mu);
    }
}

/* chunk count for `work` units of cost when ~grain units make a chunk worth it */
static int chunks_for(int64_t work, int64_t grain, int64_t max_by_items) {
    int64_t c = work / (grain > 0 ? grain : 1);
    if (c > max_by_items) c = max_by_items;
    if (c > 16) c = 16;
    return c < 1 ? 1 : (int)c;
}

/* live memory grew by add bytes: keep the peak */
static void account(CpuImpl *im, size_t add) {
    size_t live = atomic_fetch_add(&im->live, add) + add;
    size_t peak = atomic_load(&im->peak);
    while (live > peak && !atomic_compare_exchange_weak(&im->peak, &peak, live)) {}
}

/* scratch slot `slot` of thread `t`, at least n floats; NULL on OOM. Held
 * scratch counts as live memory (the old slot is freed before the new one is
 * taken, so only the new size counts at the peak). */
static float *scratch(CpuImpl *im, int t, int slot, size_t n) {
    Scratch *s = &im->s[t][slot];
    if (s->n < n) {
        free(s->p);
        atomic_fetch_sub(&im->live, s->n * sizeof(float));
        size_t want = n + n / 4 + 64;
        s->p = aligned_alloc(64, ((want * sizeof(float)) + 63) / 64 * 64);
        s->n = s->p ? want : 0;
        account(im, s->n * sizeof(float));
    }
    return s->p;
}

/* scratch for every thread that may run a chunk (grown before the job starts) */
static void scratch_all(CpuImpl *im, int slot, size_t n, float **out) {
    for (int t = 0; t < im->nthreads; t++) out[t] = scratch(im, t, slot, n);
}

/* scratch for the threads a par_run of nchunks chunks runs on: only the
 * calling thread when it runs them inline (see par_run), else all of them */
static void scratch_job(CpuImpl *im, int slot, size_t n, int nchunks, float **out) {
    if (nchunks <= 1 || im->nthreads <= 1 || in_pool) {
        int t = in_pool ? cur_tid : 0;
        out[t] = scratch(im, t, slot, n);
        return;
    }
    scratch_all(im, slot, n, out);
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
    account(im, bytes);
    return (void *)u;
}

static void cpu_free(Backend *be, void *p) {
    if (!p) return;
    AllocHdr *h = (AllocHdr *)p - 1;
    atomic_fetch_sub(&impl_of(be)->live, h->bytes);
    free(h->base);
}

static void cpu_memcpy(Backend *be, void *dst, const void *src, size_t bytes) {
    PROF_OP(be); /* upload, download and copy: one row, "memcpy" */
    if (bytes && dst != src) memcpy(dst, src, bytes);
}
static void cpu_zero(Backend *be, void *p, size_t bytes) {
    PROF_OP(be);
    if (bytes) memset(p, 0, bytes);
}
static void cpu_sync(Backend *be) {}
static int cpu_profile(Backend *be, int on) {
    prof_switch(&impl_of(be)->prof, on);
    return 0;
}
static int cpu_profile_rows(Backend *be, BackendProfileRow *rows, int max) {
    return prof_copy(&impl_of(be)->prof, rows, max);
}
/* BF16 mode rounds operands as it goes: frozen weights change nothing here */
static void cpu_set_frozen(Backend *be, const float *p, int64_t n, int64_t n_w) {}
static size_t cpu_peak(Backend *be) { return atomic_load(&impl_of(be)->peak); }
static size_t cpu_reserved(Backend *be) { return atomic_load(&impl_of(be)->live); }
/* MemAvailable: what the kernel can hand out without swapping */
static size_t cpu_free_bytes(Backend *be) {
    long long b = fs_mem_available();
    return b > 0 ? (size_t)b : 0;
}

/* ------------------------------------------------------------------ gemm */

static void sgemm1(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* BLAS semantics: C = beta C */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(int64_t)i * ldc + j] = beta == 0.f ? 0.f : beta * C[(int64_t)i * ldc + j];
        return;
    }
    cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}

typedef struct {
    int tA, tB, M, N, K, lda, ldb, ldc, splitM;
    float alpha, beta;
    const float *A, *B;
    float *C;
} GemmJob;

static void gemm_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    GemmJob *g = p;
    /* chunk edges on multiples of 16 keep the kernels' panels whole */
    int64_t len = g->splitM ? g->M : g->N;
    int a = (int)(lo * 16), b = (int)(hi * 16 < len ? hi * 16 : len);
    if (a >= b) return;
    if (g->splitM) {
        const float *Ai = g->tA ? g->A + a : g->A + (int64_t)a * g->lda;
        sgemm1(g->tA, g->tB, b - a, g->N, g->K, g->alpha, Ai, g->lda, g->B, g->ldb, g->beta,
               g->C + (int64_t)a * g->ldc, g->ldc);
    } else {
        const float *Bj = g->tB ? g->B + (int64_t)a * g->ldb : g->B + a;
        sgemm1(g->tA, g->tB, g->M, b - a, g->K, g->alpha, g->A, g->lda, Bj, g->ldb, g->beta,
               g->C + a, g->ldc);
    }
}

/* one GEMM split over the pool along the larger of M, N when it is big enough;
 * each C element is computed the same way whatever the split */
static void sgemm_par(CpuImpl *im, int tA, int tB, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C,
                      int ldc) {
    double flops = 2.0 * M * N * K;
    int splitM = M >= N, len = splitM ? M : N;
    int64_t units = (len + 15) / 16;
    int nch = flops < 4e6 ? 1 : chunks_for((int64_t)(flops / 2e6), 1, units);
    if (nch > 4) nch = 4;
    if (nch <= 1 || im->nthreads <= 1 || in_pool) {
        sgemm1(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    GemmJob g = {tA, tB, M, N, K, lda, ldb, ldc, splitM, alpha, beta, A, B, C};
    par_run(im, units, nch, gemm_chunk, &g);
}

/* ---- BF16 mode (the reference of CUDA's bf16 GEMMs, backend.h) ----
 * The operand X (rows x cols, row stride ld) copied with every element rounded
 * to bf16, same layout; NULL when there is no memory (counted as live). */
static float *bf16_operand(CpuImpl *im, const float *X, int rows, int cols, int ld, size_t *bytes) {
    size_t span = (size_t)(rows - 1) * (size_t)ld + (size_t)cols;
    float *c = malloc(span * sizeof *c);
    *bytes = c ? span * sizeof *c : 0;
    if (!c) { atomic_store(&im->failed, 1); return NULL; }
    account(im, *bytes);
    for (size_t i = 0; i < span; i++) c[i] = bf16_round(X[i]);
    return c;
}

/* sgemm_par for linear and conv2d: in BF16 mode both operands are rounded
 * first and the exact products summed in f32 */
static void gemm_op(CpuImpl *im, int tA, int tB, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (!im->bf16 || M <= 0 || N <= 0 || K <= 0) {
        sgemm_par(im, tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    size_t na, nb;
    float *a = bf16_operand(im, A, tA ? K : M, tA ? M : K, lda, &na);
    float *b = a ? bf16_operand(im, B, tB ? N : K, tB ? K : N, ldb, &nb) : NULL;
    if (a && b) sgemm_par(im, tA, tB, M, N, K, alpha, a, lda, b, ldb, beta, C, ldc);
    if (b) { free(b); atomic_fetch_sub(&im->live, nb); }
    if (a) { free(a); atomic_fetch_sub(&im->live, na); }
}

static void cpu_gemm(Backend *be, int transA, int transB, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc) {
    PROF_OP(be);
    sgemm_par(impl_of(be), transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

typedef struct {
    GemmJob g;
    int64_t sA, sB, sC;
} BatchJob;

static void batch_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    BatchJob *j = p;
    GemmJob *g = &j->g;
    for (int64_t b = lo; b < hi; b++)
        sgemm1(g->tA, g->tB, g->M, g->N, g->K, g->alpha, g->A + b * j->sA, g->lda, g->B + b * j->sB,
               g->ldb, g->beta, g->C + b * j->sC, g->ldc);
}

static void cpu_gemm_batched(Backend *be, int transA, int transB, int M, int N, int K,
                             float alpha, const float *A, int lda, int64_t sA, const float *B,
                             int ldb, int64_t sB, float beta, float *C, int ldc, int64_t sC,
                             int batch) {
    PROF_OP(be);
    CpuImpl *im = impl_of(be);
    double flops = 2.0 * M * N * K;
    if (flops >= 4e6 || batch == 1) { /* big matrices: split each one instead */
        for (int b = 0; b < batch; b++)
            sgemm_par(im, transA, transB, M, N, K, alpha, A + b * sA, lda, B + b * sB, ldb, beta, C + b * sC, ldc);
        return;
    }
    BatchJob j = {{transA, transB, M, N, K, lda, ldb, ldc, 0, alpha, beta, A, B, C}, sA, sB, sC};
    par_run(im, batch, chunks_for((int64_t)(flops * batch), 1000000, batch), batch_chunk, &j);
}

/* ------------------------------------------------------------------ linear */

/* db[j] += sum_i dy[i, j]: per-chunk partials summed in chunk order */
typedef struct {
    const float *dy;
    float *part[MAX_CHUNKS];
    int n;
} ColSumJob;

static void colsum_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    ColSumJob *j = p;
    float *acc = j->part[chunk];
    memset(acc, 0, sizeof(float) * j->n);
    for (int64_t i = lo; i < hi; i++) {
        const float *r = j->dy + i * j->n;
        for (int c = 0; c < j->n; c++) acc[c] += r[c];
    }
}

static void col_sum_acc(CpuImpl *im, const float *dy, float *db, int64_t M, int n) {
    int nch = chunks_for(M * n, 32768, M);
    ColSumJob j = {.dy = dy, .n = n};
    float *buf = scratch(im, 0, 4, (size_t)nch * n);
    for (int c = 0; c < nch; c++) j.part[c] = buf + (int64_t)c * n;
    par_run(im, M, nch, colsum_chunk, &j);
    for (int c = 0; c < nch; c++)
        for (int k = 0; k < n; k++) db[k] += j.part[c][k];
}

typedef struct {
    float *y;
    const float *b;
    int out;
} BiasRowsJob;

static void bias_rows_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    BiasRowsJob *j = p;
    for (int64_t i = lo; i < hi; i++) memcpy(j->y + i * j->out, j->b, sizeof(float) * j->out);
}

static void cpu_linear_fwd(Backend *be, const float *x, const float *W, const float *b, float *y,
                           int64_t M, int in, int out) {
    PROF_OP(be);
    CpuImpl *im = impl_of(be);
    float beta = 0.f;
    if (b) {
        BiasRowsJob j = {y, b, out};
        par_run(im, M, chunks_for(M * out, 65536, M), bias_rows_chunk, &j);
        beta = 1.f;
    }
    gemm_op(im, 0, 1, (int)M, out, in, 1.f, x, in, W, in, beta, y, out);
}

static void cpu_linear_bwd(Backend *be, const float *dy, const float *x, const float *W, float *dx,
                           float *dW, float *db, int64_t M, int in, int out) {
    PROF_OP(be);
    CpuImpl *im = impl_of(be);
    if (dx) gemm_op(im, 0, 0, (int)M, in, out, 1.f, dy, out, W, in, 1.f, dx, in);
    if (dW) gemm_op(im, 1, 0, out, in, (int)M, 1.f, dy, out, x, in, 1.f, dW, in);
    if (db) col_sum_acc(im, dy, db, M, out);
}

/* ------------------------------------------------------------------ conv2d */

/* Columns of output rows [oy0, oy1) for channels [c0, c1):
 * col[(c*k+ki)*k+kj][(oy-oy0)*Wo+ox] = x[c][oy*s-p+ki][ox*s-p+kj] (0 outside) */
static void im2col(const float *x, float *col, int c0, int c1, int H, int W, int k, int s, int p,
                   int oy0, int oy1, int Wo) {
    int64_t ncols = (int64_t)(oy1 - oy0) * Wo;
    for (int c = c0; c < c1; c++)
        for (int ki = 0; ki < k; ki++)
            for (int kj = 0; kj < k; kj++) {
                float *dst = col + ((int64_t)(c * k + ki) * k + kj) * ncols;
                const float *xc = x + (int64_t)c * H * W;
                /* valid ox range: 0 <= ox*s - p + kj < W */
                int ox0 = 0, ox1 = Wo;
                while (ox0 < Wo && ox0 * s - p + kj < 0) ox0++;
                while (ox1 > ox0 && (ox1 - 1) * s - p + kj >= W) ox1--;
                for (int oy = oy0; oy < oy1; oy++) {
                    float *d = dst + (int64_t)(oy - oy0) * Wo;
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

/* dx[c][iy][ix] += dcol[...]: the adjoint of im2col, same ranges */
static void col2im_acc(const float *col, float *dx, int c0, int c1, int H, int W, int k, int s,
                       int p, int oy0, int oy1, int Wo) {
    int64_t ncols = (int64_t)(oy1 - oy0) * Wo;
    for (int c = c0; c < c1; c++)
        for (int ki = 0; ki < k; ki++)
            for (int kj = 0; kj < k; kj++) {
                const float *src = col + ((int64_t)(c * k + ki) * k + kj) * ncols;
                float *xc = dx + (int64_t)c * H * W;
                int ox0 = 0, ox1 = Wo;
                while (ox0 < Wo && ox0 * s - p + kj < 0) ox0++;
                while (ox1 > ox0 && (ox1 - 1) * s - p + kj >= W) ox1--;
                for (int oy = oy0; oy < oy1; oy++) {
                    int iy = oy * s - p + ki;
                    if (iy < 0 || iy >= H) continue;
                    const float *sr = src + (int64_t)(oy - oy0) * Wo;
                    float *xr = xc + (int64_t)iy * W + kj - p;
                    if (s == 1)
                        for (int ox = ox0; ox < ox1; ox++) xr[ox] += sr[ox];
                    else
                        for (int ox = ox0; ox < ox1; ox++) xr[ox * s] += sr[ox];
                }
            }
}

/* im2col / col2im_acc of one row band split by channels over the pool (a
 * batch-1 convolution would otherwise copy on one thread while the other
 * waits for the GEMM); nested in a per-image job it runs inline. Channels
 * write disjoint rows of col and disjoint planes of dx, so any split gives
 * the same bytes. */
typedef struct {
    const float *x, *col;
    float *out;
    int H, W, k, s, p, oy0, oy1, Wo;
} ColJob;

static void im2col_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    ColJob *j = p;
    im2col(j->x, j->out, (int)lo, (int)hi, j->H, j->W, j->k, j->s, j->p, j->oy0, j->oy1, j->Wo);
}

static void col2im_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    ColJob *j = p;
    col2im_acc(j->col, j->out, (int)lo, (int)hi, j->H, j->W, j->k, j->s, j->p, j->oy0, j->oy1, j->Wo);
}

static void band_cols(CpuImpl *im, int adjoint, const float *in, float *out, int C, int H, int W,
                      int k, int s, int p, int oy0, int oy1, int Wo) {
    ColJob j = {adjoint ? NULL : in, adjoint ? in : NULL, out, H, W, k, s, p, oy0, oy1, Wo};
    int64_t work = (int64_t)C * k * k * (oy1 - oy0) * Wo;
    par_run(im, C, chunks_for(work, 1 << 18, C), adjoint ? col2im_chunk : im2col_chunk, &j);
}

typedef struct {
    const float *x, *w, *b, *dy;
    float *y, *dx, *dw;
    int N, Cin, H, W, Cout, k, s, p, Ho, Wo, direct;
    int rows;                  /* output rows per im2col band (Ho when direct) */
    int64_t HWo, HWi, KK;
    float *cols[MAX_THREADS], *dcols[MAX_THREADS];
    float *dwpart[MAX_CHUNKS]; /* per-chunk dw partials (NULL: write dw directly) */
    CpuImpl *im;
} ConvJob;

/* shapes, and the row band: as many output rows as fit in the column cap,
 * spread evenly (a function of the shape only, so results do not depend on
 * the thread count) */
static void conv_plan(ConvJob *j, CpuImpl *im) {
    j->Ho = (j->H + 2 * j->p - j->k) / j->s + 1;
    j->Wo = (j->W + 2 * j->p - j->k) / j->s + 1;
    j->HWo = (int64_t)j->Ho * j->Wo;
    j->HWi = (int64_t)j->H * j->W;
    j->KK = (int64_t)j->Cin * j->k * j->k;
    j->direct = (j->k == 1 && j->s == 1 && j->p == 0);
    j->rows = j->Ho;
    if (!j->direct) {
        int64_t fit = im->col_floats / (j->KK * j->Wo);
        if (fit < 1) fit = 1;
        if (fit < j->Ho) {
            int64_t bands = (j->Ho + fit - 1) / fit;
            j->rows = (int)((j->Ho + bands - 1) / bands);
        }
    }
}

static void conv_fwd_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    ConvJob *j = p;
    for (int64_t n = lo; n < hi; n++) {
        const float *xn = j->x + n * j->Cin * j->HWi;
        float *yn = j->y + n * j->Cout * j->HWo;
        float beta = 0.f;
        if (j->b) {
            for (int c = 0; c < j->Cout; c++)
                for (int64_t i = 0; i < j->HWo; i++) yn[c * j->HWo + i] = j->b[c];
            beta = 1.f;
        }
        if (j->direct) {
            /* one image per job (batch 1): the GEMM itself splits over the pool */
            gemm_op(j->im, 0, 0, j->Cout, (int)j->HWo, (int)j->KK, 1.f, j->w, (int)j->KK, xn,
                      (int)j->HWo, beta, yn, (int)j->HWo);
            continue;
        }
        /* y[:, band] = w cols(band), band by band: every y element is the same
         * dot product over KK as with whole-image columns */
        for (int oy0 = 0; oy0 < j->Ho; oy0 += j->rows) {
            int oy1 = oy0 + j->rows < j->Ho ? oy0 + j->rows : j->Ho, nc = (oy1 - oy0) * j->Wo;
            band_cols(j->im, 0, xn, j->cols[tid], j->Cin, j->H, j->W, j->k, j->s, j->p, oy0, oy1, j->Wo);
            gemm_op(j->im, 0, 0, j->Cout, nc, (int)j->KK, 1.f, j->w, (int)j->KK, j->cols[tid], nc,
                      beta, yn + (int64_t)oy0 * j->Wo, (int)j->HWo);
        }
    }
}

static void cpu_conv2d_fwd(Backend *be, const float *x, const float *w, const float *b, float *y,
                           int N, int Cin, int H, int W, int Cout, int k, int s, int p) {
    PROF_OP(be);
    CpuImpl *im = impl_of(be);
    ConvJob j = {.x = x, .w = w, .b = b, .y = y, .N = N, .Cin = Cin, .H = H, .W = W, .Cout = Cout,
                 .k = k, .s = s, .p = p, .im = im};
    conv_plan(&j, im);
    if (!j.direct) scratch_job(im, 0, (size_t)(j.KK * j.rows * j.Wo), N, j.cols);
    par_run(im, N, N, conv_fwd_chunk, &j);
}

static void conv_bwd_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    ConvJob *j = p;
    float *dw = j->dwpart[chunk] ? j->dwpart[chunk] : j->dw;
    if (j->dwpart[chunk]) memset(dw, 0, sizeof(float) * j->Cout * j->KK);
    int HWo = (int)j->HWo, KK = (int)j->KK;
    for (int64_t n = lo; n < hi; n++) {
        const float *xn = j->x + n * j->Cin * j->HWi;
        const float *dyn = j->dy + n * j->Cout * j->HWo;
        float *dxn = j->dx ? j->dx + n * j->Cin * j->HWi : NULL;
        if (j->direct) {
            if (dw) gemm_op(j->im, 0, 1, j->Cout, KK, HWo, 1.f, dyn, HWo, xn, HWo, 1.f, dw, KK);
            if (dxn) gemm_op(j->im, 1, 0, j->Cin, HWo, j->Cout, 1.f, j->w, j->Cin, dyn, HWo, 1.f, dxn, HWo);
            continue;
        }
        /* band by band: dw += dy(band) cols(band)^T sums the bands in order;
         * dx += col2im(w^T dy(band)) */
        for (int oy0 = 0; oy0 < j->Ho; oy0 += j->rows) {
            int oy1 = oy0 + j->rows < j->Ho ? oy0 + j->rows : j->Ho, nc = (oy1 - oy0) * j->Wo;
            const float *dyb = dyn + (int64_t)oy0 * j->Wo;
            if (dw) {
                band_cols(j->im, 0, xn, j->cols[tid], j->Cin, j->H, j->W, j->k, j->s, j->p, oy0, oy1, j->Wo);
                gemm_op(j->im, 0, 1, j->Cout, KK, nc, 1.f, dyb, HWo, j->cols[tid], nc, 1.f, dw, KK);
            }
            if (dxn) {
                gemm_op(j->im, 1, 0, KK, nc, j->Cout, 1.f, j->w, KK, dyb, HWo, 0.f, j->dcols[tid], nc);
                band_cols(j->im, 1, j->dcols[tid], dxn, j->Cin, j->H, j->W, j->k, j->s, j->p, oy0, oy1, j->Wo);
            }
        }
    }
}

static void cpu_conv2d_bwd(Backend *be, const float *dy, const float *x, const float *w, float *dx,
                           float *dw, float *db, int N, int Cin, int H, int W, int Cout, int k,
                           int s, int p) {
    PROF_OP(be);
    CpuImpl *im = impl_of(be);
    ConvJob j = {.x = x, .w = w, .dy = dy, .dx = dx, .dw = dw, .N = N, .Cin = Cin, .H = H, .W = W,
                 .Cout = Cout, .k = k, .s = s, .p = p, .im = im};
    conv_plan(&j, im);
    if (db)
        for (int n = 0; n < N; n++)
            for (int c = 0; c < Cout; c++) {
                const float *r = dy + ((int64_t)n * Cout + c) * j.HWo;
                float acc = 0.f;
                for (int64_t i = 0; i < j.HWo; i++) acc += r[i];
                db[c] += acc;
            }
    if (!dx && !dw) return;
    /* images go in at most 4 fixed groups; each group has its own dw partial */
    int nch = N < 4 ? N : 4;
    size_t band = (size_t)(j.KK * j.rows * j.Wo);
    if (!j.direct && dw) scratch_job(im, 0, band, nch, j.cols);
    if (!j.direct && dx) scratch_job(im, 1, band, nch, j.dcols);
    if (dw && nch > 1) {
        float *buf = scratch(im, 0, 2, (size_t)nch * Cout * j.KK);
        for (int c = 0; c < nch; c++) j.dwpart[c] = buf + (int64_t)c * Cout * j.KK;
    }
    par_run(im, N, nch, conv_bwd_chunk, &j);
    if (dw && nch > 1)
        for (int c = 0; c < nch; c++)
            for (int64_t i = 0; i < Cout * j.KK; i++) dw[i] += j.dwpart[c][i];
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

static inline float sigmoidf(float x) { return 1.f / (1.f + expf(-x)); }
/* dy times SiLU's slope at n (silu_bwd's expression, and group_norm_silu_bwd's) */
static inline float silu_back1(float dy, float n) {
    float s = sigmoidf(n);
    return dy * s * (1.f + n * (1.f - s));
}

typedef struct {
    const float *x, *gamma, *beta, *dy, *mean, *rstd;
    float *y, *mo, *ro, *dx, *sdx, *sd;
    int C, G;
    int64_t HW;
    float eps;
    int silu; /* group norm then SiLU (group_norm_silu_*) */
    float *part[MAX_CHUNKS];
} NormJob;

static void gn_fwd_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    NormJob *j = p;
    int cpg = j->C / j->G;
    for (int64_t ng = lo; ng < hi; ng++) {
        int64_t n = ng / j->G, g = ng % j->G;
        int64_t off = (n * j->C + g * cpg) * j->HW;
        float mu, rs;
        moments(j->x + off, cpg * j->HW, j->eps, &mu, &rs);
        j->mo[ng] = mu;
        j->ro[ng] = rs;
        for (int c = 0; c < cpg; c++) {
            int64_t cc = g * cpg + c;
            float a = rs * (j->gamma ? j->gamma[cc] : 1.f);
            float bb = (j->beta ? j->beta[cc] : 0.f) - mu * a;
            const float *xr = j->x + off + c * j->HW;
            float *yr = j->y + off + c * j->HW;
            if (j->silu)
                for (int64_t i = 0; i < j->HW; i++) {
                    float n = xr[i] * a + bb;
                    yr[i] = n * sigmoidf(n);
                }
            else
                for (int64_t i = 0; i < j->HW; i++) yr[i] = xr[i] * a + bb;
        }
    }
}

static void gn_fwd(Backend *be, const float *x, const float *gamma, const float *beta, float *y, float *mean,
                   float *rstd, int N, int C, int64_t HW, int G, float eps, int silu) {
    NormJob j = {.x = x, .gamma = gamma, .beta = beta, .y = y, .mo = mean, .ro = rstd, .C = C, .G = G,
                 .HW = HW, .eps = eps, .silu = silu};
    par_run(impl_of(be), (int64_t)N * G, chunks_for((int64_t)N * C * HW, 16384, (int64_t)N * G), gn_fwd_chunk, &j);
}
static void cpu_group_norm_fwd(Backend *be, const float *x, const float *gamma, const float *beta,
                               float *y, float *mean, float *rstd, int N, int C, int64_t HW, int G,
                               float eps) {
    PROF_OP(be);
    gn_fwd(be, x, gamma, beta, y, mean, rstd, N, C, HW, G, eps, 0);
}
static void cpu_group_norm_silu_fwd(Backend *be, const float *x, const float *gamma, const float *beta,
                                    float *y, float *mean, float *rstd, int N, int C, int64_t HW, int G,
                                    float eps) {
    PROF_OP(be);
    gn_fwd(be, x, gamma, beta, y, mean, rstd, N, C, HW, G, eps, 1);
}

static void gn_bwd_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    NormJob *j = p;
    int C = j->C, cpg = C / j->G;
    int64_t HW = j->HW;
    for (int64_t ng = lo; ng < hi; ng++) {
        int64_t n = ng / j->G, g = ng % j->G;
        int64_t off = (n * C + g * cpg) * HW;
        float mu = j->mean[ng], rs = j->rstd[ng];
        double sum_dxh = 0.0, sum_dxh_xh = 0.0; /* sums of dxhat, dxhat*xhat */
        for (int c = 0; c < cpg; c++) {
            int64_t cc = g * cpg + c;
            float gm = j->gamma ? j->gamma[cc] : 1.f;
            /* with SiLU: dy times SiLU's slope at gn(x), as the forward computed gn(x) */
            float fa = rs * gm, fb = (j->beta ? j->beta[cc] : 0.f) - mu * fa;
            const float *xr = j->x + off + c * HW, *dr = j->dy + off + c * HW;
            float a = 0.f, bsum = 0.f;
            for (int64_t i = 0; i < HW; i++) {
                float xh = (xr[i] - mu) * rs;
                float d = j->silu ? silu_back1(dr[i], xr[i] * fa + fb) : dr[i];
                a += d * xh;
                bsum += d;
            }
            j->sdx[n * C + cc] = a; /* per (n, c): reduced over n by the caller */
            j->sd[n * C + cc] = bsum;
            sum_dxh += (double)gm * bsum;
            sum_dxh_xh += (double)gm * a;
        }
        if (!j->dx) continue;
        double inv = 1.0 / ((double)cpg * HW);
        float m1 = (float)(sum_dxh * inv), m2 = (float)(sum_dxh_xh * inv);
        for (int c = 0; c < cpg; c++) {
            int64_t cc = g * cpg + c;
            float gm = j->gamma ? j->gamma[cc] : 1.f;
            float fa = rs * gm, fb = (j->beta ? j->beta[cc] : 0.f) - mu * fa;
            const float *xr = j->x + off + c * HW, *dr = j->dy + off + c * HW;
            float *o = j->dx + off + c * HW;
            for (int64_t i = 0; i < HW; i++) {
                float xh = (xr[i] - mu) * rs;
                float d = j->silu ? silu_back1(dr[i], xr[i] * fa + fb) : dr[i];
                o[i] += rs * (gm * d - m1 - xh * m2);
            }
        }
    }
}

static void gn_bwd(Backend *be, const float *dy, const float *x, const float *gamma, const float *beta,
                   const float *mean, const float *rstd, float *dx, float *dgamma, float *dbeta, int N, int C,
                   int64_t HW, int G, int silu) {
    CpuImpl *im = impl_of(be);
    float *sdx = scratch(im, 0, 4, (size_t)2 * N * C);
    NormJob j = {.x = x, .gamma = gamma, .beta = beta, .dy = dy, .mean = mean, .rstd = rstd, .dx = dx,
                 .sdx = sdx, .sd = sdx + (int64_t)N * C, .C = C, .G = G, .HW = HW, .silu = silu};
    par_run(im, (int64_t)N * G, chunks_for((int64_t)N * C * HW, 16384, (int64_t)N * G), gn_bwd_chunk, &j);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            if (dgamma) dgamma[c] += j.sdx[(int64_t)n * C + c];
            if (dbeta) dbeta[c] += j.sd[(int64_t)n * C + c];
        }
}
static void cpu_group_norm_bwd(Backend *be, const float *dy, const float *x, const float *gamma,
                               const float *mean, const float *rstd, float *dx, float *dgamma,
                               float *dbeta, int N, int C, int64_t HW, int G) {
    PROF_OP(be);
    gn_bwd(be, dy, x, gamma, NULL, mean, rstd, dx, dgamma, dbeta, N, C, HW, G, 0);
}
static void cpu_group_norm_silu_bwd(Backend *be, const float *dy, const float *x, const float *gamma,
                                    const float *beta, const float *mean, const float *rstd, float *dx,
                                    float *dgamma, float *dbeta, int N, int C, int64_t HW, int G) {
    PROF_OP(be);
    gn_bwd(be, dy, x, gamma, beta, mean, rstd, dx, dgamma, dbeta, N, C, HW, G, 1);
}

static void ln_fwd_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    NormJob *j = p;
    int C = j->C;
    for (int64_t i = lo; i < hi; i++) {
        const float *xr = j->x + i * C;
        float *yr = j->y + i * C;
        float mu, rs;
        moments(xr, C, j->eps, &mu, &rs);
        j->mo[i] = mu;
        j->ro[i] = rs;
        for (int c = 0; c < C; c++)
            yr[c] = (xr[c] - mu) * rs * (j->gamma ? j->gamma[c] : 1.f) + (j->beta ? j->beta[c] : 0.f);
    }
}

static void cpu_layer_norm_fwd(Backend *be, const float *x, const float *gamma, const float *beta,
                               float *y, float *mean, float *rstd, int64_t M, int C, float eps) {
    PROF_OP(be);
    NormJob j = {.x = x, .gamma = gamma, .beta = beta, .y = y, .mo = mean, .ro = rstd, .C = C, .eps = eps};
    par_run(impl_of(be), M, chunks_for(M * C, 16384, M), ln_fwd_chunk, &j);
}

static void ln_bwd_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    NormJob *j = p;
    int C = j->C;
    float *pg = j->part[chunk], *pb = pg + C;
    memset(pg, 0, sizeof(float) * 2 * C);
    for (int64_t i = lo; i < hi; i++) {
        const float *xr = j->x + i * C, *dr = j->dy + i * C;
        float mu = j->mean[i], rs = j->rstd[i];
        float s1 = 0.f, s2 = 0.f; /* sums of dxhat, dxhat*xhat */
        for (int c = 0; c < C; c++) {
            float xh = (xr[c] - mu) * rs;
            float dxh = dr[c] * (j->gamma ? j->gamma[c] : 1.f);
            s1 += dxh;
            s2 += dxh * xh;
            pg[c] += dr[c] * xh;
            pb[c] += dr[c];
        }
        if (!j->dx) continue;
        float m1 = s1 / C, m2 = s2 / C;
        float *o = j->dx + i * C;
        for (int c = 0; c < C; c++) {
            float xh = (xr[c] - mu) * rs;
            o[c] += rs * (dr[c] * (j->gamma ? j->gamma[c] : 1.f) - m1 - xh * m2);
        }
    }
}

static void cpu_layer_norm_bwd(Backend *be, const float *dy, const float *x, const float *gamma,
                               const float *mean, const float *rstd, float *dx, float *dgamma,
                               float *dbeta, int64_t M, int C) {
    PROF_OP(be);
    CpuImpl *im = impl_of(be);
    int nch = chunks_for(M * C, 16384, M);
    NormJob j = {.x = x, .gamma = gamma, .dy = dy, .mean = mean, .rstd = rstd, .dx = dx, .C = C};
    float *buf = scratch(im, 0, 4, (size_t)nch * 2 * C);
    for (int c = 0; c < nch; c++) j.part[c] = buf + (int64_t)c * 2 * C;
    par_run(im, M, nch, ln_bwd_chunk, &j);
    for (int t = 0; t < nch; t++)
        for (int c = 0; c < C; c++) {
            if (dgamma) dgamma[c] += j.part[t][c];
            if (dbeta) dbeta[c] += j.part[t][C + c];
        }
}

/* ------------------------------------------------------------------ pointwise */

/* exp for the attention softmax: Cephes-style range reduction and degree-5
 * polynomial, ~2 ulp, written so the compiler vectorises it; exact 0 below
 * the float range (masked scores are -inf) */
static inline float fast_expf(float x) {
    float xc = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    float n = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float q = 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    q = q * r * r + r + 1.f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float sc;
    memcpy(&sc, &bits, sizeof sc);
    return x < -87.3f ? 0.f : q * sc;
}

static inline float gelu1(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
static inline float gelu_grad1(float x) {
    return 0.5f * (1.f + erff(x * 0.70710678118654752f)) + x * 0.39894228040143268f * expf(-0.5f * x * x);
}

enum { PW_SILU, PW_SILU_B, PW_GELU, PW_GELU_B, PW_QGELU, PW_QGELU_B, PW_ADD, PW_AXPY, PW_SCALE, PW_CBIAS, PW_CSUM,
       PW_MSE_B };

typedef struct {
    int op, D;
    const float *a, *b;
    float *y;
    float alpha;
    int64_t HW;
} PwJob;

static void pw_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    PwJob *j = p;
    const float *a = j->a, *b = j->b;
    float *y = j->y, al = j->alpha;
    switch (j->op) {
    case PW_SILU:
        for (int64_t i = lo; i < hi; i++) y[i] = a[i] * sigmoidf(a[i]);
        break;
    case PW_SILU_B: /* a = dy, b = x */
        for (int64_t i = lo; i < hi; i++) y[i] += silu_back1(a[i], b[i]);
        break;
    case PW_GELU:
        for (int64_t i = lo; i < hi; i++) y[i] = gelu1(a[i]);
        break;
    case PW_GELU_B:
        for (int64_t i = lo; i < hi; i++) y[i] += a[i] * gelu_grad1(b[i]);
        break;
    case PW_QGELU:
        for (int64_t i = lo; i < hi; i++) y[i] = a[i] * sigmoidf(1.702f * a[i]);
        break;
    case PW_QGELU_B: /* a = dy, b = x: d/dx x s(kx) = s + k x s (1 - s) */
        for (int64_t i = lo; i < hi; i++) {
            float s = sigmoidf(1.702f * b[i]);
            y[i] += a[i] * s * (1.f + 1.702f * b[i] * (1.f - s));
        }
        break;
    case PW_ADD:
        for (int64_t i = lo; i < hi; i++) y[i] = a[i] + b[i];
        break;
    case PW_AXPY:
        for (int64_t i = lo; i < hi; i++) y[i] += al * a[i];
        break;
    case PW_SCALE:
        for (int64_t i = lo; i < hi; i++) y[i] *= al;
        break;
    case PW_MSE_B: /* a = pred, b = target */
        for (int64_t i = lo; i < hi; i++) y[i] += al * (a[i] - b[i]);
        break;
    case PW_CBIAS: /* rows (n, c) of x[N*C, HW] += v[n*C + c] */
        for (int64_t i = lo; i < hi; i++) {
            float *r = y + i * j->HW, v = a[i];
            for (int64_t k = 0; k < j->HW; k++) r[k] += v;
        }
        break;
    case PW_CSUM:
        for (int64_t i = lo; i < hi; i++) {
            const float *r = a + i * j->HW;
            float acc = 0.f;
            for (int64_t k = 0; k < j->HW; k++) acc += r[k];
            y[i] += acc;
        }
        break;
    }
}

/* elementwise work of n items at `per` cost units each */
static void pw_run(CpuImpl *im, PwJob *j, int64_t n, int64_t per) {
    par_run(im, n, chunks_for(n * per, 32768, n), pw_chunk, j);
}

static void cpu_silu_fwd(Backend *be, const float *x, float *y, int64_t n) {
    PROF_OP(be);
    PwJob j = {.op = PW_SILU, .a = x, .y = y};
    pw_run(impl_of(be), &j, n, 1);
}
static void cpu_silu_bwd(Backend *be, const float *dy, const float *x, float *dx, int64_t n) {
    PROF_OP(be);
    PwJob j = {.op = PW_SILU_B, .a = dy, .b = x, .y = dx};
    pw_run(impl_of(be), &j, n, 1);
}
static void cpu_gelu_fwd(Backend *be, const float *x, float *y, int64_t n) {
    PROF_OP(be);
    PwJob j = {.op = PW_GELU, .a = x, .y = y};
    pw_run(impl_of(be), &j, n, 2);
}
static void cpu_gelu_bwd(Backend *be, const float *dy, const float *x, float *dx, int64_t n) {
    PROF_OP(be);
    PwJob j = {.op = PW_GELU_B, .a = dy, .b = x, .y = dx};
    pw_run(impl_of(be), &j, n, 2);
}
static void cpu_quick_gelu_fwd(Backend *be, const float *x, float *y, int64_t n) {
    PROF_OP(be);
    PwJob j = {.op = PW_QGELU, .a = x, .y = y};
    pw_run(impl_of(be), &j, n, 1);
}
static void cpu_quick_gelu_bwd(Backend *be, const float *dy, const float *x, float *dx, int64_t n) {
    PROF_OP(be);
    if (!dx) return;
    PwJob j = {.op = PW_QGELU_B, .a = dy, .b = x, .y = dx};
    pw_run(impl_of(be), &j, n, 1);
}
static void cpu_embedding_fwd(Backend *be, const float *table, const int32_t *ids, float *out,
                              int64_t n, int dim) {
    PROF_OP(be);
    /* the table size is unknown here; a negative id yields a zero row, not a wild read */
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0) memset(out + i * dim, 0, sizeof(float) * dim);
        else memcpy(out + i * dim, table + (int64_t)ids[i] * dim, sizeof(float) * dim);
    }
}
static void cpu_add(Backend *be, const float *a, const float *b, float *y, int64_t n) {
    PROF_OP(be);
    PwJob j = {.op = PW_ADD, .a = a, .b = b, .y = y};
    pw_run(impl_of(be), &j, n, 1);
}
static void cpu_axpy(Backend *be, float alpha, const float *x, float *y, int64_t n) {
    PROF_OP(be);
    PwJob j = {.op = PW_AXPY, .a = x, .y = y, .alpha = alpha};
    pw_run(impl_of(be), &j, n, 1);
}
static void cpu_scale(Backend *be, float *x, float alpha, int64_t n) {
    PROF_OP(be);
    PwJob j = {.op = PW_SCALE, .y = x, .alpha = alpha};
    pw_run(impl_of(be), &j, n, 1);
}
static void cpu_add_channel_bias(Backend *be, float *x, const float *v, int N, int C, int64_t HW) {
    PROF_OP(be);
    PwJob j = {.op = PW_CBIAS, .a = v, .y = x, .HW = HW};
    pw_run(impl_of(be), &j, (int64_t)N * C, HW);
}
static void cpu_channel_sum_bwd(Backend *be, const float *dy, float *dv, int N, int C, int64_t HW) {
    PROF_OP(be);
    PwJob j = {.op = PW_CSUM, .a = dy, .y = dv, .HW = HW};
    pw_run(impl_of(be), &j, (int64_t)N * C, HW);
}

/* ------------------------------------------------------------------ shape ops */

static void cpu_concat_channels(Backend *be, const float *a, const float *b, float *y, int N,
                                int Ca, int Cb, int64_t HW) {
    PROF_OP(be);
    for (int n = 0; n < N; n++) {
        float *yn = y + (int64_t)n * (Ca + Cb) * HW;
        memcpy(yn, a + (int64_t)n * Ca * HW, sizeof(float) * Ca * HW);
        memcpy(yn + (int64_t)Ca * HW, b + (int64_t)n * Cb * HW, sizeof(float) * Cb * HW);
    }
}
static void cpu_concat_channels_bwd(Backend *be, const float *dy, float *da, float *db, int N,
                                    int Ca, int Cb, int64_t HW) {
    PROF_OP(be);
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

typedef struct {
    const float *x;
    float *y;
    int H, W, bwd;
} UpJob;

static void up_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    UpJob *j = p;
    int H = j->H, W = j->W;
    for (int64_t nc = lo; nc < hi; nc++) {
        if (!j->bwd) {
            const float *xc = j->x + nc * H * W;
            float *yc = j->y + nc * 4 * H * W;
            for (int i = 0; i < H; i++) {
                float *r0 = yc + (int64_t)(2 * i) * 2 * W, *r1 = r0 + 2 * W;
                const float *xr = xc + (int64_t)i * W;
                for (int k = 0; k < W; k++) r0[2 * k] = r0[2 * k + 1] = xr[k];
                memcpy(r1, r0, sizeof(float) * 2 * W);
            }
        } else { /* x = dy[.., 2H, 2W], y = dx[.., H, W] */
            const float *dc = j->x + nc * 4 * H * W;
            float *xc = j->y + nc * H * W;
            for (int i = 0; i < H; i++) {
                const float *r0 = dc + (int64_t)(2 * i) * 2 * W, *r1 = r0 + 2 * W;
                float *xr = xc + (int64_t)i * W;
                for (int k = 0; k < W; k++) xr[k] += r0[2 * k] + r0[2 * k + 1] + r1[2 * k] + r1[2 * k + 1];
            }
        }
    }
}

static void cpu_upsample2x_fwd(Backend *be, const float *x, float *y, int N, int C, int H, int W) {
    PROF_OP(be);
    UpJob j = {x, y, H, W, 0};
    par_run(impl_of(be), (int64_t)N * C, chunks_for((int64_t)N * C * H * W * 4, 65536, (int64_t)N * C), up_chunk, &j);
}
static void cpu_upsample2x_bwd(Backend *be, const float *dy, float *dx, int N, int C, int H, int W) {
    PROF_OP(be);
    UpJob j = {dy, dx, H, W, 1};
    par_run(impl_of(be), (int64_t)N * C, chunks_for((int64_t)N * C * H * W * 4, 65536, (int64_t)N * C), up_chunk, &j);
}

typedef struct {
    const float *x;
    float *y;
    int H, W, top, bottom, left, right, bwd;
} PadJob;

/* one (n, c) plane per item: fwd writes the whole padded plane (zeros around
 * x), bwd adds the interior of the padded dy plane into dx */
static void pad_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    PadJob *j = p;
    int H = j->H, W = j->W, Wp = W + j->left + j->right, Hp = H + j->top + j->bottom;
    for (int64_t nc = lo; nc < hi; nc++) {
        if (!j->bwd) {
            const float *xc = j->x + nc * H * W;
            float *yc = j->y + nc * Hp * Wp;
            memset(yc, 0, sizeof(float) * j->top * Wp);
            for (int i = 0; i < H; i++) {
                float *yr = yc + (int64_t)(j->top + i) * Wp;
                memset(yr, 0, sizeof(float) * j->left);
                memcpy(yr + j->left, xc + (int64_t)i * W, sizeof(float) * W);
                memset(yr + j->left + W, 0, sizeof(float) * j->right);
            }
            memset(yc + (int64_t)(j->top + H) * Wp, 0, sizeof(float) * j->bottom * Wp);
        } else { /* x = dy[.., Hp, Wp], y = dx[.., H, W] */
            const float *dc = j->x + nc * Hp * Wp;
            float *xc = j->y + nc * H * W;
            for (int i = 0; i < H; i++) {
                const float *dr = dc + (int64_t)(j->top + i) * Wp + j->left;
                float *xr = xc + (int64_t)i * W;
                for (int k = 0; k < W; k++) xr[k] += dr[k];
            }
        }
    }
}

static void cpu_pad2d(Backend *be, const float *x, float *y, int N, int C, int H, int W, int top,
                      int bottom, int left, int right) {
    PROF_OP(be);
    PadJob j = {x, y, H, W, top, bottom, left, right, 0};
    int64_t nc = (int64_t)N * C, per = (int64_t)(H + top + bottom) * (W + left + right);
    par_run(impl_of(be), nc, chunks_for(nc * per, 65536, nc), pad_chunk, &j);
}
static void cpu_pad2d_bwd(Backend *be, const float *dy, float *dx, int N, int C, int H, int W,
                          int top, int bottom, int left, int right) {
    PROF_OP(be);
    if (!dx) return;
    PadJob j = {dy, dx, H, W, top, bottom, left, right, 1};
    int64_t nc = (int64_t)N * C;
    par_run(impl_of(be), nc, chunks_for(nc * H * W, 65536, nc), pad_chunk, &j);
}

typedef struct {
    const float *x;
    float *y;
    int64_t rows, cols, nbr;
    int acc;
} TrJob;

/* blocks of 32 rows of x[n] (rows x cols) written transposed into y[n], a
 * 32x32 tile at a time through a local copy: rows read and written along
 * memory. Walking y down a column instead (stride = rows) made every write of
 * a tile hit the same cache set when rows is a multiple of 1024 (an image's
 * HW): nlc_to_nchw ran 9x slower than its mirror. */
static void tr_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    TrJob *j = p;
    enum { BS = 32 };
    float t[BS][BS + 1];
    for (int64_t nb = lo; nb < hi; nb++) {
        int64_t n = nb / j->nbr, r0 = (nb % j->nbr) * BS, rows = j->rows, cols = j->cols;
        const float *xn = j->x + n * rows * cols;
        float *yn = j->y + n * rows * cols;
        int nr = (int)(r0 + BS < rows ? BS : rows - r0);
        for (int64_t c0 = 0; c0 < cols; c0 += BS) {
            int nc = (int)(c0 + BS < cols ? BS : cols - c0);
            for (int r = 0; r < nr; r++)
                for (int c = 0; c < nc; c++) t[r][c] = xn[(r0 + r) * cols + c0 + c];
            for (int c = 0; c < nc; c++) {
                float *yc = yn + (c0 + c) * rows + r0;
                if (j->acc)
                    for (int r = 0; r < nr; r++) yc[r] += t[r][c];
                else
                    for (int r = 0; r < nr; r++) yc[r] = t[r][c];
            }
        }
    }
}

static void transpose_batch(CpuImpl *im, const float *x, float *y, int N, int64_t rows,
                            int64_t cols, int acc) {
    TrJob j = {x, y, rows, cols, (rows + 31) / 32, acc};
    int64_t nblk = N * j.nbr;
    par_run(im, nblk, chunks_for(N * rows * cols, 65536, nblk), tr_chunk, &j);
}
static void cpu_nchw_to_nlc(Backend *be, const float *x, float *y, int N, int C, int64_t HW, int accumulate) {
    PROF_OP(be);
    transpose_batch(impl_of(be), x, y, N, C, HW, accumulate);
}
static void cpu_nlc_to_nchw(Backend *be, const float *x, float *y, int N, int C, int64_t HW, int accumulate) {
    PROF_OP(be);
    transpose_batch(impl_of(be), x, y, N, HW, C, accumulate);
}

/* ------------------------------------------------------------------ attention */

/* Fused attention, one kernel set for every head size. Per (n, head) K and V
 * are transposed to Kt, Vt [D, Lkp] (Lkp = Lk rounded up to 16, zero padded)
 * so every inner loop runs along keys, 16 lanes at a time, whatever D is:
 * with D = 8 a GEMM along D (what OpenBLAS sees) is mostly overhead. A query
 * tile of T rows keeps its whole score rows [T, Lkp] (T bounded so the tile
 * stays ~256 KB), so the softmax is two exact passes (max, then exp/sum)
 * instead of an online rescale. The forward splits over (n, head, tile); the
 * backward over (n, head), each head walked in tile order by one thread, so
 * dk/dv sums (and dq, dk, dv aliasing one buffer) never depend on the thread
 * count. The kernels are written with GCC vector types and compiled three
 * times (AVX-512, AVX2+FMA, baseline) behind a runtime CPU check; within one
 * machine every element is computed the same way whatever the split. */

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast") /* let the AVX2/AVX-512 clones use FMA */
/* the vector helpers are always inlined; the ABI note about 64-byte vector
 * arguments in non-AVX-512 code is reported at the end of the file */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
#define AINL static inline __attribute__((always_inline))

AINL vf vld(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
/* macros, not functions: 64-byte vector arguments draw ABI notes from GCC */
#define vst(p, v) do { vf vst_ = (v); memcpy((p), &vst_, sizeof vst_); } while (0)
#define vsel(m, a, b) ((vf)(((vi)(a) & (m)) | ((vi)(b) & ~(m)))) /* m ? a : b */

/* lanes summed in a fixed tree order */
AINL float vsum(const vf *v) {
    float t[16];
    memcpy(t, v, sizeof t);
    for (int w = 8; w > 0; w >>= 1)
        for (int i = 0; i < w; i++) t[i] += t[i + w];
    return t[0];
}
AINL float vhmax(const vf *v) {
    float t[16];
    memcpy(t, v, sizeof t);
    float m = t[0];
    for (int i = 1; i < 16; i++) m = t[i] > m ? t[i] : m;
    return m;
}

/* fast_expf on 16 lanes: Cephes reduction, degree-5 polynomial, ~2 ulp;
 * exact 0 below -87.3 (masked scores are -inf) */
AINL vf vexp(const vf *px) {
    vf x = *px;
    vi under = x < -87.3f;
    x = vsel(x > 88.3f, (vf){0} + 88.3f, x); /* below -87.3 the garbage is masked off */
    vf t = x * 1.44269504088896341f + 12582912.f; /* round to nearest via 1.5 * 2^23 */
    vf n = t - 12582912.f;
    vi ni = (vi)t - 0x4B400000;
    vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf q = (vf){0} + 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    q = q * r * r + r + 1.f;
    vf sc = (vf)((ni + 127) << 23);
    return (vf)((vi)(q * sc) & ~under);
}

/* C[i, j..j+16*JB) (+)= alpha * sum_k A(i, k) B[k, j..], A(i, k) = A[i*si + k*sk] */
AINL void kbc_block(const float *A, int64_t si, int64_t sk, const float *B, int64_t ldb, int K,
                    float *C, int64_t ldc, int acc_in, float alpha, const int RB, const int JB) {
    vf acc[4][4];
    #pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
        #pragma GCC unroll 4
        for (int j = 0; j < JB; j++) acc[i][j] = acc_in ? vld(C + i * ldc + 16 * j) : (vf){0};
    for (int k = 0; k < K; k++) {
        vf b[4];
        #pragma GCC unroll 4
        for (int j = 0; j < JB; j++) b[j] = vld(B + k * ldb + 16 * j);
        #pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            float a = A[i * si + k * sk];
            #pragma GCC unroll 4
            for (int j = 0; j < JB; j++) acc[i][j] += a * b[j];
        }
    }
    #pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
        #pragma GCC unroll 4
        for (int j = 0; j < JB; j++) vst(C + i * ldc + 16 * j, acc_in ? acc[i][j] : acc[i][j] * alpha);
}

/* C[M, nj] (+)= alpha * A(M, K) B[K, nj], nj a multiple of 16; key blocks
 * outermost so a B panel is reused from cache by every row */
AINL void kbc(const float *A, int64_t si, int64_t sk, int M, int K, const float *B, int64_t ldb,
              int nj, float *C, int64_t ldc, int acc_in, float alpha) {
    int j = 0;
    for (; j + 64 <= nj; j += 64) {
        int i = 0;
        for (; i + 4 <= M; i += 4)
            kbc_block(A + i * si, si, sk, B + j, ldb, K, C + i * ldc + j, ldc, acc_in, alpha, 4, 4);
        for (; i < M; i++)
            kbc_block(A + i * si, si, sk, B + j, ldb, K, C + i * ldc + j, ldc, acc_in, alpha, 1, 4);
    }
    int rem = (nj - j) / 16; /* 0..3 vectors left: one block of that width */
    for (int i = 0; rem && i < M;) {
        int rb = M - i >= 4 ? 4 : 1;
        const float *Ai = A + i * si;
        float *Ci = C + i * ldc + j;
        if (rb == 4 && rem == 1) kbc_block(Ai, si, sk, B + j, ldb, K, Ci, ldc, acc_in, alpha, 4, 1);
        if (rb == 4 && rem == 2) kbc_block(Ai, si, sk, B + j, ldb, K, Ci, ldc, acc_in, alpha, 4, 2);
        if (rb == 4 && rem == 3) kbc_block(Ai, si, sk, B + j, ldb, K, Ci, ldc, acc_in, alpha, 4, 3);
        if (rb == 1 && rem == 1) kbc_block(Ai, si, sk, B + j, ldb, K, Ci, ldc, acc_in, alpha, 1, 1);
        if (rb == 1 && rem == 2) kbc_block(Ai, si, sk, B + j, ldb, K, Ci, ldc, acc_in, alpha, 1, 2);
        if (rb == 1 && rem == 3) kbc_block(Ai, si, sk, B + j, ldb, K, Ci, ldc, acc_in, alpha, 1, 3);
        i += rb;
    }
}

/* the 16 lane sums of v[0..15] as one vector (lane k = sum of v[k]), by a
 * fixed shuffle tree: each level halves the lanes kept per input */
AINL vf vsum16(const vf v[16]) {
    const vi lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const vi hi8 = lo8 + 8;
    const vi lo4 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const vi hi4 = lo4 + 4;
    const vi lo2 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
    const vi hi2 = lo2 + 2;
    const vi lo1 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const vi hi1 = lo1 + 1;
    vf a[8], b[4], c[2];
    for (int i = 0; i < 8; i++)
        a[i] = __builtin_shuffle(v[2 * i], v[2 * i + 1], lo8) + __builtin_shuffle(v[2 * i], v[2 * i + 1], hi8);
    for (int i = 0; i < 4; i++)
        b[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], lo4) + __builtin_shuffle(a[2 * i], a[2 * i + 1], hi4);
    for (int i = 0; i < 2; i++)
        c[i] = __builtin_shuffle(b[2 * i], b[2 * i + 1], lo2) + __builtin_shuffle(b[2 * i], b[2 * i + 1], hi2);
    return __builtin_shuffle(c[0], c[1], lo1) + __builtin_shuffle(c[0], c[1], hi1);
}

/* out[r*D + d] = sum_j P[r, j] Bt[d, j] over j < nj (row dots, fixed lane order) */
AINL void kdot_block(const float *P, int64_t ldp, const float *Bt, int64_t ldb, int nj, float *out,
                     int ldo, const int RB, const int DB) {
    vf acc[16];
    #pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = (vf){0};
    for (int j = 0; j < nj; j += 16) {
        vf p[4], b[4];
        #pragma GCC unroll 4
        for (int i = 0; i < RB; i++) p[i] = vld(P + i * ldp + j);
        #pragma GCC unroll 4
        for (int e = 0; e < DB; e++) b[e] = vld(Bt + e * ldb + j);
        #pragma GCC unroll 4
        for (int i = 0; i < RB; i++)
            #pragma GCC unroll 4
            for (int e = 0; e < DB; e++) acc[i * 4 + e] += p[i] * b[e];
    }
    float t[16];
    vst(t, vsum16(acc));
    #pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
        #pragma GCC unroll 4
        for (int e = 0; e < DB; e++) out[i * ldo + e] = t[i * 4 + e];
}

AINL void kdot(const float *P, int64_t ldp, int T, const float *Bt, int64_t ldb, int D, int nj,
               float *out, int ldo) {
    int r = 0;
    for (; r + 4 <= T; r += 4) {
        int d = 0;
        for (; d + 4 <= D; d += 4) kdot_block(P + r * ldp, ldp, Bt + d * ldb, ldb, nj, out + r * ldo + d, ldo, 4, 4);
        for (; d < D; d++) kdot_block(P + r * ldp, ldp, Bt + d * ldb, ldb, nj, out + r * ldo + d, ldo, 4, 1);
    }
    for (; r < T; r++) {
        int d = 0;
        for (; d + 4 <= D; d += 4) kdot_block(P + r * ldp, ldp, Bt + d * ldb, ldb, nj, out + r * ldo + d, ldo, 1, 4);
        for (; d < D; d++) kdot_block(P + r * ldp, ldp, Bt + d * ldb, ldb, nj, out + r * ldo + d, ldo, 1, 1);
    }
}

/* dst[d*ldt + j] = src[j*ld + d] for j < L, zero for L <= j < ldt */
static void attn_transpose(const float *src, int64_t ld, int L, int D, float *dst, int ldt) {
    for (int j = 0; j < L; j++)
        for (int d = 0; d < D; d++) dst[(int64_t)d * ldt + j] = src[j * ld + d];
    for (int d = 0; d < D; d++)
        for (int j = L; j < ldt; j++) dst[(int64_t)d * ldt + j] = 0.f;
}

/* dst[j*ldd + d] = src[j*ld + d] for j < L, d < D; zero up to [Lp, ldd) */
static void attn_pad_rows(const float *src, int64_t ld, int L, int D, float *dst, int Lp, int ldd) {
    for (int j = 0; j < Lp; j++)
        for (int d = 0; d < ldd; d++) dst[(int64_t)j * ldd + d] = j < L && d < D ? src[j * ld + d] : 0.f;
}

typedef struct {
    const float *q, *k, *v, *o, *dout, *lse_in;
    float *out, *lse, *dq, *dk, *dv;
    int Lq, Lk, Lkp, H, D, Dp, T, ntile, causal;
    int rowpad; /* big heads: P V and dS K along d on padded rows Kp, Vp [Lkp, Dp], no lane sums */
    float scale;
    float *ws[MAX_THREADS];
    int64_t cached[MAX_THREADS]; /* (n*H + h) whose Kt, Vt the thread's ws holds, -1 none */
} AttnJob;

static inline int round16(int x) { return (x + 15) & ~15; }

/* per-thread workspace layout (floats, each part a multiple of 16) */
typedef struct {
    float *Kt, *Vt, *dKt, *dVt, *Kp, *Vp, *S, *dS, *tmp, *rs;
} AttnWs;

static size_t attn_ws(const AttnJob *j, float *base, AttnWs *w) {
    size_t kv = (size_t)j->D * j->Lkp, kp = j->rowpad ? (size_t)j->Dp * j->Lkp : 0;
    size_t st = (size_t)j->T * j->Lkp, tt = (size_t)round16(j->T * j->Dp), tr = (size_t)round16(j->T);
    if (base) {
        w->Kt = base; w->Vt = w->Kt + kv; w->dKt = w->Vt + kv; w->dVt = w->dKt + kv;
        w->Kp = w->dVt + kv; w->Vp = w->Kp + kp;
        w->S = w->Vp + kp; w->dS = w->S + st; w->tmp = w->dS + st; w->rs = w->tmp + tt;
    }
    return 4 * kv + 2 * kp + 2 * st + tt + tr;
}

/* out[r*Dp + d] = sum_j P[r, j] X[j, d] for r < T, with X as Xt [D, Lkp] or padded rows Xp */
AINL void attn_pv(const AttnJob *j, const float *P, int T, const float *Xt, const float *Xp, int nj, float *out) {
    if (j->rowpad)
        kbc(P, j->Lkp, 1, T, nj, Xp, j->Dp, j->Dp, out, j->Dp, 0, 1.f);
    else
        kdot(P, j->Lkp, T, Xt, j->Lkp, j->D, nj, out, j->Dp);
}

/* scores of rows i0..i0+Tr into S (scale folded in), masked past Lk and by causality;
 * returns nj, the padded key count that can be nonzero for these rows */
AINL int attn_tile_scores(const AttnJob *j, const float *qt, const float *Kt, float *S, int i0, int Tr) {
    int Lk = j->Lk, Lkp = j->Lkp, HD = j->H * j->D;
    int kmax = j->causal ? (i0 + Tr < Lk ? i0 + Tr : Lk) : Lk;
    int nj = round16(kmax);
    kbc(qt, HD, 1, Tr, j->D, Kt, Lkp, nj, S, Lkp, 0, j->scale);
    for (int r = 0; r < Tr; r++) {
        int lim = j->causal ? (i0 + r + 1 < Lk ? i0 + r + 1 : Lk) : Lk;
        for (int c = lim; c < nj; c++) S[(int64_t)r * Lkp + c] = -INFINITY;
    }
    return nj;
}

AINL void attn_fwd_body(AttnJob *j, int64_t lo, int64_t hi, int tid) {
    int H = j->H, D = j->D, HD = H * D, Lq = j->Lq, Lk = j->Lk, Lkp = j->Lkp, T = j->T, Dp = j->Dp;
    AttnWs w;
    attn_ws(j, j->ws[tid], &w);
    for (int64_t job = lo; job < hi; job++) {
        int64_t nh = job / j->ntile, n = nh / H;
        int h = (int)(nh % H), tile = (int)(job % j->ntile);
        int i0 = tile * T, Tr = i0 + T <= Lq ? T : Lq - i0;
        if (j->cached[tid] != nh) {
            attn_transpose(j->k + n * Lk * HD + h * D, HD, Lk, D, w.Kt, Lkp);
            if (j->rowpad)
                attn_pad_rows(j->v + n * Lk * HD + h * D, HD, Lk, D, w.Vp, Lkp, Dp);
            else
                attn_transpose(j->v + n * Lk * HD + h * D, HD, Lk, D, w.Vt, Lkp);
            j->cached[tid] = nh;
        }
        int64_t roff = (n * Lq + i0) * HD + h * D;
        int nj = attn_tile_scores(j, j->q + roff, w.Kt, w.S, i0, Tr);
        float *l = j->lse + nh * Lq + i0;
        for (int r = 0; r < Tr; r++) {
            float *s = w.S + (int64_t)r * Lkp;
            vf m = (vf){0} - INFINITY;
            for (int c = 0; c < nj; c += 16) {
                vf x = vld(s + c);
                m = vsel(x > m, x, m);
            }
            float mx = vhmax(&m);
            if (mx == -INFINITY) mx = 0.f; /* fully masked row: all p = 0 */
            vf sum = (vf){0};
            for (int c = 0; c < nj; c += 16) {
                vf x = vld(s + c) - mx, p = vexp(&x);
                vst(s + c, p);
                sum += p;
            }
            float tot = vsum(&sum);
            w.rs[r] = tot > 0.f ? 1.f / tot : 0.f;
            l[r] = mx + logf(tot);
        }
        attn_pv(j, w.S, Tr, w.Vt, w.Vp, nj, w.tmp);
        for (int r = 0; r < Tr; r++)
            for (int d = 0; d < D; d++) j->out[roff + (int64_t)r * HD + d] = w.tmp[r * Dp + d] * w.rs[r];
    }
}

AINL void attn_bwd_body(AttnJob *j, int64_t lo, int64_t hi, int tid) {
    int H = j->H, D = j->D, HD = H * D, Lq = j->Lq, Lk = j->Lk, Lkp = j->Lkp, T = j->T, Dp = j->Dp;
    AttnWs w;
    attn_ws(j, j->ws[tid], &w);
    for (int64_t nh = lo; nh < hi; nh++) {
        int64_t n = nh / H;
        int h = (int)(nh % H);
        int64_t koff = n * Lk * HD + h * D;
        attn_transpose(j->k + koff, HD, Lk, D, w.Kt, Lkp);
        attn_transpose(j->v + koff, HD, Lk, D, w.Vt, Lkp);
        if (j->rowpad && j->dq) attn_pad_rows(j->k + koff, HD, Lk, D, w.Kp, Lkp, Dp);
        if (j->dk) memset(w.dKt, 0, sizeof(float) * D * Lkp);
        if (j->dv) memset(w.dVt, 0, sizeof(float) * D * Lkp);
        for (int tile = 0; tile < j->ntile; tile++) {
            int i0 = tile * T, Tr = i0 + T <= Lq ? T : Lq - i0;
            int64_t roff = (n * Lq + i0) * HD + h * D;
            const float *qt = j->q + roff, *dot = j->dout + roff, *ot = j->o + roff;
            const float *l = j->lse_in + nh * Lq + i0;
            int nj = attn_tile_scores(j, qt, w.Kt, w.S, i0, Tr);
            for (int r = 0; r < Tr; r++) {
                float *s = w.S + (int64_t)r * Lkp;
                for (int c = 0; c < nj; c += 16) {
                    vf x = vld(s + c) - l[r];
                    vst(s + c, vexp(&x));
                }
            }
            if (j->dv) kbc(dot, 1, HD, D, Tr, w.S, Lkp, nj, w.dVt, Lkp, 1, 1.f); /* dVt += dO^T P */
            if (!j->dq && !j->dk) continue;
            kbc(dot, HD, 1, Tr, D, w.Vt, Lkp, nj, w.dS, Lkp, 0, 1.f); /* dP = dO V^T */
            for (int r = 0; r < Tr; r++) {
                float di = 0.f;
                for (int d = 0; d < D; d++) di += dot[(int64_t)r * HD + d] * ot[(int64_t)r * HD + d];
                float *ds = w.dS + (int64_t)r * Lkp, *p = w.S + (int64_t)r * Lkp;
                for (int c = 0; c < nj; c += 16) vst(ds + c, vld(p + c) * (vld(ds + c) - di));
            }
            if (j->dq) {
                attn_pv(j, w.dS, Tr, w.Kt, w.Kp, nj, w.tmp);
                for (int r = 0; r < Tr; r++)
                    for (int d = 0; d < D; d++) j->dq[roff + (int64_t)r * HD + d] += j->scale * w.tmp[r * Dp + d];
            }
            if (j->dk) kbc(qt, 1, HD, D, Tr, w.dS, Lkp, nj, w.dKt, Lkp, 1, 1.f); /* dKt += Q^T dS */
        }
        for (int c = 0; c < Lk; c++)
            for (int d = 0; d < D; d++) {
                if (j->dk) j->dk[koff + (int64_t)c * HD + d] += j->scale * w.dKt[(int64_t)d * Lkp + c];
                if (j->dv) j->dv[koff + (int64_t)c * HD + d] += w.dVt[(int64_t)d * Lkp + c];
            }
    }
}

/* ---- GEGLU, y = h * gelu(g) for x = [h, g] rows, 16 lanes at a time ----
 * (glibc's scalar erff was a tenth of a CPU training step) */

/* erf on 16 lanes: erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), the
 * Chebyshev fit of Numerical Recipes' erfcc (fractional error under 1.2e-7),
 * through vexp (~2 ulp); odd in x */
AINL vf verf(const vf *px) {
    vf x = *px;
    vi neg = x < 0.f;
    vf z = vsel(neg, -x, x);
    vf t = 1.f / (1.f + 0.5f * z);
    vf q = (vf){0} + 0.17087277f;
    q = q * t - 0.82215223f;
    q = q * t + 1.48851587f;
    q = q * t - 1.13520398f;
    q = q * t + 0.27886807f;
    q = q * t - 0.18628806f;
    q = q * t + 0.09678418f;
    q = q * t + 0.37409196f;
    q = q * t + 1.00002368f;
    q = q * t - 1.26551223f;
    vf e = q - z * z, r = 1.f - t * vexp(&e);
    return vsel(neg, -r, r);
}
/* the gate's gelu(g) and gelu'(g) */
AINL vf vgelu(const vf *pg) {
    vf u = *pg * 0.70710678118654752f;
    return 0.5f * *pg * (1.f + verf(&u));
}
AINL vf vgelu_grad(const vf *pg) {
    vf g = *pg, u = g * 0.70710678118654752f, e = -0.5f * g * g;
    return 0.5f * (1.f + verf(&u)) + g * 0.39894228040143268f * vexp(&e);
}
/* one 16-column step of a GEGLU row; n < 16 (a row's tail) goes through
 * zero-padded copies: every column gets the same lane arithmetic */
AINL void geglu_fwd16(const float *h, const float *g, float *y, int n) {
    if (n == 16) {
        vf gv = vld(g);
        vst(y, vld(h) * vgelu(&gv));
        return;
    }
    float th[16] = {0}, tg[16] = {0}, ty[16];
    memcpy(th, h, sizeof(float) * (size_t)n);
    memcpy(tg, g, sizeof(float) * (size_t)n);
    geglu_fwd16(th, tg, ty, 16);
    memcpy(y, ty, sizeof(float) * (size_t)n);
}
AINL void geglu_bwd16(const float *h, const float *g, const float *d, float *dh, float *dg, int n) {
    if (n == 16) {
        vf gv = vld(g), dv = vld(d);
        vst(dh, vld(dh) + dv * vgelu(&gv));
        vst(dg, vld(dg) + dv * vld(h) * vgelu_grad(&gv));
        return;
    }
    float th[16] = {0}, tg[16] = {0}, td[16] = {0}, ta[16] = {0}, tb[16] = {0};
    memcpy(th, h, sizeof(float) * (size_t)n);
    memcpy(tg, g, sizeof(float) * (size_t)n);
    memcpy(td, d, sizeof(float) * (size_t)n);
    memcpy(ta, dh, sizeof(float) * (size_t)n);
    memcpy(tb, dg, sizeof(float) * (size_t)n);
    geglu_bwd16(th, tg, td, ta, tb, 16);
    memcpy(dh, ta, sizeof(float) * (size_t)n);
    memcpy(dg, tb, sizeof(float) * (size_t)n);
}
AINL void geglu_fwd_body(PwJob *j, int64_t lo, int64_t hi, int tid) {
    int D = j->D;
    for (int64_t i = lo; i < hi; i++) {
        const float *h = j->a + i * 2 * D, *g = h + D;
        float *y = j->y + i * D;
        for (int k = 0; k < D; k += 16) geglu_fwd16(h + k, g + k, y + k, D - k < 16 ? D - k : 16);
    }
}
/* a = dy[M, D], b = x[M, 2D], y = dx[M, 2D] (accumulated) */
AINL void geglu_bwd_body(PwJob *j, int64_t lo, int64_t hi, int tid) {
    int D = j->D;
    for (int64_t i = lo; i < hi; i++) {
        const float *h = j->b + i * 2 * D, *g = h + D, *d = j->a + i * D;
        float *dh = j->y + i * 2 * D, *dg = dh + D;
        for (int k = 0; k < D; k += 16)
            geglu_bwd16(h + k, g + k, d + k, dh + k, dg + k, D - k < 16 ? D - k : 16);
    }
}

/* the vector kernels (attention, GEGLU) compiled three times; vec_isa picks one at run time */
#define VEC_CLONES(name, body)                                                                     \
    __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi2"))) static void       \
    name##_avx512(void *p, int64_t lo, int64_t hi, int chunk, int tid) { body(p, lo, hi, tid); }   \
    __attribute__((target("avx2,fma,bmi2"))) static void                                            \
    name##_avx2(void *p, int64_t lo, int64_t hi, int chunk, int tid) { body(p, lo, hi, tid); }     \
    static void name##_base(void *p, int64_t lo, int64_t hi, int chunk, int tid) { body(p, lo, hi, tid); }

VEC_CLONES(attn_fwd_chunk, attn_fwd_body)
VEC_CLONES(attn_bwd_chunk, attn_bwd_body)
VEC_CLONES(geglu_fwd_chunk, geglu_fwd_body)
VEC_CLONES(geglu_bwd_chunk, geglu_bwd_body)

#pragma GCC pop_options

/* 2 = AVX-512, 1 = AVX2+FMA, 0 = baseline: the VEC_CLONES this CPU runs */
static int vec_isa(void) {
#if defined(__x86_64__)
    static atomic_int isa = -1;
    int v = atomic_load(&isa);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw")
                ? 2
                : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
        atomic_store(&isa, v);
    }
    return v;
#else
    return 0;
#endif
}
/* the clone of chunk function `name` for this CPU */
#define VEC_CHUNK(name) (((const ChunkFn[3]){name##_base, name##_avx2, name##_avx512})[vec_isa()])

/* query rows per tile: the score tile (two in backward) stays ~256 KB */
static int attn_tile(int Lq, int Lkp) {
    int t = 65536 / (Lkp > 0 ? Lkp : 1);
    t = t < 8 ? 8 : (t > 256 ? 256 : t);
    return t < Lq ? t : Lq;
}

/* sets tiles and grows every thread's workspace; -1 on OOM */
static int attn_setup(CpuImpl *im, AttnJob *j) {
    j->Lkp = round16(j->Lk);
    j->Dp = round16(j->D);
    j->rowpad = j->D >= 32; /* lane sums cost more than the padding from here on */
    j->T = attn_tile(j->Lq, j->Lkp);
    j->ntile = (j->Lq + j->T - 1) / j->T;
    size_t n = attn_ws(j, NULL, NULL);
    scratch_all(im, 0, n, j->ws);
    for (int t = 0; t < im->nthreads; t++) {
        if (!j->ws[t]) return -1;
        j->cached[t] = -1;
    }
    return 0;
}

static void cpu_attention_fwd(Backend *be, const float *q, const float *k, const float *v, float *o,
                              float *lse, int N, int Lq, int Lk, int H, int D, float scale,
                              int causal) {
    PROF_OP(be);
    CpuImpl *im = impl_of(be);
    if (N <= 0 || Lq <= 0 || H <= 0 || D <= 0) return;
    AttnJob j = {.q = q, .k = k, .v = v, .out = o, .lse = lse, .Lq = Lq, .Lk = Lk, .H = H, .D = D,
                 .causal = causal, .scale = scale};
    if (attn_setup(im, &j)) return;
    int64_t jobs = (int64_t)N * H * j.ntile;
    par_run(im, jobs, chunks_for(jobs * j.T * j.Lkp * (2 * D + 16), 200000, jobs), VEC_CHUNK(attn_fwd_chunk), &j);
}

static void cpu_attention_bwd(Backend *be, const float *dout, const float *q, const float *k,
                              const float *v, const float *o, const float *lse, float *dq,
                              float *dk, float *dv, int N, int Lq, int Lk, int H, int D,
                              float scale, int causal) {
    PROF_OP(be);
    CpuImpl *im = impl_of(be);
    if (N <= 0 || Lq <= 0 || H <= 0 || D <= 0 || (!dq && !dk && !dv)) return;
    AttnJob j = {.q = q, .k = k, .v = v, .o = o, .dout = dout, .lse_in = lse, .dq = dq, .dk = dk,
                 .dv = dv, .Lq = Lq, .Lk = Lk, .H = H, .D = D, .causal = causal, .scale = scale};
    if (attn_setup(im, &j)) return;
    int64_t jobs = (int64_t)N * H;
    par_run(im, jobs, chunks_for(jobs * Lq * j.Lkp * (4 * D + 32), 200000, jobs), VEC_CHUNK(attn_bwd_chunk), &j);
}

static void cpu_geglu_fwd(Backend *be, const float *x, float *y, int64_t M, int D) {
    PROF_OP(be);
    PwJob j = {.D = D, .a = x, .y = y};
    par_run(impl_of(be), M, chunks_for(M * 2 * D * 8, 32768, M), VEC_CHUNK(geglu_fwd_chunk), &j);
}
static void cpu_geglu_bwd(Backend *be, const float *dy, const float *x, float *dx, int64_t M, int D) {
    PROF_OP(be);
    PwJob j = {.D = D, .a = dy, .b = x, .y = dx};
    par_run(impl_of(be), M, chunks_for(M * 4 * D * 8, 32768, M), VEC_CHUNK(geglu_bwd_chunk), &j);
}

/* ------------------------------------------------------------------ diffusion helpers */

static void cpu_timestep_embedding(Backend *be, const float *t, float *emb, int N, int dim,
                                   int flip_sin_to_cos, float shift, float max_period) {
    PROF_OP(be);
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

typedef struct {
    const float *a, *b;
    double part[MAX_CHUNKS];
} MseJob;

static void mse_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    MseJob *j = p;
    double acc = 0.0;
    for (int64_t i = lo; i < hi; i++) {
        double d = (double)j->a[i] - j->b[i];
        acc += d * d;
    }
    j->part[chunk] = acc;
}

static float cpu_mse_fwd(Backend *be, const float *pred, const float *target, int64_t n) {
    PROF_OP(be);
    if (n <= 0) return 0.f;
    MseJob j = {.a = pred, .b = target};
    int nch = chunks_for(n, 32768, n);
    par_run(impl_of(be), n, nch, mse_chunk, &j);
    double acc = 0.0;
    for (int c = 0; c < nch; c++) acc += j.part[c];
    return (float)(acc / (double)n);
}

static void cpu_mse_bwd(Backend *be, const float *pred, const float *target, float *dpred,
                        int64_t n, float weight) {
    PROF_OP(be);
    PwJob j = {.op = PW_MSE_B, .a = pred, .b = target, .y = dpred, .alpha = (float)(2.0 * weight / (double)n)};
    pw_run(impl_of(be), &j, n, 1);
}

typedef struct {
    float *p, *m, *v;
    const float *g;
    float b1, b2, eps, decay, step, bc2s;
} AdamJob;

static void adam_chunk(void *p, int64_t lo, int64_t hi, int chunk, int tid) {
    AdamJob *j = p;
    for (int64_t i = lo; i < hi; i++) {
        float g = j->g[i];
        float pp = j->p[i] * j->decay;
        float mi = j->b1 * j->m[i] + (1.f - j->b1) * g;
        float vi = j->b2 * j->v[i] + (1.f - j->b2) * g * g;
        j->m[i] = mi;
        j->v[i] = vi;
        j->p[i] = pp - j->step * mi / (sqrtf(vi) / j->bc2s + j->eps);
    }
}

static void cpu_adamw(Backend *be, float *param, const float *grad, float *m, float *v, int64_t n,
                      float lr, float beta1, float beta2, float eps, float weight_decay, int t) {
    PROF_OP(be);
    /* torch.optim.AdamW (single-tensor path): decay, moments, then
     * p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps) */
    double bc1 = 1.0 - pow((double)beta1, t), bc2 = 1.0 - pow((double)beta2, t);
    AdamJob j = {param, m, v, grad, beta1, beta2, eps, (float)(1.0 - (double)lr * weight_decay),
                 (float)(lr / bc1), (float)sqrt(bc2)};
    par_run(impl_of(be), n, chunks_for(n * 4, 65536, n), adam_chunk, &j);
}

/* ------------------------------------------------------------------ Kronecker */

typedef struct {
    const float *L, *R;
    float *out, *Rp, *Op;
    const float *P, *Q;
    float *part[MAX_CHUNKS];
    int transL, r, p, q, s;
    int64_t M;
    float alpha, beta;
} KronJob;

/* direct small-factor left multiply: out[m] = beta out[m] + alpha op(L) R[m] */
static void lm_direct_chunk(void *pp, int64_t lo, int64_t hi, int chunk, int tid) {
    KronJob *j = pp;
    int r = j->r, p = j->p, q = j->q;
    for (int64_t m = lo; m < hi; m++) {
        const float *Rm = j->R + m * p * q;
        float *Om = j->out + m * r * q;
        for (int i = 0; i < r; i++) {
            float *o = Om + (int64_t)i * q;
            if (j->beta == 0.f) memset(o, 0, sizeof(float) * q);
            else if (j->beta != 1.f)
                for (int c = 0; c < q; c++) o[c] *= j->beta;
            for (int k = 0; k < p; k++) {
                float a = j->alpha * (j->transL ? j->L[(int64_t)k * r + i] : j->L[(int64_t)i * p + k]);
                const float *rr = Rm + (int64_t)k * q;
                for (int c = 0; c < q; c++) o[c] += a * rr[c];
            }
        }
    }
}

/* R[M, p, q] -> Rp[p, M*q] */
static void lm_perm_in_chunk(void *pp, int64_t lo, int64_t hi, int chunk, int tid) {
    KronJob *j = pp;
    int64_t mq = j->M * j->q;
    for (int64_t m = lo; m < hi; m++)
        for (int k = 0; k < j->p; k++)
            memcpy(j->Rp + k * mq + m * j->q, j->R + (m * j->p + k) * j->q, sizeof(float) * j->q);
}

/* Op[r, M*q] -> out[M, r, q] (with beta) */
static void lm_perm_out_chunk(void *pp, int64_t lo, int64_t hi, int chunk, int tid) {
    KronJob *j = pp;
    int64_t mq = j->M * j->q;
    for (int64_t m = lo; m < hi; m++)
        for (int i = 0; i < j->r; i++) {
            float *o = j->out + (m * j->r + i) * j->q;
            const float *s = j->Op + i * mq + m * j->q;
            if (j->beta == 0.f)
                memcpy(o, s, sizeof(float) * j->q);
            else
                for (int c = 0; c < j->q; c++) o[c] = j->beta * o[c] + s[c];
        }
}

/* out[m] = beta*out[m] + alpha * op(L) R[m] for m < M, where R[m] is p x q,
 * op(L) is r x p (L stored r x p, or p x r when transL), out[m] is r x q.
 * Small L: direct loop over rows; large L: permute R to [p, M*q], one GEMM,
 * permute back. */
static void left_mul(CpuImpl *im, int transL, const float *L, int r, int p, int q, const float *R,
                     int64_t M, float *out, float alpha, float beta) {
    KronJob j = {.L = L, .R = R, .out = out, .transL = transL, .r = r, .p = p, .q = q, .M = M,
                 .alpha = alpha, .beta = beta};
    int nch = chunks_for(M * r * q * (p + 1), 65536, M);
    if ((int64_t)r * p <= 64 || q < 4) {
        par_run(im, M, nch, lm_direct_chunk, &j);
        return;
    }
    int64_t mq = M * q;
    j.Rp = scratch(im, 0, 1, (size_t)(p * mq));
    j.Op = scratch(im, 0, 2, (size_t)(r * mq));
    par_run(im, M, chunks_for(M * p * q, 65536, M), lm_perm_in_chunk, &j);
    sgemm_par(im, transL, 0, r, (int)mq, p, alpha, L, transL ? r : p, j.Rp, (int)mq, 0.f, j.Op, (int)mq);
    par_run(im, M, chunks_for(M * r * q, 65536, M), lm_perm_out_chunk, &j);
}

static void pc_direct_chunk(void *pp, int64_t lo, int64_t hi, int chunk, int tid) {
    KronJob *j = pp;
    int r = j->r, s = j->s, q = j->q;
    float *pa = j->part[chunk];
    memset(pa, 0, sizeof(float) * r * s);
    for (int64_t m = lo; m < hi; m++)
        for (int i = 0; i < r; i++) {
            const float *pr = j->P + (m * r + i) * q;
            for (int k = 0; k < s; k++) {
                const float *qr = j->Q + (m * s + k) * q;
                float acc = 0.f;
                for (int c = 0; c < q; c++) acc += pr[c] * qr[c];
                pa[i * s + k] += acc;
            }
        }
}

static void pc_perm_chunk(void *pp, int64_t lo, int64_t hi, int chunk, int tid) {
    KronJob *j = pp;
    int64_t mq = j->M * j->q;
    for (int64_t m = lo; m < hi; m++) {
        for (int i = 0; i < j->r; i++)
            memcpy(j->Rp + i * mq + m * j->q, j->P + (m * j->r + i) * j->q, sizeof(float) * j->q);
        for (int k = 0; k < j->s; k++)
            memcpy(j->Op + k * mq + m * j->q, j->Q + (m * j->s + k) * j->q, sizeof(float) * j->q);
    }
}

/* out[r, s] += alpha * sum_m P_m Q_m^T for P[M, r, q], Q[M, s, q]. Small r*s:
 * per-chunk partial dot products; large: permute both to [*, M*q] and do one
 * GEMM with K = M*q. */
static void pair_contract(CpuImpl *im, const float *P, const float *Q, int64_t M, int r, int s,
                          int q, float *out, float alpha) {
    KronJob j = {.P = P, .Q = Q, .r = r, .s = s, .q = q, .M = M};
    if ((int64_t)r * s <= 64 || q < 4) {
        int nch = chunks_for(M * r * s * q, 65536, M);
        float *buf = scratch(im, 0, 4, (size_t)nch * r * s);
        for (int c = 0; c < nch; c++) j.part[c] = buf + (int64_t)c * r * s;
        par_run(im, M, nch, pc_direct_chunk, &j);
        for (int c = 0; c < nch; c++)
            for (int i = 0; i < r * s; i++) out[i] += alpha * j.part[c][i];
        return;
    }
    int64_t mq = M * q;
    j.Rp = scratch(im, 0, 1, (size_t)(r * mq));
    j.Op = scratch(im, 0, 2, (size_t)(s * mq));
    par_run(im, M, chunks_for(M * (r + s) * q, 65536, M), pc_perm_chunk, &j);
    sgemm_par(im, 0, 1, r, s, (int)mq, alpha, j.Rp, (int)mq, j.Op, (int)mq, 1.f, out, s);
}

/* Both sides of y_m = A X_m B^T can go first (kron_a_first in backend.h says
 * which is cheaper for these factors); the backward reuses the forward's order:
 *   A first: Z_m = A X_m,  y_m += s Z_m B^T;   U_m = dY_m B feeds dx and dA
 *   B first: T_m = X_m B^T, y_m += s A T_m;   V_m = A^T dY_m feeds dx and dB */
static void cpu_kron_fwd(Backend *be, const float *x, const float *A, const float *B, float *y,
                         int64_t M, int a1, int a2, int b1, int b2, float scale) {
    PROF_OP(be);
    CpuImpl *im = impl_of(be);
    if (kron_a_first(a1, a2, b1, b2)) {
        /* Z[M, a1, b2] = A X_m, then Y as [(M a1), b1] += s Z B^T in one GEMM */
        float *Z = scratch(im, 0, 0, (size_t)(M * a1 * b2));
        left_mul(im, 0, A, a1, a2, b2, x, M, Z, 1.f, 0.f);
        sgemm_par(im, 0, 1, (int)(M * a1), b1, b2, scale, Z, b2, B, b2, 1.f, y, b1);
    } else {
        /* T[(M a2), b1] = X B^T in one GEMM, then Y_m += s A T_m */
        float *T = scratch(im, 0, 0, (size_t)(M * a2 * b1));
        sgemm_par(im, 0, 1, (int)(M * a2), b1, b2, 1.f, x, b2, B, b2, 0.f, T, b1);
        left_mul(im, 0, A, a1, a2, b1, T, M, y, scale, 1.f);
    }
}

static void cpu_kron_bwd(Backend *be, const float *dy, const float *x, const float *A,
                         const float *B, float *dx, float *dA, float *dB, int64_t M, int a1,
                         int a2, int b1, int b2, float scale) {
    PROF_OP(be);
    CpuImpl *im = impl_of(be);
    if (kron_a_first(a1, a2, b1, b2)) {
        float *buf = scratch(im, 0, 0, (size_t)(M * a1 * b2));
        if (dx || dA) {
            /* U[(M a1), b2] = dY B; dX_m += s A^T U_m; dA += s sum_m U_m X_m^T */
            sgemm_par(im, 0, 0, (int)(M * a1), b2, b1, 1.f, dy, b1, B, b2, 0.f, buf, b2);
            if (dx) left_mul(im, 1, A, a2, a1, b2, buf, M, dx, scale, 1.f);
            if (dA) pair_contract(im, buf, x, M, a1, a2, b2, dA, scale);
        }
        if (dB) {
            /* Z_m = A X_m; dB += s dY^T Z, both as [(M a1), *] */
            left_mul(im, 0, A, a1, a2, b2, x, M, buf, 1.f, 0.f);
            sgemm_par(im, 1, 0, b1, b2, (int)(M * a1), scale, dy, b1, buf, b2, 1.f, dB, b2);
        }
    } else {
        float *buf = scratch(im, 0, 0, (size_t)(M * a2 * b1));
        if (dx || dB) {
            /* V[(M a2), b1] with V_m = A^T dY_m; dX += s V B; dB += s V^T X */
            left_mul(im, 1, A, a2, a1, b1, dy, M, buf, 1.f, 0.f);
            if (dx) sgemm_par(im, 0, 0, (int)(M * a2), b2, b1, scale, buf, b1, B, b2, 1.f, dx, b2);
            if (dB) sgemm_par(im, 1, 0, b1, b2, (int)(M * a2), scale, buf, b1, x, b2, 1.f, dB, b2);
        }
        if (dA) {
            /* T_m = X_m B^T; dA += s sum_m dY_m T_m^T */
            sgemm_par(im, 0, 1, (int)(M * a2), b1, b2, 1.f, x, b2, B, b2, 0.f, buf, b1);
            pair_contract(im, dy, buf, M, a1, a2, b1, dA, scale);
        }
    }
}

static void cpu_kron_merge(Backend *be, const float *A, const float *B, float *W, int a1, int a2,
                           int b1, int b2, float scale) {
    PROF_OP(be);
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

static void cpu_destroy(Backend *be);
/* Host memory and our own loops: after create the ops have no failure to
 * report (the model allocates every buffer through be->alloc and checks it),
 * except BF16 mode's operand copies. */
static const char *cpu_last_error(Backend *be) {
    return atomic_load(&impl_of(be)->failed) ? "cpu: no memory for the bf16 copies of a GEMM's operands" : "";
}
static void cpu_clear_error(Backend *be) { atomic_store(&impl_of(be)->failed, 0); }
static const char *cpu_device_name(Backend *be) { return impl_of(be)->desc; }
/* FP32 by default; BF16 rounds operands in software (the reference); no TF32 */
static int cpu_set_precision(Backend *be, int prec) {
    if (prec != KRONA_PREC_AUTO && prec != KRONA_PREC_FP32 && prec != KRONA_PREC_BF16) return -1;
    impl_of(be)->bf16 = prec == KRONA_PREC_BF16;
    return 0;
}
static int cpu_precision(Backend *be) { return impl_of(be)->bf16 ? KRONA_PREC_BF16 : KRONA_PREC_FP32; }

Backend *backend_cpu_create(void) {
    Backend *be = calloc(1, sizeof(Backend));
    CpuImpl *im = calloc(1, sizeof(CpuImpl));
    if (!be || !im) {
        free(be);
        free(im);
        return NULL;
    }
    fix_openblas_core();
    openblas_set_num_threads(1);
    /* omp_get_max_threads honours OMP_NUM_THREADS and the CPU affinity mask */
    int nt = omp_get_max_threads();
    im->nthreads = nt < 1 ? 1 : (nt > MAX_THREADS ? MAX_THREADS : nt);
    im->col_floats = CONV_COL_FLOATS;
    pthread_mutex_init(&im->mu, NULL);
    pthread_cond_init(&im->cv_work, NULL);
    pthread_cond_init(&im->cv_done, NULL);
    for (int t = 1; t < im->nthreads; t++) {
        im->wk[t].im = im;
        im->wk[t].tid = t;
        if (pthread_create(&im->th[t], NULL, worker_main, &im->wk[t]) != 0) {
            im->nthreads = t; /* fewer threads still work */
            break;
        }
    }
    snprintf(im->desc, sizeof im->desc, "cpu (%d thread%s)", im->nthreads, im->nthreads == 1 ? "" : "s");
    be->name = "cpu";
    be->impl = im;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_memcpy;
    be->download = cpu_memcpy;
    be->copy = cpu_memcpy;
    be->zero = cpu_zero;
    be->sync = cpu_sync;
    be->set_frozen = cpu_set_frozen;
    be->peak_bytes = cpu_peak;
    be->destroy = cpu_destroy;
    be->last_error = cpu_last_error;
    be->clear_error = cpu_clear_error;
    be->device_name = cpu_device_name;
    be->set_precision = cpu_set_precision;
    be->precision = cpu_precision;
    be->reserved_bytes = cpu_reserved;
    be->free_bytes = cpu_free_bytes;
    be->profile = cpu_profile;
    be->profile_rows = cpu_profile_rows;
    be->gemm = cpu_gemm;
    be->gemm_batched = cpu_gemm_batched;
    be->linear_fwd = cpu_linear_fwd;
    be->linear_bwd = cpu_linear_bwd;
    be->conv2d_fwd = cpu_conv2d_fwd;
    be->conv2d_bwd = cpu_conv2d_bwd;
    be->group_norm_fwd = cpu_group_norm_fwd;
    be->group_norm_bwd = cpu_group_norm_bwd;
    be->group_norm_silu_fwd = cpu_group_norm_silu_fwd;
    be->group_norm_silu_bwd = cpu_group_norm_silu_bwd;
    be->layer_norm_fwd = cpu_layer_norm_fwd;
    be->layer_norm_bwd = cpu_layer_norm_bwd;
    be->silu_fwd = cpu_silu_fwd;
    be->silu_bwd = cpu_silu_bwd;
    be->gelu_fwd = cpu_gelu_fwd;
    be->gelu_bwd = cpu_gelu_bwd;
    be->geglu_fwd = cpu_geglu_fwd;
    be->geglu_bwd = cpu_geglu_bwd;
    be->quick_gelu_fwd = cpu_quick_gelu_fwd;
    be->quick_gelu_bwd = cpu_quick_gelu_bwd;
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
    be->pad2d = cpu_pad2d;
    be->pad2d_bwd = cpu_pad2d_bwd;
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

static void cpu_destroy(Backend *be) {
    CpuImpl *im = be->impl;
    if (im) {
        pthread_mutex_lock(&im->mu);
        atomic_store(&im->stop, 1);
        pthread_cond_broadcast(&im->cv_work);
        pthread_mutex_unlock(&im->mu);
        for (int t = 1; t < im->nthreads; t++) pthread_join(im->th[t], NULL);
        pthread_mutex_destroy(&im->mu);
        pthread_cond_destroy(&im->cv_work);
        pthread_cond_destroy(&im->cv_done);
        for (int t = 0; t < MAX_THREADS; t++)
            for (int k = 0; k < NSLOT; k++) free(im->s[t][k].p);
        prof_free(&im->prof);
        free(im);
    }
    free(be);
}

/* Test hook (backend.h): the im2col column cap per thread, in floats; 0 restores the default. */
void backend_cpu_set_conv_cols(Backend *be, int64_t floats) {
    if (!be || be->destroy != cpu_destroy) return;
    impl_of(be)->col_floats = floats > 0 ? floats : CONV_COL_FLOATS;
}

/* ---- text encoder training: embedding backward ----
 * dtable[ids[i]] += dout[i]. Rows with the same id add up, so rows are walked
 * in order (deterministic; n x dim is small next to the encoder's GEMMs). */
static void cpu_embedding_bwd(Backend *be, const float *dout, const int32_t *ids, float *dtable,
                              int64_t n, int dim) {
    PROF_OP(be);
    (void)be;
    if (!dtable) return;
    for (int64_t i = 0; i < n; i++) {
        float *dst = dtable + (int64_t)ids[i] * dim;
        const float *src = dout + i * dim;
        for (int j = 0; j < dim; j++) dst[j] += src[j];
    }
}

/* ---- registration: the CPU backend is always there, and last in `auto` ---- */
static Backend *cpu_open(char *err, size_t errlen) {
    Backend *be = backend_cpu_create();
    if (!be) snprintf(err, errlen, "cpu backend: out of memory");
    return be;
}
static const BackendDriver cpu_driver = {"cpu", 0, cpu_open};
__attribute__((constructor)) static void cpu_register(void) { backend_register(&cpu_driver); }

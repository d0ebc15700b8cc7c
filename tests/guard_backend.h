/* guard_backend.h — holds a model to its set_frozen promise on the CPU backend.
 *
 * set_frozen(p, n, n_w) promises that the first n_w floats are read only as
 * the weight of linear and conv2d, or by copy, download and gemm (backend.h);
 * the CUDA backend may then give their f32 pages back. guard_wrap(be) makes
 * the CPU backend test that promise the same way: at the promise the weights
 * are copied to a shadow and their pages made unreadable (mprotect), the ops
 * the promise allows read the shadow, and a write into the range (upload,
 * zero, copy, kron_merge), a new promise or free ends it. Any other op that
 * touches the weights crashes the test. One guarded backend per process. */
#ifndef KRONA_GUARD_BACKEND_H
#define KRONA_GUARD_BACKEND_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/backend.h"

static struct {
    Backend orig;
    const char *p;    /* the promised weights [p, p + bytes) */
    size_t bytes;
    char *shadow;     /* their copy, what the allowed ops read */
    char *lo, *hi;    /* the pages made unreadable */
    size_t max_protected; /* the most bytes protected at once (a test checks > 0) */
    long mapped;      /* allowed reads served from the shadow */
    long straddles;   /* reads across the range's edge (allowed, but they end the promise) */
} guard;

static void guard_end(void) {
    if (!guard.p) return;
    if (guard.hi > guard.lo) mprotect(guard.lo, (size_t)(guard.hi - guard.lo), PROT_READ | PROT_WRITE);
    free(guard.shadow);
    guard.p = NULL;
    guard.shadow = guard.lo = guard.hi = NULL;
}
static int guard_overlaps(const void *q, size_t bytes) {
    const char *a = (const char *)q;
    return guard.p && a < guard.p + guard.bytes && guard.p < a + bytes;
}
/* an allowed read of q[0..bytes): the shadow when inside the weights */
static const void *guard_map(const void *q, size_t bytes) {
    const char *a = (const char *)q;
    if (!guard_overlaps(q, bytes)) return q;
    if (a >= guard.p && a + bytes <= guard.p + guard.bytes) {
        guard.mapped++;
        return guard.shadow + (a - guard.p);
    }
    guard.straddles++;
    guard_end(); /* across the edge: the promise cannot hold, let the op see f32 */
    return q;
}
static void guard_write(const void *q, size_t bytes) {
    if (guard_overlaps(q, bytes)) guard_end();
}
static int64_t guard_span(int64_t rows, int64_t cols, int64_t ld, int64_t s, int64_t batch) {
    return (s ? s * (batch - 1) : 0) + (rows - 1) * ld + cols;
}

static void g_set_frozen(Backend *be, const float *p, int64_t n, int64_t n_w) {
    if (guard.p == (const char *)p && guard.bytes == (size_t)n_w * sizeof(float)) return; /* again */
    guard_end();
    guard.orig.set_frozen(be, p, n, n_w);
    if (!p || n <= 0 || n_w <= 0) return;
    size_t page = (size_t)sysconf(_SC_PAGESIZE), bytes = (size_t)n_w * sizeof(float);
    guard.shadow = malloc(bytes);
    if (!guard.shadow) return;
    memcpy(guard.shadow, p, bytes);
    guard.p = (const char *)p;
    guard.bytes = bytes;
    guard.lo = (char *)(((uintptr_t)p + page - 1) / page * page);
    guard.hi = (char *)(((uintptr_t)p + bytes) / page * page);
    if (guard.hi > guard.lo) {
        mprotect(guard.lo, (size_t)(guard.hi - guard.lo), PROT_NONE);
        if ((size_t)(guard.hi - guard.lo) > guard.max_protected) guard.max_protected = (size_t)(guard.hi - guard.lo);
    }
}
static void g_free(Backend *be, void *p) {
    if (p && (const char *)p == guard.p) guard_end();
    guard.orig.free(be, p);
}
static void g_upload(Backend *be, void *dst, const void *src, size_t bytes) {
    guard_write(dst, bytes);
    guard.orig.upload(be, dst, src, bytes);
}
static void g_download(Backend *be, void *dst, const void *src, size_t bytes) {
    guard.orig.download(be, dst, guard_map(src, bytes), bytes);
}
static void g_copy(Backend *be, void *dst, const void *src, size_t bytes) {
    guard_write(dst, bytes);
    guard.orig.copy(be, dst, guard_map(src, bytes), bytes);
}
static void g_zero(Backend *be, void *p, size_t bytes) {
    guard_write(p, bytes);
    guard.orig.zero(be, p, bytes);
}
static void g_gemm(Backend *be, int tA, int tB, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    const float *a = guard_map(A, (size_t)guard_span(tA ? K : M, tA ? M : K, lda, 0, 1) * sizeof(float));
    const float *b = guard_map(B, (size_t)guard_span(tB ? N : K, tB ? K : N, ldb, 0, 1) * sizeof(float));
    guard.orig.gemm(be, tA, tB, M, N, K, alpha, a, lda, b, ldb, beta, C, ldc);
}
static void g_gemm_batched(Backend *be, int tA, int tB, int M, int N, int K, float alpha,
                           const float *A, int lda, int64_t sA, const float *B, int ldb, int64_t sB,
                           float beta, float *C, int ldc, int64_t sC, int batch) {
    const float *a = guard_map(A, (size_t)guard_span(tA ? K : M, tA ? M : K, lda, sA, batch) * sizeof(float));
    const float *b = guard_map(B, (size_t)guard_span(tB ? N : K, tB ? K : N, ldb, sB, batch) * sizeof(float));
    guard.orig.gemm_batched(be, tA, tB, M, N, K, alpha, a, lda, sA, b, ldb, sB, beta, C, ldc, sC, batch);
}
static void g_linear_fwd(Backend *be, const float *x, const float *W, const float *b, float *y,
                         int64_t M, int in, int out) {
    guard.orig.linear_fwd(be, x, guard_map(W, (size_t)out * in * sizeof(float)), b, y, M, in, out);
}
static void g_linear_bwd(Backend *be, const float *dy, const float *x, const float *W, float *dx,
                         float *dW, float *db, int64_t M, int in, int out) {
    guard.orig.linear_bwd(be, dy, x, guard_map(W, (size_t)out * in * sizeof(float)), dx, dW, db, M, in, out);
}
static void g_conv2d_fwd(Backend *be, const float *x, const float *w, const float *b, float *y, int N,
                         int Cin, int H, int W, int Cout, int k, int s, int p) {
    guard.orig.conv2d_fwd(be, x, guard_map(w, (size_t)Cout * Cin * k * k * sizeof(float)), b, y, N, Cin,
                          H, W, Cout, k, s, p);
}
static void g_conv2d_bwd(Backend *be, const float *dy, const float *x, const float *w, float *dx,
                         float *dw, float *db, int N, int Cin, int H, int W, int Cout, int k, int s, int p) {
    guard.orig.conv2d_bwd(be, dy, x, guard_map(w, (size_t)Cout * Cin * k * k * sizeof(float)), dx, dw, db,
                          N, Cin, H, W, Cout, k, s, p);
}
static void g_kron_merge(Backend *be, const float *A, const float *B, float *W, int a1, int a2, int b1,
                         int b2, float scale) {
    guard_write(W, (size_t)a1 * b1 * a2 * b2 * sizeof(float));
    guard.orig.kron_merge(be, A, B, W, a1, a2, b1, b2, scale);
}

/* be keeps its state (impl); only the ops that touch promised weights change */
static void guard_wrap(Backend *be) {
    guard.orig = *be;
    be->set_frozen = g_set_frozen;
    be->free = g_free;
    be->upload = g_upload;
    be->download = g_download;
    be->copy = g_copy;
    be->zero = g_zero;
    be->gemm = g_gemm;
    be->gemm_batched = g_gemm_batched;
    be->linear_fwd = g_linear_fwd;
    be->linear_bwd = g_linear_bwd;
    be->conv2d_fwd = g_conv2d_fwd;
    be->conv2d_bwd = g_conv2d_bwd;
    be->kron_merge = g_kron_merge;
}

#endif

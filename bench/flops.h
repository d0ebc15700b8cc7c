/* flops.h — a Backend that counts the floating-point operations of the matrix
 * products it is asked for, then runs them on the backend it wraps (bench
 * only). Counted as 2 per multiply-add of the products each op computes:
 * gemm, linear and conv2d forward and each gradient asked for, attention's
 * QK^T and PV forward and its five products backward (S recomputed, dV, dP,
 * dQ, dK; a causal mask counted whole), and the Kronecker adapters' products
 * from their cheaper side (kron_a_first), forward and each gradient. Norms,
 * pointwise ops and AdamW are left out: a small share, and not what "TFLOP/s"
 * means on a datasheet. */
#ifndef KRONA_BENCH_FLOPS_H
#define KRONA_BENCH_FLOPS_H

#include "core/backend.h"

#include <stdlib.h>
#include <string.h>

#define FC_OPS 10 /* the ops counted, below */

typedef struct {
    Backend be;     /* first: the wrapper is a Backend */
    Backend *inner; /* runs the ops */
    double flops;   /* since the last reset */
    double op_flops[FC_OPS]; /* the same per op (fc_op_names), since the last reset */
} FlopCounter;

/* in op_flops' order: the names the backends' profiles give these ops */
static const char *const fc_op_names[FC_OPS] = {"gemm", "gemm_batched", "linear_fwd", "linear_bwd", "conv2d_fwd",
                                                "conv2d_bwd", "attention_fwd", "attention_bwd", "kron_fwd", "kron_bwd"};

#define FC(b) ((FlopCounter *)(b))
#define IN(b) (FC(b)->inner)

static void fc_count(Backend *be, int op, double flops) {
    FC(be)->flops += flops;
    FC(be)->op_flops[op] += flops;
}
static void fc_reset(FlopCounter *f) {
    f->flops = 0;
    for (int i = 0; i < FC_OPS; i++) f->op_flops[i] = 0;
}
/* the flops counted for the op a profile names, -1 when it is not one counted */
static double fc_flops_of(const FlopCounter *f, const char *op) {
    for (int i = 0; i < FC_OPS; i++)
        if (!strcmp(fc_op_names[i], op)) return f->op_flops[i];
    return -1;
}

static void fc_gemm(Backend *be, int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc) {
    fc_count(be, 0, 2.0 * M * N * K);
    IN(be)->gemm(IN(be), tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static void fc_gemm_batched(Backend *be, int tA, int tB, int M, int N, int K, float alpha, const float *A,
                            int lda, int64_t sA, const float *B, int ldb, int64_t sB, float beta, float *C,
                            int ldc, int64_t sC, int batch) {
    fc_count(be, 1, 2.0 * M * N * K * batch);
    IN(be)->gemm_batched(IN(be), tA, tB, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch);
}
static void fc_linear_fwd(Backend *be, const float *x, const float *W, const float *b, float *y, int64_t M,
                          int in, int out) {
    fc_count(be, 2, 2.0 * (double)M * in * out);
    IN(be)->linear_fwd(IN(be), x, W, b, y, M, in, out);
}
static void fc_linear_bwd(Backend *be, const float *dy, const float *x, const float *W, float *dx, float *dW,
                          float *db, int64_t M, int in, int out) {
    fc_count(be, 3, 2.0 * (double)M * in * out * ((dx != NULL) + (dW != NULL)));
    IN(be)->linear_bwd(IN(be), dy, x, W, dx, dW, db, M, in, out);
}
static double conv_flops(int N, int Cin, int H, int W, int Cout, int k, int s, int p) {
    double Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    return 2.0 * N * Cout * Ho * Wo * Cin * k * k;
}
static void fc_conv2d_fwd(Backend *be, const float *x, const float *w, const float *b, float *y, int N,
                          int Cin, int H, int W, int Cout, int k, int s, int p) {
    fc_count(be, 4, conv_flops(N, Cin, H, W, Cout, k, s, p));
    IN(be)->conv2d_fwd(IN(be), x, w, b, y, N, Cin, H, W, Cout, k, s, p);
}
static void fc_conv2d_bwd(Backend *be, const float *dy, const float *x, const float *w, float *dx, float *dw,
                          float *db, int N, int Cin, int H, int W, int Cout, int k, int s, int p) {
    fc_count(be, 5, conv_flops(N, Cin, H, W, Cout, k, s, p) * ((dx != NULL) + (dw != NULL)));
    IN(be)->conv2d_bwd(IN(be), dy, x, w, dx, dw, db, N, Cin, H, W, Cout, k, s, p);
}
static void fc_attention_fwd(Backend *be, const float *q, const float *k, const float *v, float *o, float *lse,
                             int N, int Lq, int Lk, int H, int D, float scale, int causal) {
    fc_count(be, 6, 2.0 * 2.0 * N * H * (double)Lq * Lk * D);
    IN(be)->attention_fwd(IN(be), q, k, v, o, lse, N, Lq, Lk, H, D, scale, causal);
}
static void fc_attention_bwd(Backend *be, const float *dout, const float *q, const float *k, const float *v,
                             const float *o, const float *lse, float *dq, float *dk, float *dv, int N, int Lq,
                             int Lk, int H, int D, float scale, int causal) {
    fc_count(be, 7, 5.0 * 2.0 * N * H * (double)Lq * Lk * D);
    IN(be)->attention_bwd(IN(be), dout, q, k, v, o, lse, dq, dk, dv, N, Lq, Lk, H, D, scale, causal);
}
static void fc_kron_fwd(Backend *be, const float *x, const float *A, const float *B, float *y, int64_t M,
                        int a1, int a2, int b1, int b2, float scale) {
    fc_count(be, 8, 2.0 * (double)M * (double)kron_macs_per_row(a1, a2, b1, b2));
    IN(be)->kron_fwd(IN(be), x, A, B, y, M, a1, a2, b1, b2, scale);
}
static void fc_kron_bwd(Backend *be, const float *dy, const float *x, const float *A, const float *B, float *dx,
                        float *dA, float *dB, int64_t M, int a1, int a2, int b1, int b2, float scale) {
    fc_count(be, 9, 2.0 * (double)M * (double)kron_macs_per_row(a1, a2, b1, b2) * ((dx != NULL) + (dA != NULL) + (dB != NULL)));
    IN(be)->kron_bwd(IN(be), dy, x, A, B, dx, dA, dB, M, a1, a2, b1, b2, scale);
}

/* a counter around inner: every other op is inner's own (same impl) */
static FlopCounter *flop_counter(Backend *inner) {
    FlopCounter *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->be = *inner;
    f->inner = inner;
    f->be.gemm = fc_gemm;
    f->be.gemm_batched = fc_gemm_batched;
    f->be.linear_fwd = fc_linear_fwd;
    f->be.linear_bwd = fc_linear_bwd;
    f->be.conv2d_fwd = fc_conv2d_fwd;
    f->be.conv2d_bwd = fc_conv2d_bwd;
    f->be.attention_fwd = fc_attention_fwd;
    f->be.attention_bwd = fc_attention_bwd;
    f->be.kron_fwd = fc_kron_fwd;
    f->be.kron_bwd = fc_kron_bwd;
    return f;
}

#undef FC
#undef IN
#endif

/* test_cuda_ops.c — every op of the CUDA backend against the CPU backend, on
 * random inputs at realistic shapes (SD 1.5 attention / conv / norms among
 * them). Each case runs on the GPU in each precision (backend.h): fp32 and
 * tf32 against the CPU in fp32, bf16 against the CPU in bf16 (the same
 * operand rounding, so linear and conv2d must agree to fp32 summation order;
 * the ops that stay TF32 on the GPU get the tf32 tolerance). Prints one row
 * per compared buffer and exits 1 on any mismatch (2 when no GPU).
 *
 * Buffers handed to an op are filled with random values first, including its
 * outputs and gradients, so both "forward overwrites" and "backward
 * accumulates" are compared. A gradient's error is measured against the size
 * of what the op added to it, not against the prefill.
 *
 *   test_cuda_ops [--small] [--only SUBSTRING] [--shard K/N] [--prec LIST]
 *     --small  skip the SD-sized cases (quick smoke run)
 *     --prec   the GPU precisions to compare, e.g. fp32,bf16 (default fp32,tf32,bf16)
 *     --shard  only cases K, K+N, K+2N, ... (and the allocator and compact-weight
 *              checks in shard 0): N processes in parallel cover all (the emulator)
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/backend.h"
#include "core/half.h"

enum { IN, OUT, ACC, NUL, IDS };

typedef struct {
    const char *name;
    int kind;
    int64_t n;
    float lo, hi; /* IN/ACC/OUT fill range; IDS: ids in [0, hi) */
} Arg;

#define MAXA 12
typedef struct Case Case;
typedef void (*CaseFn)(Backend *be, void **p, const Case *cs);
struct Case {
    char name[96];
    CaseFn fn;
    int na;
    Arg a[MAXA];
    int64_t i[16];
    float f[8];
    double tol, tol_tf32, tol_bf16; /* max |gpu - cpu| / size of the cpu result */
    int ref_bf16;         /* bf16 compared with the CPU in bf16 (same operand rounding), not fp32 */
    int big;              /* SD-sized: skipped by --small */
};

#define MAXC 128
static Case cases[MAXC];
static int ncases;

static Case *add_case(const char *name, CaseFn fn, double tol, double tol_tf32, int big) {
    if (ncases == MAXC) { fprintf(stderr, "test_cuda_ops: too many cases\n"); exit(2); }
    Case *c = &cases[ncases++];
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    c->fn = fn;
    c->tol = tol;
    c->tol_tf32 = tol_tf32;
    c->tol_bf16 = tol_tf32; /* build_cases tightens linear and conv2d */
    c->big = big;
    return c;
}
static void arg(Case *c, const char *name, int kind, int64_t n, float lo, float hi) {
    Arg *a = &c->a[c->na++];
    a->name = name; a->kind = kind; a->n = n; a->lo = lo; a->hi = hi;
}
#define ARG(c, name, kind, n) arg(c, name, kind, n, -1.f, 1.f)

/* ------------------------------------------------------------ rng */
static uint64_t rng_s = 0x9E3779B97F4A7C15ULL;
static uint32_t rnd(void) {
    rng_s ^= rng_s << 13; rng_s ^= rng_s >> 7; rng_s ^= rng_s << 17;
    return (uint32_t)(rng_s >> 16);
}
static float frand(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() & 0xFFFFFF) / 16777216.f; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------ case bodies */
#define F(k) ((float *)p[k])
#define CF(k) ((const float *)p[k])

static void k_gemm(Backend *be, void **p, const Case *c) {
    be->gemm(be, (int)c->i[0], (int)c->i[1], (int)c->i[2], (int)c->i[3], (int)c->i[4], c->f[0],
             CF(0), (int)c->i[5], CF(1), (int)c->i[6], c->f[1], F(2), (int)c->i[7]);
}
static void k_gemm_batched(Backend *be, void **p, const Case *c) {
    be->gemm_batched(be, (int)c->i[0], (int)c->i[1], (int)c->i[2], (int)c->i[3], (int)c->i[4],
                     c->f[0], CF(0), (int)c->i[5], c->i[8], CF(1), (int)c->i[6], c->i[9], c->f[1],
                     F(2), (int)c->i[7], c->i[10], (int)c->i[11]);
}
static void k_linear_fwd(Backend *be, void **p, const Case *c) {
    be->linear_fwd(be, CF(0), CF(1), CF(2), F(3), c->i[0], (int)c->i[1], (int)c->i[2]);
}
static void k_linear_bwd(Backend *be, void **p, const Case *c) {
    be->linear_bwd(be, CF(0), CF(1), CF(2), F(3), F(4), F(5), c->i[0], (int)c->i[1], (int)c->i[2]);
}
/* Frozen weights (set_frozen): W is promised frozen, used (in BF16 mode from
 * the backend's bf16 copy), then overwritten with W2 by a copy, which must end
 * the promise: y2 comes from W2, not from a stale copy. Then dx of a linear_bwd
 * with W frozen again, and y3 from a weight inside the range. args: x W W2 y y2 dy dx y3 */
static void k_frozen(Backend *be, void **p, const Case *c) {
    int64_t M = c->i[0];
    int in = (int)c->i[1], out = (int)c->i[2];
    be->set_frozen(be, CF(1), (int64_t)out * in, (int64_t)out * in);
    be->linear_fwd(be, CF(0), CF(1), NULL, F(3), M, in, out);
    be->copy(be, F(1), CF(2), sizeof(float) * (size_t)out * in);
    be->linear_fwd(be, CF(0), CF(1), NULL, F(4), M, in, out);
    be->set_frozen(be, CF(1), (int64_t)out * in, (int64_t)out * in);
    be->linear_bwd(be, CF(5), CF(0), CF(1), F(6), NULL, NULL, M, in, out);
    /* a weight inside the range, not at its start: the lower half of W's rows */
    be->linear_fwd(be, CF(0), CF(1) + (int64_t)in * (out / 2), NULL, F(7), M, in, out - out / 2);
    be->set_frozen(be, CF(1), 0, 0);
}
/* i: N Cin H W Cout k s p */
static void k_conv_fwd(Backend *be, void **p, const Case *c) {
    be->conv2d_fwd(be, CF(0), CF(1), CF(2), F(3), (int)c->i[0], (int)c->i[1], (int)c->i[2],
                   (int)c->i[3], (int)c->i[4], (int)c->i[5], (int)c->i[6], (int)c->i[7]);
}
static void k_conv_bwd(Backend *be, void **p, const Case *c) {
    be->conv2d_bwd(be, CF(0), CF(1), CF(2), F(3), F(4), F(5), (int)c->i[0], (int)c->i[1],
                   (int)c->i[2], (int)c->i[3], (int)c->i[4], (int)c->i[5], (int)c->i[6],
                   (int)c->i[7]);
}
/* x gamma beta y mean rstd dy dx dgamma dbeta ; i: N C HW G ; f: eps */
static void k_group_norm(Backend *be, void **p, const Case *c) {
    int N = (int)c->i[0], C = (int)c->i[1], G = (int)c->i[3];
    be->group_norm_fwd(be, CF(0), CF(1), CF(2), F(3), F(4), F(5), N, C, c->i[2], G, c->f[0]);
    be->group_norm_bwd(be, CF(6), CF(0), CF(1), CF(4), CF(5), F(7), F(8), F(9), N, C, c->i[2], G);
}
/* the same, group norm then SiLU (y = silu(gn(x)), backward from x again) */
static void k_group_norm_silu(Backend *be, void **p, const Case *c) {
    int N = (int)c->i[0], C = (int)c->i[1], G = (int)c->i[3];
    be->group_norm_silu_fwd(be, CF(0), CF(1), CF(2), F(3), F(4), F(5), N, C, c->i[2], G, c->f[0]);
    be->group_norm_silu_bwd(be, CF(6), CF(0), CF(1), CF(2), CF(4), CF(5), F(7), F(8), F(9), N, C, c->i[2], G);
}
/* same layout; i: M C */
static void k_layer_norm(Backend *be, void **p, const Case *c) {
    be->layer_norm_fwd(be, CF(0), CF(1), CF(2), F(3), F(4), F(5), c->i[0], (int)c->i[1], c->f[0]);
    be->layer_norm_bwd(be, CF(6), CF(0), CF(1), CF(4), CF(5), F(7), F(8), F(9), c->i[0], (int)c->i[1]);
}
/* x y dy dx */
static void k_silu(Backend *be, void **p, const Case *c) {
    be->silu_fwd(be, CF(0), F(1), c->i[0]);
    be->silu_bwd(be, CF(2), CF(0), F(3), c->i[0]);
}
static void k_gelu(Backend *be, void **p, const Case *c) {
    be->gelu_fwd(be, CF(0), F(1), c->i[0]);
    be->gelu_bwd(be, CF(2), CF(0), F(3), c->i[0]);
}
static void k_geglu(Backend *be, void **p, const Case *c) {
    be->geglu_fwd(be, CF(0), F(1), c->i[0], (int)c->i[1]);
    be->geglu_bwd(be, CF(2), CF(0), F(3), c->i[0], (int)c->i[1]);
}
static void k_quick_gelu(Backend *be, void **p, const Case *c) { be->quick_gelu_fwd(be, CF(0), F(1), c->i[0]); }
static void k_quick_gelu_fb(Backend *be, void **p, const Case *c) {
    be->quick_gelu_fwd(be, CF(0), F(1), c->i[0]);
    be->quick_gelu_bwd(be, CF(2), CF(0), F(3), c->i[0]);
}
static void k_silu_inplace(Backend *be, void **p, const Case *c) { be->silu_fwd(be, F(0), F(0), c->i[0]); }
static void k_embedding(Backend *be, void **p, const Case *c) {
    be->embedding_fwd(be, CF(0), (const int32_t *)p[1], F(2), c->i[0], (int)c->i[1]);
}
/* dout ids dtable; i: n dim. Repeated ids make the CUDA kernel's atomicAdd race. */
static void k_embedding_bwd(Backend *be, void **p, const Case *c) {
    be->embedding_bwd(be, CF(0), (const int32_t *)p[1], F(2), c->i[0], (int)c->i[1]);
}
static void k_add(Backend *be, void **p, const Case *c) { be->add(be, CF(0), CF(1), F(2), c->i[0]); }
static void k_add_alias(Backend *be, void **p, const Case *c) { be->add(be, F(0), CF(1), F(0), c->i[0]); }
static void k_axpy(Backend *be, void **p, const Case *c) { be->axpy(be, c->f[0], CF(0), F(1), c->i[0]); }
static void k_scale(Backend *be, void **p, const Case *c) { be->scale(be, F(0), c->f[0], c->i[0]); }
/* i: N C HW */
static void k_chan_bias(Backend *be, void **p, const Case *c) {
    be->add_channel_bias(be, F(0), CF(1), (int)c->i[0], (int)c->i[1], c->i[2]);
}
static void k_chan_sum(Backend *be, void **p, const Case *c) {
    be->channel_sum_bwd(be, CF(0), F(1), (int)c->i[0], (int)c->i[1], c->i[2]);
}
/* i: N Ca Cb HW */
static void k_concat(Backend *be, void **p, const Case *c) {
    be->concat_channels(be, CF(0), CF(1), F(2), (int)c->i[0], (int)c->i[1], (int)c->i[2], c->i[3]);
}
static void k_concat_bwd(Backend *be, void **p, const Case *c) {
    be->concat_channels_bwd(be, CF(0), F(1), F(2), (int)c->i[0], (int)c->i[1], (int)c->i[2], c->i[3]);
}
/* i: N C H W */
static void k_up(Backend *be, void **p, const Case *c) {
    be->upsample2x_fwd(be, CF(0), F(1), (int)c->i[0], (int)c->i[1], (int)c->i[2], (int)c->i[3]);
}
static void k_up_bwd(Backend *be, void **p, const Case *c) {
    be->upsample2x_bwd(be, CF(0), F(1), (int)c->i[0], (int)c->i[1], (int)c->i[2], (int)c->i[3]);
}
/* i: N C HW acc */
static void k_pad(Backend *be, void **p, const Case *c) {
    be->pad2d(be, CF(0), F(1), (int)c->i[0], (int)c->i[1], (int)c->i[2], (int)c->i[3], (int)c->i[4],
              (int)c->i[5], (int)c->i[6], (int)c->i[7]);
}
static void k_pad_bwd(Backend *be, void **p, const Case *c) {
    be->pad2d_bwd(be, CF(0), F(1), (int)c->i[0], (int)c->i[1], (int)c->i[2], (int)c->i[3],
                  (int)c->i[4], (int)c->i[5], (int)c->i[6], (int)c->i[7]);
}
static void k_to_nlc(Backend *be, void **p, const Case *c) {
    be->nchw_to_nlc(be, CF(0), F(1), (int)c->i[0], (int)c->i[1], c->i[2], (int)c->i[3]);
}
static void k_to_nchw(Backend *be, void **p, const Case *c) {
    be->nlc_to_nchw(be, CF(0), F(1), (int)c->i[0], (int)c->i[1], c->i[2], (int)c->i[3]);
}
/* q k v o lse dout dq dk dv ; i: N Lq Lk H D causal ; f: scale */
static void k_attention(Backend *be, void **p, const Case *c) {
    int N = (int)c->i[0], Lq = (int)c->i[1], Lk = (int)c->i[2], H = (int)c->i[3], D = (int)c->i[4],
        causal = (int)c->i[5];
    be->attention_fwd(be, CF(0), CF(1), CF(2), F(3), F(4), N, Lq, Lk, H, D, c->f[0], causal);
    be->attention_bwd(be, CF(5), CF(0), CF(1), CF(2), CF(3), CF(4), F(6), F(7), F(8), N, Lq, Lk,
                      H, D, c->f[0], causal);
}
/* i: N dim flip ; f: shift max_period */
static void k_timestep(Backend *be, void **p, const Case *c) {
    be->timestep_embedding(be, CF(0), F(1), (int)c->i[0], (int)c->i[1], (int)c->i[2], c->f[0], c->f[1]);
}
/* pred target loss[1] dpred ; f: weight */
static void k_mse(Backend *be, void **p, const Case *c) {
    float l = be->mse_fwd(be, CF(0), CF(1), c->i[0]);
    be->upload(be, p[2], &l, sizeof l);
    be->mse_bwd(be, CF(0), CF(1), F(3), c->i[0], c->f[0]);
}
/* param grad m v ; f: lr b1 b2 eps wd ; i: n t */
static void k_adamw(Backend *be, void **p, const Case *c) {
    be->adamw(be, F(0), CF(1), F(2), F(3), c->i[0], c->f[0], c->f[1], c->f[2], c->f[3], c->f[4], (int)c->i[1]);
}
/* i: M a1 a2 b1 b2 ; f: scale */
static void k_kron_fwd(Backend *be, void **p, const Case *c) {
    be->kron_fwd(be, CF(0), CF(1), CF(2), F(3), c->i[0], (int)c->i[1], (int)c->i[2], (int)c->i[3],
                 (int)c->i[4], c->f[0]);
}
static void k_kron_bwd(Backend *be, void **p, const Case *c) {
    be->kron_bwd(be, CF(0), CF(1), CF(2), CF(3), F(4), F(5), F(6), c->i[0], (int)c->i[1],
                 (int)c->i[2], (int)c->i[3], (int)c->i[4], c->f[0]);
}
static void k_kron_merge(Backend *be, void **p, const Case *c) {
    be->kron_merge(be, CF(0), CF(1), F(2), (int)c->i[1], (int)c->i[2], (int)c->i[3], (int)c->i[4], c->f[0]);
}

/* ------------------------------------------------------------ case list */
#define T_PW 2e-5   /* pointwise: libm vs CUDA math, a few ulp */
#define T_MM 2e-4   /* fp32 gemm / reductions: summation order */
#define T_TF 1.5e-2 /* TF32 gemms: 10-bit mantissa inputs */

static void gemm_case(int tA, int tB, int M, int N, int K, int pad, float beta, int batch, int sA0) {
    char nm[96];
    int lda = (tA ? M : K) + pad, ldb = (tB ? K : N) + pad, ldc = N + pad;
    int64_t szA = (int64_t)(tA ? K : M) * lda, szB = (int64_t)(tB ? N : K) * ldb, szC = (int64_t)M * ldc;
    if (batch == 1) {
        snprintf(nm, sizeof nm, "gemm %s%s %dx%dx%d beta=%g", tA ? "T" : "N", tB ? "T" : "N", M, N, K, beta);
        Case *c = add_case(nm, k_gemm, T_MM, T_TF, 0);
        ARG(c, "A", IN, szA); ARG(c, "B", IN, szB); ARG(c, "C", ACC, szC);
        int64_t iv[] = {tA, tB, M, N, K, lda, ldb, ldc};
        memcpy(c->i, iv, sizeof iv);
    } else {
        snprintf(nm, sizeof nm, "gemm_batched %s%s %dx%dx%d b=%d%s", tA ? "T" : "N", tB ? "T" : "N",
                 M, N, K, batch, sA0 ? " sA=0" : "");
        Case *c = add_case(nm, k_gemm_batched, T_MM, T_TF, 0);
        int64_t sA = sA0 ? 0 : szA;
        ARG(c, "A", IN, sA0 ? szA : szA * batch); ARG(c, "B", IN, szB * batch); ARG(c, "C", ACC, szC * batch);
        int64_t iv[] = {tA, tB, M, N, K, lda, ldb, ldc, sA, szB, szC, batch};
        memcpy(c->i, iv, sizeof iv);
    }
    cases[ncases - 1].f[0] = 0.75f;
    cases[ncases - 1].f[1] = beta;
}

/* convolutions by cuDNN (KRONA_CUDA_CONV=cudnn, and the plugin says it loaded it) */
static int conv_dnn;

static void conv_cases(int N, int Cin, int H, int W, int Cout, int k, int s, int p, int bias, int big) {
    char nm[96];
    int Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    int64_t iv[] = {N, Cin, H, W, Cout, k, s, p};
    snprintf(nm, sizeof nm, "conv2d_fwd %dx%d s%d p%d %d->%d %dx%d N=%d", k, k, s, p, Cin, Cout, H, W, N);
    Case *c = add_case(nm, k_conv_fwd, T_MM, T_TF, big);
    ARG(c, "x", IN, (int64_t)N * Cin * H * W); ARG(c, "w", IN, (int64_t)Cout * Cin * k * k);
    ARG(c, "b", bias ? IN : NUL, Cout); ARG(c, "y", OUT, (int64_t)N * Cout * Ho * Wo);
    memcpy(c->i, iv, sizeof iv);
    snprintf(nm, sizeof nm, "conv2d_bwd %dx%d s%d p%d %d->%d %dx%d N=%d", k, k, s, p, Cin, Cout, H, W, N);
    c = add_case(nm, k_conv_bwd, T_MM, T_TF, big);
    ARG(c, "dy", IN, (int64_t)N * Cout * Ho * Wo); ARG(c, "x", IN, (int64_t)N * Cin * H * W);
    ARG(c, "w", IN, (int64_t)Cout * Cin * k * k); ARG(c, "dx", ACC, (int64_t)N * Cin * H * W);
    ARG(c, "dw", ACC, (int64_t)Cout * Cin * k * k); ARG(c, "db", bias ? ACC : NUL, Cout);
    memcpy(c->i, iv, sizeof iv);
}

/* group: 0 layer norm, 1 group norm, 2 group norm then SiLU */
static void norm_case(int group, int64_t N_or_M, int C, int64_t HW, int G, int big) {
    char nm[96];
    Case *c;
    if (group) {
        snprintf(nm, sizeof nm, "group_norm%s fwd+bwd N=%lld C=%d HW=%lld G=%d", group == 2 ? "_silu" : "",
                 (long long)N_or_M, C, (long long)HW, G);
        c = add_case(nm, group == 2 ? k_group_norm_silu : k_group_norm, T_MM, T_MM, big);
        int64_t n = N_or_M * C * HW;
        ARG(c, "x", IN, n); arg(c, "gamma", IN, C, 0.5f, 1.5f); ARG(c, "beta", IN, C);
        ARG(c, "y", OUT, n); ARG(c, "mean", OUT, N_or_M * G); ARG(c, "rstd", OUT, N_or_M * G);
        ARG(c, "dy", IN, n); ARG(c, "dx", ACC, n); ARG(c, "dgamma", ACC, C); ARG(c, "dbeta", ACC, C);
        int64_t iv[] = {N_or_M, C, HW, G};
        memcpy(c->i, iv, sizeof iv);
    } else {
        snprintf(nm, sizeof nm, "layer_norm fwd+bwd M=%lld C=%d", (long long)N_or_M, C);
        c = add_case(nm, k_layer_norm, T_MM, T_MM, big);
        int64_t n = N_or_M * C;
        ARG(c, "x", IN, n); arg(c, "gamma", IN, C, 0.5f, 1.5f); ARG(c, "beta", IN, C);
        ARG(c, "y", OUT, n); ARG(c, "mean", OUT, N_or_M); ARG(c, "rstd", OUT, N_or_M);
        ARG(c, "dy", IN, n); ARG(c, "dx", ACC, n); ARG(c, "dgamma", ACC, C); ARG(c, "dbeta", ACC, C);
        c->i[0] = N_or_M; c->i[1] = C;
    }
    c->f[0] = 1e-5f;
}

static void attn_case(int N, int Lq, int Lk, int H, int D, int causal, int null_dq, int big) {
    char nm[96];
    snprintf(nm, sizeof nm, "attention fwd+bwd N=%d Lq=%d Lk=%d H=%d D=%d%s%s", N, Lq, Lk, H, D,
             causal ? " causal" : "", null_dq ? " dq=NULL" : "");
    Case *c = add_case(nm, k_attention, T_MM, T_TF, big);
    int64_t nq = (int64_t)N * Lq * H * D, nk = (int64_t)N * Lk * H * D;
    ARG(c, "q", IN, nq); ARG(c, "k", IN, nk); ARG(c, "v", IN, nk);
    ARG(c, "o", OUT, nq); ARG(c, "lse", OUT, (int64_t)N * H * Lq);
    ARG(c, "dout", IN, nq); ARG(c, "dq", null_dq ? NUL : ACC, nq); ARG(c, "dk", ACC, nk); ARG(c, "dv", ACC, nk);
    int64_t iv[] = {N, Lq, Lk, H, D, causal};
    memcpy(c->i, iv, sizeof iv);
    c->f[0] = 1.f / sqrtf((float)D);
}

static void kron_cases(int64_t M, int a1, int a2, int b1, int b2, float scale, int nullA) {
    char nm[96];
    int64_t din = (int64_t)a2 * b2, dout = (int64_t)a1 * b1;
    int64_t iv[] = {M, a1, a2, b1, b2};
    snprintf(nm, sizeof nm, "kron_fwd M=%lld A%dx%d B%dx%d", (long long)M, a1, a2, b1, b2);
    Case *c = add_case(nm, k_kron_fwd, T_MM, T_TF, 0);
    ARG(c, "x", IN, M * din); ARG(c, "A", IN, (int64_t)a1 * a2); ARG(c, "B", IN, (int64_t)b1 * b2); ARG(c, "y", ACC, M * dout);
    memcpy(c->i, iv, sizeof iv); c->f[0] = scale;
    snprintf(nm, sizeof nm, "kron_bwd M=%lld A%dx%d B%dx%d%s", (long long)M, a1, a2, b1, b2, nullA ? " dA=NULL" : "");
    c = add_case(nm, k_kron_bwd, T_MM, T_TF, 0);
    ARG(c, "dy", IN, M * dout); ARG(c, "x", IN, M * din); ARG(c, "A", IN, (int64_t)a1 * a2); ARG(c, "B", IN, (int64_t)b1 * b2);
    ARG(c, "dx", ACC, M * din); ARG(c, "dA", nullA ? NUL : ACC, (int64_t)a1 * a2); ARG(c, "dB", ACC, (int64_t)b1 * b2);
    memcpy(c->i, iv, sizeof iv); c->f[0] = scale;
    snprintf(nm, sizeof nm, "kron_merge A%dx%d B%dx%d", a1, a2, b1, b2);
    c = add_case(nm, k_kron_merge, T_PW, T_PW, 0);
    ARG(c, "A", IN, (int64_t)a1 * a2); ARG(c, "B", IN, (int64_t)b1 * b2); ARG(c, "W", ACC, dout * din);
    memcpy(c->i, iv, sizeof iv); c->f[0] = scale;
}

static void build_cases(void) {
    Case *c;
    /* dense algebra */
    gemm_case(0, 0, 300, 200, 150, 0, 0.f, 1, 0);
    gemm_case(1, 0, 129, 257, 65, 3, 0.5f, 1, 0);
    gemm_case(0, 1, 77, 320, 768, 0, 1.f, 1, 0);
    gemm_case(1, 1, 64, 33, 100, 5, 0.f, 1, 0);
    gemm_case(0, 1, 96, 80, 40, 0, 0.f, 8, 0);
    gemm_case(1, 0, 40, 50, 60, 2, 1.f, 5, 1);

    c = add_case("linear_fwd M=4096 320->1280 +bias", k_linear_fwd, T_MM, T_TF, 0);
    ARG(c, "x", IN, 4096LL * 320); ARG(c, "W", IN, 1280LL * 320); ARG(c, "b", IN, 1280); ARG(c, "y", OUT, 4096LL * 1280);
    c->i[0] = 4096; c->i[1] = 320; c->i[2] = 1280;
    c = add_case("linear_fwd M=154 768->320 no bias", k_linear_fwd, T_MM, T_TF, 0);
    ARG(c, "x", IN, 154LL * 768); ARG(c, "W", IN, 320LL * 768); ARG(c, "b", NUL, 0); ARG(c, "y", OUT, 154LL * 320);
    c->i[0] = 154; c->i[1] = 768; c->i[2] = 320;
    c = add_case("linear_bwd M=4096 320->1280", k_linear_bwd, T_MM, T_TF, 0);
    ARG(c, "dy", IN, 4096LL * 1280); ARG(c, "x", IN, 4096LL * 320); ARG(c, "W", IN, 1280LL * 320);
    ARG(c, "dx", ACC, 4096LL * 320); ARG(c, "dW", ACC, 1280LL * 320); ARG(c, "db", ACC, 1280);
    c->i[0] = 4096; c->i[1] = 320; c->i[2] = 1280;
    c = add_case("frozen W: linear fwd, overwritten, fwd, bwd M=70 96->40", k_frozen, T_MM, T_TF, 0);
    ARG(c, "x", IN, 70LL * 96); ARG(c, "W", IN, 40LL * 96); ARG(c, "W2", IN, 40LL * 96);
    ARG(c, "y", OUT, 70LL * 40); ARG(c, "y2", OUT, 70LL * 40); ARG(c, "dy", IN, 70LL * 40);
    ARG(c, "dx", ACC, 70LL * 96); ARG(c, "y3", OUT, 70LL * 20);
    c->i[0] = 70; c->i[1] = 96; c->i[2] = 40;
    c = add_case("linear_bwd M=333 96->40 dx=NULL db=NULL", k_linear_bwd, T_MM, T_TF, 0);
    ARG(c, "dy", IN, 333LL * 40); ARG(c, "x", IN, 333LL * 96); ARG(c, "W", IN, 40LL * 96);
    ARG(c, "dx", NUL, 0); ARG(c, "dW", ACC, 40LL * 96); ARG(c, "db", NUL, 0);
    c->i[0] = 333; c->i[1] = 96; c->i[2] = 40;

    /* convolution: SD 1.5 resnet conv, conv_in, downsampler, 1x1 shortcut, odd shape */
    conv_cases(1, 320, 64, 64, 320, 3, 1, 1, 1, 1);
    conv_cases(2, 4, 64, 64, 320, 3, 1, 1, 1, 0);
    conv_cases(2, 64, 32, 32, 64, 3, 2, 1, 1, 0);
    conv_cases(2, 320, 32, 32, 640, 1, 1, 0, 1, 0);
    conv_cases(3, 5, 7, 9, 6, 3, 1, 1, 0, 0);
    conv_cases(2, 6, 9, 7, 4, 3, 2, 1, 1, 0);
    /* many images: dw sums over groups of images (under the emulator's small
     * workspace, groups of 3, 3 and 1) */
    conv_cases(7, 16, 4, 4, 32, 3, 1, 1, 1, 0);
    conv_cases(7, 320, 3, 3, 16, 1, 1, 0, 1, 0);

    /* normalisation */
    norm_case(1, 2, 320, 4096, 32, 1);
    norm_case(1, 1, 640, 1024, 32, 0);
    norm_case(1, 3, 12, 37, 3, 0);
    norm_case(2, 2, 320, 4096, 32, 1);
    norm_case(2, 3, 12, 37, 3, 0);
    norm_case(0, 4096, 320, 0, 0, 0);
    norm_case(0, 154, 768, 0, 0, 0);
    norm_case(0, 37, 1280, 0, 0, 0);

    /* pointwise */
    int64_t n = (1 << 20) + 3;
    c = add_case("silu fwd+bwd n=2^20+3", k_silu, T_PW, T_PW, 0);
    arg(c, "x", IN, n, -8, 8); ARG(c, "y", OUT, n); ARG(c, "dy", IN, n); ARG(c, "dx", ACC, n); c->i[0] = n;
    c = add_case("silu in place (y == x)", k_silu_inplace, T_PW, T_PW, 0);
    arg(c, "x", ACC, 1000, -8, 8); c->i[0] = 1000;
    c = add_case("gelu fwd+bwd n=2^20+3", k_gelu, T_PW, T_PW, 0);
    arg(c, "x", IN, n, -6, 6); ARG(c, "y", OUT, n); ARG(c, "dy", IN, n); ARG(c, "dx", ACC, n); c->i[0] = n;
    c = add_case("geglu fwd+bwd M=4096 D=1280", k_geglu, T_PW, T_PW, 0);
    arg(c, "x", IN, 4096LL * 2560, -4, 4); ARG(c, "y", OUT, 4096LL * 1280); ARG(c, "dy", IN, 4096LL * 1280);
    ARG(c, "dx", ACC, 4096LL * 2560); c->i[0] = 4096; c->i[1] = 1280;
    c = add_case("quick_gelu n=154*3072", k_quick_gelu, T_PW, T_PW, 0);
    arg(c, "x", IN, 154LL * 3072, -6, 6); ARG(c, "y", OUT, 154LL * 3072); c->i[0] = 154LL * 3072;
    c = add_case("quick_gelu fwd+bwd n=2^20+3", k_quick_gelu_fb, T_PW, T_PW, 0);
    arg(c, "x", IN, n, -6, 6); ARG(c, "y", OUT, n); ARG(c, "dy", IN, n); ARG(c, "dx", ACC, n); c->i[0] = n;
    c = add_case("embedding 154 ids of 49408x768", k_embedding, 0, 0, 0);
    ARG(c, "table", IN, 49408LL * 768); arg(c, "ids", IDS, 154, 0, 49408); ARG(c, "out", OUT, 154LL * 768);
    c->i[0] = 154; c->i[1] = 768;
    c = add_case("embedding_bwd 616 ids of 300x64 (repeats)", k_embedding_bwd, 1e-5, 1e-5, 0);
    ARG(c, "dout", IN, 616LL * 64); arg(c, "ids", IDS, 616, 0, 300); ARG(c, "dtable", ACC, 300LL * 64);
    c->i[0] = 616; c->i[1] = 64;
    c = add_case("add n=1e6+1", k_add, T_PW, T_PW, 0);
    ARG(c, "a", IN, 1000001); ARG(c, "b", IN, 1000001); ARG(c, "y", OUT, 1000001); c->i[0] = 1000001;
    c = add_case("add in place (y == a)", k_add_alias, T_PW, T_PW, 0);
    ARG(c, "a", ACC, 4099); ARG(c, "b", IN, 4099); c->i[0] = 4099;
    c = add_case("axpy n=1e6+1", k_axpy, T_PW, T_PW, 0);
    ARG(c, "x", IN, 1000001); ARG(c, "y", ACC, 1000001); c->i[0] = 1000001; c->f[0] = -0.37f;
    c = add_case("scale n=1e6+1", k_scale, T_PW, T_PW, 0);
    ARG(c, "x", ACC, 1000001); c->i[0] = 1000001; c->f[0] = 1.7f;
    c = add_case("add_channel_bias N=2 C=320 HW=4096", k_chan_bias, T_PW, T_PW, 0);
    ARG(c, "x", ACC, 2LL * 320 * 4096); ARG(c, "v", IN, 2 * 320); c->i[0] = 2; c->i[1] = 320; c->i[2] = 4096;
    c = add_case("channel_sum_bwd N=2 C=320 HW=4096", k_chan_sum, T_MM, T_MM, 0);
    ARG(c, "dy", IN, 2LL * 320 * 4096); ARG(c, "dv", ACC, 2 * 320); c->i[0] = 2; c->i[1] = 320; c->i[2] = 4096;

    /* shape ops */
    c = add_case("concat_channels N=2 640+320 HW=1024", k_concat, 0, 0, 0);
    ARG(c, "a", IN, 2LL * 640 * 1024); ARG(c, "b", IN, 2LL * 320 * 1024); ARG(c, "y", OUT, 2LL * 960 * 1024);
    c->i[0] = 2; c->i[1] = 640; c->i[2] = 320; c->i[3] = 1024;
    c = add_case("concat_channels_bwd N=2 640+320 HW=1024", k_concat_bwd, T_PW, T_PW, 0);
    ARG(c, "dy", IN, 2LL * 960 * 1024); ARG(c, "da", ACC, 2LL * 640 * 1024); ARG(c, "db", ACC, 2LL * 320 * 1024);
    c->i[0] = 2; c->i[1] = 640; c->i[2] = 320; c->i[3] = 1024;
    c = add_case("concat_channels_bwd da=NULL", k_concat_bwd, T_PW, T_PW, 0);
    ARG(c, "dy", IN, 3LL * 12 * 50); ARG(c, "da", NUL, 0); ARG(c, "db", ACC, 3LL * 7 * 50);
    c->i[0] = 3; c->i[1] = 5; c->i[2] = 7; c->i[3] = 50;
    c = add_case("upsample2x_fwd N=2 C=640 16x16", k_up, 0, 0, 0);
    ARG(c, "x", IN, 2LL * 640 * 256); ARG(c, "y", OUT, 2LL * 640 * 1024);
    c->i[0] = 2; c->i[1] = 640; c->i[2] = 16; c->i[3] = 16;
    c = add_case("upsample2x_bwd N=2 C=3 5x7", k_up_bwd, T_PW, T_PW, 0);
    ARG(c, "dy", IN, 2LL * 3 * 140); ARG(c, "dx", ACC, 2LL * 3 * 35);
    c->i[0] = 2; c->i[1] = 3; c->i[2] = 5; c->i[3] = 7;
    /* the VAE encoder's Downsample2D pad (0,1,0,1), and an uneven one on every side */
    c = add_case("pad2d N=2 C=128 64x64 (0,1,0,1)", k_pad, 0, 0, 0);
    ARG(c, "x", IN, 2LL * 128 * 64 * 64); ARG(c, "y", OUT, 2LL * 128 * 65 * 65);
    c->i[0] = 2; c->i[1] = 128; c->i[2] = 64; c->i[3] = 64; c->i[4] = 0; c->i[5] = 1; c->i[6] = 0; c->i[7] = 1;
    c = add_case("pad2d N=3 C=5 7x6 (2,1,3,0)", k_pad, 0, 0, 0);
    ARG(c, "x", IN, 3LL * 5 * 42); ARG(c, "y", OUT, 3LL * 5 * 10 * 9);
    c->i[0] = 3; c->i[1] = 5; c->i[2] = 7; c->i[3] = 6; c->i[4] = 2; c->i[5] = 1; c->i[6] = 3; c->i[7] = 0;
    c = add_case("pad2d_bwd N=3 C=5 7x6 (2,1,3,0)", k_pad_bwd, T_PW, T_PW, 0);
    ARG(c, "dy", IN, 3LL * 5 * 10 * 9); ARG(c, "dx", ACC, 3LL * 5 * 42);
    c->i[0] = 3; c->i[1] = 5; c->i[2] = 7; c->i[3] = 6; c->i[4] = 2; c->i[5] = 1; c->i[6] = 3; c->i[7] = 0;
    c = add_case("nchw_to_nlc N=2 C=320 HW=4096", k_to_nlc, 0, 0, 0);
    ARG(c, "x", IN, 2LL * 320 * 4096); ARG(c, "y", OUT, 2LL * 320 * 4096);
    c->i[0] = 2; c->i[1] = 320; c->i[2] = 4096; c->i[3] = 0;
    c = add_case("nchw_to_nlc accumulate N=3 C=45 HW=77", k_to_nlc, T_PW, T_PW, 0);
    ARG(c, "x", IN, 3LL * 45 * 77); ARG(c, "y", ACC, 3LL * 45 * 77);
    c->i[0] = 3; c->i[1] = 45; c->i[2] = 77; c->i[3] = 1;
    c = add_case("nlc_to_nchw N=2 C=640 HW=1024", k_to_nchw, 0, 0, 0);
    ARG(c, "x", IN, 2LL * 640 * 1024); ARG(c, "y", OUT, 2LL * 640 * 1024);
    c->i[0] = 2; c->i[1] = 640; c->i[2] = 1024; c->i[3] = 0;
    c = add_case("nlc_to_nchw accumulate N=3 C=45 HW=77", k_to_nchw, T_PW, T_PW, 0);
    ARG(c, "x", IN, 3LL * 45 * 77); ARG(c, "y", ACC, 3LL * 45 * 77);
    c->i[0] = 3; c->i[1] = 45; c->i[2] = 77; c->i[3] = 1;

    /* attention: SD 1.5 self-attention at 64x64, cross-attention, CLIP causal, odd */
    attn_case(1, 4096, 4096, 8, 40, 0, 0, 1);
    attn_case(2, 4096, 77, 8, 40, 0, 0, 1);
    attn_case(2, 1024, 1024, 8, 80, 0, 1, 1); /* SD 1.5 at 32x32, no dq (the emulator: 30 s a pass) */
    attn_case(2, 256, 256, 8, 80, 0, 1, 0);   /* its shape at --small: row tiles and fused tiles both several */
    attn_case(2, 77, 77, 12, 64, 1, 0, 0);
    attn_case(2, 100, 37, 3, 24, 0, 0, 0);
    attn_case(1, 50, 50, 2, 16, 1, 0, 0);
    /* more images than heads: batched over images, one head at a time */
    attn_case(6, 100, 37, 2, 24, 0, 0, 0);
    attn_case(5, 50, 50, 1, 16, 1, 0, 0);
    attn_case(4, 64, 64, 2, 8, 0, 1, 0);
    /* bf16 mode's fused kernels: several partial tiles both ways with SD's D = 40
     * (padded to 48), the widest head they take, and one wider (the row tiles) */
    attn_case(2, 150, 200, 2, 40, 0, 0, 0);
    attn_case(1, 70, 90, 1, 160, 0, 0, 0);
    attn_case(1, 40, 30, 1, 192, 0, 0, 0);
    attn_case(128, 1024, 1024, 4, 8, 0, 0, 1); /* the tiny model's pretraining batch */

    /* diffusion helpers */
    c = add_case("timestep_embedding N=4 dim=320 flip", k_timestep, 2e-4, 2e-4, 0);
    arg(c, "t", IN, 4, 0, 999); ARG(c, "emb", OUT, 4 * 320); c->i[0] = 4; c->i[1] = 320; c->i[2] = 1;
    c->f[0] = 0.f; c->f[1] = 10000.f;
    c = add_case("timestep_embedding N=3 dim=255 shift=1", k_timestep, 2e-4, 2e-4, 0);
    arg(c, "t", IN, 3, 0, 999); ARG(c, "emb", OUT, 3 * 255); c->i[0] = 3; c->i[1] = 255; c->i[2] = 0;
    c->f[0] = 1.f; c->f[1] = 10000.f;
    c = add_case("mse fwd+bwd n=2*4*64*64", k_mse, 1e-5, 1e-5, 0);
    ARG(c, "pred", IN, 32768); ARG(c, "target", IN, 32768); ARG(c, "loss", OUT, 1); ARG(c, "dpred", ACC, 32768);
    c->i[0] = 32768; c->f[0] = 0.5f;
    c = add_case("mse fwd+bwd n=3e6+7", k_mse, 1e-5, 1e-5, 0);
    ARG(c, "pred", IN, 3000007); ARG(c, "target", IN, 3000007); ARG(c, "loss", OUT, 1); ARG(c, "dpred", ACC, 3000007);
    c->i[0] = 3000007; c->f[0] = 1.f;
    c = add_case("adamw n=1e6+5 t=3", k_adamw, T_PW, T_PW, 0);
    ARG(c, "param", ACC, 1000005); ARG(c, "grad", IN, 1000005); arg(c, "m", ACC, 1000005, -0.1f, 0.1f);
    arg(c, "v", ACC, 1000005, 0.f, 0.01f);
    c->i[0] = 1000005; c->i[1] = 3;
    c->f[0] = 1e-3f; c->f[1] = 0.9f; c->f[2] = 0.999f; c->f[3] = 1e-8f; c->f[4] = 1e-2f;

    /* Kronecker adapter: SD attn q (320x320), cross k (320x768), ffn-like */
    kron_cases(4096, 16, 16, 20, 20, 1.f, 0);
    kron_cases(154, 16, 8, 20, 96, 0.5f, 0);
    kron_cases(2 * 1024, 4, 4, 160, 160, 2.f, 1);
    kron_cases(7, 3, 5, 2, 1, 1.f, 0);
    /* both multiplication orders (kron_a_first): SD 1.5's KronA 4x64 on a 320-wide
     * layer goes A first, its mirror image B first (also with dA = NULL) */
    kron_cases(4096, 4, 64, 80, 5, 1.f, 0);
    kron_cases(300, 64, 4, 5, 80, 0.5f, 1);
    /* factors too large for the fused kernels' shared memory (227 KB on an H100):
     * backward (and then also forward) take the cuBLAS path */
    kron_cases(64, 2, 2, 200, 200, 1.f, 0);
    kron_cases(40, 2, 2, 256, 256, 0.5f, 0);
    /* bf16: the CPU rounds linear's and conv2d's operands as the GPU does, so
     * only the summation order differs there */
    for (int i = 0; i < ncases; i++)
        if (cases[i].fn == k_linear_fwd || cases[i].fn == k_linear_bwd || cases[i].fn == k_conv_fwd ||
            cases[i].fn == k_conv_bwd || cases[i].fn == k_frozen) {
            cases[i].tol_bf16 = cases[i].tol;
            cases[i].ref_bf16 = 1;
        }
    /* cuDNN's bf16 convolutions write bf16 (y, and dx's part): one rounding,
     * 2^-8 of the value at most (8 significant bits), on top of the summation order */
    if (conv_dnn)
        for (int i = 0; i < ncases; i++)
            if (cases[i].fn == k_conv_fwd || cases[i].fn == k_conv_bwd) cases[i].tol_bf16 = 6e-3;
}

/* ------------------------------------------------------------ runner */

static int run_on(Backend *be, const Case *c, float **host, float **res, double *ms) {
    void *p[MAXA] = {0};
    for (int j = 0; j < c->na; j++) {
        if (c->a[j].kind == NUL) continue;
        size_t bytes = (size_t)c->a[j].n * 4;
        p[j] = be->alloc(be, bytes);
        if (!p[j]) {
            fprintf(stderr, "%s: %s: alloc of %zu bytes for %s failed\n", c->name, be->name, bytes, c->a[j].name);
            for (int k = 0; k < j; k++) be->free(be, p[k]);
            return -1;
        }
        be->upload(be, p[j], host[j], bytes);
    }
    be->sync(be);
    double t0 = now();
    c->fn(be, p, c);
    be->sync(be);
    *ms = (now() - t0) * 1e3;
    for (int j = 0; j < c->na; j++) {
        if (c->a[j].kind == OUT || c->a[j].kind == ACC)
            be->download(be, res[j], p[j], (size_t)c->a[j].n * 4);
        be->free(be, p[j]);
    }
    return 0;
}

static float *xmalloc(size_t n) {
    float *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "test_cuda_ops: host out of memory (%zu bytes)\n", n); exit(2); }
    return p;
}

/* ------------------------------------------------------------ compact weights, recordings */

static double max_rel(const float *a, const float *b, int64_t n) {
    double m = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN sticks */
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    return m / (s > 1e-6 ? s : 1e-6);
}
static const char *check_block = "compact weights";
static int check(const char *what, int ok) {
    printf("%s: %-66s %s\n", check_block, what, ok ? "ok" : "FAIL");
    return !ok;
}

/* set_frozen's n_w in BF16 mode: a weight block laid out as the UNet's
 * (linear and conv weights first, then biases) is promised; linear and conv2d
 * forward and backward must give what the same weights give unpromised (same
 * bf16 operands), the block must hold less memory after (f32 pages given back
 * where the backend can), copies and downloads of the weights return them
 * rounded to bf16 and of the biases exactly, a precision change or a write
 * brings f32 back (rounded as used), and free works on a compact block. On the
 * emulator the given-back pages are unreadable, so any op that still read the
 * f32 weights would crash here. */
static int test_compact(Backend *gpu, Backend *cpu) {
    const char *vmm = getenv("KRONA_CUDA_VMM");
    if (vmm && vmm[0] == '0') {
        printf("compact weights: skipped (KRONA_CUDA_VMM=0: no address-stable blocks)\n");
        return 0;
    }
    const int M = 4, IN = 2048, OUT = 2048, C = 256, HW = 8;
    const int64_t nl = (int64_t)OUT * IN, nc = (int64_t)C * C * 9, nw = nl + nc, n = nw + OUT;
    const int64_t nx = (int64_t)M * IN, ny = (int64_t)M * OUT, nxc = (int64_t)C * HW * HW;
    int fails = 0;
    float *h = xmalloc((size_t)n * 4), *hx = xmalloc((size_t)nx * 4), *hdy = xmalloc((size_t)ny * 4);
    float *hxc = xmalloc((size_t)nxc * 4), *hdyc = xmalloc((size_t)nxc * 4), *got = xmalloc((size_t)n * 4);
    float *want = xmalloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) h[i] = frand(-0.05f, 0.05f);
    for (int64_t i = 0; i < nx; i++) hx[i] = frand(-1, 1);
    for (int64_t i = 0; i < ny; i++) hdy[i] = frand(-1, 1);
    for (int64_t i = 0; i < nxc; i++) { hxc[i] = frand(-1, 1); hdyc[i] = frand(-1, 1); }

    /* the reference: the same weights in a plain block, not promised */
    gpu->set_precision(gpu, KRONA_PREC_BF16);
    float *blk = gpu->alloc(gpu, (size_t)n * 4);
    gpu->set_precision(gpu, KRONA_PREC_FP32); /* allocated in FP32 mode: never address-stable */
    float *ref = gpu->alloc(gpu, (size_t)n * 4);
    gpu->set_precision(gpu, KRONA_PREC_BF16);
    float *x = gpu->alloc(gpu, (size_t)nx * 4), *dy = gpu->alloc(gpu, (size_t)ny * 4);
    float *xc = gpu->alloc(gpu, (size_t)nxc * 4), *dyc = gpu->alloc(gpu, (size_t)nxc * 4);
    float *out = gpu->alloc(gpu, (size_t)8 * nxc * 4);
    if (!blk || !ref || !x || !dy || !xc || !dyc || !out) { printf("compact weights: alloc failed\n"); return 1; }
    gpu->upload(gpu, blk, h, (size_t)n * 4);
    gpu->upload(gpu, ref, h, (size_t)n * 4);
    gpu->upload(gpu, x, hx, (size_t)nx * 4);
    gpu->upload(gpu, dy, hdy, (size_t)ny * 4);
    gpu->upload(gpu, xc, hxc, (size_t)nxc * 4);
    gpu->upload(gpu, dyc, hdyc, (size_t)nxc * 4);
    /* out: y | dx | yc | dxc for the block [0..4) and the reference [4..8) */
    float *o[8];
    for (int k = 0; k < 8; k++) o[k] = out + (int64_t)k * nxc;
    const float *W[2] = {blk, ref};
    size_t r_before = 0, r_after = 0;
    for (int pass = 1; pass >= 0; pass--) {
        const float *w = W[pass];
        float **q = o + 4 * pass;
        gpu->zero(gpu, q[1], (size_t)nx * 4);
        gpu->zero(gpu, q[3], (size_t)nxc * 4);
        if (pass == 0) {
            gpu->sync(gpu);
            r_before = gpu->reserved_bytes(gpu);
            gpu->set_frozen(gpu, blk, n, nw);
        }
        gpu->linear_fwd(gpu, x, w, w + nw, q[0], M, IN, OUT);
        if (pass == 0) r_after = gpu->reserved_bytes(gpu); /* its temporaries are the same sizes as the reference pass's: reused */
        gpu->linear_bwd(gpu, dy, x, w, q[1], NULL, NULL, M, IN, OUT);
        gpu->conv2d_fwd(gpu, xc, w + nl, w + nw, q[2], 1, C, HW, HW, C, 3, 1, 1);
        gpu->conv2d_bwd(gpu, dyc, xc, w + nl, q[3], NULL, NULL, 1, C, HW, HW, C, 3, 1, 1);
    }
    gpu->sync(gpu);
    int64_t sizes[4] = {ny, nx, nxc, nxc};
    static const char *names[4] = {"linear fwd", "linear bwd dx", "conv2d fwd", "conv2d bwd dx"};
    char what[128];
    for (int k = 0; k < 4; k++) {
        float *a = xmalloc((size_t)sizes[k] * 4), *b = xmalloc((size_t)sizes[k] * 4);
        gpu->download(gpu, a, o[k], (size_t)sizes[k] * 4);
        gpu->download(gpu, b, o[4 + k], (size_t)sizes[k] * 4);
        double r = max_rel(a, b, sizes[k]);
        snprintf(what, sizeof what, "%s as unpromised (rel %.1e <= 1e-5)", names[k], r);
        fails += check(what, r <= 1e-5);
        free(a); free(b);
    }
    /* the weights' f32 (nw floats) went back but for chunks at the edges, and
     * their bf16 copy (n halves) came in: at least a third of nw * 4 saved */
    double saved = (double)r_before - (double)r_after;
    snprintf(what, sizeof what, "memory: %.1f MiB of %.1f MiB of f32 weights given back net (>= 1/3)",
             saved / 1048576.0, nw * 4 / 1048576.0);
    fails += check(what, saved >= nw * 4 / 3.0);

    /* copies of the weights come back as bf16 values; of the biases exactly */
    for (int64_t i = 0; i < n; i++) want[i] = i < nw ? bf16_round(h[i]) : h[i];
    gpu->copy(gpu, out, blk + 1000, 64 * 4);
    gpu->download(gpu, got, out, 64 * 4);
    fails += check("copy out of the linear weight: bf16 values", memcmp(got, want + 1000, 64 * 4) == 0);
    gpu->download(gpu, got, blk + nl, (size_t)nc * 4);
    fails += check("download of the conv weight: bf16 values", memcmp(got, want + nl, (size_t)nc * 4) == 0);
    gpu->download(gpu, got, blk + nw, (size_t)OUT * 4);
    fails += check("download of the biases: exact", memcmp(got, h + nw, (size_t)OUT * 4) == 0);

    /* FP32: the f32 weights come back (rounded as used); a linear then agrees
     * with the CPU's fp32 linear on the rounded weights */
    gpu->set_precision(gpu, KRONA_PREC_FP32);
    gpu->download(gpu, got, blk, (size_t)n * 4);
    fails += check("precision fp32: whole block = bf16 weights, exact biases", memcmp(got, want, (size_t)n * 4) == 0);
    gpu->linear_fwd(gpu, x, blk, blk + nw, o[0], M, IN, OUT);
    gpu->download(gpu, got, o[0], (size_t)ny * 4);
    {
        float *cw = cpu->alloc(cpu, (size_t)nl * 4), *cb = cpu->alloc(cpu, (size_t)OUT * 4);
        float *cx = cpu->alloc(cpu, (size_t)nx * 4), *cy = cpu->alloc(cpu, (size_t)ny * 4);
        cpu->set_precision(cpu, KRONA_PREC_FP32);
        cpu->upload(cpu, cw, want, (size_t)nl * 4);
        cpu->upload(cpu, cb, want + nw, (size_t)OUT * 4);
        cpu->upload(cpu, cx, hx, (size_t)nx * 4);
        cpu->linear_fwd(cpu, cx, cw, cb, cy, M, IN, OUT);
        float *cyh = xmalloc((size_t)ny * 4);
        cpu->download(cpu, cyh, cy, (size_t)ny * 4);
        double r = max_rel(got, cyh, ny);
        snprintf(what, sizeof what, "fp32 linear on them = CPU's (rel %.1e <= 1e-5)", r);
        fails += check(what, r <= 1e-5);
        free(cyh);
        cpu->free(cpu, cw); cpu->free(cpu, cb); cpu->free(cpu, cx); cpu->free(cpu, cy);
    }

    /* BF16 again, a new promise: compact again; then a write into the linear
     * weight ends it: the written values exact, the rest as they were */
    gpu->set_precision(gpu, KRONA_PREC_BF16);
    gpu->set_frozen(gpu, blk, n, nw);
    gpu->linear_fwd(gpu, x, blk, blk + nw, o[0], M, IN, OUT);
    gpu->download(gpu, got, o[0], (size_t)ny * 4);
    gpu->download(gpu, want + n - ny, o[4], (size_t)ny * 4); /* scratch: the first pass's reference y */
    {
        double r = max_rel(got, want + n - ny, ny);
        snprintf(what, sizeof what, "compact again: linear fwd as unpromised (rel %.1e <= 1e-5)", r);
        fails += check(what, r <= 1e-5);
    }
    for (int64_t i = 0; i < n; i++) want[i] = i < nw ? bf16_round(h[i]) : h[i];
    for (int64_t i = 0; i < 4096; i++) want[5000 + i] = h[5000 + i] = 0.25f + (float)i;
    gpu->upload(gpu, blk + 5000, h + 5000, 4096 * 4);
    gpu->download(gpu, got, blk, (size_t)n * 4);
    fails += check("a write ends the promise: written exact, the rest as before", memcmp(got, want, (size_t)n * 4) == 0);

    /* a generic gemm reading the weights brings them back too */
    gpu->set_frozen(gpu, blk, n, n - 1);
    gpu->linear_fwd(gpu, x, blk, NULL, o[0], M, IN, OUT); /* compacts */
    gpu->gemm(gpu, 0, 1, M, OUT, IN, 1.f, x, IN, blk, IN, 0.f, o[1], OUT);
    gpu->linear_fwd(gpu, x, blk, NULL, o[2], M, IN, OUT);
    gpu->sync(gpu);
    {
        float *a = xmalloc((size_t)ny * 4);
        gpu->download(gpu, got, o[0], (size_t)ny * 4);
        gpu->download(gpu, a, o[2], (size_t)ny * 4);
        fails += check("gemm on promised weights, then linear again: same y", memcmp(got, a, (size_t)ny * 4) == 0);
        free(a);
    }
    /* free while compact */
    gpu->set_frozen(gpu, blk, n, nw);
    gpu->set_frozen(gpu, blk, n, nw);
    gpu->conv2d_fwd(gpu, xc, blk + nl, NULL, o[2], 1, C, HW, HW, C, 3, 1, 1);
    gpu->free(gpu, blk);
    gpu->sync(gpu);
    const char *e = gpu->last_error(gpu);
    fails += check("free of a compact block; no backend error", !e[0]);
    if (e[0]) { printf("  %s\n", e); gpu->clear_error(gpu); }
    gpu->free(gpu, ref); gpu->free(gpu, x); gpu->free(gpu, dy); gpu->free(gpu, xc); gpu->free(gpu, dyc);
    gpu->free(gpu, out);
    free(h); free(hx); free(hdy); free(hxc); free(hdyc); free(got); free(want);
    return fails;
}

/* record_begin ... record_end, replay (CUDA graphs): a sequence of ops like a
 * UNet pass's (cuBLAS GEMMs, our kernels, the backend's own scratch, a zero,
 * a copy, a buffer the caller allocates and frees inside) recorded, not run;
 * replays give what running the ops gives, on the inputs of the moment;
 * memory the recording uses as scratch goes to no later alloc; what cannot be
 * recorded (a download, new device memory) fails the recording with a reason
 * and leaves last_error alone; freeing a buffer it uses makes replay decline. */
typedef struct {
    Backend *be;
    float *x, *W, *b, *y1, *y2, *mean, *rstd, *A, *B, *yk, *o, *lse;
    int64_t tmp_bytes;
    int download; /* plant a download inside (must fail the recording) */
} RecOps;
enum { R_M = 8, R_IN = 64, R_OUT = 96, R_A1 = 4, R_A2 = 8, R_B1 = 16, R_B2 = 12 };
static void rec_ops(RecOps *r) {
    Backend *be = r->be;
    be->linear_fwd(be, r->x, r->W, r->b, r->y1, R_M, R_IN, R_OUT);
    be->group_norm_fwd(be, r->y1, NULL, NULL, r->y2, r->mean, r->rstd, 2, 48, 8, 8, 1e-5f);
    be->silu_fwd(be, r->y2, r->y2, (int64_t)R_M * R_OUT);
    be->zero(be, r->yk, sizeof(float) * R_M * R_A1 * R_B1);
    be->kron_fwd(be, r->y2, r->A, r->B, r->yk, R_M, R_A1, R_A2, R_B1, R_B2, 0.5f);
    be->attention_fwd(be, r->y2, r->y2, r->y2, r->o, r->lse, 1, R_M, R_M, 2, 48, 0.125f, 0);
    float *tmp = be->alloc(be, (size_t)r->tmp_bytes); /* the caller's own scratch */
    if (tmp) {
        be->copy(be, tmp, r->y1, sizeof(float) * R_M * R_OUT);
        be->axpy(be, 2.f, tmp, r->o, (int64_t)R_M * R_OUT);
        be->free(be, tmp);
    }
    if (r->download) {
        float h[4];
        be->download(be, h, r->o, sizeof h);
    }
}
/* every output of rec_ops, one after another */
static void rec_outputs(RecOps *r, float *h) {
    Backend *be = r->be;
    int64_t n1 = R_M * R_OUT, nk = R_M * R_A1 * R_B1;
    be->download(be, h, r->y1, sizeof(float) * (size_t)n1);
    be->download(be, h + n1, r->y2, sizeof(float) * (size_t)n1);
    be->download(be, h + 2 * n1, r->yk, sizeof(float) * (size_t)nk);
    be->download(be, h + 2 * n1 + nk, r->o, sizeof(float) * (size_t)n1);
}
/* every buffer rec_ops writes (all but its inputs x, W, b and the factors A, B) */
static void zero_outputs(Backend *be, float **const bufs[12], const int64_t sizes[12]) {
    for (int i = 3; i < 12; i++)
        if (i != 7 && i != 8) be->zero(be, *bufs[i], sizeof(float) * (size_t)sizes[i]);
}
static int test_record_in(Backend *be) {
    const int64_t n1 = R_M * R_OUT, nk = R_M * R_A1 * R_B1, nout = 3 * n1 + nk;
    RecOps r;
    memset(&r, 0, sizeof r);
    r.be = be;
    r.tmp_bytes = sizeof(float) * 5000 + 4; /* a size nothing else asks for */
    float **bufs[] = {&r.x, &r.W, &r.b, &r.y1, &r.y2, &r.mean, &r.rstd, &r.A, &r.B, &r.yk, &r.o, &r.lse};
    int64_t sizes[] = {R_M * R_IN, R_OUT * R_IN, R_OUT, n1, n1, 16, 16, R_A1 * R_A2, R_B1 * R_B2, nk, n1, 2 * R_M};
    float *h = xmalloc(sizeof(float) * R_OUT * R_IN);
    for (int i = 0; i < 12; i++) {
        *bufs[i] = be->alloc(be, sizeof(float) * (size_t)sizes[i]);
        for (int64_t j = 0; j < sizes[i]; j++) h[j] = frand(-1.f, 1.f);
        be->upload(be, *bufs[i], h, sizeof(float) * (size_t)sizes[i]);
    }
    float *e1 = xmalloc(sizeof(float) * (size_t)nout), *e2 = xmalloc(sizeof(float) * (size_t)nout);
    float *got = xmalloc(sizeof(float) * (size_t)nout), *zero = xmalloc(sizeof(float) * (size_t)nout);
    memset(zero, 0, sizeof(float) * (size_t)nout);
    int fails = 0;
    rec_ops(&r); /* the usual way first: the caches then hold what the ops need */
    rec_outputs(&r, e1);
    zero_outputs(be, bufs, sizes);

    char why[256] = "";
    int began = be->record_begin(be) == 0;
    fails += check("record_begin", began);
    if (!began) goto out;
    rec_ops(&r);
    void *rec = be->record_end(be, why, sizeof why);
    if (!rec) printf("%s: record_end: %s\n", check_block, why);
    fails += check("record_end gives a recording", rec != NULL);
    if (!rec) goto out;
    rec_outputs(&r, got);
    fails += check("nothing ran while recording", max_rel(got, zero, nout) == 0);
    fails += check("replay = the ops run one by one", be->replay(be, rec) == 0 &&
                   (rec_outputs(&r, got), max_rel(got, e1, nout) <= 1e-6));
    /* new inputs: the replay reads them (pointers recorded, not values) */
    for (int64_t j = 0; j < R_M * R_IN; j++) h[j] = frand(-2.f, 2.f);
    be->upload(be, r.x, h, sizeof(float) * R_M * R_IN);
    rec_ops(&r);
    rec_outputs(&r, e2);
    zero_outputs(be, bufs, sizes);
    be->replay(be, rec);
    be->replay(be, rec); /* twice: the same again */
    rec_outputs(&r, got);
    fails += check("replay on new inputs = the ops on them", max_rel(got, e2, nout) <= 1e-6 && max_rel(e1, e2, nout) > 1e-3);
    /* the caller's scratch inside the recording is the recording's: a later
     * alloc of its size must not get it (a replay would write into it) */
    float *later = be->alloc(be, (size_t)r.tmp_bytes);
    for (int64_t j = 0; j < n1; j++) h[j] = (float)j;
    be->upload(be, later, h, sizeof(float) * (size_t)n1);
    be->replay(be, rec);
    be->download(be, got, later, sizeof(float) * (size_t)n1);
    fails += check("scratch of a recording goes to no later alloc", max_rel(got, h, n1) == 0);
    be->free(be, later);
    /* what cannot be recorded */
    r.download = 1;
    int ok = be->record_begin(be) == 0;
    rec_ops(&r);
    void *bad = be->record_end(be, why, sizeof why);
    r.download = 0;
    printf("%s: with a download inside: %s\n", check_block, bad ? "(recorded)" : why);
    fails += check("a download fails the recording, says so", ok && !bad && strstr(why, "download"));
    ok = be->record_begin(be) == 0;
    float *fresh = be->alloc(be, (size_t)77777777);
    bad = be->record_end(be, why, sizeof why);
    printf("%s: with new memory inside: %s\n", check_block, bad ? "(recorded)" : why);
    fails += check("new device memory fails the recording, says so", ok && !fresh && !bad && strstr(why, "memory") && strstr(why, "while recording"));
    if (bad) be->record_free(be, bad);
    fails += check("last_error untouched by failed recordings", be->last_error(be)[0] == 0);
    /* freeing what it uses: replay declines */
    be->free(be, r.b);
    r.b = NULL;
    fails += check("a buffer it uses freed: replay declines", be->replay(be, rec) == -1);
    be->record_free(be, rec);
    /* a later recording that keeps a block it allocated (which may be the
     * earlier one's scratch): the earlier one declines */
    rec = be->record_begin(be) == 0 ? (rec_ops(&r), be->record_end(be, why, sizeof why)) : NULL;
    ok = rec && be->replay(be, rec) == 0;
    int began2 = be->record_begin(be) == 0;
    float *kept = be->alloc(be, (size_t)r.tmp_bytes);
    void *rec2 = be->record_end(be, why, sizeof why);
    fails += check("a later recording keeps a block: the earlier declines", ok && began2 && kept && rec2 &&
                   be->replay(be, rec) == -1 && be->replay(be, rec2) == 0);
    be->record_free(be, rec2);
    be->record_free(be, rec);
    be->free(be, kept);
    fails += check("no device error", be->last_error(be)[0] == 0);
out:
    if (be->last_error(be)[0]) printf("%s: device error: %s\n", check_block, be->last_error(be));
    for (int i = 0; i < 12; i++) be->free(be, *bufs[i]);
    free(h); free(e1); free(e2); free(got); free(zero);
    return fails;
}
/* in tf32 (cuBLAS GEMMs on f32) and in bf16 (operands cast into the backend's scratch) */
static int test_record(Backend *be) {
    if (!be->record_begin) {
        printf("recordings: skipped (the %s backend has none)\n", be->name);
        return 0;
    }
    int fails = 0;
    check_block = "recordings, tf32";
    if (be->set_precision(be, KRONA_PREC_TF32) == 0) fails += test_record_in(be);
    check_block = "recordings, bf16";
    if (be->set_precision(be, KRONA_PREC_BF16) == 0) fails += test_record_in(be);
    check_block = "compact weights";
    be->set_precision(be, KRONA_PREC_AUTO);
    return fails;
}

/* ------------------------------------------------------------ profile */

static const BackendProfileRow *prof_row(const BackendProfileRow *r, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(r[i].name, name)) return &r[i];
    return NULL;
}
/* profile (backend.h): every op and the named stages inside, timed on the
 * device; nothing inside a recording (a replay is one row); the same results */
static int test_profile(Backend *be) {
    if (!be->profile) {
        printf("profile: skipped (the %s backend has none)\n", be->name);
        return 0;
    }
    check_block = "profile";
    int fails = 0;
    enum { PN = 2, PC = 8, PH = 12, PW = 12, PM = 40, PIN = 24, POUT = 16 };
    int64_t nx = (int64_t)PN * PC * PH * PW, nw = (int64_t)PC * PC * 9;
    float *hx = xmalloc(sizeof(float) * (size_t)nx), *hw = xmalloc(sizeof(float) * (size_t)nw);
    float *y1 = xmalloc(sizeof(float) * (size_t)nx), *y2 = xmalloc(sizeof(float) * (size_t)nx);
    for (int64_t i = 0; i < nx; i++) hx[i] = frand(-1.f, 1.f);
    for (int64_t i = 0; i < nw; i++) hw[i] = frand(-1.f, 1.f);
    float *x = be->alloc(be, sizeof(float) * (size_t)nx), *w = be->alloc(be, sizeof(float) * (size_t)nw);
    float *y = be->alloc(be, sizeof(float) * (size_t)nx), *ly = be->alloc(be, sizeof(float) * PM * POUT);
    be->upload(be, x, hx, sizeof(float) * (size_t)nx);
    be->upload(be, w, hw, sizeof(float) * (size_t)nw);
    fails += check("precision: auto is tf32 (fp32 with KRONA_CUDA_TF32=0)", be->set_precision(be, KRONA_PREC_AUTO) == 0 &&
                   be->precision(be) == (getenv("KRONA_CUDA_TF32") && getenv("KRONA_CUDA_TF32")[0] == '0'
                                             ? KRONA_PREC_FP32 : KRONA_PREC_TF32));
    be->set_precision(be, KRONA_PREC_BF16);
    fails += check("precision: bf16", be->precision(be) == KRONA_PREC_BF16);
    be->conv2d_fwd(be, x, w, NULL, y, PN, PC, PH, PW, PC, 3, 1, 1); /* not profiled: the reference */
    be->download(be, y1, y, sizeof(float) * (size_t)nx);
    be->linear_fwd(be, x, w, NULL, ly, PM, PIN, POUT); /* warm: the recording below needs its scratch */

    fails += check("profile on", be->profile(be, 1) == 0);
    be->conv2d_fwd(be, x, w, NULL, y, PN, PC, PH, PW, PC, 3, 1, 1);
    be->conv2d_fwd(be, x, w, NULL, y, PN, PC, PH, PW, PC, 3, 1, 1);
    be->linear_fwd(be, x, w, NULL, ly, PM, PIN, POUT);
    char why[256] = "";
    void *rec = NULL;
    if (be->record_begin && be->record_begin(be) == 0) { /* recorded: not timed, not counted */
        be->linear_fwd(be, x, w, NULL, ly, PM, PIN, POUT);
        rec = be->record_end(be, why, sizeof why);
        if (!rec) printf("profile: record_end: %s\n", why);
        fails += check("recording while profiling", rec != NULL);
        if (rec) be->replay(be, rec);
    }
    BackendProfileRow r[64];
    int n = be->profile_rows(be, r, 64);
    for (int i = 0; i < n && i < 64; i++)
        printf("profile: %-28s depth %d calls %3lld %9.3f ms\n", r[i].name, r[i].depth, (long long)r[i].calls, r[i].ms);
    /* im2col then its GEMM; or cuDNN's convolution after casts of x and w */
    const BackendProfileRow *conv = prof_row(r, n, "conv2d_fwd");
    const BackendProfileRow *im = prof_row(r, n, conv_dnn ? "conv2d_fwd/cudnn" : "conv2d_fwd/im2col");
    const BackendProfileRow *cg = prof_row(r, n, conv_dnn ? "conv2d_fwd/cast" : "conv2d_fwd/gemm");
    const BackendProfileRow *lin = prof_row(r, n, "linear_fwd");
    const BackendProfileRow *lc = prof_row(r, n, "linear_fwd/cast"), *rp = prof_row(r, n, "replay");
    fails += check("each op a row, its calls counted", conv && conv->depth == 0 && conv->calls == 2 &&
                   lin && lin->calls == 1);
    /* (im2col and its GEMM once per group of images: the emulator's small workspace makes more) */
    fails += check("stages inside an op", im && im->depth == 1 && im->calls >= 2 && cg &&
                   cg->calls == (conv_dnn ? 2 : 1) * im->calls && lc && lc->depth == 1);
    fails += check("times: some, and a stage's within its op's", conv && im && cg && conv->ms > 0 &&
                   im->ms >= 0 && cg->ms >= 0 && im->ms + cg->ms <= conv->ms * 1.001 + 1e-3);
    fails += check("a replay is one row, its ops not counted", !rec || (rp && rp->calls == 1 && lin && lin->calls == 1));
    be->download(be, y2, y, sizeof(float) * (size_t)nx);
    fails += check("the same results while profiling", memcmp(y1, y2, sizeof(float) * (size_t)nx) == 0);
    fails += check("profile off", be->profile(be, 0) == 0);
    int n1 = be->profile_rows(be, r, 64); /* the download above is a row too */
    be->conv2d_fwd(be, x, w, NULL, y, PN, PC, PH, PW, PC, 3, 1, 1);
    int n2 = be->profile_rows(be, r, 64);
    conv = prof_row(r, n2, "conv2d_fwd");
    fails += check("off: nothing more counted", n2 == n1 && n1 > n && conv && conv->calls == 2);
    be->profile(be, 1);
    fails += check("on again: an empty table", be->profile_rows(be, r, 64) == 0);
    be->profile(be, 0);
    if (rec) be->record_free(be, rec);
    fails += check("no device error", be->last_error(be)[0] == 0);
    be->set_precision(be, KRONA_PREC_AUTO);
    be->free(be, x); be->free(be, w); be->free(be, y); be->free(be, ly);
    free(hx); free(hw); free(y1); free(y2);
    check_block = "compact weights";
    return fails;
}

int main(int argc, char **argv) {
    int small = 0;
    const char *only = NULL;
    int shard = 0, shards = 1;
    unsigned prec_mask = 1u << KRONA_PREC_FP32 | 1u << KRONA_PREC_TF32 | 1u << KRONA_PREC_BF16; /* --prec */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--small")) small = 1;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--shard") && i + 1 < argc &&
                 sscanf(argv[++i], "%d/%d", &shard, &shards) == 2 && shards >= 1 && shard >= 0 && shard < shards) {}
        else if (!strcmp(argv[i], "--prec") && i + 1 < argc) {
            /* each entry a precision (core/backend.h's names; not auto), once */
            const char *list = argv[++i];
            prec_mask = 0;
            for (const char *q = list;; q++) {
                size_t l = strcspn(q, ",");
                char name[8];
                int p = -2; /* too long: not a name */
                if (l < sizeof name) {
                    snprintf(name, sizeof name, "%.*s", (int)l, q);
                    p = backend_precision_parse(name); /* "" is auto: refused too */
                }
                if (p < 0 || prec_mask & 1u << p) {
                    fprintf(stderr, "test_cuda_ops: --prec %s: a list of fp32, tf32 and bf16\n", list);
                    return 2;
                }
                prec_mask |= 1u << p;
                q += l;
                if (!*q) break;
            }
        }
        else { fprintf(stderr, "usage: %s [--small] [--only SUBSTRING] [--shard K/N] [--prec fp32,tf32,bf16]\n", argv[0]); return 2; }
    }
    char err[256] = "";
    /* address-stable blocks (BF16 mode) from 1 MiB, not 64: test_compact's block
     * and the larger bf16 cases take that path */
    setenv("KRONA_CUDA_VMM_MIN_MB", "1", 0);
    /* through the registry, as the program opens it: the plugin
     * krona-backend-cuda.so (the real one, or the emulator's with
     * KRONA_BACKEND_PATH=build/cuda/emu) */
    Backend *gpu = backend_open("cuda", err, sizeof err);
    if (!gpu) { fprintf(stderr, "test_cuda_ops: %s\n", err); return 2; }
    Backend *cpu = backend_open("cpu", err, sizeof err);
    if (!cpu) { fprintf(stderr, "test_cuda_ops: %s\n", err); return 2; }
    printf("device: %s\n", gpu->device_name(gpu));
    int fails = 0, rows = 0;
    /* KRONA_CUDA_CONV=cudnn: the plugin must say it opened cuDNN (else the
     * comparisons would check im2col again) */
    const char *conv_env = getenv("KRONA_CUDA_CONV");
    conv_dnn = strstr(gpu->device_name(gpu), "(convolutions: cuDNN") != NULL;
    if (conv_env && !strcmp(conv_env, "cudnn") && shard == 0) {
        printf("convolutions by cuDNN, as KRONA_CUDA_CONV asks: %s\n", conv_dnn ? "ok" : "FAIL");
        fails += !conv_dnn;
        rows++;
    }

    /* allocator: zero-filled even when a dirty block is reused; frees are cached */
    if (shard == 0) {
        size_t nb = 3 << 20;
        float *h = xmalloc(nb);
        for (size_t i = 0; i < nb / 4; i++) h[i] = 1.f;
        void *a = gpu->alloc(gpu, nb);
        gpu->upload(gpu, a, h, nb);
        gpu->free(gpu, a);
        void *b = gpu->alloc(gpu, nb);
        gpu->download(gpu, h, b, nb);
        int nz = 0;
        for (size_t i = 0; i < nb / 4; i++) nz += h[i] != 0.f;
        int ok = b != NULL && nz == 0 && gpu->peak_bytes(gpu) >= nb;
        printf("allocator: reuse %s, zero-fill %s, peak %zu bytes, reserved %zu bytes: %s\n",
               a == b ? "cached" : "fresh", nz ? "FAILED" : "ok", gpu->peak_bytes(gpu),
               gpu->reserved_bytes(gpu), ok ? "PASS" : "FAIL");
        fails += !ok;
        gpu->free(gpu, b);
        free(h);
    }

    if (shard == 0) {
        fails += test_compact(gpu, cpu);
        fails += test_record(gpu);
        fails += test_profile(gpu);
        rows += 3;
    }

    build_cases();
    printf("%-58s %-7s %-4s %11s %11s %9s %8s %9s %s\n", "op", "buffer", "math", "max|err|",
           "scale", "rel", "tol", "gpu ms", "");
    for (int ci = 0; ci < ncases; ci++) {
        Case *c = &cases[ci];
        if (small && c->big) continue;
        if (only && !strstr(c->name, only)) continue;
        if (ci % shards != shard) continue;
        rng_s = 0x9E3779B97F4A7C15ULL ^ (uint64_t)(ci + 1) * 0x2545F4914F6CDD1DULL;
        float *host[MAXA] = {0}, *ref[MAXA] = {0}, *got[MAXA] = {0};
        for (int j = 0; j < c->na; j++) {
            Arg *a = &c->a[j];
            if (a->kind == NUL) continue;
            host[j] = xmalloc((size_t)a->n * 4);
            if (a->kind == IDS)
                for (int64_t e = 0; e < a->n; e++) ((int32_t *)host[j])[e] = (int32_t)(rnd() % (uint32_t)a->hi);
            else
                for (int64_t e = 0; e < a->n; e++) host[j][e] = frand(a->lo, a->hi);
            if (a->kind == OUT || a->kind == ACC) {
                ref[j] = xmalloc((size_t)a->n * 4);
                got[j] = xmalloc((size_t)a->n * 4);
            }
        }
        double ms_cpu = 0, ms_gpu = 0;
        static const int modes[3] = {KRONA_PREC_FP32, KRONA_PREC_TF32, KRONA_PREC_BF16};
        int ref_prec = -1;
        for (int mi = 0; mi < 3; mi++) {
            int mode = modes[mi];
            if (!(prec_mask & 1u << mode)) continue;
            /* the CPU reference: fp32 for fp32 and tf32, bf16 for bf16 (which
             * changes only linear and conv2d there: the others keep fp32's) */
            int want = mode == KRONA_PREC_BF16 && c->ref_bf16 ? KRONA_PREC_BF16 : KRONA_PREC_FP32;
            if (ref_prec != want) {
                cpu->set_precision(cpu, want);
                if (run_on(cpu, c, host, ref, &ms_cpu)) { fails++; break; }
                ref_prec = want;
            }
            if (gpu->set_precision(gpu, mode) != 0) {
                printf("%-58s set_precision(%s) refused\n", c->name, backend_precision_name(mode));
                fails++;
                continue;
            }
            if (run_on(gpu, c, host, got, &ms_gpu)) { fails++; break; }
            const char *e = gpu->last_error(gpu);
            if (e[0]) {
                printf("%-58s CUDA ERROR: %s\n", c->name, e);
                gpu->clear_error(gpu);
                fails++;
                continue;
            }
            double tol = mode == KRONA_PREC_TF32 ? c->tol_tf32 : mode == KRONA_PREC_BF16 ? c->tol_bf16 : c->tol;
            for (int j = 0; j < c->na; j++) {
                Arg *a = &c->a[j];
                if (a->kind != OUT && a->kind != ACC) continue;
                double maxerr = 0, scale = 0;
                int64_t nan_at = -1;
                for (int64_t e = 0; e < a->n; e++) {
                    double r = ref[j][e], g = got[j][e];
                    double d = fabs(g - r);
                    if (!isfinite(g) || !isfinite(r)) { /* equal infinities are fine */
                        if (!(g == r) && nan_at < 0) nan_at = e;
                        continue;
                    }
                    /* an accumulated output is a float sum that each side rounds: the
                     * two may differ by an ulp of the sum, however small the part added
                     * (mse's gradient of 1e-6 added to values near 1 rounds at 6e-8) */
                    if (a->kind == ACC) d = fmax(0.0, d - FLT_EPSILON * fabs(r));
                    if (d > maxerr) maxerr = d;
                    double s = a->kind == ACC ? fabs(r - host[j][e]) : fabs(r);
                    if (s > scale) scale = s;
                }
                double rel = maxerr / (scale > 1e-6 ? scale : 1e-6);
                int ok = nan_at < 0 && rel <= tol;
                if (!ok) fails++;
                rows++;
                printf("%-58s %-7s %-4s %11.3e %11.3e %9.2e %8.1e %9.3f %s", c->name, a->name,
                       backend_precision_name(mode), maxerr, scale, rel, tol, ms_gpu, ok ? "ok" : "FAIL");
                if (nan_at >= 0) printf(" (non-finite mismatch at %lld: gpu %g cpu %g)", (long long)nan_at, got[j][nan_at], ref[j][nan_at]);
                printf("\n");
            }
        }
        fflush(stdout);
        for (int j = 0; j < c->na; j++) { free(host[j]); free(ref[j]); free(got[j]); }
    }
    const char *e = gpu->last_error(gpu);
    if (e[0]) { printf("pending CUDA error: %s\n", e); fails++; }
    if (conv_dnn) printf("convolutions after the cases: %s\n", gpu->device_name(gpu)); /* shapes cuDNN refused */
    printf("gpu peak %.1f MiB, reserved %.1f MiB\n", gpu->peak_bytes(gpu) / 1048576.0,
           gpu->reserved_bytes(gpu) / 1048576.0);
    printf("%s: %d comparisons, %d failures\n", fails ? "FAIL" : "PASS", rows, fails);
    backend_destroy(gpu);
    backend_destroy(cpu);
    return fails ? 1 : 0;
}

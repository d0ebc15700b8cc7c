/* backend.h — the op table the model calls, and the registry that opens one.
 * One implementation per device: backend_cpu.c (our thread pool + BLAS), built
 * into the engine, and gpu/backend_cuda.cu, a plugin (krona-backend-cuda.so
 * beside the binary) loaded at run time by backend.c. The engine only ever asks
 * the registry by name (backend_open); it never names a backend's functions.
 * The model never touches device memory directly; it only passes pointers
 * obtained from be->alloc.
 *
 * Conventions (every implementation must follow them; tests check the CPU one):
 *  - f32 everywhere, row-major, images NCHW, token sequences [N, L, C].
 *  - Forward ops OVERWRITE their outputs.
 *  - Backward ops ACCUMULATE (+=) into every gradient they are given
 *    (dx, dw, db ...). Any gradient pointer may be NULL: that gradient is
 *    skipped. The caller zeroes gradient buffers. This makes residuals,
 *    skip connections and shared inputs trivial.
 *  - Sizes are int64_t where they can exceed 2^31 elements (SDXL activations).
 */
#ifndef KRONA_BACKEND_H
#define KRONA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef struct Backend Backend;

/* one row of a backend's profile (profile_rows, below) */
typedef struct BackendProfileRow {
    char name[64]; /* "conv2d_bwd", or a stage inside it: "conv2d_bwd/col2im" */
    int depth;     /* 0 an op, 1 a stage inside one, ... */
    int64_t calls;
    double ms;     /* device time, all calls */
} BackendProfileRow;

/* GEMM arithmetic (set_precision; the preset's `precision`). Storage is f32 in
 * every mode; what changes is how the products of the big GEMMs (linear and
 * conv2d, forward and backward) are formed:
 *   FP32  f32 operands, f32 sums.
 *   TF32  tensor cores round every GEMM's operands to 10-bit mantissas (CUDA).
 *   BF16  linear and conv2d round both operands to bf16 (8-bit mantissa, to
 *         nearest even, core/half.h) and sum the exact products in f32, as
 *         bf16 tensor cores do. CUDA's attention is then a fused kernel with
 *         bf16 products (Q, K, V, dO, P, dS rounded; softmax and sums f32) for
 *         heads up to 160 wide; its other GEMMs (adapters) are TF32. The CPU
 *         rounds linear and conv2d only: the reference the CUDA backend is
 *         tested against (slower than FP32). Adapter factors, gradients and
 *         optimizer state are never rounded.
 *   AUTO  the backend's own default: CPU FP32, CUDA TF32. */
enum { KRONA_PREC_AUTO = -1, KRONA_PREC_FP32 = 0, KRONA_PREC_TF32 = 1, KRONA_PREC_BF16 = 2 };

struct Backend {
    const char *name; /* "cpu", "cuda" */
    void *impl;       /* backend private state */

    /* ---- lifecycle and errors ----
     * Ops cannot return errors through this table, so a backend records the
     * first failure (out of device memory, a failed launch) and keeps running;
     * callers check last_error after sync at the end of a step. */
    void (*destroy)(Backend *be);            /* waits for queued work, frees all, and be */
    const char *(*last_error)(Backend *be);  /* "" when nothing failed since create/clear */
    void (*clear_error)(Backend *be);
    const char *(*device_name)(Backend *be); /* e.g. "NVIDIA H100 80GB HBM3", "cpu (16 threads)" */
    /* the arithmetic of GEMMs (KRONA_PREC_*, below): 0 ok, -1 when the
     * backend has no such mode (the mode stays as it was) */
    int (*set_precision)(Backend *be, int prec);
    int (*precision)(Backend *be);           /* the mode in force: FP32, TF32 or BF16 (never AUTO) */
    size_t (*reserved_bytes)(Backend *be);   /* memory held from the device (live + cached; CPU: + its scratch) */
    /* memory the device could still give now, counting our own cached blocks
     * (CPU: the kernel's MemAvailable); 0 when unknown. For plans, not promises. */
    size_t (*free_bytes)(Backend *be);

    /* ---- memory ---- */
    void *(*alloc)(Backend *be, size_t bytes); /* zero-filled; NULL on OOM */
    void (*free)(Backend *be, void *p);
    void (*upload)(Backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(Backend *be, void *host_dst, const void *src, size_t bytes);
    void (*copy)(Backend *be, void *dst, const void *src, size_t bytes);
    void (*zero)(Backend *be, void *p, size_t bytes);
    void (*sync)(Backend *be);
    /* peak of live allocations since creation; the CPU backend counts its own
     * scratch (im2col columns, attention tiles, partial sums) as live too */
    size_t (*peak_bytes)(Backend *be);
    /* A promise about weights: p[0..n) (p from alloc) will not be written until
     * set_frozen(be, p, 0, 0) or free(p). The backend may then keep a compact copy
     * for its BF16 GEMMs (CUDA: bf16, made on first use, when it fits in a
     * quarter of the free memory). upload, copy, zero and kron_merge into the
     * range end the promise themselves; writes by other ops must not happen.
     * Saying it again for the same p, n and n_w keeps the copy (cheap per forward).
     * A further promise about the first n_w floats (p the start of its alloc):
     * they are read only as the weight of linear and conv2d, or by copy,
     * download and gemm. A backend in BF16 mode may then keep them in bf16 only
     * (CUDA: half their memory; the f32 pages are given back, their addresses
     * kept) and copy/download return them rounded to bf16; set_precision to
     * another mode, or a write, brings f32 back, rounded as it was used. */
    void (*set_frozen)(Backend *be, const float *p, int64_t n, int64_t n_w);

    /* ---- recorded sequences (optional: NULL where the backend has none) ----
     * What lets a training step cost one launch instead of a thousand (CUDA
     * graphs). record_begin: the ops that follow are recorded, not run, until
     * record_end, which returns the recording, or NULL with a one-line reason
     * in why (nothing ran then: run the ops again; last_error is untouched).
     * Between the two only ops on device memory that the backend already has
     * room for: no upload, download, sync, mse_fwd, set_precision, alloc that
     * needs new device memory (record after one step run the usual way, so the
     * backend's caches hold what the ops need). Ops must not take their inputs
     * from host memory that changes between replays: they would replay the
     * values of the recording (host scalars like alpha are taken as recorded).
     * replay runs the recorded ops again, on the same pointers, queued like
     * any op; it returns -1 and runs nothing when memory the recording used
     * has been freed since (record again). A backend's memory used inside a
     * recording stays reserved for it until record_free. */
    int (*record_begin)(Backend *be);
    void *(*record_end)(Backend *be, char *why, size_t whylen);
    int (*replay)(Backend *be, void *rec);
    void (*record_free)(Backend *be, void *rec);

    /* ---- profile (optional: NULL where the backend has none) ----
     * Where a step's time goes, op by op (bench_train --profile). profile(be, 1)
     * empties the table and starts timing every op; profile(be, 0) stops. Each
     * row is an op ("conv2d_bwd") or a stage inside one that the backend names
     * ("conv2d_bwd/col2im", depth 1), with its calls and device time (CUDA:
     * events around it on the stream, so queued work is timed where it runs).
     * Timing changes no result; ops inside a recording are not timed (a
     * replay is one row, "replay"). profile_rows waits for queued work and
     * copies up to max rows in the order first seen; it returns how many there
     * are. A stage's time is part of its op's. */
    int (*profile)(Backend *be, int on);
    int (*profile_rows)(Backend *be, BackendProfileRow *rows, int max);

    /* ---- dense algebra ----
     * C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major,
     * op(X) = X or X^T per trans flag; ld* are row strides as stored. */
    void (*gemm)(Backend *be, int transA, int transB, int M, int N, int K,
                 float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc);
    /* batch independent gemms at element strides sA, sB, sC (sA or sB may be 0) */
    void (*gemm_batched)(Backend *be, int transA, int transB, int M, int N, int K,
                         float alpha, const float *A, int lda, int64_t sA,
                         const float *B, int ldb, int64_t sB, float beta,
                         float *C, int ldc, int64_t sC, int batch);

    /* y[M,out] = x[M,in] W[out,in]^T + b (b may be NULL) */
    void (*linear_fwd)(Backend *be, const float *x, const float *W, const float *b,
                       float *y, int64_t M, int in, int out);
    /* dx += dy W ; dW += dy^T x ; db += sum_rows dy */
    void (*linear_bwd)(Backend *be, const float *dy, const float *x, const float *W,
                       float *dx, float *dW, float *db, int64_t M, int in, int out);

    /* ---- convolution: square kernel k (1 or 3), stride s (1 or 2), padding p ----
     * x[N,Cin,H,W], w[Cout,Cin,k,k], b[Cout] (may be NULL), y[N,Cout,Ho,Wo],
     * Ho = (H + 2p - k)/s + 1. */
    void (*conv2d_fwd)(Backend *be, const float *x, const float *w, const float *b,
                       float *y, int N, int Cin, int H, int W, int Cout, int k,
                       int s, int p);
    void (*conv2d_bwd)(Backend *be, const float *dy, const float *x, const float *w,
                       float *dx, float *dw, float *db, int N, int Cin, int H,
                       int W, int Cout, int k, int s, int p);

    /* ---- normalisation ----
     * group norm: x[N,C,HW], G groups; saves mean,rstd[N*G]; gamma,beta[C]. */
    void (*group_norm_fwd)(Backend *be, const float *x, const float *gamma,
                           const float *beta, float *y, float *mean, float *rstd,
                           int N, int C, int64_t HW, int G, float eps);
    void (*group_norm_bwd)(Backend *be, const float *dy, const float *x,
                           const float *gamma, const float *mean, const float *rstd,
                           float *dx, float *dgamma, float *dbeta, int N, int C,
                           int64_t HW, int G);
    /* group norm then SiLU, y = silu(gn(x)) (every ResNet block's two norms):
     * the normalised values never reach memory. Forward saves mean, rstd as
     * group_norm_fwd; backward (dy of y) recomputes gn(x) from x, so it takes
     * beta too; dx, dgamma, dbeta accumulate like group_norm_bwd's. The
     * results are those of group_norm_* and silu_* in turn. */
    void (*group_norm_silu_fwd)(Backend *be, const float *x, const float *gamma,
                                const float *beta, float *y, float *mean, float *rstd,
                                int N, int C, int64_t HW, int G, float eps);
    void (*group_norm_silu_bwd)(Backend *be, const float *dy, const float *x,
                                const float *gamma, const float *beta, const float *mean,
                                const float *rstd, float *dx, float *dgamma, float *dbeta,
                                int N, int C, int64_t HW, int G);
    /* layer norm over the last dim: x[M,C]; saves mean,rstd[M]. */
    void (*layer_norm_fwd)(Backend *be, const float *x, const float *gamma,
                           const float *beta, float *y, float *mean, float *rstd,
                           int64_t M, int C, float eps);
    void (*layer_norm_bwd)(Backend *be, const float *dy, const float *x,
                           const float *gamma, const float *mean, const float *rstd,
                           float *dx, float *dgamma, float *dbeta, int64_t M, int C);

    /* ---- pointwise ---- (y may alias x in forward) */
    void (*silu_fwd)(Backend *be, const float *x, float *y, int64_t n);
    void (*silu_bwd)(Backend *be, const float *dy, const float *x, float *dx, int64_t n);
    /* exact GELU, 0.5 x (1 + erf(x / sqrt 2)) as torch's default */
    void (*gelu_fwd)(Backend *be, const float *x, float *y, int64_t n);
    void (*gelu_bwd)(Backend *be, const float *dy, const float *x, float *dx, int64_t n);
    /* GEGLU as diffusers: x[M,2D] -> (h, g) = split last dim; y[M,D] = h * gelu(g) */
    void (*geglu_fwd)(Backend *be, const float *x, float *y, int64_t M, int D);
    void (*geglu_bwd)(Backend *be, const float *dy, const float *x, float *dx, int64_t M, int D);
    /* CLIP's quick GELU, x * sigmoid(1.702 x) (text encoder); bwd:
     * dx += dy * s (1 + 1.702 x (1 - s)), s = sigmoid(1.702 x) */
    void (*quick_gelu_fwd)(Backend *be, const float *x, float *y, int64_t n);
    void (*quick_gelu_bwd)(Backend *be, const float *dy, const float *x, float *dx, int64_t n);
    /* out[n,:] = table[ids[n],:] ; ids are device int32 */
    void (*embedding_fwd)(Backend *be, const float *table, const int32_t *ids,
                          float *out, int64_t n, int dim);
    /* y = a + b (y may alias a or b) */
    void (*add)(Backend *be, const float *a, const float *b, float *y, int64_t n);
    /* y += alpha * x */
    void (*axpy)(Backend *be, float alpha, const float *x, float *y, int64_t n);
    /* x *= alpha */
    void (*scale)(Backend *be, float *x, float alpha, int64_t n);
    /* x[N,C,HW] += v[N,C] broadcast over HW (the resnet time-embedding add) */
    void (*add_channel_bias)(Backend *be, float *x, const float *v, int N, int C, int64_t HW);
    /* dv[N,C] += sum over HW of dy[N,C,HW] */
    void (*channel_sum_bwd)(Backend *be, const float *dy, float *dv, int N, int C, int64_t HW);

    /* ---- shape ops ---- */
    /* y[N,Ca+Cb,HW] = cat(a[N,Ca,HW], b[N,Cb,HW]) along channels */
    void (*concat_channels)(Backend *be, const float *a, const float *b, float *y,
                            int N, int Ca, int Cb, int64_t HW);
    /* da += dy[:, :Ca], db += dy[:, Ca:] */
    void (*concat_channels_bwd)(Backend *be, const float *dy, float *da, float *db,
                                int N, int Ca, int Cb, int64_t HW);
    /* nearest 2x: x[N,C,H,W] -> y[N,C,2H,2W]; bwd: dx += sum of the 4 copies */
    void (*upsample2x_fwd)(Backend *be, const float *x, float *y, int N, int C, int H, int W);
    void (*upsample2x_bwd)(Backend *be, const float *dy, float *dx, int N, int C, int H, int W);
    /* zero padding: x[N,C,H,W] -> y[N,C,top+H+bottom,left+W+right] (pads >= 0; the
     * VAE encoder's Downsample2D pads right and bottom by one before a stride-2
     * conv); bwd: dx += dy cropped back to [N,C,H,W] */
    void (*pad2d)(Backend *be, const float *x, float *y, int N, int C, int H, int W, int top,
                  int bottom, int left, int right);
    void (*pad2d_bwd)(Backend *be, const float *dy, float *dx, int N, int C, int H, int W,
                      int top, int bottom, int left, int right);
    /* x[N,C,HW] -> y[N,HW,C] and back (proj_in / proj_out around transformers);
     * the backward of one is the other with accumulate: pass accumulate=1. */
    void (*nchw_to_nlc)(Backend *be, const float *x, float *y, int N, int C, int64_t HW, int accumulate);
    void (*nlc_to_nchw)(Backend *be, const float *x, float *y, int N, int C, int64_t HW, int accumulate);

    /* ---- attention ----
     * q[N,Lq,H*D], k,v[N,Lk,H*D], o[N,Lq,H*D]; per head softmax(q k^T * scale) v.
     * Forward saves lse[N,H,Lq] (log-sum-exp of the scaled scores) so backward can
     * recompute probabilities without storing N*H*Lq*Lk floats. causal: query i sees
 * keys j <= i only (CLIP text encoder). */
    void (*attention_fwd)(Backend *be, const float *q, const float *k, const float *v,
                          float *o, float *lse, int N, int Lq, int Lk, int H, int D,
                          float scale, int causal);
    void (*attention_bwd)(Backend *be, const float *dout, const float *q, const float *k,
                          const float *v, const float *o, const float *lse, float *dq,
                          float *dk, float *dv, int N, int Lq, int Lk, int H, int D,
                          float scale, int causal);

    /* ---- diffusion helpers ----
     * sinusoidal embedding as diffusers get_timestep_embedding:
     * half = dim/2, freq_j = exp(-ln(max_period) * j / (half - shift)),
     * emb = [sin(t f), cos(t f)] (or [cos, sin] when flip_sin_to_cos). */
    void (*timestep_embedding)(Backend *be, const float *t, float *emb, int N, int dim,
                               int flip_sin_to_cos, float shift, float max_period);
    /* returns mean((pred - target)^2) over n (host float); weight scales the loss */
    float (*mse_fwd)(Backend *be, const float *pred, const float *target, int64_t n);
    /* dpred += weight * 2 (pred - target) / n */
    void (*mse_bwd)(Backend *be, const float *pred, const float *target, float *dpred,
                    int64_t n, float weight);
    /* AdamW (decoupled weight decay, torch semantics), step t >= 1 */
    void (*adamw)(Backend *be, float *param, const float *grad, float *m, float *v,
                  int64_t n, float lr, float beta1, float beta2, float eps,
                  float weight_decay, int t);

    /* ---- Kronecker adapter ----
     * A[a1,a2], B[b1,b2], d_out = a1*b1, d_in = a2*b2, x[M,d_in], y[M,d_out].
     * y += scale * (A ⊗ B) x without materialising A ⊗ B: each row of x viewed
     * as X[a2,b2] maps to A X B^T viewed as [a1,b1]. */
    void (*kron_fwd)(Backend *be, const float *x, const float *A, const float *B,
                     float *y, int64_t M, int a1, int a2, int b1, int b2, float scale);
    /* dx += scale (A⊗B)^T dy ; dA += ... ; dB += ... (any may be NULL) */
    void (*kron_bwd)(Backend *be, const float *dy, const float *x, const float *A,
                     const float *B, float *dx, float *dA, float *dB, int64_t M,
                     int a1, int a2, int b1, int b2, float scale);
    /* W[d_out,d_in] += scale * (A ⊗ B)  (merged path, and export) */
    void (*kron_merge)(Backend *be, const float *A, const float *B, float *W,
                       int a1, int a2, int b1, int b2, float scale);

    /* ---- text encoder training ----
     * backward of embedding_fwd: dtable[ids[i], :] += dout[i, :] for i < n
     * (ids device int32; repeated ids add up) */
    void (*embedding_bwd)(Backend *be, const float *dout, const int32_t *ids, float *dtable,
                          int64_t n, int dim);
};

/* Which side of y_m = A X_m B^T a backend multiplies first: A X_m costs
 * a1*b2*(a2 + b1) multiply-adds per row against a2*b1*(a1 + b2) for X_m B^T
 * first. For KronA 4x64 on a 320-wide layer that is 2,880 against 46,080, so
 * the wrong order costs more than the frozen layer's own backward. Forward and
 * backward take the same order; both backends use this rule. */
static inline int kron_a_first(int a1, int a2, int b1, int b2) {
    return (int64_t)a1 * b2 * (a2 + b1) <= (int64_t)a2 * b1 * (a1 + b2);
}
/* the multiply-adds of one row of y_m = A X_m B^T, taken from the cheaper side */
static inline int64_t kron_macs_per_row(int a1, int a2, int b1, int b2) {
    return kron_a_first(a1, a2, b1, b2) ? (int64_t)a1 * b2 * (a2 + b1) : (int64_t)a2 * b1 * (a1 + b2);
}

/* ---- the registry (backend.c) ----
 * Each backend registers a driver: the CPU one from a constructor in
 * backend_cpu.c; a plugin krona-backend-NAME.so exports
 *     const BackendDriver *krona_backend_plugin(int abi);
 * returning its driver when abi == KRONA_BACKEND_ABI (else NULL: a stale build). */
#define KRONA_BACKEND_ABI 10 /* bump when struct Backend or BackendDriver changes */

typedef struct BackendDriver {
    const char *name;  /* what --device / `device =` names: "cpu", "cuda" */
    int auto_rank;     /* device = auto tries the highest rank first (cpu: 0) */
    /* NULL with a one-line reason (no device, no driver ...) */
    Backend *(*create)(char *err, size_t errlen);
} BackendDriver;

void backend_register(const BackendDriver *d);

/* "auto" | "cpu" | "cuda" | any registered or plugin name. NULL with a one-line
 * reason naming the device and what is missing. For "auto", the best backend
 * that opens; err then says why faster ones were skipped ("" if none). Plugins
 * are looked for in $KRONA_BACKEND_PATH (':'-separated folders) when set, else
 * beside the executable and in ../lib/krona-studio from it. */
Backend *backend_open(const char *name, char *err, size_t errlen);
void backend_destroy(Backend *be); /* be->destroy, NULL-safe */

/* precision = "auto" | "fp32" | "tf32" | "bf16" (NULL or "": auto) ->
 * KRONA_PREC_*; -2 for anything else. */
int backend_precision_parse(const char *s);
const char *backend_precision_name(int prec); /* "fp32", "tf32", "bf16"; else "auto" */
/* be->set_precision by name; -1 with one line naming the knob and the choices */
int backend_set_precision(Backend *be, const char *name, char *err, size_t errlen);

/* The CPU backend directly (tests and tools that compare against it). */
Backend *backend_cpu_create(void);
/* Tests: cap the CPU backend's im2col columns at `floats` per thread (0: the
 * default, 64 MB), so a small convolution is cut into several row bands.
 * Does nothing to another backend. */
void backend_cpu_set_conv_cols(Backend *be, int64_t floats);

#endif

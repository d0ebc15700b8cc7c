/* emu_cudnn.h — the part of cuDNN 9's convolution API that gpu/backend_cuda.cu
 * opens at run time (KRONA_CUDA_CONV=cudnn), for the emulator (emu_cuda.h
 * includes it). translate.py turns the plugin's dlopen/dlsym/dlclose/dlerror
 * into emu_dl*, which hand out these functions for "libcudnn.so.9"
 * (EMU_NO_CUDNN=1: as if it were not installed).
 *
 * Like the real library it checks what the backend depends on: shapes against
 * the convolution, one data type for x, w and y (float, or bf16 with bf16
 * results rounded to nearest even), the workspace an algorithm was listed
 * with, host alpha and beta; calls on a capturing stream become graph nodes.
 * The convolutions are plain loops summing in double. The heuristics' list
 * holds, before the algorithms the backend should take, ones it must not,
 * and those give results visibly off so that a wrong choice fails the
 * comparisons: a non-deterministic algorithm and a conversion to fp16 (5%
 * off), FFT for fp32's exact mode (5e-4 off, under tf32's and bf16's
 * tolerance), an algorithm asking for more workspace than the emulator's
 * CONV_WS_BYTES (1 MiB; it would run exactly). And two refusals the backend
 * must survive by running im2col instead: images 9 rows high get an empty
 * list (no algorithm), images 9 columns wide fail at the call.
 */
#ifndef EMU_CUDNN_H
#define EMU_CUDNN_H

typedef enum {
    CUDNN_STATUS_SUCCESS = 0, CUDNN_STATUS_BAD_PARAM = 2000, CUDNN_STATUS_NOT_SUPPORTED = 3000,
    CUDNN_STATUS_EXECUTION_FAILED = 5000
} cudnnStatus_t;
typedef enum { CUDNN_DATA_FLOAT = 0, CUDNN_DATA_BFLOAT16 = 9 } cudnnDataType_t;
typedef enum { CUDNN_TENSOR_NCHW = 0 } cudnnTensorFormat_t;
typedef enum { CUDNN_CONVOLUTION = 0, CUDNN_CROSS_CORRELATION = 1 } cudnnConvolutionMode_t;
typedef enum {
    CUDNN_DEFAULT_MATH = 0, CUDNN_TENSOR_OP_MATH = 1, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION = 2, CUDNN_FMA_MATH = 3
} cudnnMathType_t;
typedef enum { CUDNN_NON_DETERMINISTIC = 0, CUDNN_DETERMINISTIC = 1 } cudnnDeterminism_t;
typedef enum {
    CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM = 0, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM = 1,
    CUDNN_CONVOLUTION_FWD_ALGO_GEMM = 2, CUDNN_CONVOLUTION_FWD_ALGO_DIRECT = 3, CUDNN_CONVOLUTION_FWD_ALGO_FFT = 4,
    CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING = 5, CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD = 6,
    CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED = 7
} cudnnConvolutionFwdAlgo_t;
typedef enum {
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 = 0, CUDNN_CONVOLUTION_BWD_DATA_ALGO_1 = 1,
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT = 2, CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING = 3,
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD = 4, CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED = 5
} cudnnConvolutionBwdDataAlgo_t;
typedef enum {
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 = 0, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 = 1,
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT = 2, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3 = 3,
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED = 4, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING = 5
} cudnnConvolutionBwdFilterAlgo_t;
#define EMU_DNN_PERF(Name, Algo)                                                                          \
    typedef struct {                                                                                      \
        Algo algo;                                                                                        \
        cudnnStatus_t status;                                                                             \
        float time;                                                                                       \
        size_t memory;                                                                                    \
        cudnnDeterminism_t determinism;                                                                   \
        cudnnMathType_t mathType;                                                                         \
        int reserved[3];                                                                                  \
    } Name;
EMU_DNN_PERF(cudnnConvolutionFwdAlgoPerf_t, cudnnConvolutionFwdAlgo_t)
EMU_DNN_PERF(cudnnConvolutionBwdDataAlgoPerf_t, cudnnConvolutionBwdDataAlgo_t)
EMU_DNN_PERF(cudnnConvolutionBwdFilterAlgoPerf_t, cudnnConvolutionBwdFilterAlgo_t)
#undef EMU_DNN_PERF

struct emu_dnn { cudaStream_t stream; };
struct emu_dnn_tensor { int set; cudnnDataType_t t; int n, c, h, w; };
struct emu_dnn_conv { int set, p, s; cudnnMathType_t math; };
typedef struct emu_dnn *cudnnHandle_t;
typedef struct emu_dnn_tensor *cudnnTensorDescriptor_t;
typedef struct emu_dnn_tensor *cudnnFilterDescriptor_t; /* k = n (Cout), c = Cin, h = w = kernel */
typedef struct emu_dnn_conv *cudnnConvolutionDescriptor_t;

namespace emu {
static long dnn_live, dnn_calls;
static int dnn_lib; /* the "library" emu_dlopen hands out */
}
static inline size_t cudnnGetVersion(void) { return 91900; }
static inline const char *cudnnGetErrorString(cudnnStatus_t s) {
    return s == CUDNN_STATUS_SUCCESS ? "CUDNN_STATUS_SUCCESS" : s == CUDNN_STATUS_BAD_PARAM ? "CUDNN_STATUS_BAD_PARAM"
           : s == CUDNN_STATUS_NOT_SUPPORTED ? "CUDNN_STATUS_NOT_SUPPORTED" : "CUDNN_STATUS_EXECUTION_FAILED";
}
static inline cudnnStatus_t cudnnCreate(cudnnHandle_t *h) { *h = new emu_dnn{}; emu::dnn_live++; return CUDNN_STATUS_SUCCESS; }
static inline cudnnStatus_t cudnnDestroy(cudnnHandle_t h) { delete h; emu::dnn_live--; return CUDNN_STATUS_SUCCESS; }
static inline cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) { h->stream = s; return CUDNN_STATUS_SUCCESS; }
static inline cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *d) {
    *d = new emu_dnn_tensor{};
    emu::dnn_live++;
    return CUDNN_STATUS_SUCCESS;
}
static inline cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
    delete d;
    emu::dnn_live--;
    return CUDNN_STATUS_SUCCESS;
}
static inline cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t f,
                                                       cudnnDataType_t t, int n, int c, int h, int w) {
    if (f != CUDNN_TENSOR_NCHW || n <= 0 || c <= 0 || h <= 0 || w <= 0) return CUDNN_STATUS_BAD_PARAM;
    *d = emu_dnn_tensor{1, t, n, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}
static inline cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *d) { return cudnnCreateTensorDescriptor(d); }
static inline cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) { return cudnnDestroyTensorDescriptor(d); }
static inline cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t t,
                                                       cudnnTensorFormat_t f, int k, int c, int h, int w) {
    return cudnnSetTensor4dDescriptor(d, f, t, k, c, h, w);
}
static inline cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *d) {
    *d = new emu_dnn_conv{};
    emu::dnn_live++;
    return CUDNN_STATUS_SUCCESS;
}
static inline cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
    delete d;
    emu::dnn_live--;
    return CUDNN_STATUS_SUCCESS;
}
/* square padding and stride only, no dilation: all the backend asks for */
static inline cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int ph, int pw, int sh,
                                                            int sw, int dh, int dw, cudnnConvolutionMode_t m,
                                                            cudnnDataType_t compute) {
    if (ph != pw || sh != sw || ph < 0 || sh <= 0) return CUDNN_STATUS_BAD_PARAM;
    if (dh != 1 || dw != 1 || m != CUDNN_CROSS_CORRELATION || compute != CUDNN_DATA_FLOAT)
        return CUDNN_STATUS_NOT_SUPPORTED;
    d->set = 1;
    d->p = ph;
    d->s = sh;
    return CUDNN_STATUS_SUCCESS;
}
static inline cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t m) {
    d->math = m;
    return CUDNN_STATUS_SUCCESS;
}

/* x, w, y and the convolution agree (the shape rules of cudnnGetConvolution2dForwardOutputDim) */
static inline cudnnStatus_t emu_dnn_check(cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w,
                                          cudnnConvolutionDescriptor_t cv, cudnnTensorDescriptor_t y) {
    if (!x->set || !w->set || !y->set || !cv->set) return CUDNN_STATUS_BAD_PARAM;
    if (x->t != w->t || x->t != y->t) return CUDNN_STATUS_NOT_SUPPORTED; /* float or bf16 throughout */
    if (w->h != w->w || x->c != w->c || y->c != w->n || y->n != x->n) return CUDNN_STATUS_BAD_PARAM;
    if (y->h != (x->h + 2 * cv->p - w->h) / cv->s + 1 || y->w != (x->w + 2 * cv->p - w->w) / cv->s + 1)
        return CUDNN_STATUS_BAD_PARAM;
    return CUDNN_STATUS_SUCCESS;
}
/* The list, fastest first as cuDNN sorts it. Good entries ask for workspace,
 * so the backend's workspace is used and checked. */
template <class Perf, class Algo>
static inline int emu_dnn_list(Perf *r, int want, int x_h, cudnnDataType_t t, cudnnMathType_t m, Algo nondet, Algo fft,
                               Algo big, Algo good) {
    Perf all[5];
    int n = 0;
    all[n++] = Perf{nondet, CUDNN_STATUS_SUCCESS, 0.1f, 256, CUDNN_NON_DETERMINISTIC, m, {0, 0, 0}};
    if (t == CUDNN_DATA_FLOAT) /* fp16 tensor cores for float data */
        all[n++] = Perf{good, CUDNN_STATUS_SUCCESS, 0.2f, 1024, CUDNN_DETERMINISTIC,
                        CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION, {0, 0, 0}};
    all[n++] = Perf{fft, CUDNN_STATUS_SUCCESS, 0.3f, 4096, CUDNN_DETERMINISTIC, m, {0, 0, 0}};
    all[n++] = Perf{big, CUDNN_STATUS_SUCCESS, 0.4f, (size_t)1 << 20, CUDNN_DETERMINISTIC, m, {0, 0, 0}};
    all[n++] = Perf{good, CUDNN_STATUS_SUCCESS, 0.5f, 1024, CUDNN_DETERMINISTIC, m, {0, 0, 0}};
    int k = n < want ? n : want;
    for (int i = 0; i < k; i++) r[i] = all[i];
    return x_h == 9 ? 0 : k;
}
static inline cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t, cudnnTensorDescriptor_t x,
                                                                   cudnnFilterDescriptor_t w,
                                                                   cudnnConvolutionDescriptor_t cv,
                                                                   cudnnTensorDescriptor_t y, int want, int *got,
                                                                   cudnnConvolutionFwdAlgoPerf_t *r) {
    cudnnStatus_t st = emu_dnn_check(x, w, cv, y);
    if (st) return st;
    *got = emu_dnn_list(r, want, x->h, x->t, cv->math, CUDNN_CONVOLUTION_FWD_ALGO_DIRECT, CUDNN_CONVOLUTION_FWD_ALGO_FFT,
                        CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM);
    return CUDNN_STATUS_SUCCESS;
}
static inline cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t, cudnnFilterDescriptor_t w,
                                                                        cudnnTensorDescriptor_t dy,
                                                                        cudnnConvolutionDescriptor_t cv,
                                                                        cudnnTensorDescriptor_t dx, int want,
                                                                        int *got,
                                                                        cudnnConvolutionBwdDataAlgoPerf_t *r) {
    cudnnStatus_t st = emu_dnn_check(dx, w, cv, dy);
    if (st) return st;
    *got = emu_dnn_list(r, want, dx->h, dx->t, cv->math, CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
                        CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
                        CUDNN_CONVOLUTION_BWD_DATA_ALGO_1);
    return CUDNN_STATUS_SUCCESS;
}
static inline cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t, cudnnTensorDescriptor_t x,
                                                                          cudnnTensorDescriptor_t dy,
                                                                          cudnnConvolutionDescriptor_t cv,
                                                                          cudnnFilterDescriptor_t dw, int want,
                                                                          int *got,
                                                                          cudnnConvolutionBwdFilterAlgoPerf_t *r) {
    cudnnStatus_t st = emu_dnn_check(x, dw, cv, dy);
    if (st) return st;
    *got = emu_dnn_list(r, want, x->h, x->t, cv->math, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
                        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
                        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1);
    return CUDNN_STATUS_SUCCESS;
}

/* what an algorithm's results are off by (see the top), and the workspace it was listed with */
static inline double emu_dnn_skew(int nondet, int fft, cudnnMathType_t m) {
    if (nondet || m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) return 5e-2;
    return fft && m == CUDNN_FMA_MATH ? 5e-4 : 0.0;
}
static inline size_t emu_dnn_ws(int nondet, int fft, int big) { return nondet ? 256 : fft ? 4096 : big ? (size_t)1 << 20 : 1024; }
static inline float emu_dnn_get(const void *p, cudnnDataType_t t, int64_t i) {
    return t == CUDNN_DATA_BFLOAT16 ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}
static inline void emu_dnn_put(void *p, cudnnDataType_t t, int64_t i, double v) {
    if (t == CUDNN_DATA_BFLOAT16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn((float)v);
    else ((float *)p)[i] = (float)v;
}
/* out = alpha * sum + beta * out for one direction (0 forward into y, 1 data into x, 2 filter into w) */
static inline void emu_dnn_conv(int dir, emu_dnn_tensor x, emu_dnn_tensor w, emu_dnn_tensor y, int p, int s,
                                const void *xp, const void *wp, const void *yp, void *out, float alpha, float beta,
                                double skew) {
    cudnnDataType_t t = x.t;
    int k = w.h;
    int64_t nout = dir == 0 ? (int64_t)y.n * y.c * y.h * y.w : dir == 1 ? (int64_t)x.n * x.c * x.h * x.w
                                                                        : (int64_t)w.n * w.c * k * k;
    std::vector<double> acc((size_t)nout, 0.0);
    for (int n = 0; n < x.n; n++)
        for (int co = 0; co < y.c; co++)
            for (int oh = 0; oh < y.h; oh++)
                for (int ow = 0; ow < y.w; ow++) {
                    int64_t yi = (((int64_t)n * y.c + co) * y.h + oh) * y.w + ow;
                    for (int ci = 0; ci < x.c; ci++)
                        for (int kh = 0; kh < k; kh++)
                            for (int kw = 0; kw < k; kw++) {
                                int ih = oh * s - p + kh, iw = ow * s - p + kw;
                                if (ih < 0 || ih >= x.h || iw < 0 || iw >= x.w) continue;
                                int64_t xi = (((int64_t)n * x.c + ci) * x.h + ih) * x.w + iw;
                                int64_t wi = (((int64_t)co * x.c + ci) * k + kh) * k + kw;
                                if (dir == 0) acc[yi] += (double)emu_dnn_get(xp, t, xi) * emu_dnn_get(wp, t, wi);
                                else if (dir == 1) acc[xi] += (double)emu_dnn_get(yp, t, yi) * emu_dnn_get(wp, t, wi);
                                else acc[wi] += (double)emu_dnn_get(yp, t, yi) * emu_dnn_get(xp, t, xi);
                            }
                }
    for (int64_t i = 0; i < nout; i++) {
        double v = alpha * acc[i] * (1.0 + skew);
        if (beta != 0.f) v += (double)beta * emu_dnn_get(out, t, i);
        emu_dnn_put(out, t, i, v);
    }
}
/* checked at the call (captured or not); the work is queued on the handle's stream */
static inline cudnnStatus_t emu_dnn_run(cudnnHandle_t h, int dir, cudnnTensorDescriptor_t x, const void *xp,
                                        cudnnFilterDescriptor_t w, const void *wp, cudnnTensorDescriptor_t y,
                                        const void *yp, cudnnConvolutionDescriptor_t cv, int nondet, int fft, int big,
                                        void *ws, size_t wsb, const void *alpha, const void *beta, void *out) {
    cudnnStatus_t st = emu_dnn_check(x, w, cv, y);
    if (st) return st;
    if ((cv->math == CUDNN_FMA_MATH && x->t == CUDNN_DATA_BFLOAT16) || x->w == 9) return CUDNN_STATUS_NOT_SUPPORTED;
    size_t need = emu_dnn_ws(nondet, fft, big);
    if (wsb < need || !ws) return CUDNN_STATUS_BAD_PARAM;
    if (!out || (dir != 0 && !yp) || (dir != 1 && !xp) || (dir != 2 && !wp)) return CUDNN_STATUS_BAD_PARAM;
    float al = *(const float *)alpha, be = *(const float *)beta; /* host scalars, read now */
    double skew = emu_dnn_skew(nondet, fft, cv->math);
    emu_dnn_tensor X = *x, W = *w, Y = *y;
    int p = cv->p, s = cv->s;
    emu::dnn_calls++;
    emu::tally_other++;
    cudaError_t e = emu_enqueue(h->stream, [=]() {
        memset(ws, 0x7f, need); /* scribbles on its workspace, as real kernels may */
        emu_dnn_conv(dir, X, W, Y, p, s, xp, wp, yp, out, al, be, skew);
    });
    return e == cudaSuccess ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_EXECUTION_FAILED;
}
static inline cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void *alpha, cudnnTensorDescriptor_t xd,
                                                    const void *x, cudnnFilterDescriptor_t wd, const void *w,
                                                    cudnnConvolutionDescriptor_t cv, cudnnConvolutionFwdAlgo_t a,
                                                    void *ws, size_t wsb, const void *beta,
                                                    cudnnTensorDescriptor_t yd, void *y) {
    return emu_dnn_run(h, 0, xd, x, wd, w, yd, NULL, cv, a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
                       a == CUDNN_CONVOLUTION_FWD_ALGO_FFT, a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, ws,
                       wsb, alpha, beta, y);
}
static inline cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void *alpha,
                                                         cudnnFilterDescriptor_t wd, const void *w,
                                                         cudnnTensorDescriptor_t dyd, const void *dy,
                                                         cudnnConvolutionDescriptor_t cv,
                                                         cudnnConvolutionBwdDataAlgo_t a, void *ws, size_t wsb,
                                                         const void *beta, cudnnTensorDescriptor_t dxd, void *dx) {
    return emu_dnn_run(h, 1, dxd, NULL, wd, w, dyd, dy, cv, a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
                       a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING, ws,
                       wsb, alpha, beta, dx);
}
static inline cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void *alpha,
                                                           cudnnTensorDescriptor_t xd, const void *x,
                                                           cudnnTensorDescriptor_t dyd, const void *dy,
                                                           cudnnConvolutionDescriptor_t cv,
                                                           cudnnConvolutionBwdFilterAlgo_t a, void *ws, size_t wsb,
                                                           const void *beta, cudnnFilterDescriptor_t dwd, void *dw) {
    return emu_dnn_run(h, 2, xd, x, dwd, NULL, dyd, dy, cv, a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
                       a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, ws, wsb,
                       alpha, beta, dw);
}

/* the plugin's dlopen and friends (translate.py): cuDNN is the one library it opens */
static inline void *emu_dlopen(const char *name, int) {
    const char *off = getenv("EMU_NO_CUDNN");
    if (strcmp(name, "libcudnn.so.9") || (off && off[0] == '1')) return NULL;
    return &emu::dnn_lib;
}
static inline const char *emu_dlerror(void) { return "libcudnn.so.9: cannot open shared object file (emulator)"; }
static inline int emu_dlclose(void *) { return 0; }
static inline void *emu_dlsym(void *lib, const char *sym) {
    if (lib != &emu::dnn_lib) return NULL;
#define EMU_DNN_SYM(f) if (!strcmp(sym, #f)) return (void *)&f;
    EMU_DNN_SYM(cudnnGetVersion) EMU_DNN_SYM(cudnnGetErrorString) EMU_DNN_SYM(cudnnCreate)
    EMU_DNN_SYM(cudnnDestroy) EMU_DNN_SYM(cudnnSetStream) EMU_DNN_SYM(cudnnCreateTensorDescriptor)
    EMU_DNN_SYM(cudnnSetTensor4dDescriptor) EMU_DNN_SYM(cudnnDestroyTensorDescriptor)
    EMU_DNN_SYM(cudnnCreateFilterDescriptor) EMU_DNN_SYM(cudnnSetFilter4dDescriptor)
    EMU_DNN_SYM(cudnnDestroyFilterDescriptor) EMU_DNN_SYM(cudnnCreateConvolutionDescriptor)
    EMU_DNN_SYM(cudnnSetConvolution2dDescriptor) EMU_DNN_SYM(cudnnSetConvolutionMathType)
    EMU_DNN_SYM(cudnnDestroyConvolutionDescriptor) EMU_DNN_SYM(cudnnGetConvolutionForwardAlgorithm_v7)
    EMU_DNN_SYM(cudnnGetConvolutionBackwardDataAlgorithm_v7)
    EMU_DNN_SYM(cudnnGetConvolutionBackwardFilterAlgorithm_v7) EMU_DNN_SYM(cudnnConvolutionForward)
    EMU_DNN_SYM(cudnnConvolutionBackwardData) EMU_DNN_SYM(cudnnConvolutionBackwardFilter)
#undef EMU_DNN_SYM
    return NULL;
}

#endif

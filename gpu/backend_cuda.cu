/* backend_cuda.cu — struct Backend on CUDA: cuBLAS for every matrix product
 * (conv via im2col, attention via row tiles of S = QK^T, Kronecker adapter via
 * strided-batched gemms) plus own kernels for norms, pointwise ops, reductions.
 * f32 storage, fp32 accumulation; cuBLAS may use TF32 tensor cores, and in
 * BF16 mode linear and conv2d multiply bf16 copies of their operands (backend.h).
 *
 * Row-major gemm through column-major cuBLAS: a row-major [M,N] matrix is the
 * column-major [N,M] matrix of its transpose, so C = op(A) op(B) becomes
 * C^T = op(B)^T op(A)^T: call cuBLAS with (B, A) swapped and M/N swapped.
 *
 * One stream for everything (uploads and downloads included), so the order of
 * host calls is the order of device work, and a freed block can be handed out
 * again at once: anything that used it was queued before anything new.
 */
#include <cuda_runtime.h>
#include <cuda.h> /* the types of the driver's memory API (entry points come through the runtime) */
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <mma.h>
#include <dlfcn.h>
/* cuDNN's declarations, for its convolutions (opened at run time, when asked
 * for: KRONA_CUDA_CONV=cudnn); without the header the plugin has none */
#if __has_include(<cudnn.h>)
#include <cudnn.h>
#define HAVE_CUDNN 1
#else
#define HAVE_CUDNN 0
#endif
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "core/backend.h"
#include "core/profile.h"
}

/* ------------------------------------------------------------------ state */

/* an address-stable block (vmm_alloc): physical chunks behind reserved addresses */
typedef struct {
    size_t chunk;                    /* bytes of one physical allocation */
    int64_t n;                       /* chunks */
    CUmemGenericAllocationHandle *h; /* per chunk; 0: not mapped */
} Vmm;

typedef struct {
    void *p;
    size_t bytes; /* rounded size of the block */
    size_t req;   /* bytes asked for (what peak_bytes counts; an address-stable block counts its mapped chunks) */
    Vmm *vm;      /* NULL: cudaMalloc'd */
    uint64_t born; /* alloc's counter when handed out: which recordings may use it */
} Block;

/* a list of freed blocks (the caching allocator's, and the recordings' scratch) */
typedef struct {
    Block *v;
    size_t n, cap;
} Blocks;

/* a set_frozen range and its bf16 copy (NULL: not made yet, or no room);
 * compact: the f32 pages of its first nw floats are given back (bf16 only) */
typedef struct {
    const float *p;
    int64_t n, nw;
    __nv_bfloat16 *bf;
    int tried, compact;
} Frozen;

/* the driver's virtual memory calls, fetched through the runtime at create */
typedef struct {
    CUresult (*reserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
    CUresult (*addr_free)(CUdeviceptr, size_t);
    CUresult (*create)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
    CUresult (*release)(CUmemGenericAllocationHandle);
    CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
    CUresult (*unmap)(CUdeviceptr, size_t);
    CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
    CUresult (*granularity)(size_t *, const CUmemAllocationProp *, CUmemAllocationGranularity_flags);
    CUresult (*dev_get)(CUdevice *, int);
    CUresult (*dev_attr)(int *, CUdevice_attribute, CUdevice);
    CUresult (*err_string)(CUresult, const char **);
} Drv;

typedef struct {
    int dev;
    char dev_name[256];
    cudaStream_t stream;
    cublasHandle_t blas;
    int prec, prec_auto; /* KRONA_PREC_*: now, and what AUTO means (TF32; env may say FP32) */
    int flash, smem_optin; /* fused attention in BF16 mode; shared memory a block may opt in to */
    int fused_kron;        /* one kernel per Kronecker adapter op (else cuBLAS GEMMs) */
    float *host_scalar; /* pinned, for mse_fwd's single device-to-host copy */
    /* caching allocator: live blocks in an open-addressing table keyed by
     * pointer, freed blocks in a list searched by exact rounded size */
    Block *live;
    size_t live_cap, live_n;
    Blocks cache;
    size_t live_req, peak_req, reserved;
    Frozen frozen[8]; /* set_frozen ranges */
    int n_frozen;
    /* address-stable blocks: alloc's blocks of vmm_min bytes or more in BF16 mode */
    Drv drv;
    int vmm_ok;
    size_t gran, vmm_min;
    CUmemAllocationProp vprop;
    /* recordings (record_begin; CUDA graphs). While recording, alloc takes
     * only cached blocks and what is freed goes to rcache: blocks the
     * recordings use as scratch, handed to no one else until the last
     * recording is freed (a replay would write into them). Blocks carry the
     * counter seq from when they were handed out; freeing one that a
     * recording may use (born before its end) makes that recording stale. */
    int recording, rec_failed;
    char rec_why[256];
    void *blas_ws; /* cuBLAS's workspace (cublasSetWorkspace) */
    uint64_t seq, rec_begin;
    Blocks rcache;
    struct Rec *recs[64];
    int n_recs;
    /* profile (backend.h): a pair of events around each timed scope, on the
     * stream; their times are added to the table when the host next waits */
    ProfTable prof;
    struct ProfEv *pev;
    int npev, cappev; /* in use (queued, not yet added), created */
    /* cuDNN's convolutions (KRONA_CUDA_CONV=cudnn; NULL: im2col), and what
     * device_name adds: which convolutions run, or why not cuDNN's */
    struct Dnn *dnn;
    char conv_note[160], desc[640];
    char err[512];
    long nerr;
} Cuda;

typedef struct Rec {
    cudaGraphExec_t exec;
    uint64_t end_seq; /* blocks born up to here may be used by it */
    int stale;
} Rec;

static Cuda *CU(Backend *be) { return (Cuda *)be->impl; }

static void set_err(Cuda *c, const char *op, const char *what, const char *msg) {
    if (c->recording) { /* fails the recording (the caller runs the ops again), not the backend */
        if (!c->rec_failed) snprintf(c->rec_why, sizeof c->rec_why, "%s: %s failed: %s", op, what, msg);
        c->rec_failed = 1;
        return;
    }
    c->nerr++;
    if (c->err[0]) return; /* keep the first: later ones are usually its echo */
    snprintf(c->err, sizeof c->err, "cuda backend: %s: %s failed: %s", op, what, msg);
}

static int ck_cuda(Cuda *c, cudaError_t e, const char *op, const char *what) {
    if (e == cudaSuccess) return 0;
    set_err(c, op, what, cudaGetErrorString(e));
    return -1;
}
static int ck_blas(Cuda *c, cublasStatus_t s, const char *op, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    set_err(c, op, what, cublasGetStatusString(s));
    return -1;
}
/* 1 (and the recording fails, naming what) when something that cannot be
 * recorded is asked for while recording: the op must then do nothing */
static int refuse(Cuda *c, const char *what) {
    if (!c->recording) return 0;
    if (!c->rec_failed) snprintf(c->rec_why, sizeof c->rec_why, "%s while recording", what);
    c->rec_failed = 1;
    return 1;
}
#define CK(c, call) ck_cuda((c), (call), __func__, #call)
#define CB(c, call) ck_blas((c), (call), __func__, #call)
/* after every kernel launch: catches bad launch configs immediately */
#define LAUNCHED(c) ck_cuda((c), cudaGetLastError(), __func__, "kernel launch")

/* ------------------------------------------------------------------ profile */

typedef struct ProfEv {
    cudaEvent_t a, b;
    int row;
} ProfEv;

/* every queued pair's time into the table (waits for the stream). Only with
 * no scope open: an open scope's end is not recorded yet */
static void prof_fold(Cuda *c) {
    if (!c->npev) return;
    if (cudaStreamSynchronize(c->stream) == cudaSuccess)
        for (int i = 0; i < c->npev; i++) {
            float ms = 0;
            if (cudaEventElapsedTime(&ms, c->pev[i].a, c->pev[i].b) == cudaSuccess)
                prof_add(&c->prof, c->pev[i].row, ms);
        }
    cudaGetLastError(); /* a failed timing is not the ops' failure */
    c->npev = 0;
}

/* A timed scope: an op (every op in the table: Timed, below) or a stage
 * inside one (PROF_STAGE). Nothing when not profiling, or while recording
 * (events would become nodes of the graph). */
struct ProfScope {
    Cuda *c;
    int row, ev;
    ProfScope(Cuda *cu, const char *name) : c(cu), row(-1), ev(-1) {
        if (!c->prof.on || c->recording) return;
        if (c->prof.depth == 0 && c->npev >= 4096) prof_fold(c); /* bounded, and only between ops */
        if (c->npev == c->cappev) {
            ProfEv *g = (ProfEv *)realloc(c->pev, sizeof *g * (size_t)(c->cappev + 1));
            if (!g) return;
            c->pev = g;
            if (cudaEventCreate(&g[c->cappev].a) != cudaSuccess) { cudaGetLastError(); return; }
            if (cudaEventCreate(&g[c->cappev].b) != cudaSuccess) {
                cudaGetLastError();
                cudaEventDestroy(g[c->cappev].a);
                return;
            }
            c->cappev++;
        }
        row = prof_enter(&c->prof, name);
        if (row < 0) return;
        ev = c->npev++;
        c->pev[ev].row = row;
        if (cudaEventRecord(c->pev[ev].a, c->stream) != cudaSuccess) cudaGetLastError();
    }
    ~ProfScope() {
        if (row < 0) return;
        if (cudaEventRecord(c->pev[ev].b, c->stream) != cudaSuccess) cudaGetLastError();
        prof_leave(&c->prof, row);
    }
};
#define PROF_STAGE(c, name) ProfScope prof_stage_((c), (name))

/* Timed<cu_op>::call: cu_op inside a scope named after it (the op table holds
 * these, so every op is timed and none can be forgotten) */
template <auto F> struct Timed;
template <typename R, typename... A, R (*F)(Backend *, A...)> struct Timed<F> {
    static const char *name;
    static R call(Backend *be, A... a) {
        ProfScope s(CU(be), name);
        return F(be, a...);
    }
};
template <typename R, typename... A, R (*F)(Backend *, A...)> const char *Timed<F>::name = "?";
#define TIMED(op) (Timed<cu_##op>::name = #op, Timed<cu_##op>::call)

/* ------------------------------------------------------- caching allocator */

static size_t round_bytes(size_t n) {
    if (n == 0) n = 1;
#ifdef KRONA_CUDA_EXACT_ALLOC /* emulator + ASan: overruns hit the end of the block */
    return n;
#endif
    if (n <= ((size_t)1 << 20)) return (n + 511) & ~(size_t)511;
    return (n + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1);
}

static size_t hash_ptr(const void *p, size_t cap) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33;
    return (size_t)(x & (cap - 1));
}

static int live_insert(Cuda *c, Block b);
static int live_grow(Cuda *c) {
    size_t ncap = c->live_cap ? c->live_cap * 2 : 1024;
    Block *old = c->live;
    size_t ocap = c->live_cap;
    c->live = (Block *)calloc(ncap, sizeof(Block));
    if (!c->live) { c->live = old; return -1; }
    c->live_cap = ncap;
    c->live_n = 0;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].p) live_insert(c, old[i]);
    free(old);
    return 0;
}
static int live_insert(Cuda *c, Block b) {
    if ((c->live_n + 1) * 2 > c->live_cap && live_grow(c)) return -1;
    size_t i = hash_ptr(b.p, c->live_cap);
    while (c->live[i].p) i = (i + 1) & (c->live_cap - 1);
    c->live[i] = b;
    c->live_n++;
    return 0;
}
/* removes p from the live table (backward-shift deletion); 0 if found */
static int live_remove(Cuda *c, const void *p, Block *out) {
    if (!c->live_cap) return -1;
    size_t mask = c->live_cap - 1, i = hash_ptr(p, c->live_cap);
    while (c->live[i].p && c->live[i].p != p) i = (i + 1) & mask;
    if (!c->live[i].p) return -1;
    *out = c->live[i];
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!c->live[j].p) break;
        size_t h = hash_ptr(c->live[j].p, c->live_cap);
        /* move j back to i if its home is not in (i, j] cyclically */
        int move = (i <= j) ? (h <= i || h > j) : (h <= i && h > j);
        if (move) { c->live[i] = c->live[j]; i = j; }
    }
    c->live[i].p = NULL;
    c->live_n--;
    return 0;
}

static void cache_release(Cuda *c) {
    if (!c->cache.n) return;
    CK(c, cudaStreamSynchronize(c->stream));
    for (size_t i = 0; i < c->cache.n; i++) {
        CK(c, cudaFree(c->cache.v[i].p));
        c->reserved -= c->cache.v[i].bytes;
    }
    c->cache.n = 0;
}

/* device memory, not zeroed; for the backend's own workspaces too, so peak
 * counts them */
/* a cached block of exactly these bytes, taken out of the list; NULL if none */
static void *cache_take(Blocks *l, size_t bytes) {
    for (size_t i = l->n; i-- > 0;) {
        if (l->v[i].bytes == bytes) {
            void *p = l->v[i].p;
            l->v[i] = l->v[--l->n];
            return p;
        }
    }
    return NULL;
}
static void *dalloc(Cuda *c, size_t req) {
    size_t bytes = round_bytes(req);
    void *p = NULL;
    if (c->recording) { /* the recordings' scratch first; never new device memory */
        p = cache_take(&c->rcache, bytes);
        if (!p) p = cache_take(&c->cache, bytes);
        if (!p) {
            char what[96];
            snprintf(what, sizeof what, "new device memory (%zu bytes)", bytes);
            refuse(c, what);
            return NULL;
        }
    } else {
        p = cache_take(&c->cache, bytes);
    }
    if (!p) {
        cudaError_t e = cudaMalloc(&p, bytes);
        if (e != cudaSuccess) { /* give the cache back to the driver and retry */
            cudaGetLastError();
            cache_release(c);
            e = cudaMalloc(&p, bytes);
        }
        if (e != cudaSuccess) {
            cudaGetLastError();
            char what[96];
            snprintf(what, sizeof what, "cudaMalloc(%zu bytes)", bytes);
            set_err(c, "alloc", what, cudaGetErrorString(e));
            return NULL;
        }
        c->reserved += bytes;
    }
    Block b = {p, bytes, req, NULL, ++c->seq};
    if (live_insert(c, b)) {
        set_err(c, "alloc", "live table", "host out of memory");
        cudaFree(p);
        c->reserved -= bytes;
        return NULL;
    }
    c->live_req += req;
    if (c->live_req > c->peak_req) c->peak_req = c->live_req;
    return p;
}

static void vmm_release(Cuda *c, Block *b);
/* 0 when the list could not grow (the caller frees the block) */
static int cache_put(Blocks *l, Block b) {
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 256;
        Block *nv = (Block *)realloc(l->v, ncap * sizeof(Block));
        if (!nv) return 0;
        l->v = nv;
        l->cap = ncap;
    }
    l->v[l->n++] = b;
    return 1;
}
static void dfree(Cuda *c, void *p) {
    if (!p) return;
    Block b;
    if (live_remove(c, p, &b)) {
        set_err(c, "free", "lookup", "pointer was not allocated by this backend (or freed twice)");
        return;
    }
    if (c->recording) {
        if (b.born < c->rec_begin) refuse(c, "freeing memory allocated before the recording began");
        if (b.vm) { /* cannot give pages back now: kept, live, until destroy */
            refuse(c, "freeing an address-stable block");
            live_insert(c, b);
            return;
        }
    } else {
        for (int i = 0; i < c->n_recs; i++) /* a recording may use it: record again */
            if (b.born <= c->recs[i]->end_seq) c->recs[i]->stale = 1;
    }
    if (b.vm) { vmm_release(c, &b); return; } /* never cached: its addresses go back too */
    c->live_req -= b.req;
    if (!cache_put(c->recording ? &c->rcache : &c->cache, b)) {
        CK(c, cudaFree(p));
        c->reserved -= b.bytes;
    }
}

/* ---------------------------------------------- address-stable blocks
 * Addresses reserved once, backed by physical chunks that can be given back
 * and mapped again while the addresses stay (CUDA's virtual memory
 * management): what lets a frozen weight range keep only its bf16 copy at the
 * pointers the model holds (set_frozen's n_w). alloc makes its large blocks
 * this way in BF16 mode only; env KRONA_CUDA_VMM=0: never. */
static Block *live_find(Cuda *c, const void *p) {
    if (!c->live_cap || !p) return NULL;
    size_t i = hash_ptr(p, c->live_cap);
    while (c->live[i].p && c->live[i].p != p) i = (i + 1) & (c->live_cap - 1);
    return c->live[i].p ? &c->live[i] : NULL;
}
static int ck_drv(Cuda *c, CUresult r, const char *op, const char *what) {
    if (r == CUDA_SUCCESS) return 0;
    const char *msg = NULL;
    if (c->drv.err_string(r, &msg) != CUDA_SUCCESS || !msg) msg = "driver error";
    set_err(c, op, what, msg);
    return -1;
}
/* chunk k of the block at base gets physical memory, readable and writable;
 * quiet: a failure is not recorded (alloc then falls back to cudaMalloc) */
static int vmm_map(Cuda *c, Block *b, int64_t k, int quiet) {
    Vmm *v = b->vm;
    if (v->h[k]) return 0;
    CUdeviceptr at = (CUdeviceptr)(uintptr_t)((char *)b->p + k * v->chunk);
    CUmemGenericAllocationHandle h = 0;
    CUmemAccessDesc d;
    memset(&d, 0, sizeof d);
    d.location = c->vprop.location;
    d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CUresult r = c->drv.create(&h, v->chunk, &c->vprop, 0);
    const char *what = "cuMemCreate";
    if (r == CUDA_SUCCESS) {
        what = "cuMemMap";
        r = c->drv.map(at, v->chunk, 0, h, 0);
        if (r == CUDA_SUCCESS) {
            what = "cuMemSetAccess";
            r = c->drv.set_access(at, v->chunk, &d, 1);
            if (r != CUDA_SUCCESS) c->drv.unmap(at, v->chunk);
        }
        if (r != CUDA_SUCCESS) c->drv.release(h);
    }
    if (r != CUDA_SUCCESS) {
        if (!quiet) ck_drv(c, r, "map", what);
        return -1;
    }
    v->h[k] = h;
    b->req += v->chunk;
    c->reserved += v->chunk;
    c->live_req += v->chunk;
    if (c->live_req > c->peak_req) c->peak_req = c->live_req;
    return 0;
}
/* chunk k gives its physical memory back, once the work queued on it is done */
static void vmm_unmap(Cuda *c, Block *b, int64_t k) {
    Vmm *v = b->vm;
    if (!v->h[k]) return;
    CK(c, cudaStreamSynchronize(c->stream));
    CUdeviceptr at = (CUdeviceptr)(uintptr_t)((char *)b->p + k * v->chunk);
    ck_drv(c, c->drv.unmap(at, v->chunk), "unmap", "cuMemUnmap");
    ck_drv(c, c->drv.release(v->h[k]), "unmap", "cuMemRelease");
    v->h[k] = 0;
    b->req -= v->chunk;
    c->reserved -= v->chunk;
    c->live_req -= v->chunk;
}
static void vmm_release(Cuda *c, Block *b) {
    for (int64_t k = 0; k < b->vm->n; k++) vmm_unmap(c, b, k);
    c->drv.addr_free((CUdeviceptr)(uintptr_t)b->p, b->bytes);
    free(b->vm->h);
    free(b->vm);
}
/* bytes of address space in chunks of at most 512 per block, all mapped
 * (map) or none; NULL without a record when it cannot be had */
static void *vmm_alloc(Cuda *c, size_t req, int map) {
    if (refuse(c, "new address-stable memory")) return NULL;
    size_t g = c->gran, chunk = g * ((req + 512 * g - 1) / (512 * g));
    if (chunk < g) chunk = g;
    int64_t n = (int64_t)((req + chunk - 1) / chunk);
    Block b = {NULL, (size_t)n * chunk, 0, (Vmm *)calloc(1, sizeof(Vmm)), ++c->seq};
    if (!b.vm || !(b.vm->h = (CUmemGenericAllocationHandle *)calloc((size_t)n, sizeof *b.vm->h))) {
        free(b.vm);
        return NULL;
    }
    b.vm->chunk = chunk;
    b.vm->n = n;
    CUdeviceptr base = 0;
    if (c->drv.reserve(&base, b.bytes, 0, 0, 0) != CUDA_SUCCESS) {
        free(b.vm->h); free(b.vm);
        return NULL;
    }
    b.p = (void *)(uintptr_t)base;
    for (int64_t k = 0; map && k < n; k++) {
        if (vmm_map(c, &b, k, 1) == 0) continue;
        cache_release(c); /* as dalloc: the cache goes back to the driver, then one more try */
        if (vmm_map(c, &b, k, 1) == 0) continue;
        vmm_release(c, &b);
        return NULL;
    }
    if (live_insert(c, b)) {
        vmm_release(c, &b);
        return NULL;
    }
    return b.p;
}
/* the driver's entry points and the card's granularity; vmm_ok stays 0 when
 * anything is missing (old driver, no VMM support), and alloc never asks */
static void vmm_setup(Cuda *c) {
    const char *env = getenv("KRONA_CUDA_VMM"), *mn = getenv("KRONA_CUDA_VMM_MIN_MB");
    if (env && env[0] == '0') return;
    struct { const char *name; void **fp; } e[] = {
        {"cuMemAddressReserve", (void **)&c->drv.reserve}, {"cuMemAddressFree", (void **)&c->drv.addr_free},
        {"cuMemCreate", (void **)&c->drv.create}, {"cuMemRelease", (void **)&c->drv.release},
        {"cuMemMap", (void **)&c->drv.map}, {"cuMemUnmap", (void **)&c->drv.unmap},
        {"cuMemSetAccess", (void **)&c->drv.set_access},
        {"cuMemGetAllocationGranularity", (void **)&c->drv.granularity},
        {"cuDeviceGet", (void **)&c->drv.dev_get}, {"cuDeviceGetAttribute", (void **)&c->drv.dev_attr},
        {"cuGetErrorString", (void **)&c->drv.err_string}};
    for (size_t i = 0; i < sizeof e / sizeof e[0]; i++) {
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion(e[i].name, e[i].fp, 12000, cudaEnableDefault, &q) != cudaSuccess ||
            q != cudaDriverEntryPointSuccess || !*e[i].fp) {
            cudaGetLastError();
            return;
        }
    }
    CUdevice d = 0;
    int ok = 0;
    if (c->drv.dev_get(&d, c->dev) != CUDA_SUCCESS ||
        c->drv.dev_attr(&ok, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, d) != CUDA_SUCCESS || !ok)
        return;
    memset(&c->vprop, 0, sizeof c->vprop);
    c->vprop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    c->vprop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    c->vprop.location.id = d;
    if (c->drv.granularity(&c->gran, &c->vprop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS || !c->gran)
        return;
    c->vmm_min = (mn ? (size_t)strtoull(mn, NULL, 10) : 64) << 20;
    c->vmm_ok = 1;
}

/* ------------------------------------------------------------- utilities */

#define TPB 256
#ifndef GRID_CAP
#define GRID_CAP (65535 * 32)
#endif
static unsigned grid_1d(int64_t n) {
    int64_t b = (n + TPB - 1) / TPB;
    if (b > GRID_CAP) b = GRID_CAP; /* grid-stride loops cover the rest */
    return (unsigned)(b < 1 ? 1 : b);
}
/* grid rows (y) for kernels over planes; y may not pass 65535 */
#ifndef PLANE_CAP
#define PLANE_CAP (GRID_CAP < 65535 ? GRID_CAP : 65535)
#endif
/* grid-stride over x: a whole 1D kernel, or one plane of a plane kernel */
#define GSTRIDE(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (int64_t)blockDim.x * gridDim.x)
/* over the planes of a plane kernel (grid rows, plane_grid below) */
#define PLANES(pl, n) for (int64_t pl = blockIdx.y; pl < (n); pl += gridDim.y)

/* kernels over planes (an image's channel, a row of a matrix): one per grid
 * row, its elements along x; small planes take narrower blocks, not idle
 * threads; both dimensions grid-stride */
static dim3 plane_grid(int64_t per_plane, int64_t planes, int *tpb) {
    *tpb = per_plane >= TPB ? TPB : per_plane > 0 ? (int)((per_plane + 31) / 32 * 32) : 32;
    int64_t bx = (per_plane + *tpb - 1) / *tpb, by = planes;
    if (bx > GRID_CAP) bx = GRID_CAP;
    if (by > PLANE_CAP) by = PLANE_CAP;
    return dim3((unsigned)(bx < 1 ? 1 : bx), (unsigned)(by < 1 ? 1 : by));
}
/* kern over `planes` planes of `per` elements each (plane_grid) */
#define LAUNCH_PLANES(c, per, planes, kern, ...)                               \
    do {                                                                       \
        if ((per) <= 0 || (planes) <= 0) break;                                \
        int tpb_;                                                              \
        dim3 g_ = plane_grid((per), (planes), &tpb_);                          \
        kern<<<g_, tpb_, 0, (c)->stream>>>(__VA_ARGS__);                       \
        LAUNCHED(c);                                                           \
    } while (0)
#define LAUNCH1D(c, n, kern, ...)                                              \
    do {                                                                      \
        if ((n) > 0) {                                                        \
            kern<<<grid_1d(n), TPB, 0, (c)->stream>>>(__VA_ARGS__);          \
            LAUNCHED(c);                                                      \
        }                                                                     \
    } while (0)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* sum over the block (blockDim.x a multiple of 32, <= 1024); all threads get it */
__device__ float block_sum(float v) {
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* sh may still be read by a previous call */
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = (threadIdx.x < (unsigned)nw) ? sh[threadIdx.x] : 0.f;
    if (w == 0) v = warp_sum(v);
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    return sh[0];
}
__device__ float block_max(float v) {
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = (threadIdx.x < (unsigned)nw) ? sh[threadIdx.x] : -INFINITY;
    if (w == 0) v = warp_max(v);
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    return sh[0];
}

/* ------------------------------------------------------------ memory ops */

static void *cu_alloc(Backend *be, size_t bytes) {
    Cuda *c = CU(be);
    /* BF16 mode's large blocks keep their addresses when pages go back, so
     * frozen weights among them can shrink to bf16 (set_frozen) */
    void *p = c->prec == KRONA_PREC_BF16 && c->vmm_ok && bytes >= c->vmm_min ? vmm_alloc(c, bytes, 1) : NULL;
    size_t fill = p ? bytes : round_bytes(bytes);
    if (!p) p = dalloc(c, bytes);
    if (p && CK(c, cudaMemsetAsync(p, 0, fill, c->stream))) {
        dfree(c, p);
        return NULL;
    }
    return p;
}
/* ---- frozen weights (set_frozen) ----
 * Ranges the model promised not to write; in BF16 mode linear and conv2d take
 * their weights from a bf16 copy of the whole range instead of casting them at
 * every call (frozen_bf16, below). A range that starts an address-stable block
 * and names its GEMM weights (n_w) gets a compact copy instead, at the promise
 * in BF16 mode (else at first use): its weights' f32 pages go back as the copy
 * is written (frozen_compact). Host writes into a range drop it (and its copy)
 * after bringing the f32 back. */
static void frozen_expand(Cuda *c, Frozen *f);
static int frozen_compact(Cuda *c, Frozen *f);
/* env KRONA_CUDA_BF16_COPIES=0: frozen weights are cast at every call, no copy */
static int bf16_copies_allowed(void) {
    const char *env = getenv("KRONA_CUDA_BF16_COPIES");
    return !(env && env[0] == '0');
}
static void frozen_drop(Cuda *c, int i, int expand) {
    if (refuse(c, "a write to frozen weights")) return;
    if (expand && c->frozen[i].compact) frozen_expand(c, &c->frozen[i]);
    dfree(c, c->frozen[i].bf);
    c->frozen[i] = c->frozen[--c->n_frozen];
}
/* drop every range overlapping [p, p + bytes); expand 0 when p is being freed */
static void frozen_touch(Cuda *c, const void *p, size_t bytes, int expand) {
    const char *a = (const char *)p;
    for (int i = c->n_frozen; i-- > 0;) {
        const char *f = (const char *)c->frozen[i].p;
        if (a < f + c->frozen[i].n * (int64_t)sizeof(float) && f < a + bytes) frozen_drop(c, i, expand);
    }
}
/* the compact range whose bf16-only weights overlap [p, p + bytes), or NULL */
static Frozen *compacted(Cuda *c, const void *p, size_t bytes) {
    const char *a = (const char *)p;
    for (int i = 0; i < c->n_frozen; i++) {
        Frozen *f = &c->frozen[i];
        if (f->compact && a < (const char *)(f->p + f->nw) && (const char *)f->p < a + bytes) return f;
    }
    return NULL;
}
/* [p, p + bytes) whole floats inside f's bf16-only weights */
static int within_weights(const Frozen *f, const void *p, size_t bytes) {
    const char *a = (const char *)p, *w = (const char *)f->p;
    return a >= w && a + bytes <= (const char *)(f->p + f->nw) && (a - w) % sizeof(float) == 0 &&
           bytes % sizeof(float) == 0;
}
static size_t block_bytes(Cuda *c, const void *p) {
    Block *b = live_find(c, p);
    return b ? (b->vm ? b->bytes : b->req) : 0;
}
static void cu_set_frozen(Backend *be, const float *p, int64_t n, int64_t n_w) {
    Cuda *c = CU(be);
    if (n_w > n) n_w = n;
    if (n_w < 0) n_w = 0;
    for (int i = c->n_frozen; i-- > 0;)
        if (c->frozen[i].p == p) {
            if (c->frozen[i].n == n && c->frozen[i].nw == n_w) return; /* the same promise again: keep its copy */
            frozen_drop(c, i, 1);
        }
    if (n <= 0 || !p || refuse(c, "a new set_frozen promise")) return;
    if (c->n_frozen == (int)(sizeof c->frozen / sizeof c->frozen[0])) frozen_drop(c, 0, 1); /* oldest goes */
    Frozen f = {p, n, n_w, NULL, 0, 0};
    c->frozen[c->n_frozen++] = f;
    /* BF16 mode: the weights' f32 pages go back now, before the caller's next
     * allocations (a forward's activations), not at the first GEMM */
    Frozen *nf = &c->frozen[c->n_frozen - 1];
    if (c->prec == KRONA_PREC_BF16 && bf16_copies_allowed() && frozen_compact(c, nf) == 0) nf->tried = 1;
}
static void cu_free(Backend *be, void *p) {
    Cuda *c = CU(be);
    if (p && c->n_frozen) frozen_touch(c, p, block_bytes(c, p), 0);
    dfree(c, p);
}
static void cu_upload(Backend *be, void *dst, const void *src, size_t bytes) {
    Cuda *c = CU(be);
    if (!bytes || refuse(c, "upload")) return;
    if (c->n_frozen) frozen_touch(c, dst, bytes, 1);
    CK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    /* the caller may reuse src as soon as we return */
    CK(c, cudaStreamSynchronize(c->stream));
}
static int copy_from_compact(Cuda *c, float *dst, const void *src, size_t bytes);
static void cu_download(Backend *be, void *dst, const void *src, size_t bytes) {
    Cuda *c = CU(be);
    if (!bytes || refuse(c, "download")) return;
    float *tmp = NULL; /* bf16-only weights: widened on the device first */
    if (c->n_frozen && compacted(c, src, bytes) && (tmp = (float *)dalloc(c, bytes)) &&
        copy_from_compact(c, tmp, src, bytes) == 0)
        src = tmp;
    CK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    CK(c, cudaStreamSynchronize(c->stream));
    dfree(c, tmp);
}
static void cu_copy(Backend *be, void *dst, const void *src, size_t bytes) {
    Cuda *c = CU(be);
    if (!bytes || dst == src) return;
    if (c->n_frozen) frozen_touch(c, dst, bytes, 1);
    if (c->n_frozen && compacted(c, src, bytes) && copy_from_compact(c, (float *)dst, src, bytes) == 0) return;
    CK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
}
static void cu_zero(Backend *be, void *p, size_t bytes) {
    Cuda *c = CU(be);
    if (!bytes) return;
    if (c->n_frozen) frozen_touch(c, p, bytes, 1);
    CK(c, cudaMemsetAsync(p, 0, bytes, c->stream));
}
static void cu_sync(Backend *be) {
    Cuda *c = CU(be);
    if (refuse(c, "sync")) return;
    CK(c, cudaStreamSynchronize(c->stream));
}
static size_t cu_peak(Backend *be) { return CU(be)->peak_req; }

/* ------------------------------------------------------------------ gemm */

static cublasOperation_t OP(int t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

/* row-major C[M,N] = alpha op(A) op(B) + beta C, batched at element strides */
static void gemm_sb(Cuda *c, int tA, int tB, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, int64_t sA, const float *B, int64_t ldb,
                    int64_t sB, float beta, float *C, int64_t ldc, int64_t sC, int64_t batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    PROF_STAGE(c, "gemm");
    if (batch == 1)
        CB(c, cublasSgemm_64(c->blas, OP(tB), OP(tA), N, M, K, &alpha, B, ldb, A, lda, &beta,
                             C, ldc));
    else
        CB(c, cublasSgemmStridedBatched_64(c->blas, OP(tB), OP(tA), N, M, K, &alpha, B, ldb,
                                           sB, A, lda, sA, &beta, C, ldc, sC, batch));
}
static void gemm1(Cuda *c, int tA, int tB, int64_t M, int64_t N, int64_t K, float alpha,
                  const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                  float *C, int64_t ldc) {
    gemm_sb(c, tA, tB, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

/* ---- BF16 mode: linear and conv2d (backend.h) ----
 * Their GEMMs cast both operands to bf16 copies (round to nearest even, as
 * core/half.h) and let cuBLAS sum the exact products in fp32 on tensor cores.
 * The copies cover what the GEMM reads: batch strides, row strides and all. */
__global__ void to_bf16_k(const float *x, __nv_bfloat16 *y, int64_t n) {
    GSTRIDE(i, n) y[i] = __float2bfloat16_rn(x[i]);
}
/* elements a strided-batched operand spans: rows x cols at row stride ld, batch at s */
static int64_t operand_span(int64_t rows, int64_t cols, int64_t ld, int64_t s, int64_t batch) {
    return (s ? s * (batch - 1) : 0) + (rows - 1) * ld + cols;
}
static __nv_bfloat16 *bf16_copy(Cuda *c, const float *x, int64_t n) {
    __nv_bfloat16 *y = (__nv_bfloat16 *)dalloc(c, (size_t)n * sizeof(__nv_bfloat16));
    if (!y) return NULL;
    PROF_STAGE(c, "cast");
    to_bf16_k<<<grid_1d(n), TPB, 0, c->stream>>>(x, y, n);
    LAUNCHED(c);
    return y;
}
__global__ void from_bf16_k(const __nv_bfloat16 *x, float *y, int64_t n) {
    GSTRIDE(i, n) y[i] = __bfloat162float(x[i]);
}
/* The compact copy of a frozen range f (set_frozen's n_w; f->p starts an
 * address-stable block): the bf16 copy of all of f, written chunk by chunk of
 * the weights' block into a block whose chunks are mapped as they fill, each
 * f32 chunk wholly inside the first nw floats given back once copied. The
 * peak is the f32 block plus one chunk of the copy; after it the weights take
 * half. -1: not possible here (the caller then copies as before). */
static int frozen_compact(Cuda *c, Frozen *f) {
    Block *wb = live_find(c, f->p);
    if (f->nw <= 0 || !wb || !wb->vm) return -1;
    __nv_bfloat16 *bf = (__nv_bfloat16 *)vmm_alloc(c, (size_t)f->n * sizeof(__nv_bfloat16), 0);
    if (!bf) return -1;
    wb = live_find(c, f->p); /* the insert may have moved the table */
    Block *cb = live_find(c, bf);
    Vmm *wv = wb->vm, *cv = cb->vm;
    const char *base = (const char *)wb->p, *wend = (const char *)(f->p + f->nw);
    f->bf = bf;
    f->compact = 1; /* from here on, what is given back can be brought back (frozen_expand) */
    for (int64_t k = 0; k < wv->n; k++) {
        const float *lo = (const float *)(base + k * wv->chunk), *hi = (const float *)(base + (k + 1) * wv->chunk);
        if (lo < f->p) lo = f->p;
        if (hi > f->p + f->n) hi = f->p + f->n;
        if (lo >= hi) continue;
        int64_t j0 = (int64_t)((lo - f->p) * sizeof(__nv_bfloat16) / cv->chunk);
        int64_t j1 = (int64_t)(((hi - f->p) * sizeof(__nv_bfloat16) - 1) / cv->chunk);
        for (int64_t j = j0; j <= j1; j++)
            if (vmm_map(c, cb, j, 1)) goto undo;
        to_bf16_k<<<grid_1d(hi - lo), TPB, 0, c->stream>>>(lo, bf + (lo - f->p), hi - lo);
        if (LAUNCHED(c)) goto undo;
        if (base + (k + 1) * wv->chunk <= wend) vmm_unmap(c, wb, k);
    }
    return 0;
undo: /* no room for the next chunk of the copy: what went back comes back */
    frozen_expand(c, f);
    dfree(c, bf);
    f->bf = NULL;
    return -1;
}
/* f's weights in f32 again (each chunk given back: mapped, filled from the
 * bf16 copy, so the values the GEMMs used); the copy stays valid */
static void frozen_expand(Cuda *c, Frozen *f) {
    if (refuse(c, "frozen weights back in f32")) return;
    Block *wb = live_find(c, f->p);
    f->compact = 0;
    if (!wb || !wb->vm) return;
    for (int64_t k = 0; k < wb->vm->n; k++) {
        if (wb->vm->h[k]) continue;
        if (vmm_map(c, wb, k, 0)) return;
        const float *lo = (const float *)((const char *)wb->p + k * wb->vm->chunk);
        int64_t n = (int64_t)(wb->vm->chunk / sizeof(float));
        if (lo + n > f->p + f->n) n = f->p + f->n - lo;
        if (n > 0) {
            from_bf16_k<<<grid_1d(n), TPB, 0, c->stream>>>(f->bf + (lo - f->p), (float *)lo, n);
            LAUNCHED(c);
        }
    }
}
/* before a read of [p, p + bytes) the promise does not cover (a generic
 * gemm's operand, a copy across a range's edge): f32 back in every compact
 * range it overlaps */
static void unshrink(Cuda *c, const void *p, size_t bytes) {
    if (!c->n_frozen || !bytes) return;
    for (Frozen *f = compacted(c, p, bytes); f; f = compacted(c, p, bytes)) frozen_expand(c, f);
}
/* dst = src as the model would read it when src lies in a compact range's
 * weights: their bf16 values, widened (0). Anything else overlapping them
 * brings the f32 back first (-1: copy src as it is now). */
static int copy_from_compact(Cuda *c, float *dst, const void *src, size_t bytes) {
    Frozen *f = compacted(c, src, bytes);
    if (f && within_weights(f, src, bytes)) {
        int64_t n = (int64_t)(bytes / sizeof(float));
        from_bf16_k<<<grid_1d(n), TPB, 0, c->stream>>>(f->bf + ((const float *)src - f->p), dst, n);
        LAUNCHED(c);
        return 0;
    }
    unshrink(c, src, bytes);
    return -1;
}
/* x[0..n) inside a frozen range: its place in the range's bf16 copy, made on
 * first use: compact when the range allows (frozen_compact), else when it
 * fits in a quarter of the free memory (env KRONA_CUDA_BF16_COPIES=0:
 * neither); NULL: cast at the call instead */
static const __nv_bfloat16 *frozen_bf16(Cuda *c, const float *x, int64_t n) {
    for (int i = 0; i < c->n_frozen; i++) {
        Frozen *f = &c->frozen[i];
        if (x < f->p || x + n > f->p + f->n) continue;
        if (!f->bf && !f->tried) {
            if (refuse(c, "the first bf16 copy of frozen weights")) return NULL;
            f->tried = 1;
            size_t fr = 0, total = 0, want = (size_t)f->n * sizeof(__nv_bfloat16);
            if (bf16_copies_allowed() && frozen_compact(c, f) != 0) {
                if (cudaMemGetInfo(&fr, &total) != cudaSuccess) { cudaGetLastError(); fr = 0; }
                if (want <= fr / 4) f->bf = bf16_copy(c, f->p, f->n);
            }
        }
        return f->bf ? f->bf + (x - f->p) : NULL;
    }
    return NULL;
}
/* gemm_sb for the big ops: bf16 operands in BF16 mode, else as gemm_sb. In
 * BF16 mode an operand may come already in bf16 (Abf / Bbf, e.g. im2col's
 * columns); else it is taken from a frozen range's copy, or cast here. */
static void gemm_op_sbx(Cuda *c, int tA, int tB, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *A, const __nv_bfloat16 *Abf, int64_t lda, int64_t sA,
                        const float *B, const __nv_bfloat16 *Bbf, int64_t ldb, int64_t sB, float beta,
                        float *C, int64_t ldc, int64_t sC, int64_t batch) {
    if (c->prec != KRONA_PREC_BF16 || K <= 0) {
        gemm_sb(c, tA, tB, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch);
        return;
    }
    if (M <= 0 || N <= 0 || batch <= 0) return;
    int64_t na = operand_span(tA ? K : M, tA ? M : K, lda, sA, batch);
    int64_t nb = operand_span(tB ? N : K, tB ? K : N, ldb, sB, batch);
    const __nv_bfloat16 *fa = Abf ? Abf : frozen_bf16(c, A, na), *fb = Bbf ? Bbf : frozen_bf16(c, B, nb);
    __nv_bfloat16 *a = fa ? NULL : bf16_copy(c, A, na);
    __nv_bfloat16 *b = fb || (!fa && !a) ? NULL : bf16_copy(c, B, nb);
    if ((fa || a) && (fb || b)) {
        PROF_STAGE(c, "gemm");
        CB(c, cublasGemmStridedBatchedEx_64(c->blas, OP(tB), OP(tA), N, M, K, &alpha, fb ? fb : b,
                                            CUDA_R_16BF, ldb, sB, fa ? fa : a, CUDA_R_16BF, lda, sA,
                                            &beta, C, CUDA_R_32F, ldc, sC, batch, CUBLAS_COMPUTE_32F,
                                            CUBLAS_GEMM_DEFAULT));
    }
    dfree(c, b);
    dfree(c, a);
}
static void gemm_op_sb(Cuda *c, int tA, int tB, int64_t M, int64_t N, int64_t K, float alpha,
                       const float *A, int64_t lda, int64_t sA, const float *B, int64_t ldb,
                       int64_t sB, float beta, float *C, int64_t ldc, int64_t sC, int64_t batch) {
    gemm_op_sbx(c, tA, tB, M, N, K, alpha, A, NULL, lda, sA, B, NULL, ldb, sB, beta, C, ldc, sC, batch);
}
static void gemm_op(Cuda *c, int tA, int tB, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                    int64_t ldc) {
    gemm_op_sb(c, tA, tB, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

static void cu_gemm(Backend *be, int transA, int transB, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc) {
    Cuda *c = CU(be);
    if (c->n_frozen && M > 0 && N > 0 && K > 0) {
        unshrink(c, A, (size_t)operand_span(transA ? K : M, transA ? M : K, lda, 0, 1) * sizeof(float));
        unshrink(c, B, (size_t)operand_span(transB ? N : K, transB ? K : N, ldb, 0, 1) * sizeof(float));
    }
    gemm1(c, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static void cu_gemm_batched(Backend *be, int transA, int transB, int M, int N, int K,
                            float alpha, const float *A, int lda, int64_t sA, const float *B,
                            int ldb, int64_t sB, float beta, float *C, int ldc, int64_t sC,
                            int batch) {
    Cuda *c = CU(be);
    if (c->n_frozen && M > 0 && N > 0 && K > 0 && batch > 0) {
        unshrink(c, A, (size_t)operand_span(transA ? K : M, transA ? M : K, lda, sA, batch) * sizeof(float));
        unshrink(c, B, (size_t)operand_span(transB ? N : K, transB ? K : N, ldb, sB, batch) * sizeof(float));
    }
    gemm_sb(c, transA, transB, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch);
}

/* ------------------------------------------------------------ reductions */

/* part[py][c] = sum of X[m][c] over the rows m of slice py (X is [M,C]) */
__global__ void colsum_partial_k(const float *X, int64_t M, int C, float *part) {
    __shared__ float sh[8][33];
    int cidx = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.f;
    if (cidx < C)
        for (int64_t m = (int64_t)blockIdx.y * 8 + threadIdx.y; m < M; m += 8 * (int64_t)gridDim.y)
            acc += X[m * C + cidx];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && cidx < C) {
        float s = 0.f;
        for (int r = 0; r < 8; r++) s += sh[r][threadIdx.x];
        part[(int64_t)blockIdx.y * C + cidx] = s;
    }
}
/* out[c] += scale * sum_p part[p][c] (fixed order: deterministic) */
/* the sum of column j of part[P][C], slices in order: one summation order for
 * every partial sum, so the results do not depend on how launches are grouped */
__device__ __forceinline__ float partial_sum(const float *part, int P, int C, int64_t j) {
    float s = 0.f;
    for (int p = 0; p < P; p++) s += part[(int64_t)p * C + j];
    return s;
}
__global__ void partial_final_k(const float *part, int P, int C, float *out, float scale) {
    GSTRIDE(i, C) out[i] += scale * partial_sum(part, P, C, i);
}
/* two partial_final_k in one launch (one launch fewer per call: a step is
 * launch-bound on small models): o1[0..C1) from p1, o2[0..C2) from p2 */
__global__ void partial_final2_k(const float *p1, int C1, float *o1, const float *p2, int C2, float *o2,
                                 int P, float scale) {
    GSTRIDE(i, (int64_t)C1 + C2) {
        if (i < C1) o1[i] += scale * partial_sum(p1, P, C1, i);
        else o2[i - C1] += scale * partial_sum(p2, P, C2, i - C1);
    }
}
static int col_slices(int64_t M) {
    int64_t p = (M + 63) / 64;
    return (int)(p < 1 ? 1 : (p > 512 ? 512 : p));
}
/* out[c] += scale * sum_m X[m][c] */
static void colsum_accum(Cuda *c, const float *X, int64_t M, int C, float *out, float scale) {
    if (M <= 0 || C <= 0) return;
    int P = col_slices(M);
    float *part = (float *)dalloc(c, (size_t)P * C * sizeof(float));
    if (!part) return;
    dim3 g((C + 31) / 32, P), b(32, 8);
    colsum_partial_k<<<g, b, 0, c->stream>>>(X, M, C, part);
    LAUNCHED(c);
    partial_final_k<<<grid_1d(C), TPB, 0, c->stream>>>(part, P, C, out, scale);
    LAUNCHED(c);
    dfree(c, part);
}

/* X[N,C,HW]: per_n ? out[n*C+c] += sum_hw : out[c] += sum_{n,hw}; block per output */
__global__ void chan_sum_k(const float *X, int N, int C, int64_t HW, float *out, int per_n) {
    int cidx = blockIdx.x;
    int n0 = per_n ? blockIdx.y : 0, n1 = per_n ? n0 + 1 : N;
    float acc = 0.f;
    for (int n = n0; n < n1; n++) {
        const float *row = X + ((int64_t)n * C + cidx) * HW;
        for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) acc += row[i];
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[per_n ? (int64_t)n0 * C + cidx : cidx] += acc;
}

/* --------------------------------------------------------------- linear */

__global__ void fill_rows_k(float *y, const float *b, int64_t M, int out) {
    GSTRIDE(i, M * out) y[i] = b[i % out];
}

static void cu_linear_fwd(Backend *be, const float *x, const float *W, const float *b,
                          float *y, int64_t M, int in, int out) {
    Cuda *c = CU(be);
    if (M <= 0 || out <= 0) return;
    if (b) {
        fill_rows_k<<<grid_1d(M * out), TPB, 0, c->stream>>>(y, b, M, out);
        LAUNCHED(c);
    }
    gemm_op(c, 0, 1, M, out, in, 1.f, x, in, W, in, b ? 1.f : 0.f, y, out);
}
static void cu_linear_bwd(Backend *be, const float *dy, const float *x, const float *W,
                          float *dx, float *dW, float *db, int64_t M, int in, int out) {
    Cuda *c = CU(be);
    if (M <= 0) return;
    /* BF16 mode with both products (all weights training): dy cast once for both */
    __nv_bfloat16 *dyb = dx && dW && c->prec == KRONA_PREC_BF16 && M * out > 0 ? bf16_copy(c, dy, M * out) : NULL;
    if (dx) gemm_op_sbx(c, 0, 0, M, in, out, 1.f, dy, dyb, out, 0, W, NULL, in, 0, 1.f, dx, in, 0, 1);
    if (dW) gemm_op_sbx(c, 1, 0, out, in, M, 1.f, dy, dyb, out, 0, x, NULL, in, 0, 1.f, dW, in, 0, 1);
    dfree(c, dyb);
    if (db) colsum_accum(c, dy, M, out, db, 1.f);
}

/* ---------------------------------------------------------- convolution */

/* col[b][ci*k*k + kh*k + kw][oh*Wo + ow] = x[b][ci][oh*s-p+kh][ow*s-p+kw] (0 outside);
 * T = float, or __nv_bfloat16 for BF16 mode's GEMMs (half the bytes, no cast pass) */
static __device__ __forceinline__ void put(float *d, float v) { *d = v; }
static __device__ __forceinline__ void put(__nv_bfloat16 *d, float v) { *d = __float2bfloat16_rn(v); }
/* Both kernels run over planes, one (image, channel) pair per grid row (y),
 * that plane's pixels along x; both dimensions grid-stride (plane_grid). Index
 * math stays 32-bit within a plane (a plane is under 2^31 elements), so a
 * thread divides twice per pixel, not nine times in 64 bits per element. */
template <class T>
__global__ void im2col_k(const float *x, T *col, int nb, int Cin, int H, int W, int k,
                         int s, int p, int Ho, int Wo) {
    int HoWo = Ho * Wo, kk = k * k;
    PLANES(pl, (int64_t)nb * Cin) {
        const float *xp = x + pl * H * W;      /* pl = b*Cin + ci */
        T *cp = col + pl * kk * HoWo;          /* its k*k rows of columns */
        for (int o = blockIdx.x * blockDim.x + threadIdx.x; o < HoWo; o += blockDim.x * gridDim.x) {
            int oh = o / Wo, ow = o - oh * Wo;
            int ih0 = oh * s - p, iw0 = ow * s - p;
            for (int kh = 0; kh < k; kh++) {
                int ih = ih0 + kh;
                int in_row = ih >= 0 && ih < H;
                for (int kw = 0; kw < k; kw++) {
                    int iw = iw0 + kw;
                    float v = in_row && iw >= 0 && iw < W ? xp[(int64_t)ih * W + iw] : 0.f;
                    put(cp + (int64_t)(kh * k + kw) * HoWo + o, v);
                }
            }
        }
    }
}
/* dx[b][ci][ih][iw] += sum over (kh,kw) of col[b][ci,kh,kw][oh,ow] with oh*s-p+kh == ih */
__global__ void col2im_acc_k(const float *col, float *dx, int nb, int Cin, int H, int W, int k,
                             int s, int p, int Ho, int Wo) {
    int HW = H * W, HoWo = Ho * Wo, kk = k * k;
    PLANES(pl, (int64_t)nb * Cin) {
        const float *cp = col + pl * kk * HoWo;
        float *dp = dx + pl * HW;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += blockDim.x * gridDim.x) {
            int ih = i / W, iw = i - ih * W;
            float acc = 0.f;
            for (int kh = 0; kh < k; kh++) {
                int th = ih + p - kh;
                if (th < 0) continue;
                int oh = th / s;
                if (oh * s != th || oh >= Ho) continue;
                for (int kw = 0; kw < k; kw++) {
                    int tw = iw + p - kw;
                    if (tw < 0) continue;
                    int ow = tw / s;
                    if (ow * s != tw || ow >= Wo) continue;
                    acc += cp[(int64_t)(kh * k + kw) * HoWo + oh * Wo + ow];
                }
            }
            dp[i] += acc;
        }
    }
}
/* the columns of m images x into col: bf16 in BF16 mode (bf), else f32 */
static void im2col(Cuda *c, const float *x, void *col, int bf, int m, int Cin, int H, int W, int k, int s,
                   int p, int Ho, int Wo) {
    PROF_STAGE(c, "im2col");
    if (bf) LAUNCH_PLANES(c, (int64_t)Ho * Wo, (int64_t)m * Cin, im2col_k<__nv_bfloat16>, x, (__nv_bfloat16 *)col, m,
                          Cin, H, W, k, s, p, Ho, Wo);
    else LAUNCH_PLANES(c, (int64_t)Ho * Wo, (int64_t)m * Cin, im2col_k<float>, x, (float *)col, m, Cin, H, W, k, s,
                       p, Ho, Wo);
}
/* y[n][c][hw] += b[c], a plane (n, c) per grid row */
__global__ void add_bias_nchw_k(float *y, const float *b, int C, int64_t HW, int64_t planes) {
    PLANES(pl, planes) {
        float v = b[pl % C], *yp = y + pl * HW;
        GSTRIDE(i, HW) yp[i] += v;
    }
}

/* im2col workspace: images per chunk so it stays under this (at least one image) */
#ifndef CONV_WS_BYTES /* the emulator shrinks these to exercise the chunked paths */
#define CONV_WS_BYTES ((size_t)512 << 20)
#endif

static int conv_chunk(int64_t per_image_floats, int N) {
    int64_t nb = (int64_t)(CONV_WS_BYTES / sizeof(float)) / (per_image_floats > 0 ? per_image_floats : 1);
    if (nb < 1) nb = 1;
    if (nb > N) nb = N;
    return (int)nb;
}

/* dw[Cout,K] += sum_i dy_i[Cout,P] x_i[K,P]^T over m images (dy_i = dy + i*sdy,
 * x_i = x + i*sx): one strided-batched GEMM per group of images into a workspace,
 * then a fixed-order sum, instead of one GEMM launch per image (pretraining the
 * tiny model at batch 128 made 128 launches per convolution). */
/* x: fp32, or (BF16 mode) xbf, the same values already in bf16 */
/* dybf: dy already in bf16 (BF16 mode), or NULL */
static void conv_dw_accumulate(Cuda *c, const float *dy, const __nv_bfloat16 *dybf, int64_t sdy, const float *x,
                               const __nv_bfloat16 *xbf, int64_t sx, int m, int Cout, int64_t K,
                               int64_t P, float *dw) {
    int q = conv_chunk((int64_t)Cout * K, m);
    float *ws = q > 1 ? (float *)dalloc(c, (size_t)q * Cout * K * sizeof(float)) : NULL;
    if (q > 1 && !ws) return; /* the error is recorded, as for every workspace */
    for (int i0 = 0; i0 < m; i0 += q) {
        int g = m - i0 < q ? m - i0 : q;
        const float *xi = x ? x + i0 * sx : NULL;
        const __nv_bfloat16 *xbi = xbf ? xbf + i0 * sx : NULL;
        if (g == 1) {
            gemm_op_sbx(c, 0, 1, Cout, K, P, 1.f, dy + i0 * sdy, dybf ? dybf + i0 * sdy : NULL, P, 0, xi, xbi, P, 0,
                        1.f, dw, K, 0, 1);
            continue;
        }
        gemm_op_sbx(c, 0, 1, Cout, K, P, 1.f, dy + i0 * sdy, dybf ? dybf + i0 * sdy : NULL, P, sdy, xi, xbi, P, sx,
                    0.f, ws, K,
                    (int64_t)Cout * K, g);
        PROF_STAGE(c, "dw sum");
        partial_final_k<<<grid_1d((int64_t)Cout * K), TPB, 0, c->stream>>>(ws, g, (int)((int64_t)Cout * K), dw, 1.f);
        LAUNCHED(c);
    }
    dfree(c, ws);
}

/* ---- cuDNN's convolutions (env KRONA_CUDA_CONV=cudnn) ----
 * im2col writes k*k copies of the input (9 for a 3x3 kernel) and the GEMM reads
 * them back; dx goes through a column buffer as large. At SD sizes that traffic
 * rivals the GEMM itself. cuDNN's implicit-GEMM convolutions read the images in
 * place. libcudnn.so.9 is opened at run time: the plugin needs it only when
 * asked for it and runs the same without it (im2col).
 * - Only deterministic algorithms: replays and resumed runs repeat bit for bit.
 * - fp32: FMA kernels of the GEMM kind only (FFT and Winograd round
 *   differently); tf32: also TF32 tensor cores; never a conversion to fp16.
 * - bf16: cuDNN's bf16 convolutions read and write bf16 (it has no fp32 output
 *   there), so y and dx are rounded to bf16 once, as autocast's are. dw keeps
 *   im2col's fp32 sum (pretraining's weight gradients).
 * - A shape cuDNN refuses, or an algorithm that fails, falls back to im2col
 *   (device_name counts them). */
enum { DNN_FWD, DNN_DX, DNN_DW };
#if HAVE_CUDNN
#define DNN_FNS(X)                                                                                            \
    X(GetVersion) X(GetErrorString) X(Create) X(Destroy) X(SetStream) X(CreateTensorDescriptor)               \
    X(SetTensor4dDescriptor) X(DestroyTensorDescriptor) X(CreateFilterDescriptor) X(SetFilter4dDescriptor)    \
    X(DestroyFilterDescriptor) X(CreateConvolutionDescriptor) X(SetConvolution2dDescriptor)                   \
    X(SetConvolutionMathType) X(DestroyConvolutionDescriptor) X(GetConvolutionForwardAlgorithm_v7)            \
    X(GetConvolutionBackwardDataAlgorithm_v7) X(GetConvolutionBackwardFilterAlgorithm_v7)                     \
    X(ConvolutionForward) X(ConvolutionBackwardData) X(ConvolutionBackwardFilter)

/* one convolution shape in one precision: its descriptors and, per direction,
 * the algorithm (chosen at first use), its math and workspace */
typedef struct {
    int key[9]; /* N, Cin, H, W, Cout, k, s, p, precision */
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    int algo[3];              /* -2: not chosen yet; -1: none usable (im2col) */
    cudnnMathType_t math[3];
    size_t ws[3];
} DnnPlan;

#define DNN_PLANS 128
typedef struct Dnn {
    void *lib;
    cudnnHandle_t h;
#define DNN_FIELD(f) decltype(&cudnn##f) f;
    DNN_FNS(DNN_FIELD)
#undef DNN_FIELD
    DnnPlan plan[DNN_PLANS];
    int nplan, next;  /* plans made; the slot a new shape takes when all are */
    long refused;     /* shapes or directions that fell back to im2col */
    char first[160];  /* the first of them, and why */
} Dnn;

static const char *const dnn_dir_name[3] = {"forward", "dx", "dw"};
/* a shape (dir < 0) or one direction of it goes to im2col: counted, the first named */
static void dnn_refuse(Dnn *d, const int *key, int dir, const char *why) {
    if (!d->refused++)
        snprintf(d->first, sizeof d->first, "%dx%d s%d p%d %d->%d at %dx%d N=%d %s%s%s: %s", key[5], key[5], key[6],
                 key[7], key[1], key[4], key[2], key[3], key[0], key[8] == KRONA_PREC_BF16 ? "bf16" : key[8] == KRONA_PREC_TF32 ? "tf32" : "fp32", dir < 0 ? "" : " ",
                 dir < 0 ? "" : dnn_dir_name[dir], why);
}

static void dnn_plan_clear(Dnn *d, DnnPlan *p) {
    if (p->x) d->DestroyTensorDescriptor(p->x);
    if (p->y) d->DestroyTensorDescriptor(p->y);
    if (p->w) d->DestroyFilterDescriptor(p->w);
    if (p->conv) d->DestroyConvolutionDescriptor(p->conv);
    memset(p, 0, sizeof *p);
}
static void dnn_free(Dnn *d) {
    if (!d) return;
    for (int i = 0; i < d->nplan; i++) dnn_plan_clear(d, &d->plan[i]);
    if (d->h) d->Destroy(d->h);
    if (d->lib) dlclose(d->lib);
    free(d);
}
/* at create: env KRONA_CUDA_CONV=cudnn opens cuDNN 9 on our stream; the note
 * says what convolutions run (device_name) */
static void dnn_setup(Cuda *c) {
    const char *env = getenv("KRONA_CUDA_CONV");
    if (!env || strcmp(env, "cudnn")) return;
    Dnn *d = (Dnn *)calloc(1, sizeof *d);
    const char *missing = NULL;
    if (d && !(d->lib = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL))) {
        const char *e = dlerror();
        snprintf(c->conv_note, sizeof c->conv_note, "im2col: cuDNN 9 not found (%.100s)", e ? e : "libcudnn.so.9");
        free(d);
        return;
    }
#define DNN_LOAD(f) if (d && !missing && !(d->f = (decltype(d->f))dlsym(d->lib, "cudnn" #f))) missing = "cudnn" #f;
    DNN_FNS(DNN_LOAD)
#undef DNN_LOAD
    size_t v = d && !missing ? d->GetVersion() : 0;
    if (!d || missing || v < 90000 || v >= 100000 || d->Create(&d->h) != CUDNN_STATUS_SUCCESS ||
        d->SetStream(d->h, c->stream) != CUDNN_STATUS_SUCCESS) {
        snprintf(c->conv_note, sizeof c->conv_note, "im2col: cuDNN unusable (%s)",
                 !d ? "out of memory" : missing ? missing : v < 90000 || v >= 100000 ? "not version 9" : "cudnnCreate failed");
        dnn_free(d);
        return;
    }
    c->dnn = d;
    snprintf(c->conv_note, sizeof c->conv_note, "cuDNN %zu.%zu.%zu", v / 10000, v / 100 % 100, v % 100);
}

/* the math each mode asks of cuDNN: exact fp32 FMA kernels, TF32 allowed, or
 * bf16 tensor cores (never CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION: fp16 copies) */
static cudnnMathType_t dnn_math(int prec) {
    return prec == KRONA_PREC_FP32 ? CUDNN_FMA_MATH : prec == KRONA_PREC_TF32 ? CUDNN_DEFAULT_MATH : CUDNN_TENSOR_OP_MATH;
}
static cudnnDataType_t dnn_type(int prec) { return prec == KRONA_PREC_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT; }

/* the plan of this shape in the mode in force, made at first sight; NULL:
 * im2col (no cuDNN, a tensor too large for its int sizes, or refused) */
static DnnPlan *dnn_plan(Cuda *c, int N, int Cin, int H, int W, int Cout, int k, int s, int p) {
    Dnn *d = c->dnn;
    if (!d) return NULL;
    int key[9] = {N, Cin, H, W, Cout, k, s, p, c->prec};
    for (int i = 0; i < d->nplan; i++)
        if (!memcmp(d->plan[i].key, key, sizeof key)) return d->plan[i].conv ? &d->plan[i] : NULL;
    int Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    DnnPlan *pl;
    if (d->nplan < DNN_PLANS) pl = &d->plan[d->nplan++];
    else { /* all taken: the oldest goes (descriptors are host objects: no recording holds them) */
        pl = &d->plan[d->next];
        d->next = (d->next + 1) % DNN_PLANS;
    }
    dnn_plan_clear(d, pl);
    memcpy(pl->key, key, sizeof key);
    for (int i = 0; i < 3; i++) pl->algo[i] = -2;
    cudnnDataType_t t = dnn_type(c->prec);
    int fits = (int64_t)N * Cin * H * W < INT32_MAX && (int64_t)N * Cout * Ho * Wo < INT32_MAX;
    if (!fits || d->CreateTensorDescriptor(&pl->x) || d->CreateTensorDescriptor(&pl->y) ||
        d->CreateFilterDescriptor(&pl->w) || d->CreateConvolutionDescriptor(&pl->conv) ||
        d->SetTensor4dDescriptor(pl->x, CUDNN_TENSOR_NCHW, t, N, Cin, H, W) ||
        d->SetTensor4dDescriptor(pl->y, CUDNN_TENSOR_NCHW, t, N, Cout, Ho, Wo) ||
        d->SetFilter4dDescriptor(pl->w, t, CUDNN_TENSOR_NCHW, Cout, Cin, k, k) ||
        d->SetConvolution2dDescriptor(pl->conv, p, p, s, s, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT) ||
        d->SetConvolutionMathType(pl->conv, dnn_math(c->prec))) { /* the heuristics' hint */
        dnn_plan_clear(d, pl); /* the key stays: this shape is im2col's */
        memcpy(pl->key, key, sizeof key);
        dnn_refuse(d, key, -1, fits ? "descriptors refused" : "over 2^31 elements");
        return NULL;
    }
    return pl;
}
/* the first (fastest by cuDNN's heuristics) usable algorithm of a _v7 list:
 * deterministic, workspace within CONV_WS_BYTES, no conversion to fp16; in
 * fp32 no FFT or Winograd, and run with FMA math (an entry listed with FMA
 * math first, else the first usable one with FMA forced: cuDNN refuses the
 * call if it cannot, and the direction goes to im2col) */
template <class Perf>
static void dnn_pick(Cuda *c, DnnPlan *pl, int dir, const Perf *r, int n, int (*fft_or_wino)(int)) {
    int fp32 = c->prec == KRONA_PREC_FP32, first = -1;
    pl->algo[dir] = -1;
    for (int i = 0; i < n; i++) {
        if (r[i].status != CUDNN_STATUS_SUCCESS || r[i].determinism != CUDNN_DETERMINISTIC ||
            r[i].memory > CONV_WS_BYTES || r[i].mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION ||
            (fp32 && fft_or_wino((int)r[i].algo)))
            continue;
        if (first < 0) first = i;
        if (!fp32 || r[i].mathType == CUDNN_FMA_MATH) {
            first = i;
            break;
        }
    }
    if (first < 0) {
        dnn_refuse(c->dnn, pl->key, dir, "no deterministic algorithm of this precision fits the workspace");
        return;
    }
    pl->algo[dir] = (int)r[first].algo;
    pl->math[dir] = fp32 ? CUDNN_FMA_MATH : r[first].mathType;
    pl->ws[dir] = r[first].memory;
}
static int fwd_fft_wino(int a) {
    return a == CUDNN_CONVOLUTION_FWD_ALGO_FFT || a == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
           a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD || a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
}
static int dx_fft_wino(int a) {
    return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING ||
           a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
}
static int dw_fft_wino(int a) {
    return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING ||
           a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
}
/* the plan, with an algorithm for direction dir (chosen now if need be), or NULL */
static DnnPlan *dnn_ready(Cuda *c, int dir, int N, int Cin, int H, int W, int Cout, int k, int s, int p) {
    DnnPlan *pl = dnn_plan(c, N, Cin, H, W, Cout, k, s, p);
    if (!pl) return NULL;
    if (pl->algo[dir] == -2) {
        Dnn *d = c->dnn;
        int n = 0;
        cudnnStatus_t st;
        /* the heuristics' list (host only: no trial runs, nothing queued) */
        if (dir == DNN_FWD) {
            cudnnConvolutionFwdAlgoPerf_t r[16];
            st = d->GetConvolutionForwardAlgorithm_v7(d->h, pl->x, pl->w, pl->conv, pl->y, 16, &n, r);
            if (st == CUDNN_STATUS_SUCCESS) dnn_pick(c, pl, dir, r, n, fwd_fft_wino);
        } else if (dir == DNN_DX) {
            cudnnConvolutionBwdDataAlgoPerf_t r[16];
            st = d->GetConvolutionBackwardDataAlgorithm_v7(d->h, pl->w, pl->y, pl->conv, pl->x, 16, &n, r);
            if (st == CUDNN_STATUS_SUCCESS) dnn_pick(c, pl, dir, r, n, dx_fft_wino);
        } else {
            cudnnConvolutionBwdFilterAlgoPerf_t r[16];
            st = d->GetConvolutionBackwardFilterAlgorithm_v7(d->h, pl->x, pl->y, pl->conv, pl->w, 16, &n, r);
            if (st == CUDNN_STATUS_SUCCESS) dnn_pick(c, pl, dir, r, n, dw_fft_wino);
        }
        if (st != CUDNN_STATUS_SUCCESS) {
            pl->algo[dir] = -1;
            dnn_refuse(d, pl->key, dir, d->GetErrorString(st));
        }
    }
    return pl->algo[dir] >= 0 ? pl : NULL;
}
/* run direction dir of plan pl: 0, or -1 when cuDNN failed (the direction
 * falls back to im2col from now on, and this call too: nothing was written
 * that the caller's im2col pass does not overwrite or has not yet added to) */
static int dnn_run(Cuda *c, DnnPlan *pl, int dir, const void *x, const void *w, const void *y, void *out,
                   float beta) {
    Dnn *d = c->dnn;
    void *ws = pl->ws[dir] ? dalloc(c, pl->ws[dir]) : NULL;
    if (pl->ws[dir] && !ws) return 0; /* the error is recorded, as for every workspace */
    float one = 1.f;
    cudnnStatus_t st = d->SetConvolutionMathType(pl->conv, pl->math[dir]);
    if (st == CUDNN_STATUS_SUCCESS) {
        PROF_STAGE(c, "cudnn");
        if (dir == DNN_FWD)
            st = d->ConvolutionForward(d->h, &one, pl->x, x, pl->w, w, pl->conv,
                                       (cudnnConvolutionFwdAlgo_t)pl->algo[dir], ws, pl->ws[dir], &beta, pl->y, out);
        else if (dir == DNN_DX)
            st = d->ConvolutionBackwardData(d->h, &one, pl->w, w, pl->y, y, pl->conv,
                                            (cudnnConvolutionBwdDataAlgo_t)pl->algo[dir], ws, pl->ws[dir], &beta,
                                            pl->x, out);
        else
            st = d->ConvolutionBackwardFilter(d->h, &one, pl->x, x, pl->y, y, pl->conv,
                                              (cudnnConvolutionBwdFilterAlgo_t)pl->algo[dir], ws, pl->ws[dir],
                                              &beta, pl->w, out);
    }
    dfree(c, ws);
    if (st == CUDNN_STATUS_SUCCESS) return 0;
    pl->algo[dir] = -1;
    dnn_refuse(d, pl->key, dir, d->GetErrorString(st));
    return -1;
}
#else
typedef struct Dnn { int unused; } Dnn;
typedef struct DnnPlan { int unused; } DnnPlan;
static void dnn_free(Dnn *) {}
static void dnn_setup(Cuda *c) {
    const char *env = getenv("KRONA_CUDA_CONV");
    if (env && !strcmp(env, "cudnn")) snprintf(c->conv_note, sizeof c->conv_note, "im2col: built without cuDNN's header");
}
static DnnPlan *dnn_ready(Cuda *, int, int, int, int, int, int, int, int, int) { return NULL; }
static int dnn_run(Cuda *, DnnPlan *, int, const void *, const void *, const void *, void *, float) { return -1; }
#endif

/* device_name: the card, and which convolutions run when cuDNN's were asked for */
static const char *conv_describe(Cuda *c) {
    if (!c->conv_note[0]) return c->dev_name;
#if HAVE_CUDNN
    if (c->dnn && c->dnn->refused) {
        snprintf(c->desc, sizeof c->desc, "%s (convolutions: %s; im2col for %ld shapes or directions, first %s)",
                 c->dev_name, c->conv_note, c->dnn->refused, c->dnn->first);
        return c->desc;
    }
#endif
    snprintf(c->desc, sizeof c->desc, "%s (convolutions: %s)", c->dev_name, c->conv_note);
    return c->desc;
}

/* BF16 mode's widening of cuDNN's bf16 results: y = yb + b[c] (b may be NULL)
 * per (image, channel) plane; dx += dxb */
__global__ void from_bf16_bias_k(const __nv_bfloat16 *yb, const float *b, float *y, int C, int64_t HW,
                                 int64_t planes) {
    PLANES(pl, planes) {
        float v = b ? b[pl % C] : 0.f;
        const __nv_bfloat16 *s = yb + pl * HW;
        float *o = y + pl * HW;
        GSTRIDE(i, HW) o[i] = __bfloat162float(s[i]) + v;
    }
}
__global__ void add_from_bf16_k(const __nv_bfloat16 *x, float *y, int64_t n) {
    GSTRIDE(i, n) y[i] += __bfloat162float(x[i]);
}
/* the bf16 operand of a cuDNN call: the frozen copy, or a cast copy (*tmp, to free) */
static const __nv_bfloat16 *dnn_bf16(Cuda *c, const float *x, int64_t n, __nv_bfloat16 **tmp) {
    const __nv_bfloat16 *f = frozen_bf16(c, x, n);
    *tmp = f ? NULL : bf16_copy(c, x, n);
    return f ? f : *tmp;
}
/* BF16 mode: direction dir (forward or dx) on bf16 copies of its input `in`
 * (n_in floats; inbf: already in bf16, or NULL) and of w, into a new bf16
 * result of n_out elements, *outb, for the caller to widen and free. 0, or -1
 * (im2col then); a failed workspace leaves *outb NULL with the error recorded */
static int dnn_run_bf16(Cuda *c, DnnPlan *pl, int dir, const float *in, const __nv_bfloat16 *inbf, int64_t n_in,
                        const float *w, int64_t n_w, int64_t n_out, __nv_bfloat16 **outb) {
    __nv_bfloat16 *it = NULL, *wt = NULL;
    const __nv_bfloat16 *ib = inbf ? inbf : dnn_bf16(c, in, n_in, &it);
    const __nv_bfloat16 *wb = ib ? dnn_bf16(c, w, n_w, &wt) : NULL;
    *outb = wb ? (__nv_bfloat16 *)dalloc(c, (size_t)n_out * sizeof **outb) : NULL;
    int rc = 0;
    if (*outb) /* forward reads x, dx reads dy */
        rc = dir == DNN_FWD ? dnn_run(c, pl, dir, ib, wb, NULL, *outb, 0.f) : dnn_run(c, pl, dir, NULL, wb, ib, *outb, 0.f);
    dfree(c, wt);
    dfree(c, it);
    if (rc) {
        dfree(c, *outb);
        *outb = NULL;
    }
    return rc;
}
/* y = conv(x, w) + b by cuDNN: 0 done, -1 not by cuDNN (im2col then) */
static int dnn_conv_fwd(Cuda *c, const float *x, const float *w, const float *b, float *y, int N, int Cin, int H,
                        int W, int Cout, int k, int s, int p, int Ho, int Wo) {
    DnnPlan *pl = dnn_ready(c, DNN_FWD, N, Cin, H, W, Cout, k, s, p);
    if (!pl) return -1;
    int64_t HoWo = (int64_t)Ho * Wo, ny = (int64_t)N * Cout * HoWo;
    if (c->prec != KRONA_PREC_BF16) {
        if (dnn_run(c, pl, DNN_FWD, x, w, NULL, y, 0.f)) return -1;
        if (b) {
            PROF_STAGE(c, "bias");
            LAUNCH_PLANES(c, HoWo, (int64_t)N * Cout, add_bias_nchw_k, y, b, Cout, HoWo, (int64_t)N * Cout);
        }
        return 0;
    }
    __nv_bfloat16 *yb;
    int rc = dnn_run_bf16(c, pl, DNN_FWD, x, NULL, (int64_t)N * Cin * H * W, w, (int64_t)Cout * Cin * k * k, ny, &yb);
    if (yb) {
        PROF_STAGE(c, "bias");
        LAUNCH_PLANES(c, HoWo, (int64_t)N * Cout, from_bf16_bias_k, yb, b, y, Cout, HoWo, (int64_t)N * Cout);
        dfree(c, yb);
    }
    return rc;
}
/* dx += conv's input gradient by cuDNN: 0 done, -1 not by cuDNN */
static int dnn_conv_dx(Cuda *c, const float *dy, const __nv_bfloat16 *dybf, const float *w, float *dx, int N, int Cin,
                       int H, int W, int Cout, int k, int s, int p, int Ho, int Wo) {
    DnnPlan *pl = dnn_ready(c, DNN_DX, N, Cin, H, W, Cout, k, s, p);
    if (!pl) return -1;
    if (c->prec != KRONA_PREC_BF16) return dnn_run(c, pl, DNN_DX, NULL, w, dy, dx, 1.f);
    int64_t nx = (int64_t)N * Cin * H * W;
    __nv_bfloat16 *dxb;
    int rc = dnn_run_bf16(c, pl, DNN_DX, dy, dybf, (int64_t)N * Cout * Ho * Wo, w, (int64_t)Cout * Cin * k * k, nx,
                          &dxb);
    if (dxb) {
        PROF_STAGE(c, "dx add");
        LAUNCH1D(c, nx, add_from_bf16_k, dxb, dx, nx);
        dfree(c, dxb);
    }
    return rc;
}
/* dw += conv's weight gradient by cuDNN (fp32 and tf32 only: see above) */
static int dnn_conv_dw(Cuda *c, const float *dy, const float *x, float *dw, int N, int Cin, int H, int W, int Cout,
                       int k, int s, int p) {
    if (c->prec == KRONA_PREC_BF16) return -1;
    DnnPlan *pl = dnn_ready(c, DNN_DW, N, Cin, H, W, Cout, k, s, p);
    return pl ? dnn_run(c, pl, DNN_DW, x, NULL, dy, dw, 1.f) : -1;
}

static void cu_conv2d_fwd(Backend *be, const float *x, const float *w, const float *b, float *y,
                          int N, int Cin, int H, int W, int Cout, int k, int s, int p) {
    Cuda *c = CU(be);
    int Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    if (N <= 0 || Cout <= 0 || Ho <= 0 || Wo <= 0) return;
    int64_t HoWo = (int64_t)Ho * Wo, CKK = (int64_t)Cin * k * k, HW = (int64_t)H * W;
    int one = k == 1 && s == 1 && p == 0; /* 1x1: the image is its own im2col (one GEMM, also for cuDNN) */
    if (!one && dnn_conv_fwd(c, x, w, b, y, N, Cin, H, W, Cout, k, s, p, Ho, Wo) == 0) return;
    if (one) {
        gemm_op_sb(c, 0, 0, Cout, HW, Cin, 1.f, w, Cin, 0, x, HW, (int64_t)Cin * HW, 0.f, y, HW,
                (int64_t)Cout * HW, N);
    } else {
        int nb = conv_chunk(CKK * HoWo, N), bf = c->prec == KRONA_PREC_BF16;
        void *col = dalloc(c, (size_t)nb * CKK * HoWo * (bf ? sizeof(__nv_bfloat16) : sizeof(float)));
        if (!col) return;
        for (int n0 = 0; n0 < N; n0 += nb) {
            int m = N - n0 < nb ? N - n0 : nb;
            const float *xn = x + (int64_t)n0 * Cin * HW;
            im2col(c, xn, col, bf, m, Cin, H, W, k, s, p, Ho, Wo);
            gemm_op_sbx(c, 0, 0, Cout, HoWo, CKK, 1.f, w, NULL, CKK, 0, bf ? NULL : (const float *)col,
                        bf ? (const __nv_bfloat16 *)col : NULL, HoWo, CKK * HoWo, 0.f,
                        y + (int64_t)n0 * Cout * HoWo, HoWo, (int64_t)Cout * HoWo, m);
        }
        dfree(c, col);
    }
    if (b) {
        PROF_STAGE(c, "bias");
        LAUNCH_PLANES(c, HoWo, (int64_t)N * Cout, add_bias_nchw_k, y, b, Cout, HoWo, (int64_t)N * Cout);
    }
}

/* dx += and dw += of conv2d_bwd; dyb: dy in bf16 already, or NULL */
static void conv_bwd(Cuda *c, const float *dy, const __nv_bfloat16 *dyb, const float *x, const float *w,
                     float *dx, float *dw, int N, int Cin, int H, int W, int Cout, int k, int s, int p) {
    int Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    int64_t HoWo = (int64_t)Ho * Wo, CKK = (int64_t)Cin * k * k, HW = (int64_t)H * W;
    if (!(k == 1 && s == 1 && p == 0)) { /* cuDNN's, when asked for and it takes them */
        if (dx && dnn_conv_dx(c, dy, dyb, w, dx, N, Cin, H, W, Cout, k, s, p, Ho, Wo) == 0) dx = NULL;
        if (dw && dnn_conv_dw(c, dy, x, dw, N, Cin, H, W, Cout, k, s, p) == 0) dw = NULL;
    }
    if (!dx && !dw) return;
    if (k == 1 && s == 1 && p == 0) {
        if (dw) /* dw[Cout,Cin] += sum_n dy_n[Cout,HW] x_n[Cin,HW]^T */
            conv_dw_accumulate(c, dy, dyb, (int64_t)Cout * HW, x, NULL, (int64_t)Cin * HW, N, Cout, Cin, HW, dw);
        if (dx)
            gemm_op_sbx(c, 1, 0, Cin, HW, Cout, 1.f, w, NULL, Cin, 0, dy, dyb, HW, (int64_t)Cout * HW, 1.f, dx,
                        HW, (int64_t)Cin * HW, N);
        return;
    }
    /* fp32-sized: dx's dcol needs it; BF16 mode's columns for dw use half of it */
    int nb = conv_chunk(CKK * HoWo, N), bf = c->prec == KRONA_PREC_BF16;
    float *col = (float *)dalloc(c, (size_t)nb * CKK * HoWo * sizeof(float));
    if (!col) return;
    for (int n0 = 0; n0 < N; n0 += nb) {
        int m = N - n0 < nb ? N - n0 : nb;
        const float *dyc = dy + (int64_t)n0 * Cout * HoWo, *xn = x + (int64_t)n0 * Cin * HW;
        const __nv_bfloat16 *dybc = dyb ? dyb + (int64_t)n0 * Cout * HoWo : NULL;
        if (dw) {
            im2col(c, xn, col, bf, m, Cin, H, W, k, s, p, Ho, Wo);
            conv_dw_accumulate(c, dyc, dybc, (int64_t)Cout * HoWo, bf ? NULL : col,
                               bf ? (const __nv_bfloat16 *)col : NULL, CKK * HoWo, m, Cout, CKK, HoWo, dw);
        }
        if (dx) { /* dcol = w^T dy, then scatter-free gather back into dx */
            gemm_op_sbx(c, 1, 0, CKK, HoWo, Cout, 1.f, w, NULL, CKK, 0, dyc, dybc, HoWo, (int64_t)Cout * HoWo,
                        0.f, col, HoWo, CKK * HoWo, m);
            PROF_STAGE(c, "col2im");
            LAUNCH_PLANES(c, HW, (int64_t)m * Cin, col2im_acc_k, col, dx + (int64_t)n0 * Cin * HW, m, Cin, H, W, k, s,
                          p, Ho, Wo);
        }
    }
    dfree(c, col);
}
static void cu_conv2d_bwd(Backend *be, const float *dy, const float *x, const float *w,
                          float *dx, float *dw, float *db, int N, int Cin, int H, int W,
                          int Cout, int k, int s, int p) {
    Cuda *c = CU(be);
    int Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    if (N <= 0 || Cout <= 0 || Ho <= 0 || Wo <= 0) return;
    if (db) {
        PROF_STAGE(c, "db");
        chan_sum_k<<<dim3(Cout, 1), TPB, 0, c->stream>>>(dy, N, Cout, (int64_t)Ho * Wo, db, 0);
        LAUNCHED(c);
    }
    if (!dx && !dw) return;
    /* BF16 mode with both gradients (all weights training): dy cast once for both */
    __nv_bfloat16 *dyb = dx && dw && c->prec == KRONA_PREC_BF16 ? bf16_copy(c, dy, (int64_t)N * Cout * Ho * Wo) : NULL;
    conv_bwd(c, dy, dyb, x, w, dx, dw, N, Cin, H, W, Cout, k, s, p);
    dfree(c, dyb);
}

/* ----------------------------------------------------------- group norm */

__device__ __forceinline__ float sigm(float x) { return 1.f / (1.f + expf(-x)); }
/* dy times SiLU's slope at n (silu_bwd's expression, and the fused norm's) */
__device__ __forceinline__ float silu_back(float dy, float n) {
    float s = sigm(n);
    return dy * s * (1.f + n * (1.f - s));
}

/* per (n,c) row of HW: mean and sum of squared deviations (two passes: exact) */
__global__ void gn_chan_stats_k(const float *x, int64_t HW, float *cmean, float *cm2) {
    const float *r = x + (int64_t)blockIdx.x * HW;
    float s = 0.f;
    for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) s += r[i];
    float mu = block_sum(s) / (float)HW;
    float q = 0.f;
    for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
        float d = r[i] - mu;
        q += d * d;
    }
    q = block_sum(q);
    if (threadIdx.x == 0) { cmean[blockIdx.x] = mu; cm2[blockIdx.x] = q; }
}
/* combine the Cg channel stats of each (n,g) (Chan et al., equal counts) */
__global__ void gn_group_stats_k(const float *cmean, const float *cm2, int N, int C, int G,
                                 int64_t HW, float eps, float *mean, float *rstd) {
    GSTRIDE(t, (int64_t)N * G) {
        int Cg = C / G;
        int64_t base = (t / G) * C + (t % G) * Cg;
        float mu = 0.f;
        for (int i = 0; i < Cg; i++) mu += cmean[base + i];
        mu /= (float)Cg;
        float m2 = 0.f, dev = 0.f;
        for (int i = 0; i < Cg; i++) {
            float d = cmean[base + i] - mu;
            m2 += cm2[base + i];
            dev += d * d;
        }
        float var = (m2 + (float)HW * dev) / ((float)Cg * (float)HW);
        mean[t] = mu;
        rstd[t] = rsqrtf(fmaxf(var, 0.f) + eps);
    }
}
/* gn(x) at one element: the one expression of the forward and of the fused
 * backward's recomputation */
__device__ __forceinline__ float gn_at(float x, float m, float r, float ga, float be) {
    float v = (x - m) * r;
    return v * ga + be;
}
/* a plane (n, c) per grid row: its group's statistics and its gamma, beta read
 * once; silu: y = silu(gn(x)) (group_norm_silu_fwd) */
__global__ void gn_apply_k(const float *x, const float *gamma, const float *beta, float *y,
                           const float *mean, const float *rstd, int C, int G, int64_t HW,
                           int64_t planes, int silu) {
    PLANES(pl, planes) {
        int cc = (int)(pl % C);
        int64_t ng = (pl / C) * G + cc / (C / G);
        float m = mean[ng], r = rstd[ng], ga = gamma ? gamma[cc] : 1.f, be = beta ? beta[cc] : 0.f;
        const float *xp = x + pl * HW;
        float *yp = y + pl * HW;
        if (silu)
            GSTRIDE(i, HW) {
                float n = gn_at(xp[i], m, r, ga, be);
                yp[i] = n * sigm(n);
            }
        else
            GSTRIDE(i, HW) yp[i] = gn_at(xp[i], m, r, ga, be);
    }
}

static void gn_fwd(Cuda *c, const float *x, const float *gamma, const float *beta, float *y, float *mean,
                   float *rstd, int N, int C, int64_t HW, int G, float eps, int silu) {
    if (N <= 0 || C <= 0 || HW <= 0 || G <= 0) return;
    float *tmp = (float *)dalloc(c, (size_t)(2 * N * C + 2 * N * G) * sizeof(float));
    if (!tmp) return;
    float *cmean = tmp, *cm2 = tmp + N * C;
    float *mu = mean ? mean : tmp + 2 * N * C, *rs = rstd ? rstd : tmp + 2 * N * C + N * G;
    gn_chan_stats_k<<<N * C, TPB, 0, c->stream>>>(x, HW, cmean, cm2);
    LAUNCHED(c);
    gn_group_stats_k<<<grid_1d((int64_t)N * G), TPB, 0, c->stream>>>(cmean, cm2, N, C, G, HW,
                                                                       eps, mu, rs);
    LAUNCHED(c);
    LAUNCH_PLANES(c, HW, (int64_t)N * C, gn_apply_k, x, gamma, beta, y, mu, rs, C, G, HW, (int64_t)N * C, silu);
    dfree(c, tmp);
}
static void cu_group_norm_fwd(Backend *be, const float *x, const float *gamma, const float *beta,
                              float *y, float *mean, float *rstd, int N, int C, int64_t HW,
                              int G, float eps) {
    gn_fwd(CU(be), x, gamma, beta, y, mean, rstd, N, C, HW, G, eps, 0);
}
static void cu_group_norm_silu_fwd(Backend *be, const float *x, const float *gamma, const float *beta,
                                   float *y, float *mean, float *rstd, int N, int C, int64_t HW,
                                   int G, float eps) {
    gn_fwd(CU(be), x, gamma, beta, y, mean, rstd, N, C, HW, G, eps, 1);
}

/* per (n,c): ds = sum dy, dsx = sum dy * xhat; silu: dy is of silu(gn(x)),
 * taken back through SiLU at gn(x) recomputed */
__global__ void gn_bwd_chan_k(const float *dy, const float *x, const float *gamma, const float *beta,
                              const float *mean, const float *rstd, int C, int G, int64_t HW, float *ds,
                              float *dsx, int silu) {
    int64_t row = blockIdx.x;
    int cc = (int)(row % C);
    int64_t ng = (row / C) * G + cc / (C / G);
    float mu = mean[ng], rs = rstd[ng], ga = gamma ? gamma[cc] : 1.f, be = beta ? beta[cc] : 0.f;
    const float *d = dy + row * HW, *xr = x + row * HW;
    float a = 0.f, b = 0.f;
    for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
        float g = silu ? silu_back(d[i], gn_at(xr[i], mu, rs, ga, be)) : d[i];
        a += g;
        b += g * (xr[i] - mu) * rs;
    }
    a = block_sum(a);
    b = block_sum(b);
    if (threadIdx.x == 0) { ds[row] = a; dsx[row] = b; }
}
/* dgamma[c] += sum_n dsx[n,c]; dbeta[c] += sum_n ds[n,c] */
__global__ void gn_bwd_params_k(const float *ds, const float *dsx, int N, int C, float *dgamma,
                                float *dbeta) {
    GSTRIDE(cc, C) {
        float a = 0.f, b = 0.f;
        for (int n = 0; n < N; n++) { a += ds[(int64_t)n * C + cc]; b += dsx[(int64_t)n * C + cc]; }
        if (dbeta) dbeta[cc] += a;
        if (dgamma) dgamma[cc] += b;
    }
}
/* per (n,g): mean over the group of dy*gamma and of dy*gamma*xhat */
__global__ void gn_bwd_group_k(const float *ds, const float *dsx, const float *gamma, int N,
                               int C, int G, int64_t HW, float *ca, float *cb) {
    GSTRIDE(t, (int64_t)N * G) {
        int Cg = C / G;
        int64_t base = (t / G) * C + (t % G) * Cg;
        int c0 = (int)((t % G) * Cg);
        float a = 0.f, b = 0.f;
        for (int i = 0; i < Cg; i++) {
            float gm = gamma ? gamma[c0 + i] : 1.f;
            a += gm * ds[base + i];
            b += gm * dsx[base + i];
        }
        float inv = 1.f / ((float)Cg * (float)HW);
        ca[t] = a * inv;
        cb[t] = b * inv;
    }
}
__global__ void gn_bwd_dx_k(const float *dy, const float *x, const float *gamma, const float *beta,
                            const float *mean, const float *rstd, const float *ca,
                            const float *cb, float *dx, int C, int G, int64_t HW,
                            int64_t planes, int silu) {
    PLANES(pl, planes) {
        int cc = (int)(pl % C);
        int64_t ng = (pl / C) * G + cc / (C / G);
        float m = mean[ng], rs = rstd[ng], ga = gamma ? gamma[cc] : 1.f, be = beta ? beta[cc] : 0.f;
        float a = ca[ng], b = cb[ng];
        const float *dyp = dy + pl * HW, *xp = x + pl * HW;
        float *dxp = dx + pl * HW;
        GSTRIDE(i, HW) {
            float xh = (xp[i] - m) * rs;
            float g = (silu ? silu_back(dyp[i], gn_at(xp[i], m, rs, ga, be)) : dyp[i]) * ga;
            dxp[i] += rs * (g - a - xh * b);
        }
    }
}

static void gn_bwd(Cuda *c, const float *dy, const float *x, const float *gamma, const float *beta,
                   const float *mean, const float *rstd, float *dx, float *dgamma, float *dbeta, int N, int C,
                   int64_t HW, int G, int silu) {
    if (N <= 0 || C <= 0 || HW <= 0 || G <= 0 || (!dx && !dgamma && !dbeta)) return;
    float *tmp = (float *)dalloc(c, (size_t)(2 * N * C + 2 * N * G) * sizeof(float));
    if (!tmp) return;
    float *ds = tmp, *dsx = tmp + N * C, *ca = tmp + 2 * N * C, *cb = ca + N * G;
    gn_bwd_chan_k<<<N * C, TPB, 0, c->stream>>>(dy, x, gamma, beta, mean, rstd, C, G, HW, ds, dsx, silu);
    LAUNCHED(c);
    if (dgamma || dbeta) {
        gn_bwd_params_k<<<grid_1d(C), TPB, 0, c->stream>>>(ds, dsx, N, C, dgamma, dbeta);
        LAUNCHED(c);
    }
    if (dx) {
        gn_bwd_group_k<<<grid_1d((int64_t)N * G), TPB, 0, c->stream>>>(ds, dsx, gamma, N, C, G,
                                                                         HW, ca, cb);
        LAUNCHED(c);
        LAUNCH_PLANES(c, HW, (int64_t)N * C, gn_bwd_dx_k, dy, x, gamma, beta, mean, rstd, ca, cb, dx, C, G, HW,
                      (int64_t)N * C, silu);
    }
    dfree(c, tmp);
}
static void cu_group_norm_bwd(Backend *be, const float *dy, const float *x, const float *gamma,
                              const float *mean, const float *rstd, float *dx, float *dgamma,
                              float *dbeta, int N, int C, int64_t HW, int G) {
    gn_bwd(CU(be), dy, x, gamma, NULL, mean, rstd, dx, dgamma, dbeta, N, C, HW, G, 0);
}
static void cu_group_norm_silu_bwd(Backend *be, const float *dy, const float *x, const float *gamma,
                                   const float *beta, const float *mean, const float *rstd, float *dx,
                                   float *dgamma, float *dbeta, int N, int C, int64_t HW, int G) {
    gn_bwd(CU(be), dy, x, gamma, beta, mean, rstd, dx, dgamma, dbeta, N, C, HW, G, 1);
}

/* ----------------------------------------------------------- layer norm */

/* one warp per row, 8 rows per block */
__global__ void ln_fwd_k(const float *x, const float *gamma, const float *beta, float *y,
                         float *mean, float *rstd, int64_t M, int C, float eps) {
    int64_t row = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= M) return; /* whole warp leaves together; no block barriers below */
    const float *xr = x + row * C;
    float s = 0.f;
    for (int i = lane; i < C; i += 32) s += xr[i];
    float mu = warp_sum(s) / (float)C;
    float q = 0.f;
    for (int i = lane; i < C; i += 32) { float d = xr[i] - mu; q += d * d; }
    float rs = rsqrtf(warp_sum(q) / (float)C + eps);
    float *yr = y + row * C;
    for (int i = lane; i < C; i += 32)
        yr[i] = (xr[i] - mu) * rs * (gamma ? gamma[i] : 1.f) + (beta ? beta[i] : 0.f);
    if (lane == 0) { mean[row] = mu; rstd[row] = rs; }
}
__global__ void ln_bwd_dx_k(const float *dy, const float *x, const float *gamma,
                            const float *mean, const float *rstd, float *dx, int64_t M, int C) {
    int64_t row = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= M) return;
    const float *xr = x + row * C, *dr = dy + row * C;
    float mu = mean[row], rs = rstd[row];
    float a = 0.f, b = 0.f;
    for (int i = lane; i < C; i += 32) {
        float g = dr[i] * (gamma ? gamma[i] : 1.f);
        a += g;
        b += g * (xr[i] - mu) * rs;
    }
    a = warp_sum(a) / (float)C;
    b = warp_sum(b) / (float)C;
    float *o = dx + row * C;
    for (int i = lane; i < C; i += 32) {
        float g = dr[i] * (gamma ? gamma[i] : 1.f);
        o[i] += rs * (g - a - (xr[i] - mu) * rs * b);
    }
}
/* slices of rows: pg[p][c] = sum dy*xhat, pb[p][c] = sum dy */
__global__ void ln_bwd_params_partial_k(const float *dy, const float *x, const float *mean,
                                        const float *rstd, int64_t M, int C, float *pg,
                                        float *pb) {
    __shared__ float sg[8][33], sb[8][33];
    int cidx = blockIdx.x * 32 + threadIdx.x;
    float ag = 0.f, ab = 0.f;
    if (cidx < C)
        for (int64_t m = (int64_t)blockIdx.y * 8 + threadIdx.y; m < M; m += 8 * (int64_t)gridDim.y) {
            float d = dy[m * C + cidx];
            ab += d;
            ag += d * (x[m * C + cidx] - mean[m]) * rstd[m];
        }
    sg[threadIdx.y][threadIdx.x] = ag;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && cidx < C) {
        float g = 0.f, b = 0.f;
        for (int r = 0; r < 8; r++) { g += sg[r][threadIdx.x]; b += sb[r][threadIdx.x]; }
        pg[(int64_t)blockIdx.y * C + cidx] = g;
        pb[(int64_t)blockIdx.y * C + cidx] = b;
    }
}

static void cu_layer_norm_fwd(Backend *be, const float *x, const float *gamma, const float *beta,
                              float *y, float *mean, float *rstd, int64_t M, int C, float eps) {
    Cuda *c = CU(be);
    if (M <= 0 || C <= 0) return;
    float *tmp = NULL;
    if (!mean || !rstd) {
        tmp = (float *)dalloc(c, (size_t)M * 2 * sizeof(float));
        if (!tmp) return;
    }
    ln_fwd_k<<<(unsigned)((M + 7) / 8), 256, 0, c->stream>>>(
        x, gamma, beta, y, mean ? mean : tmp, rstd ? rstd : tmp + M, M, C, eps);
    LAUNCHED(c);
    dfree(c, tmp);
}
static void cu_layer_norm_bwd(Backend *be, const float *dy, const float *x, const float *gamma,
                              const float *mean, const float *rstd, float *dx, float *dgamma,
                              float *dbeta, int64_t M, int C) {
    Cuda *c = CU(be);
    if (M <= 0 || C <= 0) return;
    if (dx) {
        ln_bwd_dx_k<<<(unsigned)((M + 7) / 8), 256, 0, c->stream>>>(dy, x, gamma, mean, rstd, dx,
                                                                    M, C);
        LAUNCHED(c);
    }
    if (dgamma || dbeta) {
        int P = col_slices(M);
        float *part = (float *)dalloc(c, (size_t)P * C * 2 * sizeof(float));
        if (!part) return;
        dim3 g((C + 31) / 32, P), b(32, 8);
        ln_bwd_params_partial_k<<<g, b, 0, c->stream>>>(dy, x, mean, rstd, M, C, part,
                                                        part + (int64_t)P * C);
        LAUNCHED(c);
        int c1 = dgamma ? C : 0, c2 = dbeta ? C : 0;
        if (c1 + c2) {
            partial_final2_k<<<grid_1d(c1 + c2), TPB, 0, c->stream>>>(part, c1, dgamma, part + (int64_t)P * C,
                                                                      c2, dbeta, P, 1.f);
            LAUNCHED(c);
        }
        dfree(c, part);
    }
}

/* ------------------------------------------------------------ pointwise */

__device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_d(float x) {
    float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
    float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

__global__ void silu_fwd_k(const float *x, float *y, int64_t n) { GSTRIDE(i, n) { float v = x[i]; y[i] = v * sigm(v); } }
__global__ void silu_bwd_k(const float *dy, const float *x, float *dx, int64_t n) {
    GSTRIDE(i, n) dx[i] += silu_back(dy[i], x[i]);
}
__global__ void gelu_fwd_k(const float *x, float *y, int64_t n) { GSTRIDE(i, n) y[i] = gelu_f(x[i]); }
__global__ void gelu_bwd_k(const float *dy, const float *x, float *dx, int64_t n) {
    GSTRIDE(i, n) dx[i] += dy[i] * gelu_d(x[i]);
}
__global__ void quick_gelu_k(const float *x, float *y, int64_t n) {
    GSTRIDE(i, n) { float v = x[i]; y[i] = v * sigm(1.702f * v); }
}
__global__ void quick_gelu_bwd_k(const float *dy, const float *x, float *dx, int64_t n) {
    GSTRIDE(i, n) {
        float v = x[i], s = sigm(1.702f * v);
        dx[i] += dy[i] * s * (1.f + 1.702f * v * (1.f - s));
    }
}
/* a row m per grid row (plane_grid), its D outputs along x */
__global__ void geglu_fwd_k(const float *x, float *y, int64_t M, int D) {
    PLANES(m, M) {
        const float *r = x + m * 2 * D;
        float *ym = y + m * D;
        GSTRIDE(j, D) ym[j] = r[j] * gelu_f(r[D + j]);
    }
}
__global__ void geglu_bwd_k(const float *dy, const float *x, float *dx, int64_t M, int D) {
    PLANES(m, M) {
        const float *r = x + m * 2 * D, *dym = dy + m * D;
        float *o = dx + m * 2 * D;
        GSTRIDE(j, D) {
            float h = r[j], g = r[D + j], d = dym[j];
            o[j] += d * gelu_f(g);
            o[D + j] += d * h * gelu_d(g);
        }
    }
}
__global__ void embedding_k(const float *table, const int32_t *ids, float *out, int64_t n,
                            int dim) {
    GSTRIDE(i, n * dim) {
        int64_t r = i / dim, j = i % dim;
        int32_t id = ids[r];
        out[i] = id >= 0 ? table[(int64_t)id * dim + j] : 0.f; /* never read before the table */
    }
}
__global__ void add_k(const float *a, const float *b, float *y, int64_t n) { GSTRIDE(i, n) y[i] = a[i] + b[i]; }
__global__ void axpy_k(float alpha, const float *x, float *y, int64_t n) { GSTRIDE(i, n) y[i] += alpha * x[i]; }
__global__ void scale_k(float *x, float alpha, int64_t n) { GSTRIDE(i, n) x[i] *= alpha; }
/* x[n][c][hw] += v[n][c], a plane per grid row */
__global__ void add_channel_bias_k(float *x, const float *v, int64_t HW, int64_t planes) {
    PLANES(pl, planes) {
        float a = v[pl], *xp = x + pl * HW;
        GSTRIDE(i, HW) xp[i] += a;
    }
}

static void cu_silu_fwd(Backend *be, const float *x, float *y, int64_t n) { LAUNCH1D(CU(be), n, silu_fwd_k, x, y, n); }
static void cu_silu_bwd(Backend *be, const float *dy, const float *x, float *dx, int64_t n) {
    if (dx) LAUNCH1D(CU(be), n, silu_bwd_k, dy, x, dx, n);
}
static void cu_gelu_fwd(Backend *be, const float *x, float *y, int64_t n) { LAUNCH1D(CU(be), n, gelu_fwd_k, x, y, n); }
static void cu_gelu_bwd(Backend *be, const float *dy, const float *x, float *dx, int64_t n) {
    if (dx) LAUNCH1D(CU(be), n, gelu_bwd_k, dy, x, dx, n);
}
static void cu_geglu_fwd(Backend *be, const float *x, float *y, int64_t M, int D) {
    LAUNCH_PLANES(CU(be), D, M, geglu_fwd_k, x, y, M, D);
}
static void cu_geglu_bwd(Backend *be, const float *dy, const float *x, float *dx, int64_t M, int D) {
    if (dx) LAUNCH_PLANES(CU(be), D, M, geglu_bwd_k, dy, x, dx, M, D);
}
static void cu_quick_gelu_fwd(Backend *be, const float *x, float *y, int64_t n) {
    LAUNCH1D(CU(be), n, quick_gelu_k, x, y, n);
}
static void cu_quick_gelu_bwd(Backend *be, const float *dy, const float *x, float *dx, int64_t n) {
    if (dx) LAUNCH1D(CU(be), n, quick_gelu_bwd_k, dy, x, dx, n);
}
static void cu_embedding_fwd(Backend *be, const float *table, const int32_t *ids, float *out,
                             int64_t n, int dim) {
    LAUNCH1D(CU(be), n * dim, embedding_k, table, ids, out, n, dim);
}
/* dtable[ids[r]] += dout[r]; repeated ids collide, hence atomics (float
 * atomics make the sum order, and so the last bits, vary from run to run) */
__global__ void embedding_bwd_k(const float *dout, const int32_t *ids, float *dtable, int64_t n,
                                int dim) {
    GSTRIDE(i, n * dim) {
        int64_t r = i / dim, j = i % dim;
        atomicAdd(&dtable[(int64_t)ids[r] * dim + j], dout[i]);
    }
}
static void cu_embedding_bwd(Backend *be, const float *dout, const int32_t *ids, float *dtable,
                             int64_t n, int dim) {
    if (dtable) LAUNCH1D(CU(be), n * dim, embedding_bwd_k, dout, ids, dtable, n, dim);
}
static void cu_add(Backend *be, const float *a, const float *b, float *y, int64_t n) { LAUNCH1D(CU(be), n, add_k, a, b, y, n); }
static void cu_axpy(Backend *be, float alpha, const float *x, float *y, int64_t n) { LAUNCH1D(CU(be), n, axpy_k, alpha, x, y, n); }
static void cu_scale(Backend *be, float *x, float alpha, int64_t n) { LAUNCH1D(CU(be), n, scale_k, x, alpha, n); }
static void cu_add_channel_bias(Backend *be, float *x, const float *v, int N, int C, int64_t HW) {
    LAUNCH_PLANES(CU(be), HW, (int64_t)N * C, add_channel_bias_k, x, v, HW, (int64_t)N * C);
}
static void cu_channel_sum_bwd(Backend *be, const float *dy, float *dv, int N, int C, int64_t HW) {
    Cuda *c = CU(be);
    if (!dv || N <= 0 || C <= 0 || HW <= 0) return;
    chan_sum_k<<<dim3(C, N), TPB, 0, c->stream>>>(dy, N, C, HW, dv, 1);
    LAUNCHED(c);
}

/* ----------------------------------------------------------- shape ops */

__global__ void concat_k(const float *a, const float *b, float *y, int64_t CaHW, int64_t CbHW,
                         int64_t total) {
    GSTRIDE(i, total) {
        int64_t per = CaHW + CbHW, n = i / per, r = i % per;
        y[i] = r < CaHW ? a[n * CaHW + r] : b[n * CbHW + (r - CaHW)];
    }
}
__global__ void concat_bwd_k(const float *dy, float *da, float *db, int64_t CaHW, int64_t CbHW,
                             int64_t total) {
    GSTRIDE(i, total) {
        int64_t per = CaHW + CbHW, n = i / per, r = i % per;
        if (r < CaHW) { if (da) da[n * CaHW + r] += dy[i]; }
        else if (db) db[n * CbHW + (r - CaHW)] += dy[i];
    }
}
/* a plane (n, c) per grid row; 32-bit pixel math within it */
__global__ void upsample_fwd_k(const float *x, float *y, int H, int W, int64_t planes) {
    int W2 = 2 * W;
    PLANES(nc, planes) {
        const float *xp = x + nc * H * W;
        float *yp = y + nc * 4 * H * W;
        GSTRIDE(i, 4 * (int64_t)H * W) {
            int h2 = (int)(i / W2), w2 = (int)(i - (int64_t)h2 * W2);
            yp[i] = xp[(int64_t)(h2 / 2) * W + w2 / 2];
        }
    }
}
__global__ void upsample_bwd_k(const float *dy, float *dx, int H, int W, int64_t planes) {
    int W2 = 2 * W;
    PLANES(nc, planes) {
        const float *dyp = dy + nc * 4 * H * W;
        float *dxp = dx + nc * H * W;
        GSTRIDE(i, (int64_t)H * W) {
            int h = (int)(i / W), w = (int)(i - (int64_t)h * W);
            const float *r = dyp + (int64_t)2 * h * W2 + 2 * w;
            dxp[i] += r[0] + r[1] + r[W2] + r[W2 + 1];
        }
    }
}
/* y[nc][i][k] = x[nc][i - top][k - left] inside, 0 in the border */
__global__ void pad2d_k(const float *x, float *y, int H, int W, int top, int left, int Hp, int Wp,
                        int64_t total) {
    GSTRIDE(i, total) {
        int64_t k = i % Wp, r = (i / Wp) % Hp, nc = i / ((int64_t)Hp * Wp);
        int64_t ix = k - left, iy = r - top;
        y[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[(nc * H + iy) * W + ix] : 0.f;
    }
}
/* dx[nc][h][w] += dy[nc][h + top][w + left] */
__global__ void pad2d_bwd_k(const float *dy, float *dx, int H, int W, int top, int left, int Hp,
                            int Wp, int64_t total) {
    GSTRIDE(i, total) {
        int64_t w = i % W, h = (i / W) % H, nc = i / ((int64_t)H * W);
        dx[i] += dy[(nc * Hp + h + top) * Wp + w + left];
    }
}
/* y[z][c][r] (+)= x[z][r][c] for x[z] of R rows, Cc cols; 32x32 tiles via shared memory */
__global__ void transpose_k(const float *x, float *y, int64_t R, int64_t Cc, int acc) {
    __shared__ float t[32][33];
    const float *xz = x + (int64_t)blockIdx.z * R * Cc;
    float *yz = y + (int64_t)blockIdx.z * R * Cc;
    int64_t tiles_r = (R + 31) / 32;
    int64_t c0 = (int64_t)blockIdx.x * 32;
    for (int64_t tr = blockIdx.y; tr < tiles_r; tr += gridDim.y) {
        int64_t r0 = tr * 32;
        for (int j = threadIdx.y; j < 32; j += 8) {
            int64_t r = r0 + j, cc = c0 + threadIdx.x;
            if (r < R && cc < Cc) t[j][threadIdx.x] = xz[r * Cc + cc];
        }
        __syncthreads();
        for (int j = threadIdx.y; j < 32; j += 8) {
            int64_t cc = c0 + j, r = r0 + threadIdx.x;
            if (r < R && cc < Cc) {
                float v = t[threadIdx.x][j];
                if (acc) yz[cc * R + r] += v; else yz[cc * R + r] = v;
            }
        }
        __syncthreads();
    }
}
static void transpose(Cuda *c, const float *x, float *y, int batch, int64_t R, int64_t Cc, int acc) {
    if (batch <= 0 || R <= 0 || Cc <= 0) return;
    int64_t ty = (R + 31) / 32;
    dim3 g((unsigned)((Cc + 31) / 32), (unsigned)(ty > 65535 ? 65535 : ty), batch);
    transpose_k<<<g, dim3(32, 8), 0, c->stream>>>(x, y, R, Cc, acc);
    LAUNCHED(c);
}

static void cu_concat_channels(Backend *be, const float *a, const float *b, float *y, int N,
                               int Ca, int Cb, int64_t HW) {
    int64_t total = (int64_t)N * (Ca + Cb) * HW;
    LAUNCH1D(CU(be), total, concat_k, a, b, y, (int64_t)Ca * HW, (int64_t)Cb * HW, total);
}
static void cu_concat_channels_bwd(Backend *be, const float *dy, float *da, float *db, int N,
                                   int Ca, int Cb, int64_t HW) {
    int64_t total = (int64_t)N * (Ca + Cb) * HW;
    if (da || db) LAUNCH1D(CU(be), total, concat_bwd_k, dy, da, db, (int64_t)Ca * HW, (int64_t)Cb * HW, total);
}
static void cu_upsample2x_fwd(Backend *be, const float *x, float *y, int N, int C, int H, int W) {
    LAUNCH_PLANES(CU(be), 4 * (int64_t)H * W, (int64_t)N * C, upsample_fwd_k, x, y, H, W, (int64_t)N * C);
}
static void cu_upsample2x_bwd(Backend *be, const float *dy, float *dx, int N, int C, int H, int W) {
    if (dx) LAUNCH_PLANES(CU(be), (int64_t)H * W, (int64_t)N * C, upsample_bwd_k, dy, dx, H, W, (int64_t)N * C);
}
static void cu_pad2d(Backend *be, const float *x, float *y, int N, int C, int H, int W, int top,
                     int bottom, int left, int right) {
    int Hp = H + top + bottom, Wp = W + left + right;
    int64_t total = (int64_t)N * C * Hp * Wp;
    LAUNCH1D(CU(be), total, pad2d_k, x, y, H, W, top, left, Hp, Wp, total);
}
static void cu_pad2d_bwd(Backend *be, const float *dy, float *dx, int N, int C, int H, int W,
                         int top, int bottom, int left, int right) {
    int Hp = H + top + bottom, Wp = W + left + right;
    int64_t total = (int64_t)N * C * H * W;
    if (dx) LAUNCH1D(CU(be), total, pad2d_bwd_k, dy, dx, H, W, top, left, Hp, Wp, total);
}
static void cu_nchw_to_nlc(Backend *be, const float *x, float *y, int N, int C, int64_t HW, int accumulate) {
    transpose(CU(be), x, y, N, C, HW, accumulate);
}
static void cu_nlc_to_nchw(Backend *be, const float *x, float *y, int N, int C, int64_t HW, int accumulate) {
    transpose(CU(be), x, y, N, HW, C, accumulate);
}

/* ------------------------------------------------------------ attention
 * Row tiles of T queries: S = scale Q K^T for a batch of (image, head) pairs
 * at once (strided batched GEMMs), softmax in place (saving lse), O = P V.
 * The batch runs over the heads of one image (a head is a column slice of
 * width D at stride H*D) or, when there are more images than heads, over the
 * images for one head: fewer, larger launches either way (the tiny model
 * pretrains 128 images of 4 heads). Memory O(batch * T * Lk), T chosen so a
 * tile buffer stays under ATTN_TILE_BYTES. Backward recomputes P from lse and
 * never stores the full Lq x Lk matrix either. lse and delta are [N, H, Lq]. */
#ifndef ATTN_TILE_BYTES /* the emulator shrinks these to exercise the chunked paths */
#define ATTN_TILE_BYTES ((size_t)256 << 20)
#endif

static int attn_tile(int Lq, int Lk, int batch) {
    int64_t per_row = (int64_t)batch * Lk * (int64_t)sizeof(float);
    int64_t t = (int64_t)ATTN_TILE_BYTES / (per_row > 0 ? per_row : 1);
    if (t < 1) t = 1;
    if (t > Lq) t = Lq;
    return (int)t;
}

/* How the (image, head) pairs are split: an outer loop of G steps, each one
 * batched GEMM of B entries. Element strides: per outer step (o) and per batch
 * entry (b), for q/o rows, k/v rows and lse/delta. */
typedef struct AttnSplit {
    int G, B;
    int64_t q_o, q_b, k_o, k_b, l_o, l_b;
} AttnSplit;

static AttnSplit attn_split(int N, int Lq, int Lk, int H, int D) {
    int64_t HD = (int64_t)H * D;
    AttnSplit a;
    if (N > H) { /* batch over images, loop over heads */
        a.G = H; a.B = N;
        a.q_o = D; a.q_b = (int64_t)Lq * HD; a.k_o = D; a.k_b = (int64_t)Lk * HD;
        a.l_o = Lq; a.l_b = (int64_t)H * Lq;
    } else { /* batch over heads, loop over images */
        a.G = N; a.B = H;
        a.q_o = (int64_t)Lq * HD; a.q_b = D; a.k_o = (int64_t)Lk * HD; a.k_b = D;
        a.l_o = (int64_t)H * Lq; a.l_b = Lq;
    }
    return a;
}

/* one block per row of the tile (B*T rows); causal: keys j <= i only */
__global__ void attn_softmax_k(float *S, float *lse, int T, int Lk, int i0, int Lq, int causal,
                               int64_t lb) {
    int64_t row = blockIdx.x;
    int h = (int)(row / T), i = i0 + (int)(row % T);
    float *s = S + row * Lk;
    int jn = causal ? (i + 1 < Lk ? i + 1 : Lk) : Lk; /* valid keys: j < jn */
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < jn; j += blockDim.x) mx = fmaxf(mx, s[j]);
    mx = block_max(mx);
    float sum = 0.f;
    for (int j = threadIdx.x; j < jn; j += blockDim.x) sum += expf(s[j] - mx);
    sum = block_sum(sum);
    float l = (jn > 0) ? mx + logf(sum) : -INFINITY;
    for (int j = threadIdx.x; j < Lk; j += blockDim.x) s[j] = (j < jn) ? expf(s[j] - l) : 0.f;
    if (threadIdx.x == 0) lse[(int64_t)h * lb + i] = l;
}
/* P = exp(S - lse) in place (S already scaled), 0 for masked keys */
__global__ void attn_recompute_p_k(float *S, const float *lse, int T, int Lk, int i0, int Lq,
                                   int causal, int64_t lb, int64_t total) {
    GSTRIDE(idx, total) {
        int64_t row = idx / Lk;
        int j = (int)(idx % Lk), h = (int)(row / T), i = i0 + (int)(row % T);
        float l = lse[(int64_t)h * lb + i];
        S[idx] = ((causal && j > i) || l == -INFINITY) ? 0.f : expf(S[idx] - l);
    }
}
/* dS = scale * P * (dP - Delta_i), written over dP */
__global__ void attn_ds_k(const float *P, float *dP, const float *delta, int T, int Lk, int i0,
                          int Lq, float scale, int64_t lb, int64_t total) {
    GSTRIDE(idx, total) {
        int64_t row = idx / Lk;
        int h = (int)(row / T), i = i0 + (int)(row % T);
        dP[idx] = scale * P[idx] * (dP[idx] - delta[(int64_t)h * lb + i]);
    }
}
/* delta[n][h][i] = dO[n,i,h,:] . O[n,i,h,:] */
__global__ void attn_delta_k(const float *dO, const float *O, float *delta, int Lq, int H, int D,
                             int64_t total) {
    GSTRIDE(t, total) {
        int h = (int)(t % H);
        int64_t ni = t / H; /* n * Lq + i */
        int64_t n = ni / Lq, i = ni % Lq;
        const float *a = dO + ni * H * D + (int64_t)h * D, *b = O + ni * H * D + (int64_t)h * D;
        float s = 0.f;
        for (int d = 0; d < D; d++) s += a[d] * b[d];
        delta[(n * H + h) * Lq + i] = s;
    }
}

/* ------------------------------------------------------ fused attention
 * BF16 mode's attention (backend.h): flash-style, no Lq x Lk buffer at any
 * size. A block takes 64 rows of one (image, head) (queries: forward and dQ;
 * keys: dK and dV) and walks the other side in tiles of 64: four warps of 16
 * rows, bf16 tensor cores (WMMA 16x16x16) summing in fp32. Q, K, V, dO, P and
 * dS are rounded to bf16 as they enter a product; scores, softmax statistics,
 * lse and all accumulators stay fp32. The accumulators live in shared memory,
 * not in fragments: a fragment's element layout is the hardware's secret and
 * the online softmax must rescale whole rows. Backward is two kernels (dK dV
 * by key tiles, dQ by query tiles) that each recompute P from lse: more
 * products than one kernel with atomics, but the same bits every run.
 * Heads up to FLASH_DMAX wide (padded with zeros to a multiple of 16); wider
 * ones, and the other precisions, take the row tiles above. */
#define FLASH_T 64     /* rows per block, and per tile of the other side */
#define FLASH_W 4      /* warps per block: 16 rows each */
#define FLASH_DMAX 160 /* SD 1.5's deepest heads */

static __device__ __forceinline__ __nv_bfloat16 bf(float x) { return __float2bfloat16_rn(x); }

/* rows [r0, r0 + 64) of one head (row i at x + i * ld, D columns) into a bf16
 * tile [64][Dp]; zeros past `rows` and past D */
static __device__ void flash_tile(__nv_bfloat16 *t, const float *x, int64_t ld, int r0, int rows,
                                  int D, int Dp) {
    for (int e = threadIdx.x; e < FLASH_T * Dp; e += blockDim.x) {
        int r = e / Dp, d = e % Dp;
        t[e] = bf(r0 + r < rows && d < D ? x[(int64_t)(r0 + r) * ld + d] : 0.f);
    }
}
/* row 0 of head h of image n in x [N, L, H*D] */
static __device__ __forceinline__ const float *head_of(const float *x, int n, int L, int64_t HD, int h, int D) {
    return x + (int64_t)n * L * HD + (int64_t)h * D;
}
/* 64 values of a [N*H, L] row-vector from index r0, 0 past L */
static __device__ void flash_vec(float *t, const float *x, int r0, int L) {
    for (int e = threadIdx.x; e < FLASH_T; e += blockDim.x) t[e] = r0 + e < L ? x[r0 + e] : 0.f;
}

/* One warp: C[16][16*n16] (fp32, ld ldc) = (acc ? C : 0) + A[16][16*k16] (bf16,
 * row-major, ld lda) times B, B[kk][nn] = b[kk*ldb + nn] (b_col 0) or
 * b[nn*ldb + kk] (b_col 1). */
static __device__ void warp_mma(float *C, int ldc, const __nv_bfloat16 *A, int lda,
                                const __nv_bfloat16 *B, int ldb, int b_col, int n16, int k16, int acc) {
    using namespace nvcuda;
    for (int nt = 0; nt < n16; nt++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
        if (acc) wmma::load_matrix_sync(c, C + nt * 16, ldc, wmma::mem_row_major);
        else wmma::fill_fragment(c, 0.f);
        for (int kt = 0; kt < k16; kt++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
            wmma::load_matrix_sync(a, A + kt * 16, lda);
            if (b_col) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
                wmma::load_matrix_sync(b, B + (int64_t)nt * 16 * ldb + kt * 16, ldb);
                wmma::mma_sync(c, a, b, c);
            } else {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
                wmma::load_matrix_sync(b, B + (int64_t)kt * 16 * ldb + nt * 16, ldb);
                wmma::mma_sync(c, a, b, c);
            }
        }
        wmma::store_matrix_sync(C + nt * 16, c, ldc, wmma::mem_row_major);
    }
}

/* Shared memory, carved in this order (every piece a multiple of 32 bytes, as
 * WMMA wants): `tiles` bf16 tiles [64][Dp], `vecs` fp32 [64], then per warp
 * `f16x64` fp32 [16][64], `b16x64` bf16 [16][64], `accs` fp32 [16][Dp]. */
typedef struct FlashSmem {
    int tiles, vecs, f16x64, b16x64, accs;
} FlashSmem;
static __host__ __device__ size_t flash_smem_bytes(FlashSmem s, int Dp) {
    return (size_t)s.tiles * FLASH_T * Dp * 2 + (size_t)s.vecs * FLASH_T * 4 +
           (size_t)FLASH_W * ((size_t)s.f16x64 * 16 * FLASH_T * 4 + (size_t)s.b16x64 * 16 * FLASH_T * 2 +
                              (size_t)s.accs * 16 * Dp * 4);
}
/* piece `idx` of each kind, for warp w */
static __device__ __nv_bfloat16 *fs_tile(unsigned char *m, FlashSmem s, int Dp, int idx) {
    return (__nv_bfloat16 *)(m + (size_t)idx * FLASH_T * Dp * 2);
}
static __device__ float *fs_vec(unsigned char *m, FlashSmem s, int Dp, int idx) {
    return (float *)(m + (size_t)s.tiles * FLASH_T * Dp * 2) + idx * FLASH_T;
}
static __device__ unsigned char *fs_warp(unsigned char *m, FlashSmem s, int Dp, int w) {
    size_t per = (size_t)s.f16x64 * 16 * FLASH_T * 4 + (size_t)s.b16x64 * 16 * FLASH_T * 2 +
                 (size_t)s.accs * 16 * Dp * 4;
    return m + (size_t)s.tiles * FLASH_T * Dp * 2 + (size_t)s.vecs * FLASH_T * 4 + per * w;
}
static __device__ float *fs_f(unsigned char *m, FlashSmem s, int Dp, int w, int idx) {
    return (float *)fs_warp(m, s, Dp, w) + idx * 16 * FLASH_T;
}
static __device__ __nv_bfloat16 *fs_b(unsigned char *m, FlashSmem s, int Dp, int w, int idx) {
    return (__nv_bfloat16 *)(fs_warp(m, s, Dp, w) + (size_t)s.f16x64 * 16 * FLASH_T * 4) + idx * 16 * FLASH_T;
}
static __device__ float *fs_acc(unsigned char *m, FlashSmem s, int Dp, int w, int idx) {
    return (float *)(fs_warp(m, s, Dp, w) + (size_t)s.f16x64 * 16 * FLASH_T * 4 +
                     (size_t)s.b16x64 * 16 * FLASH_T * 2) + idx * 16 * Dp;
}

/* forward: tiles Q K V; per warp S, the rows' max / sum / rescale (in a second
 * fp32 [16][64] piece), P (bf16), O */
static __host__ __device__ FlashSmem flash_fwd_smem(void) { FlashSmem s = {3, 0, 2, 1, 1}; return s; }
/* dK dV: tiles K V Q dO; vecs lse delta; per warp P^T (fp32), dP^T, P^T then
 * dS^T (bf16), the dK and dV accumulators */
static __host__ __device__ FlashSmem flash_bkv_smem(void) { FlashSmem s = {4, 2, 2, 1, 2}; return s; }
/* dQ: tiles Q dO K V; vecs lse delta; per warp S, dP, dS (bf16), dQ */
static __host__ __device__ FlashSmem flash_bq_smem(void) { FlashSmem s = {4, 2, 2, 1, 1}; return s; }

extern __shared__ __align__(128) unsigned char flash_smem[];

/* grid (ceil(Lq / 64), N * H); q, o [N, Lq, H*D], k, v [N, Lk, H*D]; lse [N, H, Lq] */
__global__ void flash_fwd_k(const float *q, const float *k, const float *v, float *o, float *lse,
                            int Lq, int Lk, int H, int D, int Dp, float scale, int causal) {
    unsigned char *m = flash_smem;
    FlashSmem L = flash_fwd_smem();
    int nh = blockIdx.y, n = nh / H, h = nh % H, q0 = blockIdx.x * FLASH_T;
    int64_t HD = (int64_t)H * D;
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    __nv_bfloat16 *Qs = fs_tile(m, L, Dp, 0), *Ks = fs_tile(m, L, Dp, 1), *Vs = fs_tile(m, L, Dp, 2);
    float *S = fs_f(m, L, Dp, w, 0), *st = fs_f(m, L, Dp, w, 1), *O = fs_acc(m, L, Dp, w, 0);
    __nv_bfloat16 *P = fs_b(m, L, Dp, w, 0);
    float *Mx = st, *Sum = st + 16, *Al = st + 32;
    flash_tile(Qs, head_of(q, n, Lq, HD, h, D), HD, q0, Lq, D, Dp);
    for (int e = lane; e < 16 * Dp; e += 32) O[e] = 0.f;
    if (lane < 16) { Mx[lane] = -INFINITY; Sum[lane] = 0.f; }
    /* a lane owns row r = lane / 2 of its warp's 16 and half of the 64 columns */
    int r = lane / 2, c0 = (lane % 2) * 32, i = q0 + w * 16 + r;
    int kend = causal && q0 + FLASH_T < Lk ? q0 + FLASH_T : Lk;
    for (int k0 = 0; k0 < kend; k0 += FLASH_T) {
        __syncthreads(); /* every warp is done with the previous K V */
        flash_tile(Ks, head_of(k, n, Lk, HD, h, D), HD, k0, Lk, D, Dp);
        flash_tile(Vs, head_of(v, n, Lk, HD, h, D), HD, k0, Lk, D, Dp);
        __syncthreads();
        warp_mma(S, FLASH_T, Qs + w * 16 * Dp, Dp, Ks, Dp, 1, FLASH_T / 16, Dp / 16, 0); /* S = Q K^T */
        __syncwarp();
        float mx = -INFINITY;
        for (int j = c0; j < c0 + 32; j++) {
            int kj = k0 + j;
            float s = kj < Lk && !(causal && kj > i) ? S[r * FLASH_T + j] * scale : -INFINITY;
            S[r * FLASH_T + j] = s;
            mx = fmaxf(mx, s);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        float m_old = Mx[r], m_new = fmaxf(m_old, mx);
        /* no valid key yet: m stays -inf, nothing to rescale, p = 0 */
        float alpha = m_new == -INFINITY ? 1.f : expf(m_old - m_new), sum = 0.f;
        for (int j = c0; j < c0 + 32; j++) {
            float s = S[r * FLASH_T + j], p = s == -INFINITY ? 0.f : expf(s - m_new);
            sum += p;
            P[r * FLASH_T + j] = bf(p);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        __syncwarp(); /* both lanes of a row have read Mx[r] */
        if (c0 == 0) { Mx[r] = m_new; Sum[r] = Sum[r] * alpha + sum; Al[r] = alpha; }
        __syncwarp();
        for (int e = lane; e < 16 * Dp; e += 32) O[e] *= Al[e / Dp];
        __syncwarp();
        warp_mma(O, Dp, P, FLASH_T, Vs, Dp, 0, Dp / 16, FLASH_T / 16, 1); /* O += P V */
        __syncwarp();
    }
    for (int e = lane; e < 16 * D; e += 32) {
        int rr = e / D, d = e % D, ii = q0 + w * 16 + rr;
        if (ii < Lq)
            o[((int64_t)n * Lq + ii) * HD + (int64_t)h * D + d] = Sum[rr] > 0.f ? O[rr * Dp + d] / Sum[rr] : 0.f;
    }
    if (lane < 16 && q0 + w * 16 + lane < Lq)
        lse[(int64_t)nh * Lq + q0 + w * 16 + lane] = Sum[lane] > 0.f ? Mx[lane] + logf(Sum[lane]) : -INFINITY;
}

/* dK += dS^T Q, dV += P^T dO by key tiles: grid (ceil(Lk / 64), N * H) */
__global__ void flash_bwd_kv_k(const float *q, const float *k, const float *v, const float *dout,
                               const float *lse, const float *delta, float *dk, float *dv, int Lq,
                               int Lk, int H, int D, int Dp, float scale, int causal) {
    unsigned char *m = flash_smem;
    FlashSmem L = flash_bkv_smem();
    int nh = blockIdx.y, n = nh / H, h = nh % H, k0 = blockIdx.x * FLASH_T;
    int64_t HD = (int64_t)H * D;
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    __nv_bfloat16 *Ks = fs_tile(m, L, Dp, 0), *Vs = fs_tile(m, L, Dp, 1), *Qs = fs_tile(m, L, Dp, 2),
                  *dOs = fs_tile(m, L, Dp, 3), *Pb = fs_b(m, L, Dp, w, 0);
    float *ls = fs_vec(m, L, Dp, 0), *ds = fs_vec(m, L, Dp, 1);
    float *Pt = fs_f(m, L, Dp, w, 0), *dPt = fs_f(m, L, Dp, w, 1);
    float *dK = fs_acc(m, L, Dp, w, 0), *dV = fs_acc(m, L, Dp, w, 1);
    flash_tile(Ks, head_of(k, n, Lk, HD, h, D), HD, k0, Lk, D, Dp);
    flash_tile(Vs, head_of(v, n, Lk, HD, h, D), HD, k0, Lk, D, Dp);
    for (int e = lane; e < 16 * Dp; e += 32) dK[e] = dV[e] = 0.f;
    /* a lane owns key row r = lane / 2 of its warp's 16 and half of the queries */
    int r = lane / 2, c0 = (lane % 2) * 32, j = k0 + w * 16 + r;
    for (int q0 = causal ? k0 : 0; q0 < Lq; q0 += FLASH_T) { /* causal: only queries i >= j */
        __syncthreads();
        flash_tile(Qs, head_of(q, n, Lq, HD, h, D), HD, q0, Lq, D, Dp);
        flash_tile(dOs, head_of(dout, n, Lq, HD, h, D), HD, q0, Lq, D, Dp);
        flash_vec(ls, lse + (int64_t)nh * Lq, q0, Lq);
        flash_vec(ds, delta + (int64_t)nh * Lq, q0, Lq);
        __syncthreads();
        warp_mma(Pt, FLASH_T, Ks + w * 16 * Dp, Dp, Qs, Dp, 1, FLASH_T / 16, Dp / 16, 0); /* S^T = K Q^T */
        __syncwarp();
        for (int c = c0; c < c0 + 32; c++) {
            int i = q0 + c;
            float p = i < Lq && j < Lk && !(causal && j > i) ? expf(Pt[r * FLASH_T + c] * scale - ls[c]) : 0.f;
            Pt[r * FLASH_T + c] = p;
            Pb[r * FLASH_T + c] = bf(p);
        }
        __syncwarp();
        warp_mma(dV, Dp, Pb, FLASH_T, dOs, Dp, 0, Dp / 16, FLASH_T / 16, 1);                /* dV += P^T dO */
        warp_mma(dPt, FLASH_T, Vs + w * 16 * Dp, Dp, dOs, Dp, 1, FLASH_T / 16, Dp / 16, 0); /* dP^T = V dO^T */
        __syncwarp();
        for (int c = c0; c < c0 + 32; c++) /* dS = scale P (dP - delta) */
            Pb[r * FLASH_T + c] = bf(scale * Pt[r * FLASH_T + c] * (dPt[r * FLASH_T + c] - ds[c]));
        __syncwarp();
        warp_mma(dK, Dp, Pb, FLASH_T, Qs, Dp, 0, Dp / 16, FLASH_T / 16, 1); /* dK += dS^T Q */
        __syncwarp();
    }
    for (int e = lane; e < 16 * D; e += 32) {
        int rr = e / D, d = e % D, jj = k0 + w * 16 + rr;
        if (jj >= Lk) continue;
        int64_t at = ((int64_t)n * Lk + jj) * HD + (int64_t)h * D + d;
        if (dk) dk[at] += dK[rr * Dp + d];
        if (dv) dv[at] += dV[rr * Dp + d];
    }
}

/* dQ += dS K by query tiles: grid (ceil(Lq / 64), N * H) */
__global__ void flash_bwd_q_k(const float *q, const float *k, const float *v, const float *dout,
                              const float *lse, const float *delta, float *dq, int Lq, int Lk, int H,
                              int D, int Dp, float scale, int causal) {
    unsigned char *m = flash_smem;
    FlashSmem L = flash_bq_smem();
    int nh = blockIdx.y, n = nh / H, h = nh % H, q0 = blockIdx.x * FLASH_T;
    int64_t HD = (int64_t)H * D;
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    __nv_bfloat16 *Qs = fs_tile(m, L, Dp, 0), *dOs = fs_tile(m, L, Dp, 1), *Ks = fs_tile(m, L, Dp, 2),
                  *Vs = fs_tile(m, L, Dp, 3), *Sb = fs_b(m, L, Dp, w, 0);
    float *ls = fs_vec(m, L, Dp, 0), *ds = fs_vec(m, L, Dp, 1);
    float *S = fs_f(m, L, Dp, w, 0), *dP = fs_f(m, L, Dp, w, 1), *dQ = fs_acc(m, L, Dp, w, 0);
    flash_tile(Qs, head_of(q, n, Lq, HD, h, D), HD, q0, Lq, D, Dp);
    flash_tile(dOs, head_of(dout, n, Lq, HD, h, D), HD, q0, Lq, D, Dp);
    flash_vec(ls, lse + (int64_t)nh * Lq, q0, Lq);
    flash_vec(ds, delta + (int64_t)nh * Lq, q0, Lq);
    for (int e = lane; e < 16 * Dp; e += 32) dQ[e] = 0.f;
    int r = lane / 2, c0 = (lane % 2) * 32, rq = w * 16 + r, i = q0 + rq;
    int kend = causal && q0 + FLASH_T < Lk ? q0 + FLASH_T : Lk;
    for (int k0 = 0; k0 < kend; k0 += FLASH_T) {
        __syncthreads();
        flash_tile(Ks, head_of(k, n, Lk, HD, h, D), HD, k0, Lk, D, Dp);
        flash_tile(Vs, head_of(v, n, Lk, HD, h, D), HD, k0, Lk, D, Dp);
        __syncthreads();
        warp_mma(S, FLASH_T, Qs + w * 16 * Dp, Dp, Ks, Dp, 1, FLASH_T / 16, Dp / 16, 0);   /* S = Q K^T */
        warp_mma(dP, FLASH_T, dOs + w * 16 * Dp, Dp, Vs, Dp, 1, FLASH_T / 16, Dp / 16, 0); /* dP = dO V^T */
        __syncwarp();
        for (int c = c0; c < c0 + 32; c++) {
            int kj = k0 + c;
            float p = i < Lq && kj < Lk && !(causal && kj > i) ? expf(S[r * FLASH_T + c] * scale - ls[rq]) : 0.f;
            Sb[r * FLASH_T + c] = bf(scale * p * (dP[r * FLASH_T + c] - ds[rq]));
        }
        __syncwarp();
        warp_mma(dQ, Dp, Sb, FLASH_T, Ks, Dp, 0, Dp / 16, FLASH_T / 16, 1); /* dQ += dS K */
        __syncwarp();
    }
    for (int e = lane; e < 16 * D; e += 32) {
        int rr = e / D, d = e % D, ii = q0 + w * 16 + rr;
        if (ii < Lq) dq[((int64_t)n * Lq + ii) * HD + (int64_t)h * D + d] += dQ[rr * Dp + d];
    }
}

/* BF16 mode, a head of at most FLASH_DMAX, shared memory for it and at most
 * 65535 (image, head) pairs (the grid's y); env KRONA_CUDA_FLASH=0: always
 * the row tiles (to compare the two). The padded head width, or 0. */
static int flash_dp(Cuda *c, int N, int H, int D) {
    if (c->prec != KRONA_PREC_BF16 || !c->flash || D > FLASH_DMAX || (int64_t)N * H > 65535) return 0;
    int Dp = (D + 15) / 16 * 16;
    if (flash_smem_bytes(flash_bkv_smem(), Dp) > (size_t)c->smem_optin) return 0;
    return Dp;
}
/* once, at create: the switches and the card's shared-memory opt-in limit */
static void fused_setup(Cuda *c) {
    const char *env = getenv("KRONA_CUDA_FLASH");
    c->flash = !(env && env[0] == '0');
    env = getenv("KRONA_CUDA_FUSED_KRON");
    c->fused_kron = !(env && env[0] == '0');
    if (cudaDeviceGetAttribute(&c->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, c->dev) != cudaSuccess) {
        cudaGetLastError();
        c->smem_optin = 48 << 10;
    }
}
static void flash_fwd(Cuda *c, const float *q, const float *k, const float *v, float *o, float *lse, int N,
                      int Lq, int Lk, int H, int D, int Dp, float scale, int causal) {
    PROF_STAGE(c, "flash");
    dim3 g((unsigned)((Lq + FLASH_T - 1) / FLASH_T), (unsigned)(N * H));
    flash_fwd_k<<<g, FLASH_W * 32, flash_smem_bytes(flash_fwd_smem(), Dp), c->stream>>>(
        q, k, v, o, lse, Lq, Lk, H, D, Dp, scale, causal);
    LAUNCHED(c);
}
static void flash_bwd(Cuda *c, const float *dout, const float *q, const float *k, const float *v,
                      const float *lse, const float *delta, float *dq, float *dk, float *dv, int N, int Lq,
                      int Lk, int H, int D, int Dp, float scale, int causal) {
    if (dk || dv) {
        PROF_STAGE(c, "flash dk dv");
        dim3 g((unsigned)((Lk + FLASH_T - 1) / FLASH_T), (unsigned)(N * H));
        flash_bwd_kv_k<<<g, FLASH_W * 32, flash_smem_bytes(flash_bkv_smem(), Dp), c->stream>>>(
            q, k, v, dout, lse, delta, dk, dv, Lq, Lk, H, D, Dp, scale, causal);
        LAUNCHED(c);
    }
    if (dq) {
        PROF_STAGE(c, "flash dq");
        dim3 g((unsigned)((Lq + FLASH_T - 1) / FLASH_T), (unsigned)(N * H));
        flash_bwd_q_k<<<g, FLASH_W * 32, flash_smem_bytes(flash_bq_smem(), Dp), c->stream>>>(
            q, k, v, dout, lse, delta, dq, Lq, Lk, H, D, Dp, scale, causal);
        LAUNCHED(c);
    }
}

static void cu_attention_fwd(Backend *be, const float *q, const float *k, const float *v,
                             float *o, float *lse, int N, int Lq, int Lk, int H, int D,
                             float scale, int causal) {
    Cuda *c = CU(be);
    if (N <= 0 || Lq <= 0 || H <= 0 || D <= 0) return;
    int64_t HD = (int64_t)H * D;
    if (Lk <= 0) { CK(c, cudaMemsetAsync(o, 0, (size_t)N * Lq * HD * sizeof(float), c->stream)); return; }
    int Dp = flash_dp(c, N, H, D);
    if (Dp) {
        float *lse_tmp = lse ? NULL : (float *)dalloc(c, (size_t)N * H * Lq * sizeof(float));
        if (lse || lse_tmp) flash_fwd(c, q, k, v, o, lse ? lse : lse_tmp, N, Lq, Lk, H, D, Dp, scale, causal);
        dfree(c, lse_tmp);
        return;
    }
    AttnSplit a = attn_split(N, Lq, Lk, H, D);
    int T = attn_tile(Lq, Lk, a.B);
    float *S = (float *)dalloc(c, (size_t)a.B * T * Lk * sizeof(float));
    float *lse_tmp = lse ? NULL : (float *)dalloc(c, (size_t)N * H * Lq * sizeof(float));
    if (!S || (!lse && !lse_tmp)) { dfree(c, S); dfree(c, lse_tmp); return; }
    float *L = lse ? lse : lse_tmp;
    for (int g = 0; g < a.G; g++) {
        const float *qg = q + g * a.q_o, *kg = k + g * a.k_o, *vg = v + g * a.k_o;
        float *og = o + g * a.q_o, *lg = L + g * a.l_o;
        for (int i0 = 0; i0 < Lq; i0 += T) {
            int t = Lq - i0 < T ? Lq - i0 : T;
            gemm_sb(c, 0, 1, t, Lk, D, scale, qg + (int64_t)i0 * HD, HD, a.q_b, kg, HD, a.k_b, 0.f,
                    S, Lk, (int64_t)t * Lk, a.B);
            {
                PROF_STAGE(c, "softmax");
                attn_softmax_k<<<(unsigned)(a.B * t), 128, 0, c->stream>>>(S, lg, t, Lk, i0, Lq, causal, a.l_b);
                LAUNCHED(c);
            }
            gemm_sb(c, 0, 0, t, D, Lk, 1.f, S, Lk, (int64_t)t * Lk, vg, HD, a.k_b, 0.f,
                    og + (int64_t)i0 * HD, HD, a.q_b, a.B);
        }
    }
    dfree(c, S);
    dfree(c, lse_tmp);
}

static void cu_attention_bwd(Backend *be, const float *dout, const float *q, const float *k,
                             const float *v, const float *o, const float *lse, float *dq,
                             float *dk, float *dv, int N, int Lq, int Lk, int H, int D,
                             float scale, int causal) {
    Cuda *c = CU(be);
    if (N <= 0 || Lq <= 0 || Lk <= 0 || H <= 0 || D <= 0 || (!dq && !dk && !dv)) return;
    int64_t HD = (int64_t)H * D;
    int Dp = flash_dp(c, N, H, D);
    if (Dp) {
        float *delta = (float *)dalloc(c, (size_t)N * H * Lq * sizeof(float));
        if (!delta) return;
        int64_t tot = (int64_t)N * Lq * H;
        attn_delta_k<<<grid_1d(tot), TPB, 0, c->stream>>>(dout, o, delta, Lq, H, D, tot);
        LAUNCHED(c);
        flash_bwd(c, dout, q, k, v, lse, delta, dq, dk, dv, N, Lq, Lk, H, D, Dp, scale, causal);
        dfree(c, delta);
        return;
    }
    AttnSplit a = attn_split(N, Lq, Lk, H, D);
    int T = attn_tile(Lq, Lk, a.B);
    int need_ds = dq || dk;
    float *P = (float *)dalloc(c, (size_t)a.B * T * Lk * sizeof(float));
    float *dP = need_ds ? (float *)dalloc(c, (size_t)a.B * T * Lk * sizeof(float)) : NULL;
    float *delta = need_ds ? (float *)dalloc(c, (size_t)N * H * Lq * sizeof(float)) : NULL;
    if (!P || (need_ds && (!dP || !delta))) { dfree(c, P); dfree(c, dP); dfree(c, delta); return; }
    if (need_ds) {
        int64_t tot = (int64_t)N * Lq * H;
        attn_delta_k<<<grid_1d(tot), TPB, 0, c->stream>>>(dout, o, delta, Lq, H, D, tot);
        LAUNCHED(c);
    }
    for (int g = 0; g < a.G; g++) {
        const float *qg = q + g * a.q_o, *kg = k + g * a.k_o, *vg = v + g * a.k_o,
                    *dog = dout + g * a.q_o, *lg = lse + g * a.l_o;
        for (int i0 = 0; i0 < Lq; i0 += T) {
            int t = Lq - i0 < T ? Lq - i0 : T;
            int64_t tot = (int64_t)a.B * t * Lk;
            const float *qt = qg + (int64_t)i0 * HD, *dot = dog + (int64_t)i0 * HD;
            gemm_sb(c, 0, 1, t, Lk, D, scale, qt, HD, a.q_b, kg, HD, a.k_b, 0.f, P, Lk,
                    (int64_t)t * Lk, a.B);
            {
                PROF_STAGE(c, "softmax");
                attn_recompute_p_k<<<grid_1d(tot), TPB, 0, c->stream>>>(P, lg, t, Lk, i0, Lq, causal,
                                                                        a.l_b, tot);
                LAUNCHED(c);
            }
            if (dv) /* dV += P^T dO */
                gemm_sb(c, 1, 0, Lk, D, t, 1.f, P, Lk, (int64_t)t * Lk, dot, HD, a.q_b, 1.f,
                        dv + g * a.k_o, HD, a.k_b, a.B);
            if (!need_ds) continue;
            /* dP = dO V^T, then dS = scale P (dP - delta) */
            gemm_sb(c, 0, 1, t, Lk, D, 1.f, dot, HD, a.q_b, vg, HD, a.k_b, 0.f, dP, Lk,
                    (int64_t)t * Lk, a.B);
            {
                PROF_STAGE(c, "dS");
                attn_ds_k<<<grid_1d(tot), TPB, 0, c->stream>>>(P, dP, delta + g * a.l_o, t, Lk, i0, Lq,
                                                               scale, a.l_b, tot);
                LAUNCHED(c);
            }
            if (dq) /* dQ += dS K */
                gemm_sb(c, 0, 0, t, D, Lk, 1.f, dP, Lk, (int64_t)t * Lk, kg, HD, a.k_b, 1.f,
                        dq + g * a.q_o + (int64_t)i0 * HD, HD, a.q_b, a.B);
            if (dk) /* dK += dS^T Q */
                gemm_sb(c, 1, 0, Lk, D, t, 1.f, dP, Lk, (int64_t)t * Lk, qt, HD, a.q_b, 1.f,
                        dk + g * a.k_o, HD, a.k_b, a.B);
        }
    }
    dfree(c, P);
    dfree(c, dP);
    dfree(c, delta);
}

/* ---------------------------------------------------- diffusion helpers */

__global__ void timestep_emb_k(const float *t, float *emb, int N, int dim, int flip, float shift,
                               float log_max_period) {
    GSTRIDE(idx, (int64_t)N * dim) {
        int n = (int)(idx / dim), j = (int)(idx % dim), half = dim / 2;
        float v = 0.f; /* odd dim: the last column is zero padding */
        if (j < 2 * half) {
            int f = j < half ? j : j - half;
            float ex = (-log_max_period * (float)f) / ((float)half - shift);
            float a = t[n] * expf(ex);
            int first = j < half;
            v = (first != (flip != 0)) ? sinf(a) : cosf(a);
        }
        emb[idx] = v;
    }
}
static void cu_timestep_embedding(Backend *be, const float *t, float *emb, int N, int dim,
                                  int flip_sin_to_cos, float shift, float max_period) {
    int64_t total = (int64_t)N * dim;
    LAUNCH1D(CU(be), total, timestep_emb_k, t, emb, N, dim, flip_sin_to_cos, shift,
             (float)log((double)max_period));
}

#define MSE_BLOCKS 1024
__global__ void mse_partial_k(const float *p, const float *t, int64_t n, float *part) {
    float acc = 0.f;
    GSTRIDE(i, n) { float d = p[i] - t[i]; acc += d * d; }
    acc = block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}
__global__ void mse_final_k(const float *part, int P, int64_t n, float *out) {
    __shared__ double sh[TPB];
    double s = 0.0;
    for (int i = threadIdx.x; i < P; i += blockDim.x) s += part[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = (float)(sh[0] / (double)n);
}
static float cu_mse_fwd(Backend *be, const float *pred, const float *target, int64_t n) {
    Cuda *c = CU(be);
    if (refuse(c, "mse_fwd (its loss goes to the host)")) return NAN;
    if (n <= 0) return 0.f;
    unsigned P = grid_1d(n);
    if (P > MSE_BLOCKS) P = MSE_BLOCKS;
    float *part = (float *)dalloc(c, (P + 1) * sizeof(float));
    if (!part) return NAN;
    long before = c->nerr;
    mse_partial_k<<<P, TPB, 0, c->stream>>>(pred, target, n, part);
    LAUNCHED(c);
    mse_final_k<<<1, TPB, 0, c->stream>>>(part, (int)P, n, part + P);
    LAUNCHED(c);
    CK(c, cudaMemcpyAsync(c->host_scalar, part + P, sizeof(float), cudaMemcpyDeviceToHost, c->stream));
    CK(c, cudaStreamSynchronize(c->stream));
    dfree(c, part);
    return c->nerr == before ? *c->host_scalar : NAN;
}
__global__ void mse_bwd_k(const float *p, const float *t, float *dp, int64_t n, float k) {
    GSTRIDE(i, n) dp[i] += k * (p[i] - t[i]);
}
static void cu_mse_bwd(Backend *be, const float *pred, const float *target, float *dpred,
                       int64_t n, float weight) {
    if (!dpred || n <= 0) return;
    LAUNCH1D(CU(be), n, mse_bwd_k, pred, target, dpred, n, (float)(2.0 * weight / (double)n));
}

__global__ void adamw_k(float *param, const float *grad, float *m, float *v, int64_t n, float lr,
                        float b1, float b2, float eps, float decay, float step, float inv_bc2_sqrt) {
    GSTRIDE(i, n) {
        float g = grad[i];
        float mi = b1 * m[i] + (1.f - b1) * g;
        float vi = b2 * v[i] + (1.f - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float p = param[i] * decay;
        param[i] = p - step * mi / (sqrtf(vi) * inv_bc2_sqrt + eps);
    }
}
static void cu_adamw(Backend *be, float *param, const float *grad, float *m, float *v, int64_t n,
                     float lr, float beta1, float beta2, float eps, float weight_decay, int t) {
    if (t < 1) t = 1;
    double bc1 = 1.0 - pow((double)beta1, t), bc2 = 1.0 - pow((double)beta2, t);
    float decay = (float)(1.0 - (double)lr * weight_decay);
    float step = (float)(lr / bc1), inv = (float)(1.0 / sqrt(bc2));
    LAUNCH1D(CU(be), n, adamw_k, param, grad, m, v, n, lr, beta1, beta2, eps, decay, step, inv);
}

/* --------------------------------------------------- Kronecker adapter
 * Rows of x are X_m[a2,b2]; y_m = A X_m B^T, multiplied from the cheaper side
 * (kron_a_first, core/backend.h; the CPU backend takes the same order):
 *   A first:  Z_m = A X_m (strided batched), y += scale Z_all B^T (one gemm);
 *             U_all = dY_all B (one gemm): dX_m += scale A^T U_m,
 *             dA += scale sum_m U_m X_m^T; dB += scale dY_all^T Z_all
 *   B first:  T_all = X_all B^T (one gemm), Y_m += scale A T_m;
 *             V_m = A^T dY_m: dX_all += scale V_all B, dB += scale V_all^T X_all;
 *             dA += scale sum_m dY_m T_m^T
 * (per-row products into [M, a1*a2], then a column sum, for dA).
 * Rows go in chunks so workspaces stay under KRON_WS_BYTES. */
#ifndef KRON_WS_BYTES /* the emulator shrinks these to exercise the chunked paths */
#define KRON_WS_BYTES ((size_t)256 << 20)
#endif

static int64_t kron_chunk(int64_t M, int64_t per_row_floats) {
    int64_t mc = (int64_t)(KRON_WS_BYTES / sizeof(float)) / (per_row_floats > 0 ? per_row_floats : 1);
    if (mc < 1) mc = 1;
    return mc > M ? M : mc;
}

/* Fused: one kernel per call (forward), or one plus a fixed-order sum of the
 * blocks' dA dB partials (backward), instead of 2 and up to 7 cuBLAS launches
 * of tiny GEMMs. A block takes a contiguous run of rows, R rows at a time: A,
 * B, the R rows' X_m (and dY_m) and their intermediate products sit in shared
 * memory, every thread busy on one element of one row per phase. Products
 * from the same side as the GEMM path (other sum order). R keeps a block's
 * shared memory near 64 KB; shapes for which one row does not fit in the
 * card's limit take the GEMMs (env KRONA_CUDA_FUSED_KRON=0: always). Blocks
 * and R depend on the shapes only, so the partial sums, and the results, are
 * the same on any card. */
#define KRON_SMEM_TARGET ((size_t)64 << 10)
static int kron_blocks(int64_t M) {
    int64_t nb = (M + 15) / 16;
    return (int)(nb < 1 ? 1 : nb > 256 ? 256 : nb);
}
/* floats of shared memory for R rows: forward A B X T; backward A B X dY P Q dA dB */
static size_t kron_smem(int bwd, int a1, int a2, int b1, int b2, int R) {
    int64_t aa = (int64_t)a1 * a2, bb = (int64_t)b1 * b2, din = (int64_t)a2 * b2, dout = (int64_t)a1 * b1;
    int64_t tr = kron_a_first(a1, a2, b1, b2) ? (int64_t)a1 * b2 : (int64_t)a2 * b1;
    int64_t f = bwd ? 2 * (aa + bb) + R * (din + dout + 2 * tr) : aa + bb + R * (din + tr);
    return sizeof(float) * (size_t)f;
}
/* rows per pass: up to 16 while the target holds (at least 1) */
static int kron_rows(int bwd, int a1, int a2, int b1, int b2) {
    int R = 16;
    while (R > 1 && kron_smem(bwd, a1, a2, b1, b2, R) > KRON_SMEM_TARGET) R /= 2;
    return R;
}

extern __shared__ __align__(16) float kron_smem_buf[];

/* y_m += scale A X_m B^T for the block's rows (af: A first, else B first) */
__global__ void kron_fwd_k(const float *x, const float *A, const float *B, float *y, int64_t M, int a1,
                           int a2, int b1, int b2, float scale, int af, int64_t rpb, int R) {
    int aa = a1 * a2, bb = b1 * b2, din = a2 * b2, dout = a1 * b1, tr = af ? a1 * b2 : a2 * b1;
    float *As = kron_smem_buf, *Bs = As + aa, *Xs = Bs + bb, *Ts = Xs + (int64_t)R * din;
    for (int e = threadIdx.x; e < aa; e += blockDim.x) As[e] = A[e];
    for (int e = threadIdx.x; e < bb; e += blockDim.x) Bs[e] = B[e];
    int64_t m0 = blockIdx.x * rpb, m1 = m0 + rpb < M ? m0 + rpb : M;
    for (int64_t mb = m0; mb < m1; mb += R) {
        int nr = m1 - mb < R ? (int)(m1 - mb) : R;
        __syncthreads(); /* the last pass's X and T are used up (and A, B loaded) */
        for (int e = threadIdx.x; e < nr * din; e += blockDim.x) Xs[e] = x[mb * din + e];
        __syncthreads();
        for (int e = threadIdx.x; e < nr * tr; e += blockDim.x) {
            const float *X = Xs + (e / tr) * din;
            int t = e % tr;
            float v = 0.f;
            if (af) { /* Z[i][k] = sum_l A[i][l] X[l][k] */
                int i = t / b2, k = t % b2;
                for (int l = 0; l < a2; l++) v += As[i * a2 + l] * X[l * b2 + k];
            } else { /* T[l][j] = sum_k X[l][k] B[j][k] */
                int l = t / b1, j = t % b1;
                for (int k = 0; k < b2; k++) v += X[l * b2 + k] * Bs[j * b2 + k];
            }
            Ts[e] = v;
        }
        __syncthreads();
        for (int e = threadIdx.x; e < nr * dout; e += blockDim.x) {
            const float *T = Ts + (e / dout) * tr;
            int o = e % dout, i = o / b1, j = o % b1;
            float v = 0.f;
            if (af) for (int k = 0; k < b2; k++) v += T[i * b2 + k] * Bs[j * b2 + k];
            else for (int l = 0; l < a2; l++) v += As[i * a2 + l] * T[l * b1 + j];
            y[mb * dout + e] += scale * v;
        }
    }
}

/* dx_m += scale A^T dY_m B; the block's unscaled sums of dA and dB into
 * pA[blockIdx.x] and pB[blockIdx.x] (NULL: not wanted) */
__global__ void kron_bwd_k(const float *dy, const float *x, const float *A, const float *B, float *dx,
                           float *pA, float *pB, int64_t M, int a1, int a2, int b1, int b2, int af,
                           float scale, int64_t rpb, int R) {
    int aa = a1 * a2, bb = b1 * b2, din = a2 * b2, dout = a1 * b1, tr = af ? a1 * b2 : a2 * b1;
    float *As = kron_smem_buf, *Bs = As + aa, *accA = Bs + bb, *accB = accA + aa, *Xs = accB + bb;
    float *Gs = Xs + (int64_t)R * din, *Ps = Gs + (int64_t)R * dout, *Qs = Ps + (int64_t)R * tr;
    for (int e = threadIdx.x; e < aa; e += blockDim.x) { As[e] = A[e]; accA[e] = 0.f; }
    for (int e = threadIdx.x; e < bb; e += blockDim.x) { Bs[e] = B[e]; accB[e] = 0.f; }
    /* A first: P = U = dY B, Q = Z = A X; B first: P = V = A^T dY, Q = T = X B^T */
    int needP = af ? dx || pA : dx || pB, needQ = af ? pB != NULL : pA != NULL;
    int64_t m0 = blockIdx.x * rpb, m1 = m0 + rpb < M ? m0 + rpb : M;
    for (int64_t mb = m0; mb < m1; mb += R) {
        int nr = m1 - mb < R ? (int)(m1 - mb) : R;
        __syncthreads();
        for (int e = threadIdx.x; e < nr * din; e += blockDim.x) Xs[e] = x[mb * din + e];
        for (int e = threadIdx.x; e < nr * dout; e += blockDim.x) Gs[e] = dy[mb * dout + e];
        __syncthreads();
        for (int e = threadIdx.x; e < nr * tr; e += blockDim.x) {
            int r = e / tr, t = e % tr;
            const float *X = Xs + r * din, *G = Gs + r * dout;
            float p = 0.f, q = 0.f;
            if (af) {
                int i = t / b2, k = t % b2;
                if (needP) for (int j = 0; j < b1; j++) p += G[i * b1 + j] * Bs[j * b2 + k];
                if (needQ) for (int l = 0; l < a2; l++) q += As[i * a2 + l] * X[l * b2 + k];
            } else {
                int l = t / b1, j = t % b1;
                if (needP) for (int i = 0; i < a1; i++) p += As[i * a2 + l] * G[i * b1 + j];
                if (needQ) for (int k = 0; k < b2; k++) q += X[l * b2 + k] * Bs[j * b2 + k];
            }
            Ps[e] = p;
            Qs[e] = q;
        }
        __syncthreads();
        if (dx)
            for (int e = threadIdx.x; e < nr * din; e += blockDim.x) {
                const float *P = Ps + (e / din) * tr;
                int o = e % din, l = o / b2, k = o % b2;
                float v = 0.f;
                if (af) for (int i = 0; i < a1; i++) v += As[i * a2 + l] * P[i * b2 + k];
                else for (int j = 0; j < b1; j++) v += P[l * b1 + j] * Bs[j * b2 + k];
                dx[mb * din + e] += scale * v;
            }
        /* a thread owns its accumulator elements for the whole run: rows in order */
        if (pA) /* dA[i][l] += sum_k U[i][k] X[l][k]  or  sum_j dY[i][j] T[l][j] */
            for (int e = threadIdx.x; e < aa; e += blockDim.x) {
                int i = e / a2, l = e % a2;
                float v = 0.f;
                for (int r = 0; r < nr; r++) {
                    const float *X = Xs + r * din, *G = Gs + r * dout, *P = Ps + r * tr, *Q = Qs + r * tr;
                    if (af) for (int k = 0; k < b2; k++) v += P[i * b2 + k] * X[l * b2 + k];
                    else for (int j = 0; j < b1; j++) v += G[i * b1 + j] * Q[l * b1 + j];
                }
                accA[e] += v;
            }
        if (pB) /* dB[j][k] += sum_i dY[i][j] Z[i][k]  or  sum_l V[l][j] X[l][k] */
            for (int e = threadIdx.x; e < bb; e += blockDim.x) {
                int j = e / b2, k = e % b2;
                float v = 0.f;
                for (int r = 0; r < nr; r++) {
                    const float *X = Xs + r * din, *G = Gs + r * dout, *P = Ps + r * tr, *Q = Qs + r * tr;
                    if (af) for (int i = 0; i < a1; i++) v += G[i * b1 + j] * Q[i * b2 + k];
                    else for (int l = 0; l < a2; l++) v += P[l * b1 + j] * X[l * b2 + k];
                }
                accB[e] += v;
            }
    }
    /* each thread wrote only its own accumulators: no barrier needed before this */
    if (pA) for (int e = threadIdx.x; e < aa; e += blockDim.x) pA[(int64_t)blockIdx.x * aa + e] = accA[e];
    if (pB) for (int e = threadIdx.x; e < bb; e += blockDim.x) pB[(int64_t)blockIdx.x * bb + e] = accB[e];
}

static int kron_fused_ok(Cuda *c, size_t smem) { return c->fused_kron && smem <= (size_t)c->smem_optin; }

static void cu_kron_fwd(Backend *be, const float *x, const float *A, const float *B, float *y,
                        int64_t M, int a1, int a2, int b1, int b2, float scale) {
    Cuda *c = CU(be);
    if (M <= 0) return;
    int af = kron_a_first(a1, a2, b1, b2);
    int R = kron_rows(0, a1, a2, b1, b2);
    size_t sm = kron_smem(0, a1, a2, b1, b2, R);
    if (kron_fused_ok(c, sm)) {
        int nb = kron_blocks(M);
        kron_fwd_k<<<nb, TPB, sm, c->stream>>>(x, A, B, y, M, a1, a2, b1, b2, scale, af, (M + nb - 1) / nb, R);
        LAUNCHED(c);
        return;
    }
    int64_t din = (int64_t)a2 * b2, dout = (int64_t)a1 * b1;
    int64_t tr = af ? (int64_t)a1 * b2 : (int64_t)a2 * b1; /* Z_m or T_m */
    int64_t mc = kron_chunk(M, tr);
    float *T = (float *)dalloc(c, (size_t)(mc * tr) * sizeof(float));
    if (!T) return;
    for (int64_t m0 = 0; m0 < M; m0 += mc) {
        int64_t m = M - m0 < mc ? M - m0 : mc;
        if (af) {
            gemm_sb(c, 0, 0, a1, b2, a2, 1.f, A, a2, 0, x + m0 * din, b2, din, 0.f, T, b2, tr, m);
            gemm1(c, 0, 1, m * a1, b1, b2, scale, T, b2, B, b2, 1.f, y + m0 * dout, b1);
        } else {
            gemm1(c, 0, 1, m * a2, b1, b2, 1.f, x + m0 * din, b2, B, b2, 0.f, T, b1);
            gemm_sb(c, 0, 0, a1, b1, a2, scale, A, a2, 0, T, b1, tr, 1.f, y + m0 * dout, b1, dout, m);
        }
    }
    dfree(c, T);
}

static void cu_kron_bwd(Backend *be, const float *dy, const float *x, const float *A,
                        const float *B, float *dx, float *dA, float *dB, int64_t M, int a1,
                        int a2, int b1, int b2, float scale) {
    Cuda *c = CU(be);
    if (M <= 0 || (!dx && !dA && !dB)) return;
    int af = kron_a_first(a1, a2, b1, b2);
    int R = kron_rows(1, a1, a2, b1, b2);
    size_t sm = kron_smem(1, a1, a2, b1, b2, R);
    if (kron_fused_ok(c, sm)) {
        int nb = kron_blocks(M);
        int64_t aa = (int64_t)a1 * a2, bb = (int64_t)b1 * b2;
        float *part = dA || dB ? (float *)dalloc(c, (size_t)nb * ((dA ? aa : 0) + (dB ? bb : 0)) * sizeof(float)) : NULL;
        if ((dA || dB) && !part) return;
        float *pA = dA ? part : NULL, *pB = dB ? part + (dA ? nb * aa : 0) : NULL;
        kron_bwd_k<<<nb, TPB, sm, c->stream>>>(dy, x, A, B, dx, pA, pB, M, a1, a2, b1, b2, af, scale,
                                                (M + nb - 1) / nb, R);
        LAUNCHED(c);
        int ca = dA ? (int)aa : 0, cb = dB ? (int)bb : 0;
        if (ca + cb) {
            partial_final2_k<<<grid_1d(ca + cb), TPB, 0, c->stream>>>(pA, ca, dA, pB, cb, dB, nb, scale);
            LAUNCHED(c);
        }
        dfree(c, part);
        return;
    }
    int64_t din = (int64_t)a2 * b2, dout = (int64_t)a1 * b1, aa = (int64_t)a1 * a2;
    int64_t tr = af ? (int64_t)a1 * b2 : (int64_t)a2 * b1; /* U_m, Z_m or V_m, T_m */
    /* the first product (U or V) and the second (Z or T) each take tr per row */
    int64_t per_row = tr + (dA ? aa : 0);
    int64_t mc = kron_chunk(M, per_row);
    float *ws = (float *)dalloc(c, (size_t)(mc * per_row) * sizeof(float));
    if (!ws) return;
    float *P = ws, *Wb = ws + mc * tr;
    for (int64_t m0 = 0; m0 < M; m0 += mc) {
        int64_t m = M - m0 < mc ? M - m0 : mc;
        const float *dyc = dy + m0 * dout, *xc = x + m0 * din;
        if (af) {
            if (dx || dA) {
                gemm1(c, 0, 0, m * a1, b2, b1, 1.f, dyc, b1, B, b2, 0.f, P, b2); /* U */
                if (dx)
                    gemm_sb(c, 1, 0, a2, b2, a1, scale, A, a2, 0, P, b2, tr, 1.f, dx + m0 * din,
                            b2, din, m);
                if (dA) {
                    gemm_sb(c, 0, 1, a1, a2, b2, 1.f, P, b2, tr, xc, b2, din, 0.f, Wb, a2, aa, m);
                    colsum_accum(c, Wb, m, (int)aa, dA, scale);
                }
            }
            if (dB) {
                gemm_sb(c, 0, 0, a1, b2, a2, 1.f, A, a2, 0, xc, b2, din, 0.f, P, b2, tr, m); /* Z */
                gemm1(c, 1, 0, b1, b2, m * a1, scale, dyc, b1, P, b2, 1.f, dB, b2);
            }
        } else {
            if (dx || dB) {
                gemm_sb(c, 1, 0, a2, b1, a1, 1.f, A, a2, 0, dyc, b1, dout, 0.f, P, b1, tr, m); /* V */
                if (dx) gemm1(c, 0, 0, m * a2, b2, b1, scale, P, b1, B, b2, 1.f, dx + m0 * din, b2);
                if (dB) gemm1(c, 1, 0, b1, b2, m * a2, scale, P, b1, xc, b2, 1.f, dB, b2);
            }
            if (dA) {
                gemm1(c, 0, 1, m * a2, b1, b2, 1.f, xc, b2, B, b2, 0.f, P, b1); /* T */
                gemm_sb(c, 0, 1, a1, a2, b1, 1.f, dyc, b1, dout, P, b1, tr, 0.f, Wb, a2, aa, m);
                colsum_accum(c, Wb, m, (int)aa, dA, scale);
            }
        }
    }
    dfree(c, ws);
}

__global__ void kron_merge_k(const float *A, const float *B, float *W, int a2, int b1, int b2,
                             float scale, int64_t total) {
    GSTRIDE(idx, total) {
        int64_t din = (int64_t)a2 * b2;
        int64_t r = idx / din, col = idx % din;
        int64_t i = r / b1, kk = r % b1, j = col / b2, l = col % b2;
        W[idx] += scale * A[i * a2 + j] * B[kk * b2 + l];
    }
}
static void cu_kron_merge(Backend *be, const float *A, const float *B, float *W, int a1, int a2,
                          int b1, int b2, float scale) {
    int64_t total = (int64_t)a1 * b1 * a2 * b2;
    if (CU(be)->n_frozen) frozen_touch(CU(be), W, (size_t)total * sizeof(float), 1);
    LAUNCH1D(CU(be), total, kron_merge_k, A, B, W, a2, b1, b2, scale, total);
}

/* ------------------------------------------------------------- create */

/* let the kernels with dynamic shared memory have what their largest shapes
 * need (fused attention: the widest head; Kronecker: up to the card's limit) */
static void smem_setup(Cuda *c) {
    int want[5] = {(int)flash_smem_bytes(flash_fwd_smem(), FLASH_DMAX), (int)flash_smem_bytes(flash_bkv_smem(), FLASH_DMAX),
                   (int)flash_smem_bytes(flash_bq_smem(), FLASH_DMAX), c->smem_optin, c->smem_optin};
    const void *kern[5] = {(const void *)flash_fwd_k, (const void *)flash_bwd_kv_k, (const void *)flash_bwd_q_k,
                           (const void *)kron_fwd_k, (const void *)kron_bwd_k};
    for (int i = 0; i < 5; i++)
        CK(c, cudaFuncSetAttribute(kern[i], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   want[i] < c->smem_optin ? want[i] : c->smem_optin));
}

/* TF32 for every fp32 GEMM unless FP32 (BF16 mode: attention and adapters) */
static void apply_math_mode(Cuda *c) {
    CB(c, cublasSetMathMode(c->blas, c->prec != KRONA_PREC_FP32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                                : CUBLAS_DEFAULT_MATH));
}

static void cu_destroy(Backend *be);
static const char *cu_last_error(Backend *be);
static void cu_clear_error(Backend *be);
static const char *cu_device_name(Backend *be);
static int cu_set_precision(Backend *be, int prec);
static int cu_precision(Backend *be);
static size_t cu_reserved(Backend *be);
static size_t cu_free_bytes(Backend *be);
static int cu_record_begin(Backend *be);
static void *cu_record_end(Backend *be, char *why, size_t whylen);
static int cu_replay(Backend *be, void *rec);
static void cu_record_free(Backend *be, void *rec);
static int cu_profile(Backend *be, int on);
static int cu_profile_rows(Backend *be, BackendProfileRow *rows, int max);

/* NULL with a one-line reason when there is no usable GPU or driver.
 * Env KRONA_CUDA_TF32=0 makes precision auto mean FP32 instead of TF32. */
static Backend *backend_cuda_create(char *err, size_t errlen) {
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev == 0) {
        if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice)
            snprintf(err, errlen, "no usable GPU: %s (no NVIDIA driver, or one older than this CUDA "
                     "runtime; check nvidia-smi, or use --device cpu)", cudaGetErrorString(e));
        else if (e != cudaSuccess)
            snprintf(err, errlen, "no CUDA device: cudaGetDeviceCount failed: %s (use --device cpu)",
                     cudaGetErrorString(e));
        else
            snprintf(err, errlen, "no CUDA device: cudaGetDeviceCount returned 0 (use --device cpu)");
        cudaGetLastError();
        return NULL;
    }
    Backend *be = (Backend *)calloc(1, sizeof(Backend));
    Cuda *c = (Cuda *)calloc(1, sizeof(Cuda));
    if (!be || !c) {
        free(be); free(c);
        snprintf(err, errlen, "cuda backend: out of host memory");
        return NULL;
    }
    cudaDeviceProp prop;
    if ((e = cudaGetDevice(&c->dev)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&prop, c->dev)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaMallocHost((void **)&c->host_scalar, sizeof(float))) != cudaSuccess) {
        snprintf(err, errlen, "cuda backend: device setup failed: %s (check the driver with nvidia-smi, or use --device cpu)",
                 cudaGetErrorString(e));
        if (c->stream) cudaStreamDestroy(c->stream);
        free(be); free(c);
        return NULL;
    }
    snprintf(c->dev_name, sizeof c->dev_name, "%s", prop.name);
    cublasStatus_t s = cublasCreate(&c->blas);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetStream(c->blas, c->stream);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuda backend: cuBLAS init failed: %s (use --device cpu)",
                 cublasGetStatusString(s));
        if (c->blas) cublasDestroy(c->blas);
        cudaFreeHost(c->host_scalar);
        cudaStreamDestroy(c->stream);
        free(be); free(c);
        return NULL;
    }
    const char *tf = getenv("KRONA_CUDA_TF32");
    c->prec = c->prec_auto = tf && tf[0] == '0' ? KRONA_PREC_FP32 : KRONA_PREC_TF32;
    apply_math_mode(c);
    fused_setup(c);
    dnn_setup(c);
    smem_setup(c);
    vmm_setup(c);
    /* cuBLAS's workspace our own, so recorded GEMMs never ask for memory
     * (32 MiB: what NVIDIA advises for Hopper). Like cuBLAS's own it is held
     * (reserved_bytes), not counted as live (peak_bytes: the model's memory).
     * A failure is not fatal: cuBLAS keeps its own */
    if (cudaMalloc(&c->blas_ws, (size_t)32 << 20) == cudaSuccess &&
        cublasSetWorkspace(c->blas, c->blas_ws, (size_t)32 << 20) == CUBLAS_STATUS_SUCCESS)
        c->reserved += (size_t)32 << 20;
    else {
        cudaGetLastError();
        if (c->blas_ws) cudaFree(c->blas_ws);
        c->blas_ws = NULL;
    }

    be->name = "cuda";
    be->impl = c;
    be->alloc = cu_alloc;
    be->free = cu_free;
    be->upload = TIMED(upload);
    be->download = TIMED(download);
    be->copy = TIMED(copy);
    be->zero = TIMED(zero);
    be->sync = cu_sync;
    be->set_frozen = cu_set_frozen;
    be->record_begin = cu_record_begin;
    be->record_end = cu_record_end;
    be->replay = TIMED(replay);
    be->record_free = cu_record_free;
    be->peak_bytes = cu_peak;
    be->destroy = cu_destroy;
    be->last_error = cu_last_error;
    be->clear_error = cu_clear_error;
    be->device_name = cu_device_name;
    be->set_precision = cu_set_precision;
    be->precision = cu_precision;
    be->reserved_bytes = cu_reserved;
    be->free_bytes = cu_free_bytes;
    be->profile = cu_profile;
    be->profile_rows = cu_profile_rows;
    be->gemm = TIMED(gemm);
    be->gemm_batched = TIMED(gemm_batched);
    be->linear_fwd = TIMED(linear_fwd);
    be->linear_bwd = TIMED(linear_bwd);
    be->conv2d_fwd = TIMED(conv2d_fwd);
    be->conv2d_bwd = TIMED(conv2d_bwd);
    be->group_norm_fwd = TIMED(group_norm_fwd);
    be->group_norm_bwd = TIMED(group_norm_bwd);
    be->group_norm_silu_fwd = TIMED(group_norm_silu_fwd);
    be->group_norm_silu_bwd = TIMED(group_norm_silu_bwd);
    be->layer_norm_fwd = TIMED(layer_norm_fwd);
    be->layer_norm_bwd = TIMED(layer_norm_bwd);
    be->silu_fwd = TIMED(silu_fwd);
    be->silu_bwd = TIMED(silu_bwd);
    be->gelu_fwd = TIMED(gelu_fwd);
    be->gelu_bwd = TIMED(gelu_bwd);
    be->geglu_fwd = TIMED(geglu_fwd);
    be->geglu_bwd = TIMED(geglu_bwd);
    be->quick_gelu_fwd = TIMED(quick_gelu_fwd);
    be->quick_gelu_bwd = TIMED(quick_gelu_bwd);
    be->embedding_fwd = TIMED(embedding_fwd);
    be->add = TIMED(add);
    be->axpy = TIMED(axpy);
    be->scale = TIMED(scale);
    be->add_channel_bias = TIMED(add_channel_bias);
    be->channel_sum_bwd = TIMED(channel_sum_bwd);
    be->concat_channels = TIMED(concat_channels);
    be->concat_channels_bwd = TIMED(concat_channels_bwd);
    be->upsample2x_fwd = TIMED(upsample2x_fwd);
    be->upsample2x_bwd = TIMED(upsample2x_bwd);
    be->pad2d = TIMED(pad2d);
    be->pad2d_bwd = TIMED(pad2d_bwd);
    be->nchw_to_nlc = TIMED(nchw_to_nlc);
    be->nlc_to_nchw = TIMED(nlc_to_nchw);
    be->attention_fwd = TIMED(attention_fwd);
    be->attention_bwd = TIMED(attention_bwd);
    be->timestep_embedding = TIMED(timestep_embedding);
    be->mse_fwd = TIMED(mse_fwd);
    be->mse_bwd = TIMED(mse_bwd);
    be->adamw = TIMED(adamw);
    be->kron_fwd = TIMED(kron_fwd);
    be->kron_bwd = TIMED(kron_bwd);
    be->kron_merge = TIMED(kron_merge);
    be->embedding_bwd = TIMED(embedding_bwd);
    return be;
}

/* ---- recordings (core/backend.h: record_begin ... record_end, replay) ----
 * CUDA stream capture into a graph: a training step's ~1,500 launches become
 * one. Env KRONA_CUDA_GRAPHS=0: record_begin always declines. */
static int cu_record_begin(Backend *be) {
    Cuda *c = CU(be);
    const char *env = getenv("KRONA_CUDA_GRAPHS");
    if ((env && env[0] == '0') || c->recording || c->err[0] ||
        c->n_recs == (int)(sizeof c->recs / sizeof c->recs[0]))
        return -1;
    /* thread-local: a call that cannot be captured fails here, in our thread.
     * If capture itself fails, the ops run as usual: not a backend error */
    if (cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    c->recording = 1;
    c->rec_failed = 0;
    c->rec_why[0] = 0;
    c->rec_begin = ++c->seq;
    return 0;
}
/* the recordings' scratch goes back to everyone once no recording is left */
static void rcache_flush(Cuda *c) {
    for (size_t i = 0; i < c->rcache.n; i++)
        if (!cache_put(&c->cache, c->rcache.v[i])) {
            CK(c, cudaFree(c->rcache.v[i].p));
            c->reserved -= c->rcache.v[i].bytes;
        }
    c->rcache.n = 0;
}
static void *cu_record_end(Backend *be, char *why, size_t whylen) {
    Cuda *c = CU(be);
    if (!c->recording) {
        snprintf(why, whylen, "record_end without record_begin");
        return NULL;
    }
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    c->recording = 0;
    Rec *r = NULL;
    if (e == cudaSuccess && !c->rec_failed && g && (r = (Rec *)calloc(1, sizeof *r)) &&
        (e = cudaGraphInstantiate(&r->exec, g, 0)) == cudaSuccess) {
        cudaGraphDestroy(g);
        r->end_seq = c->seq;
        /* a block handed out while recording and still held may be another
         * recording's scratch (rcache): that one would write into it */
        for (size_t i = 0; c->n_recs && i < c->live_cap; i++)
            if (c->live[i].p && c->live[i].born >= c->rec_begin) {
                for (int k = 0; k < c->n_recs; k++) c->recs[k]->stale = 1;
                break;
            }
        c->recs[c->n_recs++] = r;
        return r;
    }
    cudaGetLastError(); /* the failure is the recording's, not the backend's */
    if (c->rec_failed) snprintf(why, whylen, "%s", c->rec_why);
    else if (e != cudaSuccess) snprintf(why, whylen, "CUDA graph capture failed: %s", cudaGetErrorString(e));
    else snprintf(why, whylen, "out of host memory");
    if (g) cudaGraphDestroy(g);
    free(r);
    if (!c->n_recs) rcache_flush(c);
    return NULL;
}
static int cu_replay(Backend *be, void *rec) {
    Cuda *c = CU(be);
    Rec *r = (Rec *)rec;
    if (!r || r->stale || c->recording) return -1;
    CK(c, cudaGraphLaunch(r->exec, c->stream));
    return 0;
}
static void cu_record_free(Backend *be, void *rec) {
    Cuda *c = CU(be);
    if (!rec) return;
    for (int i = 0; i < c->n_recs; i++) {
        if (c->recs[i] != rec) continue;
        CK(c, cudaStreamSynchronize(c->stream)); /* a replay may still be running */
        CK(c, cudaGraphExecDestroy(c->recs[i]->exec));
        free(c->recs[i]);
        c->recs[i] = c->recs[--c->n_recs];
        if (!c->n_recs) rcache_flush(c);
        return;
    }
}

/* ---- profile (core/backend.h) ---- */
static int cu_profile(Backend *be, int on) {
    Cuda *c = CU(be);
    if (refuse(c, "profile")) return -1;
    if (on) c->npev = 0; /* a new table: what was queued for the old one is dropped */
    else prof_fold(c);
    prof_switch(&c->prof, on);
    return 0;
}
static int cu_profile_rows(Backend *be, BackendProfileRow *rows, int max) {
    Cuda *c = CU(be);
    if (refuse(c, "profile_rows")) return 0;
    prof_fold(c);
    return prof_copy(&c->prof, rows, max);
}

/* Waits for queued work, frees every device buffer (live or cached), the stream
 * and the cuBLAS handle, then the Backend itself. */
static void cu_destroy(Backend *be) {
    Cuda *c = CU(be);
    cudaStreamSynchronize(c->stream);
    for (size_t i = 0; i < c->live_cap; i++)
        if (c->live[i].p && c->live[i].vm) vmm_release(c, &c->live[i]);
        else if (c->live[i].p) cudaFree(c->live[i].p);
    for (size_t i = 0; i < c->cache.n; i++) cudaFree(c->cache.v[i].p);
    for (size_t i = 0; i < c->rcache.n; i++) cudaFree(c->rcache.v[i].p);
    for (int i = 0; i < c->n_recs; i++) {
        cudaGraphExecDestroy(c->recs[i]->exec);
        free(c->recs[i]);
    }
    free(c->live);
    free(c->cache.v);
    free(c->rcache.v);
    for (int i = 0; i < c->cappev; i++) {
        cudaEventDestroy(c->pev[i].a);
        cudaEventDestroy(c->pev[i].b);
    }
    free(c->pev);
    prof_free(&c->prof);
    dnn_free(c->dnn);
    cublasDestroy(c->blas);
    if (c->blas_ws) cudaFree(c->blas_ws);
    cudaFreeHost(c->host_scalar);
    cudaStreamDestroy(c->stream);
    free(c);
    free(be);
}
/* the first failure since creation / the last clear, naming the call and the op */
static const char *cu_last_error(Backend *be) { return CU(be)->err; }
static void cu_clear_error(Backend *be) {
    CU(be)->err[0] = 0;
    CU(be)->nerr = 0;
}
/* TF32 keeps fp32 range but rounds gemm inputs to 10 mantissa bits: ~1e-3
 * relative error per gemm, harmless for training, 3-8x faster on H100 than
 * FP32; BF16 rounds to 8 bits and doubles tensor-core throughput again. */
static int cu_set_precision(Backend *be, int prec) {
    Cuda *c = CU(be);
    if (prec == KRONA_PREC_AUTO) prec = c->prec_auto;
    if (prec != KRONA_PREC_FP32 && prec != KRONA_PREC_TF32 && prec != KRONA_PREC_BF16) return -1;
    if (refuse(c, "set_precision")) return -1;
    for (int i = 0; prec != KRONA_PREC_BF16 && i < c->n_frozen; i++) { /* f32 GEMMs read the f32 */
        Frozen *f = &c->frozen[i];
        if (f->compact) frozen_expand(c, f);
        dfree(c, f->bf);
        f->bf = NULL;
        f->tried = 0;
    }
    c->prec = prec;
    apply_math_mode(c);
    return 0;
}
static int cu_precision(Backend *be) { return CU(be)->prec; }
static const char *cu_device_name(Backend *be) { return conv_describe(CU(be)); }
/* bytes the caching allocator holds from the driver (live + cached) */
static size_t cu_reserved(Backend *be) { return CU(be)->reserved; }

/* the driver's free memory plus our cached blocks nobody uses (alloc reuses or
 * releases them before asking the driver) */
static size_t cu_free_bytes(Backend *be) {
    Cuda *c = CU(be);
    size_t fr = 0, total = 0;
    if (refuse(c, "free_bytes")) return 0;
    if (cudaMemGetInfo(&fr, &total) != cudaSuccess) { cudaGetLastError(); return 0; }
    size_t cached = 0;
    for (size_t i = 0; i < c->cache.n; i++) cached += c->cache.v[i].bytes;
    return fr + cached;
}

/* The plugin's one export (see core/backend.h): krona-backend-cuda.so. */
static const BackendDriver cuda_driver = {"cuda", 10, backend_cuda_create};
extern "C" __attribute__((visibility("default"))) const BackendDriver *krona_backend_plugin(int abi) {
    return abi == KRONA_BACKEND_ABI ? &cuda_driver : NULL;
}

/* emu_cuda.h — just enough of the CUDA runtime, device intrinsics and cuBLAS to
 * run gpu/backend_cuda.cu on a CPU, for checking its logic on machines without
 * a GPU (gpu/gpu.mk: make test-cuda-emu). Not a simulator of timing or memory
 * ordering: every CUDA thread is a coroutine; a block runs its threads
 * one after another, switching only at __syncthreads (block barrier) and warp
 * shuffles (warp barrier); a barrier not reached by every live thread aborts,
 * and so does a warp-collective call (shuffle, __syncwarp, WMMA: all full
 * mask here) in a warp with a lane exited or missing.
 * EMU_ORDER picks the order (lock-step or warp by warp, from the first or the
 * last): `make cuda-emu` runs the op comparisons in two, so a missing barrier
 * shows as a mismatch. cuBLAS is a naive column-major reference that checks its
 * arguments like the real library. Device memory is malloc'd and filled with
 * NaN so reads of never-written memory show up in results; so is a block's
 * shared memory when it starts. A launch asking more dynamic shared memory
 * than 48 KiB or its kernel's opt-in (cudaFuncSetAttribute) fails.
 * `make cuda-emu` builds and runs it (gpu/gpu.mk). `make cuda-emu-asan` checks
 * for out-of-bounds accesses: plugin, program and engine under ASan, the caching
 * allocator without size rounding (-DKRONA_CUDA_EXACT_ALLOC) and cudaMalloc's
 * rounding poisoned, so a kernel reading one float past a tensor is reported.
 * TF32 is not emulated: the tf32 rows repeat the fp32 ones here. bf16 is:
 * __float2bfloat16_rn rounds to nearest even, and cublasGemmStridedBatchedEx
 * multiplies the bf16 values exactly, summing in double like the f32 GEMM.
 * Stream capture and graphs follow the runtime's rules: while a stream captures,
 * its kernels, memsets, device-to-device copies and cuBLAS calls become graph
 * nodes holding their arguments by value (not run), and what a capture forbids
 * (synchronizing, cudaMalloc/cudaFree, host copies, VMM calls, ...) fails with
 * cudaErrorStreamCaptureUnsupported and invalidates the capture.
 */
#ifndef EMU_CUDA_H
#define EMU_CUDA_H

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <sys/mman.h>
#include <ucontext.h>

/* ---------------------------------------------------------------- device side */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
static dim3 threadIdx, blockIdx, blockDim, gridDim;

static inline float rsqrtf(float x) { return 1.f / sqrtf(x); }

/* bf16: the high 16 bits of an f32, rounded to nearest even (written here
 * from the IEEE layout, not taken from the engine's core/half.h) */
struct __nv_bfloat16 { uint16_t x; };
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) b.x = (uint16_t)((u >> 16) | 0x40);
    else b.x = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return b;
}
static inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* threads run one at a time here, so an atomic add is a plain add */
static inline float atomicAdd(float *p, float v) { float old = *p; *p = old + v; return old; }

/* Coroutines: on x86-64 a switch saves the callee-saved registers and the
 * FP control words and swaps stacks (a few nanoseconds); glibc's swapcontext
 * also saves the signal mask, a system call per switch, which was 90% of the
 * emulator's time. Under ASan each switch is announced to it (its fiber
 * calls). Elsewhere, or with -DEMU_UCONTEXT, ucontext. */
#if defined(__x86_64__) && !defined(EMU_UCONTEXT)
#define EMU_FAST_SWITCH 1
#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
/* emu_switch(save, load): *save = this stack, continue on stack load */
extern "C" __attribute__((visibility("hidden"))) void emu_switch(void **save, void *load);
asm(".text\n"
    ".p2align 4\n"
    ".globl emu_switch\n"
    ".hidden emu_switch\n"
    ".type emu_switch,@function\n"
    "emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size emu_switch, .-emu_switch\n");
#endif

#define EMU_DYN_SMEM (227 * 1024) /* an H100's opt-in limit per block */
#define EMU_SMEM_DEFAULT (48 * 1024) /* dynamic shared memory a kernel gets without opting in */

namespace emu {
struct Thr {
#ifdef EMU_FAST_SWITCH
    void *sp; /* saved stack pointer (emu_switch's frame on top) */
#else
    ucontext_t ctx;
#endif
    char *stack;
    int state; /* 0 runnable, 1 at barrier, 2 done */
    int kind;  /* barrier kind, to catch divergent sync */
};
#ifdef EMU_FAST_SWITCH
static void *sched_sp;
#ifdef EMU_ASAN
static const void *sched_bottom; /* the scheduler's stack, as ASan reports it */
static size_t sched_size;
#endif
#else
static ucontext_t sched_ctx;
#endif
static Thr *thr;
static int nthr_cap, cur;
static float shfl_buf[1024];
static const std::function<void()> *body; /* the kernel launch runs */
static const size_t STACK = 64 * 1024;
static long launches;

/* back to the scheduler (launch) from thread cur */
static void yield_to_sched() {
#ifdef EMU_ASAN
    void *fake = nullptr; /* a thread that is done leaves for good: no fake stack kept */
    __sanitizer_start_switch_fiber(thr[cur].state == 2 ? nullptr : &fake, sched_bottom, sched_size);
    emu_switch(&thr[cur].sp, sched_sp);
    __sanitizer_finish_switch_fiber(fake, &sched_bottom, &sched_size);
#elif defined(EMU_FAST_SWITCH)
    emu_switch(&thr[cur].sp, sched_sp);
#else
    swapcontext(&thr[cur].ctx, &sched_ctx);
#endif
}
static void entry() {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &sched_bottom, &sched_size);
#endif
    (*body)();
    thr[cur].state = 2;
    yield_to_sched(); /* never resumed */
    abort();
}
static void sync(int kind) {
    thr[cur].state = 1;
    thr[cur].kind = kind;
    yield_to_sched();
}
/* thread t, fresh: its first switch starts entry() on its own stack */
static void start_thread(int t) {
#ifdef EMU_ASAN
    /* the last thread on this stack was left inside its frames: their poison stays */
    __asan_unpoison_memory_region(thr[t].stack, STACK);
#endif
#ifdef EMU_FAST_SWITCH
    /* the frame emu_switch pops: control words, r15..r12, rbx, rbp, then entry
     * as the return address; at entry rsp = 8 mod 16, as after a call, and
     * above it a zero return address (entry never returns) */
    uintptr_t top = ((uintptr_t)thr[t].stack + STACK) & ~(uintptr_t)15;
    uint64_t *r = (uint64_t *)(top - 8); /* entry's rsp */
    r[0] = 0;
    r[-1] = (uint64_t)(uintptr_t)&entry;
    for (int i = 2; i <= 7; i++) r[-i] = 0; /* rbp rbx r12 r13 r14 r15 */
    uint32_t mxcsr;
    uint16_t fpucw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpucw));
    r[-8] = mxcsr | (uint64_t)fpucw << 32; /* as emu_switch stores them */
    thr[t].sp = &r[-8];
#else
    getcontext(&thr[t].ctx);
    thr[t].ctx.uc_stack.ss_sp = thr[t].stack;
    thr[t].ctx.uc_stack.ss_size = STACK;
    thr[t].ctx.uc_link = NULL;
    makecontext(&thr[t].ctx, entry, 0);
#endif
    thr[t].state = 0;
}
/* from the scheduler: run thread t until it syncs or ends */
static void resume(int t) {
#ifdef EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, thr[t].stack, STACK);
    emu_switch(&sched_sp, thr[t].sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#elif defined(EMU_FAST_SWITCH)
    emu_switch(&sched_sp, thr[t].sp);
#else
    swapcontext(&sched_ctx, &thr[t].ctx);
#endif
}
static void set_tid(int t) {
    threadIdx.x = t % blockDim.x;
    threadIdx.y = (t / blockDim.x) % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}
/* launches per kernel name, printed at exit when EMU_LAUNCH_REPORT is set
 * (what a step costs in launches: the GPU pays a few microseconds for each) */
struct Tally { const char *name; long n; };
static Tally tally[256];
static int ntally;
static long tally_other; /* cuBLAS calls, memcpy/memset: counted by the caller */
static long graph_launches, graph_nodes_run; /* the nodes' own work is counted above too */
static long live_graphs, live_execs;
static void count(const char *name) {
    for (int i = 0; i < ntally; i++)
        if (tally[i].name == name || !strcmp(tally[i].name, name)) { tally[i].n++; return; }
    if (ntally < 256) tally[ntally++] = Tally{name, 1};
}
struct TallyReport {
    ~TallyReport() {
        if (!getenv("EMU_LAUNCH_REPORT")) return;
        long total = tally_other;
        for (int i = 0; i < ntally; i++) total += tally[i].n;
        fprintf(stderr, "emulator: %ld stream operations: %ld kernel launches, %ld cuBLAS calls, memcpy and memset\n",
                total, total - tally_other, tally_other);
        for (int k = 0; k < ntally; k++) { /* largest first */
            int best = k;
            for (int i = k + 1; i < ntally; i++) if (tally[i].n > tally[best].n) best = i;
            Tally t = tally[k]; tally[k] = tally[best]; tally[best] = t;
            fprintf(stderr, "  %8ld  %s\n", tally[k].n, tally[k].name);
        }
        fprintf(stderr, "emulator: graph launches: %ld (%ld nodes replayed)\n", graph_launches, graph_nodes_run);
        if (live_graphs || live_execs)
            fprintf(stderr, "emulator: %ld graphs and %ld executable graphs never destroyed\n", live_graphs, live_execs);
    }
};
static TallyReport tally_report;
static void check_config(dim3 g, dim3 b) {
    unsigned n = b.x * b.y * b.z;
    if (n > 1024 || n == 0 || g.y > 65535 || g.z > 65535 || g.x == 0 || g.y == 0 || g.z == 0) {
        fprintf(stderr, "emu: bad launch config grid(%u,%u,%u) block(%u,%u,%u)\n", g.x, g.y, g.z, b.x, b.y, b.z);
        abort();
    }
}
/* The order blocks and threads run in, from EMU_ORDER: "forward" (the
 * default), "reverse", "warps" or "warps-reverse". Lock-step (forward,
 * reverse): each round runs every thread of the block to its next barrier,
 * block or warp, so warps move together. Warp by warp (warps...): one warp
 * runs through its warp barriers up to the next block barrier before the next
 * warp starts. "reverse" takes blocks, warps and lanes from the last. A
 * correct kernel gives the same bits in every order (float atomics aside); a
 * missing barrier lets a thread read a value another thread writes later, or
 * overwrite one another thread has yet to read, and which orders show that
 * depends on who writes and who reads: `make cuda-emu` compares in two
 * (forward, warps-reverse). */
static int order = -1; /* bit 0 reverse, bit 1 warp by warp */
static int sched_order() {
    if (order < 0) {
        const char *e = getenv("EMU_ORDER");
        order = 0;
        if (e && *e) {
            if (!strcmp(e, "reverse")) order = 1;
            else if (!strcmp(e, "warps")) order = 2;
            else if (!strcmp(e, "warps-reverse")) order = 3;
            else if (strcmp(e, "forward")) {
                fprintf(stderr, "emu: EMU_ORDER=%s: use forward, reverse, warps or warps-reverse\n", e);
                abort();
            }
        }
    }
    return order;
}
/* Shared memory holds garbage when a block starts (NaN bytes here), as it
 * holds the last block's data on a GPU: a kernel that reads what no thread of
 * its block wrote gets NaN, not a lucky value left by the block before.
 * block_serial counts blocks; a static __shared__ array is refreshed by the
 * first of a block's threads to reach its declaration (translate.py adds the
 * call), the dynamic buffer at each block's start (the launch's byte count). */
static long block_serial;
alignas(128) static unsigned char dyn_smem[EMU_DYN_SMEM];
/* at a launch: under ASan the buffer past the launch's `bytes` poisoned, so a
 * kernel reaching past what it asked for is reported (on a GPU: an illegal
 * address, the context lost) */
static void limit_dyn_smem(size_t bytes) {
#ifdef EMU_ASAN
    __asan_unpoison_memory_region(dyn_smem, bytes);
    __asan_poison_memory_region(dyn_smem + bytes, EMU_DYN_SMEM - bytes);
#else
    (void)bytes;
#endif
}
static inline void shared_fresh(void *p, size_t n, long *seen) {
    if (*seen == block_serial) return;
    *seen = block_serial;
    memset(p, 0xFF, n);
}
/* lanes [w0, w1) of a warp: its barrier opens when every lane still running waits at it */
static int warp_release(int w0, int w1) {
    int live = 0, waiting = 0;
    for (int t = w0; t < w1; t++) {
        live += thr[t].state != 2;
        waiting += thr[t].state == 1 && thr[t].kind == 1;
    }
    if (!live || waiting != live) return 0;
    if (live != 32) {
        /* shuffles, __syncwarp and WMMA name all 32 lanes (full mask): on a GPU a
         * lane that has exited, or that the block does not have, leaves the
         * result undefined */
        fprintf(stderr, "emu: warp barrier (shuffle, __syncwarp or WMMA, full mask) with %d of 32 lanes present\n", live);
        abort();
    }
    for (int t = w0; t < w1; t++)
        if (thr[t].state == 1) thr[t].state = 0;
    return 1;
}
static void launch(dim3 g, dim3 b, const std::function<void()> &f, const char *name = "?", size_t shm = 0) {
    check_config(g, b);
    int n = (int)(b.x * b.y * b.z);
    launches++;
    count(name);
    if (n > nthr_cap) {
        thr = (Thr *)realloc(thr, sizeof(Thr) * n);
        for (int i = nthr_cap; i < n; i++) thr[i].stack = (char *)malloc(STACK);
        nthr_cap = n;
    }
    body = &f;
    gridDim = g;
    blockDim = b;
    int ord = sched_order(), rev = ord & 1, by_warp = ord & 2;
    int nw = (n + 31) / 32;
    long nb = (long)g.x * g.y * g.z;
    limit_dyn_smem(shm);
    for (long bi = 0; bi < nb; bi++) {
        long bl = rev ? nb - 1 - bi : bi;
        blockIdx = dim3((unsigned)(bl % g.x), (unsigned)(bl / g.x % g.y), (unsigned)(bl / g.x / g.y));
        block_serial++;
        memset(dyn_smem, 0xFF, shm);
        for (int t = 0; t < n; t++) start_thread(t);
        for (;;) {
            /* lock-step: one pass over every warp, then the warp barriers open;
             * warp by warp: each warp in turn until its lanes wait at a block barrier */
            for (int wi = 0; wi < nw; wi++) {
                int w0 = 32 * (rev ? nw - 1 - wi : wi), w1 = w0 + 32 < n ? w0 + 32 : n;
                for (;;) {
                    for (int li = 0; li < w1 - w0; li++) {
                        int t = rev ? w1 - 1 - li : w0 + li;
                        if (thr[t].state != 0) continue;
                        cur = t;
                        set_tid(t);
                        resume(t);
                    }
                    if (!by_warp || !warp_release(w0, w1)) break;
                }
            }
            if (!by_warp) {
                /* a warp barrier opens when every lane still running waits at it */
                int released = 0;
                for (int w0 = 0; w0 < n; w0 += 32) released |= warp_release(w0, w0 + 32 < n ? w0 + 32 : n);
                if (released) continue;
            }
            int live = 0, atbar = 0;
            for (int t = 0; t < n; t++) {
                live += thr[t].state != 2;
                atbar += thr[t].state == 1 && thr[t].kind == 0;
            }
            if (!live) break;
            if (atbar != live) {
                fprintf(stderr, "emu: divergent barriers in one block\n");
                abort();
            }
            for (int t = 0; t < n; t++)
                if (thr[t].state == 1) thr[t].state = 0;
        }
    }
    body = nullptr; /* f ends with this call */
}
} /* namespace emu */

static inline void __syncthreads() { emu::sync(0); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)mask; emu::sync(1); }
static inline float __shfl_xor_sync(unsigned mask, float v, int o) {
    (void)mask;
    int t = emu::cur, lane = t & 31;
    emu::shfl_buf[t] = v;
    emu::sync(1);
    float r = emu::shfl_buf[(t - lane) + (lane ^ o)];
    emu::sync(1);
    return r;
}

/* ---------------------------------------------------------------- WMMA
 * 16x16x16 fragments, warp-collective as on the GPU. The element layout is
 * the emulator's own (lane l holds elements 8l..8l+7 of the tile, row-major):
 * the hardware's is unspecified, so code that works here only through the API
 * and element-wise loops works there too. mma_sync gathers the warp's
 * fragments at a warp barrier and sums each output in fp32 in k order. */
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    enum { num_elements = 8 };
    T x[8];
};
static inline float emu_f(float v) { return v; }
static inline float emu_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> static inline void emu_set(T &d, float v);
template <> inline void emu_set<float>(float &d, float v) { d = v; }
template <> inline void emu_set<__nv_bfloat16>(__nv_bfloat16 &d, float v) { d = __float2bfloat16_rn(v); }
static inline void emu_check_align(const void *p, const char *what) {
    if ((uintptr_t)p % 32) { fprintf(stderr, "emu: %s: pointer %p not 256-bit aligned\n", what, p); abort(); }
}
/* element e = 8 * lane + i of the tile is (row e / 16, col e % 16) */
template <class Use, class T, class L>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ldm) {
    emu_check_align(p, "load_matrix_sync");
    int lane = emu::cur & 31;
    for (int i = 0; i < 8; i++) {
        int e = lane * 8 + i, r = e / 16, c = e % 16;
        /* matrix_a [m][k], matrix_b [k][n]: row-major r * ldm + c, col-major c * ldm + r */
        f.x[i] = std::is_same<L, col_major>::value ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    }
}
static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ldm,
                                    layout_t l) {
    emu_check_align(p, "load_matrix_sync");
    int lane = emu::cur & 31;
    for (int i = 0; i < 8; i++) {
        int e = lane * 8 + i, r = e / 16, c = e % 16;
        f.x[i] = l == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    }
}
static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm,
                                     layout_t l) {
    emu_check_align(p, "store_matrix_sync");
    int lane = emu::cur & 31;
    for (int i = 0; i < 8; i++) {
        int e = lane * 8 + i, r = e / 16, c = e % 16;
        (l == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c]) = f.x[i];
    }
}
template <class Use, class T, class L>
static inline void fill_fragment(fragment<Use, 16, 16, 16, T, L> &f, float v) {
    for (int i = 0; i < 8; i++) emu_set(f.x[i], v);
}
static float emu_mma_buf[32][3][256]; /* per warp of the block: A, B, C */
template <class TA, class LA, class TB, class LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, TA, LA> &a,
                            const fragment<matrix_b, 16, 16, 16, TB, LB> &b,
                            const fragment<accumulator, 16, 16, 16, float> &c) {
    int t = emu::cur, lane = t & 31, w = t >> 5;
    for (int i = 0; i < 8; i++) {
        emu_mma_buf[w][0][lane * 8 + i] = emu_f(a.x[i]);
        emu_mma_buf[w][1][lane * 8 + i] = emu_f(b.x[i]);
        emu_mma_buf[w][2][lane * 8 + i] = c.x[i];
    }
    emu::sync(1);
    float out[8];
    for (int i = 0; i < 8; i++) {
        int e = lane * 8 + i, r = e / 16, col = e % 16;
        float s = emu_mma_buf[w][2][e];
        for (int kk = 0; kk < 16; kk++) s += emu_mma_buf[w][0][r * 16 + kk] * emu_mma_buf[w][1][kk * 16 + col];
        out[i] = s;
    }
    emu::sync(1); /* everyone has read the buffer before the next mma writes it */
    for (int i = 0; i < 8; i++) d.x[i] = out[i];
}
} /* namespace wmma */
} /* namespace nvcuda */

/* ---------------------------------------------------------------- runtime */
typedef int cudaError_t;
enum {
    cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100, cudaErrorIllegalState = 401, cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901
};
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
#define cudaStreamNonBlocking 1
struct cudaDeviceProp { char name[256]; };
#define __align__(n) alignas(n)
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };

/* the last error, as the runtime keeps it: every failing call sets it (and a
 * launch into an invalidated capture), cudaGetLastError returns and clears it */
static cudaError_t emu_last_error;
static inline cudaError_t emu_fail(cudaError_t e) { emu_last_error = e; return e; }
static inline cudaError_t cudaGetLastError() { cudaError_t e = emu_last_error; emu_last_error = cudaSuccess; return e; }
static inline cudaError_t cudaPeekAtLastError() { return emu_last_error; }
static inline const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorMemoryAllocation: return "out of memory (emulated)";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state (cudaErrorIllegalState)";
    case cudaErrorStreamCaptureUnsupported:
        return "operation not permitted when stream is capturing (cudaErrorStreamCaptureUnsupported)";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture (cudaErrorStreamCaptureInvalidated)";
    default: return "emulated error";
    }
}

/* each kernel's opt-in (cudaFuncAttributeMaxDynamicSharedMemorySize): a
 * launch asking more dynamic shared memory than 48 KiB or its opt-in fails */
namespace emu {
struct SmemOptin { const void *fn; int bytes; };
static SmemOptin smem_optin[64];
static int nsmem_optin;
static int smem_limit(const void *fn) {
    for (int i = 0; i < nsmem_optin; i++)
        if (smem_optin[i].fn == fn) return smem_optin[i].bytes > EMU_SMEM_DEFAULT ? smem_optin[i].bytes : EMU_SMEM_DEFAULT;
    return EMU_SMEM_DEFAULT;
}
}
static inline cudaError_t cudaFuncSetAttribute(const void *fn, cudaFuncAttribute, int v) {
    if (v < 0 || v > EMU_DYN_SMEM) return emu_fail(cudaErrorInvalidValue);
    int i = 0;
    while (i < emu::nsmem_optin && emu::smem_optin[i].fn != fn) i++;
    if (i == 64) return emu_fail(cudaErrorInvalidValue);
    if (i == emu::nsmem_optin) emu::nsmem_optin++;
    emu::smem_optin[i] = emu::SmemOptin{fn, v};
    return cudaSuccess;
}
static inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr, int) { *v = EMU_DYN_SMEM; return cudaSuccess; }

/* ---------------------------------------------------------------- streams, capture, graphs
 * A stream runs its work at once, in order (emu_enqueue), unless it captures:
 * then each piece of work is appended to the capture's graph as a node, a
 * closure holding its arguments by value. Capture state is per stream; the list
 * of capturing streams is global because the calls a capture forbids (cudaMalloc,
 * ...) name no stream. The emulator is one thread, so Global and ThreadLocal
 * mode act alike; Relaxed mode would let cudaMalloc and the like through on a
 * GPU, but the emulator refuses them in every mode: the backend must not rely
 * on that. */
enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1, cudaStreamCaptureModeRelaxed = 2
};
enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0, cudaStreamCaptureStatusActive = 1, cudaStreamCaptureStatusInvalidated = 2
};
struct emu_graph_node { std::function<void()> run; };
struct emu_graph { std::vector<emu_graph_node> nodes; };
struct emu_graph_exec { std::vector<emu_graph_node> nodes; }; /* its own copy: the graph may go first */
struct emu_stream { cudaStreamCaptureStatus capture; emu_graph *graph; };
typedef struct emu_stream *cudaStream_t;
typedef struct emu_graph *cudaGraph_t;
typedef struct emu_graph_exec *cudaGraphExec_t;
typedef struct emu_graph_node *cudaGraphNode_t;
namespace emu {
static std::vector<emu_stream *> capturing; /* Active or Invalidated: in capture mode until EndCapture */
}
/* the capture records nothing more; the stream stays in capture mode until cudaStreamEndCapture */
static inline void emu_invalidate(cudaStream_t s) { s->capture = cudaStreamCaptureStatusInvalidated; }
/* a call no capture allows, which names no stream: invalidates every capture
 * and tells the caller to refuse (runtime calls then return
 * cudaErrorStreamCaptureUnsupported, driver calls CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED) */
static inline bool emu_capture_refuses() {
    for (emu_stream *s : emu::capturing) emu_invalidate(s);
    return !emu::capturing.empty();
}
/* stream work: done now, or recorded; the legacy stream (NULL) never captures */
static inline cudaError_t emu_enqueue(cudaStream_t s, std::function<void()> f) {
    if (!s || s->capture == cudaStreamCaptureStatusNone) { f(); return cudaSuccess; }
    if (s->capture == cudaStreamCaptureStatusInvalidated) return emu_fail(cudaErrorStreamCaptureInvalidated);
    s->graph->nodes.push_back(emu_graph_node{std::move(f)});
    return cudaSuccess;
}

static long emu_live_allocs;
static inline cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return cudaSuccess; }
static inline cudaError_t cudaGetDevice(int *d) { *d = 0; return cudaSuccess; }
static inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    snprintf(p->name, sizeof p->name, "CPU emulation");
    return cudaSuccess;
}
static inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) { *s = new emu_stream{}; return cudaSuccess; }
static inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (s && s->capture) return emu_fail(cudaErrorIllegalState); /* end the capture first */
    delete s;
    return cudaSuccess;
}
static inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    /* waiting for work that is only being recorded: never allowed */
    if (s && s->capture) { emu_invalidate(s); return emu_fail(cudaErrorStreamCaptureUnsupported); }
    return cudaSuccess;
}
static inline cudaError_t cudaDeviceSynchronize() {
    return emu_capture_refuses() ? emu_fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}
static inline cudaError_t cudaMalloc(void **p, size_t n) {
    if (emu_capture_refuses()) return emu_fail(cudaErrorStreamCaptureUnsupported);
    size_t rounded = (n + 255) & ~(size_t)255;
    *p = aligned_alloc(256, rounded);
    if (!*p) return emu_fail(cudaErrorMemoryAllocation);
    memset(*p, 0xFF, n); /* NaN: catches reads of memory nobody wrote */
#ifdef EMU_ASAN
    __asan_poison_memory_region((char *)*p + n, rounded - n); /* past the block: a report */
#endif
    emu_live_allocs++;
    return cudaSuccess;
}
static inline cudaError_t cudaMemGetInfo(size_t *fr, size_t *total) {
    if (emu_capture_refuses()) return emu_fail(cudaErrorStreamCaptureUnsupported);
    *fr = (size_t)8 << 30; *total = (size_t)16 << 30; /* a pretend 16 GB card */
    return cudaSuccess;
}
static inline cudaError_t cudaFree(void *p) {
    if (emu_capture_refuses()) return emu_fail(cudaErrorStreamCaptureUnsupported);
    if (p) emu_live_allocs--;
    free(p);
    return cudaSuccess;
}
static inline cudaError_t cudaMallocHost(void **p, size_t n) {
    if (emu_capture_refuses()) return emu_fail(cudaErrorStreamCaptureUnsupported);
    *p = malloc(n);
    return *p ? cudaSuccess : emu_fail(cudaErrorMemoryAllocation);
}
static inline cudaError_t cudaFreeHost(void *p) {
    if (emu_capture_refuses()) return emu_fail(cudaErrorStreamCaptureUnsupported);
    free(p);
    return cudaSuccess;
}
static inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) {
    return emu_enqueue(s, [=]() { memset(p, v, n); emu::tally_other++; });
}
static inline cudaError_t cudaMemcpyAsync(void *d, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t s) {
    /* host memory cannot be a node here (a GPU takes pinned host memory, not
     * pageable; the backend copies to and from the host only outside capture) */
    if (s && s->capture && k != cudaMemcpyDeviceToDevice) {
        emu_invalidate(s);
        return emu_fail(cudaErrorStreamCaptureUnsupported);
    }
    return emu_enqueue(s, [=]() { memmove(d, src, n); emu::tally_other++; });
}

/* events (the backend's profile): the time a stream reaches one. Work runs
 * when queued here, so that is the host clock at the record. An event record
 * inside a capture would become a node; the backend never profiles while
 * recording, and the emulator holds it to that (the capture is invalidated).
 * Not recorded yet: ElapsedTime fails, as on a GPU. */
struct emu_event { double t; bool recorded; };
typedef struct emu_event *cudaEvent_t;
static long emu_live_events;
static inline double emu_now_ms() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}
static inline cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = new emu_event{0, false};
    emu_live_events++;
    return cudaSuccess;
}
static inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
    if (!e) return emu_fail(cudaErrorInvalidValue);
    emu_live_events--;
    delete e;
    return cudaSuccess;
}
static inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!e) return emu_fail(cudaErrorInvalidValue);
    if (s && s->capture) { emu_invalidate(s); return emu_fail(cudaErrorStreamCaptureUnsupported); }
    e->t = emu_now_ms();
    e->recorded = true;
    return cudaSuccess;
}
static inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a || !b || !a->recorded || !b->recorded) return emu_fail(cudaErrorInvalidValue);
    *ms = (float)(b->t - a->t);
    return cudaSuccess;
}

static inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
    if (!s) return emu_fail(cudaErrorStreamCaptureUnsupported); /* not the legacy stream */
    if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
        mode != cudaStreamCaptureModeRelaxed)
        return emu_fail(cudaErrorInvalidValue);
    if (s->capture) return emu_fail(cudaErrorIllegalState); /* already capturing */
    s->capture = cudaStreamCaptureStatusActive;
    s->graph = new emu_graph;
    emu::capturing.push_back(s);
    return cudaSuccess;
}
/* ends capture mode either way; an invalidated capture gives no graph */
static inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    if (!g) return emu_fail(cudaErrorInvalidValue);
    if (!s || !s->capture) return emu_fail(cudaErrorIllegalState);
    for (size_t i = 0; i < emu::capturing.size(); i++)
        if (emu::capturing[i] == s) { emu::capturing.erase(emu::capturing.begin() + i); break; }
    bool ok = s->capture == cudaStreamCaptureStatusActive;
    s->capture = cudaStreamCaptureStatusNone;
    *g = ok ? s->graph : NULL;
    if (ok) emu::live_graphs++;
    else delete s->graph;
    s->graph = NULL;
    return ok ? cudaSuccess : emu_fail(cudaErrorStreamCaptureInvalidated);
}
static inline cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus *st) {
    *st = s ? s->capture : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}
static inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags) {
    (void)flags;
    if (!e || !g) return emu_fail(cudaErrorInvalidValue);
    *e = new emu_graph_exec{g->nodes};
    emu::live_execs++;
    return cudaSuccess;
}
/* the nodes in capture order (a capture on one stream is a chain); kernels go
 * through emu::launch, so the tallies and barrier checks apply to replays */
static inline cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    if (!e) return emu_fail(cudaErrorInvalidValue);
    /* on a GPU this would record the graph as a child node; the emulator refuses */
    if (s && s->capture) { emu_invalidate(s); return emu_fail(cudaErrorStreamCaptureUnsupported); }
    emu::graph_launches++;
    for (emu_graph_node &n : e->nodes) { n.run(); emu::graph_nodes_run++; }
    return cudaSuccess;
}
static inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    if (!e) return emu_fail(cudaErrorInvalidValue);
    delete e;
    emu::live_execs--;
    return cudaSuccess;
}
static inline cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    if (!g) return emu_fail(cudaErrorInvalidValue);
    delete g;
    emu::live_graphs--;
    return cudaSuccess;
}
/* nodes NULL: *num = the count; else up to *num handles, the rest of the *num
 * entries NULL, and *num = how many were filled */
static inline cudaError_t cudaGraphGetNodes(cudaGraph_t g, cudaGraphNode_t *nodes, size_t *num) {
    if (!g || !num) return emu_fail(cudaErrorInvalidValue);
    size_t n = g->nodes.size();
    if (!nodes) { *num = n; return cudaSuccess; }
    for (size_t i = 0; i < *num; i++) nodes[i] = i < n ? &g->nodes[i] : NULL;
    if (*num > n) *num = n;
    return cudaSuccess;
}

/* ---------------------------------------------------------------- driver: virtual memory
 * cuMemAddressReserve/Create/Map/SetAccess/Unmap as the driver documents them,
 * on mmap: reserved addresses are PROT_NONE, a mapped chunk becomes readable
 * only after cuMemSetAccess (and holds garbage, NaN bytes, as fresh physical
 * memory may), an unmapped one is PROT_NONE again with its pages dropped. So a
 * kernel or copy that touches memory the backend gave back crashes here. Sizes
 * must be multiples of the granularity (64 KiB here, 2 MiB on GPUs), a handle
 * maps whole, once; violations return CUDA_ERROR_INVALID_VALUE. None may be
 * called while a stream captures (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED). */
typedef int CUresult;
enum {
    CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1, CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900, CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901
};
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef int CUdevice;
typedef enum { CU_MEM_ALLOCATION_TYPE_PINNED = 1 } CUmemAllocationType;
typedef enum { CU_MEM_HANDLE_TYPE_NONE = 0 } CUmemAllocationHandleType;
typedef enum { CU_MEM_LOCATION_TYPE_DEVICE = 1 } CUmemLocationType;
typedef enum { CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3 } CUmemAccess_flags;
typedef enum { CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0 } CUmemAllocationGranularity_flags;
typedef enum { CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 102 } CUdevice_attribute;
typedef struct { CUmemLocationType type; int id; } CUmemLocation;
typedef struct {
    CUmemAllocationType type;
    CUmemAllocationHandleType requestedHandleTypes;
    CUmemLocation location;
    void *win32HandleMetaData;
    struct { unsigned char compressionType, gpuDirectRDMACapable; unsigned short usage; unsigned char reserved[4]; } allocFlags;
} CUmemAllocationProp;
typedef struct { CUmemLocation location; CUmemAccess_flags flags; } CUmemAccessDesc;
#define EMU_GRAN ((size_t)64 << 10)
namespace emu {
struct Handle { size_t size; int mapped; };
static Handle handles[1 << 16];
static unsigned long long next_handle = 1;
static long reserved_ranges, live_handles, unmapped;
/* at exit, so a whole program run shows that pages were given back */
struct VmmReport { ~VmmReport() { if (unmapped) fprintf(stderr, "emulator: %ld chunks unmapped\n", unmapped); } };
static VmmReport vmm_report;
}
static inline CUresult emu_cuMemAddressReserve(CUdeviceptr *p, size_t size, size_t, CUdeviceptr, unsigned long long) {
    if (emu_capture_refuses()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (!size || size % EMU_GRAN) return CUDA_ERROR_INVALID_VALUE;
    /* aligned to the granularity, as the driver's default alignment: trim an over-sized reservation */
    char *a = (char *)mmap(NULL, size + EMU_GRAN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (a == (char *)MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    size_t head = (EMU_GRAN - (uintptr_t)a % EMU_GRAN) % EMU_GRAN;
    if (head) munmap(a, head);
    munmap(a + head + size, EMU_GRAN - head);
    *p = (CUdeviceptr)(uintptr_t)(a + head);
    emu::reserved_ranges++;
    return CUDA_SUCCESS;
}
static inline CUresult emu_cuMemAddressFree(CUdeviceptr p, size_t size) {
    if (emu_capture_refuses()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    emu::reserved_ranges--;
    return munmap((void *)(uintptr_t)p, size) ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}
static inline CUresult emu_cuMemCreate(CUmemGenericAllocationHandle *h, size_t size, const CUmemAllocationProp *prop, unsigned long long) {
    if (emu_capture_refuses()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (!size || size % EMU_GRAN || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
        prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE || emu::next_handle >= (1 << 16))
        return CUDA_ERROR_INVALID_VALUE;
    *h = emu::next_handle++;
    emu::handles[*h].size = size;
    emu::handles[*h].mapped = 0;
    emu::live_handles++;
    return CUDA_SUCCESS;
}
static inline CUresult emu_cuMemRelease(CUmemGenericAllocationHandle h) {
    if (emu_capture_refuses()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (!h || h >= emu::next_handle || !emu::handles[h].size) return CUDA_ERROR_INVALID_VALUE;
    emu::handles[h].size = 0; /* the driver frees it once unmapped */
    emu::live_handles--;
    return CUDA_SUCCESS;
}
static inline CUresult emu_cuMemMap(CUdeviceptr p, size_t size, size_t off, CUmemGenericAllocationHandle h, unsigned long long) {
    if (emu_capture_refuses()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (!h || h >= emu::next_handle || emu::handles[h].size != size || off || emu::handles[h].mapped || p % EMU_GRAN)
        return CUDA_ERROR_INVALID_VALUE;
    emu::handles[h].mapped = 1;
    return CUDA_SUCCESS; /* still PROT_NONE: no access until cuMemSetAccess */
}
static inline CUresult emu_cuMemSetAccess(CUdeviceptr p, size_t size, const CUmemAccessDesc *d, size_t n) {
    if (emu_capture_refuses()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (n != 1 || d->flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE || d->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    if (mprotect((void *)(uintptr_t)p, size, PROT_READ | PROT_WRITE)) return CUDA_ERROR_INVALID_VALUE;
    memset((void *)(uintptr_t)p, 0xFF, size); /* fresh physical memory: NaN bytes */
    return CUDA_SUCCESS;
}
static inline CUresult emu_cuMemUnmap(CUdeviceptr p, size_t size) {
    if (emu_capture_refuses()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    void *a = (void *)(uintptr_t)p;
    if (p % EMU_GRAN || size % EMU_GRAN || madvise(a, size, MADV_DONTNEED) || mprotect(a, size, PROT_NONE))
        return CUDA_ERROR_INVALID_VALUE;
    emu::unmapped++;
    return CUDA_SUCCESS;
}
static inline CUresult emu_cuMemGetAllocationGranularity(size_t *g, const CUmemAllocationProp *, CUmemAllocationGranularity_flags) {
    if (emu_capture_refuses()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    *g = EMU_GRAN;
    return CUDA_SUCCESS;
}
static inline CUresult emu_cuDeviceGet(CUdevice *d, int ordinal) { *d = ordinal; return CUDA_SUCCESS; }
static inline CUresult emu_cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice) {
    *v = a == CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED;
    return CUDA_SUCCESS;
}
static inline CUresult emu_cuGetErrorString(CUresult r, const char **s) {
    *s = r == CUDA_ERROR_OUT_OF_MEMORY                 ? "out of memory (emulated)"
         : r == CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED ? "operation not permitted when stream is capturing "
                                                        "(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)"
         : r == CUDA_ERROR_STREAM_CAPTURE_INVALIDATED ? "operation failed due to a previous error during capture "
                                                        "(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED)"
                                                      : "invalid argument (emulated)";
    return CUDA_SUCCESS;
}
enum cudaDriverEntryPointQueryResult { cudaDriverEntryPointSuccess = 0, cudaDriverEntryPointSymbolNotFound = 1 };
enum { cudaEnableDefault = 0 };
static inline cudaError_t cudaGetDriverEntryPointByVersion(const char *sym, void **fp, unsigned, unsigned long long,
                                                           cudaDriverEntryPointQueryResult *q) {
#define EMU_SYM(name) if (!strcmp(sym, #name)) { *fp = (void *)emu_##name; *q = cudaDriverEntryPointSuccess; return cudaSuccess; }
    EMU_SYM(cuMemAddressReserve) EMU_SYM(cuMemAddressFree) EMU_SYM(cuMemCreate) EMU_SYM(cuMemRelease)
    EMU_SYM(cuMemMap) EMU_SYM(cuMemUnmap) EMU_SYM(cuMemSetAccess) EMU_SYM(cuMemGetAllocationGranularity)
    EMU_SYM(cuDeviceGet) EMU_SYM(cuDeviceGetAttribute) EMU_SYM(cuGetErrorString)
#undef EMU_SYM
    *fp = NULL;
    *q = cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}

/* kernel<<<g, b, shm, s>>>(args) is rewritten by translate.py into
 * EMU_LAUNCH_ON(g, b, s, kernel, args); EMU_LAUNCH is the same on the legacy
 * stream. As on a GPU the arguments are evaluated once, at the launch, and
 * converted to the kernel's parameter types (pack_for), and the launch keeps
 * copies: a captured launch replays with the values it was recorded with,
 * whatever the host variables hold later. */
namespace emu {
template <class... P> struct Pack {
    std::tuple<typename std::decay<P>::type...> operator()(P... p) const {
        return std::tuple<typename std::decay<P>::type...>(p...);
    }
};
template <class... P> static inline Pack<P...> pack_for(void (*)(P...)) { return Pack<P...>(); }
template <class... P>
static inline void launch_on(cudaStream_t s, dim3 g, dim3 b, size_t shm, void (*k)(P...), const char *name,
                             std::tuple<typename std::decay<P>::type...> args) {
    check_config(g, b); /* a bad configuration fails at the launch, captured or not */
    int limit = smem_limit((const void *)k);
    if (shm > (size_t)limit) {
        /* as the runtime: the launch does not run, and the next error check sees it */
        fprintf(stderr, "emu: %s asks %zu bytes of dynamic shared memory, over its limit %d (cudaFuncSetAttribute)\n",
                name, shm, limit);
        emu_fail(cudaErrorInvalidValue);
        return;
    }
    emu_enqueue(s, [=]() { launch(g, b, [&]() { std::apply(k, args); }, name, shm); });
}
} /* namespace emu */
#define EMU_LAUNCH_ON(g, b, shm, s, kern, ...) \
    emu::launch_on((s), dim3(g), dim3(b), (size_t)(shm), kern, #kern, emu::pack_for(kern)(__VA_ARGS__))
#define EMU_LAUNCH(g, b, kern, ...) EMU_LAUNCH_ON(g, b, 0, (cudaStream_t)0, kern, __VA_ARGS__)

/* ---------------------------------------------------------------- cuBLAS */
/* a handle remembers its stream: a call on a capturing stream becomes a node */
struct emu_blas { cudaStream_t stream; void *workspace; size_t workspace_bytes; };
typedef struct emu_blas *cublasHandle_t;
typedef int cublasStatus_t;
enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_EXECUTION_FAILED = 13 };
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 } cublasMath_t;
static long emu_gemms;
static inline cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = new emu_blas{}; return 0; }
static inline cublasStatus_t cublasDestroy(cublasHandle_t h) { delete h; return 0; }
static inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) { h->stream = s; return 0; }
static inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return 0; }
/* stored only: the reference GEMM needs no workspace (cuBLAS wants 256-byte alignment) */
static inline cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *p, size_t bytes) {
    if ((uintptr_t)p % 256) return CUBLAS_STATUS_INVALID_VALUE;
    h->workspace = p;
    h->workspace_bytes = bytes;
    return 0;
}
static inline const char *cublasGetStatusString(cublasStatus_t s) {
    return s == CUBLAS_STATUS_INVALID_VALUE     ? "CUBLAS_STATUS_INVALID_VALUE"
           : s == CUBLAS_STATUS_EXECUTION_FAILED ? "CUBLAS_STATUS_EXECUTION_FAILED"
                                                 : "CUBLAS_STATUS_?";
}

typedef enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 } cudaDataType;
typedef enum { CUBLAS_COMPUTE_32F = 68 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
static inline float emu_load(const void *p, cudaDataType t, int64_t i) {
    return t == CUDA_R_16BF ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}
static inline size_t emu_size(cudaDataType t) { return t == CUDA_R_16BF ? 2 : 4; }

/* the product itself, run at the call or at a graph's replay */
static inline void emu_gemm(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
                            float alpha, const void *A, cudaDataType tAd, int64_t lda, long long sA,
                            const void *B, cudaDataType tBd, int64_t ldb, long long sB, float beta, float *C,
                            int64_t ldc, long long sC, int64_t batch) {
    size_t es = emu_size(tAd);
    emu_gemms++;
    emu::tally_other++;
    /* contiguous copies of op(A) rows and op(B) columns keep the dot products fast */
    float *Ar = (float *)malloc(sizeof(float) * (m * k + 1)), *Bc = (float *)malloc(sizeof(float) * (n * k + 1));
    for (int64_t b = 0; b < batch; b++) {
        const char *Ab = (const char *)A + b * sA * es, *Bb = (const char *)B + b * sB * es;
        float *Cb = C + b * sC;
        for (int64_t i = 0; i < m; i++)
            for (int64_t l = 0; l < k; l++)
                Ar[i * k + l] = emu_load(Ab, tAd, ta == CUBLAS_OP_N ? i + l * lda : l + i * lda);
        for (int64_t j = 0; j < n; j++)
            for (int64_t l = 0; l < k; l++)
                Bc[j * k + l] = emu_load(Bb, tBd, tb == CUBLAS_OP_N ? l + j * ldb : j + l * ldb);
        for (int64_t j = 0; j < n; j++)
            for (int64_t i = 0; i < m; i++) {
                /* four running sums: one chain waits on each add's latency, four
                 * keep the adds busy (double sums: the order barely matters) */
                double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                const float *a = Ar + i * k, *bb = Bc + j * k;
                int64_t l = 0;
                for (; l + 4 <= k; l += 4) {
                    s0 += (double)a[l] * bb[l];
                    s1 += (double)a[l + 1] * bb[l + 1];
                    s2 += (double)a[l + 2] * bb[l + 2];
                    s3 += (double)a[l + 3] * bb[l + 3];
                }
                for (; l < k; l++) s0 += (double)a[l] * bb[l];
                double acc = (s0 + s1) + (s2 + s3);
                float *c = &Cb[i + j * ldc];
                *c = (float)(alpha * acc + (beta != 0.f ? (double)beta * *c : 0.0));
            }
    }
    free(Ar);
    free(Bc);
}
static inline cublasStatus_t cublasGemmStridedBatchedEx_64(
    cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
    const void *alpha, const void *A, cudaDataType tAd, int64_t lda, long long sA, const void *B,
    cudaDataType tBd, int64_t ldb, long long sB, const void *beta, void *C, cudaDataType tCd,
    int64_t ldc, long long sC, int64_t batch, cublasComputeType_t compute, cublasGemmAlgo_t) {
    /* the combinations the backend uses: f32 x f32 and bf16 x bf16 into f32, f32 compute */
    if (tAd != tBd || tCd != CUDA_R_32F || compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_INVALID_VALUE;
    /* the argument rules of the real cuBLAS (column-major), checked at the call even when captured */
    if (m < 0 || n < 0 || k < 0 || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (lda < (ta == CUBLAS_OP_N ? (m > 1 ? m : 1) : (k > 1 ? k : 1))) return CUBLAS_STATUS_INVALID_VALUE;
    if (ldb < (tb == CUBLAS_OP_N ? (k > 1 ? k : 1) : (n > 1 ? n : 1))) return CUBLAS_STATUS_INVALID_VALUE;
    if (ldc < (m > 1 ? m : 1)) return CUBLAS_STATUS_INVALID_VALUE;
    /* host pointer mode: alpha and beta are read now, so a graph keeps these values */
    float al = *(const float *)alpha, be = *(const float *)beta;
    float *Cf = (float *)C;
    cudaError_t e = emu_enqueue(h->stream, [=]() {
        emu_gemm(ta, tb, m, n, k, al, A, tAd, lda, sA, B, tBd, ldb, sB, be, Cf, ldc, sC, batch);
    });
    return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}
static inline cublasStatus_t cublasSgemmStridedBatched_64(
    cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
    const float *alpha, const float *A, int64_t lda, long long sA, const float *B, int64_t ldb,
    long long sB, const float *beta, float *C, int64_t ldc, long long sC, int64_t batch) {
    return cublasGemmStridedBatchedEx_64(h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, sA, B, CUDA_R_32F,
                                         ldb, sB, beta, C, CUDA_R_32F, ldc, sC, batch, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT);
}
static inline cublasStatus_t cublasSgemm_64(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                            int64_t m, int64_t n, int64_t k, const float *alpha,
                                            const float *A, int64_t lda, const float *B, int64_t ldb,
                                            const float *beta, float *C, int64_t ldc) {
    return cublasSgemmStridedBatched_64(h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

#include "emu_cudnn.h" /* cuDNN's convolutions, which the plugin opens at run time */

#endif

/* test_emu_graph.cpp — the emulator's stream capture and CUDA graphs (emu_cuda.h):
 * captured work is recorded, not run, with its arguments as they were at record
 * time; a graph replays it; what a capture forbids fails and invalidates it.
 * Then its schedules (EMU_ORDER), shared memory fresh (NaN) at each block's
 * start, and dynamic shared memory over the opt-in refused.
 *   g++ -std=c++17 -O1 -Wall -Wextra -Itests/gpu/emu tests/gpu/emu/test_emu_graph.cpp -o /tmp/test_emu_graph
 * Prints a PASS or FAIL line per check; exits 1 on any failure. */
#include "emu_cuda.h"

#include <csignal>
#include <sys/wait.h>
#include <unistd.h>

static int failures;
static void check(bool ok, const char *what) {
    printf("%s: %s\n", ok ? "PASS" : "FAIL", what);
    failures += !ok;
}

__global__ void affine_k(const float *x, float *y, float a, float b, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + b;
}

enum { N = 100 }; /* two blocks of 64: the second one partly idle */
static float *x, *y, *z, *w, *B, *C;
static cudaStream_t s;

static void fill(float *p, int n, float v) { for (int i = 0; i < n; i++) p[i] = v; }
static bool all(const float *p, int n, float v) {
    for (int i = 0; i < n; i++) if (p[i] != v) return false;
    return true;
}
static long launches_of(const char *name) {
    for (int i = 0; i < emu::ntally; i++) if (!strcmp(emu::tally[i].name, name)) return emu::tally[i].n;
    return 0;
}
static cudaStreamCaptureStatus status() {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    cudaStreamIsCapturing(s, &st);
    return st;
}
/* y = 2 x + 1, then C = alpha * A B with A = y[0..8) as 4x2 and B 2x3 (column-major) */
static bool replay_ok(float alpha) {
    for (int i = 0; i < N; i++) if (y[i] != 2.f * x[i] + 1.f || w[i] != y[i] || z[i] != 0.f) return false;
    for (int j = 0; j < 3; j++)
        for (int i = 0; i < 4; i++)
            if (C[i + 4 * j] != alpha * (y[i] * B[2 * j] + y[i + 4] * B[2 * j + 1])) return false;
    return true;
}

static void test_replay() {
    cublasHandle_t h;
    cublasCreate(&h);
    cublasSetStream(h, s);
    for (int i = 0; i < N; i++) x[i] = (float)i;
    for (int i = 0; i < 6; i++) B[i] = (float)(i + 1);
    fill(y, N, 7.f);
    fill(z, N, 5.f);
    fill(w, N, 9.f);
    fill(C, 12, -1.f);

    float a = 2.f, b = 1.f, alpha = 1.5f, beta = 0.f;
    check(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess, "begin capture");
    check(status() == cudaStreamCaptureStatusActive, "IsCapturing: Active");
    check(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) != cudaSuccess && cudaGetLastError() != cudaSuccess &&
              status() == cudaStreamCaptureStatusActive,
          "begin capture on a capturing stream fails, the capture goes on");
    EMU_LAUNCH_ON(dim3(2), dim3(64), 0, s, affine_k, x, y, a, b, N);
    check(cudaGetLastError() == cudaSuccess, "captured launch: no error");
    check(all(y, N, 7.f), "captured kernel did not run at record time");
    a = 100.f; /* the graph keeps the values of record time */
    b = 100.f;
    check(cudaMemsetAsync(z, 0, N * sizeof(float), s) == cudaSuccess && all(z, N, 5.f), "captured memset not run");
    check(cudaMemcpyAsync(w, y, N * sizeof(float), cudaMemcpyDeviceToDevice, s) == cudaSuccess && all(w, N, 9.f),
          "captured device-to-device copy not run");
    check(cublasSgemm_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 2, &alpha, y, 4, B, 2, &beta, C, 4) ==
                  CUBLAS_STATUS_SUCCESS && all(C, 12, -1.f),
          "captured sgemm not run");
    alpha = 1000.f; /* cuBLAS read alpha at the call (host pointer mode) */
    /* the legacy stream is not the capturing one: its work runs now */
    EMU_LAUNCH(dim3(2), dim3(64), affine_k, x, z, 0.f, 3.f, N);
    check(all(z, N, 3.f), "legacy-stream launch during the capture runs at once");
    check(all(y, N, 7.f) && all(w, N, 9.f) && all(C, 12, -1.f), "still nothing of the capture ran");
    cudaGraph_t g = NULL;
    check(cudaStreamEndCapture(s, &g) == cudaSuccess && g, "end capture gives a graph");
    check(status() == cudaStreamCaptureStatusNone, "IsCapturing after the end: None");
    size_t n = 0;
    check(cudaGraphGetNodes(g, NULL, &n) == cudaSuccess && n == 4, "graph has 4 nodes");
    cudaGraphNode_t nodes[6];
    n = 6;
    check(cudaGraphGetNodes(g, nodes, &n) == cudaSuccess && n == 4 && nodes[0] && nodes[3] && nodes[0] != nodes[3] &&
              !nodes[4] && !nodes[5],
          "GetNodes: 4 handles, the rest NULL");
    cudaGraphExec_t ex = NULL;
    check(cudaGraphInstantiate(&ex, g, 0) == cudaSuccess, "instantiate");
    cudaGraphDestroy(g); /* the executable graph does not need it */
    check(all(y, N, 7.f), "instantiate runs nothing");

    long k0 = launches_of("affine_k"), l0 = emu::graph_launches, r0 = emu::graph_nodes_run;
    check(cudaGraphLaunch(ex, s) == cudaSuccess && replay_ok(1.5f),
          "replay 1: y = 2x + 1, memset, copy, sgemm with the recorded alpha");
    for (int i = 0; i < N; i++) x[i] = (float)(3 * i - 50); /* new input between replays */
    fill(z, N, 5.f);
    check(cudaGraphLaunch(ex, s) == cudaSuccess && replay_ok(1.5f), "replay 2 follows the new x");
    check(launches_of("affine_k") == k0 + 2 && emu::graph_launches == l0 + 2 && emu::graph_nodes_run == r0 + 8,
          "tallies: 2 kernel launches, 2 graph launches, 8 nodes replayed");
    check(cudaGraphExecDestroy(ex) == cudaSuccess, "exec destroy");
    check(cudaStreamSynchronize(s) == cudaSuccess, "synchronize outside capture");
    cublasDestroy(h);
}

/* a call a capture forbids: refused, capture invalidated, later work ignored, nothing ran */
static void test_forbidden(const char *what, bool (*call)()) {
    fill(y, N, 7.f);
    fill(z, N, 5.f);
    cudaGetLastError();
    cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
    EMU_LAUNCH_ON(dim3(2), dim3(64), 0, s, affine_k, x, y, 2.f, 1.f, N);
    char line[160];
    snprintf(line, sizeof line, "%s during capture: refused, capture invalidated", what);
    check(call() && status() == cudaStreamCaptureStatusInvalidated, line);
    EMU_LAUNCH_ON(dim3(2), dim3(64), 0, s, affine_k, x, z, 2.f, 1.f, N);
    snprintf(line, sizeof line, "%s: a later launch reports cudaErrorStreamCaptureInvalidated", what);
    check(cudaGetLastError() == cudaErrorStreamCaptureInvalidated && cudaGetLastError() == cudaSuccess, line);
    cudaGraph_t g = (cudaGraph_t)&line;
    snprintf(line, sizeof line, "%s: EndCapture returns cudaErrorStreamCaptureInvalidated, graph NULL", what);
    cudaError_t e = cudaStreamEndCapture(s, &g);
    check(e == cudaErrorStreamCaptureInvalidated && !g && status() == cudaStreamCaptureStatusNone, line);
    snprintf(line, sizeof line, "%s: nothing recorded ran", what);
    check(all(y, N, 7.f) && all(z, N, 5.f), line);
    cudaGetLastError();
}
static bool sync_refused() {
    return cudaStreamSynchronize(s) == cudaErrorStreamCaptureUnsupported &&
           cudaGetLastError() == cudaErrorStreamCaptureUnsupported;
}
static bool malloc_refused() {
    void *p = &p;
    long live = emu_live_allocs;
    return cudaMalloc(&p, 256) == cudaErrorStreamCaptureUnsupported && p == &p && emu_live_allocs == live;
}
static bool free_refused() {
    long live = emu_live_allocs;
    return cudaFree(x) == cudaErrorStreamCaptureUnsupported && emu_live_allocs == live;
}
static bool host_copy_refused() {
    float v = 0.f;
    return cudaMemcpyAsync(&v, x + 1, sizeof v, cudaMemcpyDeviceToHost, s) == cudaErrorStreamCaptureUnsupported &&
           v == 0.f;
}
static bool meminfo_refused() {
    size_t fr = 0, total = 0;
    return cudaMemGetInfo(&fr, &total) == cudaErrorStreamCaptureUnsupported;
}
static bool vmm_refused() {
    CUdeviceptr p = 0;
    return emu_cuMemAddressReserve(&p, EMU_GRAN, 0, 0, 0) == CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED && !p;
}

/* ------------------------------------------------ thread order, shared memory */
enum { LOGN = 4 * 64 };
static int order_log[LOGN], order_pos;
/* each thread logs its global index, waits at a warp barrier, logs 1000 + it */
__global__ void order_k() {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    order_log[order_pos++] = t;
    __syncwarp();
    order_log[order_pos++] = 1000 + t;
}
/* the schedule EMU_ORDER names, written out: 2 blocks of 64 threads (2 warps) */
static void expected_order(int ord, int *e) {
    int rev = ord & 1, by_warp = ord & 2, k = 0;
    for (int bi = 0; bi < 2; bi++)
        for (int outer = 0; outer < 2; outer++)
            for (int inner = 0; inner < 2; inner++) {
                /* lock-step: phase 0 of both warps, then phase 1; warp by warp: both phases of a warp */
                int p = by_warp ? inner : outer, wi = by_warp ? outer : inner;
                int b = rev ? 1 - bi : bi, w = rev ? 1 - wi : wi;
                for (int li = 0; li < 32; li++) e[k++] = p * 1000 + b * 64 + w * 32 + (rev ? 31 - li : li);
            }
}
/* a planted missing barrier: thread t reads what thread t + 1 writes */
__global__ void race_k(float *out) {
    __shared__ float sh[64];
    static long seen = -1; /* as translate.py adds to every static shared array */
    emu::shared_fresh(sh, sizeof sh, &seen);
    int t = threadIdx.x;
    sh[t] = (float)t;
    out[blockIdx.x * 64 + t] = sh[(t + 1) % 64]; /* no __syncthreads() between */
}
/* thread `gone` leaves before a full-mask shuffle: undefined on a GPU */
__global__ void exited_lane_k(float *out, int gone) {
    if ((int)threadIdx.x == gone) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}
/* does the launch abort (the emulator's verdict on undefined warp use)? run in a child */
static bool launch_aborts(int threads, int gone, float *out) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        EMU_LAUNCH(dim3(1), dim3(threads), exited_lane_k, out, gone);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
}
/* reads dynamic shared memory that no thread wrote */
__global__ void dyn_k(float *out) { out[threadIdx.x] = ((const float *)emu::dyn_smem)[threadIdx.x]; }

static void test_order_and_shared() {
    int want[LOGN];
    static const char *names[4] = {"forward", "reverse", "warps", "warps-reverse"};
    for (int ord = 0; ord < 4; ord++) {
        emu::order = ord;
        order_pos = 0;
        EMU_LAUNCH(dim3(2), dim3(64), order_k);
        expected_order(ord, want);
        char line[160];
        snprintf(line, sizeof line, "EMU_ORDER %s: blocks, warps and lanes in its order", names[ord]);
        check(order_pos == LOGN && !memcmp(order_log, want, sizeof want), line);
    }
    float *out;
    cudaMalloc((void **)&out, 128 * sizeof(float));
    emu::order = 0;
    EMU_LAUNCH(dim3(2), dim3(64), race_k, out);
    /* forward: t reads sh[t + 1] before t + 1 writes it: NaN, in the second block too
     * (not the first block's values); only thread 63 reads sh[0], written */
    check(std::isnan(out[0]) && std::isnan(out[62]) && out[63] == 0.f && std::isnan(out[64]) && std::isnan(out[126]),
          "missing barrier, forward: reads of the unwritten shared array give NaN, in each block");
    emu::order = 1;
    EMU_LAUNCH(dim3(2), dim3(64), race_k, out);
    check(out[0] == 1.f && out[62] == 63.f && std::isnan(out[63]) && out[64] == 1.f && std::isnan(out[127]),
          "missing barrier, reverse: the other threads' reads differ (a mismatch between orders)");
    emu::order = -1; /* from EMU_ORDER again */

    EMU_LAUNCH_ON(dim3(1), dim3(32), 128, (cudaStream_t)0, dyn_k, out);
    check(cudaGetLastError() == cudaSuccess && std::isnan(out[0]) && std::isnan(out[31]),
          "dynamic shared memory: NaN where no thread wrote");
    out[0] = 5.f;
    EMU_LAUNCH_ON(dim3(1), dim3(32), 64 << 10, (cudaStream_t)0, dyn_k, out);
    check(cudaGetLastError() == cudaErrorInvalidValue && out[0] == 5.f,
          "dynamic shared memory over 48 KiB without the opt-in: the launch fails, nothing runs");
    check(cudaFuncSetAttribute((const void *)dyn_k, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10) == cudaSuccess,
          "opt-in to 64 KiB");
    EMU_LAUNCH_ON(dim3(1), dim3(32), 64 << 10, (cudaStream_t)0, dyn_k, out);
    check(cudaGetLastError() == cudaSuccess && std::isnan(out[0]), "with the opt-in, the launch runs");
    check(cudaFuncSetAttribute((const void *)dyn_k, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 << 10) ==
              cudaErrorInvalidValue && cudaGetLastError() == cudaErrorInvalidValue,
          "opt-in over the card's 227 KiB: refused");
    out[63] = 0.f;
    EMU_LAUNCH(dim3(1), dim3(64), exited_lane_k, out, -1);
    check(out[63] == 1.f, "a full-mask shuffle, every lane there: runs");
    check(launch_aborts(64, 37, out), "a full-mask shuffle with a lane exited: stops (undefined on a GPU)");
    check(launch_aborts(48, -1, out), "a full-mask shuffle in a warp of 16 lanes (blockDim 48): stops");
    cudaFree(out);
}

int main() {
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaMalloc((void **)&x, N * sizeof(float));
    cudaMalloc((void **)&y, N * sizeof(float));
    cudaMalloc((void **)&z, N * sizeof(float));
    cudaMalloc((void **)&w, N * sizeof(float));
    cudaMalloc((void **)&B, 6 * sizeof(float));
    cudaMalloc((void **)&C, 12 * sizeof(float));
    /* outside capture a launch runs at once, as before */
    for (int i = 0; i < N; i++) x[i] = (float)i;
    EMU_LAUNCH_ON(dim3(2), dim3(64), 0, s, affine_k, x, y, 2.f, 1.f, N);
    check(y[N - 1] == 2.f * (N - 1) + 1.f, "uncaptured launch runs at once");

    test_replay();
    test_order_and_shared();
    test_forbidden("cudaStreamSynchronize", sync_refused);
    test_forbidden("cudaMalloc", malloc_refused);
    test_forbidden("cudaFree", free_refused);
    test_forbidden("device-to-host cudaMemcpyAsync", host_copy_refused);
    test_forbidden("cudaMemGetInfo", meminfo_refused);
    test_forbidden("cuMemAddressReserve", vmm_refused);
    check(cudaStreamEndCapture(s, NULL) == cudaErrorInvalidValue, "EndCapture without a graph pointer: error");
    cudaGraph_t g;
    check(cudaStreamEndCapture(s, &g) == cudaErrorIllegalState, "EndCapture on a stream not capturing: error");
    cudaGetLastError();

    cudaFree(x);
    cudaFree(y);
    cudaFree(z);
    cudaFree(w);
    cudaFree(B);
    cudaFree(C);
    cudaStreamDestroy(s);
    printf("%s: stream capture, graphs, thread orders and shared memory in the emulator, %d failures\n", failures ? "FAIL" : "PASS", failures);
    return failures != 0;
}

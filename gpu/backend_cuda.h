/* backend_cuda.h — the CUDA implementation of struct Backend (src/backend.h).
 * Plain C header: the engine includes it (under -DKRONA_CUDA) without any CUDA
 * headers. All work runs on one CUDA stream owned by the backend, so a training
 * step can later be captured into a CUDA graph.
 *
 * Errors: every CUDA / cuBLAS call is checked. Ops cannot return errors through
 * the op table, so the first failure is recorded in the backend and read with
 * backend_cuda_last_error(); ops keep running (and usually fail the same way).
 * Check it after be->sync() at the end of a step. mse_fwd returns NaN on error.
 */
#ifndef KRONA_BACKEND_CUDA_H
#define KRONA_BACKEND_CUDA_H

#include <stddef.h>
#include "core/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* NULL with a one-line reason in err when there is no usable GPU or driver.
 * Env KRONA_CUDA_TF32=0 starts with TF32 tensor-core math off. */
Backend *backend_cuda_create(char *err, size_t errlen);
/* Waits for queued work, frees every device buffer (live or cached), the stream
 * and the cuBLAS handle, then the Backend itself. */
void backend_cuda_destroy(Backend *be);

/* "" when no error happened since creation / the last clear; else the first
 * failure, naming the call and the op. */
const char *backend_cuda_last_error(Backend *be);
void backend_cuda_clear_error(Backend *be);

/* TF32 tensor-core math for cuBLAS gemms (default on). TF32 keeps fp32 range
 * but rounds gemm inputs to 10 mantissa bits: ~1e-3 relative error per gemm,
 * harmless for training, 3-8x faster on H100. Off = exact fp32 (IEEE FMA). */
void backend_cuda_set_tf32(Backend *be, int on);
int backend_cuda_get_tf32(Backend *be);

/* Device name, e.g. "NVIDIA H100 80GB HBM3". */
const char *backend_cuda_device_name(Backend *be);
/* Bytes the caching allocator holds from the driver (live + cached). */
size_t backend_cuda_reserved_bytes(Backend *be);
/* Returns cached (free) blocks to the driver. */
void backend_cuda_release_cache(Backend *be);

#ifdef __cplusplus
}
#endif

#endif

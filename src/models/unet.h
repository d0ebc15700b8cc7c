/* unet.h — a UNet2DConditionModel (diffusers) built from its config.
 * One code path serves the built-in tiny model, SD 1.5 and SDXL: parameters are
 * named exactly as diffusers names them, so checkpoints load by name.
 * The config (UNetConfig, built-ins, config.json) is in unet_config.h, included
 * here; weight files are read and written by unet_io.c. */
#ifndef KRONA_UNET_H
#define KRONA_UNET_H

#include <stdint.h>
#include "core/backend.h"
#include "models/adapter.h"
#include "models/unet_config.h"

#define UNET_NAME_MAX 128

/* One parameter of the base model, named as diffusers does. */
typedef struct UNetParam {
    char name[UNET_NAME_MAX];
    int ndim;
    int64_t shape[4];
    int64_t numel;
    float *data;  /* device pointer (NULL in a table-only listing) */
    float *grad;  /* NULL unless base training is enabled */
} UNetParam;

/* A linear layer the adapters can attach to (d_out x d_in weight). */
typedef struct UNetLinear {
    char name[UNET_NAME_MAX]; /* module name, e.g. "...attn1.to_q" */
    int d_out, d_in;
    int is_attn;             /* attn1/attn2 to_q,to_k,to_v,to_out.0 */
    int is_ffn;              /* ff.net.0.proj, ff.net.2 */
} UNetLinear;

/* Parameter table without allocating weights (for `info` on sd15/sdxl).
 * Caller frees *params and *linears with free(). */
int unet_param_table(const UNetConfig *cfg, UNetParam **params, int *n_params,
                     UNetLinear **linears, int *n_linears);

/* Device memory the activation arenas need for one forward (+ backward) at this
 * shape, without creating the model (adapter scratch not included): bytes kept
 * for backward, temporaries (with checkpointing: + one layer's recompute),
 * backward gradient buffers. 0, or -1 on bad shape. */
int unet_memory_plan(const UNetConfig *cfg, int N, int H, int W, int L, int for_backward,
                     int trainable, int checkpointing, int64_t *act_bytes, int64_t *tmp_bytes,
                     int64_t *grad_bytes);

typedef struct UNet UNet;

/* Allocate a UNet with zeroed weights on the backend. NULL + err on failure. */
UNet *unet_create(const UNetConfig *cfg, Backend *be, char *err, size_t errlen);
void unet_free(UNet *u);
const UNetConfig *unet_config(const UNet *u);
Backend *unet_backend(const UNet *u);

/* Parameters by index or diffusers name (NULL if unknown). */
int unet_n_params(const UNet *u);
UNetParam *unet_param_at(UNet *u, int i);
UNetParam *unet_param(UNet *u, const char *name);
int64_t unet_n_base_params(const UNet *u);
/* every parameter's gradient in one block of n_base floats (param_layout's
 * order, not the table's), NULL until unet_set_base_trainable(u, 1): a norm over all of
 * them is one read */
float *unet_grad_block(UNet *u);
/* every parameter's weights in one block of n_base floats, the same order */
float *unet_weight_block(UNet *u);

/* diffusers-style init (kaiming-uniform linears/convs, zero biases, unit norms),
 * deterministic in seed. */
void unet_init_random(UNet *u, uint64_t seed);
/* Load weights by name from a .safetensors (F32/F16/BF16). Every parameter must
 * be present with the right shape; optional prefix (e.g. "model.diffusion_model.") */
int unet_load_safetensors(UNet *u, const char *path, char *err, size_t errlen);
int unet_save_safetensors(UNet *u, const char *path, char *err, size_t errlen);

/* Attach adapters to the selected linears (replaces any attached before).
 * Fails with err naming the layer when a1/a2 do not divide its dims. */
int unet_attach_adapters(UNet *u, const AdapterSpec *spec, uint64_t seed,
                         char *err, size_t errlen);
AdapterSet *unet_adapters(UNet *u);
/* Also train base weights (allocates grads). Default: frozen. */
void unet_set_base_trainable(UNet *u, int trainable);
int unet_base_trainable(const UNet *u);
/* The base weights will not change until unet_set_base_trainable(u, 1) or a
 * load: in BF16 mode the backend may then give half their memory back
 * (set_frozen). unet_forward says it each time; a trainer says it before
 * planning memory, so the plan sees what is free after. No-op while the base
 * trains. */
void unet_promise_frozen(UNet *u);
/* Gradient checkpointing: a forward for backward keeps only each resnet's and
 * transformer block's output, and backward runs that layer's forward again
 * first. Same gradients (the recompute is the same ops on the same inputs),
 * a fraction of the activation memory, about one extra forward of time. */
void unet_set_checkpointing(UNet *u, int on);
int unet_checkpointing(const UNet *u);
/* Zero the adapter gradients (dA, dB) and, when trainable, the base grads. */
void unet_zero_grad(UNet *u);
/* The adaptable linears (attention q/k/v/out, FFN), as in unet_param_table. */
int unet_n_linears(const UNet *u);
const UNetLinear *unet_linear_at(const UNet *u, int i);

/* Forward. All pointers are device pointers.
 *   x[N,in,H,W], t[N] (float timesteps), ctx[N,L,cross_attention_dim],
 *   added[N, P + 6] for SDXL: the pooled text embedding (P = projection input
 *   dim - 6 * addition_time_embed_dim, 1280 for SDXL) followed by the 6 raw
 *   time ids (embedded inside as diffusers' add_time_proj); else NULL.
 *   out[N,out,H,W].
 * When `for_backward` is set the activations backward needs are kept inside
 * the UNet until the next forward. */
int unet_forward(UNet *u, const float *x, const float *t, const float *ctx,
                 const float *added, float *out, int N, int H, int W, int L,
                 int for_backward);
/* Backward of the last forward(for_backward=1). dout[N,out,H,W].
 * Accumulates into adapter grads (and base grads when trainable);
 * dx (may be NULL) += d loss / d x. */
int unet_backward(UNet *u, const float *dout, float *dx);
/* The same, and dctx[N,L,cross_attention_dim] (device, may be NULL) += d loss /
 * d ctx: the text encoder's input gradient when it trains with the UNet. */
int unet_backward_ctx(UNet *u, const float *dout, float *dx, float *dctx);
/* ... and dadded[N, P + 6] (device, may be NULL; SDXL) += d loss / d added for
 * its pooled part (the time ids get none): the pooled text embedding's gradient
 * through add_embedding, for text-encoder adapters. */
int unet_backward_cond(UNet *u, const float *dout, float *dx, float *dctx, float *dadded);
/* One line saying why the last unet_forward / unet_backward returned -1 ("" if none). */
const char *unet_last_error(const UNet *u);

#endif

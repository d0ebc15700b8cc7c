/* adapter.h — trainable low-parameter updates on frozen linear layers.
 * KronA (DiffuseKronA): dW = scale * (A ⊗ B), A[a1,a2], B[d_out/a1, d_in/a2].
 * LoRA (baseline):      dW = (alpha / r) * up[d_out,r] down[r,d_in].
 * One factor starts at zero (B for KronA, up for LoRA) so step 0 is exactly the
 * base model. Files (adapter_file.h) use the keys A1111, ComfyUI, sd.cpp and
 * LyCORIS load. */
#ifndef KRONA_ADAPTER_H
#define KRONA_ADAPTER_H

#include <stddef.h>
#include <stdint.h>
#include "core/backend.h"

typedef enum { ADAPTER_NONE = 0, ADAPTER_KRONA = 1, ADAPTER_LORA = 2 } AdapterKind;

enum { ADAPT_ATTN = 1, ADAPT_FFN = 2 }; /* module selection bits */

typedef struct AdapterSpec {
    AdapterKind kind;
    int a1, a2;       /* KronA factor A shape */
    int rank;         /* LoRA rank */
    float alpha;      /* LoRA alpha (scale = alpha / rank); KronA scale multiplier */
    int modules;      /* ADAPT_ATTN | ADAPT_FFN */
    int merged;       /* ADAPTER_FACTORED, _MERGED or _MERGE_AUTO (below) */
} AdapterSpec;

/* How an adapted linear applies its update. FACTORED: y = x W^T + x dW^T, the
 * adapter's own small products per row (kron_fwd, LoRA's two GEMMs). MERGED:
 * W' = W + dW in a scratch copy per call, then one GEMM with W'; dA and dB stay
 * factored. MERGE_AUTO: merged where that is cheaper (adapter_merge_pays).
 * Merging only suits fp32 GEMMs: bf16 and tf32 round W' to 8 or 10 mantissa
 * bits, which swallows an update much smaller than W (a young adapter's) —
 * adapter_merge_mode says which a precision gets. */
enum { ADAPTER_FACTORED = 0, ADAPTER_MERGED = 1, ADAPTER_MERGE_AUTO = 2 };

typedef struct Adapter {
    char name[128];   /* module name, e.g. "down_blocks.0...attn1.to_q" */
    AdapterKind kind;
    int d_out, d_in;
    int a1, a2, b1, b2; /* KronA: b1 = d_out/a1, b2 = d_in/a2 */
    int rank;
    float scale;
    float *A, *B;     /* KronA factors, or LoRA: A = down[r,d_in], B = up[d_out,r] */
    float *dA, *dB;   /* gradients (device) */
    float *mA, *vA, *mB, *vB; /* AdamW moments */
    float *block;     /* the device block it owns (NULL: in its set's arena) */
} Adapter;

/* The one hook for how exported keys name a module. Adapter.name is the
 * diffusers module path ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q");
 * a key is "lora_unet_" + the path this returns, '.' -> '_'. NULL (the default)
 * keeps the diffusers path: kohya's names for SD 1.x and for the tiny model. SDXL
 * sets a map to the original (LDM) path, kohya's SDXL names ("input_blocks.4.1.
 * transformer_blocks.0.attn1.to_q"): convert_module_to_ldm of the UNet's name
 * table (models/convert.h, user = the ConvertMap) without its
 * "model.diffusion_model." prefix. Import looks keys up through the same map.
 * 0, or -1 with err when the module has no name in that layout.
 * docs/adapter-format.md. */
typedef int (*AdapterNameMap)(void *user, const char *diffusers_path, char *out, size_t outlen,
                              char *err, size_t errlen);

typedef struct AdapterSet {
    AdapterSpec spec;
    int n;
    Adapter *items;
    Backend *be;
    AdapterNameMap name_map; /* export names; NULL: diffusers paths (see above) */
    void *name_map_user;     /* its first argument */
    /* key prefix of its modules in files: NULL "lora_unet_" (the UNet); a text
     * encoder's set: "lora_te_" (SD 1.x, tiny), "lora_te1_" / "lora_te2_" (SDXL) */
    const char *key_prefix;
    int bypass;              /* 1: forward passes leave the set's adapters out (the base
                                model's output); model_bypass_adapters sets it */
    /* adapter_set_pack: every adapter's factors, gradients and AdamW moments in
     * one block of 4 regions of arena_n floats each (params, grads, m, v), the
     * adapters at the same offsets in each, so zeroing the gradients and an
     * AdamW step are one op per set instead of two per adapter */
    float *arena;
    int64_t arena_n;
} AdapterSet;

/* Trainable parameter count for one linear, or -1 if the factors do not divide. */
int64_t adapter_param_count(const AdapterSpec *s, int d_out, int d_in);
/* What of a spec does not fit a layer: KronA a1 must divide d_out and a2 d_in
 * (a1 is checked first), a LoRA rank lies in 1..min(d_out, d_in). */
typedef enum { ADAPTER_FITS = 0, ADAPTER_BAD_A1, ADAPTER_BAD_A2, ADAPTER_BAD_RANK,
               ADAPTER_BAD_KIND } AdapterFault;
/* Which factor of s does not fit the d_out x d_in linear `layer` (ADAPTER_FITS
 * if none); err (may be NULL) gets one line naming the factor, the dimension
 * and the layer. */
AdapterFault adapter_fault(const AdapterSpec *s, const char *layer, int d_out, int d_in,
                           char *err, size_t errlen);
/* "a1", "a2", "rank", "kind" ("" for ADAPTER_FITS): the knob at fault. */
const char *adapter_fault_name(AdapterFault f);
/* adapter_fault as 0 if fine, else -1 with the err naming the layer. */
int adapter_check(const AdapterSpec *s, const char *layer, int d_out, int d_in,
                  char *err, size_t errlen);
/* Does this spec adapt this linear? */
int adapter_selects(const AdapterSpec *s, int is_attn, int is_ffn);

/* Floats in factor A (KronA a1*a2, LoRA down r*d_in) and B (b1*b2, LoRA up d_out*r). */
int64_t adapter_numel_A(const Adapter *a);
int64_t adapter_numel_B(const Adapter *a);

/* Allocate (and initialise: A kaiming-uniform-like, B zero) one adapter. */
int adapter_init(Adapter *a, Backend *be, const AdapterSpec *s, const char *name,
                 int d_out, int d_in, uint64_t seed, char *err, size_t errlen);
void adapter_free(Adapter *a, Backend *be);
void adapter_set_free(AdapterSet *set);
/* Move the set's adapters (as they are: factors; gradients and moments start at
 * zero) into one arena (see AdapterSet). 0, or -1 with err (out of memory: the
 * set is unchanged). A set without adapters stays as it is. */
int adapter_set_pack(AdapterSet *set, char *err, size_t errlen);
/* Zero every gradient of the set / one AdamW step (decoupled weight decay, step
 * t >= 1) on all its factors: one op each over a packed arena, else two per
 * adapter (AdamW is elementwise: the same numbers either way). */
void adapter_set_zero_grad(AdapterSet *set);
void adapter_set_adamw(AdapterSet *set, float lr, float beta1, float beta2, float eps,
                       float weight_decay, int t);
int64_t adapter_set_param_count(const AdapterSet *set);

/* y[M,d_out] += adapter(x[M,d_in]) */
void adapter_fwd(Backend *be, const Adapter *a, const float *x, float *y, int64_t M,
                 float *scratch);
/* dx += adapter^T dy (dx may be NULL); dA, dB += grads. scratch: M*max(rank,...) */
void adapter_bwd(Backend *be, Adapter *a, const float *dy, const float *x, float *dx,
                 int64_t M, float *scratch);
/* scratch floats adapter_fwd/bwd need for M rows */
int64_t adapter_scratch_floats(const Adapter *a, int64_t M);
/* MERGE_AUTO for KRONA_PREC_FP32, else FACTORED (see above) */
int adapter_merge_mode(int precision);
/* for a call over M rows, whether the merged form costs less: W' costs a copy
 * and the merge of d_out x d_in elements (LoRA: a rank-r product), the
 * factored form the adapter's products for M rows, once forward and once for
 * dx (the GEMM with W' does both then). */
int adapter_merge_pays(const Adapter *a, int64_t M);
/* the form spec asks for a call of a over M rows: 1 merged, 0 factored */
int adapter_merged(const AdapterSpec *spec, const Adapter *a, int64_t M);

/* W += dW (export a merged model / merged training path) */
void adapter_merge_into(Backend *be, const Adapter *a, float *W, float *scratch);

/* Save / load adapters as .safetensors (adapter_file.c; the format, key by key and
 * what A1111, ComfyUI, stable-diffusion.cpp and LyCORIS do with it, is
 * docs/adapter-format.md). Save writes kohya-style keys "lora_unet_<path>":
 * KronA as LyCORIS LoKr with full factors, lokr_w1 = scale * A, lokr_w2 = B and
 * alpha = 1 (every loader applies kron(w1, w2) with scale 1 to full factors, so
 * its dW is the trained one); LoRA as kohya lora_down.weight = A, lora_up.weight
 * = B, alpha = scale * rank. Metadata: kind, a1, a2, rank, alpha, modules, count,
 * krona_format, kohya's ss_network_* keys and the keys of metadata_json_extra.
 * Load reads those files, older krona-studio files ("lycoris_" keys, scale in
 * alpha) and LyCORIS's own LoKr files (lokr_w1_a/_b, lokr_w2_a/_b) into the
 * attached adapters, refusing in one line what they cannot represent. */
int adapter_set_save(const AdapterSet *set, const char *path,
                     const char *metadata_json_extra, char *err, size_t errlen);
int adapter_set_load(AdapterSet *set, const char *path, char *err, size_t errlen);
/* The same for several sets in one file (the UNet's first, then text encoders'
 * with their key_prefix); the metadata spec is sets[0]'s. Save writes every
 * tensor as dtype: ST_F32 (what adapter_set_save writes), ST_F16 or ST_BF16,
 * each value of the f32 factors rounded to nearest even (a value beyond the
 * dtype's range is an error naming the tensor). Load: every adapter tensor of
 * the file belongs to a layer of one of the sets; F32, F16, BF16, F64 read. */
int adapter_sets_save(const AdapterSet *const *sets, int nsets, const char *path,
                      const char *metadata_json_extra, int dtype, char *err, size_t errlen);
int adapter_sets_load(AdapterSet *const *sets, int nsets, const char *path, char *err,
                      size_t errlen);

#endif

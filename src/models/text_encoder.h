/* text_encoder.h — CLIP text transformer (HF CLIPTextModel /
 * CLIPTextModelWithProjection), config-driven: one code path for the built-in
 * tiny encoder, SD 1.5's ViT-L/14 text tower and both SDXL encoders.
 *
 * Parameters are looked up by HF names:
 *   text_model.embeddings.token_embedding.weight      [vocab, hidden]
 *   text_model.embeddings.position_embedding.weight   [max_pos, hidden]
 *   text_model.encoder.layers.{i}.layer_norm1.{weight,bias}
 *   text_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}
 *   text_model.encoder.layers.{i}.layer_norm2.{weight,bias}
 *   text_model.encoder.layers.{i}.mlp.fc1.{weight,bias}, .mlp.fc2.{weight,bias}
 *   text_model.final_layer_norm.{weight,bias}
 *   text_projection.weight [projection_dim, hidden]   (only with a projection)
 *
 * Forward: token + position embeddings, pre-LN blocks with causal self-attention
 * and an MLP (quick_gelu or gelu), final layer norm. No padding mask, as SD uses
 * it. All math goes through the Backend op table. */
#ifndef KRONA_TEXT_ENCODER_H
#define KRONA_TEXT_ENCODER_H

#include <stddef.h>
#include <stdint.h>

#include "core/backend.h"
#include "models/adapter.h"

typedef enum { TE_ACT_QUICK_GELU = 0, TE_ACT_GELU = 1 } TextAct;

typedef struct TextConfig {
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int max_position_embeddings; /* also the longest id sequence accepted */
    TextAct hidden_act;
    float layer_norm_eps;
    int projection_dim;          /* 0: no text_projection (CLIPTextModel) */
    /* Pooled output position: the first occurrence of this id in each sequence;
     * -1 (or the id absent): the argmax of the ids, OpenAI's rule, which HF uses
     * for legacy configs with eos_token_id 2 (SD 1.5). Both agree whenever EOS is
     * the largest id, as in CLIP's vocabulary and the byte tokenizer. */
    int eos_token_id;
} TextConfig;

/* Built-in configs: "tiny-text" (byte tokenizer: vocab 258, hidden 64, 2 layers,
 * 4 heads, intermediate 256, 77 positions (75 prompt bytes), gelu, eps 1e-5, no projection,
 * eos 257); "clip-vit-l" (SD 1.5's and SDXL's first encoder: 768 wide, 12 layers,
 * quick_gelu) and "openclip-vit-bigg" (SDXL's second: 1280 wide, 32 layers, gelu,
 * projection 1280). -1 with the known names in err otherwise. */
int te_config_builtin(TextConfig *cfg, const char *name, char *err, size_t errlen);
/* A HF text_encoder/config.json (file, or text already in memory). Missing
 * fields take CLIPTextConfig's defaults; projection_dim is used only when
 * "architectures" names CLIPTextModelWithProjection. */
int te_config_load(TextConfig *cfg, const char *path, char *err, size_t errlen);
int te_config_parse(TextConfig *cfg, const char *json_text, size_t len, const char *what,
                    char *err, size_t errlen);

typedef struct TextEncoder TextEncoder;

/* Allocates the parameters on be (zeroed; LN weights are not yet 1: call
 * te_init_random or te_load_safetensors). NULL with a reason on a bad config
 * or out of memory. */
TextEncoder *te_create(const TextConfig *cfg, Backend *be, char *err, size_t errlen);
void te_free(TextEncoder *te);
/* Give the weights back to the device once every prompt a run needs is encoded
 * (SDXL's two encoders hold 3.3 GB in f32). The config, tokenizer-facing sizes
 * and adapter set stay; te_forward then fails saying so. */
void te_release_weights(TextEncoder *te);
const TextConfig *te_config(const TextEncoder *te);
Backend *te_backend(const TextEncoder *te);
int64_t te_n_params(const TextEncoder *te);
/* Width of the pooled output: projection_dim, or hidden_size without projection. */
int te_pooled_dim(const TextEncoder *te);

/* Deterministic init from the host RNG (same numbers on every backend):
 * weights and embeddings N(0, 0.02), biases 0, layer norms 1 / 0. */
void te_init_random(TextEncoder *te, uint64_t seed);
/* Loads every parameter by name (prefix + HF name, e.g. prefix "" for a
 * diffusers text_encoder/model.safetensors, "cond_stage_model.transformer." for
 * an original SD 1.5 checkpoint). Any float dtype; shapes must match the
 * config. Extra tensors are ignored. */
int te_load_safetensors(TextEncoder *te, const char *path, const char *prefix,
                        char *err, size_t errlen);

/* ids_host[N, L] (host). Outputs are DEVICE pointers on te's backend, any may
 * be NULL:
 *   hidden_out[N, L, hidden]      last_hidden_state (after final_layer_norm)
 *   penultimate_out[N, L, hidden] hidden_states[-2]: the input of the last
 *                                 layer, without final norm (SDXL)
 *   pooled_out[N, pooled_dim]     final-normed hidden at the EOS position,
 *                                 projected when text_projection exists
 * -1 with a reason when L exceeds max_position_embeddings or an id is out of
 * range, or on out-of-memory. */
int te_forward(TextEncoder *te, const int32_t *ids_host, int N, int L, float *hidden_out,
               float *penultimate_out, float *pooled_out, char *err, size_t errlen);

/* ---- training (the built-in tiny model is pretrained jointly with its UNet) ----
 * te_set_trainable(te, TE_TRAIN_FULL (1)) allocates one gradient block shaped
 * like the parameter block (zeroed) and makes te_forward keep the activations
 * that te_backward needs; TE_TRAIN_ADAPTERS (2) keeps the activations only (no
 * gradient block: the base is frozen, te_backward fills the adapter gradients
 * and skips every base gradient); TE_TRAIN_OFF (0) frees both. -1 on out of
 * memory. te_trainable returns the mode. */
enum { TE_TRAIN_OFF = 0, TE_TRAIN_FULL = 1, TE_TRAIN_ADAPTERS = 2 };
int te_set_trainable(TextEncoder *te, int trainable, char *err, size_t errlen);
int te_trainable(const TextEncoder *te);

/* Adapters (DiffuseKronA's optional text-encoder adapters) on the attention
 * projections q_proj, k_proj, v_proj and out_proj of every layer, named by
 * their HF module path ("text_model.encoder.layers.0.self_attn.q_proj"), in
 * the order layer by layer, q k v out. Replaces any attached set; spec->modules
 * and spec->merged are ignored (only attention, unmerged); kind NONE detaches.
 * -1 with one line naming the layer when a1/a2 (or the rank) does not fit.
 * te_forward adds them; te_backward accumulates into their dA/dB (zeroed by
 * te_zero_grad). The set belongs to te (freed by te_free). */
int te_attach_adapters(TextEncoder *te, const AdapterSpec *spec, uint64_t seed, char *err,
                       size_t errlen);
/* The HF module path of text adapter i, in that order: layer i / 4, projection
 * q_proj, k_proj, v_proj, out_proj in turn ("text_model.encoder.layers.0.self_attn.q_proj";
 * the weight is "<path>.weight" in a text_encoder/model.safetensors). */
void te_adapter_name(int i, char *out, size_t n);
/* The adapters te_attach_adapters attaches, for a config alone (no encoder:
 * `merge` into a diffusers folder): set (emptied first, set->be = be) gets
 * 4 * num_hidden_layers hidden x hidden adapters named by te_adapter_name.
 * -1 with one line naming the layer the spec does not fit. */
int te_adapter_set_init(AdapterSet *set, const TextConfig *cfg, Backend *be, const AdapterSpec *spec,
                        uint64_t seed, char *err, size_t errlen);
AdapterSet *te_adapters(TextEncoder *te);
/* Every parameter in one contiguous device block of te_n_params floats, in the
 * order te_param_name lists them; the gradient block has the same layout
 * (NULL unless trainable). */
float *te_params(TextEncoder *te);
float *te_grads(TextEncoder *te);
void te_zero_grad(TextEncoder *te);
int te_n_tensors(const TextEncoder *te);
/* HF name, shape and offset (in floats, into te_params) of tensor i. */
const char *te_tensor_info(const TextEncoder *te, int i, int *ndim, int64_t shape[2], int64_t *offset);
/* Backward of the last te_forward (made while trainable) for the gradient of
 * its hidden_out [N, L, hidden] (device): ACCUMULATES into te_grads (when
 * TE_TRAIN_FULL) and the attached adapters' dA/dB. For the gradients through
 * penultimate_out and pooled_out see te_backward_states / te_backward_all (the
 * tiny UNet and SD 1.5 only read last_hidden_state). gelu and quick_gelu encoders. -1 with a reason
 * when not trainable, without a forward or on out of memory. */
int te_backward(TextEncoder *te, const float *d_hidden_out, char *err, size_t errlen);
/* The same with the gradient of penultimate_out [N, L, hidden] too (SDXL's UNet
 * reads the penultimate states); either may be NULL, not both. */
int te_backward_states(TextEncoder *te, const float *d_hidden_out, const float *d_penultimate_out,
                       char *err, size_t errlen);
/* ... and the gradient of pooled_out [N, pooled_dim] (SDXL's UNet reads bigG's
 * projected pooled output in its add embedding); the forward must have made
 * pooled_out. Any of the three may be NULL, not all. */
int te_backward_all(TextEncoder *te, const float *d_hidden_out, const float *d_penultimate_out,
                    const float *d_pooled_out, char *err, size_t errlen);
/* All parameters as F32 under their HF names (atomic write). */
int te_save_safetensors(TextEncoder *te, const char *path, char *err, size_t errlen);

/* The pooled position for one sequence under cfg's rule (exposed for tests). */
int te_eos_position(const TextConfig *cfg, const int32_t *ids, int L);

#endif

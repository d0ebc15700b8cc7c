/* model.h — everything a text-to-image model needs, opened by one name:
 * the UNet, its text encoder(s) + tokenizer(s), the VAE of a latent model, and
 * the noise schedule.
 *   "tiny"            the built-in pixel-space model (models/tiny/ weights, found
 *                     as model_find_data says; missing weights are an error)
 *   "tiny-random"     its architecture with random weights (MODEL_TINY_RANDOM:
 *                     only when asked for, never as a fallback)
 *   DIR               a diffusers folder: unet/, text_encoder/, tokenizer/, and
 *                     vae/, text_encoder_2/, tokenizer_2/, scheduler/ when there
 *   FILE.safetensors  a single-file SD 1.5 or SDXL base checkpoint (original
 *                     LDM layout; models/checkpoint.h, models/convert.h)
 * CLIP's vocabulary: see tok_find_clip. */
#ifndef KRONA_MODEL_H
#define KRONA_MODEL_H

#define MODEL_TINY_RANDOM "tiny-random"

#include <stdatomic.h>

#include "core/backend.h"
#include "models/diffusion.h"
#include "models/text_encoder.h"
#include "models/tokenizer.h"
#include "models/unet.h"
#include "models/vae.h"

typedef struct Model {
    char spec[512];
    Backend *be;
    UNetConfig ucfg;
    UNet *unet;
    TextEncoder *te;
    Tokenizer *tok;
    TextEncoder *te2;  /* SDXL's second encoder (OpenCLIP ViT-bigG); NULL otherwise */
    Tokenizer *tok2;
    int context_len;   /* tokens per prompt, BOS..EOS..pad */
    int ctx_dim;       /* = cross_attention_dim: the text hidden size (SDXL: both encoders' concatenated) */
    int added_dim;     /* UNet add-embedding input per prompt: pooled text + 6 time ids (SDXL), else 0 */
    /* One prompt's conditioning, a record of cond_floats on the device:
     * [context_len, ctx_dim] then added_dim floats. Callers size prompt buffers
     * with it and hand records to model_unet_forward / model_generate. */
    int64_t cond_floats;
    float *split_ctx, *split_added; /* model_unet_forward's scratch (SDXL) */
    struct ConvertMap *unet_names;  /* SDXL: the UNet's LDM name table, for adapter keys */
    int split_n;
    Schedule sched;
    VAE *vae;          /* latent models: images <-> latents; NULL in pixel space */
    int channels;      /* UNet input channels (3: pixels, 4: SD latents) */
    int image_channels;/* channels of the images it makes and trains on (3) */
    int latent;        /* 1 when images go through a VAE */
    int pixel_scale;   /* image pixels per UNet cell (1 pixel space, 8 latent) */
    int pretrained;    /* weights came from files */
    char note[256];    /* where the weights came from */
    /* the last model_generate's UNet passes (one a sampler step) and how many
     * were replays of a recording (core/replay.h; 0 on a backend that cannot
     * record), or why they ran op by op */
    int gen_passes, gen_replayed;
    char gen_why[256];
} Model;

/* Files shipped with krona-studio (models/tiny, models/demo, presets/) are
 * looked for, rel to each, in:
 *   $KRONA_HOME, when set;
 *   the executable's folder (a binary built in the source tree);
 *   PREFIX/share/krona-studio for an executable in PREFIX/bin (make install);
 *   the current directory.
 * model_find_data: the first that has rel into out, 0; -1 when none has it. */
int model_find_data(const char *rel, char *out, size_t outlen);
/* Those folders as a list for a message: "$KRONA_HOME (not set), /opt/x/bin, ..." */
void model_data_where(char *out, size_t n);
/* A file a preset or the command line names: path itself when it exists;
 * else, for a relative path, the same path among the shipped files (the
 * shipped presets name the demo images as models/demo/...). out gets the
 * path to use (path itself when nothing has it): 0, or -1 when not found. */
int model_find_input(const char *path, char *out, size_t outlen);

Model *model_open(const char *spec, Backend *be, char *err, size_t errlen);
/* The UNet architecture spec names, without loading weights: a built-in, a
 * folder, a config.json or a single-file checkpoint (its header only). */
int model_unet_config(const char *spec, UNetConfig *cfg, char *err, size_t errlen);
/* The text encoder configs a model spec has, without weights (as
 * model_unet_config): tiny's "tiny-text"; sd15's and an SD 1.x single file's
 * CLIP ViT-L; sdxl's and an SDXL single file's ViT-L and bigG; a folder's
 * text_encoder/config.json and text_encoder_2/config.json. Their count (1 or
 * 2), 0 when the spec has none (a UNet config.json alone, a folder without
 * text_encoder/config.json) with why in err, or -1 with one line (an unreadable
 * config, an unknown model). */
int model_text_configs(const char *spec, TextConfig tc[2], char *err, size_t errlen);
/* The same with CLIP's vocabulary given (a folder with merges.txt or
 * bpe_simple_vocab_16e6.txt.gz; NULL: found as tok_find_clip says). */
Model *model_open_with(const char *spec, const char *tokenizer, Backend *be, char *err, size_t errlen);
void model_free(Model *m);

/* unet_attach_adapters, and the names their files use: diffusers module paths
 * (SD 1.x, tiny) or, for SDXL, the original LDM paths kohya uses (docs/adapter-format.md). */
int model_attach_adapters(Model *m, const AdapterSpec *spec, uint64_t seed, char *err, size_t errlen);
/* Adapters on the text encoder(s)' attention projections (te_attach_adapters),
 * exported as kohya's lora_te_<HF path> (SD 1.x, tiny) or lora_te1_ / lora_te2_
 * (SDXL's two encoders). kind NONE detaches. */
int model_attach_text_adapters(Model *m, const AdapterSpec *spec, uint64_t seed, char *err,
                               size_t errlen);
/* The attached, non-empty text adapter sets (at most 2) into out; their count. */
int model_text_adapter_sets(Model *m, AdapterSet **out);
/* on = 1: forward passes (the UNet's, the text encoders') leave every attached
 * adapter out, giving the base model's output without touching a factor;
 * on = 0 puts them back. */
void model_bypass_adapters(Model *m, int on);
/* The UNet's adapters and any text encoder adapters in one file, tensors as
 * dtype (ST_F32, ST_F16, ST_BF16: adapter_sets_save). */
int model_save_adapter(Model *m, const char *path, const char *metadata_json_extra, int dtype,
                       char *err, size_t errlen);
/* Free the text encoders' weights once every prompt is encoded (training
 * without text adapters encodes its prompts once); model_encode_prompt then
 * fails saying so. */
void model_release_text_encoders(Model *m);
/* kohya's ss_base_model_version for the model's adapters: "sd_v1", "sdxl_base_v1-0", ... */
const char *model_base_version(const Model *m);

/* Attach and load the adapters of a file written by `train` (a run's adapter,
 * training/run_dir.h); text encoder keys attach and load text encoder adapters
 * (without them, any attached ones are detached). */
int model_load_adapter(Model *m, const char *path, char *err, size_t errlen);

/* Encode one prompt to its conditioning record cond[cond_floats] (device).
 * SD 1.5 / tiny: the last hidden state. SDXL: both encoders' penultimate
 * states concatenated to ctx_dim, then the bigG pooled output and the time ids
 * (model_time_ids of a px x px image trained whole); the empty prompt is all
 * zeros, as diffusers' SDXL pipelines do (force_zeros_for_empty_prompt).
 * Errors (too long, invalid UTF-8) name the prompt. */
int model_encode_prompt(Model *m, const char *prompt, int px, float *cond, char *err, size_t errlen);

/* SDXL's six time ids, in diffusers' order: the original image's size
 * (height, width), the crop's top-left (top, left) in the image scaled for
 * the crop, and the size trained at (height, width). */
typedef struct TimeIds { float v[6]; } TimeIds;
TimeIds model_time_ids(int orig_w, int orig_h, int crop_left, int crop_top, int w, int h);
/* Replace the time ids of n records cond[n, cond_floats] (device) with ids[n]
 * (host). Models without time ids: nothing to do. */
void model_set_time_ids(Model *m, float *cond, int n, const TimeIds *ids);
/* The time ids of record cond (device) into *ids; 0, or -1 for a model without. */
int model_get_time_ids(Model *m, const float *cond, TimeIds *ids);

/* Training inputs from images: pix_host[N, image_channels, h, w] in [-1, 1]
 * -> in_host[N, channels, h/pixel_scale, w/pixel_scale]: the pixels
 * themselves, or the VAE's latent mean x scaling_factor. */
int model_encode_images(Model *m, const float *pix_host, int N, int w, int h, float *in_host,
                        char *err, size_t errlen);

/* The pixel multiple every image side must be for the UNet (its
 * downsampling times the VAE's): a training or sample size. */
int model_cell(const Model *m);
/* The same read from a model's configs, without weights: a built-in name,
 * a diffusers folder or a single-file checkpoint. 0, or -1 with err. */
int model_cell_of(const char *spec, int *cell, char *err, size_t errlen);

/* The VAE's tiling from "auto" | "on" | "off" (vae_set_tiling, default tile
 * size); a pixel-space model has no VAE and accepts any of the three. 0, or -1
 * with one line naming the value and the choices. */
int model_set_vae_tiling(Model *m, const char *mode, char *err, size_t errlen);

/* unet_forward on N conditioning records cond[N, cond_floats] (device). */
int model_unet_forward(Model *m, const float *x, const float *t, const float *cond, float *out,
                       int N, int H, int W, int for_backward);

/* Generate N images of size px (pixels) for conditioning records
 * ctx_cond[N, cond_floats] (device) with classifier-free guidance against
 * ctx_uncond[N, cond_floats]; latent models decode through the VAE.
 * out_host[N,image_channels,px,px] in [-1,1]. Deterministic in seed. cancel (may be NULL)
 * is polled between sampler steps. The UNet pass, the same ops every sampler
 * step, is recorded and replayed where the backend can (m->gen_*). */
int model_generate(Model *m, const float *ctx_cond, const float *ctx_uncond, int N, int px,
                   const SamplerOpts *o, uint64_t seed, const atomic_int *cancel,
                   float *out_host, char *err, size_t errlen);
/* How the last model_generate ran its UNet passes on a backend that records:
 * "UNet replayed in 19 of 20 sampler steps", or "UNet op by op: <why>". 0 and
 * nothing in line on a backend that does not record (the CPU) or when there is
 * nothing to say. */
int model_generate_news(const Model *m, char *line, size_t len);

#endif

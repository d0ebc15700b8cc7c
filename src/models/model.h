/* model.h — everything a text-to-image model needs, opened by one name:
 * the UNet, its text encoder + tokenizer, and the noise schedule.
 *   "tiny"            the built-in pixel-space model (models/tiny/ weights;
 *                     random init when the weights are absent — said in `note`)
 *   DIR               a diffusers folder: unet/, text_encoder/, tokenizer/
 * Latent models (SD 1.5 / SDXL) additionally need the VAE (vae.c, next step). */
#ifndef KRONA_MODEL_H
#define KRONA_MODEL_H

#include <stdatomic.h>

#include "core/backend.h"
#include "models/diffusion.h"
#include "models/text_encoder.h"
#include "models/tokenizer.h"
#include "models/unet.h"

typedef struct Model {
    char spec[512];
    Backend *be;
    UNetConfig ucfg;
    UNet *unet;
    TextEncoder *te;
    Tokenizer *tok;
    int context_len;   /* tokens per prompt, BOS..EOS..pad */
    int ctx_dim;       /* text hidden size = cross_attention_dim */
    Schedule sched;
    int channels;      /* UNet input channels (3: pixels) */
    int latent;        /* 1 when images go through a VAE */
    int pixel_scale;   /* image pixels per UNet cell (1 pixel space, 8 latent) */
    int pretrained;    /* weights came from files */
    char note[256];    /* where the weights came from */
} Model;

/* Locate a file shipped with krona-studio (models/, presets/): tries
 * $KRONA_HOME, the current directory, the executable's folder and the
 * install prefix. Writes the found path to out; 0 found, -1 not. */
int model_find_data(const char *rel, char *out, size_t outlen);

Model *model_open(const char *spec, Backend *be, char *err, size_t errlen);
void model_free(Model *m);

/* Attach and load the adapters of a file written by `train` (a run's adapter, training/run_dir.h). */
int model_load_adapter(Model *m, const char *path, char *err, size_t errlen);

/* Encode one prompt to a context [context_len, ctx_dim] on the device. Errors
 * (too long, invalid UTF-8) name the prompt. */
int model_encode_prompt(Model *m, const char *prompt, float *ctx, char *err, size_t errlen);

/* Generate N images of size px (pixels) for prompt contexts ctx_cond[N,L,D]
 * (device) with classifier-free guidance against ctx_uncond[N,L,D].
 * out_host[N,C,px,px] in [-1,1]. Deterministic in seed. cancel (may be NULL)
 * is polled between sampler steps. */
int model_generate(Model *m, const float *ctx_cond, const float *ctx_uncond, int N, int px,
                   const SamplerOpts *o, uint64_t seed, const atomic_int *cancel,
                   float *out_host, char *err, size_t errlen);

#endif

/* checkpoint.h — a single-file Stable Diffusion checkpoint (the original LDM
 * layout, as A1111 and ComfyUI users keep them): what it is from its header
 * alone (checkpoint_inspect: kind, parts and their sizes, the UNet architecture
 * of its kind; the tensors stay mapped, untouched, so `info` on a 7 GB SDXL file
 * is instant), and each part's weights through the name tables of convert.h
 * (the UNet's is convert_load_unet). */
#ifndef KRONA_CHECKPOINT_H
#define KRONA_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "models/convert.h"
#include "models/text_encoder.h"
#include "models/unet.h"
#include "models/vae.h"

typedef struct CheckpointInfo {
    ModelKind kind;
    char desc[512];          /* convert_detect's line: parts found, tensors, dtypes */
    UNetConfig unet;         /* the built-in architecture of its kind (sd15, sdxl) */
    int64_t params[4];       /* parameters per ConvertPart (UNet, VAE, text, text 2) */
    int64_t other;           /* elements that are no weight of the model (EMA, buffers) */
    int64_t arch_unet_params;/* what `unet` has: a file whose UNet differs is not that architecture */
} CheckpointInfo;

/* Is path a single-file checkpoint (a regular file named *.safetensors)? */
int checkpoint_is_file(const char *path);
/* 0, or -1 with one line naming the file and what was found (an SD 2.x,
 * inpainting, SD3 or Flux file, a diffusers UNet alone, an adapter, ...). */
int checkpoint_inspect(const char *path, CheckpointInfo *ci, char *err, size_t errlen);

/* Each part's weights from an open single file of kind (SD15 or SDXL) through
 * the part's name table (convert.h): every parameter must be there with its
 * shape, or -1 with one line naming both names. F32/F16/BF16. */
int checkpoint_load_text(TextEncoder *te, const SafeTensors *st, ModelKind kind, ConvertPart part,
                         char *err, size_t errlen);
int checkpoint_load_vae(VAE *v, const SafeTensors *st, ModelKind kind, char *err, size_t errlen);

#endif

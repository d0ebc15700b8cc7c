/* checkpoint.h — a single-file Stable Diffusion checkpoint (the original LDM
 * layout, as A1111 and ComfyUI users keep them) seen from its header alone:
 * what kind it is, its parts and their sizes, the UNet architecture of its
 * kind. Nothing is read but the safetensors header (the tensors stay mapped,
 * untouched), so `info` on a 7 GB SDXL file is instant. */
#ifndef KRONA_CHECKPOINT_H
#define KRONA_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "models/convert.h"
#include "models/unet.h"

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

#endif

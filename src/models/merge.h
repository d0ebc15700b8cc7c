/* merge.h — a merged full checkpoint: a single-file SD checkpoint (LDM layout)
 * with an adapter folded into its UNet linears, W' = W + S * dW, for tools that
 * want a plain model. Only what is needed is read: the adapter file and, through
 * the UNet's name table (convert.h), the linear weights it touches; every other
 * tensor is copied byte for byte from the mapping (or converted when another
 * dtype is asked). The output is streamed (header, then each tensor) to a temp
 * name and renamed; it has the input's keys, order, shapes and metadata plus
 * {"merged_adapter": name, "merged_scale": S}. The config and table are passed
 * explicitly so small test configs share the code with SD 1.5 / SDXL. */
#ifndef KRONA_MERGE_H
#define KRONA_MERGE_H

#include <stddef.h>
#include <stdint.h>

#include "models/adapter.h"
#include "models/convert.h"
#include "models/unet.h"

/* Attach to `set` (on be, normally the CPU backend) one adapter per linear of
 * ucfg that the file's spec selects, and load the file's factors into them.
 * unet_map: the UNet's name table; ldm_names: 1 when the file names modules by
 * their LDM paths (SDXL, kohya's convention), 0 for diffusers paths (SD 1.x).
 * -1 with one line when the factors do not divide a layer, a key names no
 * module of this model, or the file cannot be read. Free with adapter_set_free. */
int merge_load_adapters(const UNetConfig *ucfg, const ConvertMap *unet_map, int ldm_names,
                        const char *path, Backend *be, AdapterSet *set, char *err, size_t errlen);

typedef struct MergeOpts {
    float scale;              /* S: W + S * dW (1 = the adapter as trained) */
    int dtype;                /* -1: every tensor keeps its dtype; ST_F16 / ST_BF16 / ST_F32:
                                 float tensors (F16, BF16, F32) are written in it */
    const char *adapter_name; /* the "merged_adapter" metadata value */
    int force;                /* overwrite out_path if it exists */
} MergeOpts;

typedef struct MergeStats {
    int tensors;              /* written */
    int merged;               /* of them, W + S dW */
    int64_t bytes;            /* output file size */
} MergeStats;

/* Write out_path: in_path with set's dW merged into the UNet linears that
 * unet_map names (the LDM key of "<module>.weight"), computed in f32 and
 * rounded to the output dtype of that tensor. 0, or -1 with one line (input
 * unreadable, a touched tensor missing or of another shape, output exists,
 * cannot write / out of disk: no file is left at out_path then). */
int checkpoint_merge(const char *in_path, const ConvertMap *unet_map, const AdapterSet *set,
                     const MergeOpts *o, const char *out_path, MergeStats *stats, char *err,
                     size_t errlen);

#endif

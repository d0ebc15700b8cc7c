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

/* Attach to `set` (emptied first; on be, normally the CPU backend) one adapter
 * per linear of ucfg that spec selects, factors not loaded. -1 with one line
 * naming path (the adapter file) when the factors do not divide a layer. */
int merge_unet_adapters(const UNetConfig *ucfg, const AdapterSpec *spec, const char *path, Backend *be,
                        AdapterSet *set, char *err, size_t errlen);
/* Name set's modules by their LDM paths in its keys (kohya's SDXL names). */
void merge_unet_ldm_names(AdapterSet *set, const ConvertMap *unet_map);

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
    int64_t bytes;            /* output file size (a folder: of the weight files rewritten) */
    int files_merged;         /* a folder: weight files rewritten */
    int files_copied;         /* a folder: files copied unchanged */
} MergeStats;

#define MERGE_KEY_MAX (CONVERT_NAME_MAX + 16)

/* One .safetensors file rewritten to out_path (fs_atomic: temp + rename): the
 * tensors keys[0..n-1] become W + S * dW of ads[j] (computed in f32 on be,
 * rounded to the tensor's output dtype); every other tensor is copied byte for
 * byte (or converted when o->dtype asks); keys, order, shapes and metadata are
 * the input's, plus {"merged_adapter", "merged_scale"}. Every key must be in
 * the file, a float d_out x d_in weight (trailing 1s allowed). o->force is not
 * looked at. 0, or -1 with one line. */
int merge_safetensors(const char *in_path, const Adapter *const *ads, const char (*keys)[MERGE_KEY_MAX],
                      int n, const MergeOpts *o, Backend *be, const char *out_path, MergeStats *stats,
                      char *err, size_t errlen);

/* Write out_path: in_path with set's dW merged into the UNet linears that
 * unet_map names (the LDM key of "<module>.weight"), computed in f32 and
 * rounded to the output dtype of that tensor. 0, or -1 with one line (input
 * unreadable, a touched tensor missing or of another shape, output exists,
 * cannot write / out of disk: no file is left at out_path then). */
int checkpoint_merge(const char *in_path, const ConvertMap *unet_map, const AdapterSet *set,
                     const MergeOpts *o, const char *out_path, MergeStats *stats, char *err,
                     size_t errlen);

/* A diffusers folder with the adapter file folded in, written as a diffusers
 * folder out_dir: every file of in_dir is copied unchanged (symlinks followed)
 * except the .safetensors weights of the parts the adapter touches (unet/;
 * text_encoder/ and, SDXL, text_encoder_2/ when it has lora_te_ / lora_te1_ /
 * lora_te2_ keys), which merge_safetensors rewrites: W + S * dW on the touched
 * tensors, same keys and dtypes (o->dtype must be -1). Every .safetensors weight
 * set of a touched part is merged: the file itself, a variant such as
 * diffusion_pytorch_model.fp16.safetensors, or the shards a
 * *.safetensors.index.json lists (each tensor in the shard the index names).
 * UNet keys are diffusers paths, or LDM paths for SDXL (two text encoders), as
 * the adapter files name them. Refused in one line: .bin / .ckpt / .pt / .pth /
 * .msgpack / .h5 weights in a touched part (they would keep the unmerged
 * values), a tensor missing or of another shape, an adapter for another model,
 * out_dir inside in_dir or the other way round, an existing out_dir unless
 * o->force. Written into a temporary folder beside out_dir, renamed to out_dir
 * at the end (an existing one replaced only then); nothing is left on failure.
 * be: where dW is computed (the CPU backend). 0; -1 with one line for bad input
 * (found before anything is written); -2 when writing failed. */
int diffusers_merge(const char *in_dir, const char *adapter_path, Backend *be, const MergeOpts *o,
                    const char *out_dir, MergeStats *stats, char *err, size_t errlen);

#endif

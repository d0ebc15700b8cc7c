/* convert.h — original ("LDM", single-file) Stable Diffusion checkpoints and
 * diffusers names: what a .safetensors file is (convert_detect), and for each
 * part (UNet, VAE, text encoders) which tensor of the single file holds a
 * diffusers parameter, and how it must be reshaped.
 *
 * One name table per part serves both directions: loading a single file by
 * diffusers names (convert_to_ldm) and naming things the LDM way, e.g. when an
 * adapter is exported for LDM-named tools (convert_from_ldm, the module forms).
 * The table is built from the part's shape (a UNetConfig, the VAE's levels,
 * the text encoder's layers), so SD 1.5, SDXL base and small test configs share
 * one code path. Names on the LDM side are full file keys
 * ("model.diffusion_model.input_blocks.1.0.in_layers.0.weight"); on the
 * diffusers side they are the component's own names, as diffusers' unet/,
 * vae/, text_encoder/, text_encoder_2/ files spell them. */
#ifndef KRONA_CONVERT_H
#define KRONA_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "formats/safetensors.h"
#include "models/unet.h"

#define CONVERT_NAME_MAX 160

/* What a checkpoint file is. Only SD15 and SDXL are loadable; the others are
 * recognised so that the refusal can say what was found. */
typedef enum {
    MODEL_KIND_UNKNOWN = 0,
    MODEL_KIND_SD15,           /* SD 1.x single file: UNet (context 768), VAE, CLIP ViT-L */
    MODEL_KIND_SDXL,           /* SDXL base single file: + OpenCLIP bigG, label_emb, context 2048 */
    MODEL_KIND_SD2,            /* SD 2.x: OpenCLIP ViT-H, context 1024 (768 models are v-prediction) */
    MODEL_KIND_INPAINT,        /* a UNet whose conv_in does not take 4 latent channels */
    MODEL_KIND_SDXL_REFINER,   /* bigG alone as embedders.0, context 1280 */
    MODEL_KIND_SD3,            /* MMDiT: joint_blocks */
    MODEL_KIND_FLUX,           /* double_blocks / single_blocks */
    MODEL_KIND_DIFFUSERS_UNET, /* a diffusers unet/diffusion_pytorch_model file on its own */
    MODEL_KIND_ADAPTER,        /* LoRA / LoKr / LyCORIS weights, not a base model */
} ModelKind;

const char *convert_kind_name(ModelKind k);   /* "SD 1.5", "SDXL base", ... */

/* The parts of a pipeline, named after diffusers' folders: CONVERT_TEXT is
 * text_encoder (CLIP ViT-L in SD 1.5 and SDXL), CONVERT_TEXT_2 is SDXL's
 * text_encoder_2 (OpenCLIP ViT-bigG, stored in OpenCLIP's own layout). */
typedef enum { CONVERT_UNET, CONVERT_VAE, CONVERT_TEXT, CONVERT_TEXT_2 } ConvertPart;

/* How the LDM tensor becomes the diffusers one. */
typedef enum {
    CONVERT_AS_IS = 0,          /* same shape, same data */
    CONVERT_CONV_TO_LINEAR,     /* LDM VAE attention stores linears as 1x1 convs [C,C,1,1]:
                                   drop the trailing 1x1 (same data); a file that already
                                   stores [C,C] is taken as it is */
    CONVERT_QKV_PART,           /* OpenCLIP fuses q,k,v into in_proj [3C,...]: the diffusers
                                   tensor is third `part` (0 q, 1 k, 2 v) along dim 0 */
    CONVERT_TRANSPOSE,          /* OpenCLIP's text_projection is [in,out] (x @ P);
                                   HF's text_projection.weight is [out,in] */
} ConvertTransform;

typedef struct ConvertName {
    char ldm[CONVERT_NAME_MAX];        /* full key in the single file */
    char diffusers[CONVERT_NAME_MAX];  /* name within the diffusers component */
    ConvertTransform transform;
    int part;                          /* CONVERT_QKV_PART: 0 q, 1 k, 2 v */
} ConvertName;

/* What the table of a part depends on. */
typedef struct ConvertShape {
    const UNetConfig *unet;    /* CONVERT_UNET */
    int vae_levels;            /* CONVERT_VAE: len(block_out_channels), 4 in SD */
    int vae_layers_per_block;  /* CONVERT_VAE: layers_per_block, 2 in SD */
    int text_layers;           /* CONVERT_TEXT_2: num_hidden_layers, 32 for bigG */
} ConvertShape;

typedef struct ConvertMap ConvertMap;

/* The key prefix of a part in a SD15 / SDXL single file ("first_stage_model."),
 * or NULL when the kind has no such part. */
const char *convert_part_prefix(ModelKind kind, ConvertPart part);

/* The table of one part of a SD15 or SDXL single file. NULL with a one-line
 * err for another kind, a part the kind lacks (SD 1.5 has no text_encoder_2)
 * or a shape the part cannot have. */
ConvertMap *convert_map_create(ModelKind kind, ConvertPart part, const ConvertShape *shape,
                               char *err, size_t errlen);
void convert_map_free(ConvertMap *m);
/* The part's key prefix in the single file, e.g. "model.diffusion_model.". */
const char *convert_map_ldm_prefix(const ConvertMap *m);
int convert_map_size(const ConvertMap *m);   /* table entries (for tests and info) */

/* diffusers tensor name -> the LDM tensor that holds it and the transform.
 * 0, or -1 when the name has no place in the table. */
int convert_to_ldm(const ConvertMap *m, const char *diffusers_name, ConvertName *out);
/* LDM key -> the diffusers tensors it holds: returns 1, or 3 for a fused qkv
 * (out[0..2] are q, k, v), 0 when the key is not in the table. */
int convert_from_ldm(const ConvertMap *m, const char *ldm_name, ConvertName out[3]);
/* The same for module paths (no .weight/.bias), e.g. for adapter export:
 *   "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
 *   <-> "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q".
 * A fused OpenCLIP projection maps to "...attn.in_proj" with transform
 * CONVERT_QKV_PART and its part. */
int convert_module_to_ldm(const ConvertMap *m, const char *diffusers_module, ConvertName *out);
int convert_module_from_ldm(const ConvertMap *m, const char *ldm_module, ConvertName out[3]);
/* kohya's SDXL adapter names: a module's LDM path without the map's prefix
 * ("input_blocks.4.1.transformer_blocks.0.attn1.to_q"). An AdapterNameMap
 * (models/adapter.h) with the UNet's ConvertMap as map; -1 with one line when
 * the module has no LDM name. */
int convert_adapter_name(void *map, const char *diffusers_module, char *out, size_t outlen, char *err,
                         size_t errlen);

/* A key of a single file that holds no weight of the model (noise schedule
 * buffers, EMA copies, CLIP's position_ids and logit_scale): why, or NULL. */
const char *convert_ldm_ignored(const char *ldm_name);

/* Shape of the diffusers tensor that c makes from the LDM tensor t. 0, or -1
 * when t cannot take the transform (rows not divisible by 3, not 2-D, ...). */
int convert_shape(const ConvertName *c, const StTensor *t, int *ndim, int64_t shape[ST_MAX_DIMS]);
/* Its values as float (any float dtype of t), diffusers layout: 0, or
 * st_read_f32's ST_READ_DTYPE (also for a shape the transform cannot take) /
 * ST_READ_NONFINITE, or -3 when out of memory. */
int convert_read_f32(const ConvertName *c, const StTensor *t, float *dst);
/* Diffusers parameter `name` from a single file: find its LDM tensor, check
 * that after the transform it has exactly the shape [shape[0..ndim-1]], read it
 * into dst. 0, or -1 with a one-line err naming both names. */
int convert_read(const ConvertMap *m, const SafeTensors *st, const char *name, int ndim,
                 const int64_t *shape, float *dst, char *err, size_t errlen);
/* Every parameter of u from a single file through the UNet table of its config. */
int convert_load_unet(UNet *u, const SafeTensors *st, char *err, size_t errlen);

/* ---- what a file is ---- */
typedef struct ConvertDtypes { int f32, f16, bf16, other; } ConvertDtypes;
void convert_dtypes(const SafeTensors *st, ConvertDtypes *d);

/* Decide from keys and shapes (never the file name) what st holds. Always sets
 * *kind and a one-line desc for `info` ("SD 1.5 single file: UNet (context 768,
 * 4 input channels), VAE, CLIP ViT-L; 1131 tensors: 1131 F16"). Returns 0 for a
 * loadable kind (SD15, SDXL), else -1 with a one-line err naming what was found
 * and why it is refused. */
int convert_detect(const SafeTensors *st, ModelKind *kind, char *desc, size_t desclen,
                   char *err, size_t errlen);

#endif

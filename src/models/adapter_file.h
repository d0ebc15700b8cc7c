/* adapter_file.h — adapter files beyond adapter_set_save / adapter_set_load
 * (adapter.h): what a file needs attached before it loads, the key stem of a
 * module, and LyCORIS's rule for the factor shapes it rebuilds. The format, and
 * what A1111, ComfyUI, stable-diffusion.cpp and LyCORIS do with each key, is
 * docs/adapter-format.md. */
#ifndef KRONA_ADAPTER_FILE_H
#define KRONA_ADAPTER_FILE_H

#include <stddef.h>
#include "models/adapter.h"

/* metadata "krona_format" of the files this build writes */
#define ADAPTER_FILE_FORMAT 2

typedef struct AdapterFileInfo {
    AdapterSpec spec; /* what to attach: kind, a1 x a2 or rank, modules */
    int format;       /* 2: written by this build; 1: an older krona-studio file
                         ("lycoris_" keys, lokr_w2 = B, the scale in alpha);
                         0: another tool's (a LyCORIS LoKr or kohya LoRA file) */
    int n_modules;    /* UNet modules with factors in the file */
    int n_te_modules; /* text encoder modules (lora_te_, lora_te1_, lora_te2_ keys) */
    int te_prefixes;  /* which of those: 1 lora_te_, 2 lora_te1_, 4 lora_te2_ */
} AdapterFileInfo;

/* The spec a file needs attached, without loading it: our metadata, or for
 * another tool's file the factor shapes and module names of its keys (A from
 * the first lokr_w1 / lokr_w1_a x lokr_w1_b, the LoRA rank from lora_down).
 * -1 with a one-line err naming the key krona-studio cannot represent (text
 * encoder layers other than the attention projections, UNet layers other than
 * attention / feed-forward, LoHa, DoRA, Tucker, both LoKr and LoRA keys) and
 * what to do instead. */
int adapter_file_probe(const char *path, AdapterFileInfo *info, char *err, size_t errlen);

/* kohya's key prefix of text encoder i of a model with n_encoders: "lora_te_"
 * for one (SD 1.x, tiny), "lora_te1_" / "lora_te2_" for SDXL's two; and the
 * AdapterFileInfo.te_prefixes bit of that prefix. */
const char *adapter_te_prefix(int n_encoders, int i);
int adapter_te_prefix_bit(int n_encoders, int i);
/* Whether a file's text encoder keys (info->te_prefixes) suit a model with
 * n_encoders text encoders: 0, or -1 with one line (lora_te_ keys on SDXL,
 * lora_te1_/lora_te2_ on a one-encoder model, any on a model without one). */
int adapter_file_check_te(const AdapterFileInfo *info, int n_encoders, const char *path, char *err,
                          size_t errlen);

/* set->key_prefix (default "lora_unet_") + the module's export path (set->name_map, else Adapter.name)
 * with '.' -> '_': what every tensor key of that module starts with. */
int adapter_key_stem(const AdapterSet *set, const Adapter *a, char *out, size_t outlen,
                     char *err, size_t errlen);

/* LyCORIS's factorization(dimension, factor) (lycoris/functional/general.py):
 * dim = m * n with m <= n; m = factor when factor > 0 divides dim, else the
 * divisor its search ends on. */
void adapter_lycoris_factorization(int dim, int factor, int *m, int *n);
/* The lokr_w1 shape LyCORIS's loader (make_module_from_state_dict,
 * lycoris/modules/lokr.py) builds when it rebuilds a linear from full factors
 * w1 [a1, a2] and w2 [b1, b2]: it picks one factor for both dimensions and
 * re-factorises d_out = a1*b1 and d_in = a2*b2 with it. 1 if that gives back
 * [a1, a2] (the file loads there), 0 if not (copying the tensors in fails).
 * w1_rows / w1_cols (may be NULL) get the shape it builds. */
int adapter_lycoris_loads(int a1, int a2, int b1, int b2, int *w1_rows, int *w1_cols);
/* How many KronA layers of set LyCORIS's own loader would rebuild with other
 * shapes (0 for LoRA); first (may be NULL) gets the first as
 * "<layer> (d_out x d_in): A a1 x a2, LyCORIS builds r x c". */
int adapter_set_lycoris_misfits(const AdapterSet *set, char *first, size_t firstlen);

#endif

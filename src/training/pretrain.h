/* pretrain.h — trains the built-in tiny text-to-image model from scratch: the
 * whole tiny UNet and its tiny text encoder jointly, on a captioned image set
 * (data/emoji32.bin, see tools/build-emoji-dataset.sh).
 *
 * Noise-prediction loss (epsilon or v) at uniform timesteps of a linear
 * (DDPM, the default: pixel space needs it) or scaled-linear (SD) schedule; AdamW (torch semantics)
 * with linear warm-up and cosine decay; gradient clipping by global norm;
 * caption dropout (empty prompt) so classifier-free guidance works; random
 * horizontal flips; optional EMA of the weights. Everything random comes from
 * one host RNG whose state is checkpointed, so a resumed run is bit-identical
 * to an uninterrupted one on the same backend and thread count.
 *
 * Files in the output folder (each written atomically):
 *   unet.safetensors, text_encoder.safetensors   the weights model.c's "tiny" loads
 *                                                (the EMA weights when EMA is on)
 *   scheduler_config.json                        the schedule + prediction (diffusers keys)
 *   checkpoint.safetensors                       weights, AdamW moments, EMA, step, RNG
 *   pretrain_log.csv                             step, loss, lr, grad norm, speed
 *   samples/step_NNNNNN.png                      a grid, one tile per sample prompt */
#ifndef KRONA_PRETRAIN_H
#define KRONA_PRETRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "core/backend.h"

/* A captioned image set: n images of w x h x c uint8 (HWC, item after item). */
typedef struct PtDataset {
    int n, w, h, c;
    char **captions;    /* n pointers into caption storage */
    unsigned char *px;  /* n * h * w * c */
    uint64_t hash;      /* FNV-1a of captions and pixels: a checkpoint names its data */
    void *blob;         /* storage owned by pt_dataset_load (NULL for caller-built sets) */
} PtDataset;

/* Reads the KSDATA1 file format (data/README.md). Errors name the file and what
 * is wrong (not a dataset, truncated, sizes the tiny UNet cannot take). */
int pt_dataset_load(PtDataset *d, const char *path, char *err, size_t errlen);
/* FNV-1a over captions and pixels (pt_dataset_load sets it; call it for a
 * dataset built in memory). */
uint64_t pt_dataset_hash(const PtDataset *d);
void pt_dataset_free(PtDataset *d);

typedef struct PretrainOpts {
    const char *out_dir;
    int steps;             /* total optimiser steps of the run */
    int batch;
    float lr;              /* peak learning rate */
    float lr_min;          /* the cosine ends here (fraction of lr) */
    int warmup;            /* linear warm-up steps; < 0: min(500, steps / 10) */
    float weight_decay;
    float clip;            /* global gradient norm limit; <= 0: off */
    float cfg_drop;        /* probability of training on the empty prompt */
    int flip;              /* random horizontal flips */
    float ema;             /* EMA decay (e.g. 0.999); 0: off */
    uint64_t seed;
    int schedule;          /* BetaSchedule: BETAS_LINEAR (DDPM 1e-4..0.02) or BETAS_SCALED_LINEAR (SD) */
    int prediction;        /* Prediction: PRED_V or PRED_EPSILON */
    int resume;            /* continue from out_dir/checkpoint.safetensors */
    const char *init_from; /* start from DIR/unet.safetensors + text_encoder.safetensors
                              (fresh optimiser) instead of random weights; NULL: random */
    int checkpoint_every;  /* steps; also rewrites the weights; <= 0: only at the end */
    int stop_after;        /* stop (with a checkpoint) once this step is reached; 0: off */
    double time_limit_s;   /* stop cleanly before this much wall time; <= 0: none */
    int print_every;
    int sample_every;      /* <= 0: no sample grids */
    int sample_steps;      /* DDIM steps for the grids */
    float sample_guidance;
    const char *const *sample_prompts;
    int n_sample_prompts;
} PretrainOpts;

/* The defaults above, for the tiny model on 2 CPU cores. */
void pretrain_default_opts(PretrainOpts *o);

typedef struct PretrainProgress {
    int step, total;
    float loss, loss_avg;  /* this step, and the mean since the last report */
    float lr, grad_norm;
    double samples_per_s, elapsed_s, eta_s;
} PretrainProgress;

typedef struct PretrainCallbacks {
    void *user;
    void (*progress)(void *user, const PretrainProgress *p);  /* every print_every steps */
    void (*log)(void *user, const char *line);               /* checkpoints, samples, notes */
} PretrainCallbacks;

/* Runs until o->steps (0), until stop_after or the time limit with a checkpoint
 * written (1), or fails (-1, reason in err: bad options or data, a checkpoint
 * that does not match, a NaN loss, out of memory). cb may be NULL. */
int pretrain_run(const PtDataset *d, const PretrainOpts *o, Backend *be,
                 const PretrainCallbacks *cb, char *err, size_t errlen);

#endif

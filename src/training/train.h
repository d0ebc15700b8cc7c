/* train.h — the personalisation loop: few-shot data, noise-prediction loss,
 * AdamW on adapter parameters only, checkpoint/exact resume, periodic samples.
 * Runs synchronously (trainer_run) or in its own pthread (trainer_start) that
 * another thread can pause, resume and cancel. Progress goes out through a
 * callback called on the training thread: copy what you need and return fast. */
#ifndef KRONA_TRAIN_H
#define KRONA_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "formats/image.h"
#include "models/model.h"
#include "formats/preset.h"

typedef enum { TRAIN_IDLE, TRAIN_RUNNING, TRAIN_PAUSED, TRAIN_SAMPLING, TRAIN_DONE,
               TRAIN_CANCELLED, TRAIN_FAILED } TrainState;

typedef struct TrainProgress {
    TrainState state;
    int step, total;        /* optimiser steps done / planned */
    float loss;             /* this step's loss */
    float loss_ema;         /* smoothed (EMA 0.9) */
    float lr;
    double it_per_s, eta_s; /* training steps alone: sampling and pauses left out */
    double elapsed_s;       /* since the start, pauses left out */
    size_t peak_bytes;      /* backend peak allocation */
    int64_t trainable, base;
    float eval_loss_start, eval_loss;   /* fixed (noise, t) evaluation set */
} TrainProgress;

/* What one forward/backward pass trains on (TrainCallbacks.batch). */
typedef struct TrainBatch {
    int step;               /* the optimiser step it belongs to (from 1) */
    int prior;              /* 1: class images (prior preservation), 0: the instance images */
    int n;                  /* images in it: the preset's batch */
    int w, h;               /* their size in pixels (one bucket per batch) */
    const int *image;       /* [n] which image: index into the preset's images, or the class images */
    const int *mirror;      /* [n] 1: mirrored */
    const TimeIds *time_ids;/* [n] SDXL: the time ids the UNet is given, read back from its
                               input records; NULL for models without */
} TrainBatch;

typedef struct TrainCallbacks {
    void *user;
    void (*progress)(void *user, const TrainProgress *p);
    /* a sample grid (a tile per sample prompt) at step, the same noise each time;
     * step 0 is the base model's (training/run_dir.h), first in every new run */
    void (*sample)(void *user, int step, const Image *grid, const char *png_path);
    /* one-line messages (checkpoint written, warnings) */
    void (*log)(void *user, const char *line);
    /* every batch, before its forward pass (tests, diagnostics); may be NULL */
    void (*batch)(void *user, const TrainBatch *b);
} TrainCallbacks;

/* The adapter a preset asks for ([adapter] adapter, a1, a2, lora_rank, lora_alpha, modules). */
void train_adapter_spec(const Preset *p, AdapterSpec *spec);
/* gradient_checkpointing = auto|on|off: 1 when it should be on. auto turns it on
 * when the activations without it (act_bytes) would take more than 80% of the
 * memory the device has free (free_bytes; 0 = unknown: off). */
int train_pick_checkpointing(const char *mode, int64_t act_bytes, size_t free_bytes);

/* The training sizes a preset asks of a model whose sides must be multiples
 * of cell (model_cell): resolution a multiple of cell; with buckets, the
 * bucket step (train_bucket_step) a multiple of cell dividing resolution.
 * 0, or -1 with one line naming the key and a value that works. */
int train_check_sizes(const Preset *p, int cell, char *err, size_t errlen);
/* The bucket sides' multiple: bucket_step, or 0 -> cell. */
int train_bucket_step(const Preset *p, int cell);

/* Each of the preset's images that is not where it says (a relative path,
 * from the current directory) but is among the shipped files: its path there
 * (model_find_input). The shipped presets name the demo images as
 * models/demo/..., found so from an installed binary in any folder. An image
 * found nowhere stays as it is (loading it names it). */
void train_find_images(Preset *p);

typedef struct Trainer Trainer;

/* Opens the model, loads and checks the images, encodes the prompts, attaches
 * the adapters and creates the run folder. Every bad input is reported here,
 * before any training, in one line naming the file/field and the fix.
 * resume_dir: continue the run in that folder from its checkpoint (the preset
 * is read from it; p is ignored then, pass NULL). */
Trainer *trainer_create(const Preset *p, const char *resume_dir, Backend *be,
                        const TrainCallbacks *cb, char *err, size_t errlen);
void trainer_free(Trainer *t);

/* trainer_run frees the text encoders' weights once the prompts are encoded
 * (unless text adapters train): call this first to encode new prompts with
 * trainer_model afterwards. */
void trainer_keep_text_encoders(Trainer *t);
/* The dtype of the adapter file the run writes when it finishes ("f32", "f16",
 * "bf16"), over its preset's export_dtype; a resumed run too (the export does
 * not change training, and the run's preset.ini is left as it is). 0, or -1
 * with one line. */
int trainer_set_export_dtype(Trainer *t, const char *dtype, char *err, size_t errlen);
int trainer_run(Trainer *t);        /* synchronous: 0 done, 1 cancelled, -1 failed */
int trainer_start(Trainer *t);      /* the same on a new pthread */
int trainer_join(Trainer *t);       /* wait; returns trainer_run's value */
void trainer_pause(Trainer *t, int paused);
void trainer_cancel(Trainer *t);
/* Ask for samples at the next step boundary (the studio's "sample now"). */
void trainer_request_sample(Trainer *t);

const char *trainer_run_dir(const Trainer *t);
const char *trainer_error(const Trainer *t);
TrainProgress trainer_progress(Trainer *t);  /* thread-safe snapshot */
Model *trainer_model(Trainer *t);
/* Mean loss over the fixed evaluation set of (image, noise, timestep) triples. */
float trainer_eval_loss(Trainer *t); /* NaN when the UNet or the device failed */

#endif

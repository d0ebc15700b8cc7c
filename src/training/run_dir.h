/* run_dir.h — the run folder: where a training run lives, what is in it, and
 * reading a run back. The one place that knows its layout; train.c writes it,
 * the studio's Runs view, `score --run`, sweeps and `train --resume` read it
 * through these functions.
 *
 * <output_dir>/<run>/           one personalisation run. <run> is the preset's
 *                               run_name, or else <YYYYmmdd-HHMMSS>-krona<a1>x<a2>-lr<lr>-<N>it
 *                               (LoRA: <YYYYmmdd-HHMMSS>-lora<rank>-lr<lr>-<N>it),
 *                               with -2, -3, ... appended when that is taken
 *   preset.ini                  the preset the run trains with, written when it
 *                               starts; `train --resume` reads it back, and a
 *                               folder is a run folder when it holds one
 *   loss.csv                    "step,loss,lr" then one row per optimiser step
 *                               done (step from 1, %.7g); rewritten with every
 *                               checkpoint
 *   checkpoint.safetensors      everything an exact resume needs: adapter
 *                               factors, AdamW moments, RNG state, step, loss
 *                               history, the start's evaluation loss (written
 *                               every checkpoint_every steps and at the end)
 *   adapter.safetensors         the trained adapter (LyCORIS LoKr / kohya LoRA
 *                               keys), written when the run finishes
 *   samples/step_NNNNNN.png     a grid, one tile per sample prompt, at step N
 *                               (six digits, so names sort by step), each with
 *                               the same noise; step_000000.png is the base
 *                               model's (the adapters start at zero), written
 *                               first by every run with sample prompts (a
 *                               resumed run without one writes it then)
 *   class_images/class_NNN.png  prior preservation without a class_dir: the
 *                               class images the base model generated, reused
 *                               by a resumed run
 */
#ifndef KRONA_RUN_DIR_H
#define KRONA_RUN_DIR_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/preset.h"

typedef enum {
    RUN_PRESET,         /* preset.ini */
    RUN_LOSS,           /* loss.csv */
    RUN_CHECKPOINT,     /* checkpoint.safetensors */
    RUN_ADAPTER,        /* adapter.safetensors */
    RUN_SAMPLES,        /* samples (folder) */
    RUN_CLASS_IMAGES,   /* class_images (folder) */
    RUN_N_FILES
} RunFile;

/* The entry's name inside a run folder ("preset.ini", "samples", ...). */
const char *run_file_name(RunFile f);
/* dir/<entry> into out (truncated to n as snprintf does); returns out. */
char *run_path(const char *dir, RunFile f, char *out, size_t n);
/* dir/samples/step_NNNNNN.png: the sample grid at step. */
char *run_sample_path(const char *dir, int step, char *out, size_t n);
/* dir/class_images/class_NNN.png: generated class image i. */
char *run_class_image_path(const char *dir, int i, char *out, size_t n);

/* The folder a run of p goes in (see the layout above); an unnamed run gets
 * the first free one. */
void run_dir_choose(const Preset *p, char *out, size_t n);
/* run_dir_choose, then create it with samples/ and the preset copy. */
int run_dir_create(const Preset *p, char *out, size_t n, char *err, size_t errlen);
/* Does dir hold a run (a preset copy)? */
int run_dir_is_run(const char *dir);
/* Remove the temporary files (NAME.tmp.<pid>, fs_write_atomic's) that a killed
 * run left in the folder, samples/ and class_images/; those of a live process
 * stay. The number removed, or -1 with err. `train --resume` calls it. */
int run_dir_remove_stale_temps(const char *dir, char *err, size_t errlen);

/* The run's preset: defaults, then its preset copy. 0, or -1 with err. */
int run_preset_load(const char *dir, Preset *p, char *err, size_t errlen);
/* Rewrite loss.csv: steps rows of loss[i] and the lr[i] that step used. */
int run_loss_write(const char *dir, const float *loss, const float *lr, int steps, char *err,
                   size_t errlen);

/* What a run folder says about its run, read back. */
typedef struct RunSummary {
    Preset preset;          /* the preset copy, over the defaults */
    int preset_ok;          /* it loaded without error */
    int64_t trainable;      /* adapter parameters of its model and adapter (the
                               adapter census, text encoders' included when
                               text_encoder_adapters = 1); -1: they do not fit,
                               or the model is unknown */
    int steps;              /* rows of loss.csv: optimiser steps recorded */
    float *loss;            /* [steps] the loss of each step (malloc'ed, NULL if none) */
    char last_sample[PATH_MAX + 64]; /* the latest samples/step_N.png, "" if none */
    int last_step;          /* its N, -1 if none */
    char base_sample[PATH_MAX + 64]; /* samples/step_000000.png, the base model's; "" if none */
    double mtime;           /* the preset copy's modification time (the run's
                               start), 0 if unknown */
} RunSummary;

/* 0, or -1 when dir is not a run folder (nothing to free then). A missing or
 * malformed loss.csv or samples folder is an empty one. */
int run_summary_read(const char *dir, RunSummary *s);
void run_summary_free(RunSummary *s);

#endif

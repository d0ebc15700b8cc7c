/* score.h — measure a personalisation instead of eyeballing it (docs/metrics.md).
 * Samples of "<instance_prompt> on a <colour> background" for several palette
 * colours, with fixed seeds, scored by
 *   fidelity  (0..1): how close each sample's foreground is to the closest subject
 *                     image (colour histogram + coarse shape of the foreground mask);
 *   adherence (0..1): the fraction of samples whose background (median of the
 *                     border pixels) is nearest, in the palette, to the asked colour.
 * The image metrics are pure functions on 8-bit RGB images so tests can check
 * them on synthetic pictures; score_model / score_run_dir add the sampling. */
#ifndef KRONA_SCORE_H
#define KRONA_SCORE_H

#include <stddef.h>
#include <stdint.h>

#include "core/backend.h"
#include "models/diffusion.h"
#include "formats/image.h"
#include "models/model.h"
#include "formats/preset.h"

#define SCORE_SIZE 32          /* images are compared at SCORE_SIZE x SCORE_SIZE */
#define SCORE_FG_DIST 64       /* foreground: RGB distance from the background colour > this */
#define SCORE_HIST_LEVELS 4    /* colour histogram: levels per channel (4^3 = 64 bins) */
#define SCORE_SHAPE_GRID 8     /* shape: mask coverage on an 8 x 8 grid of cells */
#define SCORE_MAX_SUBJECTS 16

typedef struct ScoreColour { const char *name; unsigned char rgb[3]; } ScoreColour;

/* The palette: the first SCORE_N_ASKED colours can be asked for (the default
 * asks the first 6: red, green, blue, yellow, purple, orange); the rest
 * (white, gray, black) only catch backgrounds that are none of them. */
#define SCORE_N_PALETTE 12
#define SCORE_N_ASKED 9
extern const ScoreColour score_palette[SCORE_N_PALETTE];

typedef struct ScoreOpts {
    int n_colours;        /* the first n askable colours, 1..SCORE_N_ASKED (default 6) */
    int per_colour;       /* samples per colour, 1..8 (default 1) */
    uint64_t seed;        /* sample i uses noise from (seed, i): fixed across models */
    SamplerKind sampler;  /* default DDIM */
    int steps;            /* sampler steps (default 25) */
    float guidance;       /* CFG scale (default 5) */
    int size;             /* pixels; 0: the model's native size */
} ScoreOpts;

#define SCORE_MAX_SAMPLES (SCORE_N_ASKED * 8)
typedef struct ScoreResult {
    float fidelity;       /* mean over samples, 0..1 */
    float fidelity_se;    /* its standard error (sample sd / sqrt n); 0 when n < 2 */
    float adherence;      /* fraction of samples with the asked background, 0..1 */
    int n;                /* samples scored */
    float sample_fidelity[SCORE_MAX_SAMPLES];   /* per sample, in prompt order */
} ScoreResult;

void score_opts_default(ScoreOpts *o);
/* 0, or -1 with a one-line err naming the field. */
int score_opts_check(const ScoreOpts *o, char *err, size_t errlen);

/* Fidelity gain of r over base, sample by sample: both drew the same prompts
 * from the same noise, so the paired difference is far less noisy than two
 * separate means. gain = mean(r_i - base_i), se = sd(r_i - base_i) / sqrt(n).
 * -1, writing nothing, when the two did not score the same number (>= 2) of samples. */
int score_paired_gain(const ScoreResult *r, const ScoreResult *base, float *gain, float *se);

/* ---- image metrics (RGB, c = 3) ---- */
/* Per-channel median of the outer ring of pixels, max(1, side/16) wide. */
void score_border_median(const Image *im, unsigned char rgb[3]);
/* Index of the palette colour nearest (Euclidean RGB) to rgb. */
int score_nearest_colour(const unsigned char rgb[3]);
/* 1 when the image's background is nearest to palette colour `asked`. */
int score_adherent(const Image *im, int asked);
/* An image reduced for comparison: SCORE_SIZE x SCORE_SIZE RGB (centre crop +
 * resize) and its background colour (border median). */
typedef struct ScoreSubject {
    unsigned char px[SCORE_SIZE * SCORE_SIZE * 3];
    unsigned char bg[3];
    int fg_pixels;   /* pixels farther than SCORE_FG_DIST from bg */
} ScoreSubject;
int score_subject(const Image *im, ScoreSubject *s);   /* 0 / -1 (alloc, not RGB) */
/* Foreground descriptor: normalised colour histogram and shape grid of the
 * pixels farther than SCORE_FG_DIST from the image's own background AND from
 * also_bg (may be NULL); fg_pixels 0 means nothing stood out. */
typedef struct ScoreDesc {
    float hist[SCORE_HIST_LEVELS * SCORE_HIST_LEVELS * SCORE_HIST_LEVELS];
    float shape[SCORE_SHAPE_GRID * SCORE_SHAPE_GRID];
    int fg_pixels;
} ScoreDesc;
void score_describe(const ScoreSubject *s, const unsigned char *also_bg, ScoreDesc *d);
/* 0.5 * histogram intersection + 0.5 * shape soft-IoU; 0 when either is empty. */
float score_desc_similarity(const ScoreDesc *a, const ScoreDesc *b);
/* Symmetric similarity of two images: each described with both backgrounds
 * excluded, so a subject part that matches the asked background (an orange
 * face on orange) counts in neither. */
float score_pair(const ScoreSubject *a, const ScoreSubject *b);
/* Similarity of a sample to the closest of n subjects (max over them). */
float score_fidelity(const Image *sample, const ScoreSubject *subjects, int n);

/* ---- sampling ---- */
/* The prompt asked for colour index c: "<instance_prompt> on a <name> background". */
void score_prompt(const char *instance_prompt, int c, char *out, size_t outlen);
/* n samples of prompts[i] (size px, sampler settings from o), noise from
 * (seed, i), in batches of 8; tiles[i] receive RGB images (caller frees). */
int score_generate(Model *m, const char *const *prompts, int n, const ScoreOpts *o,
                   uint64_t seed, Image *tiles, char *err, size_t errlen);
/* Load subject images (each must have a foreground). */
int score_load_subjects(const char (*paths)[PRESET_PATH_MAX], int n, ScoreSubject *out, char *err,
                        size_t errlen);
/* Generate and score the model as it stands (with whatever adapters are attached).
 * tiles (may be NULL): n_colours * per_colour images, colour-major, caller frees. */
int score_model(Model *m, const char *instance_prompt, const ScoreSubject *subjects, int n_subjects,
                const ScoreOpts *o, ScoreResult *r, Image *tiles, char *err, size_t errlen);
/* Score a run folder (its preset copy, images and adapter: run_dir.h; base = 1:
 * the base model alone). grid_png (may be NULL): write the samples there. */
int score_run_dir(const char *run_dir, int base, Backend *be, const ScoreOpts *o, ScoreResult *r,
                  const char *grid_png, char *err, size_t errlen);

/* ---- the base model against its own training set ----
 * n prompts "a <name> on a <colour> background" taken from the dataset's
 * captions, spread evenly over it with the askable colours in turn; each
 * sample is scored for adherence (its background) and recognisability:
 * fidelity to the dataset images with that very caption (every design), and,
 * as a control, to those of the next pick (another emoji and colour). */
struct PtDataset;
typedef struct ScoreDatasetResult {
    int n, adherent;          /* samples, and those with the asked background */
    float fidelity_named;     /* mean fidelity to the named emoji's images */
    float fidelity_other;     /* mean fidelity to another pick's images (control) */
    float named_gain, named_gain_se;  /* mean over samples of named - other, its standard error */
    int per_colour_n[SCORE_N_ASKED], per_colour_hit[SCORE_N_ASKED];
} ScoreDatasetResult;
/* Picks n captions (written to prompts[i], each promptlen bytes) and their
 * asked colour indices; -1 when the dataset has fewer than n usable captions. */
int score_dataset_pick(const struct PtDataset *d, int n, char *prompts, size_t promptlen,
                       int *colour, char *err, size_t errlen);
/* Generate the n picked prompts (settings from o) and score them; tiles (may
 * be NULL) receive the samples. */
int score_dataset(Model *m, const struct PtDataset *d, const char *prompts, size_t promptlen,
                  const int *colour, int n, const ScoreOpts *o, ScoreDatasetResult *r, Image *tiles,
                  char *err, size_t errlen);

#endif

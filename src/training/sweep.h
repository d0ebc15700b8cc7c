/* sweep.h — train every variant of a preset (`krona-studio sweep`) and compare:
 * a labelled grid PNG (a row per variant, a column per sample prompt), a
 * results.csv (variant, trainable parameters, time, losses, fidelity,
 * adherence) and each variant's ordinary run folder with its adapter.
 * Everything that can be checked is checked before the first step trains. */
#ifndef KRONA_SWEEP_H
#define KRONA_SWEEP_H

#include <limits.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/backend.h"
#include "formats/image.h"
#include "formats/preset.h"
#include "training/score.h"
#include "training/train.h"

#define SWEEP_MAX_VARY 8
#define SWEEP_MAX_VALUES 16
#define SWEEP_MAX_VARIANTS 64
#define SWEEP_VALUE_MAX 128
#define SWEEP_NAME_MAX 128

/* One --vary: a preset key (any `--set` key, plus `n_images`: keep the first N
 * of the preset's images) and its values. */
typedef struct SweepVary {
    char key[64];
    int n;
    char values[SWEEP_MAX_VALUES][SWEEP_VALUE_MAX];
} SweepVary;

typedef struct Sweep {
    Preset base;                    /* the preset, with --set applied */
    int n_vary;
    SweepVary vary[SWEEP_MAX_VARY];
    int listed;                     /* 0: cartesian product; 1: the i-th values go together */
    char out_dir[PRESET_PATH_MAX];  /* empty: <base.output_dir>/sweep-<time> */
    int score;                      /* fidelity / adherence per variant (default 1) */
    int score_base;                 /* a "base" row: the model without adapters (default 1) */
    ScoreOpts score_opts;
} Sweep;

typedef struct SweepRow {
    char variant[SWEEP_NAME_MAX];   /* "a1=8,lr=0.001", or "base" */
    char run_dir[PATH_MAX];         /* empty for the base row */
    int64_t trainable;
    double time_s;                  /* training wall time (with its samples: the base grid, the end-of-run one) */
    float final_loss;               /* smoothed (EMA 0.9) training loss at the end; NaN: none */
    float eval_loss;                /* fixed (noise, t) set; NaN: none */
    float fidelity, adherence;      /* NaN when not scored */
    float fidelity_se;              /* standard error of fidelity; NaN when not scored */
    float gain, gain_se;            /* fidelity - base's, sample by sample (score_paired_gain);
                                       NaN for the base row, or when the variant is scored
                                       against other subject images (n_images) */
    ScoreResult score;              /* per-sample fidelities (n = 0: not scored) */
    char status[256];               /* "ok", "failed: why", "cancelled at step N" */
    Image tiles[PRESET_MAX_SAMPLES];/* final samples, one per sample prompt */
    int n_tiles;
} SweepRow;

typedef struct SweepCallbacks {
    void *user;
    /* before variant i of n trains (i = -1: the base row is being scored) */
    void (*begin)(void *user, int i, int n, const char *variant, const char *run_dir);
    void (*end)(void *user, int i, int n, const SweepRow *row);
    /* forwarded to every variant's trainer */
    TrainCallbacks train;
} SweepCallbacks;

void sweep_init(Sweep *s, const Preset *base);
/* Parse "key=v1,v2,..." and check every value on a copy of the preset now:
 * unknown keys and bad values fail here, naming the key and value. */
int sweep_add_vary(Sweep *s, const char *spec, char *err, size_t errlen);
/* Number of variants, or -1 with err (--list lengths differ, too many). */
int sweep_count(const Sweep *s, char *err, size_t errlen);
/* Variant i: the preset with its values applied (output_dir and run_name not
 * yet set) and its name "key=value,key=value" (numbers as %g). */
int sweep_variant(const Sweep *s, int i, Preset *p, char *name, size_t namelen, char *err,
                  size_t errlen);
/* Every variant validates, the model opens and its adapters fit the model
 * (a1/a2 divide every adapted layer), the images load. Trains nothing. */
int sweep_check(const Sweep *s, Backend *be, char *err, size_t errlen);

/* Run the sweep: checks, then each variant as a normal training run in
 * <out_dir>/<variant>, then (optionally) scores it; results.csv and grid.png
 * (and results.md) are rewritten after every variant so a stopped sweep keeps what it made.
 * cancel (may be NULL) stops the current variant and the sweep (returns 1).
 * rows (may be NULL): receive the rows (at most SWEEP_MAX_VARIANTS + 1);
 * free their tiles with sweep_rows_free. Returns 0, 1 cancelled, -1 err. */
int sweep_run(const Sweep *s, Backend *be, const SweepCallbacks *cb, atomic_int *cancel,
              char *out_dir, size_t out_dirlen, SweepRow *rows, int *n_rows, char *err,
              size_t errlen);
void sweep_rows_free(SweepRow *rows, int n);

/* ---- output ---- */
int sweep_write_csv(const char *path, const SweepRow *rows, int n, char *err, size_t errlen);
/* The same rows as a markdown table (results.md; tools/run-ablations.sh collects them).
 * A row whose status is not "ok" gets the status after the last column. */
int sweep_write_markdown(const char *path, const SweepRow *rows, int n, char *err, size_t errlen);
/* The labelled grid: a header row with the prompts (3 text lines), a label
 * column with each row's variant, one part per line (and "fid"/"adh" scores
 * when present), tiles scaled up by an integer factor to at least 96 px.
 * cell = max(96, largest scaled tile), chars = clamp(longest label part, 8, 24):
 *   width  = 4 + 6 * chars + 4 + n_prompts * (cell + 4)
 *   height = 4 + 3 * 9 + 4 + n_rows * (cell + 4)                              */
int sweep_make_grid(const SweepRow *rows, int n, const Preset *p, Image *out);
/* Text in the built-in 5x7 font (ASCII 32..126; others drawn as '?'), one
 * pixel between letters, at (x, y) top-left, clipped to the image. */
void sweep_draw_text(Image *im, int x, int y, const char *text, const unsigned char rgb[3]);

#endif

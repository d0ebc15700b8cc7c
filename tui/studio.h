/* studio.h — the terminal studio: state shared by the tui/ files.
 * One Studio struct holds everything; the training thread only ever touches
 * Shared (under its mutex), the UI thread copies out of it once per frame. */
#ifndef KRONA_TUI_STUDIO_H
#define KRONA_TUI_STUDIO_H

#include <pthread.h>
#include <stdint.h>

#include "core/fmt.h"
#include "formats/image.h"
#include "formats/preset.h"
#include "training/buckets.h"
#include "training/train.h"

/* `krona-studio [--preset P.ini] [--graphics sixel|halfblock|none]`; returns the exit status */
int studio_main(int argc, char **argv);

typedef enum { GFX_NONE, GFX_HALFBLOCK, GFX_SIXEL } GfxMode;
typedef enum { MODE_MAIN, MODE_EDIT, MODE_CONFIRM, MODE_PICKER, MODE_HELP, MODE_RUNS } UiMode;
typedef enum { PANEL_INPUTS, PANEL_PROMPT, PANEL_KNOBS, N_PANELS } PanelId;
typedef enum { CONFIRM_NONE, CONFIRM_STOP, CONFIRM_QUIT, CONFIRM_OVERWRITE, CONFIRM_EXPORT } ConfirmKind;
typedef enum { PICK_IMAGE, PICK_PRESET, PICK_MODEL } PickKind;

/* ---- knobs.c (no ncurses): the editable fields and live parameter counts ---- */
enum { KNOB_MODEL, KNOB_ADAPTER, KNOB_A1, KNOB_A2, KNOB_RANK, KNOB_MODULES, KNOB_TEXT_ENCODER,
       KNOB_LR, KNOB_ITERS, KNOB_BATCH, KNOB_SEED, KNOB_RES, KNOB_BUCKETS, KNOB_SAMPLE_EVERY, KNOB_SAMPLE_STEPS,
       KNOB_GUIDANCE, KNOB_PRECISION, KNOB_OUTPUT, N_KNOBS };
const char *knob_label(int k);
const char *knob_key(int k);   /* the preset key preset_set understands */
void knob_format(const Preset *p, int k, char *out, size_t n);
/* +/- : dir = +1/-1, big = shift. 0, or -1 with err (value unchanged): also
 * for the text encoder knob turned on where the model has no text encoder. */
int knob_step(Preset *p, int k, int dir, int big, char *err, size_t errlen);

typedef struct ParamCount {
    int ok;                 /* 0: invalid combination, reason in err */
    int64_t trainable, base;/* trainable: the UNet's adapters + te_trainable */
    int64_t te_trainable;   /* the text encoders' adapters (text_encoder_adapters = 1), else 0 */
    char te_na[256];        /* why text encoder adapters cannot apply to the model; "" when they can */
    char err[256];
    int bad_knob;           /* KNOB_A1 / KNOB_A2 / KNOB_MODEL / ... when !ok */
    int cell;               /* the model's pixel multiple (model_cell_of); 0 when unknown */
} ParamCount;
/* Trainable and base UNet parameters for p's model and adapter, from shapes only
 * (the sums `krona-studio info` prints, `info --text-encoder`'s added when
 * text_encoder_adapters = 1), and the model's cell. Never fails hard: bad
 * combos set ok = 0. */
void params_count(const Preset *p, ParamCount *out);
/* The bucket a w x h image trains at under p (buckets on, the model's cell
 * known, bucket_step fitting it): 0 with *out, else -1. */
int knob_image_bucket(const Preset *p, const ParamCount *pc, int w, int h, BucketSize *out);

/* ---- chart.c: braille loss chart ---- */
typedef struct LossSeries { float *v; int n, cap; } LossSeries;
int series_push(LossSeries *s, float v);
void series_free(LossSeries *s);
/* draw into the box (y, x, h, w) of stdscr; colour pair bases from the studio */
void chart_draw(const LossSeries *s, int y, int x, int h, int w, int colour);

/* ---- sixel_enc.c (no ncurses): an image as a sixel escape stream ---- */
#include "sixel_enc.h"

/* ---- preview.c: half-block and sixel previews ---- */
typedef struct SixelSlot {
    int y, x, h, w;         /* cell box */
    long key;               /* caller's identity of the image shown */
    char *stream; size_t len;
    /* test hook (KRONA_STUDIO_SIXEL_DUMP): the PNGs of the newest grid and of
     * the base grid, where each sits in the image (x y w h k, k its whole-multiple
     * scale, 0 when not one), and how many grids the image holds */
    char src[1024], base_src[1024];
    int region[5], base_region[5];
    int grids;
} SixelSlot;
typedef struct Gfx {
    GfxMode mode;
    int cell_w, cell_h;     /* pixels per cell (for sixel sizing) */
    int colour;             /* has_colors and >= 8 colours */
    int c256;               /* 256-colour cube available */
    SixelSlot slots[4];     /* this frame's images */
    int n_slots;
    SixelSlot cache[8];     /* encoded streams, reused while key and box match */
    unsigned long shown;    /* signature of what the terminal shows now */
    int force;              /* re-emit after overlays, resize, full redraw */
    const char *dump_path;  /* KRONA_STUDIO_SIXEL_DUMP: test hook, copy of the sample grids' stream */
} Gfx;
/* Before initscr: DA1 (sixel = attribute 4) and the cell size in pixels
 * (CSI 16 t), on the tty with a short timeout. */
GfxMode gfx_detect(int *cell_w, int *cell_h);
void gfx_init(Gfx *g, GfxMode mode, int cell_w, int cell_h);
void gfx_free(Gfx *g);
void gfx_begin_frame(Gfx *g);

/* The latest sample grids: the base model's (step 0) and the adapter's, [0]
 * newest. serial counts every grid ever pushed (never reset), so it names
 * what is shown for the sixel cache. */
enum { PREVIEW_HIST = 4 };
typedef struct SampleHist {
    Image base;             /* step 0: the base model's grid (px NULL until it comes) */
    char base_path[1024];
    Image im[PREVIEW_HIST];
    int step[PREVIEW_HIST];
    char path[PREVIEW_HIST][1024];
    int n;
    long serial;
} SampleHist;
/* step 0 replaces the base grid, any other step goes on top of the history.
 * 0, or -1 when out of memory (history unchanged) */
int hist_push(SampleHist *h, int step, const Image *im, const char *path);
int hist_copy(SampleHist *dst, const SampleHist *src);
void hist_clear(SampleHist *h);   /* frees the grids, keeps serial */

/* The grids one box compares: the base model's beside the adapter's newest
 * for the same prompts and noise, older ones under the newest. */
typedef struct GridSet {
    const Image *base;      /* NULL: none */
    const char *base_path;
    const Image *im[PREVIEW_HIST];   /* the adapter's, newest first */
    int step[PREVIEW_HIST];
    const char *path[PREVIEW_HIST];
    int n;
    long key;               /* names these pixels for the sixel cache */
} GridSet;
void hist_grids(const SampleHist *h, GridSet *out);
/* The base grid labelled "base" beside (or, when that shows them larger,
 * over) the newest labelled "step N", scaled to fill the box; older grids
 * under the newest as room allows. Labels are text lines in half-block mode,
 * drawn into the pixels in sixel mode (one image, so they line up at any cell
 * size); without graphics, the labels and PNG paths. */
void preview_draw_grids(Gfx *g, const GridSet *s, int y, int x, int h, int w);
/* in scaled to fit max_side x max_side (never enlarged). 0 / -1 */
int thumb_make(const Image *in, int max_side, Image *out);
/* n images (px NULL: left blank) as tiles as large as the box allows, in
 * order; key names the set for the sixel cache. Nothing without graphics. */
void preview_draw_thumbs(Gfx *g, const Image *im, int n, long key, int y, int x, int h, int w);
/* Before doupdate: make ncurses repaint the boxes whose sixel content changes
 * (clears the old image). After doupdate: gfx_flush writes the streams. */
void gfx_prepare(Gfx *g);
void gfx_flush(Gfx *g);

/* ---- picker.c: file picker (images, .ini presets, or models: .safetensors and diffusers folders) ---- */
typedef struct PickEntry { char name[256]; int is_dir; int is_model; } PickEntry;
typedef struct Picker {
    PickKind kind;
    char dir[1024];
    char input[1024];       /* typed filter or path */
    PickEntry *e; int n, cap;
    int cur, top;
    char msg[256];
} Picker;
void picker_open(Picker *pk, PickKind kind, const char *start_dir);
void picker_free(Picker *pk);
/* 0 keep going, 1 chosen (path in out), -1 cancelled */
int picker_key(Picker *pk, int ch, char *out, size_t n);
void picker_draw(const Picker *pk, int colour);

/* ---- runs.c: the runs folder browser and comparison ---- */
typedef struct RunInfo {
    char dir[1024], name[256];
    Preset p;
    int preset_ok;
    LossSeries loss;
    char sample_png[1200], base_png[1200];
    int sample_step;        /* the latest grid's step, -1 if none */
    Image grid, base;       /* latest and base sample grids (loaded on demand) */
    int grid_tried;
    int64_t trainable;
    double mtime;
    int marked;
} RunInfo;
typedef struct RunsView {
    char root[1024];
    RunInfo *r; int n;
    int cur, top;
    int compare;            /* showing the marked runs side by side */
    char msg[256];
} RunsView;
void runs_open(RunsView *rv, const char *root);
void runs_free(RunsView *rv);
/* 0 keep going, 1 back, 2 re-open preset of the current run (path in out) */
int runs_key(RunsView *rv, int ch, char *out, size_t n);
void runs_draw(RunsView *rv, Gfx *g, int colour);

/* ---- help.c ---- */
void help_draw(int colour);

/* ---- colour pairs used everywhere (0 when !has_colors) ---- */
enum { CP_TITLE = 1, CP_FOCUS, CP_BAD, CP_GOOD, CP_DIM, CP_RAW, CP_SMOOTH, CP_KEY, CP_WARN };
unsigned cp(int colour, int pair); /* COLOR_PAIR(pair), or 0 without colour */
/* Title bars (the studio's, the focused panel's, the overlays'): black on cyan
 * (never bold: xterm shows bold black as grey), reverse video without colour. */
unsigned title_attr(int colour);

/* ---- studio.c: shared with the training thread ---- */
typedef struct Shared {
    pthread_mutex_t mu;
    TrainProgress prog;
    LossSeries loss;        /* one value per step */
    SampleHist samples;     /* latest grids */
    char log[256];
    int gen;                /* bumped on every change */
} Shared;

typedef struct Studio {
    Preset p;
    char preset_path[1024];
    int modified;
    char config_dir[1024];
    ParamCount pc;
    /* images: cached sizes, -1 when unreadable */
    int img_w[PRESET_MAX_IMAGES], img_h[PRESET_MAX_IMAGES];
    char img_err[PRESET_MAX_IMAGES][128];
    Image thumb[PRESET_MAX_IMAGES]; /* the Inputs' thumbnails (px NULL when unreadable) */
    long thumb_serial;      /* bumped whenever they change (the sixel cache's key) */

    UiMode mode, back_mode;
    PanelId focus;
    int sel[N_PANELS], top[N_PANELS];
    /* line editor */
    char edit_label[64], edit_buf[1024];
    int edit_pos, edit_target, edit_panel;  /* what the edit changes */
    ConfirmKind confirm;
    char confirm_msg[256], pending_path[1024];
    Picker picker;
    RunsView runs;

    /* training */
    Trainer *tr;
    Backend *be;
    Shared sh;
    int seen_gen;
    TrainProgress prog;     /* UI copy */
    LossSeries loss;        /* UI copy */
    SampleHist samples;     /* UI copy */
    char run_dir[1024];
    int training;           /* a trainer thread exists and has not been joined */

    char log[256];
    int log_bad;
    Gfx gfx;
    int colour;
    int dirty;              /* redraw needed */
    int quit;
} Studio;

/* layout.c */
void layout_draw(Studio *s);
void panel_box(int y, int x, int h, int w, const char *title, int focused, int colour);
int panel_rows(const Studio *s, PanelId p);
/* label and value of one row; *bad set when it should show red */
void panel_row(const Studio *s, PanelId p, int row, char *label, size_t ln, char *value, size_t vn, int *bad);
enum { EDIT_NONE, EDIT_IMAGE, EDIT_ADD_IMAGE, EDIT_INSTANCE, EDIT_CLASS, EDIT_SAMPLE_PROMPT,
       EDIT_KNOB, EDIT_SAVE, EDIT_EXPORT };
void studio_log(Studio *s, int bad, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif

/* cli_train.c — `krona-studio train --headless` and `krona-studio sample`. */
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include "formats/image.h"
#include "models/model.h"
#include "formats/safetensors.h"
#include "training/run_dir.h"
#include "training/train.h"


static void fmt_time(double s, char *out, size_t n) {
    if (!isfinite(s) || s < 0) { snprintf(out, n, "--"); return; }
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(out, n, "%dh%02dm", t / 3600, t / 60 % 60);
    else snprintf(out, n, "%dm%02ds", t / 60, t % 60);
}

typedef struct Headless {
    int every;
    int last_printed;
} Headless;

static void on_progress(void *user, const TrainProgress *p) {
    Headless *h = user;
    /* step 0 is the start (no loss yet): the first line is step 1 */
    if (p->state != TRAIN_RUNNING || p->step == 0 || p->step == h->last_printed) return;
    if (p->step % h->every != 0 && p->step != p->total && p->step != 1) return;
    h->last_printed = p->step;
    char eta[16];
    fmt_time(p->eta_s, eta, sizeof eta);
    printf("step %5d/%d  loss %.4f  avg %.4f  lr %.2e  %.2f it/s  ETA %s  mem %.1f MB\n", p->step,
           p->total, p->loss, p->loss_ema, p->lr, p->it_per_s, eta, p->peak_bytes / 1048576.0);
    fflush(stdout);
}

static void on_sample(void *user, int step, const Image *grid, const char *path) {
    printf("samples at step %d -> %s\n", step, path);
    fflush(stdout);
}

static void on_log(void *user, const char *line) {
    printf("%s\n", line);
    fflush(stdout);
}

static Trainer *volatile g_trainer;
static void on_sigint(int sig) {
    (void)sig;
    if (g_trainer) trainer_cancel(g_trainer);
}

int cmd_train(int argc, char **argv) {
    Preset p;
    preset_defaults(&p);
    char err[1024];
    const char *resume = NULL, *device = NULL, *preset_path = NULL;
    int headless = 0, every = 0;
    /* the preset is read first so --set overrides it whatever the order */
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--preset") && i + 1 < argc) preset_path = argv[i + 1];
    if (preset_path && preset_load(&p, preset_path, err, sizeof err) != 0) {
        fprintf(stderr, "krona-studio train: %s\n", err);
        return 2;
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--headless")) { headless = 1; continue; }
        if (!v) { fprintf(stderr, "krona-studio train: %s needs a value (see --help)\n", a); return 2; }
        i++;
        if (!strcmp(a, "--preset")) continue;
        if (!strcmp(a, "--resume")) resume = v;
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--print-every")) {
            if (cli_parse_int(v, &every) != 0 || every < 1) {
                fprintf(stderr, "krona-studio train: --print-every %s: need a positive integer\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--set")) {
            if (preset_set(&p, v, err, sizeof err) != 0) {
                fprintf(stderr, "krona-studio train: %s\n", err);
                return 2;
            }
        } else {
            fprintf(stderr, "krona-studio train: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (!headless) {
        fprintf(stderr, "krona-studio train: the terminal studio is not in this build yet; add --headless\n");
        return 2;
    }
    if (!preset_path && !resume) {
        fprintf(stderr, "krona-studio train: give --preset P.ini (or --resume RUN_DIR)\n");
        return 2;
    }
    Backend *be = backend_open(device ? device : p.device, err, sizeof err);
    if (!be) { fprintf(stderr, "krona-studio train: %s\n", err); return 2; }
    char skipped[sizeof err]; /* device = auto: why a faster backend was not used */
    snprintf(skipped, sizeof skipped, "%s", err);

    Headless h = {every > 0 ? every : (p.iterations >= 20 ? p.iterations / 20 : 1), -1};
    TrainCallbacks cb = {&h, on_progress, on_sample, on_log, NULL};
    Trainer *t = trainer_create(resume ? NULL : &p, resume, be, &cb, err, sizeof err);
    if (!t) {
        fprintf(stderr, "krona-studio train: %s\n", err);
        backend_destroy(be);
        return 2;
    }
    TrainProgress p0 = trainer_progress(t);
    Model *m = trainer_model(t);
    printf("model %s (%s) on %s\n", m->spec, m->note, be->device_name(be));
    if (skipped[0]) printf("device auto: skipped %s\n", skipped);
    printf("run folder %s\n", trainer_run_dir(t));
    printf("trainable %lld of %lld UNet parameters (%.4f%%)\n", (long long)p0.trainable,
           (long long)p0.base, 100.0 * (double)p0.trainable / (double)p0.base);
    fflush(stdout);

    g_trainer = t;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int rc = trainer_run(t);
    g_trainer = NULL;
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);

    TrainProgress fin = trainer_progress(t);
    char el[16];
    fmt_time(fin.elapsed_s, el, sizeof el);
    if (rc == 0) {
        printf("done: %d steps in %s (%.2f it/s), final loss %.4f (smoothed %.4f)\n", fin.step, el,
               fin.it_per_s, fin.loss, fin.loss_ema);
        printf("eval loss %.4f -> %.4f on the fixed (noise, timestep) set\n", fin.eval_loss_start,
               fin.eval_loss);
        printf("peak memory %.1f MB; outputs in %s: %s, %s, %s/, %s\n", fin.peak_bytes / 1048576.0,
               trainer_run_dir(t), run_file_name(RUN_ADAPTER), run_file_name(RUN_LOSS),
               run_file_name(RUN_SAMPLES), run_file_name(RUN_PRESET));
    } else if (rc == 1) {
        printf("stopped at step %d; resume with: krona-studio train --headless --resume %s\n", fin.step,
               trainer_run_dir(t));
    } else {
        fprintf(stderr, "krona-studio train: %s\n", trainer_error(t));
    }
    trainer_free(t);
    backend_destroy(be);
    return rc == 0 ? 0 : 1;
}

int cmd_sample(int argc, char **argv) {
    const char *model = "tiny", *adapter = NULL, *prompt = NULL, *out = "sample.png", *device = "auto";
    const char *neg = "", *tokenizer = NULL;
    int n = 1, steps = 25, size = 0;
    float guidance = 5.0f;
    uint64_t seed = 1;
    SamplerKind kind = SAMPLER_DDIM;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "krona-studio sample: %s needs a value (see --help)\n", a); return 2; }
        i++;
        int bad = 0;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--adapter")) adapter = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--negative")) neg = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--tokenizer")) tokenizer = v;
        else if (!strcmp(a, "--n")) bad = cli_parse_int(v, &n) || n < 1 || n > 64;
        else if (!strcmp(a, "--steps")) bad = cli_parse_int(v, &steps) || steps < 1 || steps > 999;
        else if (!strcmp(a, "--size")) bad = cli_parse_int(v, &size) || size < 8;
        else if (!strcmp(a, "--seed")) {
            char why[128], shown[64];
            if (rng_parse_seed(v, &seed, why, sizeof why) != 0) {
                fmt_shorten(v, 24, shown, sizeof shown);
                fprintf(stderr, "krona-studio sample: --seed %s: %s\n", shown, why);
                return 2;
            }
        }
        else if (!strcmp(a, "--guidance")) bad = cli_parse_float(v, &guidance) || !(guidance >= 0 && guidance <= 50);
        else if (!strcmp(a, "--sampler")) {
            if (!strcmp(v, "ddim")) kind = SAMPLER_DDIM;
            else if (!strcmp(v, "euler")) kind = SAMPLER_EULER;
            else bad = 1;
        } else {
            fprintf(stderr, "krona-studio sample: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (bad) { fprintf(stderr, "krona-studio sample: %s %s: value out of range (see --help)\n", a, v); return 2; }
    }
    if (!prompt) { fprintf(stderr, "krona-studio sample: give --prompt TEXT\n"); return 2; }
    char err[1024];
    /* a missing or read-only folder fails now, not after the generation */
    if (fs_check_writable(out, err, sizeof err) != 0) {
        fprintf(stderr, "krona-studio sample: %s\n", err);
        return 2;
    }
    Backend *be = backend_open(device, err, sizeof err);
    if (!be) { fprintf(stderr, "krona-studio sample: %s\n", err); return 2; }
    int rc = 2;
    float *cc = NULL, *cu = NULL, *pix = NULL;
    Image *tiles = NULL, grid = {0};
    Model *m = model_open_with(model, tokenizer, be, err, sizeof err);
    if (!m) goto fail;
    if (adapter && model_load_adapter(m, adapter, err, sizeof err) != 0) goto fail;
    if (size == 0) size = m->ucfg.sample_size * m->pixel_scale;
    int cell = model_cell(m);
    if (size % cell) {
        snprintf(err, sizeof err, "--size %d: must be a multiple of %d for this model", size, cell);
        goto fail;
    }
    size_t cb = sizeof(float) * (size_t)m->cond_floats;
    cc = be->alloc(be, cb * (size_t)n);
    cu = be->alloc(be, cb * (size_t)n);
    int64_t per = (int64_t)m->image_channels * size * size;
    pix = malloc(sizeof(float) * (size_t)(per * n));
    tiles = calloc((size_t)n, sizeof(Image));
    if (!cc || !cu || !pix || !tiles) { snprintf(err, sizeof err, "out of memory"); goto fail; }
    if (model_encode_prompt(m, prompt, size, cc, err, sizeof err) != 0) goto fail;
    if (model_encode_prompt(m, neg, size, cu, err, sizeof err) != 0) goto fail;
    for (int i = 1; i < n; i++) {
        be->copy(be, (char *)cc + cb * i, cc, cb);
        be->copy(be, (char *)cu + cb * i, cu, cb);
    }
    SamplerOpts so = {0};
    so.kind = kind;
    so.steps = steps;
    so.guidance = guidance;
    so.seed = seed;
    rc = 1;
    if (model_generate(m, cc, cu, n, size, &so, seed, NULL, pix, err, sizeof err) != 0) goto fail;
    for (int i = 0; i < n; i++) image_from_chw(pix + per * i, m->image_channels, size, size, &tiles[i]);
    if (n == 1) {
        if (image_save_png(out, &tiles[0], err, sizeof err) != 0) goto fail;
    } else {
        int cols = n <= 4 ? n : 4;
        if (image_grid(tiles, n, cols, 2, &grid) != 0 || image_save_png(out, &grid, err, sizeof err) != 0)
            goto fail;
    }
    printf("wrote %s (%d sample%s, %dpx, %s)\n", out, n, n > 1 ? "s" : "", size, m->note);
    rc = 0;
fail:
    if (rc != 0) fprintf(stderr, "krona-studio sample: %s\n", err);
    if (tiles)
        for (int i = 0; i < n; i++) image_free(&tiles[i]);
    free(tiles);
    image_free(&grid);
    free(pix);
    be->free(be, cc);
    be->free(be, cu);
    model_free(m);
    backend_destroy(be);
    return rc;
}

/* cli_train.c — `krona-studio train --headless`: a preset's run without the
 * studio. Piped, a progress line every N steps; on a terminal, a progress bar
 * redrawn in place with the log lines above it. */
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "formats/safetensors.h"
#include "models/model.h"
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
    TrainState last_state;
    CliBar bar;
} Headless;

static void on_progress(void *user, const TrainProgress *p) {
    Headless *h = user;
    char eta[16];
    fmt_time(p->eta_s, eta, sizeof eta);
    if (h->bar.tty) {
        char text[160];
        switch (p->state) {
        case TRAIN_RUNNING:
            if (p->step == 0) snprintf(text, sizeof text, "starting");
            else snprintf(text, sizeof text, "loss %.4f  %.2f it/s  ETA %s", p->loss_ema, p->it_per_s, eta);
            break;
        case TRAIN_SAMPLING:
            if (p->step == 0) snprintf(text, sizeof text, "sampling");
            else snprintf(text, sizeof text, "loss %.4f  sampling", p->loss_ema);
            break;
        case TRAIN_DONE:
            snprintf(text, sizeof text, "loss %.4f  %.2f it/s  done", p->loss_ema, p->it_per_s);
            break;
        case TRAIN_CANCELLED: snprintf(text, sizeof text, "stopped"); break;
        case TRAIN_FAILED: snprintf(text, sizeof text, "failed"); break;
        default: snprintf(text, sizeof text, "paused"); break;
        }
        cli_bar_update(&h->bar, p->step, p->total, text, p->state != h->last_state || p->step == p->total);
        h->last_state = p->state;
        return;
    }
    /* step 0 is the start (no loss yet): the first line is step 1 */
    if (p->state != TRAIN_RUNNING || p->step == 0 || p->step == h->last_printed) return;
    if (p->step % h->every != 0 && p->step != p->total && p->step != 1) return;
    h->last_printed = p->step;
    printf("step %5d/%d  loss %.4f  avg %.4f  lr %.2e  %.2f it/s  ETA %s  mem %.1f MB\n", p->step,
           p->total, p->loss, p->loss_ema, p->lr, p->it_per_s, eta, p->peak_bytes / 1048576.0);
    fflush(stdout);
}

static void on_sample(void *user, int step, const Image *grid, const char *path) {
    Headless *h = user;
    char line[PATH_MAX + 64];
    snprintf(line, sizeof line, "samples at step %d -> %s", step, path);
    cli_bar_line(&h->bar, line);
}

static void on_log(void *user, const char *line) {
    Headless *h = user;
    cli_bar_line(&h->bar, line);
}

static Trainer *volatile g_trainer;
static void on_sigint(int sig) {
    (void)sig;
    if (g_trainer) trainer_cancel(g_trainer);
}

static int run(int argc, char **argv) {
    const CliCommand *me = &cli_train;
    const char *resume = NULL, *device = NULL, *preset_path = NULL;
    const char *export_as = NULL, *precision = NULL;
    int headless = 0, every = 0, random_weights = 0;
    CliList sets = {0};
    CliOpt opts[] = {
        cli_str("--preset", &preset_path, "P.ini", "the preset to train (presets/default.ini: the demo)"),
        cli_flag("--headless", &headless, 1, "train here, printing progress (without it: the studio)"),
        cli_list("--set", &sets, "KEY=VALUE", "override a preset key (section.key=value too); repeats"),
        cli_str("--resume", &resume, "RUN_DIR", "continue that run from its checkpoint"),
        cli_str("--device", &device, "auto|cpu|cuda", "the backend (default: the preset's device)"),
        cli_str("--precision", &precision, "auto|fp32|tf32|bf16",
                "GEMM arithmetic (default: the preset's precision; as --set precision=...)"),
        cli_int("--print-every", &every, "N", 1, INT_MAX,
                "piped output: a progress line every N steps (default iterations/20)"),
        cli_flag("--random-weights", &random_weights, 1,
                 "the built-in model with random weights instead of its shipped ones"),
        cli_str("--export-dtype", &export_as, "f32|f16|bf16",
                   "the adapter file's tensors (default: the preset's export_dtype); with --resume of "
                   "a finished run: re-export without training"),
        {0},
    };
    int rc = cli_parse(me, opts, argc, argv);
    if (rc != CLI_GO) return rc;
    if (!headless) {
        cli_error(me, "the terminal studio takes only --preset P.ini; add --headless to train here");
        return 2;
    }
    if (!preset_path && !resume) {
        cli_error(me, "give --preset P.ini (or --resume RUN_DIR)");
        return 2;
    }
    if (export_as && st_float_dtype_parse(export_as) < 0) {
        cli_error(me, "--export-dtype %s: use f32, f16 or bf16", export_as);
        return 2;
    }
    if (resume && (preset_path || sets.n || random_weights || precision)) {
        cli_error(me, "--resume continues with the run's own preset.ini (its model and precision too); drop "
                  "--preset, --set, --precision and --random-weights");
        return 2;
    }
    Preset p;
    preset_defaults(&p);
    char err[1024], found[PATH_MAX];
    if (preset_path) {
        model_find_input(preset_path, found, sizeof found); /* presets/default.ini from anywhere */
        if (preset_load(&p, found, err, sizeof err) != 0) {
            cli_error(me, "%s", err);
            return 2;
        }
    }
    for (int i = 0; i < sets.n; i++)
        if (preset_set(&p, sets.v[i], err, sizeof err) != 0) {
            cli_error(me, "%s", err); /* it names the --set */
            return 2;
        }
    if (precision) {
        if (backend_precision_parse(precision) == -2) {
            cli_error(me, "--precision %s: use auto, fp32, tf32 or bf16", precision);
            return 2;
        }
        snprintf(p.precision, sizeof p.precision, "%s", precision);
    }
    if (random_weights) {
        const char *spec = cli_random_model(me, p.model);
        if (!spec) return 2;
        snprintf(p.model, sizeof p.model, "%s", spec);
    }
    /* a new run records it in its preset.ini; a resumed one exports with it */
    if (export_as) snprintf(p.export_dtype, sizeof p.export_dtype, "%s", export_as);
    Backend *be = backend_open(device ? device : p.device, err, sizeof err);
    if (!be) { cli_error(me, "%s", err); return 2; }
    char skipped[sizeof err]; /* device = auto: why a faster backend was not used */
    snprintf(skipped, sizeof skipped, "%s", err);

    Headless h = {every > 0 ? every : (p.iterations >= 20 ? p.iterations / 20 : 1), -1, TRAIN_IDLE, {0}};
    cli_bar_init(&h.bar);
    TrainCallbacks cb = {&h, on_progress, on_sample, on_log, NULL};
    Trainer *t = trainer_create(resume ? NULL : &p, resume, be, &cb, err, sizeof err);
    if (!t) {
        cli_error(me, "%s", err);
        backend_destroy(be);
        return 2;
    }
    if (export_as && trainer_set_export_dtype(t, export_as, err, sizeof err) != 0) {
        cli_error(me, "%s", err);
        trainer_free(t);
        backend_destroy(be);
        return 2;
    }
    TrainProgress p0 = trainer_progress(t);
    Model *m = trainer_model(t);
    if (preset_path) printf("preset %s\n", found);
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
    rc = trainer_run(t);
    g_trainer = NULL;
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    cli_bar_end(&h.bar);

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
        cli_error(me, "%s", trainer_error(t));
    }
    trainer_free(t);
    backend_destroy(be);
    return rc == 0 ? 0 : 1;
}

const CliCommand cli_train = {
    "train", run,
    "--preset P.ini --headless [--set key=value ...] [--device auto|cpu|cuda]\n"
    "[--precision auto|fp32|tf32|bf16]\n"
    "[--print-every N] [--random-weights] [--export-dtype f32|f16|bf16]",
    "--headless --resume RUN_DIR [--device auto|cpu|cuda] [--print-every N] [--export-dtype f32|f16|bf16]",
    "Train an adapter as the preset says and write a run folder (preset.ini, loss.csv,\n"
    "samples/, checkpoint.safetensors, adapter.safetensors). On a terminal a progress bar\n"
    "shows step, smoothed loss, speed and ETA; piped, a line every N steps. Ctrl-C stops\n"
    "after the current step with a checkpoint that --resume continues. A relative --preset\n"
    "that is not in the current folder is looked for among the shipped files\n"
    "(presets/default.ini works from anywhere once installed).",
};

/* cli_sweep.c — `krona-studio sweep`: train every variant of a preset (each
 * --vary key over its values) and compare them in a table, a grid and a CSV. */
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "training/score.h"
#include "training/sweep.h"

static atomic_int g_cancel;
static void on_sigint(int sig) {
    (void)sig;
    atomic_store(&g_cancel, 1);
}

typedef struct SweepPrint {
    int every;
} SweepPrint;

static void on_begin(void *user, int i, int n, const char *variant, const char *run_dir) {
    if (i < 0) printf("base model: sampling and scoring\n");
    else printf("variant %d/%d  %s  -> %s\n", i + 1, n, variant, run_dir);
    fflush(stdout);
}

static void on_end(void *user, int i, int n, const SweepRow *r) {
    if (i < 0) {
        printf("  base: fidelity %.3f  adherence %.3f\n", r->fidelity, r->adherence);
    } else {
        printf("  %s: %lld trainable, %.1f s, loss %.4f, eval %.4f", r->status, (long long)r->trainable,
               r->time_s, r->final_loss, r->eval_loss);
        if (isfinite(r->fidelity)) printf(", fidelity %.3f, adherence %.3f", r->fidelity, r->adherence);
        printf("\n");
    }
    fflush(stdout);
}

static void on_progress(void *user, const TrainProgress *p) {
    SweepPrint *sp = user;
    if (p->state != TRAIN_RUNNING || p->step == 0) return;
    int every = sp->every > 0 ? sp->every : (p->total >= 10 ? p->total / 5 : 1);
    if (p->step % every != 0 && p->step != p->total) return;
    printf("  step %5d/%d  loss %.4f  avg %.4f  %.2f it/s\n", p->step, p->total, p->loss, p->loss_ema,
           p->it_per_s);
    fflush(stdout);
}

static void install_sigint(void) {
    atomic_store(&g_cancel, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static int run(int argc, char **argv) {
    const CliCommand *me = &cli_sweep;
    const char *preset_path = NULL, *device = NULL, *out_dir = NULL;
    CliList sets = {0}, varies = {0};
    int listed = 0, score = 1, score_base = 1, random_weights = 0;
    SweepPrint sp = {0};
    ScoreOpts so;
    score_opts_default(&so);
    CliOpt opts[16] = {
        cli_str("--preset", &preset_path, "P.ini", "the preset every variant starts from"),
        cli_list("--vary", &varies, "KEY=V1,V2,...", "a preset key (or n_images) and its values; repeats"),
        cli_flag("--list", &listed, 1, "the i-th values of each --vary together (default: every combination)"),
        cli_list("--set", &sets, "KEY=VALUE", "override a preset key for every variant; repeats"),
        cli_str("--out", &out_dir, "DIR", "where the sweep goes (default OUTPUT_DIR/sweep-TIME)"),
        cli_flag("--no-score", &score, 0, "do not score the variants"),
        cli_flag("--no-base", &score_base, 0, "no row for the base model"),
        cli_str("--device", &device, "auto|cpu|cuda", "the backend (default: the preset's device)"),
        cli_int("--print-every", &sp.every, "N", 1, INT_MAX, "a progress line every N steps"),
        cli_flag("--random-weights", &random_weights, 1, "the built-in model with random weights"),
    };
    cli_score_opts(opts + 10, &so, 1);
    int rc = cli_parse(me, opts, argc, argv);
    if (rc != CLI_GO) return rc;
    if (!preset_path) { cli_error(me, "give --preset P.ini"); return 2; }
    char err[1024];
    Preset base;
    preset_defaults(&base);
    char found[PATH_MAX];
    model_find_input(preset_path, found, sizeof found); /* presets/default.ini from anywhere */
    if (preset_load(&base, found, err, sizeof err) != 0) { cli_error(me, "%s", err); return 2; }
    /* --set before --vary, so the values are checked against the final preset */
    for (int i = 0; i < sets.n; i++)
        if (preset_set(&base, sets.v[i], err, sizeof err) != 0) { cli_error(me, "%s", err); return 2; }
    if (random_weights) {
        const char *spec = cli_random_model(me, base.model);
        if (!spec) return 2;
        snprintf(base.model, sizeof base.model, "%s", spec);
    }
    Sweep *s = malloc(sizeof *s);
    if (!s) { cli_error(me, "out of memory"); return 1; }
    sweep_init(s, &base);
    s->listed = listed;
    s->score = score;
    s->score_base = score_base;
    s->score_opts = so;
    if (out_dir) snprintf(s->out_dir, sizeof s->out_dir, "%s", out_dir);
    rc = 2;
    for (int i = 0; i < varies.n; i++)
        if (sweep_add_vary(s, varies.v[i], err, sizeof err) != 0) { cli_error(me, "%s", err); goto out; }
    int n = sweep_count(s, err, sizeof err);
    if (n < 0) { cli_error(me, "%s", err); goto out; }
    Backend *be = backend_open(device ? device : base.device, err, sizeof err);
    if (!be) { cli_error(me, "%s", err); goto out; }
    SweepRow *rows = calloc((size_t)n + 1, sizeof *rows);
    if (!rows) { cli_error(me, "out of memory"); backend_destroy(be); rc = 1; goto out; }
    printf("sweep: %d variant%s of %s%s\n", n, n == 1 ? "" : "s", preset_path,
           s->listed ? " (listed)" : "");
    fflush(stdout);
    SweepCallbacks cb = {&sp, on_begin, on_end, {&sp, on_progress, NULL, NULL, NULL}};
    char dir[PATH_MAX];
    dir[0] = 0;
    int nr = 0;
    install_sigint();
    int r = sweep_run(s, be, &cb, &g_cancel, dir, sizeof dir, rows, &nr, err, sizeof err);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (r < 0 && nr == 0 && !dir[0]) {
        cli_error(me, "%s", err);   /* nothing ran: a bad input */
        rc = 2;
    } else {
        if (nr > 0) {
            printf("\n%-32s %10s %8s %9s %9s %8s %15s %9s\n", "variant", "trainable", "time_s", "loss",
                   "eval", "fidelity", "vs base (se)", "adherence");
            for (int i = 0; i < nr; i++) {
                char gain[32] = "";
                if (isfinite(rows[i].gain)) snprintf(gain, sizeof gain, "%+.3f (%.3f)", rows[i].gain, rows[i].gain_se);
                printf("%-32s %10lld %8.1f %9.4f %9.4f %8.3f %15s %9.3f%s%s\n", rows[i].variant,
                       (long long)rows[i].trainable, rows[i].time_s, rows[i].final_loss, rows[i].eval_loss,
                       rows[i].fidelity, gain, rows[i].adherence, strcmp(rows[i].status, "ok") ? "  " : "",
                       strcmp(rows[i].status, "ok") ? rows[i].status : "");
            }
        }
        if (r < 0) cli_error(me, "%s", err);
        if (dir[0]) printf("outputs in %s: grid.png, results.csv, base.ini, a run folder per variant\n", dir);
        if (r == 1) printf("stopped; the rows above are in %s/results.csv\n", dir);
        rc = r == 0 ? 0 : 1;
    }
    sweep_rows_free(rows, nr);
    free(rows);
    backend_destroy(be);
out:
    free(s);
    return rc;
}

const CliCommand cli_sweep = {
    "sweep", run,
    "--preset P.ini --vary key=v1,v2,... [--vary ...] [--list]\n"
    "[--set key=value ...] [--out DIR] [--no-base] [--no-score] [--score-colours N]\n"
    "[--score-per-colour N] [--score-steps S] [--score-seed S] [--device auto|cpu|cuda]\n"
    "[--print-every N] [--random-weights]",
    NULL,
    "Train every variant of a preset and compare them: each variant is a normal training run;\n"
    "grid.png (a row per variant and one for the base model), results.csv and results.md\n"
    "(trainable parameters, time, losses, fidelity and adherence with their gain over the\n"
    "base) are rewritten after every variant. A bad key or value fails before anything trains.",
};

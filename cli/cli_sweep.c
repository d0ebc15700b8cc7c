/* cli_sweep.c — `krona-studio sweep` (train every variant of a preset, compare)
 * and `krona-studio score` (fidelity / adherence of a run folder). */
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/rng.h"
#include "training/pretrain.h"
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

/* options shared by sweep and score for the scoring samples */
static int parse_score_opt(const char *a, const char *v, ScoreOpts *o, int *bad) {
    int x;
    if (!strcmp(a, "--score-colours") || !strcmp(a, "--colours")) {
        *bad = cli_parse_int(v, &x) || x < 1 || x > SCORE_N_ASKED;
        o->n_colours = x;
    } else if (!strcmp(a, "--score-per-colour") || !strcmp(a, "--per-colour")) {
        *bad = cli_parse_int(v, &x) || x < 1 || x > 8;
        o->per_colour = x;
    } else if (!strcmp(a, "--score-steps") || !strcmp(a, "--steps")) {
        *bad = cli_parse_int(v, &x) || x < 1 || x > 1000;
        o->steps = x;
    } else if (!strcmp(a, "--score-seed") || !strcmp(a, "--seed")) {
        char why[128];
        *bad = rng_parse_seed(v, &o->seed, why, sizeof why) != 0;
    } else if (!strcmp(a, "--score-guidance") || !strcmp(a, "--guidance")) {
        float g;
        *bad = cli_parse_float(v, &g) || !(g >= 0 && g <= 50);
        o->guidance = g;
    } else {
        return 0;
    }
    return 1;
}

static int cmd_sweep_run(int argc, char **argv) {
    const char *me = "krona-studio sweep";
    char err[1024];
    Preset base;
    preset_defaults(&base);
    const char *preset_path = NULL, *device = NULL;
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--preset") && i + 1 < argc) preset_path = argv[i + 1];
    if (!preset_path) { fprintf(stderr, "%s: give --preset P.ini\n", me); return 2; }
    if (preset_load(&base, preset_path, err, sizeof err) != 0) { fprintf(stderr, "%s: %s\n", me, err); return 2; }
    /* --set before --vary, so the values are checked against the final preset */
    for (int i = 0; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--set")) {
            if (preset_set(&base, argv[i + 1], err, sizeof err) != 0) {
                fprintf(stderr, "%s: %s\n", me, err);
                return 2;
            }
            i++;
        }
    Sweep *s = malloc(sizeof *s);
    if (!s) { fprintf(stderr, "%s: out of memory\n", me); return 1; }
    sweep_init(s, &base);
    SweepPrint sp = {0};
    int rc = 2;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--list")) { s->listed = 1; continue; }
        if (!strcmp(a, "--no-score")) { s->score = 0; continue; }
        if (!strcmp(a, "--no-base")) { s->score_base = 0; continue; }
        if (!v) { fprintf(stderr, "%s: %s needs a value (see krona-studio(1))\n", me, a); goto out; }
        i++;
        int bad = 0;
        if (!strcmp(a, "--preset") || !strcmp(a, "--set")) continue;
        if (!strcmp(a, "--vary")) {
            if (sweep_add_vary(s, v, err, sizeof err) != 0) { fprintf(stderr, "%s: %s\n", me, err); goto out; }
        } else if (!strcmp(a, "--out")) {
            snprintf(s->out_dir, sizeof s->out_dir, "%s", v);
        } else if (!strcmp(a, "--device")) {
            device = v;
        } else if (!strcmp(a, "--print-every")) {
            bad = cli_parse_int(v, &sp.every) || sp.every < 1;
        } else if (!parse_score_opt(a, v, &s->score_opts, &bad)) {
            fprintf(stderr, "%s: unknown option '%s' (see krona-studio(1))\n", me, a);
            goto out;
        }
        if (bad) { fprintf(stderr, "%s: %s %s: value out of range (see krona-studio(1))\n", me, a, v); goto out; }
    }
    int n = sweep_count(s, err, sizeof err);
    if (n < 0) { fprintf(stderr, "%s: %s\n", me, err); goto out; }
    Backend *be = backend_open(device ? device : base.device, err, sizeof err);
    if (!be) { fprintf(stderr, "%s: %s\n", me, err); goto out; }
    SweepRow *rows = calloc((size_t)n + 1, sizeof *rows);
    if (!rows) { fprintf(stderr, "%s: out of memory\n", me); backend_destroy(be); rc = 1; goto out; }
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
        fprintf(stderr, "%s: %s\n", me, err);   /* nothing ran: a bad input */
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
        if (r < 0) fprintf(stderr, "%s: %s\n", me, err);
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

/* `score --data FILE [--model M] [--n N]`: does the base model draw what its
 * training captions ask for? (score_dataset) */
static int score_base_on_data(const char *model, const char *data, int n, const char *device,
                              const ScoreOpts *o, const char *grid) {
    const char *me = "krona-studio score";
    char err[1024];
    PtDataset d;
    if (pt_dataset_load(&d, data, err, sizeof err) != 0) { fprintf(stderr, "%s: %s\n", me, err); return 2; }
    Backend *be = backend_open(device, err, sizeof err);
    if (!be) { fprintf(stderr, "%s: %s\n", me, err); pt_dataset_free(&d); return 2; }
    Model *m = model_open(model, be, err, sizeof err);
    Image *tiles = calloc((size_t)n, sizeof(Image)), g = {0};
    char (*cap)[128] = malloc(sizeof *cap * (size_t)n);
    int *col = malloc(sizeof(int) * (size_t)n);
    ScoreDatasetResult r;
    int rc = 1;
    if (!tiles || !cap || !col) { fprintf(stderr, "%s: out of memory\n", me); goto done; }
    if (!m || score_dataset_pick(&d, n, cap[0], sizeof cap[0], col, err, sizeof err) != 0 ||
        score_dataset(m, &d, cap[0], sizeof cap[0], col, n, o, &r, tiles, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", me, err);
        goto done;
    }
    printf("base model %s on %d captions of %s (DDIM %d steps, guidance %g, seed %llu):\n", model, n,
           data, o->steps, (double)o->guidance, (unsigned long long)o->seed);
    printf("  right background   %d/%d (%.0f%%)\n", r.adherent, r.n, 100.0 * r.adherent / r.n);
    printf("  fidelity to the named emoji %.3f, to another emoji (control) %.3f\n",
           (double)r.fidelity_named, (double)r.fidelity_other);
    printf("  named - control    %+.3f  se %.3f  (sample by sample)\n", (double)r.named_gain,
           (double)r.named_gain_se);
    for (int i = 0; i < n; i++)
        printf("  %3d %-4s %s\n", i + 1, score_adherent(&tiles[i], col[i]) ? "ok" : "MISS", cap[i]);
    printf("  per colour:");
    for (int c = 0; c < SCORE_N_ASKED; c++)
        if (r.per_colour_n[c]) printf(" %s %d/%d", score_palette[c].name, r.per_colour_hit[c], r.per_colour_n[c]);
    printf("\n");
    rc = 0;
    if (grid) {
        if (image_grid(tiles, n, 10, 2, &g) != 0 || image_save_png(grid, &g, err, sizeof err) != 0) {
            fprintf(stderr, "%s: %s\n", me, err);
            rc = 1;
        } else {
            printf("  samples: %s (10 per row, in the order of the captions above)\n", grid);
        }
    }
done:
    if (tiles) for (int i = 0; i < n; i++) image_free(&tiles[i]);
    free(tiles);
    free(cap);
    free(col);
    image_free(&g);
    model_free(m);
    backend_destroy(be);
    pt_dataset_free(&d);
    return rc;
}

static int cmd_score_run(int argc, char **argv) {
    const char *me = "krona-studio score";
    const char *run = NULL, *device = "auto", *grid = NULL, *data = NULL, *model = "tiny";
    int which = 3; /* 1 adapter, 2 base, 3 both */
    int n_data = 50;
    ScoreOpts o;
    score_opts_default(&o);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--base")) { which = 2; continue; }
        if (!strcmp(a, "--no-base")) { which = 1; continue; }
        if (!v) { fprintf(stderr, "%s: %s needs a value (see krona-studio(1))\n", me, a); return 2; }
        i++;
        int bad = 0;
        if (!strcmp(a, "--run")) run = v;
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--grid")) grid = v;
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--n")) bad = cli_parse_int(v, &n_data) || n_data < 1 || n_data > 1000;
        else if (!strcmp(a, "--size")) bad = cli_parse_int(v, &o.size) || o.size < 8;
        else if (!parse_score_opt(a, v, &o, &bad)) {
            fprintf(stderr, "%s: unknown option '%s' (see krona-studio(1))\n", me, a);
            return 2;
        }
        if (bad) { fprintf(stderr, "%s: %s %s: value out of range (see krona-studio(1))\n", me, a, v); return 2; }
    }
    if (data) return score_base_on_data(model, data, n_data, device, &o, grid);
    if (!run) {
        fprintf(stderr, "%s: give --run RUN_DIR (a training run folder), or --data FILE to check "
                "a base model on its training captions\n", me);
        return 2;
    }
    char err[1024];
    Backend *be = backend_open(device, err, sizeof err);
    if (!be) { fprintf(stderr, "%s: %s\n", me, err); return 2; }
    int rc = 0;
    ScoreResult both[2];
    for (int base = 0; base < 2 && rc == 0; base++) {
        if (!(which & (base ? 2 : 1))) continue;
        ScoreResult *r = &both[base];
        char gpath[PATH_MAX];
        if (grid) {
            /* both: out.png for the adapter, out.base.png for the base */
            const char *dot = strrchr(grid, '.');
            if (base && which == 3)
                snprintf(gpath, sizeof gpath, "%.*s.base%s", (int)(dot ? dot - grid : (long)strlen(grid)), grid,
                         dot ? dot : ".png");
            else
                snprintf(gpath, sizeof gpath, "%s", grid);
        }
        if (score_run_dir(run, base, be, &o, r, grid ? gpath : NULL, err, sizeof err) != 0) {
            fprintf(stderr, "%s: %s\n", me, err);
            rc = 1;
            break;
        }
        printf("%-8s fidelity %.3f  adherence %.3f  (se %.3f; %d samples: %d colours x %d, seed %llu, "
               "%d steps)%s%s\n", base ? "base" : "adapter", r->fidelity, r->adherence, r->fidelity_se, r->n,
               o.n_colours, o.per_colour, (unsigned long long)o.seed, o.steps, grid ? " -> " : "",
               grid ? gpath : "");
    }
    float gain, se;
    if (rc == 0 && which == 3 && score_paired_gain(&both[0], &both[1], &gain, &se) == 0)
        printf("gain     fidelity %+.3f  se %.3f  (adapter - base, sample by sample: same prompts, "
               "same noise)\n", gain, se);
    backend_destroy(be);
    return rc;
}

int cmd_sweep(int argc, char **argv) {
    if (argc >= 1 && !strcmp(argv[0], "score")) return cmd_score_run(argc - 1, argv + 1);
    return cmd_sweep_run(argc - 1, argv + 1);
}

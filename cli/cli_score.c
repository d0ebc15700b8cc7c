/* cli_score.c — `krona-studio score`: subject fidelity and prompt adherence of
 * a run folder (adapter, base model and their paired gain), or a base model
 * against its own training captions (--data). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "formats/image.h"
#include "training/pretrain.h"
#include "training/score.h"

void cli_score_opts(CliOpt *out, ScoreOpts *o, int prefixed) {
    static const char *const names[CLI_SCORE_OPTS][2] = {
        {"--score-colours", "--colours"}, {"--score-per-colour", "--per-colour"}, {"--score-steps", "--steps"},
        {"--score-seed", "--seed"}, {"--score-guidance", "--guidance"},
    };
    CliOpt all[CLI_SCORE_OPTS] = {
        cli_int(NULL, &o->n_colours, "N", 1, SCORE_N_ASKED, "sample the first N background colours (default 6)"),
        cli_int(NULL, &o->per_colour, "N", 1, 8, "seeds per colour (default 1)"),
        cli_int(NULL, &o->steps, "S", 1, 1000, "DDIM steps (default 25)"),
        cli_seed(NULL, &o->seed, "noise seed, the same for adapter and base (default 1234)"),
        cli_float(NULL, &o->guidance, "G", 0, 50, "guidance scale (default 5)"),
    };
    for (int i = 0; i < CLI_SCORE_OPTS; i++) {
        out[i] = all[i];
        out[i].name = names[i][!prefixed];
        out[i].alias = names[i][prefixed];
    }
}

/* `score --data FILE [--model M] [--n N]`: does the base model draw what its
 * training captions ask for? (score_dataset) */
static int score_base_on_data(const char *model, const char *data, int n, const char *device,
                              const ScoreOpts *o, const char *grid) {
    const CliCommand *me = &cli_score;
    char err[1024];
    PtDataset d;
    if (pt_dataset_load(&d, data, err, sizeof err) != 0) { cli_error(me, "%s", err); return 2; }
    Backend *be = backend_open(device, err, sizeof err);
    if (!be) { cli_error(me, "%s", err); pt_dataset_free(&d); return 2; }
    Model *m = model_open(model, be, err, sizeof err);
    Image *tiles = calloc((size_t)n, sizeof(Image)), g = {0};
    char (*cap)[128] = malloc(sizeof *cap * (size_t)n);
    int *col = malloc(sizeof(int) * (size_t)n);
    ScoreDatasetResult r;
    int rc = 1;
    if (!tiles || !cap || !col) { cli_error(me, "out of memory"); goto done; }
    if (!m || score_dataset_pick(&d, n, cap[0], sizeof cap[0], col, err, sizeof err) != 0 ||
        score_dataset(m, &d, cap[0], sizeof cap[0], col, n, o, &r, tiles, err, sizeof err) != 0) {
        cli_error(me, "%s", err);
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
            cli_error(me, "%s", err);
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

static int run(int argc, char **argv) {
    const CliCommand *me = &cli_score;
    const char *run = NULL, *device = "auto", *grid = NULL, *data = NULL, *model = "tiny";
    int which = 3; /* 1 adapter, 2 base, 3 both */
    int n_data = 50, random_weights = 0;
    ScoreOpts o;
    score_opts_default(&o);
    CliOpt opts[16] = {
        cli_str("--run", &run, "RUN_DIR", "the training run to score"),
        cli_flag("--base", &which, 2, "the base model only"),
        cli_flag("--no-base", &which, 1, "the adapter only"),
        cli_str("--grid", &grid, "out.png", "write the samples (the base's to out.base.png)"),
        cli_int("--size", &o.size, "PX", 8, 16384, "sample size (default: the run's resolution)"),
        cli_str("--data", &data, "FILE", "instead of --run: a base model against its training captions"),
        cli_str("--model", &model, "M", "with --data: the model (default tiny)"),
        cli_int("--n", &n_data, "N", 1, 1000, "with --data: captions to draw (default 50)"),
        cli_str("--device", &device, "auto|cpu|cuda", "the backend (default auto)"),
        cli_flag("--random-weights", &random_weights, 1, "with --data: the built-in model with random weights"),
    };
    cli_score_opts(opts + 10, &o, 0);
    int rc = cli_parse(me, opts, argc, argv);
    if (rc != CLI_GO) return rc;
    if (random_weights && !data) {
        cli_error(me, "--random-weights goes with --data; a run is scored with the model it was trained on");
        return 2;
    }
    if (random_weights && !(model = cli_random_model(me, model))) return 2;
    if (data) return score_base_on_data(model, data, n_data, device, &o, grid);
    if (!run) {
        cli_error(me, "give --run RUN_DIR (a training run folder), or --data FILE to check a base model "
                  "on its training captions");
        return 2;
    }
    char err[1024];
    Backend *be = backend_open(device, err, sizeof err);
    if (!be) { cli_error(me, "%s", err); return 2; }
    rc = 0;
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
            cli_error(me, "%s", err);
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

const CliCommand cli_score = {
    "score", run,
    "--run RUN_DIR [--base|--no-base] [--grid out.png] [--colours N]\n"
    "[--per-colour N] [--steps S] [--seed S] [--guidance G] [--size PX] [--device D]",
    "--data FILE [--model M] [--random-weights] [--n N] [--grid out.png] [--steps S] [--seed S]",
    "Score a run folder: samples of \"<instance prompt> on a <colour> background\" from fixed\n"
    "noise, for the adapter and for the base model: fidelity (foreground similarity to the\n"
    "closest training image), adherence (the asked background colour) and the fidelity gain\n"
    "sample by sample with its standard error (docs/metrics.md). With --data: does a base model\n"
    "draw what its training captions ask for?",
};

/* cli_pretrain.c — `krona-studio pretrain`: trains the built-in tiny model
 * (UNet + text encoder) from scratch on a KSDATA1 dataset (src/pretrain.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/rng.h"
#include "models/diffusion.h"
#include "training/pretrain.h"

static const char *PRETRAIN_USAGE =
    "usage: krona-studio pretrain [--data data/emoji32.bin] [--out models/tiny] [--steps N]\n"
    "           [--batch B] [--lr LR] [--seed S] [--resume | --init-from DIR] [--time-limit MINUTES]\n"
    "           [--warmup N] [--lr-min FRACTION] [--weight-decay W] [--clip NORM]\n"
    "           [--cfg-drop P] [--no-flip] [--ema DECAY] [--checkpoint-every N]\n"
    "           [--stop-after STEP] [--print-every N] [--sample-every N] [--sample-steps N]\n"
    "           [--schedule linear|scaled_linear] [--prediction v|epsilon] [--device auto|cpu|cuda]\n"
    "Trains the tiny UNet and its text encoder jointly (v or epsilon loss on DDPM's linear\n"
    "schedule by default; both go to OUT/scheduler_config.json), AdamW with warm-up and\n"
    "cosine decay, global-norm clipping, 10% empty-prompt dropout for guidance, flips).\n"
    "Writes OUT/unet.safetensors and OUT/text_encoder.safetensors (what `--model tiny` loads),\n"
    "OUT/checkpoint.safetensors (resume exactly with --resume and the same options),\n"
    "OUT/pretrain_log.csv and OUT/samples/step_N.png. Build the data with\n"
    "tools/build-emoji-dataset.sh.\n";

static void on_progress(void *user, const PretrainProgress *g) {
    (void)user;
    int eta = (int)(g->eta_s + 0.5);
    printf("step %6d/%d  loss %.4f  avg %.4f  lr %.2e  |g| %.3f  %.1f samples/s  elapsed %.0fs  "
           "ETA %dh%02dm%02ds\n",
           g->step, g->total, g->loss, g->loss_avg, g->lr, g->grad_norm, g->samples_per_s,
           g->elapsed_s, eta / 3600, eta / 60 % 60, eta % 60);
    fflush(stdout);
}

static void on_log(void *user, const char *line) {
    (void)user;
    printf("%s\n", line);
    fflush(stdout);
}

int cmd_pretrain(int argc, char **argv) {
    PretrainOpts o;
    pretrain_default_opts(&o);
    const char *data = "data/emoji32.bin", *device = "auto";
    float minutes = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0, used = 1;
        int iv;
        float fv;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(PRETRAIN_USAGE, stdout); return 0; }
        else if (!strcmp(a, "--resume")) { o.resume = 1; used = 0; }
        else if (!strcmp(a, "--no-flip")) { o.flip = 0; used = 0; }
        else if (!v) bad = 1;
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--out")) o.out_dir = v;
        else if (!strcmp(a, "--init-from")) o.init_from = v;
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--schedule")) {
            bad = !v || (strcmp(v, "linear") && strcmp(v, "scaled_linear"));
            o.schedule = v && strcmp(v, "linear") == 0 ? BETAS_LINEAR : BETAS_SCALED_LINEAR;
        } else if (!strcmp(a, "--prediction")) {
            bad = !v || (strcmp(v, "v") && strcmp(v, "epsilon"));
            o.prediction = v && strcmp(v, "v") == 0 ? PRED_V : PRED_EPSILON;
        }
        else if (!strcmp(a, "--steps")) { bad = cli_parse_int(v, &iv) || iv <= 0; o.steps = iv; }
        else if (!strcmp(a, "--batch")) { bad = cli_parse_int(v, &iv) || iv <= 0; o.batch = iv; }
        else if (!strcmp(a, "--seed")) { char why[128]; bad = rng_parse_seed(v, &o.seed, why, sizeof why) != 0; }
        else if (!strcmp(a, "--warmup")) { bad = cli_parse_int(v, &iv) || iv < 0; o.warmup = iv; }
        else if (!strcmp(a, "--checkpoint-every")) { bad = cli_parse_int(v, &iv); o.checkpoint_every = iv; }
        else if (!strcmp(a, "--stop-after")) { bad = cli_parse_int(v, &iv) || iv < 0; o.stop_after = iv; }
        else if (!strcmp(a, "--print-every")) { bad = cli_parse_int(v, &iv) || iv <= 0; o.print_every = iv; }
        else if (!strcmp(a, "--sample-every")) { bad = cli_parse_int(v, &iv); o.sample_every = iv; }
        else if (!strcmp(a, "--sample-steps")) { bad = cli_parse_int(v, &iv) || iv <= 0; o.sample_steps = iv; }
        else if (!strcmp(a, "--lr")) { bad = cli_parse_float(v, &fv) || !(fv > 0); o.lr = fv; }
        else if (!strcmp(a, "--lr-min")) { bad = cli_parse_float(v, &fv) || fv < 0 || fv > 1; o.lr_min = fv; }
        else if (!strcmp(a, "--weight-decay")) { bad = cli_parse_float(v, &fv) || fv < 0; o.weight_decay = fv; }
        else if (!strcmp(a, "--clip")) { bad = cli_parse_float(v, &fv); o.clip = fv; }
        else if (!strcmp(a, "--cfg-drop")) { bad = cli_parse_float(v, &fv) || fv < 0 || fv > 1; o.cfg_drop = fv; }
        else if (!strcmp(a, "--ema")) { bad = cli_parse_float(v, &fv) || fv < 0 || fv >= 1; o.ema = fv; }
        else if (!strcmp(a, "--time-limit")) { bad = cli_parse_float(v, &fv) || !(fv > 0); minutes = fv; }
        else {
            fprintf(stderr, "krona-studio pretrain: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "krona-studio pretrain: %s needs %s (see --help)\n", a,
                    v ? "a valid value" : "a value");
            return 2;
        }
        i += used;
    }
    o.time_limit_s = minutes * 60.0;
    char err[1024];
    PtDataset d;
    if (pt_dataset_load(&d, data, err, sizeof err) != 0) {
        fprintf(stderr, "krona-studio pretrain: %s\n", err);
        return 2;
    }
    Backend *be = backend_open(device, err, sizeof err);
    if (!be) {
        fprintf(stderr, "krona-studio pretrain: %s\n", err);
        pt_dataset_free(&d);
        return 2;
    }
    PretrainCallbacks cb = {.user = NULL, .progress = on_progress, .log = on_log};
    int rc = pretrain_run(&d, &o, be, &cb, err, sizeof err);
    if (rc < 0) fprintf(stderr, "krona-studio pretrain: %s\n", err);
    backend_destroy(be);
    pt_dataset_free(&d);
    return rc < 0 ? 1 : 0;
}

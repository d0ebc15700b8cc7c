/* cli_pretrain.c — `krona-studio pretrain`: trains the built-in tiny model
 * (UNet + text encoder) from scratch on a KSDATA1 dataset (src/pretrain.h). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "models/diffusion.h"
#include "training/pretrain.h"

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

static int run(int argc, char **argv) {
    const CliCommand *me = &cli_pretrain;
    PretrainOpts o;
    pretrain_default_opts(&o);
    const char *data = "data/emoji32.bin", *device = "auto", *precision = "auto";
    float minutes = 0;
    int no_flip = 0, linear = o.schedule == BETAS_LINEAR ? 0 : 1;
    int v_pred = o.prediction == PRED_V ? 0 : 1;
    CliOpt opts[] = {
        cli_str("--data", &data, "FILE", "the captioned dataset (default data/emoji32.bin)"),
        cli_str("--out", &o.out_dir, "DIR", "where the model goes (default models/tiny)"),
        cli_int("--steps", &o.steps, "N", 1, INT_MAX, "optimiser steps"),
        cli_int("--batch", &o.batch, "B", 1, INT_MAX, "images per step"),
        cli_open(CLI_OPEN_LO, cli_float("--lr", &o.lr, "LR", 0, INFINITY, "peak learning rate")),
        cli_seed("--seed", &o.seed, "noise and data order (default 1234)"),
        cli_flag("--resume", &o.resume, 1, "continue exactly from OUT/checkpoint.safetensors (same options)"),
        cli_str("--init-from", &o.init_from, "DIR", "start from that model's weights, fresh optimiser"),
        cli_open(CLI_OPEN_LO, cli_float("--time-limit", &minutes, "MINUTES", 0, INFINITY,
                                        "stop with a checkpoint after that long")),
        cli_int("--warmup", &o.warmup, "N", 0, INT_MAX, "linear warm-up steps"),
        cli_float("--lr-min", &o.lr_min, "FRACTION", 0, 1, "where the cosine decay ends, a fraction of lr"),
        cli_float("--weight-decay", &o.weight_decay, "W", 0, INFINITY, "AdamW weight decay"),
        cli_float("--clip", &o.clip, "NORM", 0, 0, "global gradient-norm limit (<= 0: off)"),
        cli_float("--cfg-drop", &o.cfg_drop, "P", 0, 1, "share of steps on the empty prompt"),
        cli_flag("--no-flip", &no_flip, 1, "no random horizontal flips"),
        cli_open(CLI_OPEN_HI, cli_float("--ema", &o.ema, "DECAY", 0, 1, "EMA of the weights (0: off)")),
        cli_int("--checkpoint-every", &o.checkpoint_every, "N", 0, 0, "steps between checkpoints (<= 0: at the end)"),
        cli_int("--stop-after", &o.stop_after, "STEP", 0, INT_MAX, "stop with a checkpoint there (0: off)"),
        cli_int("--print-every", &o.print_every, "N", 1, INT_MAX, "a progress line every N steps"),
        cli_int("--sample-every", &o.sample_every, "N", 0, 0, "a sample grid every N steps (<= 0: none)"),
        cli_int("--sample-steps", &o.sample_steps, "N", 1, INT_MAX, "DDIM steps of the grids"),
        cli_choice("--schedule", &linear, "linear|scaled_linear", "betas (default linear: DDPM's)"),
        cli_choice("--prediction", &v_pred, "v|epsilon", "what the UNet predicts (default v)"),
        cli_str("--device", &device, "auto|cpu|cuda", "the backend (default auto)"),
        cli_str("--precision", &precision, "auto|fp32|tf32|bf16",
                "GEMM arithmetic (default auto: cpu fp32, cuda tf32); --resume needs the same"),
        {0},
    };
    int rc = cli_parse(me, opts, argc, argv);
    if (rc != CLI_GO) return rc;
    if (backend_precision_parse(precision) == -2) { /* before the dataset: arguments first */
        cli_error(me, "precision = %s: use auto, fp32, tf32 or bf16", precision);
        return 2;
    }
    if (no_flip) o.flip = 0;
    o.schedule = linear == 0 ? BETAS_LINEAR : BETAS_SCALED_LINEAR;
    o.prediction = v_pred == 0 ? PRED_V : PRED_EPSILON;
    o.time_limit_s = minutes * 60.0;
    char err[1024];
    PtDataset d;
    if (pt_dataset_load(&d, data, err, sizeof err) != 0) {
        cli_error(me, "%s", err);
        return 2;
    }
    Backend *be = backend_open(device, err, sizeof err);
    if (!be) {
        cli_error(me, "%s", err);
        pt_dataset_free(&d);
        return 2;
    }
    if (backend_set_precision(be, precision, err, sizeof err) != 0) {
        cli_error(me, "%s", err);
        backend_destroy(be);
        pt_dataset_free(&d);
        return 2;
    }
    PretrainCallbacks cb = {.user = NULL, .progress = on_progress, .log = on_log};
    rc = pretrain_run(&d, &o, be, &cb, err, sizeof err);
    if (rc < 0) cli_error(me, "%s", err);
    backend_destroy(be);
    pt_dataset_free(&d);
    return rc < 0 ? 1 : 0;
}

const CliCommand cli_pretrain = {
    "pretrain", run,
    "[--data FILE] [--out DIR] [--steps N] [--batch B] [--lr LR] [--seed S]\n"
    "[--resume | --init-from DIR] [--time-limit MINUTES] [--warmup N]\n"
    "[--lr-min FRACTION] [--weight-decay W] [--clip NORM] [--cfg-drop P] [--no-flip]\n"
    "[--ema DECAY] [--checkpoint-every N] [--stop-after STEP] [--print-every N]\n"
    "[--sample-every N] [--sample-steps N] [--schedule linear|scaled_linear]\n"
    "[--prediction v|epsilon] [--device auto|cpu|cuda] [--precision auto|fp32|tf32|bf16]",
    NULL,
    "Train the built-in tiny model (UNet and text encoder jointly) from scratch: v or epsilon\n"
    "loss on DDPM's linear schedule by default (both go to OUT/scheduler_config.json), AdamW\n"
    "with warm-up and cosine decay, global-norm clipping, 10% empty-prompt dropout for\n"
    "guidance, flips. Writes OUT/unet.safetensors and OUT/text_encoder.safetensors (what\n"
    "--model tiny loads), OUT/checkpoint.safetensors (--resume continues exactly with the same\n"
    "options), OUT/pretrain_log.csv and OUT/samples/step_N.png. Build the data with\n"
    "tools/build-emoji-dataset.sh.",
};

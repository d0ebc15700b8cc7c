/* cli_info.c — `krona-studio info`: base and trainable parameter tables for a
 * model architecture and an adapter spec: the adapter census (shapes only, no
 * weights needed, so it works for SD 1.5 and SDXL on any machine) as text. */
#include "cli.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "models/adapter_census.h"
#include "models/checkpoint.h"
#include "models/model.h"
#include "models/text_encoder.h"
#include "models/unet.h"


/* --text-encoder: the adapters text_encoder_adapters = 1 adds, per encoder
 * (model_text_configs: a built-in's or a checkpoint's by its kind, a folder's
 * configs). */
static int print_text_census(const char *model, const AdapterSpec *spec, int print) {
    TextConfig tc[2];
    const char *label[2] = {"text encoder", "text encoder 2"};
    char err[512];
    int n = model_text_configs(model, tc, err, sizeof err);
    if (n <= 0) {
        cli_error(&cli_info, "--text-encoder: %s", err);
        return 2;
    }
    int64_t total = 0;
    if (print) printf("\n");
    for (int i = 0; i < n; i++) {
        int64_t t = adapter_census_text(&tc[i], spec, err, sizeof err);
        if (t < 0) {
            cli_error(&cli_info, "%s: %s", label[i], err);
            return 2;
        }
        char b[32];
        fmt_thousands(t, b, sizeof b);
        if (print) printf("%-16s %6d %-22s %31s\n", label[i], 4 * tc[i].num_hidden_layers, "attention q/k/v/out", b);
        total += t;
    }
    if (!print) return 0;
    char b[32];
    fmt_thousands(total, b, sizeof b);
    printf("text encoder adapters:  %s trainable (text_encoder_adapters = 1)\n", b);
    return 0;
}

static int run(int argc, char **argv) {
    const CliCommand *me = &cli_info;
    const char *model = "tiny";
    AdapterSpec spec = {0};
    spec.kind = ADAPTER_KRONA;
    spec.a1 = 4;
    spec.a2 = 4;
    int all = 0, text = 0, ffn = 0, rank = 0;
    CliOpt opts[] = {
        cli_str("--model", &model, "M", "tiny (default), sd15, sdxl, a diffusers folder, a config.json or a "
                ".safetensors checkpoint (its header only)"),
        cli_int("--a1", &spec.a1, "N", 1, INT_MAX, "KronA: A is a1 x a2 (default 4)"),
        cli_int("--a2", &spec.a2, "N", 1, INT_MAX, "(default 4)"),
        cli_int("--lora-rank", &rank, "R", 1, INT_MAX, "LoRA of rank R instead of KronA"),
        cli_choice("--modules", &ffn, "attn|attn+ffn", "which layers get adapters (default attn)"),
        cli_flag("--all", &all, 1, "list every adapted layer"),
        cli_flag("--text-encoder", &text, 1, "also the text encoder adapters (text_encoder_adapters = 1)"),
        {0},
    };
    int prc = cli_parse(me, opts, argc, argv);
    if (prc != CLI_GO) return prc;
    const char *modules = ffn ? "attn+ffn" : "attn";
    if (rank > 0) {
        spec.kind = ADAPTER_LORA;
        spec.rank = rank;
    }
    spec.modules = ADAPT_ATTN | (ffn ? ADAPT_FFN : 0);
    spec.alpha = spec.kind == ADAPTER_LORA ? (float)spec.rank : 1.0f;

    char err[1024];
    UNetConfig cfg;
    if (checkpoint_is_file(model)) {
        /* a single-file checkpoint: what it is and its parts, from the header */
        CheckpointInfo ci;
        if (checkpoint_inspect(model, &ci, err, sizeof err) != 0) {
            cli_error(me, "%s", err);
            return 2;
        }
        const char *part[4] = {"UNet", "VAE", "text encoder", "text encoder 2"};
        printf("checkpoint %s\n  %s\n", model, ci.desc);
        for (int p = 0; p < 4; p++) {
            if (!ci.params[p]) continue;
            char b[32];
            fmt_thousands(ci.params[p], b, sizeof b);
            printf("  %-15s %15s parameters\n", part[p], b);
        }
        if (ci.params[CONVERT_UNET] != ci.arch_unet_params) {
            char b[32];
            fmt_thousands(ci.arch_unet_params, b, sizeof b);
            printf("  note: the %s architecture has %s UNet parameters; this file's UNet is another "
                   "size, so the table below is the standard architecture's\n", ci.unet.name, b);
        }
        printf("\n");
        cfg = ci.unet;
    } else if (model_unet_config(model, &cfg, err, sizeof err) != 0) {
        cli_error(me, "%s", err);
        return 2;
    }
    AdapterCensus c;
    if (adapter_census(&cfg, &spec, &c) != 0) {
        cli_error(me, "cannot build the parameter table for %s", model);
        adapter_census_free(&c);
        return 2;
    }
    /* every selected layer checked first: one clear error, no partial table */
    if (!c.ok) {
        cli_error(me, "%s", c.err);
        adapter_census_free(&c);
        return 2;
    }

    /* the text encoders checked too before anything is printed */
    if (text && print_text_census(model, &spec, 0) != 0) {
        adapter_census_free(&c);
        return 2;
    }
    char b1[32], b2[32], b3[32];
    if (all) {
        printf("%-72s %11s %14s %12s\n", "layer", "d_out x d_in", "base", "trainable");
        for (int i = 0; i < c.n_layers; i++) {
            const AdapterCensusLayer *l = &c.layers[i];
            char dims[32];
            snprintf(dims, sizeof dims, "%dx%d", l->d_out, l->d_in);
            fmt_thousands(l->base, b1, sizeof b1);
            fmt_thousands(l->trainable, b2, sizeof b2);
            printf("%-72s %11s %14s %12s\n", l->name, dims, b1, b2);
        }
    }
    if (spec.kind == ADAPTER_KRONA)
        printf("model %s  adapter KronA a1=%d a2=%d  modules %s\n\n", cfg.name, spec.a1, spec.a2, modules);
    else
        printf("model %s  adapter LoRA rank %d  modules %s\n\n", cfg.name, spec.rank, modules);
    printf("%-16s %6s %-22s %16s %14s\n", "module", "layers", "d_out x d_in", "base params", "trainable");
    for (int j = 0; j < c.n_groups; j++) {
        const AdapterCensusGroup *g = &c.groups[j];
        char dims[48];
        snprintf(dims, sizeof dims, "%d..%d x %d..%d", g->d_out_min, g->d_out_max, g->d_in_min,
                 g->d_in_max);
        fmt_thousands(g->base, b1, sizeof b1);
        fmt_thousands(g->trainable, b2, sizeof b2);
        printf("%-16s %6d %-22s %16s %14s\n", g->kind, g->layers, dims, b1, b2);
    }
    fmt_thousands(c.adapted_base, b1, sizeof b1);
    fmt_thousands(c.trainable, b2, sizeof b2);
    printf("%-16s %6d %-22s %16s %14s\n", "adapted total", c.n_layers, "", b1, b2);
    fmt_thousands(c.base, b3, sizeof b3);
    printf("\nbase UNet parameters:  %s\n", b3);
    printf("trainable parameters:  %s  (%.4f%% of the UNet)\n", b2,
           100.0 * (double)c.trainable / (double)c.base);
    int rc = text ? print_text_census(model, &spec, 1) : 0;
    adapter_census_free(&c);
    return rc;
}

const CliCommand cli_info = {
    "info", run,
    "[--model tiny|sd15|sdxl|DIR|config.json|FILE.safetensors] [--a1 N --a2 N]\n"
    "[--modules attn|attn+ffn] [--lora-rank R] [--all] [--text-encoder]",
    NULL,
    "Print the base and trainable parameter counts per adapted module type and in total.\n"
    "Needs no weights: a .safetensors checkpoint is read for its header only (its kind and\n"
    "parts are printed too).",
};

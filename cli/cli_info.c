/* cli_info.c — `krona-studio info`: base and trainable parameter tables for a
 * model architecture and an adapter spec, computed from shapes only (no
 * weights needed, so it works for SD 1.5 and SDXL on any machine). */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "models/unet.h"


/* The projection a linear is (attn1.to_q, ff.net.2, ...): the name's tail. */
static const char *kind_of(const char *name) {
    const char *p = strstr(name, "attn1.");
    if (!p) p = strstr(name, "attn2.");
    if (!p) p = strstr(name, "ff.");
    return p ? p : name;
}

int cmd_info(int argc, char **argv) {
    const char *model = "tiny", *modules = "attn";
    AdapterSpec spec = {0};
    spec.kind = ADAPTER_KRONA;
    spec.a1 = 4;
    spec.a2 = 4;
    int all = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *iv = NULL;
        if (!strcmp(a, "--model") && v) { model = v; i++; continue; }
        if (!strcmp(a, "--modules") && v) { modules = v; i++; continue; }
        if (!strcmp(a, "--all")) { all = 1; continue; }
        if (!strcmp(a, "--a1")) iv = &spec.a1;
        else if (!strcmp(a, "--a2")) iv = &spec.a2;
        else if (!strcmp(a, "--lora-rank")) { iv = &spec.rank; spec.kind = ADAPTER_LORA; }
        else { fprintf(stderr, "krona-studio info: unknown option '%s' (see krona-studio --help)\n", a); return 2; }
        if (!v || cli_parse_int(v, iv) != 0 || *iv < 1) {
            fprintf(stderr, "krona-studio info: %s needs a positive integer\n", a);
            return 2;
        }
        i++;
    }
    if (strcmp(modules, "attn") && strcmp(modules, "attn+ffn")) {
        fprintf(stderr, "krona-studio info: --modules %s: use attn or attn+ffn\n", modules);
        return 2;
    }
    spec.modules = ADAPT_ATTN | (strcmp(modules, "attn+ffn") == 0 ? ADAPT_FFN : 0);
    spec.alpha = spec.kind == ADAPTER_LORA ? (float)spec.rank : 1.0f;

    char err[512];
    UNetConfig cfg;
    if (unet_config_resolve(model, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "krona-studio info: %s\n", err);
        return 2;
    }
    UNetParam *params;
    UNetLinear *lin;
    int np, nl;
    if (unet_param_table(&cfg, &params, &np, &lin, &nl) != 0) {
        fprintf(stderr, "krona-studio info: cannot build the parameter table for %s\n", model);
        return 2;
    }
    int64_t base = 0;
    for (int i = 0; i < np; i++) base += params[i].numel;

    /* check every selected layer first: one clear error, no partial table */
    for (int i = 0; i < nl; i++) {
        if (!adapter_selects(&spec, lin[i].is_attn, lin[i].is_ffn)) continue;
        if (adapter_check(&spec, lin[i].name, lin[i].d_out, lin[i].d_in, err, sizeof err) != 0) {
            fprintf(stderr, "krona-studio info: %s\n", err);
            free(params);
            free(lin);
            return 2;
        }
    }

    /* group by projection kind */
    enum { MAXK = 16 };
    struct { const char *kind; int count; int64_t base, train; int d_out_min, d_out_max, d_in_min, d_in_max; } g[MAXK];
    int ng = 0;
    int64_t adapted_base = 0, trainable = 0;
    int n_adapted = 0;
    char b1[32], b2[32], b3[32];
    if (all) printf("%-72s %11s %14s %12s\n", "layer", "d_out x d_in", "base", "trainable");
    for (int i = 0; i < nl; i++) {
        if (!adapter_selects(&spec, lin[i].is_attn, lin[i].is_ffn)) continue;
        int64_t tp = adapter_param_count(&spec, lin[i].d_out, lin[i].d_in);
        int64_t bp = (int64_t)lin[i].d_out * lin[i].d_in;
        adapted_base += bp;
        trainable += tp;
        n_adapted++;
        if (all) {
            char dims[32];
            snprintf(dims, sizeof dims, "%dx%d", lin[i].d_out, lin[i].d_in);
            fmt_thousands(bp, b1, sizeof b1);
            fmt_thousands(tp, b2, sizeof b2);
            printf("%-72s %11s %14s %12s\n", lin[i].name, dims, b1, b2);
        }
        const char *k = kind_of(lin[i].name);
        int j = 0;
        while (j < ng && strcmp(g[j].kind, k)) j++;
        if (j == ng && ng < MAXK) {
            g[ng].kind = k;
            g[ng].count = 0;
            g[ng].base = g[ng].train = 0;
            g[ng].d_out_min = g[ng].d_in_min = 1 << 30;
            g[ng].d_out_max = g[ng].d_in_max = 0;
            ng++;
        }
        if (j < ng) {
            g[j].count++;
            g[j].base += bp;
            g[j].train += tp;
            if (lin[i].d_out < g[j].d_out_min) g[j].d_out_min = lin[i].d_out;
            if (lin[i].d_out > g[j].d_out_max) g[j].d_out_max = lin[i].d_out;
            if (lin[i].d_in < g[j].d_in_min) g[j].d_in_min = lin[i].d_in;
            if (lin[i].d_in > g[j].d_in_max) g[j].d_in_max = lin[i].d_in;
        }
    }
    if (spec.kind == ADAPTER_KRONA)
        printf("model %s  adapter KronA a1=%d a2=%d  modules %s\n\n", cfg.name, spec.a1, spec.a2, modules);
    else
        printf("model %s  adapter LoRA rank %d  modules %s\n\n", cfg.name, spec.rank, modules);
    printf("%-16s %6s %-22s %16s %14s\n", "module", "layers", "d_out x d_in", "base params", "trainable");
    for (int j = 0; j < ng; j++) {
        char dims[48];
        snprintf(dims, sizeof dims, "%d..%d x %d..%d", g[j].d_out_min, g[j].d_out_max, g[j].d_in_min,
                 g[j].d_in_max);
        fmt_thousands(g[j].base, b1, sizeof b1);
        fmt_thousands(g[j].train, b2, sizeof b2);
        printf("%-16s %6d %-22s %16s %14s\n", g[j].kind, g[j].count, dims, b1, b2);
    }
    fmt_thousands(adapted_base, b1, sizeof b1);
    fmt_thousands(trainable, b2, sizeof b2);
    printf("%-16s %6d %-22s %16s %14s\n", "adapted total", n_adapted, "", b1, b2);
    fmt_thousands(base, b3, sizeof b3);
    printf("\nbase UNet parameters:  %s\n", b3);
    printf("trainable parameters:  %s  (%.4f%% of the UNet)\n", b2, 100.0 * (double)trainable / (double)base);
    free(params);
    free(lin);
    return 0;
}

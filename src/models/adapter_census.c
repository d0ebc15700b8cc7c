/* adapter_census.c — base, adapted and trainable parameter counts of an adapter
 * spec on a UNet architecture, per layer and per projection, and which factor
 * a spec that does not fit gets wrong. */
#include "models/adapter_census.h"
#include "models/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The projection a linear is (attn1.to_q, ff.net.2, ...): the name's tail. */
static const char *kind_of(const char *name) {
    const char *p = strstr(name, "attn1.");
    if (!p) p = strstr(name, "attn2.");
    if (!p) p = strstr(name, "ff.");
    return p ? p : name;
}

static void add_to_group(AdapterCensus *c, const AdapterCensusLayer *l) {
    const char *k = kind_of(l->name);
    int j = 0;
    while (j < c->n_groups && strcmp(c->groups[j].kind, k)) j++;
    if (j == c->n_groups) {
        if (j == ADAPTER_CENSUS_MAX_GROUPS) return;
        AdapterCensusGroup *g = &c->groups[c->n_groups++];
        memset(g, 0, sizeof *g);
        snprintf(g->kind, sizeof g->kind, "%s", k);
        g->d_out_min = g->d_in_min = 1 << 30;
    }
    AdapterCensusGroup *g = &c->groups[j];
    g->layers++;
    g->base += l->base;
    g->trainable += l->trainable;
    if (l->d_out < g->d_out_min) g->d_out_min = l->d_out;
    if (l->d_out > g->d_out_max) g->d_out_max = l->d_out;
    if (l->d_in < g->d_in_min) g->d_in_min = l->d_in;
    if (l->d_in > g->d_in_max) g->d_in_max = l->d_in;
}

int adapter_census_table(const UNetParam *params, int n_params, const UNetLinear *linears,
                         int n_linears, const AdapterSpec *spec, AdapterCensus *c) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < n_params; i++) c->base += params[i].numel;
    int n = 0;
    for (int i = 0; i < n_linears; i++) n += adapter_selects(spec, linears[i].is_attn, linears[i].is_ffn);
    c->layers = calloc((size_t)(n > 0 ? n : 1), sizeof *c->layers);
    if (!c->layers) {
        snprintf(c->err, sizeof c->err, "out of host memory");
        return -1;
    }
    c->ok = 1;
    for (int i = 0; i < n_linears; i++) {
        const UNetLinear *l = &linears[i];
        if (!adapter_selects(spec, l->is_attn, l->is_ffn)) continue;
        AdapterCensusLayer *r = &c->layers[c->n_layers++];
        snprintf(r->name, sizeof r->name, "%s", l->name);
        r->d_out = l->d_out;
        r->d_in = l->d_in;
        r->base = (int64_t)l->d_out * l->d_in;
        AdapterFault f = adapter_fault(spec, l->name, l->d_out, l->d_in,
                                       c->ok ? c->err : NULL, sizeof c->err);
        r->trainable = f == ADAPTER_FITS ? adapter_param_count(spec, l->d_out, l->d_in) : -1;
        if (f != ADAPTER_FITS && c->ok) {
            c->ok = 0;
            c->fault = f;
            c->fault_value = f == ADAPTER_BAD_A1 ? spec->a1 : f == ADAPTER_BAD_A2 ? spec->a2
                           : f == ADAPTER_BAD_RANK ? spec->rank : (int)spec->kind;
            snprintf(c->fault_layer, sizeof c->fault_layer, "%s", l->name);
            c->fault_d_out = l->d_out;
            c->fault_d_in = l->d_in;
        }
    }
    for (int i = 0; c->ok && i < c->n_layers; i++) {
        c->adapted_base += c->layers[i].base;
        c->trainable += c->layers[i].trainable;
        add_to_group(c, &c->layers[i]);
    }
    return 0;
}

int adapter_census(const UNetConfig *cfg, const AdapterSpec *spec, AdapterCensus *c) {
    UNetParam *params = NULL;
    UNetLinear *lin = NULL;
    int np = 0, nl = 0;
    if (unet_param_table(cfg, &params, &np, &lin, &nl) != 0) {
        memset(c, 0, sizeof *c);
        snprintf(c->err, sizeof c->err, "model %s: cannot build its parameter table", cfg->name);
        return -1;
    }
    int rc = adapter_census_table(params, np, lin, nl, spec, c);
    free(params);
    free(lin);
    return rc;
}

void adapter_census_free(AdapterCensus *c) {
    free(c->layers);
    c->layers = NULL;
    c->n_layers = 0;
}

int adapter_census_valid(const AdapterCensus *c, int *vals, int max) {
    if (c->fault != ADAPTER_BAD_A1 && c->fault != ADAPTER_BAD_A2) return 0;
    int cnt = 0;
    for (int v = 1; v <= ADAPTER_CENSUS_MAX_VALUE; v++) {
        int ok = 1;
        for (int j = 0; j < c->n_layers && ok; j++)
            ok = (c->fault == ADAPTER_BAD_A1 ? c->layers[j].d_out : c->layers[j].d_in) % v == 0;
        if (!ok) continue;
        if (cnt < max) vals[cnt] = v;
        cnt++;
    }
    return cnt;
}

int64_t adapter_census_text(const TextConfig *tc, const AdapterSpec *spec, char *err, size_t errlen) {
    int H = tc->hidden_size;
    int64_t total = 0;
    for (int i = 0; i < 4 * tc->num_hidden_layers; i++) {
        char name[96];
        te_adapter_name(i, name, sizeof name);
        if (adapter_fault(spec, name, H, H, err, errlen) != ADAPTER_FITS) return -1;
        total += adapter_param_count(spec, H, H);
    }
    return total;
}

int64_t adapter_census_text_model(const char *model, const AdapterSpec *spec, char *err,
                                  size_t errlen) {
    TextConfig tc[2];
    char e[512];
    int n = model_text_configs(model, tc, e, sizeof e);
    if (n <= 0) {
        snprintf(err, errlen, "%s", e);
        return -1;
    }
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        int64_t t = adapter_census_text(&tc[i], spec, e, sizeof e);
        if (t < 0) {
            snprintf(err, errlen, "text encoder%s: %s", i ? " 2" : "", e);
            return -1;
        }
        total += t;
    }
    return total;
}

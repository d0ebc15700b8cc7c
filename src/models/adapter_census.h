/* adapter_census.h — the one count of an adapter spec against a UNet
 * architecture, from shapes only (no weights: works for SD 1.5 and SDXL on any
 * machine). `krona-studio info` prints it, the studio's knobs show it (a bad
 * combination in red with the reason), training records its trainable count
 * and unet_attach_adapters refuses a spec it does not fit.
 *
 *   base          every UNet parameter
 *   adapted base  the weights of the linears the spec adapts (its modules)
 *   trainable     the adapter parameters: per adapted d_out x d_in linear
 *                 KronA a1*a2 + (d_out/a1)*(d_in/a2), LoRA rank*(d_in + d_out)
 *   layers        every adapted linear in table order (`info --all`)
 *   groups        the adapted linears by projection (attn1.to_q, ff.net.2, ...)
 *                 in order of first appearance (`info`'s rows)
 * A spec that does not fit names the first adapted layer (table order) it
 * fails, the factor at fault (a1 before a2) and why, in one line. */
#ifndef KRONA_ADAPTER_CENSUS_H
#define KRONA_ADAPTER_CENSUS_H

#include <stdint.h>

#include "models/adapter.h"
#include "models/text_encoder.h"
#include "models/unet.h"

enum { ADAPTER_CENSUS_MAX_GROUPS = 16,   /* projections beyond it count in the totals only */
       ADAPTER_CENSUS_MAX_VALUE = 4096 }; /* adapter_census_valid tries 1..this */

typedef struct AdapterCensusLayer {
    char name[UNET_NAME_MAX];    /* module name, "...attn1.to_q" */
    int d_out, d_in;
    int64_t base;                /* d_out * d_in */
    int64_t trainable;           /* its adapter's parameters; -1 where the spec does not fit */
} AdapterCensusLayer;

typedef struct AdapterCensusGroup {
    char kind[UNET_NAME_MAX];    /* the name's tail from attn1./attn2./ff.: "attn2.to_k" */
    int layers;
    int d_out_min, d_out_max, d_in_min, d_in_max;
    int64_t base, trainable;
} AdapterCensusGroup;

typedef struct AdapterCensus {
    int ok;                      /* the spec fits every adapted layer */
    int64_t base, adapted_base;
    int64_t trainable;           /* 0 when !ok */
    int n_layers;
    AdapterCensusLayer *layers;  /* [n_layers], malloc'ed: adapter_census_free */
    int n_groups;                /* groups: filled only when ok */
    AdapterCensusGroup groups[ADAPTER_CENSUS_MAX_GROUPS];
    /* when !ok */
    AdapterFault fault;          /* ADAPTER_BAD_A1 / _A2 / _RANK / _KIND */
    int fault_value;             /* the bad a1, a2 or rank as given */
    char fault_layer[UNET_NAME_MAX];
    int fault_d_out, fault_d_in; /* that layer's shape */
    char err[512];               /* one line: "a1=3 does not divide d_out=32 of <layer>" */
} AdapterCensus;

/* Census of spec on the architecture cfg (its unet_param_table). 0, with
 * c->ok saying whether the spec fits; -1 (c->err says why) when cfg has no
 * parameter table (an incomplete config) or memory ran out. Free with
 * adapter_census_free either way. */
int adapter_census(const UNetConfig *cfg, const AdapterSpec *spec, AdapterCensus *c);
/* The same on a table already at hand (a UNet's own params and linears). */
int adapter_census_table(const UNetParam *params, int n_params, const UNetLinear *linears,
                         int n_linears, const AdapterSpec *spec, AdapterCensus *c);
void adapter_census_free(AdapterCensus *c);

/* Text-encoder adapters (preset text_encoder_adapters = 1): the attention
 * projections q, k, v, out of every layer, each hidden x hidden
 * (te_attach_adapters). Their trainable parameters, or -1 with a one-line err
 * naming the first layer the spec does not fit. */
int64_t adapter_census_text(const TextConfig *tc, const AdapterSpec *spec, char *err, size_t errlen);

/* The same for every text encoder of a model spec (model_text_configs: tiny's,
 * SD 1.x's, SDXL's two, a folder's), summed: what text_encoder_adapters = 1
 * adds to the trainable count. -1 with one line when the spec has no text
 * encoder ("...: no text encoder"), a config cannot be read, or the spec does
 * not fit a layer ("text encoder 2: a1=3 does not divide ..."). */
int64_t adapter_census_text_model(const char *model, const AdapterSpec *spec, char *err,
                                  size_t errlen);

/* When c->fault is ADAPTER_BAD_A1 or _A2: the values 1..ADAPTER_CENSUS_MAX_VALUE
 * of that factor that divide every adapted layer (d_out for a1, d_in for a2),
 * ascending, at most max of them into vals; returns how many there are (0 for
 * other faults). */
int adapter_census_valid(const AdapterCensus *c, int *vals, int max);

#endif

/* knobs.c — the Knobs panel's fields (formatting, +/- steps through
 * preset_set so the preset's own range checks apply) and the live
 * trainable-parameter count: the adapter census `krona-studio info` prints. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/adapter_census.h"
#include "core/fsutil.h"
#include "studio.h"
#include "models/model.h"
#include "models/unet.h"

static const struct { const char *label, *key; } KNOBS[N_KNOBS] = {
    [KNOB_MODEL] = {"model", "model.model"},
    [KNOB_ADAPTER] = {"adapter", "adapter.adapter"},
    [KNOB_A1] = {"a1", "adapter.a1"},
    [KNOB_A2] = {"a2", "adapter.a2"},
    [KNOB_RANK] = {"LoRA rank", "adapter.lora_rank"},
    [KNOB_MODULES] = {"modules", "adapter.modules"},
    [KNOB_TEXT_ENCODER] = {"text encoder", "adapter.text_encoder_adapters"},
    [KNOB_LR] = {"learning rate", "train.lr"},
    [KNOB_ITERS] = {"iterations", "train.iterations"},
    [KNOB_BATCH] = {"batch", "train.batch"},
    [KNOB_SEED] = {"seed", "train.seed"},
    [KNOB_RES] = {"resolution", "data.resolution"},
    [KNOB_BUCKETS] = {"buckets", "data.buckets"},
    [KNOB_SAMPLE_EVERY] = {"sample every", "sample.sample_every"},
    [KNOB_SAMPLE_STEPS] = {"sampler steps", "sample.sample_steps"},
    [KNOB_GUIDANCE] = {"guidance", "sample.guidance"},
    [KNOB_PRECISION] = {"precision", "model.precision"},
    [KNOB_OUTPUT] = {"output dir", "output.output_dir"},
};

const char *knob_label(int k) { return k >= 0 && k < N_KNOBS ? KNOBS[k].label : "?"; }
const char *knob_key(int k) { return k >= 0 && k < N_KNOBS ? KNOBS[k].key : "?"; }

void knob_format(const Preset *p, int k, char *out, size_t n) {
    switch (k) {
    case KNOB_MODEL: snprintf(out, n, "%s", p->model); break;
    case KNOB_ADAPTER: snprintf(out, n, "%s", p->adapter); break;
    case KNOB_A1: snprintf(out, n, "%d", p->a1); break;
    case KNOB_A2: snprintf(out, n, "%d", p->a2); break;
    case KNOB_RANK: snprintf(out, n, "%d", p->lora_rank); break;
    case KNOB_MODULES: snprintf(out, n, "%s", p->modules); break;
    case KNOB_TEXT_ENCODER: snprintf(out, n, "%s", p->text_encoder_adapters ? "on" : "off"); break;
    case KNOB_LR: snprintf(out, n, "%g", p->lr); break;
    case KNOB_ITERS: snprintf(out, n, "%d", p->iterations); break;
    case KNOB_BATCH: snprintf(out, n, "%d", p->batch); break;
    case KNOB_SEED: snprintf(out, n, "%llu", p->seed); break;
    case KNOB_RES: snprintf(out, n, "%d", p->resolution); break;
    case KNOB_BUCKETS: snprintf(out, n, "%s", p->buckets ? "on" : "off"); break;
    case KNOB_SAMPLE_EVERY: snprintf(out, n, "%d", p->sample_every); break;
    case KNOB_SAMPLE_STEPS: snprintf(out, n, "%d", p->sample_steps); break;
    case KNOB_GUIDANCE: snprintf(out, n, "%g", p->guidance); break;
    case KNOB_PRECISION: snprintf(out, n, "%s", p->precision); break;
    case KNOB_OUTPUT: snprintf(out, n, "%s", p->output_dir); break;
    default: snprintf(out, n, "?");
    }
}

static int set_text(Preset *p, int k, const char *v, char *err, size_t errlen) {
    char a[PRESET_PATH_MAX + 64];
    snprintf(a, sizeof a, "%s=%s", knob_key(k), v);
    return preset_set(p, a, err, errlen);
}

static int step_int(Preset *p, int k, long long v, char *err, size_t errlen) {
    char b[32];
    snprintf(b, sizeof b, "%lld", v);
    return set_text(p, k, b, err, errlen);
}

/* lr moves by one unit of its leading digit (6e-4 -> 7e-4), shift by x10 */
static float lr_step(float lr, int dir, int big) {
    if (big) return dir > 0 ? lr * 10.0f : lr / 10.0f;
    double d = pow(10.0, floor(log10((double)lr) + 1e-9));
    double v = lr + dir * d;
    if (v <= 0 || (dir < 0 && v < d * 0.999)) v = lr - d / 10.0;
    char b[32];
    snprintf(b, sizeof b, "%.2g", v);   /* no 6.999e-4 drift */
    return strtof(b, NULL);
}

int knob_step(Preset *p, int k, int dir, int big, char *err, size_t errlen) {
    Preset q = *p;
    int rc = 0;
    char b[64];
    switch (k) {
    case KNOB_MODEL: {
        static const char *m[] = {"tiny", "sd15", "sdxl"};
        int i = 0;
        while (i < 3 && strcmp(p->model, m[i])) i++;
        i = i == 3 ? 0 : (i + (dir > 0 ? 1 : 2)) % 3;
        rc = set_text(&q, k, m[i], err, errlen);
        break;
    }
    case KNOB_ADAPTER: rc = set_text(&q, k, strcmp(p->adapter, "krona") ? "krona" : "lora", err, errlen); break;
    case KNOB_MODULES: rc = set_text(&q, k, strcmp(p->modules, "attn") ? "attn" : "attn+ffn", err, errlen); break;
    case KNOB_TEXT_ENCODER: {
        TextConfig tc[2];
        char why[256];
        if (!p->text_encoder_adapters && model_text_configs(p->model, tc, why, sizeof why) <= 0) {
            snprintf(err, errlen, "text encoder adapters cannot apply: %s", why);
            return -1;
        }
        rc = set_text(&q, k, p->text_encoder_adapters ? "0" : "1", err, errlen);
        break;
    }
    case KNOB_A1: case KNOB_A2: case KNOB_RANK: {
        int v = k == KNOB_A1 ? p->a1 : k == KNOB_A2 ? p->a2 : p->lora_rank;
        v = big ? (dir > 0 ? v * 2 : v / 2) : v + dir;
        if (v < 1) { snprintf(err, errlen, "%s: at least 1", knob_label(k)); return -1; }
        rc = step_int(&q, k, v, err, errlen);
        break;
    }
    case KNOB_LR:
        snprintf(b, sizeof b, "%g", lr_step(p->lr, dir, big));
        rc = set_text(&q, k, b, err, errlen);
        break;
    case KNOB_ITERS: {
        long long v = p->iterations + (long long)dir * (big ? 500 : 50);
        if (p->iterations < 50 && !big) v = p->iterations + dir * 10;
        rc = step_int(&q, k, v < 1 ? 1 : v, err, errlen);
        break;
    }
    case KNOB_BATCH: rc = step_int(&q, k, p->batch + dir * (big ? 4 : 1), err, errlen); break;
    case KNOB_SEED: rc = step_int(&q, k, (long long)p->seed + dir * (big ? 100 : 1) < 0 ? 0 : (long long)p->seed + dir * (big ? 100 : 1), err, errlen); break;
    case KNOB_RES: rc = step_int(&q, k, p->resolution + dir * (big ? 32 : 8), err, errlen); break;
    case KNOB_BUCKETS: rc = step_int(&q, k, !p->buckets, err, errlen); break;
    case KNOB_SAMPLE_EVERY: {
        long long v = p->sample_every + dir * (big ? 100 : 10);
        rc = step_int(&q, k, v < 0 ? 0 : v, err, errlen);
        break;
    }
    case KNOB_SAMPLE_STEPS: rc = step_int(&q, k, p->sample_steps + dir * (big ? 10 : 1), err, errlen); break;
    case KNOB_GUIDANCE:
        snprintf(b, sizeof b, "%g", p->guidance + dir * (big ? 2.5 : 0.5));
        rc = set_text(&q, k, b, err, errlen);
        break;
    case KNOB_PRECISION: { /* the device says at the start of training whether it has the mode */
        static const char *m[] = {"auto", "fp32", "tf32", "bf16"};
        int i = 0;
        while (i < 4 && strcmp(p->precision, m[i])) i++;
        i = i == 4 ? 0 : (i + (dir > 0 ? 1 : 3)) % 4;
        rc = set_text(&q, k, m[i], err, errlen);
        break;
    }
    default:
        snprintf(err, errlen, "%s: press Enter to edit", knob_label(k));
        return -1;
    }
    if (rc == 0) *p = q;
    return rc;
}


/* The knob to turn red for a spec the census refuses. */
static int knob_of_fault(AdapterFault f) {
    switch (f) {
    case ADAPTER_BAD_A1: return KNOB_A1;
    case ADAPTER_BAD_A2: return KNOB_A2;
    case ADAPTER_BAD_RANK: return KNOB_RANK;
    default: return KNOB_ADAPTER;
    }
}

void params_count(const Preset *p, ParamCount *out) {
    memset(out, 0, sizeof *out);
    out->bad_knob = -1;
    char cerr[256];
    if (model_cell_of(p->model, &out->cell, cerr, sizeof cerr) != 0) out->cell = 0;
    UNetConfig cfg;
    if (model_unet_config(p->model, &cfg, out->err, sizeof out->err) != 0) {
        out->bad_knob = KNOB_MODEL;
        return;
    }
    TextConfig tc[2];
    if (model_text_configs(p->model, tc, out->te_na, sizeof out->te_na) > 0) out->te_na[0] = 0;
    else if (!out->te_na[0]) snprintf(out->te_na, sizeof out->te_na, "no text encoder known");
    AdapterSpec spec;
    train_adapter_spec(p, &spec);
    AdapterCensus c;
    if (adapter_census(&cfg, &spec, &c) != 0) {
        snprintf(out->err, sizeof out->err, "model %s: cannot build its parameter table", p->model);
        out->bad_knob = KNOB_MODEL;
        adapter_census_free(&c);
        return;
    }
    out->base = c.base;
    out->ok = c.ok;
    if (c.ok) {
        out->trainable = c.trainable;
    } else {
        snprintf(out->err, sizeof out->err, "%s", c.err);
        out->bad_knob = knob_of_fault(c.fault);
    }
    adapter_census_free(&c);
    if (!out->ok || !p->text_encoder_adapters) return;
    char e[256];
    int64_t te = out->te_na[0] ? -1 : adapter_census_text_model(p->model, &spec, e, sizeof e);
    if (te < 0) {
        snprintf(out->err, sizeof out->err, "text encoder adapters: %s", out->te_na[0] ? out->te_na : e);
        out->ok = 0;
        out->trainable = 0;
        out->bad_knob = KNOB_TEXT_ENCODER;
        return;
    }
    out->te_trainable = te;
    out->trainable += te;
}

int knob_image_bucket(const Preset *p, const ParamCount *pc, int w, int h, BucketSize *out) {
    char err[256];
    if (!p->buckets || pc->cell <= 0 || train_check_sizes(p, pc->cell, err, sizeof err) != 0)
        return -1; /* training refuses it: the image shows its size alone */
    return bucket_for_image(p->resolution, train_bucket_step(p, pc->cell), w, h, out);
}

/* adapter.c — KronA and LoRA updates on frozen linears, their init, counts,
 * merge and .safetensors export/import (LyCORIS LoKr / kohya LoRA key names). */
#include "models/adapter.h"
#include "core/fsutil.h"
#include "formats/json.h"
#include "core/rng.h"
#include "formats/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t adapter_numel_A(const Adapter *a) {
    return a->kind == ADAPTER_KRONA ? (int64_t)a->a1 * a->a2 : (int64_t)a->rank * a->d_in;
}
int64_t adapter_numel_B(const Adapter *a) {
    return a->kind == ADAPTER_KRONA ? (int64_t)a->b1 * a->b2 : (int64_t)a->d_out * a->rank;
}

int64_t adapter_param_count(const AdapterSpec *s, int d_out, int d_in) {
    if (s->kind == ADAPTER_KRONA) {
        if (s->a1 <= 0 || s->a2 <= 0 || d_out % s->a1 || d_in % s->a2) return -1;
        return (int64_t)s->a1 * s->a2 + (int64_t)(d_out / s->a1) * (d_in / s->a2);
    }
    if (s->kind == ADAPTER_LORA) {
        if (s->rank <= 0) return -1;
        return (int64_t)s->rank * (d_in + d_out);
    }
    return 0;
}

AdapterFault adapter_fault(const AdapterSpec *s, const char *layer, int d_out, int d_in,
                           char *err, size_t errlen) {
    if (s->kind == ADAPTER_KRONA) {
        if (s->a1 <= 0 || d_out % s->a1) {
            err_set(err, errlen, "a1=%d does not divide d_out=%d of %s", s->a1, d_out, layer);
            return ADAPTER_BAD_A1;
        }
        if (s->a2 <= 0 || d_in % s->a2) {
            err_set(err, errlen, "a2=%d does not divide d_in=%d of %s", s->a2, d_in, layer);
            return ADAPTER_BAD_A2;
        }
        return ADAPTER_FITS;
    }
    if (s->kind == ADAPTER_LORA) {
        int mx = d_out < d_in ? d_out : d_in;
        if (s->rank <= 0 || s->rank > mx) {
            err_set(err, errlen, "LoRA rank=%d must be between 1 and %d for %s [%d x %d]", s->rank,
                    mx, layer, d_out, d_in);
            return ADAPTER_BAD_RANK;
        }
        return ADAPTER_FITS;
    }
    if (s->kind == ADAPTER_NONE) return ADAPTER_FITS;
    err_set(err, errlen, "unknown adapter kind %d for %s", (int)s->kind, layer);
    return ADAPTER_BAD_KIND;
}

const char *adapter_fault_name(AdapterFault f) {
    switch (f) {
    case ADAPTER_BAD_A1: return "a1";
    case ADAPTER_BAD_A2: return "a2";
    case ADAPTER_BAD_RANK: return "rank";
    case ADAPTER_BAD_KIND: return "kind";
    default: return "";
    }
}

int adapter_check(const AdapterSpec *s, const char *layer, int d_out, int d_in, char *err,
                  size_t errlen) {
    return adapter_fault(s, layer, d_out, d_in, err, errlen) == ADAPTER_FITS ? 0 : -1;
}

int adapter_selects(const AdapterSpec *s, int is_attn, int is_ffn) {
    if (s->kind == ADAPTER_NONE) return 0;
    return ((s->modules & ADAPT_ATTN) && is_attn) || ((s->modules & ADAPT_FFN) && is_ffn);
}

static float spec_scale(const AdapterSpec *s) {
    if (s->kind == ADAPTER_LORA) return (s->alpha > 0 ? s->alpha : (float)s->rank) / (float)s->rank;
    return s->alpha > 0 ? s->alpha : 1.0f; /* KronA: alpha is a plain multiplier, 0 = 1 */
}

static int64_t pad16(int64_t n) { return (n + 15) & ~(int64_t)15; }

int adapter_init(Adapter *a, Backend *be, const AdapterSpec *s, const char *name, int d_out,
                 int d_in, uint64_t seed, char *err, size_t errlen) {
    memset(a, 0, sizeof *a);
    if (adapter_check(s, name, d_out, d_in, err, errlen)) return -1;
    if (s->kind == ADAPTER_NONE) {
        snprintf(err, errlen, "adapter kind none for %s", name);
        return -1;
    }
    snprintf(a->name, sizeof a->name, "%s", name);
    a->kind = s->kind; a->d_out = d_out; a->d_in = d_in;
    if (s->kind == ADAPTER_KRONA) {
        a->a1 = s->a1; a->a2 = s->a2; a->b1 = d_out / s->a1; a->b2 = d_in / s->a2;
    } else {
        a->rank = s->rank;
    }
    a->scale = spec_scale(s);
    int64_t na = pad16(adapter_numel_A(a)), nb = pad16(adapter_numel_B(a));
    /* one block: A, B, dA, dB, mA, vA, mB, vB */
    float *blk = be->alloc(be, (size_t)(4 * (na + nb)) * sizeof(float));
    if (!blk) {
        snprintf(err, errlen, "out of %s memory for adapter %s", be->name, name);
        return -1;
    }
    a->A = blk; a->B = blk + na;
    a->dA = a->B + nb; a->dB = a->dA + na;
    a->mA = a->dB + nb; a->vA = a->mA + na;
    a->mB = a->vA + na; a->vB = a->mB + nb;
    /* A (KronA) / down (LoRA): kaiming_uniform(a=sqrt(5)) as LyCORIS lokr_w1 and
     * peft lora_A, i.e. U(+-1/sqrt(fan_in)); B / up stay zero (be->alloc zero-fills) */
    int64_t n = adapter_numel_A(a);
    int fan_in = a->kind == ADAPTER_KRONA ? a->a2 : a->d_in;
    float *h = malloc((size_t)n * sizeof *h);
    if (!h) { be->free(be, blk); memset(a, 0, sizeof *a); snprintf(err, errlen, "out of host memory"); return -1; }
    Rng r;
    rng_seed(&r, seed);
    float bound = 1.0f / sqrtf((float)fan_in);
    rng_fill_uniform(&r, h, n, -bound, bound);
    be->upload(be, a->A, h, (size_t)n * sizeof *h);
    free(h);
    return 0;
}

void adapter_free(Adapter *a, Backend *be) {
    if (a->A) be->free(be, a->A);
    memset(a, 0, sizeof *a);
}

void adapter_set_free(AdapterSet *set) {
    if (set->items)
        for (int i = 0; i < set->n; i++) adapter_free(&set->items[i], set->be);
    free(set->items);
    set->items = NULL;
    set->n = 0;
}

int64_t adapter_set_param_count(const AdapterSet *set) {
    int64_t n = 0;
    for (int i = 0; i < set->n; i++) n += adapter_numel_A(&set->items[i]) + adapter_numel_B(&set->items[i]);
    return n;
}

int64_t adapter_scratch_floats(const Adapter *a, int64_t M) {
    return a->kind == ADAPTER_LORA ? 2 * M * a->rank : 0;
}

void adapter_fwd(Backend *be, const Adapter *a, const float *x, float *y, int64_t M, float *scratch) {
    if (a->kind == ADAPTER_KRONA) {
        be->kron_fwd(be, x, a->A, a->B, y, M, a->a1, a->a2, a->b1, a->b2, a->scale);
    } else if (a->kind == ADAPTER_LORA) {
        int r = a->rank;
        float *h = scratch;
        be->gemm(be, 0, 1, (int)M, r, a->d_in, 1.0f, x, a->d_in, a->A, a->d_in, 0.0f, h, r);
        be->gemm(be, 0, 1, (int)M, a->d_out, r, a->scale, h, r, a->B, r, 1.0f, y, a->d_out);
    }
}

void adapter_bwd(Backend *be, Adapter *a, const float *dy, const float *x, float *dx, int64_t M,
                 float *scratch) {
    if (a->kind == ADAPTER_KRONA) {
        be->kron_bwd(be, dy, x, a->A, a->B, dx, a->dA, a->dB, M, a->a1, a->a2, a->b1, a->b2,
                     a->scale);
    } else if (a->kind == ADAPTER_LORA) {
        int r = a->rank, m = (int)M;
        float *h = scratch, *dh = scratch + M * r;
        /* h = x down^T ; d up += s dy^T h ; dh = s dy up ; d down += dh^T x ; dx += dh down */
        be->gemm(be, 0, 1, m, r, a->d_in, 1.0f, x, a->d_in, a->A, a->d_in, 0.0f, h, r);
        be->gemm(be, 1, 0, a->d_out, r, m, a->scale, dy, a->d_out, h, r, 1.0f, a->dB, r);
        be->gemm(be, 0, 0, m, r, a->d_out, a->scale, dy, a->d_out, a->B, r, 0.0f, dh, r);
        be->gemm(be, 1, 0, r, a->d_in, m, 1.0f, dh, r, x, a->d_in, 1.0f, a->dA, a->d_in);
        if (dx) be->gemm(be, 0, 0, m, a->d_in, r, 1.0f, dh, r, a->A, a->d_in, 1.0f, dx, a->d_in);
    }
}

void adapter_merge_into(Backend *be, const Adapter *a, float *W, float *scratch) {
    (void)scratch; /* neither kind needs one: kept for backends that might */
    if (a->kind == ADAPTER_KRONA)
        be->kron_merge(be, a->A, a->B, W, a->a1, a->a2, a->b1, a->b2, a->scale);
    else if (a->kind == ADAPTER_LORA)
        be->gemm(be, 0, 0, a->d_out, a->d_in, a->rank, a->scale, a->B, a->rank, a->A, a->d_in, 1.0f,
                 W, a->d_in);
}

/* ------------------------------------------------------------------ files */

/* "lycoris_down_blocks_0_..._to_q" / "lora_unet_..." */
static void key_base(const Adapter *a, char *buf, size_t n) {
    snprintf(buf, n, "%s%s", a->kind == ADAPTER_KRONA ? "lycoris_" : "lora_unet_", a->name);
    size_t pre = a->kind == ADAPTER_KRONA ? 8 : 10;
    for (char *p = buf + pre; *p; p++) if (*p == '.') *p = '_';
}

static const char *kname(AdapterKind k) {
    return k == ADAPTER_KRONA ? "krona" : k == ADAPTER_LORA ? "lora" : "none";
}

static const char *mods_name(int m) {
    return m == (ADAPT_ATTN | ADAPT_FFN) ? "attn+ffn" : m == ADAPT_FFN ? "ffn" : "attn";
}

int adapter_set_save(const AdapterSet *set, const char *path, const char *metadata_json_extra,
                     char *err, size_t errlen) {
    Backend *be = set->be;
    StWriter *w = stw_create();
    if (!w) { snprintf(err, errlen, "out of host memory"); return -1; }
    int rc = -1;
    float *h = NULL;
    JsonValue *extra = NULL;
    int64_t mx = 1;
    for (int i = 0; i < set->n; i++) {
        if (adapter_numel_A(&set->items[i]) > mx) mx = adapter_numel_A(&set->items[i]);
        if (adapter_numel_B(&set->items[i]) > mx) mx = adapter_numel_B(&set->items[i]);
    }
    h = malloc((size_t)mx * sizeof *h);
    if (!h) { snprintf(err, errlen, "out of host memory"); goto out; }
    for (int i = 0; i < set->n; i++) {
        const Adapter *a = &set->items[i];
        char base[200], key[240];
        key_base(a, base, sizeof base);
        int64_t sa[2], sb[2];
        const char *ka, *kb;
        if (a->kind == ADAPTER_KRONA) {
            sa[0] = a->a1; sa[1] = a->a2; sb[0] = a->b1; sb[1] = a->b2;
            ka = "lokr_w1"; kb = "lokr_w2";
        } else {
            sa[0] = a->rank; sa[1] = a->d_in; sb[0] = a->d_out; sb[1] = a->rank;
            ka = "lora_down.weight"; kb = "lora_up.weight";
        }
        be->download(be, h, a->A, (size_t)adapter_numel_A(a) * sizeof *h);
        snprintf(key, sizeof key, "%s.%s", base, ka);
        if (stw_add_f32(w, key, 2, sa, h)) goto addfail;
        be->download(be, h, a->B, (size_t)adapter_numel_B(a) * sizeof *h);
        snprintf(key, sizeof key, "%s.%s", base, kb);
        if (stw_add_f32(w, key, 2, sb, h)) goto addfail;
        /* alpha: LoRA scale = alpha / rank (kohya); KronA: the scale itself */
        float alpha = a->kind == ADAPTER_LORA ? a->scale * (float)a->rank : a->scale;
        snprintf(key, sizeof key, "%s.alpha", base);
        if (stw_add_f32(w, key, 0, NULL, &alpha)) goto addfail;
        continue;
    addfail:
        snprintf(err, errlen, "%s: cannot add tensor '%s'", path, key);
        goto out;
    }
    char num[64];
    stw_set_metadata(w, "kind", kname(set->spec.kind));
    snprintf(num, sizeof num, "%d", set->spec.a1); stw_set_metadata(w, "a1", num);
    snprintf(num, sizeof num, "%d", set->spec.a2); stw_set_metadata(w, "a2", num);
    snprintf(num, sizeof num, "%d", set->spec.rank); stw_set_metadata(w, "rank", num);
    snprintf(num, sizeof num, "%.9g", (double)set->spec.alpha); stw_set_metadata(w, "alpha", num);
    stw_set_metadata(w, "modules", mods_name(set->spec.modules));
    snprintf(num, sizeof num, "%d", set->n); stw_set_metadata(w, "count", num);
    stw_set_metadata(w, "ss_network_module",
                     set->spec.kind == ADAPTER_KRONA ? "lycoris.kohya" : "networks.lora");
    if (metadata_json_extra && *metadata_json_extra) {
        char jerr[160];
        extra = json_parse(metadata_json_extra, strlen(metadata_json_extra), jerr, sizeof jerr);
        if (!extra || extra->type != JSON_OBJECT) {
            snprintf(err, errlen, "%s: extra metadata must be a JSON object%s%s", path,
                     extra ? "" : ": ", extra ? "" : jerr);
            goto out;
        }
        for (int i = 0; i < extra->n; i++) {
            const JsonValue *v = &extra->items[i];
            char val[64];
            const char *s = val;
            if (v->type == JSON_STRING) s = v->string;
            else if (v->type == JSON_NUMBER) snprintf(val, sizeof val, "%.17g", v->number);
            else if (v->type == JSON_BOOL) s = v->boolean ? "true" : "false";
            else {
                snprintf(err, errlen, "%s: extra metadata '%s' must be a string, number or bool",
                         path, extra->keys[i]);
                goto out;
            }
            stw_set_metadata(w, extra->keys[i], s);
        }
    }
    rc = stw_save(w, path, err, errlen);
out:
    json_free(extra);
    free(h);
    stw_free(w);
    return rc;
}

int adapter_set_load(AdapterSet *set, const char *path, char *err, size_t errlen) {
    if (set->n == 0) {
        snprintf(err, errlen, "%s: no adapters attached to load into (attach adapters with the "
                 "file's kind, a1/a2 or rank and modules first)", path);
        return -1;
    }
    char e[256];
    SafeTensors *st = st_open(path, e, sizeof e);
    if (!st) { snprintf(err, errlen, "%s", e); return -1; }
    int rc = -1;
    float *h = NULL;
    AdapterKind kind = set->spec.kind;
    const char *mk = st_metadata(st, "kind");
    if (mk && strcmp(mk, kname(kind))) {
        snprintf(err, errlen, "%s: file holds %s adapters, this run uses %s", path, mk, kname(kind));
        goto out;
    }
    /* every adapter tensor in the file must belong to an attached layer */
    const char *pre = kind == ADAPTER_KRONA ? "lycoris_" : "lora_unet_";
    const char *other = kind == ADAPTER_KRONA ? "lora_unet_" : "lycoris_";
    for (int i = 0; i < st_count(st); i++) {
        const char *name = st_at(st, i)->name;
        if (!strncmp(name, other, strlen(other))) {
            snprintf(err, errlen, "%s: tensor '%s' is a %s adapter, this run uses %s", path, name,
                     kind == ADAPTER_KRONA ? "lora" : "krona", kname(kind));
            goto out;
        }
        if (strncmp(name, pre, strlen(pre))) continue;
        const char *dot = strchr(name, '.');
        size_t blen = dot ? (size_t)(dot - name) : strlen(name);
        int found = 0;
        for (int j = 0; j < set->n && !found; j++) {
            char base[200];
            key_base(&set->items[j], base, sizeof base);
            found = strlen(base) == blen && !strncmp(base, name, blen);
        }
        if (!found) {
            snprintf(err, errlen, "%s: tensor '%s' matches no adapted layer of this model "
                     "(other model or module selection?)", path, name);
            goto out;
        }
    }
    /* validate everything before touching the adapters */
    int64_t mx = 1;
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->items[i];
        if (adapter_numel_A(a) > mx) mx = adapter_numel_A(a);
        if (adapter_numel_B(a) > mx) mx = adapter_numel_B(a);
        char base[200], key[240];
        key_base(a, base, sizeof base);
        for (int f = 0; f < 3; f++) {
            const char *suf = f == 2 ? "alpha" : kind == ADAPTER_KRONA ? (f ? "lokr_w2" : "lokr_w1")
                                                  : (f ? "lora_up.weight" : "lora_down.weight");
            snprintf(key, sizeof key, "%s.%s", base, suf);
            const StTensor *t = st_find(st, key);
            if (!t) {
                if (f == 2) continue; /* alpha is optional: keep the run's scale */
                snprintf(err, errlen, "%s: missing tensor '%s'", path, key);
                goto out;
            }
            int64_t want[2];
            if (f == 0) { want[0] = kind == ADAPTER_KRONA ? a->a1 : a->rank; want[1] = kind == ADAPTER_KRONA ? a->a2 : a->d_in; }
            else if (f == 1) { want[0] = kind == ADAPTER_KRONA ? a->b1 : a->d_out; want[1] = kind == ADAPTER_KRONA ? a->b2 : a->rank; }
            int ok = f == 2 ? t->numel == 1 : (t->ndim == 2 && t->shape[0] == want[0] && t->shape[1] == want[1]);
            if (!ok) {
                char got[96] = "";
                for (int d = 0; d < t->ndim && d < 8; d++)
                    snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "," : "",
                             (long long)t->shape[d]);
                if (f == 2)
                    snprintf(err, errlen, "%s: tensor '%s' has shape [%s], expected a scalar", path, key, got);
                else
                    snprintf(err, errlen, "%s: tensor '%s' has shape [%s], expected [%lld,%lld]", path,
                             key, got, (long long)want[0], (long long)want[1]);
                goto out;
            }
            if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64) {
                snprintf(err, errlen, "%s: tensor '%s' has dtype %s, expected a float type", path,
                         key, st_dtype_name(t->dtype));
                goto out;
            }
        }
    }
    h = malloc((size_t)mx * sizeof *h);
    if (!h) { snprintf(err, errlen, "out of host memory"); goto out; }
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->items[i];
        char base[200], key[240];
        key_base(a, base, sizeof base);
        snprintf(key, sizeof key, "%s.%s", base, kind == ADAPTER_KRONA ? "lokr_w1" : "lora_down.weight");
        st_read_f32(st_find(st, key), h);
        set->be->upload(set->be, a->A, h, (size_t)adapter_numel_A(a) * sizeof *h);
        snprintf(key, sizeof key, "%s.%s", base, kind == ADAPTER_KRONA ? "lokr_w2" : "lora_up.weight");
        st_read_f32(st_find(st, key), h);
        set->be->upload(set->be, a->B, h, (size_t)adapter_numel_B(a) * sizeof *h);
        snprintf(key, sizeof key, "%s.alpha", base);
        const StTensor *t = st_find(st, key);
        if (t) {
            float al;
            st_read_f32(t, &al);
            a->scale = kind == ADAPTER_LORA ? al / (float)a->rank : al;
        }
    }
    rc = 0;
out:
    free(h);
    st_close(st);
    return rc;
}

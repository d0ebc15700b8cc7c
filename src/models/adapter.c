/* adapter.c — KronA and LoRA updates on frozen linears: their init, counts,
 * forward, backward and merge. Files: adapter_file.c. */
#include "models/adapter.h"
#include "core/fsutil.h"
#include "core/rng.h"

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
    a->block = blk;
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
    if (a->block) be->free(be, a->block);
    memset(a, 0, sizeof *a);
}

void adapter_set_free(AdapterSet *set) {
    if (set->items)
        for (int i = 0; i < set->n; i++) adapter_free(&set->items[i], set->be);
    if (set->arena) set->be->free(set->be, set->arena);
    set->arena = NULL;
    set->arena_n = 0;
    free(set->items);
    set->items = NULL;
    set->n = 0;
}

int adapter_set_pack(AdapterSet *set, char *err, size_t errlen) {
    Backend *be = set->be;
    if (set->n == 0 || set->arena) return 0;
    int64_t P = 0;
    for (int i = 0; i < set->n; i++)
        P += pad16(adapter_numel_A(&set->items[i])) + pad16(adapter_numel_B(&set->items[i]));
    float *ar = be->alloc(be, (size_t)(4 * P) * sizeof(float)); /* zero-filled */
    if (!ar) {
        snprintf(err, errlen, "out of %s memory for the adapters (%lld floats)", be->name, (long long)(4 * P));
        return -1;
    }
    int64_t off = 0;
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->items[i];
        int64_t na = adapter_numel_A(a), nb = adapter_numel_B(a), ob = off + pad16(na);
        be->copy(be, ar + off, a->A, (size_t)na * sizeof(float));
        be->copy(be, ar + ob, a->B, (size_t)nb * sizeof(float));
        if (a->block) be->free(be, a->block);
        a->block = NULL;
        a->A = ar + off;          a->B = ar + ob;
        a->dA = ar + P + off;     a->dB = ar + P + ob;
        a->mA = ar + 2 * P + off; a->mB = ar + 2 * P + ob;
        a->vA = ar + 3 * P + off; a->vB = ar + 3 * P + ob;
        off = ob + pad16(nb);
    }
    set->arena = ar;
    set->arena_n = P;
    return 0;
}

void adapter_set_zero_grad(AdapterSet *set) {
    Backend *be = set->be;
    if (set->arena) {
        be->zero(be, set->arena + set->arena_n, (size_t)set->arena_n * sizeof(float));
        return;
    }
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->items[i];
        be->zero(be, a->dA, (size_t)adapter_numel_A(a) * sizeof(float));
        be->zero(be, a->dB, (size_t)adapter_numel_B(a) * sizeof(float));
    }
}

void adapter_set_adamw(AdapterSet *set, float lr, float beta1, float beta2, float eps,
                       float weight_decay, int t) {
    Backend *be = set->be;
    if (set->arena) { /* params, grads, m, v; the zero padding between adapters stays zero */
        int64_t P = set->arena_n;
        float *ar = set->arena;
        be->adamw(be, ar, ar + P, ar + 2 * P, ar + 3 * P, P, lr, beta1, beta2, eps, weight_decay, t);
        return;
    }
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->items[i];
        be->adamw(be, a->A, a->dA, a->mA, a->vA, adapter_numel_A(a), lr, beta1, beta2, eps, weight_decay, t);
        be->adamw(be, a->B, a->dB, a->mB, a->vB, adapter_numel_B(a), lr, beta1, beta2, eps, weight_decay, t);
    }
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

int adapter_merge_mode(int precision) {
    return precision == KRONA_PREC_FP32 ? ADAPTER_MERGE_AUTO : ADAPTER_FACTORED;
}

/* Counted in multiply-adds; a copied or merged element is weighed as 4 of
 * them (memory-bound passes over W' against the products' arithmetic). */
int adapter_merge_pays(const Adapter *a, int64_t M) {
    double w = (double)a->d_out * a->d_in;
    double merged, factored;
    if (a->kind == ADAPTER_KRONA) {
        merged = 4.0 * 2.0 * w; /* copy W, add s A[i,j] B into it */
        factored = (double)M * (double)kron_macs_per_row(a->a1, a->a2, a->b1, a->b2);
    } else if (a->kind == ADAPTER_LORA) {
        merged = 4.0 * w + w * a->rank; /* copy W, then the product up down */
        factored = (double)M * a->rank * (a->d_in + a->d_out);
    } else {
        return 0;
    }
    return merged < factored;
}

int adapter_merged(const AdapterSpec *spec, const Adapter *a, int64_t M) {
    if (!a || spec->merged == ADAPTER_FACTORED) return 0;
    return spec->merged == ADAPTER_MERGED || adapter_merge_pays(a, M);
}

void adapter_merge_into(Backend *be, const Adapter *a, float *W, float *scratch) {
    (void)scratch; /* neither kind needs one: kept for backends that might */
    if (a->kind == ADAPTER_KRONA)
        be->kron_merge(be, a->A, a->B, W, a->a1, a->a2, a->b1, a->b2, a->scale);
    else if (a->kind == ADAPTER_LORA)
        be->gemm(be, 0, 0, a->d_out, a->d_in, a->rank, a->scale, a->B, a->rank, a->A, a->d_in, 1.0f,
                 W, a->d_in);
}

/* adapter_file.c — adapter .safetensors: export in the keys kohya, LyCORIS,
 * A1111, ComfyUI and stable-diffusion.cpp read; import of ours (this format and
 * the older one) and of LyCORIS's own LoKr files; LyCORIS's factor-shape rule.
 * The format, key by key and loader by loader: docs/adapter-format.md. */
#include "models/adapter_file.h"
#include "core/fsutil.h"
#include "formats/json.h"
#include "formats/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* kohya's UNet prefix: what A1111, ComfyUI, sd.cpp and LyCORIS's kohya loader read */
#define PREFIX_UNET "lora_unet_"
/* LyCORIS's own wrapper (LycorisNetwork.LORA_PREFIX); our files before format 2 */
#define PREFIX_LYCORIS "lycoris_"
#define STEM_MAX 256
/* kohya's text encoder prefixes: SD 1.x, SDXL's first and second encoder */
static const char *const PREFIX_TE[3] = {"lora_te_", "lora_te1_", "lora_te2_"};

const char *adapter_te_prefix(int n_encoders, int i) {
    return PREFIX_TE[n_encoders > 1 ? 1 + (i > 0) : 0];
}

int adapter_te_prefix_bit(int n_encoders, int i) { return 1 << (n_encoders > 1 ? 1 + (i > 0) : 0); }

int adapter_file_check_te(const AdapterFileInfo *info, int n_encoders, const char *path, char *err,
                          size_t errlen) {
    if (!info->n_te_modules) return 0;
    if (n_encoders < 1) {
        err_set(err, errlen, "%s: it has text encoder adapters, this model has no text encoder", path);
        return -1;
    }
    if ((info->te_prefixes & 1) && n_encoders > 1) {
        err_set(err, errlen, "%s: its text encoder keys (lora_te_) are for SD 1.x; this SDXL model "
                "names its encoders lora_te1_ / lora_te2_", path);
        return -1;
    }
    if ((info->te_prefixes & 6) && n_encoders == 1) {
        err_set(err, errlen, "%s: its text encoder keys (lora_te1_ / lora_te2_) are for SDXL; this "
                "model has one encoder (lora_te_)", path);
        return -1;
    }
    return 0;
}

static const char *set_prefix(const AdapterSet *set) {
    return set->key_prefix ? set->key_prefix : PREFIX_UNET;
}

static const char *kname(AdapterKind k) {
    return k == ADAPTER_KRONA ? "krona" : k == ADAPTER_LORA ? "lora" : "none";
}

static const char *mods_name(int m) {
    return m == (ADAPT_ATTN | ADAPT_FFN) ? "attn+ffn" : m == ADAPT_FFN ? "ffn" : "attn";
}

/* ------------------------------------------------------------- names --- */

/* the module's export path, '.' -> '_' (no prefix) */
static int module_path(const AdapterSet *set, const Adapter *a, char *out, size_t n, char *err,
                       size_t errlen) {
    if (set->name_map) {
        if (set->name_map(set->name_map_user, a->name, out, n, err, errlen) != 0) return -1;
    } else {
        snprintf(out, n, "%s", a->name);
    }
    for (char *p = out; *p; p++)
        if (*p == '.') *p = '_';
    return 0;
}

int adapter_key_stem(const AdapterSet *set, const Adapter *a, char *out, size_t outlen, char *err,
                     size_t errlen) {
    char p[STEM_MAX];
    if (module_path(set, a, p, sizeof p, err, errlen) != 0) return -1;
    snprintf(out, outlen, "%s%s", set_prefix(set), p);
    return 0;
}

/* The tensors of one module, after the stem's '.' */
enum { SUF_W1, SUF_W1A, SUF_W1B, SUF_W2, SUF_W2A, SUF_W2B, SUF_ALPHA, SUF_DOWN, SUF_UP, SUF_N };
static const char *const SUF_NAME[SUF_N] = {"lokr_w1",   "lokr_w1_a", "lokr_w1_b",
                                            "lokr_w2",   "lokr_w2_a", "lokr_w2_b",
                                            "alpha",     "lora_down.weight", "lora_up.weight"};

static AdapterKind suffix_kind(int suf) {
    return suf == SUF_ALPHA ? ADAPTER_NONE : suf >= SUF_DOWN ? ADAPTER_LORA : ADAPTER_KRONA;
}

typedef struct Key {
    const char *rest;   /* module path after the prefix ('_' separated) */
    size_t rest_len;
    int lycoris;        /* prefix "lycoris_" (else "lora_unet_" or a text encoder's) */
    int te;             /* 0 the UNet, else 1 + the index in PREFIX_TE */
    const char *prefix; /* the key's prefix */
    int suf;
} Key;

/* a text encoder module krona-studio adapts: "..._self_attn_{q,k,v,out}_proj" */
static int te_module_ok(const char *rest, size_t n) {
    static const char *const ends[4] = {"_self_attn_q_proj", "_self_attn_k_proj",
                                        "_self_attn_v_proj", "_self_attn_out_proj"};
    for (int i = 0; i < 4; i++) {
        size_t e = strlen(ends[i]);
        if (n >= e && !strncmp(rest + n - e, ends[i], e)) return 1;
    }
    return 0;
}

/* "<prefix><module>.<suffix>": 0 and k, 1 for a key that is no adapter tensor
 * (no '.': LyCORIS's loaders skip those too), -1 with err for one krona-studio
 * cannot represent. */
static int parse_key(const char *path, const char *name, Key *k, char *err, size_t errlen) {
    const char *dot = strchr(name, '.');
    if (!dot) return 1;
    k->te = 0;
    for (int i = 0; i < 3; i++)
        if (!strncmp(name, PREFIX_TE[i], strlen(PREFIX_TE[i]))) k->te = i + 1;
    if (k->te) {
        k->lycoris = 0;
        k->prefix = PREFIX_TE[k->te - 1];
        k->rest = name + strlen(k->prefix);
        if (!te_module_ok(k->rest, (size_t)(dot - k->rest))) {
            err_set(err, errlen, "%s: tensor '%s' adapts a text encoder layer krona-studio does not "
                    "(it adapts the attention projections q_proj/k_proj/v_proj/out_proj; train "
                    "the text encoder's attention only, or the UNet only)", path, name);
            return -1;
        }
    } else if (!strncmp(name, PREFIX_UNET, strlen(PREFIX_UNET))) {
        k->lycoris = 0;
        k->prefix = PREFIX_UNET;
        k->rest = name + strlen(PREFIX_UNET);
    } else if (!strncmp(name, PREFIX_LYCORIS, strlen(PREFIX_LYCORIS))) {
        k->lycoris = 1;
        k->prefix = PREFIX_UNET; /* our older files: the UNet's modules */
        k->rest = name + strlen(PREFIX_LYCORIS);
    } else {
        err_set(err, errlen, "%s: tensor '%s' is not an adapter key krona-studio reads ("
                PREFIX_UNET "<module>.<factor>, " PREFIX_LYCORIS "<module>.<factor>, "
                "lora_te_/lora_te1_/lora_te2_<module>.<factor>)", path, name);
        return -1;
    }
    k->rest_len = (size_t)(dot - k->rest);
    const char *suf = dot + 1;
    for (int i = 0; i < SUF_N; i++)
        if (!strcmp(suf, SUF_NAME[i])) { k->suf = i; return 0; }
    const char *what = !strcmp(suf, "lokr_t2")          ? "a Tucker core of a convolution's LoKr"
                     : !strcmp(suf, "dora_scale")       ? "DoRA weight decomposition"
                     : !strncmp(suf, "hada_", 5)        ? "a LoHa factor"
                     : !strcmp(suf, "lora_mid.weight")  ? "a Tucker core of a convolution's LoRA"
                     : "a tensor of an adapter type";
    err_set(err, errlen, "%s: tensor '%s' is %s that krona-studio cannot represent (it reads "
            "LoKr lokr_w1/lokr_w2 or their _a/_b halves, LoRA lora_down/lora_up, and alpha)",
            path, name, what);
    return -1;
}

/* metadata "kind" -> 2 (krona_format given) or 1 (an older file of ours); 0: another tool's */
static int file_format(const SafeTensors *st) {
    const char *mk = st_metadata(st, "kind");
    if (!mk || (strcmp(mk, "krona") && strcmp(mk, "lora"))) return 0;
    const char *f = st_metadata(st, "krona_format");
    return f ? atoi(f) : 1;
}

static void shape_str(const StTensor *t, char *buf, size_t n) {
    buf[0] = 0;
    for (int d = 0; d < t->ndim && d < 8; d++)
        snprintf(buf + strlen(buf), n - strlen(buf), "%s%lld", d ? "," : "", (long long)t->shape[d]);
}

static int is_float(const StTensor *t) {
    return t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F64;
}

/* ------------------------------------------------------------- probe --- */

int adapter_file_probe(const char *path, AdapterFileInfo *info, char *err, size_t errlen) {
    memset(info, 0, sizeof *info);
    char e[512];
    SafeTensors *st = st_open(path, e, sizeof e);
    if (!st) { err_set(err, errlen, "%s", e); return -1; }
    int rc = -1;
    AdapterSpec *s = &info->spec;
    info->format = file_format(st);
    if (info->format > 0) {
        const char *kind = st_metadata(st, "kind"), *mods = st_metadata(st, "modules");
        const char *a1 = st_metadata(st, "a1"), *a2 = st_metadata(st, "a2"),
                   *rank = st_metadata(st, "rank"), *alpha = st_metadata(st, "alpha");
        if (!mods) {
            err_set(err, errlen, "%s: krona-studio adapter metadata without 'modules'", path);
            goto out;
        }
        s->kind = strcmp(kind, "lora") == 0 ? ADAPTER_LORA : ADAPTER_KRONA;
        s->a1 = a1 ? atoi(a1) : 1;
        s->a2 = a2 ? atoi(a2) : 1;
        s->rank = rank ? atoi(rank) : 0;
        s->alpha = alpha ? strtof(alpha, NULL) : 1.0f;
        s->modules = (strstr(mods, "attn") ? ADAPT_ATTN : 0) | (strstr(mods, "ffn") ? ADAPT_FFN : 0);
        for (int i = 0; i < st_count(st); i++) {
            Key k;
            if (parse_key(path, st_at(st, i)->name, &k, e, sizeof e) == 0 &&
                (k.suf == SUF_W1 || k.suf == SUF_W1A || k.suf == SUF_DOWN)) {
                if (k.te) { info->n_te_modules++; info->te_prefixes |= 1 << (k.te - 1); }
                else info->n_modules++;
            }
        }
        rc = 0;
        goto out;
    }
    /* another tool's file: the keys say what it holds */
    s->kind = ADAPTER_NONE;
    const char *first = NULL;
    for (int i = 0; i < st_count(st); i++) {
        const char *name = st_at(st, i)->name;
        Key k;
        int r = parse_key(path, name, &k, err, errlen);
        if (r < 0) goto out;
        if (r > 0) continue;
        char mod[STEM_MAX];
        snprintf(mod, sizeof mod, "%.*s", (int)k.rest_len, k.rest);
        int m = k.te ? -1 : (strstr(mod, "attn1_") || strstr(mod, "attn2_")) ? ADAPT_ATTN
              : strstr(mod, "ff_net_") ? ADAPT_FFN : 0;
        if (!m) {
            err_set(err, errlen, "%s: tensor '%s' adapts a layer krona-studio does not (it adapts "
                    "attention to_q/to_k/to_v/to_out.0 and feed-forward ff.net.0.proj/ff.net.2: "
                    "LyCORIS preset attn-only or attn-mlp)", path, name);
            goto out;
        }
        if (m > 0) s->modules |= m;
        AdapterKind kk = suffix_kind(k.suf);
        if (kk == ADAPTER_NONE) continue;
        if (s->kind != ADAPTER_NONE && kk != s->kind) {
            err_set(err, errlen, "%s: tensor '%s' is a %s factor but '%s' a %s one: one file holds "
                    "one adapter kind", path, name, kk == ADAPTER_KRONA ? "LoKr" : "LoRA", first,
                    s->kind == ADAPTER_KRONA ? "LoKr" : "LoRA");
            goto out;
        }
        const StTensor *t = st_at(st, i);
        if (k.suf == SUF_W1 || k.suf == SUF_W1A || k.suf == SUF_DOWN) {
            if (k.te) { info->n_te_modules++; info->te_prefixes |= 1 << (k.te - 1); }
            else info->n_modules++;
        }
        if (s->kind != ADAPTER_NONE) continue;
        /* the first module gives the factor shape the others must share */
        if (k.suf == SUF_W1 && t->ndim == 2) {
            s->a1 = (int)t->shape[0];
            s->a2 = (int)t->shape[1];
        } else if (k.suf == SUF_W1A && t->ndim == 2) {
            char bname[STEM_MAX + 32];
            snprintf(bname, sizeof bname, "%.*s.lokr_w1_b", (int)(k.rest_len + (size_t)(k.rest - name)),
                     name);
            const StTensor *b = st_find(st, bname);
            if (!b || b->ndim != 2) {
                err_set(err, errlen, "%s: tensor '%s' without its other half '%s'", path, name, bname);
                goto out;
            }
            s->a1 = (int)t->shape[0];
            s->a2 = (int)b->shape[1];
        } else if (k.suf == SUF_DOWN && t->ndim >= 1) {
            s->rank = (int)t->shape[0];
        } else {
            continue;
        }
        s->kind = kk;
        first = name;
    }
    if (s->kind == ADAPTER_NONE) {
        err_set(err, errlen, "%s: no UNet adapter factors (lora_unet_<module>.lokr_w1 or "
                ".lora_down.weight keys)", path);
        goto out;
    }
    if (!s->modules) s->modules = ADAPT_ATTN; /* text encoder keys only */
    /* the scale of each layer comes with its factors (adapter_set_load) */
    s->alpha = s->kind == ADAPTER_LORA ? (float)s->rank : 1.0f;
    rc = 0;
out:
    st_close(st);
    return rc;
}

/* -------------------------------------------------------------- save --- */

/* a number as Python's str() writes a float (kohya's metadata: "4.0") */
static void py_float(double v, char *buf, size_t n) {
    if (v == floor(v) && fabs(v) < 1e15) snprintf(buf, n, "%.1f", v);
    else snprintf(buf, n, "%.9g", v);
}

int adapter_set_save(const AdapterSet *set, const char *path, const char *metadata_json_extra,
                     char *err, size_t errlen) {
    return adapter_sets_save(&set, 1, path, metadata_json_extra, ST_F32, err, errlen);
}

int adapter_sets_save(const AdapterSet *const *sets, int nsets, const char *path,
                      const char *metadata_json_extra, int dtype, char *err, size_t errlen) {
    const AdapterSet *set = sets[0];
    if (dtype != ST_F32 && dtype != ST_F16 && dtype != ST_BF16) {
        err_set(err, errlen, "%s: adapter tensors are written as F32, F16 or BF16, not %s", path,
                st_dtype_name(dtype));
        return -1;
    }
    Backend *be = set->be;
    int total = 0;
    StWriter *w = stw_create();
    if (!w) { err_set(err, errlen, "out of host memory"); return -1; }
    int rc = -1;
    float *h = NULL;
    JsonValue *extra = NULL;
    int64_t mx = 1;
    for (int si = 0; si < nsets; si++)
        for (int i = 0; i < sets[si]->n; i++) {
            if (adapter_numel_A(&sets[si]->items[i]) > mx) mx = adapter_numel_A(&sets[si]->items[i]);
            if (adapter_numel_B(&sets[si]->items[i]) > mx) mx = adapter_numel_B(&sets[si]->items[i]);
        }
    h = malloc((size_t)mx * sizeof *h);
    if (!h) { err_set(err, errlen, "out of host memory"); goto out; }
    for (int si = 0; si < nsets; si++)
    for (int i = 0; i < sets[si]->n; i++) {
        set = sets[si];
        total++;
        const Adapter *a = &set->items[i];
        char stem[STEM_MAX], key[STEM_MAX + 32], e[256];
        if (adapter_key_stem(set, a, stem, sizeof stem, e, sizeof e) != 0) {
            err_set(err, errlen, "%s: cannot name layer %s for export: %s", path, a->name, e);
            goto out;
        }
        int64_t sa[2], sb[2];
        const char *ka, *kb;
        float alpha;
        be->download(be, h, a->A, (size_t)adapter_numel_A(a) * sizeof *h);
        if (a->kind == ADAPTER_KRONA) {
            /* full LoKr factors: every loader applies scale 1 to them, so the
             * training scale goes into w1, multiplied as the merge does
             * (kron_merge: (scale * A[i,j]) * B[k,l]); dW is then the same floats */
            sa[0] = a->a1; sa[1] = a->a2; sb[0] = a->b1; sb[1] = a->b2;
            ka = "lokr_w1"; kb = "lokr_w2";
            if (a->scale != 1.0f)
                for (int64_t k = 0; k < adapter_numel_A(a); k++) h[k] = a->scale * h[k];
            alpha = 1.0f;
        } else {
            sa[0] = a->rank; sa[1] = a->d_in; sb[0] = a->d_out; sb[1] = a->rank;
            ka = "lora_down.weight"; kb = "lora_up.weight";
            alpha = a->scale * (float)a->rank; /* kohya: scale = alpha / rank */
        }
        snprintf(key, sizeof key, "%s.%s", stem, ka);
        if (stw_add_f32_as(w, key, dtype, 2, sa, h)) goto addfail;
        be->download(be, h, a->B, (size_t)adapter_numel_B(a) * sizeof *h);
        snprintf(key, sizeof key, "%s.%s", stem, kb);
        if (stw_add_f32_as(w, key, dtype, 2, sb, h)) goto addfail;
        snprintf(key, sizeof key, "%s.alpha", stem);
        if (stw_add_f32_as(w, key, dtype, 0, NULL, &alpha)) goto addfail;
        continue;
    addfail:
        err_set(err, errlen, "%s: %s", path, stw_error(w));
        goto out;
    }
    set = sets[0];
    const AdapterSpec *sp = &set->spec;
    char num[64], num2[64], args[256];
    stw_set_metadata(w, "kind", kname(sp->kind));
    snprintf(num, sizeof num, "%d", sp->a1); stw_set_metadata(w, "a1", num);
    snprintf(num, sizeof num, "%d", sp->a2); stw_set_metadata(w, "a2", num);
    snprintf(num, sizeof num, "%d", sp->rank); stw_set_metadata(w, "rank", num);
    snprintf(num, sizeof num, "%.9g", (double)sp->alpha); stw_set_metadata(w, "alpha", num);
    stw_set_metadata(w, "modules", mods_name(sp->modules));
    snprintf(num, sizeof num, "%d", total); stw_set_metadata(w, "count", num);
    snprintf(num, sizeof num, "%d", ADAPTER_FILE_FORMAT); stw_set_metadata(w, "krona_format", num);
    /* kohya's training metadata (train_network.py), as str() of its values */
    if (sp->kind == ADAPTER_KRONA) {
        /* LyCORIS with full_matrix: its loader takes lora_dim 1 and scale 1 */
        stw_set_metadata(w, "ss_network_module", "lycoris.kohya");
        stw_set_metadata(w, "ss_network_dim", "1");
        stw_set_metadata(w, "ss_network_alpha", "1.0");
        snprintf(num2, sizeof num2, ", \"factor\": \"%d\"", sp->a1);
        snprintf(args, sizeof args, "{\"algo\": \"lokr\", \"full_matrix\": \"True\", \"preset\": \"%s\"%s}",
                 sp->modules & ADAPT_FFN ? "attn-mlp" : "attn-only", sp->a1 == sp->a2 ? num2 : "");
        stw_set_metadata(w, "ss_network_args", args);
    } else {
        stw_set_metadata(w, "ss_network_module", "networks.lora");
        snprintf(num, sizeof num, "%d", sp->rank); stw_set_metadata(w, "ss_network_dim", num);
        py_float(set->n ? (double)set->items[0].scale * sp->rank : (double)sp->alpha, num, sizeof num);
        stw_set_metadata(w, "ss_network_alpha", num);
    }
    if (metadata_json_extra && *metadata_json_extra) {
        char jerr[160];
        extra = json_parse(metadata_json_extra, strlen(metadata_json_extra), jerr, sizeof jerr);
        if (!extra || extra->type != JSON_OBJECT) {
            err_set(err, errlen, "%s: extra metadata must be a JSON object%s%s", path,
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
                err_set(err, errlen, "%s: extra metadata '%s' must be a string, number or bool",
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

/* -------------------------------------------------------------- load --- */

typedef struct Mod {
    const StTensor *t[SUF_N];
    int seen;      /* 0: not in the file; 1: "lora_unet_"; 2: "lycoris_" */
} Mod;

/* x[r,c] = a[r,k] b[k,c], accumulated in double (LyCORIS: w = w_a @ w_b) */
static void matmul(const float *a, const float *b, float *x, int64_t r, int64_t k, int64_t c) {
    for (int64_t i = 0; i < r; i++)
        for (int64_t j = 0; j < c; j++) {
            double s = 0;
            for (int64_t q = 0; q < k; q++) s += (double)a[i * k + q] * b[q * c + j];
            x[i * c + j] = (float)s;
        }
}

/* One factor of one module: the full tensor, or its two halves multiplied.
 * rows/cols: its shape; rank: the halves' inner size (0 when full). */
typedef struct Factor {
    const StTensor *full, *ha, *hb;
    int64_t rows, cols, rank;
} Factor;

static int factor_of(const char *path, const char *stem, const Mod *m, int full, int ha, int hb,
                     Factor *f, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    const StTensor *t = m->t[full], *a = ha >= 0 ? m->t[ha] : NULL, *b = hb >= 0 ? m->t[hb] : NULL;
    char sh[96], sh2[96];
    if (t) {
        if (t->ndim != 2) {
            shape_str(t, sh, sizeof sh);
            err_set(err, errlen, "%s: tensor '%s' has shape [%s], expected a matrix (krona-studio "
                    "adapts linear layers)", path, t->name, sh);
            return -1;
        }
        f->full = t; f->rows = t->shape[0]; f->cols = t->shape[1];
    } else if (a && b) {
        if (a->ndim != 2 || b->ndim != 2 || a->shape[1] != b->shape[0]) {
            shape_str(a, sh, sizeof sh);
            shape_str(b, sh2, sizeof sh2);
            err_set(err, errlen, "%s: tensors '%s' [%s] and '%s' [%s] do not multiply", path,
                    a->name, sh, b->name, sh2);
            return -1;
        }
        f->ha = a; f->hb = b;
        f->rows = a->shape[0]; f->cols = b->shape[1]; f->rank = a->shape[1];
    } else {
        err_set(err, errlen, "%s: missing tensor '%s.%s'", path, stem,
                a || b ? SUF_NAME[a ? hb : ha] : SUF_NAME[full]);
        return -1;
    }
    const StTensor *list[2] = {f->full ? f->full : f->ha, f->hb};
    for (int i = 0; i < 2; i++)
        if (list[i] && !is_float(list[i])) {
            err_set(err, errlen, "%s: tensor '%s' has dtype %s, expected a float type", path,
                    list[i]->name, st_dtype_name(list[i]->dtype));
            return -1;
        }
    return 0;
}

/* the factor's values into dst (rows * cols); tmp holds the halves. 0, or -1
 * with err (a NaN or Inf in the file) */
static int factor_read(const Factor *f, float *dst, float *tmp, const char *path, char *err,
                       size_t errlen) {
    if (f->full) return st_load_f32(f->full, dst, path, err, errlen);
    float *a = tmp, *b = tmp + f->rows * f->rank;
    if (st_load_f32(f->ha, a, path, err, errlen) || st_load_f32(f->hb, b, path, err, errlen)) return -1;
    matmul(a, b, dst, f->rows, f->rank, f->cols);
    return 0;
}

static int64_t factor_tmp(const Factor *f) { return f->full ? 0 : f->rank * (f->rows + f->cols); }

int adapter_set_load(AdapterSet *set, const char *path, char *err, size_t errlen) {
    return adapter_sets_load(&set, 1, path, err, errlen);
}

int adapter_sets_load(AdapterSet *const *sets, int nsets, const char *path, char *err,
                      size_t errlen) {
    int n_all = 0;
    for (int si = 0; si < nsets; si++) n_all += sets[si]->n;
    if (sets[0]->n == 0 || n_all == 0) {
        err_set(err, errlen, "%s: no adapters attached to load into (attach adapters with the "
                "file's kind, a1/a2 or rank and modules first)", path);
        return -1;
    }
    char e[512];
    SafeTensors *st = st_open(path, e, sizeof e);
    if (!st) { err_set(err, errlen, "%s", e); return -1; }
    int rc = -1;
    float *host = NULL, *tmp = NULL;
    Mod *mods = calloc((size_t)n_all, sizeof *mods);
    char (*paths)[STEM_MAX] = malloc((size_t)n_all * sizeof *paths);
    float *scales = malloc((size_t)n_all * sizeof *scales);
    Factor *fac = calloc((size_t)n_all * 2, sizeof *fac);
    Adapter **items = malloc((size_t)n_all * sizeof *items);
    const AdapterSet **owner = malloc((size_t)n_all * sizeof *owner);
    Backend *be = sets[0]->be;
    if (!mods || !paths || !scales || !fac || !items || !owner) { err_set(err, errlen, "out of host memory"); goto out; }
    for (int si = 0, j = 0; si < nsets; si++)
        for (int i = 0; i < sets[si]->n; i++, j++) {
            items[j] = &sets[si]->items[i];
            owner[j] = sets[si];
        }
    AdapterKind kind = sets[0]->spec.kind;
    int format = file_format(st);
    const char *mk = st_metadata(st, "kind");
    if (format > 0 && strcmp(mk, kname(kind))) {
        err_set(err, errlen, "%s: file holds %s adapters, this run uses %s", path, mk, kname(kind));
        goto out;
    }
    for (int j = 0; j < n_all; j++)
        if (module_path(owner[j], items[j], paths[j], sizeof paths[j], e, sizeof e) != 0) {
            err_set(err, errlen, "%s: layer %s: %s", path, items[j]->name, e);
            goto out;
        }
    /* every adapter tensor of the file belongs to an attached layer */
    int n_seen = 0;
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *t = st_at(st, i);
        Key k;
        int r = parse_key(path, t->name, &k, err, errlen);
        if (r < 0) goto out;
        if (r > 0) continue;
        AdapterKind kk = suffix_kind(k.suf);
        if (kk != ADAPTER_NONE && kk != kind) {
            err_set(err, errlen, "%s: tensor '%s' is a %s adapter, this run uses %s", path, t->name,
                    kname(kk), kname(kind));
            goto out;
        }
        int j = 0;
        while (j < n_all && !(!strcmp(set_prefix(owner[j]), k.prefix) && strlen(paths[j]) == k.rest_len &&
                              !strncmp(paths[j], k.rest, k.rest_len)))
            j++;
        if (j == n_all && k.te) {
            err_set(err, errlen, "%s: tensor '%s' matches no adapted text encoder layer of this "
                    "model (another model, or text encoder adapters are not attached)", path, t->name);
            goto out;
        }
        if (j == n_all) {
            err_set(err, errlen, "%s: tensor '%s' matches no adapted layer of this model (another "
                    "model, or another module selection: krona-studio adapts attention to_q/to_k/"
                    "to_v/to_out.0, with modules = attn+ffn also ff.net.0.proj/ff.net.2)", path,
                    t->name);
            goto out;
        }
        int seen = k.lycoris ? 2 : 1;
        if (mods[j].seen && mods[j].seen != seen) {
            err_set(err, errlen, "%s: tensor '%s': layer %s also has " PREFIX_UNET " / "
                    PREFIX_LYCORIS " keys; a file names each layer once", path, t->name,
                    items[j]->name);
            goto out;
        }
        if (!mods[j].seen) n_seen++;
        mods[j].seen = seen;
        mods[j].t[k.suf] = t;
    }
    if (n_seen == 0) {
        err_set(err, errlen, "%s: no adapter tensors for this model's layers", path);
        goto out;
    }
    /* validate everything before touching the adapters */
    int64_t total = 0, mtmp = 1;
    for (int j = 0; j < n_all; j++) total += adapter_numel_A(items[j]) + adapter_numel_B(items[j]);
    for (int j = 0; j < n_all; j++) {
        Adapter *a = items[j];
        Mod *m = &mods[j];
        char stem[STEM_MAX + 16];
        snprintf(stem, sizeof stem, "%s%s",
                 !owner[j]->key_prefix && (m->seen == 2 || (!m->seen && format == 1 && kind == ADAPTER_KRONA))
                     ? PREFIX_LYCORIS : set_prefix(owner[j]),
                 paths[j]);
        scales[j] = a->scale;
        if (!m->seen) {
            if (format > 0) { /* ours name every layer; another tool's may leave some out (dW = 0) */
                err_set(err, errlen, "%s: missing tensor '%s.%s'", path, stem,
                        SUF_NAME[kind == ADAPTER_KRONA ? SUF_W1 : SUF_DOWN]);
                goto out;
            }
            continue;
        }
        const StTensor *at = m->t[SUF_ALPHA];
        float alpha = 0;
        if (at) {
            if (at->numel != 1 || !is_float(at)) {
                char sh[96];
                shape_str(at, sh, sizeof sh);
                err_set(err, errlen, "%s: tensor '%s' has shape [%s] (%s), expected a float scalar",
                        path, at->name, sh, st_dtype_name(at->dtype));
                goto out;
            }
            if (st_load_f32(at, &alpha, path, err, errlen) != 0) goto out;
        }
        Factor *f1p = &fac[2 * j], *f2p = &fac[2 * j + 1], f1, f2;
        int64_t want1[2], want2[2];
        if (kind == ADAPTER_KRONA) {
            if (factor_of(path, stem, m, SUF_W1, SUF_W1A, SUF_W1B, &f1, err, errlen) ||
                factor_of(path, stem, m, SUF_W2, SUF_W2A, SUF_W2B, &f2, err, errlen))
                goto out;
            want1[0] = a->a1; want1[1] = a->a2; want2[0] = a->b1; want2[1] = a->b2;
        } else {
            if (factor_of(path, stem, m, SUF_DOWN, -1, -1, &f1, err, errlen) ||
                factor_of(path, stem, m, SUF_UP, -1, -1, &f2, err, errlen))
                goto out;
            want1[0] = a->rank; want1[1] = a->d_in; want2[0] = a->d_out; want2[1] = a->rank;
        }
        *f1p = f1;
        *f2p = f2;
        for (int w = 0; w < 2; w++) {
            const Factor *f = w ? &f2 : &f1;
            const int64_t *want = w ? want2 : want1;
            if (f->rows == want[0] && f->cols == want[1]) continue;
            const char *kn = f->full ? f->full->name : f->ha->name;
            char hint[256];
            int fits = kind == ADAPTER_KRONA && f1.rows * f2.rows == a->d_out && f1.cols * f2.cols == a->d_in;
            if (fits)
                snprintf(hint, sizeof hint, " (the run's A is a1 x a2 = %dx%d, one shape for every "
                         "layer; from LyCORIS, export with one factor that fits every layer)", a->a1, a->a2);
            else
                snprintf(hint, sizeof hint, " (layer %s is %d x %d: a file for another model or "
                         "another %s)", a->name, a->d_out, a->d_in,
                         kind == ADAPTER_KRONA ? "a1 x a2" : "rank");
            err_set(err, errlen, "%s: tensor '%s' has shape [%lld,%lld]%s, expected [%lld,%lld]%s",
                    path, kn, (long long)f->rows, (long long)f->cols,
                    f->full ? "" : " (its halves multiplied)", (long long)want[0], (long long)want[1],
                    hint);
            goto out;
        }
        if (factor_tmp(&f1) > mtmp) mtmp = factor_tmp(&f1);
        if (factor_tmp(&f2) > mtmp) mtmp = factor_tmp(&f2);
        /* the scale each loader applies (docs/adapter-format.md) */
        if (kind == ADAPTER_LORA) {
            if (at) scales[j] = alpha != 0 ? alpha / (float)a->rank : 1.0f;
            else if (format == 0) scales[j] = 1.0f;
        } else if (format == 1) {
            if (at) scales[j] = alpha; /* older files: B as trained, the scale in alpha */
        } else if (!f1.rank && !f2.rank) {
            scales[j] = 1.0f; /* full factors: every loader applies scale 1, alpha unused */
        } else {
            if (f1.rank && f2.rank && f1.rank != f2.rank) {
                err_set(err, errlen, "%s: tensors '%s' and '%s' have ranks %lld and %lld: LyCORIS "
                        "scales by alpha / the first, A1111, ComfyUI and sd.cpp by alpha / the "
                        "second, so the file has no one meaning", path, f1.ha->name, f2.ha->name,
                        (long long)f1.rank, (long long)f2.rank);
                goto out;
            }
            int64_t dim = f1.rank ? f1.rank : f2.rank;
            scales[j] = at && alpha != 0 ? alpha / (float)dim : 1.0f;
        }
    }
    host = malloc((size_t)total * sizeof *host);
    tmp = malloc((size_t)mtmp * sizeof *tmp);
    if (!host || !tmp) { err_set(err, errlen, "out of host memory"); goto out; }
    float *p = host;
    for (int j = 0; j < n_all; j++) {
        Adapter *a = items[j];
        int64_t na = adapter_numel_A(a), nb = adapter_numel_B(a);
        if (mods[j].seen) {
            if (factor_read(&fac[2 * j], p, tmp, path, err, errlen) ||
                factor_read(&fac[2 * j + 1], p + na, tmp, path, err, errlen))
                goto out;
        } else {
            memset(p + na, 0, (size_t)nb * sizeof *p); /* not in the file: B = 0, dW = 0 */
        }
        p += na + nb;
    }
    p = host;
    for (int j = 0; j < n_all; j++) {
        Adapter *a = items[j];
        int64_t na = adapter_numel_A(a), nb = adapter_numel_B(a);
        if (mods[j].seen) be->upload(be, a->A, p, (size_t)na * sizeof *p);
        be->upload(be, a->B, p + na, (size_t)nb * sizeof *p);
        a->scale = scales[j];
        p += na + nb;
    }
    rc = 0;
out:
    free(host);
    free(tmp);
    free(mods);
    free(paths);
    free(scales);
    free(fac);
    free(items);
    free(owner);
    st_close(st);
    return rc;
}

/* ----------------------------------------------------- LyCORIS's rule --- */

void adapter_lycoris_factorization(int dim, int factor, int *m, int *n) {
    int a, b;
    if (factor > 0 && dim % factor == 0) {
        a = factor;
        b = dim / factor;
    } else {
        int lim = factor < 0 ? dim : factor, len = 1 + dim;
        a = 1;
        b = dim;
        while (a < b) {
            int na = a + 1;
            while (dim % na) na++;
            int nb = dim / na;
            if (na + nb > len || na > lim) break;
            a = na;
            b = nb;
        }
    }
    if (a > b) { int t = a; a = b; b = t; }
    *m = a;
    *n = b;
}

int adapter_lycoris_loads(int a1, int a2, int b1, int b2, int *w1_rows, int *w1_cols) {
    int d_out = a1 * b1, d_in = a2 * b2, fo, fi, x, factor;
    adapter_lycoris_factorization(d_out, -1, &fo, &x);
    adapter_lycoris_factorization(d_in, -1, &fi, &x);
    if (a1 == fo && a2 == fi) {
        factor = -1;
    } else {
        int f1 = a1 > a2 ? a1 : a2, f2 = b1 > b2 ? b1 : b2;
        if (d_out % f1 == 0 && d_in % f1 == 0 && (f1 == a1 || f1 == b1) && (f1 == a2 || f1 == b2))
            factor = f1;
        else if (d_out % f2 == 0 && d_in % f2 == 0 && (f2 == a1 || f2 == b1) && (f2 == a2 || f2 == b2))
            factor = f2;
        else
            factor = f1 < f2 ? f1 : f2;
    }
    int rows, cols;
    adapter_lycoris_factorization(d_out, factor, &rows, &x);
    adapter_lycoris_factorization(d_in, factor, &cols, &x);
    if (w1_rows) *w1_rows = rows;
    if (w1_cols) *w1_cols = cols;
    return rows == a1 && cols == a2;
}

int adapter_set_lycoris_misfits(const AdapterSet *set, char *first, size_t firstlen) {
    int n = 0;
    if (first && firstlen) first[0] = 0;
    for (int i = 0; i < set->n; i++) {
        const Adapter *a = &set->items[i];
        int r, c;
        if (a->kind != ADAPTER_KRONA || adapter_lycoris_loads(a->a1, a->a2, a->b1, a->b2, &r, &c))
            continue;
        if (n++ == 0 && first)
            snprintf(first, firstlen, "%s (%d x %d): A %d x %d, LyCORIS builds %d x %d", a->name,
                     a->d_out, a->d_in, a->a1, a->a2, r, c);
    }
    return n;
}

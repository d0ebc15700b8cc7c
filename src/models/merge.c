/* merge.c — an adapter folded into a single-file checkpoint, streamed. */
#include "models/merge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "formats/json.h"
#include "formats/safetensors.h"
#include "models/adapter_census.h"
#include "models/adapter_file.h"

int merge_unet_adapters(const UNetConfig *ucfg, const AdapterSpec *spec, const char *path, Backend *be,
                        AdapterSet *set, char *err, size_t errlen) {
    memset(set, 0, sizeof *set);
    set->be = be;
    set->spec = *spec;
    AdapterCensus c;
    int rc = adapter_census(ucfg, spec, &c);
    if (rc != 0 || !c.ok) {
        if (spec->kind == ADAPTER_KRONA)
            err_set(err, errlen, "%s: its factors (A = a1 x a2 = %dx%d) do not fit this model: %s",
                    path, spec->a1, spec->a2, c.err);
        else
            err_set(err, errlen, "%s: its LoRA rank %d does not fit this model: %s", path,
                    spec->rank, c.err);
        adapter_census_free(&c);
        return -1;
    }
    adapter_census_free(&c);
    UNetParam *params;
    UNetLinear *lin;
    int np, nl;
    if (unet_param_table(ucfg, &params, &np, &lin, &nl) != 0) {
        err_set(err, errlen, "cannot build the UNet's parameter table");
        return -1;
    }
    free(params);
    set->items = calloc((size_t)(nl ? nl : 1), sizeof *set->items);
    if (!set->items) { free(lin); err_set(err, errlen, "out of host memory"); return -1; }
    for (int i = 0; i < nl; i++) {
        if (!adapter_selects(spec, lin[i].is_attn, lin[i].is_ffn)) continue;
        if (adapter_init(&set->items[set->n], be, spec, lin[i].name, lin[i].d_out, lin[i].d_in,
                         (uint64_t)i, err, errlen) != 0) {
            free(lin);
            adapter_set_free(set);
            return -1;
        }
        set->n++;
    }
    free(lin);
    return 0;
}

void merge_unet_ldm_names(AdapterSet *set, const ConvertMap *unet_map) {
    set->name_map = convert_adapter_name;
    set->name_map_user = (void *)unet_map;
}

int merge_load_adapters(const UNetConfig *ucfg, const ConvertMap *unet_map, int ldm_names,
                        const char *path, Backend *be, AdapterSet *set, char *err, size_t errlen) {
    memset(set, 0, sizeof *set);
    AdapterFileInfo info;
    if (adapter_file_probe(path, &info, err, errlen) != 0) return -1;
    if (info.n_te_modules) {
        err_set(err, errlen, "%s: it has text encoder adapters (%d layers), which a single-file merge "
                "does not write: merge into a diffusers folder (--model DIR), or export the UNet's alone",
                path, info.n_te_modules);
        return -1;
    }
    if (merge_unet_adapters(ucfg, &info.spec, path, be, set, err, errlen) != 0) return -1;
    if (ldm_names) merge_unet_ldm_names(set, unet_map);
    if (adapter_set_load(set, path, err, errlen) != 0) {
        adapter_set_free(set);
        return -1;
    }
    return 0;
}

/* ---- the output header ---- */
typedef struct { char *s; size_t n, cap; int oom; } Buf;

static void put(Buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->n + n + 1 > cap) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) { b->oom = 1; return; }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void puts_(Buf *b, const char *s) { put(b, s, strlen(s)); }
static void put_str(Buf *b, const char *s) {
    size_t need = json_escape(NULL, 0, s);
    char *tmp = malloc(need + 1);
    if (!tmp) { b->oom = 1; return; }
    json_escape(tmp, need + 1, s);
    put(b, tmp, need);
    free(tmp);
}

static int is_float(int dt) { return dt == ST_F32 || dt == ST_F16 || dt == ST_BF16; }


int checkpoint_merge(const char *in_path, const ConvertMap *unet_map, const AdapterSet *set,
                     const MergeOpts *o, const char *out_path, MergeStats *stats, char *err,
                     size_t errlen) {
    if (stats) memset(stats, 0, sizeof *stats);
    if (!o->force && fs_exists(out_path)) {
        err_set(err, errlen, "%s exists (use --force to overwrite it)", out_path);
        return -1;
    }
    const Adapter **ads = malloc(sizeof *ads * (size_t)(set->n ? set->n : 1));
    char (*keys)[MERGE_KEY_MAX] = malloc(sizeof *keys * (size_t)(set->n ? set->n : 1));
    int rc = -1;
    if (!ads || !keys) { err_set(err, errlen, "out of host memory"); goto out; }
    for (int j = 0; j < set->n; j++) {
        const Adapter *a = &set->items[j];
        char pname[CONVERT_NAME_MAX + 16];
        ConvertName c;
        snprintf(pname, sizeof pname, "%s.weight", a->name);
        if (convert_to_ldm(unet_map, pname, &c) != 0 || c.transform != CONVERT_AS_IS) {
            err_set(err, errlen, "adapter layer %s has no place in the checkpoint's UNet", a->name);
            goto out;
        }
        ads[j] = a;
        snprintf(keys[j], sizeof keys[j], "%s", c.ldm);
    }
    rc = merge_safetensors(in_path, ads, (const char (*)[MERGE_KEY_MAX])keys, set->n, o, set->be, out_path,
                           stats, err, errlen);
out:
    free(ads);
    free(keys);
    return rc;
}

#define CHUNK ((int64_t)1 << 20)

int merge_safetensors(const char *in_path, const Adapter *const *ads, const char (*keys)[MERGE_KEY_MAX],
                      int n, const MergeOpts *o, Backend *be, const char *out_path, MergeStats *stats,
                      char *err, size_t errlen) {
    MergeStats s = {0};
    SafeTensors *st = st_open(in_path, err, errlen);
    if (!st) return -1;
    int nt = st_count(st), rc = -1;
    int *who = malloc(sizeof(int) * (size_t)(nt ? nt : 1)); /* tensor -> adapter, or -1 */
    int *odt = malloc(sizeof(int) * (size_t)(nt ? nt : 1)); /* output dtype */
    float *fbuf = NULL, *W = NULL;
    void *obuf = NULL;
    Buf h = {0};
    FsAtomic *f = NULL;
    if (!who || !odt) { err_set(err, errlen, "out of host memory"); goto out; }
    for (int i = 0; i < nt; i++) {
        const StTensor *t = st_at(st, i);
        who[i] = -1;
        odt[i] = o->dtype >= 0 && is_float(t->dtype) ? o->dtype : t->dtype;
    }
    int64_t max_w = 0;
    for (int j = 0; j < n; j++) {
        const Adapter *a = ads[j];
        const StTensor *t = st_find(st, keys[j]);
        int k = -1;
        for (int i = 0; t && i < nt && k < 0; i++) if (st_at(st, i) == t) k = i;
        if (!t || k < 0) {
            err_set(err, errlen, "%s: no tensor %s (the weight of adapter layer %s): not this model",
                    in_path, keys[j], a->name);
            goto out;
        }
        int shape_ok = is_float(t->dtype) && t->numel == (int64_t)a->d_out * a->d_in && t->ndim >= 2 &&
                       t->shape[0] == a->d_out;
        for (int d = 2; shape_ok && d < t->ndim; d++) shape_ok = t->shape[d] == 1;
        if (!shape_ok) {
            err_set(err, errlen, "%s: %s is %s of %lld elements, adapter layer %s needs a float %dx%d weight",
                    in_path, keys[j], st_dtype_name(t->dtype), (long long)t->numel, a->name, a->d_out, a->d_in);
            goto out;
        }
        if (who[k] >= 0) {
            err_set(err, errlen, "adapter layers %s and %s share tensor %s", ads[who[k]]->name, a->name, keys[j]);
            goto out;
        }
        who[k] = j;
        if (t->numel > max_w) max_w = t->numel;
    }
    /* header: the input's metadata and merged_adapter/merged_scale, tensors in input order */
    puts_(&h, "{\"__metadata__\":{");
    int first = 1;
    for (int i = 0; i < st_metadata_count(st); i++) {
        const char *k = st_metadata_key(st, i);
        if (!strcmp(k, "merged_adapter") || !strcmp(k, "merged_scale")) continue;
        if (!first) puts_(&h, ",");
        first = 0;
        put_str(&h, k);
        puts_(&h, ":");
        put_str(&h, st_metadata(st, k));
    }
    char sc[64];
    snprintf(sc, sizeof sc, "%.9g", (double)o->scale);
    if (!first) puts_(&h, ",");
    puts_(&h, "\"merged_adapter\":");
    put_str(&h, o->adapter_name ? o->adapter_name : "");
    puts_(&h, ",\"merged_scale\":");
    put_str(&h, sc);
    puts_(&h, "}");
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        const StTensor *t = st_at(st, i);
        char num[64];
        puts_(&h, ",");
        put_str(&h, t->name);
        puts_(&h, ":{\"dtype\":\"");
        puts_(&h, st_dtype_name(odt[i]));
        puts_(&h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            puts_(&h, num);
        }
        uint64_t nb = (uint64_t)t->numel * (uint64_t)st_dtype_size(odt[i]);
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + nb));
        puts_(&h, num);
        off += nb;
    }
    puts_(&h, "}");
    while (!h.oom && h.n % 8) puts_(&h, " ");
    if (h.oom) { err_set(err, errlen, "out of host memory"); goto out; }

    fbuf = malloc(sizeof(float) * (size_t)CHUNK);
    obuf = malloc(sizeof(float) * (size_t)(max_w > CHUNK ? max_w : CHUNK));
    if (!fbuf || !obuf) { err_set(err, errlen, "out of host memory"); goto out; }
    if (max_w) {
        W = be->alloc(be, sizeof(float) * (size_t)max_w);
        if (!W) { err_set(err, errlen, "out of memory for a %lld-element weight", (long long)max_w); goto out; }
    }
    f = fs_atomic_open(out_path, err, errlen);
    if (!f) goto out;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
    int werr = fs_atomic_write(f, len8, 8) | fs_atomic_write(f, h.s, h.n);
    for (int i = 0; !werr && i < nt; i++) {
        const StTensor *t = st_at(st, i);
        if (who[i] >= 0) {
            /* W + S dW in f32, rounded to the output dtype */
            Adapter a = *ads[who[i]];
            float *host = obuf;
            if (st_load_f32(t, host, in_path, err, errlen) != 0) {
                fs_atomic_abort(f);
                f = NULL;
                goto out;
            }
            be->upload(be, W, host, sizeof(float) * (size_t)t->numel);
            a.scale *= o->scale;
            adapter_merge_into(be, &a, W, NULL);
            be->download(be, host, W, sizeof(float) * (size_t)t->numel);
            st_from_f32(odt[i], host, t->numel, obuf); /* in place */
            werr = fs_atomic_write(f, obuf, (size_t)t->numel * (size_t)st_dtype_size(odt[i]));
            s.merged++;
        } else if (odt[i] == t->dtype) {
            werr = fs_atomic_write(f, t->data, t->nbytes);
        } else {
            int isz = st_dtype_size(t->dtype);
            for (int64_t b = 0; !werr && b < t->numel; b += CHUNK) {
                StTensor part = *t;
                part.numel = t->numel - b < CHUNK ? t->numel - b : CHUNK;
                part.data = (const char *)t->data + b * isz;
                part.nbytes = (size_t)part.numel * (size_t)isz;
                part.ndim = 1;
                part.shape[0] = part.numel;
                /* copied, not merged: a non-finite value is carried over as the byte
                 * copy of a same-dtype tensor would (only the merged weights refuse one) */
                int rr = st_read_f32(&part, fbuf);
                if (rr == ST_READ_DTYPE) {
                    st_read_error(t, rr, in_path, err, errlen);   /* names the whole tensor */
                    fs_atomic_abort(f);
                    f = NULL;
                    goto out;
                }
                st_from_f32(odt[i], fbuf, part.numel, obuf);
                werr = fs_atomic_write(f, obuf, (size_t)part.numel * (size_t)st_dtype_size(odt[i]));
            }
        }
        s.tensors++;
    }
    (void)werr; /* a write error is kept by f and reported by commit */
    FsAtomic *ff = f;
    f = NULL;
    if (fs_atomic_commit(ff, err, errlen) != 0) goto out;
    s.bytes = (int64_t)(8 + h.n + off);
    rc = 0;
out:
    if (f) fs_atomic_abort(f);
    if (W) be->free(be, W);
    free(fbuf);
    free(obuf);
    free(h.s);
    free(who);
    free(odt);
    st_close(st);
    if (stats) *stats = s;
    return rc;
}

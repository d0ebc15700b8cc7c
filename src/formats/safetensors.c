/* safetensors.c — see safetensors.h. Validation follows the reference Rust
 * implementation (huggingface/safetensors): header limits, dtype sizes, and a
 * data buffer exactly tiled by the tensors. */
#include "formats/safetensors.h"
#include "core/fsutil.h"
#include "formats/json.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const dtype_names[ST_NDTYPES] = {
    "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
    "I32", "U32", "F32", "F64", "I64", "U64" };
static const int dtype_sizes[ST_NDTYPES] = { 1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8 };

const char *st_dtype_name(int d) { return d >= 0 && d < ST_NDTYPES ? dtype_names[d] : "?"; }
int st_dtype_size(int d) { return d >= 0 && d < ST_NDTYPES ? dtype_sizes[d] : 0; }
int st_dtype_from_name(const char *s) {
    for (int i = 0; i < ST_NDTYPES; i++) if (s && strcmp(s, dtype_names[i]) == 0) return i;
    return -1;
}

/* ---- conversions (core/half.h) ---- */

int64_t st_from_f32(int dtype, const float *src, int64_t n, void *dst) {
    if (dtype == ST_F32) {
        if (dst != src) memcpy(dst, src, sizeof(float) * (size_t)n);
        return 0;
    }
    if (dtype != ST_F16 && dtype != ST_BF16) return -1;
    uint16_t *d = dst;
    int64_t overflow = 0;
    /* in place, element i is read before bytes [2i, 2i+2) are written: no later one is touched */
    for (int64_t i = 0; i < n; i++) {
        float v = src[i];
        uint16_t h = dtype == ST_F16 ? f32_to_f16(v) : f32_to_bf16(v);
        float back = dtype == ST_F16 ? f16_to_f32(h) : bf16_to_f32(h);
        overflow += isfinite(v) && isinf(back);
        d[i] = h;
    }
    return overflow;
}

int st_float_dtype_parse(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "f32")) return ST_F32;
    if (!strcmp(s, "f16")) return ST_F16;
    if (!strcmp(s, "bf16")) return ST_BF16;
    return -1;
}

int st_read_f32(const StTensor *t, float *dst) {
    const unsigned char *s = t->data;
    int64_t n = t->numel;
    int sz = st_dtype_size(t->dtype), bad = 0;
    if (t->dtype == ST_F8_E5M2 || t->dtype == ST_F8_E4M3 || sz == 0) return ST_READ_DTYPE;
    /* memcpy per element: mapped data may be unaligned. Each value is checked as
     * it is converted (an all-ones exponent is NaN or Inf); the weight dtypes get
     * loops of their own that the compiler vectorises. */
    if (t->dtype == ST_F32) {
        #pragma omp parallel for simd if (n > (1 << 16)) reduction(|:bad)
        for (int64_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, s + 4 * i, 4);
            memcpy(dst + i, &u, 4);
            bad |= (u & 0x7f800000u) == 0x7f800000u;
        }
        return bad ? ST_READ_NONFINITE : 0;
    }
    if (t->dtype == ST_F16 || t->dtype == ST_BF16) {
        uint16_t mask = t->dtype == ST_F16 ? 0x7c00 : 0x7f80;
        int half = t->dtype == ST_F16;
        #pragma omp parallel for simd if (n > (1 << 16)) reduction(|:bad)
        for (int64_t i = 0; i < n; i++) {
            uint16_t u;
            memcpy(&u, s + 2 * i, 2);
            dst[i] = half ? f16_to_f32(u) : bf16_to_f32(u);
            bad |= (u & mask) == mask;
        }
        return bad ? ST_READ_NONFINITE : 0;
    }
    /* the rest: integers (always finite) and float64 (may also overflow float) */
    #pragma omp parallel for if (n > (1 << 16)) reduction(|:bad)
    for (int64_t i = 0; i < n; i++) {
        const unsigned char *p = s + i * sz;
        uint16_t u16; uint32_t u32; uint64_t u64; double f64;
        switch (t->dtype) {
        case ST_BOOL: dst[i] = p[0] ? 1.0f : 0.0f; break;
        case ST_U8: dst[i] = (float)p[0]; break;
        case ST_I8: dst[i] = (float)(int8_t)p[0]; break;
        case ST_I16: memcpy(&u16, p, 2); dst[i] = (float)(int16_t)u16; break;
        case ST_U16: memcpy(&u16, p, 2); dst[i] = (float)u16; break;
        case ST_I32: memcpy(&u32, p, 4); dst[i] = (float)(int32_t)u32; break;
        case ST_U32: memcpy(&u32, p, 4); dst[i] = (float)u32; break;
        case ST_F64: memcpy(&f64, p, 8); dst[i] = (float)f64; break;
        case ST_I64: memcpy(&u64, p, 8); dst[i] = (float)(int64_t)u64; break;
        case ST_U64: memcpy(&u64, p, 8); dst[i] = (float)u64; break;
        }
        bad |= !isfinite(dst[i]);
    }
    return bad ? ST_READ_NONFINITE : 0;
}

/* the first value of t that is not finite as a float (the error path only) */
static int64_t first_nonfinite(const StTensor *t, double *value) {
    int sz = st_dtype_size(t->dtype);
    const unsigned char *s = t->data;
    for (int64_t i = 0; i < t->numel; i++) {
        const unsigned char *p = s + i * sz;
        uint16_t u16; double v;
        float f;
        switch (t->dtype) {
        case ST_F32: memcpy(&f, p, 4); v = f; break;
        case ST_F16: memcpy(&u16, p, 2); v = f16_to_f32(u16); break;
        case ST_BF16: memcpy(&u16, p, 2); v = bf16_to_f32(u16); break;
        case ST_F64: memcpy(&v, p, 8); break;
        default: continue;
        }
        if (!isfinite((float)v)) { *value = v; return i; }
    }
    return -1;
}

void st_read_error(const StTensor *t, int rc, const char *path, char *err, size_t errlen) {
    if (rc == ST_READ_NONFINITE) {
        double v = 0;
        int64_t i = first_nonfinite(t, &v);
        const char *what = isnan(v) ? "NaN" : isinf(v) ? (v > 0 ? "+Inf" : "-Inf") : "a value beyond float range";
        err_set(err, errlen, "%s%stensor '%s' holds %s (element %lld of %lld): the file is damaged "
                "or was saved from a run that diverged; use another file (or re-export it from a "
                "good checkpoint)", path ? path : "", path ? ": " : "", t->name, what, (long long)i,
                (long long)t->numel);
    } else {
        err_set(err, errlen, "%s%stensor '%s' has dtype %s, which cannot be read as float",
                path ? path : "", path ? ": " : "", t->name, st_dtype_name(t->dtype));
    }
}

int st_load_f32(const StTensor *t, float *dst, const char *path, char *err, size_t errlen) {
    int rc = st_read_f32(t, dst);
    if (rc == 0) return 0;
    st_read_error(t, rc, path, err, errlen);
    return -1;
}

/* ---- reader ---- */

struct SafeTensors {
    void *map;
    size_t size;
    JsonValue *hdr;           /* owns tensor names and metadata strings */
    int n;
    StTensor *t;              /* header order */
    int *by_name;             /* indices sorted by name, for st_find */
    const JsonValue *meta;    /* __metadata__ object or NULL */
};

static int sterr(char *err, size_t errlen, const char *path, const char *fmt, ...) {
    if (err && errlen) {
        int k = snprintf(err, errlen, "%s: ", path);
        if (k >= 0 && (size_t)k < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    return -1;
}

/* a JSON number that is a non-negative integer exactly representable in a double */
static int json_uint(const JsonValue *v, int64_t *out) {
    if (!v || v->type != JSON_NUMBER) return -1;
    double d = v->number;
    if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d)) return -1;
    *out = (int64_t)d;
    return 0;
}

static int cmp_name(const void *a, const void *b, void *ctx) {
    const StTensor *t = ctx;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

typedef struct { int64_t begin, end; int idx; } Span;
static int cmp_span(const void *a, const void *b) {
    const Span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static void shape_str(const StTensor *t, char *buf, size_t cap) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->ndim && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%" PRId64, d ? ", " : "", t->shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

static int parse_tensor(SafeTensors *st, const char *path, const char *name, const JsonValue *v,
                        StTensor *t, int64_t *begin, int64_t *end, size_t dlen, char *err, size_t errlen) {
    t->name = (char *)name;
    if (v->type != JSON_OBJECT) return sterr(err, errlen, path, "tensor '%s': entry is not an object", name);
    const JsonValue *dt = json_get(v, "dtype"), *sh = json_get(v, "shape"), *off = json_get(v, "data_offsets");
    if (!dt) return sterr(err, errlen, path, "tensor '%s': missing dtype", name);
    if (!sh) return sterr(err, errlen, path, "tensor '%s': missing shape", name);
    if (!off) return sterr(err, errlen, path, "tensor '%s': missing data_offsets", name);
    if (dt->type != JSON_STRING || (t->dtype = st_dtype_from_name(dt->string)) < 0)
        return sterr(err, errlen, path, "tensor '%s': unknown dtype '%s' (expected F32, F16, BF16, F64, I64, ...)",
                     name, dt->type == JSON_STRING ? dt->string : "(not a string)");
    if (sh->type != JSON_ARRAY) return sterr(err, errlen, path, "tensor '%s': shape is not an array", name);
    if (sh->n > ST_MAX_DIMS) return sterr(err, errlen, path, "tensor '%s': shape has %d dimensions (at most %d supported)", name, sh->n, ST_MAX_DIMS);
    t->ndim = sh->n;
    t->numel = 1;
    for (int d = 0; d < sh->n; d++) {
        if (json_uint(&sh->items[d], &t->shape[d]))
            return sterr(err, errlen, path, "tensor '%s': shape[%d] is not a non-negative integer", name, d);
        if (t->shape[d] && t->numel > INT64_MAX / st_dtype_size(t->dtype) / t->shape[d])
            return sterr(err, errlen, path, "tensor '%s': shape overflows (too many elements)", name);
        t->numel *= t->shape[d];
    }
    int64_t nbytes = t->numel * st_dtype_size(t->dtype);
    if (off->type != JSON_ARRAY || off->n != 2 || json_uint(&off->items[0], begin) || json_uint(&off->items[1], end))
        return sterr(err, errlen, path, "tensor '%s': data_offsets must be [begin, end] with non-negative integers", name);
    if (*begin > *end)
        return sterr(err, errlen, path, "tensor '%s': data_offsets [%" PRId64 ", %" PRId64 "] has begin > end", name, *begin, *end);
    if (*end - *begin != nbytes) {
        char s[160];
        shape_str(t, s, sizeof s);
        return sterr(err, errlen, path, "tensor '%s': data_offsets [%" PRId64 ", %" PRId64 "] span %" PRId64
                     " bytes but dtype %s with shape %s needs %" PRId64, name, *begin, *end, *end - *begin,
                     st_dtype_name(t->dtype), s, nbytes);
    }
    if ((uint64_t)*end > dlen)
        return sterr(err, errlen, path, "tensor '%s': data_offsets [%" PRId64 ", %" PRId64
                     "] lie outside the data buffer (%zu bytes; file truncated?)", name, *begin, *end, dlen);
    t->nbytes = (size_t)nbytes;
    (void)st;
    return 0;
}

SafeTensors *st_open(const char *path, char *err, size_t errlen) {
    off_t fsize;
    int fd = fs_open_regular(path, &fsize, err, errlen);
    if (fd < 0) return NULL;
    size_t size = (size_t)fsize;
    if (size < 8) {
        sterr(err, errlen, path, "file is %zu bytes, shorter than the 8-byte header length (not a safetensors file)", size);
        close(fd);
        return NULL;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) { sterr(err, errlen, path, "cannot mmap: %s", strerror(errno)); return NULL; }

    SafeTensors *st = calloc(1, sizeof *st);
    if (!st) { munmap(map, size); sterr(err, errlen, path, "out of memory"); return NULL; }
    st->map = map;
    st->size = size;
    const unsigned char *b = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    if (hlen > ST_MAX_HEADER) {
        sterr(err, errlen, path, "header length %" PRIu64 " exceeds the 100 MB limit (corrupt or not a safetensors file)", hlen);
        goto fail;
    }
    if (hlen > size - 8) {
        sterr(err, errlen, path, "header length %" PRIu64 " is larger than the file (%zu bytes; truncated?)", hlen, size);
        goto fail;
    }
    char jerr[200];
    st->hdr = json_parse((const char *)b + 8, (size_t)hlen, jerr, sizeof jerr);
    if (!st->hdr) { sterr(err, errlen, path, "invalid JSON header: %s", jerr); goto fail; }
    if (st->hdr->type != JSON_OBJECT) { sterr(err, errlen, path, "header is not a JSON object"); goto fail; }

    const unsigned char *data = b + 8 + hlen;
    size_t dlen = size - 8 - (size_t)hlen;
    int nk = st->hdr->n;
    st->t = calloc((size_t)nk + 1, sizeof(StTensor));
    st->by_name = calloc((size_t)nk + 1, sizeof(int));
    Span *sp = calloc((size_t)nk + 1, sizeof(Span));
    if (!st->t || !st->by_name || !sp) { free(sp); sterr(err, errlen, path, "out of memory"); goto fail; }
    int n_meta = 0;
    for (int i = 0; i < nk; i++) {
        const char *key = st->hdr->keys[i];
        const JsonValue *v = &st->hdr->items[i];
        if (strcmp(key, "__metadata__") == 0) {
            if (++n_meta > 1) { free(sp); sterr(err, errlen, path, "duplicate __metadata__ entry"); goto fail; }
            if (v->type != JSON_OBJECT) { free(sp); sterr(err, errlen, path, "__metadata__ is not an object"); goto fail; }
            for (int j = 0; j < v->n; j++)
                if (v->items[j].type != JSON_STRING) {
                    free(sp);
                    sterr(err, errlen, path, "__metadata__ value of '%s' is not a string", v->keys[j]);
                    goto fail;
                }
            st->meta = v;
            continue;
        }
        StTensor *t = &st->t[st->n];
        if (parse_tensor(st, path, key, v, t, &sp[st->n].begin, &sp[st->n].end, dlen, err, errlen)) { free(sp); goto fail; }
        t->data = data + sp[st->n].begin;
        sp[st->n].idx = st->n;
        st->by_name[st->n] = st->n;
        st->n++;
    }
    /* names unique */
    qsort_r(st->by_name, (size_t)st->n, sizeof(int), cmp_name, st->t);
    for (int i = 1; i < st->n; i++)
        if (strcmp(st->t[st->by_name[i]].name, st->t[st->by_name[i - 1]].name) == 0) {
            free(sp);
            sterr(err, errlen, path, "duplicate tensor name '%s'", st->t[st->by_name[i]].name);
            goto fail;
        }
    /* tensors must tile the data buffer: sorted by offset, each starts where the last ended */
    qsort(sp, (size_t)st->n, sizeof(Span), cmp_span);
    int64_t expect = 0;
    for (int i = 0; i < st->n; i++) {
        const char *nm = st->t[sp[i].idx].name;
        if (sp[i].begin < expect) {
            sterr(err, errlen, path, "tensor '%s' data_offsets [%" PRId64 ", %" PRId64 "] overlap tensor '%s' [%" PRId64
                  ", %" PRId64 "]", nm, sp[i].begin, sp[i].end, st->t[sp[i - 1].idx].name, sp[i - 1].begin, sp[i - 1].end);
            free(sp);
            goto fail;
        }
        if (sp[i].begin > expect) {
            sterr(err, errlen, path, "data buffer bytes [%" PRId64 ", %" PRId64 ") are not covered by any tensor "
                  "(hole before '%s'; tensors must be contiguous)", expect, sp[i].begin, nm);
            free(sp);
            goto fail;
        }
        expect = sp[i].end;
    }
    free(sp);
    if ((size_t)expect != dlen) {
        sterr(err, errlen, path, "data buffer has %zu bytes but the tensors cover only %" PRId64
              " (trailing bytes not covered by any tensor)", dlen, expect);
        goto fail;
    }
    return st;
fail:
    st_close(st);
    return NULL;
}

void st_close(SafeTensors *st) {
    if (!st) return;
    if (st->map) munmap(st->map, st->size);
    json_free(st->hdr);
    free(st->t);
    free(st->by_name);
    free(st);
}

int st_count(const SafeTensors *st) { return st ? st->n : 0; }
const StTensor *st_at(const SafeTensors *st, int i) { return st && i >= 0 && i < st->n ? &st->t[i] : NULL; }

const StTensor *st_find(const SafeTensors *st, const char *name) {
    if (!st || !name) return NULL;
    int lo = 0, hi = st->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const StTensor *t = &st->t[st->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid - 1; else lo = mid + 1;
    }
    return NULL;
}

const char *st_metadata(const SafeTensors *st, const char *key) {
    const JsonValue *v = st ? json_get(st->meta, key) : NULL;
    return v ? v->string : NULL;
}
int st_metadata_count(const SafeTensors *st) { return st && st->meta ? st->meta->n : 0; }
const char *st_metadata_key(const SafeTensors *st, int i) {
    return i >= 0 && i < st_metadata_count(st) ? st->meta->keys[i] : NULL;
}

/* ---- writer ---- */

typedef struct {
    char *name;
    int dtype, ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
    void *owned;
    size_t nbytes;
} WEntry;

struct StWriter {
    WEntry *e;
    int n, cap;
    char **mkeys, **mvals;
    int nm;
    char err[256];   /* first add error, reported by stw_save */
};

StWriter *stw_create(void) { return calloc(1, sizeof(StWriter)); }

void stw_free(StWriter *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) { free(w->e[i].name); free(w->e[i].owned); }
    for (int i = 0; i < w->nm; i++) { free(w->mkeys[i]); free(w->mvals[i]); }
    free(w->e); free(w->mkeys); free(w->mvals);
    free(w);
}

static int add_fail(StWriter *w, const char *name, const char *why) {
    if (!w->err[0]) snprintf(w->err, sizeof w->err, "tensor '%s': %s", name ? name : "(null)", why);
    return -1;
}

static int add_entry(StWriter *w, const char *name, int dtype, int ndim, const int64_t *shape,
                     const void *data, int copy) {
    if (!name || !name[0]) return add_fail(w, name, "empty name");
    if (strcmp(name, "__metadata__") == 0) return add_fail(w, name, "reserved name");
    if (dtype < 0 || dtype >= ST_NDTYPES) return add_fail(w, name, "unknown dtype");
    if (ndim < 0 || ndim > ST_MAX_DIMS) return add_fail(w, name, "ndim must be 0..8");
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return add_fail(w, name, "negative dimension");
        if (shape[d] && numel > INT64_MAX / 8 / shape[d]) return add_fail(w, name, "shape overflows");
        numel *= shape[d];
    }
    if (!data && numel) return add_fail(w, name, "no data");
    if (w->n == w->cap) {
        int nc = w->cap ? w->cap * 2 : 16;
        WEntry *ne = realloc(w->e, (size_t)nc * sizeof(WEntry));
        if (!ne) return add_fail(w, name, "out of memory");
        w->e = ne; w->cap = nc;
    }
    WEntry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->nbytes = (size_t)numel * (size_t)st_dtype_size(dtype);
    if (!(e->name = strdup(name))) return add_fail(w, name, "out of memory");
    if (copy && e->nbytes) {
        if (!(e->owned = malloc(e->nbytes))) { free(e->name); return add_fail(w, name, "out of memory"); }
        memcpy(e->owned, data, e->nbytes);
        e->data = e->owned;
    } else {
        e->data = data;
    }
    e->dtype = dtype;
    e->ndim = ndim;
    for (int d = 0; d < ndim; d++) e->shape[d] = shape[d];
    w->n++;
    return 0;
}

int stw_add_f32(StWriter *w, const char *name, int ndim, const int64_t *shape, const float *data) {
    return add_entry(w, name, ST_F32, ndim, shape, data, 1);
}
int stw_add_f32_as(StWriter *w, const char *name, int dtype, int ndim, const int64_t *shape,
                   const float *data) {
    if (dtype == ST_F32) return stw_add_f32(w, name, ndim, shape, data);
    if (dtype != ST_F16 && dtype != ST_BF16) return add_fail(w, name, "not a float dtype (F32, F16, BF16)");
    int64_t numel = 1;
    for (int d = 0; d < ndim && d < ST_MAX_DIMS; d++)
        numel = shape[d] > 0 && numel <= INT64_MAX / 8 / shape[d] ? numel * shape[d] : 0;
    uint16_t *buf = malloc(sizeof(uint16_t) * (size_t)(numel ? numel : 1));
    if (!buf) return add_fail(w, name, "out of memory");
    int64_t over = numel ? st_from_f32(dtype, data, numel, buf) : 0;
    if (over) {
        free(buf);
        return add_fail(w, name, dtype == ST_F16 ? "values beyond F16's range (|x| > 65504): write it as BF16 or F32"
                                                 : "values beyond BF16's range: write it as F32");
    }
    if (add_entry(w, name, dtype, ndim, shape, buf, 0) != 0) { free(buf); return -1; }
    w->e[w->n - 1].owned = buf;
    return 0;
}

int stw_add_ref(StWriter *w, const char *name, int dtype, int ndim, const int64_t *shape, const void *data) {
    return add_entry(w, name, dtype, ndim, shape, data, 0);
}

const char *stw_error(const StWriter *w) { return w->err; }

int stw_set_metadata(StWriter *w, const char *key, const char *value) {
    if (!key || !value) return -1;
    for (int i = 0; i < w->nm; i++)
        if (strcmp(w->mkeys[i], key) == 0) {
            char *v = strdup(value);
            if (!v) return -1;
            free(w->mvals[i]);
            w->mvals[i] = v;
            return 0;
        }
    char **nk = realloc(w->mkeys, (size_t)(w->nm + 1) * sizeof(char *));
    if (!nk) return -1;
    w->mkeys = nk;
    char **nv = realloc(w->mvals, (size_t)(w->nm + 1) * sizeof(char *));
    if (!nv) return -1;
    w->mvals = nv;
    w->mkeys[w->nm] = strdup(key);
    w->mvals[w->nm] = strdup(value);
    if (!w->mkeys[w->nm] || !w->mvals[w->nm]) { free(w->mkeys[w->nm]); free(w->mvals[w->nm]); return -1; }
    w->nm++;
    return 0;
}

typedef struct { char *s; size_t n, cap; int oom; } Buf;

static void buf_put(Buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) { b->oom = 1; return; }
        b->s = ns; b->cap = nc;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void buf_str(Buf *b, const char *s) { buf_put(b, s, strlen(s)); }
static void buf_json(Buf *b, const char *s) {
    size_t need = json_escape(NULL, 0, s);
    char small[256], *t = need < sizeof small ? small : malloc(need + 1);
    if (!t) { b->oom = 1; return; }
    json_escape(t, need + 1, s);
    buf_put(b, t, need);
    if (t != small) free(t);
}

static int cmp_wentry(const void *a, const void *b) {
    const WEntry *x = a, *y = b;
    int sx = st_dtype_size(x->dtype), sy = st_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}
static int cmp_pstr(const void *a, const void *b) { return strcmp(**(char *const *const *)a, **(char *const *const *)b); }

int stw_save(StWriter *w, const char *path, char *err, size_t errlen) {
    if (w->err[0]) return sterr(err, errlen, path, "%s", w->err);
    if (w->n) qsort(w->e, (size_t)w->n, sizeof(WEntry), cmp_wentry);   /* e is NULL when empty */
    for (int i = 1; i < w->n; i++)
        if (strcmp(w->e[i].name, w->e[i - 1].name) == 0)
            return sterr(err, errlen, path, "duplicate tensor name '%s'", w->e[i].name);
    Buf h = {0};
    char num[64];
    buf_str(&h, "{");
    if (w->nm) {
        /* sort metadata by key through an index of pointers to the key slots */
        char ***ord = malloc((size_t)w->nm * sizeof(char **));
        if (!ord) return sterr(err, errlen, path, "out of memory");
        for (int i = 0; i < w->nm; i++) ord[i] = &w->mkeys[i];
        qsort(ord, (size_t)w->nm, sizeof(char **), cmp_pstr);
        buf_str(&h, "\"__metadata__\":{");
        for (int i = 0; i < w->nm; i++) {
            int k = (int)(ord[i] - w->mkeys);
            if (i) buf_str(&h, ",");
            buf_json(&h, w->mkeys[k]);
            buf_str(&h, ":");
            buf_json(&h, w->mvals[k]);
        }
        buf_str(&h, "}");
        free(ord);
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const WEntry *e = &w->e[i];
        if (i || w->nm) buf_str(&h, ",");
        buf_json(&h, e->name);
        buf_str(&h, ":{\"dtype\":\"");
        buf_str(&h, st_dtype_name(e->dtype));
        buf_str(&h, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", e->shape[d]);
            buf_str(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + e->nbytes);
        buf_str(&h, num);
        off += e->nbytes;
    }
    buf_str(&h, "}");
    while (h.n % 8) buf_str(&h, " ");   /* the reference pads with spaces so data starts 8-aligned */
    if (h.oom) { free(h.s); return sterr(err, errlen, path, "out of memory"); }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
    FsAtomic *f = fs_atomic_open(path, err, errlen);
    if (!f) { free(h.s); return -1; }
    fs_atomic_write(f, len8, 8);
    fs_atomic_write(f, h.s, h.n);
    for (int i = 0; i < w->n; i++)
        if (w->e[i].nbytes) fs_atomic_write(f, w->e[i].data, w->e[i].nbytes);
    free(h.s);
    return fs_atomic_commit(f, err, errlen);
}

static void shape_text(char *buf, size_t cap, const int64_t *s, int nd) {
    buf[0] = 0;
    for (int d = 0; d < nd && d < 8; d++)
        snprintf(buf + strlen(buf), cap - strlen(buf), "%s%lld", d ? "," : "", (long long)s[d]);
}

int st_read_f32_as(const StTensor *t, int ndim, const int64_t *shape, float *dst, const char *path,
                   char *err, size_t errlen) {
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= shape[d];
    int same = t->numel == numel;
    if (same) {
        int nd = t->ndim < ndim ? t->ndim : ndim;
        for (int d = 0; d < nd; d++) if (t->shape[d] != shape[d]) same = 0;
        for (int d = ndim; d < t->ndim; d++) if (t->shape[d] != 1) same = 0;
        for (int d = t->ndim; d < ndim; d++) if (shape[d] != 1) same = 0;
    }
    if (!same) {
        char want[96], got[96];
        shape_text(want, sizeof want, shape, ndim);
        shape_text(got, sizeof got, t->shape, t->ndim);
        snprintf(err, errlen, "%s: tensor '%s' has shape [%s], the config needs [%s]", path, t->name,
                 got, want);
        return -1;
    }
    return st_load_f32(t, dst, path, err, errlen);
}

/* test_merge.c — checkpoint_merge (models/merge.h) on the small SD 1.5-like
 * single file with its own UNet config: a KronA set with known random factors
 * merged at scale S, checked against an explicit Kronecker product (naive
 * loop, double): every touched tensor is W + S * scale * kron(A, B) rounded to
 * the output dtype, every other tensor byte for byte the input's (or the
 * input's rounded to the asked dtype), same keys, shapes and order, the
 * input's metadata plus merged_adapter / merged_scale. Also: the adapter file
 * path (merge_load_adapters) and its one-line refusals, output exists.
 *
 * Diffusers folders (diffusers_merge), assembled here from the generated golden
 * checkpoints' diffusers twins (each part's tensors under its folder, the
 * configs from their metadata) and random text encoders: UNet and text encoder
 * adapters merged into unet/ and text_encoder/ (SDXL-like: text_encoder_2/ too,
 * UNet keys by LDM paths), every touched tensor against the same explicit
 * Kronecker product in the file's own dtype (an F16 variant file, a BF16 one),
 * every other tensor and every other file byte for byte; the merged folder
 * opens as a model that samples what the base folder with the adapter samples;
 * sharded weights with their index; the one-line refusals (.bin weights, an
 * existing output, an output inside the model, an adapter for another model)
 * leaving nothing behind. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_helpers.h"

#include "core/backend.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "models/adapter.h"
#include "models/adapter_file.h"
#include "models/convert.h"
#include "models/merge.h"
#include "models/model.h"
#include "models/text_encoder.h"
#include "models/unet.h"
#include "models/unet_config.h"

#define GOLDEN "tests/golden/"

typedef struct Fix {
    Backend *be;
    UNetConfig cfg;
    ConvertMap *map;
    char dir[64], in[128], out[128];
} Fix;

static int setup_for(void **state, const char *stem, ModelKind kind) {
    Fix *f = calloc(1, sizeof *f);
    char err[1024], path[192];
    f->be = backend_cpu_create();
    snprintf(path, sizeof path, GOLDEN "unet_%s.json", stem);
    if (unet_config_from_json(path, &f->cfg, err, sizeof err)) fail_msg("%s", err);
    ConvertShape shape = {.unet = &f->cfg};
    f->map = convert_map_create(kind, CONVERT_UNET, &shape, err, sizeof err);
    if (!f->map) fail_msg("%s", err);
    snprintf(f->dir, sizeof f->dir, "/tmp/krona-merge-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    /* the golden file with metadata added (and the writer's tensor order) */
    snprintf(f->in, sizeof f->in, "%s/in.safetensors", f->dir);
    snprintf(f->out, sizeof f->out, "%s/out.safetensors", f->dir);
    snprintf(path, sizeof path, GOLDEN "ldm_%s.safetensors", stem);
    SafeTensors *st = st_open(path, err, sizeof err);
    if (!st) fail_msg("%s", err);
    StWriter *w = stw_create();
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *t = st_at(st, i);
        stw_add_ref(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    stw_set_metadata(w, "format", "pt");
    stw_set_metadata(w, "note", "a \"quoted\" value");
    if (stw_save(w, f->in, err, sizeof err)) fail_msg("%s", err);
    stw_free(w);
    st_close(st);
    *state = f;
    return 0;
}

static int setup(void **state) { return setup_for(state, "sd15like", MODEL_KIND_SD15); }
static int setup_sdxl(void **state) { return setup_for(state, "sdxllike", MODEL_KIND_SDXL); }

static int teardown(void **state) {
    Fix *f = *state;
    char p[192];
    const char *names[] = {"in.safetensors", "out.safetensors", "a.safetensors", "b.safetensors"};
    for (int i = 0; i < 4; i++) { snprintf(p, sizeof p, "%s/%s", f->dir, names[i]); unlink(p); }
    rmdir(f->dir);
    convert_map_free(f->map);
    backend_destroy(f->be);
    free(f);
    return 0;
}

/* KronA a1 x a2 on attn (+ ffn) of the small config, every factor random */
static void make_set(Fix *f, AdapterSet *set, int a1, int a2, int modules, float alpha, uint64_t seed) {
    char err[1024];
    memset(set, 0, sizeof *set);
    set->be = f->be;
    set->spec = (AdapterSpec){.kind = ADAPTER_KRONA, .a1 = a1, .a2 = a2, .alpha = alpha, .modules = modules};
    UNetParam *params;
    UNetLinear *lin;
    int np, nl;
    assert_int_equal(unet_param_table(&f->cfg, &params, &np, &lin, &nl), 0);
    free(params);
    set->items = calloc((size_t)nl, sizeof *set->items);
    Rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < nl; i++) {
        if (!adapter_selects(&set->spec, lin[i].is_attn, lin[i].is_ffn)) continue;
        Adapter *a = &set->items[set->n++];
        if (adapter_init(a, f->be, &set->spec, lin[i].name, lin[i].d_out, lin[i].d_in, 1, err, sizeof err))
            fail_msg("%s", err);
        float *A = th_rand(&r, adapter_numel_A(a), -1, 1), *B = th_rand(&r, adapter_numel_B(a), -0.5f, 0.5f);
        f->be->upload(f->be, a->A, A, sizeof(float) * (size_t)adapter_numel_A(a));
        f->be->upload(f->be, a->B, B, sizeof(float) * (size_t)adapter_numel_B(a));
        free(A);
        free(B);
    }
    free(lin);
}

static float round_to(float x, int dt) {
    if (dt == ST_F16) return f16_to_f32(f32_to_f16(x));
    if (dt == ST_BF16) return bf16_to_f32(f32_to_bf16(x));
    return x;
}

/* out against in, set and S with an explicit kron; dt: output dtype of float tensors (-1 same) */
static void check_merged(Fix *f, const AdapterSet *set, float S, int dt, const char *adapter_name) {
    char err[1024];
    SafeTensors *in = st_open(f->in, err, sizeof err), *out = st_open(f->out, err, sizeof err);
    if (!in || !out) fail_msg("%s", err);
    assert_int_equal(st_count(in), st_count(out));
    int nt = st_count(in);
    int *touched = calloc((size_t)nt, sizeof *touched);
    /* touched tensors: the naive W + S * scale * kron(A, B) */
    for (int j = 0; j < set->n; j++) {
        const Adapter *a = &set->items[j];
        char pname[256];
        ConvertName c;
        snprintf(pname, sizeof pname, "%s.weight", a->name);
        assert_int_equal(convert_to_ldm(f->map, pname, &c), 0);
        const StTensor *ti = st_find(in, c.ldm), *to = st_find(out, c.ldm);
        assert_non_null(ti);
        assert_non_null(to);
        for (int i = 0; i < nt; i++) if (st_at(in, i) == ti) touched[i] = 1;
        int odt = dt >= 0 ? dt : ti->dtype;
        assert_int_equal(to->dtype, odt);
        int64_t n = (int64_t)a->d_out * a->d_in;
        assert_int_equal(ti->numel, n);
        float *W = th_falloc(n), *got = th_falloc(n);
        float *A = th_falloc(adapter_numel_A(a)), *B = th_falloc(adapter_numel_B(a));
        st_read_f32(ti, W);
        st_read_f32(to, got);
        f->be->download(f->be, A, a->A, sizeof(float) * (size_t)adapter_numel_A(a));
        f->be->download(f->be, B, a->B, sizeof(float) * (size_t)adapter_numel_B(a));
        int changed = 0;
        for (int r = 0; r < a->d_out; r++)
            for (int col = 0; col < a->d_in; col++) {
                double k = (double)A[(r / a->b1) * a->a2 + col / a->b2] * B[(r % a->b1) * a->b2 + col % a->b2];
                double want = (double)W[(int64_t)r * a->d_in + col] + (double)S * a->scale * k;
                float g = got[(int64_t)r * a->d_in + col];
                /* f32 arithmetic then one rounding to the dtype: within one unit of it */
                double ulp = odt == ST_F16 ? 1.0 / 1024 : odt == ST_BF16 ? 1.0 / 128 : 4.0 / (1 << 23);
                double tol = ulp * fmax(fabs(want), fabs(W[(int64_t)r * a->d_in + col]) + fabs(S * a->scale * k)) + 1e-7;
                if (fabs(g - want) > tol)
                    fail_msg("%s [%d,%d]: got %.9g want %.9g", c.ldm, r, col, g, want);
                if (g != round_to(W[(int64_t)r * a->d_in + col], odt)) changed++;
            }
        assert_true(changed > n / 2); /* the merge really moved the weight */
        free(W); free(got); free(A); free(B);
    }
    /* everything else: same name, order, shape; bytes (or the dtype's rounding) */
    int n_touched = 0;
    for (int i = 0; i < nt; i++) {
        const StTensor *a = st_at(in, i), *b = st_at(out, i);
        assert_string_equal(a->name, b->name);
        assert_int_equal(a->ndim, b->ndim);
        for (int d = 0; d < a->ndim; d++) assert_int_equal(a->shape[d], b->shape[d]);
        n_touched += touched[i];
        if (touched[i]) continue;
        int isf = a->dtype == ST_F32 || a->dtype == ST_F16 || a->dtype == ST_BF16;
        if (dt < 0 || !isf || dt == a->dtype) {
            assert_int_equal(a->dtype, b->dtype);
            assert_int_equal(a->nbytes, b->nbytes);
            if (memcmp(a->data, b->data, a->nbytes)) fail_msg("%s: bytes differ", a->name);
        } else {
            assert_int_equal(b->dtype, dt);
            float *x = th_falloc(a->numel), *y = th_falloc(a->numel);
            st_read_f32(a, x);
            st_read_f32(b, y);
            for (int64_t k = 0; k < a->numel; k++)
                if (memcmp(&(float){round_to(x[k], dt)}, &y[k], sizeof(float)))
                    fail_msg("%s[%lld]: %g is not %g rounded", a->name, (long long)k, y[k], x[k]);
            free(x); free(y);
        }
    }
    assert_int_equal(n_touched, set->n);
    /* metadata: the input's plus the merge's */
    assert_int_equal(st_metadata_count(out), st_metadata_count(in) + 2);
    for (int i = 0; i < st_metadata_count(in); i++) {
        const char *k = st_metadata_key(in, i);
        assert_string_equal(st_metadata(in, k), st_metadata(out, k));
    }
    assert_string_equal(st_metadata(out, "merged_adapter"), adapter_name);
    char sc[64];
    snprintf(sc, sizeof sc, "%.9g", (double)S);
    assert_string_equal(st_metadata(out, "merged_scale"), sc);
    free(touched);
    st_close(in);
    st_close(out);
}

static void test_merge_same_dtype(void **state) {
    Fix *f = *state;
    AdapterSet set;
    make_set(f, &set, 2, 4, ADAPT_ATTN | ADAPT_FFN, 0.5f, 7);
    char err[1024];
    MergeOpts o = {.scale = 1.5f, .dtype = -1, .adapter_name = "a.safetensors"};
    MergeStats s;
    if (checkpoint_merge(f->in, f->map, &set, &o, f->out, &s, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(s.merged, set.n);
    assert_true(set.n > 8);
    check_merged(f, &set, 1.5f, -1, "a.safetensors");
    /* the output exists: refused in one line unless forced */
    assert_int_equal(checkpoint_merge(f->in, f->map, &set, &o, f->out, &s, err, sizeof err), -1);
    assert_non_null(strstr(err, "exists"));
    assert_null(strchr(err, '\n'));
    o.force = 1;
    o.scale = -0.25f;
    if (checkpoint_merge(f->in, f->map, &set, &o, f->out, &s, err, sizeof err)) fail_msg("%s", err);
    check_merged(f, &set, -0.25f, -1, "a.safetensors");
    adapter_set_free(&set);
}

static void test_merge_dtypes(void **state) {
    Fix *f = *state;
    AdapterSet set;
    make_set(f, &set, 4, 2, ADAPT_ATTN, 1.0f, 11);
    char err[1024];
    int dts[2] = {ST_F16, ST_BF16};
    for (int i = 0; i < 2; i++) {
        MergeOpts o = {.scale = 1.0f, .dtype = dts[i], .adapter_name = "b", .force = 1};
        if (checkpoint_merge(f->in, f->map, &set, &o, f->out, NULL, err, sizeof err)) fail_msg("%s", err);
        check_merged(f, &set, 1.0f, dts[i], "b");
    }
    adapter_set_free(&set);
}

/* a weight the merge touches holding NaN / Inf: refused naming it, nothing
 * written; untouched tensors are copied as they are (bytes or dtype) */
static void test_merge_nonfinite(void **state) {
    Fix *f = *state;
    AdapterSet set;
    make_set(f, &set, 2, 4, ADAPT_ATTN, 1.0f, 5);
    char err[1024], bad[192], pname[256];
    snprintf(bad, sizeof bad, "%s/bad.safetensors", f->dir);
    ConvertName c;
    snprintf(pname, sizeof pname, "%s.weight", set.items[set.n / 2].name);
    assert_int_equal(convert_to_ldm(f->map, pname, &c), 0);
    for (int kind = 0; kind < 3; kind++) {
        th_poison(f->in, bad, c.ldm, 7 + kind, kind);
        MergeOpts o = {.scale = 1.0f, .dtype = kind == 2 ? ST_F16 : -1, .adapter_name = "a", .force = 1};
        unlink(f->out);
        assert_int_equal(checkpoint_merge(bad, f->map, &set, &o, f->out, NULL, err, sizeof err), -1);
        char want[400];
        snprintf(want, sizeof want, "bad.safetensors: tensor '%s' holds %s (element %d of ", c.ldm,
                 kind == 0 ? "NaN" : kind == 1 ? "+Inf" : "-Inf", 7 + kind);
        if (!strstr(err, want)) fail_msg("'%s'\nwant '%s'", err, want);
        assert_false(fs_exists(f->out));
    }
    /* a NaN in a tensor the merge does not touch is carried over, as a copy is */
    SafeTensors *st = st_open(f->in, err, sizeof err);
    const char *other = NULL;
    for (int i = 0; i < st_count(st) && !other; i++)
        if (!strncmp(st_at(st, i)->name, "first_stage_model.", 18) && st_at(st, i)->dtype == ST_F32)
            other = st_at(st, i)->name;
    assert_non_null(other);
    char keep[256];
    snprintf(keep, sizeof keep, "%s", other);
    st_close(st);
    th_poison(f->in, bad, keep, 0, 0);
    const int dts[2] = {-1, ST_F16};   /* copied as bytes, and converted */
    for (int d = 0; d < 2; d++) {
        MergeOpts o = {.scale = 1.0f, .dtype = dts[d], .adapter_name = "a", .force = 1};
        if (checkpoint_merge(bad, f->map, &set, &o, f->out, NULL, err, sizeof err)) fail_msg("%s", err);
        st = st_open(f->out, err, sizeof err);
        float v[1];
        const StTensor *t = st_find(st, keep);
        StTensor first = *t;
        first.numel = 1;
        assert_int_equal(st_read_f32(&first, v), ST_READ_NONFINITE);
        assert_true(isnan(v[0]));
        st_close(st);
    }
    unlink(bad);
    adapter_set_free(&set);
}

/* the CLI's path: an exported adapter file loaded for the config, then merged */
static void test_merge_from_file(void **state) {
    Fix *f = *state;
    AdapterSet set, loaded;
    make_set(f, &set, 2, 2, ADAPT_ATTN, 1.0f, 3);
    char err[1024], path[192];
    snprintf(path, sizeof path, "%s/a.safetensors", f->dir);
    if (adapter_set_save(&set, path, NULL, err, sizeof err)) fail_msg("%s", err);
    if (merge_load_adapters(&f->cfg, f->map, 0, path, f->be, &loaded, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(loaded.n, set.n);
    MergeOpts o = {.scale = 1.0f, .dtype = -1, .adapter_name = "a.safetensors", .force = 1};
    if (checkpoint_merge(f->in, f->map, &loaded, &o, f->out, NULL, err, sizeof err)) fail_msg("%s", err);
    check_merged(f, &set, 1.0f, -1, "a.safetensors"); /* the factors as made, through the file */
    adapter_set_free(&loaded);
    adapter_set_free(&set);

    /* factors that do not divide this model's layers (a1 = 3, saved from a model 24/48 wide):
     * one line naming a1 */
    UNetConfig c3 = f->cfg;
    c3.block_out_channels[0] = 24;
    c3.block_out_channels[1] = 48;
    c3.cross_attention_dim = 24;
    Fix g = *f;
    g.cfg = c3;
    make_set(&g, &set, 3, 2, ADAPT_ATTN, 1.0f, 5);
    snprintf(path, sizeof path, "%s/b.safetensors", f->dir);
    if (adapter_set_save(&set, path, NULL, err, sizeof err)) fail_msg("%s", err);
    adapter_set_free(&set);
    assert_int_equal(merge_load_adapters(&f->cfg, f->map, 0, path, f->be, &loaded, err, sizeof err), -1);
    assert_non_null(strstr(err, "do not fit this model"));
    assert_non_null(strstr(err, "a1"));
    assert_null(strchr(err, '\n'));

    /* a module this model lacks (the ffn of an attn+ffn file loaded as attn is fine; a deeper
     * model's layer is not): saved for a config with an extra layer per block */
    UNetConfig c4 = f->cfg;
    c4.layers_per_block = 2;
    g.cfg = c4;
    make_set(&g, &set, 2, 2, ADAPT_ATTN, 1.0f, 5);
    if (adapter_set_save(&set, path, NULL, err, sizeof err)) fail_msg("%s", err);
    adapter_set_free(&set);
    assert_int_equal(merge_load_adapters(&f->cfg, f->map, 0, path, f->be, &loaded, err, sizeof err), -1);
    assert_null(strchr(err, '\n'));
    print_message("unknown module: %s\n", err);

    /* unreadable files */
    assert_int_equal(merge_load_adapters(&f->cfg, f->map, 0, "/nonexistent.safetensors", f->be, &loaded,
                                         err, sizeof err), -1);
    make_set(f, &set, 2, 2, ADAPT_ATTN, 1.0f, 3);
    MergeOpts o2 = {.scale = 1.0f, .dtype = -1, .adapter_name = "x", .force = 1};
    assert_int_equal(checkpoint_merge("/nonexistent.safetensors", f->map, &set, &o2, f->out, NULL, err,
                                      sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent.safetensors"));
    /* cannot write: no such folder, nothing left behind */
    assert_int_equal(checkpoint_merge(f->in, f->map, &set, &o2, "/nonexistent-dir/m.safetensors", NULL, err,
                                      sizeof err), -1);
    assert_non_null(strstr(err, "cannot write"));
    adapter_set_free(&set);
}

/* SDXL: adapter files name modules by their LDM paths (kohya's SDXL names); attn+ffn */
static int ldm_name(void *user, const char *path, char *out, size_t n, char *err, size_t errlen) {
    ConvertName c;
    if (convert_module_to_ldm(user, path, &c) != 0) { snprintf(err, errlen, "%s: no LDM name", path); return -1; }
    const char *pre = convert_map_ldm_prefix(user);
    snprintf(out, n, "%s", c.ldm + strlen(pre));
    return 0;
}

static void test_merge_sdxl(void **state) {
    Fix *f = *state;
    AdapterSet set, loaded;
    make_set(f, &set, 2, 2, ADAPT_ATTN | ADAPT_FFN, 0.75f, 9);
    set.name_map = ldm_name;
    set.name_map_user = f->map;
    char err[1024], path[192];
    snprintf(path, sizeof path, "%s/a.safetensors", f->dir);
    if (adapter_set_save(&set, path, NULL, err, sizeof err)) fail_msg("%s", err);
    SafeTensors *st = st_open(path, err, sizeof err);
    assert_non_null(st);
    int ldm_keys = 0;
    for (int i = 0; i < st_count(st); i++) ldm_keys += strstr(st_at(st, i)->name, "lora_unet_input_blocks_") != NULL;
    assert_true(ldm_keys > 0);
    st_close(st);
    /* diffusers names do not find the LDM keys; LDM names do */
    assert_int_equal(merge_load_adapters(&f->cfg, f->map, 0, path, f->be, &loaded, err, sizeof err), -1);
    if (merge_load_adapters(&f->cfg, f->map, 1, path, f->be, &loaded, err, sizeof err)) fail_msg("%s", err);
    MergeOpts o = {.scale = 2.0f, .dtype = ST_BF16, .adapter_name = "a.safetensors"};
    if (checkpoint_merge(f->in, f->map, &loaded, &o, f->out, NULL, err, sizeof err)) fail_msg("%s", err);
    check_merged(f, &set, 2.0f, ST_BF16, "a.safetensors");
    adapter_set_free(&loaded);
    adapter_set_free(&set);
}

/* ------------------------------------------------------ diffusers folders --- */

typedef struct Dir {
    Backend *be;
    char root[64];          /* /tmp/krona-dmerge-XXXXXX: model/, out/, the adapter */
    char model[128], out[128], adapter[128];
    UNetConfig cfg;
    ConvertMap *map;        /* SDXL-like: the UNet's LDM names */
    TextConfig tc[2];
    int n_te;
    AdapterSet sets[3];     /* UNet, text encoder(s): the factors as made */
} Dir;

static void put_text(const char *path, const char *text) {
    char err[256], dir[256];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = 0;
    if (fs_mkdir_p(dir, err, sizeof err) || fs_write_atomic(path, text, strlen(text), err, sizeof err))
        fail_msg("%s", err);
}

/* the tensors of src under prefix, without it, into dst; float tensors in dt (-1: as they are) */
static void write_part(const char *src, const char *prefix, const char *dst, int dt) {
    char err[1024];
    SafeTensors *st = st_open(src, err, sizeof err);
    if (!st) fail_msg("%s", err);
    StWriter *w = stw_create();
    size_t pl = strlen(prefix);
    float *tmp[1024];
    int nt = 0;
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *t = st_at(st, i);
        if (strncmp(t->name, prefix, pl)) continue;
        if (dt < 0 || dt == t->dtype) {
            stw_add_ref(w, t->name + pl, t->dtype, t->ndim, t->shape, t->data);
        } else {
            assert_true(nt < 1024);
            tmp[nt] = th_falloc(t->numel);
            st_read_f32(t, tmp[nt]);
            assert_int_equal(stw_add_f32_as(w, t->name + pl, dt, t->ndim, t->shape, tmp[nt]), 0);
            nt++;
        }
    }
    stw_set_metadata(w, "format", "pt");
    char dir[256];
    snprintf(dir, sizeof dir, "%s", dst);
    *strrchr(dir, '/') = 0;
    if (fs_mkdir_p(dir, err, sizeof err) || stw_save(w, dst, err, sizeof err)) fail_msg("%s", err);
    stw_free(w);
    for (int i = 0; i < nt; i++) free(tmp[i]);
    st_close(st);
}

/* a byte-level text encoder (vocab 258, no vocabulary files), width w, random weights */
static void write_te(const char *dir, int w, int seed, TextConfig *tc) {
    char json[512], path[256], err[1024];
    snprintf(json, sizeof json, "{\"architectures\": [\"CLIPTextModel\"], \"vocab_size\": 258, \"hidden_size\": %d,"
             " \"intermediate_size\": %d, \"num_hidden_layers\": 2, \"num_attention_heads\": 2,"
             " \"max_position_embeddings\": 77, \"hidden_act\": \"gelu\", \"eos_token_id\": 257}", w, 2 * w);
    snprintf(path, sizeof path, "%s/config.json", dir);
    put_text(path, json);
    if (te_config_load(tc, path, err, sizeof err)) fail_msg("%s", err);
    Backend *be = backend_cpu_create();
    TextEncoder *te = te_create(tc, be, err, sizeof err);
    if (!te) fail_msg("%s", err);
    te_init_random(te, (uint64_t)seed);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (te_save_safetensors(te, path, err, sizeof err)) fail_msg("%s", err);
    te_free(te);
    backend_destroy(be);
}

/* random factors for every adapter of set */
static void randomise(Backend *be, AdapterSet *set, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->items[i];
        float *A = th_rand(&r, adapter_numel_A(a), -1, 1), *B = th_rand(&r, adapter_numel_B(a), -0.5f, 0.5f);
        be->upload(be, a->A, A, sizeof(float) * (size_t)adapter_numel_A(a));
        be->upload(be, a->B, B, sizeof(float) * (size_t)adapter_numel_B(a));
        free(A);
        free(B);
    }
}

/* model/: SD 1.5-like (latent UNet + VAE of the golden twin, a 24-wide byte text
 * encoder) or SDXL-like (+ text_encoder_2 from the twin's configs); plus an F16
 * variant of the UNet's weights, a BF16 one of the text encoder's, files that
 * are no weights, and a symlinked file. The adapter: KronA on attn (+ ffn) of the
 * UNet and on every text encoder, random factors, in one file. */
static int dir_setup(void **state, int sdxl) {
    Dir *d = calloc(1, sizeof *d);
    char err[1024], path[256], twin[128];
    d->be = backend_cpu_create();
    snprintf(d->root, sizeof d->root, "/tmp/krona-dmerge-XXXXXX");
    assert_non_null(mkdtemp(d->root));
    snprintf(d->model, sizeof d->model, "%s/model", d->root);
    snprintf(d->out, sizeof d->out, "%s/out", d->root);
    snprintf(d->adapter, sizeof d->adapter, "%s/adapter.safetensors", d->root);
    const char *stem = sdxl ? "sdxllike" : "sd15like";
    snprintf(twin, sizeof twin, GOLDEN "ldm_%s_diffusers.safetensors", stem);
    snprintf(path, sizeof path, GOLDEN "unet_%s.json", stem);
    if (unet_config_from_json(path, &d->cfg, err, sizeof err)) fail_msg("%s", err);
    char dst[256];
    snprintf(dst, sizeof dst, "%s/unet/config.json", d->model);
    put_text(dst, "");
    if (fs_copy_file(path, dst, err, sizeof err)) fail_msg("%s", err);
    snprintf(dst, sizeof dst, "%s/unet/diffusion_pytorch_model.safetensors", d->model);
    write_part(twin, "unet.", dst, -1);
    snprintf(dst, sizeof dst, "%s/unet/diffusion_pytorch_model.fp16.safetensors", d->model);
    write_part(twin, "unet.", dst, ST_F16);
    snprintf(dst, sizeof dst, "%s/vae/diffusion_pytorch_model.safetensors", d->model);
    write_part(twin, "vae.", dst, -1);
    SafeTensors *st = st_open(twin, err, sizeof err);
    snprintf(dst, sizeof dst, "%s/vae/config.json", d->model); /* the generator's VAE, every field */
    put_text(dst, "{\"_class_name\": \"AutoencoderKL\", \"in_channels\": 3, \"out_channels\": 3,"
                  " \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],"
                  " \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"],"
                  " \"block_out_channels\": [8, 16], \"layers_per_block\": 1, \"act_fn\": \"silu\","
                  " \"latent_channels\": 4, \"norm_num_groups\": 4, \"sample_size\": 16, \"scaling_factor\": 0.18215}");
    if (sdxl) { /* the twin's encoders, configs from its metadata */
        const char *key[2] = {"text_encoder_config", "text_encoder_2_config"}, *sub[2] = {"text_encoder", "text_encoder_2"};
        for (int i = 0; i < 2; i++) {
            snprintf(dst, sizeof dst, "%s/%s/config.json", d->model, sub[i]);
            put_text(dst, st_metadata(st, key[i]));
            if (te_config_load(&d->tc[i], dst, err, sizeof err)) fail_msg("%s", err);
            char pre[32];
            snprintf(pre, sizeof pre, "%s.", sub[i]);
            snprintf(dst, sizeof dst, "%s/%s/model.safetensors", d->model, sub[i]);
            write_part(twin, pre, dst, -1);
        }
        d->n_te = 2;
    } else {
        snprintf(path, sizeof path, "%s/text_encoder", d->model);
        write_te(path, d->cfg.cross_attention_dim, 4, &d->tc[0]);
        d->n_te = 1;
    }
    st_close(st);
    snprintf(path, sizeof path, "%s/text_encoder/model.safetensors", d->model);
    snprintf(dst, sizeof dst, "%s/text_encoder/model.bf16.safetensors", d->model);
    write_part(path, "", dst, ST_BF16);
    snprintf(dst, sizeof dst, "%s/model_index.json", d->model);
    put_text(dst, "{\"_class_name\": \"StableDiffusionPipeline\", \"_diffusers_version\": \"0.30.0\"}\n");
    snprintf(dst, sizeof dst, "%s/scheduler/scheduler_config.json", d->model);
    put_text(dst, "{\"_class_name\": \"DDIMScheduler\", \"num_train_timesteps\": 1000, \"beta_start\": 0.00085,"
                  " \"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", \"prediction_type\": \"epsilon\"}\n");
    snprintf(dst, sizeof dst, "%s/blob", d->root); /* a Hugging Face cache keeps files as links to blobs */
    put_text(dst, "{\"crop_size\": 224}\n");
    snprintf(path, sizeof path, "%s/feature_extractor", d->model);
    assert_int_equal(fs_mkdir_p(path, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/feature_extractor/preprocessor_config.json", d->model);
    assert_int_equal(symlink(dst, path), 0);

    /* the adapter */
    memset(d->sets, 0, sizeof d->sets);
    AdapterSpec spec = {.kind = ADAPTER_KRONA, .a1 = 2, .a2 = 4, .alpha = 1, .modules = ADAPT_ATTN | ADAPT_FFN};
    if (merge_unet_adapters(&d->cfg, &spec, "x", d->be, &d->sets[0], err, sizeof err)) fail_msg("%s", err);
    randomise(d->be, &d->sets[0], 21);
    if (sdxl) {
        ConvertShape shape = {.unet = &d->cfg};
        d->map = convert_map_create(MODEL_KIND_SDXL, CONVERT_UNET, &shape, err, sizeof err);
        assert_non_null(d->map);
        d->sets[0].name_map = ldm_name;
        d->sets[0].name_map_user = d->map;
    }
    for (int i = 0; i < d->n_te; i++) {
        if (te_adapter_set_init(&d->sets[1 + i], &d->tc[i], d->be, &spec, 5, err, sizeof err)) fail_msg("%s", err);
        d->sets[1 + i].key_prefix = adapter_te_prefix(d->n_te, i);
        randomise(d->be, &d->sets[1 + i], 22 + (uint64_t)i);
    }
    const AdapterSet *sv[3] = {&d->sets[0], &d->sets[1], &d->sets[2]};
    if (adapter_sets_save(sv, 1 + d->n_te, d->adapter, NULL, ST_F32, err, sizeof err)) fail_msg("%s", err);
    *state = d;
    return 0;
}

static int dir_setup_sd15(void **state) { return dir_setup(state, 0); }
static int dir_setup_sdxl(void **state) { return dir_setup(state, 1); }

static int dir_teardown(void **state) {
    Dir *d = *state;
    for (int i = 0; i < 3; i++) adapter_set_free(&d->sets[i]);
    convert_map_free(d->map);
    backend_destroy(d->be);
    assert_int_equal(fs_remove_tree(d->root), 0);
    free(d);
    return 0;
}

/* out's file against in's: tensors named "<adapter>.weight" for set's adapters are
 * W + S * scale * kron(A, B) (explicit loop, double) within one unit of the file's
 * dtype; all others byte for byte; keys, order, dtypes, shapes the same. */
static void check_merged_file(const char *in_path, const char *out_path, const AdapterSet *set, float S,
                              Backend *be) {
    char err[1024];
    SafeTensors *in = st_open(in_path, err, sizeof err), *out = st_open(out_path, err, sizeof err);
    if (!in || !out) fail_msg("%s", err);
    assert_int_equal(st_count(in), st_count(out));
    int merged = 0;
    for (int i = 0; i < st_count(in); i++) {
        const StTensor *ti = st_at(in, i), *to = st_at(out, i);
        assert_string_equal(ti->name, to->name);
        assert_int_equal(ti->dtype, to->dtype);
        assert_int_equal(ti->ndim, to->ndim);
        for (int k = 0; k < ti->ndim; k++) assert_int_equal(ti->shape[k], to->shape[k]);
        const Adapter *a = NULL;
        for (int j = 0; j < set->n && !a; j++) {
            char key[MERGE_KEY_MAX];
            snprintf(key, sizeof key, "%s.weight", set->items[j].name);
            if (!strcmp(key, ti->name)) a = &set->items[j];
        }
        if (!a) {
            if (memcmp(ti->data, to->data, ti->nbytes)) fail_msg("%s: %s changed", out_path, ti->name);
            continue;
        }
        merged++;
        int64_t n = (int64_t)a->d_out * a->d_in;
        float *W = th_falloc(n), *got = th_falloc(n);
        float *A = th_host(be, a->A, adapter_numel_A(a)), *B = th_host(be, a->B, adapter_numel_B(a));
        st_read_f32(ti, W);
        st_read_f32(to, got);
        double ulp = to->dtype == ST_F16 ? 1.0 / 1024 : to->dtype == ST_BF16 ? 1.0 / 128 : 4.0 / (1 << 23);
        int changed = 0;
        for (int r = 0; r < a->d_out; r++)
            for (int c = 0; c < a->d_in; c++) {
                double k = (double)A[(r / a->b1) * a->a2 + c / a->b2] * B[(r % a->b1) * a->b2 + c % a->b2];
                double w = W[(int64_t)r * a->d_in + c], want = w + (double)S * a->scale * k;
                float g = got[(int64_t)r * a->d_in + c];
                if (fabs(g - want) > ulp * fmax(fabs(want), fabs(w) + fabs(S * a->scale * k)) + 1e-7)
                    fail_msg("%s: %s [%d,%d] = %.9g, want %.9g", out_path, ti->name, r, c, g, want);
                changed += g != (float)w;
            }
        assert_true(changed > n / 2);
        free(W); free(got); free(A); free(B);
    }
    assert_int_equal(merged, set->n);
    for (int i = 0; i < st_metadata_count(in); i++) {
        const char *k = st_metadata_key(in, i);
        assert_string_equal(st_metadata(in, k), st_metadata(out, k));
    }
    assert_int_equal(st_metadata_count(out), st_metadata_count(in) + 2);
    assert_string_equal(st_metadata(out, "merged_adapter"), "adapter.safetensors");
    st_close(in);
    st_close(out);
}

/* the same bytes */
static void check_same_file(const char *a, const char *b) {
    char err[512];
    size_t na, nb;
    char *x = fs_read_all(a, (size_t)1 << 32, &na, err, sizeof err), *y = fs_read_all(b, (size_t)1 << 32, &nb, err, sizeof err);
    if (!x || !y) fail_msg("%s", err);
    if (na != nb || memcmp(x, y, na)) fail_msg("%s differs from %s", b, a);
    free(x);
    free(y);
}

/* no "*.tmp.*" or "*.old.*" left in the folder */
static void assert_clean(const char *dir) {
    DIR *dd = opendir(dir);
    assert_non_null(dd);
    struct dirent *e;
    while ((e = readdir(dd)))
        if (strstr(e->d_name, ".tmp.") || strstr(e->d_name, ".old.")) fail_msg("left behind: %s/%s", dir, e->d_name);
    closedir(dd);
}

static void check_folder(Dir *d, float S) {
    char a[256], b[256];
    static const char *const same[] = {"model_index.json", "unet/config.json", "vae/config.json",
                                       "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                                       "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json"};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        snprintf(a, sizeof a, "%s/%s", d->model, same[i]);
        snprintf(b, sizeof b, "%s/%s", d->out, same[i]);
        check_same_file(a, b);
    }
    struct stat sb;
    snprintf(b, sizeof b, "%s/feature_extractor/preprocessor_config.json", d->out);
    assert_int_equal(lstat(b, &sb), 0);
    assert_true(S_ISREG(sb.st_mode)); /* the file, not the link */
    static const char *const unet[] = {"unet/diffusion_pytorch_model.safetensors",
                                       "unet/diffusion_pytorch_model.fp16.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(a, sizeof a, "%s/%s", d->model, unet[i]);
        snprintf(b, sizeof b, "%s/%s", d->out, unet[i]);
        check_merged_file(a, b, &d->sets[0], S, d->be);
    }
    static const char *const te[] = {"text_encoder/model.safetensors", "text_encoder/model.bf16.safetensors",
                                     "text_encoder_2/model.safetensors"};
    for (int i = 0; i < (d->n_te == 2 ? 3 : 2); i++) {
        snprintf(a, sizeof a, "%s/%s", d->model, te[i]);
        snprintf(b, sizeof b, "%s/%s", d->out, te[i]);
        check_merged_file(a, b, &d->sets[i < 2 ? 1 : 2], S, d->be);
    }
    assert_clean(d->root);
}

/* images of one prompt, 2 DDIM steps: the model at spec (with an adapter file, or none) */
static float *sample_of(const char *spec, const char *adapter, Backend *be) {
    char err[1024];
    Model *m = model_open(spec, be, err, sizeof err);
    if (!m) fail_msg("%s", err);
    if (adapter && model_load_adapter(m, adapter, err, sizeof err)) fail_msg("%s", err);
    int px = 16;
    float *cc = be->alloc(be, sizeof(float) * (size_t)m->cond_floats);
    float *cu = be->alloc(be, sizeof(float) * (size_t)m->cond_floats);
    assert_int_equal(model_encode_prompt(m, "a sks dog", px, cc, err, sizeof err), 0);
    assert_int_equal(model_encode_prompt(m, "", px, cu, err, sizeof err), 0);
    SamplerOpts so = {0};
    so.steps = 2;
    so.guidance = 2.f;
    float *img = th_falloc(3 * px * px);
    if (model_generate(m, cc, cu, 1, px, &so, 3, NULL, img, err, sizeof err)) fail_msg("%s", err);
    be->free(be, cc);
    be->free(be, cu);
    model_free(m);
    return img;
}

static void test_dir_merge_sd15(void **state) {
    Dir *d = *state;
    char err[1024];
    MergeOpts o = {.scale = 1.5f, .dtype = -1, .adapter_name = "adapter.safetensors"};
    MergeStats s;
    if (diffusers_merge(d->model, d->adapter, d->be, &o, d->out, &s, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(s.files_merged, 4);     /* unet, its fp16 variant, text_encoder, its bf16 variant */
    assert_int_equal(s.files_copied, 7);
    assert_int_equal(s.merged, 2 * d->sets[0].n + 2 * d->sets[1].n);
    check_folder(d, 1.5f);

    /* the merged folder opens as a model, and samples what the base folder does with the adapter */
    o.scale = 1.0f;
    o.force = 1;
    if (diffusers_merge(d->model, d->adapter, d->be, &o, d->out, &s, err, sizeof err)) fail_msg("%s", err);
    check_folder(d, 1.0f);
    float *x = sample_of(d->out, NULL, d->be), *y = sample_of(d->model, d->adapter, d->be),
          *z = sample_of(d->model, NULL, d->be);
    double dxy = 0, dxz = 0;
    for (int i = 0; i < 3 * 16 * 16; i++) {
        dxy = fmax(dxy, fabs(x[i] - y[i]));
        dxz = fmax(dxz, fabs(x[i] - z[i]));
    }
    print_message("merged vs base + adapter: max |diff| %.3g; vs the base alone %.3g\n", dxy, dxz);
    assert_true(dxy < 1e-4);
    assert_true(dxz > 1e-2);
    free(x); free(y); free(z);

    /* refusals, in one line, nothing written or left: the output exists (without --force) */
    o.force = 0;
    assert_int_equal(diffusers_merge(d->model, d->adapter, d->be, &o, d->out, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "exists (use --force"));
    /* the output inside the model folder, or holding it */
    char bad[256];
    snprintf(bad, sizeof bad, "%s/unet/merged", d->model);
    assert_int_equal(diffusers_merge(d->model, d->adapter, d->be, &o, bad, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "must be outside the model folder"));
    o.force = 1;
    assert_int_equal(diffusers_merge(d->model, d->adapter, d->be, &o, d->root, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "must be outside the model folder"));
    assert_true(fs_is_dir(d->model));
    /* --dtype */
    o.dtype = ST_F16;
    assert_int_equal(diffusers_merge(d->model, d->adapter, d->be, &o, bad, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "keeps each weight file's dtypes"));
    o.dtype = -1;
    /* pickled weights beside the safetensors ones */
    char bin[256], out2[256];
    snprintf(bin, sizeof bin, "%s/text_encoder/pytorch_model.bin", d->model);
    snprintf(out2, sizeof out2, "%s/out2", d->root);
    put_text(bin, "pickle");
    assert_int_equal(diffusers_merge(d->model, d->adapter, d->be, &o, out2, NULL, err, sizeof err), -1);
    print_message("%s\n", err);
    assert_non_null(strstr(err, "text_encoder/pytorch_model.bin: pickled (or Flax) weights of a part the adapter changes"));
    assert_null(strchr(err, '\n'));
    unlink(bin);
    /* an adapter for another model: a tensor it names is not in the weights (here the
     * fp16 variant rewritten without the first adapted weight) */
    snprintf(bin, sizeof bin, "%s/unet/diffusion_pytorch_model.safetensors", d->model);
    SafeTensors *st = st_open(bin, err, sizeof err);
    assert_non_null(st);
    StWriter *w = stw_create();
    char gone[MERGE_KEY_MAX];
    snprintf(gone, sizeof gone, "%s.weight", d->sets[0].items[0].name);
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *t = st_at(st, i);
        if (strcmp(t->name, gone)) stw_add_ref(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    char fp16[256];
    snprintf(fp16, sizeof fp16, "%s/unet/diffusion_pytorch_model.fp16.safetensors", d->model);
    if (stw_save(w, fp16, err, sizeof err)) fail_msg("%s", err);
    stw_free(w);
    st_close(st);
    assert_int_equal(diffusers_merge(d->model, d->adapter, d->be, &o, out2, NULL, err, sizeof err), -1);
    print_message("%s\n", err);
    assert_non_null(strstr(err, "diffusion_pytorch_model.fp16.safetensors: no tensor"));
    assert_non_null(strstr(err, "another model"));
    assert_false(fs_exists(out2));
    assert_clean(d->root);
}

static void test_dir_merge_sdxl(void **state) {
    Dir *d = *state;
    char err[1024];
    MergeOpts o = {.scale = 0.5f, .dtype = -1, .adapter_name = "adapter.safetensors"};
    MergeStats s;
    SafeTensors *st = st_open(d->adapter, err, sizeof err);
    assert_non_null(st_find(st, "lora_te2_text_model_encoder_layers_2_self_attn_out_proj.lokr_w2"));
    int ldm = 0;
    for (int i = 0; i < st_count(st); i++) ldm += !strncmp(st_at(st, i)->name, "lora_unet_input_blocks_", 23);
    assert_true(ldm > 0);
    st_close(st);
    if (diffusers_merge(d->model, d->adapter, d->be, &o, d->out, &s, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(s.files_merged, 5);
    check_folder(d, 0.5f);
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/text_encoder_2/config.json", d->model);
    snprintf(b, sizeof b, "%s/text_encoder_2/config.json", d->out);
    check_same_file(a, b);
}

/* sharded weights: diffusion_pytorch_model-0000N-of-00002.safetensors and their
 * index; each touched tensor merged in the shard that holds it, the index as it was */
static void test_dir_merge_sharded(void **state) {
    Dir *d = *state;
    char err[1024], path[256], shard[2][256], in[256];
    snprintf(in, sizeof in, "%s/unet/diffusion_pytorch_model.safetensors", d->model);
    SafeTensors *st = st_open(in, err, sizeof err);
    assert_non_null(st);
    StWriter *w[2] = {stw_create(), stw_create()};
    char *index = malloc(1 << 20);
    size_t k = (size_t)snprintf(index, 1 << 20, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *t = st_at(st, i);
        int s = i % 2;
        stw_add_ref(w[s], t->name, t->dtype, t->ndim, t->shape, t->data);
        k += (size_t)snprintf(index + k, (1 << 20) - k, "%s\"%s\": \"diffusion_pytorch_model-0000%d-of-00002.safetensors\"",
                              i ? ", " : "", t->name, s + 1);
    }
    snprintf(index + k, (1 << 20) - k, "}}\n");
    for (int s = 0; s < 2; s++) {
        snprintf(shard[s], sizeof shard[s], "%s/unet/diffusion_pytorch_model-0000%d-of-00002.safetensors", d->model, s + 1);
        stw_set_metadata(w[s], "format", "pt");
        if (stw_save(w[s], shard[s], err, sizeof err)) fail_msg("%s", err);
        stw_free(w[s]);
    }
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors.index.json", d->model);
    put_text(path, index);
    free(index);
    st_close(st);
    unlink(in);
    MergeOpts o = {.scale = 2.0f, .dtype = -1, .adapter_name = "adapter.safetensors"};
    MergeStats s;
    if (diffusers_merge(d->model, d->adapter, d->be, &o, d->out, &s, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(s.files_merged, 5); /* two shards, the fp16 variant, text_encoder and its bf16 */
    char b[256];
    snprintf(b, sizeof b, "%s/unet/diffusion_pytorch_model.safetensors.index.json", d->out);
    check_same_file(path, b);
    /* the shards together: every touched tensor once, merged */
    int seen = 0;
    for (int sh = 0; sh < 2; sh++) {
        snprintf(b, sizeof b, "%s/unet/diffusion_pytorch_model-0000%d-of-00002.safetensors", d->out, sh + 1);
        AdapterSet part = d->sets[0];
        Adapter *items = calloc((size_t)part.n, sizeof *items);
        SafeTensors *x = st_open(shard[sh], err, sizeof err);
        part.n = 0;
        for (int j = 0; j < d->sets[0].n; j++) {
            char key[MERGE_KEY_MAX];
            snprintf(key, sizeof key, "%s.weight", d->sets[0].items[j].name);
            if (st_find(x, key)) items[part.n++] = d->sets[0].items[j];
        }
        st_close(x);
        part.items = items;
        check_merged_file(shard[sh], b, &part, 2.0f, d->be);
        seen += part.n;
        free(items);
    }
    assert_int_equal(seen, d->sets[0].n);
    /* an index naming a shard that is not there */
    unlink(shard[1]);
    o.force = 1;
    assert_int_equal(diffusers_merge(d->model, d->adapter, d->be, &o, d->out, NULL, err, sizeof err), -1);
    print_message("%s\n", err);
    assert_non_null(strstr(err, "diffusion_pytorch_model.safetensors.index.json"));
    assert_non_null(strstr(err, "diffusion_pytorch_model-00002-of-00002.safetensors"));
    assert_true(fs_is_dir(d->out)); /* the earlier output stays */
    assert_clean(d->root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_merge_same_dtype, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_dtypes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_nonfinite, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_from_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_sdxl, setup_sdxl, teardown),
        cmocka_unit_test_setup_teardown(test_dir_merge_sd15, dir_setup_sd15, dir_teardown),
        cmocka_unit_test_setup_teardown(test_dir_merge_sdxl, dir_setup_sdxl, dir_teardown),
        cmocka_unit_test_setup_teardown(test_dir_merge_sharded, dir_setup_sd15, dir_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

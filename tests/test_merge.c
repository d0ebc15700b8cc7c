/* test_merge.c — checkpoint_merge (models/merge.h) on the small SD 1.5-like
 * single file with its own UNet config: a KronA set with known random factors
 * merged at scale S, checked against an explicit Kronecker product (naive
 * loop, double): every touched tensor is W + S * scale * kron(A, B) rounded to
 * the output dtype, every other tensor byte for byte the input's (or the
 * input's rounded to the asked dtype), same keys, shapes and order, the
 * input's metadata plus merged_adapter / merged_scale. Also: the adapter file
 * path (merge_load_adapters) and its one-line refusals, output exists. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    if (dt == ST_F16) return st_f16_to_f32(st_f32_to_f16(x));
    if (dt == ST_BF16) return st_bf16_to_f32(st_f32_to_bf16(x));
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_merge_same_dtype, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_dtypes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_nonfinite, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_from_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_merge_sdxl, setup_sdxl, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_text_encoder.c — the CLIP text transformer against
 *  - a PyTorch golden (tests/golden/text_encoder.safetensors, made by
 *    gen_text_golden.py: HF CLIPTextModelWithProjection semantics, quick_gelu),
 *  - a naive double-precision loop implementation in this file (gelu path,
 *    penultimate state, pooling without projection),
 * plus causality, pooling position, config parsing and error messages, and
 * the training backward (te_backward, embedding_bwd) against central finite
 * differences in double-accumulated loss. */
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

#include "core/backend.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "models/text_encoder.h"
#include "models/tokenizer.h"

#define GOLDEN "tests/golden/text_encoder.safetensors"

static Backend *be;

static int setup(void **state)
{
    (void)state;
    be = backend_cpu_create();
    return be ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    backend_destroy(be);
    return 0;
}

static float *read_tensor(const SafeTensors *st, const char *name, int64_t *numel)
{
    const StTensor *t = st_find(st, name);
    if (!t) { print_error("%s: no tensor %s\n", GOLDEN, name); fail(); }
    float *h = malloc((size_t)t->numel * sizeof *h);
    assert_non_null(h);
    assert_int_equal(st_read_f32(t, h), 0);
    if (numel) *numel = t->numel;
    return h;
}

static float *dev_alloc(int64_t n)
{
    float *d = be->alloc(be, (size_t)n * sizeof(float));
    assert_non_null(d);
    return d;
}

static float *download(const float *d, int64_t n)
{
    float *h = malloc((size_t)n * sizeof *h);
    assert_non_null(h);
    be->sync(be);
    be->download(be, h, d, (size_t)n * sizeof *h);
    return h;
}

/* max |got - want| <= tol * max |want| */
static void assert_close(const float *got, const float *want, int64_t n, double tol, const char *what)
{
    double maxref = 0, maxerr = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        maxref = fmax(maxref, fabs(want[i]));
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= maxerr)) { maxerr = e; at = i; }
    }
    if (!(maxerr <= tol * maxref)) {
        print_error("%s: max error %.3g at %lld (got %.7g, want %.7g), scale %.3g, tol %.1g relative\n",
                    what, maxerr, (long long)at, got[at], want[at], maxref, tol);
        fail();
    }
}

static void golden_config(const SafeTensors *st, TextConfig *cfg)
{
    const char *js = st_metadata(st, "config");
    assert_non_null(js);
    char err[256];
    if (te_config_parse(cfg, js, strlen(js), GOLDEN, err, sizeof err) != 0) {
        print_error("%s\n", err);
        fail();
    }
}

/* ---------------- PyTorch golden ---------------- */

static void test_golden(void **state)
{
    (void)state;
    char err[512];
    SafeTensors *st = st_open(GOLDEN, err, sizeof err);
    if (!st) print_error("%s\n", err);
    assert_non_null(st);
    TextConfig cfg;
    golden_config(st, &cfg);
    assert_int_equal(cfg.vocab_size, 300);
    assert_int_equal(cfg.hidden_size, 32);
    assert_int_equal(cfg.num_hidden_layers, 2);
    assert_int_equal(cfg.projection_dim, 16);
    assert_int_equal(cfg.eos_token_id, 299);
    assert_int_equal(cfg.hidden_act, TE_ACT_QUICK_GELU);

    TextEncoder *te = te_create(&cfg, be, err, sizeof err);
    assert_non_null(te);
    /* parameter count = every weight tensor in the golden */
    int64_t want_params = 0;
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *t = st_at(st, i);
        if (!strncmp(t->name, "text_model.", 11) || !strcmp(t->name, "text_projection.weight"))
            want_params += t->numel;
    }
    assert_int_equal(te_n_params(te), want_params);
    assert_int_equal(te_pooled_dim(te), 16);
    if (te_load_safetensors(te, GOLDEN, "", err, sizeof err) != 0) { print_error("%s\n", err); fail(); }

    int64_t nids;
    float *idf = read_tensor(st, "ids", &nids);
    const int N = 2, L = 16, H = 32;
    assert_int_equal(nids, N * L);
    int32_t ids[32];
    for (int i = 0; i < N * L; i++) ids[i] = (int32_t)idf[i];
    free(idf);

    float *d_hid = dev_alloc(N * L * H), *d_pen = dev_alloc(N * L * H), *d_pool = dev_alloc(N * 16);
    assert_int_equal(te_forward(te, ids, N, L, d_hid, d_pen, d_pool, err, sizeof err), 0);
    float *hid = download(d_hid, N * L * H), *pen = download(d_pen, N * L * H), *pool = download(d_pool, N * 16);
    float *w_hid = read_tensor(st, "last_hidden_state", NULL);
    float *w_pen = read_tensor(st, "penultimate", NULL);
    float *w_emb = read_tensor(st, "text_embeds", NULL);
    float *w_pool = read_tensor(st, "pooled", NULL);
    assert_close(hid, w_hid, N * L * H, 1e-4, "last_hidden_state");
    assert_close(pen, w_pen, N * L * H, 1e-4, "penultimate");
    assert_close(pool, w_emb, N * 16, 1e-4, "text_embeds (pooled, projected)");

    /* outputs are optional */
    float *d_pool2 = dev_alloc(N * 16);
    assert_int_equal(te_forward(te, ids, N, L, NULL, NULL, d_pool2, err, sizeof err), 0);
    float *pool2 = download(d_pool2, N * 16);
    assert_close(pool2, w_emb, N * 16, 1e-4, "text_embeds without hidden_out");
    te_free(te);

    /* the same weights as CLIPTextModel (no projection): pooled is the raw EOS row */
    cfg.projection_dim = 0;
    te = te_create(&cfg, be, err, sizeof err);
    assert_non_null(te);
    assert_int_equal(te_n_params(te), want_params - 16 * 32);
    assert_int_equal(te_load_safetensors(te, GOLDEN, "", err, sizeof err), 0);
    float *d_raw = dev_alloc(N * H);
    assert_int_equal(te_forward(te, ids, N, L, NULL, NULL, d_raw, err, sizeof err), 0);
    float *raw = download(d_raw, N * H);
    assert_close(raw, w_pool, N * H, 1e-4, "pooled without projection");
    te_free(te);

    free(hid); free(pen); free(pool); free(pool2); free(raw);
    free(w_hid); free(w_pen); free(w_emb); free(w_pool);
    be->free(be, d_hid); be->free(be, d_pen); be->free(be, d_pool); be->free(be, d_pool2); be->free(be, d_raw);
    st_close(st);
}

/* ---------------- naive reference (double, host loops) ---------------- */

typedef struct { const SafeTensors *st; } Ref;

static double *ref_w(const SafeTensors *st, const char *fmt, int l)
{
    char name[128];
    snprintf(name, sizeof name, fmt, l);
    int64_t n;
    float *f = read_tensor(st, name, &n);
    double *d = malloc((size_t)n * sizeof *d);
    assert_non_null(d);
    for (int64_t i = 0; i < n; i++) d[i] = f[i];
    free(f);
    return d;
}

static void ref_ln(const double *x, const double *g, const double *b, double *y, int M, int C, double eps)
{
    for (int m = 0; m < M; m++) {
        double mu = 0, var = 0;
        for (int c = 0; c < C; c++) mu += x[m * C + c];
        mu /= C;
        for (int c = 0; c < C; c++) var += (x[m * C + c] - mu) * (x[m * C + c] - mu);
        var /= C;
        for (int c = 0; c < C; c++) y[m * C + c] = (x[m * C + c] - mu) / sqrt(var + eps) * g[c] + b[c];
    }
}

static void ref_lin(const double *x, const double *W, const double *b, double *y, int M, int in, int out)
{
    for (int m = 0; m < M; m++)
        for (int o = 0; o < out; o++) {
            double s = b ? b[o] : 0;
            for (int i = 0; i < in; i++) s += x[m * in + i] * W[o * in + i];
            y[m * out + o] = s;
        }
}

/* Runs the golden weights with cfg (gelu or quick_gelu) on ids[N,L]. */
static void ref_forward(const SafeTensors *st, const TextConfig *c, const int32_t *ids, int N, int L,
                        double *last, double *penult, double *pooled)
{
    const int H = c->hidden_size, I = c->intermediate_size, nh = c->num_attention_heads, D = H / nh;
    const int M = N * L;
    double *tok = ref_w(st, "text_model.embeddings.token_embedding.weight", 0);
    double *pos = ref_w(st, "text_model.embeddings.position_embedding.weight", 0);
    double *x = calloc((size_t)M * H, sizeof *x), *h = calloc((size_t)M * H, sizeof *h);
    double *q = calloc((size_t)M * H, sizeof *q), *k = calloc((size_t)M * H, sizeof *k);
    double *v = calloc((size_t)M * H, sizeof *v), *o = calloc((size_t)M * H, sizeof *o);
    double *f = calloc((size_t)M * I, sizeof *f), *p = calloc((size_t)L, sizeof *p);
    for (int n = 0; n < N; n++)
        for (int t = 0; t < L; t++)
            for (int j = 0; j < H; j++)
                x[(n * L + t) * H + j] = tok[ids[n * L + t] * H + j] + pos[t * H + j];
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (l == c->num_hidden_layers - 1) memcpy(penult, x, (size_t)M * H * sizeof *x);
#define W(s) ref_w(st, "text_model.encoder.layers.%d." s, l)
        double *g1 = W("layer_norm1.weight"), *b1 = W("layer_norm1.bias");
        double *qw = W("self_attn.q_proj.weight"), *qb = W("self_attn.q_proj.bias");
        double *kw = W("self_attn.k_proj.weight"), *kb = W("self_attn.k_proj.bias");
        double *vw = W("self_attn.v_proj.weight"), *vb = W("self_attn.v_proj.bias");
        double *ow = W("self_attn.out_proj.weight"), *ob = W("self_attn.out_proj.bias");
        double *g2 = W("layer_norm2.weight"), *b2 = W("layer_norm2.bias");
        double *f1w = W("mlp.fc1.weight"), *f1b = W("mlp.fc1.bias");
        double *f2w = W("mlp.fc2.weight"), *f2b = W("mlp.fc2.bias");
#undef W
        ref_ln(x, g1, b1, h, M, H, c->layer_norm_eps);
        ref_lin(h, qw, qb, q, M, H, H);
        ref_lin(h, kw, kb, k, M, H, H);
        ref_lin(h, vw, vb, v, M, H, H);
        for (int n = 0; n < N; n++)
            for (int hd = 0; hd < nh; hd++)
                for (int i = 0; i < L; i++) {
                    double mx = -1e300, s = 0;
                    for (int j = 0; j <= i; j++) { /* causal */
                        double d = 0;
                        for (int e = 0; e < D; e++)
                            d += q[(n * L + i) * H + hd * D + e] * k[(n * L + j) * H + hd * D + e];
                        p[j] = d / sqrt((double)D);
                        mx = fmax(mx, p[j]);
                    }
                    for (int j = 0; j <= i; j++) { p[j] = exp(p[j] - mx); s += p[j]; }
                    for (int e = 0; e < D; e++) {
                        double a = 0;
                        for (int j = 0; j <= i; j++) a += p[j] / s * v[(n * L + j) * H + hd * D + e];
                        o[(n * L + i) * H + hd * D + e] = a;
                    }
                }
        ref_lin(o, ow, ob, h, M, H, H);
        for (int i = 0; i < M * H; i++) x[i] += h[i];
        ref_ln(x, g2, b2, h, M, H, c->layer_norm_eps);
        ref_lin(h, f1w, f1b, f, M, H, I);
        for (int i = 0; i < M * I; i++)
            f[i] = c->hidden_act == TE_ACT_GELU ? 0.5 * f[i] * (1 + erf(f[i] / sqrt(2.0)))
                                                : f[i] / (1 + exp(-1.702 * f[i]));
        ref_lin(f, f2w, f2b, h, M, I, H);
        for (int i = 0; i < M * H; i++) x[i] += h[i];
        double *all[] = {g1, b1, qw, qb, kw, kb, vw, vb, ow, ob, g2, b2, f1w, f1b, f2w, f2b};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
    }
    double *gf = ref_w(st, "text_model.final_layer_norm.weight", 0);
    double *bf = ref_w(st, "text_model.final_layer_norm.bias", 0);
    ref_ln(x, gf, bf, last, M, H, c->layer_norm_eps);
    for (int n = 0; n < N; n++) {
        int e = L - 1; /* first eos, found independently of te_eos_position */
        for (int t = L - 1; t >= 0; t--)
            if (ids[n * L + t] == c->eos_token_id) e = t;
        memcpy(pooled + n * H, last + (n * L + e) * H, (size_t)H * sizeof *last);
    }
    free(gf); free(bf); free(tok); free(pos);
    free(x); free(h); free(q); free(k); free(v); free(o); free(f); free(p);
}

static void test_naive_gelu(void **state)
{
    (void)state;
    char err[512];
    SafeTensors *st = st_open(GOLDEN, err, sizeof err);
    assert_non_null(st);
    TextConfig cfg;
    golden_config(st, &cfg);
    cfg.hidden_act = TE_ACT_GELU;
    cfg.projection_dim = 0;
    TextEncoder *te = te_create(&cfg, be, err, sizeof err);
    assert_non_null(te);
    assert_int_equal(te_load_safetensors(te, GOLDEN, "", err, sizeof err), 0);

    /* 3 prompts of 11 tokens (shorter than max positions), EOS at different places */
    const int N = 3, L = 11, H = 32;
    int32_t ids[33];
    for (int n = 0; n < N; n++)
        for (int t = 0; t < L; t++) ids[n * L + t] = (int32_t)((n * 97 + t * 31 + 7) % 298);
    for (int n = 0; n < N; n++) {
        ids[n * L] = 298;
        for (int t = 3 + 3 * n; t < L; t++) ids[n * L + t] = 299;
    }
    double *last = malloc(N * L * H * sizeof *last), *pen = malloc(N * L * H * sizeof *pen);
    double *pool = malloc(N * H * sizeof *pool);
    ref_forward(st, &cfg, ids, N, L, last, pen, pool);
    float *w_last = malloc(N * L * H * sizeof *w_last), *w_pen = malloc(N * L * H * sizeof *w_pen);
    float *w_pool = malloc(N * H * sizeof *w_pool);
    for (int i = 0; i < N * L * H; i++) { w_last[i] = (float)last[i]; w_pen[i] = (float)pen[i]; }
    for (int i = 0; i < N * H; i++) w_pool[i] = (float)pool[i];

    float *d_hid = dev_alloc(N * L * H), *d_pen = dev_alloc(N * L * H), *d_pool = dev_alloc(N * H);
    assert_int_equal(te_forward(te, ids, N, L, d_hid, d_pen, d_pool, err, sizeof err), 0);
    float *hid = download(d_hid, N * L * H), *pe = download(d_pen, N * L * H), *po = download(d_pool, N * H);
    assert_close(hid, w_last, N * L * H, 1e-4, "gelu last_hidden_state vs naive");
    assert_close(pe, w_pen, N * L * H, 1e-4, "gelu penultimate vs naive");
    assert_close(po, w_pool, N * H, 1e-4, "gelu pooled vs naive");

    free(last); free(pen); free(pool); free(w_last); free(w_pen); free(w_pool);
    free(hid); free(pe); free(po);
    be->free(be, d_hid); be->free(be, d_pen); be->free(be, d_pool);
    te_free(te);
    st_close(st);
}

/* ---------------- built-in tiny model: causality, pooling, determinism ---------------- */

static void test_tiny_causal(void **state)
{
    (void)state;
    char err[512];
    TextConfig cfg;
    assert_int_equal(te_config_builtin(&cfg, "tiny-text", err, sizeof err), 0);
    assert_int_equal(cfg.vocab_size, 258);
    assert_int_equal(cfg.hidden_size, 64);
    assert_int_equal(cfg.max_position_embeddings, 77);
    assert_int_equal(te_config_builtin(&cfg, "huge-text", err, sizeof err), -1);
    assert_non_null(strstr(err, "tiny-text"));
    te_config_builtin(&cfg, "tiny-text", err, sizeof err);

    TextEncoder *te = te_create(&cfg, be, err, sizeof err);
    assert_non_null(te);
    /* 258*64 + 77*64 + 2*(4*(64*64+64) + 256*64+256 + 64*256+64 + 4*64) + 2*64 */
    assert_int_equal(te_n_params(te), 258 * 64 + 77 * 64 + 2 * (4 * (64 * 64 + 64) + 256 * 64 + 256 + 64 * 256 + 64 + 4 * 64) + 2 * 64);
    te_init_random(te, 42);

    Tokenizer *tok = tok_create_bytes();
    const int N = 2, L = 32, H = 64;
    int32_t ids[64];
    int n0, n1;
    assert_int_equal(tok_encode_padded(tok, "a photo of sks dog", L, ids, &n0, err, sizeof err), 0);
    assert_int_equal(tok_encode_padded(tok, "a photo of sks cat on a sofa", L, ids + L, &n1, err, sizeof err), 0);
    tok_free(tok);
    /* positions 0..15 ("<bos>a photo of sks ") agree; 16 differs ('d' vs 'c') */
    const int same = 16;
    for (int t = 0; t < same; t++) assert_int_equal(ids[t], ids[L + t]);
    assert_int_not_equal(ids[same], ids[L + same]);
    assert_int_equal(te_eos_position(&cfg, ids, L), n0 - 1);
    assert_int_equal(te_eos_position(&cfg, ids + L, L), n1 - 1);

    float *d_hid = dev_alloc(N * L * H), *d_pen = dev_alloc(N * L * H), *d_pool = dev_alloc(N * H);
    assert_int_equal(te_forward(te, ids, N, L, d_hid, d_pen, d_pool, err, sizeof err), 0);
    float *hid = download(d_hid, N * L * H), *pen = download(d_pen, N * L * H), *pool = download(d_pool, N * H);
    /* causal: the shared prefix gives the same states; later positions differ */
    for (int i = 0; i < same * H; i++) {
        assert_true(fabsf(hid[i] - hid[L * H + i]) <= 1e-5f * (1 + fabsf(hid[i])));
        assert_true(fabsf(pen[i] - pen[L * H + i]) <= 1e-5f * (1 + fabsf(pen[i])));
    }
    double diff = 0;
    for (int i = same * H; i < (same + 1) * H; i++) diff += fabs(hid[i] - hid[L * H + i]);
    assert_true(diff > 1e-3);
    /* pooled = last hidden at the first EOS */
    for (int n = 0; n < N; n++) {
        int e = n ? n1 - 1 : n0 - 1;
        for (int j = 0; j < H; j++) assert_true(pool[n * H + j] == hid[(n * L + e) * H + j]);
    }
    /* penultimate is pre-norm and not the final output */
    double pd = 0;
    for (int i = 0; i < N * L * H; i++) pd += fabs(pen[i] - hid[i]);
    assert_true(pd > 1e-2);

    /* same seed, same numbers; another seed, others */
    TextEncoder *te2 = te_create(&cfg, be, err, sizeof err);
    te_init_random(te2, 42);
    float *d_h2 = dev_alloc(N * L * H);
    assert_int_equal(te_forward(te2, ids, N, L, d_h2, NULL, NULL, err, sizeof err), 0);
    float *h2 = download(d_h2, N * L * H);
    assert_memory_equal(h2, hid, (size_t)N * L * H * sizeof(float));
    te_init_random(te2, 43);
    assert_int_equal(te_forward(te2, ids, N, L, d_h2, NULL, NULL, err, sizeof err), 0);
    free(h2);
    h2 = download(d_h2, N * L * H);
    assert_true(memcmp(h2, hid, (size_t)N * L * H * sizeof(float)) != 0);

    /* errors: too many positions, id outside the vocabulary */
    int32_t long_ids[78] = {0};
    assert_int_equal(te_forward(te, long_ids, 1, 78, d_hid, NULL, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "77 positions"));
    ids[5] = 258;
    assert_int_equal(te_forward(te, ids, N, L, d_hid, NULL, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "token id 258"));
    assert_non_null(strstr(err, "position 5"));

    free(hid); free(pen); free(pool); free(h2);
    be->free(be, d_hid); be->free(be, d_pen); be->free(be, d_pool); be->free(be, d_h2);
    te_free(te);
    te_free(te2);
}

static void test_eos_rule(void **state)
{
    (void)state;
    TextConfig cfg;
    te_config_builtin(&cfg, "tiny-text", NULL, 0);
    int32_t a[6] = {256, 5, 257, 7, 257, 257};
    assert_int_equal(te_eos_position(&cfg, a, 6), 2);
    int32_t b[4] = {256, 5, 9, 3}; /* no EOS: argmax */
    assert_int_equal(te_eos_position(&cfg, b, 4), 0);
    cfg.eos_token_id = -1; /* legacy: argmax, first maximum */
    int32_t c[5] = {49406, 320, 49407, 49407, 49407};
    assert_int_equal(te_eos_position(&cfg, c, 5), 2);
}

/* ---------------- configs and load errors ---------------- */

static void test_config_and_errors(void **state)
{
    (void)state;
    char err[512], path[] = "/tmp/krona_te_cfg_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    /* SD 1.5's text_encoder/config.json (fields as diffusers ships them) */
    const char *sd15 =
        "{\"_name_or_path\": \"openai/clip-vit-large-patch14\", \"architectures\": [\"CLIPTextModel\"],"
        " \"attention_dropout\": 0.0, \"bos_token_id\": 0, \"dropout\": 0.0, \"eos_token_id\": 2,"
        " \"hidden_act\": \"quick_gelu\", \"hidden_size\": 768, \"initializer_factor\": 1.0,"
        " \"initializer_range\": 0.02, \"intermediate_size\": 3072, \"layer_norm_eps\": 1e-05,"
        " \"max_position_embeddings\": 77, \"model_type\": \"clip_text_model\", \"num_attention_heads\": 12,"
        " \"num_hidden_layers\": 12, \"pad_token_id\": 1, \"projection_dim\": 768, \"torch_dtype\": \"float32\","
        " \"transformers_version\": \"4.22.0.dev0\", \"vocab_size\": 49408}";
    assert_int_equal(write(fd, sd15, strlen(sd15)), (ssize_t)strlen(sd15));
    close(fd);
    TextConfig c;
    if (te_config_load(&c, path, err, sizeof err) != 0) { print_error("%s\n", err); fail(); }
    unlink(path);
    assert_int_equal(c.vocab_size, 49408);
    assert_int_equal(c.hidden_size, 768);
    assert_int_equal(c.intermediate_size, 3072);
    assert_int_equal(c.num_hidden_layers, 12);
    assert_int_equal(c.num_attention_heads, 12);
    assert_int_equal(c.max_position_embeddings, 77);
    assert_int_equal(c.hidden_act, TE_ACT_QUICK_GELU);
    assert_int_equal(c.projection_dim, 0);   /* CLIPTextModel has no text_projection */
    assert_int_equal(c.eos_token_id, -1);    /* legacy 2: argmax pooling */
    assert_true(fabsf(c.layer_norm_eps - 1e-5f) < 1e-12f);

    /* SDXL's text_encoder_2 (OpenCLIP bigG in HF form) */
    const char *sdxl2 =
        "{\"architectures\": [\"CLIPTextModelWithProjection\"], \"eos_token_id\": 2, \"hidden_act\": \"gelu\","
        " \"hidden_size\": 1280, \"intermediate_size\": 5120, \"layer_norm_eps\": 1e-05,"
        " \"max_position_embeddings\": 77, \"num_attention_heads\": 20, \"num_hidden_layers\": 32,"
        " \"projection_dim\": 1280, \"vocab_size\": 49408}";
    assert_int_equal(te_config_parse(&c, sdxl2, strlen(sdxl2), "te2", err, sizeof err), 0);
    assert_int_equal(c.hidden_act, TE_ACT_GELU);
    assert_int_equal(c.projection_dim, 1280);
    assert_int_equal(c.num_hidden_layers, 32);

    const char *bad = "{\"hidden_act\": \"relu\"}";
    assert_int_equal(te_config_parse(&c, bad, strlen(bad), "cfg.json", err, sizeof err), -1);
    assert_non_null(strstr(err, "cfg.json"));
    assert_non_null(strstr(err, "hidden_act"));
    const char *bad2 = "{\"hidden_size\": 100, \"num_attention_heads\": 12}";
    assert_int_equal(te_config_parse(&c, bad2, strlen(bad2), "cfg.json", err, sizeof err), -1);
    assert_non_null(strstr(err, "multiple"));
    const char *bad3 = "{\"hidden_size\": 7.5}";
    assert_int_equal(te_config_parse(&c, bad3, strlen(bad3), "cfg.json", err, sizeof err), -1);
    assert_non_null(strstr(err, "hidden_size"));
    assert_int_equal(te_config_parse(&c, "{", 1, "cfg.json", err, sizeof err), -1);
    assert_int_equal(te_config_load(&c, "/nonexistent/config.json", err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/config.json"));

    /* load errors: wrong prefix, config not matching the weights, missing projection */
    SafeTensors *st = st_open(GOLDEN, err, sizeof err);
    assert_non_null(st);
    TextConfig g;
    golden_config(st, &g);
    st_close(st);
    TextEncoder *te = te_create(&g, be, err, sizeof err);
    assert_int_equal(te_load_safetensors(te, GOLDEN, "cond_stage_model.transformer.", err, sizeof err), -1);
    assert_non_null(strstr(err, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"));
    te_free(te);
    g.intermediate_size = 48;
    te = te_create(&g, be, err, sizeof err);
    assert_int_equal(te_load_safetensors(te, GOLDEN, "", err, sizeof err), -1);
    assert_non_null(strstr(err, "text_model.encoder.layers.0.mlp.fc1.weight"));
    assert_non_null(strstr(err, "[64, 32]"));
    assert_non_null(strstr(err, "[48, 32]"));
    te_free(te);
    g.intermediate_size = 64;
    te = te_create(&g, be, err, sizeof err);
    assert_int_equal(te_load_safetensors(te, "/nonexistent.safetensors", "", err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent.safetensors"));

    /* weights without text_projection for a config that has one */
    char wpath[] = "/tmp/krona_te_noproj_XXXXXX";
    int wfd = mkstemp(wpath);
    assert_true(wfd >= 0);
    close(wfd);
    st = st_open(GOLDEN, err, sizeof err);
    StWriter *w = stw_create();
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *t = st_at(st, i);
        if (strcmp(t->name, "text_projection.weight") != 0)
            assert_int_equal(stw_add_ref(w, t->name, t->dtype, t->ndim, t->shape, t->data), 0);
    }
    if (stw_save(w, wpath, err, sizeof err) != 0) { print_error("%s\n", err); fail(); }
    stw_free(w);
    st_close(st);
    assert_int_equal(te_load_safetensors(te, wpath, "", err, sizeof err), -1);
    assert_non_null(strstr(err, "text_projection.weight"));
    unlink(wpath);
    te_free(te);
    TextConfig z = g;
    z.num_attention_heads = 5;
    assert_null(te_create(&z, be, err, sizeof err));
    assert_non_null(strstr(err, "num_attention_heads"));
}

/* SD 1.5's text tower: the published parameter count (no weights are touched:
 * the zero-filled allocation is never written). */
static void test_sd15_params(void **state)
{
    (void)state;
    TextConfig c = {.vocab_size = 49408, .hidden_size = 768, .intermediate_size = 3072,
                    .num_hidden_layers = 12, .num_attention_heads = 12, .max_position_embeddings = 77,
                    .hidden_act = TE_ACT_QUICK_GELU, .layer_norm_eps = 1e-5f, .projection_dim = 0,
                    .eos_token_id = -1};
    char err[256];
    TextEncoder *te = te_create(&c, be, err, sizeof err);
    assert_non_null(te);
    assert_int_equal(te_n_params(te), 123060480);
    te_free(te);
}

/* ---------------- backward ---------------- */

/* embedding_bwd against a naive scatter-add, with repeated ids, accumulating */
static void test_embedding_bwd_op(void **state)
{
    (void)state;
    const int V = 7, dim = 5, n = 13;
    int32_t ids[13] = {3, 1, 3, 0, 6, 3, 1, 2, 2, 5, 3, 0, 6};
    Rng r;
    rng_seed(&r, 11);
    float hd[13 * 5], ht[7 * 5];
    rng_fill_uniform(&r, hd, n * dim, -1, 1);
    rng_fill_uniform(&r, ht, V * dim, -1, 1);
    double want[7 * 5];
    for (int i = 0; i < V * dim; i++) want[i] = ht[i];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < dim; j++) want[ids[i] * dim + j] += hd[i * dim + j];
    float *dd = dev_alloc(n * dim), *dt = dev_alloc(V * dim);
    int32_t *di = be->alloc(be, sizeof ids);
    assert_non_null(di);
    be->upload(be, dd, hd, sizeof hd);
    be->upload(be, dt, ht, sizeof ht);
    be->upload(be, di, ids, sizeof ids);
    assert_non_null(be->embedding_bwd);
    be->embedding_bwd(be, dd, di, dt, n, dim);
    float *got = download(dt, V * dim);
    for (int i = 0; i < V * dim; i++) assert_true(fabs(got[i] - want[i]) < 1e-5);
    free(got);
    be->free(be, dd);
    be->free(be, dt);
    be->free(be, di);
}

/* loss = sum(hidden * R) in double, for the finite differences */
static double te_loss(TextEncoder *te, const int32_t *ids, int N, int L, const float *R, float *dhid)
{
    char err[256];
    int H = te_config(te)->hidden_size;
    int64_t n = (int64_t)N * L * H;
    assert_int_equal(te_forward(te, ids, N, L, dhid, NULL, NULL, err, sizeof err), 0);
    float *h = download(dhid, n);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)h[i] * R[i];
    free(h);
    return s;
}

static int find_tensor(const TextEncoder *te, const char *name, int64_t *offset, int64_t *numel)
{
    for (int i = 0; i < te_n_tensors(te); i++) {
        int nd;
        int64_t sh[2];
        const char *nm = te_tensor_info(te, i, &nd, sh, offset);
        if (strcmp(nm, name) == 0) {
            *numel = sh[0] * (nd > 1 ? sh[1] : 1);
            return i;
        }
    }
    fail_msg("no tensor %s", name);
    return -1;
}

static void backward_fd_case(TextAct act)
{
    TextConfig c = {.vocab_size = 20, .hidden_size = 16, .intermediate_size = 32,
                    .num_hidden_layers = 2, .num_attention_heads = 2, .max_position_embeddings = 8,
                    .hidden_act = act, .layer_norm_eps = 1e-5f, .projection_dim = 0,
                    .eos_token_id = 19};
    char err[256];
    TextEncoder *te = te_create(&c, be, err, sizeof err);
    assert_non_null(te);
    /* parameters of order one (LN weights near 1) so every path carries gradient */
    int64_t P = te_n_params(te);
    float *hp = malloc((size_t)P * sizeof *hp);
    assert_non_null(hp);
    Rng r;
    rng_seed(&r, 5);
    rng_fill_uniform(&r, hp, P, -0.4f, 0.4f);
    for (int i = 0; i < te_n_tensors(te); i++) {
        int nd;
        int64_t sh[2], off;
        const char *nm = te_tensor_info(te, i, &nd, sh, &off);
        if (strstr(nm, "norm") && strstr(nm, ".weight"))
            for (int64_t j = 0; j < sh[0]; j++) hp[off + j] += 1.0f;
    }
    be->upload(be, te_params(te), hp, (size_t)P * sizeof *hp);

    /* token 4 repeats (scatter-add); ids 0..2 and positions 6, 7 are never used */
    const int N = 2, L = 6, H = c.hidden_size;
    int32_t ids[12] = {18, 4, 9, 4, 19, 19, 18, 7, 4, 12, 3, 19};
    int64_t nh = (int64_t)N * L * H;
    float *R = malloc((size_t)nh * sizeof *R);
    assert_non_null(R);
    rng_fill_uniform(&r, R, nh, -1, 1);
    float *dhid = dev_alloc(nh), *dR = dev_alloc(nh);
    be->upload(be, dR, R, (size_t)nh * sizeof *R);

    assert_int_equal(te_backward(te, dR, err, sizeof err), -1); /* not trainable */
    assert_non_null(strstr(err, "te_set_trainable"));
    assert_int_equal(te_set_trainable(te, 1, err, sizeof err), 0);
    assert_int_equal(te_backward(te, dR, err, sizeof err), -1); /* no forward yet */
    te_zero_grad(te);
    te_loss(te, ids, N, L, R, dhid);
    assert_int_equal(te_backward(te, dR, err, sizeof err), 0);
    float *g = download(te_grads(te), P);

    struct { const char *name; int64_t idx[4]; } checks[] = {
        {"text_model.embeddings.token_embedding.weight", {4 * 16 + 3, 18 * 16 + 0, 19 * 16 + 15, 9 * 16 + 7}},
        {"text_model.embeddings.position_embedding.weight", {0 * 16 + 1, 3 * 16 + 5, 5 * 16 + 9, 2 * 16 + 14}},
        {"text_model.encoder.layers.0.self_attn.q_proj.weight", {0, 17, 100, 255}},
        {"text_model.encoder.layers.0.self_attn.k_proj.bias", {0, 3, 8, 15}},
        {"text_model.encoder.layers.0.layer_norm1.weight", {0, 5, 9, 15}},
        {"text_model.encoder.layers.1.mlp.fc1.bias", {0, 7, 20, 31}},
        {"text_model.encoder.layers.1.mlp.fc2.weight", {1, 60, 300, 511}},
        {"text_model.encoder.layers.1.self_attn.out_proj.weight", {2, 40, 130, 250}},
        {"text_model.final_layer_norm.bias", {0, 4, 11, 15}},
    };
    const float h = 1e-2f;
    for (size_t k = 0; k < sizeof checks / sizeof checks[0]; k++) {
        int64_t off, numel;
        find_tensor(te, checks[k].name, &off, &numel);
        for (int e = 0; e < 4; e++) {
            int64_t j = off + checks[k].idx[e];
            assert_true(checks[k].idx[e] < numel);
            float save = hp[j], v;
            v = save + h; be->upload(be, te_params(te) + j, &v, sizeof v);
            double lp = te_loss(te, ids, N, L, R, dhid);
            v = save - h; be->upload(be, te_params(te) + j, &v, sizeof v);
            double lm = te_loss(te, ids, N, L, R, dhid);
            be->upload(be, te_params(te) + j, &save, sizeof save);
            double fd = (lp - lm) / (2 * h);
            if (fabs(fd - g[j]) > 2e-2 * fabs(fd) + 2e-3)
                fail_msg("%s[%lld]: backward %g, finite difference %g", checks[k].name,
                         (long long)checks[k].idx[e], g[j], fd);
        }
    }
    /* unused token rows and positions get exactly zero */
    int64_t toff, poff, numel;
    find_tensor(te, "text_model.embeddings.token_embedding.weight", &toff, &numel);
    find_tensor(te, "text_model.embeddings.position_embedding.weight", &poff, &numel);
    for (int j = 0; j < 3 * H; j++) assert_true(g[toff + j] == 0.0f);
    for (int j = L * H; j < 8 * H; j++) assert_true(g[poff + j] == 0.0f);

    /* backward accumulates: a second one (same forward) doubles every gradient */
    te_loss(te, ids, N, L, R, dhid);
    assert_int_equal(te_backward(te, dR, err, sizeof err), 0);
    assert_int_equal(te_backward(te, dR, err, sizeof err), 0);
    float *g2 = download(te_grads(te), P);
    for (int64_t j = 0; j < P; j++) assert_true(fabs(g2[j] - 3 * g[j]) <= 1e-4 * (1 + fabs(g[j])));

    /* save + load round trip */
    char path[] = "/tmp/te_bwd_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(te_save_safetensors(te, path, err, sizeof err), 0);
    TextEncoder *te2 = te_create(&c, be, err, sizeof err);
    assert_non_null(te2);
    assert_int_equal(te_load_safetensors(te2, path, "", err, sizeof err), 0);
    float *p2 = download(te_params(te2), P);
    assert_memory_equal(p2, hp, (size_t)P * sizeof *hp);
    unlink(path);

    te_free(te2);
    te_free(te);
    free(p2);
    free(g2);
    free(g);
    free(R);
    free(hp);
    be->free(be, dhid);
    be->free(be, dR);
}

static void test_backward_fd(void **state)
{
    (void)state;
    backward_fd_case(TE_ACT_GELU);
}

/* quick_gelu (SD 1.5's and SDXL's first encoder) through quick_gelu_bwd */
static void test_backward_fd_quick_gelu(void **state)
{
    (void)state;
    backward_fd_case(TE_ACT_QUICK_GELU);
}

/* Adapters on q/k/v/out_proj: gradients of sum(R * hidden) w.r.t. their
 * factors against central differences, with a frozen base (TE_TRAIN_ADAPTERS:
 * no base gradient block) for gelu and quick_gelu, KronA and LoRA. */
static void adapter_fd_case(TextAct act, AdapterKind kind)
{
    TextConfig c = {.vocab_size = 20, .hidden_size = 16, .intermediate_size = 32,
                    .num_hidden_layers = 2, .num_attention_heads = 2, .max_position_embeddings = 8,
                    .hidden_act = act, .layer_norm_eps = 1e-5f, .projection_dim = 0,
                    .eos_token_id = 19};
    char err[256];
    TextEncoder *te = te_create(&c, be, err, sizeof err);
    assert_non_null(te);
    int64_t P = te_n_params(te);
    float *hp = malloc((size_t)P * sizeof *hp);
    assert_non_null(hp);
    Rng r;
    rng_seed(&r, 9);
    rng_fill_uniform(&r, hp, P, -0.4f, 0.4f);
    for (int i = 0; i < te_n_tensors(te); i++) {
        int nd;
        int64_t sh[2], off;
        const char *nm = te_tensor_info(te, i, &nd, sh, &off);
        if (strstr(nm, "norm") && strstr(nm, ".weight"))
            for (int64_t j = 0; j < sh[0]; j++) hp[off + j] += 1.0f;
    }
    be->upload(be, te_params(te), hp, (size_t)P * sizeof *hp);

    /* a1 that does not divide 16: one line naming the layer */
    AdapterSpec bad = {.kind = ADAPTER_KRONA, .a1 = 3, .a2 = 4, .alpha = 1, .modules = ADAPT_ATTN};
    assert_int_equal(te_attach_adapters(te, &bad, 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "text_model.encoder.layers.0.self_attn.q_proj"));
    assert_null(strchr(err, '\n'));
    assert_int_equal(te_adapters(te)->n, 0);

    AdapterSpec sp = {.kind = kind, .a1 = 4, .a2 = 2, .rank = 3, .alpha = kind == ADAPTER_LORA ? 3.0f : 1.5f,
                      .modules = ADAPT_ATTN};
    assert_int_equal(te_attach_adapters(te, &sp, 7, err, sizeof err), 0);
    AdapterSet *as = te_adapters(te);
    assert_int_equal(as->n, 8);
    assert_string_equal(as->items[0].name, "text_model.encoder.layers.0.self_attn.q_proj");
    assert_string_equal(as->items[7].name, "text_model.encoder.layers.1.self_attn.out_proj");
    /* B starts at zero (exactly the base model); give every factor values of order one */
    for (int i = 0; i < as->n; i++) {
        Adapter *a = &as->items[i];
        int64_t na = adapter_numel_A(a), nb = adapter_numel_B(a);
        float *t = malloc((size_t)(na + nb) * sizeof *t);
        assert_non_null(t);
        rng_fill_uniform(&r, t, na + nb, -0.5f, 0.5f);
        be->upload(be, a->A, t, (size_t)na * sizeof *t);
        be->upload(be, a->B, t + na, (size_t)nb * sizeof *t);
        free(t);
    }

    const int N = 2, L = 6, H = c.hidden_size;
    int32_t ids[12] = {18, 4, 9, 4, 19, 19, 18, 7, 4, 12, 3, 19};
    int64_t nh = (int64_t)N * L * H;
    float *R = malloc((size_t)nh * sizeof *R);
    assert_non_null(R);
    rng_fill_uniform(&r, R, nh, -1, 1);
    float *dhid = dev_alloc(nh), *dR = dev_alloc(nh);
    be->upload(be, dR, R, (size_t)nh * sizeof *R);

    assert_int_equal(te_set_trainable(te, TE_TRAIN_ADAPTERS, err, sizeof err), 0);
    assert_int_equal(te_trainable(te), TE_TRAIN_ADAPTERS);
    assert_null(te_grads(te)); /* no gradient block for the frozen base */
    te_zero_grad(te);
    te_loss(te, ids, N, L, R, dhid);
    assert_int_equal(te_backward(te, dR, err, sizeof err), 0);

    const float h = 1e-2f;
    int checked = 0;
    for (int i = 0; i < as->n; i++) {
        Adapter *a = &as->items[i];
        for (int f = 0; f < 2; f++) {
            float *par = f ? a->B : a->A, *gr = f ? a->dB : a->dA;
            int64_t n = f ? adapter_numel_B(a) : adapter_numel_A(a);
            float *g = download(gr, n), *pv = download(par, n);
            int64_t picks[3] = {0, n / 2, n - 1};
            for (int e = 0; e < 3; e++) {
                int64_t j = picks[e];
                float save = pv[j], v;
                v = save + h; be->upload(be, par + j, &v, sizeof v);
                double lp = te_loss(te, ids, N, L, R, dhid);
                v = save - h; be->upload(be, par + j, &v, sizeof v);
                double lm = te_loss(te, ids, N, L, R, dhid);
                be->upload(be, par + j, &save, sizeof save);
                double fd = (lp - lm) / (2 * h);
                if (fabs(fd - g[j]) > 2e-2 * fabs(fd) + 2e-3)
                    fail_msg("%s %s[%lld]: backward %g, finite difference %g", a->name, f ? "B" : "A",
                             (long long)j, g[j], fd);
                checked++;
            }
            /* some gradient must be non-trivial, or the check proves nothing */
            double m = 0;
            for (int64_t j = 0; j < n; j++) m = fmax(m, fabs(g[j]));
            assert_true(m > 1e-3);
            free(g);
            free(pv);
        }
    }
    assert_int_equal(checked, 8 * 2 * 3);
    /* detaching gives back the base output */
    AdapterSpec none = {.kind = ADAPTER_NONE};
    double l_ad = te_loss(te, ids, N, L, R, dhid);
    assert_int_equal(te_attach_adapters(te, &none, 0, err, sizeof err), 0);
    assert_int_equal(te_adapters(te)->n, 0);
    double l_base = te_loss(te, ids, N, L, R, dhid);
    assert_true(fabs(l_ad - l_base) > 1e-3);
    te_free(te);
    free(R);
    free(hp);
    be->free(be, dhid);
    be->free(be, dR);
}

/* loss = sum(R * hidden) (when R) + sum(R2 * penultimate) (when R2), in double */
static double te_loss2(TextEncoder *te, const int32_t *ids, int N, int L, const float *R,
                       const float *R2, float *dhid, float *dpen)
{
    char err[256];
    int64_t n = (int64_t)N * L * te_config(te)->hidden_size;
    assert_int_equal(te_forward(te, ids, N, L, dhid, dpen, NULL, err, sizeof err), 0);
    float *h = download(dhid, n), *q = download(dpen, n);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (R ? (double)h[i] * R[i] : 0) + (R2 ? (double)q[i] * R2[i] : 0);
    free(h);
    free(q);
    return s;
}

/* te_backward_states: the gradient through penultimate_out (SDXL's UNet reads
 * it), alone and with hidden_out's, on the adapters of a 3-layer quick_gelu
 * encoder with a frozen base. */
static void test_penultimate_fd(void **state)
{
    (void)state;
    TextConfig c = {.vocab_size = 20, .hidden_size = 16, .intermediate_size = 32,
                    .num_hidden_layers = 3, .num_attention_heads = 2, .max_position_embeddings = 8,
                    .hidden_act = TE_ACT_QUICK_GELU, .layer_norm_eps = 1e-5f, .projection_dim = 0,
                    .eos_token_id = 19};
    char err[256];
    TextEncoder *te = te_create(&c, be, err, sizeof err);
    assert_non_null(te);
    int64_t P = te_n_params(te);
    float *hp = malloc((size_t)P * sizeof *hp);
    Rng r;
    rng_seed(&r, 21);
    rng_fill_uniform(&r, hp, P, -0.4f, 0.4f);
    for (int i = 0; i < te_n_tensors(te); i++) {
        int nd;
        int64_t sh[2], off;
        const char *nm = te_tensor_info(te, i, &nd, sh, &off);
        if (strstr(nm, "norm") && strstr(nm, ".weight"))
            for (int64_t j = 0; j < sh[0]; j++) hp[off + j] += 1.0f;
    }
    be->upload(be, te_params(te), hp, (size_t)P * sizeof *hp);
    AdapterSpec sp = {.kind = ADAPTER_KRONA, .a1 = 2, .a2 = 4, .alpha = 1.0f, .modules = ADAPT_ATTN};
    assert_int_equal(te_attach_adapters(te, &sp, 3, err, sizeof err), 0);
    AdapterSet *as = te_adapters(te);
    for (int i = 0; i < as->n; i++) {
        Adapter *a = &as->items[i];
        int64_t na = adapter_numel_A(a), nb = adapter_numel_B(a);
        float *t = malloc((size_t)(na + nb) * sizeof *t);
        rng_fill_uniform(&r, t, na + nb, -0.5f, 0.5f);
        be->upload(be, a->A, t, (size_t)na * sizeof *t);
        be->upload(be, a->B, t + na, (size_t)nb * sizeof *t);
        free(t);
    }
    const int N = 2, L = 5;
    int32_t ids[10] = {18, 4, 9, 4, 19, 7, 4, 12, 3, 19};
    int64_t nh = (int64_t)N * L * c.hidden_size;
    float *R = malloc((size_t)nh * sizeof *R), *R2 = malloc((size_t)nh * sizeof *R2);
    rng_fill_uniform(&r, R, nh, -1, 1);
    rng_fill_uniform(&r, R2, nh, -1, 1);
    float *dhid = dev_alloc(nh), *dpen = dev_alloc(nh), *dR = dev_alloc(nh), *dR2 = dev_alloc(nh);
    be->upload(be, dR, R, (size_t)nh * sizeof *R);
    be->upload(be, dR2, R2, (size_t)nh * sizeof *R2);
    assert_int_equal(te_set_trainable(te, TE_TRAIN_ADAPTERS, err, sizeof err), 0);
    for (int mode = 0; mode < 2; mode++) { /* 0: penultimate only, 1: both */
        const float *Rh = mode ? R : NULL;
        te_zero_grad(te);
        te_loss2(te, ids, N, L, Rh, R2, dhid, dpen);
        assert_int_equal(te_backward_states(te, mode ? dR : NULL, dR2, err, sizeof err), 0);
        const float h = 1e-2f;
        for (int i = 0; i < as->n; i++) {
            Adapter *a = &as->items[i];
            int64_t n = adapter_numel_B(a);
            float *g = download(a->dB, n), *pv = download(a->B, n);
            double m = 0;
            for (int64_t j = 0; j < n; j++) m = fmax(m, fabs(g[j]));
            /* penultimate only: the last layer's adapters get nothing */
            if (!mode && i >= 8) assert_true(m == 0);
            else assert_true(m > 1e-3);
            int64_t picks[2] = {1, n - 2};
            for (int e = 0; e < 2; e++) {
                int64_t j = picks[e];
                float save = pv[j], v;
                v = save + h; be->upload(be, a->B + j, &v, sizeof v);
                double lp = te_loss2(te, ids, N, L, Rh, R2, dhid, dpen);
                v = save - h; be->upload(be, a->B + j, &v, sizeof v);
                double lm = te_loss2(te, ids, N, L, Rh, R2, dhid, dpen);
                be->upload(be, a->B + j, &save, sizeof save);
                double fd = (lp - lm) / (2 * h);
                if (fabs(fd - g[j]) > 2e-2 * fabs(fd) + 2e-3)
                    fail_msg("mode %d %s B[%lld]: backward %g, finite difference %g", mode, a->name,
                             (long long)j, g[j], fd);
            }
            free(g);
            free(pv);
        }
    }
    assert_int_equal(te_backward_states(te, NULL, NULL, err, sizeof err), -1);
    te_free(te);
    free(hp); free(R); free(R2);
    be->free(be, dhid); be->free(be, dpen); be->free(be, dR); be->free(be, dR2);
}

static void test_adapter_fd(void **state)
{
    (void)state;
    adapter_fd_case(TE_ACT_GELU, ADAPTER_KRONA);
    adapter_fd_case(TE_ACT_QUICK_GELU, ADAPTER_KRONA);
    adapter_fd_case(TE_ACT_QUICK_GELU, ADAPTER_LORA);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_naive_gelu),
        cmocka_unit_test(test_tiny_causal),
        cmocka_unit_test(test_eos_rule),
        cmocka_unit_test(test_config_and_errors),
        cmocka_unit_test(test_sd15_params),
        cmocka_unit_test(test_embedding_bwd_op),
        cmocka_unit_test(test_backward_fd),
        cmocka_unit_test(test_backward_fd_quick_gelu),
        cmocka_unit_test(test_adapter_fd),
        cmocka_unit_test(test_penultimate_fd),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

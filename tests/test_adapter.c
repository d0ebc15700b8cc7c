/* test_adapter.c — KronA / LoRA adapters: parameter counts vs the formulas,
 * forward/backward/merge vs explicit (A⊗B) and up·down references in double,
 * init, save/load round trips and malformed adapter files. */
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

#include "models/adapter.h"
#include "core/backend.h"
#include "core/rng.h"
#include "formats/safetensors.h"

static void test_counts(void **st) {
    (void)st;
    AdapterSpec k = {0};
    k.kind = ADAPTER_KRONA;
    int dims[][2] = {{320, 320}, {320, 768}, {2560, 320}, {1280, 2048}, {640, 5120}};
    int fac[][2] = {{1, 1}, {4, 4}, {8, 16}, {16, 8}, {64, 64}, {320, 320}};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        for (size_t j = 0; j < sizeof fac / sizeof fac[0]; j++) {
            int dout = dims[i][0], din = dims[i][1];
            k.a1 = fac[j][0]; k.a2 = fac[j][1];
            int64_t want = (dout % k.a1 || din % k.a2) ? -1
                         : (int64_t)k.a1 * k.a2 + (int64_t)(dout / k.a1) * (din / k.a2);
            assert_int_equal(adapter_param_count(&k, dout, din), want);
        }
    k.a1 = 3; k.a2 = 4;
    assert_int_equal(adapter_param_count(&k, 320, 320), -1);
    k.a1 = 0;
    assert_int_equal(adapter_param_count(&k, 320, 320), -1);
    AdapterSpec l = {0};
    l.kind = ADAPTER_LORA;
    for (int r = 1; r <= 64; r *= 2) {
        l.rank = r;
        assert_int_equal(adapter_param_count(&l, 640, 2048), (int64_t)r * (640 + 2048));
    }
    l.rank = 0;
    assert_int_equal(adapter_param_count(&l, 640, 2048), -1);

    char err[256];
    k.a1 = 3; k.a2 = 4;
    assert_int_equal(adapter_check(&k, "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
                                   1280, 1280, err, sizeof err), -1);
    assert_string_equal(err, "a1=3 does not divide d_out=1280 of "
                             "mid_block.attentions.0.transformer_blocks.0.attn1.to_q");
    k.a1 = 4; k.a2 = 3;
    assert_int_equal(adapter_check(&k, "x.to_k", 320, 768, err, sizeof err), 0);
    assert_int_equal(adapter_check(&k, "x.to_q", 320, 320, err, sizeof err), -1);
    assert_string_equal(err, "a2=3 does not divide d_in=320 of x.to_q");
    l.rank = 400;
    assert_int_equal(adapter_check(&l, "y.to_out.0", 320, 320, err, sizeof err), -1);
    assert_non_null(strstr(err, "y.to_out.0"));

    k.modules = ADAPT_ATTN;
    assert_true(adapter_selects(&k, 1, 0));
    assert_false(adapter_selects(&k, 0, 1));
    k.modules = ADAPT_ATTN | ADAPT_FFN;
    assert_true(adapter_selects(&k, 0, 1));
    assert_false(adapter_selects(&k, 0, 0));
    AdapterSpec none = {0};
    none.modules = ADAPT_ATTN | ADAPT_FFN;
    assert_false(adapter_selects(&none, 1, 1));
}

static void fill(Backend *be, float *dev, int64_t n, Rng *r, float amp) {
    float *h = malloc((size_t)n * sizeof *h);
    rng_fill_uniform(r, h, n, -amp, amp);
    be->upload(be, dev, h, (size_t)n * sizeof *h);
    free(h);
}

static float *dl(Backend *be, const float *dev, int64_t n) {
    float *h = malloc((size_t)n * sizeof *h);
    be->download(be, h, dev, (size_t)n * sizeof *h);
    return h;
}

static double maxrel(const float *a, const double *b, int64_t n) {
    double md = 0, mr = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        md = fmax(md, fabs(a[i] - b[i]));
        mr = fmax(mr, fabs(b[i]));
    }
    return md / mr;
}

/* dense dW (scale included) of an adapter, in double, from host copies of A and B */
static double *dense_dw(const Adapter *a, const float *A, const float *B) {
    double *W = calloc((size_t)a->d_out * a->d_in, sizeof *W);
    if (a->kind == ADAPTER_KRONA) {
        for (int i = 0; i < a->a1; i++)
            for (int j = 0; j < a->a2; j++)
                for (int k = 0; k < a->b1; k++)
                    for (int l = 0; l < a->b2; l++)
                        W[(int64_t)(i * a->b1 + k) * a->d_in + j * a->b2 + l] =
                            (double)a->scale * A[i * a->a2 + j] * B[k * a->b2 + l];
    } else {
        for (int o = 0; o < a->d_out; o++)
            for (int c = 0; c < a->d_in; c++) {
                double s = 0;
                for (int r = 0; r < a->rank; r++) s += (double)B[o * a->rank + r] * A[r * a->d_in + c];
                W[(int64_t)o * a->d_in + c] = a->scale * s;
            }
    }
    return W;
}

static void check_math(AdapterKind kind, int a1, int a2, int dout, int din, int M) {
    Backend *be = backend_cpu_create();
    AdapterSpec s = {0};
    s.kind = kind; s.a1 = a1; s.a2 = a2; s.rank = 3; s.alpha = kind == ADAPTER_LORA ? 6.0f : 0.7f;
    s.modules = ADAPT_ATTN;
    Adapter a;
    char err[256];
    assert_int_equal(adapter_init(&a, be, &s, "t.to_q", dout, din, 9, err, sizeof err), 0);
    assert_float_equal(a.scale, kind == ADAPTER_LORA ? 2.0f : 0.7f, 1e-7);
    int64_t na = kind == ADAPTER_KRONA ? a.a1 * a.a2 : (int64_t)a.rank * din;
    int64_t nb = kind == ADAPTER_KRONA ? a.b1 * a.b2 : (int64_t)dout * a.rank;
    Rng r;
    rng_seed(&r, 4);
    fill(be, a.B, nb, &r, 0.5f); /* B starts at zero: make it nonzero */
    float *x = be->alloc(be, (size_t)M * din * sizeof(float));
    float *y = be->alloc(be, (size_t)M * dout * sizeof(float));
    float *dy = be->alloc(be, (size_t)M * dout * sizeof(float));
    float *dx = be->alloc(be, (size_t)M * din * sizeof(float));
    float *W = be->alloc(be, (size_t)dout * din * sizeof(float));
    float *scr = be->alloc(be, (size_t)(adapter_scratch_floats(&a, M) + 1) * sizeof(float));
    fill(be, x, (int64_t)M * din, &r, 1.0f);
    fill(be, y, (int64_t)M * dout, &r, 1.0f);
    fill(be, dy, (int64_t)M * dout, &r, 1.0f);
    fill(be, dx, (int64_t)M * din, &r, 1.0f);
    fill(be, W, (int64_t)dout * din, &r, 1.0f);
    float *hA = dl(be, a.A, na), *hB = dl(be, a.B, nb), *hx = dl(be, x, (int64_t)M * din);
    float *hy0 = dl(be, y, (int64_t)M * dout), *hdy = dl(be, dy, (int64_t)M * dout);
    float *hdx0 = dl(be, dx, (int64_t)M * din), *hW0 = dl(be, W, (int64_t)dout * din);
    double *D = dense_dw(&a, hA, hB);

    /* forward: y += dW x */
    adapter_fwd(be, &a, x, y, M, scr);
    double *ry = calloc((size_t)M * dout, sizeof *ry);
    for (int m = 0; m < M; m++)
        for (int o = 0; o < dout; o++) {
            double sum = hy0[m * dout + o];
            for (int c = 0; c < din; c++) sum += D[o * din + c] * hx[m * din + c];
            ry[m * dout + o] = sum;
        }
    float *hy = dl(be, y, (int64_t)M * dout);
    assert_true(maxrel(hy, ry, (int64_t)M * dout) < 1e-5);

    /* backward: dx += dW^T dy; dA, dB by the chain rule through dW */
    adapter_bwd(be, &a, dy, x, dx, M, scr);
    double *rdx = calloc((size_t)M * din, sizeof *rdx);
    for (int m = 0; m < M; m++)
        for (int c = 0; c < din; c++) {
            double sum = hdx0[m * din + c];
            for (int o = 0; o < dout; o++) sum += D[o * din + c] * hdy[m * dout + o];
            rdx[m * din + c] = sum;
        }
    float *hdx = dl(be, dx, (int64_t)M * din);
    assert_true(maxrel(hdx, rdx, (int64_t)M * din) < 1e-5);
    /* G = dy^T x = dL/d(dW) */
    double *Gm = calloc((size_t)dout * din, sizeof *Gm);
    for (int m = 0; m < M; m++)
        for (int o = 0; o < dout; o++)
            for (int c = 0; c < din; c++) Gm[o * din + c] += (double)hdy[m * dout + o] * hx[m * din + c];
    double *rdA = calloc((size_t)na, sizeof *rdA), *rdB = calloc((size_t)nb, sizeof *rdB);
    if (kind == ADAPTER_KRONA) {
        for (int i = 0; i < a.a1; i++)
            for (int j = 0; j < a.a2; j++)
                for (int k = 0; k < a.b1; k++)
                    for (int l = 0; l < a.b2; l++) {
                        double g = a.scale * Gm[(i * a.b1 + k) * din + j * a.b2 + l];
                        rdA[i * a.a2 + j] += g * hB[k * a.b2 + l];
                        rdB[k * a.b2 + l] += g * hA[i * a.a2 + j];
                    }
    } else {
        for (int o = 0; o < dout; o++)
            for (int c = 0; c < din; c++)
                for (int q = 0; q < a.rank; q++) {
                    double g = a.scale * Gm[o * din + c];
                    rdA[q * din + c] += g * hB[o * a.rank + q];   /* d down */
                    rdB[o * a.rank + q] += g * hA[q * din + c];   /* d up */
                }
    }
    float *hdA = dl(be, a.dA, na), *hdB = dl(be, a.dB, nb);
    assert_true(maxrel(hdA, rdA, na) < 1e-5);
    assert_true(maxrel(hdB, rdB, nb) < 1e-5);

    /* merge: W += dW */
    adapter_merge_into(be, &a, W, scr);
    float *hW = dl(be, W, (int64_t)dout * din);
    double *rW = malloc((size_t)dout * din * sizeof *rW);
    for (int i = 0; i < dout * din; i++) rW[i] = hW0[i] + D[i];
    assert_true(maxrel(hW, rW, (int64_t)dout * din) < 1e-6);

    free(hA); free(hB); free(hx); free(hy0); free(hdy); free(hdx0); free(hW0); free(D);
    free(ry); free(hy); free(rdx); free(hdx); free(Gm); free(rdA); free(rdB); free(hdA);
    free(hdB); free(hW); free(rW);
    be->free(be, x); be->free(be, y); be->free(be, dy); be->free(be, dx); be->free(be, W);
    be->free(be, scr);
    adapter_free(&a, be);
    backend_destroy(be);
}

/* Every factor shape against the dense reference. The backends multiply
 * A X_m B^T from whichever side is cheaper (kron_a_first), and their helpers
 * switch between a direct loop and a permute + GEMM on the factors' sizes, so
 * the shapes cover both orders crossed with both helper paths. */
static void test_krona_math(void **st) {
    (void)st;
    static const int shapes[][5] = {
        /* a1, a2, d_out, d_in, M */
        {4, 8, 24, 40, 7},      /* A first, small factors */
        {4, 64, 320, 320, 33},  /* A first (SD 1.5's 4x64): 2,880 vs 46,080 per row */
        {64, 4, 320, 320, 33},  /* B first, the mirror image */
        {16, 2, 64, 48, 9},     /* B first, A 16x2 */
        {2, 16, 48, 64, 9},     /* A first, A 2x16 */
        {1, 1, 12, 20, 5},      /* A scalar: dW = s a B */
        {12, 20, 12, 20, 5},    /* B scalar: dW = s b A */
        {16, 16, 64, 64, 70},   /* a tie: A first; large A takes the GEMM paths */
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const int *sh = shapes[i];
        check_math(ADAPTER_KRONA, sh[0], sh[1], sh[2], sh[3], sh[4]);
    }
    /* the rule itself on the shapes above */
    assert_true(kron_a_first(4, 64, 80, 5));
    assert_false(kron_a_first(64, 4, 5, 80));
}
static void test_lora_math(void **st) { (void)st; check_math(ADAPTER_LORA, 4, 8, 24, 40, 7); }

/* merged or factored (adapter_merged): which precision may merge, and the
 * cost rule on layers whose answer is plain */
static void test_merge_rule(void **st) {
    (void)st;
    assert_int_equal(adapter_merge_mode(KRONA_PREC_FP32), ADAPTER_MERGE_AUTO);
    assert_int_equal(adapter_merge_mode(KRONA_PREC_BF16), ADAPTER_FACTORED); /* W' in bf16 swallows dW */
    assert_int_equal(adapter_merge_mode(KRONA_PREC_TF32), ADAPTER_FACTORED);
    Backend *be = backend_cpu_create();
    char err[256];
    AdapterSpec s = {.kind = ADAPTER_KRONA, .a1 = 4, .a2 = 4, .alpha = 1, .modules = ADAPT_ATTN};
    Adapter tiny, sdq, sdk;
    /* the tiny model's 32-wide attention over 32x32 tokens: 384 MACs a row against W's 1,024 elements */
    assert_int_equal(adapter_init(&tiny, be, &s, "tiny.to_q", 32, 32, 1, err, sizeof err), 0);
    s.a2 = 64;
    /* SD 1.5's 320-wide self-attention over 64x64 latents (KronA 4x64): 2,880 MACs a row */
    assert_int_equal(adapter_init(&sdq, be, &s, "sd.attn1.to_q", 320, 320, 1, err, sizeof err), 0);
    /* its cross-attention key over 77 tokens of 768: 77 rows against a 320x768 W */
    assert_int_equal(adapter_init(&sdk, be, &s, "sd.attn2.to_k", 320, 768, 1, err, sizeof err), 0);
    assert_true(adapter_merge_pays(&tiny, 1024));
    assert_false(adapter_merge_pays(&tiny, 4)); /* a few rows: the factored products are cheaper */
    assert_true(adapter_merge_pays(&sdq, 4096));
    assert_false(adapter_merge_pays(&sdk, 77));
    AdapterSpec f = s, m = s, au = s;
    f.merged = ADAPTER_FACTORED;
    m.merged = ADAPTER_MERGED;
    au.merged = ADAPTER_MERGE_AUTO;
    assert_false(adapter_merged(&f, &sdq, 4096));
    assert_true(adapter_merged(&m, &sdk, 77));
    assert_true(adapter_merged(&au, &sdq, 4096));
    assert_false(adapter_merged(&au, &sdk, 77));
    assert_false(adapter_merged(&m, NULL, 4096)); /* no adapter on the layer */
    AdapterSpec lo = {.kind = ADAPTER_LORA, .rank = 4, .alpha = 4, .modules = ADAPT_ATTN, .merged = ADAPTER_MERGE_AUTO};
    Adapter lora;
    assert_int_equal(adapter_init(&lora, be, &lo, "sd.attn1.to_q", 320, 320, 1, err, sizeof err), 0);
    assert_true(adapter_merged(&lo, &lora, 4096)); /* 4 x 640 MACs a row over 4,096 rows vs 6 x 102,400 */
    assert_false(adapter_merged(&lo, &lora, 16));
    adapter_free(&tiny, be); adapter_free(&sdq, be); adapter_free(&sdk, be); adapter_free(&lora, be);
    backend_destroy(be);
}

static void test_init(void **st) {
    (void)st;
    Backend *be = backend_cpu_create();
    AdapterSpec s = {0};
    s.kind = ADAPTER_KRONA; s.a1 = 8; s.a2 = 16; s.modules = ADAPT_ATTN;
    Adapter a, b, c;
    char err[256];
    assert_int_equal(adapter_init(&a, be, &s, "m", 320, 768, 5, err, sizeof err), 0);
    assert_int_equal(adapter_init(&b, be, &s, "m", 320, 768, 5, err, sizeof err), 0);
    assert_int_equal(adapter_init(&c, be, &s, "m", 320, 768, 6, err, sizeof err), 0);
    assert_int_equal(a.b1, 40);
    assert_int_equal(a.b2, 48);
    assert_float_equal(a.scale, 1.0f, 0);
    float *A = dl(be, a.A, 128), *Ab = dl(be, b.A, 128), *Ac = dl(be, c.A, 128);
    float *B = dl(be, a.B, 40 * 48), *dA = dl(be, a.dA, 128);
    assert_memory_equal(A, Ab, 128 * sizeof(float));
    assert_memory_not_equal(A, Ac, 128 * sizeof(float));
    double bound = 1.0 / sqrt(16.0), mx = 0;
    for (int i = 0; i < 128; i++) { assert_true(fabs(A[i]) <= bound); mx = fmax(mx, fabs(A[i])); }
    assert_true(mx > 0.5 * bound);
    for (int i = 0; i < 40 * 48; i++) assert_true(B[i] == 0.0f);
    for (int i = 0; i < 128; i++) assert_true(dA[i] == 0.0f);
    free(A); free(Ab); free(Ac); free(B); free(dA);
    adapter_free(&a, be); adapter_free(&b, be); adapter_free(&c, be);
    /* bad factors are refused with the layer named */
    s.a1 = 7;
    assert_int_equal(adapter_init(&a, be, &s, "down.to_v", 320, 768, 5, err, sizeof err), -1);
    assert_non_null(strstr(err, "down.to_v"));
    backend_destroy(be);
}

/* ---------------------------------------------------------------- files */

static const char *NAMES[3] = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
};
static const int DIMS[3][2] = {{32, 32}, {32, 64}, {256, 32}};

static void make_set(AdapterSet *set, Backend *be, AdapterKind kind, int a1, int a2, int rank,
                     int n, uint64_t seed, int randomize) {
    memset(set, 0, sizeof *set);
    set->be = be;
    set->spec.kind = kind; set->spec.a1 = a1; set->spec.a2 = a2; set->spec.rank = rank;
    set->spec.alpha = kind == ADAPTER_LORA ? 2.0f * rank : 1.0f;
    set->spec.modules = ADAPT_ATTN | ADAPT_FFN;
    set->items = calloc((size_t)n, sizeof *set->items);
    char err[256];
    Rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        assert_int_equal(adapter_init(&set->items[i], be, &set->spec, NAMES[i], DIMS[i][0],
                                      DIMS[i][1], seed + i, err, sizeof err), 0);
        Adapter *a = &set->items[i];
        if (randomize) {
            fill(be, a->B, kind == ADAPTER_KRONA ? a->b1 * a->b2 : (int64_t)a->d_out * a->rank, &r, 1);
            fill(be, a->A, kind == ADAPTER_KRONA ? a->a1 * a->a2 : (int64_t)a->rank * a->d_in, &r, 1);
        }
        set->n++;
    }
}

/* dW of one adapter as the engine merges it (W = 0 + dW), on the host */
static float *merged_dw(Backend *be, const Adapter *a) {
    int64_t n = (int64_t)a->d_out * a->d_in;
    float *W = be->alloc(be, (size_t)n * sizeof(float)); /* zero-filled */
    adapter_merge_into(be, a, W, NULL);
    float *h = dl(be, W, n);
    be->free(be, W);
    return h;
}

static void tmpname(char *buf, size_t n, const char *tag) {
    snprintf(buf, n, "/tmp/krona_test_adapter_%d_%s.safetensors", (int)getpid(), tag);
}

static void check_roundtrip(AdapterKind kind) {
    Backend *be = backend_cpu_create();
    AdapterSet a, b;
    make_set(&a, be, kind, 4, 2, 4, 3, 100, 1);
    a.items[1].scale *= 1.5f; /* per-layer alpha survives */
    assert_int_equal(adapter_set_param_count(&a),
                     kind == ADAPTER_KRONA ? (8 + 8 * 16) + (8 + 8 * 32) + (8 + 64 * 16)
                                           : 4 * (64 + 96 + 288));
    char path[256], err[512];
    tmpname(path, sizeof path, kind == ADAPTER_KRONA ? "krona" : "lora");
    if (adapter_set_save(&a, path, "{\"seed\": 42, \"note\": \"dog\"}", err, sizeof err))
        fail_msg("%s", err);
    /* keys and metadata, read back independently */
    SafeTensors *st = st_open(path, err, sizeof err);
    assert_non_null(st);
    assert_int_equal(st_count(st), 9);
    if (kind == ADAPTER_KRONA) {
        const StTensor *t = st_find(st, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lokr_w2");
        assert_non_null(t);
        assert_int_equal(t->shape[0], 8);
        assert_int_equal(t->shape[1], 32);
        assert_non_null(st_find(st, "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.lokr_w1"));
        assert_string_equal(st_metadata(st, "kind"), "krona");
        assert_string_equal(st_metadata(st, "a1"), "4");
        assert_string_equal(st_metadata(st, "krona_format"), "2");
        assert_string_equal(st_metadata(st, "ss_network_module"), "lycoris.kohya");
        /* full factors: alpha 1, the layer's scale multiplied into lokr_w1 */
        t = st_find(st, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha");
        float al, w1[8], A[8];
        assert_int_equal(st_read_f32(t, &al), 0);
        assert_true(al == 1.0f);
        t = st_find(st, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lokr_w1");
        assert_int_equal(st_read_f32(t, w1), 0);
        be->download(be, A, a.items[1].A, sizeof A);
        for (int k = 0; k < 8; k++) assert_true(w1[k] == a.items[1].scale * A[k]);
    } else {
        const StTensor *t = st_find(st, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight");
        assert_non_null(t);
        assert_int_equal(t->shape[0], 32);
        assert_int_equal(t->shape[1], 4);
        t = st_find(st, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha");
        float al;
        assert_int_equal(st_read_f32(t, &al), 0);
        assert_float_equal(al, 8.0f, 1e-6);
        assert_string_equal(st_metadata(st, "kind"), "lora");
        assert_string_equal(st_metadata(st, "rank"), "4");
        assert_string_equal(st_metadata(st, "ss_network_module"), "networks.lora");
        assert_string_equal(st_metadata(st, "ss_network_dim"), "4");
        assert_string_equal(st_metadata(st, "ss_network_alpha"), "8.0");
    }
    assert_string_equal(st_metadata(st, "modules"), "attn+ffn");
    assert_string_equal(st_metadata(st, "note"), "dog");
    assert_string_equal(st_metadata(st, "seed"), "42");
    st_close(st);

    make_set(&b, be, kind, 4, 2, 4, 3, 7, 0);
    if (adapter_set_load(&b, path, err, sizeof err)) fail_msg("%s", err);
    for (int i = 0; i < 3; i++) {
        Adapter *x = &a.items[i], *y = &b.items[i];
        int64_t na = kind == ADAPTER_KRONA ? x->a1 * x->a2 : (int64_t)x->rank * x->d_in;
        int64_t nb = kind == ADAPTER_KRONA ? x->b1 * x->b2 : (int64_t)x->d_out * x->rank;
        if (kind == ADAPTER_KRONA) {
            /* the scale travels inside lokr_w1: the same dW, float for float */
            float *p = merged_dw(be, x), *q = merged_dw(be, y);
            assert_memory_equal(p, q, (size_t)x->d_out * x->d_in * sizeof(float));
            free(p); free(q);
            assert_true(y->scale == 1.0f);
            continue;
        }
        float *p = dl(be, x->A, na), *q = dl(be, y->A, na);
        assert_memory_equal(p, q, (size_t)na * sizeof(float));
        free(p); free(q);
        p = dl(be, x->B, nb); q = dl(be, y->B, nb);
        assert_memory_equal(p, q, (size_t)nb * sizeof(float));
        free(p); free(q);
        assert_float_equal(x->scale, y->scale, 1e-6 * x->scale);
    }
    adapter_set_free(&a);
    adapter_set_free(&b);
    unlink(path);
    backend_destroy(be);
}

static void test_roundtrip_krona(void **st) { (void)st; check_roundtrip(ADAPTER_KRONA); }
static void test_roundtrip_lora(void **st) { (void)st; check_roundtrip(ADAPTER_LORA); }

static void test_malformed(void **st) {
    (void)st;
    Backend *be = backend_cpu_create();
    char p2[256], p3[256], pl[256], pbad[256], err[512];
    AdapterSet s2, s3, lo, tgt;
    make_set(&s2, be, ADAPTER_KRONA, 2, 2, 0, 2, 1, 1);   /* 2 layers, a1=2 */
    make_set(&s3, be, ADAPTER_KRONA, 4, 2, 0, 3, 1, 1);   /* 3 layers, a1=4 */
    make_set(&lo, be, ADAPTER_LORA, 0, 0, 4, 3, 1, 1);
    tmpname(p2, sizeof p2, "two"); tmpname(p3, sizeof p3, "three"); tmpname(pl, sizeof pl, "lo");
    tmpname(pbad, sizeof pbad, "bad");
    assert_int_equal(adapter_set_save(&s2, p2, NULL, err, sizeof err), 0);
    assert_int_equal(adapter_set_save(&s3, p3, NULL, err, sizeof err), 0);
    assert_int_equal(adapter_set_save(&lo, pl, NULL, err, sizeof err), 0);
    assert_int_equal(adapter_set_save(&s2, p2, "[1,2]", err, sizeof err), -1);
    assert_non_null(strstr(err, "JSON object"));

    /* target: 3 layers, a1=4 */
    make_set(&tgt, be, ADAPTER_KRONA, 4, 2, 0, 3, 9, 0);
    /* missing layer */
    assert_int_equal(adapter_set_load(&tgt, p2, err, sizeof err), -1);
    print_message("%s\n", err);
    assert_non_null(strstr(err, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lokr_w1"));
    assert_non_null(strstr(err, "shape [2,2], expected [4,2]"));
    /* LoRA file into a KronA run */
    assert_int_equal(adapter_set_load(&tgt, pl, err, sizeof err), -1);
    assert_non_null(strstr(err, "lora"));
    /* more layers in the file than attached */
    AdapterSet small;
    make_set(&small, be, ADAPTER_KRONA, 4, 2, 0, 2, 9, 0);
    assert_int_equal(adapter_set_load(&small, p3, err, sizeof err), -1);
    assert_non_null(strstr(err, "mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj"));
    assert_non_null(strstr(err, "matches no adapted layer"));
    /* fewer layers in the file: the missing one is named */
    AdapterSet s2b;
    make_set(&s2b, be, ADAPTER_KRONA, 4, 2, 0, 2, 1, 1);
    assert_int_equal(adapter_set_save(&s2b, p2, NULL, err, sizeof err), 0);
    assert_int_equal(adapter_set_load(&tgt, p2, err, sizeof err), -1);
    assert_non_null(strstr(err, "missing tensor 'lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.lokr_w1'"));
    /* garbage and truncated files */
    FILE *f = fopen(pbad, "wb");
    fputs("this is not a safetensors file", f);
    fclose(f);
    assert_int_equal(adapter_set_load(&tgt, pbad, err, sizeof err), -1);
    assert_non_null(strstr(err, pbad));
    FILE *in = fopen(p3, "rb");
    fseek(in, 0, SEEK_END);
    long sz = ftell(in);
    fseek(in, 0, SEEK_SET);
    char *buf = malloc((size_t)sz);
    assert_int_equal(fread(buf, 1, (size_t)sz, in), (size_t)sz);
    fclose(in);
    f = fopen(pbad, "wb");
    fwrite(buf, 1, (size_t)sz - 10, f);
    fclose(f);
    free(buf);
    assert_int_equal(adapter_set_load(&tgt, pbad, err, sizeof err), -1);
    assert_int_equal(adapter_set_load(&tgt, "/nonexistent/dir/x.safetensors", err, sizeof err), -1);
    /* the good file still loads after all the failures */
    if (adapter_set_load(&tgt, p3, err, sizeof err)) fail_msg("%s", err);
    /* nothing attached */
    AdapterSet empty = {0};
    empty.be = be;
    assert_int_equal(adapter_set_load(&empty, p3, err, sizeof err), -1);
    assert_non_null(strstr(err, "no adapters attached"));

    adapter_set_free(&s2); adapter_set_free(&s3); adapter_set_free(&lo); adapter_set_free(&tgt);
    adapter_set_free(&small); adapter_set_free(&s2b);
    unlink(p2); unlink(p3); unlink(pl); unlink(pbad);
    backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts),
        cmocka_unit_test(test_krona_math),
        cmocka_unit_test(test_lora_math),
        cmocka_unit_test(test_merge_rule),
        cmocka_unit_test(test_init),
        cmocka_unit_test(test_roundtrip_krona),
        cmocka_unit_test(test_roundtrip_lora),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

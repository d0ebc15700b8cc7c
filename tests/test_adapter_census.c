/* test_adapter_census.c — the adapter census against a naive count over the
 * parameter table (tiny, SD 1.5, SDXL; KronA and LoRA), its per-projection
 * rows, and a bad spec naming the factor at fault (a1, a2, rank), the layer,
 * its shape and the values that would fit; the text encoders' adapters of a
 * model spec (text_encoder_adapters = 1) against the closed form. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/adapter_census.h"
#include "models/model.h"

typedef struct Naive { int64_t base, adapted, trainable; int layers; } Naive;

/* Written out from the definitions, not through adapter.c: a linear is adapted
 * when the spec's modules name its kind; KronA costs a1*a2 + (d_out/a1)*(d_in/a2),
 * LoRA rank*(d_in + d_out). */
static Naive naive_count(const char *model, const AdapterSpec *s) {
    UNetConfig cfg;
    assert_int_equal(unet_config_builtin(model, &cfg), 0);
    UNetParam *p;
    UNetLinear *l;
    int np, nl;
    assert_int_equal(unet_param_table(&cfg, &p, &np, &l, &nl), 0);
    Naive n = {0};
    for (int i = 0; i < np; i++) n.base += p[i].numel;
    for (int i = 0; i < nl; i++) {
        int on = ((s->modules & ADAPT_ATTN) && l[i].is_attn) || ((s->modules & ADAPT_FFN) && l[i].is_ffn);
        if (!on) continue;
        int64_t o = l[i].d_out, in = l[i].d_in;
        n.layers++;
        n.adapted += o * in;
        if (s->kind == ADAPTER_KRONA) {
            assert_int_equal(o % s->a1, 0);
            assert_int_equal(in % s->a2, 0);
            n.trainable += (int64_t)s->a1 * s->a2 + (o / s->a1) * (in / s->a2);
        } else {
            n.trainable += (int64_t)s->rank * (in + o);
        }
    }
    free(p);
    free(l);
    return n;
}

static AdapterSpec krona(int a1, int a2, int modules) {
    AdapterSpec s = {0};
    s.kind = ADAPTER_KRONA;
    s.a1 = a1;
    s.a2 = a2;
    s.alpha = 1;
    s.modules = modules;
    return s;
}

static AdapterSpec lora(int rank, int modules) {
    AdapterSpec s = {0};
    s.kind = ADAPTER_LORA;
    s.rank = rank;
    s.alpha = (float)rank;
    s.modules = modules;
    return s;
}

static void census_of(const char *model, const AdapterSpec *s, AdapterCensus *c) {
    UNetConfig cfg;
    assert_int_equal(unet_config_builtin(model, &cfg), 0);
    if (adapter_census(&cfg, s, c) != 0) fail_msg("%s: %s", model, c->err);
}

/* totals, per-layer rows and per-projection rows agree with the naive count */
static void check_against_naive(const char *model, const AdapterSpec *s) {
    Naive n = naive_count(model, s);
    AdapterCensus c;
    census_of(model, s, &c);
    print_message("%s kind %d a1 %d a2 %d rank %d modules %d: base %lld adapted %lld trainable %lld\n",
                  model, s->kind, s->a1, s->a2, s->rank, s->modules, (long long)c.base,
                  (long long)c.adapted_base, (long long)c.trainable);
    if (!c.ok) fail_msg("%s: %s", model, c.err);
    assert_int_equal(c.base, n.base);
    assert_int_equal(c.adapted_base, n.adapted);
    assert_int_equal(c.trainable, n.trainable);
    assert_int_equal(c.n_layers, n.layers);
    assert_true(n.trainable > 0 && n.trainable < n.adapted);
    Naive rows = {0}, groups = {0};
    for (int i = 0; i < c.n_layers; i++) {
        rows.adapted += c.layers[i].base;
        rows.trainable += c.layers[i].trainable;
    }
    for (int j = 0; j < c.n_groups; j++) {
        const AdapterCensusGroup *g = &c.groups[j];
        groups.layers += g->layers;
        groups.adapted += g->base;
        groups.trainable += g->trainable;
        assert_true(g->d_out_min <= g->d_out_max && g->d_in_min <= g->d_in_max);
        for (int k = 0; k < j; k++) assert_string_not_equal(c.groups[k].kind, g->kind);
    }
    assert_int_equal(rows.adapted, n.adapted);
    assert_int_equal(rows.trainable, n.trainable);
    assert_int_equal(groups.layers, n.layers);
    assert_int_equal(groups.adapted, n.adapted);
    assert_int_equal(groups.trainable, n.trainable);
    adapter_census_free(&c);
}

static void test_census_counts(void **st) {
    (void)st;
    const char *models[] = {"tiny", "sd15", "sdxl"};
    for (int m = 0; m < 3; m++) {
        AdapterSpec s = krona(4, 4, ADAPT_ATTN);
        check_against_naive(models[m], &s);
        s = krona(8, 2, ADAPT_ATTN | ADAPT_FFN);
        check_against_naive(models[m], &s);
        s = krona(16, 32, ADAPT_ATTN);
        check_against_naive(models[m], &s);
        s = lora(4, ADAPT_ATTN | ADAPT_FFN);
        check_against_naive(models[m], &s);
        s = lora(8, ADAPT_ATTN);
        check_against_naive(models[m], &s);
    }
}

/* the rows `info --model tiny` prints: eight projections, seven layers each */
static void test_census_groups_tiny(void **st) {
    (void)st;
    AdapterSpec s = krona(4, 4, ADAPT_ATTN);
    AdapterCensus c;
    census_of("tiny", &s, &c);
    assert_true(c.ok);
    const char *kinds[] = {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                           "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"};
    assert_int_equal(c.n_groups, 8);
    for (int j = 0; j < 8; j++) {
        assert_string_equal(c.groups[j].kind, kinds[j]);
        assert_int_equal(c.groups[j].layers, 7);
    }
    /* attn2.to_k reads the 64-wide context: 32..64 x 64..64, 22,528 base, 1,520 trainable */
    assert_int_equal(c.groups[5].d_out_min, 32);
    assert_int_equal(c.groups[5].d_out_max, 64);
    assert_int_equal(c.groups[5].d_in_min, 64);
    assert_int_equal(c.groups[5].d_in_max, 64);
    assert_int_equal(c.groups[5].base, 22528);
    assert_int_equal(c.groups[5].trainable, 1520);
    assert_int_equal(c.trainable, 11008);
    assert_int_equal(c.base, 1488451);
    assert_int_equal(c.layers[0].trainable, 4 * 4 + (32 / 4) * (32 / 4));
    /* attn+ffn adds the two FFN projections as their own rows */
    adapter_census_free(&c);
    s.modules = ADAPT_ATTN | ADAPT_FFN;
    census_of("tiny", &s, &c);
    assert_int_equal(c.n_groups, 10);
    assert_string_equal(c.groups[8].kind, "ff.net.0.proj");
    assert_string_equal(c.groups[9].kind, "ff.net.2");
    adapter_census_free(&c);
}

static void test_census_bad_a1(void **st) {
    (void)st;
    AdapterSpec s = krona(3, 3, ADAPT_ATTN);   /* both bad: a1 is named first */
    AdapterCensus c;
    census_of("tiny", &s, &c);
    assert_false(c.ok);
    assert_int_equal(c.fault, ADAPTER_BAD_A1);
    assert_string_equal(adapter_fault_name(c.fault), "a1");
    assert_int_equal(c.fault_value, 3);
    assert_string_equal(c.fault_layer, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q");
    assert_int_equal(c.fault_d_out, 32);
    assert_int_equal(c.fault_d_in, 32);
    assert_string_equal(c.err, "a1=3 does not divide d_out=32 of "
                               "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q");
    assert_int_equal(c.trainable, 0);
    assert_int_equal(c.base, 1488451);   /* the base count stands */
    assert_int_equal(c.n_layers, 56);    /* every adapted layer listed, with its verdict */
    assert_int_equal(c.layers[0].trainable, -1);
    int v[16];
    int nv = adapter_census_valid(&c, v, 16);
    int want[] = {1, 2, 4, 8, 16, 32};
    assert_int_equal(nv, 6);
    assert_memory_equal(v, want, sizeof want);
    adapter_census_free(&c);

    /* sd15: 640 divides no level-0 d_out (320) */
    s = krona(640, 4, ADAPT_ATTN);
    census_of("sd15", &s, &c);
    assert_int_equal(c.fault, ADAPTER_BAD_A1);
    assert_int_equal(c.fault_d_out, 320);
    assert_non_null(strstr(c.err, "a1=640 does not divide d_out=320"));
    adapter_census_free(&c);
}

static void test_census_bad_a2(void **st) {
    (void)st;
    AdapterSpec s = krona(4, 3, ADAPT_ATTN);   /* a1 fits: a2 is at fault */
    AdapterCensus c;
    census_of("tiny", &s, &c);
    assert_false(c.ok);
    assert_int_equal(c.fault, ADAPTER_BAD_A2);
    assert_string_equal(adapter_fault_name(c.fault), "a2");
    assert_int_equal(c.fault_value, 3);
    assert_string_equal(c.err, "a2=3 does not divide d_in=32 of "
                               "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q");
    adapter_census_free(&c);

    /* sd15, a2 = 320: the self-attention layers fit; the first cross-attention
     * key (d_in = the 768-wide text context) does not */
    s = krona(1, 320, ADAPT_ATTN);
    census_of("sd15", &s, &c);
    assert_false(c.ok);
    assert_int_equal(c.fault, ADAPTER_BAD_A2);
    assert_string_equal(c.fault_layer, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k");
    assert_int_equal(c.fault_d_out, 320);
    assert_int_equal(c.fault_d_in, 768);
    assert_non_null(strstr(c.err, "a2=320 does not divide d_in=768 of "));
    int v[64];
    int nv = adapter_census_valid(&c, v, 64);   /* divisors of gcd(320, 640, 1280, 768) = 64 */
    assert_int_equal(nv, 7);
    assert_int_equal(v[0], 1);
    assert_int_equal(v[nv - 1], 64);
    adapter_census_free(&c);
}

static void test_census_bad_rank(void **st) {
    (void)st;
    AdapterSpec s = lora(33, ADAPT_ATTN);
    AdapterCensus c;
    census_of("tiny", &s, &c);
    assert_false(c.ok);
    assert_int_equal(c.fault, ADAPTER_BAD_RANK);
    assert_string_equal(adapter_fault_name(c.fault), "rank");
    assert_int_equal(c.fault_value, 33);
    assert_string_equal(c.err, "LoRA rank=33 must be between 1 and 32 for "
                               "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q [32 x 32]");
    int v[4];
    assert_int_equal(adapter_census_valid(&c, v, 4), 0);
    adapter_census_free(&c);
}

/* one layer at a time: the verdict adapter_check and the census share */
static void test_adapter_fault(void **st) {
    (void)st;
    char err[256];
    AdapterSpec s = krona(4, 4, ADAPT_ATTN);
    assert_int_equal(adapter_fault(&s, "x", 320, 768, err, sizeof err), ADAPTER_FITS);
    s.a1 = 0;
    assert_int_equal(adapter_fault(&s, "x", 320, 768, err, sizeof err), ADAPTER_BAD_A1);
    s.a1 = 3;   /* divides d_in, not d_out */
    assert_int_equal(adapter_fault(&s, "x", 320, 768, err, sizeof err), ADAPTER_BAD_A1);
    assert_string_equal(err, "a1=3 does not divide d_out=320 of x");
    s.a1 = 5; s.a2 = 5;   /* divides d_out, not d_in */
    assert_int_equal(adapter_fault(&s, "x", 320, 768, err, sizeof err), ADAPTER_BAD_A2);
    s.a1 = 4; s.a2 = 5;
    assert_int_equal(adapter_fault(&s, "x", 320, 768, NULL, 0), ADAPTER_BAD_A2);
    assert_int_equal(adapter_check(&s, "x", 320, 768, err, sizeof err), -1);
    assert_string_equal(err, "a2=5 does not divide d_in=768 of x");
    s = lora(0, ADAPT_ATTN);
    assert_int_equal(adapter_fault(&s, "x", 320, 768, err, sizeof err), ADAPTER_BAD_RANK);
    s.kind = (AdapterKind)7;
    assert_int_equal(adapter_fault(&s, "x", 320, 768, err, sizeof err), ADAPTER_BAD_KIND);
    s.kind = ADAPTER_NONE;
    assert_int_equal(adapter_fault(&s, "x", 320, 768, err, sizeof err), ADAPTER_FITS);
}

/* text_encoder_adapters = 1: q, k, v, out of every layer, each hidden x hidden,
 * KronA a1*a2 + (h/a1)(h/a2), LoRA 2*rank*h (the published widths and depths:
 * tiny-text 64 x 2 layers, CLIP ViT-L 768 x 12, OpenCLIP bigG 1280 x 32) */
static int64_t te_closed(int h, int layers, const AdapterSpec *s) {
    int64_t per = s->kind == ADAPTER_KRONA ? (int64_t)s->a1 * s->a2 + (int64_t)(h / s->a1) * (h / s->a2)
                                           : 2LL * s->rank * h;
    return 4LL * layers * per;
}

static void test_census_text_model(void **st) {
    (void)st;
    AdapterSpec k = {.kind = ADAPTER_KRONA, .a1 = 8, .a2 = 4, .alpha = 1, .modules = ADAPT_ATTN};
    AdapterSpec l = {.kind = ADAPTER_LORA, .rank = 4, .alpha = 4, .modules = ADAPT_ATTN};
    char err[512];
    assert_int_equal(adapter_census_text_model("tiny", &k, err, sizeof err), te_closed(64, 2, &k));
    assert_int_equal(adapter_census_text_model("sd15", &k, err, sizeof err), te_closed(768, 12, &k));
    assert_int_equal(adapter_census_text_model("sdxl", &l, err, sizeof err),
                     te_closed(768, 12, &l) + te_closed(1280, 32, &l));
    /* single files: the encoders of their kind */
    assert_int_equal(adapter_census_text_model("tests/golden/ldm_sdxllike.safetensors", &k, err, sizeof err),
                     te_closed(768, 12, &k) + te_closed(1280, 32, &k));
    assert_int_equal(adapter_census_text_model("tests/golden/ldm_sd15like.safetensors", &k, err, sizeof err),
                     te_closed(768, 12, &k));
    TextConfig tc[2];
    assert_int_equal(model_text_configs("tests/golden/ldm_sdxllike.safetensors", tc, err, sizeof err), 2);
    assert_int_equal(tc[1].hidden_size, 1280);
    /* a factor that divides CLIP ViT-L (768 = 2^8 * 3) but not bigG (1280 = 2^8 * 5): the second encoder named */
    AdapterSpec k3 = {.kind = ADAPTER_KRONA, .a1 = 3, .a2 = 4, .alpha = 1, .modules = ADAPT_ATTN};
    assert_int_equal(adapter_census_text_model("sdxl", &k3, err, sizeof err), -1);
    assert_non_null(strstr(err, "text encoder 2: a1=3 does not divide"));
    /* no text encoder: a UNet config alone */
    assert_int_equal(model_text_configs("tests/golden/unet_sd15like.json", tc, err, sizeof err), 0);
    assert_int_equal(adapter_census_text_model("tests/golden/unet_sd15like.json", &k, err, sizeof err), -1);
    assert_string_equal(err, "no text encoder: tests/golden/unet_sd15like.json is a UNet config alone");
    assert_int_equal(adapter_census_text_model("nosuch", &k, err, sizeof err), -1);
    assert_non_null(strstr(err, "nosuch"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_census_counts),
        cmocka_unit_test(test_census_groups_tiny),
        cmocka_unit_test(test_census_bad_a1),
        cmocka_unit_test(test_census_bad_a2),
        cmocka_unit_test(test_census_bad_rank),
        cmocka_unit_test(test_adapter_fault),
        cmocka_unit_test(test_census_text_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_model_sdxl.c — SDXL's text conditioning through the model layer, on a
 * small random-weight diffusers folder the test writes (pixel space, so no VAE
 * is needed): two text encoders (the second with a projection, padding with
 * id 0), their penultimate states concatenated to the UNet's context width,
 * the pooled projection and the time ids as the UNet's added input, all in one
 * conditioning record per prompt; checked against the encoders and the UNet
 * called directly, and the empty prompt as zeros (force_zeros_for_empty_prompt).
 * With aspect-ratio buckets every image the UNet trains on carries its own
 * time ids (original size, crop, bucket; its mirror's crop), worked out by
 * hand here, for instance and class images, with and without text adapters. */
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

#include "core/fsutil.h"
#include "core/rng.h"
#include "formats/image.h"
#include "formats/safetensors.h"
#include "models/model.h"
#include "formats/preset.h"
#include "training/train.h"

static char g_dir[256];

/* the SDXL-like test UNet of tests/golden/unet_sdxllike.json in pixel space:
 * context 32 = 16 + 16, added input 16 (pooled) + 6 time ids of 8 each */
static const char *UNET_JSON =
    "{\"_class_name\": \"UNet2DConditionModel\", \"in_channels\": 3, \"out_channels\": 3,"
    " \"sample_size\": 8, \"flip_sin_to_cos\": true, \"freq_shift\": 0,"
    " \"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\"],"
    " \"mid_block_type\": \"UNetMidBlock2DCrossAttn\","
    " \"up_block_types\": [\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"UpBlock2D\"],"
    " \"block_out_channels\": [8, 16, 16], \"layers_per_block\": 1, \"norm_num_groups\": 8,"
    " \"cross_attention_dim\": 32, \"transformer_layers_per_block\": [1, 1, 2],"
    " \"attention_head_dim\": [2, 2, 4], \"use_linear_projection\": true,"
    " \"addition_embed_type\": \"text_time\", \"addition_time_embed_dim\": 8,"
    " \"projection_class_embeddings_input_dim\": 64}";
static const char *TE1_JSON =
    "{\"architectures\": [\"CLIPTextModel\"], \"vocab_size\": 258, \"hidden_size\": 16,"
    " \"intermediate_size\": 32, \"num_hidden_layers\": 2, \"num_attention_heads\": 2,"
    " \"max_position_embeddings\": 77, \"hidden_act\": \"quick_gelu\", \"eos_token_id\": 257}";
static const char *TE2_JSON =
    "{\"architectures\": [\"CLIPTextModelWithProjection\"], \"vocab_size\": 258, \"hidden_size\": 16,"
    " \"intermediate_size\": 32, \"num_hidden_layers\": 3, \"num_attention_heads\": 4,"
    " \"max_position_embeddings\": 77, \"hidden_act\": \"gelu\", \"projection_dim\": 16,"
    " \"eos_token_id\": 257}";

static void write_text(const char *rel, const char *text) {
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/%s", g_dir, rel);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = 0;
    assert_int_equal(fs_mkdir_p(dir, err, sizeof err), 0);
    assert_int_equal(fs_write_atomic(path, text, strlen(text), err, sizeof err), 0);
}

static int setup(void **state) {
    snprintf(g_dir, sizeof g_dir, "build/test-model-sdxl-%d", (int)getpid());
    write_text("unet/config.json", UNET_JSON);
    write_text("text_encoder/config.json", TE1_JSON);
    write_text("text_encoder_2/config.json", TE2_JSON);
    char err[512], path[600];
    Backend *be = backend_cpu_create();
    UNetConfig uc;
    snprintf(path, sizeof path, "%s/unet/config.json", g_dir);
    if (unet_config_from_json(path, &uc, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return -1; }
    UNet *u = unet_create(&uc, be, err, sizeof err);
    if (!u) return -1;
    unet_init_random(u, 3);
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", g_dir);
    if (unet_save_safetensors(u, path, err, sizeof err) != 0) return -1;
    unet_free(u);
    const char *te_dirs[2] = {"text_encoder", "text_encoder_2"};
    for (int i = 0; i < 2; i++) {
        TextConfig tc;
        snprintf(path, sizeof path, "%s/%s/config.json", g_dir, te_dirs[i]);
        if (te_config_load(&tc, path, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return -1; }
        TextEncoder *te = te_create(&tc, be, err, sizeof err);
        if (!te) return -1;
        te_init_random(te, 10 + (uint64_t)i);
        snprintf(path, sizeof path, "%s/%s/model.safetensors", g_dir, te_dirs[i]);
        if (te_save_safetensors(te, path, err, sizeof err) != 0) return -1;
        te_free(te);
    }
    backend_destroy(be);
    return 0;
}

static int teardown(void **state) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static float *download(Backend *be, const float *dev, int64_t n) {
    float *h = malloc(sizeof(float) * (size_t)n);
    be->download(be, h, dev, sizeof(float) * (size_t)n);
    return h;
}

static void test_sdxl_conditioning(void **state) {
    char err[512];
    Backend *be = backend_cpu_create();
    Model *m = model_open(g_dir, be, err, sizeof err);
    if (!m) fail_msg("%s", err);
    assert_non_null(m->te2);
    assert_int_equal(m->ctx_dim, 32);
    assert_int_equal(m->added_dim, 16 + 6);
    int L = m->context_len;
    assert_int_equal(m->cond_floats, (int64_t)L * 32 + 22);

    /* the record against the two encoders run directly */
    const char *prompt = "a photo of a sks fox";
    float *cond = be->alloc(be, sizeof(float) * (size_t)m->cond_floats);
    assert_int_equal(model_encode_prompt(m, prompt, 48, cond, err, sizeof err), 0);
    float *rec = download(be, cond, m->cond_floats);
    int32_t ids1[77], ids2[77];
    assert_int_equal(tok_encode_padded(m->tok, prompt, L, ids1, NULL, err, sizeof err), 0);
    assert_int_equal(tok_encode_padded(m->tok2, prompt, L, ids2, NULL, err, sizeof err), 0);
    assert_int_equal(ids2[L - 1], 0); /* the second tokenizer pads with 0 */
    assert_int_equal(ids1[L - 1], tok_eos(m->tok));
    float *p1 = be->alloc(be, sizeof(float) * (size_t)L * 16), *p2 = be->alloc(be, sizeof(float) * (size_t)L * 16);
    float *pooled = be->alloc(be, sizeof(float) * 16);
    assert_int_equal(te_forward(m->te, ids1, 1, L, NULL, p1, NULL, err, sizeof err), 0);
    assert_int_equal(te_forward(m->te2, ids2, 1, L, NULL, p2, pooled, err, sizeof err), 0);
    float *h1 = download(be, p1, (int64_t)L * 16), *h2 = download(be, p2, (int64_t)L * 16);
    float *hp = download(be, pooled, 16);
    for (int l = 0; l < L; l++)
        for (int j = 0; j < 16; j++) {
            assert_true(rec[l * 32 + j] == h1[l * 16 + j]);
            assert_true(rec[l * 32 + 16 + j] == h2[l * 16 + j]);
        }
    for (int j = 0; j < 16; j++) assert_true(rec[L * 32 + j] == hp[j]);
    const float ids6[6] = {48, 48, 0, 0, 48, 48};
    for (int j = 0; j < 6; j++) assert_true(rec[L * 32 + 16 + j] == ids6[j]);

    /* the empty prompt: zeros, time ids still there */
    float *cu = be->alloc(be, sizeof(float) * (size_t)m->cond_floats);
    assert_int_equal(model_encode_prompt(m, "", 48, cu, err, sizeof err), 0);
    float *ru = download(be, cu, m->cond_floats);
    for (int64_t i = 0; i < m->cond_floats - 6; i++) assert_true(ru[i] == 0.f);
    for (int j = 0; j < 6; j++) assert_true(ru[m->cond_floats - 6 + j] == ids6[j]);

    /* the UNet on records = the UNet on (context, added) laid out by hand, batch of 2 */
    int N = 2, H = 8, W = 8;
    int64_t per = 3LL * H * W;
    float *cond2 = be->alloc(be, sizeof(float) * (size_t)(2 * m->cond_floats));
    be->copy(be, cond2, cond, sizeof(float) * (size_t)m->cond_floats);
    be->copy(be, cond2 + m->cond_floats, cu, sizeof(float) * (size_t)m->cond_floats);
    float hx[2 * 3 * 64], ht[2] = {10.f, 700.f};
    for (int i = 0; i < 2 * 3 * 64; i++) hx[i] = sinf(0.37f * (float)i);
    float *x = be->alloc(be, sizeof hx), *t = be->alloc(be, sizeof ht);
    be->upload(be, x, hx, sizeof hx);
    be->upload(be, t, ht, sizeof ht);
    float *o1 = be->alloc(be, sizeof(float) * (size_t)(N * per)), *o2 = be->alloc(be, sizeof(float) * (size_t)(N * per));
    assert_int_equal(model_unet_forward(m, x, t, cond2, o1, N, H, W, 0), 0);
    float *ctx = be->alloc(be, sizeof(float) * (size_t)N * L * 32), *added = be->alloc(be, sizeof(float) * (size_t)N * 22);
    float *hctx = malloc(sizeof(float) * (size_t)N * L * 32), hadd[2 * 22];
    for (int n = 0; n < N; n++) {
        const float *r = n == 0 ? rec : ru;
        memcpy(hctx + (int64_t)n * L * 32, r, sizeof(float) * (size_t)L * 32);
        memcpy(hadd + n * 22, r + L * 32, sizeof(float) * 22);
    }
    be->upload(be, ctx, hctx, sizeof(float) * (size_t)N * L * 32);
    be->upload(be, added, hadd, sizeof hadd);
    assert_int_equal(unet_forward(m->unet, x, t, ctx, added, o2, N, H, W, L, 0), 0);
    float *a = download(be, o1, N * per), *b = download(be, o2, N * per);
    assert_memory_equal(a, b, sizeof(float) * (size_t)(N * per));
    /* the added input matters: another size gives another output */
    float *cond48 = cond;
    assert_int_equal(model_encode_prompt(m, prompt, 64, cond48, err, sizeof err), 0);
    be->copy(be, cond2, cond48, sizeof(float) * (size_t)m->cond_floats);
    assert_int_equal(model_unet_forward(m, x, t, cond2, o1, N, H, W, 0), 0);
    float *c = download(be, o1, N * per);
    assert_true(memcmp(c, b, sizeof(float) * (size_t)per) != 0);

    /* and sampling runs on records, to finite pixels */
    float *img = malloc(sizeof(float) * (size_t)per);
    SamplerOpts so = {0};
    so.steps = 2;
    so.guidance = 3.0f;
    assert_int_equal(model_generate(m, cond, cu, 1, 8, &so, 5, NULL, img, err, sizeof err), 0);
    for (int64_t i = 0; i < per; i++) assert_true(isfinite(img[i]));

    free(img); free(a); free(b); free(c); free(hctx); free(rec); free(ru); free(h1); free(h2); free(hp);
    float *dev[] = {cond, cu, p1, p2, pooled, cond2, x, t, o1, o2, ctx, added};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) be->free(be, dev[i]);
    model_free(m);
    backend_destroy(be);
}

/* a UNet that wants added conditioning without a second encoder is refused in one line */
static void test_missing_second_encoder(void **state) {
    char err[512], cmd[600];
    snprintf(cmd, sizeof cmd, "mv '%s/text_encoder_2' '%s/te2.off'", g_dir, g_dir);
    assert_int_equal(system(cmd), 0);
    Backend *be = backend_cpu_create();
    Model *m = model_open(g_dir, be, err, sizeof err);
    assert_null(m);
    printf("%s\n", err);
    assert_non_null(strstr(err, "text encoder width 16 != UNet cross_attention_dim 32"));
    backend_destroy(be);
    snprintf(cmd, sizeof cmd, "mv '%s/te2.off' '%s/text_encoder_2'", g_dir, g_dir);
    assert_int_equal(system(cmd), 0);
}

/* SDXL adapters are keyed by their original (LDM) module paths, as kohya names
 * SDXL modules, and load back through the same names */
static void test_sdxl_adapter_names(void **state) {
    char err[512], path[600];
    Backend *be = backend_cpu_create();
    Model *m = model_open(g_dir, be, err, sizeof err);
    if (!m) fail_msg("%s", err);
    AdapterSpec spec = {.kind = ADAPTER_KRONA, .a1 = 2, .a2 = 2, .alpha = 1, .modules = ADAPT_ATTN};
    assert_int_equal(model_attach_adapters(m, &spec, 9, err, sizeof err), 0);
    AdapterSet *set = unet_adapters(m->unet);
    /* give B values (it starts at zero) so the round trip is meaningful */
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->items[i];
        int64_t nb = adapter_numel_B(a);
        float *h = malloc(sizeof(float) * (size_t)nb);
        for (int64_t k = 0; k < nb; k++) h[k] = 0.01f * (float)((i * 7 + k) % 13) - 0.05f;
        be->upload(be, a->B, h, sizeof(float) * (size_t)nb);
        free(h);
    }
    snprintf(path, sizeof path, "%s/sdxl-adapter.safetensors", g_dir);
    assert_int_equal(adapter_set_save(set, path, "{\"ss_base_model_version\":\"sdxl_base_v1-0\"}", err, sizeof err), 0);
    SafeTensors *st = st_open(path, err, sizeof err);
    assert_non_null(st);
    int ldm = 0;
    for (int i = 0; i < st_count(st); i++) {
        const char *k = st_at(st, i)->name;
        assert_int_equal(strncmp(k, "lora_unet_", 10), 0);
        assert_null(strstr(k, "down_blocks")); /* diffusers paths never appear */
        ldm += strstr(k, "lora_unet_input_blocks_") || strstr(k, "lora_unet_middle_block_") ||
               strstr(k, "lora_unet_output_blocks_");
    }
    assert_int_equal(ldm, st_count(st));
    assert_non_null(st_find(st, "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q.lokr_w1"));
    assert_string_equal(st_metadata(st, "ss_base_model_version"), "sdxl_base_v1-0");
    st_close(st);
    assert_string_equal(model_base_version(m), "sdxl_base_v1-0");

    Model *m2 = model_open(g_dir, be, err, sizeof err);
    if (!m2) fail_msg("%s", err);
    if (model_load_adapter(m2, path, err, sizeof err) != 0) fail_msg("%s", err);
    AdapterSet *s2 = unet_adapters(m2->unet);
    assert_int_equal(s2->n, set->n);
    for (int i = 0; i < set->n; i++) {
        int64_t na = adapter_numel_A(&set->items[i]), nb = adapter_numel_B(&set->items[i]);
        float *a1 = malloc(sizeof(float) * (size_t)na), *a2 = malloc(sizeof(float) * (size_t)na);
        float *b1 = malloc(sizeof(float) * (size_t)nb), *b2 = malloc(sizeof(float) * (size_t)nb);
        be->download(be, a1, set->items[i].A, sizeof(float) * (size_t)na);
        be->download(be, a2, s2->items[i].A, sizeof(float) * (size_t)na);
        be->download(be, b1, set->items[i].B, sizeof(float) * (size_t)nb);
        be->download(be, b2, s2->items[i].B, sizeof(float) * (size_t)nb);
        assert_memory_equal(a1, a2, sizeof(float) * (size_t)na);
        assert_memory_equal(b1, b2, sizeof(float) * (size_t)nb);
        free(a1); free(a2); free(b1); free(b2);
    }
    model_free(m2);
    model_free(m);
    backend_destroy(be);
}

/* text_encoder_adapters = 1 on SDXL: both encoders' adapters train through
 * their penultimate states (lora_te1_ / lora_te2_ keys, non-zero B), a run
 * cancelled at step 6 and resumed ends with the same file bit for bit, and
 * model_load_adapter attaches all three sets. */
static void sdxl_preset(Preset *p, const char *name) {
    preset_defaults(p);
    snprintf(p->model, sizeof p->model, "%s", g_dir);
    p->n_images = 2;
    snprintf(p->images[0], sizeof p->images[0], "models/demo/subject1.png");
    snprintf(p->images[1], sizeof p->images[1], "models/demo/subject2.png");
    snprintf(p->instance_prompt, sizeof p->instance_prompt, "a sks dog");
    p->resolution = 16;
    p->iterations = 8;
    p->batch = 2; /* records and d(ctx) of more than one prompt */
    p->sample_every = 0;
    p->n_sample_prompts = 0;
    p->checkpoint_every = 4;
    p->a1 = 2;
    p->a2 = 2;
    p->lr = 3e-3f;
    p->text_encoder_adapters = 1;
    snprintf(p->device, sizeof p->device, "cpu");
    snprintf(p->output_dir, sizeof p->output_dir, "%s", g_dir);
    snprintf(p->run_name, sizeof p->run_name, "%s", name);
}

typedef struct Stop { Trainer *t; int at; } Stop;
static void stop_cb(void *user, const TrainProgress *p) {
    Stop *s = user;
    if (p->state == TRAIN_RUNNING && p->step == s->at) trainer_cancel(s->t);
}

static float *file_floats(const char *path, int64_t *n_out, int *n_te1, int *n_te2, double *b1, double *b2) {
    char err[256];
    SafeTensors *st = st_open(path, err, sizeof err);
    assert_non_null(st);
    int64_t n = 0;
    for (int i = 0; i < st_count(st); i++) n += st_at(st, i)->numel;
    float *v = malloc(sizeof(float) * (size_t)n), *q = v;
    *n_te1 = *n_te2 = 0;
    *b1 = *b2 = 0;
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *x = st_at(st, i);
        st_read_f32(x, q);
        int k = !strncmp(x->name, "lora_te1_", 9) ? 1 : !strncmp(x->name, "lora_te2_", 9) ? 2 : 0;
        if (k == 1) (*n_te1)++;
        if (k == 2) (*n_te2)++;
        if (k && strstr(x->name, ".lokr_w2"))
            for (int64_t j = 0; j < x->numel; j++) *(k == 1 ? b1 : b2) += (double)q[j] * q[j];
        q += x->numel;
    }
    st_close(st);
    *n_out = n;
    return v;
}

static void test_sdxl_text_adapters_train(void **state) {
    Backend *be = backend_cpu_create();
    char err[1024], path[600];
    Preset p;
    sdxl_preset(&p, "te-full");
    Trainer *t = trainer_create(&p, NULL, be, NULL, err, sizeof err);
    if (!t) fail_msg("%s", err);
    assert_int_equal(trainer_run(t), 0);
    TrainProgress g = trainer_progress(t);
    printf("SDXL with text adapters: eval loss %.5f -> %.5f\n", g.eval_loss_start, g.eval_loss);
    assert_true(isfinite(g.eval_loss));
    trainer_free(t);

    sdxl_preset(&p, "te-killed");
    Stop s = {0};
    s.at = 6;
    TrainCallbacks cb = {&s, stop_cb, NULL, NULL, NULL};
    t = trainer_create(&p, NULL, be, &cb, err, sizeof err);
    if (!t) fail_msg("%s", err);
    s.t = t;
    assert_int_equal(trainer_run(t), 1);
    trainer_free(t);
    char run[512];
    snprintf(run, sizeof run, "%s/te-killed", g_dir);
    t = trainer_create(NULL, run, be, NULL, err, sizeof err);
    if (!t) fail_msg("%s", err);
    assert_int_equal(trainer_progress(t).step, 6); /* the checkpoint the cancel wrote */
    assert_int_equal(trainer_run(t), 0);
    trainer_free(t);

    int64_t na, nb;
    int t1, t2, u1, u2;
    double b1, b2, c1, c2;
    snprintf(path, sizeof path, "%s/te-full/adapter.safetensors", g_dir);
    float *a = file_floats(path, &na, &t1, &t2, &b1, &b2);
    snprintf(path, sizeof path, "%s/te-killed/adapter.safetensors", g_dir);
    float *b = file_floats(path, &nb, &u1, &u2, &c1, &c2);
    printf("lora_te1_ %d tensors |B| %.3g, lora_te2_ %d tensors |B| %.3g\n", t1, sqrt(b1), t2, sqrt(b2));
    assert_int_equal(t1, 3 * 4 * 2); /* TE1_JSON: 2 layers */
    assert_true(t2 >= 3 * 4);
    assert_true(b1 > 0 && b2 > 0);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, sizeof(float) * (size_t)na);
    free(a);
    free(b);

    Model *m = model_open(g_dir, be, err, sizeof err);
    if (!m) fail_msg("%s", err);
    snprintf(path, sizeof path, "%s/te-full/adapter.safetensors", g_dir);
    if (model_load_adapter(m, path, err, sizeof err)) fail_msg("%s", err);
    AdapterSet *sets[2];
    assert_int_equal(model_text_adapter_sets(m, sets), 2);
    assert_string_equal(sets[0]->key_prefix, "lora_te1_");
    assert_string_equal(sets[1]->key_prefix, "lora_te2_");
    model_free(m);
    backend_destroy(be);
}

/* The pooled text embedding's gradient: bigG's last layer feeds only
 * hidden_out, so its adapters learn only through pooled -> projection -> the
 * UNet's add_embedding. Their analytic gradient (unet_backward_cond's d added,
 * te_backward_all) against central finite differences of
 * loss = sum(R * UNet(x | both penultimate states, pooled, time ids)); an
 * adapter on layer 0 (both paths) too. */
typedef struct PoolCase {
    Model *m;
    int32_t ids1[77], ids2[77];
    float *x, *t, *ctx, *added, *out, *R, *pen1, *pen2, *pooled;
    int L, H, W;
} PoolCase;

static double pool_loss(PoolCase *c, int for_backward) {
    Model *m = c->m;
    Backend *be = m->be;
    int L = c->L, w1 = te_config(m->te)->hidden_size, w2 = te_config(m->te2)->hidden_size;
    int P = m->added_dim - 6;
    char err[512];
    if (te_forward(m->te, c->ids1, 1, L, NULL, c->pen1, NULL, err, sizeof err)) fail_msg("%s", err);
    if (te_forward(m->te2, c->ids2, 1, L, NULL, c->pen2, c->pooled, err, sizeof err)) fail_msg("%s", err);
    for (int l = 0; l < L; l++) {
        be->copy(be, c->ctx + (int64_t)l * m->ctx_dim, c->pen1 + (int64_t)l * w1, sizeof(float) * (size_t)w1);
        be->copy(be, c->ctx + (int64_t)l * m->ctx_dim + w1, c->pen2 + (int64_t)l * w2, sizeof(float) * (size_t)w2);
    }
    float ids6[6] = {64, 64, 0, 0, 64, 64};
    be->copy(be, c->added, c->pooled, sizeof(float) * (size_t)P);
    be->upload(be, c->added + P, ids6, sizeof ids6);
    int64_t n = 3LL * c->H * c->W;
    assert_int_equal(unet_forward(m->unet, c->x, c->t, c->ctx, c->added, c->out, 1, c->H, c->W, L, for_backward), 0);
    float *o = download(be, c->out, n), *r = download(be, c->R, n);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)o[i] * r[i];
    free(o); free(r);
    return s;
}

static void test_sdxl_pooled_gradient(void **state) {
    Backend *be = backend_cpu_create();
    char err[512];
    PoolCase c = {0};
    c.m = model_open(g_dir, be, err, sizeof err);
    if (!c.m) fail_msg("%s", err);
    Model *m = c.m;
    c.L = m->context_len; c.H = c.W = 8;
    AdapterSpec spec = {.kind = ADAPTER_KRONA, .a1 = 2, .a2 = 2, .alpha = 1, .modules = ADAPT_ATTN};
    if (model_attach_text_adapters(m, &spec, 5, err, sizeof err)) fail_msg("%s", err);
    TextEncoder *tes[2] = {m->te, m->te2};
    Rng r;
    rng_seed(&r, 77);
    for (int e = 0; e < 2; e++) {
        if (te_set_trainable(tes[e], TE_TRAIN_ADAPTERS, err, sizeof err)) fail_msg("%s", err);
        AdapterSet *s = te_adapters(tes[e]);
        for (int i = 0; i < s->n; i++) { /* non-zero B, so every factor has a gradient */
            int64_t nb = adapter_numel_B(&s->items[i]);
            float *h = malloc(sizeof(float) * (size_t)nb);
            rng_fill_normal(&r, h, nb);
            for (int64_t j = 0; j < nb; j++) h[j] *= 0.3f;
            be->upload(be, s->items[i].B, h, sizeof(float) * (size_t)nb);
            free(h);
        }
    }
    assert_int_equal(tok_encode_padded(m->tok, "a sks dog", c.L, c.ids1, NULL, err, sizeof err), 0);
    assert_int_equal(tok_encode_padded(m->tok2, "a sks dog", c.L, c.ids2, NULL, err, sizeof err), 0);
    int w1 = te_config(m->te)->hidden_size, w2 = te_config(m->te2)->hidden_size, P = m->added_dim - 6;
    int64_t n = 3LL * c.H * c.W;
    float *hx = malloc(sizeof(float) * (size_t)n), *hr = malloc(sizeof(float) * (size_t)n), ht = 500.f;
    rng_fill_normal(&r, hx, n);
    rng_fill_normal(&r, hr, n);
    c.x = be->alloc(be, sizeof(float) * (size_t)n); be->upload(be, c.x, hx, sizeof(float) * (size_t)n);
    c.R = be->alloc(be, sizeof(float) * (size_t)n); be->upload(be, c.R, hr, sizeof(float) * (size_t)n);
    c.t = be->alloc(be, sizeof(float)); be->upload(be, c.t, &ht, sizeof(float));
    c.out = be->alloc(be, sizeof(float) * (size_t)n);
    c.ctx = be->alloc(be, sizeof(float) * (size_t)c.L * m->ctx_dim);
    c.added = be->alloc(be, sizeof(float) * (size_t)(P + 6));
    c.pen1 = be->alloc(be, sizeof(float) * (size_t)c.L * w1);
    c.pen2 = be->alloc(be, sizeof(float) * (size_t)c.L * w2);
    c.pooled = be->alloc(be, sizeof(float) * (size_t)P);
    float *dctx = be->alloc(be, sizeof(float) * (size_t)c.L * m->ctx_dim);
    float *dadded = be->alloc(be, sizeof(float) * (size_t)(P + 6));
    float *dpen1 = be->alloc(be, sizeof(float) * (size_t)c.L * w1);
    float *dpen2 = be->alloc(be, sizeof(float) * (size_t)c.L * w2);

    te_zero_grad(m->te); te_zero_grad(m->te2);
    pool_loss(&c, 1);
    assert_int_equal(unet_backward_cond(m->unet, c.R, NULL, dctx, dadded), 0);
    for (int l = 0; l < c.L; l++) {
        be->copy(be, dpen1 + (int64_t)l * w1, dctx + (int64_t)l * m->ctx_dim, sizeof(float) * (size_t)w1);
        be->copy(be, dpen2 + (int64_t)l * w2, dctx + (int64_t)l * m->ctx_dim + w1, sizeof(float) * (size_t)w2);
    }
    float *dadd_h = download(be, dadded, P + 6);
    for (int i = P; i < P + 6; i++) assert_true(dadd_h[i] == 0.0f); /* the time ids get none */
    free(dadd_h);
    assert_int_equal(te_backward_states(m->te, NULL, dpen1, err, sizeof err), 0);
    assert_int_equal(te_backward_all(m->te2, NULL, dpen2, dadded, err, sizeof err), 0);
    /* dadded has P + 6 floats per prompt; one prompt: its first P are d pooled */

    /* directional derivatives along the analytic gradient (the largest change
     * the loss can show): the last layer's four adapters (pooled path only),
     * then layer 0's (both paths); fd = |g| when the gradient is right */
    AdapterSet *s2 = te_adapters(m->te2);
    int nl2 = te_config(m->te2)->num_hidden_layers;
    int first[2] = {4 * (nl2 - 1), 0};
    for (int k = 0; k < 2; k++) {
        float *g[4], *b0[4];
        int64_t nb[4];
        double norm = 0;
        for (int q = 0; q < 4; q++) {
            Adapter *a = &s2->items[first[k] + q];
            nb[q] = adapter_numel_B(a);
            g[q] = download(be, a->dB, nb[q]);
            b0[q] = download(be, a->B, nb[q]);
            for (int64_t j = 0; j < nb[q]; j++) norm += (double)g[q][j] * g[q][j];
        }
        norm = sqrt(norm);
        assert_true(norm > 0); /* the last layer's: zero without the pooled path */
        const double eps = 0.05;
        double l[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            for (int q = 0; q < 4; q++) {
                float *b = malloc(sizeof(float) * (size_t)nb[q]);
                for (int64_t j = 0; j < nb[q]; j++)
                    b[j] = b0[q][j] + (float)((sgn ? -eps : eps) * g[q][j] / norm);
                be->upload(be, s2->items[first[k] + q].B, b, sizeof(float) * (size_t)nb[q]);
                free(b);
            }
            l[sgn] = pool_loss(&c, 0);
        }
        for (int q = 0; q < 4; q++) {
            be->upload(be, s2->items[first[k] + q].B, b0[q], sizeof(float) * (size_t)nb[q]);
            free(g[q]); free(b0[q]);
        }
        double fd = (l[0] - l[1]) / (2 * eps), e = fabs(fd - norm) / norm;
        print_message("bigG layer %d adapters: |dL/dB| %.6g, finite difference along it %.6g "
                      "(rel err %.2e)\n", k ? 0 : nl2 - 1, norm, fd, e);
        assert_true(e < 1e-2);
    }
    float *devs[] = {c.x, c.R, c.t, c.out, c.ctx, c.added, c.pen1, c.pen2, c.pooled, dctx, dadded, dpen1, dpen2};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) be->free(be, devs[i]);
    free(hx); free(hr);
    model_free(m);
    backend_destroy(be);
}

/* The images of the bucket test: their shapes, and by hand the time ids of
 * each and of its mirror at resolution 16 (buckets 8x16 12x20 16x16 20x12
 * 16x8; the UNet's cell is 4): (orig h, orig w, crop top, crop left, h, w). */
#define N_XL 5
static const struct { int w, h; float ids[2][6]; } XL[N_XL] = {
    /* 2.8:1 -> 16x8; scaled by 8/18 to 22x8, input columns 7..42 -> 3 px cut at the left, 3 at the right */
    {50, 18, {{18, 50, 0, 3, 8, 16}, {18, 50, 0, 3, 8, 16}}},
    /* 1:2.8 -> 8x16; 8x22, 3 rows cut at the top */
    {18, 50, {{50, 18, 3, 0, 16, 8}, {50, 18, 3, 0, 16, 8}}},
    /* 0.75 -> 12x20 (log -0.29: 0.22 from 12x20, 0.29 from 16x16); scaled by
     * 20/40 to 15x20, input columns 3..26 -> 1.5 rounds to 2 px at the left,
     * so 1 at the right: the mirror's left */
    {30, 40, {{40, 30, 0, 2, 20, 12}, {40, 30, 0, 1, 20, 12}}},
    /* 1.05 -> 16x16; scaled by 16/20 to 17x16, input columns 0..19: nothing cut
     * at the left, 1 px at the right */
    {21, 20, {{20, 21, 0, 0, 16, 16}, {20, 21, 0, 1, 16, 16}}},
    /* the class image (class_dir): 2:1 exactly -> 16x8, nothing cut */
    {40, 20, {{20, 40, 0, 0, 8, 16}, {20, 40, 0, 0, 8, 16}}},
};

typedef struct IdLog { int buckets, batches, checked, mirrored, bad; } IdLog;

static void check_ids(void *user, const TrainBatch *b) {
    IdLog *L = user;
    L->batches++;
    assert_non_null(b->time_ids);
    for (int j = 0; j < b->n; j++) {
        int i = b->prior ? N_XL - 1 : b->image[j], mir = b->mirror[j];
        const float *want = XL[i].ids[mir], square[6] = {16, 16, 0, 0, 16, 16};
        if (!L->buckets) want = square; /* without buckets: px x px whole, as before */
        for (int k = 0; k < 6; k++)
            if (b->time_ids[j].v[k] != want[k]) {
                printf("step %d image %d%s mirror %d: time id %d is %g, want %g\n", b->step, i,
                       b->prior ? " (class)" : "", mir, k, b->time_ids[j].v[k], want[k]);
                L->bad++;
            }
        if (L->buckets) {
            assert_int_equal(b->w, (int)want[5]);
            assert_int_equal(b->h, (int)want[4]);
        }
        L->checked++;
        L->mirrored += mir;
    }
}

static void test_sdxl_bucket_time_ids(void **state) {
    /* the order is diffusers': (height, width) pairs, top before left */
    TimeIds t = model_time_ids(50, 18, 3, 1, 16, 8);
    const float want[6] = {18, 50, 1, 3, 8, 16};
    assert_memory_equal(t.v, want, sizeof want);

    char err[1024], path[600], src[600];
    int cell = 0; /* three UNet levels in pixel space (no vae/): sides are multiples of 4 */
    assert_int_equal(model_cell_of(g_dir, &cell, err, sizeof err), 0);
    assert_int_equal(cell, 4);
    snprintf(path, sizeof path, "%s/classes", g_dir);
    assert_int_equal(fs_mkdir_p(path, err, sizeof err), 0);
    for (int i = 0; i < N_XL; i++) { /* the demo subjects in these shapes */
        Image im, out;
        snprintf(src, sizeof src, "models/demo/subject%d.png", 1 + i % 4);
        if (image_load(src, &im, err, sizeof err) != 0) fail_msg("%s", err);
        assert_int_equal(image_cover_crop_resize(&im, XL[i].w, XL[i].h, &out, NULL), 0);
        if (i < N_XL - 1) snprintf(path, sizeof path, "%s/xl%d.png", g_dir, i);
        else snprintf(path, sizeof path, "%s/classes/c0.png", g_dir);
        if (image_save_png(path, &out, err, sizeof err) != 0) fail_msg("%s", err);
        image_free(&im);
        image_free(&out);
    }
    Backend *be = backend_cpu_create();
    for (int run = 0; run < 3; run++) { /* buckets with text adapters, without; no buckets */
        Preset p;
        char name[32];
        snprintf(name, sizeof name, "xl-buckets-%d", run);
        sdxl_preset(&p, name);
        p.buckets = run < 2;
        p.text_encoder_adapters = run == 0;
        p.iterations = 5;
        p.flip = 1;
        p.n_images = N_XL - 1;
        for (int i = 0; i < p.n_images; i++) snprintf(p.images[i], sizeof p.images[i], "%s/xl%d.png", g_dir, i);
        p.prior_weight = 0.5f;
        snprintf(p.class_prompt, sizeof p.class_prompt, "a dog");
        snprintf(p.class_dir, sizeof p.class_dir, "%s/classes", g_dir);
        IdLog L = {0};
        L.buckets = p.buckets;
        TrainCallbacks cb = {&L, NULL, NULL, NULL, check_ids};
        Trainer *tr = trainer_create(&p, NULL, be, &cb, err, sizeof err);
        if (!tr) fail_msg("%s", err);
        if (trainer_run(tr) != 0) fail_msg("%s", trainer_error(tr));
        printf("run %d: %d batches, %d images checked (%d mirrored)\n", run, L.batches, L.checked, L.mirrored);
        assert_int_equal(L.bad, 0);
        assert_int_equal(L.batches, 2 * 5);
        assert_true(L.mirrored > 0 && L.mirrored < L.checked);
        assert_true(isfinite(trainer_progress(tr).eval_loss));
        trainer_free(tr);
    }
    backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sdxl_conditioning),
        cmocka_unit_test(test_missing_second_encoder),
        cmocka_unit_test(test_sdxl_adapter_names),
        cmocka_unit_test(test_sdxl_text_adapters_train),
        cmocka_unit_test(test_sdxl_pooled_gradient),
        cmocka_unit_test(test_sdxl_bucket_time_ids),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

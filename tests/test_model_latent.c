/* test_model_latent.c — a latent model end to end at a small size: a diffusers
 * folder the test assembles (the SD 1.5-like UNet and VAE of the generated
 * golden checkpoint, a byte-level text encoder with random weights) opens as a
 * latent model; training inputs are the VAE's latents of the images; training
 * runs, lowers nothing in particular (random weights) but stays finite, writes
 * its samples through the VAE decoder as RGB images; sampling decodes. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "formats/image.h"
#include "models/model.h"
#include "training/run_dir.h"
#include "training/train.h"

static char g_dir[256];
#define TWIN "tests/golden/ldm_sd15like_diffusers.safetensors"

/* the generator's VAE (two levels, 8 and 16 channels, one resnet, 4 groups) */
static const char *VAE_JSON =
    "{\"_class_name\": \"AutoencoderKL\", \"in_channels\": 3, \"out_channels\": 3,"
    " \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],"
    " \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"],"
    " \"block_out_channels\": [8, 16], \"layers_per_block\": 1, \"act_fn\": \"silu\","
    " \"latent_channels\": 4, \"norm_num_groups\": 4, \"sample_size\": 16, \"scaling_factor\": 0.18215}";
/* bytes in, 24 wide: the UNet's cross_attention_dim */
static const char *TE_JSON =
    "{\"architectures\": [\"CLIPTextModel\"], \"vocab_size\": 258, \"hidden_size\": 24,"
    " \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 2,"
    " \"max_position_embeddings\": 77, \"hidden_act\": \"gelu\", \"eos_token_id\": 257}";

static void put(const char *rel, const char *text) {
    char path[512], dir[512], err[256];
    snprintf(path, sizeof path, "%s/%s", g_dir, rel);
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = 0;
    assert_int_equal(fs_mkdir_p(dir, err, sizeof err), 0);
    assert_int_equal(fs_write_atomic(path, text, strlen(text), err, sizeof err), 0);
}

static int setup(void **state) {
    char cwd[PATH_MAX], cmd[2048], err[512], path[600];
    if (!getcwd(cwd, sizeof cwd)) return -1;
    snprintf(g_dir, sizeof g_dir, "%s/build/test-model-latent-%d", cwd, (int)getpid());
    put("vae/config.json", VAE_JSON);
    put("text_encoder/config.json", TE_JSON);
    put("unet/.keep", "");
    /* the twin file holds unet.* and vae.* tensors; both loaders take that prefix */
    snprintf(cmd, sizeof cmd,
             "cp tests/golden/unet_sd15like.json '%s/unet/config.json' && "
             "ln -s '%s/" TWIN "' '%s/unet/diffusion_pytorch_model.safetensors' && "
             "ln -s '%s/" TWIN "' '%s/vae/diffusion_pytorch_model.safetensors'",
             g_dir, cwd, g_dir, cwd, g_dir);
    if (system(cmd) != 0) return -1;
    Backend *be = backend_cpu_create();
    TextConfig tc;
    snprintf(path, sizeof path, "%s/text_encoder/config.json", g_dir);
    if (te_config_load(&tc, path, err, sizeof err) != 0) return -1;
    TextEncoder *te = te_create(&tc, be, err, sizeof err);
    te_init_random(te, 4);
    snprintf(path, sizeof path, "%s/text_encoder/model.safetensors", g_dir);
    int rc = te_save_safetensors(te, path, err, sizeof err);
    te_free(te);
    backend_destroy(be);
    return rc;
}

static int teardown(void **state) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_opens_latent(void **state) {
    char err[1024];
    Backend *be = backend_cpu_create();
    Model *m = model_open(g_dir, be, err, sizeof err);
    if (!m) fail_msg("%s", err);
    assert_non_null(m->vae);
    assert_int_equal(m->latent, 1);
    assert_int_equal(m->channels, 4);
    assert_int_equal(m->image_channels, 3);
    assert_int_equal(m->pixel_scale, 2); /* two VAE levels: one halving */
    /* sides must be multiples of the UNet's downsampling times the VAE's: read
     * from the configs alone the same */
    int cell = 0;
    assert_int_equal(model_cell(m), 2 * 2);   /* two UNet levels, two VAE levels */
    assert_int_equal(model_cell_of(g_dir, &cell, err, sizeof err), 0);
    assert_int_equal(cell, 4);
    assert_int_equal(model_cell_of("tiny", &cell, err, sizeof err), 0);
    assert_int_equal(cell, 4);                /* three levels, pixels */
    assert_int_equal(model_cell_of("sd15", &cell, err, sizeof err), 0);
    assert_int_equal(cell, 64);               /* four levels, the VAE's 8 */
    assert_int_equal(model_cell_of("sdxl", &cell, err, sizeof err), 0);
    assert_int_equal(cell, 32);               /* three levels, the VAE's 8 */
    assert_int_equal(model_cell_of("tests/golden/ldm_sd15like.safetensors", &cell, err, sizeof err), 0);
    assert_int_equal(cell, 64);               /* a single file: its kind's architecture */
    assert_int_equal(model_cell_of("no/such/model", &cell, err, sizeof err), -1);

    /* the preset's vae_tiling reaches the VAE (default tile size); a bad value is one line */
    int tile = 0;
    assert_int_equal(vae_get_tiling(m->vae, &tile), VAE_TILING_AUTO);
    assert_int_equal(model_set_vae_tiling(m, "off", err, sizeof err), 0);
    assert_int_equal(vae_get_tiling(m->vae, &tile), VAE_TILING_OFF);
    assert_int_equal(tile, VAE_TILE_PX_DEFAULT);
    assert_int_equal(model_set_vae_tiling(m, "sometimes", err, sizeof err), -1);
    if (!strstr(err, "'sometimes': use auto, on or off") || strchr(err, '\n')) fail_msg("'%s'", err);
    assert_int_equal(vae_get_tiling(m->vae, NULL), VAE_TILING_OFF);
    assert_int_equal(model_set_vae_tiling(m, "auto", err, sizeof err), 0);

    /* training inputs are the VAE's latent means of the images */
    int px = 16;
    float pix[2 * 3 * 16 * 16], in[2 * 4 * 8 * 8], want[4 * 8 * 8];
    for (int i = 0; i < 2 * 3 * px * px; i++) pix[i] = sinf(0.11f * (float)i);
    assert_int_equal(model_encode_images(m, pix, 2, px, px, in, err, sizeof err), 0);
    float *x = be->alloc(be, sizeof(float) * 3 * px * px), *z = be->alloc(be, sizeof want);
    for (int k = 0; k < 2; k++) {
        be->upload(be, x, pix + k * 3 * px * px, sizeof(float) * 3 * px * px);
        assert_int_equal(vae_encode(m->vae, x, z, NULL, 1, px, px), 0);
        be->download(be, want, z, sizeof want);
        assert_memory_equal(in + k * 4 * 64, want, sizeof want);
    }
    be->free(be, x);
    be->free(be, z);
    /* an aspect-ratio bucket's shape, 16 wide and 8 high: [3, 8, 16] -> [4, 4, 8] */
    float wide[4 * 4 * 8];
    assert_int_equal(model_encode_images(m, pix, 1, 16, 8, wide, err, sizeof err), 0);
    x = be->alloc(be, sizeof(float) * 3 * 8 * 16);
    z = be->alloc(be, sizeof wide);
    be->upload(be, x, pix, sizeof(float) * 3 * 8 * 16);
    assert_int_equal(vae_encode(m->vae, x, z, NULL, 1, 8, 16), 0);
    float wide_want[4 * 4 * 8];
    be->download(be, wide_want, z, sizeof wide_want);
    assert_memory_equal(wide, wide_want, sizeof wide);
    be->free(be, x);
    be->free(be, z);

    /* sampling: latents decoded to RGB pixels */
    float *cc = be->alloc(be, sizeof(float) * (size_t)m->cond_floats);
    float *cu = be->alloc(be, sizeof(float) * (size_t)m->cond_floats);
    assert_int_equal(model_encode_prompt(m, "a sks dog", px, cc, err, sizeof err), 0);
    assert_int_equal(model_encode_prompt(m, "", px, cu, err, sizeof err), 0);
    SamplerOpts so = {0};
    so.steps = 2;
    so.guidance = 2.f;
    float *img = malloc(sizeof(float) * 3 * px * px);
    assert_int_equal(model_generate(m, cc, cu, 1, px, &so, 3, NULL, img, err, sizeof err), 0);
    double s = 0;
    for (int i = 0; i < 3 * px * px; i++) {
        assert_true(isfinite(img[i]));
        s += fabs(img[i]);
    }
    assert_true(s > 0);
    free(img);
    be->free(be, cc);
    be->free(be, cu);
    model_free(m);
    backend_destroy(be);
}

static void test_trains_latent(void **state) {
    char err[1024], root[600];
    snprintf(root, sizeof root, "%s/runs", g_dir);
    Backend *be = backend_cpu_create();
    Preset p;
    preset_defaults(&p);
    snprintf(p.model, sizeof p.model, "%s", g_dir);
    p.n_images = 1;
    snprintf(p.images[0], sizeof p.images[0], "models/demo/subject1.png");
    snprintf(p.instance_prompt, sizeof p.instance_prompt, "a sks dog");
    p.resolution = 16;
    p.iterations = 3;
    p.a1 = 2;
    p.a2 = 2;
    p.sample_every = 0;
    p.n_sample_prompts = 1;
    snprintf(p.sample_prompts[0], sizeof p.sample_prompts[0], "a sks dog");
    p.sample_steps = 2;
    p.checkpoint_every = 0;
    snprintf(p.device, sizeof p.device, "cpu");
    snprintf(p.vae_tiling, sizeof p.vae_tiling, "on"); /* 16 px: one tile, the untiled pass */
    snprintf(p.output_dir, sizeof p.output_dir, "%s", root);
    snprintf(p.run_name, sizeof p.run_name, "latent");
    Trainer *t = trainer_create(&p, NULL, be, NULL, err, sizeof err);
    if (!t) fail_msg("%s", err);
    if (trainer_run(t) != 0) fail_msg("%s", trainer_error(t));
    TrainProgress g = trainer_progress(t);
    assert_int_equal(g.step, 3);
    assert_true(isfinite(g.loss) && isfinite(g.eval_loss));
    /* the last step's sample grid: one RGB tile of the training size */
    char path[800];
    run_sample_path(trainer_run_dir(t), 3, path, sizeof path);
    Image im;
    if (image_load(path, &im, err, sizeof err) != 0) fail_msg("%s", err);
    assert_true(im.w >= 16 && im.h >= 16);
    image_free(&im);
    run_path(trainer_run_dir(t), RUN_ADAPTER, path, sizeof path);
    assert_int_equal(access(path, F_OK), 0);
    trainer_free(t);
    backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opens_latent),
        cmocka_unit_test(test_trains_latent),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

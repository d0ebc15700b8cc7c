/* test_checkpoint.c — a single file's parts load into the engine exactly as the
 * same tensors under diffusers names do: the VAE and the text encoders (SDXL's
 * bigG with its fused q/k/v split and its projection transposed) of the small
 * generated checkpoints (tests/golden/gen_ldm_checkpoint.py writes each LDM file
 * and its diffusers-named twin from the same tensors), compared bit for bit; a
 * missing tensor names itself; checkpoint_inspect counts each part. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/safetensors.h"
#include "models/checkpoint.h"

#define GOLDEN "tests/golden/"

typedef struct {
    SafeTensors *ldm, *diff;
    VAEConfig vc;
    TextConfig tc[2];
    int ntext;
    Backend *be;
} Files;

static void files_open(Files *f, const char *stem) {
    char path[256], err[512];
    memset(f, 0, sizeof *f);
    snprintf(path, sizeof path, GOLDEN "ldm_%s.safetensors", stem);
    f->ldm = st_open(path, err, sizeof err);
    if (!f->ldm) fail_msg("%s", err);
    snprintf(path, sizeof path, GOLDEN "ldm_%s_diffusers.safetensors", stem);
    f->diff = st_open(path, err, sizeof err);
    if (!f->diff) fail_msg("%s", err);
    /* the generator's VAE: SD's with two levels of 8 and 16 channels, one resnet
     * per block, 4 groups (its vae_config metadata leaves the block types to
     * diffusers' defaults, which our strict reader does not guess) */
    const char *vj = st_metadata(f->diff, "vae_config");
    assert_non_null(vj);
    assert_non_null(strstr(vj, "\"block_out_channels\": [8, 16], \"layers_per_block\": 1, \"norm_num_groups\": 4"));
    assert_int_equal(vae_config_builtin("sd15", &f->vc), 0);
    f->vc.n_levels = 2;
    f->vc.block_out_channels[0] = 8;
    f->vc.block_out_channels[1] = 16;
    f->vc.layers_per_block = 1;
    f->vc.norm_num_groups = 4;
    static const char *const keys[2] = {"text_encoder_config", "text_encoder_2_config"};
    for (int i = 0; i < 2; i++) {
        const char *j = st_metadata(f->diff, keys[i]);
        if (!j) break;
        if (te_config_parse(&f->tc[i], j, strlen(j), keys[i], err, sizeof err) != 0) fail_msg("%s", err);
        f->ntext = i + 1;
    }
    f->be = backend_cpu_create();
}

static void files_close(Files *f) {
    st_close(f->ldm);
    st_close(f->diff);
    backend_destroy(f->be);
}

static void same_floats(Backend *be, const float *a, const float *b, int64_t n, const char *what) {
    float *x = malloc(sizeof(float) * (size_t)n), *y = malloc(sizeof(float) * (size_t)n);
    be->download(be, x, a, sizeof(float) * (size_t)n);
    be->download(be, y, b, sizeof(float) * (size_t)n);
    if (memcmp(x, y, sizeof(float) * (size_t)n) != 0) fail_msg("%s differs", what);
    free(x);
    free(y);
}

static void check_parts(const char *stem, ModelKind kind) {
    Files f;
    files_open(&f, stem);
    char err[1024], path[256];
    snprintf(path, sizeof path, GOLDEN "ldm_%s_diffusers.safetensors", stem);

    /* VAE: through the table vs by its diffusers names */
    VAE *a = vae_create(&f.vc, f.be, err, sizeof err), *b = vae_create(&f.vc, f.be, err, sizeof err);
    assert_non_null(a);
    assert_non_null(b);
    if (checkpoint_load_vae(a, f.ldm, kind, err, sizeof err) != 0) fail_msg("%s", err);
    if (vae_load_safetensors(b, path, "vae.", err, sizeof err) != 0) fail_msg("%s", err);
    for (int i = 0; i < vae_n_params(a); i++)
        same_floats(f.be, vae_param_at(a, i)->data, vae_param_at(b, i)->data, vae_param_at(a, i)->numel,
                    vae_param_at(a, i)->name);
    vae_free(a);
    vae_free(b);

    /* text encoders */
    static const char *const prefix[2] = {"text_encoder.", "text_encoder_2."};
    for (int k = 0; k < f.ntext; k++) {
        TextEncoder *x = te_create(&f.tc[k], f.be, err, sizeof err), *y = te_create(&f.tc[k], f.be, err, sizeof err);
        assert_non_null(x);
        assert_non_null(y);
        if (checkpoint_load_text(x, f.ldm, kind, k ? CONVERT_TEXT_2 : CONVERT_TEXT, err, sizeof err) != 0)
            fail_msg("%s", err);
        if (te_load_safetensors(y, path, prefix[k], err, sizeof err) != 0) fail_msg("%s", err);
        same_floats(f.be, te_params(x), te_params(y), te_n_params(x), prefix[k]);
        te_free(x);
        te_free(y);
    }
    assert_int_equal(f.ntext, kind == MODEL_KIND_SDXL ? 2 : 1);
    files_close(&f);
}

static void test_sd15_parts(void **state) { check_parts("sd15like", MODEL_KIND_SD15); }
static void test_sdxl_parts(void **state) { check_parts("sdxllike", MODEL_KIND_SDXL); }

/* the same file without one VAE tensor: the loader names it, both ways */
static void test_missing_tensor(void **state) {
    Files f;
    files_open(&f, "sd15like");
    char err[1024], path[128];
    StWriter *w = stw_create();
    const char *drop = "first_stage_model.decoder.conv_out.weight";
    for (int i = 0; i < st_count(f.ldm); i++) {
        const StTensor *t = st_at(f.ldm, i);
        if (strcmp(t->name, drop) != 0) stw_add_ref(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    snprintf(path, sizeof path, "build/test-checkpoint-%d.safetensors", (int)getpid());
    assert_int_equal(stw_save(w, path, err, sizeof err), 0);
    stw_free(w);
    SafeTensors *st = st_open(path, err, sizeof err);
    assert_non_null(st);
    VAE *v = vae_create(&f.vc, f.be, err, sizeof err);
    assert_int_equal(checkpoint_load_vae(v, st, MODEL_KIND_SD15, err, sizeof err), -1);
    printf("%s\n", err);
    assert_non_null(strstr(err, drop));
    assert_non_null(strstr(err, "decoder.conv_out.weight"));
    assert_null(strchr(err, '\n'));
    vae_free(v);
    st_close(st);
    unlink(path);
    files_close(&f);
}

/* checkpoint_inspect: each part's parameters are the tensors under its prefix */
static void test_inspect_counts(void **state) {
    Files f;
    files_open(&f, "sdxllike");
    CheckpointInfo ci;
    char err[1024];
    assert_int_equal(checkpoint_inspect(GOLDEN "ldm_sdxllike.safetensors", &ci, err, sizeof err), 0);
    assert_int_equal(ci.kind, MODEL_KIND_SDXL);
    /* the diffusers twin holds the same parameters under its folder prefixes */
    int64_t want[4] = {0};
    static const char *const folder[4] = {"unet.", "vae.", "text_encoder.", "text_encoder_2."};
    for (int i = 0; i < st_count(f.diff); i++) {
        const StTensor *t = st_at(f.diff, i);
        for (int p = 3; p >= 0; p--)
            if (!strncmp(t->name, folder[p], strlen(folder[p]))) { want[p] += t->numel; break; }
    }
    for (int p = 0; p < 4; p++) assert_int_equal(ci.params[p], want[p]);
    assert_int_equal(ci.arch_unet_params, 2567463684LL); /* the SDXL architecture of its kind */
    files_close(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sd15_parts),
        cmocka_unit_test(test_sdxl_parts),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_inspect_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

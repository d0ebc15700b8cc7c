/* cli_sample.c — `krona-studio sample`: images from a model, with or without
 * a trained adapter; more than one makes a grid. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/fsutil.h"
#include "formats/image.h"
#include "models/model.h"

static int run(int argc, char **argv) {
    const CliCommand *me = &cli_sample;
    const char *model = "tiny", *adapter = NULL, *prompt = NULL, *out = "sample.png", *device = "auto", *precision = "auto";
    const char *neg = "", *tokenizer = NULL;
    int vae_tiling = 0;
    int n = 1, steps = 25, size = 0, sampler = 0, random_weights = 0;
    uint64_t seed = 1;
    float guidance = 5.0f;
    CliOpt opts[] = {
        cli_str("--prompt", &prompt, "TEXT", "what to draw (required)"),
        cli_str("--model", &model, "M", "tiny (default), a diffusers folder or a .safetensors checkpoint"),
        cli_str("--adapter", &adapter, "A.safetensors", "an adapter written by train (or a LyCORIS LoKr file)"),
        cli_alias("-o", cli_str("--output", &out, "FILE.png", "where to write (default sample.png)")),
        cli_str("--negative", &neg, "TEXT", "the negative prompt (default empty)"),
        cli_int("--n", &n, "N", 1, 64, "samples, a grid when more than one (default 1)"),
        cli_int("--steps", &steps, "S", 1, 999, "sampler steps (default 25)"),
        cli_float("--guidance", &guidance, "G", 0, 50, "classifier-free guidance scale (default 5)"),
        cli_seed("--seed", &seed, "noise seed (default 1)"),
        cli_choice("--sampler", &sampler, "ddim|euler", "default ddim"),
        cli_int("--size", &size, "PX", 8, 16384, "image side in pixels (default: the model's)"),
        cli_str("--device", &device, "auto|cpu|cuda", "the backend (default auto)"),
        cli_str("--precision", &precision, "auto|fp32|tf32|bf16", "GEMM arithmetic (default auto)"),
        cli_str("--tokenizer", &tokenizer, "DIR", "CLIP's vocabulary, when the model has none beside it"),
        cli_choice("--vae-tiling", &vae_tiling, "auto|on|off",
                   "decode a latent model's samples in overlapping tiles (default auto: when memory is short)"),
        cli_flag("--random-weights", &random_weights, 1, "the built-in model with random weights (tests)"),
        {0},
    };
    int rc = cli_parse(me, opts, argc, argv);
    if (rc != CLI_GO) return rc;
    if (!prompt) { cli_error(me, "give --prompt TEXT"); return 2; }
    if (random_weights && !(model = cli_random_model(me, model))) return 2;
    char err[1024];
    /* a missing or read-only folder fails now, not after the generation */
    if (fs_check_writable(out, err, sizeof err) != 0) { cli_error(me, "%s", err); return 2; }
    Backend *be = backend_open(device, err, sizeof err);
    if (!be) { cli_error(me, "%s", err); return 2; }
    if (backend_set_precision(be, precision, err, sizeof err) != 0) {
        cli_error(me, "%s", err);
        backend_destroy(be);
        return 2;
    }
    rc = 2;
    float *cc = NULL, *cu = NULL, *pix = NULL;
    Image *tiles = NULL, grid = {0};
    Model *m = model_open_with(model, tokenizer, be, err, sizeof err);
    if (!m) goto fail;
    if (adapter && model_load_adapter(m, adapter, err, sizeof err) != 0) goto fail;
    static const char *const TILING[] = {"auto", "on", "off"};
    if (model_set_vae_tiling(m, TILING[vae_tiling], err, sizeof err) != 0) goto fail;
    if (size == 0) size = m->ucfg.sample_size * m->pixel_scale;
    int cell = model_cell(m);
    if (size % cell) {
        snprintf(err, sizeof err, "--size %d: must be a multiple of %d for this model", size, cell);
        goto fail;
    }
    size_t cb = sizeof(float) * (size_t)m->cond_floats;
    cc = be->alloc(be, cb * (size_t)n);
    cu = be->alloc(be, cb * (size_t)n);
    int64_t per = (int64_t)m->image_channels * size * size;
    pix = malloc(sizeof(float) * (size_t)(per * n));
    tiles = calloc((size_t)n, sizeof(Image));
    if (!cc || !cu || !pix || !tiles) { snprintf(err, sizeof err, "out of memory"); goto fail; }
    if (model_encode_prompt(m, prompt, size, cc, err, sizeof err) != 0) goto fail;
    if (model_encode_prompt(m, neg, size, cu, err, sizeof err) != 0) goto fail;
    for (int i = 1; i < n; i++) {
        be->copy(be, (char *)cc + cb * i, cc, cb);
        be->copy(be, (char *)cu + cb * i, cu, cb);
    }
    SamplerOpts so = {0};
    so.kind = sampler == 1 ? SAMPLER_EULER : SAMPLER_DDIM;
    so.steps = steps;
    so.guidance = guidance;
    so.seed = seed;
    rc = 1;
    /* said in the summary: a tiled decode is slower, and why it was chosen is the memory */
    int lat = size / m->pixel_scale, vae_tiles = 1;
    if (m->vae && vae_will_tile(m->vae, 1, 1, lat, lat) == 1) vae_tiles = vae_tile_count(m->vae, lat, lat);
    if (model_generate(m, cc, cu, n, size, &so, seed, NULL, pix, err, sizeof err) != 0) goto fail;
    for (int i = 0; i < n; i++) image_from_chw(pix + per * i, m->image_channels, size, size, &tiles[i]);
    if (n == 1) {
        if (image_save_png(out, &tiles[0], err, sizeof err) != 0) goto fail;
    } else {
        int cols = n <= 4 ? n : 4;
        if (image_grid(tiles, n, cols, 2, &grid) != 0 || image_save_png(out, &grid, err, sizeof err) != 0)
            goto fail;
    }
    char tiled[48] = "";
    if (vae_tiles > 1) snprintf(tiled, sizeof tiled, ", VAE decoded in %d tiles", vae_tiles);
    /* a backend that records (CUDA): whether the sampler's UNet passes were replayed */
    char replayed[320] = "";
    if (model_generate_news(m, replayed + 2, sizeof replayed - 2)) memcpy(replayed, ", ", 2);
    printf("wrote %s (%d sample%s, %dpx, %s%s%s)\n", out, n, n > 1 ? "s" : "", size, m->note, tiled,
           replayed);
    rc = 0;
fail:
    if (rc != 0) cli_error(me, "%s", err);
    if (tiles)
        for (int i = 0; i < n; i++) image_free(&tiles[i]);
    free(tiles);
    image_free(&grid);
    free(pix);
    be->free(be, cc);
    be->free(be, cu);
    model_free(m);
    backend_destroy(be);
    return rc;
}

const CliCommand cli_sample = {
    "sample", run,
    "--prompt TEXT [--model M] [--adapter A.safetensors] [-o out.png] [--n N]\n"
    "[--steps S] [--guidance G] [--seed S] [--sampler ddim|euler] [--size PX]\n"
    "[--negative TEXT] [--device auto|cpu|cuda] [--precision auto|fp32|tf32|bf16]\n"
    "[--tokenizer DIR] [--vae-tiling auto|on|off]\n"
    "[--random-weights]",
    NULL,
    "Generate images with a model and, optionally, an adapter file written by train (its\n"
    "metadata says the kind, factors and modules). More than one sample (--n) makes a grid.",
};

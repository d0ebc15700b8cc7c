/* bench_vae.c — one VAE encode and/or decode at SD size with random weights:
 * seconds, the backend's peak of live allocations (weights + activations; on
 * the CPU also the backend's scratch, im2col columns included), the untiled
 * activation plan (vae_memory_plan) and the process's peak resident memory.
 *
 *   bench_vae [encode|decode|both] [--size PX] [--model sd15|sdxl|config.json]
 *             [--device cpu|cuda|auto] [--batch N] [--tiling off|on|auto] [--tile PX]
 *
 * Each of encode and decode runs on a backend of its own, so each peak is its
 * own (run one per process for a clean peak RSS). Build: make build/bench/bench_vae */
#include "core/backend.h"
#include "core/rng.h"
#include "models/vae.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

static int run(const char *what, const char *device, const char *model, int N, int px, int tiling,
               int tile) {
    char err[512];
    VAEConfig cfg;
    if (vae_config_resolve(model, &cfg, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    Backend *be = backend_open(device, err, sizeof err);
    if (!be) { fprintf(stderr, "device %s: %s\n", device, err); return 1; }
    VAE *v = vae_create(&cfg, be, err, sizeof err);
    if (!v) { fprintf(stderr, "%s\n", err); backend_destroy(be); return 1; }
    vae_init_random(v, 1);
    if (vae_set_tiling(v, tiling, tile, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    be->sync(be);
    size_t wbytes = be->peak_bytes(be);
    int f = 1 << (cfg.n_levels - 1), lat = px / f;
    int64_t nimg = (int64_t)N * cfg.in_channels * px * px, nout = (int64_t)N * cfg.out_channels * px * px;
    int64_t nz = (int64_t)N * cfg.latent_channels * lat * lat;
    int enc = !strcmp(what, "encode");
    int64_t nin = enc ? nimg : nz;
    float *h = malloc((size_t)nin * sizeof *h);
    Rng r;
    rng_seed(&r, 7);
    if (enc) rng_fill_uniform(&r, h, nin, -1.f, 1.f);
    else rng_fill_normal(&r, h, nin);
    float *in = be->alloc(be, (size_t)nin * sizeof(float));
    float *out = be->alloc(be, (size_t)(enc ? nz : nout) * sizeof(float));
    if (!h || !in || !out) { fprintf(stderr, "out of memory for the input and output\n"); return 1; }
    be->upload(be, in, h, (size_t)nin * sizeof(float));
    be->sync(be);
    size_t io = be->peak_bytes(be) - wbytes;
    int64_t plan = 0;
    vae_memory_plan(&cfg, !enc, N, enc ? px : lat, enc ? px : lat, &plan);
    int tiles = vae_will_tile(v, !enc, N, enc ? px : lat, enc ? px : lat) == 1 ? vae_tile_count(v, lat, lat) : 1;
    double t0 = now_s();
    int rc = enc ? vae_encode(v, in, out, NULL, N, px, px) : vae_decode(v, in, out, N, lat, lat);
    be->sync(be);
    double dt = now_s() - t0;
    if (rc) { fprintf(stderr, "%s: %s\n", what, vae_last_error(v)); return 1; }
    /* a finite output is the least a timing run should show */
    int64_t no = enc ? nz : nout;
    float *ho = malloc((size_t)no * sizeof *ho);
    be->download(be, ho, out, (size_t)no * sizeof *ho);
    double s = 0;
    int bad = 0;
    for (int64_t i = 0; i < no; i++) { s += ho[i] * (double)ho[i]; bad += ho[i] != ho[i]; }
    size_t peak = be->peak_bytes(be);
    printf("%-6s %s %s N=%d %dx%d -> %s, %d tile%s: %.2f s | peak_bytes %.1f MB (weights %.1f MB, "
           "input+output %.1f MB, the rest %.1f MB; untiled plan %.1f MB) | process max RSS %.0f MB | "
           "rms out %.3f%s\n",
           what, be->device_name(be), cfg.name, N, enc ? px : lat, enc ? px : lat,
           enc ? "latent" : "image", tiles, tiles > 1 ? "s" : "", dt, peak / 1e6, wbytes / 1e6,
           io / 1e6, (peak - wbytes - io) / 1e6, plan / 1e6, rss_mb(), no ? sqrt(s / no) : 0.0,
           bad ? " NaN!" : "");
    free(h); free(ho);
    be->free(be, in); be->free(be, out);
    vae_free(v);
    backend_destroy(be);
    return bad ? 1 : 0;
}

int main(int argc, char **argv) {
    const char *what = "both", *device = "cpu", *model = "sd15";
    int px = 512, N = 1, tiling = VAE_TILING_AUTO, tile = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--size") && i + 1 < argc) px = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--device") && i + 1 < argc) device = argv[++i];
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) N = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tiling") && i + 1 < argc && vae_tiling_parse(argv[i + 1]) >= 0)
            tiling = vae_tiling_parse(argv[++i]);
        else if (!strcmp(argv[i], "--tile") && i + 1 < argc) tile = atoi(argv[++i]);
        else if (!strcmp(argv[i], "encode") || !strcmp(argv[i], "decode") || !strcmp(argv[i], "both"))
            what = argv[i];
        else {
            fprintf(stderr, "usage: %s [encode|decode|both] [--size PX] [--model sd15|sdxl|config.json] "
                    "[--device cpu|cuda|auto] [--batch N] [--tiling off|on|auto] [--tile PX]\n", argv[0]);
            return 2;
        }
    }
    int rc = 0;
    if (strcmp(what, "decode")) rc |= run("encode", device, model, N, px, tiling, tile);
    if (strcmp(what, "encode")) rc |= run("decode", device, model, N, px, tiling, tile);
    return rc;
}

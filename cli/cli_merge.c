/* cli_merge.c — `krona-studio merge`: a single-file SD 1.5 / SDXL checkpoint with
 * an adapter folded into its UNet linears, or a diffusers folder with it folded
 * into the UNet and text encoder weights (models/merge.h), for tools that want a
 * plain model. Reads the adapter and the weights it touches, copies the rest. */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/backend.h"
#include "core/fsutil.h"
#include "formats/safetensors.h"
#include "models/checkpoint.h"
#include "models/merge.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* --model DIR: a diffusers folder, written as one (models/merge.h, diffusers_merge) */
static int merge_folder(const char *model, const char *adapter, const char *out, float scale,
                        const char *dtype, int force) {
    if (strcmp(dtype, "same")) {
        fprintf(stderr, "krona-studio merge: --dtype %s: a diffusers folder keeps each weight file's "
                "dtypes (--dtype is for single files)\n", dtype);
        return 2;
    }
    size_t nl = strlen(out);
    if (nl >= 12 && !strcmp(out + nl - 12, ".safetensors")) {
        fprintf(stderr, "krona-studio merge: -o %s: a diffusers folder is merged into a folder: name "
                "the output folder\n", out);
        return 2;
    }
    char err[1024];
    double t0 = now_s();
    const char *base = strrchr(adapter, '/');
    MergeOpts o = {.scale = scale, .dtype = -1, .adapter_name = base ? base + 1 : adapter, .force = force};
    MergeStats s;
    Backend *be = backend_cpu_create();
    int rc = diffusers_merge(model, adapter, be, &o, out, &s, err, sizeof err);
    backend_destroy(be);
    if (rc != 0) {
        fprintf(stderr, "krona-studio merge: %s\n", err);
        return rc == -1 ? 2 : 1; /* bad input, or writing failed */
    }
    printf("merged %s (%d weights, scale %g) into the diffusers folder %s: %d weight file%s rewritten "
           "(%.2f GB), %d file%s copied, %.1f s\n", adapter, s.merged, (double)scale, out, s.files_merged,
           s.files_merged == 1 ? "" : "s", (double)s.bytes / 1e9, s.files_copied, s.files_copied == 1 ? "" : "s",
           now_s() - t0);
    return 0;
}

int cmd_merge(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *out = NULL, *dtype = "same";
    float scale = 1.0f;
    int force = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--force")) { force = 1; continue; }
        if (!v) { fprintf(stderr, "krona-studio merge: %s needs a value (see --help)\n", a); return 2; }
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--adapter")) adapter = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--dtype")) dtype = v;
        else if (!strcmp(a, "--scale")) {
            if (cli_parse_float(v, &scale) != 0 || !isfinite(scale)) {
                fprintf(stderr, "krona-studio merge: --scale %s: need a number\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "krona-studio merge: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        i++;
    }
    if (!model || !adapter || !out) {
        fprintf(stderr, "krona-studio merge: give --model CHECKPOINT|DIR --adapter A.safetensors -o MERGED.safetensors|OUT_DIR\n");
        return 2;
    }
    int dt = strcmp(dtype, "same") ? st_float_dtype_parse(dtype) : -1; /* -1: each keeps its own */
    if (dt < 0 && strcmp(dtype, "same")) {
        fprintf(stderr, "krona-studio merge: --dtype %s: use same, f16, bf16 or f32\n", dtype);
        return 2;
    }
    if (fs_is_dir(model)) return merge_folder(model, adapter, out, scale, dtype, force);
    if (!checkpoint_is_file(model)) {
        if (!strcmp(model, "tiny") || !strcmp(model, "sd15") || !strcmp(model, "sdxl"))
            fprintf(stderr, "krona-studio merge: --model %s names a built-in model, not files to merge "
                    "into: give a single-file SD 1.5 / SDXL .safetensors or a diffusers folder\n", model);
        else
            fprintf(stderr, "krona-studio merge: %s: not a .safetensors file or a diffusers folder\n", model);
        return 2;
    }
    size_t nl = strlen(out);
    if (nl < 12 || strcmp(out + nl - 12, ".safetensors")) {
        fprintf(stderr, "krona-studio merge: -o %s: name the output *.safetensors\n", out);
        return 2;
    }
    if (!force && fs_exists(out)) {
        fprintf(stderr, "krona-studio merge: %s exists (use --force to overwrite it)\n", out);
        return 2;
    }
    char err[1024];
    double t0 = now_s();
    CheckpointInfo ci;
    if (checkpoint_inspect(model, &ci, err, sizeof err) != 0) {
        fprintf(stderr, "krona-studio merge: %s\n", err);
        return 2;
    }
    ConvertShape shape = {.unet = &ci.unet};
    ConvertMap *map = convert_map_create(ci.kind, CONVERT_UNET, &shape, err, sizeof err);
    if (!map) { fprintf(stderr, "krona-studio merge: %s\n", err); return 2; }
    Backend *be = backend_cpu_create();
    AdapterSet set;
    if (merge_load_adapters(&ci.unet, map, ci.kind == MODEL_KIND_SDXL, adapter, be, &set, err,
                            sizeof err) != 0) {
        fprintf(stderr, "krona-studio merge: %s\n", err);
        convert_map_free(map);
        backend_destroy(be);
        return 2;
    }
    const char *base = strrchr(adapter, '/');
    MergeOpts o = {.scale = scale, .dtype = dt, .adapter_name = base ? base + 1 : adapter, .force = force};
    MergeStats s;
    int rc = checkpoint_merge(model, map, &set, &o, out, &s, err, sizeof err);
    adapter_set_free(&set);
    convert_map_free(map);
    backend_destroy(be);
    if (rc != 0) {
        fprintf(stderr, "krona-studio merge: %s\n", err);
        return 1;
    }
    printf("merged %s (%d layers, scale %g) into %s: %s, %d tensors, %.2f GB, dtype %s, %.1f s\n",
           adapter, s.merged, (double)scale, out, convert_kind_name(ci.kind), s.tensors,
           (double)s.bytes / 1e9, dtype, now_s() - t0);
    return 0;
}

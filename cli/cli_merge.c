/* cli_merge.c — `krona-studio merge`: a single-file SD 1.5 / SDXL checkpoint with
 * an adapter folded into its UNet linears (models/merge.h), for tools that want a
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
static int merge_folder(const char *model, const char *adapter, const char *out, float scale, int dtype,
                        int force) {
    const CliCommand *me = &cli_merge;
    if (dtype != 0) {
        cli_error(me, "--dtype: a diffusers folder keeps each weight file's dtypes (--dtype is for "
                  "single files)");
        return 2;
    }
    size_t nl = strlen(out);
    if (nl >= 12 && !strcmp(out + nl - 12, ".safetensors")) {
        cli_error(me, "-o %s: a diffusers folder is merged into a folder: name the output folder", out);
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
        cli_error(me, "%s", err);
        return rc == -1 ? 2 : 1; /* bad input, or writing failed */
    }
    printf("merged %s (%d weights, scale %g) into the diffusers folder %s: %d weight file%s rewritten "
           "(%.2f GB), %d file%s copied, %.1f s\n", adapter, s.merged, (double)scale, out, s.files_merged,
           s.files_merged == 1 ? "" : "s", (double)s.bytes / 1e9, s.files_copied, s.files_copied == 1 ? "" : "s",
           now_s() - t0);
    return 0;
}

static int run(int argc, char **argv) {
    const CliCommand *me = &cli_merge;
    const char *model = NULL, *adapter = NULL, *out = NULL;
    float scale = 1.0f;
    int force = 0, dtype = 0;
    CliOpt opts[] = {
        cli_str("--model", &model, "CHECKPOINT|DIR", "a single-file SD 1.5 or SDXL base checkpoint, or a diffusers folder"),
        cli_str("--adapter", &adapter, "A.safetensors", "the adapter to fold in"),
        cli_alias("-o", cli_str("--out", &out, "MERGED.safetensors|OUT_DIR", "the merged checkpoint (or diffusers folder) to write")),
        cli_choice("--dtype", &dtype, "same|f16|bf16|f32", "float tensors' type (default same: each keeps its own)"),
        cli_float("--scale", &scale, "S", 0, 0, "W + S dW (default 1)"),
        cli_flag("--force", &force, 1, "overwrite an existing output"),
        {0},
    };
    int rc = cli_parse(me, opts, argc, argv);
    if (rc != CLI_GO) return rc;
    if (!model || !adapter || !out) {
        cli_error(me, "give --model CHECKPOINT|DIR --adapter A.safetensors -o MERGED.safetensors|OUT_DIR");
        return 2;
    }
    if (fs_is_dir(model)) return merge_folder(model, adapter, out, scale, dtype, force);
    static const int DTYPES[] = {-1, ST_F16, ST_BF16, ST_F32};
    static const char *const DTYPE_NAMES[] = {"same", "f16", "bf16", "f32"};
    int dt = DTYPES[dtype];
    if (!checkpoint_is_file(model)) {
        if (!strcmp(model, "tiny") || !strcmp(model, "sd15") || !strcmp(model, "sdxl"))
            cli_error(me, "--model %s names a built-in model, not files to merge into: give a "
                      "single-file SD 1.5 / SDXL .safetensors or a diffusers folder", model);
        else
            cli_error(me, "%s: not a .safetensors file or a diffusers folder", model);
        return 2;
    }
    size_t nl = strlen(out);
    if (nl < 12 || strcmp(out + nl - 12, ".safetensors")) {
        cli_error(me, "-o %s: name the output *.safetensors", out);
        return 2;
    }
    if (!force && fs_exists(out)) {
        cli_error(me, "%s exists (use --force to overwrite it)", out);
        return 2;
    }
    char err[1024];
    double t0 = now_s();
    CheckpointInfo ci;
    if (checkpoint_inspect(model, &ci, err, sizeof err) != 0) {
        cli_error(me, "%s", err);
        return 2;
    }
    ConvertShape shape = {.unet = &ci.unet};
    ConvertMap *map = convert_map_create(ci.kind, CONVERT_UNET, &shape, err, sizeof err);
    if (!map) { cli_error(me, "%s", err); return 2; }
    Backend *be = backend_cpu_create();
    AdapterSet set;
    if (merge_load_adapters(&ci.unet, map, ci.kind == MODEL_KIND_SDXL, adapter, be, &set, err,
                            sizeof err) != 0) {
        cli_error(me, "%s", err);
        convert_map_free(map);
        backend_destroy(be);
        return 2;
    }
    const char *base = strrchr(adapter, '/');
    MergeOpts o = {.scale = scale, .dtype = dt, .adapter_name = base ? base + 1 : adapter, .force = force};
    MergeStats s;
    rc = checkpoint_merge(model, map, &set, &o, out, &s, err, sizeof err);
    adapter_set_free(&set);
    convert_map_free(map);
    backend_destroy(be);
    if (rc != 0) {
        cli_error(me, "%s", err);
        return 1;
    }
    printf("merged %s (%d layers, scale %g) into %s: %s, %d tensors, %.2f GB, dtype %s, %.1f s\n",
           adapter, s.merged, (double)scale, out, convert_kind_name(ci.kind), s.tensors,
           (double)s.bytes / 1e9, DTYPE_NAMES[dtype], now_s() - t0);
    return 0;
}

const CliCommand cli_merge = {
    "merge", run,
    "--model CHECKPOINT.safetensors --adapter A.safetensors -o MERGED.safetensors\n"
    "[--dtype same|f16|bf16|f32] [--scale S] [--force]",
    "--model DIFFUSERS_DIR --adapter A.safetensors -o OUT_DIR [--scale S] [--force]",
    "Write a full checkpoint with the adapter folded into the UNet's linear weights\n"
    "(W + S dW), for tools that take no adapters: a single file (UNet adapters), or a\n"
    "diffusers folder copied file by file with the touched weights (UNet and text\n"
    "encoders) rewritten. Every other tensor or file is copied byte for byte; the output\n"
    "is written to a temporary name and renamed.",
};

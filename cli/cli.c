/* cli.c — helpers shared by the subcommands: strict number parsing and
 * backend selection. */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef KRONA_CUDA
#include "../gpu/backend_cuda.h"
#endif

int cli_parse_int(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < -2147483647L || v > 2147483647L) return -1;
    *out = (int)v;
    return 0;
}

int cli_parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

Backend *cli_backend(const char *device, char *err, size_t errlen) {
    if (!device || !strcmp(device, "auto")) {
#ifdef KRONA_CUDA
        Backend *be = backend_cuda_create(err, errlen);
        if (be) return be;
#endif
        return backend_cpu_create();
    }
    if (!strcmp(device, "cpu")) return backend_cpu_create();
    if (!strcmp(device, "cuda")) {
#ifdef KRONA_CUDA
        return backend_cuda_create(err, errlen);
#else
        snprintf(err, errlen, "device = cuda: this build has no CUDA backend (build with `make cuda`, "
                              "or use device = cpu)");
        return NULL;
#endif
    }
    snprintf(err, errlen, "device = %s: use auto, cpu or cuda", device);
    return NULL;
}


void fmt_thousands(int64_t v, char *out, size_t n) {
    char raw[32];
    snprintf(raw, sizeof raw, "%lld", (long long)(v < 0 ? -v : v));
    size_t len = strlen(raw), o = 0;
    if (v < 0 && o + 1 < n) out[o++] = '-';
    for (size_t i = 0; i < len && o + 2 < n; i++) {
        out[o++] = raw[i];
        if ((len - 1 - i) % 3 == 0 && i + 1 < len) out[o++] = ',';
    }
    out[o] = 0;
}

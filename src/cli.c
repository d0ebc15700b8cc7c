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


/* checkpoint.c — what a single-file checkpoint holds, from its header. */
#include "models/checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "formats/safetensors.h"

int checkpoint_is_file(const char *path) {
    struct stat st;
    size_t n = strlen(path);
    return n > 12 && strcasecmp(path + n - 12, ".safetensors") == 0 && stat(path, &st) == 0 &&
           S_ISREG(st.st_mode);
}

int checkpoint_inspect(const char *path, CheckpointInfo *ci, char *err, size_t errlen) {
    memset(ci, 0, sizeof *ci);
    SafeTensors *st = st_open(path, err, errlen);
    if (!st) return -1;
    char e[512];
    int rc = convert_detect(st, &ci->kind, ci->desc, sizeof ci->desc, e, sizeof e);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", path, e);
        st_close(st);
        return -1;
    }
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *t = st_at(st, i);
        int part = -1;
        for (int p = CONVERT_UNET; p <= CONVERT_TEXT_2 && !convert_ldm_ignored(t->name); p++) {
            const char *pre = convert_part_prefix(ci->kind, (ConvertPart)p);
            if (pre && strncmp(t->name, pre, strlen(pre)) == 0) part = p;
        }
        if (part >= 0) ci->params[part] += t->numel;
        else ci->other += t->numel;
    }
    st_close(st);
    if (unet_config_builtin(ci->kind == MODEL_KIND_SDXL ? "sdxl" : "sd15", &ci->unet) != 0) return -1;
    UNetParam *params;
    UNetLinear *lin;
    int np, nl;
    if (unet_param_table(&ci->unet, &params, &np, &lin, &nl) != 0) return -1;
    for (int i = 0; i < np; i++) ci->arch_unet_params += params[i].numel;
    free(params);
    free(lin);
    return 0;
}

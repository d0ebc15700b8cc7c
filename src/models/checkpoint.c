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

/* host staging for one tensor at a time: the largest part tensor is small next
 * to the model (SD's token embedding, 38M floats in bigG) */
static float *grow(float **buf, int64_t *cap, int64_t n) {
    if (n > *cap) {
        float *b = realloc(*buf, sizeof(float) * (size_t)n);
        if (!b) return NULL;
        *buf = b;
        *cap = n;
    }
    return *buf;
}

int checkpoint_load_text(TextEncoder *te, const SafeTensors *st, ModelKind kind, ConvertPart part,
                         char *err, size_t errlen) {
    ConvertShape shape = {.text_layers = te_config(te)->num_hidden_layers};
    ConvertMap *map = convert_map_create(kind, part, &shape, err, errlen);
    if (!map) return -1;
    Backend *be = NULL;
    float *buf = NULL, *dev = te_params(te);
    int64_t cap = 0;
    int rc = 0;
    for (int i = 0; rc == 0 && i < te_n_tensors(te); i++) {
        int ndim;
        int64_t sh[2], off;
        const char *name = te_tensor_info(te, i, &ndim, sh, &off);
        int64_t n = ndim == 2 ? sh[0] * sh[1] : sh[0];
        if (!grow(&buf, &cap, n)) { snprintf(err, errlen, "out of host memory"); rc = -1; break; }
        rc = convert_read(map, st, name, ndim, sh, buf, err, errlen);
        if (rc == 0) {
            if (!be) be = te_backend(te);
            be->upload(be, dev + off, buf, sizeof(float) * (size_t)n);
        }
    }
    free(buf);
    convert_map_free(map);
    return rc;
}

int checkpoint_load_vae(VAE *v, const SafeTensors *st, ModelKind kind, char *err, size_t errlen) {
    const VAEConfig *c = vae_config(v);
    ConvertShape shape = {.vae_levels = c->n_levels, .vae_layers_per_block = c->layers_per_block};
    ConvertMap *map = convert_map_create(kind, CONVERT_VAE, &shape, err, errlen);
    if (!map) return -1;
    Backend *be = vae_backend(v);
    float *buf = NULL;
    int64_t cap = 0;
    int rc = 0;
    for (int i = 0; rc == 0 && i < vae_n_params(v); i++) {
        VAEParam *p = vae_param_at(v, i);
        if (!grow(&buf, &cap, p->numel)) { snprintf(err, errlen, "out of host memory"); rc = -1; break; }
        rc = convert_read(map, st, p->name, p->ndim, p->shape, buf, err, errlen);
        if (rc == 0) be->upload(be, p->data, buf, sizeof(float) * (size_t)p->numel);
    }
    free(buf);
    convert_map_free(map);
    return rc;
}

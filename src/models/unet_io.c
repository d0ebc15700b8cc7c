/* unet_io.c — the UNet's weights to and from .safetensors files.
 *
 * Loading matches tensors by their diffusers names (bare, or behind a "unet." or
 * "model.diffusion_model." prefix), checks every shape against the config and
 * converts F16/BF16 to float; saving writes the same names in F32. Kept apart
 * from unet.c because file I/O is a separate concern from building the network
 * and running its passes: it needs only the public parameter table
 * (unet_n_params / unet_param_at / unet_backend), not the UNet's internals. */
#include "models/unet.h"
#include "formats/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int unet_load_safetensors(UNet *u, const char *path, char *err, size_t errlen) {
    Backend *be = unet_backend(u);
    int np = unet_n_params(u);
    char e[256];
    SafeTensors *st = st_open(path, e, sizeof e);
    if (!st) { snprintf(err, errlen, "%s", e); return -1; }
    /* prefix: accept the diffusers names as they are, or behind a common prefix */
    const char *prefixes[] = {"", "unet.", "model.diffusion_model."};
    const char *pre = NULL;
    for (size_t k = 0; k < 3 && !pre; k++) {
        char name[UNET_NAME_MAX + 32];
        snprintf(name, sizeof name, "%s%s", prefixes[k], unet_param_at(u, 0)->name);
        if (st_find(st, name)) pre = prefixes[k];
    }
    if (!pre) {
        snprintf(err, errlen, "%s: no tensor '%s' (with or without a 'unet.' prefix): not a "
                 "diffusers UNet checkpoint for this config", path, unet_param_at(u, 0)->name);
        st_close(st);
        return -1;
    }
    int64_t maxn = 0;
    for (int i = 0; i < np; i++)
        if (unet_param_at(u, i)->numel > maxn) maxn = unet_param_at(u, i)->numel;
    float *h = malloc((size_t)maxn * sizeof *h);
    int rc = -1;
    if (!h) { snprintf(err, errlen, "out of host memory"); goto out; }
    for (int i = 0; i < np; i++) {
        UNetParam *p = unet_param_at(u, i);
        char name[UNET_NAME_MAX + 32];
        snprintf(name, sizeof name, "%s%s", pre, p->name);
        const StTensor *t = st_find(st, name);
        if (!t) { snprintf(err, errlen, "%s: missing tensor '%s'", path, name); goto out; }
        if (st_read_f32_as(t, p->ndim, p->shape, h, path, err, errlen) != 0) goto out;
        be->upload(be, p->data, h, (size_t)p->numel * sizeof *h);
    }
    rc = 0;
out:
    free(h);
    st_close(st);
    return rc;
}

int unet_save_safetensors(UNet *u, const char *path, char *err, size_t errlen) {
    Backend *be = unet_backend(u);
    int np = unet_n_params(u);
    StWriter *w = stw_create();
    if (!w) { snprintf(err, errlen, "out of host memory"); return -1; }
    int64_t maxn = 0;
    for (int i = 0; i < np; i++)
        if (unet_param_at(u, i)->numel > maxn) maxn = unet_param_at(u, i)->numel;
    float *h = malloc((size_t)maxn * sizeof *h);
    int rc = -1;
    if (!h) { snprintf(err, errlen, "out of host memory"); goto out; }
    for (int i = 0; i < np; i++) {
        UNetParam *p = unet_param_at(u, i);
        be->download(be, h, p->data, (size_t)p->numel * sizeof *h);
        if (stw_add_f32(w, p->name, p->ndim, p->shape, h)) {
            snprintf(err, errlen, "%s: cannot add tensor '%s'", path, p->name);
            goto out;
        }
    }
    rc = stw_save(w, path, err, errlen);
out:
    free(h);
    stw_free(w);
    return rc;
}


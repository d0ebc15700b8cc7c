/* sixel_enc.c — libsixel encoding of preview images into a memory buffer. */
#include "sixel_enc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sixel.h>

int sixel_scale_factor(int w, int h, int max_w, int max_h) {
    if (w <= 0 || h <= 0) return 1;
    int k = 1;
    while ((k + 1) * w <= max_w && (k + 1) * h <= max_h && k < 64) k++;
    return k;
}

int image_scale_nearest(const Image *in, int k, Image *out) {
    if (k < 1 || image_alloc(out, in->w * k, in->h * k, in->c) != 0) return -1;
    for (int y = 0; y < out->h; y++)
        for (int x = 0; x < out->w; x++)
            memcpy(out->px + ((size_t)y * out->w + x) * in->c,
                   in->px + ((size_t)(y / k) * in->w + x / k) * in->c, (size_t)in->c);
    return 0;
}

/* distinct RGB colours, counting stops at limit (previews are small: O(n*limit) is fine) */
static int count_colours(const Image *im, int limit) {
    unsigned cols[512];
    int n = 0;
    for (size_t i = 0; i < (size_t)im->w * im->h && n < limit && n < 512; i++) {
        const unsigned char *p = im->px + i * 3;
        unsigned c = (unsigned)p[0] << 16 | (unsigned)p[1] << 8 | p[2];
        int k = 0;
        while (k < n && cols[k] != c) k++;
        if (k == n) cols[n++] = c;
    }
    return n;
}

typedef struct Buf { char *p; size_t n, cap; int oom; } Buf;

static int buf_write(char *data, int size, void *priv) {
    Buf *b = priv;
    if (b->oom || size <= 0) return 0;
    if (b->n + (size_t)size + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + (size_t)size + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) { b->oom = 1; return 0; }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, (size_t)size);
    b->n += (size_t)size;
    b->p[b->n] = 0;
    return size;
}

int sixel_encode_image(const Image *im, int k, char **out, size_t *len, char *err, size_t errlen) {
    *out = NULL;
    *len = 0;
    if (!im || !im->px || im->c != 3 || im->w <= 0 || im->h <= 0) {
        snprintf(err, errlen, "sixel: need an RGB image");
        return -1;
    }
    Image big = {0};
    if (image_scale_nearest(im, k, &big) != 0) {
        snprintf(err, errlen, "sixel: out of memory scaling %dx%d by %d", im->w, im->h, k);
        return -1;
    }
    Buf b = {0};
    sixel_output_t *o = NULL;
    sixel_dither_t *d = NULL;
    int rc = -1;
    if (SIXEL_FAILED(sixel_output_new(&o, buf_write, &b, NULL)) ||
        SIXEL_FAILED(sixel_dither_new(&d, 256, NULL))) {
        snprintf(err, errlen, "sixel: cannot create the libsixel encoder");
        goto done;
    }
    /* HIGHCOLOR keeps every colour exactly when there are at most 256 (the
     * median-cut modes merge close ones even then); noisy early samples have
     * more, and median cut suits those */
    int quality = count_colours(im, 257) <= 256 ? SIXEL_QUALITY_HIGHCOLOR : SIXEL_QUALITY_HIGH;
    if (SIXEL_FAILED(sixel_dither_initialize(d, big.px, big.w, big.h, SIXEL_PIXELFORMAT_RGB888,
                                             SIXEL_LARGE_NORM, SIXEL_REP_CENTER_BOX, quality))) {
        snprintf(err, errlen, "sixel: palette for %dx%d failed", big.w, big.h);
        goto done;
    }
    sixel_dither_set_diffusion_type(d, SIXEL_DIFFUSE_NONE);
    if (SIXEL_FAILED(sixel_encode(big.px, big.w, big.h, 3, d, o)) || b.oom || !b.p) {
        snprintf(err, errlen, "sixel: encoding %dx%d failed", big.w, big.h);
        goto done;
    }
    *out = b.p;
    *len = b.n;
    b.p = NULL;
    rc = 0;
done:
    free(b.p);
    if (d) sixel_dither_unref(d);
    if (o) sixel_output_unref(o);
    image_free(&big);
    return rc;
}

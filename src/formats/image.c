/* image.c — see image.h. stb's implementations come from libstb.so, so the
 * headers are included without the *_IMPLEMENTATION defines. */
#include "formats/image.h"
#include "core/fsutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>

int image_alloc(Image *im, int w, int h, int c) {
    im->w = im->h = im->c = 0;
    im->px = NULL;
    if (w <= 0 || h <= 0 || c <= 0 || c > 4 || (size_t)w * (size_t)h > SIZE_MAX / 4) return -1;
    im->px = calloc((size_t)w * h * c, 1);
    if (!im->px) return -1;
    im->w = w; im->h = h; im->c = c;
    return 0;
}

void image_free(Image *im) {
    if (!im) return;
    free(im->px);
    im->px = NULL;
    im->w = im->h = im->c = 0;
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* stb_image decodes a cut-off PNG/JPEG into a partly grey image without
 * complaint, so walk the container ourselves.  0 complete, -1 truncated. */
static int png_complete(const unsigned char *d, size_t n) {
    size_t p = 8;
    while (p + 12 <= n) {
        uint32_t len = be32(d + p);
        if (memcmp(d + p + 4, "IEND", 4) == 0) return 0;
        if (len > n - p - 12) return -1;
        p += 12 + (size_t)len;
    }
    return -1;
}

static int jpeg_complete(const unsigned char *d, size_t n) {
    size_t p = 2;  /* after SOI */
    while (p + 1 < n) {
        if (d[p] != 0xFF) { p++; continue; }           /* tolerate junk between segments */
        unsigned char m = d[p + 1];
        if (m == 0xFF) { p++; continue; }               /* fill bytes */
        if (m == 0xD9) return 0;                        /* EOI */
        if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) { p += 2; continue; }  /* no length */
        if (p + 4 > n) return -1;
        size_t len = (size_t)d[p + 2] << 8 | d[p + 3];
        if (len < 2 || p + 2 + len > n) return -1;
        p += 2 + len;
        if (m == 0xDA) {
            /* entropy-coded data: runs to the next marker that is not a stuffed
             * 0xFF00 or a restart marker */
            while (p + 1 < n) {
                if (d[p] == 0xFF && d[p + 1] != 0x00 && !(d[p + 1] >= 0xD0 && d[p + 1] <= 0xD7) && d[p + 1] != 0xFF) break;
                p++;
            }
        }
    }
    return -1;
}

int image_load(const char *path, Image *out, char *err, size_t errlen) {
    out->w = out->h = out->c = 0;
    out->px = NULL;
    size_t n = 0;
    unsigned char *d = (unsigned char *)fs_read_all(path, IMAGE_MAX_FILE, &n, err, errlen);
    if (!d) return -1;
    static const unsigned char png_sig[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n' };
    int is_png = n >= 8 && memcmp(d, png_sig, 8) == 0;
    int is_jpg = n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF;
    if ((is_png && png_complete(d, n)) || (is_jpg && jpeg_complete(d, n))) {
        snprintf(err, errlen, "'%s': %s file is truncated (no %s marker); re-export or re-download it",
                 path, is_png ? "PNG" : "JPEG", is_png ? "IEND" : "EOI");
        free(d);
        return -1;
    }
    int w, h, comp;
    if (n > INT32_MAX || !stbi_info_from_memory(d, (int)n, &w, &h, &comp)) {
        if (is_png || is_jpg)
            snprintf(err, errlen, "'%s': corrupt %s (%s)", path, is_png ? "PNG" : "JPEG", stbi_failure_reason());
        else
            snprintf(err, errlen, "'%s' is not an image (supported: PNG, JPEG, BMP, GIF, TGA, PSD, PNM, HDR)", path);
        free(d);
        return -1;
    }
    if (w > IMAGE_MAX_SIDE || h > IMAGE_MAX_SIDE) {
        snprintf(err, errlen, "'%s' is %dx%d, larger than the %d px limit; downscale it first", path, w, h, IMAGE_MAX_SIDE);
        free(d);
        return -1;
    }
    int has_alpha = comp == 2 || comp == 4;
    unsigned char *px = stbi_load_from_memory(d, (int)n, &w, &h, &comp, has_alpha ? 4 : 3);
    free(d);
    if (!px) {
        snprintf(err, errlen, "'%s': corrupt image (%s)", path, stbi_failure_reason());
        return -1;
    }
    if (image_alloc(out, w, h, 3)) {
        stbi_image_free(px);
        snprintf(err, errlen, "'%s': out of memory for %dx%d image", path, w, h);
        return -1;
    }
    size_t np = (size_t)w * h;
    if (!has_alpha) {
        memcpy(out->px, px, np * 3);
    } else {
        /* transparent pixels become white (not whatever colour they stored) */
        for (size_t i = 0; i < np; i++) {
            unsigned a = px[4 * i + 3];
            for (int k = 0; k < 3; k++)
                out->px[3 * i + k] = (unsigned char)((px[4 * i + k] * a + 255 * (255 - a) + 127) / 255);
        }
    }
    stbi_image_free(px);
    return 0;
}

/* a * b / c rounded half up, for non-negative a, b and positive c */
static int mul_div_round(int64_t a, int64_t b, int64_t c) {
    return (int)((2 * a * b + c) / (2 * c));
}

void image_cover_crop_geometry(int in_w, int in_h, int w, int h, ImageCrop *g) {
    memset(g, 0, sizeof *g);
    if ((int64_t)in_w * h > (int64_t)in_h * w) { /* wider than w:h: full height, crop the sides */
        g->src_h = in_h;
        g->src_w = mul_div_round(in_h, w, h);
        if (g->src_w < 1) g->src_w = 1;
        if (g->src_w > in_w) g->src_w = in_w;
        g->src_x = (in_w - g->src_w) / 2;
        /* scaled by h / in_h */
        g->cover_w = mul_div_round(in_w, h, in_h);
        g->cover_h = h;
        g->left = mul_div_round(g->src_x, h, in_h);
    } else {                                      /* taller (or the same shape): crop top and bottom */
        g->src_w = in_w;
        g->src_h = mul_div_round(in_w, h, w);
        if (g->src_h < 1) g->src_h = 1;
        if (g->src_h > in_h) g->src_h = in_h;
        g->src_y = (in_h - g->src_h) / 2;
        /* scaled by w / in_w */
        g->cover_w = w;
        g->cover_h = mul_div_round(in_h, w, in_w);
        g->top = mul_div_round(g->src_y, w, in_w);
    }
    if (g->cover_w < w) g->cover_w = w;
    if (g->cover_h < h) g->cover_h = h;
    if (g->left > g->cover_w - w) g->left = g->cover_w - w;
    if (g->top > g->cover_h - h) g->top = g->cover_h - h;
}

int image_cover_crop_resize(const Image *in, int w, int h, Image *out, ImageCrop *geom) {
    out->px = NULL;
    if (!in || !in->px || w <= 0 || h <= 0) return -1;
    ImageCrop g;
    image_cover_crop_geometry(in->w, in->h, w, h, &g);
    if (geom) *geom = g;
    if (image_alloc(out, w, h, in->c)) return -1;
    const unsigned char *src = in->px + ((size_t)g.src_y * in->w + g.src_x) * in->c;
    int stride = in->w * in->c;
    if (g.src_w == w && g.src_h == h) {
        for (int y = 0; y < h; y++)
            memcpy(out->px + (size_t)y * w * in->c, src + (size_t)y * stride, (size_t)w * in->c);
        return 0;
    }
    /* sRGB-aware filtering (Mitchell down, Catmull-Rom up): no darkened edges */
    int alpha = in->c == 4 ? 3 : in->c == 2 ? 1 : STBIR_ALPHA_CHANNEL_NONE;
    if (!stbir_resize_uint8_srgb(src, g.src_w, g.src_h, stride, out->px, w, h, w * in->c, in->c, alpha, 0)) {
        image_free(out);
        return -1;
    }
    return 0;
}

int image_center_crop_resize(const Image *in, int size, Image *out) {
    return image_cover_crop_resize(in, size, size, out, NULL);
}

void image_to_chw(const Image *im, float *dst) {
    size_t hw = (size_t)im->w * im->h;
    for (int k = 0; k < im->c; k++)
        for (size_t i = 0; i < hw; i++)
            dst[k * hw + i] = im->px[i * im->c + k] * (2.0f / 255.0f) - 1.0f;
}

int image_from_chw(const float *src, int c, int h, int w, Image *out) {
    if (image_alloc(out, w, h, c)) return -1;
    size_t hw = (size_t)w * h;
    for (int k = 0; k < c; k++)
        for (size_t i = 0; i < hw; i++) {
            float v = (src[k * hw + i] + 1.0f) * 127.5f;
            v = v > 0.0f ? v : 0.0f;   /* also maps NaN to 0 */
            v = v < 255.0f ? v : 255.0f;
            out->px[i * c + k] = (unsigned char)(v + 0.5f);
        }
    return 0;
}

int image_flip_h(Image *im) {
    if (!im || !im->px) return -1;
    for (int y = 0; y < im->h; y++) {
        unsigned char *row = im->px + (size_t)y * im->w * im->c;
        for (int a = 0, b = im->w - 1; a < b; a++, b--)
            for (int k = 0; k < im->c; k++) {
                unsigned char t = row[a * im->c + k];
                row[a * im->c + k] = row[b * im->c + k];
                row[b * im->c + k] = t;
            }
    }
    return 0;
}

typedef struct { unsigned char *p; size_t n, cap; int oom; } MemOut;

static void mem_write(void *ctx, void *data, int size) {
    MemOut *m = ctx;
    if (m->oom || size <= 0) return;
    if (m->n + (size_t)size > m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 65536;
        while (nc < m->n + (size_t)size) nc *= 2;
        unsigned char *np = realloc(m->p, nc);
        if (!np) { m->oom = 1; return; }
        m->p = np; m->cap = nc;
    }
    memcpy(m->p + m->n, data, (size_t)size);
    m->n += (size_t)size;
}

int image_save_png(const char *path, const Image *im, char *err, size_t errlen) {
    if (!im || !im->px || im->w <= 0 || im->h <= 0 || im->c < 1 || im->c > 4) {
        snprintf(err, errlen, "cannot write '%s': empty or invalid image", path);
        return -1;
    }
    MemOut m = {0};
    if (!stbi_write_png_to_func(mem_write, &m, im->w, im->h, im->c, im->px, im->w * im->c) || m.oom) {
        free(m.p);
        snprintf(err, errlen, "cannot write '%s': PNG encoding failed (out of memory?)", path);
        return -1;
    }
    int r = fs_write_atomic(path, m.p, m.n, err, errlen);
    free(m.p);
    return r;
}

int image_grid(const Image *tiles, int n, int cols, int pad, Image *out) {
    out->px = NULL;
    if (!tiles || n <= 0 || cols <= 0 || pad < 0) return -1;
    if (cols > n) cols = n;
    int cw = 0, ch = 0, c = tiles[0].c;
    for (int i = 0; i < n; i++) {
        if (!tiles[i].px || tiles[i].c != c) return -1;
        if (tiles[i].w > cw) cw = tiles[i].w;
        if (tiles[i].h > ch) ch = tiles[i].h;
    }
    int rows = (n + cols - 1) / cols;
    int W = cols * cw + (cols + 1) * pad, H = rows * ch + (rows + 1) * pad;
    if (image_alloc(out, W, H, c)) return -1;
    memset(out->px, IMAGE_GRID_BG, (size_t)W * H * c);
    for (int i = 0; i < n; i++) {
        const Image *t = &tiles[i];
        int x0 = pad + (i % cols) * (cw + pad) + (cw - t->w) / 2;
        int y0 = pad + (i / cols) * (ch + pad) + (ch - t->h) / 2;
        for (int y = 0; y < t->h; y++)
            memcpy(out->px + ((size_t)(y0 + y) * W + x0) * c, t->px + (size_t)y * t->w * c, (size_t)t->w * c);
    }
    return 0;
}

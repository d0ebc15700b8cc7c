/* image.h — 8-bit images for training inputs and sample previews:
 * load (stb_image, RGB, alpha composited over white), centre crop + resize
 * (stb_image_resize, sRGB-aware), CHW float conversion, PNG save (atomic), grids. */
#ifndef KRONA_IMAGE_H
#define KRONA_IMAGE_H

#include <stddef.h>

#define IMAGE_MAX_SIDE 16384   /* refuse larger inputs instead of allocating gigabytes */
/* an image file's cap: the uncompressed size of the largest image accepted
 * (4 bytes a pixel) with a quarter more for a container's overhead */
#define IMAGE_MAX_FILE ((size_t)IMAGE_MAX_SIDE * IMAGE_MAX_SIDE * 5)
#define IMAGE_GRID_BG 255      /* grid padding colour (white) */

typedef struct { int w, h, c; unsigned char *px; } Image;   /* row-major HWC, px malloc'ed */

/* Allocate w*h*c bytes (zeroed). 0 / -1. */
int image_alloc(Image *im, int w, int h, int c);
void image_free(Image *im);
/* Any stb_image format as RGB8 (c = 3). Errors name the path: missing file,
 * "not an image", "truncated" (PNG without IEND, JPEG without EOI), corrupt. */
int image_load(const char *path, Image *out, char *err, size_t errlen);
/* Where a w x h crop of an in_w x in_h image comes from when the image is
 * scaled to cover w x h (nothing distorted) and centre-cropped to it. */
typedef struct ImageCrop {
    int src_x, src_y, src_w, src_h; /* the input region used (w:h within a pixel) */
    int cover_w, cover_h;           /* the input scaled to cover w x h */
    int left, top;                  /* the crop's top-left in that scaled image */
} ImageCrop;
/* The geometry alone (in_w, in_h, w, h > 0). */
void image_cover_crop_geometry(int in_w, int in_h, int w, int h, ImageCrop *g);
/* Scale to cover w x h, centre crop to it (the input region of
 * image_cover_crop_geometry resized). geom (may be NULL) gets the geometry. 0 / -1. */
int image_cover_crop_resize(const Image *in, int w, int h, Image *out, ImageCrop *geom);
/* Centre square crop (side = min(w, h)), then resize to size x size:
 * image_cover_crop_resize to size x size. */
int image_center_crop_resize(const Image *in, int size, Image *out);
/* HWC uint8 -> CHW float in [-1, 1] (dst: c*h*w floats). */
void image_to_chw(const Image *im, float *dst);
/* CHW float [-1, 1] -> HWC uint8, clamped and rounded (NaN -> 0). 0 / -1 (alloc). */
int image_from_chw(const float *src, int c, int h, int w, Image *out);
int image_flip_h(Image *im);
/* PNG via stb_image_write into memory, then fs_write_atomic. */
int image_save_png(const char *path, const Image *im, char *err, size_t errlen);
/* n tiles (same channel count) in rows of cols, pad pixels between and around,
 * cells as large as the largest tile, tiles centred in their cells. */
int image_grid(const Image *tiles, int n, int cols, int pad, Image *out);

#endif

/* sixel_enc.h — an RGB image as a DEC sixel escape stream (libsixel), with no
 * ncurses dependency so tests can link it alone. */
#ifndef KRONA_TUI_SIXEL_ENC_H
#define KRONA_TUI_SIXEL_ENC_H

#include <stddef.h>

#include "formats/image.h"

/* Nearest-neighbour integer upscale so a small preview fills its cell box:
 * the largest k >= 1 with k*w <= max_w and k*h <= max_h (1 if none fits). */
int sixel_scale_factor(int w, int h, int max_w, int max_h);
int image_scale_nearest(const Image *in, int k, Image *out);

/* Encode im (RGB8) scaled by k into a malloc'ed "ESC P ... q ... ESC \" stream.
 * 0, or -1 with err. */
int sixel_encode_image(const Image *im, int k, char **out, size_t *len, char *err, size_t errlen);

#endif

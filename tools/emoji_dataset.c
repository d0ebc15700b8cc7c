/* emoji_dataset.c — builds the captioned pretraining set of the built-in tiny
 * model from emoji-datasource packs (see tools/build-emoji-dataset.sh, which
 * downloads the packs and compiles this file).
 *
 *   emoji_dataset --out data/emoji32.bin [--size 32] [--margin 4] [--categories "A,B,..."]
 *                 [--preview grid.png] SET_DIR SET_NAME [SET_DIR SET_NAME ...]
 *
 * SET_DIR is an unpacked npm package (holds emoji.json and img/SET_NAME/64/).
 * Every emoji of the chosen categories (not skin-tone variants) is downscaled to
 * (size - 2 margin) squared (sRGB-aware, alpha-weighted), centred so that the
 * background shows around it, composited on each palette colour it
 * stays visible on, captioned "a <name> on a <colour> background", plus one
 * "a <name>" on white.
 *
 * Output format (little-endian), read by src/pretrain.c (pt_dataset_load):
 *   char magic[8] = "KSDATA1\0"; u32 n, width, height, channels, caption_bytes;
 *   caption_bytes of n NUL-terminated UTF-8 captions;
 *   n * height * width * channels uint8 pixels (HWC, row-major, item after item). */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#include <stb_image.h>
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#include <stb_image_resize.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#include "core/fsutil.h"
#include "formats/json.h"

typedef struct { const char *name; unsigned char rgb[3]; } Colour;

/* Saturated, well separated colours; names are the words the captions use. */
static const Colour PALETTE[] = {
    {"red", {220, 40, 40}},    {"orange", {245, 140, 20}}, {"yellow", {250, 220, 40}},
    {"green", {50, 170, 70}},  {"blue", {40, 90, 220}},    {"purple", {130, 60, 190}},
    {"pink", {245, 130, 190}}, {"white", {255, 255, 255}}, {"black", {20, 20, 20}},
    {"gray", {128, 128, 128}}, {"brown", {120, 75, 40}},   {"cyan", {40, 200, 220}},
};
#define N_COLOURS ((int)(sizeof PALETTE / sizeof PALETTE[0]))
#define MAX_CAPTION 75 /* the tiny text encoder's 77 positions minus BOS/EOS */

typedef struct {
    unsigned char *px; /* n * S*S*3 */
    char *caps;
    size_t n, cap_n, caps_len, caps_cap;
} Out;

static int out_add(Out *o, const unsigned char *px, size_t bytes, const char *caption)
{
    if (o->n == o->cap_n) {
        size_t nc = o->cap_n ? o->cap_n * 2 : 1024;
        unsigned char *np = realloc(o->px, nc * bytes);
        if (!np) return -1;
        o->px = np;
        o->cap_n = nc;
    }
    size_t l = strlen(caption) + 1;
    if (o->caps_len + l > o->caps_cap) {
        size_t nc = o->caps_cap ? o->caps_cap * 2 : 65536;
        char *nc_ = realloc(o->caps, nc);
        if (!nc_) return -1;
        o->caps = nc_;
        o->caps_cap = nc;
    }
    memcpy(o->px + o->n * bytes, px, bytes);
    memcpy(o->caps + o->caps_len, caption, l);
    o->caps_len += l;
    o->n++;
    return 0;
}

/* "DOG FACE" -> "dog face"; anything but letters, digits, '-' and '\'' becomes a space. */
static void clean_name(const char *in, char *out, size_t cap)
{
    size_t k = 0;
    int space = 1;
    for (const char *p = in; *p && k + 1 < cap; p++) {
        unsigned char ch = (unsigned char)*p;
        if (isalnum(ch) || ch == '-' || ch == '\'') {
            out[k++] = (char)tolower(ch);
            space = 0;
        } else if (!space) {
            out[k++] = ' ';
            space = 1;
        }
    }
    while (k > 0 && out[k - 1] == ' ') k--;
    out[k] = 0;
}

static int in_list(const char *csv, const char *item)
{
    size_t n = strlen(item);
    for (const char *p = csv; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, item, n) == 0) return 1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

/* The emoji is "visible" on bg unless most of its opaque pixels are close to bg. */
static int visible_on(const unsigned char *rgba, int npx, const unsigned char *bg)
{
    int opaque = 0, close = 0;
    for (int i = 0; i < npx; i++) {
        const unsigned char *p = rgba + 4 * i;
        if (p[3] < 128) continue;
        opaque++;
        int d = 0;
        for (int c = 0; c < 3; c++) {
            int x = abs((int)p[c] - (int)bg[c]);
            if (x > d) d = x;
        }
        if (d < 48) close++;
    }
    return opaque > 0 && close * 10 < opaque * 4;
}

static void composite(const unsigned char *rgba, int npx, const unsigned char *bg, unsigned char *rgb)
{
    for (int i = 0; i < npx; i++) {
        int a = rgba[4 * i + 3];
        for (int c = 0; c < 3; c++)
            rgb[3 * i + c] = (unsigned char)((rgba[4 * i + c] * a + bg[c] * (255 - a) + 127) / 255);
    }
}

static int add_set(Out *o, const char *dir, const char *set, const char *cats, int S, int margin,
                   int *n_emoji)
{
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/emoji.json", dir);
    size_t len;
    char *text = fs_read_all(path, FS_TEXT_MAX, &len, err, sizeof err);
    if (!text) { fprintf(stderr, "emoji_dataset: %s\n", err); return -1; }
    JsonValue *root = json_parse(text, len, err, sizeof err);
    free(text);
    if (!root || root->type != JSON_ARRAY) {
        fprintf(stderr, "emoji_dataset: %s: %s\n", path, root ? "expected a JSON array" : err);
        json_free(root);
        return -1;
    }
    char has_key[64];
    snprintf(has_key, sizeof has_key, "has_img_%s", set);
    unsigned char *small = calloc((size_t)S * S * 4, 1), *rgb = malloc((size_t)S * S * 3);
    int inner = S - 2 * margin; /* the emoji's side; transparent margin around it */
    int rc = 0;
    *n_emoji = 0;
    for (int i = 0; i < root->n && rc == 0; i++) {
        const JsonValue *e = &root->items[i];
        const JsonValue *cat = json_get(e, "category"), *img = json_get(e, "image"),
                        *nm = json_get(e, "name"), *sn = json_get(e, "short_name"),
                        *has = json_get(e, has_key);
        if (!cat || cat->type != JSON_STRING || !img || img->type != JSON_STRING) continue;
        if (!has || has->type != JSON_BOOL || !has->boolean) continue;
        if (!in_list(cats, cat->string)) continue;
        const char *raw = nm && nm->type == JSON_STRING ? nm->string
                        : sn && sn->type == JSON_STRING ? sn->string : NULL;
        if (!raw) continue;
        char name[128];
        clean_name(raw, name, sizeof name);
        if (!name[0] || strlen(name) + strlen("a  on a purple background") > MAX_CAPTION) continue;
        snprintf(path, sizeof path, "%s/img/%s/64/%s", dir, set, img->string);
        int w, h, c;
        unsigned char *px = stbi_load(path, &w, &h, &c, 4);
        if (!px) continue; /* some entries have no 64px file in a given set */
        int ok = stbir_resize_uint8_srgb(px, w, h, 0, small + ((size_t)margin * S + margin) * 4,
                                         inner, inner, S * 4, 4, 3, 0);
        stbi_image_free(px);
        if (!ok) continue;
        char cap[160];
        (*n_emoji)++;
        for (int k = 0; k < N_COLOURS && rc == 0; k++) {
            if (!visible_on(small, S * S, PALETTE[k].rgb)) continue;
            composite(small, S * S, PALETTE[k].rgb, rgb);
            snprintf(cap, sizeof cap, "a %s on a %s background", name, PALETTE[k].name);
            rc = out_add(o, rgb, (size_t)S * S * 3, cap);
        }
        if (rc == 0) { /* the plain caption, on white */
            static const unsigned char white[3] = {255, 255, 255};
            composite(small, S * S, white, rgb);
            snprintf(cap, sizeof cap, "a %s", name);
            rc = out_add(o, rgb, (size_t)S * S * 3, cap);
        }
    }
    if (rc) fprintf(stderr, "emoji_dataset: out of memory\n");
    free(small);
    free(rgb);
    json_free(root);
    return rc;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

int main(int argc, char **argv)
{
    const char *out_path = NULL, *preview = NULL;
    const char *cats = "Smileys & Emotion,Animals & Nature,Food & Drink";
    int S = 32, margin = 4;
    Out o = {0};
    int i = 1, n_sets = 0;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
        else if (!strcmp(argv[i], "--size") && i + 1 < argc) S = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--margin") && i + 1 < argc) margin = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--categories") && i + 1 < argc) cats = argv[++i];
        else if (!strcmp(argv[i], "--preview") && i + 1 < argc) preview = argv[++i];
        else break;
    }
    if (!out_path || S < 8 || S > 64 || margin < 0 || 2 * margin > S - 4 || i >= argc || (argc - i) % 2) {
        fprintf(stderr, "usage: emoji_dataset --out FILE [--size 8..64] [--margin PX] [--categories \"A,B\"] "
                        "[--preview PNG] SET_DIR SET_NAME [SET_DIR SET_NAME ...]\n");
        return 2;
    }
    for (; i + 1 < argc; i += 2) {
        int n_emoji;
        size_t before = o.n;
        if (add_set(&o, argv[i], argv[i + 1], cats, S, margin, &n_emoji) != 0) return 1;
        fprintf(stderr, "emoji_dataset: %s: %d emoji -> %zu images\n", argv[i + 1], n_emoji, o.n - before);
        n_sets++;
    }
    if (o.n == 0) { fprintf(stderr, "emoji_dataset: no images (wrong folders or categories?)\n"); return 1; }

    size_t pix = o.n * (size_t)S * S * 3, total = 28 + o.caps_len + pix;
    unsigned char *buf = malloc(total);
    if (!buf) { fprintf(stderr, "emoji_dataset: out of memory\n"); return 1; }
    memcpy(buf, "KSDATA1", 8);
    put_u32(buf + 8, (uint32_t)o.n);
    put_u32(buf + 12, (uint32_t)S);
    put_u32(buf + 16, (uint32_t)S);
    put_u32(buf + 20, 3);
    put_u32(buf + 24, (uint32_t)o.caps_len);
    memcpy(buf + 28, o.caps, o.caps_len);
    memcpy(buf + 28 + o.caps_len, o.px, pix);
    char err[512];
    if (fs_write_atomic(out_path, buf, total, err, sizeof err) != 0) {
        fprintf(stderr, "emoji_dataset: %s\n", err);
        return 1;
    }
    fprintf(stderr, "emoji_dataset: wrote %s: %zu images %dx%d, %.1f MB\n", out_path, o.n, S, S,
            (double)total / 1e6);
    if (preview) { /* a 16x16 grid of evenly spaced items, to eyeball the set */
        int G = 16, side = G * S;
        unsigned char *g = calloc((size_t)side * side * 3, 1);
        for (int k = 0; g && k < G * G; k++) {
            size_t idx = (size_t)k * o.n / (size_t)(G * G);
            for (int y = 0; y < S; y++)
                memcpy(g + ((size_t)(k / G * S + y) * side + (size_t)(k % G) * S) * 3,
                       o.px + idx * S * S * 3 + (size_t)y * S * 3, (size_t)S * 3);
        }
        if (g) stbi_write_png(preview, side, side, 3, g, side * 3);
        free(g);
    }
    free(buf);
    free(o.px);
    free(o.caps);
    return 0;
}

/* preview.c — sample previews: Unicode half-block cells (two pixels per cell,
 * fg = top, bg = bottom) or sixel images written straight to the terminal
 * after ncurses' doupdate. ncurses never knows about the sixel pixels, so a
 * box whose image changes is repainted by ncurses first (wredrawln), which
 * wipes the old picture, and the cursor is saved/restored around the stream. */
#include <curses.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "studio.h"

/* Read the terminal's answers to CSI 16 t and DA1 (sent in that order, so the
 * DA1 reply ends the exchange). Terminals that answer neither cost 250 ms. */
GfxMode gfx_detect(int *cell_w, int *cell_h) {
    *cell_w = 0;
    *cell_h = 0;
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col && ws.ws_xpixel) {
        *cell_w = ws.ws_xpixel / ws.ws_col;
        *cell_h = ws.ws_ypixel / ws.ws_row;
    }
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) return GFX_HALFBLOCK;
    const char *term = getenv("TERM");
    if (!term || !strcmp(term, "dumb")) return GFX_HALFBLOCK;
    struct termios old, raw;
    if (tcgetattr(STDIN_FILENO, &old) != 0) return GFX_HALFBLOCK;
    raw = old;
    raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    tcsetattr(STDIN_FILENO, TCSANOW, &raw);
    const char q[] = "\033[16t\033[c";
    if (write(STDOUT_FILENO, q, sizeof q - 1) < 0) { tcsetattr(STDIN_FILENO, TCSANOW, &old); return GFX_HALFBLOCK; }
    char buf[256];
    size_t n = 0;
    int waited = 0, got_da = 0;
    while (n < sizeof buf - 1 && waited < 250 && !got_da) {
        struct pollfd pf = {STDIN_FILENO, POLLIN, 0};
        if (poll(&pf, 1, 25) <= 0) { waited += 25; continue; }
        ssize_t r = read(STDIN_FILENO, buf + n, sizeof buf - 1 - n);
        if (r <= 0) break;
        n += (size_t)r;
        buf[n] = 0;
        const char *da = strstr(buf, "\033[?");
        if (da && strchr(da, 'c')) got_da = 1;
    }
    buf[n] = 0;
    tcsetattr(STDIN_FILENO, TCSANOW, &old);
    int ch, cw;
    const char *cs = strstr(buf, "\033[6;");
    if (cs && sscanf(cs, "\033[6;%d;%dt", &ch, &cw) == 2 && ch > 0 && cw > 0) {
        *cell_w = cw;
        *cell_h = ch;
    }
    const char *da = strstr(buf, "\033[?");
    if (!da) return GFX_HALFBLOCK;
    /* attributes are ;-separated after "?", the first is the class */
    const char *s = da + 3;
    int first = 1;
    while (*s && *s != 'c') {
        int v = atoi(s);
        if (!first && v == 4) return GFX_SIXEL;
        first = 0;
        while (*s && *s != ';' && *s != 'c') s++;
        if (*s == ';') s++;
    }
    return GFX_HALFBLOCK;
}

void gfx_init(Gfx *g, GfxMode mode, int cell_w, int cell_h) {
    memset(g, 0, sizeof *g);
    g->mode = mode;
    g->cell_w = cell_w > 0 ? cell_w : 10;
    g->cell_h = cell_h > 0 ? cell_h : 20;
    g->colour = has_colors() && COLORS >= 8;
    g->c256 = g->colour && COLORS >= 256;
    g->dump_path = getenv("KRONA_STUDIO_SIXEL_DUMP");
    g->force = 1;
}

void gfx_free(Gfx *g) {
    for (int i = 0; i < 8; i++) free(g->cache[i].stream);
    memset(g->cache, 0, sizeof g->cache);
}

void gfx_begin_frame(Gfx *g) { g->n_slots = 0; }

/* -------------------------------------------------------- half-block --- */

static int rgb_index(const Gfx *g, int r, int gr, int b) {
    if (g->c256) {
        int mx = r > gr ? (r > b ? r : b) : (gr > b ? gr : b), mn = r < gr ? (r < b ? r : b) : (gr < b ? gr : b);
        if (mx - mn < 12) {  /* grey ramp 232..255 is finer than the cube's greys */
            int v = (r + gr + b) / 3;
            if (v < 8) return 16;
            if (v > 238) return 231;
            return 232 + (v - 8) / 10;
        }
        int q[3] = {r, gr, b};
        for (int i = 0; i < 3; i++) q[i] = q[i] < 48 ? 0 : q[i] < 115 ? 1 : (q[i] - 35) / 40;
        return 16 + 36 * q[0] + 6 * q[1] + q[2];
    }
    /* 8 colours: threshold each channel */
    return (r > 127 ? COLOR_RED : 0) | (gr > 127 ? COLOR_GREEN : 0) | (b > 127 ? COLOR_BLUE : 0);
}

/* area-average (downscale) or nearest (upscale) sample of im at target pixel */
static void sample_px(const Image *im, int tx, int ty, int tw, int th, int rgb[3]) {
    int x0 = (int)((long long)tx * im->w / tw), x1 = (int)((long long)(tx + 1) * im->w / tw);
    int y0 = (int)((long long)ty * im->h / th), y1 = (int)((long long)(ty + 1) * im->h / th);
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = y0 + 1;
    long acc[3] = {0, 0, 0}, n = 0;
    for (int y = y0; y < y1 && y < im->h; y++)
        for (int x = x0; x < x1 && x < im->w; x++) {
            const unsigned char *p = im->px + ((size_t)y * im->w + x) * im->c;
            for (int c = 0; c < 3; c++) acc[c] += p[im->c >= 3 ? c : 0];
            n++;
        }
    for (int c = 0; c < 3; c++) rgb[c] = n ? (int)(acc[c] / n) : 0;
}

static void fit(int iw, int ih, int bw, int bh, int *tw, int *th) {
    /* keep the aspect; whole multiples when enlarging keep pixels square and crisp */
    if (iw <= bw && ih <= bh) {
        int k = sixel_scale_factor(iw, ih, bw, bh);
        *tw = iw * k;
        *th = ih * k;
        return;
    }
    double s = (double)bw / iw < (double)bh / ih ? (double)bw / iw : (double)bh / ih;
    *tw = (int)(iw * s);
    *th = (int)(ih * s);
    if (*tw < 1) *tw = 1;
    if (*th < 1) *th = 1;
}

/* centred in the box, or at its top-left corner (stacked history rows) */
static void draw_halfblock(Gfx *g, const Image *im, int y, int x, int h, int w, int centre) {
    int tw, th;
    fit(im->w, im->h, w, 2 * h, &tw, &th);
    int ox = x + (w - tw) / 2, oy = y + (h - (th + 1) / 2) / 2;
    if (!centre) { ox = x; oy = y; }
    static const char ramp[] = " .:-=+*#%@";
    for (int r = 0; r < (th + 1) / 2; r++)
        for (int c = 0; c < tw; c++) {
            int top[3], bot[3] = {255, 255, 255};
            sample_px(im, c, 2 * r, tw, th, top);
            if (2 * r + 1 < th) sample_px(im, c, 2 * r + 1, tw, th, bot);
            if (!g->colour) {
                int v = (top[0] + top[1] + top[2] + bot[0] + bot[1] + bot[2]) / 6;
                mvaddch(oy + r, ox + c, (chtype)ramp[v * 9 / 255]);
                continue;
            }
            int pair = alloc_pair(rgb_index(g, top[0], top[1], top[2]), rgb_index(g, bot[0], bot[1], bot[2]));
            if (pair < 0) pair = 0;
            attr_set(A_NORMAL, (short)0, &pair);
            mvaddstr(oy + r, ox + c, "\xe2\x96\x80");   /* U+2580 upper half block */
            attr_set(A_NORMAL, 0, NULL);
        }
}

/* ------------------------------------------------------------- sixel --- */

static SixelSlot *cache_find(Gfx *g, long key, int pw, int ph) {
    for (int i = 0; i < 8; i++)
        if (g->cache[i].stream && g->cache[i].key == key && g->cache[i].w == pw && g->cache[i].h == ph)
            return &g->cache[i];
    return NULL;
}

/* a fresh entry at the front; the oldest (slot 7) is dropped */
static SixelSlot *cache_add(Gfx *g, long key, int pw, int ph) {
    free(g->cache[7].stream);
    memmove(&g->cache[1], &g->cache[0], sizeof(SixelSlot) * 7);
    SixelSlot *c = &g->cache[0];
    memset(c, 0, sizeof *c);
    c->key = key;
    c->w = pw;
    c->h = ph;
    return c;
}

/* im fitted into tw x th: whole-multiple nearest when enlarging, area average when shrinking */
static int resize_to(const Image *im, int tw, int th, Image *out) {
    if (tw >= im->w && tw % im->w == 0 && th == im->h * (tw / im->w)) return image_scale_nearest(im, tw / im->w, out);
    if (image_alloc(out, tw, th, 3) != 0) return -1;
    for (int yy = 0; yy < th; yy++)
        for (int xx = 0; xx < tw; xx++) {
            int rgb[3];
            sample_px(im, xx, yy, tw, th, rgb);
            for (int k = 0; k < 3; k++) out->px[((size_t)yy * tw + xx) * 3 + k] = (unsigned char)rgb[k];
        }
    return 0;
}

/* ----------------------------------------------------------- history --- */

static int copy_image(Image *dst, const Image *src) {
    if (image_alloc(dst, src->w, src->h, src->c) != 0) return -1;
    memcpy(dst->px, src->px, (size_t)src->w * src->h * src->c);
    return 0;
}

int hist_push(SampleHist *h, int step, const Image *im, const char *path) {
    Image cp = {0};
    if (!im || !im->px || copy_image(&cp, im) != 0) return -1;
    if (step == 0) {   /* the base model's grid (training/run_dir.h) */
        image_free(&h->base);
        h->base = cp;
        snprintf(h->base_path, sizeof h->base_path, "%s", path ? path : "");
        h->serial++;
        return 0;
    }
    image_free(&h->im[PREVIEW_HIST - 1]);
    memmove(&h->im[1], &h->im[0], sizeof h->im[0] * (PREVIEW_HIST - 1));
    memmove(&h->step[1], &h->step[0], sizeof h->step[0] * (PREVIEW_HIST - 1));
    memmove(&h->path[1], &h->path[0], sizeof h->path[0] * (PREVIEW_HIST - 1));
    h->im[0] = cp;
    h->step[0] = step;
    snprintf(h->path[0], sizeof h->path[0], "%s", path ? path : "");
    if (h->n < PREVIEW_HIST) h->n++;
    h->serial++;
    return 0;
}

void hist_clear(SampleHist *h) {
    for (int i = 0; i < PREVIEW_HIST; i++) image_free(&h->im[i]);
    memset(h->im, 0, sizeof h->im);
    image_free(&h->base);
    h->base_path[0] = 0;
    h->n = 0;
}

int hist_copy(SampleHist *dst, const SampleHist *src) {
    hist_clear(dst);
    dst->serial = src->serial;
    if (src->base.px) {
        if (copy_image(&dst->base, &src->base) != 0) return -1;
        memcpy(dst->base_path, src->base_path, sizeof dst->base_path);
    }
    for (int i = 0; i < src->n; i++) {
        if (copy_image(&dst->im[i], &src->im[i]) != 0) return -1;
        dst->step[i] = src->step[i];
        memcpy(dst->path[i], src->path[i], sizeof dst->path[i]);
        dst->n = i + 1;
    }
    return 0;
}

void hist_grids(const SampleHist *h, GridSet *out) {
    memset(out, 0, sizeof *out);
    out->base = h->base.px ? &h->base : NULL;
    out->base_path = h->base_path;
    for (int i = 0; i < h->n; i++) {
        out->im[i] = &h->im[i];
        out->step[i] = h->step[i];
        out->path[i] = h->path[i];
    }
    out->n = h->n;
    out->key = (1L << 40) + h->serial;
}

/* ------------------------------------------------------ sample grids --- */

/* Where the grids of a GridSet go, in pixels (sixel pixels, or half-block
 * cells of 1 x 2): the base model's in column 0 row 0, the adapter's newest
 * beside it (cols 2), or under it (cols 1) when that shows the pair a quarter
 * larger; older ones under the newest while a row keeps the grid at two
 * thirds of the pair's best size or more, and min_h tall. The newest's place
 * is kept while only the base exists, so nothing moves when it comes. Each
 * grid has a lab-pixel label strip above it. */
typedef struct Board {
    int cols, rows;
    int tw, th;             /* every grid fitted (the first's size) */
    int lab, gx, gy;        /* label strip; gaps between columns and rows */
    int n_shown;            /* adapter grids shown, newest first */
} Board;

static int board_fit(const Image *im, const Board *b, int rows, int aw, int ah, int *tw, int *th) {
    int cw = (aw - (b->cols - 1) * b->gx) / b->cols, ch = (ah - (rows - 1) * b->gy) / rows - b->lab;
    *tw = *th = 0;
    if (cw < 1 || ch < 1) return 0;
    fit(im->w, im->h, cw, ch, tw, th);
    return *th;
}

static Board board_plan(const GridSet *s, int aw, int ah, int lab, int gx, int gy, int min_h) {
    Board b = {.cols = 1, .lab = lab, .gx = gx, .gy = gy};
    const Image *ref = s->base ? s->base : s->im[0];
    int tw, th, base_rows = s->base ? 1 : 0;
    if (s->base) {
        Board side = b;
        side.cols = 2;
        int beside = board_fit(ref, &side, 1, aw, ah, &tw, &th), above = board_fit(ref, &b, 2, aw, ah, &tw, &th);
        if (beside * 5 >= above * 4) b.cols = 2;   /* side by side unless a quarter smaller */
    }
    int first = b.cols == 2 ? 1 : base_rows + 1;
    int want = (b.cols == 2 ? 0 : base_rows) + (s->n > 0 ? s->n : 1);
    int best = board_fit(ref, &b, first, aw, ah, &b.tw, &b.th);
    /* older grids only while the newest keeps two thirds of its best size: a small
     * model's grids (32 px tiles) would otherwise shrink back to 1x to make room */
    int need = (2 * best + 2) / 3;
    b.rows = first;
    for (int r = first + 1; r <= want; r++) {
        if (board_fit(ref, &b, r, aw, ah, &tw, &th) < need || th < min_h) break;
        b.rows = r;
        b.tw = tw;
        b.th = th;
    }
    b.n_shown = b.rows - (b.cols == 2 ? 0 : base_rows);
    if (b.n_shown > s->n) b.n_shown = s->n;
    return b;
}

/* item -1 is the base grid, 0.. the adapter's */
static void board_cell(const Board *b, const GridSet *s, int item, int *col, int *row) {
    *col = item < 0 ? 0 : b->cols - 1;
    *row = item < 0 ? 0 : item + (b->cols == 1 && s->base ? 1 : 0);
}

static void grid_label(const GridSet *s, int item, char *out, size_t n) {
    if (item < 0) snprintf(out, n, "base");
    else snprintf(out, n, "step %d", s->step[item]);
}

/* 5x7 glyphs (row 7: the descender of p) for the labels burnt into sixel
 * images; bit 4 is the left column */
static const unsigned char *glyph(char c) {
    static const unsigned char digits[10][8] = {
        {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},
        {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},
        {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},
        {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},
        {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}};
    static const struct { char c; unsigned char rows[8]; } letters[] = {
        {'a', {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F}}, {'b', {0x10, 0x10, 0x1E, 0x11, 0x11, 0x11, 0x1E}},
        {'e', {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}}, {'p', {0x00, 0x00, 0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10}},
        {'s', {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E}}, {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}},
    };
    if (c >= '0' && c <= '9') return digits[c - '0'];
    for (size_t i = 0; i < sizeof letters / sizeof letters[0]; i++)
        if (letters[i].c == c) return letters[i].rows;
    return NULL;
}

static void burn_text(Image *im, int x, int y, int t, const char *text, const unsigned char rgb[3]) {
    for (; *text; text++, x += 6 * t) {
        const unsigned char *gl = glyph(*text);
        if (!gl) continue;
        for (int gy = 0; gy < 8 * t; gy++)
            for (int gx = 0; gx < 5 * t; gx++) {
                int px = x + gx, py = y + gy;
                if (!(gl[gy / t] >> (4 - gx / t) & 1) || px >= im->w || py >= im->h) continue;
                memcpy(im->px + ((size_t)py * im->w + px) * 3, rgb, 3);
            }
    }
}

/* im (RGB) copied into canvas (RGB) with its top-left corner at (x, y); it fits */
static void blit(Image *canvas, const Image *im, int x, int y) {
    for (int yy = 0; yy < im->h; yy++)
        memcpy(canvas->px + ((size_t)(y + yy) * canvas->w + x) * 3, im->px + (size_t)yy * im->w * 3,
               (size_t)im->w * 3);
}

/* where a grid landed in the picture, for the test hook: its box and the
 * whole-multiple scale of its source (0: not one) */
static void note_region(int reg[5], int x, int y, const Image *placed, const Image *src) {
    reg[0] = x;
    reg[1] = y;
    reg[2] = placed->w;
    reg[3] = placed->h;
    reg[4] = placed->w % src->w == 0 && placed->w >= src->w ? placed->w / src->w : 0;
}

/* Show the cached image c in the box (y, x, h x w cells) this frame: the slot
 * shares c's stream; src and base_src name its grids' files for the test hook
 * ("" for none). The caller checks that a slot is free. */
static void slot_place(Gfx *g, const SixelSlot *c, int y, int x, int h, int w, const char *src,
                       const char *base_src) {
    SixelSlot *sl = &g->slots[g->n_slots++];
    *sl = *c;
    sl->y = y;
    sl->x = x;
    sl->h = h;
    sl->w = w;
    snprintf(sl->src, sizeof sl->src, "%s", src);
    snprintf(sl->base_src, sizeof sl->base_src, "%s", base_src);
}

/* One sixel image: each grid under its label strip, on white (the grids' padding). */
static SixelSlot *grids_sixel(Gfx *g, const GridSet *s, int pw, int ph) {
    int t = g->cell_h >= 18 ? g->cell_h / 9 : 1;   /* label: 8t-pixel glyphs, about a cell */
    int gap = g->cell_h / 4 > 2 ? g->cell_h / 4 : 2;
    Board b = board_plan(s, pw, ph, 10 * t, 2 * gap, gap, 8);
    long key = (s->key * 4 + b.cols) * 8 + b.rows;
    SixelSlot *c = cache_find(g, key, pw, ph);
    if (c) return c;
    int lw = 6 * t * 11;   /* "step 123456" */
    int colw = b.tw > lw || b.cols * lw + (b.cols - 1) * b.gx > pw ? b.tw : lw;
    int cw = b.cols * colw + (b.cols - 1) * b.gx, chh = b.rows * (b.lab + b.th) + (b.rows - 1) * b.gy;
    Image canvas = {0};
    if (b.tw < 1 || b.th < 1 || image_alloc(&canvas, cw, chh, 3) != 0) return NULL;
    c = cache_add(g, key, pw, ph);
    static const unsigned char strip[3] = {24, 24, 24}, fg[3] = {235, 235, 235};
    memset(canvas.px, IMAGE_GRID_BG, (size_t)cw * chh * 3);   /* as the grids' own padding */
    int ok = 1;
    for (int item = s->base ? -1 : 0; item < b.n_shown && ok; item++) {
        const Image *im = item < 0 ? s->base : s->im[item];
        if (im->c != 3) continue;
        int col, row, tw, th;
        board_cell(&b, s, item, &col, &row);
        fit(im->w, im->h, b.tw, b.th, &tw, &th);
        Image placed = {0};
        ok = resize_to(im, tw, th, &placed) == 0;
        if (!ok) break;
        int x0 = col * (colw + b.gx), y0 = row * (b.lab + b.th + b.gy);
        char label[32];
        grid_label(s, item, label, sizeof label);
        for (int yy = y0; yy < y0 + b.lab; yy++)   /* a dark strip over the grid, the label on it */
            for (int xx = x0; xx < x0 + colw; xx++) memcpy(canvas.px + ((size_t)yy * cw + xx) * 3, strip, 3);
        burn_text(&canvas, x0 + t, y0 + t, t, label, fg);
        blit(&canvas, &placed, x0, y0 + b.lab);
        if (item == 0) note_region(c->region, x0, y0 + b.lab, &placed, im);
        if (item < 0) note_region(c->base_region, x0, y0 + b.lab, &placed, im);
        image_free(&placed);
    }
    c->grids = b.n_shown + (s->base ? 1 : 0);
    char err[256];
    if (!ok || sixel_encode_image(&canvas, 1, &c->stream, &c->len, err, sizeof err) != 0) c->stream = NULL;
    image_free(&canvas);
    return c->stream ? c : NULL;
}

void preview_draw_grids(Gfx *g, const GridSet *s, int y, int x, int bh, int bw) {
    if (bh < 1 || bw < 1) return;
    for (int r = 0; r < bh; r++) mvhline(y + r, x, ' ', bw);
    if (!s->base && (s->n < 1 || !s->im[0]->px)) return;
    char label[32], line[1100];
    if (g->mode == GFX_NONE) {
        mvaddnstr(y, x, "(graphics off)", bw);
        int r = 1;
        for (int item = s->base ? -1 : 0; item < s->n && r < bh; item++, r++) {
            grid_label(s, item, label, sizeof label);
            snprintf(line, sizeof line, "%-9s %s", label, item < 0 ? s->base_path : s->path[item]);
            mvaddnstr(y + r, x, line, bw);
        }
        return;
    }
    if (g->mode == GFX_SIXEL && g->n_slots < 4) {
        SixelSlot *c = grids_sixel(g, s, bw * g->cell_w, bh * g->cell_h);
        if (c) {
            slot_place(g, c, y, x, bh, bw, s->n ? s->path[0] : "", s->base ? s->base_path : "");
            return;
        }
    }
    /* half-block: a text label over each grid; a column is half the box */
    Board b = board_plan(s, bw, 2 * bh, 2, 1, 0, 2);
    int colw = (bw - (b.cols - 1) * b.gx) / b.cols, rowh = 1 + (b.th + 1) / 2;
    for (int item = s->base ? -1 : 0; item < b.n_shown; item++) {
        int col, row;
        board_cell(&b, s, item, &col, &row);
        int x0 = x + col * (colw + b.gx), y0 = y + row * rowh;
        if (y0 >= y + bh) break;
        grid_label(s, item, label, sizeof label);
        attron(A_BOLD);
        mvaddnstr(y0, x0, label, colw);
        attroff(A_BOLD);
        int rows = rowh - 1 < y + bh - y0 - 1 ? rowh - 1 : y + bh - y0 - 1;
        if (rows > 0) draw_halfblock(g, item < 0 ? s->base : s->im[item], y0 + 1, x0, rows, colw, 0);
    }
}

/* ------------------------------------------------------- thumbnails --- */

int thumb_make(const Image *in, int max_side, Image *out) {
    int tw, th;
    fit(in->w, in->h, max_side, max_side, &tw, &th);
    if (tw >= in->w) return copy_image(out, in);
    return resize_to(in, tw, th, out);
}

/* Tiles for n images in a box of aw x ah units (ux x uy pixels each), gaps
 * gx, gy units: the column count that shows them largest; each tile's size in units. */
static void thumb_plan(const Image *im, int n, int aw, int ah, int ux, int uy, int gx, int gy, int *cols, int *cw,
                       int *ch) {
    int best = -1;
    const Image *ref = NULL;
    for (int i = 0; i < n && !ref; i++)
        if (im[i].px) ref = &im[i];
    *cols = 1;
    *cw = *ch = 0;
    for (int c = 1; c <= n; c++) {
        int r = (n + c - 1) / c, w = (aw - (c - 1) * gx) / c, h = (ah - (r - 1) * gy) / r, tw = w * ux, th = h * uy;
        if (w < 1 || h < 1) continue;
        if (ref) fit(ref->w, ref->h, w * ux, h * uy, &tw, &th);
        if (tw * th > best) { best = tw * th; *cols = c; *cw = w; *ch = h; }
    }
}

void preview_draw_thumbs(Gfx *g, const Image *im, int n, long key, int y, int x, int h, int w) {
    if (h < 1 || w < 1 || n < 1 || g->mode == GFX_NONE) return;
    for (int r = 0; r < h; r++) mvhline(y + r, x, ' ', w);
    int cols, cw, ch;
    if (g->mode == GFX_SIXEL && g->n_slots < 4) {
        int pw = w * g->cell_w, ph = h * g->cell_h, gap = g->cell_w / 2 > 2 ? g->cell_w / 2 : 2;
        thumb_plan(im, n, pw, ph, 1, 1, gap, gap, &cols, &cw, &ch);
        long k = (3L << 40) + key;
        SixelSlot *c = cache_find(g, k, pw, ph);
        for (int i = 0; i < n; i++)   /* the cells as large as the first image fitted: no bands */
            if (im[i].px) {
                fit(im[i].w, im[i].h, cw, ch, &cw, &ch);
                break;
            }
        if (!c && cw > 0 && ch > 0) {
            int rows = (n + cols - 1) / cols;
            Image canvas = {0};
            if (image_alloc(&canvas, cols * cw + (cols - 1) * gap, rows * ch + (rows - 1) * gap, 3) == 0) {
                memset(canvas.px, IMAGE_GRID_BG, (size_t)canvas.w * canvas.h * 3);   /* as the sample grids' padding */
                for (int i = 0; i < n; i++) {
                    int x0 = i % cols * (cw + gap), y0 = i / cols * (ch + gap), tw, th;
                    if (!im[i].px || im[i].c != 3) continue;
                    fit(im[i].w, im[i].h, cw, ch, &tw, &th);
                    Image placed = {0};
                    if (resize_to(&im[i], tw, th, &placed) != 0) continue;
                    int px0 = x0 + (cw - tw) / 2, py0 = y0 + (ch - th) / 2;
                    blit(&canvas, &placed, px0, py0);
                    image_free(&placed);
                }
                c = cache_add(g, k, pw, ph);
                char err[256];
                if (sixel_encode_image(&canvas, 1, &c->stream, &c->len, err, sizeof err) != 0) c->stream = NULL;
                image_free(&canvas);
            }
        }
        if (c && c->stream) {
            slot_place(g, c, y, x, h, w, "", "");
            return;
        }
    }
    /* half-block tiles: a cell is 1 x 2 pixels, a column of space between tiles */
    thumb_plan(im, n, w, h, 1, 2, 1, 0, &cols, &cw, &ch);
    for (int i = 0; i < n && cw > 0 && ch > 0; i++)
        if (im[i].px) draw_halfblock(g, &im[i], y + i / cols * ch, x + i % cols * (cw + 1), ch, cw, 1);
}

static unsigned long slots_sig(const Gfx *g) {
    unsigned long h = 1469598103934665603ul;
    for (int i = 0; i < g->n_slots; i++) {
        const SixelSlot *s = &g->slots[i];
        long v[5] = {s->key, s->y, s->x, s->h, s->w};
        for (int k = 0; k < 5; k++) h = (h ^ (unsigned long)v[k]) * 1099511628211ul;
    }
    return h;
}


void gfx_prepare(Gfx *g) {
    if (g->mode != GFX_SIXEL) return;
    if (slots_sig(g) == g->shown && !g->force) return;
    /* the terminal still shows the old pictures: let ncurses repaint every
     * line that held or will hold one (its cells are blanks it thinks are there) */
    redrawwin(stdscr);
}

void gfx_flush(Gfx *g) {
    if (g->mode != GFX_SIXEL) return;
    unsigned long sig = slots_sig(g);
    if (sig == g->shown && !g->force) return;
    for (int i = 0; i < g->n_slots; i++) {
        const SixelSlot *s = &g->slots[i];
        char pos[32];
        int n = snprintf(pos, sizeof pos, "\0337\033[%d;%dH", s->y + 1, s->x + 1);
        if (write(STDOUT_FILENO, pos, (size_t)n) < 0) break;
        size_t off = 0;
        while (off < s->len) {
            ssize_t w = write(STDOUT_FILENO, s->stream + off, s->len - off);
            if (w <= 0) break;
            off += (size_t)w;
        }
        if (write(STDOUT_FILENO, "\0338", 2) < 0) break;
        if (g->dump_path && s->src[0]) {   /* the sample grids (not the thumbnails) */
            char err[256], meta[2400];
            fs_write_atomic(g->dump_path, s->stream, s->len, err, sizeof err);
            int m = snprintf(meta, sizeof meta, "%s\nregion %d %d %d %d %d\ngrids %d\n%s\nbase %d %d %d %d %d\n",
                             s->src, s->region[0], s->region[1], s->region[2], s->region[3], s->region[4], s->grids,
                             s->base_src, s->base_region[0], s->base_region[1], s->base_region[2],
                             s->base_region[3], s->base_region[4]);
            char mp[1100];
            snprintf(mp, sizeof mp, "%s.src", g->dump_path);
            fs_write_atomic(mp, meta, (size_t)m, err, sizeof err);
        }
    }
    g->shown = sig;
    g->force = 0;
}

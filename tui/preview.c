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

static SixelSlot *cache_get(Gfx *g, const Image *im, long key, int pw, int ph) {
    SixelSlot *c = cache_find(g, key, pw, ph);
    if (c) return c;
    c = cache_add(g, key, pw, ph);
    Image src = *im, small = {0};
    int tw, th;
    fit(im->w, im->h, pw, ph, &tw, &th);
    if (tw < im->w) {   /* too big for the box: area-average down first */
        if (resize_to(im, tw, th, &small) != 0) return NULL;
        src = small;
    }
    int k = sixel_scale_factor(src.w, src.h, pw, ph);
    char err[256];
    if (sixel_encode_image(&src, k, &c->stream, &c->len, err, sizeof err) != 0) c->stream = NULL;
    c->rw = src.w * k;
    c->rh = src.h * k;
    c->rk = tw < im->w ? 0 : k;
    c->rows = 1;
    image_free(&small);
    return c->stream ? c : NULL;
}

void preview_draw(Gfx *g, const Image *im, long key, const char *src, int y, int x, int h, int w) {
    if (h < 1 || w < 1) return;
    for (int r = 0; r < h; r++) mvhline(y + r, x, ' ', w);
    if (!im || !im->px) return;
    if (g->mode == GFX_NONE) {
        mvaddnstr(y, x, "(graphics off)", w);
        if (src && h > 1) mvaddnstr(y + 1, x, src, w);
        return;
    }
    if (g->mode == GFX_HALFBLOCK || im->c != 3) { draw_halfblock(g, im, y, x, h, w, 1); return; }
    if (g->n_slots >= 4) return;
    SixelSlot *c = cache_get(g, im, key, w * g->cell_w, h * g->cell_h);
    if (!c) { draw_halfblock(g, im, y, x, h, w, 1); return; }
    SixelSlot *s = &g->slots[g->n_slots++];
    *s = *c;   /* shares the cached stream */
    s->y = y;
    s->x = x;
    s->h = h;
    s->w = w;
    snprintf(s->src, sizeof s->src, "%s", src ? src : "");
}

/* ----------------------------------------------------------- history --- */

int hist_push(SampleHist *h, int step, const Image *im, const char *path) {
    Image cp = {0};
    if (!im || !im->px || image_alloc(&cp, im->w, im->h, im->c) != 0) return -1;
    memcpy(cp.px, im->px, (size_t)im->w * im->h * im->c);
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
    h->n = 0;
}

int hist_copy(SampleHist *dst, const SampleHist *src) {
    hist_clear(dst);
    dst->serial = src->serial;
    for (int i = 0; i < src->n; i++) {
        const Image *im = &src->im[i];
        if (image_alloc(&dst->im[i], im->w, im->h, im->c) != 0) return -1;
        memcpy(dst->im[i].px, im->px, (size_t)im->w * im->h * im->c);
        dst->step[i] = src->step[i];
        memcpy(dst->path[i], src->path[i], sizeof dst->path[i]);
        dst->n = i + 1;
    }
    return 0;
}

/* How many of the n grids to stack in an aw x ah pixel area, each row with a
 * label strip of lab pixels and gap pixels between rows. A row fits while the
 * grid still shows at its own size (or at half the one-row size when even one
 * row has to shrink it) and at least min_h pixels tall. */
static int hist_rows(const Image *im, int n, int aw, int ah, int lab, int gap, int min_h) {
    int best = 1, th1 = 0;
    for (int r = 1; r <= n; r++) {
        int bh = (ah - (r - 1) * gap) / r - lab, tw, th;
        if (bh < min_h) break;
        fit(im->w, im->h, aw, bh, &tw, &th);
        if (r == 1) th1 = th;
        int need = im->h < (th1 + 1) / 2 ? im->h : (th1 + 1) / 2;
        if (r > 1 && (th < need || th < min_h)) break;
        best = r;
    }
    return best;
}

/* 5x7 glyphs (row 7: the descender of p) for the "step N" labels burnt into
 * sixel images; bit 4 is the left column */
static const unsigned char *glyph(char c) {
    static const unsigned char digits[10][8] = {
        {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},
        {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},
        {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},
        {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},
        {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}};
    static const unsigned char s[8] = {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E};
    static const unsigned char t[8] = {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06};
    static const unsigned char e[8] = {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E};
    static const unsigned char p[8] = {0x00, 0x00, 0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10};
    if (c >= '0' && c <= '9') return digits[c - '0'];
    return c == 's' ? s : c == 't' ? t : c == 'e' ? e : c == 'p' ? p : NULL;
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

/* One sixel image: rows of (label strip, grid), newest first. The region of
 * the newest grid is recorded for the test hook. */
static SixelSlot *hist_sixel(Gfx *g, const SampleHist *h, int pw, int ph) {
    int t = g->cell_h >= 18 ? g->cell_h / 9 : 1;   /* label: 8t-pixel glyphs, about a cell */
    int lab = 10 * t, gap = g->cell_h / 4 > 2 ? g->cell_h / 4 : 2;
    int rows = hist_rows(&h->im[0], h->n, pw, ph, lab, gap, 8);
    long key = ((1L << 40) + h->serial) * 8 + rows;
    SixelSlot *c = cache_find(g, key, pw, ph);
    if (c) return c;
    for (int i = 0; i < rows; i++)
        if (h->im[i].c != 3) return NULL;
    Image row[PREVIEW_HIST] = {{0}}, canvas = {0};
    int bh = (ph - (rows - 1) * gap) / rows - lab, cw = 0, chh = 0, ok = 1;
    for (int i = 0; i < rows && ok; i++) {
        int tw, th;
        fit(h->im[i].w, h->im[i].h, pw, bh, &tw, &th);
        ok = resize_to(&h->im[i], tw, th, &row[i]) == 0;
        if (tw > cw) cw = tw;
        chh += lab + th + (i ? gap : 0);
    }
    int lw = 6 * t * 11;   /* "step 123456" */
    if (cw < lw && lw <= pw) cw = lw;
    if (ok) ok = image_alloc(&canvas, cw, chh, 3) == 0;
    c = ok ? cache_add(g, key, pw, ph) : NULL;
    if (c) {
        static const unsigned char bg[3] = {24, 24, 24}, fg[3] = {235, 235, 235};
        for (size_t i = 0; i < (size_t)cw * chh; i++) memcpy(canvas.px + i * 3, bg, 3);
        int y0 = 0;
        for (int i = 0; i < rows; i++) {
            char label[32];
            snprintf(label, sizeof label, "step %d", h->step[i]);
            burn_text(&canvas, t, y0 + t, t, label, fg);
            for (int yy = 0; yy < row[i].h; yy++)
                memcpy(canvas.px + ((size_t)(y0 + lab + yy) * cw) * 3, row[i].px + (size_t)yy * row[i].w * 3,
                       (size_t)row[i].w * 3);
            if (i == 0) {
                c->rx = 0;
                c->ry = lab;
                c->rw = row[0].w;
                c->rh = row[0].h;
                c->rk = row[0].w % h->im[0].w == 0 && row[0].w >= h->im[0].w ? row[0].w / h->im[0].w : 0;
            }
            y0 += lab + row[i].h + gap;
        }
        c->rows = rows;
        char err[256];
        if (sixel_encode_image(&canvas, 1, &c->stream, &c->len, err, sizeof err) != 0) c->stream = NULL;
    }
    for (int i = 0; i < rows; i++) image_free(&row[i]);
    image_free(&canvas);
    return c && c->stream ? c : NULL;
}

void preview_draw_hist(Gfx *g, const SampleHist *h, int y, int x, int bh, int bw) {
    if (bh < 1 || bw < 1) return;
    for (int r = 0; r < bh; r++) mvhline(y + r, x, ' ', bw);
    if (h->n < 1 || !h->im[0].px) return;
    char label[32];
    if (g->mode == GFX_NONE) {
        mvaddnstr(y, x, "(graphics off)", bw);
        for (int i = 0; i < h->n && 1 + i < bh; i++) {
            char line[1100];
            snprintf(line, sizeof line, "step %d  %s", h->step[i], h->path[i]);
            mvaddnstr(y + 1 + i, x, line, bw);
        }
        return;
    }
    if (g->mode == GFX_SIXEL && g->n_slots < 4) {
        SixelSlot *c = hist_sixel(g, h, bw * g->cell_w, bh * g->cell_h);
        if (c) {
            SixelSlot *s = &g->slots[g->n_slots++];
            *s = *c;   /* shares the cached stream */
            s->y = y;
            s->x = x;
            s->h = bh;
            s->w = bw;
            snprintf(s->src, sizeof s->src, "%s", h->path[0]);
            return;
        }
    }
    /* half-block: a "step N" line over each grid, stacked from the top */
    int rows = hist_rows(&h->im[0], h->n, bw, 2 * bh, 2, 0, 2);
    int band = bh / rows, y0 = y;
    for (int i = 0; i < rows; i++) {
        int tw, th;
        fit(h->im[i].w, h->im[i].h, bw, 2 * (band - 1), &tw, &th);
        snprintf(label, sizeof label, "step %d", h->step[i]);
        attron(A_BOLD);
        mvaddnstr(y0, x, label, bw);
        attroff(A_BOLD);
        if (band >= 2) draw_halfblock(g, &h->im[i], y0 + 1, x, band - 1, bw, 0);
        y0 += 1 + (th + 1) / 2;
    }
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
        if (g->dump_path && i == 0) {
            char err[256], meta[1300];
            fs_write_atomic(g->dump_path, s->stream, s->len, err, sizeof err);
            int m = snprintf(meta, sizeof meta, "%s\nregion %d %d %d %d %d\nrows %d\n", s->src,
                             s->rx, s->ry, s->rw, s->rh, s->rk, s->rows);
            char mp[1100];
            snprintf(mp, sizeof mp, "%s.src", g->dump_path);
            fs_write_atomic(mp, meta, (size_t)m, err, sizeof err);
        }
    }
    g->shown = sig;
    g->force = 0;
}

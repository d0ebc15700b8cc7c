/* chart.c — the loss chart: raw per-step losses as dim braille dots, the
 * smoothed curve (bias-corrected EMA) as a bright connected line on top.
 * Braille gives 2x4 dots per cell, so an 40x6 box plots 80x24 points. */
#include <curses.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "studio.h"

int series_push(LossSeries *s, float v) {
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 256;
        float *nv = realloc(s->v, sizeof(float) * (size_t)cap);
        if (!nv) return -1;
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n++] = v;
    return 0;
}

void series_free(LossSeries *s) {
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* braille dot bit for (col 0..1, row 0..3) inside a cell */
static int dot_bit(int cx, int ry) {
    static const int bits[2][4] = {{0x01, 0x02, 0x04, 0x40}, {0x08, 0x10, 0x20, 0x80}};
    return bits[cx][ry];
}

static void put_braille(int y, int x, int bits) {
    unsigned cp = 0x2800u + (unsigned)bits;
    char u[4] = {(char)(0xE0 | (cp >> 12)), (char)(0x80 | ((cp >> 6) & 0x3F)), (char)(0x80 | (cp & 0x3F)), 0};
    mvaddstr(y, x, u);
}

void chart_draw(const LossSeries *s, int y, int x, int h, int w, int colour) {
    if (h < 1 || w < 2) return;
    int n = s->n;
    if (n == 0) {
        if (h > 1) mvaddnstr(y + h / 2, x + 1, "no loss values yet", w - 1);
        return;
    }
    int W = 2 * w, H = 4 * h;
    float lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++)
        if (isfinite(s->v[i])) {
            if (s->v[i] < lo) lo = s->v[i];
            if (s->v[i] > hi) hi = s->v[i];
        }
    if (!isfinite(lo)) return;
    if (hi - lo < 1e-6f) { hi += 0.5f; lo -= 0.5f; }
    unsigned char *raw = calloc((size_t)w * h, 1), *sm = calloc((size_t)w * h, 1);
    double *acc = calloc((size_t)W, sizeof(double));
    int *cnt = calloc((size_t)W, sizeof(int));
    if (!raw || !sm || !acc || !cnt) goto done;
    double beta = n > 300 ? 0.98 : 0.9, e = 0, bc = 1;
    for (int i = 0; i < n; i++) {
        float v = isfinite(s->v[i]) ? s->v[i] : hi;
        e = beta * e + (1 - beta) * v;
        bc *= beta;
        double smv = e / (1 - bc);
        int px = n > 1 ? (int)((long long)i * (W - 1) / (n - 1)) : 0;
        int py = (int)lrint((hi - v) / (hi - lo) * (H - 1));
        raw[(py / 4) * w + px / 2] |= (unsigned char)dot_bit(px % 2, py % 4);
        acc[px] += smv;
        cnt[px]++;
    }
    int prev = -1;
    for (int px = 0; px < W; px++) {
        if (!cnt[px]) continue;
        int py = (int)lrint((hi - acc[px] / cnt[px]) / (hi - lo) * (H - 1));
        if (py < 0) py = 0;
        if (py > H - 1) py = H - 1;
        int a = prev < 0 ? py : prev, b = py;
        if (a > b) { int t = a; a = b; b = t; }
        for (int yy = a; yy <= b; yy++) sm[(yy / 4) * w + px / 2] |= (unsigned char)dot_bit(px % 2, yy % 4);
        prev = py;
    }
    for (int r = 0; r < h; r++)
        for (int c = 0; c < w; c++) {
            int i = r * w + c, bits = raw[i] | sm[i];
            if (!bits) continue;
            attr_t a = sm[i] ? (cp(colour, CP_SMOOTH) | A_BOLD) : (cp(colour, CP_RAW) | (colour ? 0 : A_DIM));
            attron(a);
            put_braille(y + r, x + c, bits);
            attroff(a);
        }
done:
    free(raw);
    free(sm);
    free(acc);
    free(cnt);
}

/* runs.c — the Runs view: every run folder under the output dir (its summary,
 * training/run_dir.h), with its knobs, trainable parameters, final loss and
 * latest sample grid; marked runs side by side (loss curves over sample grids)
 * so ablations can be judged at a glance; p re-opens a run's preset. */
#include <curses.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "studio.h"
#include "training/run_dir.h"

static int cmp_run(const void *a, const void *b) {
    return strcmp(((const RunInfo *)b)->name, ((const RunInfo *)a)->name);   /* newest first */
}

void runs_free(RunsView *rv) {
    for (int i = 0; i < rv->n; i++) {
        series_free(&rv->r[i].loss);
        image_free(&rv->r[i].grid);
        image_free(&rv->r[i].base);
    }
    free(rv->r);
    rv->r = NULL;
    rv->n = 0;
}

void runs_open(RunsView *rv, const char *root) {
    runs_free(rv);
    memset(rv, 0, sizeof *rv);
    snprintf(rv->root, sizeof rv->root, "%s", root && root[0] ? root : "runs");
    DIR *d = opendir(rv->root);
    if (!d) { snprintf(rv->msg, sizeof rv->msg, "no runs yet in %s (t trains one)", rv->root); return; }
    struct dirent *de;
    int cap = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char dir[2200];
        snprintf(dir, sizeof dir, "%s/%s", rv->root, de->d_name);
        RunSummary sum;
        if (run_summary_read(dir, &sum) != 0) continue;   /* not a run folder */
        if (rv->n == cap) {
            cap = cap ? cap * 2 : 16;
            RunInfo *nr = realloc(rv->r, sizeof(RunInfo) * (size_t)cap);
            if (!nr) { run_summary_free(&sum); break; }
            rv->r = nr;
        }
        RunInfo *r = &rv->r[rv->n++];
        memset(r, 0, sizeof *r);
        snprintf(r->dir, sizeof r->dir, "%s/%s", rv->root, de->d_name);
        snprintf(r->name, sizeof r->name, "%s", de->d_name);
        r->p = sum.preset;
        r->preset_ok = sum.preset_ok;
        r->trainable = sum.trainable;
        for (int k = 0; k < sum.steps; k++) series_push(&r->loss, sum.loss[k]);
        snprintf(r->sample_png, sizeof r->sample_png, "%s", sum.last_sample);
        snprintf(r->base_png, sizeof r->base_png, "%s", sum.base_sample);
        r->sample_step = sum.last_step;
        r->mtime = sum.mtime;
        run_summary_free(&sum);
    }
    closedir(d);
    qsort(rv->r, (size_t)rv->n, sizeof(RunInfo), cmp_run);
    if (rv->n == 0) snprintf(rv->msg, sizeof rv->msg, "no runs yet in %s (t trains one)", rv->root);
}

static int n_marked(const RunsView *rv) {
    int m = 0;
    for (int i = 0; i < rv->n; i++) m += rv->r[i].marked;
    return m;
}

int runs_key(RunsView *rv, int ch, char *out, size_t n) {
    rv->msg[0] = 0;
    if (rv->compare) {
        if (ch == 27 || ch == 'q' || ch == 'c' || ch == KEY_BACKSPACE || ch == 127) rv->compare = 0;
        return 0;
    }
    switch (ch) {
    case 27: case 'q': case 'r': return 1;
    case KEY_UP: case 'k': if (rv->cur > 0) rv->cur--; break;
    case KEY_DOWN: case 'j': if (rv->cur < rv->n - 1) rv->cur++; break;
    case ' ': if (rv->n) rv->r[rv->cur].marked ^= 1; if (rv->cur < rv->n - 1) rv->cur++; break;
    case 'c': case '\n': case '\r': case KEY_ENTER:
        if (n_marked(rv) < 2) snprintf(rv->msg, sizeof rv->msg, "mark two or more runs with space, then c");
        else rv->compare = 1;
        break;
    case 'p': case 'o':
        if (!rv->n) break;
        run_path(rv->r[rv->cur].dir, RUN_PRESET, out, n);
        return 2;
    default: break;
    }
    return 0;
}

static void describe(const RunInfo *r, char *out, size_t n) {
    char t[32];
    if (r->trainable >= 0) fmt_thousands(r->trainable, t, sizeof t);
    else snprintf(t, sizeof t, "invalid");
    float fin = r->loss.n ? r->loss.v[r->loss.n - 1] : NAN;
    double ema = 0;
    int k = r->loss.n < 20 ? r->loss.n : 20;
    for (int i = r->loss.n - k; i < r->loss.n; i++) ema += r->loss.v[i];
    if (k) fin = (float)(ema / k);   /* mean of the last 20 steps: one step is too noisy */
    if (!strcmp(r->p.adapter, "lora"))
        snprintf(out, n, "lora r%-3d %-7g %5d %d %-8s %9s %7.4f", r->p.lora_rank, r->p.lr, r->p.iterations,
                 r->p.n_images, r->p.modules, t, fin);
    else
        snprintf(out, n, "%3dx%-4d %-7g %5d %d %-8s %9s %7.4f", r->p.a1, r->p.a2, r->p.lr, r->p.iterations,
                 r->p.n_images, r->p.modules, t, fin);
}

/* the latest and the base grids, loaded once */
static void run_grid(RunInfo *r) {
    if (r->grid_tried) return;
    r->grid_tried = 1;
    char err[256];
    if (r->sample_png[0] && r->sample_step > 0 && image_load(r->sample_png, &r->grid, err, sizeof err) != 0)
        memset(&r->grid, 0, sizeof r->grid);
    if (r->base_png[0] && image_load(r->base_png, &r->base, err, sizeof err) != 0) memset(&r->base, 0, sizeof r->base);
}

/* the run's base grid beside its latest, named for the sixel cache by their files */
static void run_grids(RunInfo *r, GridSet *gs) {
    run_grid(r);
    memset(gs, 0, sizeof *gs);
    gs->base = r->base.px ? &r->base : NULL;
    gs->base_path = r->base_png;
    if (r->grid.px) {
        gs->im[0] = &r->grid;
        gs->step[0] = r->sample_step;
        gs->path[0] = r->sample_png;
        gs->n = 1;
    }
    unsigned long h = 1469598103934665603ul;
    for (const char *c = r->sample_png; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ul;
    for (const char *c = r->base_png; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ul;
    gs->key = (2L << 40) + (long)(h & 0xffffffffffUL);
}

/* One run in a box: its knobs, then its loss chart and its grids (base and
 * latest) side by side when the box is wide, the chart over the grids when not. */
static void draw_run_box(RunsView *rv, int i, Gfx *g, int colour, int y, int x, int h, int w) {
    RunInfo *r = &rv->r[i];
    char line[300];
    panel_box(y, x, h, w, r->name, 0, colour);
    if (!strcmp(r->p.adapter, "lora")) snprintf(line, sizeof line, "lora r%d lr %g %dit %s", r->p.lora_rank, r->p.lr, r->p.iterations, r->p.modules);
    else snprintf(line, sizeof line, "%dx%d lr %g %dit %dshot %s", r->p.a1, r->p.a2, r->p.lr, r->p.iterations, r->p.n_images, r->p.modules);
    mvaddnstr(y + 1, x + 1, line, w - 2);
    GridSet gs;
    run_grids(r, &gs);
    int ih = h - 3, iw = w - 2, gy = y + 2, gx = x + 1, gh = ih, gw = iw;
    if (iw >= 2 * ih) {   /* wide: chart on the left, pictures on the right */
        int cw = iw * 2 / 5;
        chart_draw(&r->loss, gy, gx, ih, cw - 1, colour);
        gx += cw;
        gw = iw - cw;
    } else {
        int ch = ih / 3;
        chart_draw(&r->loss, gy, gx, ch, iw, colour);
        gy += ch;
        gh = ih - ch;
    }
    if (gs.base || gs.n) preview_draw_grids(g, &gs, gy, gx, gh, gw);
    else mvaddnstr(gy, gx, "(no samples)", gw);
}

void runs_draw(RunsView *rv, Gfx *g, int colour) {
    int H = LINES, W = COLS;
    erase();
    attron(title_attr(colour));
    mvhline(0, 0, ' ', W);
    mvprintw(0, 1, "Runs in %.*s  (%d)%s", W - 20, rv->root, rv->n, rv->compare ? "  comparison" : "");
    attroff(title_attr(colour));
    if (rv->compare) {
        int idx[8], m = 0;
        for (int i = 0; i < rv->n && m < 4; i++)
            if (rv->r[i].marked) idx[m++] = i;
        int cw = W / (m ? m : 1);
        for (int k = 0; k < m; k++) draw_run_box(rv, idx[k], g, colour, 1, k * cw, H - 2, k == m - 1 ? W - k * cw : cw);
    } else {
        /* the list as long as it needs (at most half the screen), the current run under it */
        int list_h = rv->n + 1 < (H - 3) / 2 ? rv->n + 1 : (H - 3) / 2;
        if (!rv->n) list_h = H - 3;
        attron(A_BOLD);
        mvprintw(1, 0, "  %-*.*s %-8s %-7s %5s %s %-8s %9s %7s", W > 100 ? 40 : 24, W > 100 ? 40 : 24, "name", "a1xa2",
                 "lr", "iters", "n", "modules", "trainable", "loss");
        attroff(A_BOLD);
        int rows = list_h - 1, top = rv->cur >= rows ? rv->cur - rows + 1 : 0;
        for (int i = 0; i < rows && top + i < rv->n; i++) {
            RunInfo *r = &rv->r[top + i];
            char d[200];
            describe(r, d, sizeof d);
            if (top + i == rv->cur) attron(A_REVERSE);
            mvhline(2 + i, 0, ' ', W);
            mvprintw(2 + i, 0, "%c %-*.*s %s", r->marked ? '*' : ' ', W > 100 ? 40 : 24, W > 100 ? 40 : 24, r->name, d);
            if (top + i == rv->cur) attroff(A_REVERSE);
        }
        if (rv->n) draw_run_box(rv, rv->cur, g, colour, 1 + list_h, 0, H - 2 - list_h, W);
    }
    if (rv->msg[0]) {
        attron(cp(colour, CP_WARN) | A_BOLD);
        mvaddnstr(H - 2, 0, rv->msg, W);
        attroff(cp(colour, CP_WARN) | A_BOLD);
    }
    attron(cp(colour, CP_KEY));
    mvhline(H - 1, 0, ' ', W);
    mvaddnstr(H - 1, 0, rv->compare ? " Esc/c back to the list"
                                     : " j/k move  space mark  c compare marked  p re-open preset  Esc back", W);
    attroff(cp(colour, CP_KEY));
}

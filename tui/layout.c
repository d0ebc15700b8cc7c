/* layout.c — the main screen: title, Inputs / Prompt / Knobs on the left,
 * Status / Loss / Preview on the right, a log line and the key bar. Every
 * box is recomputed from LINES x COLS on each frame, so a resize is just a
 * redraw; the whole frame goes out in one doupdate (studio.c). */
#include <curses.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "studio.h"

unsigned cp(int colour, int pair) { return colour ? (unsigned)COLOR_PAIR(pair) : 0u; }
unsigned title_attr(int colour) { return colour ? (unsigned)COLOR_PAIR(CP_TITLE) : (unsigned)(A_REVERSE | A_BOLD); }

int panel_rows(const Studio *s, PanelId p) {
    switch (p) {
    case PANEL_INPUTS: return s->p.n_images + 1;                 /* + "add image" */
    case PANEL_PROMPT: return 2 + s->p.n_sample_prompts + (s->p.n_sample_prompts < PRESET_MAX_SAMPLES);
    case PANEL_KNOBS: return N_KNOBS;
    default: return 0;
    }
}

static const char *base_name(const char *p) {
    const char *b = strrchr(p, '/');
    return b ? b + 1 : p;
}

void panel_row(const Studio *s, PanelId p, int row, char *label, size_t ln, char *value, size_t vn, int *bad) {
    *bad = 0;
    label[0] = value[0] = 0;
    if (p == PANEL_INPUTS) {
        if (row >= s->p.n_images) { snprintf(label, ln, "+ add image (i)"); return; }
        snprintf(label, ln, "%s", base_name(s->p.images[row]));
        BucketSize b;
        if (s->img_w[row] > 0 && knob_image_bucket(&s->p, &s->pc, s->img_w[row], s->img_h[row], &b) == 0)
            snprintf(value, vn, "%dx%d -> %dx%d", s->img_w[row], s->img_h[row], b.w, b.h);
        else if (s->img_w[row] > 0) snprintf(value, vn, "%dx%d", s->img_w[row], s->img_h[row]);
        else { snprintf(value, vn, "unreadable"); *bad = 1; }
    } else if (p == PANEL_PROMPT) {
        if (row == 0) { snprintf(label, ln, "instance"); snprintf(value, vn, "%s", s->p.instance_prompt); }
        else if (row == 1) { snprintf(label, ln, "class"); snprintf(value, vn, "%s", s->p.class_prompt); }
        else if (row - 2 < s->p.n_sample_prompts) {
            snprintf(label, ln, "sample %d", row - 1);
            snprintf(value, vn, "%s", s->p.sample_prompts[row - 2]);
        } else snprintf(label, ln, "+ add sample prompt");
    } else if (p == PANEL_KNOBS) {
        snprintf(label, ln, "%s", knob_label(row));
        knob_format(&s->p, row, value, vn);
        *bad = !s->pc.ok && (s->pc.bad_knob == row ||
                             (s->pc.bad_knob == KNOB_A1 && row == KNOB_A2 && 0));
        if (row == KNOB_RANK && strcmp(s->p.adapter, "lora")) snprintf(value + strlen(value), vn - strlen(value), " (lora)");
        if (row == KNOB_TEXT_ENCODER && s->pc.te_na[0] && !s->p.text_encoder_adapters)
            snprintf(value, vn, "n/a: %s", s->pc.te_na); /* the knob cannot apply to this model */
        if (row == KNOB_TEXT_ENCODER && s->pc.ok && s->pc.te_trainable) {
            char b[32];
            fmt_thousands(s->pc.te_trainable, b, sizeof b);
            snprintf(value + strlen(value), vn - strlen(value), " (+%s)", b);
        }
    }
}

void panel_box(int y, int x, int h, int w, const char *title, int focused, int colour) {
    if (h < 2 || w < 4) return;
    attr_t a = focused ? (cp(colour, CP_FOCUS) | A_BOLD) : cp(colour, CP_DIM);
    attron(a);
    mvhline(y, x + 1, ACS_HLINE, w - 2);
    mvhline(y + h - 1, x + 1, ACS_HLINE, w - 2);
    mvvline(y + 1, x, ACS_VLINE, h - 2);
    mvvline(y + 1, x + w - 1, ACS_VLINE, h - 2);
    mvaddch(y, x, ACS_ULCORNER);
    mvaddch(y, x + w - 1, ACS_URCORNER);
    mvaddch(y + h - 1, x, ACS_LLCORNER);
    mvaddch(y + h - 1, x + w - 1, ACS_LRCORNER);
    attroff(a);
    attr_t ta = focused ? title_attr(colour) : A_BOLD;
    attron(ta);
    mvprintw(y, x + 2, " %.*s ", w - 6, title);
    attroff(ta);
}

/* Inputs' columns: the widest value (size, bucket) plus a space into *vw;
 * returns the width the whole list needs (name, two spaces, value) */
static int inputs_widths(const Studio *s, int *vw) {
    int need = 16;
    *vw = 0;
    for (int i = 0; i <= s->p.n_images; i++) {
        char label[300], value[600];
        int bad;
        panel_row(s, PANEL_INPUTS, i, label, sizeof label, value, sizeof value, &bad);
        int n = (int)strlen(label) + (value[0] ? 2 + (int)strlen(value) : 0);
        if (n > need) need = n;
        if ((int)strlen(value) + 1 > *vw) *vw = (int)strlen(value) + 1;
    }
    return need;
}

/* one scrolling list panel (Inputs, Prompt, Knobs); Inputs with the images'
 * thumbnails on its right (the list at most 3/5 of the box) when there are
 * graphics and room */
static void list_panel(Studio *s, PanelId p, const char *title, int y, int x, int h, int w) {
    int focused = s->focus == p && s->mode != MODE_RUNS;
    panel_box(y, x, h, w, title, focused, s->colour);
    int rows = h - 2, n = panel_rows(s, p), inner = w - 2;
    if (rows < 1) return;
    int thumbs = 0, vw = 0;
    if (p == PANEL_INPUTS) {
        int need = inputs_widths(s, &vw), lim = inner * 3 / 5;
        if (need > lim) need = lim;
        if (s->gfx.mode != GFX_NONE && s->p.n_images > 0 && inner - need - 1 >= 6) {
            thumbs = inner - need - 1;
            inner = need;
        }
    }
    /* label column: Knobs and Prompt fixed; Inputs the rest after the widest value */
    int lw = p == PANEL_KNOBS ? 14 : p == PANEL_PROMPT ? 9 : inner - vw;
    int *top = &s->top[p], sel = s->sel[p];
    if (sel < *top) *top = sel;
    if (sel >= *top + rows) *top = sel - rows + 1;
    if (*top > n - rows) *top = n - rows > 0 ? n - rows : 0;
    for (int r = 0; r < rows && *top + r < n; r++) {
        int i = *top + r, bad;
        char label[300], value[600];
        panel_row(s, p, i, label, sizeof label, value, sizeof value, &bad);
        int yy = y + 1 + r;
        attr_t a = 0;
        if (focused && i == sel) a |= A_REVERSE;
        if (bad) a |= cp(s->colour, CP_BAD) | A_BOLD;
        attron(a);
        mvhline(yy, x + 1, ' ', inner);
        if (value[0] || p == PANEL_KNOBS) {
            mvprintw(yy, x + 1, "%-*.*s", lw, lw, label);
            mvaddnstr(yy, x + 2 + lw, value, inner - lw - 1 > 0 ? inner - lw - 1 : 0);
        } else mvaddnstr(yy, x + 1, label, inner);   /* "+ add ..." rows: the whole width */
        attroff(a);
    }
    if (n > rows) {   /* scroll hint */
        mvaddstr(y + h - 1, x + w - 6, *top + rows < n ? " \xe2\x86\x93 " : "   ");
        if (*top > 0) mvaddstr(y, x + w - 6, " \xe2\x86\x91 ");
    }
    if (thumbs) preview_draw_thumbs(&s->gfx, s->thumb, s->p.n_images, s->thumb_serial, y + 1, x + w - 1 - thumbs,
                                    rows, thumbs);
}

static const char *state_name(TrainState st) {
    switch (st) {
    case TRAIN_IDLE: return "starting";
    case TRAIN_RUNNING: return "training";
    case TRAIN_PAUSED: return "paused";
    case TRAIN_SAMPLING: return "sampling";
    case TRAIN_DONE: return "done";
    case TRAIN_CANCELLED: return "stopped";
    case TRAIN_FAILED: return "failed";
    }
    return "?";
}

static void fmt_time(double t, char *out, size_t n) {
    if (!isfinite(t) || t < 0) { snprintf(out, n, "--"); return; }
    int v = (int)(t + 0.5);
    if (v >= 3600) snprintf(out, n, "%dh%02dm", v / 3600, v / 60 % 60);
    else snprintf(out, n, "%dm%02ds", v / 60, v % 60);
}

static void status_panel(Studio *s, int y, int x, int h, int w) {
    panel_box(y, x, h, w, "Status", 0, s->colour);
    int in = w - 2, r = y + 1;
    if (h < 3) return;
    const TrainProgress *g = &s->prog;
    int have = s->tr != NULL;
    char eta[16], line[400];
    if (!have) mvprintw(r++, x + 1, "%-.*s", in, "ready: t to train");
    else {
        attr_t a = g->state == TRAIN_FAILED ? cp(s->colour, CP_BAD) : g->state == TRAIN_RUNNING ? cp(s->colour, CP_GOOD) : cp(s->colour, CP_WARN);
        attron(a | A_BOLD);
        snprintf(line, sizeof line, "%-9s step %d/%d", state_name(g->state), g->step, g->total);
        mvaddnstr(r++, x + 1, line, in);
        attroff(a | A_BOLD);
    }
    if (r < y + h - 1) {
        if (have && g->step > 0) snprintf(line, sizeof line, "loss %.4f  avg %.4f  lr %.2g", g->loss, g->loss_ema, g->lr);
        else snprintf(line, sizeof line, "loss --");
        mvaddnstr(r++, x + 1, line, in);
    }
    if (r < y + h - 1) {
        fmt_time(have ? g->eta_s : NAN, eta, sizeof eta);
        snprintf(line, sizeof line, "%.2f it/s  ETA %s  mem %.1f MB", have ? g->it_per_s : 0.0, eta,
                 have ? g->peak_bytes / 1048576.0 : 0.0);
        mvaddnstr(r++, x + 1, line, in);
    }
    if (r < y + h - 1) {
        char t[32], b[32];
        if (s->pc.ok) {
            fmt_thousands(s->pc.trainable, t, sizeof t);
            fmt_thousands(s->pc.base, b, sizeof b);
            snprintf(line, sizeof line, "trainable %s of %s (%.4f%%)", t, b,
                     s->pc.base ? 100.0 * (double)s->pc.trainable / (double)s->pc.base : 0.0);
            mvaddnstr(r++, x + 1, line, in);
        } else {
            attron(cp(s->colour, CP_BAD) | A_BOLD);
            snprintf(line, sizeof line, "invalid: %s", s->pc.err);
            /* the reason may need two lines */
            int len = (int)strlen(line);
            for (int o = 0; o < len && r < y + h - 1; o += in) mvaddnstr(r++, x + 1, line + o, in);
            attroff(cp(s->colour, CP_BAD) | A_BOLD);
        }
    }
    if (r < y + h - 1 && have) {
        if (g->state == TRAIN_DONE && isfinite(g->eval_loss))
            snprintf(line, sizeof line, "eval %.4f -> %.4f  run %s", g->eval_loss_start, g->eval_loss, s->run_dir);
        else snprintf(line, sizeof line, "run %s", s->run_dir);
        mvaddnstr(r++, x + 1, line, in);
    }
}

static void loss_panel(Studio *s, int y, int x, int h, int w) {
    char title[96];
    float lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < s->loss.n; i++)
        if (isfinite(s->loss.v[i])) {
            lo = fminf(lo, s->loss.v[i]);
            hi = fmaxf(hi, s->loss.v[i]);
        }
    if (s->loss.n) snprintf(title, sizeof title, "Loss %.3g..%.3g", lo, hi);
    else snprintf(title, sizeof title, "Loss");
    panel_box(y, x, h, w, title, 0, s->colour);
    chart_draw(&s->loss, y + 1, x + 1, h - 2, w - 2, s->colour);
}

static void preview_panel(Studio *s, int y, int x, int h, int w) {
    char title[64];
    const SampleHist *sh = &s->samples;
    if (sh->n) snprintf(title, sizeof title, "Preview step %d", sh->step[0]);
    else if (sh->base.px) snprintf(title, sizeof title, "Preview base");
    else snprintf(title, sizeof title, "Preview");
    panel_box(y, x, h, w, title, 0, s->colour);
    if (!sh->n && !sh->base.px) {
        if (h > 3) mvaddnstr(y + h / 2, x + 2, "samples appear here", w - 4);
        return;
    }
    GridSet gs;
    hist_grids(sh, &gs);
    preview_draw_grids(&s->gfx, &gs, y + 1, x + 1, h - 2, w - 2);
}

void layout_draw(Studio *s) {
    int H = LINES, W = COLS, col = s->colour;
    erase();
    /* title */
    attron(title_attr(col));
    mvhline(0, 0, ' ', W);
    mvprintw(0, 1, "krona-studio  %.*s%s", W - 30, s->preset_path[0] ? s->preset_path : "(unsaved preset)",
             s->modified ? " [modified]" : "");
    const char *gm = s->gfx.mode == GFX_SIXEL ? "sixel" : s->gfx.mode == GFX_HALFBLOCK ? "half-block" : "no graphics";
    mvaddstr(0, W - (int)strlen(gm) - 1, gm);
    attroff(title_attr(col));

    int top = 1, ch = H - 3;
    int lw = W * 9 / 20 < 60 ? W * 9 / 20 : 60;   /* wide terminals: the rest goes to the pictures */
    if (lw < 30) lw = 30 < W ? 30 : W;
    int rw = W - lw;
    int n_in = s->p.n_images + 1, n_pr = panel_rows(s, PANEL_PROMPT);
    int hp = ch >= 30 ? (n_pr < 6 ? n_pr : 6) + 2 : 5;
    int hi = 6;
    if (ch >= 30) {   /* tall: every input row, and the thumbnails as much height as leaves every knob */
        hi = (n_in < 8 ? n_in : 8) + 2;
        int spare = ch - hp - (N_KNOBS + 2);
        if (s->gfx.mode != GFX_NONE && s->p.n_images > 0 && spare > hi) hi = spare < 12 ? spare : 12;
    }
    int hk = ch - hi - hp;
    list_panel(s, PANEL_INPUTS, "Inputs", top, 0, hi, lw);
    list_panel(s, PANEL_PROMPT, "Prompt", top + hi, 0, hp, lw);
    list_panel(s, PANEL_KNOBS, "Knobs", top + hi + hp, 0, hk, lw);
    if (rw >= 20) {
        int hs = 7, rh = ch - hs;
        status_panel(s, top, lw, hs, rw);
        if (rh >= 22) {   /* tall: the loss over the pictures, which get two thirds */
            int hc = rh / 3;
            loss_panel(s, top + hs, lw, hc, rw);
            preview_panel(s, top + hs + hc, lw, rh - hc, rw);
        } else {
            int cw = rw * 2 / 5;
            loss_panel(s, top + hs, lw, rh, cw);
            preview_panel(s, top + hs, lw + cw, rh, rw - cw);
        }
    }
    /* log line / editor */
    mvhline(H - 2, 0, ' ', W);
    if (s->mode == MODE_EDIT) {
        attron(A_BOLD);
        mvprintw(H - 2, 0, "%s: ", s->edit_label);
        attroff(A_BOLD);
        int lx = (int)strlen(s->edit_label) + 2, room = W - lx - 1;
        int off = s->edit_pos > room ? s->edit_pos - room : 0;
        mvaddnstr(H - 2, lx, s->edit_buf + off, room);
        move(H - 2, lx + s->edit_pos - off);
    } else if (s->mode == MODE_CONFIRM) {
        attron(cp(col, CP_WARN) | A_BOLD);
        mvaddnstr(H - 2, 0, s->confirm_msg, W);
        attroff(cp(col, CP_WARN) | A_BOLD);
    } else {
        attr_t a = s->log_bad ? (cp(col, CP_BAD) | A_BOLD) : 0;
        attron(a);
        mvaddnstr(H - 2, 0, s->log, W);
        attroff(a);
    }
    /* key bar */
    attron(cp(col, CP_KEY));
    mvhline(H - 1, 0, ' ', W);
    mvaddnstr(H - 1, 0,
              W >= 100 ? " t train  space pause  x stop  g sample  o open  s save  i image  d remove  e export  r runs  ? help  q quit"
                       : " t train spc pause x stop g sample o open s save i img r runs ? help q quit",
              W);
    attroff(cp(col, CP_KEY));
}

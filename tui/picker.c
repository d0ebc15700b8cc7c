/* picker.c — a file picker that browses folders and lists only images, only
 * .ini presets, or only models (.safetensors checkpoints and diffusers model
 * folders, which Enter picks rather than opens). Arrows move, Enter opens a
 * folder or picks a file, Backspace on an empty line goes up, typed text
 * filters the list, and a typed path (starting with / ~ or .) is taken as is. */
#include <curses.h>
#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "studio.h"

static int has_ext(const char *name, const char *const *exts) {
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    for (int i = 0; exts[i]; i++)
        if (strcasecmp(dot + 1, exts[i]) == 0) return 1;
    return 0;
}

static int wanted(PickKind k, const char *name) {
    static const char *const img[] = {"png", "jpg", "jpeg", "bmp", "gif", "tga", "ppm", "pgm", "pnm", "psd", "hdr", "pic", NULL};
    static const char *const ini[] = {"ini", NULL};
    static const char *const model[] = {"safetensors", NULL};
    return has_ext(name, k == PICK_IMAGE ? img : k == PICK_PRESET ? ini : model);
}

/* a diffusers model folder: what model = PATH accepts as a folder */
static int is_model_dir(const char *path) {
    char p[2300];
    snprintf(p, sizeof p, "%s/model_index.json", path);
    if (access(p, R_OK) == 0) return 1;
    snprintf(p, sizeof p, "%s/unet/config.json", path);
    return access(p, R_OK) == 0;
}

static const char *const TITLE[] = {"Add image", "Open preset", "Choose model"};
static const char *const WHAT[] = {"(images only)", "(.ini)", "(.safetensors checkpoints, diffusers folders)"};
static const char *const NONE[] = {"(no images here)", "(no presets here)", "(no checkpoints or model folders here)"};

static int cmp_entry(const void *a, const void *b) {
    const PickEntry *x = a, *y = b;
    if (x->is_dir != y->is_dir) return y->is_dir - x->is_dir;
    return strcmp(x->name, y->name);
}

static int matches(const Picker *pk, const PickEntry *e) {
    if (!pk->input[0] || strchr("/~.", pk->input[0])) return 1;
    return strncasecmp(e->name, pk->input, strlen(pk->input)) == 0 || !strcmp(e->name, "..");
}

static void scan(Picker *pk) {
    pk->n = 0;
    pk->cur = pk->top = 0;
    DIR *d = opendir(pk->dir);
    if (!d) { snprintf(pk->msg, sizeof pk->msg, "cannot open folder %s", pk->dir); return; }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || (de->d_name[0] == '.' && strcmp(de->d_name, ".."))) continue;
        char full[2048];
        snprintf(full, sizeof full, "%s/%s", pk->dir, de->d_name);
        struct stat st;
        if (stat(full, &st) != 0) continue;
        int dir = S_ISDIR(st.st_mode);
        if (!dir && !wanted(pk->kind, de->d_name)) continue;
        if (pk->n == pk->cap) {
            int cap = pk->cap ? pk->cap * 2 : 64;
            PickEntry *ne = realloc(pk->e, sizeof(PickEntry) * (size_t)cap);
            if (!ne) break;
            pk->e = ne;
            pk->cap = cap;
        }
        snprintf(pk->e[pk->n].name, sizeof pk->e[pk->n].name, "%s", de->d_name);
        pk->e[pk->n].is_dir = dir;
        pk->e[pk->n].is_model = dir && pk->kind == PICK_MODEL && is_model_dir(full);
        pk->n++;
    }
    closedir(d);
    qsort(pk->e, (size_t)pk->n, sizeof(PickEntry), cmp_entry);
}

static void set_dir(Picker *pk, const char *dir) {
    char real[PATH_MAX];
    if (realpath(dir, real)) snprintf(pk->dir, sizeof pk->dir, "%s", real);
    else snprintf(pk->dir, sizeof pk->dir, "%s", dir);
    pk->input[0] = 0;
    scan(pk);
}

void picker_open(Picker *pk, PickKind kind, const char *start_dir) {
    PickEntry *e = pk->e;
    int cap = pk->cap;
    memset(pk, 0, sizeof *pk);
    pk->e = e;
    pk->cap = cap;
    pk->kind = kind;
    set_dir(pk, start_dir && start_dir[0] && access(start_dir, R_OK) == 0 ? start_dir : ".");
}

void picker_free(Picker *pk) {
    free(pk->e);
    pk->e = NULL;
    pk->n = pk->cap = 0;
}

/* visible entries (after the filter) in order; returns count, idx[] filled */
static int visible(const Picker *pk, int *idx) {
    int m = 0;
    for (int i = 0; i < pk->n; i++)
        if (matches(pk, &pk->e[i])) idx[m++] = i;
    return m;
}

int picker_key(Picker *pk, int ch, char *out, size_t n) {
    int *idx = malloc(sizeof(int) * (size_t)(pk->n + 1));
    if (!idx) return -1;
    int m = visible(pk, idx), rc = 0;
    size_t len = strlen(pk->input);
    pk->msg[0] = 0;
    if (ch == 27) rc = -1;
    else if (ch == KEY_UP) { if (pk->cur > 0) pk->cur--; }
    else if (ch == KEY_DOWN) { if (pk->cur < m - 1) pk->cur++; }
    else if (ch == KEY_PPAGE) { pk->cur -= 10; if (pk->cur < 0) pk->cur = 0; }
    else if (ch == KEY_NPAGE) { pk->cur += 10; if (pk->cur > m - 1) pk->cur = m > 0 ? m - 1 : 0; }
    else if (ch == KEY_BACKSPACE || ch == 127 || ch == 8) {
        if (len) pk->input[len - 1] = 0;
        else {
            char up[1100];
            snprintf(up, sizeof up, "%s/..", pk->dir);
            set_dir(pk, up);
        }
        pk->cur = 0;
    } else if (ch == '\n' || ch == '\r' || ch == KEY_ENTER) {
        char path[2200];
        if (pk->input[0] && strchr("/~.", pk->input[0])) {
            if (pk->input[0] == '~') snprintf(path, sizeof path, "%s%s", getenv("HOME") ? getenv("HOME") : "", pk->input + 1);
            else if (pk->input[0] == '/') snprintf(path, sizeof path, "%s", pk->input);
            else snprintf(path, sizeof path, "%s/%s", pk->dir, pk->input);
        } else if (m > 0 && pk->cur < m) {
            snprintf(path, sizeof path, "%s/%s", pk->dir, pk->e[idx[pk->cur]].name);
        } else {
            snprintf(pk->msg, sizeof pk->msg, "nothing matches '%s'", pk->input);
            free(idx);
            return 0;
        }
        struct stat st;
        if (stat(path, &st) != 0) snprintf(pk->msg, sizeof pk->msg, "%s: no such file or folder", path);
        else if (S_ISDIR(st.st_mode) && !(pk->kind == PICK_MODEL && is_model_dir(path))) set_dir(pk, path);
        else {
            snprintf(out, n, "%s", path);
            rc = 1;
        }
    } else if (ch >= 32 && ch < 127 && len + 1 < sizeof pk->input) {
        pk->input[len] = (char)ch;
        pk->input[len + 1] = 0;
        pk->cur = 0;
    }
    free(idx);
    return rc;
}

void picker_draw(const Picker *pk, int colour) {
    int H = LINES, W = COLS;
    erase();
    attron(title_attr(colour));
    mvhline(0, 0, ' ', W);
    mvprintw(0, 1, "%s  %s", TITLE[pk->kind], WHAT[pk->kind]);
    attroff(title_attr(colour));
    mvprintw(1, 1, "folder: %.*s", W - 10, pk->dir);
    mvprintw(2, 1, "> %s", pk->input);
    int *idx = malloc(sizeof(int) * (size_t)(pk->n + 1));
    if (!idx) return;
    int m = visible(pk, idx);
    int rows = H - 6, top = 0;
    if (rows < 1) rows = 1;
    if (pk->cur >= rows) top = pk->cur - rows + 1;
    for (int i = 0; i < rows && top + i < m; i++) {
        const PickEntry *e = &pk->e[idx[top + i]];
        int sel = top + i == pk->cur;
        if (sel) attron(A_REVERSE);
        mvprintw(4 + i, 2, "%s%-.*s%s%s", e->is_dir ? "[" : " ", W - 20, e->name, e->is_dir ? "]" : "",
                 e->is_model ? "  diffusers" : "");
        if (sel) attroff(A_REVERSE);
    }
    if (m == 0) mvaddstr(4, 2, NONE[pk->kind]);
    free(idx);
    if (pk->msg[0]) {
        attron(cp(colour, CP_BAD) | A_BOLD);
        mvaddnstr(H - 2, 1, pk->msg, W - 2);
        attroff(cp(colour, CP_BAD) | A_BOLD);
    }
    attron(cp(colour, CP_KEY));
    mvhline(H - 1, 0, ' ', W);
    mvaddnstr(H - 1, 1, "Up/Down move  Enter open/pick  Bksp up  type to filter or a path (/ ~ .)  Esc cancel", W - 2);
    attroff(cp(colour, CP_KEY));
}

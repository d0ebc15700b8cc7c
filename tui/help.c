/* help.c — the ? overlay: every key, in a centred box over the studio. */
#include <curses.h>
#include <string.h>

#include "studio.h"

static const char *const HELP[] = {
    "Move      arrows / h j k l   Tab / Shift-Tab next / previous panel",
    "Edit      Enter edits the field (Esc cancels)",
    "Knobs     + / - change   > / < or Shift-Right / Shift-Left: bigger step",
    "Train     t start   space pause/resume   x stop   g sample now",
    "Presets   o open .ini   s save (asks before overwrite)",
    "Images    i add (file picker, images only)   d remove selected",
    "Model     m choose a checkpoint (.safetensors) or diffusers folder",
    "Adapter   e export the trained adapter (.safetensors)",
    "Runs      r runs view: space mark, c compare, p re-open preset",
    "Screen    Ctrl-L redraw   ? this help   q quit (asks while training)",
    "",
    "Red knobs: the combination cannot train; the Status panel says why.",
    "State and user presets: $XDG_CONFIG_HOME/krona-studio/",
    "",
    "press any key to close",
};

void help_draw(int colour) {
    int n = (int)(sizeof HELP / sizeof HELP[0]), w = 0;
    for (int i = 0; i < n; i++)
        if ((int)strlen(HELP[i]) > w) w = (int)strlen(HELP[i]);
    w += 4;
    if (w > COLS) w = COLS;
    int h = n + 4 > LINES ? LINES : n + 4;
    int y = (LINES - h) / 2, x = (COLS - w) / 2;
    for (int r = 0; r < h; r++) mvhline(y + r, x, ' ', w);
    attron(cp(colour, CP_TITLE));
    mvhline(y, x, ACS_HLINE, w);
    mvhline(y + h - 1, x, ACS_HLINE, w);
    mvvline(y, x, ACS_VLINE, h);
    mvvline(y, x + w - 1, ACS_VLINE, h);
    mvaddch(y, x, ACS_ULCORNER);
    mvaddch(y, x + w - 1, ACS_URCORNER);
    mvaddch(y + h - 1, x, ACS_LLCORNER);
    mvaddch(y + h - 1, x + w - 1, ACS_LRCORNER);
    attroff(cp(colour, CP_TITLE));
    attron(title_attr(colour));
    mvaddstr(y, x + 2, " Keys ");
    attroff(title_attr(colour));
    for (int i = 0; i < n && i < h - 4; i++) mvaddnstr(y + 2 + i, x + 2, HELP[i], w - 4);
}

/* progress.c — the one-line progress bar of `train --headless` on a terminal
 * (see cli.h): "\r", the line, clear to its end; as wide as the terminal. */
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int term_cols(void) {
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    return 80;
}

void cli_bar_init(CliBar *b) {
    memset(b, 0, sizeof *b);
    b->tty = isatty(STDOUT_FILENO);
}

/* "step  120/500 [=======>      ] loss 0.1234  3.45 it/s  ETA 1m50s", in at
 * most cols - 1 characters (the last column would wrap on some terminals).
 * The bar's width depends on the terminal only, so it does not jump as the
 * text changes; below 10 columns it goes. */
#define BAR_TEXT_ROOM 36

static void draw(CliBar *b) {
    int cols = term_cols() - 1;
    char head[48], line[512];
    int digits = snprintf(head, sizeof head, "%d", b->total);
    snprintf(head, sizeof head, "step %*d/%d", digits, b->step, b->total);
    int inner = cols - (int)strlen(head) - 4 - BAR_TEXT_ROOM;
    if (inner > 40) inner = 40;
    int n;
    if (inner >= 10) {
        int fill = b->total > 0 ? (int)((long long)inner * b->step / b->total) : 0;
        n = snprintf(line, sizeof line, "%s [", head);
        for (int i = 0; i < inner; i++) line[n++] = i < fill ? '=' : i == fill ? '>' : ' ';
        n += snprintf(line + n, sizeof line - (size_t)n, "] %s", b->text);
    } else {
        n = snprintf(line, sizeof line, "%s  %s", head, b->text);
    }
    if (n > cols) line[cols > 0 ? cols : 0] = 0;
    printf("\r%s\033[K", line);
    fflush(stdout);
    b->shown = 1;
    b->last_draw = now_s();
}

void cli_bar_update(CliBar *b, int step, int total, const char *text, int force) {
    if (!b->tty) return;
    b->step = step;
    b->total = total;
    snprintf(b->text, sizeof b->text, "%s", text);
    if (force || !b->shown || now_s() - b->last_draw >= 0.1) draw(b);
}

void cli_bar_line(CliBar *b, const char *line) {
    if (b->tty && b->shown) {
        printf("\r\033[K%s\n", line);
        draw(b);
    } else {
        printf("%s\n", line);
        fflush(stdout);
    }
}

void cli_bar_end(CliBar *b) {
    if (!b->shown) return;
    printf("\n");
    fflush(stdout);
    b->shown = 0;
}

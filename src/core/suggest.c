/* suggest.c — "did you mean" (see suggest.h). */
#include "core/suggest.h"

#include <ctype.h>
#include <string.h>

int suggest_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 63 || lb > 63) return 1000;
    int d[64][64];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int ai = tolower((unsigned char)a[i - 1]), bj = tolower((unsigned char)b[j - 1]);
            int m = d[i - 1][j - 1] + (ai != bj);
            if (d[i - 1][j] + 1 < m) m = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < m) m = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && ai == tolower((unsigned char)b[j - 2]) &&
                tolower((unsigned char)a[i - 2]) == bj && d[i - 2][j - 2] + 1 < m)
                m = d[i - 2][j - 2] + 1;
            d[i][j] = m;
        }
    return d[la][lb];
}

static const char *undashed(const char *s) {
    while (*s == '-') s++;
    return s;
}

const char *suggest_closest(const char *typed, const char *const *names, int n) {
    const char *t = undashed(typed), *best = NULL;
    int bd = 1000;
    for (int i = 0; i < n; i++) {
        if (!names[i]) continue;
        int d = suggest_distance(t, undashed(names[i]));
        if (d < bd) { bd = d; best = names[i]; }
    }
    int len = (int)strlen(t);
    int limit = len <= 4 ? 1 : len / 3 + 1;
    return len > 0 && bd <= limit ? best : NULL;
}

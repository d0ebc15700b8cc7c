/* fmt.c — number formatting the front ends share. */
#include "core/fmt.h"

#include <stdio.h>
#include <string.h>

void fmt_bytes(double b, char *out, size_t n) {
    if (b < 1e3) snprintf(out, n, "%.0f B", b);
    else if (b < 1e6) snprintf(out, n, "%.1f kB", b / 1e3);
    else if (b < 1e9) snprintf(out, n, "%.1f MB", b / 1e6);
    else snprintf(out, n, "%.1f GB", b / 1e9);
}

void fmt_thousands(int64_t v, char *out, size_t n) {
    char raw[32];
    snprintf(raw, sizeof raw, "%lld", (long long)(v < 0 ? -v : v));
    size_t len = strlen(raw), o = 0;
    if (v < 0 && o + 1 < n) out[o++] = '-';
    for (size_t i = 0; i < len && o + 2 < n; i++) {
        out[o++] = raw[i];
        if ((len - 1 - i) % 3 == 0 && i + 1 < len) out[o++] = ',';
    }
    out[o] = 0;
}

/* s shown in q quotes (q = "" or "'"), shortened past max bytes */
static void shorten(const char *s, size_t max, const char *q, char *out, size_t n) {
    size_t len = strlen(s);
    if (len <= max) { snprintf(out, n, "%s%s%s", q, s, q); return; }
    size_t cut = max;
    while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80) cut--;   /* not inside a UTF-8 character */
    snprintf(out, n, "%s%.*s\u2026%s (%zu characters)", q, (int)cut, s, q, len);
}

void fmt_shorten(const char *s, size_t max, char *out, size_t n) { shorten(s, max, "", out, n); }
void fmt_quoted(const char *s, size_t max, char *out, size_t n) { shorten(s, max, "'", out, n); }

/* fmt.h — number formatting the front ends share. */
#ifndef KRONA_FMT_H
#define KRONA_FMT_H

#include <stddef.h>
#include <stdint.h>

/* 1234567 -> "1,234,567" (truncated to n-1 characters) */
void fmt_thousands(int64_t v, char *out, size_t n);

/* bytes as people read them: "512 B", "31.7 MB", "5.8 GB" (decimal units) */
void fmt_bytes(double bytes, char *out, size_t n);

/* A value for an error message, so the reason after it always shows: s when
 * it has at most max bytes, else its first max bytes (cut at a character
 * boundary), an ellipsis and its length: "aaaa… (10000 characters)". */
void fmt_shorten(const char *s, size_t max, char *out, size_t n);
/* The same in single quotes: 'value', or 'aaaa…' (10000 characters). */
void fmt_quoted(const char *s, size_t max, char *out, size_t n);

#endif

/* json.c — strict JSON (RFC 8259) into a tree. Recursive descent with a depth
 * limit so hostile headers cannot blow the stack; strings are validated UTF-8,
 * \uXXXX escapes (with surrogate pairs) become UTF-8. */
#include "formats/json.h"
#include "core/fsutil.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 128

typedef struct {
    const char *s;
    size_t len, pos;
    int depth;
    char *err;
    size_t errlen;
} Parser;

static int fail(Parser *p, size_t at, const char *fmt, ...) {
    if (p->err && p->errlen) {
        int k = snprintf(p->err, p->errlen, "at byte %zu: ", at);
        if (k >= 0 && (size_t)k < p->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(p->err + k, p->errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    return -1;
}

static void skip_ws(Parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

/* "found 'x'" / "found end of input" for error messages */
static const char *found(Parser *p, char *buf) {
    if (p->pos >= p->len) return "end of input";
    unsigned char c = (unsigned char)p->s[p->pos];
    if (c >= 0x20 && c < 0x7f) snprintf(buf, 8, "'%c'", c);
    else snprintf(buf, 8, "0x%02x", c);
    return buf;
}

static void value_free(JsonValue *v) {
    if (!v) return;
    free(v->string);
    for (int i = 0; i < v->n; i++) {
        value_free(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
}

static int parse_value(Parser *p, JsonValue *out);

static int hex4(Parser *p, uint32_t *u) {
    if (p->len - p->pos < 4) return fail(p, p->pos, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos + i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return fail(p, p->pos + i, "invalid hex digit in \\u escape");
    }
    p->pos += 4;
    *u = v;
    return 0;
}

static size_t put_utf8(char *o, uint32_t u) {
    if (u < 0x80) { o[0] = (char)u; return 1; }
    if (u < 0x800) { o[0] = (char)(0xC0 | (u >> 6)); o[1] = (char)(0x80 | (u & 0x3F)); return 2; }
    if (u < 0x10000) {
        o[0] = (char)(0xE0 | (u >> 12)); o[1] = (char)(0x80 | ((u >> 6) & 0x3F));
        o[2] = (char)(0x80 | (u & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | (u >> 18)); o[1] = (char)(0x80 | ((u >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((u >> 6) & 0x3F)); o[3] = (char)(0x80 | (u & 0x3F));
    return 4;
}

/* Length of a valid UTF-8 sequence starting at s (n bytes available), 0 if invalid
 * (overlongs, surrogates and code points above U+10FFFF are invalid). */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t k; uint32_t u, min;
    if ((c & 0xE0) == 0xC0) { k = 2; u = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { k = 3; u = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { k = 4; u = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < k) return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        u = (u << 6) | (s[i] & 0x3F);
    }
    if (u < min || u > 0x10FFFF || (u >= 0xD800 && u <= 0xDFFF)) return 0;
    return k;
}

/* p->pos at the opening quote. The result is never longer than the source. */
static int parse_string(Parser *p, char **out) {
    size_t start = p->pos++;
    size_t end = p->pos;
    /* find the closing quote first to size the buffer */
    while (end < p->len && p->s[end] != '"') end += (p->s[end] == '\\') ? 2 : 1;
    if (end >= p->len) return fail(p, start, "unterminated string");
    char *o = malloc(end - p->pos + 1);
    if (!o) return fail(p, start, "out of memory");
    size_t k = 0;
    while (p->pos < end) {
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c < 0x20) { free(o); return fail(p, p->pos, "control character 0x%02x in string (escape it)", c); }
        if (c != '\\') {
            size_t n = utf8_len((const unsigned char *)p->s + p->pos, end - p->pos);
            if (!n) { free(o); return fail(p, p->pos, "invalid UTF-8 in string"); }
            memcpy(o + k, p->s + p->pos, n);
            k += n; p->pos += n;
            continue;
        }
        size_t esc = p->pos;
        char e = p->s[++p->pos];
        p->pos++;
        switch (e) {
        case '"': o[k++] = '"'; break;
        case '\\': o[k++] = '\\'; break;
        case '/': o[k++] = '/'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'n': o[k++] = '\n'; break;
        case 'r': o[k++] = '\r'; break;
        case 't': o[k++] = '\t'; break;
        case 'u': {
            uint32_t u;
            if (hex4(p, &u)) { free(o); return -1; }
            if (u >= 0xDC00 && u <= 0xDFFF) { free(o); return fail(p, esc, "unpaired low surrogate \\u%04X", u); }
            if (u >= 0xD800 && u <= 0xDBFF) {
                uint32_t lo;
                if (p->pos + 1 >= end || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                    free(o); return fail(p, esc, "unpaired high surrogate \\u%04X", u);
                }
                p->pos += 2;
                if (hex4(p, &lo)) { free(o); return -1; }
                if (lo < 0xDC00 || lo > 0xDFFF) { free(o); return fail(p, esc, "high surrogate \\u%04X not followed by a low surrogate", u); }
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (u == 0) { free(o); return fail(p, esc, "\\u0000 is not supported in strings"); }
            /* 6 escape chars make at most 3 bytes, 12 make 4: fits in place */
            k += put_utf8(o + k, u);
            break;
        }
        default:
            free(o);
            if (esc + 1 >= end) return fail(p, esc, "unterminated string");
            return fail(p, esc, "invalid escape '\\%c'", e);
        }
    }
    o[k] = 0;
    p->pos = end + 1;
    *out = o;
    return 0;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int parse_number(Parser *p, JsonValue *out) {
    size_t start = p->pos, i = p->pos;
    const char *s = p->s;
    if (i < p->len && s[i] == '-') i++;
    if (i >= p->len || !is_digit(s[i])) return fail(p, i, "invalid number (expected a digit)");
    if (s[i] == '0') {
        i++;
        if (i < p->len && is_digit(s[i])) return fail(p, start, "invalid number (leading zero)");
    } else {
        while (i < p->len && is_digit(s[i])) i++;
    }
    if (i < p->len && s[i] == '.') {
        i++;
        if (i >= p->len || !is_digit(s[i])) return fail(p, i, "invalid number (expected a digit after '.')");
        while (i < p->len && is_digit(s[i])) i++;
    }
    if (i < p->len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < p->len && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= p->len || !is_digit(s[i])) return fail(p, i, "invalid number (expected an exponent)");
        while (i < p->len && is_digit(s[i])) i++;
    }
    /* the text is not NUL-terminated: copy the validated span */
    char small[64], *buf = small;
    size_t n = i - start;
    if (n >= sizeof small && !(buf = malloc(n + 1))) return fail(p, start, "out of memory");
    memcpy(buf, s + start, n);
    buf[n] = 0;
    double v = strtod_l(buf, NULL, fs_c_locale());
    if (buf != small) free(buf);
    if (isinf(v)) return fail(p, start, "number out of range");
    out->type = JSON_NUMBER;
    out->number = v;
    p->pos = i;
    return 0;
}

static int literal(Parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) {
        char b[8];
        return fail(p, p->pos, "unexpected %s (expected a value)", found(p, b));
    }
    p->pos += n;
    return 0;
}

static int grow(JsonValue *v, int *cap, int with_keys) {
    if (v->n < *cap) return 0;
    int nc = *cap ? *cap * 2 : 4;
    JsonValue *ni = realloc(v->items, (size_t)nc * sizeof(JsonValue));
    if (!ni) return -1;
    v->items = ni;
    if (with_keys) {
        char **nk = realloc(v->keys, (size_t)nc * sizeof(char *));
        if (!nk) return -1;
        v->keys = nk;
    }
    *cap = nc;
    return 0;
}

static int parse_array(Parser *p, JsonValue *out) {
    size_t open = p->pos++;
    int cap = 0;
    out->type = JSON_ARRAY;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') { p->pos++; return 0; }
    for (;;) {
        if (grow(out, &cap, 0)) return fail(p, p->pos, "out of memory");
        JsonValue *it = &out->items[out->n];
        memset(it, 0, sizeof *it);
        if (parse_value(p, it)) { value_free(it); return -1; }
        out->n++;
        skip_ws(p);
        if (p->pos >= p->len) return fail(p, open, "unterminated array");
        char c = p->s[p->pos++];
        if (c == ']') return 0;
        if (c != ',') { p->pos--; char b[8]; return fail(p, p->pos, "expected ',' or ']' in array, found %s", found(p, b)); }
    }
}

static int parse_object(Parser *p, JsonValue *out) {
    size_t open = p->pos++;
    int cap = 0;
    out->type = JSON_OBJECT;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') { p->pos++; return 0; }
    for (;;) {
        skip_ws(p);
        char b[8];
        if (p->pos >= p->len) return fail(p, open, "unterminated object");
        if (p->s[p->pos] != '"') return fail(p, p->pos, "expected a string key in object, found %s", found(p, b));
        char *key;
        if (parse_string(p, &key)) return -1;
        skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != ':') { free(key); return fail(p, p->pos, "expected ':' after object key, found %s", found(p, b)); }
        p->pos++;
        if (grow(out, &cap, 1)) { free(key); return fail(p, p->pos, "out of memory"); }
        JsonValue *it = &out->items[out->n];
        memset(it, 0, sizeof *it);
        out->keys[out->n] = key;
        if (parse_value(p, it)) { value_free(it); free(key); return -1; }
        out->n++;
        skip_ws(p);
        if (p->pos >= p->len) return fail(p, open, "unterminated object");
        char c = p->s[p->pos++];
        if (c == '}') return 0;
        if (c != ',') { p->pos--; return fail(p, p->pos, "expected ',' or '}' in object, found %s", found(p, b)); }
    }
}

static int parse_value(Parser *p, JsonValue *out) {
    skip_ws(p);
    if (p->pos >= p->len) return fail(p, p->pos, "unexpected end of input (expected a value)");
    char c = p->s[p->pos];
    switch (c) {
    case '{': case '[': {
        if (++p->depth > JSON_MAX_DEPTH) return fail(p, p->pos, "nesting deeper than %d levels", JSON_MAX_DEPTH);
        int r = c == '{' ? parse_object(p, out) : parse_array(p, out);
        p->depth--;
        return r;
    }
    case '"': out->type = JSON_STRING; return parse_string(p, &out->string);
    case 't': out->type = JSON_BOOL; out->boolean = 1; return literal(p, "true");
    case 'f': out->type = JSON_BOOL; out->boolean = 0; return literal(p, "false");
    case 'n': out->type = JSON_NULL; return literal(p, "null");
    default:
        if (c == '-' || is_digit(c)) return parse_number(p, out);
        char b[8];
        return fail(p, p->pos, "unexpected %s (expected a value)", found(p, b));
    }
}

JsonValue *json_parse(const char *text, size_t len, char *err, size_t errlen) {
    Parser p = { text, len, 0, 0, err, errlen };
    JsonValue *v = calloc(1, sizeof *v);
    if (!v) { fail(&p, 0, "out of memory"); return NULL; }
    if (!text) len = p.len = 0;
    if (parse_value(&p, v)) { json_free(v); return NULL; }
    skip_ws(&p);
    if (p.pos < p.len) {
        char b[8];
        fail(&p, p.pos, "unexpected %s after the JSON value", found(&p, b));
        json_free(v);
        return NULL;
    }
    return v;
}

void json_free(JsonValue *v) {
    if (!v) return;
    value_free(v);
    free(v);
}

const JsonValue *json_get(const JsonValue *v, const char *key) {
    if (!v || v->type != JSON_OBJECT || !key) return NULL;
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->keys[i], key) == 0) return &v->items[i];
    return NULL;
}

/* snprintf-style: writes the quoted literal at buf (truncated, NUL-terminated
 * when cap > 0) and returns the length the whole literal needs. */
size_t json_escape(char *buf, size_t cap, const char *s) {
    size_t k = 0;
#define PUT(ch) do { if (k + 1 < cap) buf[k] = (ch); k++; } while (0)
    PUT('"');
    for (const unsigned char *q = (const unsigned char *)s; q && *q; q++) {
        unsigned char c = *q;
        const char *e = NULL;
        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        }
        char u[8];
        if (!e && c < 0x20) { snprintf(u, sizeof u, "\\u%04x", c); e = u; }
        if (e) for (; *e; e++) PUT(*e);
        else PUT((char)c);
    }
    PUT('"');
#undef PUT
    if (cap) buf[k < cap ? k : cap - 1] = 0;
    return k;
}

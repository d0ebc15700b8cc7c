/* tokenizer.c — CLIP BPE (as OpenAI's simple_tokenizer) and the byte tokenizer.
 *
 * Pre-tokenisation implements CLIP's regex by hand:
 *   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * findall-style: at each position the first alternative that matches wins,
 * whitespace matches none and is skipped.
 *
 * Approximation: \p{L} and \p{N} beyond ASCII come from a short table of
 * ranges (Latin-1, Latin Extended A/B, IPA, Greek, Cyrillic, Armenian, Hebrew,
 * Arabic, Devanagari, Thai, Georgian, Hangul, kana, CJK ideographs, fullwidth
 * forms; Latin-1 superscripts and fractions, Arabic/Devanagari/fullwidth
 * digits, circled numbers, Roman numerals). Letters of scripts not listed are
 * treated as punctuation, and combining marks (NFD text, most Indic vowel
 * signs) always are, as in Unicode. English and Western European prompts in NFC
 * tokenise exactly as the reference. */
#include "models/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "core/fsutil.h"
#include "formats/json.h"

enum { TOK_BYTES = 0, TOK_CLIP = 1 };
#define CLIP_MAX_MERGES (49152 - 256 - 2)

struct Tokenizer {
    int kind;
    int vocab, bos, eos, pad;
    /* CLIP only */
    char **strs;        /* id -> token text (byte-unicode form) */
    char *arena;        /* storage of strs */
    int32_t *str_tab;   /* open addressing: token text -> id, -1 empty */
    uint32_t str_mask;
    uint64_t *pair_key; /* open addressing: (left id, right id) -> merge */
    int32_t *pair_rank; /* -1 empty */
    int32_t *pair_out;
    uint32_t pair_mask;
    int32_t byte_id[256];   /* id of byte b as a token inside a word */
    int32_t byte_w_id[256]; /* id of byte b + "</w>" (end of a word) */
};


/* ---------------- Unicode helpers ---------------- */

static int is_space(uint32_t c)
{
    return c == ' ' || (c >= 0x09 && c <= 0x0D) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

typedef struct { uint32_t lo, hi; } Range;

static const Range letter_ranges[] = {
    {0xAA, 0xAA}, {0xB5, 0xB5}, {0xBA, 0xBA}, {0xC0, 0xD6}, {0xD8, 0xF6},
    {0xF8, 0x2C1}, {0x2C6, 0x2D1}, {0x2E0, 0x2E4}, {0x2EC, 0x2EC}, {0x2EE, 0x2EE},
    {0x370, 0x374}, {0x376, 0x377}, {0x37A, 0x37D}, {0x37F, 0x37F}, {0x386, 0x386},
    {0x388, 0x3F5}, {0x3F7, 0x481}, {0x48A, 0x52F}, {0x531, 0x556}, {0x559, 0x559},
    {0x560, 0x588}, {0x5D0, 0x5EA}, {0x5EF, 0x5F2}, {0x620, 0x64A}, {0x66E, 0x66F},
    {0x671, 0x6D3}, {0x6D5, 0x6D5}, {0x904, 0x939}, {0x93D, 0x93D}, {0x950, 0x950},
    {0x958, 0x961}, {0x971, 0x980}, {0xE01, 0xE30}, {0xE32, 0xE33}, {0xE40, 0xE46},
    {0x10A0, 0x10C5}, {0x10D0, 0x10FA}, {0x10FC, 0x10FF}, {0x1100, 0x11FF},
    {0x1E00, 0x1F15}, {0x1F18, 0x1F1D}, {0x1F20, 0x1F45}, {0x1F48, 0x1F4D},
    {0x1F50, 0x1F57}, {0x1F59, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC},
    {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB},
    {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC}, {0x2071, 0x2071},
    {0x207F, 0x207F}, {0x2090, 0x209C}, {0x3005, 0x3006}, {0x3031, 0x3035},
    {0x303B, 0x303C}, {0x3041, 0x3096}, {0x309D, 0x309F}, {0x30A1, 0x30FA},
    {0x30FC, 0x30FF}, {0x3105, 0x312F}, {0x3131, 0x318E}, {0x31F0, 0x31FF},
    {0x3400, 0x4DBF}, {0x4E00, 0x9FFF}, {0xA000, 0xA48C}, {0xAC00, 0xD7A3},
    {0xF900, 0xFA6D}, {0xFA70, 0xFAD9}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A},
    {0xFF66, 0xFFBE}, {0xFFC2, 0xFFDC}, {0x20000, 0x2A6DF}, {0x2A700, 0x2EBE0},
    {0x2F800, 0x2FA1D}, {0x30000, 0x3134A},
};

static const Range number_ranges[] = {
    {0xB2, 0xB3}, {0xB9, 0xB9}, {0xBC, 0xBE}, {0x660, 0x669}, {0x6F0, 0x6F9},
    {0x966, 0x96F}, {0xE50, 0xE59}, {0x2070, 0x2070}, {0x2074, 0x2079},
    {0x2080, 0x2089}, {0x2150, 0x2182}, {0x2185, 0x2189}, {0x2460, 0x249B},
    {0x24EA, 0x24FF}, {0x2776, 0x2793}, {0x3007, 0x3007}, {0x3021, 0x3029},
    {0x3038, 0x303A}, {0x3192, 0x3195}, {0x3220, 0x3229}, {0x3248, 0x324F},
    {0x3251, 0x325F}, {0x3280, 0x3289}, {0x32B1, 0x32BF}, {0xFF10, 0xFF19},
};

static int in_ranges(uint32_t c, const Range *r, int n)
{
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < r[mid].lo) hi = mid - 1;
        else if (c > r[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

static int is_letter(uint32_t c)
{
    if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    return in_ranges(c, letter_ranges, (int)(sizeof letter_ranges / sizeof *letter_ranges));
}

static int is_number(uint32_t c)
{
    if (c < 0x80) return c >= '0' && c <= '9';
    return in_ranges(c, number_ranges, (int)(sizeof number_ranges / sizeof *number_ranges));
}

/* Simple lower-case mapping for the common alphabets (one code point to one;
 * U+0130 'İ' is handled by the caller since it lowers to two). */
static uint32_t to_lower(uint32_t c)
{
    if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
    if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
    if (c < 0x100) return c;
    if (c <= 0x137) return (c % 2 == 0 && c != 0x130) ? c + 1 : c;
    if (c >= 0x139 && c <= 0x148) return (c % 2 == 1) ? c + 1 : c;
    if (c >= 0x14A && c <= 0x177) return (c % 2 == 0) ? c + 1 : c;
    if (c == 0x178) return 0xFF;
    if (c >= 0x179 && c <= 0x17E) return (c % 2 == 1) ? c + 1 : c;
    if (c == 0x386) return 0x3AC;
    if (c >= 0x388 && c <= 0x38A) return c + 37;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 63;
    if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 32;
    if (c >= 0x400 && c <= 0x40F) return c + 80;
    if (c >= 0x410 && c <= 0x42F) return c + 32;
    if (c >= 0x460 && c <= 0x481) return (c % 2 == 0) ? c + 1 : c;
    if (c >= 0x48A && c <= 0x4BF) return (c % 2 == 0) ? c + 1 : c;
    if (c == 0x4C0) return 0x4CF;
    if (c >= 0x4C1 && c <= 0x4CE) return (c % 2 == 1) ? c + 1 : c;
    if (c >= 0x4D0 && c <= 0x52F) return (c % 2 == 0) ? c + 1 : c;
    if (c >= 0x531 && c <= 0x556) return c + 48;
    if (c >= 0x10A0 && c <= 0x10C5) return c + 7264;
    if (c >= 0x1E00 && c <= 0x1E95) return (c % 2 == 0) ? c + 1 : c;
    if (c == 0x1E9E) return 0xDF;
    if (c >= 0x1EA0 && c <= 0x1EFF) return (c % 2 == 0) ? c + 1 : c;
    if (c >= 0xFF21 && c <= 0xFF3A) return c + 32;
    return c;
}

/* Strict UTF-8 decoder: returns bytes consumed (1..4) or 0 when invalid. */
static int utf8_next(const unsigned char *s, uint32_t *cp)
{
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    int n;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0) { n = 2; v = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { n = 3; v = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { n = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0; /* also stops at the NUL */
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return n;
}

static int utf8_put(uint32_t c, unsigned char *o)
{
    if (c < 0x80) { o[0] = (unsigned char)c; return 1; }
    if (c < 0x800) { o[0] = (unsigned char)(0xC0 | (c >> 6)); o[1] = (unsigned char)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (c >> 12)); o[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (c & 0x3F)); return 3;
    }
    o[0] = (unsigned char)(0xF0 | (c >> 18)); o[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F)); o[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* Decode, lower-case, collapse whitespace runs to one space, trim.
 * *out is malloc'd (code points); -1 on invalid UTF-8 or OOM. */
static int normalize(const char *text, uint32_t **out, int *n_out, char *err, size_t errlen)
{
    size_t len = strlen(text);
    uint32_t *cp = malloc((2 * len + 1) * sizeof *cp); /* 'İ' doubles */
    if (!cp) { err_set(err, errlen, "out of memory normalising a %ld-byte prompt", (long)len); return -1; }
    const unsigned char *s = (const unsigned char *)text;
    int n = 0, space = 0;
    size_t i = 0;
    while (i < len) {
        uint32_t c;
        int k = utf8_next(s + i, &c);
        if (!k) {
            free(cp);
            err_set(err, errlen, "prompt is not valid UTF-8 at byte %ld — save it as UTF-8", (long)i);
            return -1;
        }
        i += (size_t)k;
        if (is_space(c)) { space = 1; continue; }
        if (space && n > 0) cp[n++] = ' ';
        space = 0;
        if (c == 0x130) { cp[n++] = 'i'; cp[n++] = 0x307; continue; }
        cp[n++] = to_lower(c);
    }
    *out = cp;
    *n_out = n;
    return 0;
}

/* ---------------- hash tables ---------------- */

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static uint32_t hash_u64(uint64_t k)
{
    k ^= k >> 33; k *= 0xff51afd7ed558ccdULL; k ^= k >> 33; k *= 0xc4ceb9fe1a85ec53ULL; k ^= k >> 33;
    return (uint32_t)k;
}

static int32_t str_find(const Tokenizer *t, const char *s)
{
    for (uint32_t h = hash_str(s) & t->str_mask;; h = (h + 1) & t->str_mask) {
        int32_t id = t->str_tab[h];
        if (id < 0) return -1;
        if (strcmp(t->strs[id], s) == 0) return id;
    }
}

/* Later ids win on duplicate text, as Python's dict(zip(vocab, range(n))). */
static void str_insert(Tokenizer *t, int32_t id)
{
    for (uint32_t h = hash_str(t->strs[id]) & t->str_mask;; h = (h + 1) & t->str_mask) {
        int32_t cur = t->str_tab[h];
        if (cur < 0 || strcmp(t->strs[cur], t->strs[id]) == 0) { t->str_tab[h] = id; return; }
    }
}

static void pair_insert(Tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t out)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t h = hash_u64(key) & t->pair_mask;; h = (h + 1) & t->pair_mask) {
        if (t->pair_rank[h] < 0 || t->pair_key[h] == key) {
            t->pair_key[h] = key; t->pair_rank[h] = rank; t->pair_out[h] = out;
            return;
        }
    }
}

static int32_t pair_find(const Tokenizer *t, int32_t a, int32_t b, int32_t *out)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t h = hash_u64(key) & t->pair_mask;; h = (h + 1) & t->pair_mask) {
        if (t->pair_rank[h] < 0) return -1;
        if (t->pair_key[h] == key) { *out = t->pair_out[h]; return t->pair_rank[h]; }
    }
}

static uint32_t pow2_at_least(uint32_t n)
{
    uint32_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* ---------------- construction ---------------- */

Tokenizer *tok_create_bytes(void)
{
    Tokenizer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->kind = TOK_BYTES;
    t->vocab = TOK_BYTES_VOCAB;
    t->bos = 256;
    t->eos = 257;
    t->pad = 257;
    return t;
}

void tok_free(Tokenizer *t)
{
    if (!t) return;
    free(t->strs);
    free(t->arena);
    free(t->str_tab);
    free(t->pair_key);
    free(t->pair_rank);
    free(t->pair_out);
    free(t);
}

/* GPT-2/CLIP bytes_to_unicode: printable bytes map to themselves, the rest to
 * 256 + n in byte order; the token order is printable bytes first. */
static void bytes_to_unicode(int order[256], uint32_t cs[256])
{
    int n = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (printable) { order[n++] = b; cs[b] = (uint32_t)b; }
    }
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (!printable) { order[n++] = b; cs[b] = (uint32_t)(256 + extra++); }
    }
}


/* Checks our id scheme against a HF vocab.json beside the merges file. */
static int check_vocab_json(const Tokenizer *t, const char *path, char *err, size_t errlen)
{
    size_t sz;
    char *buf = fs_read_all(path, FS_TEXT_MAX, &sz, err, errlen);
    if (!buf) return -1;
    char jerr[200];
    JsonValue *v = json_parse(buf, sz, jerr, sizeof jerr);
    free(buf);
    if (!v) { if (err && errlen) snprintf(err, errlen, "%s: %s", path, jerr); return -1; }
    int rc = 0;
    if (v->type != JSON_OBJECT) {
        err_set(err, errlen, "%s: expected an object of token -> id", path);
        rc = -1;
    } else if (v->n != t->vocab) {
        err_set(err, errlen, "%s: has %d tokens but the merges file gives %d — use the vocab.json and merges.txt of one tokenizer", path, v->n, t->vocab);
        rc = -1;
    } else {
        for (int i = 0; i < v->n && rc == 0; i++) {
            int32_t ours = str_find(t, v->keys[i]);
            long theirs = v->items[i].type == JSON_NUMBER ? (long)v->items[i].number : -1;
            if (ours != theirs) {
                if (err && errlen)
                    snprintf(err, errlen, "%s: token \"%.40s\" has id %ld but the merges file gives %d — use the vocab.json and merges.txt of one tokenizer",
                             path, v->keys[i], theirs, (int)ours);
                rc = -1;
            }
        }
    }
    json_free(v);
    return rc;
}

Tokenizer *tok_create_clip(const char *merges_path, char *err, size_t errlen)
{
    char path[4096];
    if (!merges_path) { err_set(err, errlen, "no CLIP merges file given"); return NULL; }
    snprintf(path, sizeof path, "%s", merges_path);
    if (fs_is_dir(merges_path)) {
        snprintf(path, sizeof path, "%s/merges.txt", merges_path);
        if (!fs_exists(path)) snprintf(path, sizeof path, "%s/bpe_simple_vocab_16e6.txt.gz", merges_path);
        if (!fs_exists(path)) {
            err_set(err, errlen, "%s: no merges.txt or bpe_simple_vocab_16e6.txt.gz in this folder — point to a diffusers tokenizer/ folder", merges_path);
            return NULL;
        }
    }
    int fd = fs_open_regular(path, NULL, err, errlen);
    if (fd < 0) return NULL;
    gzFile gz = gzdopen(fd, "rb"); /* reads plain text transparently too; closes fd */
    if (!gz) { close(fd); err_set(err, errlen, "%s: cannot open the CLIP merges file", path); return NULL; }

    /* Read up to CLIP_MAX_MERGES merge lines after the "#version" header. */
    size_t cap = 1 << 20, used = 0;
    char *text = malloc(cap);
    int32_t *split = malloc(CLIP_MAX_MERGES * sizeof *split);   /* offset of the right part */
    int32_t *start = malloc(CLIP_MAX_MERGES * sizeof *start);   /* offset of the left part */
    int n = 0;
    long lineno = 0;
    char line[4096];
    Tokenizer *t = NULL;
    if (!text || !split || !start) { err_set(err, errlen, "%s: out of memory", path); goto fail; }
    while (n < CLIP_MAX_MERGES && gzgets(gz, line, sizeof line)) {
        lineno++;
        size_t L = strlen(line);
        if (L == sizeof line - 1 && line[L - 1] != '\n') {
            err_set(err, errlen, "%s: line %ld is longer than %ld bytes — not a BPE merges file", path, lineno, (long)sizeof line);
            goto fail;
        }
        while (L && (line[L - 1] == '\n' || line[L - 1] == '\r')) line[--L] = 0;
        if (lineno == 1 && strstr(line, "#version")) continue;
        if (L == 0) break; /* end of the merges */
        char *sp = strchr(line, ' ');
        if (!sp || sp == line || sp[1] == 0 || strchr(sp + 1, ' ')) {
            err_set(err, errlen, "%s: line %ld is not \"left right\" — not a BPE merges file", path, lineno);
            goto fail;
        }
        if (used + L + 2 > cap) {
            cap *= 2;
            char *nt = realloc(text, cap);
            if (!nt) { err_set(err, errlen, "%s: out of memory", path); goto fail; }
            text = nt;
        }
        *sp = 0;
        start[n] = (int32_t)used;
        split[n] = (int32_t)(used + (size_t)(sp - line) + 1);
        memcpy(text + used, line, L + 1);
        used += L + 1;
        n++;
    }
    if (n == 0) {
        err_set(err, errlen, "%s: no merges found (%ld lines read) — expected CLIP's bpe_simple_vocab_16e6.txt.gz or a merges.txt", path, lineno);
        goto fail;
    }
    gzclose(gz);
    gz = NULL;

    t = calloc(1, sizeof *t);
    if (!t) goto oom;
    t->kind = TOK_CLIP;
    t->vocab = 512 + n + 2;
    t->bos = 512 + n;
    t->eos = 512 + n + 1;
    t->pad = t->eos;
    t->strs = calloc((size_t)t->vocab, sizeof *t->strs);
    /* arena: bytes (<=2 UTF-8 bytes each, +4 for </w>), merges, specials */
    size_t acap = 256 * 3 + 256 * 7 + used + 64, aused = 0;
    t->arena = malloc(acap);
    t->str_mask = pow2_at_least((uint32_t)t->vocab * 2) - 1;
    t->str_tab = malloc((t->str_mask + 1) * sizeof *t->str_tab);
    t->pair_mask = pow2_at_least((uint32_t)n * 2) - 1;
    t->pair_key = malloc((t->pair_mask + 1) * sizeof *t->pair_key);
    t->pair_rank = malloc((t->pair_mask + 1) * sizeof *t->pair_rank);
    t->pair_out = malloc((t->pair_mask + 1) * sizeof *t->pair_out);
    if (!t->strs || !t->arena || !t->str_tab || !t->pair_key || !t->pair_rank || !t->pair_out) goto oom;
    memset(t->str_tab, 0xff, (t->str_mask + 1) * sizeof *t->str_tab);
    memset(t->pair_rank, 0xff, (t->pair_mask + 1) * sizeof *t->pair_rank);

    int order[256];
    uint32_t cs[256];
    bytes_to_unicode(order, cs);
    for (int w = 0; w < 2; w++) {
        for (int i = 0; i < 256; i++) {
            int id = w * 256 + i;
            unsigned char u[8];
            int k = utf8_put(cs[order[i]], u);
            t->strs[id] = t->arena + aused;
            memcpy(t->arena + aused, u, (size_t)k);
            aused += (size_t)k;
            if (w) { memcpy(t->arena + aused, "</w>", 4); aused += 4; }
            t->arena[aused++] = 0;
        }
    }
    for (int r = 0; r < n; r++) {
        const char *a = text + start[r], *b = text + split[r];
        size_t la = strlen(a), lb = strlen(b);
        t->strs[512 + r] = t->arena + aused;
        memcpy(t->arena + aused, a, la);
        memcpy(t->arena + aused + la, b, lb + 1);
        aused += la + lb + 1;
    }
    t->strs[t->bos] = t->arena + aused;
    memcpy(t->arena + aused, "<|startoftext|>", 16);
    aused += 16;
    t->strs[t->eos] = t->arena + aused;
    memcpy(t->arena + aused, "<|endoftext|>", 14);
    aused += 14;
    for (int id = 0; id < t->vocab; id++) str_insert(t, id);
    for (int b = 0; b < 256; b++) {
        unsigned char u[8];
        char s[16];
        int k = utf8_put(cs[b], u);
        memcpy(s, u, (size_t)k);
        s[k] = 0;
        t->byte_id[b] = str_find(t, s);
        memcpy(s + k, "</w>", 5);
        t->byte_w_id[b] = str_find(t, s);
    }
    /* Merge table on token ids; a merge whose part is no token can never fire.
     * Later duplicates override earlier ranks, as dict(zip(merges, range(n))). */
    for (int r = 0; r < n; r++) {
        int32_t a = str_find(t, text + start[r]), b = str_find(t, text + split[r]);
        if (a < 0 || b < 0) continue;
        pair_insert(t, a, b, r, str_find(t, t->strs[512 + r]));
    }
    free(text);
    free(split);
    free(start);

    /* vocab.json beside merges.txt (diffusers layout): check our numbering. */
    char vpath[4200];
    const char *slash = strrchr(path, '/');
    if (slash) snprintf(vpath, sizeof vpath, "%.*s/vocab.json", (int)(slash - path), path);
    else snprintf(vpath, sizeof vpath, "vocab.json");
    /* anything there is checked: a FIFO or device is refused, not skipped */
    if (fs_exists(vpath) && check_vocab_json(t, vpath, err, errlen) != 0) { tok_free(t); return NULL; }
    return t;

oom:
    err_set(err, errlen, "%s: out of memory building the tokenizer", path);
fail:
    if (gz) gzclose(gz);
    free(text);
    free(split);
    free(start);
    tok_free(t);
    return NULL;
}

/* ---------------- encoding ---------------- */

typedef struct { int32_t *v; int n, cap; } IdBuf;

static int idbuf_push(IdBuf *b, int32_t id)
{
    if (b->n == b->cap) {
        int nc = b->cap ? 2 * b->cap : 64;
        int32_t *nv = realloc(b->v, (size_t)nc * sizeof *nv);
        if (!nv) return -1;
        b->v = nv;
        b->cap = nc;
    }
    b->v[b->n++] = id;
    return 0;
}

/* BPE of one pre-token (its UTF-8 bytes) as simple_tokenizer.bpe: repeatedly
 * merge every occurrence (left to right) of the lowest-ranked adjacent pair. */
static int bpe_word(const Tokenizer *t, const unsigned char *bytes, int nb, IdBuf *out)
{
    int32_t stackbuf[64];
    int32_t *sym = nb <= 64 ? stackbuf : malloc((size_t)nb * sizeof *sym);
    if (!sym) return -1;
    for (int i = 0; i < nb; i++) sym[i] = i == nb - 1 ? t->byte_w_id[bytes[i]] : t->byte_id[bytes[i]];
    int n = nb;
    while (n > 1) {
        int32_t best = -1, first = 0, second = 0, merged = 0;
        for (int k = 0; k + 1 < n; k++) {
            int32_t o;
            int32_t r = pair_find(t, sym[k], sym[k + 1], &o);
            if (r >= 0 && (best < 0 || r < best)) { best = r; first = sym[k]; second = sym[k + 1]; merged = o; }
        }
        if (best < 0) break;
        int j = 0;
        for (int k = 0; k < n;) {
            if (k + 1 < n && sym[k] == first && sym[k + 1] == second) { sym[j++] = merged; k += 2; }
            else sym[j++] = sym[k++];
        }
        n = j;
    }
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) rc = idbuf_push(out, sym[i]);
    if (sym != stackbuf) free(sym);
    return rc;
}

static int match_ascii(const uint32_t *cp, int n, int i, const char *s)
{
    for (; *s; s++, i++)
        if (i >= n || cp[i] != (uint32_t)(unsigned char)*s) return 0;
    return 1;
}

static int encode_all(const Tokenizer *t, const char *text, IdBuf *out, char *err, size_t errlen)
{
    uint32_t *cp;
    int n;
    if (normalize(text ? text : "", &cp, &n, err, errlen) != 0) return -1;
    int rc = 0;
    if (t->kind == TOK_BYTES) {
        for (int i = 0; i < n && rc == 0; i++) {
            unsigned char u[4];
            int k = utf8_put(cp[i], u);
            for (int j = 0; j < k && rc == 0; j++) rc = idbuf_push(out, u[j]);
        }
    } else {
        unsigned char *bytes = malloc((size_t)n * 4 + 4);
        if (!bytes) rc = -1;
        int i = 0;
        while (rc == 0 && i < n) {
            uint32_t c = cp[i];
            if (is_space(c)) { i++; continue; }
            int end;
            if (match_ascii(cp, n, i, "<|startoftext|>")) { rc = idbuf_push(out, t->bos); i += 15; continue; }
            if (match_ascii(cp, n, i, "<|endoftext|>")) { rc = idbuf_push(out, t->eos); i += 13; continue; }
            if (c == '\'' && (match_ascii(cp, n, i, "'s") || match_ascii(cp, n, i, "'t") ||
                              match_ascii(cp, n, i, "'m") || match_ascii(cp, n, i, "'d")))
                end = i + 2;
            else if (c == '\'' && (match_ascii(cp, n, i, "'re") || match_ascii(cp, n, i, "'ve") ||
                                   match_ascii(cp, n, i, "'ll")))
                end = i + 3;
            else if (is_letter(c)) {
                end = i + 1;
                while (end < n && is_letter(cp[end])) end++;
            } else if (is_number(c)) {
                end = i + 1;
            } else {
                end = i + 1;
                while (end < n && !is_space(cp[end]) && !is_letter(cp[end]) && !is_number(cp[end])) end++;
            }
            int nb = 0;
            for (int k = i; k < end; k++) nb += utf8_put(cp[k], bytes + nb);
            rc = bpe_word(t, bytes, nb, out);
            i = end;
        }
        free(bytes);
        if (rc) err_set(err, errlen, "out of memory tokenising a %ld-character prompt", (long)n);
    }
    free(cp);
    return rc;
}

int tok_encode(const Tokenizer *t, const char *text, int32_t *ids, int max_ids, int *n_out,
               char *err, size_t errlen)
{
    IdBuf b = {0};
    if (n_out) *n_out = 0;
    if (encode_all(t, text, &b, err, errlen) != 0) { free(b.v); return -1; }
    if (n_out) *n_out = b.n;
    int k = b.n < max_ids ? b.n : max_ids;
    if (k > 0) memcpy(ids, b.v, (size_t)k * sizeof *ids);
    free(b.v);
    if (b.n > max_ids) {
        err_set(err, errlen, "prompt has %ld tokens; only %ld fit", (long)b.n, (long)max_ids);
        return -1;
    }
    return 0;
}

int tok_encode_padded(const Tokenizer *t, const char *text, int context_len, int32_t *ids,
                      int *n_out, char *err, size_t errlen)
{
    if (n_out) *n_out = 0;
    if (context_len < 2) {
        err_set(err, errlen, "context length %ld leaves no room for BOS and EOS", (long)context_len);
        return -1;
    }
    IdBuf b = {0};
    if (encode_all(t, text, &b, err, errlen) != 0) { free(b.v); return -1; }
    int room = context_len - 2;
    if (b.n > room) {
        /* Name the prompt (its start, cut at a UTF-8 boundary) and the limit. */
        char shown[64];
        const char *s = text ? text : "";
        size_t L = strlen(s), cut = L;
        if (L > 40) {
            cut = 40;
            while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80) cut--;
        }
        snprintf(shown, sizeof shown, "%.*s%s", (int)cut, s, cut < L ? "..." : "");
        if (err && errlen)
            snprintf(err, errlen, "prompt \"%s\" has %d tokens; the model takes at most %d — shorten it",
                     shown, b.n, room);
        free(b.v);
        return -1;
    }
    ids[0] = t->bos;
    if (b.n) memcpy(ids + 1, b.v, (size_t)b.n * sizeof *ids);
    ids[b.n + 1] = t->eos;
    for (int i = b.n + 2; i < context_len; i++) ids[i] = t->pad;
    if (n_out) *n_out = b.n + 2;
    free(b.v);
    return 0;
}

int tok_vocab_size(const Tokenizer *t) { return t->vocab; }
int tok_bos(const Tokenizer *t) { return t->bos; }
int tok_eos(const Tokenizer *t) { return t->eos; }
int tok_pad(const Tokenizer *t) { return t->pad; }
void tok_set_pad(Tokenizer *t, int32_t pad_id) { t->pad = pad_id; }

const char *tok_token_str(const Tokenizer *t, int id)
{
    if (t->kind != TOK_CLIP || id < 0 || id >= t->vocab) return NULL;
    return t->strs[id];
}

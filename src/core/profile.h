/* profile.h — the table behind Backend.profile (backend.h), one for every
 * backend: a row per path of open scopes ("conv2d_bwd", "conv2d_bwd/col2im"),
 * scopes entered and left in nested order. How a scope is timed is the
 * backend's: the CPU reads the clock when it leaves, CUDA records events and
 * adds their time when it next waits (prof_add). Header-only: the CUDA plugin
 * compiles it too. */
#ifndef KRONA_PROFILE_H
#define KRONA_PROFILE_H

#include <stdlib.h>
#include <string.h>

#include "core/backend.h"

#define PROF_DEPTH 8

typedef struct {
    BackendProfileRow *rows;
    int n, cap;
    int open[PROF_DEPTH]; /* the rows of the open scopes, outermost first */
    int depth;
    int on;
} ProfTable;

/* on: empty the table and start; off: stop (the rows stay for prof_copy) */
static inline void prof_switch(ProfTable *t, int on) {
    if (on) t->n = 0;
    t->depth = 0;
    t->on = on;
}

/* Enter scope `name` inside the open ones: its row, one call more; -1 when
 * not profiling (or out of memory, or nested too deep: then untimed). */
static inline int prof_enter(ProfTable *t, const char *name) {
    if (!t->on || t->depth >= PROF_DEPTH) return -1;
    char path[sizeof t->rows[0].name] = {0}; /* parent/name, cut to fit */
    size_t k = 0;
    if (t->depth) {
        const char *up = t->rows[t->open[t->depth - 1]].name;
        k = strnlen(up, sizeof path - 2);
        memcpy(path, up, k);
        path[k++] = '/';
    }
    size_t l = strnlen(name, sizeof path - 1 - k);
    memcpy(path + k, name, l);
    int r = 0;
    while (r < t->n && strcmp(t->rows[r].name, path)) r++;
    if (r == t->n) {
        if (t->n == t->cap) {
            int cap = t->cap ? 2 * t->cap : 64;
            BackendProfileRow *g = (BackendProfileRow *)realloc(t->rows, sizeof *g * (size_t)cap);
            if (!g) return -1;
            t->rows = g;
            t->cap = cap;
        }
        memset(&t->rows[r], 0, sizeof t->rows[r]);
        memcpy(t->rows[r].name, path, sizeof path);
        t->rows[r].depth = t->depth;
        t->n++;
    }
    t->rows[r].calls++;
    t->open[t->depth++] = r;
    return r;
}

/* leave the scope prof_enter gave row r (r < 0: it was never entered) */
static inline void prof_leave(ProfTable *t, int r) {
    if (r >= 0 && t->depth > 0) t->depth--;
}

/* time spent in row r's scope (when the backend knows it) */
static inline void prof_add(ProfTable *t, int r, double ms) {
    if (r >= 0 && r < t->n) t->rows[r].ms += ms;
}

/* up to max rows into out (first seen first); returns how many there are */
static inline int prof_copy(const ProfTable *t, BackendProfileRow *out, int max) {
    for (int i = 0; i < t->n && i < max; i++) out[i] = t->rows[i];
    return t->n;
}

static inline void prof_free(ProfTable *t) {
    free(t->rows);
    memset(t, 0, sizeof *t);
}

#endif

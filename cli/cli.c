/* cli.c — what every subcommand shares: option parsing with one-line errors,
 * usage text, strict number parsing (see cli.h). */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fmt.h"
#include "core/rng.h"
#include "core/suggest.h"
#include "models/model.h"

int cli_parse_int(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < -2147483647L || v > 2147483647L) return -1;
    *out = (int)v;
    return 0;
}

int cli_parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

void cli_error(const CliCommand *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "krona-studio%s%s: ", c->name[0] ? " " : "", c->name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* "a|b|c" -> "a, b or c" */
static void choice_list(const char *choices, char *out, size_t n) {
    out[0] = 0;
    const char *p = choices;
    size_t len = 0;
    while (*p && len + 1 < n) {
        size_t w = strcspn(p, "|");
        const char *sep = len == 0 ? "" : strchr(p, '|') ? ", " : " or ";
        len += (size_t)snprintf(out + len, n - len, "%s%.*s", sep, (int)w, p);
        p += w + (p[w] == '|');
    }
}

/* what a value of o must be: "an integer from 1 to 64", "a number > 0", "ddim or euler";
 * an int bound at INT_MAX / INT_MIN is no bound */
static void want_text(const CliOpt *o, char *out, size_t n) {
    if (o->kind == CLI_CHOICE) { choice_list(o->choices, out, n); return; }
    const char *what = o->kind == CLI_INT ? "an integer" : "a number";
    int any = o->lo == 0 && o->hi == 0;
    int no_lo = any || isinf(o->lo) || (o->kind == CLI_INT && o->lo <= INT_MIN);
    int no_hi = any || isinf(o->hi) || (o->kind == CLI_INT && o->hi >= INT_MAX);
    if (no_lo && no_hi) snprintf(out, n, "%s", what);
    else if (no_hi) snprintf(out, n, "%s %s %.15g", what, o->open & CLI_OPEN_LO ? ">" : ">=", o->lo);
    else if (no_lo) snprintf(out, n, "%s %s %.15g", what, o->open & CLI_OPEN_HI ? "<" : "<=", o->hi);
    else if (!o->open) snprintf(out, n, "%s from %.15g to %.15g", what, o->lo, o->hi);
    else snprintf(out, n, "%s in %c%.15g, %.15g%c", what, o->open & CLI_OPEN_LO ? '(' : '[', o->lo, o->hi,
                  o->open & CLI_OPEN_HI ? ')' : ']');
}

static int in_range(const CliOpt *o, double v) {
    if (o->lo == 0 && o->hi == 0) return 1;
    if (o->open & CLI_OPEN_LO ? !(v > o->lo) : !(v >= o->lo)) return 0;
    if (o->open & CLI_OPEN_HI ? !(v < o->hi) : !(v <= o->hi)) return 0;
    return 1;
}

static int is_help(const char *a) { return !strcmp(a, "--help") || !strcmp(a, "-h"); }

/* the option a names (exactly, or as --name=value: len is the name's length) */
static const CliOpt *find_opt(const CliOpt *opts, const char *a, size_t len) {
    for (const CliOpt *o = opts; o->name; o++) {
        if (strlen(o->name) == len && !strncmp(o->name, a, len)) return o;
        if (o->alias && strlen(o->alias) == len && !strncmp(o->alias, a, len)) return o;
    }
    return NULL;
}

/* a is itself an option (so not the value of the one before it) */
static int names_option(const CliOpt *opts, const char *a) {
    if (is_help(a)) return 1;
    if (a[0] != '-') return 0;
    const char *eq = !strncmp(a, "--", 2) ? strchr(a, '=') : NULL;
    return find_opt(opts, a, eq ? (size_t)(eq - a) : strlen(a)) != NULL;
}

static void unknown_option(const CliCommand *c, const CliOpt *opts, const char *a, size_t len) {
    const char *names[2 * 64 + 1];
    int n = 0;
    for (const CliOpt *o = opts; o->name && n < 2 * 64; o++) {
        names[n++] = o->name;
        if (o->alias) names[n++] = o->alias;
    }
    names[n++] = "--help";
    char typed[64];
    snprintf(typed, sizeof typed, "%.*s", (int)(len < sizeof typed ? len : sizeof typed - 1), a);
    const char *best = suggest_closest(typed, names, n);
    if (best) cli_error(c, "unknown option '%s' (did you mean %s?)", typed, best);
    else cli_error(c, "unknown option '%s' (see krona-studio %s%s--help)", typed, c->name, c->name[0] ? " " : "");
}

/* store value v of option o (typed as name) */
static int store(const CliCommand *c, const CliOpt *o, const char *name, const char *v) {
    char want[160];
    want_text(o, want, sizeof want);
    switch (o->kind) {
    case CLI_STR:
        *(const char **)o->to = v;
        return 0;
    case CLI_LIST: {
        CliList *l = o->to;
        if (l->n == CLI_LIST_MAX) { cli_error(c, "%s: at most %d of them", name, CLI_LIST_MAX); return -1; }
        l->v[l->n++] = v;
        return 0;
    }
    case CLI_INT: {
        int x;
        if (cli_parse_int(v, &x) != 0 || !in_range(o, x)) { cli_error(c, "%s %s: use %s", name, v, want); return -1; }
        *(int *)o->to = x;
        return 0;
    }
    case CLI_FLOAT: {
        float x;
        if (cli_parse_float(v, &x) != 0 || !isfinite(x) || !in_range(o, x)) {
            cli_error(c, "%s %s: use %s", name, v, want);
            return -1;
        }
        *(float *)o->to = x;
        return 0;
    }
    case CLI_CHOICE: {
        const char *p = o->choices;
        size_t vl = strlen(v);
        for (int i = 0; *p; i++) {
            size_t w = strcspn(p, "|");
            if (w == vl && !strncmp(p, v, w)) { *(int *)o->to = i; return 0; }
            p += w + (p[w] == '|');
        }
        cli_error(c, "%s %s: use %s", name, v, want);
        return -1;
    }
    case CLI_SEED: {
        char why[128], shown[64];
        if (rng_parse_seed(v, (uint64_t *)o->to, why, sizeof why) != 0) {
            fmt_shorten(v, 24, shown, sizeof shown);
            cli_error(c, "%s %s: %s", name, shown, why);
            return -1;
        }
        return 0;
    }
    case CLI_FLAG:
        break;
    }
    return -1;
}

/* "usage: krona-studio NAME line1\n<indent>line2..." */
static void usage_lines(FILE *f, const char *lead, const char *name, const char *synopsis) {
    int indent = fprintf(f, "%skrona-studio %s%s", lead, name, name[0] ? " " : "");
    const char *p = synopsis;
    for (int first = 1; *p; first = 0) {
        size_t w = strcspn(p, "\n");
        fprintf(f, "%*s%.*s\n", first ? 0 : indent, "", (int)w, p);
        p += w + (p[w] == '\n');
    }
}

/* "N", "FILE"; a choice's values */
static const char *value_name(const CliOpt *o) {
    return o->arg ? o->arg : o->kind == CLI_CHOICE ? o->choices : "VALUE";
}

/* "-o, --output FILE" */
static void option_label(const CliOpt *o, char *out, size_t n) {
    int short_alias = o->alias && o->alias[1] != '-';
    snprintf(out, n, "%s%s%s%s%s", short_alias ? o->alias : "", short_alias ? ", " : "", o->name,
             o->kind == CLI_FLAG ? "" : " ", o->kind == CLI_FLAG ? "" : value_name(o));
}

static void help(const CliCommand *c, const CliOpt *opts, FILE *f) {
    usage_lines(f, "usage: ", c->name, c->synopsis);
    if (c->synopsis2) usage_lines(f, "       ", c->name, c->synopsis2);
    fprintf(f, "\n%s\n\noptions:\n", c->about);
    int w = 10;
    char label[128];
    for (const CliOpt *o = opts; o->name; o++) {
        option_label(o, label, sizeof label);
        int l = (int)strlen(label);
        if (l > w && l <= 30) w = l;
    }
    for (const CliOpt *o = opts; o->name; o++) {
        option_label(o, label, sizeof label);
        if ((int)strlen(label) > w) fprintf(f, "  %s\n  %-*s  %s", label, w, "", o->help);
        else fprintf(f, "  %-*s  %s", w, label, o->help);
        if (o->alias && o->alias[1] == '-') fprintf(f, " (also %s)", o->alias);
        fputc('\n', f);
    }
    fprintf(f, "  %-*s  %s\n", w, "-h, --help", "this help");
    fprintf(f, "\nSee krona-studio(1) for the details.\n");
}

void cli_usage_all(FILE *f, const char *studio_synopsis, const CliCommand *const *cmds, int n) {
    fprintf(f, "usage: krona-studio %s\n", studio_synopsis);
    for (int i = 0; i < n; i++) {
        usage_lines(f, "       ", cmds[i]->name, cmds[i]->synopsis);
        if (cmds[i]->synopsis2) usage_lines(f, "       ", cmds[i]->name, cmds[i]->synopsis2);
    }
}

int cli_parse(const CliCommand *c, const CliOpt *opts, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            help(c, opts, stdout);
            return 0;
        }
        if (a[0] != '-' || !a[1]) {
            cli_error(c, "unexpected argument '%s' (options start with --; see krona-studio %s%s--help)", a,
                      c->name, c->name[0] ? " " : "");
            return 2;
        }
        const char *eq = !strncmp(a, "--", 2) ? strchr(a, '=') : NULL;
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        const CliOpt *o = find_opt(opts, a, len);
        if (!o) {
            unknown_option(c, opts, a, len);
            return 2;
        }
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(len < sizeof name ? len : sizeof name - 1), a);
        if (o->kind == CLI_FLAG) {
            if (eq) { cli_error(c, "%s takes no value", name); return 2; }
            *(int *)o->to = o->set;
            continue;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v && i + 1 < argc && !names_option(opts, argv[i + 1])) v = argv[++i];
        if (!v) {
            char want[160] = "";
            if (o->kind == CLI_INT || o->kind == CLI_FLOAT) {
                want[0] = ',';
                want[1] = ' ';
                want_text(o, want + 2, sizeof want - 2);
            }
            cli_error(c, "%s needs a value: %s %s%s", name, name, value_name(o), want);
            return 2;
        }
        if (store(c, o, name, v) != 0) return 2;
    }
    return CLI_GO;
}

const char *cli_random_model(const CliCommand *c, const char *model) {
    if (!strcmp(model, "tiny") || !strcmp(model, MODEL_TINY_RANDOM)) return MODEL_TINY_RANDOM;
    cli_error(c, "--random-weights: only the built-in model (tiny) comes with random weights, not '%s'", model);
    return NULL;
}

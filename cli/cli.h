/* cli.h — the command-line front end: a CliCommand per subcommand (cli/cli_NAME.c),
 * the option parser they all use (cli.c) and the progress line of `train
 * --headless` on a terminal (progress.c). A command returns the exit status:
 * 0 ok, 1 failed or stopped, 2 bad usage or input. */
#ifndef KRONA_CLI_H
#define KRONA_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "core/backend.h"
#include "core/fmt.h"

typedef struct CliCommand {
    const char *name;                   /* "train" */
    int (*run)(int argc, char **argv);  /* the arguments after the name */
    const char *synopsis;               /* what follows "krona-studio NAME" in a usage line;
                                           each '\n' starts a continuation line */
    const char *synopsis2;              /* another way to call it, or NULL */
    const char *about;                  /* what it does, printed by NAME --help */
} CliCommand;

extern const CliCommand cli_train, cli_sample, cli_info, cli_merge, cli_sweep, cli_score, cli_pretrain;

/* One option of a command, for cli_parse. */
typedef enum {
    CLI_FLAG,    /* no value: stores .set in the int at .to */
    CLI_STR,     /* const char * at .to (points into argv) */
    CLI_INT,     /* int at .to, within [lo, hi] */
    CLI_FLOAT,   /* float at .to, finite, within [lo, hi] */
    CLI_CHOICE,  /* int at .to: the index of the value in .choices ("ddim|euler") */
    CLI_LIST,    /* CliList at .to: every value, in order (an option that repeats) */
    CLI_SEED     /* uint64_t at .to, the one seed rule (rng_parse_seed): 0..2^64-1 */
} CliKind;

#define CLI_LIST_MAX 64
typedef struct CliList {
    const char *v[CLI_LIST_MAX];
    int n;
} CliList;

enum { CLI_OPEN_LO = 1, CLI_OPEN_HI = 2 };  /* CliOpt.open: that bound is excluded */

typedef struct CliOpt {
    const char *name;     /* "--steps" */
    const char *alias;    /* another spelling ("-o", "--colours"), or NULL */
    CliKind kind;
    void *to;
    const char *arg;      /* the value's name in usage and errors ("N", "FILE") */
    const char *help;     /* one line for NAME --help */
    int set;              /* CLI_FLAG: the value stored */
    double lo, hi;        /* CLI_INT, CLI_FLOAT: the range (both 0: any); hi may be INFINITY */
    int open;             /* CLI_OPEN_LO | CLI_OPEN_HI */
    const char *choices;  /* CLI_CHOICE */
} CliOpt;

/* Table entries, e.g. cli_int("--steps", &steps, "S", 1, 999, "sampler steps (default 25)") */
static inline CliOpt cli_flag(const char *name, int *to, int set, const char *help) {
    return (CliOpt){.name = name, .kind = CLI_FLAG, .to = to, .set = set, .help = help};
}
static inline CliOpt cli_str(const char *name, const char **to, const char *arg, const char *help) {
    return (CliOpt){.name = name, .kind = CLI_STR, .to = (void *)to, .arg = arg, .help = help};
}
static inline CliOpt cli_list(const char *name, CliList *to, const char *arg, const char *help) {
    return (CliOpt){.name = name, .kind = CLI_LIST, .to = to, .arg = arg, .help = help};
}
static inline CliOpt cli_int(const char *name, int *to, const char *arg, double lo, double hi, const char *help) {
    return (CliOpt){.name = name, .kind = CLI_INT, .to = to, .arg = arg, .lo = lo, .hi = hi, .help = help};
}
static inline CliOpt cli_float(const char *name, float *to, const char *arg, double lo, double hi,
                               const char *help) {
    return (CliOpt){.name = name, .kind = CLI_FLOAT, .to = to, .arg = arg, .lo = lo, .hi = hi, .help = help};
}
static inline CliOpt cli_seed(const char *name, uint64_t *to, const char *help) {
    return (CliOpt){.name = name, .kind = CLI_SEED, .to = to, .arg = "S", .help = help};
}
static inline CliOpt cli_choice(const char *name, int *to, const char *choices, const char *help) {
    return (CliOpt){.name = name, .kind = CLI_CHOICE, .to = to, .choices = choices, .help = help};
}
/* the same entry with another spelling / with a bound excluded */
static inline CliOpt cli_alias(const char *alias, CliOpt o) { o.alias = alias; return o; }
static inline CliOpt cli_open(int open, CliOpt o) { o.open = open; return o; }

/* Parse argv[0..argc) against opts (ended by an entry with name NULL).
 * Returns CLI_GO to carry on, else the exit status: 0 after --help / -h
 * (the command's usage on stdout), 2 after a usage error (one line on
 * stderr: an unknown option with the closest known one, a missing or bad
 * value and what it must be). Values may also be given as --name=value. */
#define CLI_GO (-1)
int cli_parse(const CliCommand *c, const CliOpt *opts, int argc, char **argv);

/* The scoring options sweep and score share, CLI_SCORE_OPTS entries into out:
 * sweep names them --score-colours, --score-seed, ..., score --colours,
 * --seed, ...; each takes both. They parse straight into o. */
#define CLI_SCORE_OPTS 5
struct ScoreOpts;
void cli_score_opts(CliOpt *out, struct ScoreOpts *o, int prefixed);

/* --random-weights: the model spec for model (as given, or a preset's) with
 * random weights: the built-in model's MODEL_TINY_RANDOM. NULL, after one
 * line saying so, for any other model. */
const char *cli_random_model(const CliCommand *c, const char *model);

/* "krona-studio NAME: message" on stderr, one line. */
__attribute__((format(printf, 2, 3)))
void cli_error(const CliCommand *c, const char *fmt, ...);

/* The usage line(s) of every command under the studio's, for krona-studio --help. */
void cli_usage_all(FILE *f, const char *studio_synopsis, const CliCommand *const *cmds, int n);

/* Strict number parsing: the whole string, in range of the type. 0 or -1. */
int cli_parse_int(const char *s, int *out);
int cli_parse_float(const char *s, float *out);

/* A one-line progress bar on a terminal: redrawn in place ('\r', clear to
 * the end of the line), as wide as the terminal, other lines printed above
 * it. Not a terminal (stdout piped): off, and the command prints plain lines. */
typedef struct CliBar {
    int tty;            /* stdout is a terminal */
    int shown;          /* the bar is on the screen's last line */
    double last_draw;   /* monotonic seconds */
    int step, total;    /* what it shows */
    char text[160];     /* after the bar: loss, speed, ETA */
} CliBar;

void cli_bar_init(CliBar *b);
/* Show step/total, a bar and text; redraws at most 10 times a second unless
 * force (the last step, a state change). */
void cli_bar_update(CliBar *b, int step, int total, const char *text, int force);
/* A line of output above the bar (the bar is redrawn under it). */
void cli_bar_line(CliBar *b, const char *line);
/* Leave the bar as it is and end its line (before any other output). */
void cli_bar_end(CliBar *b);

#endif

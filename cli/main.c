/* main.c — `krona-studio`: dispatch to the studio or a subcommand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/suggest.h"
#include "../tui/studio.h"

#define KRONA_VERSION "0.1.0"

static const CliCommand *const COMMANDS[] = {
    &cli_train, &cli_sample, &cli_info, &cli_merge, &cli_sweep, &cli_score, &cli_pretrain,
};
#define N_COMMANDS ((int)(sizeof COMMANDS / sizeof COMMANDS[0]))

/* the bare command: the studio (its options checked here, then studio_main) */
static const CliCommand STUDIO = {
    "", NULL, "[--preset P.ini] [--graphics sixel|halfblock|none]", NULL,
    "Open the terminal studio on a preset (default: the shipped presets/default.ini).",
};

static void usage(void) {
    cli_usage_all(stdout, STUDIO.synopsis, COMMANDS, N_COMMANDS);
    fputs("       krona-studio COMMAND --help | --help | --version\n"
          "\n"
          "Personalise a text-to-image diffusion model with Kronecker-product adapters\n"
          "(DiffuseKronA): dW = A (a1 x a2) kron B on the attention projections of a frozen UNet.\n"
          "Without a command: the terminal studio. See krona-studio(1) for every preset key,\n"
          "the files written and examples.\n",
          stdout);
}

static int studio(int argc, char **argv) {
    const char *preset = NULL;
    int graphics = 0;
    CliOpt opts[] = {
        cli_str("--preset", &preset, "P.ini", "the preset to open"),
        cli_choice("--graphics", &graphics, "sixel|halfblock|none",
                   "previews: sixel images, Unicode half-blocks or none (default: sixel when the terminal can)"),
        {0},
    };
    int rc = cli_parse(&STUDIO, opts, argc, argv);
    return rc == CLI_GO ? studio_main(argc, argv) : rc;
}

int main(int argc, char **argv) {
    const char *a = argc >= 2 ? argv[1] : "";
    if (!strcmp(a, "--help") || !strcmp(a, "-h") || !strcmp(a, "help")) {
        usage();
        return 0;
    }
    if (!strcmp(a, "--version")) {
        printf("krona-studio %s\n", KRONA_VERSION);
        return 0;
    }
    /* `train --preset P.ini` without --headless opens the studio on that preset */
    if (argc == 4 && !strcmp(a, "train") && !strcmp(argv[2], "--preset")) return studio(2, argv + 2);
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(a, COMMANDS[i]->name)) return COMMANDS[i]->run(argc - 2, argv + 2);
    if (argc >= 2 && a[0] != '-') {
        const char *names[N_COMMANDS];
        for (int i = 0; i < N_COMMANDS; i++) names[i] = COMMANDS[i]->name;
        const char *best = suggest_closest(a, names, N_COMMANDS);
        fprintf(stderr, "krona-studio: unknown command '%s' (", a);
        if (best) {
            fprintf(stderr, "did you mean %s?)\n", best);
        } else {
            for (int i = 0; i < N_COMMANDS; i++) fprintf(stderr, "%s%s", i ? ", " : "", names[i]);
            fprintf(stderr, "; see krona-studio --help)\n");
        }
        return 2;
    }
    return studio(argc - 1, argv + 1);
}

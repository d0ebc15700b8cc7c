/* cli.h — the command-line front end's subcommands (each returns the exit
 * status: 0 ok, 1 failed/cancelled, 2 bad usage or input). */
#ifndef KRONA_CLI_H
#define KRONA_CLI_H

#include "core/backend.h"
#include "core/fmt.h"

int cmd_info(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_pretrain(int argc, char **argv);
int cmd_merge(int argc, char **argv);
/* argv[0] is "sweep" or "score" (cli_sweep.c) */
int cmd_sweep(int argc, char **argv);

int cli_parse_int(const char *s, int *out);
int cli_parse_float(const char *s, float *out);

#endif

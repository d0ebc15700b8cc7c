/* cli.h — the command-line front end's subcommands (each returns the exit
 * status: 0 ok, 1 failed/cancelled, 2 bad usage or input). */
#ifndef KRONA_CLI_H
#define KRONA_CLI_H

#include "core/backend.h"

int cmd_info(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_pretrain(int argc, char **argv);
/* argv[0] is "sweep" or "score" (cli_sweep.c) */
int cmd_sweep(int argc, char **argv);

int cli_parse_int(const char *s, int *out);
int cli_parse_float(const char *s, float *out);
/* 1234567 -> "1,234,567" */
void fmt_thousands(int64_t v, char *out, size_t n);
/* --device auto|cpu|cuda -> a backend, or NULL with a one-line reason */
Backend *cli_backend(const char *device, char *err, size_t errlen);

#endif

/* main.c — `krona-studio`: dispatch to the studio or a subcommand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "../tui/studio.h"

#define KRONA_VERSION "0.1.0"

static const char *USAGE =
    "usage: krona-studio [--preset P.ini] [--graphics sixel|halfblock|none]   the studio\n"
    "       krona-studio train --preset P.ini --headless [--set key=value ...]\n"
    "                          [--resume RUN_DIR] [--device auto|cpu|cuda] [--print-every N]\n"
    "       krona-studio sample --model M [--adapter A.safetensors] --prompt TEXT\n"
    "                          [-o out.png] [--n N] [--steps S] [--guidance G] [--seed S]\n"
    "                          [--sampler ddim|euler] [--size PX] [--device auto|cpu|cuda]\n"
    "                          [--tokenizer DIR] [--vae-tiling auto|on|off]\n"
    "                          (M: tiny, a diffusers folder, or a .safetensors checkpoint)\n"
    "       krona-studio info --model tiny|sd15|sdxl|DIR|config.json|FILE.safetensors [--a1 N --a2 N]\n"
    "                          [--modules attn|attn+ffn] [--lora-rank R] [--all] [--text-encoder]\n"
    "       krona-studio merge --model CHECKPOINT.safetensors --adapter A.safetensors\n"
    "                          -o MERGED.safetensors [--dtype same|f16|bf16|f32] [--scale S] [--force]\n"
    "       krona-studio sweep --preset P.ini --vary key=v1,v2,... [--vary ...] [--list]\n"
    "                          [--set key=value ...] [--out DIR] [--no-base] [--no-score]\n"
    "       krona-studio score --run RUN_DIR [--base|--no-base] [--grid out.png]\n"
    "       krona-studio score --data FILE [--model M] [--n N] [--grid out.png]\n"
    "       krona-studio pretrain --data FILE --out DIR [--steps N] [--batch B] [--lr LR]\n"
    "                          [--resume] [--time-limit MIN] [--checkpoint-every N] (see man page)\n"
    "       krona-studio --help | --version\n"
    "\n"
    "Personalise a text-to-image diffusion model with Kronecker-product adapters\n"
    "(DiffuseKronA): dW = A (a1 x a2) kron B on the attention projections of a frozen UNet.\n"
    "See krona-studio(1) for every preset key, the files written and examples.\n";

int main(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("krona-studio %s\n", KRONA_VERSION);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "info")) return cmd_info(argc - 2, argv + 2);
    /* `train --preset P.ini` without --headless opens the studio on that preset */
    if (argc == 4 && !strcmp(argv[1], "train") && !strcmp(argv[2], "--preset")) return studio_main(2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "train")) return cmd_train(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "sample")) return cmd_sample(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "merge")) return cmd_merge(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "pretrain")) return cmd_pretrain(argc - 2, argv + 2);
    if (argc >= 2 && (!strcmp(argv[1], "sweep") || !strcmp(argv[1], "score"))) return cmd_sweep(argc - 1, argv + 1);
    if (argc >= 2 && argv[1][0] != '-') {
        fprintf(stderr, "krona-studio: unknown command '%s' (train, sample, info, merge, sweep, score, pretrain; see --help)\n", argv[1]);
        return 2;
    }
    /* the bare command (and its options) opens the terminal studio */
    return studio_main(argc - 1, argv + 1);
}

/* preset.h — a run's settings, read from and written to .ini (inih).
 * Every knob the studio exposes lives here; the file written is the file read
 * back (stable key order, shortest round-trip float formatting). */
#ifndef KRONA_PRESET_H
#define KRONA_PRESET_H

#include <stddef.h>

#define PRESET_MAX_IMAGES 16
#define PRESET_MAX_SAMPLES 8
#define PRESET_PATH_MAX 512
#define PRESET_TEXT_MAX 256

typedef struct Preset {
    /* [model] */
    char model[PRESET_PATH_MAX];     /* "tiny", "sd15", "sdxl", or a model dir/file */
    char tokenizer[PRESET_PATH_MAX]; /* CLIP vocabulary folder/file; "" = found (tok_find_clip) */
    char device[16];                 /* "auto", "cpu", "cuda" */
    char precision[8];               /* "auto", "fp32", "tf32", "bf16": GEMM arithmetic (core/backend.h) */
    char vae_tiling[8];              /* "auto", "on", "off": the VAE in tiles (models/vae.h) */
    /* [data] */
    int n_images;
    char images[PRESET_MAX_IMAGES][PRESET_PATH_MAX];
    char instance_prompt[PRESET_TEXT_MAX]; /* "a sks dog" */
    char class_prompt[PRESET_TEXT_MAX];    /* "a dog" (prior preservation) */
    char class_dir[PRESET_PATH_MAX];       /* class images; empty: generate */
    int n_class_images;
    float prior_weight;              /* 0 disables prior preservation */
    int resolution;                  /* training size in pixels */
    int flip;                        /* random horizontal flips */
    int buckets;                     /* 1: aspect-ratio buckets (training/buckets.h) */
    int bucket_step;                 /* bucket sides are multiples of it; 0: the model's cell */
    /* [adapter] */
    char adapter[16];                /* "krona", "lora" */
    int a1, a2;
    int lora_rank;
    float lora_alpha;
    char modules[16];                /* "attn", "attn+ffn" */
    int text_encoder_adapters;       /* 1: adapters on the text encoder's attention too */
    /* [train] */
    float lr;
    char lr_schedule[16];            /* "constant", "warmup" */
    int warmup_steps;
    int iterations;
    int batch;
    int grad_accum;
    float weight_decay;
    unsigned long long seed;
    int checkpoint_every;            /* 0: only at the end */
    char prediction[16];             /* "auto" (the model's), "epsilon", "v" */
    char grad_checkpointing[8];      /* "auto" (when memory is short), "on", "off" */
    /* [sample] */
    int sample_every;                /* 0: only at the end */
    int n_sample_prompts;
    char sample_prompts[PRESET_MAX_SAMPLES][PRESET_TEXT_MAX];
    char sampler[16];                /* "ddim", "euler" */
    int sample_steps;
    float guidance;
    /* [output] */
    char output_dir[PRESET_PATH_MAX];  /* run folder root, default "runs" */
    char run_name[128];                /* empty: derived from time + knobs */
    char export_dtype[8];              /* adapter.safetensors tensors: "f32", "f16", "bf16"
                                          (training and checkpoints stay f32) */
} Preset;

/* Fill with the defaults (the paper's: KronA a1=a2=... lr 6e-4, 500 iterations). */
void preset_defaults(Preset *p);
/* Read an .ini on top of the current values. 0, or -1 with a one-line err that
 * names the file, line and key and says what is allowed. Unknown keys are
 * errors, and so is a key set twice (file:line and the line it was first on),
 * except the list keys image and prompt, whose lines add up. Relative paths
 * (model when it is a path, tokenizer, image, class_dir) are relative to the
 * file's folder and come back absolute; output_dir stays as written (relative
 * to the working directory). */
int preset_load(Preset *p, const char *path, char *err, size_t errlen);
/* preset_load with relative paths taken from the folder base instead (NULL:
 * the working directory, as run folders of older versions recorded them). */
int preset_load_from(Preset *p, const char *path, const char *base, char *err, size_t errlen);
/* Apply one "section.key=value" or "key=value" override (--set); paths stay
 * relative to the working directory. Errors echo a long assignment shortened. */
int preset_set(Preset *p, const char *assignment, char *err, size_t errlen);
/* Validate ranges and combinations (not model-dependent ones). */
int preset_validate(const Preset *p, char *err, size_t errlen);
/* Write atomically (temp + rename) in a stable order, with relative paths
 * (the working directory's) written absolute, so the file works from anywhere. */
int preset_save(const Preset *p, const char *path, char *err, size_t errlen);

#endif

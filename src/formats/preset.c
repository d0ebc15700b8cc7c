/* preset.c — see preset.h. One table describes every key (section, type,
 * range, aliases for "did you mean"), and drives parsing, --set, validation and
 * saving, so the four cannot drift apart.
 *
 * inih details handled here: the Debian build has a fixed 200-byte line
 * buffer and no line numbers in the handler, so we feed it lines through our
 * own reader (counting lines, left-trimming so indentation never turns into a
 * multi-line continuation) and pass over-long values around it. Values that
 * inih would mangle (leading/trailing blanks, ';') are written in double
 * quotes with \" \\ \; escapes. */
#include "formats/preset.h"
#include "core/suggest.h"
#include "core/fmt.h"
#include "core/fsutil.h"
#include "core/rng.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

typedef enum { K_STR, K_ENUM, K_INT, K_FLOAT, K_U64, K_BOOL, K_LIST } Kind;

typedef struct {
    const char *section, *key;
    Kind kind;
    size_t off, size;        /* field; K_LIST: the array (rows of size bytes) */
    size_t count_off;        /* K_LIST: the int count */
    int max_items;           /* K_LIST */
    double lo, hi;           /* K_INT / K_FLOAT range */
    int lo_open;             /* K_FLOAT: lo excluded */
    const char *choices;     /* K_ENUM: "a|b|c" */
    const char *aliases;     /* other names people use, for suggestions only */
    const char *comment;
} Key;

#define F(f) offsetof(Preset, f), sizeof(((Preset *)0)->f)
#define L(f, n) offsetof(Preset, f), sizeof(((Preset *)0)->f[0]), offsetof(Preset, n)

static const Key keys[] = {
    { "model", "model", K_STR, F(model), 0, 0, 0, 0, 0, NULL, "pretrained_model_name_or_path|model_path|checkpoint",
      "\"tiny\" (built in), \"sd15\", \"sdxl\", or a model folder / .safetensors file (relative to this file's folder)" },
    { "model", "tokenizer", K_STR, F(tokenizer), 0, 0, 0, 0, 0, NULL, "tokenizer_dir|vocab",
      "CLIP's vocabulary (a folder with merges.txt); empty: the model folder, $KRONA_TOKENIZER, the Hugging Face cache, ComfyUI or A1111" },
    { "model", "device", K_ENUM, F(device), 0, 0, 0, 0, 0, "auto|cpu|cuda", "backend|gpu", "auto | cpu | cuda" },
    { "model", "precision", K_ENUM, F(precision), 0, 0, 0, 0, 0, "auto|fp32|tf32|bf16", "mixed_precision|matmul_precision|amp",
      "GEMM arithmetic: auto (cpu fp32, cuda tf32) | fp32 | tf32 (cuda) | bf16 (linear and conv operands in bf16, sums in fp32; on the cpu a slow reference)" },
    { "model", "vae_tiling", K_ENUM, F(vae_tiling), 0, 0, 0, 0, 0, "auto|on|off", "tiled_vae|vae_tile|enable_tiling|tiling",
      "VAE encode / decode in overlapping 512 px tiles: auto (when the image is larger than a tile and the untiled pass would not fit in half the available memory) | on | off" },

    { "data", "image", K_LIST, L(images, n_images), PRESET_MAX_IMAGES, 0, 0, 0, NULL, "images|instance_image|instance_data_dir",
      "training images, one line each, in order (at most 16); a relative path is relative to this file's folder" },
    { "data", "instance_prompt", K_STR, F(instance_prompt), 0, 0, 0, 0, 0, NULL, "prompt_instance|caption", "prompt with the rare token, e.g. \"a sks dog\"" },
    { "data", "class_prompt", K_STR, F(class_prompt), 0, 0, 0, 0, 0, NULL, "prompt_class", "prompt for prior preservation, e.g. \"a dog\"" },
    { "data", "class_dir", K_STR, F(class_dir), 0, 0, 0, 0, 0, NULL, "class_data_dir|class_images_dir", "folder of class images (relative to this file's folder); empty: generate them" },
    { "data", "n_class_images", K_INT, F(n_class_images), 0, 0, 0, 100000, 0, NULL, "num_class_images|class_images", "0..100000" },
    { "data", "prior_weight", K_FLOAT, F(prior_weight), 0, 0, 0, 100, 0, NULL, "prior_loss_weight|with_prior_preservation", "0 disables prior preservation" },
    { "data", "resolution", K_INT, F(resolution), 0, 0, 8, 4096, 0, NULL, "size|image_size|res", "training size in pixels, a multiple of 8" },
    { "data", "flip", K_BOOL, F(flip), 0, 0, 0, 1, 0, NULL, "random_flip|hflip|flip_horizontal", "random horizontal flips: 0 | 1" },
    { "data", "buckets", K_BOOL, F(buckets), 0, 0, 0, 1, 0, NULL, "enable_bucket|aspect_ratio_buckets|bucketing",
      "aspect-ratio buckets: each image trains at the size nearest its shape (w x h <= resolution^2, 1:2 to 2:1) instead of a centre square: 0 | 1" },
    { "data", "bucket_step", K_INT, F(bucket_step), 0, 0, 0, 4096, 0, NULL, "bucket_reso_steps|bucket_resolution_step",
      "bucket sides are multiples of this; a multiple of the model's own (tiny 4, SD 1.5 64, SDXL 32) dividing resolution; 0: the model's own" },

    { "adapter", "adapter", K_ENUM, F(adapter), 0, 0, 0, 0, 0, "krona|lora", "adapter_type|method|kind", "krona | lora" },
    { "adapter", "a1", K_INT, F(a1), 0, 0, 1, 4096, 0, NULL, "factor1|krona_a1", "KronA: A is a1 x a2; a1 must divide each adapted layer's d_out" },
    { "adapter", "a2", K_INT, F(a2), 0, 0, 1, 4096, 0, NULL, "factor2|krona_a2", "a2 must divide each adapted layer's d_in" },
    { "adapter", "lora_rank", K_INT, F(lora_rank), 0, 0, 1, 4096, 0, NULL, "rank|r|network_dim", "LoRA rank" },
    { "adapter", "lora_alpha", K_FLOAT, F(lora_alpha), 0, 0, 0, 65536, 1, NULL, "alpha|network_alpha", "LoRA scale is lora_alpha / lora_rank" },
    { "adapter", "modules", K_ENUM, F(modules), 0, 0, 0, 0, 0, "attn|attn+ffn", "target_modules|layers", "attn | attn+ffn" },
    { "adapter", "text_encoder_adapters", K_BOOL, F(text_encoder_adapters), 0, 0, 0, 1, 0, NULL, "train_text_encoder|te_adapters",
      "also adapt the text encoder's attention q/k/v/out_proj (SDXL: both encoders), trained with the UNet: 0 | 1" },

    { "train", "lr", K_FLOAT, F(lr), 0, 0, 0, 1, 1, NULL, "learning_rate|lr_rate|rate", "learning rate, (0, 1]" },
    { "train", "lr_schedule", K_ENUM, F(lr_schedule), 0, 0, 0, 0, 0, "constant|warmup", "lr_scheduler|scheduler_lr", "constant | warmup" },
    { "train", "warmup_steps", K_INT, F(warmup_steps), 0, 0, 0, 1000000, 0, NULL, "lr_warmup_steps|warmup", "steps of linear warmup (lr_schedule = warmup)" },
    { "train", "iterations", K_INT, F(iterations), 0, 0, 1, 1000000, 0, NULL, "max_train_steps|steps|max_steps|iters", "training steps" },
    { "train", "batch", K_INT, F(batch), 0, 0, 1, 64, 0, NULL, "batch_size|train_batch_size", "1..64" },
    { "train", "grad_accum", K_INT, F(grad_accum), 0, 0, 1, 1024, 0, NULL, "gradient_accumulation_steps|accumulation", "gradient accumulation steps" },
    { "train", "weight_decay", K_FLOAT, F(weight_decay), 0, 0, 0, 1, 0, NULL, "adam_weight_decay|wd", "AdamW weight decay, 0..1" },
    { "train", "seed", K_U64, F(seed), 0, 0, 0, 0, 0, NULL, "random_seed|rng_seed", "any unsigned 64-bit integer" },
    { "train", "checkpoint_every", K_INT, F(checkpoint_every), 0, 0, 0, 1000000, 0, NULL, "checkpointing_steps|save_every|save_steps", "0: only at the end" },
    { "train", "prediction", K_ENUM, F(prediction), 0, 0, 0, 0, 0, "auto|epsilon|v", "prediction_type|parameterization", "auto (the model's scheduler config) | epsilon | v" },
    { "train", "gradient_checkpointing", K_ENUM, F(grad_checkpointing), 0, 0, 0, 0, 0, "auto|on|off", "grad_checkpointing|checkpointing",
      "recompute each layer's activations in backward: auto (when they would not fit) | on | off" },

    { "sample", "sample_every", K_INT, F(sample_every), 0, 0, 0, 1000000, 0, NULL, "validation_steps|preview_every", "0: only at the end" },
    { "sample", "prompt", K_LIST, L(sample_prompts, n_sample_prompts), PRESET_MAX_SAMPLES, 0, 0, 0, NULL, "prompts|sample_prompt|validation_prompt",
      "preview prompts, one line each (at most 8)" },
    { "sample", "sampler", K_ENUM, F(sampler), 0, 0, 0, 0, 0, "ddim|euler", "scheduler|sampling_method", "ddim | euler" },
    { "sample", "sample_steps", K_INT, F(sample_steps), 0, 0, 1, 1000, 0, NULL, "num_inference_steps|steps_sample|inference_steps", "1..1000" },
    { "sample", "guidance", K_FLOAT, F(guidance), 0, 0, 0, 50, 0, NULL, "guidance_scale|cfg|cfg_scale", "classifier-free guidance scale, 0..50" },

    { "output", "output_dir", K_STR, F(output_dir), 0, 0, 0, 0, 0, NULL, "out_dir|outdir|runs_dir", "run folders go here (a relative path: relative to the working directory)" },
    { "output", "run_name", K_STR, F(run_name), 0, 0, 0, 0, 0, NULL, "name|run", "empty: derived from the time and the knobs" },
    { "output", "export_dtype", K_ENUM, F(export_dtype), 0, 0, 0, 0, 0, "f32|f16|bf16", "save_precision|save_dtype|dtype",
      "the exported adapter's tensors: f32 | f16 | bf16 (rounded to nearest even; training and checkpoints stay f32)" },
};
#define NKEYS ((int)(sizeof keys / sizeof keys[0]))
static const char *const sections[] = { "model", "data", "adapter", "train", "sample", "output" };
#define NSECTIONS 6

/* Keys that hold a file or folder path. In a preset file a relative one is
 * relative to the file's folder (preset_load resolves it); from --set, to the
 * working directory; preset_save writes them absolute. output_dir is not one
 * of them: run folders go under it relative to the working directory. */
static int is_path_key(const Key *k) {
    return k->off == offsetof(Preset, model) || k->off == offsetof(Preset, tokenizer) ||
           k->off == offsetof(Preset, images) || k->off == offsetof(Preset, class_dir);
}
/* a value of a path key that names no file: empty (search / generate), or a
 * built-in model (models/model.h's names, MODEL_TINY_RANDOM included) */
static int names_no_file(const Key *k, const char *v) {
    return !v[0] || (k->off == offsetof(Preset, model) &&
                     (!strcmp(v, "tiny") || !strcmp(v, "tiny-random") || !strcmp(v, "sd15") ||
                      !strcmp(v, "sdxl")));
}

static void *field(Preset *p, const Key *k) { return (char *)p + k->off; }
static const void *cfield(const Preset *p, const Key *k) { return (const char *)p + k->off; }
static int *list_count(Preset *p, const Key *k) { return (int *)((char *)p + k->count_off); }
static int clist_count(const Preset *p, const Key *k) { return *(const int *)((const char *)p + k->count_off); }

static void set_text(char *dst, size_t cap, const char *s) {
    size_t n = strlen(s);
    memset(dst, 0, cap);  /* zero the tail: presets compare with memcmp */
    memcpy(dst, s, n < cap ? n : cap - 1);
}

void preset_defaults(Preset *p) {
    memset(p, 0, sizeof *p);
    set_text(p->model, sizeof p->model, "tiny");
    set_text(p->device, sizeof p->device, "auto");
    set_text(p->precision, sizeof p->precision, "auto");
    set_text(p->vae_tiling, sizeof p->vae_tiling, "auto");
    p->resolution = 32;
    set_text(p->adapter, sizeof p->adapter, "krona");
    p->a1 = 4;
    p->a2 = 4;
    p->lora_rank = 4;
    p->lora_alpha = 4.0f;
    set_text(p->modules, sizeof p->modules, "attn");
    p->lr = 6e-4f;
    set_text(p->lr_schedule, sizeof p->lr_schedule, "constant");
    p->iterations = 500;
    p->batch = 1;
    p->grad_accum = 1;
    p->weight_decay = 1e-2f;
    p->seed = 42;
    p->checkpoint_every = 100;
    set_text(p->prediction, sizeof p->prediction, "auto");
    set_text(p->grad_checkpointing, sizeof p->grad_checkpointing, "auto");
    p->sample_every = 100;
    set_text(p->sampler, sizeof p->sampler, "ddim");
    p->sample_steps = 25;
    p->guidance = 5.0f;
    set_text(p->output_dir, sizeof p->output_dir, "runs");
    set_text(p->export_dtype, sizeof p->export_dtype, "f32");
}

/* ---- suggestions ---- */

/* closest key (by its name or an alias) in section (NULL: any), or NULL if nothing is close */
static const Key *suggest_key(const char *section, const char *name) {
    const Key *best = NULL;
    int bd = 1000;
    for (int i = 0; i < NKEYS; i++) {
        if (section && strcmp(keys[i].section, section) != 0) continue;
        int d = suggest_distance(name, keys[i].key);
        const char *a = keys[i].aliases;
        while (a && *a) {
            const char *bar = strchr(a, '|');
            size_t n = bar ? (size_t)(bar - a) : strlen(a);
            char alias[64];
            if (n < sizeof alias) {
                memcpy(alias, a, n);
                alias[n] = 0;
                int da = suggest_distance(name, alias);
                if (da < d) d = da;
            }
            a = bar ? bar + 1 : NULL;
        }
        if (d < bd) { bd = d; best = &keys[i]; }
    }
    int len = (int)strlen(name);
    int limit = len <= 4 ? 1 : len / 3 + 1;
    return bd <= limit ? best : NULL;
}

static const Key *find_key(const char *section, const char *name) {
    for (int i = 0; i < NKEYS; i++)
        if ((!section || strcmp(keys[i].section, section) == 0) && strcmp(keys[i].key, name) == 0) return &keys[i];
    return NULL;
}

static int is_section(const char *s) {
    for (int i = 0; i < NSECTIONS; i++) if (strcmp(sections[i], s) == 0) return 1;
    return 0;
}

/* "unknown key 'x' in [s] (did you mean 'y'?)" into why */
static void unknown_key_msg(char *why, size_t n, const char *section, const char *name) {
    const Key *elsewhere = find_key(NULL, name);
    if (section && elsewhere) {
        snprintf(why, n, "unknown key '%s' in [%s] (it belongs in [%s])", name, section, elsewhere->section);
        return;
    }
    const Key *s = suggest_key(section, name);
    if (!s && section) s = suggest_key(NULL, name);
    char sec[48] = "";
    if (section) snprintf(sec, sizeof sec, " in [%s]", section);
    if (s && (!section || strcmp(s->section, section) == 0))
        snprintf(why, n, "unknown key '%s'%s (did you mean '%s'?)", name, sec, s->key);
    else if (s)
        snprintf(why, n, "unknown key '%s'%s (did you mean '%s' in [%s]?)", name, sec, s->key, s->section);
    else
        snprintf(why, n, "unknown key '%s'%s", name, sec);
}

/* ---- values ---- */

static void fmt_range(char *buf, size_t n, const Key *k) {
    if (k->kind == K_FLOAT) snprintf(buf, n, "%s%g, %g]", k->lo_open ? "(" : "[", k->lo, k->hi);
    else snprintf(buf, n, "%.0f..%.0f", k->lo, k->hi);
}

static int text_ok(const char *s, char *why, size_t n) {
    for (const unsigned char *q = (const unsigned char *)s; *q; q++)
        if (*q < 0x20 || *q == 0x7f) { snprintf(why, n, "control characters are not allowed"); return -1; }
    return 0;
}

/* range / membership checks on a number or string already parsed */
static int check_number(const Key *k, double v, char *why, size_t n) {
    char r[64];
    fmt_range(r, sizeof r, k);
    if (k->kind == K_FLOAT) {
        if (!isfinite(v) || (k->lo_open ? v <= k->lo : v < k->lo) || v > k->hi) {
            snprintf(why, n, "out of range, allowed %s", r);
            return -1;
        }
        return 0;
    }
    if (k->kind == K_INT) {
        if (v < k->lo || v > k->hi) { snprintf(why, n, "out of range, allowed %s", r); return -1; }
        if (k->off == offsetof(Preset, resolution) && (long long)v % 8 != 0) {
            snprintf(why, n, "must be a multiple of 8 (the latent/UNet downsampling needs it), allowed 8..4096");
            return -1;
        }
    }
    return 0;
}

static int check_enum(const Key *k, const char *s, char *why, size_t n) {
    const char *c = k->choices;
    size_t sl = strlen(s);
    while (c) {
        const char *bar = strchr(c, '|');
        size_t cl = bar ? (size_t)(bar - c) : strlen(c);
        if (cl == sl && memcmp(c, s, sl) == 0) return 0;
        c = bar ? bar + 1 : NULL;
    }
    size_t w = (size_t)snprintf(why, n, "must be one of: ");
    for (const char *q = k->choices; *q && w + 3 < n; q++) {
        if (*q == '|') { why[w++] = ','; why[w++] = ' '; }
        else why[w++] = *q;
    }
    if (n) why[w < n ? w : n - 1] = 0;
    return -1;
}

/* Undo save's quoting: "..." with \" \\ \; escapes. */
static int unquote(const char *v, char *out, size_t cap, char *why, size_t n) {
    size_t len = strlen(v);
    if (len == 0 || v[0] != '"') {
        if (len >= cap) { snprintf(why, n, "too long (at most %zu characters)", cap - 1); return -1; }
        memcpy(out, v, len + 1);
        return 0;
    }
    if (len < 2 || v[len - 1] != '"') { snprintf(why, n, "unterminated quote (a value starting with \" must end with \")"); return -1; }
    size_t k = 0;
    for (size_t i = 1; i + 1 < len; i++) {
        char c = v[i];
        if (c == '\\' && i + 2 < len && (v[i + 1] == '"' || v[i + 1] == '\\' || v[i + 1] == ';')) c = v[++i];
        if (k + 1 >= cap) { snprintf(why, n, "too long (at most %zu characters)", cap - 1); return -1; }
        out[k++] = c;
    }
    out[k] = 0;
    return 0;
}

static int parse_bool(const char *s, int *out) {
    static const char *const t[] = { "1", "true", "yes", "on" }, *const f[] = { "0", "false", "no", "off" };
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, t[i]) == 0) { *out = 1; return 0; }
        if (strcasecmp(s, f[i]) == 0) { *out = 0; return 0; }
    }
    return -1;
}

/* Set one key from text. append: K_LIST adds instead of replacing the list.
 * why gets the reason on failure. */
static int set_key(Preset *p, const Key *k, const char *raw, int append, char *why, size_t n) {
    char v[PRESET_PATH_MAX + 8];
    size_t cap = k->kind == K_STR || k->kind == K_LIST ? k->size : sizeof v;
    if (cap > sizeof v) cap = sizeof v;
    if (unquote(raw, v, cap, why, n)) return -1;
    switch (k->kind) {
    case K_STR:
        if (text_ok(v, why, n)) return -1;
        set_text(field(p, k), k->size, v);
        return 0;
    case K_ENUM:
        if (check_enum(k, v, why, n)) return -1;
        set_text(field(p, k), k->size, v);
        return 0;
    case K_LIST: {
        int *cnt = list_count(p, k);
        if (!append) {
            memset(field(p, k), 0, k->size * (size_t)k->max_items);
            *cnt = 0;
        }
        if (!v[0]) return 0;   /* "image =" clears the list */
        if (text_ok(v, why, n)) return -1;
        if (*cnt >= k->max_items) { snprintf(why, n, "too many entries (at most %d)", k->max_items); return -1; }
        set_text((char *)field(p, k) + (size_t)*cnt * k->size, k->size, v);
        (*cnt)++;
        return 0;
    }
    case K_BOOL: {
        int b;
        if (parse_bool(v, &b)) { snprintf(why, n, "not a boolean (use 0/1, true/false, yes/no, on/off)"); return -1; }
        *(int *)field(p, k) = b;
        return 0;
    }
    case K_INT: {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (end == v || *end) {
            char *fe;
            double d = strtod_l(v, &fe, fs_c_locale());
            if (fe != v && !*fe && isfinite(d)) snprintf(why, n, "not an integer");
            else snprintf(why, n, "not a number");
            return -1;
        }
        if (errno == ERANGE || check_number(k, (double)x, why, n)) {
            if (errno == ERANGE) { char r[64]; fmt_range(r, sizeof r, k); snprintf(why, n, "out of range, allowed %s", r); }
            return -1;
        }
        *(int *)field(p, k) = (int)x;
        return 0;
    }
    case K_FLOAT: {
        char *end;
        float x = strtof_l(v, &end, fs_c_locale());
        if (end == v || *end) { snprintf(why, n, "not a number"); return -1; }
        if (!isfinite(x)) { snprintf(why, n, "not a finite number"); return -1; }
        if (check_number(k, x, why, n)) return -1;
        *(float *)field(p, k) = x;
        return 0;
    }
    case K_U64: {   /* the seed: one rule with every --seed (rng_parse_seed) */
        uint64_t x;
        if (rng_parse_seed(v, &x, why, n)) return -1;
        *(unsigned long long *)field(p, k) = x;
        return 0;
    }
    }
    return -1;
}

/* ---- loading ---- */

typedef struct {
    const char *p, *end;
    int line;
    const char *path;
    Preset *pre;
    char *err;
    size_t errlen;
    int failed;
    const char *base;            /* relative paths are relative to this folder (NULL: cwd) */
    int first_line[NKEYS];       /* where each key was first set (0: not yet); a list
                                    key's first line replaces the list, later ones add */
    const char *longval;         /* value of an over-long line, passed around inih */
    size_t longlen;
} Ctx;

#define LONG_MARK "\x1e"

static int ctx_fail(Ctx *c, const char *fmt, ...) {
    if (!c->failed && c->err && c->errlen) {
        int k = snprintf(c->err, c->errlen, "%s:%d: ", c->path, c->line);
        if (k >= 0 && (size_t)k < c->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err + k, c->errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    c->failed = 1;
    return 0;
}

/* inih's fgets-style reader over our buffer: one line per call. */
static char *reader(char *str, int num, void *stream) {
    Ctx *c = stream;
    if (c->failed || c->p >= c->end) return NULL;
    const char *s = c->p, *nl = memchr(s, '\n', (size_t)(c->end - s));
    const char *e = nl ? nl : c->end;
    c->p = nl ? nl + 1 : c->end;
    c->line++;
    if (c->line == 1 && e - s >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) s += 3;   /* BOM */
    while (s < e && (*s == ' ' || *s == '\t')) s++;   /* no multi-line continuations */
    while (e > s && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t')) e--;
    size_t len = (size_t)(e - s);
    if (len && memchr(s, 0, len)) { ctx_fail(c, "NUL byte in line (not a text file?)"); return NULL; }
    if (len == 0 || *s == ';' || *s == '#') {
        str[0] = '\n'; str[1] = 0;
        return str;
    }
    if (*s == '[') {
        const char *close = memchr(s, ']', len);
        if (!close) { ctx_fail(c, "malformed section header (missing ']')"); return NULL; }
        char name[64];
        size_t nn = (size_t)(close - s - 1);
        if (nn >= sizeof name) nn = sizeof name - 1;
        memcpy(name, s + 1, nn);
        name[nn] = 0;
        if (!is_section(name)) {
            int best = 1000, bi = -1;
            for (int i = 0; i < NSECTIONS; i++) {
                int d = suggest_distance(name, sections[i]);
                if (d < best) { best = d; bi = i; }
            }
            if (bi >= 0 && best <= 2)
                ctx_fail(c, "unknown section [%s] (did you mean [%s]?)", name, sections[bi]);
            else
                ctx_fail(c, "unknown section [%s] (sections: model, data, adapter, train, sample, output)", name);
            return NULL;
        }
    } else {
        const char *eq = NULL;
        for (const char *q = s; q < e; q++) if (*q == '=' || *q == ':') { eq = q; break; }
        if (!eq) {
            ctx_fail(c, "malformed line '%.*s' (expected 'key = value' or '[section]')", (int)(len > 60 ? 60 : len), s);
            return NULL;
        }
        if (len + 2 > (size_t)num) {
            /* too long for inih's buffer: hand it the key and a marker, keep the value here */
            size_t kl = (size_t)(eq - s);
            if (kl + 4 > (size_t)num) { ctx_fail(c, "key too long"); return NULL; }
            memcpy(str, s, kl);
            memcpy(str + kl, "=" LONG_MARK "\n", 4);
            c->longval = eq + 1;
            c->longlen = (size_t)(e - eq - 1);
            return str;
        }
    }
    memcpy(str, s, len);
    str[len] = '\n';
    str[len + 1] = 0;
    return str;
}

/* The path key k just set from this line, made relative to the preset's folder
 * (a list key: its last entry; "image =" set none). 1, or 0 after ctx_fail. */
static int resolve_path(Ctx *c, const Key *k, const char *name, const char *value) {
    char *v = field(c->pre, k);
    if (k->kind == K_LIST) {
        int cnt = *list_count(c->pre, k);
        if (cnt < 1) return 1;
        v += (size_t)(cnt - 1) * k->size;
    }
    if (names_no_file(k, v) || v[0] == '/') return 1;
    char abs[PATH_MAX], shown[160];
    if (fs_path_resolve(c->base, v, abs, sizeof abs) != 0 || strlen(abs) >= k->size) {
        fmt_quoted(value, 80, shown, sizeof shown);
        return ctx_fail(c, "%s = %s: with the preset's folder the path is longer than %zu characters; "
                        "give a shorter or absolute one", name, shown, k->size - 1);
    }
    set_text(v, k->size, abs);
    return 1;
}

static int handler(void *user, const char *section, const char *name, const char *value) {
    Ctx *c = user;
    if (c->failed) return 0;
    char *longv = NULL;
    if (c->longval && strcmp(value, LONG_MARK) == 0) {
        /* do what inih does to values: cut an inline "; comment", trim */
        longv = malloc(c->longlen + 1);
        if (!longv) return ctx_fail(c, "out of memory");
        memcpy(longv, c->longval, c->longlen);
        longv[c->longlen] = 0;
        for (char *q = longv + 1; *q; q++)
            if (*q == ';' && isspace((unsigned char)q[-1])) { *q = 0; break; }
        char *b = longv;
        while (*b && isspace((unsigned char)*b)) b++;
        memmove(longv, b, strlen(b) + 1);
        size_t l = strlen(longv);
        while (l && isspace((unsigned char)longv[l - 1])) longv[--l] = 0;
        value = longv;
    }
    c->longval = NULL;
    int ok = 1;
    if (!section[0]) {
        const Key *k = find_key(NULL, name);
        if (k) ctx_fail(c, "key '%s' before any section (put it under [%s])", name, k->section);
        else ctx_fail(c, "key '%s' before any section", name);
        ok = 0;
    } else {
        const Key *k = find_key(section, name);
        if (!k) {
            char why[256];
            unknown_key_msg(why, sizeof why, section, name);
            ok = ctx_fail(c, "%s", why);
        } else {
            int idx = (int)(k - keys);
            char why[200], shown[160];
            int append = k->kind == K_LIST && c->first_line[idx];
            if (k->kind != K_LIST && c->first_line[idx]) {
                ok = ctx_fail(c, "'%s' is set twice in [%s] (first on line %d): keep one of the two lines",
                              name, section, c->first_line[idx]);
            } else if (set_key(c->pre, k, value, append, why, sizeof why)) {
                fmt_quoted(value, 80, shown, sizeof shown);
                ok = ctx_fail(c, "%s = %s: %s", name, shown, why);
            } else if (is_path_key(k)) {
                ok = resolve_path(c, k, name, value);
            }
            if (!c->first_line[idx]) c->first_line[idx] = c->line;
        }
    }
    free(longv);
    return ok;
}

static int parse_text(Preset *p, const char *text, size_t n, const char *path, const char *base,
                      char *err, size_t errlen) {
    Preset tmp = *p;   /* commit only when the whole file is good */
    Ctx c;
    memset(&c, 0, sizeof c);
    c.p = text; c.end = text + n; c.path = path; c.pre = &tmp; c.err = err; c.errlen = errlen;
    c.base = base;
    int r = ini_parse_stream(reader, &c, handler, &c);
    if (c.failed) return -1;
    if (r != 0) {
        if (err && errlen) snprintf(err, errlen, "%s:%d: malformed line (expected 'key = value' or '[section]')", path, r);
        return -1;
    }
    *p = tmp;
    return 0;
}

int preset_load_from(Preset *p, const char *path, const char *base, char *err, size_t errlen) {
    size_t n;
    char *text = fs_read_all(path, FS_TEXT_MAX, &n, err, errlen);
    if (!text) return -1;
    int r = parse_text(p, text, n, path, base, err, errlen);
    free(text);
    return r;
}

int preset_load(Preset *p, const char *path, char *err, size_t errlen) {
    char dir[PATH_MAX];
    fs_dir_of(path, dir, sizeof dir);
    return preset_load_from(p, path, dir, err, errlen);
}

int preset_set(Preset *p, const char *assignment_in, char *err, size_t errlen) {
    /* echoed in errors shortened, so a 10,000-character value never hides the reason */
    char assignment_shown[200];
    fmt_shorten(assignment_in, 120, assignment_shown, sizeof assignment_shown);
    const char *assignment = assignment_shown;
    const char *eq = strchr(assignment_in, '=');
    if (!eq || eq == assignment_in) {
        snprintf(err, errlen, "--set %s: expected key=value or section.key=value", assignment);
        return -1;
    }
    int append = eq[-1] == '+';
    const char *ke = append ? eq - 1 : eq;
    char lhs[96], section[96] = "", *name = lhs;
    size_t kl = (size_t)(ke - assignment_in);
    if (kl >= sizeof lhs) { snprintf(err, errlen, "--set %s: key too long", assignment); return -1; }
    memcpy(lhs, assignment_in, kl);
    lhs[kl] = 0;
    while (kl && isspace((unsigned char)lhs[kl - 1])) lhs[--kl] = 0;
    while (isspace((unsigned char)*name)) name++;
    char *dot = strchr(name, '.');
    if (dot) {
        *dot = 0;
        snprintf(section, sizeof section, "%s", name);
        name = dot + 1;
        if (!is_section(section)) {
            snprintf(err, errlen, "--set %s: unknown section [%s] (sections: model, data, adapter, train, sample, output)", assignment, section);
            return -1;
        }
    }
    const Key *k = find_key(section[0] ? section : NULL, name);
    if (!k) {
        char why[256];
        unknown_key_msg(why, sizeof why, section[0] ? section : NULL, name);
        snprintf(err, errlen, "--set %s: %s", assignment, why);
        return -1;
    }
    if (append && k->kind != K_LIST) {
        snprintf(err, errlen, "--set %s: '+=' only works for list keys (image, prompt)", assignment);
        return -1;
    }
    const char *v = eq + 1;
    while (isspace((unsigned char)*v)) v++;
    size_t vl = strlen(v);
    while (vl && isspace((unsigned char)v[vl - 1])) vl--;
    if (vl >= PRESET_PATH_MAX + 8) {   /* longer than any field: say so without copying it */
        size_t cap = k->kind == K_STR || k->kind == K_LIST ? k->size : 64;
        snprintf(err, errlen, "--set %s: too long (at most %zu characters)", assignment, cap - 1);
        return -1;
    }
    char val[PRESET_PATH_MAX + 8];
    snprintf(val, sizeof val, "%.*s", (int)vl, v);
    Preset tmp = *p;
    char why[200];
    if (set_key(&tmp, k, val, append, why, sizeof why)) {
        snprintf(err, errlen, "--set %s: %s", assignment, why);
        return -1;
    }
    *p = tmp;
    return 0;
}

/* ---- validation ---- */

int preset_validate(const Preset *p, char *err, size_t errlen) {
    char why[200];
    for (int i = 0; i < NKEYS; i++) {
        const Key *k = &keys[i];
        const void *f = cfield(p, k);
        int bad = 0;
        char shown[128] = "";
        switch (k->kind) {
        case K_STR: case K_ENUM:
            if (!memchr(f, 0, k->size)) { snprintf(why, sizeof why, "not terminated (longer than %zu characters)", k->size - 1); bad = 1; break; }
            fmt_quoted(f, 60, shown, sizeof shown);
            bad = k->kind == K_ENUM ? check_enum(k, f, why, sizeof why) : text_ok(f, why, sizeof why);
            if (!bad && !((const char *)f)[0] && (k->off == offsetof(Preset, model) || k->off == offsetof(Preset, output_dir))) {
                snprintf(why, sizeof why, "must not be empty");
                bad = 1;
            }
            if (!bad && k->off == offsetof(Preset, run_name) &&
                (strchr(f, '/') || strcmp(f, ".") == 0 || strcmp(f, "..") == 0)) {
                snprintf(why, sizeof why, "must be a plain folder name (no '/')");
                bad = 1;
            }
            break;
        case K_LIST: {
            int cnt = clist_count(p, k);
            if (cnt < 0 || cnt > k->max_items) {
                snprintf(shown, sizeof shown, "%d entries", cnt);
                snprintf(why, sizeof why, "at most %d allowed", k->max_items);
                bad = 1;
                break;
            }
            for (int j = 0; j < cnt && !bad; j++) {
                const char *s = (const char *)f + (size_t)j * k->size;
                fmt_quoted(s, 60, shown, sizeof shown);
                if (!memchr(s, 0, k->size)) { snprintf(why, sizeof why, "entry %d not terminated", j + 1); bad = 1; }
                else if (!s[0]) { snprintf(why, sizeof why, "entry %d is empty", j + 1); bad = 1; }
                else bad = text_ok(s, why, sizeof why);
            }
            break;
        }
        case K_INT:
            snprintf(shown, sizeof shown, "%d", *(const int *)f);
            bad = check_number(k, *(const int *)f, why, sizeof why);
            break;
        case K_BOOL:
            snprintf(shown, sizeof shown, "%d", *(const int *)f);
            if (*(const int *)f != 0 && *(const int *)f != 1) { snprintf(why, sizeof why, "must be 0 or 1"); bad = 1; }
            break;
        case K_FLOAT:
            snprintf(shown, sizeof shown, "%g", *(const float *)f);
            bad = check_number(k, *(const float *)f, why, sizeof why);
            break;
        case K_U64:
            break;
        }
        if (bad) {
            snprintf(err, errlen, "%s.%s = %s: %s", k->section, k->key, shown, why);
            return -1;
        }
    }
    if (strcmp(p->lr_schedule, "warmup") == 0 && p->warmup_steps > p->iterations) {
        snprintf(err, errlen, "train.warmup_steps = %d: must not exceed train.iterations (%d)", p->warmup_steps, p->iterations);
        return -1;
    }
    if (p->prior_weight > 0 && !p->class_prompt[0]) {
        snprintf(err, errlen, "data.prior_weight = %g: prior preservation needs data.class_prompt (e.g. \"a dog\"), or set prior_weight = 0",
                 p->prior_weight);
        return -1;
    }
    return 0;
}

/* ---- saving ---- */

static void put_value(FILE *f, const char *s) {
    size_t n = strlen(s);
    if (n) fputc(' ', f);
    int quote = n && (isspace((unsigned char)s[0]) || isspace((unsigned char)s[n - 1]) || s[0] == '"' || strchr(s, ';'));
    if (!quote) { fputs(s, f); return; }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\' || *s == ';') fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

/* p's relative paths (the working directory's: --set, the studio) made
 * absolute, so the file written works from any folder. 0, or -1 with err. */
static int absolute_paths(Preset *p, const char *path, char *err, size_t errlen) {
    for (int i = 0; i < NKEYS; i++) {
        const Key *k = &keys[i];
        if (!is_path_key(k)) continue;
        int cnt = k->kind == K_LIST ? *list_count(p, k) : 1;
        for (int j = 0; j < cnt && j < (k->kind == K_LIST ? k->max_items : 1); j++) {
            char *v = (char *)field(p, k) + (size_t)j * k->size, abs[PATH_MAX], shown[160];
            if (!memchr(v, 0, k->size) || names_no_file(k, v) || v[0] == '/') continue;
            if (fs_path_resolve(NULL, v, abs, sizeof abs) != 0 || strlen(abs) >= k->size) {
                fmt_quoted(v, 80, shown, sizeof shown);
                snprintf(err, errlen, "cannot save '%s': %s.%s = %s is longer than %zu characters as "
                         "an absolute path", path, k->section, k->key, shown, k->size - 1);
                return -1;
            }
            set_text(v, k->size, abs);
        }
    }
    return 0;
}

int preset_save(const Preset *p_in, const char *path, char *err, size_t errlen) {
    Preset abs = *p_in;
    const Preset *p = &abs;
    /* texts that the .ini format cannot carry (a newline would inject keys) are
     * refused; out-of-range numbers are written as they are (preset_validate) */
    for (int i = 0; i < NKEYS; i++) {
        const Key *k = &keys[i];
        if (k->kind != K_STR && k->kind != K_ENUM && k->kind != K_LIST) continue;
        int cnt = k->kind == K_LIST ? clist_count(p, k) : 1;
        if (cnt < 0 || cnt > (k->kind == K_LIST ? k->max_items : 1)) {
            snprintf(err, errlen, "cannot save '%s': %s.%s has %d entries (at most %d)", path, k->section, k->key, cnt, k->max_items);
            return -1;
        }
        for (int j = 0; j < cnt; j++) {
            const char *s = (const char *)cfield(p, k) + (size_t)j * k->size;
            char why[80];
            if (!memchr(s, 0, k->size) || text_ok(s, why, sizeof why)) {
                snprintf(err, errlen, "cannot save '%s': %s.%s is unterminated or contains control characters", path, k->section, k->key);
                return -1;
            }
        }
    }
    if (absolute_paths(&abs, path, err, errlen) != 0) return -1;
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) { snprintf(err, errlen, "cannot write '%s': out of memory", path); return -1; }
    locale_t old = uselocale(fs_c_locale());   /* "%.9g" must print '.', whatever LC_NUMERIC says */
    fputs("# krona-studio preset. Every key is listed; unknown keys are errors.\n"
          "# Floats are written with the fewest digits that read back to the same value.\n", f);
    const char *sec = "";
    for (int i = 0; i < NKEYS; i++) {
        const Key *k = &keys[i];
        const void *v = cfield(p, k);
        if (strcmp(sec, k->section) != 0) {
            sec = k->section;
            fprintf(f, "\n[%s]\n", sec);
        }
        fprintf(f, "# %s\n", k->comment);
        switch (k->kind) {
        case K_STR: case K_ENUM:
            fprintf(f, "%s =", k->key);
            put_value(f, v);
            fputc('\n', f);
            break;
        case K_LIST: {
            int cnt = clist_count(p, k);
            if (cnt == 0) fprintf(f, "%s =\n", k->key);   /* explicit: clears the list on load */
            for (int j = 0; j < cnt && j < k->max_items; j++) {
                fprintf(f, "%s =", k->key);
                put_value(f, (const char *)v + (size_t)j * k->size);
                fputc('\n', f);
            }
            break;
        }
        case K_INT: case K_BOOL: fprintf(f, "%s = %d\n", k->key, *(const int *)v); break;
        case K_FLOAT: {
            /* shortest "%.Ng" that reads back to the same float; N = 9 always does */
            float x = *(const float *)v;
            char num[32];
            for (int prec = 1; prec <= 9; prec++) {
                snprintf(num, sizeof num, "%.*g", prec, (double)x);
                if (strtof_l(num, NULL, fs_c_locale()) == x) break;
            }
            fprintf(f, "%s = %s\n", k->key, num);
            break;
        }
        case K_U64: fprintf(f, "%s = %llu\n", k->key, *(const unsigned long long *)v); break;
        }
    }
    uselocale(old);
    if (fclose(f) != 0 || !buf) {
        free(buf);
        snprintf(err, errlen, "cannot write '%s': out of memory", path);
        return -1;
    }
    int r = fs_write_atomic(path, buf, n, err, errlen);
    free(buf);
    return r;
}

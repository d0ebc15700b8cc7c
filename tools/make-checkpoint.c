/* make-checkpoint.c — a FULL-SIZE single-file Stable Diffusion checkpoint with
 * random weights, in the original (LDM) layout that A1111 / ComfyUI users
 * keep: SD 1.5 (UNet, VAE, CLIP ViT-L) or SDXL base (+ OpenCLIP ViT-bigG).
 * For tests that need a real-size file (`make check-large`) without a
 * download. Not a usable model: the values are random.
 *
 *   make-checkpoint --kind sd15|sdxl [--dtype f16|bf16|f32] [--seed S]
 *                   [--header-only | --verify] OUT.safetensors
 *
 * The tensors are those of the engine's own architecture, named the LDM way:
 * every UNet parameter of unet_param_table (built-in "sd15" / "sdxl"), every
 * VAE parameter of vae_param_table, every text-encoder tensor of te_create +
 * te_tensor_info, each turned into its single-file key by the convert tables
 * (convert_to_ldm). Where a table says the file stores a tensor differently,
 * it is written the way real files store it: OpenCLIP's q/k/v, three diffusers
 * tensors, are one fused attn.in_proj_weight [3C, C] / in_proj_bias [3C]
 * (written once); its text_projection is [in, out] (transposed); the VAE's
 * attention linears are 1x1 convolutions [C, C, 1, 1]. The small keys real
 * files carry that hold no weight are added too (each is one that
 * convert_ldm_ignored tolerates):
 *   SD 1.5: cond_stage_model.transformer.text_model.embeddings.position_ids
 *           (I64 [1,77]), LatentDiffusion's noise-schedule buffers (betas,
 *           alphas_cumprod, ..., [1000] each, computed for SD's schedule) and
 *           LitEma's model_ema.decay / model_ema.num_updates (I32);
 *   SDXL:   conditioner.embedders.0.transformer.text_model.embeddings.position_ids
 *           (I64 [1,77]) and conditioner.embedders.1.model.logit_scale ([]).
 * Float buffers take the file's dtype, as torch's module.half() casts them.
 *
 * Values: weights and float biases 0.02 x an approximately standard normal
 * (the sum of four 16-bit uniforms, scaled to unit variance: bounded by
 * +-3.46, smooth enough for random weights), LayerNorm / GroupNorm weights 1
 * and their biases 0, so forward passes stay finite in f16 too. Each value is
 * a pure function of (seed, tensor key, index): the file is byte-identical for
 * a seed whatever the thread count, and any tensor can be regenerated alone
 * (--verify does so). Generated on the fly, 2 threads (OpenMP), in pieces of
 * at most 32 MiB: memory stays small whatever the file size.
 *
 * The file: u64 header length, the JSON header (__metadata__ {"format":"pt"},
 * tensors sorted as the project's writer sorts them: larger dtype first, then
 * by name; data_offsets tile the data; padded with spaces to a multiple of 8),
 * then the data. Written to OUT.tmp.<pid>, fsync'ed, renamed to OUT.
 * --header-only writes the header and ftruncate()s the file to its full size:
 * a sparse file whose data reads as zeros, for shape and name checks that need
 * no gigabytes (tests/test_make_checkpoint.c). --verify opens OUT, checks that
 * it holds exactly these tensors, regenerates each and compares the bytes, and
 * prints the statistics of the random weights. Exit status 0, or 1 with a
 * one-line message on stderr. */
#include "core/backend.h"
#include "core/fmt.h"
#include "formats/json.h"
#include "formats/safetensors.h"
#include "models/convert.h"
#include "models/text_encoder.h"
#include "models/unet.h"
#include "models/vae.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WEIGHT_STD 0.02
#define PIECE_BYTES ((size_t)32 << 20)   /* generated and written at a time */
#define SCHED_N 1000

enum { INIT_NORMAL, INIT_ONE, INIT_ZERO, INIT_CONST, INIT_ARANGE, INIT_SCHED };
enum { PART_OTHER = 4 };   /* after the four ConvertParts: keys that hold no weight */

typedef struct {
    char name[CONVERT_NAME_MAX];   /* the single-file key */
    int dtype, ndim;
    int64_t shape[4], numel;
    int part;                      /* ConvertPart, or PART_OTHER */
    int init;                      /* INIT_* */
    double value;                  /* INIT_CONST */
    const double *sched;           /* INIT_SCHED: numel values */
    int qkv;                       /* a fused OpenCLIP in_proj: parts seen, bits 0..2 */
    uint64_t off;                  /* into the data section */
    uint64_t seed;                 /* of its values */
} Tensor;

typedef struct {
    Tensor *t;
    int n, cap;
    int64_t params[5];             /* diffusers parameters per part (+ other elements) */
    int tensors[5];                /* single-file keys per part */
    uint64_t data_bytes;
    char *header;                  /* the JSON, padded */
    size_t header_len;
} Plan;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "make-checkpoint: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ values */

static inline uint64_t mix64(uint64_t z) {   /* splitmix64's finaliser */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t tensor_seed(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a of the key */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
    return mix64(h ^ mix64(seed + 0x9e3779b97f4a7c15ull));
}

/* Irwin-Hall with n = 4 on 16-bit uniforms (k + 0.5) / 65536: mean 2,
 * variance 1/3, so ((s + 2) / 65536 - 2) * sqrt(3) has mean 0, variance 1. */
static inline float normal_at(uint64_t tseed, int64_t i) {
    uint64_t r = mix64(tseed + (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull);
    uint32_t s = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) +
                 (uint32_t)((r >> 32) & 0xffff) + (uint32_t)(r >> 48);
    return ((float)s * (1.0f / 65536.0f) + (2.0f / 65536.0f - 2.0f)) * 1.7320508f;
}

static inline float value_at(const Tensor *t, int64_t i) {
    switch (t->init) {
    case INIT_NORMAL: return (float)WEIGHT_STD * normal_at(t->seed, i);
    case INIT_ONE: return 1.0f;
    case INIT_CONST: return (float)t->value;
    case INIT_ARANGE: return (float)i;
    case INIT_SCHED: return (float)t->sched[i];
    default: return 0.0f;
    }
}

/* f32_to_f16 for the hot loop, branch-free in the normal range (a data-
 * dependent rounding branch mispredicts half the time): round to nearest even
 * by adding 0xfff + the kept lsb, then rebias the exponent (a carry into it is
 * right). Bit-identical to f32_to_f16 there (checked for every float of
 * the range); other values go to it. */
static inline uint16_t to_f16(float f) {
    uint32_t x, ax;
    memcpy(&x, &f, 4);
    ax = x & 0x7fffffffu;
    if (ax - 0x38800000u >= 0x47800000u - 0x38800000u) return f32_to_f16(f);
    uint32_t m = ax + 0xfffu + ((ax >> 13) & 1u);
    return (uint16_t)(((x >> 16) & 0x8000u) | ((m >> 13) - (112u << 10)));
}


/* Elements [i0, i0 + n) of t, in its dtype, into dst. The random weights,
 * nearly all of the bytes, have a loop of their own per dtype. */
static void fill(const Tensor *t, int64_t i0, int64_t n, void *dst) {
    int par = n >= (1 << 16);
    const uint64_t seed = t->seed;
    const float sd = (float)WEIGHT_STD;
    (void)par;
    if (t->init == INIT_NORMAL) {
        switch (t->dtype) {
        case ST_F32: {
            float *d = dst;
            #pragma omp parallel for schedule(static) if (par)
            for (int64_t i = 0; i < n; i++) d[i] = sd * normal_at(seed, i0 + i);
            return;
        }
        case ST_F16: {
            uint16_t *d = dst;
            #pragma omp parallel for schedule(static) if (par)
            for (int64_t i = 0; i < n; i++) d[i] = to_f16(sd * normal_at(seed, i0 + i));
            return;
        }
        case ST_BF16: {
            uint16_t *d = dst;
            #pragma omp parallel for schedule(static) if (par)
            for (int64_t i = 0; i < n; i++) d[i] = f32_to_bf16(sd * normal_at(seed, i0 + i));
            return;
        }
        default: break;
        }
    }
    switch (t->dtype) {
    case ST_F32: {
        float *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = value_at(t, i0 + i);
        break;
    }
    case ST_F16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = f32_to_f16(value_at(t, i0 + i));
        break;
    }
    case ST_BF16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = f32_to_bf16(value_at(t, i0 + i));
        break;
    }
    case ST_I64: {   /* position ids, counters: exact integers */
        int64_t *d = dst;
        for (int64_t i = 0; i < n; i++)
            d[i] = t->init == INIT_ARANGE ? i0 + i : (int64_t)llround(t->value);
        break;
    }
    case ST_I32: {
        int32_t *d = dst;
        for (int64_t i = 0; i < n; i++)
            d[i] = t->init == INIT_ARANGE ? (int32_t)(i0 + i) : (int32_t)lround(t->value);
        break;
    }
    default: die("internal: no generator for dtype %s", st_dtype_name(t->dtype));
    }
}

/* ------------------------------------------------------------------ the tensor list */

static Tensor *add(Plan *p, const char *name, int dtype, int ndim, const int64_t *shape, int part,
                   int init) {
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 1024;
        p->t = realloc(p->t, (size_t)p->cap * sizeof *p->t);
        if (!p->t) die("out of memory");
    }
    Tensor *t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    if (strlen(name) >= sizeof t->name) die("key too long: %s", name);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype;
    t->ndim = ndim;
    t->numel = 1;
    for (int d = 0; d < ndim; d++) { t->shape[d] = shape[d]; t->numel *= shape[d]; }
    t->part = part;
    t->init = init;
    return t;
}

/* LayerNorm / GroupNorm parameters: 1-D, and the module's own name (the last
 * component before .weight / .bias) says norm: norm, norm1, group_norm,
 * conv_norm_out, layer_norm1, final_layer_norm, ln_1 (diffusers names here). */
static int norm_init(const char *diff_name, int ndim) {
    if (ndim != 1) return -1;
    size_t n = strlen(diff_name);
    int is_w = n > 7 && !strcmp(diff_name + n - 7, ".weight");
    int is_b = n > 5 && !strcmp(diff_name + n - 5, ".bias");
    if (!is_w && !is_b) return -1;
    size_t end = n - (is_w ? 7 : 5), beg = end;
    while (beg > 0 && diff_name[beg - 1] != '.') beg--;
    char mod[CONVERT_NAME_MAX];
    snprintf(mod, sizeof mod, "%.*s", (int)(end - beg), diff_name + beg);
    if (!strstr(mod, "norm")) return -1;
    return is_w ? INIT_ONE : INIT_ZERO;
}

/* One diffusers parameter of a part, through the part's table. */
static void add_param(Plan *p, const ConvertMap *m, int part, const char *name, int ndim,
                      const int64_t *shape, int dtype) {
    ConvertName c;
    if (convert_to_ldm(m, name, &c)) die("'%s' has no place in the single-file layout", name);
    int64_t sh[4] = {1, 1, 1, 1}, numel = 1;
    int nd = ndim;
    if (ndim < 1 || ndim > 4) die("'%s': %d dimensions", name, ndim);
    for (int d = 0; d < ndim; d++) { sh[d] = shape[d]; numel *= shape[d]; }
    switch (c.transform) {
    case CONVERT_AS_IS: break;
    case CONVERT_CONV_TO_LINEAR:   /* LDM's VAE attention: 1x1 convolutions */
        if (ndim != 2) die("'%s': a linear must be 2-D", name);
        nd = 4; sh[2] = sh[3] = 1;
        break;
    case CONVERT_QKV_PART:         /* one third of the fused in_proj */
        sh[0] *= 3;
        break;
    case CONVERT_TRANSPOSE:        /* OpenCLIP's [in, out] */
        if (ndim != 2) die("'%s': a transposed tensor must be 2-D", name);
        sh[0] = shape[1]; sh[1] = shape[0];
        break;
    }
    p->params[part] += numel;
    if (c.transform == CONVERT_QKV_PART) {
        for (int i = 0; i < p->n; i++) {
            Tensor *o = &p->t[i];
            if (strcmp(o->name, c.ldm)) continue;
            if (o->ndim != nd || o->shape[0] != sh[0] || (nd > 1 && o->shape[1] != sh[1]))
                die("'%s': q/k/v parts of '%s' disagree on the shape", name, c.ldm);
            if (o->qkv & (1 << c.part)) die("'%s': part %d of '%s' given twice", name, c.part, c.ldm);
            o->qkv |= 1 << c.part;
            return;
        }
    }
    int init = norm_init(name, ndim);
    Tensor *t = add(p, c.ldm, dtype, nd, sh, part, init < 0 ? INIT_NORMAL : init);
    if (c.transform == CONVERT_QKV_PART) t->qkv = 1 << c.part;
    p->tensors[part]++;
}

static ConvertMap *map_or_die(ModelKind kind, ConvertPart part, const ConvertShape *s) {
    char err[256];
    ConvertMap *m = convert_map_create(kind, part, s, err, sizeof err);
    if (!m) die("%s", err);
    return m;
}

/* The text towers, as HF configures them (text_encoder/config.json of
 * runwayml/stable-diffusion-v1-5 and text_encoder{,_2}/config.json of
 * stabilityai/stable-diffusion-xl-base-1.0). TODO: te_config_builtin
 * "clip-vit-l" / "openclip-vit-bigg" once text_encoder.c has them. */
static const TextConfig CLIP_VIT_L = {
    .vocab_size = 49408, .hidden_size = 768, .intermediate_size = 3072, .num_hidden_layers = 12,
    .num_attention_heads = 12, .max_position_embeddings = 77, .hidden_act = TE_ACT_QUICK_GELU,
    .layer_norm_eps = 1e-5f, .projection_dim = 0, .eos_token_id = 2,
};
static const TextConfig OPENCLIP_BIGG = {
    .vocab_size = 49408, .hidden_size = 1280, .intermediate_size = 5120, .num_hidden_layers = 32,
    .num_attention_heads = 20, .max_position_embeddings = 77, .hidden_act = TE_ACT_GELU,
    .layer_norm_eps = 1e-5f, .projection_dim = 1280, .eos_token_id = 2,
};

static void add_text(Plan *p, Backend *be, ModelKind kind, ConvertPart part, const TextConfig *tc,
                     int dtype) {
    char err[256];
    /* te_create only reserves the parameter block (calloc: untouched pages), the
     * names and shapes are all that is read */
    TextEncoder *te = te_create(tc, be, err, sizeof err);
    if (!te) die("%s", err);
    ConvertShape s = {.text_layers = tc->num_hidden_layers};
    ConvertMap *m = map_or_die(kind, part, &s);
    for (int i = 0; i < te_n_tensors(te); i++) {
        int nd;
        int64_t sh[2], off;
        const char *name = te_tensor_info(te, i, &nd, sh, &off);
        add_param(p, m, part, name, nd, sh, dtype);
    }
    convert_map_free(m);
    te_free(te);
}

/* LatentDiffusion.register_schedule (ldm/models/diffusion/ddpm.py) for SD's
 * "linear" schedule (linear in sqrt(beta), 0.00085 .. 0.012, 1000 steps),
 * v_posterior 0; computed in double as numpy does, stored as the file's dtype. */
static const char *const SCHED_NAMES[] = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2",
};
#define N_SCHED ((int)(sizeof SCHED_NAMES / sizeof SCHED_NAMES[0]))
static double sched[N_SCHED][SCHED_N];

static void make_schedule(void) {
    double a = sqrt(0.00085), b = sqrt(0.012), cum = 1.0;
    for (int i = 0; i < SCHED_N; i++) {
        double sb = a + (b - a) * i / (SCHED_N - 1), beta = sb * sb, prev = cum;
        cum *= 1.0 - beta;
        double pv = beta * (1.0 - prev) / (1.0 - cum);
        sched[0][i] = beta;
        sched[1][i] = cum;
        sched[2][i] = prev;
        sched[3][i] = sqrt(cum);
        sched[4][i] = sqrt(1.0 - cum);
        sched[5][i] = log(1.0 - cum);
        sched[6][i] = sqrt(1.0 / cum);
        sched[7][i] = sqrt(1.0 / cum - 1.0);
        sched[8][i] = pv;
        sched[9][i] = log(pv > 1e-20 ? pv : 1e-20);
        sched[10][i] = beta * sqrt(prev) / (1.0 - cum);
        sched[11][i] = (1.0 - prev) * sqrt(1.0 - beta) / (1.0 - cum);
    }
}

static void add_other(Plan *p, const char *name, int dtype, int ndim, const int64_t *shape, int init,
                      double value) {
    if (!convert_ldm_ignored(name)) die("internal: '%s' would be read as a weight", name);
    Tensor *t = add(p, name, dtype, ndim, shape, PART_OTHER, init);
    t->value = value;
    p->params[PART_OTHER] += t->numel;
    p->tensors[PART_OTHER]++;
}

static int cmp_tensor(const void *a, const void *b) {   /* as stw_save orders them */
    const Tensor *x = a, *y = b;
    int sx = st_dtype_size(x->dtype), sy = st_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

typedef struct { char *s; size_t n, cap; } Buf;
static void put(Buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        while (b->n + n + 1 > b->cap) b->cap = b->cap ? 2 * b->cap : 1 << 16;
        b->s = realloc(b->s, b->cap);
        if (!b->s) die("out of memory");
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void puts_(Buf *b, const char *s) { put(b, s, strlen(s)); }
static void put_json(Buf *b, const char *s) {
    char tmp[2 * CONVERT_NAME_MAX + 8];
    size_t need = json_escape(tmp, sizeof tmp, s);
    if (need >= sizeof tmp) die("key too long: %s", s);
    put(b, tmp, need);
}

static void plan(Plan *p, const char *kind_name, int dtype, uint64_t seed) {
    ModelKind kind = !strcmp(kind_name, "sdxl") ? MODEL_KIND_SDXL : MODEL_KIND_SD15;
    memset(p, 0, sizeof *p);

    UNetConfig uc;
    if (unet_config_builtin(kind_name, &uc)) die("no built-in UNet '%s'", kind_name);
    UNetParam *up;
    UNetLinear *ul;
    int nu, nl;
    if (unet_param_table(&uc, &up, &nu, &ul, &nl)) die("UNet table of '%s'", kind_name);
    ConvertShape us = {.unet = &uc};
    ConvertMap *m = map_or_die(kind, CONVERT_UNET, &us);
    for (int i = 0; i < nu; i++) add_param(p, m, CONVERT_UNET, up[i].name, up[i].ndim, up[i].shape, dtype);
    convert_map_free(m);
    free(up);
    free(ul);

    VAEConfig vc;
    if (vae_config_builtin(kind_name, &vc)) die("no built-in VAE '%s'", kind_name);
    VAEParam *vp;
    int nv;
    if (vae_param_table(&vc, &vp, &nv)) die("VAE table of '%s'", kind_name);
    ConvertShape vs = {.vae_levels = vc.n_levels, .vae_layers_per_block = vc.layers_per_block};
    m = map_or_die(kind, CONVERT_VAE, &vs);
    for (int i = 0; i < nv; i++) add_param(p, m, CONVERT_VAE, vp[i].name, vp[i].ndim, vp[i].shape, dtype);
    convert_map_free(m);
    free(vp);

    Backend *be = backend_cpu_create();
    if (!be) die("no CPU backend");
    add_text(p, be, kind, CONVERT_TEXT, &CLIP_VIT_L, dtype);
    if (kind == MODEL_KIND_SDXL) add_text(p, be, kind, CONVERT_TEXT_2, &OPENCLIP_BIGG, dtype);
    backend_destroy(be);
    for (int i = 0; i < p->n; i++)
        if (p->t[i].qkv && p->t[i].qkv != 7) die("'%s' lacks a q/k/v part", p->t[i].name);

    /* what real files carry besides the weights */
    char key[CONVERT_NAME_MAX];
    int64_t pos_shape[2] = {1, CLIP_VIT_L.max_position_embeddings};
    snprintf(key, sizeof key, "%stext_model.embeddings.position_ids", convert_part_prefix(kind, CONVERT_TEXT));
    add_other(p, key, ST_I64, 2, pos_shape, INIT_ARANGE, 0);
    if (kind == MODEL_KIND_SD15) {
        make_schedule();
        int64_t n = SCHED_N;
        for (int i = 0; i < N_SCHED; i++) {
            add_other(p, SCHED_NAMES[i], dtype, 1, &n, INIT_SCHED, 0);
            p->t[p->n - 1].sched = sched[i];
        }
        add_other(p, "model_ema.decay", dtype, 0, NULL, INIT_CONST, 0.9999);
        add_other(p, "model_ema.num_updates", ST_I32, 0, NULL, INIT_CONST, 0);
    } else {
        /* OpenCLIP's logit_scale, log(100) once trained */
        snprintf(key, sizeof key, "%slogit_scale", convert_part_prefix(kind, CONVERT_TEXT_2));
        add_other(p, key, dtype, 0, NULL, INIT_CONST, log(100.0));
    }

    qsort(p->t, (size_t)p->n, sizeof *p->t, cmp_tensor);
    for (int i = 1; i < p->n; i++)
        if (!strcmp(p->t[i].name, p->t[i - 1].name)) die("two tensors are '%s'", p->t[i].name);
    Buf h = {0};
    char num[96];
    puts_(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (int i = 0; i < p->n; i++) {
        Tensor *t = &p->t[i];
        t->off = off;
        t->seed = tensor_seed(seed, t->name);
        uint64_t nb = (uint64_t)t->numel * (uint64_t)st_dtype_size(t->dtype);
        puts_(&h, ",");
        put_json(&h, t->name);
        puts_(&h, ":{\"dtype\":\"");
        puts_(&h, st_dtype_name(t->dtype));
        puts_(&h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", t->shape[d]);
            puts_(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + nb);
        puts_(&h, num);
        off += nb;
    }
    puts_(&h, "}");
    while (h.n % 8) puts_(&h, " ");   /* data starts 8-aligned, as the reference pads */
    p->header = h.s;
    p->header_len = h.n;
    p->data_bytes = off;
}

/* ------------------------------------------------------------------ writing */

static void write_all(int fd, const void *buf, size_t n, const char *path) {
    const char *c = buf;
    while (n) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            int e = errno;
            unlink(path);
            die("%s: write failed: %s", path, k < 0 ? strerror(e) : "no progress");
        }
        c += k;
        n -= (size_t)k;
    }
}

/* Seconds spent generating values, waiting for the writer thread to take a
 * full buffer (the disk being slower than the values), and in fsync(). */
typedef struct { double gen, wait, sync; } Timing;

/* A writer thread, so that writing one piece overlaps generating the next:
 * the main thread fills one buffer while the writer writes the other. */
typedef struct {
    int fd;
    const char *path;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const char *buf;   /* the buffer handed over, NULL when the writer is free */
    size_t len;
    int done;
} Writer;

static void *writer_main(void *arg) {
    Writer *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->buf && !w->done) pthread_cond_wait(&w->cv, &w->mu);
        if (!w->buf) break;
        const char *b = w->buf;
        size_t n = w->len;
        pthread_mutex_unlock(&w->mu);
        write_all(w->fd, b, n, w->path);   /* exits the process on failure */
        pthread_mutex_lock(&w->mu);
        w->buf = NULL;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Wait until the writer is free (the buffer handed before is written), then
 * hand it buf (NULL: finish). */
static void writer_hand(Writer *w, const char *buf, size_t len, Timing *tm) {
    double t = now_s();
    pthread_mutex_lock(&w->mu);
    while (w->buf) pthread_cond_wait(&w->cv, &w->mu);
    tm->wait += now_s() - t;
    if (buf) { w->buf = buf; w->len = len; } else w->done = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void write_file(const Plan *p, const char *out, int header_only, Timing *tm) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) die("cannot create '%s': %s", tmp, strerror(errno));
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)p->header_len >> (8 * i));
    write_all(fd, len8, 8, tmp);
    write_all(fd, p->header, p->header_len, tmp);
    if (header_only) {
        /* sparse: the data reads as zeros and takes no disk */
        if (ftruncate(fd, (off_t)(8 + p->header_len + p->data_bytes))) {
            int e = errno;
            unlink(tmp);
            die("%s: ftruncate: %s", tmp, strerror(e));
        }
    } else {
        char *bufs[2] = {malloc(PIECE_BYTES), malloc(PIECE_BYTES)};
        if (!bufs[0] || !bufs[1]) die("out of memory");
        Writer w = {.fd = fd, .path = tmp};
        pthread_mutex_init(&w.mu, NULL);
        pthread_cond_init(&w.cv, NULL);
        pthread_t th;
        if (pthread_create(&th, NULL, writer_main, &w)) die("cannot start the writer thread");
        int cur = 0;
        size_t used = 0;
        for (int i = 0; i < p->n; i++) {
            const Tensor *tn = &p->t[i];
            int64_t es = st_dtype_size(tn->dtype), per = (int64_t)PIECE_BYTES / es;
            for (int64_t i0 = 0; i0 < tn->numel; i0 += per) {
                int64_t n = tn->numel - i0 < per ? tn->numel - i0 : per;
                if (used + (size_t)(n * es) > PIECE_BYTES) {
                    writer_hand(&w, bufs[cur], used, tm);
                    cur ^= 1;
                    used = 0;
                }
                double t = now_s();
                fill(tn, i0, n, bufs[cur] + used);
                tm->gen += now_s() - t;
                used += (size_t)(n * es);
            }
        }
        if (used) writer_hand(&w, bufs[cur], used, tm);
        writer_hand(&w, NULL, 0, tm);
        pthread_join(th, NULL);
        pthread_mutex_destroy(&w.mu);
        pthread_cond_destroy(&w.cv);
        free(bufs[0]);
        free(bufs[1]);
    }
    double t = now_s();
    int synced = fsync(fd);
    tm->sync = now_s() - t;
    if (synced || close(fd)) {
        int e = errno;
        unlink(tmp);
        die("%s: %s", tmp, strerror(e));
    }
    if (rename(tmp, out)) {
        int e = errno;
        unlink(tmp);
        die("cannot rename '%s' to '%s': %s", tmp, out, strerror(e));
    }
}

/* ------------------------------------------------------------------ verifying */

static int verify(const Plan *p, const char *path) {
    char err[512];
    SafeTensors *st = st_open(path, err, sizeof err);
    if (!st) die("%s", err);
    const char *fmt = st_metadata(st, "format");
    if (!fmt || strcmp(fmt, "pt")) die("%s: no __metadata__ format \"pt\"", path);
    if (st_count(st) != p->n) die("%s: %d tensors, expected %d", path, st_count(st), p->n);
    char *buf = malloc(PIECE_BYTES);
    if (!buf) die("out of memory");
    double sum = 0, sumsq = 0, lo = INFINITY, hi = -INFINITY;
    int64_t count = 0, nonfinite = 0;
    for (int i = 0; i < p->n; i++) {
        const Tensor *t = &p->t[i];
        const StTensor *f = st_find(st, t->name);
        if (!f) die("%s: no tensor '%s'", path, t->name);
        int same = f->dtype == t->dtype && f->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = f->shape[d] == t->shape[d];
        if (!same) die("%s: '%s' has another dtype or shape", path, t->name);
        int64_t es = st_dtype_size(t->dtype), per = (int64_t)PIECE_BYTES / es;
        for (int64_t i0 = 0; i0 < t->numel; i0 += per) {
            int64_t n = t->numel - i0 < per ? t->numel - i0 : per;
            const char *have = (const char *)f->data + i0 * es;
            fill(t, i0, n, buf);
            if (memcmp(buf, have, (size_t)(n * es)))
                die("%s: '%s' differs from what seed and kind give (elements %" PRId64 "..)", path,
                    t->name, i0);
            if (t->init != INIT_NORMAL) continue;
            /* the file's own values: finite, mean 0, std WEIGHT_STD */
            StTensor v = *f;
            v.numel = n;
            v.nbytes = (size_t)(n * es);
            v.data = have;
            float *x = (float *)(buf + 0);
            if (es < 4) {   /* widen in place is not possible for f16: use the tail */
                x = malloc((size_t)n * sizeof *x);
                if (!x) die("out of memory");
            }
            if (st_read_f32(&v, x)) die("%s: '%s' unreadable", path, t->name);
            double s = 0, s2 = 0, mn = lo, mx = hi;
            int64_t bad = 0;
            #pragma omp parallel for reduction(+ : s, s2, bad) reduction(min : mn) reduction(max : mx)
            for (int64_t k = 0; k < n; k++) {
                double y = x[k];
                if (!isfinite(y)) { bad++; continue; }
                s += y;
                s2 += y * y;
                if (y < mn) mn = y;
                if (y > mx) mx = y;
            }
            sum += s; sumsq += s2; lo = mn; hi = mx; nonfinite += bad; count += n;
            if (es < 4) free(x);
        }
    }
    free(buf);
    st_close(st);
    double mean = sum / (double)count, sd = sqrt(sumsq / (double)count - mean * mean);
    printf("verify: %d tensors match seed and kind byte for byte; random weights: %" PRId64
           " values, mean %.2e, std %.5f (want %.5f), range [%.4f, %.4f], %" PRId64 " not finite\n",
           p->n, count, mean, sd, WEIGHT_STD, lo, hi, nonfinite);
    if (nonfinite || fabs(sd - WEIGHT_STD) > 0.01 * WEIGHT_STD || fabs(mean) > 1e-4) {
        fprintf(stderr, "make-checkpoint: %s: the random weights are off (see above)\n", path);
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f) {
    fprintf(f,
            "usage: make-checkpoint --kind sd15|sdxl [--dtype f16|bf16|f32] [--seed S]\n"
            "                       [--header-only | --verify] OUT.safetensors\n"
            "A full-size single-file SD 1.5 / SDXL base checkpoint (LDM layout) with random\n"
            "weights. --header-only: the header, then a sparse file of the full size (data reads\n"
            "as zeros). --verify: check an existing OUT against kind, dtype and seed.\n");
}

static void print_plan(const Plan *p, const char *kind, const char *dtype, uint64_t seed) {
    static const char *const label[5] = {"UNet", "VAE", "text encoder", "text encoder 2",
                                         "no weight"};
    char a[32], b[32];
    printf("%s %s seed %" PRIu64 ": %d tensors\n", kind, dtype, seed, p->n);
    int64_t total = 0;
    for (int i = 0; i < 5; i++) {
        if (!p->tensors[i]) continue;
        fmt_thousands(p->params[i], a, sizeof a);
        printf("  %-15s %15s %s  %4d keys\n", label[i], a, i < 4 ? "parameters" : "elements  ",
               p->tensors[i]);
        if (i < 4) total += p->params[i];
    }
    fmt_thousands(total, a, sizeof a);
    fmt_thousands((int64_t)(8 + p->header_len + p->data_bytes), b, sizeof b);
    printf("  %-15s %15s parameters\n  file            %15s bytes (header %zu)\n", "total", a, b,
           p->header_len);
}

int main(int argc, char **argv) {
    const char *kind = NULL, *dtype_name = "f16", *out = NULL;
    uint64_t seed = 0;
    int header_only = 0, do_verify = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--header-only")) header_only = 1;
        else if (!strcmp(a, "--verify")) do_verify = 1;
        else if ((!strcmp(a, "--kind") || !strcmp(a, "--dtype") || !strcmp(a, "--seed")) && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(a, "--kind")) kind = v;
            else if (!strcmp(a, "--dtype")) dtype_name = v;
            else {
                char *end;
                errno = 0;
                seed = strtoull(v, &end, 10);
                if (errno || end == v || *end || *v == '-') die("--seed %s: not a non-negative integer", v);
            }
        } else if (a[0] == '-' && a[1]) {
            usage(stderr);
            die("unknown option or missing value: %s", a);
        } else if (!out) out = a;
        else die("one output file only (got '%s' and '%s')", out, a);
    }
    if (!kind || !out) { usage(stderr); return 1; }
    if (strcmp(kind, "sd15") && strcmp(kind, "sdxl")) die("--kind %s: only sd15 or sdxl", kind);
    int dtype = !strcmp(dtype_name, "f16") ? ST_F16 : !strcmp(dtype_name, "bf16") ? ST_BF16
              : !strcmp(dtype_name, "f32") ? ST_F32 : -1;
    if (dtype < 0) die("--dtype %s: only f16, bf16 or f32", dtype_name);
    if (header_only && do_verify) die("--header-only and --verify exclude each other");

    double t0 = now_s();
    Plan p;
    plan(&p, kind, dtype, seed);
    print_plan(&p, kind, dtype_name, seed);
    fflush(stdout);
    int rc = 0;
    if (do_verify) {
        rc = verify(&p, out);
        printf("verified %s in %.1f s\n", out, now_s() - t0);
    } else {
        Timing tm = {0};
        write_file(&p, out, header_only, &tm);
        printf("wrote %s%s in %.1f s (values %.1f s, waiting for the disk %.1f s, fsync %.1f s)\n",
               out, header_only ? " (header only, sparse)" : "", now_s() - t0, tm.gen, tm.wait, tm.sync);
    }
    free(p.header);
    free(p.t);
    return rc;
}

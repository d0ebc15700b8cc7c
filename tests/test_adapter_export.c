/* test_adapter_export.c — an exported adapter as the other tools read it.
 *
 * A reference loader per tool, written from docs/adapter-format.md and not from
 * src/models/adapter_file.c: how A1111 (extensions-builtin/Lora), ComfyUI
 * (comfy/lora.py), stable-diffusion.cpp (name_conversion.cpp, lora.hpp) and
 * LyCORIS (lycoris/kohya.py, modules/lokr.py) map a key onto a module of the
 * model, and the dW each computes: kron(w1, w2) * scale for LoKr (w = a @ b for
 * decomposed halves), up @ down * alpha / rank for LoRA, with the scale as that
 * tool computes it. Checked:
 *  - every key of an SD 1.5 export lands on the module it came from, in every
 *    tool, by way of unet_param_table("sd15") (A1111 and sd.cpp through the
 *    original LDM names), and every tool's dW is the engine's merged dW, float
 *    for float; LyCORIS's own loader refuses the a1 x a2 it cannot rebuild;
 *  - a few training steps on the tiny model, exported, read by each reference
 *    loader and imported back (model_load_adapter) give the trained dW exactly
 *    (LoRA: to rounding);
 *  - a file of the older format (tests/golden/adapter_v1_tiny_krona4x8.safetensors,
 *    written by krona-studio e9cabcc) and LyCORIS's decomposed factors import;
 *  - what the studio cannot represent is refused in one line naming the key;
 *  - LyCORIS's factorization() and its rebuild of the factor shapes, against
 *    values printed by LyCORIS's own Python function;
 *  - the export-name hook (AdapterSet.name_map) renames keys both ways. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <unistd.h>

#include "core/backend.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "models/adapter.h"
#include "models/adapter_file.h"
#include "models/model.h"
#include "models/unet.h"
#include "training/train.h"

/* ------------------------------------------------- the model's names --- */

/* The modules of a UNet as the tools see them: diffusers module names (every
 * parameter ending in ".weight", without it) and, for an SD 1.x layout, the
 * original LDM name of each attention module (diffusers' conversion script:
 * down_blocks.i.attentions.j -> input_blocks.3i+j+1.1, up_blocks.i.attentions.j
 * -> output_blocks.3i+j.1, mid_block.attentions.0 -> middle_block.1). */
typedef struct Names {
    int n;
    char (*diff)[UNET_NAME_MAX];
    char (*ldm)[UNET_NAME_MAX]; /* "" where the module has no attention LDM name here */
} Names;

static void ldm_of(const char *d, char *out, size_t n) {
    int i, j, used = 0;
    out[0] = 0;
    if (sscanf(d, "down_blocks.%d.attentions.%d.%n", &i, &j, &used) == 2 && used)
        snprintf(out, n, "input_blocks.%d.1.%s", 3 * i + j + 1, d + used);
    else if (sscanf(d, "up_blocks.%d.attentions.%d.%n", &i, &j, &used) == 2 && used)
        snprintf(out, n, "output_blocks.%d.1.%s", 3 * i + j, d + used);
    else if (!strncmp(d, "mid_block.attentions.0.", 23))
        snprintf(out, n, "middle_block.1.%s", d + 23);
}

static void names_build(const char *arch, Names *nm) {
    UNetConfig cfg;
    assert_int_equal(unet_config_builtin(arch, &cfg), 0);
    UNetParam *p;
    UNetLinear *l;
    int np, nl;
    assert_int_equal(unet_param_table(&cfg, &p, &np, &l, &nl), 0);
    nm->diff = calloc((size_t)np, sizeof *nm->diff);
    nm->ldm = calloc((size_t)np, sizeof *nm->ldm);
    nm->n = 0;
    for (int i = 0; i < np; i++) {
        size_t len = strlen(p[i].name);
        if (len < 8 || strcmp(p[i].name + len - 7, ".weight")) continue;
        snprintf(nm->diff[nm->n], UNET_NAME_MAX, "%.*s", (int)(len - 7), p[i].name);
        if (!strcmp(arch, "sd15")) ldm_of(nm->diff[nm->n], nm->ldm[nm->n], UNET_NAME_MAX);
        nm->n++;
    }
    free(p);
    free(l);
}

static void names_free(Names *nm) { free(nm->diff); free(nm->ldm); }

static void underscore(const char *in, char *out, size_t n) {
    snprintf(out, n, "%s", in);
    for (char *c = out; *c; c++) if (*c == '.') *c = '_';
}

/* ---------------------------------------------- the tools' key maps --- */

enum { A1111, COMFY, SDCPP, LYCORIS, N_TOOLS };
static const char *TOOL[N_TOOLS] = {"A1111", "ComfyUI", "sd.cpp", "LyCORIS"};

/* A1111, networks.py: convert_diffusers_name_to_compvis (the attention rows of
 * its regexes), then network_layer_mapping = the LDM model's named_modules with
 * '.' -> '_', then the "lora_unet" -> "diffusion_model" fallback. */
static const char *a1111_resolve(const char *stem, const Names *nm) {
    static char key[512];
    int b, i, used = 0;
    const char *p = "lora_unet_";
    if (!strncmp(stem, p, 10) &&
        sscanf(stem + 10, "down_blocks_%d_attentions_%d_%n", &b, &i, &used) == 2 && used)
        snprintf(key, sizeof key, "diffusion_model_input_blocks_%d_1_%s", 1 + b * 3 + i, stem + 10 + used);
    else if (!strncmp(stem, p, 10) &&
             sscanf(stem + 10, "mid_block_attentions_%d_%n", &i, &used) == 1 && used)
        snprintf(key, sizeof key, "diffusion_model_middle_block_1_%s", stem + 10 + used);
    else if (!strncmp(stem, p, 10) &&
             sscanf(stem + 10, "up_blocks_%d_attentions_%d_%n", &b, &i, &used) == 2 && used)
        snprintf(key, sizeof key, "diffusion_model_output_blocks_%d_1_%s", b * 3 + i, stem + 10 + used);
    else
        snprintf(key, sizeof key, "%s", stem);
    for (int pass = 0; pass < 2; pass++) {
        for (int k = 0; k < nm->n; k++) {
            if (!nm->ldm[k][0]) continue;
            char m[UNET_NAME_MAX + 32], u[UNET_NAME_MAX];
            underscore(nm->ldm[k], u, sizeof u);
            snprintf(m, sizeof m, "diffusion_model_%s", u);
            if (!strcmp(m, key)) return nm->diff[k];
        }
        if (pass || strncmp(stem, p, 10)) break;
        snprintf(key, sizeof key, "diffusion_model_%s", stem + 10);
    }
    return NULL;
}

/* ComfyUI, comfy/lora.py model_lora_keys_unet: "lora_unet_" + the LDM state-dict
 * key '.' -> '_' (first loop), and "lora_unet_" / "lycoris_" + each diffusers
 * key of unet_to_diffusers '.' -> '_' (second loop). */
static const char *comfy_resolve(const char *stem, const Names *nm) {
    for (int k = 0; k < nm->n; k++) {
        char u[UNET_NAME_MAX], m[UNET_NAME_MAX + 32];
        underscore(nm->diff[k], u, sizeof u);
        snprintf(m, sizeof m, "lora_unet_%s", u);
        if (!strcmp(m, stem)) return nm->diff[k];
        snprintf(m, sizeof m, "lycoris_%s", u);
        if (!strcmp(m, stem)) return nm->diff[k];
        if (nm->ldm[k][0]) {
            underscore(nm->ldm[k], u, sizeof u);
            snprintf(m, sizeof m, "lora_unet_%s", u);
            if (!strcmp(m, stem)) return nm->diff[k];
        }
    }
    return NULL;
}

/* stable-diffusion.cpp, name_conversion.cpp convert_tensor_name: "lora." + key;
 * the "lora.lora_" / "lora.lycoris_" prefix off; the factor suffix becomes
 * ".weight.<factor>"; '_' -> '.' except inside its protected tokens
 * (convert_sep_to_dot); "unet." -> "model.diffusion_model."; the diffusers path
 * converted to the original SD 1 name. The model's tensor must exist. */
static const char *sdcpp_resolve(const char *stem, const Names *nm) {
    static const char *protect[] = {"to_q", "to_k", "to_v", "to_out", "down_blocks", "mid_block",
                                    "up_block", "transformer_blocks", "proj_in", "proj_out"};
    char name[512];
    int lyc = 0;
    if (!strncmp(stem, "lora_", 5)) snprintf(name, sizeof name, "%s", stem + 5);
    else if (!strncmp(stem, "lycoris_", 8)) { snprintf(name, sizeof name, "%s", stem + 8); lyc = 1; }
    else return NULL;
    if (!lyc && strncmp(name, "unet_", 5)) return NULL;
    size_t len = strlen(name);
    char *keep = calloc(len + 1, 1);
    for (size_t t = 0; t < sizeof protect / sizeof *protect; t++)
        for (char *s = strstr(name, protect[t]); s; s = strstr(s + strlen(protect[t]), protect[t]))
            for (size_t c = 0; c < strlen(protect[t]); c++)
                if (protect[t][c] == '_') keep[s - name + (ptrdiff_t)c] = 1;
    for (size_t c = 0; c < len; c++) if (name[c] == '_' && !keep[c]) name[c] = '.';
    free(keep);
    const char *d = lyc ? name : name + 5; /* "unet." -> the diffusion model */
    char ldm[UNET_NAME_MAX];
    ldm_of(d, ldm, sizeof ldm);
    for (int k = 0; k < nm->n; k++)
        if (nm->ldm[k][0] && !strcmp(nm->ldm[k], ldm)) return nm->diff[k];
    return NULL;
}

/* LyCORIS, kohya.py create_network_from_weights: "lora_unet_" + each name of
 * unet.named_modules() '.' -> '_' (kohya's SD 1.x UNet has diffusers names);
 * wrapper.py create_lycoris_from_weights: "lycoris_" + the same. */
static const char *lycoris_resolve(const char *stem, const Names *nm) {
    for (int k = 0; k < nm->n; k++) {
        char u[UNET_NAME_MAX], m[UNET_NAME_MAX + 32];
        underscore(nm->diff[k], u, sizeof u);
        snprintf(m, sizeof m, "lora_unet_%s", u);
        if (!strcmp(m, stem)) return nm->diff[k];
        snprintf(m, sizeof m, "lycoris_%s", u);
        if (!strcmp(m, stem)) return nm->diff[k];
    }
    return NULL;
}

/* ---------------------------------------------- the tools' LoKr math --- */

/* A module's tensors, grouped by the stem before the first '.' */
typedef struct RefMod {
    char stem[256];
    const StTensor *w1, *w1a, *w1b, *w2, *w2a, *w2b, *alpha, *down, *up;
} RefMod;

static int group(const SafeTensors *st, RefMod *m, int cap) {
    int n = 0;
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *t = st_at(st, i);
        const char *dot = strchr(t->name, '.');
        assert_non_null(dot);
        int k = 0;
        while (k < n && (strlen(m[k].stem) != (size_t)(dot - t->name) ||
                         strncmp(m[k].stem, t->name, (size_t)(dot - t->name))))
            k++;
        if (k == n) {
            assert_true(n < cap);
            memset(&m[n], 0, sizeof m[n]);
            snprintf(m[n].stem, sizeof m[n].stem, "%.*s", (int)(dot - t->name), t->name);
            n++;
        }
        const char *s = dot + 1;
        const StTensor **slot = !strcmp(s, "lokr_w1") ? &m[k].w1 : !strcmp(s, "lokr_w1_a") ? &m[k].w1a
                              : !strcmp(s, "lokr_w1_b") ? &m[k].w1b : !strcmp(s, "lokr_w2") ? &m[k].w2
                              : !strcmp(s, "lokr_w2_a") ? &m[k].w2a : !strcmp(s, "lokr_w2_b") ? &m[k].w2b
                              : !strcmp(s, "alpha") ? &m[k].alpha : !strcmp(s, "lora_down.weight") ? &m[k].down
                              : !strcmp(s, "lora_up.weight") ? &m[k].up : NULL;
        if (!slot) fail_msg("unexpected tensor %s", t->name);
        *slot = t;
    }
    return n;
}

/* ------------------------------------------- the dtypes, by definition --- */

/* One stored value as its number, from the IEEE / bfloat16 layouts (written
 * here, not the engine's decoder): F32, F16 (1-5-10, bias 15) or BF16 (1-8-7). */
static double ref_decode(int dtype, const void *data, int64_t i) {
    const unsigned char *p = data;
    if (dtype == ST_F32) {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    uint16_t c;
    memcpy(&c, p + 2 * i, 2);
    int mbits = dtype == ST_F16 ? 10 : 7, ebits = dtype == ST_F16 ? 5 : 8;
    int bias = (1 << (ebits - 1)) - 1, e = (c >> mbits) & ((1 << ebits) - 1), m = c & ((1 << mbits) - 1);
    double v = e == 0 ? ldexp(m, 1 - bias - mbits)
             : e == (1 << ebits) - 1 ? (m ? NAN : INFINITY)
             : ldexp((1 << mbits) + m, e - bias - mbits);
    return c >> 15 ? -v : v;
}

/* a tensor's values as float (F32, F16 or BF16; anything else fails the test) */
static void ref_read(const StTensor *t, float *dst) {
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        fail_msg("%s: dtype %s is not one the tools' loaders take here", t->name, st_dtype_name(t->dtype));
    for (int64_t i = 0; i < t->numel; i++) dst[i] = (float)ref_decode(t->dtype, t->data, i);
}

/* x rounded to dtype: the nearest value with its precision (mbits + 1
 * significant bits, fewer below the smallest normal), ties to even (rint in
 * the default rounding mode), beyond the largest finite value + half an ulp inf */
static double ref_round(int dtype, double x) {
    if (dtype == ST_F32) return (float)x;
    if (isnan(x) || isinf(x) || x == 0) return x;
    int mbits = dtype == ST_F16 ? 10 : 7, emin = dtype == ST_F16 ? -14 : -126, emax = dtype == ST_F16 ? 15 : 127;
    int e;
    frexp(fabs(x), &e); /* |x| = f 2^e, f in [0.5, 1): its leading bit is 2^(e-1) */
    int lead = e - 1 < emin ? emin : e - 1;
    double v = ldexp(rint(ldexp(fabs(x), mbits - lead)), lead - mbits);
    double max = ldexp(2.0 - ldexp(1.0, -mbits), emax);
    if (v > max) v = INFINITY;
    return x < 0 ? -v : v;
}

/* |round(x) - x| <= u |x| + h for every finite x the dtype holds */
static void ref_eps(int dtype, double *u, double *h) {
    *u = dtype == ST_F16 ? 0x1p-11 : dtype == ST_BF16 ? 0x1p-8 : 0x1p-24;
    *h = dtype == ST_F16 ? 0x1p-25 : dtype == ST_BF16 ? 0x1p-134 : 0x1p-150;
}

static float scalar(const StTensor *t) {
    assert_int_equal(t->numel, 1);
    float v;
    ref_read(t, &v);
    return v;
}

/* LyCORIS's factorization(), functional/general.py, as the docs describe it */
static void ref_factorization(int dim, int factor, int *m, int *n) {
    int a = 1, b = dim;
    if (factor > 0 && dim % factor == 0) { a = factor; b = dim / factor; }
    else {
        int lim = factor < 0 ? dim : factor;
        for (;;) {
            if (a >= b) break;
            int c = a + 1;
            while (dim % c) c++;
            if (c + dim / c > dim + 1 || c > lim) break;
            a = c; b = dim / c;
        }
    }
    *m = a < b ? a : b;
    *n = a < b ? b : a;
}

/* LyCORIS's make_module_from_state_dict for full w1 [a1,a2], w2 [b1,b2]: does
 * the module it builds take tensors of these shapes? */
static int ref_lycoris_rebuilds(int a1, int a2, int b1, int b2) {
    int dout = a1 * b1, din = a2 * b2, m, n, m2, factor;
    ref_factorization(dout, -1, &m, &n);
    ref_factorization(din, -1, &m2, &n);
    if (a1 == m && a2 == m2) factor = -1;
    else {
        int f1 = a1 > a2 ? a1 : a2, f2 = b1 > b2 ? b1 : b2;
        int ok1 = dout % f1 == 0 && din % f1 == 0 && (a1 == f1 || b1 == f1) && (a2 == f1 || b2 == f1);
        int ok2 = dout % f2 == 0 && din % f2 == 0 && (a1 == f2 || b1 == f2) && (a2 == f2 || b2 == f2);
        factor = ok1 ? f1 : ok2 ? f2 : (f1 < f2 ? f1 : f2);
    }
    ref_factorization(dout, factor, &m, &n);
    ref_factorization(din, factor, &m2, &n);
    return m == a1 && m2 == a2;
}

/* The scale `tool` applies to this module's product (LoKr or LoRA), or NAN
 * where it does not load the module. */
static double tool_scale(int tool, const RefMod *m) {
    int have_alpha = m->alpha != NULL;
    double alpha = have_alpha ? scalar(m->alpha) : 0;
    if (m->down) { /* kohya LoRA: scale = alpha / rank in all four */
        double r = (double)m->down->shape[0];
        return have_alpha ? alpha / r : 1.0;
    }
    double dim = 0;
    switch (tool) {
    case A1111: /* network_lokr.py: dim from lokr_w1_b / lokr_w2_b; network.py calc_scale */
    case COMFY: /* weight_adapter/lokr.py: dim from w1_b / w2_b, alpha / dim only with both */
        if (m->w1b && !m->w1) dim = (double)m->w1b->shape[0];
        if (m->w2b && !m->w2) dim = (double)m->w2b->shape[0];
        return have_alpha && dim > 0 ? alpha / dim : 1.0;
    case SDCPP: /* lora.hpp get_lokr_weight_diff: rank 1 unless decomposed; rank 1 -> scale 1 */
        dim = 1;
        if (!m->w1) dim = (double)m->w1b->shape[0];
        if (!m->w2) dim = (double)m->w2b->shape[0];
        return dim == 1 ? 1.0 : have_alpha ? alpha / dim : 1.0;
    default: /* LyCORIS LokrModule: alpha = dim when absent or 0, scale 1 with both factors full */
        if (!have_alpha) return NAN; /* make_module_from_state_dict calls float(alpha) */
        if (m->w1 && m->w2) {
            if (!ref_lycoris_rebuilds((int)m->w1->shape[0], (int)m->w1->shape[1],
                                      (int)m->w2->shape[0], (int)m->w2->shape[1]))
                return NAN; /* copy_ into the module it rebuilt fails */
            return 1.0;
        }
        dim = m->w1a ? (double)m->w1a->shape[1] : (double)m->w2a->shape[1];
        return alpha == 0 ? 1.0 : alpha / dim;
    }
}

/* a factor: the full tensor or its halves multiplied (in float, as torch does) */
static float *ref_factor(const StTensor *full, const StTensor *a, const StTensor *b, int *r, int *c) {
    if (full) {
        *r = (int)full->shape[0]; *c = (int)full->shape[1];
        float *x = malloc(sizeof(float) * (size_t)full->numel);
        ref_read(full, x);
        return x;
    }
    int k = (int)a->shape[1];
    *r = (int)a->shape[0]; *c = (int)b->shape[1];
    float *ha = malloc(sizeof(float) * (size_t)a->numel), *hb = malloc(sizeof(float) * (size_t)b->numel);
    ref_read(a, ha);
    ref_read(b, hb);
    float *x = calloc((size_t)*r * *c, sizeof(float));
    for (int i = 0; i < *r; i++)
        for (int j = 0; j < *c; j++) {
            double s = 0;
            for (int q = 0; q < k; q++) s += (double)ha[i * k + q] * hb[q * *c + j];
            x[i * *c + j] = (float)s;
        }
    free(ha); free(hb);
    return x;
}

/* dW [d_out, d_in] a tool applies for this module, scale included */
static float *tool_dw(const RefMod *m, double scale, int *dout, int *din) {
    int r1, c1, r2, c2;
    if (m->down) {
        float *dn = ref_factor(m->down, NULL, NULL, &r1, &c1), *up = ref_factor(m->up, NULL, NULL, &r2, &c2);
        float *w = calloc((size_t)r2 * c1, sizeof(float));
        for (int o = 0; o < r2; o++)
            for (int i = 0; i < c1; i++) {
                double s = 0;
                for (int q = 0; q < r1; q++) s += (double)up[o * r1 + q] * dn[q * c1 + i];
                w[o * c1 + i] = (float)(s * scale);
            }
        free(dn); free(up);
        *dout = r2; *din = c1;
        return w;
    }
    float *w1 = ref_factor(m->w1, m->w1a, m->w1b, &r1, &c1);
    float *w2 = ref_factor(m->w2, m->w2a, m->w2b, &r2, &c2);
    *dout = r1 * r2; *din = c1 * c2;
    float *w = malloc(sizeof(float) * (size_t)*dout * *din);
    float s = (float)scale;
    /* torch.kron(w1, w2) in float, then * scale (a no-op at scale 1) */
    for (int i = 0; i < r1; i++)
        for (int k = 0; k < r2; k++)
            for (int j = 0; j < c1; j++)
                for (int l = 0; l < c2; l++) {
                    float v = w1[i * c1 + j] * w2[k * c2 + l];
                    w[(int64_t)(i * r2 + k) * *din + j * c2 + l] = s == 1.0f ? v : v * s;
                }
    free(w1); free(w2);
    return w;
}

/* the engine's dW of one adapter (W = 0 + dW, as the merge computes it) */
static float *engine_dw(Backend *be, const Adapter *a) {
    int64_t n = (int64_t)a->d_out * a->d_in;
    float *W = be->alloc(be, sizeof(float) * (size_t)n);
    assert_non_null(W);
    adapter_merge_into(be, a, W, NULL);
    float *h = malloc(sizeof(float) * (size_t)n);
    be->download(be, h, W, sizeof(float) * (size_t)n);
    be->free(be, W);
    return h;
}

/* How far the dW of a's factors stored as dtype may be from its f32 dW, per
 * element: each stored value within u |x| + h of its f32 value (ref_eps), so
 * for KronA (w1 = scale A, w2 = B, scale 1) |w1' w2' - w1 w2| <= e1 |w2| +
 * e2 |w1| + e1 e2, and for LoRA the same per term of up @ down, plus alpha's
 * rounding; then float slack for the two computations. */
static double *rounding_bound(Backend *be, const Adapter *a, int dtype) {
    double u, h;
    ref_eps(dtype, &u, &h);
    int64_t na = adapter_numel_A(a), nb = adapter_numel_B(a), n = (int64_t)a->d_out * a->d_in;
    float *A = malloc(sizeof(float) * (size_t)na), *B = malloc(sizeof(float) * (size_t)nb);
    be->download(be, A, a->A, sizeof(float) * (size_t)na);
    be->download(be, B, a->B, sizeof(float) * (size_t)nb);
    double *bnd = calloc((size_t)n, sizeof *bnd);
    if (a->kind == ADAPTER_KRONA) {
        for (int i = 0; i < a->a1; i++)
            for (int j = 0; j < a->a2; j++)
                for (int k = 0; k < a->b1; k++)
                    for (int l = 0; l < a->b2; l++) {
                        double p = fabs((double)(a->scale * A[i * a->a2 + j])), b = fabs((double)B[k * a->b2 + l]);
                        double ep = u * p + h, eb = u * b + h;
                        bnd[(int64_t)(i * a->b1 + k) * a->d_in + j * a->b2 + l] =
                            ep * b + eb * p + ep * eb + 0x1p-22 * p * b;
                    }
    } else { /* A = down [rank, d_in], B = up [d_out, rank], scale = alpha / rank */
        double s = a->scale, es = (u * fabs(s * a->rank) + h) / a->rank;
        for (int o = 0; o < a->d_out; o++)
            for (int i = 0; i < a->d_in; i++) {
                double t = 0, big = 0, mag = 0;
                for (int q = 0; q < a->rank; q++) {
                    double up = fabs((double)B[o * a->rank + q]), dn = fabs((double)A[q * a->d_in + i]);
                    double eu = u * up + h, ed = u * dn + h;
                    t += eu * dn + ed * up + eu * ed;
                    big += (up + eu) * (dn + ed);
                    mag += up * dn;
                }
                bnd[(int64_t)o * a->d_in + i] = s * t + es * big + 0x1p-21 * a->rank * s * mag;
            }
    }
    free(A);
    free(B);
    return bnd;
}

static const Adapter *find_adapter(const AdapterSet *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->items[i].name, name)) return &s->items[i];
    return NULL;
}

/* Read an exported file with every tool's reference loader: every stem maps to
 * the module it came from, each tool's dW equals the engine's (KronA float for
 * float; LoRA to rel_tol; a file written as dtype F16 / BF16 within its
 * rounding, rounding_bound). Returns how many modules LyCORIS's loader refuses. */
static int check_tools(const char *path, const AdapterSet *set, const Names *nm, int ldm_tools,
                       double rel_tol, int64_t dense_max, int dtype) {
    char err[512];
    SafeTensors *st = st_open(path, err, sizeof err);
    if (!st) fail_msg("%s", err);
    RefMod *mods = calloc((size_t)set->n + 1, sizeof *mods);
    int n = group(st, mods, set->n + 1);
    assert_int_equal(n, set->n);
    int lyc_refused = 0;
    for (int k = 0; k < n; k++) {
        const RefMod *m = &mods[k];
        const char *name = NULL;
        for (int t = 0; t < N_TOOLS; t++) {
            if ((t == A1111 || t == SDCPP) && !ldm_tools) continue;
            const char *r = t == A1111 ? a1111_resolve(m->stem, nm) : t == COMFY ? comfy_resolve(m->stem, nm)
                          : t == SDCPP ? sdcpp_resolve(m->stem, nm) : lycoris_resolve(m->stem, nm);
            if (!r) fail_msg("%s: %s maps key %s to no module of the model", path, TOOL[t], m->stem);
            if (name && strcmp(name, r)) fail_msg("%s: %s maps %s to %s, not %s", path, TOOL[t], m->stem, r, name);
            name = r;
        }
        const Adapter *a = find_adapter(set, name);
        if (!a) fail_msg("%s: key %s lands on %s, which has no adapter", path, m->stem, name);
        int dense = (int64_t)a->d_out * a->d_in <= dense_max;
        float *ref = dense ? engine_dw(set->be, a) : NULL;
        for (int t = 0; t < N_TOOLS; t++) {
            double s = tool_scale(t, m);
            if (isnan(s)) {
                assert_int_equal(t, LYCORIS);
                lyc_refused++;
                continue;
            }
            if (!dense) {
                /* factors only: w1 = scale * A and w2 = B bit for bit, scale 1 */
                assert_true(s == 1.0 && a->kind == ADAPTER_KRONA);
                int r, c;
                float *w1 = ref_factor(m->w1, NULL, NULL, &r, &c), *A = malloc(sizeof(float) * (size_t)r * c);
                set->be->download(set->be, A, a->A, sizeof(float) * (size_t)r * c);
                for (int i = 0; i < r * c; i++) assert_true(w1[i] == a->scale * A[i]);
                free(w1); free(A);
                float *w2 = ref_factor(m->w2, NULL, NULL, &r, &c), *B = malloc(sizeof(float) * (size_t)r * c);
                set->be->download(set->be, B, a->B, sizeof(float) * (size_t)r * c);
                assert_memory_equal(w2, B, sizeof(float) * (size_t)r * c);
                free(w2); free(B);
                continue;
            }
            int dout, din;
            float *w = tool_dw(m, s, &dout, &din);
            assert_int_equal(dout, a->d_out);
            assert_int_equal(din, a->d_in);
            int64_t nn = (int64_t)dout * din;
            if (dtype != ST_F32) {
                double *bnd = rounding_bound(set->be, a, dtype);
                for (int64_t i = 0; i < nn; i++)
                    if (!(fabs((double)w[i] - ref[i]) <= bnd[i] + 0x1p-24 * (fabs(w[i]) + fabs(ref[i])) + 1e-37))
                        fail_msg("%s: %s's dW[%lld] of %s is %.9g, trained %.9g: beyond %s rounding (%g)", path,
                                 TOOL[t], (long long)i, name, w[i], ref[i], st_dtype_name(dtype), bnd[i]);
                free(bnd);
            } else if (rel_tol == 0) {
                if (memcmp(w, ref, sizeof(float) * (size_t)nn))
                    fail_msg("%s: %s's dW of %s differs from the trained one", path, TOOL[t], name);
            } else {
                double md = 0, mr = 1e-30;
                for (int64_t i = 0; i < nn; i++) {
                    md = fmax(md, fabs((double)w[i] - ref[i]));
                    mr = fmax(mr, fabs((double)ref[i]));
                }
                if (md > rel_tol * mr) fail_msg("%s: %s's dW of %s off by %g (max %g)", path, TOOL[t], name, md, mr);
            }
            free(w);
        }
        free(ref);
    }
    free(mods);
    st_close(st);
    return lyc_refused;
}

/* ------------------------------------------------------------ helpers --- */

static void tmpname(char *buf, size_t n, const char *tag) {
    snprintf(buf, n, "/tmp/krona_test_export_%d_%s.safetensors", (int)getpid(), tag);
}

/* adapters on the selected linears of an architecture's table (no UNet
 * weights), factors random so that dW is not zero */
static void table_set(AdapterSet *set, Backend *be, const char *arch, const AdapterSpec *spec) {
    UNetConfig cfg;
    assert_int_equal(unet_config_builtin(arch, &cfg), 0);
    UNetParam *p;
    UNetLinear *l;
    int np, nl;
    assert_int_equal(unet_param_table(&cfg, &p, &np, &l, &nl), 0);
    memset(set, 0, sizeof *set);
    set->be = be;
    set->spec = *spec;
    set->items = calloc((size_t)nl, sizeof *set->items);
    Rng r;
    rng_seed(&r, 77);
    char err[512];
    for (int i = 0; i < nl; i++) {
        if (!adapter_selects(spec, l[i].is_attn, l[i].is_ffn)) continue;
        Adapter *a = &set->items[set->n];
        if (adapter_init(a, be, spec, l[i].name, l[i].d_out, l[i].d_in, 1000 + (uint64_t)i, err, sizeof err))
            fail_msg("%s", err);
        int64_t nb = adapter_numel_B(a);
        float *h = malloc(sizeof(float) * (size_t)nb);
        rng_fill_uniform(&r, h, nb, -0.1f, 0.1f);
        be->upload(be, a->B, h, sizeof(float) * (size_t)nb);
        free(h);
        set->n++;
    }
    free(p);
    free(l);
}

/* ---------------------------------------------------------------- tests --- */

/* SD 1.5: every key lands on its module in all four tools, dW float for float */
static void check_sd15(int a1, int a2, int modules, int expect_lycoris_ok) {
    Backend *be = backend_cpu_create();
    Names nm;
    names_build("sd15", &nm);
    AdapterSpec spec = {0};
    spec.kind = ADAPTER_KRONA; spec.a1 = a1; spec.a2 = a2; spec.alpha = 1; spec.modules = modules;
    AdapterSet set;
    table_set(&set, be, "sd15", &spec);
    assert_int_equal(set.n, modules & ADAPT_FFN ? 160 : 128);
    char path[256], err[512], first[512];
    tmpname(path, sizeof path, "sd15");
    if (adapter_set_save(&set, path, "{\"base_model\": \"sd15\"}", err, sizeof err)) fail_msg("%s", err);
    SafeTensors *st = st_open(path, err, sizeof err);
    assert_non_null(st_find(st, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lokr_w1"));
    assert_non_null(st_find(st, "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0.lokr_w2"));
    st_close(st);
    /* dense dW for the 320- and 640-wide layers, factors bit for bit for the rest
     * (kron(w1, w2) of equal factors is the same product; keeps ASan runs short) */
    int refused = check_tools(path, &set, &nm, 1, 0.0, 640 * 768, ST_F32);
    int misfits = adapter_set_lycoris_misfits(&set, first, sizeof first);
    print_message("sd15 %dx%d: LyCORIS's loader refuses %d of %d layers%s%s\n", a1, a2, misfits, set.n,
                  misfits ? "; first: " : "", first);
    assert_int_equal(refused, misfits);
    assert_int_equal(misfits, expect_lycoris_ok ? 0 : set.n);
    adapter_set_free(&set);
    unlink(path);
    names_free(&nm);
    backend_destroy(be);
}

static void test_sd15_16x16(void **st) { (void)st; check_sd15(16, 16, ADAPT_ATTN | ADAPT_FFN, 1); }
/* DiffuseKronA's 4 x 64: A1111, ComfyUI and sd.cpp apply it; LyCORIS cannot rebuild it */
static void test_sd15_4x64(void **st) { (void)st; check_sd15(4, 64, ADAPT_ATTN, 0); }

static void base_preset(Preset *p, const char *root, const char *name) {
    preset_defaults(p);
    p->n_images = 2;
    snprintf(p->images[0], sizeof p->images[0], "models/demo/subject1.png");
    snprintf(p->images[1], sizeof p->images[1], "models/demo/subject2.png");
    snprintf(p->instance_prompt, sizeof p->instance_prompt, "a sks dog");
    p->resolution = 16;
    p->iterations = 3;
    p->lr = 1e-2f;
    p->sample_every = 0;
    p->n_sample_prompts = 0;
    p->checkpoint_every = 0;
    snprintf(p->device, sizeof p->device, "cpu");
    snprintf(p->output_dir, sizeof p->output_dir, "%s", root);
    snprintf(p->run_name, sizeof p->run_name, "%s", name);
}

static int rm_entry(const char *p, const struct stat *sb, int type, struct FTW *f) {
    (void)sb; (void)type; (void)f;
    return remove(p);
}

/* The header of an adapter file, read by hand: every tensor's "dtype" is
 * want, and there are n of them. */
static void check_header_dtype(const char *path, const char *want, int n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char len8[8];
    assert_int_equal(fread(len8, 1, 8, f), 8);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | len8[i];
    char *h = calloc(hl + 1, 1);
    assert_int_equal(fread(h, 1, hl, f), hl);
    fclose(f);
    char tag[32];
    snprintf(tag, sizeof tag, "\"dtype\":\"%s\"", want);
    int k = 0, all = 0;
    for (const char *q = strstr(h, tag); q; q = strstr(q + 1, tag)) k++;
    for (const char *q = strstr(h, "\"dtype\""); q; q = strstr(q + 1, "\"dtype\"")) all++;
    if (k != n || all != n) fail_msg("%s: %d of %d tensors are %s, want all %d", path, k, all, want, n);
    free(h);
}

/* Every stored value of a's tensors in the file is the f32 value the export
 * starts from (KronA: w1 = scale * A in float, w2 = B, alpha 1; LoRA: down = A,
 * up = B, alpha = scale * rank), rounded to the file's dtype by ref_round. */
static void check_rounded_values(const SafeTensors *st, const AdapterSet *set, int dtype) {
    Backend *be = set->be;
    for (int m = 0; m < set->n; m++) {
        const Adapter *a = &set->items[m];
        char stem[300], key[340];
        snprintf(stem, sizeof stem, "lora_unet_%s", a->name);
        for (char *c = stem; *c; c++) if (*c == '.') *c = '_';
        int64_t na = adapter_numel_A(a), nb = adapter_numel_B(a);
        float *v = malloc(sizeof(float) * (size_t)(na + nb));
        be->download(be, v, a->A, sizeof(float) * (size_t)na);
        be->download(be, v + na, a->B, sizeof(float) * (size_t)nb);
        int krona = a->kind == ADAPTER_KRONA;
        if (krona)
            for (int64_t i = 0; i < na; i++) v[i] = a->scale * v[i];
        const char *suf[3] = {krona ? "lokr_w1" : "lora_down.weight", krona ? "lokr_w2" : "lora_up.weight", "alpha"};
        float alpha = krona ? 1.0f : a->scale * (float)a->rank;
        const float *src[3] = {v, v + na, &alpha};
        int64_t cnt[3] = {na, nb, 1};
        for (int k = 0; k < 3; k++) {
            snprintf(key, sizeof key, "%s.%s", stem, suf[k]);
            const StTensor *t = st_find(st, key);
            if (!t) fail_msg("no tensor %s", key);
            assert_int_equal(t->dtype, dtype);
            assert_int_equal(t->numel, cnt[k]);
            for (int64_t i = 0; i < cnt[k]; i++) {
                double got = ref_decode(dtype, t->data, i), want = ref_round(dtype, src[k][i]);
                if (got != want) fail_msg("%s[%lld] = %.9g: %.9g rounds to %.9g in %s", key, (long long)i, got,
                                          src[k][i], want, st_dtype_name(dtype));
            }
        }
        free(v);
    }
}

/* Train a few steps on the tiny model, export (as export_dtype), read with each
 * tool's loader, import into a fresh model: the dW of every layer is the
 * trained one (f16 / bf16: each stored value is the f32 one correctly rounded,
 * and every dW is within that rounding). The checkpoint stays f32. */
static void check_tiny_roundtrip(const char *adapter, int a1, int a2, int rank, const char *export_dtype) {
    Backend *be = backend_cpu_create();
    char root[128], err[1024], path[700];
    snprintf(root, sizeof root, "build/test-export-%d", (int)getpid());
    assert_int_equal(fs_mkdir_p(root, err, sizeof err), 0);
    Preset p;
    base_preset(&p, root, adapter);
    snprintf(p.adapter, sizeof p.adapter, "%s", adapter);
    p.a1 = a1; p.a2 = a2; p.lora_rank = rank; p.lora_alpha = 3.0f;
    snprintf(p.modules, sizeof p.modules, "attn+ffn");
    snprintf(p.export_dtype, sizeof p.export_dtype, "%s", export_dtype);
    int dtype = st_float_dtype_parse(export_dtype);
    Trainer *t = trainer_create(&p, NULL, be, NULL, err, sizeof err);
    if (!t) fail_msg("%s", err);
    assert_int_equal(trainer_run(t), 0);
    const AdapterSet *trained = unet_adapters(trainer_model(t)->unet);
    snprintf(path, sizeof path, "%s/adapter.safetensors", trainer_run_dir(t));
    int lora = !strcmp(adapter, "lora");
    SafeTensors *f = st_open(path, err, sizeof err);
    if (!f) fail_msg("%s", err);
    check_header_dtype(path, st_dtype_name(dtype), st_count(f));
    if (dtype != ST_F32) check_rounded_values(f, trained, dtype);
    st_close(f);
    char ck[740];
    snprintf(ck, sizeof ck, "%s/checkpoint.safetensors", trainer_run_dir(t));
    f = st_open(ck, err, sizeof err);
    if (!f) fail_msg("%s", err);
    check_header_dtype(ck, "F32", st_count(f)); /* exact resume: the master weights and moments */
    st_close(f);
    Names nm;
    names_build("tiny", &nm);
    /* the tiny UNet loads in none of the tools (not an SD layout), but its keys
     * follow the same rule: ComfyUI's and LyCORIS's maps of its own modules */
    int refused = check_tools(path, trained, &nm, 0, lora ? 2e-6 : 0.0, INT64_MAX, dtype);
    assert_int_equal(refused, lora ? 0 : adapter_set_lycoris_misfits(trained, NULL, 0));
    names_free(&nm);
    AdapterFileInfo info;
    if (adapter_file_probe(path, &info, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(info.format, 2);
    assert_int_equal(info.n_modules, trained->n);
    Model *m = model_open("tiny", be, err, sizeof err);
    if (!m) fail_msg("%s", err);
    if (model_load_adapter(m, path, err, sizeof err)) fail_msg("%s", err);
    const AdapterSet *back = unet_adapters(m->unet);
    assert_int_equal(back->n, trained->n);
    for (int i = 0; i < back->n; i++) {
        const Adapter *x = &trained->items[i], *y = &back->items[i];
        assert_string_equal(x->name, y->name);
        float *dx = engine_dw(be, x), *dy = engine_dw(be, y);
        int64_t n = (int64_t)x->d_out * x->d_in;
        if (dtype != ST_F32) {
            double *bnd = rounding_bound(be, x, dtype);
            for (int64_t k = 0; k < n; k++)
                if (!(fabs((double)dx[k] - dy[k]) <= bnd[k] + 0x1p-23 * (fabs(dx[k]) + fabs(dy[k])) + 1e-37))
                    fail_msg("%s: imported dW[%lld] %.9g, trained %.9g (bound %g)", x->name, (long long)k, dy[k],
                             dx[k], bnd[k]);
            free(bnd);
        } else if (!lora) {
            assert_memory_equal(dx, dy, sizeof(float) * (size_t)n);
        } else {
            for (int64_t k = 0; k < n; k++)
                assert_true(fabsf(dx[k] - dy[k]) <= 2 * FLT_EPSILON * fabsf(dx[k]) + 1e-30f);
        }
        free(dx); free(dy);
    }
    model_free(m);
    trainer_free(t);
    backend_destroy(be);
    nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void test_tiny_krona(void **st) { (void)st; check_tiny_roundtrip("krona", 4, 4, 4, "f32"); }
static void test_tiny_krona_4x8(void **st) { (void)st; check_tiny_roundtrip("krona", 4, 8, 4, "f32"); }
static void test_tiny_lora(void **st) { (void)st; check_tiny_roundtrip("lora", 4, 4, 2, "f32"); }
static void test_tiny_krona_f16(void **st) { (void)st; check_tiny_roundtrip("krona", 4, 8, 4, "f16"); }
static void test_tiny_krona_bf16(void **st) { (void)st; check_tiny_roundtrip("krona", 4, 4, 4, "bf16"); }
static void test_tiny_lora_f16(void **st) { (void)st; check_tiny_roundtrip("lora", 4, 4, 2, "f16"); }
static void test_tiny_lora_bf16(void **st) { (void)st; check_tiny_roundtrip("lora", 4, 4, 2, "bf16"); }

/* An adapter written by krona-studio e9cabcc (lycoris_ keys, B as trained, the
 * scale in alpha) loads as before: A = lokr_w1, B = lokr_w2, scale = alpha. */
static void test_old_format(void **st) {
    (void)st;
    const char *path = "tests/golden/adapter_v1_tiny_krona4x8.safetensors";
    Backend *be = backend_cpu_create();
    char err[1024];
    AdapterFileInfo info;
    if (adapter_file_probe(path, &info, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(info.format, 1);
    assert_int_equal(info.spec.kind, ADAPTER_KRONA);
    assert_int_equal(info.spec.a1, 4);
    assert_int_equal(info.spec.a2, 8);
    Model *m = model_open("tiny", be, err, sizeof err);
    if (!m) fail_msg("%s", err);
    if (model_load_adapter(m, path, err, sizeof err)) fail_msg("%s", err);
    const AdapterSet *s = unet_adapters(m->unet);
    SafeTensors *f = st_open(path, err, sizeof err);
    assert_non_null(f);
    assert_int_equal(s->n, 56);
    for (int i = 0; i < s->n; i++) {
        const Adapter *a = &s->items[i];
        char stem[300], key[340];
        snprintf(stem, sizeof stem, "lycoris_%s", a->name);
        for (char *c = stem; *c; c++) if (*c == '.') *c = '_';
        snprintf(key, sizeof key, "%s.lokr_w1", stem);
        int r, c;
        float *w1 = ref_factor(st_find(f, key), NULL, NULL, &r, &c);
        snprintf(key, sizeof key, "%s.lokr_w2", stem);
        float *w2 = ref_factor(st_find(f, key), NULL, NULL, &r, &c);
        snprintf(key, sizeof key, "%s.alpha", stem);
        float al = scalar(st_find(f, key));
        float *A = malloc(sizeof(float) * 32), *B = malloc(sizeof(float) * (size_t)r * c);
        be->download(be, A, a->A, sizeof(float) * 32);
        be->download(be, B, a->B, sizeof(float) * (size_t)r * c);
        assert_memory_equal(A, w1, sizeof(float) * 32);
        assert_memory_equal(B, w2, sizeof(float) * (size_t)r * c);
        assert_true(a->scale == al);
        free(w1); free(w2); free(A); free(B);
    }
    st_close(f);
    model_free(m);
    backend_destroy(be);
}

/* The SDXL hook: a name map (here the SD 1 attention rows of the LDM layout,
 * as kohya names SDXL modules) renames every key, and import reads them back
 * through the same map; a module the map cannot name stops the export. */
static int ldm_map(void *user, const char *d, char *out, size_t n, char *err, size_t errlen) {
    int *calls = user;
    (*calls)++;
    ldm_of(d, out, n);
    if (out[0]) return 0;
    snprintf(err, errlen, "no LDM name for %s", d);
    return -1;
}

static void test_name_map(void **st) {
    (void)st;
    Backend *be = backend_cpu_create();
    AdapterSpec spec = {0};
    spec.kind = ADAPTER_KRONA; spec.a1 = 4; spec.a2 = 4; spec.alpha = 1; spec.modules = ADAPT_ATTN;
    AdapterSet a, b;
    table_set(&a, be, "tiny", &spec);
    table_set(&b, be, "tiny", &spec);
    int calls = 0;
    a.name_map = b.name_map = ldm_map;
    a.name_map_user = b.name_map_user = &calls;
    char path[256], err[1024];
    tmpname(path, sizeof path, "ldm");
    if (adapter_set_save(&a, path, NULL, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(calls, a.n);
    SafeTensors *f = st_open(path, err, sizeof err);
    assert_non_null(st_find(f, "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lokr_w1"));
    assert_non_null(st_find(f, "lora_unet_output_blocks_4_1_transformer_blocks_0_attn2_to_out_0.lokr_w2"));
    assert_null(st_find(f, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lokr_w1"));
    st_close(f);
    if (adapter_set_load(&b, path, err, sizeof err)) fail_msg("%s", err);
    for (int i = 0; i < a.n; i++) {
        float *x = engine_dw(be, &a.items[i]), *y = engine_dw(be, &b.items[i]);
        assert_memory_equal(x, y, sizeof(float) * (size_t)a.items[i].d_out * a.items[i].d_in);
        free(x); free(y);
    }
    /* without the map the keys name no layer */
    b.name_map = NULL;
    assert_int_equal(adapter_set_load(&b, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "input_blocks_1_1"));
    /* a layer the map has no name for */
    snprintf(a.items[0].name, sizeof a.items[0].name, "conv_in");
    assert_int_equal(adapter_set_save(&a, path, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "no LDM name for conv_in"));
    adapter_set_free(&a);
    adapter_set_free(&b);
    unlink(path);
    backend_destroy(be);
}

/* The tiny model's first attention linears, 32 x 32 */
static const char *MOD[4] = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
};

static void add(StWriter *w, const char *pre, int mod, const char *suf, int r, int c, Rng *rng) {
    char key[300], m[200];
    underscore(MOD[mod], m, sizeof m);
    snprintf(key, sizeof key, "%s%s.%s", pre, m, suf);
    int64_t sh[2] = {r, c};
    float *h = malloc(sizeof(float) * (size_t)r * c);
    rng_fill_uniform(rng, h, r * c, -0.5f, 0.5f);
    assert_int_equal(stw_add_f32(w, key, 2, sh, h), 0);
    free(h);
}

static void add_alpha(StWriter *w, const char *pre, int mod, float alpha) {
    char key[300], m[200];
    underscore(MOD[mod], m, sizeof m);
    snprintf(key, sizeof key, "%s%s.alpha", pre, m);
    assert_int_equal(stw_add_f32(w, key, 0, NULL, &alpha), 0);
}

/* LyCORIS's own LoKr files: decomposed halves (w = a @ b, scale alpha / dim),
 * full factors (scale 1 whatever alpha says), both prefixes; layers the file
 * leaves out get dW = 0. */
static void test_lycoris_file(void **st) {
    (void)st;
    Backend *be = backend_cpu_create();
    char path[256], err[1024];
    tmpname(path, sizeof path, "lyco");
    Rng r;
    rng_seed(&r, 5);
    StWriter *w = stw_create();
    /* to_q: w1 full [4,4], w2 = a[8,2] @ b[2,8], alpha 3 -> scale 3/2 */
    add(w, "lora_unet_", 0, "lokr_w1", 4, 4, &r);
    add(w, "lora_unet_", 0, "lokr_w2_a", 8, 2, &r);
    add(w, "lora_unet_", 0, "lokr_w2_b", 2, 8, &r);
    add_alpha(w, "lora_unet_", 0, 3);
    /* to_k: w1 = a[4,3] @ b[3,4], w2 full [8,8], alpha 6 -> scale 2 */
    add(w, "lora_unet_", 1, "lokr_w1_a", 4, 3, &r);
    add(w, "lora_unet_", 1, "lokr_w1_b", 3, 4, &r);
    add(w, "lora_unet_", 1, "lokr_w2", 8, 8, &r);
    add_alpha(w, "lora_unet_", 1, 6);
    /* to_v: both halves rank 2, no alpha: scale 1 (LyCORIS's loader needs alpha) */
    add(w, "lora_unet_", 2, "lokr_w1_a", 4, 2, &r);
    add(w, "lora_unet_", 2, "lokr_w1_b", 2, 4, &r);
    add(w, "lora_unet_", 2, "lokr_w2_a", 8, 2, &r);
    add(w, "lora_unet_", 2, "lokr_w2_b", 2, 8, &r);
    /* to_out.0: LyCORIS's wrapper prefix, full factors, alpha = lora_dim 16: scale 1 */
    add(w, "lycoris_", 3, "lokr_w1", 4, 4, &r);
    add(w, "lycoris_", 3, "lokr_w2", 8, 8, &r);
    add_alpha(w, "lycoris_", 3, 16);
    stw_set_metadata(w, "ss_network_module", "lycoris.kohya");
    stw_set_metadata(w, "ss_network_args", "{\"algo\": \"lokr\"}");
    assert_int_equal(stw_save(w, path, err, sizeof err), 0);
    stw_free(w);

    AdapterFileInfo info;
    if (adapter_file_probe(path, &info, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(info.format, 0);
    assert_int_equal(info.spec.kind, ADAPTER_KRONA);
    assert_int_equal(info.spec.a1, 4);
    assert_int_equal(info.spec.a2, 4);
    assert_int_equal(info.spec.modules, ADAPT_ATTN);
    assert_int_equal(info.n_modules, 4);
    Model *m = model_open("tiny", be, err, sizeof err);
    if (!m) fail_msg("%s", err);
    if (model_load_adapter(m, path, err, sizeof err)) fail_msg("%s", err);
    const AdapterSet *s = unet_adapters(m->unet);
    SafeTensors *f = st_open(path, err, sizeof err);
    RefMod mods[4];
    assert_int_equal(group(f, mods, 4), 4);
    for (int k = 0; k < 4; k++) {
        /* the tools agree on these files (LyCORIS's loader stops at a missing alpha) */
        int to_v = strstr(mods[k].stem, "attn1_to_v") != NULL;
        double sc = tool_scale(A1111, &mods[k]);
        assert_true(sc == (strstr(mods[k].stem, "to_q") ? 1.5 : strstr(mods[k].stem, "to_k") ? 2.0 : 1.0));
        for (int t = 0; t < N_TOOLS; t++)
            if (t == LYCORIS && to_v) assert_true(isnan(tool_scale(t, &mods[k])));
            else assert_true(tool_scale(t, &mods[k]) == sc);
        int dout, din;
        float *ref = tool_dw(&mods[k], sc, &dout, &din);
        const Adapter *a = NULL;
        for (int q = 0; q < 4 && !a; q++) {
            char u[200], s1[220], s2[220];
            underscore(MOD[q], u, sizeof u);
            snprintf(s1, sizeof s1, "lora_unet_%s", u);
            snprintf(s2, sizeof s2, "lycoris_%s", u);
            if (!strcmp(s1, mods[k].stem) || !strcmp(s2, mods[k].stem)) a = find_adapter(s, MOD[q]);
        }
        assert_non_null(a);
        float *got = engine_dw(be, a);
        for (int64_t i = 0; i < (int64_t)dout * din; i++)
            assert_true(fabsf(got[i] - ref[i]) <= 4 * FLT_EPSILON * fabsf(ref[i]) + 1e-7f);
        free(ref); free(got);
    }
    /* every other attention layer: not in the file, dW = 0 */
    int zeros = 0;
    for (int i = 0; i < s->n; i++) {
        int listed = 0;
        for (int q = 0; q < 4; q++) listed |= !strcmp(s->items[i].name, MOD[q]);
        if (listed) continue;
        float *d = engine_dw(be, &s->items[i]);
        for (int64_t k = 0; k < (int64_t)s->items[i].d_out * s->items[i].d_in; k++) assert_true(d[k] == 0.0f);
        free(d);
        zeros++;
    }
    assert_int_equal(zeros, s->n - 4);
    st_close(f);
    model_free(m);
    unlink(path);
    backend_destroy(be);
}

/* What cannot be represented is refused in one line that names the key. */
typedef struct Bad {
    const char *what;
    const char *keys[6]; /* "prefix|module index|suffix|rows|cols" */
    const char *want[2];
} Bad;

static void test_refusals(void **st) {
    (void)st;
    Backend *be = backend_cpu_create();
    char err[1024];
    Model *m = model_open("tiny", be, err, sizeof err);
    if (!m) fail_msg("%s", err);
    static const Bad bad[] = {
        {"text encoder", {"lora_te_|0|lokr_w1|4|4"}, {"lora_te_text_model_encoder_layers_0_mlp_fc1", "q_proj"}},
        {"SDXL te keys", {"lora_te1_|0|lokr_w1|4|4"}, {"lora_te1_", "SDXL"}},
        {"other layer", {"lora_unet_|9|lokr_w1|4|4"}, {"resnets_0_conv1.lokr_w1", "attn-only"}},
        {"DoRA", {"lora_unet_|0|lokr_w1|4|4", "lora_unet_|0|lokr_w2|8|8", "lora_unet_|0|dora_scale|32|1"},
         {"attn1_to_q.dora_scale", "DoRA"}},
        {"Tucker", {"lora_unet_|0|lokr_w1|4|4", "lora_unet_|0|lokr_t2|2|2"}, {"lokr_t2", "Tucker"}},
        {"LoHa", {"lora_unet_|0|hada_w1_a|32|2"}, {"hada_w1_a", "LoHa"}},
        {"two kinds", {"lora_unet_|0|lokr_w1|4|4", "lora_unet_|0|lokr_w2|8|8", "lora_unet_|1|lora_down.weight|2|32"},
         {"lora_down.weight", "one adapter kind"}},
        {"per-layer A", {"lora_unet_|0|lokr_w1|4|4", "lora_unet_|0|lokr_w2|8|8", "lora_unet_|1|lokr_w1|2|8",
                         "lora_unet_|1|lokr_w2|16|4"},
         {"attn1_to_q.lokr_w1' has shape [4,4], expected [2,8]", "one shape for every layer"}},
        {"ranks differ", {"lora_unet_|0|lokr_w1_a|4|2", "lora_unet_|0|lokr_w1_b|2|4", "lora_unet_|0|lokr_w2_a|8|3",
                          "lora_unet_|0|lokr_w2_b|3|8"},
         {"attn1_to_q.lokr_w1_a", "ranks 2 and 3"}},
        {"not a divisor", {"lora_unet_|0|lokr_w1|5|4", "lora_unet_|0|lokr_w2|8|8"}, {"5x4", "a1=5"}},
    };
    const char *mods9 = "down_blocks.0.resnets.0.conv1";
    for (size_t b = 0; b < sizeof bad / sizeof *bad; b++) {
        char path[256];
        tmpname(path, sizeof path, "bad");
        StWriter *w = stw_create();
        Rng r;
        rng_seed(&r, 9);
        for (int k = 0; k < 6 && bad[b].keys[k]; k++) {
            char pre[32], suf[64], key[300], mname[200];
            int mod, rows, cols;
            assert_int_equal(sscanf(bad[b].keys[k], "%31[^|]|%d|%63[^|]|%d|%d", pre, &mod, suf, &rows, &cols), 5);
            underscore(mod == 9 ? mods9 : MOD[mod], mname, sizeof mname);
            snprintf(key, sizeof key, "%s%s.%s", pre, !strcmp(pre, "lora_te_") ? "text_model_encoder_layers_0_mlp_fc1"
                     : !strcmp(pre, "lora_te1_") ? "text_model_encoder_layers_0_self_attn_q_proj" : mname, suf);
            int64_t sh[2] = {rows, cols};
            float *h = malloc(sizeof(float) * (size_t)rows * cols);
            rng_fill_uniform(&r, h, rows * cols, -1, 1);
            assert_int_equal(stw_add_f32(w, key, 2, sh, h), 0);
            free(h);
        }
        assert_int_equal(stw_save(w, path, err, sizeof err), 0);
        stw_free(w);
        err[0] = 0;
        assert_int_equal(model_load_adapter(m, path, err, sizeof err), -1);
        print_message("%-13s %s\n", bad[b].what, err);
        assert_null(strchr(err, '\n'));
        assert_non_null(strstr(err, path));
        for (int k = 0; k < 2; k++)
            if (!strstr(err, bad[b].want[k])) fail_msg("%s: '%s' not in: %s", bad[b].what, bad[b].want[k], err);
        unlink(path);
    }
    model_free(m);
    backend_destroy(be);
}

/* LyCORIS's factorization() and rebuild: values printed by its Python code
 * (lycoris/functional/general.py at f49d30d, and make_module_from_state_dict's
 * choice of factor followed by LokrModule's shapes), and the engine's copy
 * against the reference above over every small shape. */
static void test_lycoris_rule(void **st) {
    (void)st;
    static const int fact[][8] = {
        /* dim, factorization(dim,-1), then factor 4 and 16 */
        {128, 8, 16, 4, 32, 8, 16, 0}, {250, 10, 25, 2, 125, 10, 25, 0}, {360, 18, 20, 4, 90, 15, 24, 0},
        {320, 16, 20, 4, 80, 16, 20, 0}, {768, 24, 32, 4, 192, 16, 48, 0}, {1280, 32, 40, 4, 320, 16, 80, 0},
        {5120, 64, 80, 4, 1280, 16, 320, 0}, {32, 4, 8, 4, 8, 2, 16, 0}, {64, 8, 8, 4, 16, 4, 16, 0},
    };
    for (size_t i = 0; i < sizeof fact / sizeof *fact; i++) {
        int m, n;
        adapter_lycoris_factorization(fact[i][0], -1, &m, &n);
        assert_int_equal(m, fact[i][1]); assert_int_equal(n, fact[i][2]);
        adapter_lycoris_factorization(fact[i][0], 4, &m, &n);
        assert_int_equal(m, fact[i][3]); assert_int_equal(n, fact[i][4]);
        adapter_lycoris_factorization(fact[i][0], 16, &m, &n);
        assert_int_equal(m, fact[i][5]); assert_int_equal(n, fact[i][6]);
    }
    static const int rb[][7] = {
        /* a1, a2, b1, b2 -> the w1 LyCORIS builds, loads */
        {4, 4, 8, 8, 4, 4, 1},    {16, 16, 2, 2, 2, 2, 0},   {4, 64, 80, 5, 5, 5, 0},
        {16, 20, 20, 16, 16, 16, 0}, {4, 8, 8, 4, 4, 4, 0},  {4, 8, 16, 8, 8, 8, 0},
        {8, 8, 4, 4, 4, 4, 0},    {2, 2, 16, 16, 2, 2, 1},   {4, 2, 8, 16, 4, 4, 0},
        {4, 32, 8, 1, 4, 4, 0},   {1, 1, 32, 32, 1, 1, 1},   {64, 64, 5, 5, 5, 5, 0},
        {4, 64, 80, 12, 5, 12, 0}, {8, 8, 40, 96, 8, 8, 1},  {16, 16, 80, 80, 16, 16, 1},
        {8, 16, 40, 20, 16, 16, 0}, {2, 4, 16, 8, 4, 4, 0},  {4, 16, 16, 4, 4, 4, 0},
    };
    for (size_t i = 0; i < sizeof rb / sizeof *rb; i++) {
        int r, c;
        int ok = adapter_lycoris_loads(rb[i][0], rb[i][1], rb[i][2], rb[i][3], &r, &c);
        assert_int_equal(r, rb[i][4]);
        assert_int_equal(c, rb[i][5]);
        assert_int_equal(ok, rb[i][6]);
    }
    for (int a1 = 1; a1 <= 16; a1++)
        for (int a2 = 1; a2 <= 16; a2++)
            for (int b1 = 1; b1 <= 24; b1++)
                for (int b2 = 1; b2 <= 24; b2++)
                    if (adapter_lycoris_loads(a1, a2, b1, b2, NULL, NULL) != ref_lycoris_rebuilds(a1, a2, b1, b2))
                        fail_msg("LyCORIS rule differs at %d %d %d %d", a1, a2, b1, b2);
    /* the rule as the docs state it, for a1 = a2 = f: loads iff f*f <= d_out and f*f <= d_in
     * (LyCORIS's default split aside) */
    for (int f = 1; f <= 16; f++)
        for (int b1 = 1; b1 <= 24; b1++)
            for (int b2 = 1; b2 <= 24; b2++) {
                int m1, m2, n;
                adapter_lycoris_factorization(f * b1, -1, &m1, &n);
                adapter_lycoris_factorization(f * b2, -1, &m2, &n);
                int dflt = m1 == f && m2 == f;
                assert_int_equal(adapter_lycoris_loads(f, f, b1, b2, NULL, NULL), dflt || (f <= b1 && f <= b2));
            }
}

/* Text encoder adapters: kohya's lora_te_<HF path> keys with the UNet's in one
 * file, LoKr full factors (w1 = scale * A); model_load_adapter attaches and
 * loads both, bit for bit; a UNet-only file detaches them. */
static void te_roundtrip(AdapterKind kind, int dtype) {
    Backend *be = backend_cpu_create();
    char err[1024];
    Model *m = model_open("tiny", be, err, sizeof err);
    if (!m) fail_msg("%s", err);
    AdapterSpec sp = {.kind = kind, .a1 = 4, .a2 = 8, .rank = 2, .alpha = kind == ADAPTER_LORA ? 4.0f : 1.0f,
                      .modules = ADAPT_ATTN};
    if (model_attach_adapters(m, &sp, 1, err, sizeof err)) fail_msg("%s", err);
    if (model_attach_text_adapters(m, &sp, 2, err, sizeof err)) fail_msg("%s", err);
    AdapterSet *sets[3] = {unet_adapters(m->unet)};
    int ns = 1 + model_text_adapter_sets(m, sets + 1);
    assert_int_equal(ns, 2);
    int nt = sets[1]->n;
    assert_int_equal(nt, 4 * te_config(m->te)->num_hidden_layers);
    Rng r;
    rng_seed(&r, 3);
    for (int s = 0; s < ns; s++) /* B is zero at init: make every factor non-trivial */
        for (int i = 0; i < sets[s]->n; i++) {
            Adapter *a = &sets[s]->items[i];
            int64_t na = adapter_numel_A(a), nb = adapter_numel_B(a);
            float *h = malloc(sizeof(float) * (size_t)(na + nb));
            rng_fill_uniform(&r, h, na + nb, -1, 1);
            be->upload(be, a->A, h, sizeof(float) * (size_t)na);
            be->upload(be, a->B, h + na, sizeof(float) * (size_t)nb);
            free(h);
        }
    char path[256];
    tmpname(path, sizeof path, "te");
    if (model_save_adapter(m, path, NULL, dtype, err, sizeof err)) fail_msg("%s", err);
    SafeTensors *st = st_open(path, err, sizeof err);
    assert_non_null(st);
    check_header_dtype(path, st_dtype_name(dtype), st_count(st));
    const char *k1 = kind == ADAPTER_KRONA ? "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lokr_w1"
                                           : "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight";
    const char *k2 = kind == ADAPTER_KRONA ? "lora_te_text_model_encoder_layers_1_self_attn_out_proj.lokr_w2"
                                           : "lora_te_text_model_encoder_layers_1_self_attn_out_proj.lora_up.weight";
    assert_non_null(st_find(st, k1));
    assert_non_null(st_find(st, k2));
    int n_te = 0;
    for (int i = 0; i < st_count(st); i++)
        if (!strncmp(st_at(st, i)->name, "lora_te_", 8)) n_te++;
    assert_int_equal(n_te, 3 * nt);
    char cnt[32];
    snprintf(cnt, sizeof cnt, "%d", sets[0]->n + nt);
    assert_string_equal(st_metadata(st, "count"), cnt);
    st_close(st);
    AdapterFileInfo info;
    if (adapter_file_probe(path, &info, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(info.n_te_modules, nt);
    assert_int_equal(info.te_prefixes, 1);
    assert_int_equal(info.n_modules, sets[0]->n);

    Model *m2 = model_open("tiny", be, err, sizeof err);
    if (!m2) fail_msg("%s", err);
    if (model_load_adapter(m2, path, err, sizeof err)) fail_msg("%s", err);
    AdapterSet *sets2[3] = {unet_adapters(m2->unet)};
    assert_int_equal(1 + model_text_adapter_sets(m2, sets2 + 1), 2);
    for (int s = 0; s < 2; s++) {
        assert_int_equal(sets2[s]->n, sets[s]->n);
        for (int i = 0; i < sets[s]->n; i++) {
            const Adapter *a = &sets[s]->items[i], *b = &sets2[s]->items[i];
            assert_string_equal(a->name, b->name);
            float *wa = engine_dw(be, a), *wb = engine_dw(be, b);
            double *bnd = dtype == ST_F32 ? NULL : rounding_bound(be, a, dtype);
            for (int64_t k = 0; k < (int64_t)a->d_out * a->d_in; k++)
                if (bnd ? !(fabs((double)wa[k] - wb[k]) <= bnd[k] + 0x1p-23 * (fabs(wa[k]) + fabs(wb[k])))
                        : fabsf(wa[k] - wb[k]) > 1e-6f * (1 + fabsf(wa[k])))
                    fail_msg("%s: dW[%lld] %g after the round trip, %g before", a->name, (long long)k, wb[k], wa[k]);
            free(bnd);
            free(wa);
            free(wb);
        }
    }
    /* the encoders give the same conditioning */
    float *c1 = be->alloc(be, sizeof(float) * (size_t)m->cond_floats);
    float *c2 = be->alloc(be, sizeof(float) * (size_t)m->cond_floats);
    float *c0 = be->alloc(be, sizeof(float) * (size_t)m->cond_floats);
    assert_int_equal(model_encode_prompt(m, "a photo of sks dog", 32, c1, err, sizeof err), 0);
    assert_int_equal(model_encode_prompt(m2, "a photo of sks dog", 32, c2, err, sizeof err), 0);
    float *h1 = malloc(sizeof(float) * (size_t)m->cond_floats), *h2 = malloc(sizeof(float) * (size_t)m->cond_floats);
    be->download(be, h1, c1, sizeof(float) * (size_t)m->cond_floats);
    be->download(be, h2, c2, sizeof(float) * (size_t)m->cond_floats);
    /* the same conditioning (f32 files; f16 / bf16 ones are checked by their dW above: the
     * random factors here are large, so the encoder amplifies their rounding) */
    for (int64_t k = 0; dtype == ST_F32 && k < m->cond_floats; k++)
        assert_true(fabsf(h1[k] - h2[k]) <= 1e-5f * (1 + fabsf(h1[k])));
    /* a UNet-only file detaches them: the base encoder again, which differs */
    char p2[256];
    tmpname(p2, sizeof p2, "unet");
    if (adapter_set_save(unet_adapters(m->unet), p2, NULL, err, sizeof err)) fail_msg("%s", err);
    if (model_load_adapter(m2, p2, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(model_text_adapter_sets(m2, sets2 + 1), 0);
    assert_int_equal(model_encode_prompt(m2, "a photo of sks dog", 32, c0, err, sizeof err), 0);
    be->download(be, h2, c0, sizeof(float) * (size_t)m->cond_floats);
    double diff = 0;
    for (int64_t k = 0; k < m->cond_floats; k++) diff = fmax(diff, fabs(h1[k] - h2[k]));
    assert_true(diff > 1e-3);
    free(h1); free(h2);
    be->free(be, c0); be->free(be, c1); be->free(be, c2);
    unlink(path);
    unlink(p2);
    model_free(m2);
    model_free(m);
    backend_destroy(be);
}

static void test_te_krona(void **st) { (void)st; te_roundtrip(ADAPTER_KRONA, ST_F32); }
static void test_te_lora(void **st) { (void)st; te_roundtrip(ADAPTER_LORA, ST_F32); }
static void test_te_krona_bf16(void **st) { (void)st; te_roundtrip(ADAPTER_KRONA, ST_BF16); }
static void test_te_lora_f16(void **st) { (void)st; te_roundtrip(ADAPTER_LORA, ST_F16); }

/* A value F16 cannot hold stops the export in one line naming the file, the
 * tensor and the dtypes that can; no file is left. Other dtypes are refused. */
static void test_export_dtype_refusals(void **st) {
    (void)st;
    Backend *be = backend_cpu_create();
    AdapterSpec spec = {.kind = ADAPTER_KRONA, .a1 = 4, .a2 = 4, .alpha = 1, .modules = ADAPT_ATTN};
    AdapterSet set;
    table_set(&set, be, "tiny", &spec);
    Adapter *a = &set.items[3];
    float big = 7e4f;
    be->upload(be, a->B, &big, sizeof big);
    char path[256], err[1024], want[400];
    tmpname(path, sizeof path, "big");
    unlink(path);
    const AdapterSet *sets[1] = {&set};
    assert_int_equal(adapter_sets_save(sets, 1, path, NULL, ST_F16, err, sizeof err), -1);
    print_message("%s\n", err);
    snprintf(want, sizeof want, "%s: tensor 'lora_unet_", path);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, ".lokr_w2': values beyond F16's range (|x| > 65504): write it as BF16 or F32"));
    assert_null(strchr(err, '\n'));
    assert_false(fs_exists(path));
    /* bf16 holds it */
    assert_int_equal(adapter_sets_save(sets, 1, path, NULL, ST_BF16, err, sizeof err), 0);
    SafeTensors *f = st_open(path, err, sizeof err);
    assert_non_null(f);
    check_header_dtype(path, "BF16", st_count(f));
    st_close(f);
    assert_int_equal(adapter_sets_save(sets, 1, path, NULL, ST_F64, err, sizeof err), -1);
    assert_non_null(strstr(err, "F32, F16 or BF16, not F64"));
    unlink(path);
    adapter_set_free(&set);
    backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lycoris_rule),
        cmocka_unit_test(test_sd15_16x16),
        cmocka_unit_test(test_sd15_4x64),
        cmocka_unit_test(test_tiny_krona),
        cmocka_unit_test(test_tiny_krona_4x8),
        cmocka_unit_test(test_tiny_lora),
        cmocka_unit_test(test_tiny_krona_f16),
        cmocka_unit_test(test_tiny_krona_bf16),
        cmocka_unit_test(test_tiny_lora_f16),
        cmocka_unit_test(test_tiny_lora_bf16),
        cmocka_unit_test(test_old_format),
        cmocka_unit_test(test_lycoris_file),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_name_map),
        cmocka_unit_test(test_te_krona),
        cmocka_unit_test(test_te_lora),
        cmocka_unit_test(test_te_krona_bf16),
        cmocka_unit_test(test_te_lora_f16),
        cmocka_unit_test(test_export_dtype_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

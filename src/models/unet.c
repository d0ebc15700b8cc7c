/* unet.c — diffusers' UNet2DConditionModel on the Backend op table: building
 * the network from a UNetConfig (parameter table, modules), adapter
 * attachment, and the forward/backward passes with their memory plan. These
 * share the private layer structs and struct UNet, so they stay together; the
 * config (unet_config.c) and the weight files (unet_io.c) only need the public
 * API and live apart.
 *
 * Structure: a builder walks the config once and emits every parameter (named as
 * diffusers' state_dict) plus small layer structs that hold parameter indices.
 * The same walk serves unet_param_table (no weights) and unet_create.
 *
 * Memory: three arenas allocated with be->alloc and reused across steps.
 *   act  activations kept for backward (or, without for_backward, only each
 *        layer's output: internals are released when the layer ends)
 *   tmp  per-layer temporaries (stack: mark/release), forward and backward
 *   grd  backward: gradients of the skip tensors + two ping-pong slots for the
 *        gradient of the main stream
 *   rec  gradient checkpointing: the internals of the one resnet or transformer
 *        block whose backward runs, recomputed from its kept input (the forward
 *        then keeps only each such layer's output; memory for one extra forward)
 * Their sizes come from planning passes: the forward/backward code runs with
 * u->plan set, taking buffers (which only counts) and skipping every op; then
 * the arenas grow if needed and the real pass runs. One code path, so the plan
 * can never disagree with the execution. */
#include "models/unet.h"
#include "core/rng.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ layers */

typedef struct { int w, b; int cin, cout, k, s, p; } Conv;         /* b = -1: no bias */
typedef struct { int g, b; int C, G; float eps; float *mean, *rstd; } Norm;
typedef struct { int w, b; int din, dout; Adapter *ad; } Lin;      /* b = -1: no bias */

typedef struct {
    int cin, cout, has_sc;
    Norm n1, n2;
    Conv c1, c2, sc;
    Lin temb;
    const float *x;
    float *h1; /* conv1's output (+ time): the input of norm 2 (norms and SiLU are fused: no more is kept) */
} Resnet;

typedef struct {
    Lin q, k, v, o;
    int heads, cross;
    float *q_, *k_, *v_, *o_, *lse;
} Attn;

typedef struct {
    Norm ln1, ln2, ln3;
    Attn a1, a2;
    Lin ff0, ff2;
    const float *h0;
    float *h1, *h2, *ffp; /* what backward reads besides h0 (the norms' and GEGLU's outputs are made again) */
} TBlock;

typedef struct {
    int C, heads, depth, linear;
    Norm gn;
    Conv pin_c, pout_c;
    Lin pin_l, pout_l;
    TBlock *blocks;
    const float *x;
    float *seqL; /* the last block's output (besides the input x, all backward keeps) */
} Xformer;

typedef struct {
    int nres, natt, cross, has_sample; /* downsampler (down) / upsampler (up) */
    Resnet *res;
    Xformer *att;                /* nres of them when cross */
    Conv samp;
    float *samp_in;              /* down: conv input; up: upsampled tensor */
    int skip_ch[8];              /* up: channels of each popped skip (unused for down) */
} Block;

typedef struct {
    float *p;    /* device pointer */
    int C, H, W;
} Skip;

struct UNet {
    UNetConfig cfg;
    Backend *be;
    UNetParam *params;
    int n_params;
    UNetLinear *linears;
    Lin **linp;
    int n_linears;
    float *wblock, *gblock;
    int64_t n_base;
    int64_t n_gemm; /* the conv and linear weights: wblock's first n_gemm floats */
    int trainable;
    AdapterSet ads;

    /* modules */
    Conv conv_in, conv_out;
    Lin t1, t2, e1, e2;
    int has_add;
    Block *down, *up, mid;
    Norm norm_out;

    /* arenas */
    struct Arena { float *base; int64_t cap, off, peak; } act, tmp, grd, rec;
    int plan, overflow;
    int keep;   /* forward for backward: keep what backward reads */
    int inner;  /* ... including resnet / transformer-block internals (not when ckpt) */
    int ckpt;   /* gradient checkpointing (unet_set_checkpointing) */

    /* last forward */
    int fN, fH, fW, fL, have_fwd;
    float *x_in, *ctx, *tproj, *te1, *temb, *tembs, *addin, *ae1, *h_last;
    Skip skips[64];
    int n_skips;
    /* backward */
    float *slot[2];
    int cur;
    int64_t slot_n;
    float *dtembs;
    int want_temb;   /* backward computes dtembs (base training, or dadded) */
    float *dctx;     /* += d loss / d ctx during backward (unet_backward_cond), else NULL */
    float *dadded;   /* += d loss / d added (its pooled part) during backward, else NULL */
    char err[256];   /* why the last forward/backward returned -1 */
};

/* ------------------------------------------------------------------ builder */

static void pre_fmt(char *buf, size_t n, const char *fmt, ...);

typedef struct {
    UNetParam *p; int n, cap;
    UNetLinear *lin; Lin **linp; int nl, capl;
    int oom;
} Builder;

static int addp(Builder *b, const char *pre, const char *suf, int ndim, int64_t s0, int64_t s1,
                int64_t s2, int64_t s3) {
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 256;
        UNetParam *np = realloc(b->p, (size_t)cap * sizeof *np);
        if (!np) { b->oom = 1; return -1; }
        b->p = np; b->cap = cap;
    }
    UNetParam *p = &b->p[b->n];
    memset(p, 0, sizeof *p);
    pre_fmt(p->name, sizeof p->name, "%s.%s", pre, suf);
    p->ndim = ndim;
    int64_t s[4] = {s0, s1, s2, s3};
    p->numel = 1;
    for (int i = 0; i < ndim; i++) { p->shape[i] = s[i]; p->numel *= s[i]; }
    return b->n++;
}

static void b_conv(Builder *b, Conv *c, const char *pre, int cin, int cout, int k, int s) {
    c->cin = cin; c->cout = cout; c->k = k; c->s = s; c->p = k / 2;
    c->w = addp(b, pre, "weight", 4, cout, cin, k, k);
    c->b = addp(b, pre, "bias", 1, cout, 0, 0, 0);
}

static void b_norm(Builder *b, Norm *n, const char *pre, int C, int G, float eps) {
    n->C = C; n->G = G; n->eps = eps;
    n->g = addp(b, pre, "weight", 1, C, 0, 0, 0);
    n->b = addp(b, pre, "bias", 1, C, 0, 0, 0);
}

/* adaptable: 1 attention, 2 ffn, 0 not listed */
static void b_lin(Builder *b, Lin *l, const char *pre, int din, int dout, int bias, int kind) {
    l->din = din; l->dout = dout; l->ad = NULL;
    l->w = addp(b, pre, "weight", 2, dout, din, 0, 0);
    l->b = bias ? addp(b, pre, "bias", 1, dout, 0, 0, 0) : -1;
    if (!kind) return;
    if (b->nl == b->capl) {
        int cap = b->capl ? 2 * b->capl : 64;
        UNetLinear *nl = realloc(b->lin, (size_t)cap * sizeof *nl);
        if (!nl) { b->oom = 1; return; }
        b->lin = nl;
        Lin **np = realloc(b->linp, (size_t)cap * sizeof *np);
        if (!np) { b->oom = 1; return; }
        b->linp = np;
        b->capl = cap;
    }
    UNetLinear *u = &b->lin[b->nl];
    memset(u, 0, sizeof *u);
    snprintf(u->name, sizeof u->name, "%s", pre);
    u->d_out = dout; u->d_in = din;
    u->is_attn = kind == 1; u->is_ffn = kind == 2;
    b->linp[b->nl++] = l;
}

/* names are short (< 90 chars for SDXL); a function keeps gcc's truncation
 * analysis from flagging every nested prefix */
static void pre_fmt(char *buf, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, n, fmt, ap);
    va_end(ap);
}
#define PRE(buf, ...) pre_fmt(buf, sizeof buf, __VA_ARGS__)

static void b_resnet(Builder *b, Resnet *r, const char *pre, int cin, int cout, int temb,
                     const UNetConfig *c) {
    char s[UNET_NAME_MAX];
    r->cin = cin; r->cout = cout; r->has_sc = cin != cout;
    PRE(s, "%s.norm1", pre); b_norm(b, &r->n1, s, cin, c->norm_num_groups, c->norm_eps);
    PRE(s, "%s.conv1", pre); b_conv(b, &r->c1, s, cin, cout, 3, 1);
    PRE(s, "%s.time_emb_proj", pre); b_lin(b, &r->temb, s, temb, cout, 1, 0);
    PRE(s, "%s.norm2", pre); b_norm(b, &r->n2, s, cout, c->norm_num_groups, c->norm_eps);
    PRE(s, "%s.conv2", pre); b_conv(b, &r->c2, s, cout, cout, 3, 1);
    if (r->has_sc) { PRE(s, "%s.conv_shortcut", pre); b_conv(b, &r->sc, s, cin, cout, 1, 1); }
}

static void b_attn(Builder *b, Attn *a, const char *pre, int C, int kvdim, int heads, int cross) {
    char s[UNET_NAME_MAX];
    a->heads = heads; a->cross = cross;
    PRE(s, "%s.to_q", pre); b_lin(b, &a->q, s, C, C, 0, 1);
    PRE(s, "%s.to_k", pre); b_lin(b, &a->k, s, kvdim, C, 0, 1);
    PRE(s, "%s.to_v", pre); b_lin(b, &a->v, s, kvdim, C, 0, 1);
    PRE(s, "%s.to_out.0", pre); b_lin(b, &a->o, s, C, C, 1, 1);
}

static int b_xformer(Builder *b, Xformer *x, const char *pre, int C, int heads, int depth,
                     const UNetConfig *c) {
    char s[UNET_NAME_MAX];
    x->C = C; x->heads = heads; x->depth = depth; x->linear = c->use_linear_projection;
    PRE(s, "%s.norm", pre); b_norm(b, &x->gn, s, C, c->norm_num_groups, 1e-6f);
    PRE(s, "%s.proj_in", pre);
    if (x->linear) b_lin(b, &x->pin_l, s, C, C, 1, 0); else b_conv(b, &x->pin_c, s, C, C, 1, 1);
    x->blocks = calloc((size_t)depth, sizeof *x->blocks);
    if (!x->blocks) { b->oom = 1; return -1; }
    for (int i = 0; i < depth; i++) {
        TBlock *t = &x->blocks[i];
        char tp[UNET_NAME_MAX];
        PRE(tp, "%s.transformer_blocks.%d", pre, i);
        PRE(s, "%s.norm1", tp); b_norm(b, &t->ln1, s, C, 1, 1e-5f);
        PRE(s, "%s.attn1", tp); b_attn(b, &t->a1, s, C, C, heads, 0);
        PRE(s, "%s.norm2", tp); b_norm(b, &t->ln2, s, C, 1, 1e-5f);
        PRE(s, "%s.attn2", tp); b_attn(b, &t->a2, s, C, c->cross_attention_dim, heads, 1);
        PRE(s, "%s.norm3", tp); b_norm(b, &t->ln3, s, C, 1, 1e-5f);
        PRE(s, "%s.ff.net.0.proj", tp); b_lin(b, &t->ff0, s, C, 8 * C, 1, 2);
        PRE(s, "%s.ff.net.2", tp); b_lin(b, &t->ff2, s, 4 * C, C, 1, 2);
    }
    PRE(s, "%s.proj_out", pre);
    if (x->linear) b_lin(b, &x->pout_l, s, C, C, 1, 0); else b_conv(b, &x->pout_c, s, C, C, 1, 1);
    return 0;
}

static void free_block(Block *k) {
    if (!k) return;
    if (k->att) for (int i = 0; i < k->natt; i++) free(k->att[i].blocks);
    free(k->att);
    free(k->res);
}

static void free_modules(UNet *u) {
    int nl = u->cfg.n_levels;
    if (u->down) for (int i = 0; i < nl; i++) free_block(&u->down[i]);
    if (u->up) for (int i = 0; i < nl; i++) free_block(&u->up[i]);
    free_block(&u->mid);
    free(u->down); free(u->up);
    u->down = u->up = NULL;
    memset(&u->mid, 0, sizeof u->mid);
}

/* Walk the architecture in diffusers' registration order. */
static int build(UNet *u, Builder *b) {
    const UNetConfig *c = &u->cfg;
    int nl = c->n_levels, ch0 = c->block_out_channels[0], T = 4 * ch0;
    char s[UNET_NAME_MAX], p[UNET_NAME_MAX];
    b_conv(b, &u->conv_in, "conv_in", c->in_channels, ch0, 3, 1);
    b_lin(b, &u->t1, "time_embedding.linear_1", ch0, T, 1, 0);
    b_lin(b, &u->t2, "time_embedding.linear_2", T, T, 1, 0);
    u->has_add = c->addition_time_embed_dim > 0;
    if (u->has_add) {
        b_lin(b, &u->e1, "add_embedding.linear_1", c->projection_class_embeddings_input_dim, T, 1, 0);
        b_lin(b, &u->e2, "add_embedding.linear_2", T, T, 1, 0);
    }
    u->down = calloc((size_t)nl, sizeof *u->down);
    u->up = calloc((size_t)nl, sizeof *u->up);
    if (!u->down || !u->up) return -1;
    int lpb = c->layers_per_block;
    int cout = ch0;
    for (int i = 0; i < nl; i++) {
        Block *k = &u->down[i];
        int cin = cout;
        cout = c->block_out_channels[i];
        k->nres = lpb; k->cross = c->down_cross[i]; k->has_sample = i != nl - 1;
        k->res = calloc((size_t)lpb, sizeof *k->res);
        if (!k->res) return -1;
        if (k->cross) {
            k->att = calloc((size_t)lpb, sizeof *k->att);
            if (!k->att) return -1;
            k->natt = lpb;
            for (int j = 0; j < lpb; j++) {
                PRE(p, "down_blocks.%d.attentions.%d", i, j);
                if (b_xformer(b, &k->att[j], p, cout, c->heads[i], c->transformer_layers[i], c)) return -1;
            }
        }
        for (int j = 0; j < lpb; j++) {
            PRE(p, "down_blocks.%d.resnets.%d", i, j);
            b_resnet(b, &k->res[j], p, j == 0 ? cin : cout, cout, T, c);
        }
        if (k->has_sample) {
            PRE(s, "down_blocks.%d.downsamplers.0.conv", i);
            b_conv(b, &k->samp, s, cout, cout, 3, 2);
        }
    }
    /* up blocks are registered before mid_block in diffusers' __init__ */
    int prev;
    cout = c->block_out_channels[nl - 1];
    for (int i = 0; i < nl; i++) {
        Block *k = &u->up[i];
        int lvl = nl - 1 - i;
        prev = cout;
        cout = c->block_out_channels[lvl];
        int cin = c->block_out_channels[lvl > 0 ? lvl - 1 : 0];
        int n = lpb + 1;
        if (n > 8) return -1;
        k->nres = n; k->cross = c->up_cross[i]; k->has_sample = i != nl - 1;
        k->res = calloc((size_t)n, sizeof *k->res);
        if (!k->res) return -1;
        if (k->cross) {
            k->att = calloc((size_t)n, sizeof *k->att);
            if (!k->att) return -1;
            k->natt = n;
            for (int j = 0; j < n; j++) {
                PRE(p, "up_blocks.%d.attentions.%d", i, j);
                if (b_xformer(b, &k->att[j], p, cout, c->heads[lvl], c->transformer_layers[lvl], c))
                    return -1;
            }
        }
        for (int j = 0; j < n; j++) {
            int skip = j == n - 1 ? cin : cout;
            int hin = j == 0 ? prev : cout;
            k->skip_ch[j] = skip;
            PRE(p, "up_blocks.%d.resnets.%d", i, j);
            b_resnet(b, &k->res[j], p, hin + skip, cout, T, c);
        }
        if (k->has_sample) {
            PRE(s, "up_blocks.%d.upsamplers.0.conv", i);
            b_conv(b, &k->samp, s, cout, cout, 3, 1);
        }
    }
    if (c->mid_block) {
        Block *k = &u->mid;
        int C = c->block_out_channels[nl - 1];
        k->nres = 2; k->cross = 1;
        k->res = calloc(2, sizeof *k->res);
        k->att = calloc(1, sizeof *k->att);
        if (!k->res || !k->att) return -1;
        k->natt = 1;
        if (b_xformer(b, &k->att[0], "mid_block.attentions.0", C, c->heads[nl - 1],
                      c->transformer_layers[nl - 1], c)) return -1;
        b_resnet(b, &k->res[0], "mid_block.resnets.0", C, C, T, c);
        b_resnet(b, &k->res[1], "mid_block.resnets.1", C, C, T, c);
    }
    b_norm(b, &u->norm_out, "conv_norm_out", ch0, c->norm_num_groups, c->norm_eps);
    b_conv(b, &u->conv_out, "conv_out", ch0, c->out_channels, 3, 1);
    return b->oom ? -1 : 0;
}

static int cfg_valid(const UNetConfig *c, char *err, size_t errlen) {
    if (c->n_levels < 1 || c->n_levels > UNET_MAX_LEVELS || c->layers_per_block < 1 ||
        c->layers_per_block > 7 || c->in_channels < 1 || c->out_channels < 1 ||
        c->cross_attention_dim < 1 || c->norm_num_groups < 1) {
        snprintf(err, errlen, "UNet config '%s' is incomplete (levels, layers_per_block<=7, "
                 "channels, cross_attention_dim, norm_num_groups)", c->name);
        return -1;
    }
    for (int i = 0; i < c->n_levels; i++)
        if (c->block_out_channels[i] < 1 || c->heads[i] < 1 || c->transformer_layers[i] < 1 ||
            c->block_out_channels[i] % c->heads[i] || c->block_out_channels[i] % c->norm_num_groups) {
            snprintf(err, errlen, "UNet config '%s' level %d: channels %d must be divisible by "
                     "heads %d and norm_num_groups %d", c->name, i, c->block_out_channels[i],
                     c->heads[i], c->norm_num_groups);
            return -1;
        }
    return 0;
}

int unet_param_table(const UNetConfig *cfg, UNetParam **params, int *n_params,
                     UNetLinear **linears, int *n_linears) {
    char err[256];
    if (cfg_valid(cfg, err, sizeof err)) return -1;
    UNet tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.cfg = *cfg;
    Builder b = {0};
    int rc = build(&tmp, &b);
    free_modules(&tmp);
    free(b.linp);
    if (rc) { free(b.p); free(b.lin); return -1; }
    *params = b.p; *n_params = b.n;
    if (linears) *linears = b.lin; else free(b.lin);
    if (n_linears) *n_linears = b.nl;
    return 0;
}

/* ------------------------------------------------------------------ create */

/* Where each parameter lives in a block of n_base floats (the weights, or
 * their gradients at the same offsets): the conv and linear weights first
 * (ndim >= 2: the only params read as GEMM weights), then biases and norms,
 * each group in table order. The backend may then keep the first n_gemm
 * floats of the frozen weights in bf16 only (set_frozen). block NULL: none. */
static void param_layout(UNet *u, float *block, int grads) {
    int64_t off = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < u->n_params; i++) {
            UNetParam *q = &u->params[i];
            if ((q->ndim >= 2) != (pass == 0)) continue;
            float *at = block ? block + off : NULL;
            if (grads) q->grad = at; else q->data = at;
            off += q->numel;
        }
        if (pass == 0) u->n_gemm = off;
    }
}

UNet *unet_create(const UNetConfig *cfg, Backend *be, char *err, size_t errlen) {
    if (cfg_valid(cfg, err, errlen)) return NULL;
    UNet *u = calloc(1, sizeof *u);
    if (!u) { snprintf(err, errlen, "out of host memory"); return NULL; }
    u->cfg = *cfg; u->be = be;
    Builder b = {0};
    if (build(u, &b)) {
        free(b.p); free(b.lin); free(b.linp); free_modules(u); free(u);
        snprintf(err, errlen, "out of host memory building UNet '%s'", cfg->name);
        return NULL;
    }
    u->params = b.p; u->n_params = b.n;
    u->linears = b.lin; u->linp = b.linp; u->n_linears = b.nl;
    int64_t total = 0;
    for (int i = 0; i < u->n_params; i++) total += u->params[i].numel;
    u->n_base = total;
    u->wblock = be->alloc(be, (size_t)total * sizeof(float));
    if (!u->wblock) {
        snprintf(err, errlen, "out of %s memory: UNet '%s' needs %.1f GB of weights", be->name,
                 cfg->name, (double)total * 4 / 1e9);
        unet_free(u);
        return NULL;
    }
    param_layout(u, u->wblock, 0);
    u->ads.be = be;
    return u;
}

static void arena_free(Backend *be, struct Arena *a) {
    if (a->base) be->free(be, a->base);
    memset(a, 0, sizeof *a);
}

void unet_free(UNet *u) {
    if (!u) return;
    Backend *be = u->be;
    adapter_set_free(&u->ads);
    for (int i = 0; i < u->n_linears; i++) u->linp[i]->ad = NULL;
    if (u->wblock) be->free(be, u->wblock);
    if (u->gblock) be->free(be, u->gblock);
    arena_free(be, &u->act); arena_free(be, &u->tmp); arena_free(be, &u->grd);
    arena_free(be, &u->rec);
    free_modules(u);
    free(u->params); free(u->linears); free(u->linp);
    free(u);
}

const UNetConfig *unet_config(const UNet *u) { return &u->cfg; }
Backend *unet_backend(const UNet *u) { return u->be; }
int unet_n_params(const UNet *u) { return u->n_params; }
UNetParam *unet_param_at(UNet *u, int i) { return i >= 0 && i < u->n_params ? &u->params[i] : NULL; }
int64_t unet_n_base_params(const UNet *u) { return u->n_base; }
float *unet_grad_block(UNet *u) { return u->gblock; }
float *unet_weight_block(UNet *u) { return u->wblock; }

UNetParam *unet_param(UNet *u, const char *name) {
    for (int i = 0; i < u->n_params; i++)
        if (!strcmp(u->params[i].name, name)) return &u->params[i];
    return NULL;
}

int unet_n_linears(const UNet *u) { return u->n_linears; }
const UNetLinear *unet_linear_at(const UNet *u, int i) {
    return i >= 0 && i < u->n_linears ? &u->linears[i] : NULL;
}

void unet_init_random(UNet *u, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    int64_t maxn = 0;
    for (int i = 0; i < u->n_params; i++) if (u->params[i].numel > maxn) maxn = u->params[i].numel;
    float *h = malloc((size_t)maxn * sizeof *h);
    if (!h) return;
    for (int i = 0; i < u->n_params; i++) {
        UNetParam *p = &u->params[i];
        const char *dot = strrchr(p->name, '.');
        int is_w = dot && !strcmp(dot, ".weight");
        if (is_w && p->ndim >= 2) {
            /* kaiming_uniform(a=sqrt(5)) as torch's Linear/Conv2d default: U(+-1/sqrt(fan_in)) */
            int64_t fan_in = p->numel / p->shape[0];
            float bound = 1.0f / sqrtf((float)fan_in);
            rng_fill_uniform(&r, h, p->numel, -bound, bound);
        } else {
            float v = is_w ? 1.0f : 0.0f; /* norm gamma 1, every bias / beta 0 */
            for (int64_t j = 0; j < p->numel; j++) h[j] = v;
        }
        u->be->upload(u->be, p->data, h, (size_t)p->numel * sizeof *h);
    }
    free(h);
}

/* ------------------------------------------------------------------ adapters */

#include "models/adapter_census.h"   /* here, with the one function that uses it */

int unet_attach_adapters(UNet *u, const AdapterSpec *spec, uint64_t seed, char *err, size_t errlen) {
    adapter_set_free(&u->ads);
    for (int i = 0; i < u->n_linears; i++) u->linp[i]->ad = NULL;
    u->ads.be = u->be;
    u->ads.spec = *spec;
    u->have_fwd = 0; /* saved activations belong to the old adapters */
    if (spec->kind == ADAPTER_NONE) return 0;
    AdapterCensus c;
    if (adapter_census_table(u->params, u->n_params, u->linears, u->n_linears, spec, &c) != 0) {
        snprintf(err, errlen, "%s", c.err);
        adapter_census_free(&c);
        return -1;
    }
    int n = c.n_layers;
    if (!c.ok) {
        snprintf(err, errlen, "%s", c.err);
        if (c.fault == ADAPTER_BAD_A1 || c.fault == ADAPTER_BAD_A2) {
            /* name the values that would work for every selected layer */
            int vals[ADAPTER_CENSUS_MAX_VALUE];
            int nv = adapter_census_valid(&c, vals, ADAPTER_CENSUS_MAX_VALUE);
            size_t len = strlen(err);
            len += (size_t)snprintf(err + len, len < errlen ? errlen - len : 0,
                                    "; valid %s for this model:", adapter_fault_name(c.fault));
            for (int k = 0; k < nv && len < errlen; k++)
                len += (size_t)snprintf(err + len, len < errlen ? errlen - len : 0, "%s %d",
                                        k ? "," : "", vals[k]);
        }
        adapter_census_free(&c);
        return -1;
    }
    adapter_census_free(&c);
    if (n == 0) return 0;
    u->ads.items = calloc((size_t)n, sizeof *u->ads.items);
    if (!u->ads.items) { snprintf(err, errlen, "out of host memory"); return -1; }
    Rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < u->n_linears; i++) {
        const UNetLinear *l = &u->linears[i];
        if (!adapter_selects(spec, l->is_attn, l->is_ffn)) continue;
        Adapter *a = &u->ads.items[u->ads.n];
        if (adapter_init(a, u->be, spec, l->name, l->d_out, l->d_in, rng_u64(&r), err, errlen)) {
            adapter_set_free(&u->ads);
            u->ads.be = u->be;
            return -1;
        }
        u->ads.n++;
        u->linp[i]->ad = a;
    }
    if (adapter_set_pack(&u->ads, err, errlen)) { /* one block: one zero, one AdamW per step */
        adapter_set_free(&u->ads);
        for (int i = 0; i < u->n_linears; i++) u->linp[i]->ad = NULL;
        u->ads.be = u->be;
        return -1;
    }
    return 0;
}

AdapterSet *unet_adapters(UNet *u) { return &u->ads; }

void unet_set_base_trainable(UNet *u, int trainable) {
    if (trainable && !u->gblock) {
        u->gblock = u->be->alloc(u->be, (size_t)u->n_base * sizeof(float));
        if (!u->gblock) return;
    }
    if (!trainable && u->gblock) { u->be->free(u->be, u->gblock); u->gblock = NULL; }
    if (trainable) u->be->set_frozen(u->be, u->wblock, 0, 0); /* AdamW will write them */
    param_layout(u, u->gblock, 1);
    u->trainable = u->gblock != NULL;
}

int unet_base_trainable(const UNet *u) { return u->trainable; }

/* frozen base weights (the adapter case): the backend may keep a bf16 copy,
 * or in BF16 mode keep the conv and linear weights in bf16 only (backend.h) */
void unet_promise_frozen(UNet *u) {
    if (!u->trainable) u->be->set_frozen(u->be, u->wblock, u->n_base, u->n_gemm);
}

void unet_set_checkpointing(UNet *u, int on) {
    u->ckpt = on != 0;
    u->have_fwd = 0; /* a forward kept for the other mode cannot serve backward */
}

int unet_checkpointing(const UNet *u) { return u->ckpt; }

void unet_zero_grad(UNet *u) {
    Backend *be = u->be;
    if (u->gblock) be->zero(be, u->gblock, (size_t)u->n_base * sizeof(float));
    adapter_set_zero_grad(&u->ads);
}

/* ------------------------------------------------------------------ arenas */

static float *take(UNet *u, struct Arena *a, int64_t n) {
    n = (n + 15) & ~(int64_t)15; /* 64-byte alignment for every buffer */
    float *p = NULL;
    if (!u->plan) {
        if (a->off + n > a->cap) { u->overflow = 1; return NULL; }
        p = a->base + a->off;
    }
    a->off += n;
    if (a->off > a->peak) a->peak = a->off;
    return p;
}

static float *takez(UNet *u, struct Arena *a, int64_t n) {
    float *p = take(u, a, n);
    if (p) u->be->zero(u->be, p, (size_t)n * sizeof(float));
    return p;
}

static int arena_fit(Backend *be, struct Arena *a) {
    if (a->peak > a->cap) {
        if (a->base) be->free(be, a->base);
        a->base = be->alloc(be, (size_t)a->peak * sizeof(float));
        a->cap = a->base ? a->peak : 0;
        if (!a->base) return -1;
    }
    a->off = 0;
    return 0;
}

#define P(i) (u->params[i].data)
#define G(i) ((i) >= 0 ? u->params[i].grad : NULL)
#define PB(i) ((i) >= 0 ? u->params[i].data : NULL)

/* ------------------------------------------------------------------ linear + adapter */

static void lin_fwd(UNet *u, const Lin *l, const float *x, float *y, int64_t M) {
    Backend *be = u->be;
    int64_t tm = u->tmp.off;
    const Adapter *a = u->ads.bypass ? NULL : l->ad;
    if (adapter_merged(&u->ads.spec, a, M)) {
        float *Wm = take(u, &u->tmp, (int64_t)l->dout * l->din);
        float *s = take(u, &u->tmp, adapter_scratch_floats(a, (int64_t)l->dout));
        if (!u->plan) {
            be->copy(be, Wm, P(l->w), (size_t)l->dout * l->din * sizeof(float));
            adapter_merge_into(be, a, Wm, s);
            be->linear_fwd(be, x, Wm, PB(l->b), y, M, l->din, l->dout);
        }
    } else {
        float *s = a ? take(u, &u->tmp, adapter_scratch_floats(a, M)) : NULL;
        if (!u->plan) {
            be->linear_fwd(be, x, P(l->w), PB(l->b), y, M, l->din, l->dout);
            if (a) adapter_fwd(be, a, x, y, M, s);
        }
    }
    u->tmp.off = tm;
}

/* dx (may be NULL) += dy W_eff; weight grads when trainable; adapter grads */
static void lin_bwd(UNet *u, const Lin *l, const float *dy, const float *x, float *dx, int64_t M) {
    Backend *be = u->be;
    int64_t tm = u->tmp.off;
    Adapter *a = l->ad;
    float *dW = G(l->w), *db = G(l->b);
    if (adapter_merged(&u->ads.spec, a, M)) {
        float *Wm = take(u, &u->tmp, (int64_t)l->dout * l->din);
        float *s = take(u, &u->tmp, adapter_scratch_floats(a, M > l->dout ? M : l->dout));
        if (!u->plan) {
            if (dx) {
                be->copy(be, Wm, P(l->w), (size_t)l->dout * l->din * sizeof(float));
                adapter_merge_into(be, a, Wm, s);
            }
            if (dx || dW || db) be->linear_bwd(be, dy, x, Wm, dx, dW, db, M, l->din, l->dout);
            adapter_bwd(be, a, dy, x, NULL, M, s);
        }
    } else {
        float *s = a ? take(u, &u->tmp, adapter_scratch_floats(a, M)) : NULL;
        if (!u->plan) {
            if (dx || dW || db) be->linear_bwd(be, dy, x, P(l->w), dx, dW, db, M, l->din, l->dout);
            if (a) adapter_bwd(be, a, dy, x, dx, M, s);
        }
    }
    u->tmp.off = tm;
}

/* ------------------------------------------------------------------ resnet */

static float *resnet_fwd(UNet *u, Resnet *r, const float *x, int N, int H, int W) {
    Backend *be = u->be;
    int64_t HW = (int64_t)H * W;
    int G = r->n1.G;
    float *out = take(u, &u->act, N * r->cout * HW);
    int64_t am = u->act.off, tm = u->tmp.off;
    r->x = x;
    r->n1.mean = take(u, &u->act, N * G); r->n1.rstd = take(u, &u->act, N * G);
    r->h1 = take(u, &u->act, N * r->cout * HW);
    r->n2.mean = take(u, &u->act, N * G); r->n2.rstd = take(u, &u->act, N * G);
    int cmax = r->cin > r->cout ? r->cin : r->cout;
    float *s = take(u, &u->tmp, N * cmax * HW);
    float *tp = take(u, &u->tmp, (int64_t)N * r->cout);
    float *sc = r->has_sc ? take(u, &u->tmp, N * r->cout * HW) : NULL;
    if (!u->plan) {
        be->group_norm_silu_fwd(be, x, P(r->n1.g), P(r->n1.b), s, r->n1.mean, r->n1.rstd, N,
                                r->cin, HW, G, r->n1.eps);
        be->conv2d_fwd(be, s, P(r->c1.w), P(r->c1.b), r->h1, N, r->cin, H, W, r->cout, 3, 1, 1);
        be->linear_fwd(be, u->tembs, P(r->temb.w), P(r->temb.b), tp, N, r->temb.din, r->cout);
        be->add_channel_bias(be, r->h1, tp, N, r->cout, HW);
        be->group_norm_silu_fwd(be, r->h1, P(r->n2.g), P(r->n2.b), s, r->n2.mean, r->n2.rstd, N,
                                r->cout, HW, G, r->n2.eps);
        be->conv2d_fwd(be, s, P(r->c2.w), P(r->c2.b), out, N, r->cout, H, W, r->cout, 3, 1, 1);
        if (r->has_sc) {
            be->conv2d_fwd(be, x, P(r->sc.w), P(r->sc.b), sc, N, r->cin, H, W, r->cout, 1, 1, 0);
            be->add(be, sc, out, out, N * r->cout * HW);
        } else {
            be->add(be, x, out, out, N * r->cout * HW);
        }
    }
    u->tmp.off = tm;
    if (!u->inner) u->act.off = am;
    return out;
}

/* Gradient checkpointing: the forward released this layer's internals; run it
 * again into the rec arena (swapped in as act) so its backward finds them. */
static void recompute_begin(UNet *u, struct Arena *saved) {
    *saved = u->act;
    u->act = u->rec;
    u->act.off = 0;
    u->inner = 1;
}

static void recompute_end(UNet *u, const struct Arena *saved) {
    u->rec = u->act;
    u->act = *saved;
    u->inner = 0;
}

static void resnet_bwd(UNet *u, Resnet *r, const float *dy, float *dx, int N, int H, int W) {
    Backend *be = u->be;
    if (u->ckpt) {
        struct Arena saved;
        recompute_begin(u, &saved);
        resnet_fwd(u, r, r->x, N, H, W);
        recompute_end(u, &saved);
    }
    int64_t HW = (int64_t)H * W, tm = u->tmp.off;
    int G = r->n1.G;
    int64_t no = N * r->cout * HW, ni = N * r->cin * HW;
    float *d = takez(u, &u->tmp, no > ni ? no : ni);
    float *d2 = takez(u, &u->tmp, no > ni ? no : ni);
    float *s = u->trainable ? take(u, &u->tmp, no > ni ? no : ni) : NULL;
    float *dtp = u->want_temb ? takez(u, &u->tmp, (int64_t)N * r->cout) : NULL;
    if (u->plan) { u->tmp.off = tm; return; }
    /* conv2's input silu(gn2(h1)) is needed only for the weight gradient: made
     * again then (its statistics come out as saved). Without it conv2d_bwd
     * reads no x: h1 stands in, a buffer of that size. */
    if (s)
        be->group_norm_silu_fwd(be, r->h1, P(r->n2.g), P(r->n2.b), s, r->n2.mean, r->n2.rstd, N, r->cout, HW,
                                G, r->n2.eps);
    be->conv2d_bwd(be, dy, s ? s : r->h1, P(r->c2.w), d, G(r->c2.w), G(r->c2.b), N, r->cout, H,
                   W, r->cout, 3, 1, 1);            /* d = d silu(gn2(h1)) */
    be->group_norm_silu_bwd(be, d, r->h1, P(r->n2.g), P(r->n2.b), r->n2.mean, r->n2.rstd, d2, G(r->n2.g),
                            G(r->n2.b), N, r->cout, HW, G); /* d2 = d h1 */
    { float *t = d; d = d2; d2 = t; }              /* d = d h1; d2 free (dirty) */
    if (u->want_temb) { /* the time embedding's gradient: base training or the pooled text */
        be->channel_sum_bwd(be, d, dtp, N, r->cout, HW);
        be->linear_bwd(be, dtp, u->tembs, P(r->temb.w), u->dtembs, G(r->temb.w), G(r->temb.b), N,
                       r->temb.din, r->cout);
    }
    if (s)
        be->group_norm_silu_fwd(be, r->x, P(r->n1.g), P(r->n1.b), s, r->n1.mean, r->n1.rstd, N, r->cin, HW, G,
                                r->n1.eps);
    be->zero(be, d2, (size_t)ni * sizeof(float));
    be->conv2d_bwd(be, d, s ? s : r->x, P(r->c1.w), d2, G(r->c1.w), G(r->c1.b), N, r->cin, H, W,
                   r->cout, 3, 1, 1);                /* d2 = d silu(gn1(x)) */
    be->group_norm_silu_bwd(be, d2, r->x, P(r->n1.g), P(r->n1.b), r->n1.mean, r->n1.rstd, dx, G(r->n1.g),
                            G(r->n1.b), N, r->cin, HW, G);
    if (r->has_sc)
        be->conv2d_bwd(be, dy, r->x, P(r->sc.w), dx, G(r->sc.w), G(r->sc.b), N, r->cin, H, W,
                       r->cout, 1, 1, 0);
    else
        be->axpy(be, 1.0f, dy, dx, ni);
    u->tmp.off = tm;
}

/* ------------------------------------------------------------------ transformer */

static float *attn_fwd(UNet *u, Attn *a, const float *xq, const float *xkv, int N, int Sq, int Lk) {
    Backend *be = u->be;
    int C = a->q.dout, H = a->heads, D = C / H;
    int64_t Mq = (int64_t)N * Sq, Mk = (int64_t)N * Lk;
    a->q_ = take(u, &u->act, Mq * C);
    a->k_ = take(u, &u->act, Mk * C);
    a->v_ = take(u, &u->act, Mk * C);
    a->o_ = take(u, &u->act, Mq * C);
    a->lse = take(u, &u->act, (int64_t)N * H * Sq);
    float *y = take(u, &u->act, Mq * C);
    lin_fwd(u, &a->q, xq, a->q_, Mq);
    lin_fwd(u, &a->k, xkv, a->k_, Mk);
    lin_fwd(u, &a->v, xkv, a->v_, Mk);
    if (!u->plan)
        be->attention_fwd(be, a->q_, a->k_, a->v_, a->o_, a->lse, N, Sq, Lk, H, D,
                          1.0f / sqrtf((float)D), 0);
    lin_fwd(u, &a->o, a->o_, y, Mq);
    return y;
}

static void attn_bwd(UNet *u, Attn *a, const float *dy, const float *xq, const float *xkv,
                     float *dxq, float *dxkv, int N, int Sq, int Lk) {
    Backend *be = u->be;
    int C = a->q.dout, H = a->heads, D = C / H;
    int64_t Mq = (int64_t)N * Sq, Mk = (int64_t)N * Lk, tm = u->tmp.off;
    /* cross-attention k/v see only the text: their gradients matter only for
     * weights (adapters or trainable base) */
    int need_kv = !a->cross || u->trainable || a->k.ad || a->v.ad || (dxkv != NULL);
    float *dq = takez(u, &u->tmp, Mq * C);
    float *dk = need_kv ? takez(u, &u->tmp, Mk * C) : NULL;
    float *dv = need_kv ? takez(u, &u->tmp, Mk * C) : NULL;
    float *dout = takez(u, &u->tmp, Mq * C);
    lin_bwd(u, &a->o, dy, a->o_, dout, Mq);
    if (!u->plan)
        be->attention_bwd(be, dout, a->q_, a->k_, a->v_, a->o_, a->lse, dq, dk, dv, N, Sq, Lk, H,
                          D, 1.0f / sqrtf((float)D), 0);
    lin_bwd(u, &a->q, dq, xq, dxq, Mq);
    if (need_kv) {
        lin_bwd(u, &a->k, dk, xkv, dxkv, Mk);
        lin_bwd(u, &a->v, dv, xkv, dxkv, Mk);
    }
    u->tmp.off = tm;
}

/* A transformer block's layer norms keep only their statistics for backward:
 * the normalised rows go to the temporary arena (ln_tmp), and backward makes
 * them again (ln_again: same op, same input, same values) only when a weight
 * or adapter gradient of the linears they feed reads them. */
static float *ln_tmp(UNet *u, Norm *n, const float *x, int64_t M) {
    n->mean = take(u, &u->act, M);
    n->rstd = take(u, &u->act, M);
    float *y = take(u, &u->tmp, M * n->C);
    if (!u->plan)
        u->be->layer_norm_fwd(u->be, x, P(n->g), P(n->b), y, n->mean, n->rstd, M, n->C, n->eps);
    return y;
}
static float *ln_again(UNet *u, const Norm *n, const float *x, int64_t M) {
    float *y = take(u, &u->tmp, M * n->C);
    if (!u->plan) /* the statistics come out as saved */
        u->be->layer_norm_fwd(u->be, x, P(n->g), P(n->b), y, n->mean, n->rstd, M, n->C, n->eps);
    return y;
}
/* does lin_bwd read this linear's input? (its weight's gradient, or an adapter's) */
static int lin_reads_x(const UNet *u, const Lin *l) { return G(l->w) != NULL || l->ad != NULL; }

static float *tblock_fwd(UNet *u, TBlock *t, const float *h0, int N, int S, int L) {
    Backend *be = u->be;
    int C = t->ln1.C;
    int64_t M = (int64_t)N * S;
    float *h3 = take(u, &u->act, M * C);
    int64_t am = u->act.off;
    t->h0 = h0;
    int64_t tm = u->tmp.off;
    float *n = ln_tmp(u, &t->ln1, h0, M);
    t->h1 = attn_fwd(u, &t->a1, n, n, N, S, S);
    if (!u->plan) be->add(be, t->h1, h0, t->h1, M * C);
    u->tmp.off = tm;
    n = ln_tmp(u, &t->ln2, t->h1, M);
    t->h2 = attn_fwd(u, &t->a2, n, u->ctx, N, S, L);
    if (!u->plan) be->add(be, t->h2, t->h1, t->h2, M * C);
    u->tmp.off = tm;
    /* The feed-forward keeps only GEGLU's input for backward (GEGLU's output,
     * like the norms', is made again when ff2's gradients read it) */
    t->ffp = take(u, &u->act, M * 8 * C);
    n = ln_tmp(u, &t->ln3, t->h2, M);
    float *ffg = take(u, &u->tmp, M * 4 * C);
    lin_fwd(u, &t->ff0, n, t->ffp, M);
    if (!u->plan) be->geglu_fwd(be, t->ffp, ffg, M, 4 * C);
    lin_fwd(u, &t->ff2, ffg, h3, M);
    if (!u->plan) be->add(be, h3, t->h2, h3, M * C);
    u->tmp.off = tm;
    if (!u->inner) u->act.off = am;
    return h3;
}

/* dh [M,C] holds d(block output) and becomes d(block input), in place */
static void tblock_bwd(UNet *u, TBlock *t, float *dh, int N, int S, int L) {
    Backend *be = u->be;
    if (u->ckpt) {
        struct Arena saved;
        recompute_begin(u, &saved);
        tblock_fwd(u, t, t->h0, N, S, L);
        recompute_end(u, &saved);
    }
    int C = t->ln1.C;
    int64_t M = (int64_t)N * S, tm = u->tmp.off;
    float *dffg = takez(u, &u->tmp, M * 4 * C);
    float *dffp = takez(u, &u->tmp, M * 8 * C);
    float *dn = takez(u, &u->tmp, M * C);
    /* ff2's and ff0's inputs, made again when their gradients read them (the
     * forward's values: same ops, same inputs); else ffp and h2 stand in,
     * buffers as large that lin_bwd does not read */
    int64_t tx = u->tmp.off;
    float *ffg = lin_reads_x(u, &t->ff2) ? take(u, &u->tmp, M * 4 * C) : t->ffp;
    if (!u->plan && ffg != t->ffp) be->geglu_fwd(be, t->ffp, ffg, M, 4 * C);
    lin_bwd(u, &t->ff2, dh, ffg, dffg, M);
    u->tmp.off = tx;
    if (!u->plan) be->geglu_bwd(be, dffg, t->ffp, dffp, M, 4 * C);
    float *n = lin_reads_x(u, &t->ff0) ? ln_again(u, &t->ln3, t->h2, M) : t->h2;
    lin_bwd(u, &t->ff0, dffp, n, dn, M);
    u->tmp.off = tx;
    if (!u->plan) {
        be->layer_norm_bwd(be, dn, t->h2, P(t->ln3.g), t->ln3.mean, t->ln3.rstd, dh, G(t->ln3.g),
                           G(t->ln3.b), M, C);
        be->zero(be, dn, (size_t)M * C * sizeof(float));
    }
    n = lin_reads_x(u, &t->a2.q) ? ln_again(u, &t->ln2, t->h1, M) : t->h1;
    attn_bwd(u, &t->a2, dh, n, u->ctx, dn, u->dctx, N, S, L);
    u->tmp.off = tx;
    if (!u->plan) {
        be->layer_norm_bwd(be, dn, t->h1, P(t->ln2.g), t->ln2.mean, t->ln2.rstd, dh, G(t->ln2.g),
                           G(t->ln2.b), M, C);
        be->zero(be, dn, (size_t)M * C * sizeof(float));
    }
    n = lin_reads_x(u, &t->a1.q) || lin_reads_x(u, &t->a1.k) || lin_reads_x(u, &t->a1.v)
            ? ln_again(u, &t->ln1, t->h0, M) : t->h1; /* (h1: a stand-in of the size) */
    attn_bwd(u, &t->a1, dh, n, n, dn, dn, N, S, S);
    u->tmp.off = tx;
    if (!u->plan)
        be->layer_norm_bwd(be, dn, t->h0, P(t->ln1.g), t->ln1.mean, t->ln1.rstd, dh, G(t->ln1.g),
                           G(t->ln1.b), M, C);
    u->tmp.off = tm;
}

static float *xformer_fwd(UNet *u, Xformer *x, const float *in, int N, int H, int W) {
    Backend *be = u->be;
    int C = x->C, G = x->gn.G;
    int64_t HW = (int64_t)H * W, n = N * C * HW;
    float *out = take(u, &u->act, n);
    int64_t am = u->act.off, tm = u->tmp.off;
    x->x = in;
    x->gn.mean = take(u, &u->act, N * G); x->gn.rstd = take(u, &u->act, N * G);
    float *seq = take(u, &u->act, n);
    /* proj_in's and proj_out's inputs are temporaries: backward makes them
     * again (xformer_pin_x) only for their weights' gradients */
    float *gno = take(u, &u->tmp, n);
    if (!u->plan)
        be->group_norm_fwd(be, in, P(x->gn.g), P(x->gn.b), gno, x->gn.mean, x->gn.rstd, N, C,
                           HW, G, x->gn.eps);
    if (x->linear) {
        float *gnl = take(u, &u->tmp, n);
        if (!u->plan) be->nchw_to_nlc(be, gno, gnl, N, C, HW, 0);
        lin_fwd(u, &x->pin_l, gnl, seq, N * HW);
    } else {
        float *pin = take(u, &u->tmp, n);
        if (!u->plan) {
            be->conv2d_fwd(be, gno, P(x->pin_c.w), P(x->pin_c.b), pin, N, C, H, W, C, 1, 1, 0);
            be->nchw_to_nlc(be, pin, seq, N, C, HW, 0);
        }
    }
    u->tmp.off = tm;
    for (int i = 0; i < x->depth; i++) seq = tblock_fwd(u, &x->blocks[i], seq, N, (int)HW, u->fL);
    x->seqL = seq;
    if (x->linear) {
        float *po = take(u, &u->tmp, n);
        lin_fwd(u, &x->pout_l, seq, po, N * HW);
        if (!u->plan) be->nlc_to_nchw(be, po, out, N, C, HW, 0);
    } else {
        float *pon = take(u, &u->tmp, n);
        if (!u->plan) {
            be->nlc_to_nchw(be, seq, pon, N, C, HW, 0);
            be->conv2d_fwd(be, pon, P(x->pout_c.w), P(x->pout_c.b), out, N, C, H, W, C, 1, 1, 0);
        }
    }
    if (!u->plan) be->add(be, out, in, out, n);
    u->tmp.off = tm;
    if (!u->keep) u->act.off = am;
    return out;
}

static void xformer_bwd(UNet *u, Xformer *x, const float *dy, float *dx, int N, int H, int W) {
    Backend *be = u->be;
    int C = x->C, G = x->gn.G;
    int64_t HW = (int64_t)H * W, n = N * C * HW, tm = u->tmp.off;
    float *dseq = takez(u, &u->tmp, n);
    float *t2 = takez(u, &u->tmp, n);
    if (!u->plan) be->axpy(be, 1.0f, dy, dx, n); /* residual */
    if (x->linear) {
        if (!u->plan) be->nchw_to_nlc(be, dy, t2, N, C, HW, 1);
        lin_bwd(u, &x->pout_l, t2, x->seqL, dseq, N * HW);
    } else {
        /* proj_out's input again for its weight gradient (else dy stands in, unread) */
        const float *pon = dy;
        if (G(x->pout_c.w)) {
            float *p = take(u, &u->tmp, n);
            if (!u->plan) be->nlc_to_nchw(be, x->seqL, p, N, C, HW, 0);
            pon = p;
        }
        if (!u->plan) {
            be->conv2d_bwd(be, dy, pon, P(x->pout_c.w), t2, G(x->pout_c.w), G(x->pout_c.b), N, C, H,
                           W, C, 1, 1, 0);
            be->nchw_to_nlc(be, t2, dseq, N, C, HW, 1);
        }
    }
    for (int i = x->depth - 1; i >= 0; i--) tblock_bwd(u, &x->blocks[i], dseq, N, (int)HW, u->fL);
    float *dgno = takez(u, &u->tmp, n);
    if (!u->plan) be->zero(be, t2, (size_t)n * sizeof(float));
    /* proj_in's input again for its weight gradient: group norm of x (its
     * statistics come out as saved), as rows for the linear (else x stands in) */
    const float *pin = x->x;
    if (x->linear ? lin_reads_x(u, &x->pin_l) : G(x->pin_c.w) != NULL) {
        float *gno = take(u, &u->tmp, n), *gnl = x->linear ? take(u, &u->tmp, n) : gno;
        if (!u->plan) {
            be->group_norm_fwd(be, x->x, P(x->gn.g), P(x->gn.b), gno, x->gn.mean, x->gn.rstd, N, C, HW, G,
                               x->gn.eps);
            if (x->linear) be->nchw_to_nlc(be, gno, gnl, N, C, HW, 0);
        }
        pin = gnl;
    }
    if (x->linear) {
        lin_bwd(u, &x->pin_l, dseq, pin, t2, N * HW);
        if (!u->plan) be->nlc_to_nchw(be, t2, dgno, N, C, HW, 1);
    } else if (!u->plan) {
        be->nlc_to_nchw(be, dseq, t2, N, C, HW, 1);
        be->conv2d_bwd(be, t2, pin, P(x->pin_c.w), dgno, G(x->pin_c.w), G(x->pin_c.b), N, C, H,
                       W, C, 1, 1, 0);
    }
    if (!u->plan)
        be->group_norm_bwd(be, dgno, x->x, P(x->gn.g), x->gn.mean, x->gn.rstd, dx, G(x->gn.g),
                           G(x->gn.b), N, C, HW, G);
    u->tmp.off = tm;
}

static int xformer_adapted(const Xformer *x) {
    for (int i = 0; i < x->depth; i++) {
        const TBlock *t = &x->blocks[i];
        if (t->a1.q.ad || t->a1.k.ad || t->a1.v.ad || t->a1.o.ad || t->a2.q.ad || t->a2.k.ad ||
            t->a2.v.ad || t->a2.o.ad || t->ff0.ad || t->ff2.ad)
            return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ forward */

static void push_skip(UNet *u, float *p, int C, int H, int W) {
    if (u->n_skips < 64) u->skips[u->n_skips] = (Skip){p, C, H, W};
    u->n_skips++;
}

static float *conv_fwd(UNet *u, const Conv *c, const float *x, int N, int H, int W) {
    int Ho = (H + 2 * c->p - c->k) / c->s + 1, Wo = (W + 2 * c->p - c->k) / c->s + 1;
    float *y = take(u, &u->act, (int64_t)N * c->cout * Ho * Wo);
    if (!u->plan)
        u->be->conv2d_fwd(u->be, x, P(c->w), PB(c->b), y, N, c->cin, H, W, c->cout, c->k, c->s, c->p);
    return y;
}

static void forward_pass(UNet *u, const float *x, const float *t, const float *ctx,
                         const float *added, float *out) {
    Backend *be = u->be;
    const UNetConfig *c = &u->cfg;
    int N = u->fN, H = u->fH, W = u->fW, L = u->fL, nl = c->n_levels;
    int ch0 = c->block_out_channels[0], T = 4 * ch0;
    u->act.off = u->tmp.off = 0;
    u->n_skips = 0;
    /* inputs copied so that backward does not depend on the caller's buffers */
    u->x_in = take(u, &u->act, (int64_t)N * c->in_channels * H * W);
    u->ctx = take(u, &u->act, (int64_t)N * L * c->cross_attention_dim);
    u->tproj = take(u, &u->act, (int64_t)N * ch0);
    u->te1 = take(u, &u->act, (int64_t)N * T);
    float *te1s = take(u, &u->act, (int64_t)N * T);
    u->temb = take(u, &u->act, (int64_t)N * T);
    u->tembs = take(u, &u->act, (int64_t)N * T);
    if (!u->plan) {
        be->copy(be, u->x_in, x, (size_t)N * c->in_channels * H * W * sizeof(float));
        be->copy(be, u->ctx, ctx, (size_t)N * L * c->cross_attention_dim * sizeof(float));
        be->timestep_embedding(be, t, u->tproj, N, ch0, c->flip_sin_to_cos, c->freq_shift, 10000.0f);
        be->linear_fwd(be, u->tproj, P(u->t1.w), P(u->t1.b), u->te1, N, ch0, T);
        be->silu_fwd(be, u->te1, te1s, (int64_t)N * T);
        be->linear_fwd(be, te1s, P(u->t2.w), P(u->t2.b), u->temb, N, T, T);
    }
    if (u->has_add) {
        int D = c->addition_time_embed_dim, Pin = c->projection_class_embeddings_input_dim;
        int Pp = Pin - 6 * D;
        u->addin = take(u, &u->act, (int64_t)N * Pin);
        u->ae1 = take(u, &u->act, (int64_t)N * T);
        float *ae1s = take(u, &u->act, (int64_t)N * T);
        float *ids = take(u, &u->tmp, (int64_t)N * 6);
        float *emb = take(u, &u->tmp, (int64_t)N * 6 * D);
        float *ae2 = take(u, &u->tmp, (int64_t)N * T);
        if (!u->plan) {
            for (int n = 0; n < N; n++) {
                be->copy(be, ids + 6 * n, added + (int64_t)n * (Pp + 6) + Pp, 6 * sizeof(float));
                be->copy(be, u->addin + (int64_t)n * Pin, added + (int64_t)n * (Pp + 6),
                         (size_t)Pp * sizeof(float));
            }
            be->timestep_embedding(be, ids, emb, N * 6, D, c->flip_sin_to_cos, c->freq_shift, 10000.0f);
            for (int n = 0; n < N; n++)
                be->copy(be, u->addin + (int64_t)n * Pin + Pp, emb + (int64_t)n * 6 * D,
                         (size_t)6 * D * sizeof(float));
            be->linear_fwd(be, u->addin, P(u->e1.w), P(u->e1.b), u->ae1, N, Pin, T);
            be->silu_fwd(be, u->ae1, ae1s, (int64_t)N * T);
            be->linear_fwd(be, ae1s, P(u->e2.w), P(u->e2.b), ae2, N, T, T);
            be->add(be, u->temb, ae2, u->temb, (int64_t)N * T);
        }
        u->tmp.off = 0;
    }
    if (!u->plan) be->silu_fwd(be, u->temb, u->tembs, (int64_t)N * T);

    float *h = conv_fwd(u, &u->conv_in, u->x_in, N, H, W);
    int C = ch0;
    push_skip(u, h, C, H, W);
    for (int i = 0; i < nl; i++) {
        Block *k = &u->down[i];
        for (int j = 0; j < k->nres; j++) {
            h = resnet_fwd(u, &k->res[j], h, N, H, W);
            C = k->res[j].cout;
            if (k->cross) h = xformer_fwd(u, &k->att[j], h, N, H, W);
            push_skip(u, h, C, H, W);
        }
        if (k->has_sample) {
            k->samp_in = h;
            h = conv_fwd(u, &k->samp, h, N, H, W);
            H = (H + 1) / 2; W = (W + 1) / 2;
            push_skip(u, h, C, H, W);
        }
    }
    if (c->mid_block) {
        h = resnet_fwd(u, &u->mid.res[0], h, N, H, W);
        h = xformer_fwd(u, &u->mid.att[0], h, N, H, W);
        h = resnet_fwd(u, &u->mid.res[1], h, N, H, W);
    }
    int sp = u->n_skips;
    for (int i = 0; i < nl; i++) {
        Block *k = &u->up[i];
        for (int j = 0; j < k->nres; j++) {
            Skip *s = &u->skips[--sp];
            int Cs = s->C;
            float *cat = take(u, &u->act, (int64_t)N * (C + Cs) * H * W);
            if (!u->plan) be->concat_channels(be, h, s->p, cat, N, C, Cs, (int64_t)H * W);
            h = resnet_fwd(u, &k->res[j], cat, N, H, W);
            C = k->res[j].cout;
            if (k->cross) h = xformer_fwd(u, &k->att[j], h, N, H, W);
        }
        if (k->has_sample) {
            float *up = take(u, &u->act, (int64_t)N * C * 4 * H * W);
            if (!u->plan) be->upsample2x_fwd(be, h, up, N, C, H, W);
            k->samp_in = up;
            H *= 2; W *= 2;
            h = conv_fwd(u, &k->samp, up, N, H, W);
        }
    }
    u->h_last = h;
    int G = u->norm_out.G;
    int64_t HW = (int64_t)H * W;
    u->norm_out.mean = take(u, &u->act, (int64_t)N * G);
    u->norm_out.rstd = take(u, &u->act, (int64_t)N * G);
    float *s = take(u, &u->tmp, (int64_t)N * C * HW);
    if (!u->plan) {
        be->group_norm_silu_fwd(be, h, P(u->norm_out.g), P(u->norm_out.b), s, u->norm_out.mean,
                                u->norm_out.rstd, N, C, HW, G, u->norm_out.eps);
        be->conv2d_fwd(be, s, P(u->conv_out.w), P(u->conv_out.b), out, N, C, H, W,
                       c->out_channels, 3, 1, 1);
    }
    u->tmp.off = 0;
}

int unet_forward(UNet *u, const float *x, const float *t, const float *ctx, const float *added,
                 float *out, int N, int H, int W, int L, int for_backward) {
    const UNetConfig *c = &u->cfg;
    int f = 1 << (c->n_levels - 1);
    u->have_fwd = 0;
    u->err[0] = 0;
    unet_promise_frozen(u); /* again at each forward: loading weights (an upload) ends it */
    if (N < 1 || H < 1 || W < 1 || L < 1 || H % f || W % f) {
        snprintf(u->err, sizeof u->err, "UNet '%s': shape N=%d H=%d W=%d L=%d: sizes must be "
                 ">= 1 and H, W multiples of %d", c->name, N, H, W, L, f);
        return -1;
    }
    if (u->has_add && !added) {
        snprintf(u->err, sizeof u->err, "UNet '%s' has a text_time embedding: forward needs "
                 "'added' (pooled text embedding + 6 time ids)", c->name);
        return -1;
    }
    u->fN = N; u->fH = H; u->fW = W; u->fL = L;
    u->keep = for_backward;
    u->inner = for_backward && !u->ckpt;
    /* planning pass: counts buffers, runs no op */
    u->plan = 1;
    u->act.peak = u->tmp.peak = 0;
    forward_pass(u, x, t, ctx, added, out);
    u->plan = 0;
    if (arena_fit(u->be, &u->act) || arena_fit(u->be, &u->tmp)) {
        snprintf(u->err, sizeof u->err, "out of %s memory for activations (%.2f GB) at N=%d "
                 "%dx%d L=%d", u->be->name, (double)(u->act.peak + u->tmp.peak) * 4 / 1e9, N, H,
                 W, L);
        return -1;
    }
    u->overflow = 0;
    forward_pass(u, x, t, ctx, added, out);
    if (u->overflow) { snprintf(u->err, sizeof u->err, "internal: activation plan overflow"); return -1; }
    u->have_fwd = for_backward;
    return 0;
}

/* ------------------------------------------------------------------ backward */

/* the other ping-pong slot, zeroed for n floats */
static float *next_slot(UNet *u, int64_t n) {
    if (u->plan) { if (n > u->slot_n) u->slot_n = n; return NULL; }
    u->cur ^= 1;
    u->be->zero(u->be, u->slot[u->cur], (size_t)n * sizeof(float));
    return u->slot[u->cur];
}

static void backward_pass(UNet *u, const float *dout, float *dx) {
    Backend *be = u->be;
    const UNetConfig *c = &u->cfg;
    int N = u->fN, nl = c->n_levels;
    int ch0 = c->block_out_channels[0], T = 4 * ch0;
    u->tmp.off = 0; u->grd.off = 0;
    /* gradients of the skip tensors */
    float *dskip[64];
    for (int i = 0; i < u->n_skips && i < 64; i++)
        dskip[i] = takez(u, &u->grd, (int64_t)N * u->skips[i].C * u->skips[i].H * u->skips[i].W);
    int want_temb = u->want_temb = u->trainable || (u->dadded && u->has_add);
    u->dtembs = want_temb ? takez(u, &u->grd, (int64_t)N * T) : NULL;
    if (u->plan) {
        u->slot_n = 0;
    } else {
        u->slot[0] = take(u, &u->grd, u->slot_n);
        u->slot[1] = take(u, &u->grd, u->slot_n);
        u->cur = 0;
    }
    /* H, W at the output */
    int H = u->fH, W = u->fW, C = ch0;
    int64_t HW = (int64_t)H * W;
    /* conv_out(silu(conv_norm_out(h))) */
    float *ds = next_slot(u, (int64_t)N * C * HW);
    float *s = u->trainable ? take(u, &u->tmp, (int64_t)N * C * HW) : NULL;
    if (!u->plan) { /* conv_out's input made again for its weight gradient (else h_last stands in, unread) */
        if (s)
            be->group_norm_silu_fwd(be, u->h_last, P(u->norm_out.g), P(u->norm_out.b), s, u->norm_out.mean,
                                    u->norm_out.rstd, N, C, HW, u->norm_out.G, u->norm_out.eps);
        be->conv2d_bwd(be, dout, s ? s : u->h_last, P(u->conv_out.w), ds, G(u->conv_out.w),
                       G(u->conv_out.b), N, C, H, W, c->out_channels, 3, 1, 1);
    }
    float *d = next_slot(u, (int64_t)N * C * HW);
    if (!u->plan)
        be->group_norm_silu_bwd(be, ds, u->h_last, P(u->norm_out.g), P(u->norm_out.b), u->norm_out.mean,
                                u->norm_out.rstd, d, G(u->norm_out.g), G(u->norm_out.b), N, C, HW, u->norm_out.G);
    u->tmp.off = 0;

    int sp = 0; /* skips are popped in the forward's up pass from the top: walk back up */
    for (int i = nl - 1; i >= 0; i--) {
        Block *k = &u->up[i];
        if (k->has_sample) {
            /* out = conv(up(h)) at (H,W); h at (H/2,W/2) */
            float *dup = next_slot(u, (int64_t)N * C * H * W);
            if (!u->plan)
                be->conv2d_bwd(be, d, k->samp_in, P(k->samp.w), dup, G(k->samp.w), G(k->samp.b), N,
                               C, H, W, C, 3, 1, 1);
            H /= 2; W /= 2;
            d = next_slot(u, (int64_t)N * C * H * W);
            if (!u->plan) be->upsample2x_bwd(be, dup, d, N, C, H, W);
        }
        for (int j = k->nres - 1; j >= 0; j--) {
            Resnet *r = &k->res[j];
            if (k->cross) {
                float *dn = next_slot(u, (int64_t)N * C * H * W);
                xformer_bwd(u, &k->att[j], d, dn, N, H, W);
                d = dn;
            }
            float *dcat = next_slot(u, (int64_t)N * r->cin * H * W);
            resnet_bwd(u, r, d, dcat, N, H, W);
            /* this resnet popped skip number sp_idx in the forward */
            int idx = sp++;
            Skip *sk = &u->skips[idx];
            int Ch = r->cin - sk->C;
            d = next_slot(u, (int64_t)N * Ch * H * W);
            if (!u->plan) be->concat_channels_bwd(be, dcat, d, dskip[idx], N, Ch, sk->C, (int64_t)H * W);
            C = Ch;
        }
    }
    if (c->mid_block) {
        float *dn = next_slot(u, (int64_t)N * C * H * W);
        resnet_bwd(u, &u->mid.res[1], d, dn, N, H, W);
        d = next_slot(u, (int64_t)N * C * H * W);
        xformer_bwd(u, &u->mid.att[0], dn, d, N, H, W);
        dn = next_slot(u, (int64_t)N * C * H * W);
        resnet_bwd(u, &u->mid.res[0], d, dn, N, H, W);
        d = dn;
    }
    /* Layers of the down path are numbered in forward order (resnet, attention,
     * downsampler). With a frozen base and no dx wanted, nothing before the first
     * adapted attention needs a gradient: backward stops there (for SDXL that skips
     * the whole 128x128 level). */
    int need_all = u->trainable || dx != NULL || u->dctx != NULL || want_temb, first = 0, pos = 0,
        done = 0;
    for (int i = 0; i < nl; i++) {
        Block *k = &u->down[i];
        for (int j = 0; j < k->nres; j++) {
            pos++;
            if (k->cross && !first && xformer_adapted(&k->att[j])) first = pos + 1;
            if (k->cross) pos++;
        }
        if (k->has_sample) pos++;
    }
    if (!first) first = pos + 1; /* no adapter in the down path */
    if (need_all) first = 0;
    int top = u->n_skips - 1;
    for (int i = nl - 1; i >= 0 && !done; i--) {
        Block *k = &u->down[i];
        if (k->has_sample) {
            if (pos-- < first) { done = 1; break; }
            if (!u->plan) be->axpy(be, 1.0f, dskip[top], d, (int64_t)N * C * H * W);
            top--;
            int Hi = H * 2, Wi = W * 2;
            float *dn = next_slot(u, (int64_t)N * C * Hi * Wi);
            if (!u->plan)
                be->conv2d_bwd(be, d, k->samp_in, P(k->samp.w), dn, G(k->samp.w), G(k->samp.b), N,
                               C, Hi, Wi, C, 3, 2, 1);
            d = dn; H = Hi; W = Wi;
        }
        for (int j = k->nres - 1; j >= 0; j--) {
            Resnet *r = &k->res[j];
            if (k->cross && pos < first) { done = 1; break; }
            if (!u->plan) be->axpy(be, 1.0f, dskip[top], d, (int64_t)N * C * H * W);
            top--;
            if (k->cross) {
                pos--;
                float *dn = next_slot(u, (int64_t)N * C * H * W);
                xformer_bwd(u, &k->att[j], d, dn, N, H, W);
                d = dn;
            }
            if (pos-- < first) { done = 1; break; }
            float *dn = next_slot(u, (int64_t)N * r->cin * H * W);
            resnet_bwd(u, r, d, dn, N, H, W);
            d = dn;
            C = r->cin;
        }
    }
    if (!done && need_all) {
        if (!u->plan) be->axpy(be, 1.0f, dskip[0], d, (int64_t)N * C * H * W);
        if (!u->plan)
            be->conv2d_bwd(be, d, u->x_in, P(u->conv_in.w), dx, G(u->conv_in.w), G(u->conv_in.b), N,
                           c->in_channels, H, W, ch0, 3, 1, 1);
    }
    /* time embedding: base weights (no adapter lives there) and, for SDXL, the
     * gradient of the pooled text embedding through add_embedding */
    if (want_temb) {
        int64_t nt = (int64_t)N * T;
        int Pin = u->has_add ? c->projection_class_embeddings_input_dim : 0;
        float *dte = takez(u, &u->tmp, nt);
        float *d1 = takez(u, &u->tmp, nt);
        float *d2 = takez(u, &u->tmp, nt);
        float *a1s = take(u, &u->tmp, nt);
        float *dain = u->dadded && u->has_add ? takez(u, &u->tmp, (int64_t)N * Pin) : NULL;
        if (!u->plan) {
            be->silu_bwd(be, u->dtembs, u->temb, dte, nt);
            if (u->trainable) {
                be->silu_fwd(be, u->te1, a1s, nt);
                be->linear_bwd(be, dte, a1s, P(u->t2.w), d1, G(u->t2.w), G(u->t2.b), N, T, T);
                be->silu_bwd(be, d1, u->te1, d2, nt);
                be->linear_bwd(be, d2, u->tproj, P(u->t1.w), NULL, G(u->t1.w), G(u->t1.b), N, ch0, T);
            }
            if (u->has_add) {
                int Pp = Pin - 6 * c->addition_time_embed_dim;
                be->zero(be, d1, (size_t)nt * sizeof(float));
                be->zero(be, d2, (size_t)nt * sizeof(float));
                be->silu_fwd(be, u->ae1, a1s, nt);
                be->linear_bwd(be, dte, a1s, P(u->e2.w), d1, G(u->e2.w), G(u->e2.b), N, T, T);
                be->silu_bwd(be, d1, u->ae1, d2, nt);
                be->linear_bwd(be, d2, u->addin, P(u->e1.w), dain, G(u->e1.w), G(u->e1.b), N, Pin, T);
                /* addin = [pooled | embedded time ids]: the pooled columns go out */
                for (int n = 0; dain && n < N; n++)
                    be->axpy(be, 1.0f, dain + (int64_t)n * Pin, u->dadded + (int64_t)n * (Pp + 6), Pp);
            }
        }
    }
}

int unet_backward(UNet *u, const float *dout, float *dx) {
    return unet_backward_cond(u, dout, dx, NULL, NULL);
}

int unet_backward_ctx(UNet *u, const float *dout, float *dx, float *dctx) {
    return unet_backward_cond(u, dout, dx, dctx, NULL);
}

int unet_backward_cond(UNet *u, const float *dout, float *dx, float *dctx, float *dadded) {
    u->err[0] = 0;
    u->dctx = dctx;
    u->dadded = dadded;
    if (!u->have_fwd) {
        snprintf(u->err, sizeof u->err, "backward needs a forward with for_backward=1 first "
                 "(and no adapter change in between)");
        return -1;
    }
    u->plan = 1;
    u->tmp.peak = u->grd.peak = u->rec.peak = 0;
    backward_pass(u, dout, dx);
    u->grd.peak += 2 * ((u->slot_n + 15) & ~(int64_t)15);
    u->plan = 0;
    if (arena_fit(u->be, &u->tmp) || arena_fit(u->be, &u->grd) || arena_fit(u->be, &u->rec)) {
        snprintf(u->err, sizeof u->err, "out of %s memory for backward buffers (%.2f GB)",
                 u->be->name, (double)(u->tmp.peak + u->grd.peak + u->rec.peak) * 4 / 1e9);
        return -1;
    }
    u->overflow = 0;
    backward_pass(u, dout, dx);
    u->dctx = NULL;
    u->dadded = NULL;
    if (u->overflow) { snprintf(u->err, sizeof u->err, "internal: backward plan overflow"); return -1; }
    return 0;
}

const char *unet_last_error(const UNet *u) { return u->err;
}

/* ------------------------------------------------------------------ planning only */

int unet_memory_plan(const UNetConfig *cfg, int N, int H, int W, int L, int for_backward,
                     int trainable, int checkpointing, int64_t *act_bytes, int64_t *tmp_bytes,
                     int64_t *grad_bytes) {
    char err[256];
    if (cfg_valid(cfg, err, sizeof err)) return -1;
    int f = 1 << (cfg->n_levels - 1);
    if (N < 1 || H < 1 || W < 1 || L < 1 || H % f || W % f) return -1;
    UNet *u = calloc(1, sizeof *u);
    if (!u) return -1;
    u->cfg = *cfg;
    Builder b = {0};
    int rc = build(u, &b);
    u->params = b.p; u->n_params = b.n; u->linears = b.lin; u->linp = b.linp; u->n_linears = b.nl;
    if (!rc) {
        /* the passes below only count: no op runs, no weight is read */
        if (trainable) {
            static float dummy;
            for (int i = 0; i < u->n_params; i++) u->params[i].grad = &dummy;
        }
        u->trainable = trainable;
        u->plan = 1; u->keep = for_backward;
        u->ckpt = checkpointing;
        u->inner = for_backward && !checkpointing;
        u->fN = N; u->fH = H; u->fW = W; u->fL = L;
        forward_pass(u, NULL, NULL, NULL, NULL, NULL);
        int64_t tmp_peak = u->tmp.peak;
        u->tmp.peak = 0;
        if (for_backward) {
            backward_pass(u, NULL, NULL);
            u->grd.peak += 2 * ((u->slot_n + 15) & ~(int64_t)15);
        }
        if (u->tmp.peak < tmp_peak) u->tmp.peak = tmp_peak;
        if (act_bytes) *act_bytes = u->act.peak * 4;
        if (tmp_bytes) *tmp_bytes = (u->tmp.peak + u->rec.peak) * 4;
        if (grad_bytes) *grad_bytes = u->grd.peak * 4;
    }
    free_modules(u);
    free(u->params); free(u->linears); free(u->linp);
    free(u);
    return rc ? -1 : 0;
}

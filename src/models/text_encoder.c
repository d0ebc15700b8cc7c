/* text_encoder.c — CLIP text transformer on the Backend op table. */
#include "models/text_encoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "models/adapter.h"
#include "formats/json.h"
#include "core/rng.h"
#include "formats/safetensors.h"


/* ---------------- config ---------------- */

int te_config_builtin(TextConfig *cfg, const char *name, char *err, size_t errlen)
{
    if (name && strcmp(name, "tiny-text") == 0) {
        *cfg = (TextConfig){
            .vocab_size = 258, .hidden_size = 64, .intermediate_size = 256,
            .num_hidden_layers = 2, .num_attention_heads = 4, .max_position_embeddings = 77,
            .hidden_act = TE_ACT_GELU, .layer_norm_eps = 1e-5f, .projection_dim = 0,
            .eos_token_id = 257,
        };
        return 0;
    }
    /* the text towers of SD 1.5 / SDXL (their diffusers text_encoder and text_encoder_2 config.json);
     * eos_token_id 2 as those legacy configs say: the pooled position is the argmax id */
    if (name && strcmp(name, "clip-vit-l") == 0) {
        *cfg = (TextConfig){
            .vocab_size = 49408, .hidden_size = 768, .intermediate_size = 3072,
            .num_hidden_layers = 12, .num_attention_heads = 12, .max_position_embeddings = 77,
            .hidden_act = TE_ACT_QUICK_GELU, .layer_norm_eps = 1e-5f, .projection_dim = 0,
            .eos_token_id = 2,
        };
        return 0;
    }
    if (name && strcmp(name, "openclip-vit-bigg") == 0) {
        *cfg = (TextConfig){
            .vocab_size = 49408, .hidden_size = 1280, .intermediate_size = 5120,
            .num_hidden_layers = 32, .num_attention_heads = 20, .max_position_embeddings = 77,
            .hidden_act = TE_ACT_GELU, .layer_norm_eps = 1e-5f, .projection_dim = 1280,
            .eos_token_id = 2,
        };
        return 0;
    }
    err_set(err, errlen, "unknown built-in text encoder '%s' — known: tiny-text, clip-vit-l, openclip-vit-bigg",
            name ? name : "(null)");
    return -1;
}

static int check_config(const TextConfig *c, const char *what, char *err, size_t errlen)
{
    const char *bad = NULL;
    if (c->vocab_size <= 0) bad = "vocab_size";
    else if (c->hidden_size <= 0) bad = "hidden_size";
    else if (c->intermediate_size <= 0) bad = "intermediate_size";
    else if (c->num_hidden_layers <= 0) bad = "num_hidden_layers";
    else if (c->num_attention_heads <= 0) bad = "num_attention_heads";
    else if (c->max_position_embeddings <= 0) bad = "max_position_embeddings";
    else if (c->projection_dim < 0) bad = "projection_dim";
    else if (!(c->layer_norm_eps > 0)) bad = "layer_norm_eps";
    if (bad) { err_set(err, errlen, "%s: %s must be positive", what, bad); return -1; }
    if (c->hidden_size % c->num_attention_heads) {
        err_set(err, errlen, "%s: hidden_size %d is not a multiple of num_attention_heads %d",
               what, c->hidden_size, c->num_attention_heads);
        return -1;
    }
    if (c->hidden_act != TE_ACT_GELU && c->hidden_act != TE_ACT_QUICK_GELU) {
        err_set(err, errlen, "%s: hidden_act must be quick_gelu or gelu", what);
        return -1;
    }
    return 0;
}

static int get_int(const JsonValue *root, const char *key, int *out, const char *what,
                   char *err, size_t errlen)
{
    const JsonValue *v = json_get(root, key);
    if (!v || v->type == JSON_NULL) return 0; /* keep the default */
    if (v->type != JSON_NUMBER || v->number != floor(v->number) || fabs(v->number) > 1e9) {
        err_set(err, errlen, "%s: \"%s\" must be an integer", what, key);
        return -1;
    }
    *out = (int)v->number;
    return 0;
}

int te_config_parse(TextConfig *cfg, const char *json_text, size_t len, const char *what,
                    char *err, size_t errlen)
{
    char jerr[256];
    if (!what) what = "text encoder config";
    JsonValue *root = json_parse(json_text, len, jerr, sizeof jerr);
    if (!root) { err_set(err, errlen, "%s: %s", what, jerr); return -1; }
    if (root->type != JSON_OBJECT) {
        err_set(err, errlen, "%s: expected a JSON object", what);
        json_free(root);
        return -1;
    }
    /* CLIPTextConfig's defaults */
    TextConfig c = {
        .vocab_size = 49408, .hidden_size = 512, .intermediate_size = 2048,
        .num_hidden_layers = 12, .num_attention_heads = 8, .max_position_embeddings = 77,
        .hidden_act = TE_ACT_QUICK_GELU, .layer_norm_eps = 1e-5f, .projection_dim = 512,
        .eos_token_id = 2,
    };
    int rc = 0;
    rc |= get_int(root, "vocab_size", &c.vocab_size, what, err, errlen);
    rc |= get_int(root, "hidden_size", &c.hidden_size, what, err, errlen);
    rc |= get_int(root, "intermediate_size", &c.intermediate_size, what, err, errlen);
    rc |= get_int(root, "num_hidden_layers", &c.num_hidden_layers, what, err, errlen);
    rc |= get_int(root, "num_attention_heads", &c.num_attention_heads, what, err, errlen);
    rc |= get_int(root, "max_position_embeddings", &c.max_position_embeddings, what, err, errlen);
    rc |= get_int(root, "projection_dim", &c.projection_dim, what, err, errlen);
    rc |= get_int(root, "eos_token_id", &c.eos_token_id, what, err, errlen);
    const JsonValue *v = json_get(root, "layer_norm_eps");
    if (rc == 0 && v && v->type == JSON_NUMBER) c.layer_norm_eps = (float)v->number;
    v = json_get(root, "hidden_act");
    if (rc == 0 && v) {
        if (v->type == JSON_STRING && strcmp(v->string, "quick_gelu") == 0) c.hidden_act = TE_ACT_QUICK_GELU;
        else if (v->type == JSON_STRING && strcmp(v->string, "gelu") == 0) c.hidden_act = TE_ACT_GELU;
        else {
            err_set(err, errlen, "%s: hidden_act \"%s\" is not supported — quick_gelu or gelu",
                   what, v->type == JSON_STRING ? v->string : "?");
            rc = -1;
        }
    }
    /* HF builds text_projection only for CLIPTextModelWithProjection. */
    int with_proj = 0;
    v = json_get(root, "architectures");
    if (v && v->type == JSON_ARRAY)
        for (int i = 0; i < v->n; i++)
            if (v->items[i].type == JSON_STRING && strcmp(v->items[i].string, "CLIPTextModelWithProjection") == 0)
                with_proj = 1;
    if (!with_proj) c.projection_dim = 0;
    /* eos_token_id 2 is HF's legacy marker for "pool at argmax(ids)". */
    if (c.eos_token_id == 2) c.eos_token_id = -1;
    json_free(root);
    if (rc == 0) rc = check_config(&c, what, err, errlen);
    if (rc == 0) *cfg = c;
    return rc;
}

int te_config_load(TextConfig *cfg, const char *path, char *err, size_t errlen)
{
    size_t n;
    char *text = fs_read_all(path, FS_TEXT_MAX, &n, err, errlen);
    if (!text) return -1;
    int rc = te_config_parse(cfg, text, n, path, err, errlen);
    free(text);
    return rc;
}

/* ---------------- parameters ---------------- */

typedef struct {
    float *ln1_w, *ln1_b;
    float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    float *ln2_w, *ln2_b;
    float *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} TextLayer;

typedef struct {
    char name[96];
    float **slot;
    int ndim;
    int64_t shape[2];
    int init; /* 0 zeros, 1 ones, 2 normal(0.02) */
} ParamSpec;

struct TextEncoder {
    TextConfig cfg;
    Backend *be;
    float *params;  /* one device block for everything */
    int64_t n_params;
    ParamSpec *specs;
    int n_specs;
    float *tok_emb, *pos_emb;
    TextLayer *layers;
    float *final_w, *final_b;
    float *proj_w;  /* NULL without projection */
    /* training: a gradient block shaped like params, and the activations of
     * the last forward (te_forward keeps them while trainable) */
    float *grads;
    float *acts;
    size_t acts_floats;
    int32_t *act_ids;
    int64_t act_ids_cap;
    int act_N, act_L, have_fwd;
    int *eos_pos;     /* [act_N] host: the pooled row of each prompt in the kept forward */
    int eos_cap;
    int pooled_kept;  /* the kept forward computed pooled_out (its rows are in acts) */
    int train_mode;   /* TE_TRAIN_* */
    /* adapters on the attention projections: ads.items[4 l + {0 q, 1 k, 2 v, 3 out}] */
    AdapterSet ads;
};

static void add_spec(TextEncoder *te, const char *name, float **slot, int ndim, int64_t d0,
                     int64_t d1, int init)
{
    ParamSpec *s = &te->specs[te->n_specs++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->slot = slot;
    s->ndim = ndim;
    s->shape[0] = d0;
    s->shape[1] = ndim > 1 ? d1 : 1;
    s->init = init;
}

static int64_t spec_numel(const ParamSpec *s) { return s->shape[0] * s->shape[1]; }

TextEncoder *te_create(const TextConfig *cfg, Backend *be, char *err, size_t errlen)
{
    if (check_config(cfg, "text encoder config", err, errlen) != 0) return NULL;
    TextEncoder *te = calloc(1, sizeof *te);
    if (!te) { err_set(err, errlen, "out of memory creating the text encoder"); return NULL; }
    te->cfg = *cfg;
    te->be = be;
    int nl = cfg->num_hidden_layers, H = cfg->hidden_size, I = cfg->intermediate_size;
    te->layers = calloc((size_t)nl, sizeof *te->layers);
    te->specs = calloc((size_t)(nl * 16 + 5), sizeof *te->specs);
    if (!te->layers || !te->specs) { err_set(err, errlen, "out of memory creating the text encoder"); te_free(te); return NULL; }

    add_spec(te, "text_model.embeddings.token_embedding.weight", &te->tok_emb, 2, cfg->vocab_size, H, 2);
    add_spec(te, "text_model.embeddings.position_embedding.weight", &te->pos_emb, 2, cfg->max_position_embeddings, H, 2);
    for (int l = 0; l < nl; l++) {
        TextLayer *L = &te->layers[l];
        char n[96];
#define P(field, suffix, ndim, d0, d1, init) \
        snprintf(n, sizeof n, "text_model.encoder.layers.%d.%s", l, suffix); \
        add_spec(te, n, &L->field, ndim, d0, d1, init)
        P(ln1_w, "layer_norm1.weight", 1, H, 0, 1);
        P(ln1_b, "layer_norm1.bias", 1, H, 0, 0);
        P(q_w, "self_attn.q_proj.weight", 2, H, H, 2);
        P(q_b, "self_attn.q_proj.bias", 1, H, 0, 0);
        P(k_w, "self_attn.k_proj.weight", 2, H, H, 2);
        P(k_b, "self_attn.k_proj.bias", 1, H, 0, 0);
        P(v_w, "self_attn.v_proj.weight", 2, H, H, 2);
        P(v_b, "self_attn.v_proj.bias", 1, H, 0, 0);
        P(o_w, "self_attn.out_proj.weight", 2, H, H, 2);
        P(o_b, "self_attn.out_proj.bias", 1, H, 0, 0);
        P(ln2_w, "layer_norm2.weight", 1, H, 0, 1);
        P(ln2_b, "layer_norm2.bias", 1, H, 0, 0);
        P(fc1_w, "mlp.fc1.weight", 2, I, H, 2);
        P(fc1_b, "mlp.fc1.bias", 1, I, 0, 0);
        P(fc2_w, "mlp.fc2.weight", 2, H, I, 2);
        P(fc2_b, "mlp.fc2.bias", 1, H, 0, 0);
#undef P
    }
    add_spec(te, "text_model.final_layer_norm.weight", &te->final_w, 1, H, 0, 1);
    add_spec(te, "text_model.final_layer_norm.bias", &te->final_b, 1, H, 0, 0);
    if (cfg->projection_dim > 0)
        add_spec(te, "text_projection.weight", &te->proj_w, 2, cfg->projection_dim, H, 2);

    int64_t total = 0;
    for (int i = 0; i < te->n_specs; i++) total += spec_numel(&te->specs[i]);
    te->n_params = total;
    te->params = be->alloc(be, (size_t)total * sizeof(float));
    if (!te->params) {
        err_set(err, errlen, "out of memory: the text encoder needs %.1f MiB for %lld parameters on %s",
               (double)total * 4 / (1 << 20), (long long)total, be->name);
        te_free(te);
        return NULL;
    }
    int64_t off = 0;
    for (int i = 0; i < te->n_specs; i++) {
        *te->specs[i].slot = te->params + off;
        off += spec_numel(&te->specs[i]);
    }
    return te;
}

void te_free(TextEncoder *te)
{
    if (!te) return;
    if (te->params) te->be->free(te->be, te->params);
    te_set_trainable(te, 0, NULL, 0);
    adapter_set_free(&te->ads);
    free(te->eos_pos);
    free(te->layers);
    free(te->specs);
    free(te);
}

void te_release_weights(TextEncoder *te)
{
    if (!te || !te->params) return;
    te_set_trainable(te, 0, NULL, 0);
    te->be->free(te->be, te->params);
    te->params = NULL;
}

const TextConfig *te_config(const TextEncoder *te) { return &te->cfg; }
int64_t te_n_params(const TextEncoder *te) { return te->n_params; }
int te_pooled_dim(const TextEncoder *te)
{
    return te->cfg.projection_dim > 0 ? te->cfg.projection_dim : te->cfg.hidden_size;
}

void te_init_random(TextEncoder *te, uint64_t seed)
{
    Rng r;
    rng_seed(&r, seed);
    float *host = malloc((size_t)te->n_params * sizeof *host);
    if (!host) { /* fall back to one spec at a time */
        for (int i = 0; i < te->n_specs; i++) {
            const ParamSpec *s = &te->specs[i];
            int64_t n = spec_numel(s);
            float *h = malloc((size_t)n * sizeof *h);
            if (!h) return;
            for (int64_t j = 0; j < n; j++) h[j] = s->init == 1 ? 1.0f : 0.0f;
            if (s->init == 2) { rng_fill_normal(&r, h, n); for (int64_t j = 0; j < n; j++) h[j] *= 0.02f; }
            te->be->upload(te->be, *s->slot, h, (size_t)n * sizeof *h);
            free(h);
        }
        return;
    }
    int64_t off = 0;
    for (int i = 0; i < te->n_specs; i++) {
        const ParamSpec *s = &te->specs[i];
        int64_t n = spec_numel(s);
        float *h = host + off;
        if (s->init == 2) {
            rng_fill_normal(&r, h, n);
            for (int64_t j = 0; j < n; j++) h[j] *= 0.02f;
        } else {
            for (int64_t j = 0; j < n; j++) h[j] = s->init == 1 ? 1.0f : 0.0f;
        }
        off += n;
    }
    te->be->upload(te->be, te->params, host, (size_t)te->n_params * sizeof *host);
    free(host);
}

int te_load_safetensors(TextEncoder *te, const char *path, const char *prefix, char *err,
                        size_t errlen)
{
    if (!prefix) prefix = "";
    SafeTensors *st = st_open(path, err, errlen);
    if (!st) return -1;
    int rc = 0;
    float *host = NULL;
    size_t host_cap = 0;
    for (int i = 0; i < te->n_specs && rc == 0; i++) {
        const ParamSpec *s = &te->specs[i];
        char name[256];
        snprintf(name, sizeof name, "%s%s", prefix, s->name);
        const StTensor *t = st_find(st, name);
        if (!t) {
            err_set(err, errlen, "%s: no tensor '%s' — not a CLIP text encoder in HF naming, or the "
                   "prefix '%s' is wrong%s", path, name, prefix,
                   strcmp(s->name, "text_projection.weight") == 0
                       ? " (or the config has a projection the weights lack)" : "");
            rc = -1;
            break;
        }
        int ok = t->ndim == s->ndim && t->shape[0] == s->shape[0] && (s->ndim == 1 || t->shape[1] == s->shape[1]);
        if (!ok) {
            char got[128] = "";
            size_t k = 0;
            for (int d = 0; d < t->ndim && k < sizeof got - 24; d++)
                k += (size_t)snprintf(got + k, sizeof got - k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
            if (s->ndim == 1)
                err_set(err, errlen, "%s: '%s' has shape [%s] but the config wants [%lld] — the config does not match these weights",
                       path, name, got, (long long)s->shape[0]);
            else
                err_set(err, errlen, "%s: '%s' has shape [%s] but the config wants [%lld, %lld] — the config does not match these weights",
                       path, name, got, (long long)s->shape[0], (long long)s->shape[1]);
            rc = -1;
            break;
        }
        size_t need = (size_t)t->numel * sizeof(float);
        if (need > host_cap) {
            float *nh = realloc(host, need);
            if (!nh) { err_set(err, errlen, "%s: out of memory reading '%s'", path, name); rc = -1; break; }
            host = nh;
            host_cap = need;
        }
        if (st_load_f32(t, host, path, err, errlen) != 0) {
            rc = -1;
            break;
        }
        te->be->upload(te->be, *s->slot, host, need);
    }
    free(host);
    st_close(st);
    return rc;
}

/* ---------------- forward ---------------- */

int te_eos_position(const TextConfig *cfg, const int32_t *ids, int L)
{
    if (cfg->eos_token_id >= 0)
        for (int i = 0; i < L; i++)
            if (ids[i] == cfg->eos_token_id) return i;
    int best = 0;
    for (int i = 1; i < L; i++)
        if (ids[i] > ids[best]) best = i;
    return best;
}

/* Activations of one layer (the residual stream entering it, its norms, q k v,
 * attention output and MLP); one slot per layer while training, a single
 * reused slot otherwise. */
typedef struct {
    float *xin, *h1, *q, *k, *v, *o, *xmid, *h2, *f1, *f2, *mean1, *rstd1, *mean2, *rstd2, *lse;
} TextActs;

static size_t slot_floats(const TextConfig *c, int N, int L)
{
    size_t M = (size_t)N * L;
    return M * c->hidden_size * 8 + M * c->intermediate_size * 2 + M * 4 +
           (size_t)N * c->num_attention_heads * L;
}

/* final part after the slots: x before the final norm, its mean/rstd, pooled rows */
static size_t final_floats(const TextConfig *c, int N, int L)
{
    size_t M = (size_t)N * L;
    return M * c->hidden_size + M * 2 + (size_t)N * c->hidden_size;
}

static TextActs slot_at(const TextConfig *c, float *base, int N, int L)
{
    int64_t M = (int64_t)N * L, H = c->hidden_size, I = c->intermediate_size;
    TextActs a;
    a.xin = base; a.h1 = a.xin + M * H; a.q = a.h1 + M * H; a.k = a.q + M * H; a.v = a.k + M * H;
    a.o = a.v + M * H; a.xmid = a.o + M * H; a.h2 = a.xmid + M * H; a.f1 = a.h2 + M * H;
    a.f2 = a.f1 + M * I; a.mean1 = a.f2 + M * I; a.rstd1 = a.mean1 + M; a.mean2 = a.rstd1 + M;
    a.rstd2 = a.mean2 + M; a.lse = a.rstd2 + M;
    return a;
}

int te_forward(TextEncoder *te, const int32_t *ids_host, int N, int L, float *hidden_out,
               float *penultimate_out, float *pooled_out, char *err, size_t errlen)
{
    const TextConfig *c = &te->cfg;
    Backend *be = te->be;
    if (N <= 0 || L <= 0) { err_set(err, errlen, "text encoder: empty batch (N=%d, L=%d)", N, L); return -1; }
    if (!te->params) {
        err_set(err, errlen, "text encoder: its weights were released after the run's prompts were encoded");
        return -1;
    }
    /* frozen unless the whole encoder trains (backend.h: a bf16 copy may serve its GEMMs) */
    be->set_frozen(be, te->params, te->train_mode == TE_TRAIN_FULL ? 0 : te->n_params, 0);
    if (L > c->max_position_embeddings) {
        err_set(err, errlen, "text encoder: %d tokens per prompt but the model has %d positions — use a context of at most %d",
               L, c->max_position_embeddings, c->max_position_embeddings);
        return -1;
    }
    for (int64_t i = 0; i < (int64_t)N * L; i++) {
        if (ids_host[i] < 0 || ids_host[i] >= c->vocab_size) {
            err_set(err, errlen, "text encoder: token id %d (prompt %lld, position %lld) is outside the vocabulary of %d — tokenizer and text encoder do not match",
                   ids_host[i], (long long)(i / L), (long long)(i % L), c->vocab_size);
            return -1;
        }
    }
    const int H = c->hidden_size, I = c->intermediate_size, nh = c->num_attention_heads;
    const int D = H / nh, nl = c->num_hidden_layers;
    const int64_t M = (int64_t)N * L;
    const float eps = c->layer_norm_eps;
    const int keep = te->train_mode != TE_TRAIN_OFF;
    const int nslots = keep ? nl : 1;
    size_t per = slot_floats(c, N, L), fl = per * (size_t)nslots + final_floats(c, N, L);

    float *ws;
    int32_t *ids;
    if (keep) { /* kept until the next forward; reallocated only when the shape grows */
        te->have_fwd = 0;
        if (fl > te->acts_floats || M > te->act_ids_cap) {
            if (te->acts) be->free(be, te->acts);
            if (te->act_ids) be->free(be, te->act_ids);
            te->acts = be->alloc(be, fl * sizeof(float));
            te->act_ids = be->alloc(be, (size_t)M * sizeof(int32_t));
            te->acts_floats = te->acts ? fl : 0;
            te->act_ids_cap = te->act_ids ? M : 0;
        }
        ws = te->acts;
        ids = te->act_ids;
    } else {
        ws = be->alloc(be, fl * sizeof(float));
        ids = be->alloc(be, (size_t)M * sizeof(int32_t));
    }
    float *hid_tmp = hidden_out ? NULL : be->alloc(be, (size_t)M * H * sizeof(float));
    int64_t scr_n = 0;
    for (int i = 0; i < te->ads.n; i++) {
        int64_t k = adapter_scratch_floats(&te->ads.items[i], M);
        if (k > scr_n) scr_n = k;
    }
    float *scr = scr_n ? be->alloc(be, (size_t)scr_n * sizeof(float)) : NULL;
    if (!ws || !ids || (!hidden_out && !hid_tmp) || (scr_n && !scr)) {
        if (!keep && ws) be->free(be, ws);
        if (!keep && ids) be->free(be, ids);
        if (hid_tmp) be->free(be, hid_tmp);
        if (scr) be->free(be, scr);
        err_set(err, errlen, "text encoder: out of memory for a batch of %d x %d tokens", N, L);
        return -1;
    }
    float *xfin = ws + per * (size_t)nslots, *fmean = xfin + M * H, *frstd = fmean + M;
    float *pool = frstd + M;
    float *hidden = hidden_out ? hidden_out : hid_tmp;
    be->upload(be, ids, ids_host, (size_t)M * sizeof(int32_t));

    TextActs a0 = slot_at(c, ws, N, L);
    be->embedding_fwd(be, te->tok_emb, ids, a0.xin, M, H);
    for (int n = 0; n < N; n++) be->add(be, a0.xin + (int64_t)n * L * H, te->pos_emb, a0.xin + (int64_t)n * L * H, (int64_t)L * H);

    const float scale = 1.0f / sqrtf((float)D);
    for (int l = 0; l < nl; l++) {
        const TextLayer *w = &te->layers[l];
        TextActs a = slot_at(c, ws + per * (size_t)(keep ? l : 0), N, L);
        /* where this layer's output goes: the next slot's input, the final x, or
         * (one reused slot) back over its own input */
        float *xout = l == nl - 1 ? xfin : keep ? slot_at(c, ws + per * (size_t)(l + 1), N, L).xin : a.xin;
        /* hidden_states[-2] is what enters the last layer */
        if (penultimate_out && l == nl - 1) be->copy(be, penultimate_out, a.xin, (size_t)M * H * sizeof(float));
        be->layer_norm_fwd(be, a.xin, w->ln1_w, w->ln1_b, a.h1, a.mean1, a.rstd1, M, H, eps);
        const Adapter *ad = te->ads.n && !te->ads.bypass ? &te->ads.items[4 * l] : NULL;
        be->linear_fwd(be, a.h1, w->q_w, w->q_b, a.q, M, H, H);
        be->linear_fwd(be, a.h1, w->k_w, w->k_b, a.k, M, H, H);
        be->linear_fwd(be, a.h1, w->v_w, w->v_b, a.v, M, H, H);
        if (ad) {
            adapter_fwd(be, &ad[0], a.h1, a.q, M, scr);
            adapter_fwd(be, &ad[1], a.h1, a.k, M, scr);
            adapter_fwd(be, &ad[2], a.h1, a.v, M, scr);
        }
        be->attention_fwd(be, a.q, a.k, a.v, a.o, a.lse, N, L, L, nh, D, scale, 1);
        be->linear_fwd(be, a.o, w->o_w, w->o_b, a.xmid, M, H, H);
        if (ad) adapter_fwd(be, &ad[3], a.o, a.xmid, M, scr);
        be->add(be, a.xin, a.xmid, a.xmid, M * H);
        be->layer_norm_fwd(be, a.xmid, w->ln2_w, w->ln2_b, a.h2, a.mean2, a.rstd2, M, H, eps);
        be->linear_fwd(be, a.h2, w->fc1_w, w->fc1_b, a.f1, M, H, I);
        if (c->hidden_act == TE_ACT_QUICK_GELU) be->quick_gelu_fwd(be, a.f1, a.f2, M * I);
        else be->gelu_fwd(be, a.f1, a.f2, M * I);
        be->linear_fwd(be, a.f2, w->fc2_w, w->fc2_b, xout, M, I, H);
        be->add(be, a.xmid, xout, xout, M * H);
    }
    be->layer_norm_fwd(be, xfin, te->final_w, te->final_b, hidden, fmean, frstd, M, H, eps);

    if (pooled_out) {
        for (int n = 0; n < N; n++) {
            int p = te_eos_position(c, ids_host + (int64_t)n * L, L);
            be->copy(be, pool + (int64_t)n * H, hidden + ((int64_t)n * L + p) * H, (size_t)H * sizeof(float));
        }
        if (te->proj_w) be->linear_fwd(be, pool, te->proj_w, NULL, pooled_out, N, H, c->projection_dim);
        else be->copy(be, pooled_out, pool, (size_t)N * H * sizeof(float));
    }
    if (keep) {
        if (N > te->eos_cap) {
            int *e = realloc(te->eos_pos, (size_t)N * sizeof *e);
            if (!e) {
                err_set(err, errlen, "text encoder: out of host memory");
                if (hid_tmp) be->free(be, hid_tmp);
                if (scr) be->free(be, scr);
                return -1;
            }
            te->eos_pos = e;
            te->eos_cap = N;
        }
        for (int n = 0; n < N; n++) te->eos_pos[n] = te_eos_position(c, ids_host + (int64_t)n * L, L);
        te->have_fwd = 1;
        te->pooled_kept = pooled_out != NULL;
        te->act_N = N;
        te->act_L = L;
    } else {
        be->free(be, ws);
        be->free(be, ids);
    }
    if (hid_tmp) be->free(be, hid_tmp);
    if (scr) be->free(be, scr);
    return 0;
}

/* ---------------- training ---------------- */

int te_set_trainable(TextEncoder *te, int trainable, char *err, size_t errlen)
{
    Backend *be = te->be;
    if (trainable == TE_TRAIN_ADAPTERS) { /* activations only: no base gradients */
        if (te->grads) be->free(be, te->grads);
        te->grads = NULL;
        te->train_mode = TE_TRAIN_ADAPTERS;
        te->have_fwd = 0;
        return 0;
    }
    if (trainable) {
        te->train_mode = TE_TRAIN_FULL;
        be->set_frozen(be, te->params, 0, 0); /* AdamW will write them */
        if (te->grads) return 0;
        te->grads = be->alloc(be, (size_t)te->n_params * sizeof(float));
        if (!te->grads) {
            err_set(err, errlen, "out of memory: text encoder gradients need %.1f MiB on %s",
                   (double)te->n_params * 4 / (1 << 20), be->name);
            te->train_mode = TE_TRAIN_OFF;
            return -1;
        }
        return 0;
    }
    if (te->grads) be->free(be, te->grads);
    if (te->acts) be->free(be, te->acts);
    if (te->act_ids) be->free(be, te->act_ids);
    te->grads = te->acts = NULL;
    te->act_ids = NULL;
    te->acts_floats = 0;
    te->act_ids_cap = 0;
    te->act_N = te->act_L = te->have_fwd = 0;
    te->train_mode = TE_TRAIN_OFF;
    return 0;
}

int te_trainable(const TextEncoder *te) { return te->train_mode; }
float *te_params(TextEncoder *te) { return te->params; }
Backend *te_backend(const TextEncoder *te) { return te->be; }
float *te_grads(TextEncoder *te) { return te->grads; }
int te_n_tensors(const TextEncoder *te) { return te->n_specs; }

void te_zero_grad(TextEncoder *te)
{
    if (te->grads) te->be->zero(te->be, te->grads, (size_t)te->n_params * sizeof(float));
    adapter_set_zero_grad(&te->ads);
}

static const char *const te_proj_names[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};

void te_adapter_name(int i, char *out, size_t n)
{
    snprintf(out, n, "text_model.encoder.layers.%d.self_attn.%s", i / 4, te_proj_names[i % 4]);
}

int te_adapter_set_init(AdapterSet *set, const TextConfig *cfg, Backend *be, const AdapterSpec *spec,
                        uint64_t seed, char *err, size_t errlen)
{
    memset(set, 0, sizeof *set);
    set->be = be;
    const int n = cfg->num_hidden_layers * 4, H = cfg->hidden_size;
    set->items = calloc((size_t)(n ? n : 1), sizeof *set->items);
    if (!set->items) { err_set(err, errlen, "out of memory attaching text encoder adapters"); return -1; }
    set->spec = *spec;
    set->spec.merged = ADAPTER_FACTORED; /* the text encoder runs unmerged */
    Rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        char name[96];
        te_adapter_name(i, name, sizeof name);
        if (adapter_init(&set->items[set->n], be, spec, name, H, H, rng_u64(&r), err, errlen)) {
            adapter_set_free(set);
            set->be = be;
            return -1;
        }
        set->n++;
    }
    if (adapter_set_pack(set, err, errlen)) { /* one block: one zero, one AdamW per step */
        adapter_set_free(set);
        set->be = be;
        return -1;
    }
    return 0;
}

int te_attach_adapters(TextEncoder *te, const AdapterSpec *spec, uint64_t seed, char *err, size_t errlen)
{
    adapter_set_free(&te->ads);
    te->have_fwd = 0; /* saved activations belong to the old adapters */
    te->ads.be = te->be;
    if (!spec || spec->kind == ADAPTER_NONE) return 0;
    return te_adapter_set_init(&te->ads, &te->cfg, te->be, spec, seed, err, errlen);
}

AdapterSet *te_adapters(TextEncoder *te) { return &te->ads; }

const char *te_tensor_info(const TextEncoder *te, int i, int *ndim, int64_t shape[2], int64_t *offset)
{
    if (i < 0 || i >= te->n_specs) return NULL;
    const ParamSpec *s = &te->specs[i];
    if (ndim) *ndim = s->ndim;
    if (shape) { shape[0] = s->shape[0]; shape[1] = s->shape[1]; }
    if (offset) *offset = *s->slot - te->params;
    return s->name;
}

/* the gradient of the parameter at p (same offset in the gradient block) */
static float *gof(const TextEncoder *te, const float *p) { return te->grads ? te->grads + (p - te->params) : NULL; }

int te_backward(TextEncoder *te, const float *d_hidden_out, char *err, size_t errlen)
{
    return te_backward_states(te, d_hidden_out, NULL, err, errlen);
}

int te_backward_states(TextEncoder *te, const float *d_hidden_out, const float *d_penultimate_out,
                       char *err, size_t errlen)
{
    return te_backward_all(te, d_hidden_out, d_penultimate_out, NULL, err, errlen);
}

int te_backward_all(TextEncoder *te, const float *d_hidden_out, const float *d_penultimate_out,
                    const float *d_pooled_out, char *err, size_t errlen)
{
    const TextConfig *c = &te->cfg;
    Backend *be = te->be;
    if (te->train_mode == TE_TRAIN_OFF) { err_set(err, errlen, "text encoder backward: call te_set_trainable(te, 1) before the forward"); return -1; }
    if (!te->have_fwd) { err_set(err, errlen, "text encoder backward: no forward to differentiate (run te_forward while trainable)"); return -1; }
    if (c->hidden_act == TE_ACT_QUICK_GELU && !be->quick_gelu_bwd) {
        err_set(err, errlen, "text encoder backward: backend %s has no quick_gelu backward", be->name);
        return -1;
    }
    if (te->grads && !be->embedding_bwd) { err_set(err, errlen, "text encoder backward: backend %s has no embedding_bwd", be->name); return -1; }
    const int N = te->act_N, L = te->act_L;
    const int H = c->hidden_size, I = c->intermediate_size, nh = c->num_attention_heads;
    const int D = H / nh, nl = c->num_hidden_layers;
    const int64_t M = (int64_t)N * L;
    const size_t per = slot_floats(c, N, L);
    float *xfin = te->acts + per * (size_t)nl, *fmean = xfin + M * H, *frstd = fmean + M;

    /* dx, dmid, dh, dq, dk, dv, do [M,H]; df, df1 [M,I] */
    int64_t scr_n = 0;
    for (int i = 0; i < te->ads.n; i++) {
        int64_t k = adapter_scratch_floats(&te->ads.items[i], M);
        if (k > scr_n) scr_n = k;
    }
    float *ws = be->alloc(be, ((size_t)M * H * 7 + (size_t)M * I * 2 + (size_t)scr_n) * sizeof(float));
    if (!ws) { err_set(err, errlen, "text encoder backward: out of memory for %d x %d tokens", N, L); return -1; }
    float *dx = ws, *dmid = dx + M * H, *dh = dmid + M * H, *dq = dh + M * H, *dk = dq + M * H;
    float *dv = dk + M * H, *dout = dv + M * H, *df = dout + M * H, *df1 = df + M * I;
    float *scr = scr_n ? df1 + M * I : NULL;

    if (!d_hidden_out && !d_penultimate_out && !d_pooled_out) {
        be->free(be, ws);
        err_set(err, errlen, "text encoder backward: no output gradient given");
        return -1;
    }
    /* pooled = proj(hidden_out[eos]): its gradient joins d hidden_out at the EOS rows */
    float *dhid = NULL;
    if (d_pooled_out && !te->pooled_kept) {
        be->free(be, ws);
        err_set(err, errlen, "text encoder backward: a pooled gradient needs a forward that made pooled_out");
        return -1;
    }
    if (d_pooled_out) {
        dhid = be->alloc(be, ((size_t)M * H + (size_t)N * H) * sizeof(float));
        if (!dhid) {
            be->free(be, ws);
            err_set(err, errlen, "text encoder backward: out of memory for %d x %d tokens", N, L);
            return -1;
        }
        float *dpool = dhid + M * H, *pool = frstd + M;
        if (d_hidden_out) be->copy(be, dhid, d_hidden_out, (size_t)M * H * sizeof(float));
        if (te->proj_w)
            be->linear_bwd(be, d_pooled_out, pool, te->proj_w, dpool, gof(te, te->proj_w), NULL, N, H,
                           c->projection_dim);
        else
            be->copy(be, dpool, d_pooled_out, (size_t)N * H * sizeof(float));
        for (int n = 0; n < N; n++)
            be->axpy(be, 1.0f, dpool + (int64_t)n * H, dhid + ((int64_t)n * L + te->eos_pos[n]) * H, H);
        d_hidden_out = dhid;
    }
    /* hidden_out = final_norm(the last layer's output); penultimate_out = its input */
    int top = nl - 1;
    if (d_hidden_out) {
        be->layer_norm_bwd(be, d_hidden_out, xfin, te->final_w, fmean, frstd, dx, gof(te, te->final_w),
                           gof(te, te->final_b), M, H);
    } else {
        be->copy(be, dx, d_penultimate_out, (size_t)M * H * sizeof(float));
        top = nl - 2; /* nothing above the penultimate state carries gradient */
    }
    const float scale = 1.0f / sqrtf((float)D);
    for (int l = top; l >= 0; l--) {
        if (d_hidden_out && d_penultimate_out && l == nl - 2)
            be->axpy(be, 1.0f, d_penultimate_out, dx, M * H); /* dx now holds d(input of layer nl-1) */
        const TextLayer *w = &te->layers[l];
        TextActs a = slot_at(c, te->acts + per * (size_t)l, N, L);
        /* xout = xmid + fc2(gelu(fc1(ln2(xmid)))); dx holds d xout */
        be->copy(be, dmid, dx, (size_t)M * H * sizeof(float));
        be->zero(be, df, (size_t)M * I * 2 * sizeof(float)); /* df, df1 */
        be->linear_bwd(be, dx, a.f2, w->fc2_w, df, gof(te, w->fc2_w), gof(te, w->fc2_b), M, I, H);
        if (c->hidden_act == TE_ACT_QUICK_GELU) be->quick_gelu_bwd(be, df, a.f1, df1, M * I);
        else be->gelu_bwd(be, df, a.f1, df1, M * I);
        be->zero(be, dh, (size_t)M * H * sizeof(float));
        be->linear_bwd(be, df1, a.h2, w->fc1_w, dh, gof(te, w->fc1_w), gof(te, w->fc1_b), M, H, I);
        be->layer_norm_bwd(be, dh, a.xmid, w->ln2_w, a.mean2, a.rstd2, dmid, gof(te, w->ln2_w),
                           gof(te, w->ln2_b), M, H);
        /* xmid = xin + out_proj(attn(ln1(xin))); dmid holds d xmid */
        be->copy(be, dx, dmid, (size_t)M * H * sizeof(float));
        be->zero(be, dq, (size_t)M * H * 4 * sizeof(float)); /* dq, dk, dv, dout */
        Adapter *ad = te->ads.n ? &te->ads.items[4 * l] : NULL;
        be->linear_bwd(be, dmid, a.o, w->o_w, dout, gof(te, w->o_w), gof(te, w->o_b), M, H, H);
        if (ad) adapter_bwd(be, &ad[3], dmid, a.o, dout, M, scr);
        be->attention_bwd(be, dout, a.q, a.k, a.v, a.o, a.lse, dq, dk, dv, N, L, L, nh, D, scale, 1);
        be->zero(be, dh, (size_t)M * H * sizeof(float));
        be->linear_bwd(be, dq, a.h1, w->q_w, dh, gof(te, w->q_w), gof(te, w->q_b), M, H, H);
        be->linear_bwd(be, dk, a.h1, w->k_w, dh, gof(te, w->k_w), gof(te, w->k_b), M, H, H);
        be->linear_bwd(be, dv, a.h1, w->v_w, dh, gof(te, w->v_w), gof(te, w->v_b), M, H, H);
        if (ad) {
            adapter_bwd(be, &ad[0], dq, a.h1, dh, M, scr);
            adapter_bwd(be, &ad[1], dk, a.h1, dh, M, scr);
            adapter_bwd(be, &ad[2], dv, a.h1, dh, M, scr);
        }
        be->layer_norm_bwd(be, dh, a.xin, w->ln1_w, a.mean1, a.rstd1, dx, gof(te, w->ln1_w),
                           gof(te, w->ln1_b), M, H);
    }
    if (d_hidden_out && d_penultimate_out && nl == 1) /* the penultimate state is the embedding sum */
        be->axpy(be, 1.0f, d_penultimate_out, dx, M * H);
    /* x0 = tok_emb[ids] + pos_emb[0..L) */
    if (te->grads) {
        be->embedding_bwd(be, dx, te->act_ids, gof(te, te->tok_emb), M, H);
        for (int n = 0; n < N; n++) be->axpy(be, 1.0f, dx + (int64_t)n * L * H, gof(te, te->pos_emb), (int64_t)L * H);
    }
    be->free(be, ws);
    if (dhid) be->free(be, dhid);
    return 0;
}

int te_save_safetensors(TextEncoder *te, const char *path, char *err, size_t errlen)
{
    float *host = malloc((size_t)te->n_params * sizeof *host);
    StWriter *w = stw_create();
    if (!host || !w) {
        free(host);
        stw_free(w);
        err_set(err, errlen, "%s: out of memory saving the text encoder", path);
        return -1;
    }
    te->be->download(te->be, host, te->params, (size_t)te->n_params * sizeof *host);
    int rc = 0;
    for (int i = 0; i < te->n_specs && rc == 0; i++) {
        const ParamSpec *s = &te->specs[i];
        rc = stw_add_ref(w, s->name, ST_F32, s->ndim, s->shape, host + (*s->slot - te->params));
    }
    if (rc == 0) rc = stw_save(w, path, err, errlen);
    else err_set(err, errlen, "%s: cannot assemble the text encoder tensors", path);
    stw_free(w);
    free(host);
    return rc;
}

/* merge_diffusers.c — an adapter folded into a diffusers folder (merge.h,
 * diffusers_merge): the folder copied file for file into a temporary folder,
 * the weight files of the parts the adapter touches rewritten there by
 * merge_safetensors, then renamed into place. */
#include "models/merge.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "formats/json.h"
#include "formats/safetensors.h"
#include "models/adapter_file.h"
#include "models/model.h"
#include "models/text_encoder.h"
#include "models/unet_config.h"

/* One weight file to rewrite: the touched tensors it holds. */
typedef struct WFile {
    char rel[PATH_MAX];            /* below the folder: "unet/diffusion_pytorch_model.safetensors" */
    int n;
    const Adapter **ads;
    char (*keys)[MERGE_KEY_MAX];
} WFile;

typedef struct Plan {
    WFile *f;
    int n, cap;
    int copied;                    /* files fs_copy_tree copied */
} Plan;

static void plan_free(Plan *p) {
    for (int i = 0; i < p->n; i++) { free(p->f[i].ads); free(p->f[i].keys); }
    free(p->f);
    memset(p, 0, sizeof *p);
}

static int ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), k = strlen(tail);
    return n >= k && !strcmp(s + n - k, tail);
}

/* weights a merge cannot rewrite: left beside the merged ones, a loader could
 * take them with the unmerged values */
static int is_other_weights(const char *name) {
    static const char *const ext[] = {".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5"};
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++)
        if (ends_with(name, ext[i])) return 1;
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The file names in dir, sorted (malloc'ed, free with names_free). */
static int list_names(const char *dir, char ***out, int *n, char *err, size_t errlen) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) { err_set(err, errlen, "cannot read folder '%s': %s", dir, strerror(errno)); return -1; }
    int cap = 0, rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **p = realloc(*out, sizeof *p * (size_t)cap);
            if (!p) { rc = -1; break; }
            *out = p;
        }
        if (!((*out)[*n] = strdup(e->d_name))) { rc = -1; break; }
        (*n)++;
    }
    closedir(d);
    if (rc) err_set(err, errlen, "out of host memory");
    else if (*n) qsort(*out, (size_t)*n, sizeof **out, cmp_str);
    return rc;
}

static void names_free(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* group[i]: which weight set file i belongs to: the index (-1 - k) of the
 * *.safetensors.index.json names[k] that lists it, or i itself */
static int read_index(const char *dir, const char *index_name, char **names, int n, int k, int *group,
                      char *err, size_t errlen) {
    char path[PATH_MAX * 2], e[256];
    snprintf(path, sizeof path, "%s/%s", dir, index_name);
    size_t len;
    char *text = fs_read_all(path, FS_TEXT_MAX, &len, err, errlen);
    if (!text) return -1;
    JsonValue *root = json_parse(text, len, e, sizeof e);
    free(text);
    const JsonValue *map = root && root->type == JSON_OBJECT ? json_get(root, "weight_map") : NULL;
    int rc = 0;
    if (!map || map->type != JSON_OBJECT) {
        err_set(err, errlen, "%s: %s", path, root ? "no \"weight_map\" object (not a safetensors index)" : e);
        rc = -1;
    }
    for (int t = 0; rc == 0 && t < map->n; t++) {
        const JsonValue *v = &map->items[t];
        int i = 0;
        while (v->type == JSON_STRING && i < n && strcmp(names[i], v->string)) i++;
        if (v->type != JSON_STRING || i == n) {
            err_set(err, errlen, "%s: tensor '%s' is listed in shard %s, which is missing from %s", path,
                    map->keys[t], v->type == JSON_STRING ? v->string : "(not a file name)", dir);
            rc = -1;
        } else if (group[i] != i && group[i] != -1 - k) {
            err_set(err, errlen, "%s: %s is listed by two indexes", path, names[i]);
            rc = -1;
        } else {
            group[i] = -1 - k;
        }
    }
    json_free(root);
    return rc;
}

static int plan_add(Plan *p, const char *rel, int cap, WFile **out, char *err, size_t errlen) {
    if (p->n == p->cap) {
        int nc = p->cap ? 2 * p->cap : 8;
        WFile *f = realloc(p->f, sizeof *f * (size_t)nc);
        if (!f) { err_set(err, errlen, "out of host memory"); return -1; }
        p->f = f;
        p->cap = nc;
    }
    WFile *f = &p->f[p->n];
    memset(f, 0, sizeof *f);
    snprintf(f->rel, sizeof f->rel, "%s", rel);
    f->ads = malloc(sizeof *f->ads * (size_t)(cap ? cap : 1));
    f->keys = malloc(sizeof *f->keys * (size_t)(cap ? cap : 1));
    if (!f->ads || !f->keys) {
        free(f->ads);
        free(f->keys);
        err_set(err, errlen, "out of host memory");
        return -1;
    }
    p->n++;
    *out = f;
    return 0;
}

/* The weight files of part sub/ that hold set's tensors ("<module>.weight"),
 * into plan: every .safetensors weight set of the part (a file, or the shards
 * of an index) must hold each of them exactly once. */
static int plan_part(const char *in_dir, const char *sub, const AdapterSet *set, Plan *plan, char *err,
                     size_t errlen) {
    char dir[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/%s", in_dir, sub);
    char **names;
    int n;
    if (list_names(dir, &names, &n, err, errlen) != 0) return -1;
    int rc = -1, n_sets = 0;
    int *group = malloc(sizeof(int) * (size_t)(n ? n : 1));
    int *found = malloc(sizeof(int) * (size_t)(set->n ? set->n : 1));
    SafeTensors **st = calloc((size_t)(n ? n : 1), sizeof *st);
    if (!group || !found || !st) { err_set(err, errlen, "out of host memory"); goto out; }
    for (int i = 0; i < n; i++) {
        group[i] = i;
        if (is_other_weights(names[i])) {
            err_set(err, errlen, "%s/%s: pickled (or Flax) weights of a part the adapter changes: merge "
                    "rewrites .safetensors only and a loader could pick these up unmerged; move them out of "
                    "the folder and merge again", dir, names[i]);
            goto out;
        }
    }
    for (int k = 0; k < n; k++)
        if (ends_with(names[k], ".safetensors.index.json") &&
            read_index(dir, names[k], names, n, k, group, err, errlen) != 0)
            goto out;
    /* one weight set at a time: a file on its own, or an index's shards */
    for (int g = 0; g < n; g++) {
        int is_index = ends_with(names[g], ".safetensors.index.json");
        if (!is_index && !(ends_with(names[g], ".safetensors") && group[g] == g)) continue;
        n_sets++;
        memset(found, 0, sizeof(int) * (size_t)set->n);
        for (int i = 0; i < n; i++) {
            if (!(is_index ? group[i] == -1 - g : i == g)) continue;
            char path[PATH_MAX * 2], rel[PATH_MAX];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            if (!(st[i] = st_open(path, err, errlen))) goto out;
            WFile *f = NULL;
            for (int j = 0; j < set->n; j++) {
                char key[MERGE_KEY_MAX];
                snprintf(key, sizeof key, "%s.weight", set->items[j].name);
                if (!st_find(st[i], key)) continue;
                if (found[j]++) {
                    err_set(err, errlen, "%s/%s: tensor %s is in two of its shards", dir, names[g], key);
                    goto out;
                }
                snprintf(rel, sizeof rel, "%s/%s", sub, names[i]);
                if (!f && plan_add(plan, rel, set->n, &f, err, errlen) != 0) goto out;
                f->ads[f->n] = &set->items[j];
                snprintf(f->keys[f->n], MERGE_KEY_MAX, "%s", key);
                f->n++;
            }
        }
        for (int j = 0; j < set->n; j++)
            if (!found[j]) {
                err_set(err, errlen, "%s/%s: no tensor %s.weight (adapter layer %s): the adapter is for "
                        "another model", dir, names[g], set->items[j].name, set->items[j].name);
                goto out;
            }
    }
    if (!n_sets) {
        err_set(err, errlen, "%s: no .safetensors weights (%s)", dir,
                strcmp(sub, "unet") ? "model.safetensors" : "diffusion_pytorch_model.safetensors");
        goto out;
    }
    rc = 0;
out:
    for (int i = 0; st && i < n; i++) st_close(st[i]);
    free(st);
    free(group);
    free(found);
    names_free(names, n);
    return rc;
}

static int skip_planned(void *user, const char *rel) {
    Plan *p = user;
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->f[i].rel, rel)) return 1;
    p->copied++;
    return 0;
}

/* a under b (or equal) as folder paths */
static int path_within(const char *a, const char *b) {
    size_t n = strlen(b);
    return !strncmp(a, b, n) && (a[n] == 0 || a[n] == '/' || (n == 1 && b[0] == '/'));
}

/* out_dir's absolute path (its parent resolved), refused inside in_dir or around it */
static int check_out_dir(const char *in_dir, const char *out, char *err, size_t errlen) {
    char rin[PATH_MAX], parent[PATH_MAX], rp[PATH_MAX], rout[PATH_MAX * 2];
    const char *slash = strrchr(out, '/'), *base = slash ? slash + 1 : out;
    if (!base[0] || !strcmp(base, ".") || !strcmp(base, "..")) {
        err_set(err, errlen, "-o %s: name the output folder (not . or ..)", out);
        return -1;
    }
    snprintf(parent, sizeof parent, "%.*s", slash ? (int)(slash - out) : 1, slash ? out : ".");
    if (slash == out) snprintf(parent, sizeof parent, "/");
    if (!realpath(in_dir, rin)) {
        err_set(err, errlen, "%s: %s", in_dir, strerror(errno));
        return -1;
    }
    if (!realpath(parent, rp)) {
        err_set(err, errlen, "cannot write %s: folder %s: %s", out, parent, strerror(errno));
        return -1;
    }
    snprintf(rout, sizeof rout, "%s%s%s", rp, strcmp(rp, "/") ? "/" : "", base);
    if (path_within(rout, rin) || path_within(rin, rout)) {
        err_set(err, errlen, "-o %s: the output folder must be outside the model folder %s (and not hold it)",
                out, in_dir);
        return -1;
    }
    return 0;
}

int diffusers_merge(const char *in_dir, const char *adapter_path, Backend *be, const MergeOpts *o,
                    const char *out_dir, MergeStats *stats, char *err, size_t errlen) {
    MergeStats tot = {0};
    if (stats) *stats = tot;
    if (o->dtype >= 0) {
        err_set(err, errlen, "%s: a diffusers folder keeps each weight file's dtypes (--dtype is for "
                "single files)", in_dir);
        return -1;
    }
    char out[PATH_MAX], path[PATH_MAX * 2], tmp[PATH_MAX + 32] = "", old[PATH_MAX + 32] = "";
    snprintf(out, sizeof out, "%s", out_dir);
    for (size_t l = strlen(out); l > 1 && out[l - 1] == '/'; l--) out[l - 1] = 0;
    snprintf(path, sizeof path, "%s/unet/config.json", in_dir);
    if (!fs_is_dir(in_dir) || !fs_exists(path)) {
        err_set(err, errlen, "%s: not a diffusers folder (no unet/config.json)", in_dir);
        return -1;
    }
    if (check_out_dir(in_dir, out, err, errlen) != 0) return -1;
    struct stat sb;
    int out_exists = lstat(out, &sb) == 0;
    if (out_exists && !o->force) {
        err_set(err, errlen, "%s exists (use --force to replace it)", out);
        return -1;
    }
    UNetConfig ucfg;
    if (unet_config_from_json(path, &ucfg, err, errlen) != 0) return -1;
    TextConfig tc[2];
    char e[512];
    int n_te = model_text_configs(in_dir, tc, e, sizeof e);
    if (n_te < 0) { err_set(err, errlen, "%s", e); return -1; }
    AdapterFileInfo info;
    if (adapter_file_probe(adapter_path, &info, err, errlen) != 0) return -1;
    if (adapter_file_check_te(&info, n_te, adapter_path, err, errlen) != 0) return -1;

    int rc = -1, ns = 0, np = 0, writing = 0;
    AdapterSet sets[3];
    memset(sets, 0, sizeof sets);
    AdapterSet *load[3];
    struct { const char *sub; const AdapterSet *set; } parts[3];
    ConvertMap *map = NULL;
    Plan plan = {0};
    if (merge_unet_adapters(&ucfg, &info.spec, adapter_path, be, &sets[0], err, errlen) != 0) goto out;
    load[ns++] = &sets[0];
    if (n_te == 2) { /* SDXL: the files name the UNet's modules by their LDM paths */
        ConvertShape shape = {.unet = &ucfg};
        if (!(map = convert_map_create(MODEL_KIND_SDXL, CONVERT_UNET, &shape, err, errlen))) goto out;
        merge_unet_ldm_names(&sets[0], map);
    }
    if (info.n_modules) {
        parts[np].sub = "unet";
        parts[np++].set = &sets[0];
    }
    for (int i = 0; i < n_te; i++) {
        if (!(info.te_prefixes & adapter_te_prefix_bit(n_te, i))) continue;
        AdapterSet *s = &sets[1 + i];
        if (te_adapter_set_init(s, &tc[i], be, &info.spec, 0, e, sizeof e) != 0) {
            err_set(err, errlen, "%s: its factors do not fit the text encoder%s: %s", adapter_path,
                    i ? " 2" : "", e);
            goto out;
        }
        s->key_prefix = adapter_te_prefix(n_te, i);
        load[ns++] = s;
        parts[np].sub = i ? "text_encoder_2" : "text_encoder";
        parts[np++].set = s;
    }
    if (adapter_sets_load(load, ns, adapter_path, err, errlen) != 0) goto out;
    for (int i = 0; i < np; i++)
        if (plan_part(in_dir, parts[i].sub, parts[i].set, &plan, err, errlen) != 0) goto out;

    /* everything into a temporary folder beside out, renamed at the end */
    writing = 1;
    snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", out);
    if (!mkdtemp(tmp)) {
        err_set(err, errlen, "cannot create a folder beside %s: %s", out, strerror(errno));
        tmp[0] = 0;
        goto out;
    }
    if (fs_copy_tree(in_dir, tmp, skip_planned, &plan, err, errlen) != 0) goto out;
    for (int i = 0; i < plan.n; i++) {
        const WFile *f = &plan.f[i];
        char src[PATH_MAX * 2], dst[PATH_MAX * 2];
        snprintf(src, sizeof src, "%s/%s", in_dir, f->rel);
        snprintf(dst, sizeof dst, "%s/%s", tmp, f->rel);
        MergeStats s;
        if (merge_safetensors(src, f->ads, (const char (*)[MERGE_KEY_MAX])f->keys, f->n, o, be, dst, &s, err,
                              errlen) != 0)
            goto out;
        tot.tensors += s.tensors;
        tot.merged += s.merged;
        tot.bytes += s.bytes;
        tot.files_merged++;
    }
    tot.files_copied = plan.copied;
    if (out_exists) { /* --force: the old output goes aside, then away once the new one is in place */
        snprintf(old, sizeof old, "%s.old.%ld", out, (long)getpid());
        if (rename(out, old) != 0) {
            err_set(err, errlen, "cannot replace %s: %s", out, strerror(errno));
            old[0] = 0;
            goto out;
        }
    }
    if (rename(tmp, out) != 0) {
        err_set(err, errlen, "cannot rename %s to %s: %s", tmp, out, strerror(errno));
        if (old[0] && rename(old, out) == 0) old[0] = 0;
        goto out;
    }
    tmp[0] = 0;
    if (old[0] && fs_remove_tree(old) != 0) {
        err_set(err, errlen, "merged into %s, but the replaced folder is left at %s", out, old);
        goto out;
    }
    if (stats) *stats = tot;
    rc = 0;
out:
    if (tmp[0]) fs_remove_tree(tmp);
    plan_free(&plan);
    for (int i = 0; i < 3; i++) adapter_set_free(&sets[i]);
    convert_map_free(map);
    return rc == 0 ? 0 : writing ? -2 : -1;
}

/* backend.c — the backend registry: which backends exist and how one is opened.
 *
 * Built-in backends register a driver from a constructor (backend_cpu.c).
 * Others are plugins, krona-backend-NAME.so, found at run time and registered
 * when first asked for, so one krona-studio binary runs on machines with and
 * without a GPU: the CUDA plugin links cuBLAS and the CUDA runtime, which a
 * CPU-only machine may not have, and nothing of it is loaded for `cpu`.
 *
 * Where plugins are looked for: every folder in $KRONA_BACKEND_PATH (':'
 * separated) when it is set, else beside the executable (the build tree, or an
 * install's bin/) and in ../lib/krona-studio from it (an install's lib/).
 */
#include "core/backend.h"
#include "core/fsutil.h"

#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_DRIVERS 16
#define MAX_DIRS 8

static const BackendDriver *drivers[MAX_DRIVERS];
static int n_drivers;

void backend_register(const BackendDriver *d) {
    if (!d || !d->name || !d->create) return;
    for (int i = 0; i < n_drivers; i++)
        if (!strcmp(drivers[i]->name, d->name)) return; /* first one wins */
    if (n_drivers < MAX_DRIVERS) drivers[n_drivers++] = d;
}

static const BackendDriver *find_driver(const char *name) {
    for (int i = 0; i < n_drivers; i++)
        if (!strcmp(drivers[i]->name, name)) return drivers[i];
    return NULL;
}

void backend_destroy(Backend *be) {
    if (be) be->destroy(be);
}

/* ------------------------------------------------------------- plugins --- */

/* folders to search, in order; returns how many */
static int plugin_dirs(char dirs[MAX_DIRS][PATH_MAX]) {
    int n = 0;
    const char *env = getenv("KRONA_BACKEND_PATH");
    if (env) {
        const char *p = env;
        while (*p && n < MAX_DIRS) {
            size_t len = strcspn(p, ":");
            if (len > 0 && len < PATH_MAX) {
                memcpy(dirs[n], p, len);
                dirs[n++][len] = 0;
            }
            p += len + (p[len] == ':');
        }
        return n;
    }
    char exe[PATH_MAX];
    if (fs_exe_dir(exe, sizeof exe) != 0) return 0;
    snprintf(dirs[n++], PATH_MAX, "%s", exe);
    snprintf(dirs[n++], PATH_MAX, "%s/../lib/krona-studio", exe);
    return n;
}

/* Which shared library the dynamic loader could not find, when that is what
 * dlerror says ("libcudart.so.13: cannot open shared object file ..."). */
static int missing_dependency(const char *dlerr, const char *plugin_path, char *lib, size_t n) {
    const char *c = strstr(dlerr, ": cannot open shared object file");
    if (!c) return 0;
    /* dlerror is "PATH: LIB: cannot open..." for a missing dependency and
     * "PATH: cannot open..." when the plugin itself is missing */
    const char *start = dlerr;
    size_t plen = strlen(plugin_path);
    if (!strncmp(dlerr, plugin_path, plen) && dlerr[plen] == ':') start = dlerr + plen + 2;
    if (start >= c) return 0;
    snprintf(lib, n, "%.*s", (int)(c - start), start);
    return 1;
}

/* Loads krona-backend-NAME.so from the first folder that has it and registers
 * its driver. 0, or -1 with a one-line reason. */
static int load_plugin(const char *name, char *err, size_t errlen) {
    char dirs[MAX_DIRS][PATH_MAX];
    int nd = plugin_dirs(dirs);
    char path[PATH_MAX + 64], looked[512] = "";
    for (int i = 0; i < nd; i++) {
        snprintf(path, sizeof path, "%s/krona-backend-%s.so", dirs[i], name);
        if (access(path, F_OK) != 0) {
            size_t l = strlen(looked);
            snprintf(looked + l, sizeof looked - l, "%s%s", l ? ", " : "", dirs[i]);
            continue;
        }
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char *e = dlerror();
            char lib[128];
            if (e && missing_dependency(e, path, lib, sizeof lib))
                snprintf(err, errlen, "device = %s: the %s runtime is not installed (%s needs %s; "
                                      "install it, or use --device cpu)",
                         name, !strcmp(name, "cuda") ? "CUDA" : name, path, lib);
            else
                snprintf(err, errlen, "device = %s: cannot load %s: %s", name, path, e ? e : "?");
            return -1;
        }
        const BackendDriver *(*entry)(int) =
            (const BackendDriver *(*)(int))dlsym(h, "krona_backend_plugin");
        const BackendDriver *d = entry ? entry(KRONA_BACKEND_ABI) : NULL;
        if (!d || strcmp(d->name, name) != 0) {
            snprintf(err, errlen, "device = %s: %s is not a krona-studio %s backend of this version "
                                  "(rebuild it with make)", name, path, name);
            dlclose(h);
            return -1;
        }
        backend_register(d); /* the handle stays open: the driver lives in it */
        return 0;
    }
    snprintf(err, errlen, "device = %s: this build has no %s backend (krona-backend-%s.so is not in %s; "
                          "`make` builds it where nvcc is installed; or use --device cpu)",
             name, name, name, nd ? looked : "any plugin folder");
    return -1;
}

/* every krona-backend-*.so in the plugin folders, for device = auto; why
 * collects the ones that would not load ("cuda: the CUDA runtime is not ...") */
static void load_all_plugins(char *why, size_t whylen) {
    char dirs[MAX_DIRS][PATH_MAX];
    int nd = plugin_dirs(dirs);
    for (int i = 0; i < nd; i++) {
        DIR *d = opendir(dirs[i]);
        if (!d) continue;
        struct dirent *ent;
        while ((ent = readdir(d))) {
            const char *pre = "krona-backend-", *n = ent->d_name;
            size_t len = strlen(n), pl = strlen(pre);
            if (len <= pl + 3 || strncmp(n, pre, pl) || strcmp(n + len - 3, ".so")) continue;
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)(len - pl - 3), n + pl);
            char msg[512], tag[80];
            snprintf(tag, sizeof tag, "%s: ", name);
            if (find_driver(name) || strstr(why, tag)) continue; /* loaded, or failed already */
            if (load_plugin(name, msg, sizeof msg) != 0) {
                /* "device = cuda: X" -> "cuda: X" */
                const char *reason = strncmp(msg, "device = ", 9) ? msg : msg + 9;
                size_t l = strlen(why);
                snprintf(why + l, whylen - l, "%s%s", l ? "; " : "", reason);
            }
        }
        closedir(d);
    }
}

/* ---------------------------------------------------------------- open --- */

static Backend *open_auto(char *err, size_t errlen) {
    char why[1024] = "";
    load_all_plugins(why, sizeof why);
    /* highest rank first; a backend that does not open is skipped, with why */
    int tried[MAX_DRIVERS] = {0};
    for (;;) {
        int best = -1;
        for (int i = 0; i < n_drivers; i++)
            if (!tried[i] && (best < 0 || drivers[i]->auto_rank > drivers[best]->auto_rank)) best = i;
        if (best < 0) break;
        tried[best] = 1;
        char e[256] = "";
        Backend *be = drivers[best]->create(e, sizeof e);
        if (be) {
            snprintf(err, errlen, "%s", why);
            return be;
        }
        size_t l = strlen(why);
        snprintf(why + l, sizeof why - l, "%s%s: %s", l ? "; " : "", drivers[best]->name, e);
    }
    snprintf(err, errlen, "device = auto: no backend opened (%s)", why[0] ? why : "none registered");
    return NULL;
}

Backend *backend_open(const char *name, char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    if (!name || !name[0] || !strcmp(name, "auto")) return open_auto(err, errlen);
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_')) {
            snprintf(err, errlen, "device = %s: use auto, cpu or cuda", name);
            return NULL;
        }
    const BackendDriver *d = find_driver(name);
    if (!d) {
        char e[512];
        if (load_plugin(name, e, sizeof e) != 0) {
            /* a name nobody ships: say what the choices are */
            if (strcmp(name, "cuda") != 0 && strstr(e, "has no"))
                snprintf(err, errlen, "device = %s: use auto, cpu or cuda", name);
            else
                snprintf(err, errlen, "%s", e);
            return NULL;
        }
        d = find_driver(name);
    }
    char e[256] = "";
    Backend *be = d->create(e, sizeof e);
    if (!be) snprintf(err, errlen, "device = %s: %s", name, e);
    return be;
}

/* ----------------------------------------------------------- precision --- */

static const char *const prec_names[] = {"fp32", "tf32", "bf16"};

int backend_precision_parse(const char *s) {
    if (!s || !s[0] || !strcmp(s, "auto")) return KRONA_PREC_AUTO;
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, prec_names[i])) return i;
    return -2;
}

const char *backend_precision_name(int prec) {
    return prec >= 0 && prec < 3 ? prec_names[prec] : "auto";
}

int backend_set_precision(Backend *be, const char *name, char *err, size_t errlen) {
    int prec = backend_precision_parse(name);
    if (prec == -2) {
        snprintf(err, errlen, "precision = %s: use auto, fp32, tf32 or bf16", name);
        return -1;
    }
    if (be->set_precision(be, prec) != 0) {
        snprintf(err, errlen, "precision = %s: the %s device has no such mode (auto picks its own)",
                 name, be->name);
        return -1;
    }
    return 0;
}

/* fsutil.c — see fsutil.h. */
#include "core/fsutil.h"

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void seterr(char *err, size_t errlen, const char *fmt, const char *a, const char *b) {
    if (err && errlen) snprintf(err, errlen, fmt, a, b);
}

char *fs_read_all(const char *path, size_t *n, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { seterr(err, errlen, "cannot open '%s': %s", path, strerror(errno)); return NULL; }
    struct stat st;
    if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
        seterr(err, errlen, "cannot read '%s': %s", path, S_ISDIR(st.st_mode) ? "is a directory" : strerror(errno));
        close(fd);
        return NULL;
    }
    /* size from fstat is a hint; read until EOF so pipes and growing files work too */
    size_t cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf) { seterr(err, errlen, "cannot read '%s': %s", path, "out of memory"); close(fd); return NULL; }
    for (;;) {
        if (len + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); close(fd); seterr(err, errlen, "cannot read '%s': %s", path, "out of memory"); return NULL; }
            buf = nb; cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0) {
            if (errno == EINTR) continue;
            seterr(err, errlen, "cannot read '%s': %s", path, strerror(errno));
            free(buf); close(fd);
            return NULL;
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = 0;
    if (n) *n = len;
    return buf;
}

struct FsAtomic {
    int fd;
    int failed_errno;   /* first write error, reported at commit */
    char *path, *tmp;
};

FsAtomic *fs_atomic_open(const char *path, char *err, size_t errlen) {
    FsAtomic *f = calloc(1, sizeof(*f));
    size_t pl = strlen(path);
    if (!f || !(f->path = strdup(path)) || !(f->tmp = malloc(pl + 32))) {
        if (f) { free(f->path); free(f); }
        seterr(err, errlen, "cannot write '%s': %s", path, "out of memory");
        return NULL;
    }
    snprintf(f->tmp, pl + 32, "%s.tmp.%ld", path, (long)getpid());
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        seterr(err, errlen, "cannot write '%s': %s", f->tmp, strerror(errno));
        free(f->tmp); free(f->path); free(f);
        return NULL;
    }
    return f;
}

int fs_atomic_write(FsAtomic *f, const void *data, size_t n) {
    const char *p = data;
    while (n > 0 && !f->failed_errno) {
        ssize_t w = write(f->fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; f->failed_errno = errno; break; }
        p += w; n -= (size_t)w;
    }
    return f->failed_errno ? -1 : 0;
}

static void atomic_free(FsAtomic *f) { free(f->tmp); free(f->path); free(f); }

void fs_atomic_abort(FsAtomic *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    unlink(f->tmp);
    atomic_free(f);
}

int fs_atomic_commit(FsAtomic *f, char *err, size_t errlen) {
    int e = f->failed_errno;
    if (!e && fsync(f->fd) != 0) e = errno;
    if (close(f->fd) != 0 && !e) e = errno;
    f->fd = -1;
    if (!e && rename(f->tmp, f->path) != 0) e = errno;
    if (e) {
        seterr(err, errlen, "cannot write '%s': %s", f->path, strerror(e));
        unlink(f->tmp);
        atomic_free(f);
        return -1;
    }
    /* make the rename itself durable: fsync the containing directory (best effort) */
    char *slash = strrchr(f->path, '/');
    if (slash) { if (slash == f->path) slash[1] = 0; else *slash = 0; }
    int dfd = open(slash ? f->path : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { fsync(dfd); close(dfd); }
    atomic_free(f);
    return 0;
}

int fs_write_atomic(const char *path, const void *data, size_t n, char *err, size_t errlen) {
    FsAtomic *f = fs_atomic_open(path, err, errlen);
    if (!f) return -1;
    fs_atomic_write(f, data, n);
    return fs_atomic_commit(f, err, errlen);
}

int fs_exists(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0;
}

int fs_is_dir(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int fs_mkdir_p(const char *path, char *err, size_t errlen) {
    size_t n = strlen(path);
    if (n == 0) { seterr(err, errlen, "cannot create directory '%s': %s", path, "empty path"); return -1; }
    char *p = strdup(path);
    if (!p) { seterr(err, errlen, "cannot create directory '%s': %s", path, "out of memory"); return -1; }
    /* walk each prefix ending at a '/', then the whole path */
    for (size_t i = 1; i <= n; i++) {
        if (i < n && p[i] != '/') continue;
        char c = p[i];
        p[i] = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            seterr(err, errlen, "cannot create directory '%s': %s", p, strerror(errno));
            free(p);
            return -1;
        }
        if (!fs_is_dir(p)) {
            seterr(err, errlen, "cannot create directory '%s': %s", p, "a file with that name exists");
            free(p);
            return -1;
        }
        p[i] = c;
    }
    free(p);
    return 0;
}

static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static locale_t c_locale;
static void c_locale_init(void) { c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0); }

locale_t fs_c_locale(void) {
    pthread_once(&c_locale_once, c_locale_init);
    return c_locale;
}

void err_set(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void fs_stem(const char *path, char *out, size_t n) {
    const char *b = strrchr(path, '/');
    snprintf(out, n, "%s", b ? b + 1 : path);
    char *dot = strrchr(out, '.');
    if (dot && dot != out) *dot = 0;
}

int fs_exe_dir(char *out, size_t n) {
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) return -1;
    exe[len] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return -1;
    *slash = 0;
    snprintf(out, n, "%s", exe);
    return 0;
}

int fs_copy_file(const char *src, const char *dst, char *err, size_t errlen) {
    int fd = open(src, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        err_set(err, errlen, "cannot read '%s': %s", src, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    FsAtomic *f = fs_atomic_open(dst, err, errlen);
    if (!f) { close(fd); return -1; }
    size_t cap = (size_t)1 << 20;
    char *buf = malloc(cap);
    int rerr = buf ? 0 : ENOMEM;
    while (!rerr) {
        ssize_t r = read(fd, buf, cap);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) rerr = errno;
        if (r <= 0) break;
        if (fs_atomic_write(f, buf, (size_t)r) != 0) break; /* kept by f, reported by commit */
    }
    free(buf);
    close(fd);
    if (rerr) {
        fs_atomic_abort(f);
        err_set(err, errlen, "cannot read '%s': %s", src, strerror(rerr));
        return -1;
    }
    (void)fchmod(f->fd, st.st_mode & 07777); /* best effort: the bytes are what matters */
    return fs_atomic_commit(f, err, errlen);
}

static int copy_tree_at(const char *src, const char *dst, const char *rel, int depth,
                        int (*skip)(void *user, const char *rel), void *user, char *err, size_t errlen) {
    char sdir[PATH_MAX];
    snprintf(sdir, sizeof sdir, "%s%s%s", src, rel[0] ? "/" : "", rel);
    if (depth > 64) {
        err_set(err, errlen, "'%s': folders nested more than 64 deep (a symlink loop?)", sdir);
        return -1;
    }
    DIR *d = opendir(sdir);
    if (!d) { err_set(err, errlen, "cannot read folder '%s': %s", sdir, strerror(errno)); return -1; }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char r2[PATH_MAX], sp[PATH_MAX], dp[PATH_MAX];
        snprintf(r2, sizeof r2, "%s%s%s", rel, rel[0] ? "/" : "", e->d_name);
        snprintf(sp, sizeof sp, "%s/%s", src, r2);
        snprintf(dp, sizeof dp, "%s/%s", dst, r2);
        struct stat st;
        if (stat(sp, &st) != 0) {
            err_set(err, errlen, "cannot read '%s': %s", sp, strerror(errno));
            rc = -1;
        } else if (S_ISDIR(st.st_mode)) {
            if (mkdir(dp, 0755) != 0) {
                err_set(err, errlen, "cannot create folder '%s': %s", dp, strerror(errno));
                rc = -1;
            } else {
                rc = copy_tree_at(src, dst, r2, depth + 1, skip, user, err, errlen);
            }
        } else if (S_ISREG(st.st_mode)) {
            if (!(skip && skip(user, r2))) rc = fs_copy_file(sp, dp, err, errlen);
        } else {
            err_set(err, errlen, "'%s' is neither a file nor a folder: cannot copy it", sp);
            rc = -1;
        }
    }
    closedir(d);
    return rc;
}

int fs_copy_tree(const char *src, const char *dst, int (*skip)(void *user, const char *rel), void *user,
                 char *err, size_t errlen) {
    return copy_tree_at(src, dst, "", 0, skip, user, err, errlen);
}

static int remove_entry(const char *p, const struct stat *sb, int type, struct FTW *f) {
    (void)sb; (void)type; (void)f;
    return remove(p) != 0 ? -1 : 0;
}

int fs_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return remove(path) != 0 ? -1 : 0;
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 ? -1 : 0;
}

long long fs_meminfo_bytes(const char *text, const char *field) {
    size_t n = strlen(field);
    for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        if (strncmp(l, field, n) != 0 || l[n] != ':') continue;
        char *end;
        errno = 0;
        long long v = strtoll(l + n + 1, &end, 10);
        if (end == l + n + 1 || errno || v < 0) return -1;
        while (*end == ' ' || *end == '\t') end++;
        /* the kernel writes kB (KiB); a bare number is bytes (HugePages_* are counts) */
        if (!strncmp(end, "kB", 2)) return v > LLONG_MAX / 1024 ? -1 : v * 1024;
        return v;
    }
    return -1;
}

long long fs_mem_available(void) {
    size_t n;
    char *text = fs_read_all("/proc/meminfo", &n, NULL, 0);
    if (!text) return -1;
    long long v = fs_meminfo_bytes(text, "MemAvailable");
    free(text);
    return v;
}

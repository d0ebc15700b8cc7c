/* fsutil.c — see fsutil.h. */
#include "core/fsutil.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* "a FIFO", "a directory", ... for a file that is not a regular one */
static const char *kind_of(mode_t m) {
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO (named pipe)";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISREG(m)) return "a regular file";
    return "not a regular file";
}

const char *fs_kind(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0 ? kind_of(st.st_mode) : NULL;
}

static void size_text(double b, char *out, size_t n) {
    if (b < 1e3) snprintf(out, n, "%.0f bytes", b);
    else if (b < 1e6) snprintf(out, n, "%.1f kB", b / 1e3);
    else if (b < 1e9) snprintf(out, n, "%.1f MB", b / 1e6);
    else snprintf(out, n, "%.1f GB", b / 1e9);
}

int fs_open_regular(const char *path, off_t *size, char *err, size_t errlen) {
    struct stat st;
    if (stat(path, &st) != 0) {
        err_set(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        err_set(err, errlen, "cannot read '%s': it is %s, not a regular file", path, kind_of(st.st_mode));
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        err_set(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        err_set(err, errlen, "cannot read '%s': it is %s, not a regular file", path, kind_of(st.st_mode));
        close(fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    if (size) *size = st.st_size;
    return fd;
}

static void too_big(const char *path, double size, size_t max, char *err, size_t errlen) {
    char a[32], b[32];
    size_text(size, a, sizeof a);
    size_text((double)max, b, sizeof b);
    err_set(err, errlen, "cannot read '%s': it is %s, more than the %s such a file may have "
            "(is it the right file?)", path, a, b);
}

char *fs_read_all(const char *path, size_t max, size_t *n, char *err, size_t errlen) {
    if (max > SIZE_MAX / 4) max = SIZE_MAX / 4;   /* so max + 1 and doubling cannot wrap */
    off_t size;
    int fd = fs_open_regular(path, &size, err, errlen);
    if (fd < 0) return NULL;
    if (size < 0 || (uint64_t)size > max) {
        too_big(path, (double)size, max, err, errlen);
        close(fd);
        return NULL;
    }
    /* the size is a hint (the file may change while read): read to EOF, never past max */
    size_t cap = (size_t)size + 1, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) { err_set(err, errlen, "cannot read '%s': out of memory", path); close(fd); return NULL; }
    for (;;) {
        if (len == cap) {
            if (len > max) break;
            size_t nc = cap * 2 < max + 1 ? cap * 2 : max + 1;
            char *nb = realloc(buf, nc + 1);
            if (!nb) { free(buf); close(fd); err_set(err, errlen, "cannot read '%s': out of memory", path); return NULL; }
            buf = nb;
            cap = nc;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0) {
            if (errno == EINTR) continue;
            err_set(err, errlen, "cannot read '%s': %s", path, strerror(errno));
            free(buf);
            close(fd);
            return NULL;
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    close(fd);
    if (len > max) {
        too_big(path, (double)len, max, err, errlen);
        free(buf);
        return NULL;
    }
    buf[len] = 0;
    if (n) *n = len;
    return buf;
}

struct FsAtomic {
    int fd;
    int failed_errno;   /* first write error, reported at commit */
    char *path, *tmp;
};

#define TEMP_MARK ".tmp."

/* path.tmp.<pid>: the one spelling of a temp name (fs_remove_stale_temps parses it) */
static void temp_name(const char *path, long pid, char *out, size_t n) {
    snprintf(out, n, "%s" TEMP_MARK "%ld", path, pid);
}

/* "cannot write 'path': reason", saying which folder is missing or refuses */
static void write_error(const char *path, int e, char *err, size_t errlen) {
    char dir[PATH_MAX];
    fs_dir_of(path, dir, sizeof dir);
    const char *kind = fs_kind(dir);
    if ((e == ENOENT || e == ENOTDIR) && !kind)
        err_set(err, errlen, "cannot write '%s': the folder '%s' does not exist (create it first)", path, dir);
    else if ((e == ENOENT || e == ENOTDIR) && !fs_is_dir(dir))
        err_set(err, errlen, "cannot write '%s': '%s' is %s, not a folder", path, dir, kind);
    else if (e == EACCES || e == EPERM || e == EROFS)
        err_set(err, errlen, "cannot write '%s': the folder '%s' is not writable (%s)", path, dir, strerror(e));
    else
        err_set(err, errlen, "cannot write '%s': %s", path, strerror(e));
}

FsAtomic *fs_atomic_open(const char *path, char *err, size_t errlen) {
    FsAtomic *f = calloc(1, sizeof(*f));
    size_t pl = strlen(path);
    if (!f || !(f->path = strdup(path)) || !(f->tmp = malloc(pl + 32))) {
        if (f) { free(f->path); free(f); }
        err_set(err, errlen, "cannot write '%s': out of memory", path);
        return NULL;
    }
    if (fs_is_dir(path)) {
        err_set(err, errlen, "cannot write '%s': it is a folder (give a file name)", path);
        free(f->tmp); free(f->path); free(f);
        return NULL;
    }
    temp_name(path, (long)getpid(), f->tmp, pl + 32);
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        write_error(path, errno, err, errlen);
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
        write_error(f->path, e, err, errlen);
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

int fs_check_writable(const char *path, char *err, size_t errlen) {
    FsAtomic *f = fs_atomic_open(path, err, errlen);
    if (!f) return -1;
    fs_atomic_abort(f);
    return 0;
}

int fs_remove_stale_temps(const char *dir, char *err, size_t errlen) {
    DIR *d = opendir(dir);
    if (!d) { err_set(err, errlen, "cannot list '%s': %s", dir, strerror(errno)); return -1; }
    int removed = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *mark = strstr(de->d_name, TEMP_MARK), *last = NULL;
        for (; mark; mark = strstr(mark + 1, TEMP_MARK)) last = mark;
        if (!last || last == de->d_name) continue;
        const char *digits = last + strlen(TEMP_MARK);
        char *end;
        errno = 0;
        long pid = strtol(digits, &end, 10);
        if (!isdigit((unsigned char)*digits) || *end || errno || pid <= 0 || pid > INT_MAX) continue;
        /* ESRCH: no such process. EPERM means it exists (another user's): keep it */
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path) continue;
        struct stat st;
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (unlink(path) == 0) removed++;
    }
    closedir(d);
    return removed;
}

void fs_dir_of(const char *path, char *out, size_t n) {
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(out, n, ".");
    else if (slash == path) snprintf(out, n, "/");
    else snprintf(out, n, "%.*s", (int)(slash - path), path);
}

int fs_path_resolve(const char *base, const char *rel, char *out, size_t n) {
    char joined[PATH_MAX * 2], cwd[PATH_MAX];
    if (rel[0] == '/') {
        if (strlen(rel) >= n) return -1;
        snprintf(out, n, "%s", rel);
        return 0;
    }
    if (!base || base[0] != '/') {
        if (!getcwd(cwd, sizeof cwd)) return -1;
        if (base && strcmp(base, ".") != 0) {
            char b[PATH_MAX];
            if (snprintf(b, sizeof b, "%s/%s", cwd, base) >= (int)sizeof b) return -1;
            snprintf(cwd, sizeof cwd, "%s", b);
        }
        base = cwd;
    }
    while (rel[0] == '.' && rel[1] == '/') rel += 2;
    if (snprintf(joined, sizeof joined, "%s%s%s", base, base[strlen(base) - 1] == '/' ? "" : "/",
                 rel[0] && strcmp(rel, ".") ? rel : "") >= (int)sizeof joined)
        return -1;
    /* resolve the parent folder when it exists (.. and symlinked folders); keep the name */
    char parent[PATH_MAX * 2], real[PATH_MAX];
    size_t jl = strlen(joined);
    while (jl > 1 && joined[jl - 1] == '/') joined[--jl] = 0;
    fs_dir_of(joined, parent, sizeof parent);
    const char *name = strrchr(joined, '/') + 1;
    if (strcmp(name, "..") != 0 && strcmp(name, ".") != 0 && realpath(parent, real)) {
        if (snprintf(out, n, "%s%s%s", real, strcmp(real, "/") ? "/" : "", name) >= (int)n) return -1;
        return 0;
    }
    if (strlen(joined) >= n) return -1;
    snprintf(out, n, "%s", joined);
    return 0;
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
    if (n == 0) { err_set(err, errlen, "cannot create directory '%s': empty path", path); return -1; }
    char *p = strdup(path);
    if (!p) { err_set(err, errlen, "cannot create directory '%s': out of memory", path); return -1; }
    /* walk each prefix ending at a '/', then the whole path */
    for (size_t i = 1; i <= n; i++) {
        if (i < n && p[i] != '/') continue;
        char c = p[i];
        p[i] = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            err_set(err, errlen, "cannot create directory '%s': %s", p, strerror(errno));
            free(p);
            return -1;
        }
        if (!fs_is_dir(p)) {
            err_set(err, errlen, "cannot create directory '%s': a file with that name exists", p);
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
    char *text = fs_read_all("/proc/meminfo", FS_TEXT_MAX, &n, NULL, 0);
    if (!text) return -1;
    long long v = fs_meminfo_bytes(text, "MemAvailable");
    free(text);
    return v;
}

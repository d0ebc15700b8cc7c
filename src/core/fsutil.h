/* fsutil.h — small file-system helpers: the one way every loader opens and
 * reads a file (regular files only, bounded), atomic write (temp + fsync +
 * rename, so a crash never leaves a half-written file) and the clean-up of
 * temps a killed process left, mkdir -p, paths relative to a folder, file and
 * folder copies, the available memory (/proc/meminfo: the one place that reads
 * it), and a C-locale handle for number parsing/printing that must not follow
 * the user's LC_NUMERIC (ncurses front ends call setlocale). */
#ifndef KRONA_FSUTIL_H
#define KRONA_FSUTIL_H

#include <stddef.h>
#include <locale.h>

#include <sys/types.h>

/* Caps on what a loader reads into memory (a file over its cap is refused in
 * one line before anything is read): configs, JSON, presets, tokenizer files,
 * captions, loss.csv. Images have theirs in formats/image.h. */
#define FS_TEXT_MAX ((size_t)64 * 1000 * 1000)   /* 64 MB */

/* Open path for reading when it is a regular file: stat first, then open with
 * O_NONBLOCK (a FIFO swapped in between cannot block) and check the opened
 * file again. A directory, FIFO, device or socket is refused in one line
 * ("'path' is a FIFO, not a regular file"). fd (blocking, close-on-exec) with
 * its size in *size, or -1 with err. */
int fs_open_regular(const char *path, off_t *size, char *err, size_t errlen);
/* Whole regular file (fs_open_regular) into a malloc'ed buffer with a NUL
 * appended (not counted in *n). A file over max bytes is refused before it is
 * read ("cannot read 'path': it is 2.1 GB, more than the 64.0 MB such a file may
 * have (is it the right file?)"), and so
 * is one that grows past max while read. NULL with a one-line err naming path. */
char *fs_read_all(const char *path, size_t max, size_t *n, char *err, size_t errlen);
/* Write path.tmp.<pid>, fsync, rename over path. 0, or -1 and no temp left;
 * errors name path (not the temp). */
int fs_write_atomic(const char *path, const void *data, size_t n, char *err, size_t errlen);
/* Can path be written atomically (its folder exists and takes a new file, path
 * is not a folder)? Probes by creating and removing the temp fs_write_atomic
 * would use, so the answer is the write's own (permissions, read-only mounts).
 * 0, or -1 with err naming path (and the folder). For "check before the work". */
int fs_check_writable(const char *path, char *err, size_t errlen);
/* Remove the temps (NAME.tmp.<pid>) that dead processes left in dir (a killed
 * run); temps of live processes stay. The number removed, or -1 with err. */
int fs_remove_stale_temps(const char *dir, char *err, size_t errlen);
/* Create a directory and its parents (mode 0755); existing dirs are fine. */
int fs_mkdir_p(const char *path, char *err, size_t errlen);
int fs_exists(const char *path);
/* The running program's folder (where an install keeps its data beside it):
 * 0, or -1 when /proc/self/exe cannot be read. */
int fs_exe_dir(char *out, size_t n);
/* "dir/config.json" -> "config" (the last component without its extension) */
void fs_stem(const char *path, char *out, size_t n);
int fs_is_dir(const char *path);
/* What is at path, for messages: "a regular file", "a directory", "a FIFO
 * (named pipe)", "a character device", ...; NULL when nothing is. */
const char *fs_kind(const char *path);
/* rel against the folder base (NULL: the working directory) as an absolute
 * path: rel itself when absolute, else base/rel with the folders that exist
 * resolved (realpath of its parent: "presets/../models/x.png" becomes
 * "/repo/models/x.png"; the last component is kept, so a symlinked file keeps
 * its own name). 0, or -1 when it does not fit in n. */
int fs_path_resolve(const char *base, const char *rel, char *out, size_t n);
/* The folder of path ("a/b.ini" -> "a", "b.ini" -> "."). */
void fs_dir_of(const char *path, char *out, size_t n);

/* Streaming atomic write for large files (model weights): nothing appears at
 * path until fs_atomic_commit succeeds; abort (or a failed commit) removes the temp. */
typedef struct FsAtomic FsAtomic;
FsAtomic *fs_atomic_open(const char *path, char *err, size_t errlen);
int fs_atomic_write(FsAtomic *f, const void *data, size_t n);  /* 0 / -1 (error kept for commit) */
int fs_atomic_commit(FsAtomic *f, char *err, size_t errlen);    /* frees f */
void fs_atomic_abort(FsAtomic *f);                               /* frees f */

/* Copy a file's bytes (following a symlink: the file it names) to dst through
 * fs_atomic (temp, fsync, rename); dst gets src's permission bits. 0, or -1
 * with one line naming the file that failed. */
int fs_copy_file(const char *src, const char *dst, char *err, size_t errlen);
/* Copy the folder src into the existing folder dst, recursively: folders are
 * created, files copied with fs_copy_file (symlinks followed, so a Hugging Face
 * cache snapshot copies its blobs), except those for which skip(user, rel)
 * returns 1 (rel: the path below src, "unet/config.json"; skip may be NULL).
 * Anything else (a socket, a device, links nested deeper than 64 folders) is an
 * error. 0, or -1 with one line. */
int fs_copy_tree(const char *src, const char *dst, int (*skip)(void *user, const char *rel), void *user,
                 char *err, size_t errlen);
/* Remove path and, if it is a folder, everything in it (symlinks themselves,
 * not what they name). 0, or -1 (what could be removed is). */
int fs_remove_tree(const char *path);
/* Memory the kernel says can be given to a new allocation now without
 * swapping (/proc/meminfo's MemAvailable), in bytes; -1 when unknown. */
long long fs_mem_available(void);
/* One "Field:  N kB" line of a /proc/meminfo text, in bytes; -1 when the field
 * is absent or not a number. */
long long fs_meminfo_bytes(const char *text, const char *field);

/* printf into an error buffer (err may be NULL or errlen 0: nothing written):
 * the one helper behind the engine's one-line errors. */
__attribute__((format(printf, 3, 4)))
void err_set(char *err, size_t errlen, const char *fmt, ...);

/* The "C" locale, for strtod_l / strtof_l / uselocale around printf of floats. */
locale_t fs_c_locale(void);

#endif

/* test_hostile.c — hostile inputs through every loader (issue 12), each a
 * one-line error naming the file (and tensor), never a hang, a crash or a
 * silent wrong result:
 *  - FIFOs, devices (/dev/zero, /dev/null) and folders where a file is wanted:
 *    refused before anything is read (fs_open_regular), so nothing blocks and
 *    nothing reads until memory runs out; an alarm turns a hang into a failure;
 *  - files over their cap (sparse, so nothing is really written): refused
 *    before they are read, a file that grows while read too;
 *  - NaN / +Inf / -Inf (and float64 beyond float's range) in every float dtype,
 *    at random places, in tensors small and large (the parallel conversion):
 *    st_read_f32 flags them while converting; the UNet, VAE, text encoder,
 *    single-file checkpoint and adapter loaders refuse the file naming the tensor;
 *  - temps a killed process left (NAME.tmp.<pid>): removed when the pid is
 *    dead, kept when alive or not a temp; the writability probe before work;
 *  - relative paths resolved against a folder. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_helpers.h"
#include "core/fsutil.h"
#include "formats/image.h"
#include "formats/preset.h"
#include "formats/safetensors.h"
#include "models/adapter_file.h"
#include "models/convert.h"
#include "models/model.h"
#include "models/scheduler_config.h"
#include "models/text_encoder.h"
#include "models/tokenizer.h"
#include "models/unet.h"
#include "models/unet_config.h"
#include "models/vae.h"
#include "training/pretrain.h"
#include "training/run_dir.h"

static int setup(void **state) { return th_tmpdir_make("hostile"); }
static int teardown(void **state) { return th_tmpdir_remove(); }

static void make_fifo(char *path, const char *name) {
    path_of(path, name);
    unlink(path);
    if (mkfifo(path, 0644) != 0) fail_msg("mkfifo %s: %s", path, strerror(errno));
}

/* A loader's outcome on a hostile path: it failed, and its one line names the
 * path and what is wrong. */
static void expect_refused(const char *who, int failed, const char *err, const char *path, const char *why) {
    if (!failed) fail_msg("%s accepted '%s'", who, path);
    if (!strstr(err, path) || !strstr(err, why)) fail_msg("%s on '%s': '%s' (want '%s')", who, path, err, why);
    if (strchr(err, '\n')) fail_msg("%s: more than one line: '%s'", who, err);
}

/* every loader that takes a path, on a FIFO, /dev/zero, /dev/null and a folder */
static void test_special_files(void **state) {
    char fifo[512], dir[512], err[1024];
    make_fifo(fifo, "pipe");
    path_of(dir, "folder");
    assert_int_equal(fs_mkdir_p(dir, err, sizeof err), 0);
    struct { const char *path, *why; } c[] = {
        {fifo, "a FIFO (named pipe), not a regular file"},
        {"/dev/zero", "a character device, not a regular file"},
        {"/dev/null", "a character device, not a regular file"},
        {dir, "a directory, not a regular file"},
    };
    Backend *be = backend_cpu_create();
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        const char *p = c[i].path, *why = c[i].why;
        size_t n;
        char *b = fs_read_all(p, FS_TEXT_MAX, &n, err, sizeof err);
        expect_refused("fs_read_all", b == NULL, err, p, why);
        off_t sz;
        int fd = fs_open_regular(p, &sz, err, sizeof err);
        expect_refused("fs_open_regular", fd < 0, err, p, why);
        Preset pr;
        preset_defaults(&pr);
        expect_refused("preset_load", preset_load(&pr, p, err, sizeof err) != 0, err, p, why);
        Image im;
        expect_refused("image_load", image_load(p, &im, err, sizeof err) != 0, err, p, why);
        SafeTensors *st = st_open(p, err, sizeof err);
        expect_refused("st_open", st == NULL, err, p, why);
        UNetConfig uc;
        expect_refused("unet_config_from_json", unet_config_from_json(p, &uc, err, sizeof err) != 0, err, p, why);
        VAEConfig vc;
        expect_refused("vae_config_from_json", vae_config_from_json(p, &vc, err, sizeof err) != 0, err, p, why);
        TextConfig tc;
        expect_refused("te_config_load", te_config_load(&tc, p, err, sizeof err) != 0, err, p, why);
        Schedule sc;
        expect_refused("schedule_from_json", schedule_from_json(p, &sc, err, sizeof err) != 0, err, p, why);
        PtDataset d;
        expect_refused("pt_dataset_load", pt_dataset_load(&d, p, err, sizeof err) != 0, err, p, why);
        if (p != dir) {   /* a folder is a tokenizer folder / a diffusers folder to these */
            Tokenizer *t = tok_create_clip(p, err, sizeof err);
            expect_refused("tok_create_clip", t == NULL, err, p, why);
            Model *m = model_open(p, be, err, sizeof err);
            if (m) fail_msg("model_open accepted %s", p);
            if (!strstr(err, p) || !strstr(err, "it is a ")) fail_msg("model_open on %s: '%s'", p, err);
        }
    }
    /* a tokenizer folder whose merges.txt or vocab.json is a FIFO */
    char tokdir[512], merges[600], vocab[600];
    path_of(tokdir, "tok");
    assert_int_equal(fs_mkdir_p(tokdir, err, sizeof err), 0);
    snprintf(merges, sizeof merges, "%s/merges.txt", tokdir);
    snprintf(vocab, sizeof vocab, "%s/vocab.json", tokdir);
    assert_int_equal(mkfifo(merges, 0644), 0);
    Tokenizer *t = tok_create_clip(tokdir, err, sizeof err);
    expect_refused("tok_create_clip (folder)", t == NULL, err, merges, "a FIFO");
    unlink(merges);
    assert_int_equal(fs_write_atomic(merges, "#version: 0.2\na b\n", 18, err, sizeof err), 0);
    assert_int_equal(mkfifo(vocab, 0644), 0);
    t = tok_create_clip(tokdir, err, sizeof err);
    expect_refused("tok_create_clip (vocab.json)", t == NULL, err, vocab, "a FIFO");
    unlink(vocab);
    t = tok_create_clip(tokdir, err, sizeof err);   /* the same folder, sane: loads */
    if (!t) fail_msg("%s", err);
    tok_free(t);
    unlink(merges);
    rmdir(tokdir);
    rmdir(dir);
    unlink(fifo);
    backend_destroy(be);
}

/* a sparse file of `size` bytes (nothing written) */
static void make_sparse(char *path, const char *name, off_t size) {
    path_of(path, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, size), 0);
    close(fd);
}

/* files over their cap are refused before they are read */
static void test_size_caps(void **state) {
    char path[512], err[512];
    size_t n;
    make_sparse(path, "huge.ini", (off_t)FS_TEXT_MAX + 1);
    Preset p;
    preset_defaults(&p);
    assert_int_equal(preset_load(&p, path, err, sizeof err), -1);
    expect_refused("preset_load", 1, err, path, "is 64.0 MB, more than the 64.0 MB such a file may have");
    UNetConfig uc;
    assert_int_equal(unet_config_from_json(path, &uc, err, sizeof err), -1);
    expect_refused("unet_config_from_json", 1, err, path, "more than the 64.0 MB");
    unlink(path);
    make_sparse(path, "huge.png", (off_t)IMAGE_MAX_FILE + 1);
    Image im;
    assert_int_equal(image_load(path, &im, err, sizeof err), -1);
    expect_refused("image_load", 1, err, path, "is 1.3 GB, more than the 1.3 GB such a file may have");
    unlink(path);
    /* the cap exactly: read; one byte over: refused */
    path_of(path, "hundred.txt");
    char hundred[100];
    memset(hundred, 'h', sizeof hundred);
    assert_int_equal(fs_write_atomic(path, hundred, sizeof hundred, err, sizeof err), 0);
    char *b = fs_read_all(path, 100, &n, err, sizeof err);
    assert_non_null(b);
    assert_int_equal(n, 100);
    assert_int_equal(b[100], 0);
    free(b);
    assert_null(fs_read_all(path, 99, &n, err, sizeof err));
    expect_refused("fs_read_all", 1, err, path, "is 100 bytes, more than the 99 bytes");
    unlink(path);
    /* a regular file whose size stat does not know (procfs says 0): read to its end,
     * and refused once past the cap while reading */
    b = fs_read_all("/proc/self/status", FS_TEXT_MAX, &n, err, sizeof err);
    if (!b) fail_msg("%s", err);
    assert_true(n > 100 && strstr(b, "Pid:"));
    free(b);
    assert_null(fs_read_all("/proc/self/status", 10, &n, err, sizeof err));
    expect_refused("fs_read_all", 1, err, "/proc/self/status", "more than the 10 bytes");
}

/* float dtypes, one bad value at a random place: flagged while converting,
 * the message names the tensor, what it holds and where */
static void test_nonfinite_fuzz(void **state) {
    const int dts[4] = {ST_F32, ST_F16, ST_BF16, ST_F64};
    const char *kinds[4] = {"NaN", "+Inf", "-Inf", "a value beyond float range"};
    Rng r;
    rng_seed(&r, 12);
    char path[512], err[512];
    path_of(path, "nf.safetensors");
    for (int trial = 0; trial < 48; trial++) {
        int dt = dts[trial % 4], kind = rng_int(&r, dt == ST_F64 ? 4 : 3);
        /* small ones and ones past the parallel threshold (65,536) */
        int64_t n = trial % 3 == 0 ? 70000 + rng_int(&r, 60000) : 1 + rng_int(&r, 300);
        int64_t at = rng_int(&r, (int)n);
        int sz = st_dtype_size(dt);
        unsigned char *data = malloc((size_t)n * (size_t)sz);
        assert_non_null(data);
        for (int64_t i = 0; i < n; i++) {
            float v = (float)(rng_uniform(&r) * 200.0 - 100.0);
            uint16_t h = dt == ST_F16 ? f32_to_f16(v) : f32_to_bf16(v);
            double d = v;
            if (dt == ST_F32) memcpy(data + 4 * i, &v, 4);
            else if (dt == ST_F64) memcpy(data + 8 * i, &d, 8);
            else memcpy(data + 2 * i, &h, 2);
        }
        int64_t shape[1] = {n};
        StWriter *w = stw_create();
        assert_int_equal(stw_add_ref(w, "layer.weight", dt, 1, shape, data), 0);
        assert_int_equal(stw_save(w, path, err, sizeof err), 0);
        stw_free(w);
        float *out = malloc(sizeof(float) * (size_t)n);
        SafeTensors *st = st_open(path, err, sizeof err);
        assert_non_null(st);
        assert_int_equal(st_read_f32(st_find(st, "layer.weight"), out), 0);   /* clean: fine */
        st_close(st);
        /* now the bad value */
        if (kind == 3) {
            double big = rng_int(&r, 2) ? 1e300 : -1e39;
            memcpy(data + 8 * at, &big, 8);
        } else {
            static const uint32_t f32[3] = {0x7fc00001u, 0x7f800000u, 0xff800000u};
            static const uint16_t f16[3] = {0x7e01, 0x7c00, 0xfc00}, bf16[3] = {0xffc1, 0x7f80, 0xff80};
            double d = kind == 0 ? NAN : kind == 1 ? INFINITY : -INFINITY;
            if (dt == ST_F32) memcpy(data + 4 * at, &f32[kind], 4);
            else if (dt == ST_F16) memcpy(data + 2 * at, &f16[kind], 2);
            else if (dt == ST_BF16) memcpy(data + 2 * at, &bf16[kind], 2);
            else memcpy(data + 8 * at, &d, 8);
        }
        w = stw_create();
        assert_int_equal(stw_add_ref(w, "layer.weight", dt, 1, shape, data), 0);
        assert_int_equal(stw_save(w, path, err, sizeof err), 0);
        stw_free(w);
        st = st_open(path, err, sizeof err);
        assert_non_null(st);
        const StTensor *t = st_find(st, "layer.weight");
        assert_int_equal(st_read_f32(t, out), ST_READ_NONFINITE);
        assert_int_equal(st_load_f32(t, out, path, err, sizeof err), -1);
        char want[256];
        snprintf(want, sizeof want, "%s: tensor 'layer.weight' holds %s (element %lld of %lld)", path,
                 kinds[kind], (long long)at, (long long)n);
        if (strncmp(err, want, strlen(want)) != 0) fail_msg("%s %s: got '%s'\nwant '%s...'", st_dtype_name(dt), kinds[kind], err, want);
        /* and through the shape-checked read the weight loaders use */
        assert_int_equal(st_read_f32_as(t, 1, shape, out, path, err, sizeof err), -1);
        assert_non_null(strstr(err, want));
        st_close(st);
        free(out);
        free(data);
    }
    /* integer dtypes cannot hold one: their extremes convert and pass */
    int64_t s3[1] = {3};
    int64_t i64[3] = {INT64_MIN, INT64_MAX, 0};
    uint64_t u64[3] = {UINT64_MAX, 0, 1};
    StWriter *w = stw_create();
    assert_int_equal(stw_add_ref(w, "i", ST_I64, 1, s3, i64), 0);
    assert_int_equal(stw_add_ref(w, "u", ST_U64, 1, s3, u64), 0);
    assert_int_equal(stw_save(w, path, err, sizeof err), 0);
    stw_free(w);
    SafeTensors *st = st_open(path, err, sizeof err);
    float out[3];
    assert_int_equal(st_read_f32(st_find(st, "i"), out), 0);
    assert_int_equal(st_read_f32(st_find(st, "u"), out), 0);
    st_close(st);
    unlink(path);
}

/* a float tensor of src whose name starts with prefix, at random */
static const char *pick_tensor(const char *src, const char *prefix, Rng *r, char *name, size_t n, int64_t *numel) {
    char err[512];
    SafeTensors *st = st_open(src, err, sizeof err);
    if (!st) fail_msg("%s", err);
    int cand[4096], nc = 0;
    for (int i = 0; i < st_count(st) && nc < 4096; i++) {
        const StTensor *t = st_at(st, i);
        int fl = t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16;
        if (fl && t->numel > 0 && !strncmp(t->name, prefix, strlen(prefix)) && !convert_ldm_ignored(t->name))
            cand[nc++] = i;
    }
    assert_true(nc > 0);
    const StTensor *t = st_at(st, cand[rng_int(r, nc)]);
    snprintf(name, n, "%s", t->name);
    *numel = t->numel;
    st_close(st);
    return name;
}

/* the message a loader gives for a poisoned tensor */
static void expect_poison_error(const char *who, int rc, const char *err, const char *path, const char *tensor,
                                int kind) {
    const char *what[3] = {"NaN", "+Inf", "-Inf"};
    char want[400];
    snprintf(want, sizeof want, "tensor '%s' holds %s (element ", tensor, what[kind]);
    if (rc == 0) fail_msg("%s loaded %s with %s in '%s'", who, path, what[kind], tensor);
    if (!strstr(err, want) || !strstr(err, path)) fail_msg("%s: '%s'\nwant '%s' and the path", who, err, want);
}

/* model weights: UNet, VAE, text encoder (their own files), a single-file
 * checkpoint (through the LDM name table) and adapters, poisoned at random */
static void test_nonfinite_weights(void **state) {
    Backend *be = backend_cpu_create();
    Rng r;
    rng_seed(&r, 99);
    char bad[512], err[1024], name[300];
    path_of(bad, "poisoned.safetensors");
    int64_t n;
    for (int trial = 0; trial < 3; trial++) {
        int kind = trial % 3;
        /* UNet (diffusers names) */
        UNetConfig uc;
        if (unet_config_from_json("tests/golden/unet_sd15like.json", &uc, err, sizeof err)) fail_msg("%s", err);
        UNet *u = unet_create(&uc, be, err, sizeof err);
        assert_non_null(u);
        const char *src = "tests/golden/unet_sd15like.safetensors";
        if (unet_load_safetensors(u, src, err, sizeof err)) fail_msg("%s", err);
        pick_tensor(src, "unet.", &r, name, sizeof name, &n);   /* the golden file holds more */
        th_poison(src, bad, name, rng_int(&r, (int)n), kind);
        expect_poison_error("unet_load_safetensors", unet_load_safetensors(u, bad, err, sizeof err), err, bad, name, kind);
        /* the same UNet from a single-file checkpoint */
        src = "tests/golden/ldm_sd15like.safetensors";
        pick_tensor(src, "model.diffusion_model.", &r, name, sizeof name, &n);
        th_poison(src, bad, name, rng_int(&r, (int)n), kind);
        SafeTensors *st = st_open(bad, err, sizeof err);
        assert_non_null(st);
        expect_poison_error("convert_load_unet", convert_load_unet(u, st, err, sizeof err), err, "", name, kind);
        st_close(st);
        unet_free(u);

        /* VAE */
        VAEConfig vc;
        if (vae_config_from_json("tests/golden/vae_small.json", &vc, err, sizeof err)) fail_msg("%s", err);
        VAE *v = vae_create(&vc, be, err, sizeof err);
        assert_non_null(v);
        src = "tests/golden/vae_small.safetensors";
        if (vae_load_safetensors(v, src, NULL, err, sizeof err)) fail_msg("%s", err);
        pick_tensor(src, trial % 2 ? "decoder." : "encoder.", &r, name, sizeof name, &n);
        th_poison(src, bad, name, rng_int(&r, (int)n), kind);
        expect_poison_error("vae_load_safetensors", vae_load_safetensors(v, bad, NULL, err, sizeof err), err,
                            bad, name, kind);
        vae_free(v);

        /* text encoder (the built-in tiny model's) */
        TextConfig tc;
        assert_int_equal(te_config_builtin(&tc, "tiny-text", err, sizeof err), 0);
        TextEncoder *te = te_create(&tc, be, err, sizeof err);
        assert_non_null(te);
        src = "models/tiny/text_encoder.safetensors";
        if (te_load_safetensors(te, src, "", err, sizeof err)) fail_msg("%s", err);
        pick_tensor(src, "", &r, name, sizeof name, &n);
        th_poison(src, bad, name, rng_int(&r, (int)n), kind);
        expect_poison_error("te_load_safetensors", te_load_safetensors(te, bad, "", err, sizeof err), err, bad, name, kind);
        te_free(te);

        /* an adapter file, `sample --adapter`'s path (factors and alpha) */
        Model *m = model_open("tiny", be, err, sizeof err);
        if (!m) fail_msg("%s", err);
        src = "tests/golden/adapter_v1_tiny_krona4x8.safetensors";
        if (model_load_adapter(m, src, err, sizeof err)) fail_msg("%s", err);
        pick_tensor(src, "", &r, name, sizeof name, &n);
        th_poison(src, bad, name, rng_int(&r, (int)n), kind);
        expect_poison_error("model_load_adapter", model_load_adapter(m, bad, err, sizeof err), err, bad, name, kind);
        model_free(m);
    }
    unlink(bad);
    backend_destroy(be);
}

/* a process id that is certainly dead: a child that has exited and been reaped */
static long dead_pid(void) {
    pid_t p = fork();
    assert_true(p >= 0);
    if (p == 0) _exit(0);
    int st;
    waitpid(p, &st, 0);
    return (long)p;
}

static void touch(const char *dir, const char *name) {
    char p[1024], err[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    assert_int_equal(fs_write_atomic(p, "x", 1, err, sizeof err), 0);
}
static int present(const char *dir, const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return fs_exists(p);
}

static void test_stale_temps(void **state) {
    char run[512], samples[600], err[512], name[128], dead[128], live[128], sub[128];
    path_of(run, "run");
    snprintf(samples, sizeof samples, "%s/samples", run);
    assert_int_equal(fs_mkdir_p(samples, err, sizeof err), 0);
    long pd = dead_pid();
    /* what a killed run leaves, and what must stay */
    snprintf(dead, sizeof dead, "checkpoint.safetensors.tmp.%ld", pd);
    snprintf(live, sizeof live, "loss.csv.tmp.%ld", (long)getpid());
    touch(run, dead);
    touch(run, live);
    touch(run, "loss.csv.tmp.1");                /* init: always alive */
    touch(run, "notes.tmp.12ab");                /* not a pid */
    touch(run, "a.tmp.");
    touch(run, ".tmp.5");
    touch(run, "checkpoint.safetensors");
    snprintf(name, sizeof name, "step_000005.png.tmp.%ld", pd);
    touch(samples, name);
    snprintf(sub, sizeof sub, "%s/keep.tmp.%ld", run, pd);   /* a folder, not a temp file */
    assert_int_equal(fs_mkdir_p(sub, err, sizeof err), 0);
    assert_int_equal(run_dir_remove_stale_temps(run, err, sizeof err), 2);
    assert_false(present(run, dead));
    assert_false(present(samples, name));
    assert_true(present(run, live));
    assert_true(present(run, "loss.csv.tmp.1"));
    assert_true(present(run, "notes.tmp.12ab"));
    assert_true(present(run, "a.tmp."));
    assert_true(present(run, ".tmp.5"));
    assert_true(present(run, "checkpoint.safetensors"));
    assert_true(fs_is_dir(sub));
    assert_int_equal(run_dir_remove_stale_temps(run, err, sizeof err), 0);   /* nothing left to do */
    assert_int_equal(fs_remove_stale_temps("/no/such/folder", err, sizeof err), -1);
    assert_non_null(strstr(err, "/no/such/folder"));
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", run);
    assert_int_equal(system(cmd), 0);
}

/* the probe sample runs before generating: the real path in every message */
static void test_check_writable(void **state) {
    char path[600], err[512], file[600];
    path_of(path, "out.png");
    assert_int_equal(fs_check_writable(path, err, sizeof err), 0);
    assert_false(fs_exists(path));                        /* the probe leaves nothing */
    path_of(path, "missing/out.png");
    assert_int_equal(fs_check_writable(path, err, sizeof err), -1);
    expect_refused("fs_check_writable", 1, err, path, "the folder '");
    assert_non_null(strstr(err, "missing' does not exist"));
    assert_null(strstr(err, ".tmp."));
    path_of(file, "plain");
    assert_int_equal(fs_write_atomic(file, "x", 1, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/out.png", file);
    assert_int_equal(fs_check_writable(path, err, sizeof err), -1);
    expect_refused("fs_check_writable", 1, err, path, "is a regular file, not a folder");
    assert_int_equal(fs_check_writable(tmpdir, err, sizeof err), -1);
    expect_refused("fs_check_writable", 1, err, tmpdir, "it is a folder");
    /* the writers say the same, naming the file asked for, not their temp */
    assert_int_equal(fs_write_atomic(path, "x", 1, err, sizeof err), -1);
    expect_refused("fs_write_atomic", 1, err, path, "not a folder");
    assert_null(strstr(err, ".tmp."));
    if (geteuid() != 0) {   /* root writes anywhere: only a user sees a read-only folder */
        char ro[600];
        path_of(ro, "ro");
        assert_int_equal(fs_mkdir_p(ro, err, sizeof err), 0);
        chmod(ro, 0555);
        snprintf(path, sizeof path, "%s/out.png", ro);
        assert_int_equal(fs_check_writable(path, err, sizeof err), -1);
        expect_refused("fs_check_writable", 1, err, path, "is not writable");
        chmod(ro, 0755);
        rmdir(ro);
    }
    unlink(file);
}

static void test_path_resolve(void **state) {
    char out[PATH_MAX], cwd[PATH_MAX], real_tmp[PATH_MAX], want[PATH_MAX + 100], err[256];
    assert_non_null(realpath(".", cwd));
    assert_non_null(realpath(tmpdir, real_tmp));
    assert_int_equal(fs_path_resolve("/base", "/abs/x.png", out, sizeof out), 0);
    assert_string_equal(out, "/abs/x.png");
    /* folders that exist are resolved (..), the name is kept */
    char d[600];
    snprintf(d, sizeof d, "%s/a/b", tmpdir);
    assert_int_equal(fs_mkdir_p(d, err, sizeof err), 0);
    assert_int_equal(fs_path_resolve(d, "../../x.png", out, sizeof out), 0);
    snprintf(want, sizeof want, "%s/x.png", real_tmp);
    assert_string_equal(out, want);
    assert_int_equal(fs_path_resolve(d, "./y.png", out, sizeof out), 0);
    snprintf(want, sizeof want, "%s/a/b/y.png", real_tmp);
    assert_string_equal(out, want);
    /* relative base, NULL base: the working directory's */
    assert_int_equal(fs_path_resolve(NULL, "models/demo/subject1.png", out, sizeof out), 0);
    snprintf(want, sizeof want, "%s/models/demo/subject1.png", cwd);
    assert_string_equal(out, want);
    assert_int_equal(fs_path_resolve("presets", "../models/demo/subject1.png", out, sizeof out), 0);
    assert_string_equal(out, want);
    /* a folder that does not exist: joined as written */
    assert_int_equal(fs_path_resolve("/no/such", "../z.png", out, sizeof out), 0);
    assert_string_equal(out, "/no/such/../z.png");
    /* too long for out */
    char small[16];
    assert_int_equal(fs_path_resolve("/base/folder", "file.png", small, sizeof small), -1);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/a'", tmpdir);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    alarm(300);   /* a loader that blocks on a FIFO fails the run instead of hanging it */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_special_files),
        cmocka_unit_test(test_size_caps),
        cmocka_unit_test(test_nonfinite_fuzz),
        cmocka_unit_test(test_nonfinite_weights),
        cmocka_unit_test(test_stale_temps),
        cmocka_unit_test(test_check_writable),
        cmocka_unit_test(test_path_resolve),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* test_train.c — the training loop end to end on the tiny config:
 * the loss on a fixed evaluation set goes down, a run stopped mid-way and
 * resumed from its checkpoint ends with exactly the adapter of an
 * uninterrupted run (with aspect-ratio buckets too; sampling in both) and a
 * base grid sampled again with the adapters bypassed is the uninterrupted
 * run's step-0 grid pixel for pixel, bad input fails early
 * with a message naming it, and the run folder it leaves has the documented
 * layout and reads back. Buckets: mixed-aspect images (made here) each train
 * at the bucket written out by hand, every batch one size, class images and
 * captions with them; square images in buckets train what they train
 * without. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_helpers.h"
#include "core/fsutil.h"
#include "formats/image.h"
#include "formats/safetensors.h"
#include "training/buckets.h"
#include "training/run_dir.h"
#include "training/train.h"

static char g_root[256];

static int setup_root(void **state) {
    snprintf(g_root, sizeof g_root, "build/test-train-%d", (int)getpid());
    char err[256];
    return fs_mkdir_p(g_root, err, sizeof err);
}

static void base_preset(Preset *p, const char *name, int iterations) {
    preset_defaults(p);
    p->n_images = 2;
    snprintf(p->images[0], sizeof p->images[0], "models/demo/subject1.png");
    snprintf(p->images[1], sizeof p->images[1], "models/demo/subject2.png");
    snprintf(p->instance_prompt, sizeof p->instance_prompt, "a sks dog");
    p->resolution = 16;
    p->iterations = iterations;
    p->sample_every = 0;
    p->n_sample_prompts = 0;
    p->checkpoint_every = 4;
    p->flip = 1;
    snprintf(p->device, sizeof p->device, "cpu");
    snprintf(p->output_dir, sizeof p->output_dir, "%s", g_root);
    snprintf(p->run_name, sizeof p->run_name, "%s", name);
}

/* All adapter factors of a run's adapter file, concatenated. */
static float *read_factors(const char *run_dir, int64_t *n_out) {
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/adapter.safetensors", run_dir);
    SafeTensors *st = st_open(path, err, sizeof err);
    assert_non_null(st);
    int64_t n = 0;
    for (int i = 0; i < st_count(st); i++) n += st_at(st, i)->numel;
    float *v = malloc(sizeof(float) * (size_t)n), *p = v;
    for (int i = 0; i < st_count(st); i++) {
        st_read_f32(st_at(st, i), p);
        p += st_at(st, i)->numel;
    }
    st_close(st);
    *n_out = n;
    return v;
}

/* Mixed-aspect images: the demo subjects cropped and scaled to these shapes,
 * and the bucket each trains at for resolution 16 and the tiny model's step 4
 * (buckets 8x16 12x20 16x16 20x12 16x8), by hand from their aspect ratios. */
#define N_MIXED 6
static const struct { int w, h, bw, bh; } MIXED[N_MIXED] = {
    {48, 24, 16, 8},   /* 2:1 */
    {20, 40, 8, 16},   /* 1:2 */
    {30, 30, 16, 16},  /* square */
    {40, 26, 20, 12},  /* 1.54: log 0.43, nearer 20x12 (0.51) than 16x16 (0) */
    {26, 40, 12, 20},
    {50, 24, 16, 8},   /* 2.08, beyond 2:1: the widest, with the first */
};
/* class images (prior preservation) in their own folder, sorted by name */
#define N_MIXED_CLASS 4
static const struct { int w, h, bw, bh; } MIXED_CLASS[N_MIXED_CLASS] = {
    {40, 20, 16, 8}, {16, 32, 8, 16}, {24, 24, 16, 16}, {44, 22, 16, 8},
};

static void save_demo_as(int demo, int w, int h, const char *path) {
    char src[64], err[256];
    snprintf(src, sizeof src, "models/demo/subject%d.png", demo);
    Image im, out;
    if (image_load(src, &im, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(image_cover_crop_resize(&im, w, h, &out, NULL), 0);
    if (image_save_png(path, &out, err, sizeof err) != 0) fail_msg("%s", err);
    image_free(&im);
    image_free(&out);
}

static void make_mixed_images(void) {
    char path[512], err[256];
    for (int i = 0; i < N_MIXED; i++) {
        snprintf(path, sizeof path, "%s/mixed%d.png", g_root, i);
        if (!fs_exists(path)) save_demo_as(1 + i % 4, MIXED[i].w, MIXED[i].h, path);
    }
    snprintf(path, sizeof path, "%s/classes", g_root);
    assert_int_equal(fs_mkdir_p(path, err, sizeof err), 0);
    for (int i = 0; i < N_MIXED_CLASS; i++) {
        snprintf(path, sizeof path, "%s/classes/c%d.png", g_root, i);
        if (!fs_exists(path)) save_demo_as(4 - i, MIXED_CLASS[i].w, MIXED_CLASS[i].h, path);
    }
}

/* base_preset with buckets on the mixed images, batch 2, prior preservation
 * from the class folder */
static void bucket_preset(Preset *p, const char *name, int iterations) {
    make_mixed_images();
    base_preset(p, name, iterations);
    p->buckets = 1;
    p->n_images = N_MIXED;
    for (int i = 0; i < N_MIXED; i++) snprintf(p->images[i], sizeof p->images[i], "%s/mixed%d.png", g_root, i);
    p->batch = 2;
    p->prior_weight = 0.5f;
    snprintf(p->class_prompt, sizeof p->class_prompt, "a dog");
    snprintf(p->class_dir, sizeof p->class_dir, "%s/classes", g_root);
}

static void test_loss_goes_down(void **state) {
    Backend *be = backend_cpu_create();
    Preset p;
    base_preset(&p, "loss", 40);
    p.lr = 3e-3f;
    p.a1 = 2;
    p.a2 = 2;
    char err[512];
    Trainer *t = trainer_create(&p, NULL, be, NULL, err, sizeof err);
    if (!t) fail_msg("%s", err);
    TrainProgress p0 = trainer_progress(t);
    assert_true(p0.trainable > 0);
    assert_int_equal(trainer_run(t), 0);
    TrainProgress p1 = trainer_progress(t);
    printf("eval loss %.5f -> %.5f\n", p1.eval_loss_start, p1.eval_loss);
    assert_true(p1.eval_loss < 0.97f * p1.eval_loss_start);
    assert_int_equal(p1.step, 40);
    char path[600];
    snprintf(path, sizeof path, "%s/loss.csv", trainer_run_dir(t));
    size_t n;
    char *csv = fs_read_all(path, FS_TEXT_MAX, &n, err, sizeof err);
    assert_non_null(csv);
    assert_non_null(strstr(csv, "\n40,"));
    free(csv);
    /* the run's prompts were encoded once; the encoder's weights went back */
    Model *m = trainer_model(t);
    float *rec = be->alloc(be, sizeof(float) * (size_t)m->cond_floats);
    assert_int_equal(model_encode_prompt(m, "a dog", p.resolution, rec, err, sizeof err), -1);
    assert_non_null(strstr(err, "released"));
    be->free(be, rec);
    trainer_free(t);
    backend_destroy(be);
}

/* gradient_checkpointing = on trains the same adapter, bit for bit (the UNet
 * test checks every gradient; this checks the preset reaches the UNet), with
 * text-encoder adapters too; auto picks it only when memory is short. */
static void test_gradient_checkpointing(void **state) {
    Backend *be = backend_cpu_create();
    float *f[2];
    int64_t n[2];
    for (int c = 0; c < 2; c++) {
        Preset p;
        base_preset(&p, c ? "ckpt-on" : "ckpt-off", 6);
        p.lr = 3e-3f;
        p.text_encoder_adapters = 1;
        snprintf(p.grad_checkpointing, sizeof p.grad_checkpointing, "%s", c ? "on" : "off");
        char err[512];
        Trainer *t = trainer_create(&p, NULL, be, NULL, err, sizeof err);
        if (!t) fail_msg("%s", err);
        assert_int_equal(unet_checkpointing(trainer_model(t)->unet), c);
        assert_int_equal(trainer_run(t), 0);
        f[c] = read_factors(trainer_run_dir(t), &n[c]);
        trainer_free(t);
    }
    assert_true(n[0] == n[1] && n[0] > 0);
    assert_memory_equal(f[0], f[1], (size_t)n[0] * sizeof(float));
    double moved = 0;
    for (int64_t i = 0; i < n[0]; i++) moved += fabs(f[0][i]);
    assert_true(moved > 0);
    free(f[0]); free(f[1]);
    backend_destroy(be);
    assert_int_equal(train_pick_checkpointing("on", 1, 1000), 1);
    assert_int_equal(train_pick_checkpointing("off", 999, 1000), 0);
    assert_int_equal(train_pick_checkpointing("auto", 700, 1000), 0);
    assert_int_equal(train_pick_checkpointing("auto", 900, 1000), 1);
    assert_int_equal(train_pick_checkpointing("auto", 900, 0), 0); /* unknown: off */
}

typedef struct StopAt {
    Trainer *t;
    int backup_at, stop_at;
    char ckpt[600], backup[600];
} StopAt;

static void stop_progress(void *user, const TrainProgress *p) {
    StopAt *s = user;
    if (p->state != TRAIN_RUNNING) return;
    if (p->step == s->backup_at) {
        /* the step-4 checkpoint, as a crash at this point would leave it */
        size_t n;
        char err[256];
        char *d = fs_read_all(s->ckpt, FS_TEXT_MAX, &n, err, sizeof err);
        assert_non_null(d);
        assert_int_equal(fs_write_atomic(s->backup, d, n, err, sizeof err), 0);
        free(d);
    }
    if (p->step == s->stop_at) trainer_cancel(s->t);
}

static void case_preset(Preset *p, int te, int buckets, const char *name) {
    if (buckets) bucket_preset(p, name, 12);
    else base_preset(p, name, 12);
    p->text_encoder_adapters = te;
    /* a sample prompt: the base grid (step 0) and the last step's are sampled
     * in the run, and must not change what it trains */
    p->n_sample_prompts = 1;
    snprintf(p->sample_prompts[0], sizeof p->sample_prompts[0], "a sks dog");
    p->sample_steps = 2;
}

static void assert_same_png(const char *a, const char *b) {
    Image x, y;
    char err[256];
    if (image_load(a, &x, err, sizeof err) != 0) fail_msg("%s", err);
    if (image_load(b, &y, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(x.w, y.w);
    assert_int_equal(x.h, y.h);
    assert_int_equal(x.c, y.c);
    assert_memory_equal(x.px, y.px, (size_t)x.w * x.h * x.c);
    image_free(&x);
    image_free(&y);
}

static void count_log(void *user, const char *line) {
    if (strstr(line, "removed 2 temporary files a killed run left")) (*(int *)user)++;
}

static void resume_case(int te, int buckets, const char *full_name, const char *killed_name) {
    Backend *be = backend_cpu_create();
    char err[512];
    Preset p;
    case_preset(&p, te, buckets, full_name);
    Trainer *t = trainer_create(&p, NULL, be, NULL, err, sizeof err);
    if (!t) fail_msg("%s", err);
    assert_int_equal(trainer_run(t), 0);
    trainer_free(t);

    /* stop at 7 (after the step-4 checkpoint), keeping a copy of that one */
    case_preset(&p, te, buckets, killed_name);
    StopAt s = {0};
    s.backup_at = 5;
    s.stop_at = 7;
    snprintf(s.ckpt, sizeof s.ckpt, "%s/%s/checkpoint.safetensors", g_root, killed_name);
    snprintf(s.backup, sizeof s.backup, "%s/%s-step4.safetensors", g_root, killed_name);
    TrainCallbacks cb = {&s, stop_progress, NULL, NULL, NULL};
    t = trainer_create(&p, NULL, be, &cb, err, sizeof err);
    if (!t) fail_msg("%s", err);
    s.t = t;
    assert_int_equal(trainer_run(t), 1); /* cancelled */
    assert_int_equal(trainer_progress(t).step, 7);
    trainer_free(t);

    /* a crash: only the step-4 checkpoint survives */
    char run[512];
    snprintf(run, sizeof run, "%s/%s", g_root, killed_name);
    size_t n;
    char *d = fs_read_all(s.backup, FS_TEXT_MAX, &n, err, sizeof err);
    assert_non_null(d);
    assert_int_equal(fs_write_atomic(s.ckpt, d, n, err, sizeof err), 0);
    free(d);
    /* ... and the half-written temps of the killed process (a pid no process has) */
    char stale[2][700], live[700];
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) _exit(0);
    waitpid(child, NULL, 0);
    snprintf(stale[0], sizeof stale[0], "%s/checkpoint.safetensors.tmp.%ld", run, (long)child);
    snprintf(stale[1], sizeof stale[1], "%s/samples/step_000006.png.tmp.%ld", run, (long)child);
    snprintf(live, sizeof live, "%s/adapter.safetensors.tmp.1", run);   /* pid 1 lives: kept */
    for (int k = 0; k < 2; k++) assert_int_equal(fs_write_atomic(stale[k], "half", 4, err, sizeof err), 0);
    assert_int_equal(fs_write_atomic(live, "other", 5, err, sizeof err), 0);
    /* without its base grid too: the resumed run samples it again, adapters bypassed */
    char base[700], full_base[700];
    assert_true(fs_exists(run_sample_path(run, 0, base, sizeof base)));
    assert_int_equal(remove(base), 0);
    int logged = 0;
    TrainCallbacks logcb = {&logged, NULL, NULL, count_log, NULL};
    t = trainer_create(NULL, run, be, &logcb, err, sizeof err);
    if (!t) fail_msg("%s", err);
    assert_false(fs_exists(stale[0]));
    assert_false(fs_exists(stale[1]));
    assert_true(fs_exists(live));
    assert_int_equal(logged, 1);
    unlink(live);
    assert_int_equal(trainer_progress(t).step, 4);
    assert_int_equal(trainer_run(t), 0);
    trainer_free(t);

    /* a checkpoint holding a NaN (a moment, a factor, the loss history) is refused
     * naming the tensor, before anything trains */
    const char *poison[3] = {"up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.vA",
                             "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.B", "loss_history"};
    for (int k = 0; k < 3; k++) {
        th_poison(s.backup, s.ckpt, poison[k], k, k);
        Trainer *bad = trainer_create(NULL, run, be, NULL, err, sizeof err);
        if (bad) fail_msg("resumed from a checkpoint with a non-finite '%s'", poison[k]);
        char want[300];
        snprintf(want, sizeof want, "checkpoint.safetensors: tensor '%s' holds %s", poison[k],
                 k == 0 ? "NaN" : k == 1 ? "+Inf" : "-Inf");
        if (!strstr(err, want)) fail_msg("'%s'\nwant '%s'", err, want);
    }

    char full[512];
    snprintf(full, sizeof full, "%s/%s", g_root, full_name);
    /* the base grid sampled at step 4 with trained factors bypassed is the
     * one the uninterrupted run sampled before its first step */
    assert_same_png(base, run_sample_path(full, 0, full_base, sizeof full_base));
    int64_t na, nb;
    float *a = read_factors(full, &na), *b = read_factors(run, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, sizeof(float) * (size_t)na);
    /* and training moved B away from its zero init */
    double mag = 0;
    for (int64_t i = 0; i < na; i++) mag += (double)a[i] * a[i];
    assert_true(mag > 0);
    free(a);
    free(b);
    if (te) { /* the checkpoint holds the text adapters and their moments too */
        char path[600];
        snprintf(path, sizeof path, "%s/checkpoint.safetensors", run);
        SafeTensors *st = st_open(path, err, sizeof err);
        assert_non_null(st);
        assert_non_null(st_find(st, "text_model.encoder.layers.1.self_attn.out_proj.vB"));
        st_close(st);
    }
    backend_destroy(be);
}

static void test_resume_is_exact(void **state) { resume_case(0, 0, "full", "killed"); }
/* text_encoder_adapters = 1: the text adapters, their moments and the
 * per-step re-encoding resume bit for bit too */
static void test_resume_is_exact_te(void **state) { resume_case(1, 0, "te-full", "te-killed"); }
/* buckets = 1 on mixed-aspect images with class images, batch 2: the bucket
 * of each batch is drawn from the checkpointed random stream */
static void test_resume_is_exact_buckets(void **state) { resume_case(0, 1, "bk-full", "bk-killed"); }

typedef struct BatchLog {
    int n_batches, n_prior, bad;
    int seen[N_MIXED], seen_class[N_MIXED_CLASS];
    int sizes_seen[4][2], n_sizes;   /* distinct instance batch sizes */
    int captions, placed;            /* log lines: captions read, images placed in buckets */
    int mixed;                       /* batches of more than one image */
} BatchLog;

static void on_batch(void *user, const TrainBatch *b) {
    BatchLog *L = user;
    L->n_batches++;
    L->n_prior += b->prior;
    assert_null(b->time_ids); /* the tiny model has none */
    /* one size per batch: every image in it has that bucket */
    for (int j = 0; j < b->n; j++) {
        int i = b->image[j];
        int bw = b->prior ? MIXED_CLASS[i].bw : MIXED[i].bw, bh = b->prior ? MIXED_CLASS[i].bh : MIXED[i].bh;
        if (b->w != bw || b->h != bh) {
            printf("step %d: image %d (%s) of a %dx%d batch belongs to %dx%d\n", b->step, i,
                   b->prior ? "class" : "instance", b->w, b->h, bw, bh);
            L->bad++;
        }
        if (b->prior) L->seen_class[i]++;
        else L->seen[i]++;
        assert_true(b->mirror[j] == 0 || b->mirror[j] == 1);
    }
    for (int j = 1; j < b->n; j++) L->mixed += b->image[j] != b->image[0];
    if (!b->prior) {
        int k = 0;
        while (k < L->n_sizes && (L->sizes_seen[k][0] != b->w || L->sizes_seen[k][1] != b->h)) k++;
        if (k == L->n_sizes && k < 4) {
            L->sizes_seen[k][0] = b->w;
            L->sizes_seen[k][1] = b->h;
            L->n_sizes++;
        }
    }
}

static void on_log(void *user, const char *line) {
    BatchLog *L = user;
    if (strstr(line, "caption of")) L->captions++;
    if (strstr(line, " trains at ")) L->placed++;
}

/* Every image at the bucket worked out by hand (and as bucket_for_image says),
 * every batch of one size, instance and class batches alike; every image
 * drawn; the loss finite. */
static void test_buckets_train(void **state) {
    Backend *be = backend_cpu_create();
    Preset p;
    bucket_preset(&p, "bk-batches", 30);
    for (int i = 0; i < N_MIXED; i++) { /* the hand-written table is what the rule gives */
        BucketSize b;
        assert_int_equal(bucket_for_image(16, 4, MIXED[i].w, MIXED[i].h, &b), 0);
        assert_int_equal(b.w, MIXED[i].bw);
        assert_int_equal(b.h, MIXED[i].bh);
    }
    BatchLog L = {0};
    TrainCallbacks cb = {&L, NULL, NULL, on_log, on_batch};
    char err[512];
    Trainer *t = trainer_create(&p, NULL, be, &cb, err, sizeof err);
    if (!t) fail_msg("%s", err);
    assert_int_equal(L.placed, N_MIXED);
    if (trainer_run(t) != 0) fail_msg("%s", trainer_error(t));
    TrainProgress g = trainer_progress(t);
    printf("%d batches (%d of class images), %d instance sizes; eval loss %.4f -> %.4f\n", L.n_batches,
           L.n_prior, L.n_sizes, g.eval_loss_start, g.eval_loss);
    assert_int_equal(L.bad, 0);
    assert_int_equal(L.n_batches, 2 * 30);
    assert_int_equal(L.n_prior, 30);
    assert_true(L.n_sizes >= 4);
    assert_true(L.mixed > 0); /* batches of two different images of one bucket */
    for (int i = 0; i < N_MIXED; i++) assert_true(L.seen[i] > 0);
    for (int i = 0; i < N_MIXED_CLASS; i++) assert_true(L.seen_class[i] > 0);
    assert_true(isfinite(g.loss) && isfinite(g.eval_loss) && isfinite(g.eval_loss_start));
    trainer_free(t);
    backend_destroy(be);
}

/* train 6 steps on the mixed images (square: the demo images); the
 * adapter's factors, and how often each image was drawn into seen */
static float *bucket_run(const char *name, int buckets, int square, int64_t *n, BatchLog *L) {
    Backend *be = backend_cpu_create();
    Preset p;
    bucket_preset(&p, name, 6);
    p.buckets = buckets;
    if (square) { /* the demo images: all square */
        base_preset(&p, name, 6);
        p.buckets = buckets;
        p.batch = 2;
    }
    char err[512];
    BatchLog mine = {0};
    if (!L) L = &mine;
    TrainCallbacks cb = {L, NULL, NULL, on_log, on_batch};
    Trainer *t = trainer_create(&p, NULL, be, buckets && !square ? &cb : NULL, err, sizeof err);
    if (!t) fail_msg("%s", err);
    if (trainer_run(t) != 0) fail_msg("%s", trainer_error(t));
    assert_int_equal(L->bad, 0);
    float *f = read_factors(trainer_run_dir(t), n);
    trainer_free(t);
    backend_destroy(be);
    return f;
}

/* Square images all land in the square bucket: buckets = 1 then draws the
 * same batches as buckets = 0 and trains the same adapter, bit for bit. On
 * mixed shapes the two differ. Captions still replace the instance prompt
 * per image: one equal to it changes nothing, another changes the adapter. */
static void test_buckets_square_and_captions(void **state) {
    int64_t na, nb, nc, nd, ne;
    float *a = bucket_run("bk-square-off", 0, 1, &na, NULL), *b = bucket_run("bk-square-on", 1, 1, &nb, NULL);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, sizeof(float) * (size_t)na);
    BatchLog L = {0};
    float *c = bucket_run("bk-mixed-off", 0, 0, &nc, NULL), *d = bucket_run("bk-mixed-on", 1, 0, &nd, &L);
    assert_int_equal(nc, nd);
    assert_true(memcmp(c, d, sizeof(float) * (size_t)nc) != 0);

    /* the caption goes beside an image these 6 steps draw */
    int cap = 0;
    while (cap < N_MIXED && !L.seen[cap]) cap++;
    assert_true(cap < N_MIXED);
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/mixed%d.txt", g_root, cap);
    const char *same = "a sks dog", *other = "a sks dog in the snow";
    assert_int_equal(fs_write_atomic(path, same, strlen(same), err, sizeof err), 0);
    BatchLog Lc = {0};
    float *e = bucket_run("bk-caption-same", 1, 0, &ne, &Lc);
    assert_int_equal(Lc.captions, 1);
    assert_int_equal(ne, nd);
    assert_memory_equal(e, d, sizeof(float) * (size_t)nd);
    free(e);
    assert_int_equal(fs_write_atomic(path, other, strlen(other), err, sizeof err), 0);
    e = bucket_run("bk-caption-other", 1, 0, &ne, NULL);
    assert_true(memcmp(e, d, sizeof(float) * (size_t)nd) != 0);
    unlink(path);
    free(a); free(b); free(c); free(d); free(e);
}

/* text_encoder_adapters = 1: the loss goes down, and the text adapters moved
 * (their B starts at zero: it is non-zero only if gradients reached it) */
static void test_te_adapters_train(void **state) {
    Backend *be = backend_cpu_create();
    Preset p;
    base_preset(&p, "te-loss", 40);
    p.lr = 3e-3f;
    p.a1 = 2;
    p.a2 = 2;
    p.text_encoder_adapters = 1;
    char err[512];
    Trainer *t = trainer_create(&p, NULL, be, NULL, err, sizeof err);
    if (!t) fail_msg("%s", err);
    Preset p_off = p;
    p_off.text_encoder_adapters = 0;
    snprintf(p_off.run_name, sizeof p_off.run_name, "te-off");
    Trainer *t_off = trainer_create(&p_off, NULL, be, NULL, err, sizeof err);
    if (!t_off) fail_msg("%s", err);
    TrainProgress q0 = trainer_progress(t), q_off = trainer_progress(t_off);
    printf("trainable %lld with text adapters, %lld without\n", (long long)q0.trainable, (long long)q_off.trainable);
    assert_true(q0.trainable > q_off.trainable);
    trainer_free(t_off);
    assert_int_equal(trainer_run(t), 0);
    TrainProgress p1 = trainer_progress(t);
    printf("eval loss %.5f -> %.5f\n", p1.eval_loss_start, p1.eval_loss);
    assert_true(p1.eval_loss < 0.97f * p1.eval_loss_start);
    char path[600];
    snprintf(path, sizeof path, "%s/adapter.safetensors", trainer_run_dir(t));
    SafeTensors *st = st_open(path, err, sizeof err);
    assert_non_null(st);
    int n_te = 0;
    double mag = 0;
    for (int i = 0; i < st_count(st); i++) {
        const StTensor *x = st_at(st, i);
        if (strncmp(x->name, "lora_te_text_model_encoder_layers_", 34)) continue;
        n_te++;
        if (!strstr(x->name, ".lokr_w2")) continue;
        float *v = malloc(sizeof(float) * (size_t)x->numel);
        st_read_f32(x, v);
        for (int64_t k = 0; k < x->numel; k++) mag += (double)v[k] * v[k];
        free(v);
    }
    st_close(st);
    printf("%d text encoder tensors, |B| = %.3g\n", n_te, sqrt(mag));
    assert_int_equal(n_te, 3 * 4 * 2); /* w1, w2, alpha x q k v out x 2 layers */
    assert_true(mag > 0);
    trainer_free(t);
    backend_destroy(be);
}

static void expect_create_error(Preset *p, const char *needle) {
    Backend *be = backend_cpu_create();
    char err[512] = "";
    Trainer *t = trainer_create(p, NULL, be, NULL, err, sizeof err);
    assert_null(t);
    printf("error: %s\n", err);
    if (!strstr(err, needle)) fail_msg("error '%s' does not mention '%s'", err, needle);
    assert_null(strchr(err, '\n'));
    backend_destroy(be);
}

static void test_bad_input(void **state) {
    Preset p;
    base_preset(&p, "bad1", 2);
    snprintf(p.images[1], sizeof p.images[1], "no/such/image.png");
    expect_create_error(&p, "no/such/image.png");

    /* a truncated PNG */
    char path[512], err[256];
    size_t n;
    char *png = fs_read_all("models/demo/subject1.png", FS_TEXT_MAX, &n, err, sizeof err);
    assert_non_null(png);
    snprintf(path, sizeof path, "%s/truncated.png", g_root);
    assert_int_equal(fs_write_atomic(path, png, n / 2, err, sizeof err), 0);
    free(png);
    base_preset(&p, "bad2", 2);
    snprintf(p.images[0], sizeof p.images[0], "%s", path);
    expect_create_error(&p, "truncated");

    /* a1 = 3 divides no tiny layer: the error names one */
    base_preset(&p, "bad3", 2);
    p.a1 = 3;
    expect_create_error(&p, "a1=3");
    expect_create_error(&p, "attn1.to_q");

    /* resolution not a multiple of the UNet's downsampling */
    base_preset(&p, "bad4", 2);
    p.resolution = 20;
    expect_create_error(&p, "resolution");

    base_preset(&p, "bad5", 2);
    snprintf(p.model, sizeof p.model, "no-such-model");
    expect_create_error(&p, "no-such-model");

    /* buckets: a step that is no multiple of the model's (4), one that does
     * not divide the resolution, out-of-range values */
    base_preset(&p, "bad6", 2);
    p.buckets = 1;
    p.bucket_step = 6;
    expect_create_error(&p, "bucket_step = 6: must be a multiple of 4 for this model (e.g. 8)");
    p.bucket_step = 12;
    expect_create_error(&p, "resolution = 16: with buckets it must be a multiple of bucket_step = 12 (e.g. 24)");
    p.bucket_step = -4;
    expect_create_error(&p, "data.bucket_step = -4");
    p.bucket_step = 0;
    p.buckets = 2;
    expect_create_error(&p, "data.buckets = 2");
}

/* The studio's use: a training thread paused, resumed and finished from
 * another thread. */
static void test_thread_pause_resume(void **state) {
    Backend *be = backend_cpu_create();
    Preset p;
    base_preset(&p, "thread", 10);
    char err[512];
    Trainer *t = trainer_create(&p, NULL, be, NULL, err, sizeof err);
    if (!t) fail_msg("%s", err);
    assert_int_equal(trainer_start(t), 0);
    while (trainer_progress(t).step < 2) usleep(2000);
    trainer_pause(t, 1);
    /* at most the step in flight completes, then the loop waits */
    int s1 = -1;
    for (int i = 0; i < 200; i++) {
        usleep(5000);
        if (trainer_progress(t).state == TRAIN_PAUSED) { s1 = trainer_progress(t).step; break; }
    }
    assert_true(s1 >= 2);
    usleep(100000);
    assert_int_equal(trainer_progress(t).step, s1);
    assert_int_equal(trainer_progress(t).state, TRAIN_PAUSED);
    trainer_pause(t, 0);
    assert_int_equal(trainer_join(t), 0);
    TrainProgress fin = trainer_progress(t);
    assert_int_equal(fin.step, 10);
    assert_int_equal(fin.state, TRAIN_DONE);
    assert_true(fin.peak_bytes > 0);
    assert_true(fin.it_per_s > 0);
    trainer_free(t);
    backend_destroy(be);
}

/* Prior preservation without class images generates them with the base model
 * into the run folder; gradient accumulation and warm-up run with it. */
static void test_prior_preservation(void **state) {
    Backend *be = backend_cpu_create();
    Preset p;
    base_preset(&p, "prior", 3);
    p.prior_weight = 0.5f;
    p.n_class_images = 2;
    snprintf(p.class_prompt, sizeof p.class_prompt, "a dog");
    p.sample_steps = 3;
    p.grad_accum = 2;
    snprintf(p.lr_schedule, sizeof p.lr_schedule, "warmup");
    p.warmup_steps = 2;
    char err[512];
    Trainer *t = trainer_create(&p, NULL, be, NULL, err, sizeof err);
    if (!t) fail_msg("%s", err);
    char path[600];
    snprintf(path, sizeof path, "%s/class_images/class_001.png", trainer_run_dir(t));
    assert_true(fs_exists(path));
    assert_int_equal(trainer_run(t), 0);
    TrainProgress fin = trainer_progress(t);
    assert_true(isfinite(fin.loss));
    assert_float_equal(fin.lr, p.lr, 1e-9); /* warm-up over by step 3 */
    trainer_free(t);
    backend_destroy(be);
}

/* The run folder a short run leaves: every entry where run_dir.h says (the
 * names spelled out here on purpose: they are a contract with users and
 * scripts), and its summary read back as the trainer saw it. */
static void test_run_folder(void **state) {
    Backend *be = backend_cpu_create();
    Preset p;
    base_preset(&p, "folder", 3);
    p.a1 = 2;
    p.a2 = 4;
    p.sample_every = 2;
    p.n_sample_prompts = 1;
    snprintf(p.sample_prompts[0], sizeof p.sample_prompts[0], "a sks dog");
    p.sample_steps = 2;
    char err[512];
    Trainer *t = trainer_create(&p, NULL, be, NULL, err, sizeof err);
    if (!t) fail_msg("%s", err);
    assert_int_equal(trainer_run(t), 0);
    TrainProgress fin = trainer_progress(t);
    char dir[512], want[700], got[700];
    snprintf(dir, sizeof dir, "%s", trainer_run_dir(t));
    trainer_free(t);
    backend_destroy(be);

    snprintf(want, sizeof want, "%s/folder", g_root);
    assert_string_equal(dir, want);
    run_dir_choose(&p, got, sizeof got);
    assert_string_equal(got, want);
    const struct { RunFile f; const char *name; } entries[] = {
        {RUN_PRESET, "preset.ini"},          {RUN_LOSS, "loss.csv"},
        {RUN_CHECKPOINT, "checkpoint.safetensors"}, {RUN_ADAPTER, "adapter.safetensors"},
        {RUN_SAMPLES, "samples"},
    };
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        snprintf(want, sizeof want, "%s/%s", dir, entries[i].name);
        assert_string_equal(run_path(dir, entries[i].f, got, sizeof got), want);
        if (!fs_exists(want)) fail_msg("%s missing", want);
    }
    snprintf(want, sizeof want, "%s/samples/step_000002.png", dir);
    assert_string_equal(run_sample_path(dir, 2, got, sizeof got), want);
    assert_true(fs_exists(want));
    snprintf(want, sizeof want, "%s/class_images/class_007.png", dir);
    assert_string_equal(run_class_image_path(dir, 7, got, sizeof got), want);
    assert_true(run_dir_is_run(dir));
    assert_false(run_dir_is_run(g_root));

    RunSummary s;
    assert_int_equal(run_summary_read(dir, &s), 0);
    assert_true(s.preset_ok);
    assert_string_equal(s.preset.run_name, "folder");
    /* the images were given relative to the working directory; the run folder
     * records them absolute, so `--resume` works from anywhere */
    char cwd[PATH_MAX];
    assert_non_null(realpath(".", cwd));
    snprintf(want, sizeof want, "%s/models/demo/subject2.png", cwd);
    assert_string_equal(s.preset.images[1], want);
    char ini[700], line[800];
    size_t len;
    char *text = fs_read_all(run_path(dir, RUN_PRESET, ini, sizeof ini), FS_TEXT_MAX, &len, err, sizeof err);
    assert_non_null(text);
    snprintf(line, sizeof line, "\nimage = %s\n", want);
    if (!strstr(text, line)) fail_msg("%s lacks '%s'", ini, line + 1);
    free(text);
    assert_string_equal(s.preset.output_dir, g_root);   /* as given: the working directory's */
    assert_int_equal(s.preset.a1, 2);
    assert_int_equal(s.preset.a2, 4);
    assert_int_equal(s.preset.iterations, 3);
    assert_int_equal(s.trainable, fin.trainable);
    assert_int_equal(s.steps, 3);
    assert_non_null(s.loss);
    assert_float_equal(s.loss[2], fin.loss, 1e-6 * fin.loss);
    for (int i = 0; i < s.steps; i++) assert_true(s.loss[i] > 0);
    snprintf(want, sizeof want, "%s/samples/step_000003.png", dir);
    assert_string_equal(s.last_sample, want);   /* the latest of steps 0, 2, 3 */
    assert_int_equal(s.last_step, 3);
    snprintf(want, sizeof want, "%s/samples/step_000000.png", dir);
    assert_string_equal(s.base_sample, want);   /* the base model's */
    assert_true(s.mtime > 0);
    run_summary_free(&s);
    assert_null(s.loss);

    /* not a run folder */
    assert_int_equal(run_summary_read(g_root, &s), -1);
    /* a run folder whose adapter does not fit its model: trainable -1, no
     * losses or samples yet */
    char unfit[512];
    snprintf(unfit, sizeof unfit, "%s/unfit", g_root);
    assert_int_equal(fs_mkdir_p(unfit, err, sizeof err), 0);
    p.a1 = 3;
    assert_int_equal(preset_save(&p, run_path(unfit, RUN_PRESET, got, sizeof got), err, sizeof err), 0);
    assert_int_equal(run_summary_read(unfit, &s), 0);
    assert_int_equal(s.preset.a1, 3);
    assert_int_equal(s.trainable, -1);
    assert_int_equal(s.steps, 0);
    assert_string_equal(s.last_sample, "");
    assert_int_equal(s.last_step, -1);
    assert_string_equal(s.base_sample, "");
    run_summary_free(&s);

    /* unnamed runs: time stamp and knobs */
    p.run_name[0] = 0;
    p.a1 = 4;
    p.a2 = 8;
    p.lr = 3e-3f;
    run_dir_choose(&p, got, sizeof got);
    assert_int_equal(strncmp(got, g_root, strlen(g_root)), 0);
    assert_non_null(strstr(got, "-krona4x8-lr0.003-3it"));
    snprintf(p.adapter, sizeof p.adapter, "lora");
    p.lora_rank = 8;
    run_dir_choose(&p, got, sizeof got);
    assert_non_null(strstr(got, "-lora8-lr0.003-3it"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loss_goes_down),
        cmocka_unit_test(test_resume_is_exact),
        cmocka_unit_test(test_resume_is_exact_te),
        cmocka_unit_test(test_resume_is_exact_buckets),
        cmocka_unit_test(test_buckets_train),
        cmocka_unit_test(test_buckets_square_and_captions),
        cmocka_unit_test(test_te_adapters_train),
        cmocka_unit_test(test_gradient_checkpointing),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_thread_pause_resume),
        cmocka_unit_test(test_prior_preservation),
        cmocka_unit_test(test_run_folder),
    };
    return cmocka_run_group_tests(tests, setup_root, NULL);
}

/* run_dir.c — the run folder's layout (run_dir.h documents it): entry names,
 * paths, creating the folder, loss.csv both ways, and a run's summary. */
#include "training/run_dir.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/fsutil.h"
#include "models/adapter_census.h"
#include "models/model.h"
#include "training/train.h"

static const char *const NAMES[RUN_N_FILES] = {
    [RUN_PRESET] = "preset.ini",
    [RUN_LOSS] = "loss.csv",
    [RUN_CHECKPOINT] = "checkpoint.safetensors",
    [RUN_ADAPTER] = "adapter.safetensors",
    [RUN_SAMPLES] = "samples",
    [RUN_CLASS_IMAGES] = "class_images",
};

#define SAMPLE_PREFIX "step_"
#define SAMPLE_EXT ".png"
#define LOSS_HEADER "step,loss,lr\n"

const char *run_file_name(RunFile f) { return (unsigned)f < RUN_N_FILES ? NAMES[f] : ""; }

char *run_path(const char *dir, RunFile f, char *out, size_t n) {
    snprintf(out, n, "%s/%s", dir, run_file_name(f));
    return out;
}

char *run_sample_path(const char *dir, int step, char *out, size_t n) {
    snprintf(out, n, "%s/%s/" SAMPLE_PREFIX "%06d" SAMPLE_EXT, dir, NAMES[RUN_SAMPLES], step);
    return out;
}

char *run_class_image_path(const char *dir, int i, char *out, size_t n) {
    snprintf(out, n, "%s/%s/class_%03d.png", dir, NAMES[RUN_CLASS_IMAGES], i);
    return out;
}

/* ------------------------------------------------------------ creating --- */

void run_dir_choose(const Preset *p, char *out, size_t n) {
    if (p->run_name[0]) {
        snprintf(out, n, "%s/%s", p->output_dir, p->run_name);
        return;
    }
    char stamp[32];
    time_t now = time(NULL);
    struct tm tmv;
    localtime_r(&now, &tmv);
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tmv);
    locale_t old = uselocale(fs_c_locale()); /* lr0.0006, never lr0,0006 */
    if (strcmp(p->adapter, "lora") == 0)
        snprintf(out, n, "%s/%s-lora%d-lr%g-%dit", p->output_dir, stamp, p->lora_rank, p->lr,
                 p->iterations);
    else
        snprintf(out, n, "%s/%s-krona%dx%d-lr%g-%dit", p->output_dir, stamp, p->a1, p->a2, p->lr,
                 p->iterations);
    uselocale(old);
    /* two runs started in the same second get distinct folders */
    size_t len = strlen(out);
    for (int k = 2; fs_exists(out) && k < 1000; k++) snprintf(out + len, n - len, "-%d", k);
}

int run_dir_create(const Preset *p, char *out, size_t n, char *err, size_t errlen) {
    run_dir_choose(p, out, n);
    char sub[PATH_MAX + 32];
    if (fs_mkdir_p(run_path(out, RUN_SAMPLES, sub, sizeof sub), err, errlen) != 0) return -1;
    return preset_save(p, run_path(out, RUN_PRESET, sub, sizeof sub), err, errlen);
}

int run_dir_is_run(const char *dir) {
    char path[PATH_MAX + 32];
    return fs_exists(run_path(dir, RUN_PRESET, path, sizeof path));
}

int run_dir_remove_stale_temps(const char *dir, char *err, size_t errlen) {
    int n = fs_remove_stale_temps(dir, err, errlen);
    if (n < 0) return -1;
    const RunFile sub[] = {RUN_SAMPLES, RUN_CLASS_IMAGES};
    for (size_t i = 0; i < sizeof sub / sizeof sub[0]; i++) {
        char path[PATH_MAX + 32];
        if (!fs_is_dir(run_path(dir, sub[i], path, sizeof path))) continue;
        int k = fs_remove_stale_temps(path, err, errlen);
        if (k < 0) return -1;
        n += k;
    }
    return n;
}

/* ------------------------------------------------------ preset and loss --- */

int run_preset_load(const char *dir, Preset *p, char *err, size_t errlen) {
    char path[PATH_MAX + 32];
    preset_defaults(p);
    /* the copy holds absolute paths (preset_save); older versions wrote them as
     * given, relative to the working directory, and are read so */
    return preset_load_from(p, run_path(dir, RUN_PRESET, path, sizeof path), NULL, err, errlen);
}

int run_loss_write(const char *dir, const float *loss, const float *lr, int steps, char *err,
                   size_t errlen) {
    size_t cap = 64 + (size_t)(steps > 0 ? steps : 0) * 48, len = 0;
    char *buf = malloc(cap);
    if (!buf) return -1;
    len += (size_t)snprintf(buf + len, cap - len, LOSS_HEADER);
    locale_t old = uselocale(fs_c_locale()); /* "0.5" even after the studio's setlocale */
    for (int i = 0; i < steps; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%d,%.7g,%.7g\n", i + 1, loss[i], lr[i]);
    uselocale(old);
    char path[PATH_MAX + 32];
    int rc = fs_write_atomic(run_path(dir, RUN_LOSS, path, sizeof path), buf, len, err, errlen);
    free(buf);
    return rc;
}

/* The loss column of loss.csv (rows that start with a step number). */
static void read_loss(const char *dir, RunSummary *s) {
    char path[PATH_MAX + 32], err[256];
    size_t n;
    char *text = fs_read_all(run_path(dir, RUN_LOSS, path, sizeof path), FS_TEXT_MAX, &n, err, sizeof err);
    if (!text) return;
    int cap = 0;
    locale_t old = uselocale(fs_c_locale());
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *comma = strchr(line, ',');
        if (!comma || line[0] < '0' || line[0] > '9') continue;   /* header */
        if (s->steps == cap) {
            cap = cap ? cap * 2 : 256;
            float *v = realloc(s->loss, sizeof(float) * (size_t)cap);
            if (!v) break;
            s->loss = v;
        }
        s->loss[s->steps++] = strtof(comma + 1, NULL);
    }
    uselocale(old);
    free(text);
}

/* The latest sample grid (step numbers are zero-padded, so the greatest name)
 * and the base model's, step 0's. */
static void find_samples(const char *dir, RunSummary *s) {
    char samples[PATH_MAX + 32];
    run_path(dir, RUN_SAMPLES, samples, sizeof samples);
    DIR *d = opendir(samples);
    if (!d) return;
    struct dirent *de;
    char best[256] = "";
    while ((de = readdir(d)))
        if (!strncmp(de->d_name, SAMPLE_PREFIX, strlen(SAMPLE_PREFIX)) && strstr(de->d_name, SAMPLE_EXT) &&
            strcmp(de->d_name, best) > 0)
            snprintf(best, sizeof best, "%s", de->d_name);
    closedir(d);
    if (best[0]) {
        snprintf(s->last_sample, sizeof s->last_sample, "%s/%s", samples, best);
        s->last_step = atoi(best + strlen(SAMPLE_PREFIX));
    }
    char base[sizeof s->base_sample];
    if (fs_exists(run_sample_path(dir, 0, base, sizeof base))) snprintf(s->base_sample, sizeof s->base_sample, "%s", base);
}

/* Trainable parameters of p's model and adapter (with text_encoder_adapters,
 * the text encoders' too), -1 if they do not fit. */
static int64_t trainable_of(const Preset *p) {
    UNetConfig cfg;
    char err[512];
    if (model_unet_config(p->model, &cfg, err, sizeof err) != 0) return -1;
    AdapterSpec spec;
    train_adapter_spec(p, &spec);
    AdapterCensus c;
    int64_t n = adapter_census(&cfg, &spec, &c) == 0 && c.ok ? c.trainable : -1;
    adapter_census_free(&c);
    if (n >= 0 && p->text_encoder_adapters) {
        int64_t te = adapter_census_text_model(p->model, &spec, err, sizeof err);
        n = te < 0 ? -1 : n + te;
    }
    return n;
}

int run_summary_read(const char *dir, RunSummary *s) {
    memset(s, 0, sizeof *s);
    char ini[PATH_MAX + 32], err[512];
    run_path(dir, RUN_PRESET, ini, sizeof ini);
    if (!fs_exists(ini)) return -1;
    s->preset_ok = run_preset_load(dir, &s->preset, err, sizeof err) == 0;
    s->trainable = trainable_of(&s->preset);
    s->last_step = -1;
    read_loss(dir, s);
    find_samples(dir, s);
    struct stat st;
    if (stat(ini, &st) == 0) s->mtime = (double)st.st_mtime;
    return 0;
}

void run_summary_free(RunSummary *s) {
    free(s->loss);
    s->loss = NULL;
    s->steps = 0;
}

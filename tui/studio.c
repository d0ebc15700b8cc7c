/* studio.c — the studio's state, main loop and keys. The loop waits at most
 * 50 ms for a key, copies whatever the training thread published (under the
 * Shared mutex, a few memcpys), and redraws only when something changed: one
 * erase + draw into stdscr, one doupdate (ncurses sends the difference), then
 * the sixel streams. The training thread never waits on the UI. */
#include <curses.h>
#include <errno.h>
#include <langinfo.h>
#include <limits.h>
#include <locale.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models/adapter.h"
#include "models/adapter_file.h"
#include "core/fsutil.h"
#include "formats/safetensors.h"
#include "models/model.h"
#include "studio.h"
#include "models/unet.h"

void studio_log(Studio *s, int bad, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->log, sizeof s->log, fmt, ap);
    va_end(ap);
    s->log_bad = bad;
    s->dirty = 1;
}

/* ------------------------------------------------ training-thread side --- */

static void on_progress(void *user, const TrainProgress *p) {
    Shared *sh = user;
    pthread_mutex_lock(&sh->mu);
    sh->prog = *p;
    while (sh->loss.n < p->step && p->step > 0) {
        if (series_push(&sh->loss, p->loss) != 0) break;
    }
    sh->gen++;
    pthread_mutex_unlock(&sh->mu);
}

static void on_sample(void *user, int step, const Image *grid, const char *png_path) {
    Shared *sh = user;
    pthread_mutex_lock(&sh->mu);
    if (hist_push(&sh->samples, step, grid, png_path) != 0) snprintf(sh->log, sizeof sh->log, "preview: out of memory");
    sh->gen++;
    pthread_mutex_unlock(&sh->mu);
}

static void on_log(void *user, const char *line) {
    Shared *sh = user;
    pthread_mutex_lock(&sh->mu);
    snprintf(sh->log, sizeof sh->log, "%s", line);
    sh->gen++;
    pthread_mutex_unlock(&sh->mu);
}

/* ------------------------------------------------------ UI-thread side --- */

/* image i's thumbnail from im (NULL: none, the image is unreadable) */
static void set_thumb(Studio *s, int i, const Image *im) {
    image_free(&s->thumb[i]);
    if (im && thumb_make(im, 128, &s->thumb[i]) != 0) memset(&s->thumb[i], 0, sizeof s->thumb[i]);
    s->thumb_serial++;
}

/* each image's size, as training will load it (a preset's paths are already
 * resolved against its folder: no other place is searched) */
static void refresh_images(Studio *s) {
    for (int i = 0; i < s->p.n_images; i++) {
        Image im;
        char err[256];
        s->img_w[i] = s->img_h[i] = -1;
        if (image_load(s->p.images[i], &im, err, sizeof err) == 0) {
            s->img_w[i] = im.w;
            s->img_h[i] = im.h;
            set_thumb(s, i, &im);
            image_free(&im);
        } else {
            snprintf(s->img_err[i], sizeof s->img_err[i], "%s", err);
            set_thumb(s, i, NULL);
        }
    }
    for (int i = s->p.n_images; i < PRESET_MAX_IMAGES; i++) image_free(&s->thumb[i]);
}

static void preset_changed(Studio *s) {
    params_count(&s->p, &s->pc);
    s->modified = 1;
    s->dirty = 1;
}

static void poll_shared(Studio *s) {
    pthread_mutex_lock(&s->sh.mu);
    if (s->sh.gen != s->seen_gen) {
        s->seen_gen = s->sh.gen;
        s->prog = s->sh.prog;
        for (int i = s->loss.n; i < s->sh.loss.n; i++) series_push(&s->loss, s->sh.loss.v[i]);
        if (s->sh.samples.serial != s->samples.serial) hist_copy(&s->samples, &s->sh.samples);
        if (s->sh.log[0]) {
            snprintf(s->log, sizeof s->log, "%s", s->sh.log);
            s->log_bad = 0;
            s->sh.log[0] = 0;
        }
        s->dirty = 1;
    }
    pthread_mutex_unlock(&s->sh.mu);
    if (s->training && (s->prog.state == TRAIN_DONE || s->prog.state == TRAIN_CANCELLED ||
                        s->prog.state == TRAIN_FAILED)) {
        int rc = trainer_join(s->tr);
        s->training = 0;
        if (rc == 0) studio_log(s, 0, "done: %d steps, final loss %.4f; e exports the adapter; run in %s",
                                s->prog.step, s->prog.loss, s->run_dir);
        else if (rc == 1) studio_log(s, 0, "stopped at step %d; resume: krona-studio train --headless --resume %s",
                                     s->prog.step, s->run_dir);
        else studio_log(s, 1, "training failed: %s", trainer_error(s->tr));
    }
}

static void free_trainer(Studio *s) {
    if (!s->tr) return;
    if (s->training) {
        trainer_cancel(s->tr);
        trainer_join(s->tr);
        s->training = 0;
    }
    trainer_free(s->tr);
    s->tr = NULL;
    if (s->be) backend_destroy(s->be);
    s->be = NULL;
}

static void start_training(Studio *s) {
    if (s->training) { studio_log(s, 1, "already training: space pauses, x stops"); return; }
    char err[1024];
    if (!s->pc.ok) { studio_log(s, 1, "cannot train: %s", s->pc.err); return; }
    if (preset_validate(&s->p, err, sizeof err) != 0) { studio_log(s, 1, "cannot train: %s", err); return; }
    free_trainer(s);
    studio_log(s, 0, "opening the model and the images...");
    layout_draw(s);
    doupdate();
    refresh();
    s->be = backend_open(s->p.device, err, sizeof err);
    if (!s->be) { studio_log(s, 1, "cannot train: %s", err); return; }
    pthread_mutex_lock(&s->sh.mu);
    s->sh.loss.n = 0;
    hist_clear(&s->sh.samples);
    s->sh.log[0] = 0;
    memset(&s->sh.prog, 0, sizeof s->sh.prog);
    pthread_mutex_unlock(&s->sh.mu);
    s->loss.n = 0;
    hist_clear(&s->samples);
    TrainCallbacks cb = {&s->sh, on_progress, on_sample, on_log, NULL};
    s->tr = trainer_create(&s->p, NULL, s->be, &cb, err, sizeof err);
    if (!s->tr) {
        backend_destroy(s->be);
        s->be = NULL;
        studio_log(s, 1, "cannot train: %s", err);
        return;
    }
    snprintf(s->run_dir, sizeof s->run_dir, "%s", trainer_run_dir(s->tr));
    s->prog = trainer_progress(s->tr);
    s->prog.total = s->p.iterations;
    if (trainer_start(s->tr) != 0) {
        studio_log(s, 1, "cannot train: %s", trainer_error(s->tr));
        free_trainer(s);
        return;
    }
    s->training = 1;
    studio_log(s, 0, "training on %s in %s", s->be->device_name(s->be), s->run_dir);
}

static int load_preset_file(Studio *s, const char *path) {
    Preset q;
    char err[1024];
    preset_defaults(&q);
    if (preset_load(&q, path, err, sizeof err) != 0) { studio_log(s, 1, "%s", err); return -1; }
    s->p = q;
    snprintf(s->preset_path, sizeof s->preset_path, "%s", path);
    params_count(&s->p, &s->pc);
    refresh_images(s);
    s->modified = 0;
    for (int i = 0; i < N_PANELS; i++) s->sel[i] = s->top[i] = 0;
    studio_log(s, 0, "opened %s", path);
    return 0;
}

static void begin_edit(Studio *s, int target, const char *label, const char *value) {
    s->mode = MODE_EDIT;
    s->edit_target = target;
    snprintf(s->edit_label, sizeof s->edit_label, "%s", label);
    snprintf(s->edit_buf, sizeof s->edit_buf, "%s", value);
    s->edit_pos = (int)strlen(s->edit_buf);
    curs_set(1);
    s->dirty = 1;
}

static void ask(Studio *s, ConfirmKind k, const char *msg) {
    s->mode = MODE_CONFIRM;
    s->confirm = k;
    snprintf(s->confirm_msg, sizeof s->confirm_msg, "%s  (y/n)", msg);
    s->dirty = 1;
}

static void do_save(Studio *s, const char *path) {
    char err[1024];
    if (preset_save(&s->p, path, err, sizeof err) != 0) { studio_log(s, 1, "save: %s", err); return; }
    snprintf(s->preset_path, sizeof s->preset_path, "%s", path);
    s->modified = 0;
    studio_log(s, 0, "saved %s", path);
}

static void do_export(Studio *s, const char *path) {
    char err[1024], meta[256];
    if (!s->tr) { studio_log(s, 1, "export: nothing trained yet (t starts training)"); return; }
    if (s->training && s->prog.state != TRAIN_PAUSED) {
        studio_log(s, 1, "export: pause (space) or let training finish first");
        return;
    }
    snprintf(meta, sizeof meta, "{\"base_model\":\"%s\",\"steps\":\"%d\"}", s->p.model, s->prog.step);
    const AdapterSet *set = unet_adapters(trainer_model(s->tr)->unet);
    /* with text_encoder_adapters, their lora_te_ keys go in the same file */
    int dtype = st_float_dtype_parse(s->p.export_dtype); /* the preset's export_dtype */
    if (model_save_adapter(trainer_model(s->tr), path, meta, dtype, err, sizeof err) != 0) {
        studio_log(s, 1, "export: %s", err);
        return;
    }
    /* A1111, ComfyUI and sd.cpp apply any a1 x a2; LyCORIS's own loader
     * rebuilds the factor shapes and gets them back only for a1 = a2 <= d/a1
     * (docs/adapter-format.md) */
    int misfit = adapter_set_lycoris_misfits(set, NULL, 0);
    if (misfit) /* the note first: the log line is cut at the screen's width */
        studio_log(s, 0, "adapter exported (LyCORIS's own loader cannot rebuild A %dx%d on %d/%d "
                   "layers: it needs a1 = a2 <= d/a1; A1111, ComfyUI, sd.cpp load it) to %s, step %d",
                   set->spec.a1, set->spec.a2, misfit, set->n, path, s->prog.step);
    else studio_log(s, 0, "adapter exported to %s (step %d, %s)", path, s->prog.step, s->p.export_dtype);
}

static void add_image(Studio *s, const char *path) {
    Image im;
    char err[512];
    if (s->p.n_images >= PRESET_MAX_IMAGES) { studio_log(s, 1, "at most %d images", PRESET_MAX_IMAGES); return; }
    if (strlen(path) >= PRESET_PATH_MAX) { studio_log(s, 1, "%s: path too long", path); return; }
    if (image_load(path, &im, err, sizeof err) != 0) { studio_log(s, 1, "not added: %s", err); return; }
    int i = s->p.n_images++;
    snprintf(s->p.images[i], PRESET_PATH_MAX, "%s", path);
    s->img_w[i] = im.w;
    s->img_h[i] = im.h;
    set_thumb(s, i, &im);
    image_free(&im);
    s->sel[PANEL_INPUTS] = i;
    preset_changed(s);
    studio_log(s, 0, "added %s (%dx%d)", path, s->img_w[i], s->img_h[i]);
}

static void remove_image(Studio *s) {
    int i = s->sel[PANEL_INPUTS];
    if (s->focus != PANEL_INPUTS || i >= s->p.n_images) {
        studio_log(s, 1, "select an image in Inputs first (Tab / arrows), then d");
        return;
    }
    char name[PRESET_PATH_MAX];
    snprintf(name, sizeof name, "%s", s->p.images[i]);
    image_free(&s->thumb[i]);
    for (int k = i; k + 1 < s->p.n_images; k++) {
        memcpy(s->p.images[k], s->p.images[k + 1], PRESET_PATH_MAX);
        s->img_w[k] = s->img_w[k + 1];
        s->img_h[k] = s->img_h[k + 1];
        s->thumb[k] = s->thumb[k + 1];
    }
    s->p.n_images--;
    memset(&s->thumb[s->p.n_images], 0, sizeof s->thumb[0]);
    s->thumb_serial++;
    preset_changed(s);
    studio_log(s, 0, "removed %s", name);
}

/* Enter: edit the selected row */
static void edit_selected(Studio *s) {
    int r = s->sel[s->focus];
    char v[1024];
    if (s->focus == PANEL_INPUTS) {
        if (r >= s->p.n_images) {
            picker_open(&s->picker, PICK_IMAGE, s->config_dir[0] ? "." : ".");
            s->mode = MODE_PICKER;
        } else begin_edit(s, EDIT_IMAGE, "image path", s->p.images[r]);
    } else if (s->focus == PANEL_PROMPT) {
        if (r == 0) begin_edit(s, EDIT_INSTANCE, "instance prompt", s->p.instance_prompt);
        else if (r == 1) begin_edit(s, EDIT_CLASS, "class prompt", s->p.class_prompt);
        else begin_edit(s, EDIT_SAMPLE_PROMPT, "sample prompt (empty removes)",
                        r - 2 < s->p.n_sample_prompts ? s->p.sample_prompts[r - 2] : "");
    } else {
        knob_format(&s->p, r, v, sizeof v);
        begin_edit(s, EDIT_KNOB, knob_label(r), v);
    }
}

static void commit_edit(Studio *s) {
    char err[1024], a[1200];
    int r = s->sel[s->focus];
    const char *v = s->edit_buf;
    Preset q = s->p;
    int rc = 0;
    switch (s->edit_target) {
    case EDIT_IMAGE: {
        Image im;
        if (image_load(v, &im, err, sizeof err) != 0) { studio_log(s, 1, "image unchanged: %s", err); return; }
        image_free(&im);
        snprintf(s->p.images[r], PRESET_PATH_MAX, "%s", v);
        refresh_images(s);
        preset_changed(s);
        return;
    }
    case EDIT_INSTANCE: snprintf(a, sizeof a, "data.instance_prompt=%s", v); rc = preset_set(&q, a, err, sizeof err); break;
    case EDIT_CLASS: snprintf(a, sizeof a, "data.class_prompt=%s", v); rc = preset_set(&q, a, err, sizeof err); break;
    case EDIT_SAMPLE_PROMPT: {
        int i = r - 2;
        if (!v[0]) {
            if (i < q.n_sample_prompts) {
                for (int k = i; k + 1 < q.n_sample_prompts; k++) memcpy(q.sample_prompts[k], q.sample_prompts[k + 1], PRESET_TEXT_MAX);
                q.n_sample_prompts--;
            }
        } else if (strlen(v) >= PRESET_TEXT_MAX) { rc = -1; snprintf(err, sizeof err, "prompt too long (at most %d bytes)", PRESET_TEXT_MAX - 1); }
        else {
            if (i >= q.n_sample_prompts) i = q.n_sample_prompts++;
            snprintf(q.sample_prompts[i], PRESET_TEXT_MAX, "%s", v);
        }
        break;
    }
    case EDIT_KNOB: snprintf(a, sizeof a, "%s=%s", knob_key(r), v); rc = preset_set(&q, a, err, sizeof err); break;
    case EDIT_SAVE:
        if (!v[0]) return;
        snprintf(s->pending_path, sizeof s->pending_path, "%s", v);
        if (fs_exists(v)) {
            snprintf(a, sizeof a, "overwrite %s?", v);
            ask(s, CONFIRM_OVERWRITE, a);
        } else do_save(s, v);
        return;
    case EDIT_EXPORT:
        if (!v[0]) return;
        snprintf(s->pending_path, sizeof s->pending_path, "%s", v);
        if (fs_exists(v)) {
            snprintf(a, sizeof a, "overwrite %s?", v);
            ask(s, CONFIRM_EXPORT, a);
        } else do_export(s, v);
        return;
    }
    if (rc != 0) { studio_log(s, 1, "%s", err); return; }
    s->p = q;
    preset_changed(s);
    studio_log(s, 0, "set");
}

/* model = PATH from the model picker: the knobs' census follows it */
static void set_model(Studio *s, const char *path) {
    char a[1200], err[1024];
    Preset q = s->p;
    snprintf(a, sizeof a, "model.model=%s", path);
    if (preset_set(&q, a, err, sizeof err) != 0) { studio_log(s, 1, "%s", err); return; }
    s->p = q;
    preset_changed(s);
    if (s->pc.ok) studio_log(s, 0, "model = %s", path);
    else studio_log(s, 1, "model = %s: %s", path, s->pc.err);
}

static void edit_key(Studio *s, int ch) {
    int len = (int)strlen(s->edit_buf);
    if (ch == 27) { s->mode = MODE_MAIN; curs_set(0); studio_log(s, 0, "cancelled"); return; }
    if (ch == '\n' || ch == '\r' || ch == KEY_ENTER) {
        s->mode = MODE_MAIN;
        curs_set(0);
        commit_edit(s);
        s->dirty = 1;
        return;
    }
    if ((ch == KEY_BACKSPACE || ch == 127 || ch == 8) && s->edit_pos > 0) {
        memmove(s->edit_buf + s->edit_pos - 1, s->edit_buf + s->edit_pos, (size_t)(len - s->edit_pos + 1));
        s->edit_pos--;
    } else if (ch == KEY_DC && s->edit_pos < len) {
        memmove(s->edit_buf + s->edit_pos, s->edit_buf + s->edit_pos + 1, (size_t)(len - s->edit_pos));
    } else if (ch == KEY_LEFT && s->edit_pos > 0) s->edit_pos--;
    else if (ch == KEY_RIGHT && s->edit_pos < len) s->edit_pos++;
    else if (ch == KEY_HOME || ch == 1) s->edit_pos = 0;
    else if (ch == KEY_END || ch == 5) s->edit_pos = len;
    else if (ch == 21) { s->edit_buf[0] = 0; s->edit_pos = 0; }   /* Ctrl-U */
    else if (ch >= 32 && ch < 256 && ch != 127 && len + 1 < (int)sizeof s->edit_buf) {
        memmove(s->edit_buf + s->edit_pos + 1, s->edit_buf + s->edit_pos, (size_t)(len - s->edit_pos + 1));
        s->edit_buf[s->edit_pos++] = (char)ch;
    }
    s->dirty = 1;
}

static void confirm_key(Studio *s, int ch) {
    s->mode = MODE_MAIN;
    s->dirty = 1;
    if (ch != 'y' && ch != 'Y') { studio_log(s, 0, "cancelled"); return; }
    switch (s->confirm) {
    case CONFIRM_STOP:
        if (s->tr && s->training) { trainer_cancel(s->tr); studio_log(s, 0, "stopping at the next step..."); }
        break;
    case CONFIRM_QUIT: s->quit = 1; break;
    case CONFIRM_OVERWRITE: do_save(s, s->pending_path); break;
    case CONFIRM_EXPORT: do_export(s, s->pending_path); break;
    default: break;
    }
}

static void dir_of(const char *path, char *out, size_t n) {
    snprintf(out, n, "%s", path);
    char *sl = strrchr(out, '/');
    if (sl) *sl = 0;
    else snprintf(out, n, ".");
}

static void main_key(Studio *s, int ch) {
    int n = panel_rows(s, s->focus);
    int *sel = &s->sel[s->focus];
    char err[512], path[1100];
    switch (ch) {
    case KEY_UP: case 'k':
        if (*sel > 0) (*sel)--;
        else if (s->focus > 0) { s->focus--; s->sel[s->focus] = panel_rows(s, s->focus) - 1; }
        break;
    case KEY_DOWN: case 'j':
        if (*sel < n - 1) (*sel)++;
        else if (s->focus < N_PANELS - 1) { s->focus++; s->sel[s->focus] = 0; }
        break;
    case KEY_LEFT: case 'h': case KEY_BTAB: s->focus = (PanelId)((s->focus + N_PANELS - 1) % N_PANELS); break;
    case KEY_RIGHT: case 'l': case '\t': s->focus = (PanelId)((s->focus + 1) % N_PANELS); break;
    case '\n': case '\r': case KEY_ENTER: edit_selected(s); break;
    case '+': case '=': case '-': case '>': case '<': case KEY_SRIGHT: case KEY_SLEFT: case '_': {
        if (s->focus != PANEL_KNOBS) { studio_log(s, 1, "+/- change knobs: move to the Knobs panel"); break; }
        int dir = (ch == '+' || ch == '=' || ch == '>' || ch == KEY_SRIGHT) ? 1 : -1;
        int big = ch == '>' || ch == '<' || ch == KEY_SRIGHT || ch == KEY_SLEFT || ch == '_';
        if (knob_step(&s->p, *sel, dir, big, err, sizeof err) != 0) studio_log(s, 1, "%s", err);
        else {
            preset_changed(s);
            char v[600];
            knob_format(&s->p, *sel, v, sizeof v);
            if (s->pc.ok) studio_log(s, 0, "%s = %s", knob_label(*sel), v);
            else studio_log(s, 1, "%s = %s: %s", knob_label(*sel), v, s->pc.err);
        }
        break;
    }
    case 't': start_training(s); break;
    case ' ':
        if (!s->training) { studio_log(s, 1, "not training (t starts)"); break; }
        if (s->prog.state == TRAIN_PAUSED) { trainer_pause(s->tr, 0); studio_log(s, 0, "resumed"); }
        else { trainer_pause(s->tr, 1); studio_log(s, 0, "pausing at the next step..."); }
        break;
    case 'x':
        if (!s->training) { studio_log(s, 1, "not training"); break; }
        ask(s, CONFIRM_STOP, "stop training? (the checkpoint lets you resume)");
        break;
    case 'g':
        if (!s->training) { studio_log(s, 1, "not training: samples come from a running trainer"); break; }
        trainer_request_sample(s->tr);
        studio_log(s, 0, "sampling at the next step...");
        break;
    case 'o':
        dir_of(s->preset_path, path, sizeof path);
        picker_open(&s->picker, PICK_PRESET, path);
        s->mode = MODE_PICKER;
        break;
    case 's': begin_edit(s, EDIT_SAVE, "save preset as", s->preset_path); break;
    case 'i':
        if (s->p.n_images > 0) dir_of(s->p.images[s->p.n_images - 1], path, sizeof path);
        else snprintf(path, sizeof path, ".");
        picker_open(&s->picker, PICK_IMAGE, path);
        s->mode = MODE_PICKER;
        break;
    case 'd': remove_image(s); break;
    case 'm':
        if (s->training) { studio_log(s, 1, "the model cannot change while training"); break; }
        if (fs_exists(s->p.model)) dir_of(s->p.model, path, sizeof path);
        else snprintf(path, sizeof path, ".");
        picker_open(&s->picker, PICK_MODEL, path);
        s->mode = MODE_PICKER;
        break;
    case 'e': {
        if (!s->tr) { studio_log(s, 1, "export: nothing trained yet (t starts training)"); break; }
        const char *b = strrchr(s->run_dir, '/');
        snprintf(path, sizeof path, "%s.safetensors", b ? b + 1 : s->run_dir);
        begin_edit(s, EDIT_EXPORT, "export adapter to", path);
        break;
    }
    case '?': s->mode = MODE_HELP; break;
    case 'r':
        runs_open(&s->runs, s->p.output_dir);
        s->mode = MODE_RUNS;
        break;
    case 'q':
        if (s->training) ask(s, CONFIRM_QUIT, "training is running: stop it and quit?");
        else s->quit = 1;
        break;
    case 12: clearok(curscr, TRUE); s->gfx.force = 1; break;   /* Ctrl-L */
    default: return;
    }
    s->dirty = 1;
}

static void handle_key(Studio *s, int ch) {
    if (ch == KEY_RESIZE) { s->gfx.force = 1; s->dirty = 1; return; }
    UiMode before = s->mode;
    char path[1100];
    switch (s->mode) {
    case MODE_EDIT: edit_key(s, ch); break;
    case MODE_CONFIRM: confirm_key(s, ch); break;
    case MODE_HELP: s->mode = MODE_MAIN; break;
    case MODE_PICKER: {
        int rc = picker_key(&s->picker, ch, path, sizeof path);
        if (rc != 0) s->mode = MODE_MAIN;
        if (rc == 1) {
            if (s->picker.kind == PICK_IMAGE) add_image(s, path);
            else if (s->picker.kind == PICK_MODEL) set_model(s, path);
            else load_preset_file(s, path);
        }
        break;
    }
    case MODE_RUNS: {
        int rc = runs_key(&s->runs, ch, path, sizeof path);
        if (rc != 0) s->mode = MODE_MAIN;
        if (rc == 2) load_preset_file(s, path);
        break;
    }
    default: main_key(s, ch);
    }
    if (s->mode != before) s->gfx.force = 1;   /* overlays came or went: repaint pictures */
    s->dirty = 1;
}

static void draw(Studio *s) {
    gfx_begin_frame(&s->gfx);
    if (s->mode == MODE_PICKER) picker_draw(&s->picker, s->colour);
    else if (s->mode == MODE_RUNS) runs_draw(&s->runs, &s->gfx, s->colour);
    else {
        layout_draw(s);
        if (s->mode == MODE_HELP) {
            gfx_begin_frame(&s->gfx);   /* no pictures over the overlay */
            help_draw(s->colour);
        }
    }
    wnoutrefresh(stdscr);
    gfx_prepare(&s->gfx);
    doupdate();
    gfx_flush(&s->gfx);
}

static void init_colours(Studio *s) {
    s->colour = has_colors();
    if (!s->colour) return;
    start_color();
    use_default_colors();
    init_pair(CP_TITLE, COLOR_BLACK, COLOR_CYAN);
    init_pair(CP_FOCUS, COLOR_CYAN, -1);
    init_pair(CP_BAD, COLOR_RED, -1);
    init_pair(CP_GOOD, COLOR_GREEN, -1);
    init_pair(CP_DIM, COLOR_BLUE, -1);
    init_pair(CP_RAW, COLOR_BLUE, -1);
    init_pair(CP_SMOOTH, COLOR_YELLOW, -1);
    init_pair(CP_KEY, COLOR_BLACK, COLOR_WHITE);
    init_pair(CP_WARN, COLOR_YELLOW, -1);
}

static void config_paths(Studio *s) {
    const char *x = getenv("XDG_CONFIG_HOME"), *h = getenv("HOME");
    if (x && x[0]) snprintf(s->config_dir, sizeof s->config_dir, "%s/krona-studio", x);
    else if (h && h[0]) snprintf(s->config_dir, sizeof s->config_dir, "%s/.config/krona-studio", h);
    else s->config_dir[0] = 0;
    char err[256];
    if (s->config_dir[0] && fs_mkdir_p(s->config_dir, err, sizeof err) != 0) s->config_dir[0] = 0;
}

/* last session: the preset being edited (session.ini) and where it came from */
static void save_state(Studio *s) {
    if (!s->config_dir[0]) return;
    char path[1200], err[512], buf[1400];
    snprintf(path, sizeof path, "%s/session.ini", s->config_dir);
    preset_save(&s->p, path, err, sizeof err);
    snprintf(path, sizeof path, "%s/state", s->config_dir);
    int n = snprintf(buf, sizeof buf, "preset=%s\nmodified=%d\ngraphics=%s\n", s->preset_path, s->modified,
                     s->gfx.mode == GFX_SIXEL ? "sixel" : s->gfx.mode == GFX_HALFBLOCK ? "halfblock" : "none");
    fs_write_atomic(path, buf, (size_t)n, err, sizeof err);
}

static const char *USAGE = "usage: krona-studio [--preset P.ini] [--graphics sixel|halfblock|none]\n";

int studio_main(int argc, char **argv) {
    const char *preset = NULL;
    int forced = -1;
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--preset") && v) { preset = v; i++; }
        else if (!strcmp(argv[i], "--graphics") && v) {
            i++;
            if (!strcmp(v, "sixel")) forced = GFX_SIXEL;
            else if (!strcmp(v, "halfblock")) forced = GFX_HALFBLOCK;
            else if (!strcmp(v, "none")) forced = GFX_NONE;
            else { fprintf(stderr, "krona-studio: --graphics %s: use sixel, halfblock or none\n", v); return 2; }
        } else {
            fprintf(stderr, "krona-studio: unknown option '%s'\n%s", argv[i], USAGE);
            return 2;
        }
    }
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        fprintf(stderr, "krona-studio: the studio needs a terminal; for scripts use `krona-studio train --headless`\n");
        return 2;
    }
    Studio *s = calloc(1, sizeof *s);
    if (!s) return 1;
    pthread_mutex_init(&s->sh.mu, NULL);
    char path[1024];
    if (!preset) {
        if (model_find_data("presets/default.ini", path, sizeof path) != 0) {
            char where[4 * PATH_MAX];
            model_data_where(where, sizeof where);
            fprintf(stderr, "krona-studio: presets/default.ini is in none of: %s; reinstall (make install), set "
                    "KRONA_HOME to the folder holding presets/, or give --preset P.ini\n", where);
            free(s);
            return 2;
        }
        preset = path;
    }
    preset_defaults(&s->p);
    char err[1024];
    if (preset_load(&s->p, preset, err, sizeof err) != 0) {
        fprintf(stderr, "krona-studio: %s\n", err);
        free(s);
        return 2;
    }
    snprintf(s->preset_path, sizeof s->preset_path, "%s", preset);
    params_count(&s->p, &s->pc);
    refresh_images(s);
    config_paths(s);

    setlocale(LC_ALL, "");
    if (strcmp(nl_langinfo(CODESET), "UTF-8") != 0) setlocale(LC_CTYPE, "C.UTF-8");
    int cw = 0, chh = 0;
    GfxMode gm = forced >= 0 ? (GfxMode)forced : gfx_detect(&cw, &chh);
    if (forced == GFX_SIXEL) gfx_detect(&cw, &chh);   /* still want the cell size */
    set_escdelay(25);
    initscr();
    cbreak();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    curs_set(0);
    timeout(50);
    init_colours(s);
    gfx_init(&s->gfx, gm, cw, chh);
    studio_log(s, 0, "%s: ? shows every key", preset);
    s->dirty = 1;
    while (!s->quit) {
        poll_shared(s);
        if (s->dirty) {
            s->dirty = 0;
            draw(s);
        }
        int ch = getch();
        if (ch != ERR) {
            handle_key(s, ch);
            /* drain a burst of keys (pasted text, key repeat) before drawing */
            int more = 0;
            nodelay(stdscr, TRUE);
            while (!s->quit && more++ < 64 && (ch = getch()) != ERR) handle_key(s, ch);
            timeout(50);
        }
    }
    free_trainer(s);
    save_state(s);
    endwin();
    gfx_free(&s->gfx);
    picker_free(&s->picker);
    runs_free(&s->runs);
    series_free(&s->loss);
    series_free(&s->sh.loss);
    hist_clear(&s->samples);
    hist_clear(&s->sh.samples);
    for (int i = 0; i < PRESET_MAX_IMAGES; i++) image_free(&s->thumb[i]);
    pthread_mutex_destroy(&s->sh.mu);
    free(s);
    return 0;
}

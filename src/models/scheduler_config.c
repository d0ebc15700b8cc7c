/* scheduler_config.c — read and write diffusers' scheduler_config.json. */
#include "models/scheduler_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "formats/json.h"

void schedule_sd_default(Schedule *s) {
    schedule_make(s, BETAS_SCALED_LINEAR, 1000, 0.00085, 0.012, PRED_EPSILON);
}

int schedule_from_json_text(const char *json, Schedule *s, char *err, size_t errlen) {
    char jerr[200];
    JsonValue *root = json_parse(json, strlen(json), jerr, sizeof jerr);
    if (!root) { snprintf(err, errlen, "not JSON (%s)", jerr); return -1; }
    int rc = -1, T = 1000;
    double b0 = 0.00085, b1 = 0.012;
    BetaSchedule kind = BETAS_SCALED_LINEAR;
    Prediction pred = PRED_EPSILON;
    const JsonValue *v;
    if (root->type != JSON_OBJECT) { snprintf(err, errlen, "not a JSON object"); goto done; }
    if ((v = json_get(root, "num_train_timesteps"))) {
        if (v->type != JSON_NUMBER || v->number < 2 || v->number > DIFFUSION_MAX_T ||
            v->number != (int)v->number) {
            snprintf(err, errlen, "num_train_timesteps must be an integer in 2..%d", DIFFUSION_MAX_T);
            goto done;
        }
        T = (int)v->number;
    }
    if ((v = json_get(root, "beta_start"))) {
        if (v->type != JSON_NUMBER || !(v->number > 0 && v->number < 1)) {
            snprintf(err, errlen, "beta_start must be a number in (0, 1)");
            goto done;
        }
        b0 = v->number;
    }
    if ((v = json_get(root, "beta_end"))) {
        if (v->type != JSON_NUMBER || !(v->number > 0 && v->number < 1)) {
            snprintf(err, errlen, "beta_end must be a number in (0, 1)");
            goto done;
        }
        b1 = v->number;
    }
    if (b1 < b0) { snprintf(err, errlen, "beta_end %g is below beta_start %g", b1, b0); goto done; }
    if ((v = json_get(root, "beta_schedule"))) {
        if (v->type == JSON_STRING && strcmp(v->string, "scaled_linear") == 0) kind = BETAS_SCALED_LINEAR;
        else if (v->type == JSON_STRING && strcmp(v->string, "linear") == 0) kind = BETAS_LINEAR;
        else {
            snprintf(err, errlen, "beta_schedule '%s' is not supported; use scaled_linear or linear",
                     v->type == JSON_STRING ? v->string : "?");
            goto done;
        }
    }
    if ((v = json_get(root, "prediction_type"))) {
        if (v->type == JSON_STRING && strcmp(v->string, "epsilon") == 0) pred = PRED_EPSILON;
        else if (v->type == JSON_STRING && strcmp(v->string, "v_prediction") == 0) pred = PRED_V;
        else {
            snprintf(err, errlen, "prediction_type '%s' is not supported; use epsilon or v_prediction",
                     v->type == JSON_STRING ? v->string : "?");
            goto done;
        }
    }
    schedule_make(s, kind, T, b0, b1, pred);
    rc = 0;
done:
    json_free(root);
    return rc;
}

int schedule_from_json(const char *path, Schedule *s, char *err, size_t errlen) {
    size_t n;
    char e[300];
    char *text = fs_read_all(path, FS_TEXT_MAX, &n, e, sizeof e);
    if (!text) { snprintf(err, errlen, "%s", e); return -1; }
    int rc = schedule_from_json_text(text, s, e, sizeof e);
    free(text);
    if (rc) snprintf(err, errlen, "%s: %s — fix that key (diffusers' scheduler_config.json names)", path, e);
    return rc;
}

int schedule_save_json(const char *path, const Schedule *s, char *err, size_t errlen) {
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "{\n  \"_class_name\": \"DDIMScheduler\",\n  \"num_train_timesteps\": %d,\n"
                     "  \"beta_start\": %.17g,\n  \"beta_end\": %.17g,\n  \"beta_schedule\": \"%s\",\n"
                     "  \"prediction_type\": \"%s\",\n  \"set_alpha_to_one\": false,\n"
                     "  \"steps_offset\": 1,\n  \"timestep_spacing\": \"leading\"\n}\n",
                     s->T, s->beta_start, s->beta_end,
                     s->kind == BETAS_LINEAR ? "linear" : "scaled_linear",
                     s->prediction == PRED_V ? "v_prediction" : "epsilon");
    return fs_write_atomic(path, buf, (size_t)n, err, errlen);
}

/* config_json.c — strict config.json reading (config_json.h). */
#include "formats/config_json.h"

#include <stdio.h>
#include <string.h>

static void app(char *b, size_t cap, const char *s) {
    size_t n = strlen(b);
    if (n + 1 < cap) snprintf(b + n, cap - n, "%s", s);
}

static void value_cat(const JsonValue *v, char *b, size_t cap, int depth) {
    char t[256];
    switch (v->type) {
    case JSON_NULL: app(b, cap, "null"); break;
    case JSON_BOOL: app(b, cap, v->boolean ? "true" : "false"); break;
    case JSON_NUMBER: snprintf(t, sizeof t, "%g", v->number); app(b, cap, t); break;
    case JSON_STRING: json_escape(t, sizeof t, v->string); app(b, cap, t); break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        app(b, cap, v->type == JSON_ARRAY ? "[" : "{");
        for (int i = 0; i < v->n; i++) {
            if (i) app(b, cap, ", ");
            if (depth >= 2) { app(b, cap, "..."); break; }
            if (v->type == JSON_OBJECT) {
                json_escape(t, sizeof t, v->keys[i]);
                app(b, cap, t);
                app(b, cap, ": ");
            }
            value_cat(&v->items[i], b, cap, depth + 1);
        }
        app(b, cap, v->type == JSON_ARRAY ? "]" : "}");
        break;
    }
}

/* v as JSON text for a message, cut to fit out with "..." */
void cfg_value_text(const JsonValue *v, char *out, size_t cap) {
    char b[512] = "";
    value_cat(v, b, sizeof b, 0);
    if (strlen(b) >= cap && cap > 4) memcpy(b + cap - 4, "...", 4);
    snprintf(out, cap, "%s", b);
}

/* "<file>: <key> = <value> is not supported (only <only>)"; returns -1 */
int cfg_refuse(CfgReader *r, const char *key, const JsonValue *v, const char *only) {
    char val[100];
    cfg_value_text(v, val, sizeof val);
    snprintf(r->err, r->errlen, "%s: %s = %s is not supported (only %s)", r->src, key, val, only);
    return -1;
}

int cfg_missing(CfgReader *r, const char *key, const char *what) {
    snprintf(r->err, r->errlen, "%s: %s is missing (%s)", r->src, key, what);
    return -1;
}

int cfg_json_int(const JsonValue *v, int *out) {
    if (!v || v->type != JSON_NUMBER || v->number != (double)(int)v->number) return -1;
    *out = (int)v->number;
    return 0;
}

/* an integer >= min; absent keeps *dst; null too when null_ok */
int cfg_read_int(CfgReader *r, const char *key, int min, int null_ok, int *dst) {
    const JsonValue *v = json_get(r->root, key);
    if (!v || (null_ok && v->type == JSON_NULL)) return 0;
    int x;
    if (cfg_json_int(v, &x) || x < min) {
        char only[64];
        snprintf(only, sizeof only, "%s%s", min == 1 ? "a positive integer" :
                 min == 0 ? "an integer >= 0" : "an integer", null_ok ? " or null" : "");
        return cfg_refuse(r, key, v, only);
    }
    *dst = x;
    return 0;
}

int cfg_read_float(CfgReader *r, const char *key, float *dst) {
    const JsonValue *v = json_get(r->root, key);
    if (!v) return 0;
    if (v->type != JSON_NUMBER) return cfg_refuse(r, key, v, "a number");
    *dst = (float)v->number;
    return 0;
}

int cfg_read_bool(CfgReader *r, const char *key, int null_ok, int *dst) {
    const JsonValue *v = json_get(r->root, key);
    if (!v || (null_ok && v->type == JSON_NULL)) return 0;
    if (v->type != JSON_BOOL)
        return cfg_refuse(r, key, v, null_ok ? "true, false or null" : "true or false");
    *dst = v->boolean;
    return 0;
}


JsonValue *cfg_parse_object(const char *text, const char *src, char *err, size_t errlen) {
    char jerr[200];
    JsonValue *root = json_parse(text, strlen(text), jerr, sizeof jerr);
    if (!root) {
        snprintf(err, errlen, "%s: %s", src, jerr);
        return NULL;
    }
    if (root->type != JSON_OBJECT) {
        snprintf(err, errlen, "%s: not a JSON object", src);
        json_free(root);
        return NULL;
    }
    return root;
}

int cfg_check_fields(CfgReader *r, int (*is_field)(const char *key), const char *owner) {
    const JsonValue *root = r->root;
    for (int i = 0; i < root->n; i++) {
        const char *key = root->keys[i];
        for (int j = 0; j < i; j++)
            if (!strcmp(root->keys[j], key)) {
                snprintf(r->err, r->errlen, "%s: field '%s' is given more than once", r->src, key);
                return -1;
            }
        if (key[0] == '_' || is_field(key)) continue;
        snprintf(r->err, r->errlen, "%s: unknown field '%s' (not a %s field; names starting with "
                 "'_' are ignored)", r->src, key, owner);
        return -1;
    }
    return 0;
}

/* json.h — a small JSON reader for safetensors headers and diffusers config.json.
 * Parses the whole document into a tree; errors say where (byte offset) and why. */
#ifndef KRONA_JSON_H
#define KRONA_JSON_H

#include <stddef.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue JsonValue;
struct JsonValue {
    JsonType type;
    int boolean;
    double number;
    char *string;      /* JSON_STRING (NUL-terminated, unescaped UTF-8) */
    int n;             /* JSON_ARRAY / JSON_OBJECT: element count */
    JsonValue *items;  /* elements / member values */
    char **keys;       /* JSON_OBJECT: member names */
};

/* NULL on error with a one-line reason in err ("at byte 17: expected ':'"). */
JsonValue *json_parse(const char *text, size_t len, char *err, size_t errlen);
void json_free(JsonValue *v);
/* Member of an object by name, or NULL (also when v is not an object). */
const JsonValue *json_get(const JsonValue *v, const char *key);
/* Append s to buf as a JSON string literal with escapes; returns chars needed. */
size_t json_escape(char *buf, size_t cap, const char *s);

#endif

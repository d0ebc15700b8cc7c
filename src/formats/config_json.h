/* config_json.h — reading a model's config.json strictly: a value the engine
 * does not compute is refused in one line naming the file, the field, the
 * value and what is supported ("<file>: <key> = <value> is not supported (only
 * <only>)"). One home for the UNet's and the VAE's config readers. */
#ifndef KRONA_CONFIG_JSON_H
#define KRONA_CONFIG_JSON_H

#include <stddef.h>

#include "formats/json.h"

typedef struct CfgReader {
    const JsonValue *root;
    const char *src;   /* the file, for messages */
    char *err;
    size_t errlen;
} CfgReader;

/* text parsed as a JSON object (free with json_free), or NULL with "<src>: why" in err */
JsonValue *cfg_parse_object(const char *text, const char *src, char *err, size_t errlen);
/* Every field given once (Python's json keeps the last of a repeated key,
 * json_get the first: a repeat is refused) and known to is_field; names
 * starting with '_' are metadata and skipped. 0, or -1 with one line naming
 * the field and what it is not a field of (owner, e.g. "diffusers AutoencoderKL"). */
int cfg_check_fields(CfgReader *r, int (*is_field)(const char *key), const char *owner);

/* v as JSON text for a message (nesting below two levels as "..."), cut to fit out */
void cfg_value_text(const JsonValue *v, char *out, size_t cap);
/* the refusal line above; returns -1 */
int cfg_refuse(CfgReader *r, const char *key, const JsonValue *v, const char *only);
/* "<file>: <key> is missing (<what>)"; returns -1 */
int cfg_missing(CfgReader *r, const char *key, const char *what);
/* v is a number with an int value: 0 with it in out, else -1 */
int cfg_json_int(const JsonValue *v, int *out);
/* an integer >= min (1: "a positive integer", 0: "an integer >= 0"); absent keeps
 * *dst; null too when null_ok. 0 or -1 (refused). */
int cfg_read_int(CfgReader *r, const char *key, int min, int null_ok, int *dst);
int cfg_read_float(CfgReader *r, const char *key, float *dst);
int cfg_read_bool(CfgReader *r, const char *key, int null_ok, int *dst);

#endif

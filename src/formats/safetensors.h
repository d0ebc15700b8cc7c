/* safetensors.h — read (mmap) and write .safetensors files.
 * Format: u64 little-endian header length N, N bytes of JSON
 *   {"__metadata__": {str: str}, "name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}
 * then the data buffer; offsets are relative to its start and must tile it
 * exactly (no gaps, no overlaps). st_open validates all of that up front. */
#ifndef KRONA_SAFETENSORS_H
#define KRONA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/half.h" /* the f16 / bf16 conversions */

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100 * 1000 * 1000)   /* the reference implementation's limit */

enum { ST_BOOL, ST_U8, ST_I8, ST_F8_E5M2, ST_F8_E4M3, ST_I16, ST_U16, ST_F16, ST_BF16,
       ST_I32, ST_U32, ST_F32, ST_F64, ST_I64, ST_U64, ST_NDTYPES };

typedef struct {
    char *name;
    int dtype;                 /* ST_F32, ... */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data;          /* into the mapping; may be unaligned in foreign files */
    size_t nbytes;
} StTensor;

typedef struct SafeTensors SafeTensors;

/* NULL with "path: problem" in err. Tensors are listed in header order. Only
 * regular files (fs_open_regular: a FIFO or device is refused, never waited
 * on); the header is at most ST_MAX_HEADER bytes and the tensors must tile
 * the rest of the file exactly, so nothing is read beyond the file. */
SafeTensors *st_open(const char *path, char *err, size_t errlen);
void st_close(SafeTensors *st);
int st_count(const SafeTensors *st);
const StTensor *st_at(const SafeTensors *st, int i);
const StTensor *st_find(const SafeTensors *st, const char *name);
const char *st_metadata(const SafeTensors *st, const char *key);   /* NULL if absent */
int st_metadata_count(const SafeTensors *st);
const char *st_metadata_key(const SafeTensors *st, int i);
/* Convert any float or integer dtype to float (numel values into dst),
 * checking every value on the way (no second pass over multi-GB weights):
 * 0; ST_READ_DTYPE for dtypes without a conversion (F8); ST_READ_NONFINITE
 * when a value is NaN or infinite (or a float64 beyond float's range). No
 * weight, adapter factor or optimiser state that krona-studio loads may hold
 * one: a single NaN turns every sample black. */
#define ST_READ_DTYPE (-1)
#define ST_READ_NONFINITE (-2)
int st_read_f32(const StTensor *t, float *dst);
/* The one line for st_read_f32's failure rc on t, after "path: " (path may be
 * NULL): "tensor 'x' holds NaN (element 12 of 640): the file is damaged or was
 * saved from a run that diverged; ...". */
void st_read_error(const StTensor *t, int rc, const char *path, char *err, size_t errlen);
/* st_read_f32 with st_read_error's message: 0, or -1 with err. */
int st_load_f32(const StTensor *t, float *dst, const char *path, char *err, size_t errlen);
/* The same for a parameter of shape [shape[0..ndim-1]]: t must have that shape,
 * or the same data with trailing 1s added or dropped (a Linear stored as a 1x1
 * conv, as old files do). 0, or -1 with one line naming path and t. */
int st_read_f32_as(const StTensor *t, int ndim, const int64_t *shape, float *dst, const char *path,
                   char *err, size_t errlen);

const char *st_dtype_name(int dtype);
int st_dtype_from_name(const char *name);   /* -1 if unknown */
int st_dtype_size(int dtype);

/* n f32 values -> dtype F32, F16 or BF16 at dst (dst may be src: narrowing in
 * place), each rounded to nearest even (NaN stays NaN, +-inf stays inf).
 * Returns how many finite values became infinite (beyond F16's 65504 or BF16's
 * range); -1 for another dtype. */
int64_t st_from_f32(int dtype, const float *src, int64_t n, void *dst);
/* "f32", "f16", "bf16" -> ST_F32 / ST_F16 / ST_BF16; -1 for anything else. */
int st_float_dtype_parse(const char *s);

/* Writer. Tensors are stored sorted by dtype size (largest first, keeps data
 * aligned) then name; metadata keys sorted; header padded with spaces to a
 * multiple of 8. Add errors (duplicate name, bad shape) are reported by stw_save. */
typedef struct StWriter StWriter;
StWriter *stw_create(void);
/* copies data */
int stw_add_f32(StWriter *w, const char *name, int ndim, const int64_t *shape, const float *data);
/* copies data rounded to dtype (F32, F16 or BF16, st_from_f32); a finite value
 * that does not fit that dtype's range is an add error naming the tensor */
int stw_add_f32_as(StWriter *w, const char *name, int dtype, int ndim, const int64_t *shape,
                   const float *data);
/* references raw data of any dtype (numel * size bytes); it must outlive stw_save */
int stw_add_ref(StWriter *w, const char *name, int dtype, int ndim, const int64_t *shape, const void *data);
int stw_set_metadata(StWriter *w, const char *key, const char *value);
/* the first add error ("tensor 'x': why"), "" when there is none */
const char *stw_error(const StWriter *w);
/* atomic: temp file + fsync + rename */
int stw_save(StWriter *w, const char *path, char *err, size_t errlen);
void stw_free(StWriter *w);

#endif

/* tokenizer.h — prompt -> token ids.
 *
 * Two tokenizers behind one handle:
 *  - CLIP BPE, exactly as OpenAI's simple_tokenizer (SD 1.5 and both SDXL
 *    encoders): 49,408 ids = 256 byte tokens (bytes_to_unicode order), the same
 *    256 + "</w>", one token per merge, then <|startoftext|> 49406 and
 *    <|endoftext|> 49407. Built from CLIP's bpe_simple_vocab_16e6.txt.gz or a
 *    diffusers tokenizer/merges.txt (a vocab.json beside it is checked).
 *  - bytes, for the built-in tiny model: ids 0..255 are the bytes of the
 *    normalised UTF-8 prompt, 256 = BOS, 257 = EOS = pad; vocab 258.
 *
 * Both normalise the prompt the same way: whitespace runs collapse to one
 * space, ends trimmed, letters lower-cased (ASCII, Latin-1, Latin Extended-A,
 * Latin Extended Additional, Greek, Cyrillic, Armenian, fullwidth Latin;
 * other scripts are left as they are). ftfy and HTML unescaping are not done.
 *
 * The handle is read-only after creation: encoding is thread-safe. */
#ifndef KRONA_TOKENIZER_H
#define KRONA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct Tokenizer Tokenizer;

enum { TOK_BYTES_VOCAB = 258 }; /* the byte tokenizer's ids: 256 bytes, BOS, EOS */

/* merges_path: CLIP's bpe_simple_vocab_16e6.txt.gz (gzip), a plain merges.txt,
 * or a folder holding either (a diffusers "tokenizer/" folder). The first line
 * is a "#version" header; at most 48,894 merges are used, their order being the
 * rank. NULL on error with the reason in err. */
Tokenizer *tok_create_clip(const char *merges_path, char *err, size_t errlen);
/* Where CLIP's vocabulary is (tokenizer_find.c): explicit_path (--tokenizer)
 * when given, else model_dir/tokenizer or model_dir (may be NULL), else
 * $KRONA_TOKENIZER, else where SD users already have it: the Hugging Face
 * cache, ComfyUI's comfy/sd1_tokenizer, AUTOMATIC1111's venv and user/system
 * open_clip packages. 0 with the path in out (for tok_create_clip), or -1 with
 * one line naming the places and the command that fetches it. */
int tok_find_clip(const char *explicit_path, const char *model_dir, char *out, size_t n,
                  char *err, size_t errlen);
/* The byte tokenizer (never fails short of out-of-memory). */
Tokenizer *tok_create_bytes(void);
void tok_free(Tokenizer *tok);

/* Ids of text WITHOUT BOS/EOS. *n_out gets the full count even when it exceeds
 * max_ids; then only max_ids are written and -1 is returned with an error.
 * -1 also for text that is not valid UTF-8. ids may be NULL when max_ids is 0
 * (to count). */
int tok_encode(const Tokenizer *tok, const char *text, int32_t *ids, int max_ids,
               int *n_out, char *err, size_t errlen);
/* ids[context_len] = [BOS, ids..., EOS, pad, pad, ...]. -1 with an error naming
 * the prompt and the limit when more than context_len - 2 tokens. *n_out (may be
 * NULL) gets the count up to and including EOS. */
int tok_encode_padded(const Tokenizer *tok, const char *text, int context_len,
                      int32_t *ids, int *n_out, char *err, size_t errlen);

int tok_vocab_size(const Tokenizer *tok);
int tok_bos(const Tokenizer *tok);
int tok_eos(const Tokenizer *tok);
/* Pad id: EOS for CLIP as SD 1.5 uses it; SDXL's OpenCLIP encoder pads with 0
 * ("!"), so callers may change it. */
int tok_pad(const Tokenizer *tok);
void tok_set_pad(Tokenizer *tok, int32_t pad_id);
/* The token's text in byte-unicode form ("photo</w>"), or NULL when out of range.
 * For the byte tokenizer: NULL (ids are raw bytes). */
const char *tok_token_str(const Tokenizer *tok, int id);

#endif

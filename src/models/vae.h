/* vae.h — the VAE of Stable Diffusion (diffusers' AutoencoderKL), forward only:
 * vae_encode (image in [-1, 1] -> latent mean x scaling_factor) and vae_decode
 * (scaled latent -> image) on the Backend op table. Here live the VAEConfig
 * (the built-ins "sd15" and "sdxl" and a strict reader of a diffusers
 * vae/config.json, which refuses any value the passes do not compute), the
 * parameter table (named exactly as diffusers' state_dict, so checkpoints load
 * by name; the old attention names query/key/value/proj_attn load too), the
 * weight loader and the two passes. There is no backward and no adapter: the
 * VAE only turns training images into latents and sampled latents into images.
 * Memory: the weights (83,653,863 floats for sd15/sdxl, 335 MB in f32) and, per
 * call, only the tensors of the layer being computed and its input: each is
 * allocated with be->alloc when made and freed as soon as it is consumed, and
 * nothing is kept between calls. Measured on the CPU backend, SD 1.5 shapes,
 * N = 1, random weights (bench/bench_vae.c; peak_bytes = everything be->alloc
 * held at once): encode 512x512 -> 64x64: 741 MB = 335 weights + 403 activations
 * (a 128-channel 512x512 resnet holds its input, norm output and conv output)
 * + 3 image and latent, 22.6 s on 2 threads; decode 64x64 -> 512x512: 1009 MB =
 * 335 + 671 (the first resnet of the last up block, 256 -> 128 channels at
 * 512x512) + 3, 46.8 s. Activations scale with N and with the pixel count
 * (vae_memory_plan computes them for any size: 1611 MB encode, 2684 MB decode at
 * 1024x1024). The CPU backend's im2col scratch is at most 64 MB per thread and
 * counted in its peak_bytes (decode at 512x512: 1155 MB, 1.07 GB RSS); on CUDA
 * the convolution's workspace goes through the allocator. When the activations
 * would not fit, the passes run in overlapping tiles (vae_set_tiling; decode at
 * 512x512 in 9 tiles of 256 px: 600 MB peak_bytes).
 * vae_encode returns the latent MEAN (see there). */
#ifndef KRONA_VAE_H
#define KRONA_VAE_H

#include <stddef.h>
#include <stdint.h>
#include "core/backend.h"

#define VAE_MAX_LEVELS 6
#define VAE_NAME_MAX 128

typedef struct VAEConfig {
    char name[32];               /* "sd15", "sdxl", or the config file's stem */
    int in_channels, out_channels; /* image channels (3) */
    int latent_channels;         /* 4 */
    int n_levels;                /* len(block_out_channels); the latent is 2^(n_levels-1) smaller */
    int block_out_channels[VAE_MAX_LEVELS];
    int layers_per_block;        /* encoder resnets per block; the decoder has one more */
    int norm_num_groups;
    int sample_size;             /* default image size (metadata) */
    float scaling_factor;        /* 0.18215 SD 1.5, 0.13025 SDXL */
    int force_upcast;            /* metadata here: the passes are f32 */
    int use_quant_conv, use_post_quant_conv;
    int mid_block_add_attention;
} VAEConfig;

/* "sd15" or "sdxl" (both: channels 128,256,512,512, 2 layers per block,
 * latent 4, 32 groups; scaling 0.18215 and 0.13025). 0, or -1 if unknown. */
int vae_config_builtin(const char *name, VAEConfig *cfg);
/* Parse a diffusers vae/config.json (AutoencoderKL). A field that changes the
 * computation is accepted only at the values implemented; a field diffusers'
 * AutoencoderKL does not have is refused unless its name starts with '_'.
 * 0, or -1 with one line: "<file>: <field> = <value> is not supported (only
 * <supported>)" (or "<file>: <field> is missing (...)"). The _text form names
 * the file "config.json". */
int vae_config_from_json(const char *path, VAEConfig *cfg, char *err, size_t errlen);
int vae_config_from_json_text(const char *json, VAEConfig *cfg, char *err, size_t errlen);
/* A built-in name, a diffusers model folder (its vae/config.json, or a
 * config.json in it), or a config.json file. 0, or -1 with a one-line err. */
int vae_config_resolve(const char *model, VAEConfig *cfg, char *err, size_t errlen);

/* One parameter, named as diffusers names it. */
typedef struct VAEParam {
    char name[VAE_NAME_MAX];
    int ndim;
    int64_t shape[4];
    int64_t numel;
    float *data;  /* device pointer (NULL in a table-only listing) */
} VAEParam;

/* Parameter table without allocating weights; caller frees *params. 0 / -1. */
int vae_param_table(const VAEConfig *cfg, VAEParam **params, int *n_params);

typedef struct VAE VAE;

/* Allocate a VAE with zeroed weights on the backend. NULL + err on failure. */
VAE *vae_create(const VAEConfig *cfg, Backend *be, char *err, size_t errlen);
void vae_free(VAE *v);
const VAEConfig *vae_config(const VAE *v);
Backend *vae_backend(const VAE *v);
int vae_n_params(const VAE *v);
VAEParam *vae_param_at(VAE *v, int i);
VAEParam *vae_param(VAE *v, const char *name); /* NULL if unknown */
int64_t vae_n_base_params(const VAE *v);

/* torch-default-like init (U(+-1/sqrt(fan_in)) weights, zero biases, unit
 * norms), deterministic in seed: for tests and timings, not a usable model. */
void vae_init_random(VAE *v, uint64_t seed);
/* Load every parameter by name from a .safetensors (F32/F16/BF16), names behind
 * `prefix` (e.g. "vae."); prefix NULL: the bare names or "vae.", whichever the
 * file has. The mid-block attentions may use diffusers' old names (query, key,
 * value, proj_attn) and the linears may be stored as 1x1 convolutions. A
 * missing or mis-shaped tensor fails naming itself. 0, or -1 with err. */
int vae_load_safetensors(VAE *v, const char *path, const char *prefix, char *err, size_t errlen);

/* Encode. x[N,in,H,W] (device, values in [-1, 1]; H, W multiples of
 * 2^(n_levels-1)) -> z[N,latent,H/f,W/f] (device), f = 2^(n_levels-1) (8 for SD).
 * Returns the MEAN of the latent distribution times scaling_factor: the
 * deterministic latent (DreamBooth trainers usually draw a sample, mean + std *
 * noise, each step; we use the mean). With noise (device, the shape of z,
 * standard normal; may be NULL) it returns (mean + std * noise) * scaling_factor
 * instead, std = exp(0.5 clamp(logvar, -30, 20)) as diffusers.
 * 0, or -1 (see vae_last_error). */
int vae_encode(VAE *v, const float *x, float *z, const float *noise, int N, int H, int W);
/* Decode. z[N,latent,h,w] (device) as vae_encode returns it, i.e. still times
 * scaling_factor: the function divides by it -> x[N,out,f*h,f*w] (device), in
 * about [-1, 1], not clamped. 0, or -1 (see vae_last_error). */
int vae_decode(VAE *v, const float *z, float *x, int N, int h, int w);
/* ---- tiling ----
 * vae_encode and vae_decode can run in overlapping square tiles (diffusers'
 * enable_tiling, in spirit): encode cuts the image into tiles of tile_px pixels,
 * decode the latent into tiles of tile_px / f cells; each tile goes through the
 * whole network on its own, so activations are those of one tile. Tiles
 * overlap by a quarter of their side (in latent cells, at least one); along
 * each axis the first starts at 0, the last ends at the edge and the others are
 * spread evenly. Outputs (encode: the latent moments, mean and logvar; decode:
 * pixels) are blended: along an axis, a tile's weight is 1 except across each
 * overlap with a neighbour, where it ramps linearly, (y - start + 1/2) / overlap
 * up and mirrored down; weights are divided by their sum over the tiles at that
 * position (so they add up to 1, where three tiles meet too), and a pixel's
 * weight is the product of its row's and its column's. Each tile's group norms
 * see only that tile, so a tiled result differs slightly from the untiled one.
 * Modes: off; on (tile when the image is larger than a tile); auto (the
 * default: tile when the image is larger than a tile and the untiled pass's
 * activations, vae_memory_plan, exceed the memory budget). */
enum { VAE_TILING_OFF = 0, VAE_TILING_ON = 1, VAE_TILING_AUTO = 2 };
#define VAE_TILE_PX_DEFAULT 512
/* "off" | "on" | "auto" -> VAE_TILING_*; -1 for anything else */
int vae_tiling_parse(const char *s);
/* mode VAE_TILING_*; tile_px: the tile side in image pixels, a multiple of f
 * from 4 f to 16384, or 0 for VAE_TILE_PX_DEFAULT. 0, or -1 with one line
 * naming the bad value and what is allowed (the VAE is unchanged). */
int vae_set_tiling(VAE *v, int mode, int tile_px, char *err, size_t errlen);
/* The memory `auto` lets one untiled call use, in bytes. 0 (the default): half
 * of what the backend reports free at each call (be->free_bytes: the CPU's
 * MemAvailable, a GPU's free memory); no limit when it cannot say. */
void vae_set_memory_budget(VAE *v, int64_t bytes);
/* The mode (VAE_TILING_*) and, in *tile_px (may be NULL), the tile side. */
int vae_get_tiling(const VAE *v, int *tile_px);
/* Device memory one untiled vae_encode (decode = 0; an image of N x H x W
 * pixels) or vae_decode (decode = 1; a latent of N x H x W cells) allocates
 * besides the weights and the caller's input and output: the peak of its
 * activations and norm statistics, in bytes (SD 1.5 at 512x512: 403 MB encode,
 * 671 MB decode). 0, or -1 on a bad config or shape. */
int vae_memory_plan(const VAEConfig *cfg, int decode, int N, int H, int W, int64_t *act_bytes);
/* Tiles of a latent of h x w cells at the VAE's tile size (1: one tile, the
 * untiled pass); -1 on a bad size. */
int vae_tile_count(const VAE *v, int h, int w);
/* Tile k (row-major) of that tiling: rect = {y0, x0, rows, cols} in latent
 * cells; weights (may be NULL) receives its blend weights over its output,
 * row-major, rows x cols floats for encode (decode = 0, the latent) or
 * (f rows) x (f cols) for decode (pixels). 0, or -1 for k out of range. */
int vae_tile_at(const VAE *v, int decode, int h, int w, int k, int rect[4], float *weights);
/* Whether vae_encode (decode = 0; N x H x W pixels) or vae_decode (decode = 1;
 * a latent N x H x W) would tile now: 1 yes, 0 no, -1 bad shape. */
int vae_will_tile(VAE *v, int decode, int N, int H, int W);

/* One line saying why the last vae_encode / vae_decode returned -1 ("" if none). */
const char *vae_last_error(const VAE *v);

#endif

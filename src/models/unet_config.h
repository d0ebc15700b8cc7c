/* unet_config.h — the UNetConfig of a diffusers UNet2DConditionModel: the
 * built-in architectures (tiny, sd15, sdxl) and the reader of a diffusers
 * unet/config.json. A config is plain data that needs no backend, so it has its
 * own header; unet.h includes it, so existing users of the UNet see it as
 * before. */
#ifndef KRONA_UNET_CONFIG_H
#define KRONA_UNET_CONFIG_H

#include <stddef.h>

#define UNET_MAX_LEVELS 6

typedef struct UNetConfig {
    char name[32];               /* "tiny", "sd15", "sdxl", or file stem */
    int in_channels, out_channels;
    int sample_size;             /* default spatial size (latent or pixel) */
    int n_levels;                /* len(block_out_channels) */
    int block_out_channels[UNET_MAX_LEVELS];
    int down_cross[UNET_MAX_LEVELS]; /* 1: CrossAttnDownBlock2D, 0: DownBlock2D */
    int up_cross[UNET_MAX_LEVELS];   /* up block i (in up order): 1 CrossAttnUpBlock2D */
    int layers_per_block;
    int transformer_layers[UNET_MAX_LEVELS]; /* transformer_layers_per_block per level */
    int heads[UNET_MAX_LEVELS];  /* attention_head_dim as diffusers uses it: #heads */
    int cross_attention_dim;
    int norm_num_groups;
    float norm_eps;
    int use_linear_projection;   /* proj_in/proj_out Linear (SDXL) vs 1x1 conv (SD1.5) */
    int flip_sin_to_cos;
    float freq_shift;
    int mid_block;               /* 1: UNetMidBlock2DCrossAttn, 0: none */
    /* SDXL "text_time" addition embedding; 0 when absent */
    int addition_time_embed_dim;
    int projection_class_embeddings_input_dim;
} UNetConfig;

/* Built-in architectures: "tiny", "sd15", "sdxl". Returns 0 on success. */
int unet_config_builtin(const char *name, UNetConfig *cfg);
/* A built-in name, a diffusers model folder (its unet/config.json, or a
 * config.json inside it), or a config.json file. 0, or -1 with a one-line err. */
int unet_config_resolve(const char *model, UNetConfig *cfg, char *err, size_t errlen);
/* Parse a diffusers unet/config.json. A field that changes the computation is
 * accepted only at the values this engine implements (null and diffusers'
 * defaults included); any other value, and any field diffusers does not know
 * unless its name starts with '_', is refused. Returns 0, or -1 with a one-line
 * err: "<file>: <field> = <value found> is not supported (only <supported>)".
 * The _text form names the file "config.json". */
int unet_config_from_json(const char *path, UNetConfig *cfg, char *err, size_t errlen);
int unet_config_from_json_text(const char *json, UNetConfig *cfg, char *err, size_t errlen);

#endif

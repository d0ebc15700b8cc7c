/* diffusion.h — noise schedule, training targets and samplers (host-side
 * control, device-side tensors through the backend). SD's defaults: 1000
 * steps, scaled-linear betas 0.00085 -> 0.012. */
#ifndef KRONA_DIFFUSION_H
#define KRONA_DIFFUSION_H

#include <stdint.h>
#include "backend.h"

#define DIFFUSION_MAX_T 1000

typedef enum { PRED_EPSILON = 0, PRED_V = 1 } Prediction;

typedef struct Schedule {
    int T;
    double betas[DIFFUSION_MAX_T];
    double alphas_cumprod[DIFFUSION_MAX_T];
    Prediction prediction;
} Schedule;

/* scaled_linear: betas = linspace(sqrt(b0), sqrt(b1), T)^2 */
void schedule_scaled_linear(Schedule *s, int T, double beta_start, double beta_end,
                            Prediction pred);

/* x_t = sqrt(ac[t]) x0 + sqrt(1-ac[t]) noise, per batch item (t[N] host ints);
 * x0, noise, xt device [N, per] */
void diffusion_q_sample(Backend *be, const Schedule *s, const float *x0,
                        const float *noise, const int *t, float *xt, int N, int64_t per);
/* training target: epsilon -> noise; v -> sqrt(ac) noise - sqrt(1-ac) x0 */
void diffusion_target(Backend *be, const Schedule *s, const float *x0,
                      const float *noise, const int *t, float *target, int N, int64_t per);

/* The model as a sampler sees it: out = model(x, t) for a batch of N. With CFG
 * the sampler calls it once on a doubled batch [uncond; cond] when cond_batch
 * is set, else twice. user is opaque. Returns 0 or -1. */
typedef int (*DenoiseFn)(void *user, const float *x, float t, float *out, int N);

typedef enum { SAMPLER_DDIM = 0, SAMPLER_EULER = 1 } SamplerKind;

typedef struct SamplerOpts {
    SamplerKind kind;
    int steps;          /* inference steps */
    float guidance;     /* classifier-free guidance scale; <= 1 disables */
    float eta;          /* DDIM eta (0 deterministic) */
} SamplerOpts;

/* Timesteps as diffusers' "leading" spacing with steps_offset=1 (SD's config):
 * t_i = (T/steps) * (steps-1-i) + 1 for DDIM; Euler uses "linspace" spacing
 * t_i = linspace(0, T-1, steps) reversed. Writes `steps` floats. */
void diffusion_timesteps(const Schedule *s, SamplerKind kind, int steps, float *ts);

/* Sample: x[N,per] on entry is unit-Gaussian noise (device), on exit the sample.
 * cond / uncond: model callbacks for the conditional and unconditional branches
 * (uncond may be NULL when guidance <= 1). Scratch is allocated internally. */
int diffusion_sample(Backend *be, const Schedule *s, const SamplerOpts *o,
                     DenoiseFn cond, void *cond_user, DenoiseFn uncond, void *uncond_user,
                     float *x, int N, int64_t per);

#endif

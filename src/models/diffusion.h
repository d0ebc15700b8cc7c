/* diffusion.h — noise schedule, training targets and samplers (host-side
 * control, device-side tensors through the backend). SD's defaults: 1000
 * steps, scaled-linear betas 0.00085 -> 0.012. */
#ifndef KRONA_DIFFUSION_H
#define KRONA_DIFFUSION_H

#include <stddef.h>
#include <stdint.h>
#include "core/backend.h"

#define DIFFUSION_MAX_T 1000

typedef enum { PRED_EPSILON = 0, PRED_V = 1 } Prediction;

/* beta schedules as diffusers names them: scaled_linear is SD's (latent
 * space); linear is DDPM's, which noises pixel-space images enough at t = T-1
 * that their mean colour is gone (the tiny model's: see models/tiny/). */
typedef enum { BETAS_SCALED_LINEAR = 0, BETAS_LINEAR = 1 } BetaSchedule;

typedef struct Schedule {
    int T;
    BetaSchedule kind;
    double beta_start, beta_end;
    double betas[DIFFUSION_MAX_T];
    double alphas_cumprod[DIFFUSION_MAX_T];
    Prediction prediction;
} Schedule;

/* scaled_linear: betas = linspace(sqrt(b0), sqrt(b1), T)^2 */
void schedule_scaled_linear(Schedule *s, int T, double beta_start, double beta_end,
                            Prediction pred);
/* linear: betas = linspace(b0, b1, T) */
void schedule_linear(Schedule *s, int T, double beta_start, double beta_end, Prediction pred);
/* either kind by its enum */
void schedule_make(Schedule *s, BetaSchedule kind, int T, double beta_start, double beta_end,
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
    float eta;          /* DDIM eta (0 deterministic), 0..1 */
    uint64_t seed;      /* DDIM eta > 0: seeds the per-step noise (rng.h) */
    int cond_batch;     /* CFG on one doubled batch: cond gets 2N rows,
                           [uncond; cond] outputs; uncond is then unused */
} SamplerOpts;

/* Timesteps as diffusers' "leading" spacing with steps_offset=1 (SD 1.5's
 * scheduler config, for both DDIM and Euler): t_i = (T/steps)*(steps-1-i) + 1,
 * integer division. Writes `steps` floats. */
void diffusion_timesteps(const Schedule *s, SamplerKind kind, int steps, float *ts);

/* Euler sigmas: sigma_i = sqrt((1-ac)/ac) at t_i, plus a final 0 (steps+1
 * doubles). Returns init_noise_sigma = sqrt(sigma_0^2 + 1) ("leading"). */
double diffusion_euler_sigmas(const Schedule *s, int steps, double *sigmas);

/* 0, or -1 with a one-line err naming the bad field (schedule T, kind, steps
 * range for T, eta range, guidance finite). diffusion_sample runs it too. */
int diffusion_validate(const Schedule *s, const SamplerOpts *o, char *err, size_t errlen);

/* One DDIM step in place on x[n] (diffusers DDIMScheduler.step, no clipping):
 * model_out is eps or v per s->prediction; t_prev < 0 uses alphas_cumprod[0]
 * (set_alpha_to_one false); noise (device, may be NULL when eta == 0). */
void diffusion_ddim_step(Backend *be, const Schedule *s, int t, int t_prev, float eta,
                         const float *model_out, const float *noise, float *x, int64_t n);
/* One Euler step in place on x[n] (sigma-space sample, as EulerDiscreteScheduler). */
void diffusion_euler_step(Backend *be, const Schedule *s, double sigma, double sigma_next,
                          const float *model_out, float *x, int64_t n);

/* Sample: x[N,per] on entry is unit-Gaussian noise (device), on exit the sample
 * (Euler scales it by init_noise_sigma first and hands the model x/sqrt(sigma^2+1),
 * as diffusers). cond / uncond: model callbacks for the conditional and
 * unconditional branches; CFG out = uncond + g (cond - uncond) runs when
 * guidance > 1 and uncond != NULL (or cond_batch). Scratch is allocated
 * internally. -1 on invalid opts (diffusion_validate says why), out of memory,
 * or a callback's -1 (the callback keeps its own message). */
int diffusion_sample(Backend *be, const Schedule *s, const SamplerOpts *o,
                     DenoiseFn cond, void *cond_user, DenoiseFn uncond, void *uncond_user,
                     float *x, int N, int64_t per);

#endif

/* diffusion.c — SD's noise schedule, training targets, DDIM and Euler samplers.
 * Semantics follow diffusers' DDIMScheduler / EulerDiscreteScheduler with SD
 * 1.5's scheduler config (scaled_linear, set_alpha_to_one false, steps_offset 1,
 * "leading" spacing, no sample clipping). Every step is linear in the sample and
 * the model output, so the per-step scalars are folded on the host (double) and
 * the device only sees scale/axpy: the same code runs on any backend. */
#include "models/diffusion.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/rng.h"

#define STEPS_OFFSET 1 /* SD's scheduler config */

void schedule_make(Schedule *s, BetaSchedule kind, int T, double beta_start, double beta_end,
                   Prediction pred) {
    s->prediction = pred;
    s->kind = kind;
    s->beta_start = beta_start;
    s->beta_end = beta_end;
    /* An out-of-range T leaves an empty schedule that diffusion_validate rejects. */
    if (T < 2 || T > DIFFUSION_MAX_T) { s->T = 0; return; }
    s->T = T;
    double a = kind == BETAS_LINEAR ? beta_start : sqrt(beta_start);
    double b = kind == BETAS_LINEAR ? beta_end : sqrt(beta_end), prod = 1.0;
    for (int i = 0; i < T; i++) {
        double r = a + (b - a) * (double)i / (double)(T - 1);
        s->betas[i] = kind == BETAS_LINEAR ? r : r * r;
        prod *= 1.0 - s->betas[i];
        s->alphas_cumprod[i] = prod;
    }
}

void schedule_scaled_linear(Schedule *s, int T, double beta_start, double beta_end,
                            Prediction pred) {
    schedule_make(s, BETAS_SCALED_LINEAR, T, beta_start, beta_end, pred);
}

void schedule_linear(Schedule *s, int T, double beta_start, double beta_end, Prediction pred) {
    schedule_make(s, BETAS_LINEAR, T, beta_start, beta_end, pred);
}

/* Clamp so a caller's bad t cannot read outside the table. */
static double ac_at(const Schedule *s, int t) {
    if (t < 0) t = 0;
    if (t >= s->T) t = s->T - 1;
    return s->alphas_cumprod[t];
}

/* y = ca * a + cb * b per item, handling y aliasing a or b. */
static void lincomb(Backend *be, float *y, float ca, const float *a, float cb,
                    const float *b, int64_t n) {
    if (y == b) {
        be->scale(be, y, cb, n);
        be->axpy(be, ca, a, y, n);
    } else {
        if (y != a) be->copy(be, y, a, (size_t)n * sizeof(float));
        be->scale(be, y, ca, n);
        be->axpy(be, cb, b, y, n);
    }
}

void diffusion_q_sample(Backend *be, const Schedule *s, const float *x0,
                        const float *noise, const int *t, float *xt, int N, int64_t per) {
    for (int i = 0; i < N; i++) {
        double ac = ac_at(s, t[i]);
        lincomb(be, xt + i * per, (float)sqrt(ac), x0 + i * per, (float)sqrt(1.0 - ac),
                noise + i * per, per);
    }
}

void diffusion_target(Backend *be, const Schedule *s, const float *x0,
                      const float *noise, const int *t, float *target, int N, int64_t per) {
    if (s->prediction == PRED_EPSILON) {
        if (target != noise) be->copy(be, target, noise, (size_t)N * per * sizeof(float));
        return;
    }
    for (int i = 0; i < N; i++) {
        double ac = ac_at(s, t[i]);
        lincomb(be, target + i * per, (float)sqrt(ac), noise + i * per,
                (float)-sqrt(1.0 - ac), x0 + i * per, per);
    }
}

void diffusion_timesteps(const Schedule *s, SamplerKind kind, int steps, float *ts) {
    (void)kind; /* both samplers use "leading" spacing in SD's config */
    if (steps < 1) return;
    int ratio = s->T / steps;
    for (int i = 0; i < steps; i++) {
        int t = ratio * (steps - 1 - i) + STEPS_OFFSET;
        if (t > s->T - 1) t = s->T - 1; /* only reachable past diffusion_validate */
        ts[i] = (float)t;
    }
}

double diffusion_euler_sigmas(const Schedule *s, int steps, double *sigmas) {
    float ts[DIFFUSION_MAX_T];
    if (steps < 1 || steps > DIFFUSION_MAX_T) return 1.0;
    diffusion_timesteps(s, SAMPLER_EULER, steps, ts);
    double smax = 0.0;
    for (int i = 0; i < steps; i++) {
        double ac = ac_at(s, (int)ts[i]);
        sigmas[i] = sqrt((1.0 - ac) / ac);
        if (sigmas[i] > smax) smax = sigmas[i];
    }
    sigmas[steps] = 0.0;
    return sqrt(smax * smax + 1.0);
}

int diffusion_validate(const Schedule *s, const SamplerOpts *o, char *err, size_t errlen) {
    if (s->T < 2 || s->T > DIFFUSION_MAX_T) {
        snprintf(err, errlen, "diffusion: schedule has T=%d; build it with "
                 "schedule_scaled_linear and T in 2..%d", s->T, DIFFUSION_MAX_T);
        return -1;
    }
    if (s->prediction != PRED_EPSILON && s->prediction != PRED_V) {
        snprintf(err, errlen, "diffusion: schedule prediction %d unknown; use epsilon or v",
                 (int)s->prediction);
        return -1;
    }
    if (o->kind != SAMPLER_DDIM && o->kind != SAMPLER_EULER) {
        snprintf(err, errlen, "diffusion: sampler kind %d unknown; use ddim or euler",
                 (int)o->kind);
        return -1;
    }
    /* leading spacing with offset 1 must keep the first timestep below T */
    if (o->steps < 1 || o->steps > s->T ||
        (s->T / o->steps) * (o->steps - 1) + STEPS_OFFSET > s->T - 1) {
        snprintf(err, errlen, "diffusion: sampler steps=%d out of range; use 1..%d for T=%d",
                 o->steps, s->T - 1, s->T);
        return -1;
    }
    if (!isfinite(o->guidance)) {
        snprintf(err, errlen, "diffusion: guidance is not finite; use a value such as 7.5");
        return -1;
    }
    if (o->kind == SAMPLER_DDIM && !(o->eta >= 0.0f && o->eta <= 1.0f)) {
        snprintf(err, errlen, "diffusion: eta=%g out of range; use 0 (deterministic) .. 1",
                 (double)o->eta);
        return -1;
    }
    return 0;
}

void diffusion_ddim_step(Backend *be, const Schedule *s, int t, int t_prev, float eta,
                         const float *model_out, const float *noise, float *x, int64_t n) {
    double a = ac_at(s, t);
    double ap = t_prev >= 0 ? ac_at(s, t_prev) : s->alphas_cumprod[0];
    double var = (1.0 - ap) / (1.0 - a) * (1.0 - a / ap);
    double sd = (double)eta * sqrt(var > 0.0 ? var : 0.0);
    double dir = 1.0 - ap - sd * sd;
    dir = sqrt(dir > 0.0 ? dir : 0.0);
    /* x_prev = sqrt(ap) x0 + dir eps + sd z, with (x0, eps) linear in (x, out):
     *   epsilon: x0 = (x - sqrt(1-a) out)/sqrt(a),  eps = out
     *   v:       x0 = sqrt(a) x - sqrt(1-a) out,    eps = sqrt(a) out + sqrt(1-a) x */
    double cx, cm;
    if (s->prediction == PRED_V) {
        cx = sqrt(ap * a) + dir * sqrt(1.0 - a);
        cm = dir * sqrt(a) - sqrt(ap) * sqrt(1.0 - a);
    } else {
        cx = sqrt(ap / a);
        cm = dir - sqrt(ap) * sqrt(1.0 - a) / sqrt(a);
    }
    be->scale(be, x, (float)cx, n);
    be->axpy(be, (float)cm, model_out, x, n);
    if (sd > 0.0 && noise) be->axpy(be, (float)sd, noise, x, n);
}

void diffusion_euler_step(Backend *be, const Schedule *s, double sigma, double sigma_next,
                          const float *model_out, float *x, int64_t n) {
    double dt = sigma_next - sigma;
    if (s->prediction == PRED_V) {
        /* x0 = -sigma/sqrt(sigma^2+1) out + x/(sigma^2+1); x' = x + dt (x - x0)/sigma */
        double q = sigma * sigma + 1.0, r = dt / sigma;
        be->scale(be, x, (float)(1.0 + r * (1.0 - 1.0 / q)), n);
        be->axpy(be, (float)(r * sigma / sqrt(q)), model_out, x, n);
    } else {
        /* x0 = x - sigma out, so the ODE derivative is out itself */
        be->axpy(be, (float)dt, model_out, x, n);
    }
}

/* Model output for the current x into out[0:n] (guided when cfg). The model
 * sees x * in_scale; xin is scratch of n (2n with cond_batch), out is 2n with cfg. */
static int eval_model(Backend *be, const SamplerOpts *o, int cfg, DenoiseFn cond,
                      void *cond_user, DenoiseFn uncond, void *uncond_user,
                      const float *x, double in_scale, float *xin, float *out, float t,
                      int N, int64_t n) {
    int batched = cfg && o->cond_batch;
    const float *in = x;
    if (in_scale != 1.0 || batched) {
        be->copy(be, xin, x, (size_t)n * sizeof(float));
        if (in_scale != 1.0) be->scale(be, xin, (float)in_scale, n);
        if (batched) be->copy(be, xin + n, xin, (size_t)n * sizeof(float));
        in = xin;
    }
    if (!cfg) return cond(cond_user, in, t, out, N);
    if (batched) {
        if (cond(cond_user, in, t, out, 2 * N) != 0) return -1;
    } else {
        if (uncond(uncond_user, in, t, out, N) != 0) return -1;
        if (cond(cond_user, in, t, out + n, N) != 0) return -1;
    }
    /* uncond + g (cond - uncond) = (1-g) uncond + g cond */
    be->scale(be, out, 1.0f - o->guidance, n);
    be->axpy(be, o->guidance, out + n, out, n);
    return 0;
}

int diffusion_sample(Backend *be, const Schedule *s, const SamplerOpts *o,
                     DenoiseFn cond, void *cond_user, DenoiseFn uncond, void *uncond_user,
                     float *x, int N, int64_t per) {
    char err[160];
    if (!cond || N < 1 || per < 1 || diffusion_validate(s, o, err, sizeof err) != 0) return -1;
    int steps = o->steps;
    int64_t n = (int64_t)N * per;
    int cfg = o->guidance > 1.0f && (uncond != NULL || o->cond_batch);
    int ddim = o->kind == SAMPLER_DDIM;
    int noisy = ddim && o->eta > 0.0f;

    float ts[DIFFUSION_MAX_T];
    double sigmas[DIFFUSION_MAX_T + 1];
    diffusion_timesteps(s, o->kind, steps, ts);

    size_t bytes = (size_t)n * sizeof(float);
    float *xin = be->alloc(be, (cfg && o->cond_batch ? 2 : 1) * bytes);
    float *out = be->alloc(be, (cfg ? 2 : 1) * bytes);
    float *noise = noisy ? be->alloc(be, bytes) : NULL;
    float *hnoise = noisy ? malloc(bytes) : NULL;
    int rc = -1;
    if (!xin || !out || (noisy && (!noise || !hnoise))) goto done;

    Rng rng;
    rng_seed(&rng, o->seed);
    if (!ddim) {
        double init_sigma = diffusion_euler_sigmas(s, steps, sigmas);
        be->scale(be, x, (float)init_sigma, n);
    }
    int ratio = s->T / steps;
    for (int i = 0; i < steps; i++) {
        int t = (int)ts[i];
        double in_scale = ddim ? 1.0 : 1.0 / sqrt(sigmas[i] * sigmas[i] + 1.0);
        if (eval_model(be, o, cfg, cond, cond_user, uncond, uncond_user, x, in_scale, xin,
                       out, ts[i], N, n) != 0)
            goto done;
        if (ddim) {
            if (noisy) {
                rng_fill_normal(&rng, hnoise, n);
                be->upload(be, noise, hnoise, bytes);
            }
            diffusion_ddim_step(be, s, t, t - ratio, o->eta, out, noise, x, n);
        } else {
            diffusion_euler_step(be, s, sigmas[i], sigmas[i + 1], out, x, n);
        }
    }
    be->sync(be);
    rc = 0;
done:
    if (xin) be->free(be, xin);
    if (out) be->free(be, out);
    if (noise) be->free(be, noise);
    free(hnoise);
    return rc;
}

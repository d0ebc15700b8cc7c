/* test_diffusion.c — schedule, timesteps, single steps against PyTorch goldens
 * (tests/golden/gen_diffusion_golden.py), and whole samplers against exact
 * analytic answers: for a point-mass data distribution the optimal model is
 * known in closed form, so DDIM / Euler / v-prediction / CFG have exact outputs. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "models/diffusion.h"
#include "core/rng.h"

/* ---- golden file: blocks of "<name> <count>" then count values ---- */

#define GOLDEN_PATH "tests/golden/diffusion.txt"
#define MAX_ARRAYS 64

typedef struct { char name[64]; int n; double *v; } GArray;
typedef struct { GArray a[MAX_ARRAYS]; int count; } Golden;

static Golden *golden_load(void) {
    FILE *f = fopen(GOLDEN_PATH, "r");
    if (!f) { fprintf(stderr, "cannot open %s (run from the repo root)\n", GOLDEN_PATH); return NULL; }
    Golden *g = calloc(1, sizeof *g);
    char name[64];
    int n;
    while (g->count < MAX_ARRAYS && fscanf(f, "%63s %d", name, &n) == 2) {
        GArray *a = &g->a[g->count++];
        snprintf(a->name, sizeof a->name, "%s", name);
        a->n = n;
        a->v = malloc((size_t)n * sizeof(double));
        for (int i = 0; i < n; i++)
            if (fscanf(f, "%lf", &a->v[i]) != 1) { fclose(f); return g; }
    }
    fclose(f);
    return g;
}

static void golden_free(Golden *g) {
    for (int i = 0; i < g->count; i++) free(g->a[i].v);
    free(g);
}

static const GArray *gget(const Golden *g, const char *name) {
    for (int i = 0; i < g->count; i++)
        if (strcmp(g->a[i].name, name) == 0) return &g->a[i];
    fail_msg("golden array %s missing; regenerate with tests/golden/gen_diffusion_golden.py", name);
    return NULL;
}

static int setup(void **state) {
    Golden *g = golden_load();
    if (!g) return -1;
    *state = g;
    return 0;
}

static int teardown(void **state) {
    golden_free(*state);
    return 0;
}

/* |a - b| <= tol (1 + |b|): relative for large values, absolute near 0 */
static void check_close(const char *what, int i, double got, double want, double tol) {
    if (!(fabs(got - want) <= tol * (1.0 + fabs(want))))
        fail_msg("%s[%d]: got %.10g want %.10g (tol %g)", what, i, got, want, tol);
}

static Schedule *sd_schedule(Prediction pred) {
    Schedule *s = malloc(sizeof *s);
    schedule_scaled_linear(s, 1000, 0.00085, 0.012, pred);
    return s;
}

/* device buffer from host floats / doubles and back */
static float *dev_from_doubles(Backend *be, const double *v, int64_t n) {
    float *h = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) h[i] = (float)v[i];
    float *d = be->alloc(be, (size_t)n * sizeof(float));
    be->upload(be, d, h, (size_t)n * sizeof(float));
    free(h);
    return d;
}

static void dev_check(Backend *be, const char *what, const float *d, const double *want,
                      int64_t n, double tol) {
    float *h = malloc((size_t)n * sizeof(float));
    be->download(be, h, d, (size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) check_close(what, (int)i, h[i], want[i], tol);
    free(h);
}

/* ---- 1. schedule and timesteps ---- */

static void test_schedule(void **state) {
    const Golden *g = *state;
    Schedule *s = sd_schedule(PRED_EPSILON);
    assert_int_equal(s->T, 1000);
    const GArray *b = gget(g, "betas"), *ac = gget(g, "alphas_cumprod");
    const GArray *ac32 = gget(g, "alphas_cumprod_f32");
    assert_int_equal(b->n, 1000);
    for (int t = 0; t < 1000; t++) {
        check_close("betas", t, s->betas[t], b->v[t], 1e-13);
        check_close("alphas_cumprod", t, s->alphas_cumprod[t], ac->v[t], 1e-12);
        /* diffusers keeps float32: agree to float32 cumprod rounding */
        assert_true(fabs(s->alphas_cumprod[t] - ac32->v[t]) <= 2e-6 * ac32->v[t]);
    }
    /* a few anchors that do not depend on the golden at all */
    assert_true(fabs(s->betas[0] - 0.00085) < 1e-15);
    assert_true(fabs(s->betas[999] - 0.012) < 1e-15);
    assert_true(fabs(s->alphas_cumprod[0] - 0.99915) < 1e-15);
    assert_true(fabs(s->alphas_cumprod[1] - 0.99915 * (1 - s->betas[1])) < 1e-15);

    Schedule bad;
    schedule_scaled_linear(&bad, 5000, 0.00085, 0.012, PRED_EPSILON);
    char err[160] = "";
    SamplerOpts o = { .kind = SAMPLER_DDIM, .steps = 25, .guidance = 1.0f };
    assert_int_equal(diffusion_validate(&bad, &o, err, sizeof err), -1);
    assert_non_null(strstr(err, "T="));
    free(s);
}

static void test_timesteps(void **state) {
    const Golden *g = *state;
    Schedule *s = sd_schedule(PRED_EPSILON);
    int counts[2] = { 25, 50 };
    for (int k = 0; k < 2; k++) {
        int steps = counts[k];
        char name[64];
        float ts[DIFFUSION_MAX_T];
        double sig[DIFFUSION_MAX_T + 1];

        snprintf(name, sizeof name, "ddim_timesteps_%d", steps);
        const GArray *want = gget(g, name);
        assert_int_equal(want->n, steps);
        diffusion_timesteps(s, SAMPLER_DDIM, steps, ts);
        for (int i = 0; i < steps; i++) check_close(name, i, ts[i], want->v[i], 0);

        snprintf(name, sizeof name, "euler_timesteps_%d", steps);
        want = gget(g, name);
        diffusion_timesteps(s, SAMPLER_EULER, steps, ts);
        for (int i = 0; i < steps; i++) check_close(name, i, ts[i], want->v[i], 0);

        snprintf(name, sizeof name, "euler_sigmas_%d", steps);
        want = gget(g, name);
        assert_int_equal(want->n, steps + 1);
        double init = diffusion_euler_sigmas(s, steps, sig);
        for (int i = 0; i <= steps; i++) check_close(name, i, sig[i], want->v[i], 1e-12);

        snprintf(name, sizeof name, "euler_init_sigma_%d", steps);
        check_close(name, 0, init, gget(g, name)->v[0], 1e-12);
    }
    /* literal values from SD 1.5's DDIM 50-step schedule */
    float ts[50];
    diffusion_timesteps(s, SAMPLER_DDIM, 50, ts);
    assert_true(ts[0] == 981.0f && ts[1] == 961.0f && ts[49] == 1.0f);
    free(s);
}

static void test_validate(void **state) {
    (void)state;
    Schedule *s = sd_schedule(PRED_EPSILON);
    char err[160];
    SamplerOpts o = { .kind = SAMPLER_DDIM, .steps = 25, .guidance = 7.5f, .eta = 0.0f };
    assert_int_equal(diffusion_validate(s, &o, err, sizeof err), 0);
    o.steps = 999;
    assert_int_equal(diffusion_validate(s, &o, err, sizeof err), 0);
    o.steps = 1000; /* leading + offset 1 would ask for t = 1000 */
    assert_int_equal(diffusion_validate(s, &o, err, sizeof err), -1);
    assert_non_null(strstr(err, "steps"));
    o.steps = 0;
    assert_int_equal(diffusion_validate(s, &o, err, sizeof err), -1);
    o.steps = 25;
    o.eta = 1.5f;
    assert_int_equal(diffusion_validate(s, &o, err, sizeof err), -1);
    assert_non_null(strstr(err, "eta"));
    o.eta = 0.0f;
    o.guidance = NAN;
    assert_int_equal(diffusion_validate(s, &o, err, sizeof err), -1);
    o.guidance = 1.0f;
    o.kind = (SamplerKind)7;
    assert_int_equal(diffusion_validate(s, &o, err, sizeof err), -1);
    assert_non_null(strstr(err, "kind"));
    free(s);
}

/* ---- 2. single steps vs golden ---- */

static void test_ddim_step_golden(void **state) {
    const Golden *g = *state;
    Backend *be = backend_cpu_create();
    const GArray *x = gget(g, "step_x"), *m = gget(g, "step_model"), *z = gget(g, "step_noise");
    int64_t n = x->n;
    float *dm = dev_from_doubles(be, m->v, n), *dz = dev_from_doubles(be, z->v, n);
    struct { const char *name; Prediction p; int t, tp; float eta; } cases[] = {
        { "ddim_eps_481_441", PRED_EPSILON, 481, 441, 0.0f },
        { "ddim_v_481_441", PRED_V, 481, 441, 0.0f },
        { "ddim_eps_1_last", PRED_EPSILON, 1, 1 - 40, 0.0f },
        { "ddim_v_1_last", PRED_V, 1, 1 - 40, 0.0f },
        { "ddim_eps_eta05_481_441", PRED_EPSILON, 481, 441, 0.5f },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        Schedule *s = sd_schedule(cases[k].p);
        float *dx = dev_from_doubles(be, x->v, n);
        diffusion_ddim_step(be, s, cases[k].t, cases[k].tp, cases[k].eta, dm, dz, dx, n);
        dev_check(be, cases[k].name, dx, gget(g, cases[k].name)->v, n, 2e-6);
        be->free(be, dx);
        free(s);
    }
    be->free(be, dm);
    be->free(be, dz);
    backend_destroy(be);
}

static void test_euler_step_golden(void **state) {
    const Golden *g = *state;
    Backend *be = backend_cpu_create();
    const GArray *x = gget(g, "step_x"), *m = gget(g, "step_model");
    const GArray *x12 = gget(g, "euler_x_12");
    int64_t n = x->n;
    float *dm = dev_from_doubles(be, m->v, n);
    double sig[26];
    Schedule *s = sd_schedule(PRED_EPSILON);
    diffusion_euler_sigmas(s, 25, sig);
    free(s);
    struct { const char *name; Prediction p; int i; const GArray *x; } cases[] = {
        { "euler_eps_12", PRED_EPSILON, 12, x12 },
        { "euler_v_12", PRED_V, 12, x12 },
        { "euler_eps_last", PRED_EPSILON, 24, x },
        { "euler_v_last", PRED_V, 24, x },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        s = sd_schedule(cases[k].p);
        float *dx = dev_from_doubles(be, cases[k].x->v, n);
        diffusion_euler_step(be, s, sig[cases[k].i], sig[cases[k].i + 1], dm, dx, n);
        dev_check(be, cases[k].name, dx, gget(g, cases[k].name)->v, n, 2e-6);
        be->free(be, dx);
        free(s);
    }
    be->free(be, dm);
    backend_destroy(be);
}

/* ---- 4. q_sample and targets ---- */

static void test_q_sample_targets(void **state) {
    const Golden *g = *state;
    Backend *be = backend_cpu_create();
    const GArray *tq = gget(g, "q_t"), *x0 = gget(g, "q_x0"), *nz = gget(g, "q_noise");
    int N = tq->n;
    int64_t per = x0->n / N, n = x0->n;
    int t[8];
    for (int i = 0; i < N; i++) t[i] = (int)tq->v[i];
    float *dx0 = dev_from_doubles(be, x0->v, n), *dn = dev_from_doubles(be, nz->v, n);
    float *out = be->alloc(be, (size_t)n * sizeof(float));

    Schedule *s = sd_schedule(PRED_EPSILON);
    diffusion_q_sample(be, s, dx0, dn, t, out, N, per);
    dev_check(be, "q_xt", out, gget(g, "q_xt")->v, n, 2e-6);
    /* the same against the formula written out here, in double */
    double *want = malloc((size_t)n * sizeof(double));
    for (int i = 0; i < N; i++) {
        double ac = s->alphas_cumprod[t[i]];
        for (int64_t j = 0; j < per; j++)
            want[i * per + j] = sqrt(ac) * (float)x0->v[i * per + j] +
                                sqrt(1 - ac) * (float)nz->v[i * per + j];
    }
    dev_check(be, "q_xt formula", out, want, n, 1e-6);
    diffusion_target(be, s, dx0, dn, t, out, N, per);
    dev_check(be, "eps target", out, nz->v, n, 1e-7);
    free(s);

    s = sd_schedule(PRED_V);
    diffusion_target(be, s, dx0, dn, t, out, N, per);
    dev_check(be, "v target", out, gget(g, "q_v")->v, n, 2e-6);
    /* in place over the noise buffer (aliasing must still give the same) */
    float *alias = dev_from_doubles(be, nz->v, n);
    diffusion_target(be, s, dx0, alias, t, alias, N, per);
    dev_check(be, "v target in place", alias, gget(g, "q_v")->v, n, 2e-6);
    float *alias2 = dev_from_doubles(be, x0->v, n);
    diffusion_q_sample(be, s, alias2, dn, t, alias2, N, per);
    dev_check(be, "q_xt in place", alias2, gget(g, "q_xt")->v, n, 2e-6);
    free(s);

    free(want);
    be->free(be, alias);
    be->free(be, alias2);
    be->free(be, dx0);
    be->free(be, dn);
    be->free(be, out);
    backend_destroy(be);
}

/* ---- 3. analytic end-to-end ---- */

/* Exact model for data = a single point c (per batch item): with the model
 * input x_in = sqrt(ac) c + sqrt(1-ac) e, eps = (x_in - sqrt(ac) c)/sqrt(1-ac)
 * and v = sqrt(ac) eps - sqrt(1-ac) c. For cond_batch the 2N rows are
 * [uncond (c = c0); cond (c = c1)]. */
typedef struct {
    Backend *be;
    const Schedule *s;
    const double *c0, *c1; /* c1 used for the second half of a doubled batch */
    int N;
    int64_t per;
    int calls, fail_at;
} PointModel;

static int point_model(void *user, const float *x, float t, float *out, int N) {
    PointModel *pm = user;
    if (pm->calls++ == pm->fail_at) return -1;
    int64_t n = (int64_t)N * pm->per;
    if (t != floorf(t) || t < 0 || t >= pm->s->T) return -1;
    double ac = pm->s->alphas_cumprod[(int)t];
    float *h = malloc((size_t)n * sizeof(float));
    pm->be->download(pm->be, h, x, (size_t)n * sizeof(float));
    int64_t half = (int64_t)pm->N * pm->per;
    for (int64_t i = 0; i < n; i++) {
        double c = i < half ? pm->c0[i] : pm->c1[i - half];
        double eps = (h[i] - sqrt(ac) * c) / sqrt(1 - ac);
        h[i] = (float)(pm->s->prediction == PRED_V ? sqrt(ac) * eps - sqrt(1 - ac) * c : eps);
    }
    pm->be->upload(pm->be, out, h, (size_t)n * sizeof(float));
    free(h);
    return 0;
}

enum { AN = 2, APER = 24 };

typedef struct { double c0[AN * APER], c1[AN * APER], z[AN * APER]; } Points;

static void make_points(Points *p, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < AN * APER; i++) {
        p->c0[i] = 2.0 * rng_uniform(&r) - 1.0;
        p->c1[i] = 2.0 * rng_uniform(&r) - 1.0;
        p->z[i] = rng_normal(&r);
    }
}

/* Runs a sampler from noise z; returns the result on the host (caller frees). */
static float *run_sampler(const Schedule *s, const SamplerOpts *o, const Points *p,
                          int with_uncond, int *rc) {
    Backend *be = backend_cpu_create();
    int64_t n = AN * APER;
    PointModel cond = { be, s, p->c1, p->c1, AN, APER, 0, -1 };
    PointModel unc = { be, s, p->c0, p->c1, AN, APER, 0, -1 };
    if (o->cond_batch) cond.c0 = p->c0; /* doubled batch: [uncond; cond] */
    float *x = dev_from_doubles(be, p->z, n);
    *rc = diffusion_sample(be, s, o, point_model, &cond, with_uncond ? point_model : NULL,
                           with_uncond ? &unc : NULL, x, AN, APER);
    float *h = malloc((size_t)n * sizeof(float));
    be->download(be, h, x, (size_t)n * sizeof(float));
    /* one model call per step (both branches for CFG without cond_batch) */
    int want_calls = o->steps;
    assert_int_equal(cond.calls, want_calls);
    assert_int_equal(unc.calls, with_uncond && !o->cond_batch && o->guidance > 1 ? want_calls : 0);
    be->free(be, x);
    backend_destroy(be);
    return h;
}

/* DDIM (eta 0) with the exact model keeps e = (x_t - sqrt(ac_t) c)/sqrt(1-ac_t)
 * fixed and predicts x0 = c every step, so it ends at the last "previous"
 * level, alphas_cumprod[0] (set_alpha_to_one false):
 * x = sqrt(ac_0) c + sqrt(1-ac_0) e, with e from the starting noise z at t_0. */
static void ddim_expected(const Schedule *s, int steps, const double *c, const double *z,
                          double *want) {
    float ts[DIFFUSION_MAX_T];
    diffusion_timesteps(s, SAMPLER_DDIM, steps, ts);
    double a = s->alphas_cumprod[(int)ts[0]], a0 = s->alphas_cumprod[0];
    for (int i = 0; i < AN * APER; i++) {
        double e = (z[i] - sqrt(a) * c[i]) / sqrt(1 - a);
        want[i] = sqrt(a0) * c[i] + sqrt(1 - a0) * e;
    }
}

static void check_host(const char *what, const float *got, const double *want, double tol) {
    for (int i = 0; i < AN * APER; i++) check_close(what, i, got[i], want[i], tol);
}

static void test_analytic_ddim(void **state) {
    (void)state;
    Points p;
    make_points(&p, 11);
    double want[AN * APER];
    Prediction preds[2] = { PRED_EPSILON, PRED_V };
    for (int k = 0; k < 2; k++) {
        Schedule *s = sd_schedule(preds[k]);
        SamplerOpts o = { .kind = SAMPLER_DDIM, .steps = 25, .guidance = 1.0f };
        int rc;
        float *x = run_sampler(s, &o, &p, 0, &rc);
        assert_int_equal(rc, 0);
        ddim_expected(s, 25, p.c1, p.z, want);
        check_host(k ? "ddim v" : "ddim eps", x, want, 1e-4);
        /* and that is c up to the t=0 noise level sqrt(1 - 0.99915) ~ 0.03 */
        for (int i = 0; i < AN * APER; i++) assert_true(fabs(x[i] - p.c1[i]) < 0.2);
        free(x);
        free(s);
    }
}

static void test_analytic_euler(void **state) {
    (void)state;
    Points p;
    make_points(&p, 12);
    Prediction preds[2] = { PRED_EPSILON, PRED_V };
    int steps[2] = { 25, 50 };
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 2; j++) {
            Schedule *s = sd_schedule(preds[k]);
            SamplerOpts o = { .kind = SAMPLER_EULER, .steps = steps[j], .guidance = 1.0f };
            int rc;
            float *x = run_sampler(s, &o, &p, 0, &rc);
            assert_int_equal(rc, 0);
            /* x - c shrinks by sigma_{i+1}/sigma_i each step and the last sigma is 0 */
            check_host(k ? "euler v" : "euler eps", x, p.c1, 1e-4);
            free(x);
            free(s);
        }
}

/* CFG: eps_u + g (eps_c - eps_u) = (x - sqrt(ac) c*)/sqrt(1-ac) with
 * c* = c0 + g (c1 - c0): the guided model is the exact model of the point c*. */
static void test_analytic_cfg(void **state) {
    (void)state;
    Points p;
    make_points(&p, 13);
    const float gs = 3.0f;
    double cstar[AN * APER], want[AN * APER];
    for (int i = 0; i < AN * APER; i++) cstar[i] = p.c0[i] + (double)gs * (p.c1[i] - p.c0[i]);
    for (int batched = 0; batched < 2; batched++) {
        Schedule *s = sd_schedule(PRED_EPSILON);
        SamplerOpts o = { .kind = SAMPLER_DDIM, .steps = 25, .guidance = gs, .cond_batch = batched };
        int rc;
        float *x = run_sampler(s, &o, &p, 1, &rc);
        assert_int_equal(rc, 0);
        ddim_expected(s, 25, cstar, p.z, want);
        check_host(batched ? "cfg ddim batched" : "cfg ddim", x, want, 2e-4);
        free(x);

        o.kind = SAMPLER_EULER;
        x = run_sampler(s, &o, &p, 1, &rc);
        assert_int_equal(rc, 0);
        check_host(batched ? "cfg euler batched" : "cfg euler", x, cstar, 2e-4);
        free(x);
        free(s);
    }
    /* guidance <= 1: the uncond model is ignored */
    Schedule *s = sd_schedule(PRED_V);
    SamplerOpts o = { .kind = SAMPLER_EULER, .steps = 25, .guidance = 1.0f };
    int rc;
    float *x = run_sampler(s, &o, &p, 1, &rc);
    assert_int_equal(rc, 0);
    check_host("no cfg", x, p.c1, 1e-4);
    free(x);
    free(s);
}

/* eta > 0: the sampler must equal diffusers' step() (written out here in
 * double) driven by the same rng stream: one rng_fill_normal of N*per per step. */
static void test_ddim_eta(void **state) {
    (void)state;
    Points p;
    make_points(&p, 14);
    Schedule *s = sd_schedule(PRED_EPSILON);
    const int steps = 10;
    SamplerOpts o = { .kind = SAMPLER_DDIM, .steps = steps, .guidance = 1.0f, .eta = 0.7f, .seed = 99 };
    int rc;
    float *x = run_sampler(s, &o, &p, 0, &rc);
    assert_int_equal(rc, 0);

    enum { n = AN * APER };
    double ref[n];
    float z[n];
    for (int i = 0; i < n; i++) ref[i] = (float)p.z[i];
    Rng r;
    rng_seed(&r, 99);
    float ts[DIFFUSION_MAX_T];
    diffusion_timesteps(s, SAMPLER_DDIM, steps, ts);
    for (int k = 0; k < steps; k++) {
        int t = (int)ts[k], tp = t - 1000 / steps;
        double a = s->alphas_cumprod[t], ap = tp >= 0 ? s->alphas_cumprod[tp] : s->alphas_cumprod[0];
        double sd = 0.7 * sqrt((1 - ap) / (1 - a) * (1 - a / ap));
        rng_fill_normal(&r, z, n);
        for (int i = 0; i < n; i++) {
            double eps = (ref[i] - sqrt(a) * p.c1[i]) / sqrt(1 - a);
            double x0 = (ref[i] - sqrt(1 - a) * eps) / sqrt(a);
            ref[i] = sqrt(ap) * x0 + sqrt(1 - ap - sd * sd) * eps + sd * z[i];
        }
    }
    check_host("ddim eta", x, ref, 1e-4);

    /* another seed gives another sample */
    o.seed = 100;
    float *y = run_sampler(s, &o, &p, 0, &rc);
    double maxd = 0;
    for (int i = 0; i < n; i++) maxd = fmax(maxd, fabs(x[i] - y[i]));
    assert_true(maxd > 1e-3);
    free(x);
    free(y);
    free(s);
}

/* A model that always outputs 0 isolates the sampler's own scalings: Euler
 * (eps) then never moves x, so the result is init_noise_sigma * z and the first
 * model input is exactly z; DDIM (eps) multiplies by sqrt(ap/a) per step, which
 * telescopes to sqrt(ac_0 / ac_t0). */
typedef struct { Backend *be; int64_t n; float first_in[AN * APER]; int calls; } ZeroModel;

static int zero_model(void *user, const float *x, float t, float *out, int N) {
    ZeroModel *zm = user;
    if (zm->calls++ == 0) zm->be->download(zm->be, zm->first_in, x, (size_t)zm->n * sizeof(float));
    zm->be->zero(zm->be, out, (size_t)zm->n * sizeof(float));
    return 0;
}

static void test_zero_model_scalings(void **state) {
    (void)state;
    Points p;
    make_points(&p, 16);
    Schedule *s = sd_schedule(PRED_EPSILON);
    double sig[26], want[AN * APER];
    double init = diffusion_euler_sigmas(s, 25, sig);
    SamplerKind kinds[2] = { SAMPLER_EULER, SAMPLER_DDIM };
    for (int k = 0; k < 2; k++) {
        Backend *be = backend_cpu_create();
        ZeroModel zm = { .be = be, .n = AN * APER };
        float *x = dev_from_doubles(be, p.z, AN * APER);
        SamplerOpts o = { .kind = kinds[k], .steps = 25, .guidance = 1.0f };
        assert_int_equal(diffusion_sample(be, s, &o, zero_model, &zm, NULL, NULL, x, AN, APER), 0);
        double f = k == 0 ? init : sqrt(s->alphas_cumprod[0] / s->alphas_cumprod[961]);
        for (int i = 0; i < AN * APER; i++) want[i] = f * (float)p.z[i];
        dev_check(be, k == 0 ? "euler zero model" : "ddim zero model", x, want, AN * APER, 1e-5);
        for (int i = 0; i < AN * APER; i++) check_close("first model input", i, zm.first_in[i], p.z[i], 1e-5);
        be->free(be, x);
        backend_destroy(be);
    }
    free(s);
}

static void test_sample_errors(void **state) {
    (void)state;
    Backend *be = backend_cpu_create();
    Schedule *s = sd_schedule(PRED_EPSILON);
    Points p;
    make_points(&p, 15);
    float *x = dev_from_doubles(be, p.z, AN * APER);
    PointModel cond = { be, s, p.c1, p.c1, AN, APER, 0, 3 };
    SamplerOpts o = { .kind = SAMPLER_EULER, .steps = 25, .guidance = 1.0f };
    /* a failing model stops the sampler with -1 (the model keeps the message) */
    assert_int_equal(diffusion_sample(be, s, &o, point_model, &cond, NULL, NULL, x, AN, APER), -1);
    assert_int_equal(cond.calls, 4);
    /* invalid opts never reach the model */
    cond.calls = 0;
    o.steps = 0;
    assert_int_equal(diffusion_sample(be, s, &o, point_model, &cond, NULL, NULL, x, AN, APER), -1);
    assert_int_equal(cond.calls, 0);
    be->free(be, x);
    free(s);
    backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_timesteps),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_ddim_step_golden),
        cmocka_unit_test(test_euler_step_golden),
        cmocka_unit_test(test_q_sample_targets),
        cmocka_unit_test(test_analytic_ddim),
        cmocka_unit_test(test_analytic_euler),
        cmocka_unit_test(test_analytic_cfg),
        cmocka_unit_test(test_ddim_eta),
        cmocka_unit_test(test_zero_model_scalings),
        cmocka_unit_test(test_sample_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

#!/usr/bin/env python3
"""Golden values for tests/test_diffusion.c.

An independent PyTorch re-implementation of diffusers' DDIMScheduler and
EulerDiscreteScheduler formulas with SD 1.5's scheduler config
(num_train_timesteps 1000, scaled_linear 0.00085 -> 0.012, set_alpha_to_one
False, steps_offset 1, timestep_spacing "leading", clip_sample False).
The schedule is computed in float64 (the C code's precision); the float32
alphas_cumprod diffusers itself holds is written too, so the test can show the
two agree to float32 rounding. Steps follow diffusers' step() literally
(predict x0, then recombine), in float64 from float32 inputs.

Output: tests/golden/diffusion.txt, blocks of
    <name> <count>
    <value> ... (one per line, %.17g)
Run from the repo root: /usr/bin/python3 tests/golden/gen_diffusion_golden.py
"""
import os

import torch

T = 1000
BETA_START, BETA_END = 0.00085, 0.012
STEPS_OFFSET = 1

out = []


def emit(name, values):
    vals = [float(v) for v in torch.as_tensor(values).flatten().tolist()]
    out.append(f"{name} {len(vals)}")
    out.extend(f"{v:.17g}" for v in vals)


def schedule(dtype):
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, T, dtype=dtype) ** 2
    return betas, torch.cumprod(1.0 - betas, dim=0)


betas, ac = schedule(torch.float64)
_, ac32 = schedule(torch.float32)
emit("betas", betas)
emit("alphas_cumprod", ac)
emit("alphas_cumprod_f32", ac32)


def leading_timesteps(steps):
    ratio = T // steps
    return torch.arange(0, steps, dtype=torch.int64).flip(0) * ratio + STEPS_OFFSET


def euler_sigmas(steps):
    ts = leading_timesteps(steps).to(torch.float64)
    full = ((1 - ac) / ac) ** 0.5
    # linear interpolation of the training sigmas at the (integer) timesteps
    lo = ts.floor().long()
    hi = (lo + 1).clamp(max=T - 1)
    w = ts - lo.to(torch.float64)
    sig = full[lo] * (1 - w) + full[hi] * w
    sig = torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
    init_noise_sigma = (sig.max() ** 2 + 1) ** 0.5
    return ts, sig, init_noise_sigma


for steps in (25, 50):
    emit(f"ddim_timesteps_{steps}", leading_timesteps(steps))
    ts, sig, ins = euler_sigmas(steps)
    emit(f"euler_timesteps_{steps}", ts)
    emit(f"euler_sigmas_{steps}", sig)
    emit(f"euler_init_sigma_{steps}", [ins])


def ddim_step(model_out, t, t_prev, x, pred, eta=0.0, noise=None):
    a = ac[t]
    ap = ac[t_prev] if t_prev >= 0 else ac[0]  # set_alpha_to_one False
    b = 1 - a
    if pred == "epsilon":
        x0 = (x - b ** 0.5 * model_out) / a ** 0.5
        eps = model_out
    else:
        x0 = a ** 0.5 * x - b ** 0.5 * model_out
        eps = a ** 0.5 * model_out + b ** 0.5 * x
    var = (1 - ap) / (1 - a) * (1 - a / ap)
    sd = eta * var ** 0.5
    prev = ap ** 0.5 * x0 + (1 - ap - sd ** 2) ** 0.5 * eps
    if eta > 0:
        prev = prev + sd * noise
    return prev


def euler_step(model_out, sigma, sigma_next, x, pred):
    if pred == "epsilon":
        x0 = x - sigma * model_out
    else:
        x0 = model_out * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)
    d = (x - x0) / sigma
    return x + d * (sigma_next - sigma)


g = torch.Generator().manual_seed(1234)
n = 48
x = torch.randn(n, generator=g).to(torch.float64)
m = torch.randn(n, generator=g).to(torch.float64)
z = torch.randn(n, generator=g).to(torch.float64)
emit("step_x", x)
emit("step_model", m)
emit("step_noise", z)

# DDIM, 25 steps: a middle step, and the last one (t=1, prev<0 -> alphas_cumprod[0])
emit("ddim_eps_481_441", ddim_step(m, 481, 441, x, "epsilon"))
emit("ddim_v_481_441", ddim_step(m, 481, 441, x, "v"))
emit("ddim_eps_1_last", ddim_step(m, 1, 1 - 40, x, "epsilon"))
emit("ddim_v_1_last", ddim_step(m, 1, 1 - 40, x, "v"))
emit("ddim_eps_eta05_481_441", ddim_step(m, 481, 441, x, "epsilon", 0.5, z))

# Euler, 25 steps: step index 12 and the last (sigma_next = 0); x in sigma space
_, sig25, _ = euler_sigmas(25)
xs = x * (sig25[12] ** 2 + 1) ** 0.5
emit("euler_x_12", xs)
emit("euler_eps_12", euler_step(m, sig25[12], sig25[13], xs, "epsilon"))
emit("euler_v_12", euler_step(m, sig25[12], sig25[13], xs, "v"))
emit("euler_eps_last", euler_step(m, sig25[24], sig25[25], x, "epsilon"))
emit("euler_v_last", euler_step(m, sig25[24], sig25[25], x, "v"))

# q_sample and targets: N=3 items of 16, t per item
N, per = 3, 16
tq = torch.tensor([0, 500, 999])
x0 = torch.randn(N, per, generator=g).to(torch.float64)
nz = torch.randn(N, per, generator=g).to(torch.float64)
sa = ac[tq].sqrt()[:, None]
sb = (1 - ac[tq]).sqrt()[:, None]
emit("q_t", tq)
emit("q_x0", x0)
emit("q_noise", nz)
emit("q_xt", sa * x0 + sb * nz)
emit("q_v", sa * nz - sb * x0)

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "diffusion.txt")
with open(path, "w") as f:
    f.write("\n".join(out) + "\n")
print(f"wrote {path}")

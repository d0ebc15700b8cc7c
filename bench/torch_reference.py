#!/usr/bin/python3
"""PyTorch reference timings for `make bench` (bench/bench_train.c).

Times one training step of exactly the model the C bench uses, the built-in
"tiny" UNet of src/unet.c (unet_config_builtin), in PyTorch float32 on the CPU:
32x32 RGB, 32 context tokens x 64, random timesteps, 2 threads. Rows:

  no adapter (fwd+bwd)  forward + MSE + backward with all weights frozen, doing the work the
                        C engine does here: with no adapter and no input gradient wanted,
                        its backward_pass stops at the down path, so the gradient runs through
                        conv_out, the up path and the mid block only (cut at the mid input
                        and at the skip tensors)
  no adapter (bwd to x) the same, but backward all the way to the input (d loss / d x)
  KronA 4x4 attn        KronA a1=a2=4 on attn1/attn2 to_q/to_k/to_v/to_out.0, base frozen,
                        zero_grad + forward + MSE + backward + AdamW over the adapters only

The UNet is the independent reference in tests/golden/gen_unet_golden.py (imported,
unchanged). KronA is applied the efficient way, y += s * A X B^T with x viewed as an
a2 x (d_in/a2) matrix X (einsum -> two GEMMs), not with torch.kron's full d_out x d_in
matrix. OpenBLAS runs single-threaded as in the C engine (see child_env).

Each row runs in a fresh child process so that memory and allocator state do not leak
between rows; "peak MB" is that process's peak resident memory (VmHWM) minus its resident
memory right after `import torch`: weights + activations + allocator slack, so only
roughly comparable to the C backend's exact peak of live allocations.

    /usr/bin/python3 bench/torch_reference.py [out.txt]   # default bench/results-torch.txt
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The "tiny" config of src/unet.c unet_config_builtin (+ cfg_common defaults), in
# diffusers' terms. diffusers' attention_head_dim is the number of heads (C: heads[i] = 4).
TINY = {
    "in_channels": 3, "out_channels": 3, "sample_size": 32,
    "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64, 64], "layers_per_block": 1,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu",
    "norm_num_groups": 16, "norm_eps": 1e-5, "cross_attention_dim": 64,
    "transformer_layers_per_block": 1, "attention_head_dim": 4,
    "use_linear_projection": False,
}
H = W = 32
L = 32
A1 = A2 = 4
THREADS = 2
WARMUP = 3
CASES = [("no adapter (fwd+bwd)", "cut"), ("no adapter (bwd to x)", "dx"),
         ("KronA 4x4 attn", "krona")]
BATCHES = [(1, 20), (8, 6)]  # (batch, timed steps)


def rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def load_reference():
    sys.path.insert(0, os.path.join(ROOT, "tests", "golden"))
    import gen_unet_golden as g
    return g


def make_fast_klinear(g):
    class FastKLinear(g.KLinear):
        """KLinear with y += s * x (A ⊗ B)^T computed as Y = A X B^T per row, with
        X = x viewed [.., a2, b2] and Y [.., a1, b1]. torch's einsum turns this into
        two plain 2D GEMMs; measured here it beat matmul(A, matmul(X, B^T)), whose
        broadcast A becomes a batched GEMM of thousands of 4x4 products."""

        def forward(self, x):
            y = g.F.linear(x, self.weight, self.bias)
            if self.kron is not None:
                A, B, s = self.kron
                X = x.reshape(*x.shape[:-1], A.shape[1], B.shape[1])
                Y = g.torch.einsum("ij,...jl,kl->...ik", A, X, B)
                y = y + s * Y.reshape(y.shape)
            return y
    return FastKLinear


def attach(g, model, fast, a1, a2, dtype=None):
    """KronA on attention q/k/v/out; A ~ U(+-1/sqrt(a2)) and B = 0 as the C engine
    (LyCORIS lokr_w1 / lokr_w2 init). Returns the trainable tensors."""
    torch = g.torch
    params = []
    for _, m in g.adaptable(model, "attn"):
        dout, din = m.weight.shape
        A = torch.empty(a1, a2, dtype=dtype).uniform_(-a2 ** -0.5, a2 ** -0.5).requires_grad_(True)
        B = torch.zeros(dout // a1, din // a2, dtype=dtype, requires_grad=True)
        if fast is not None:
            m.__class__ = fast
        m.kron = (A, B, 1.0)
        params += [A, B]
    return params


def forward_cut(g, model, x, t, ctx):
    """The reference UNet2DConditionModel.forward, but the down path's output and
    skip tensors become leaves: backward then covers the mid block and the up path
    only, as the C engine's backward without adapters and without dx."""
    c = model.c
    emb = model.time_embedding(g.timestep_embedding(t, c["block_out_channels"][0],
                                                    c["flip_sin_to_cos"], c["freq_shift"]))
    h = model.conv_in(x)
    skips = [h]
    for b in model.down_blocks:
        h, o = b(h, emb, ctx)
        skips += o
    h = h.detach().requires_grad_(True)
    skips = [s.detach().requires_grad_(True) for s in skips]
    h = model.mid_block(h, emb, ctx)
    for b in model.up_blocks:
        h = b(h, skips, emb, ctx)
    return model.conv_out(g.F.silu(model.conv_norm_out(h)))


def check_paths(g):
    """The reshape+matmul KronA must give what torch.kron gives, and forward_cut what the
    reference forward gives (float64, whole model). Returns the larger max error."""
    torch = g.torch
    torch.manual_seed(0)
    m = g.UNet2DConditionModel(TINY).double()
    ad = attach(g, m, None, A1, A2, torch.float64)
    with torch.no_grad():
        for i in range(1, len(ad), 2):
            ad[i].normal_(0, 0.05)
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    t = torch.tensor([10.0, 900.0], dtype=torch.float64)
    c = torch.randn(2, L, TINY["cross_attention_dim"], dtype=torch.float64)
    with torch.no_grad():
        ref = m(x, t, c)
        fast = make_fast_klinear(g)
        for _, lin in g.adaptable(m, "attn"):
            lin.__class__ = fast
        got = m(x, t, c)
        cut = forward_cut(g, m, x, t, c)
    return max((got - ref).abs().max().item(), (cut - ref).abs().max().item())


def run_row(kind, B, reps):
    import torch
    base_kb = rss_kb("VmRSS")
    torch.set_num_threads(THREADS)
    g = load_reference()
    torch.manual_seed(1)
    model = g.UNet2DConditionModel(TINY)  # float32
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(B, TINY["in_channels"], H, W)
    tgt = torch.randn(B, TINY["out_channels"], H, W)
    ctx = torch.randn(B, L, TINY["cross_attention_dim"])
    t = torch.randint(0, 1000, (B,)).float()
    opt = None
    params = []
    if kind == "krona":
        params = attach(g, model, make_fast_klinear(g), A1, A2)
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    elif kind == "dx":
        x.requires_grad_(True)
    times = []
    for it in range(WARMUP + reps):
        t0 = time.perf_counter()
        if opt is not None:
            opt.zero_grad()
        else:
            x.grad = None
        y = forward_cut(g, model, x, t, ctx) if kind == "cut" else model(x, t, ctx)
        loss = torch.nn.functional.mse_loss(y, tgt)
        loss.backward()
        if opt is not None:
            opt.step()
        dt = (time.perf_counter() - t0) * 1000.0
        if it >= WARMUP:
            times.append(dt)
    times.sort()
    return {"batch": B, "trainable": sum(p.numel() for p in params),
            "base_params": sum(p.numel() for p in model.parameters()),
            "ms_median": times[reps // 2], "ms_min": times[0],
            "peak_mb": (rss_kb("VmHWM") - base_kb) / 1024.0,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def child_env():
    """Same OpenBLAS setup as the C engine under `make bench`: torch's matmuls go
    through Debian's OpenBLAS too, which misdetects recent Xeons (OPENBLAS_CORETYPE),
    and is the pthreads build: its 2 threads on top of torch's 2 OpenMP threads
    oversubscribe 2 cores (measured here: up to 40x slower steps under load). The C
    backend calls openblas_set_num_threads(1) and threads itself; torch gets the
    same, its intra-op parallelism being OpenMP. Both can be overridden from the
    environment."""
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    if not env.get("OPENBLAS_CORETYPE"):
        ct = openblas_coretype()
        if ct:
            env["OPENBLAS_CORETYPE"] = ct
    return env


def openblas_coretype():
    """The kernels the C backend selects for this CPU (backend_cpu.c does the same)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
    except OSError:
        return ""
    if all(x in flags for x in ("avx512f", "avx512bw", "avx512vl", "avx512dq")):
        return "SkylakeX"
    if "avx2" in flags and "fma" in flags:
        return "Haswell"
    return ""


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--row":
        print(json.dumps(run_row(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return 0
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "results-torch.txt")
    g = load_reference()
    err = check_paths(g)
    if err > 1e-10:
        print(f"reshape+matmul KronA or forward_cut disagrees with the reference: max err {err:.2e}")
        return 1
    env = child_env()
    load0 = os.getloadavg()
    rows = []
    for B, reps in BATCHES:
        for what, kind in CASES:
            p = subprocess.run([sys.executable, os.path.abspath(__file__), "--row", kind, str(B),
                                str(reps)], capture_output=True, text=True, env=env)
            if p.returncode != 0:
                print(f"{what} batch {B} failed:\n{p.stderr}", file=sys.stderr)
                return 1
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["what"] = what
            rows.append(r)
    lines = [f"PyTorch {rows[0]['torch']} reference: one training step, tiny UNet (32/64/64), "
             f"32x32 RGB, 32 tokens, CPU float32, {rows[0]['threads']} threads, "
             f"OPENBLAS_CORETYPE={env.get('OPENBLAS_CORETYPE', '(auto)')} "
             f"OPENBLAS_NUM_THREADS={env.get('OPENBLAS_NUM_THREADS', '(default)')}",
             "%-24s %5s %10s %12s %10s %10s" % ("adapter", "batch", "trainable", "median ms",
                                                "min ms", "peak MB")]
    for r in rows:
        lines.append("%-24s %5d %10d %12.1f %10.1f %10.1f" % (r["what"], r["batch"], r["trainable"],
                                                              r["ms_median"], r["ms_min"],
                                                              r["peak_mb"]))
    load1 = os.getloadavg()
    lines.append("load average (1/5/15 min) before %.2f %.2f %.2f, after %.2f %.2f %.2f on %d cores"
                 % (load0 + load1 + (os.cpu_count() or 0,)))
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(out, "w") as f:
        f.write(text)
    print(f"written to {out} ({rows[0]['base_params']} base parameters; fast paths vs "
          f"reference max err {err:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

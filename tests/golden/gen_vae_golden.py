#!/usr/bin/python3
"""Golden values for the C VAE (src/models/vae.c): diffusers' AutoencoderKL.

An independent plain-torch re-implementation of AutoencoderKL (Encoder, Decoder,
DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D, ResnetBlock2D without a time
embedding, the single-head mid-block Attention, Downsample2D with its (0,1,0,1)
pad, Upsample2D), written from the architecture, not importing diffusers. Its
state_dict keys are diffusers' keys. Weights and inputs are drawn in float32 and
stored as they are; the outputs are computed from them in float64, so the stored
values give the stored outputs to float64 precision.

Run from the repository root (about 1 s, deterministic):
    /usr/bin/python3 tests/golden/gen_vae_golden.py            # writes the goldens
    /usr/bin/python3 tests/golden/gen_vae_golden.py --counts   # only the SD parameter count
See tests/golden/README.md for the key layout.
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DEV = "cpu"  # "meta" for parameter counts
EPS = 1e-6   # every GroupNorm of the VAE

# the SD VAE (runwayml/stable-diffusion-v1-5 vae, stabilityai/sdxl-vae: same shapes)
SD_VAE_PARAMS = 83653863


def conv(i, o, k, stride=1, pad=0):
    return nn.Conv2d(i, o, k, stride=stride, padding=pad, device=DEV)


def gn(groups, ch):
    return nn.GroupNorm(groups, ch, eps=EPS, affine=True, device=DEV)


class ResnetBlock2D(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.norm1 = gn(groups, cin)
        self.conv1 = conv(cin, cout, 3, pad=1)
        self.norm2 = gn(groups, cout)
        self.conv2 = conv(cout, cout, 3, pad=1)
        if cin != cout:
            self.conv_shortcut = conv(cin, cout, 1)
        else:
            self.conv_shortcut = None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        s = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return s + h


class Attention(nn.Module):
    """One head over the H*W tokens, C channels, biases on q/k/v/out."""

    def __init__(self, ch, groups):
        super().__init__()
        self.group_norm = gn(groups, ch)
        self.to_q = nn.Linear(ch, ch, device=DEV)
        self.to_k = nn.Linear(ch, ch, device=DEV)
        self.to_v = nn.Linear(ch, ch, device=DEV)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch, device=DEV)])

    def forward(self, x):
        n, c, h, w = x.shape
        t = self.group_norm(x).reshape(n, c, h * w).transpose(1, 2)   # [N, HW, C]
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        s = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(c)         # no baddbmm
        p = torch.softmax(s, dim=-1)
        o = self.to_out[0](torch.matmul(p, v))
        return x + o.transpose(1, 2).reshape(n, c, h, w)


class MidBlock(nn.Module):
    def __init__(self, ch, groups, attn):
        super().__init__()
        self.attentions = nn.ModuleList([Attention(ch, groups)] if attn else [])
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, groups), ResnetBlock2D(ch, ch, groups)])

    def forward(self, x):
        x = self.resnets[0](x)
        for a in self.attentions:
            x = a(x)
        return self.resnets[1](x)


class Downsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = conv(ch, ch, 3, stride=2, pad=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))   # right and bottom by one, zeros


class Upsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = conv(ch, ch, 3, pad=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownEncoderBlock2D(nn.Module):
    def __init__(self, cin, cout, n, groups, down):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if j == 0 else cout, cout, groups)
                                      for j in range(n)])
        self.downsamplers = nn.ModuleList([Downsample2D(cout)] if down else [])

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        for d in self.downsamplers:
            x = d(x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cin, cout, n, groups, up):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if j == 0 else cout, cout, groups)
                                      for j in range(n)])
        self.upsamplers = nn.ModuleList([Upsample2D(cout)] if up else [])

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        for u in self.upsamplers:
            x = u(x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        boc, g, lpb = cfg["block_out_channels"], cfg["norm_num_groups"], cfg["layers_per_block"]
        self.conv_in = conv(cfg["in_channels"], boc[0], 3, pad=1)
        self.down_blocks = nn.ModuleList()
        out = boc[0]
        for i in range(len(boc)):
            cin, out = out, boc[i]
            self.down_blocks.append(DownEncoderBlock2D(cin, out, lpb, g, i != len(boc) - 1))
        self.mid_block = MidBlock(boc[-1], g, cfg.get("mid_block_add_attention", True))
        self.conv_norm_out = gn(g, boc[-1])
        self.conv_out = conv(boc[-1], 2 * cfg["latent_channels"], 3, pad=1)

    def forward(self, x):
        x = self.conv_in(x)
        for b in self.down_blocks:
            x = b(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        boc, g, lpb = cfg["block_out_channels"], cfg["norm_num_groups"], cfg["layers_per_block"]
        self.conv_in = conv(cfg["latent_channels"], boc[-1], 3, pad=1)
        self.mid_block = MidBlock(boc[-1], g, cfg.get("mid_block_add_attention", True))
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(boc))
        out = rev[0]
        for i in range(len(rev)):
            prev, out = out, rev[i]
            self.up_blocks.append(UpDecoderBlock2D(prev, out, lpb + 1, g, i != len(rev) - 1))
        self.conv_norm_out = gn(g, boc[0])
        self.conv_out = conv(boc[0], cfg["out_channels"], 3, pad=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        L = cfg["latent_channels"]
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = conv(2 * L, 2 * L, 1) if cfg.get("use_quant_conv", True) else None
        self.post_quant_conv = conv(L, L, 1) if cfg.get("use_post_quant_conv", True) else None

    def moments(self, x):
        m = self.encoder(x)
        if self.quant_conv is not None:
            m = self.quant_conv(m)
        mean, logvar = torch.chunk(m, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def encode_scaled(self, x, noise=None):
        """the latent a trainer feeds the UNet: (mean [+ std * noise]) * scaling_factor"""
        mean, logvar = self.moments(x)
        z = mean if noise is None else mean + torch.exp(0.5 * logvar) * noise
        return z * self.cfg.get("scaling_factor", 0.18215)

    def decode_scaled(self, z):
        z = z / self.cfg.get("scaling_factor", 0.18215)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


# ---------------------------------------------------------------- safetensors
def write_safetensors(path, tensors, metadata):
    hdr = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, off = [], 0
    for k in sorted(tensors):
        a = tensors[k].detach().to(torch.float32).contiguous()
        b = a.numpy().astype("<f4").tobytes()
        hdr[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        out[k] = torch.frombuffer(bytearray(data[b:e]), dtype=torch.float32).reshape(v["shape"])
    return hdr["__metadata__"], out


# ---------------------------------------------------------------- goldens
SD_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
          "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
          "norm_num_groups": 32}


def param_count(cfg):
    global DEV
    DEV = "meta"
    try:
        m = AutoencoderKL(cfg)
        return sum(p.numel() for p in m.parameters()), len(m.state_dict())
    finally:
        DEV = "cpu"


def make_golden(stem, cfg, N, H, W, seed):
    torch.manual_seed(seed)
    model = AutoencoderKL(cfg)   # float32, torch's default init
    with torch.no_grad():
        # norms: gamma ~ 1 + 0.2 n, beta ~ 0.2 n so that they matter in the check
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
            # biases too (torch's default init makes them small but nonzero already)
    f = 2 ** (len(cfg["block_out_channels"]) - 1)
    L = cfg["latent_channels"]
    image = torch.rand(N, cfg["in_channels"], H, W) * 2 - 1        # in [-1, 1]
    noise = torch.randn(N, L, H // f, W // f)
    latent = torch.randn(N, L, H // f, W // f)                    # a scaled latent to decode
    model = model.double()
    with torch.no_grad():
        mean = model.encode_scaled(image.double())
        sample = model.encode_scaled(image.double(), noise.double())
        dec = model.decode_scaled(latent.double())
        rt = model.decode_scaled(mean)
    T = {k: v for k, v in model.state_dict().items()}
    T["in.image"] = image
    T["in.noise"] = noise
    T["in.latent"] = latent
    T["out.mean"] = mean
    T["out.sample"] = sample
    T["out.decoded"] = dec
    T["out.roundtrip"] = rt
    meta = {"N": N, "H": H, "W": W, "config": f"{stem}.json",
            "generator": "tests/golden/gen_vae_golden.py (float32 weights and inputs, float64 "
                         "torch, outputs stored as F32)"}
    cfg_out = {"_class_name": "AutoencoderKL", "_note": "tests/golden/gen_vae_golden.py"}
    cfg_out.update(cfg)
    with open(os.path.join(HERE, stem + ".json"), "w") as fh:
        json.dump(cfg_out, fh, indent=1)
        fh.write("\n")
    path = os.path.join(HERE, stem + ".safetensors")
    write_safetensors(path, T, meta)

    # read back: the stored weights and inputs give the stored outputs
    _, back = read_safetensors(path)
    m2 = AutoencoderKL(cfg).double()
    m2.load_state_dict({k: v.double() for k, v in back.items() if not k.startswith(("in.", "out."))})
    with torch.no_grad():
        e1 = (m2.encode_scaled(back["in.image"].double()) - back["out.mean"].double()).abs().max()
        e2 = (m2.decode_scaled(back["in.latent"].double()) - back["out.decoded"].double()).abs().max()
    nparam = sum(p.numel() for p in model.parameters())
    print(f"{stem}: {nparam} params in {len(model.state_dict())} tensors, "
          f"file {os.path.getsize(path)} bytes")
    print(f"  |mean| max {mean.abs().max():.3f} std {mean.std():.3f}; |sample - mean| max "
          f"{(sample - mean).abs().max():.3f}; |decoded| max {dec.abs().max():.3f} std "
          f"{dec.std():.3f}; |roundtrip| std {rt.std():.3f}")
    print(f"  round trip through the F32 file: encode err {e1:.2e}, decode err {e2:.2e}")


# three levels (two downsamplers / upsamplers), a shortcut conv where the channels
# change (8 -> 16 in the encoder, 16 -> 8 in the decoder) and none where they do not,
# 2 resnets per encoder block (3 per decoder block), 2 or 4 channels per group, a
# non-default scaling factor (SDXL's), attention over 8x8 = 64 tokens of 16 channels
SMALL = {
    "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [8, 16, 16], "layers_per_block": 2, "act_fn": "silu",
    "latent_channels": 4, "norm_num_groups": 4, "sample_size": 32,
    "scaling_factor": 0.13025, "shift_factor": None, "force_upcast": True,
    "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
}

# the options: no quant convs, no mid-block attention; two levels, one resnet per block
PLAIN = {
    "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [8, 16], "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 4, "norm_num_groups": 4, "sample_size": 16,
    "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": False,
}


def main():
    torch.set_default_dtype(torch.float32)
    n, nt = param_count(SD_VAE)
    ok = n == SD_VAE_PARAMS
    print(f"SD VAE: {n:,} parameters in {nt} tensors (published {SD_VAE_PARAMS:,}) "
          f"{'OK' if ok else 'MISMATCH'}")
    if "--counts" in sys.argv:
        return 0 if ok else 1
    if not ok:
        print("parameter count does not match the published one; not writing goldens")
        return 1
    make_golden("vae_small", SMALL, N=2, H=32, W=32, seed=4242)
    make_golden("vae_plain", PLAIN, N=1, H=16, W=24, seed=77)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""gen_ldm_checkpoint.py — small random checkpoints in the original Stable Diffusion
single-file ("LDM") layout, and the same tensors under diffusers names.

For tests/test_convert.c. Plain Python 3 (no torch, no numpy): the files are written
with a small safetensors writer below. Deterministic: rerunning gives the same bytes.

    python3 tests/golden/gen_ldm_checkpoint.py     # from the repository root

How the names are made (independently of src/models/convert.c, which walks the
diffusers structure and computes the LDM names from a table):

1. The LDM side is built module by module in the order and with the attribute
   names of the original code: ldm/modules/diffusionmodules/openaimodel.py
   (UNetModel: time_embed, label_emb, input_blocks, middle_block, output_blocks,
   out; ResBlock's in_layers/emb_layers/out_layers Sequentials; SpatialTransformer;
   Downsample.op, Upsample.conv), ldm/modules/diffusionmodules/model.py
   (Encoder/Decoder: down[i].block[j], down[i].downsample, mid.block_1/attn_1/
   block_2, up[i] stored by level, AttnBlock's 1x1 convs q/k/v/proj_out),
   HF CLIPTextModel behind FrozenCLIPEmbedder.transformer, and OpenCLIP's text
   tower (token_embedding, positional_embedding, transformer.resblocks[i] with
   nn.MultiheadAttention's fused in_proj, ln_final, text_projection, logit_scale).
2. Each LDM tensor is then renamed to diffusers the way diffusers' converter does
   it: from the flat input/output block index by arithmetic (block = (i-1) //
   (layers_per_block+1) ...), the upsampler recognised as the sub-module whose
   tensors are conv.weight/conv.bias, the VAE's up.i reversed, q/k/v sliced out of
   in_proj, text_projection transposed, the VAE attention's [C,C,1,1] squeezed.

Files (tests/golden/):
  ldm_sd15like.safetensors             SD 1.5 layout, F32 (+ I64 position_ids,
                                       schedule and EMA bookkeeping keys)
  ldm_sd15like_diffusers.safetensors   the same weights as unet.* / vae.* /
                                       text_encoder.* (diffusers names behind the
                                       folder name); metadata: the part configs
  ldm_sdxllike.safetensors             SDXL base layout: UNet + text encoders F16,
                                       VAE BF16, logit_scale F32
  ldm_sdxllike_diffusers.safetensors   + text_encoder_2.*
The UNet configs are unet_sd15like.json / unet_sdxllike.json (this folder); the
VAE and text encoders are tiny, their configs are in the diffusers file's metadata.
"""
import json
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------- safetensors

DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4}


def encode(values, dtype):
    if dtype == "F32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "F16":
        return struct.pack("<%de" % len(values), *values)
    if dtype == "BF16":  # the upper half of the float32 bits (truncation: any bf16 is valid)
        f = struct.pack("<%df" % len(values), *values)
        return b"".join(f[i + 2:i + 4] for i in range(0, len(f), 4))
    if dtype == "I64":
        return struct.pack("<%dq" % len(values), *[int(v) for v in values])
    if dtype == "I32":
        return struct.pack("<%di" % len(values), *[int(v) for v in values])
    raise ValueError(dtype)


def write_safetensors(path, tensors, metadata=None):
    """tensors: name -> (dtype, shape, values). Keys sorted, data packed in that order."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    blobs, off = [], 0
    for name in sorted(tensors):
        dtype, shape, values = tensors[name]
        n = 1
        for s in shape:
            n *= s
        assert n == len(values), (name, shape, len(values))
        b = encode(values, dtype)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------- the LDM model


class Ldm:
    """Collects the LDM state dict: name -> (shape, values, dtype)."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.sd = {}
        self.dtype = "F32"

    def _values(self, n, kind, fan_in):
        r = self.rng
        if kind == "norm_w":
            return [1.0 + 0.2 * r.gauss(0, 1) for _ in range(n)]
        if kind == "norm_b":
            return [0.2 * r.gauss(0, 1) for _ in range(n)]
        bound = 1.0 / max(fan_in, 1) ** 0.5
        return [r.uniform(-bound, bound) for _ in range(n)]

    def tensor(self, name, shape, kind="w", fan_in=1, dtype=None):
        assert name not in self.sd, name
        n = 1
        for s in shape:
            n *= s
        vals = self._values(n, kind, fan_in)
        dt = dtype or self.dtype
        # round once through the stored dtype, so both files hold the same bits
        if dt in ("F16", "BF16", "F32"):
            raw = encode(vals, dt)
            if dt == "F32":
                vals = list(struct.unpack("<%df" % n, raw))
            elif dt == "F16":
                vals = list(struct.unpack("<%de" % n, raw))
            else:
                vals = [struct.unpack("<f", b"\0\0" + raw[2 * i:2 * i + 2])[0] for i in range(n)]
        self.sd[name] = (list(shape), vals, dt)

    # torch modules, as (name prefix, sizes)
    def conv(self, p, cin, cout, k):
        self.tensor(p + ".weight", [cout, cin, k, k], fan_in=cin * k * k)
        self.tensor(p + ".bias", [cout], fan_in=cin * k * k)

    def linear(self, p, din, dout, bias=True):
        self.tensor(p + ".weight", [dout, din], fan_in=din)
        if bias:
            self.tensor(p + ".bias", [dout], fan_in=din)

    def norm(self, p, c):
        self.tensor(p + ".weight", [c], "norm_w")
        self.tensor(p + ".bias", [c], "norm_b")


def ldm_unet(m, cfg, P="model.diffusion_model."):
    """openaimodel.UNetModel.__init__, recording parameters only."""
    boc = cfg["block_out_channels"]
    mc = boc[0]
    lpb = cfg["layers_per_block"]
    ctx = cfg["cross_attention_dim"]
    nl = len(boc)
    attn = [t.startswith("CrossAttn") for t in cfg["down_block_types"]]
    # LDM decides attention per resolution, so the up blocks mirror the down blocks
    assert attn[::-1] == [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    depth = cfg.get("transformer_layers_per_block", 1)
    depth = depth if isinstance(depth, list) else [depth] * nl
    linear_proj = cfg.get("use_linear_projection", False)
    ted = 4 * mc

    def resblock(p, ch, out):
        m.norm(p + ".in_layers.0", ch)
        m.conv(p + ".in_layers.2", ch, out, 3)
        m.linear(p + ".emb_layers.1", ted, out)
        m.norm(p + ".out_layers.0", out)
        m.conv(p + ".out_layers.3", out, out, 3)
        if out != ch:
            m.conv(p + ".skip_connection", ch, out, 1)

    def spatial_transformer(p, c, d):
        m.norm(p + ".norm", c)
        (m.linear if linear_proj else lambda q, a, b: m.conv(q, a, b, 1))(p + ".proj_in", c, c)
        for b in range(d):
            q = "%s.transformer_blocks.%d" % (p, b)
            for a, kv in (("attn1", c), ("attn2", ctx)):
                m.linear(q + "." + a + ".to_q", c, c, bias=False)
                m.linear(q + "." + a + ".to_k", kv, c, bias=False)
                m.linear(q + "." + a + ".to_v", kv, c, bias=False)
                m.linear(q + "." + a + ".to_out.0", c, c)
            m.linear(q + ".ff.net.0.proj", c, 8 * c)   # GEGLU: 2 x inner (4c)
            m.linear(q + ".ff.net.2", 4 * c, c)
            for k in (1, 2, 3):
                m.norm(q + ".norm%d" % k, c)
        (m.linear if linear_proj else lambda q, a, b: m.conv(q, a, b, 1))(p + ".proj_out", c, c)

    m.linear(P + "time_embed.0", mc, ted)
    m.linear(P + "time_embed.2", ted, ted)
    if cfg.get("addition_embed_type") == "text_time":
        adm = cfg["projection_class_embeddings_input_dim"]
        m.linear(P + "label_emb.0.0", adm, ted)
        m.linear(P + "label_emb.0.2", ted, ted)
    input_blocks = 1
    m.conv(P + "input_blocks.0.0", cfg["in_channels"], mc, 3)
    ch, chans = mc, [mc]
    for level in range(nl):
        for _ in range(lpb):
            p = P + "input_blocks.%d" % input_blocks
            resblock(p + ".0", ch, boc[level])
            ch = boc[level]
            if attn[level]:
                spatial_transformer(p + ".1", ch, depth[level])
            input_blocks += 1
            chans.append(ch)
        if level != nl - 1:
            m.conv(P + "input_blocks.%d.0.op" % input_blocks, ch, ch, 3)
            input_blocks += 1
            chans.append(ch)
    resblock(P + "middle_block.0", ch, ch)
    spatial_transformer(P + "middle_block.1", ch, depth[-1])
    resblock(P + "middle_block.2", ch, ch)
    output_blocks = 0
    for level in reversed(range(nl)):
        for i in range(lpb + 1):
            p = P + "output_blocks.%d" % output_blocks
            resblock(p + ".0", ch + chans.pop(), boc[level])
            ch = boc[level]
            sub = 1
            if attn[level]:
                spatial_transformer(p + ".1", ch, depth[level])
                sub = 2
            if level and i == lpb:
                m.conv("%s.%d.conv" % (p, sub), ch, ch, 3)
            output_blocks += 1
    m.norm(P + "out.0", mc)
    m.conv(P + "out.2", mc, cfg["out_channels"], 3)


def ldm_vae(m, vc, P="first_stage_model."):
    """model.Encoder / model.Decoder (no attention inside the levels: SD's
    attn_resolutions is empty) + AutoencoderKL's quant convs."""
    boc, nr, z = vc["block_out_channels"], vc["layers_per_block"], vc["latent_channels"]
    nl = len(boc)

    def resnet(p, cin, cout):
        m.norm(p + ".norm1", cin)
        m.conv(p + ".conv1", cin, cout, 3)
        m.norm(p + ".norm2", cout)
        m.conv(p + ".conv2", cout, cout, 3)
        if cin != cout:
            m.conv(p + ".nin_shortcut", cin, cout, 1)

    def mid(p, c):
        resnet(p + ".block_1", c, c)
        m.norm(p + ".attn_1.norm", c)
        for k in ("q", "k", "v", "proj_out"):
            m.conv(p + ".attn_1." + k, c, c, 1)
        resnet(p + ".block_2", c, c)

    e = P + "encoder"
    m.conv(e + ".conv_in", vc["in_channels"], boc[0], 3)
    cin = boc[0]
    for i in range(nl):
        for j in range(nr):
            resnet("%s.down.%d.block.%d" % (e, i, j), cin, boc[i])
            cin = boc[i]
        if i != nl - 1:
            m.conv("%s.down.%d.downsample.conv" % (e, i), cin, cin, 3)
    mid(e + ".mid", cin)
    m.norm(e + ".norm_out", cin)
    m.conv(e + ".conv_out", cin, 2 * z, 3)
    d = P + "decoder"
    cin = boc[-1]
    m.conv(d + ".conv_in", z, cin, 3)
    mid(d + ".mid", cin)
    for i in reversed(range(nl)):          # built deepest first, stored as up[i]
        for j in range(nr + 1):
            resnet("%s.up.%d.block.%d" % (d, i, j), cin, boc[i])
            cin = boc[i]
        if i != 0:
            m.conv("%s.up.%d.upsample.conv" % (d, i), cin, cin, 3)
    m.norm(d + ".norm_out", cin)
    m.conv(d + ".conv_out", cin, vc["out_channels"], 3)
    m.conv(P + "quant_conv", 2 * z, 2 * z, 1)
    m.conv(P + "post_quant_conv", z, z, 1)


def hf_clip(m, tc, P):
    """HF CLIPTextModel's state dict behind the embedder's prefix."""
    h, f = tc["hidden_size"], tc["intermediate_size"]
    t = P + "text_model."
    m.tensor(t + "embeddings.token_embedding.weight", [tc["vocab_size"], h])
    m.tensor(t + "embeddings.position_embedding.weight", [tc["max_position_embeddings"], h])
    for i in range(tc["num_hidden_layers"]):
        p = t + "encoder.layers.%d." % i
        for k in ("k_proj", "v_proj", "q_proj", "out_proj"):
            m.linear(p + "self_attn." + k, h, h)
        m.norm(p + "layer_norm1", h)
        m.linear(p + "mlp.fc1", h, f)
        m.linear(p + "mlp.fc2", f, h)
        m.norm(p + "layer_norm2", h)
    m.norm(t + "final_layer_norm", h)


def open_clip(m, tc, P):
    """open_clip CLIP's text tower (SDXL deletes the visual tower)."""
    w, f = tc["hidden_size"], tc["intermediate_size"]
    m.tensor(P + "positional_embedding", [tc["max_position_embeddings"], w])
    m.tensor(P + "text_projection", [w, tc["projection_dim"]])
    m.tensor(P + "logit_scale", [], dtype="F32")
    m.tensor(P + "token_embedding.weight", [tc["vocab_size"], w])
    for i in range(tc["num_hidden_layers"]):
        p = P + "transformer.resblocks.%d." % i
        m.norm(p + "ln_1", w)
        m.tensor(p + "attn.in_proj_weight", [3 * w, w], fan_in=w)
        m.tensor(p + "attn.in_proj_bias", [3 * w], fan_in=w)
        m.linear(p + "attn.out_proj", w, w)
        m.norm(p + "ln_2", w)
        m.linear(p + "mlp.c_fc", w, f)
        m.linear(p + "mlp.c_proj", f, w)
    m.norm(P + "ln_final", w)


# ---------------------------------------------------------------- LDM -> diffusers


def unet_name(rest, lpb):
    """A UNet key without model.diffusion_model. -> its diffusers name."""
    res = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
           ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")]

    def resnet(tail):
        for a, b in res:
            if tail.startswith(a + "."):
                return b + tail[len(a):]
        raise KeyError(tail)

    fixed = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2",
             "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
    for a, b in fixed.items():
        if rest.startswith(a + "."):
            return b + rest[len(a):]
    s = rest.split(".")
    if s[0] == "middle_block":
        tail = ".".join(s[2:])
        if s[1] == "1":
            return "mid_block.attentions.0." + tail
        return "mid_block.resnets.%d.%s" % (int(s[1]) // 2, resnet(tail))
    i, sub, tail = int(s[1]), int(s[2]), ".".join(s[3:])
    if s[0] == "input_blocks":
        block, layer = (i - 1) // (lpb + 1), (i - 1) % (lpb + 1)
        if tail.startswith("op."):
            return "down_blocks.%d.downsamplers.0.conv.%s" % (block, tail[3:])
        if sub == 0:
            return "down_blocks.%d.resnets.%d.%s" % (block, layer, resnet(tail))
        return "down_blocks.%d.attentions.%d.%s" % (block, layer, tail)
    assert s[0] == "output_blocks", rest
    block, layer = i // (lpb + 1), i % (lpb + 1)
    if sub == 0:
        return "up_blocks.%d.resnets.%d.%s" % (block, layer, resnet(tail))
    if tail in ("conv.weight", "conv.bias"):   # Upsample: the sub-module holding conv.*
        return "up_blocks.%d.upsamplers.0.%s" % (block, tail)
    return "up_blocks.%d.attentions.%d.%s" % (block, layer, tail)


def vae_name(rest, nl):
    """A VAE key without first_stage_model. -> (diffusers name, squeeze 1x1?)."""
    s = rest.split(".")
    if s[0] in ("quant_conv", "post_quant_conv"):
        return rest, False
    half, s = s[0], s[1:]
    if s[0] in ("conv_in", "conv_out"):
        return rest, False
    if s[0] == "norm_out":
        return "%s.conv_norm_out.%s" % (half, s[1]), False
    if s[0] == "mid":
        if s[1] == "attn_1":
            ren = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
            return ("%s.mid_block.attentions.0.%s.%s" % (half, ren[s[2]], s[3]),
                    s[2] != "norm" and s[3] == "weight")
        j = {"block_1": 0, "block_2": 1}[s[1]]
        tail = ".".join(s[2:]).replace("nin_shortcut", "conv_shortcut")
        return "%s.mid_block.resnets.%d.%s" % (half, j, tail), False
    i = int(s[1])
    kind = "down_blocks" if s[0] == "down" else "up_blocks"
    if s[0] == "up":
        i = nl - 1 - i                      # diffusers counts up blocks from the deepest
    if s[2] in ("downsample", "upsample"):
        return "%s.%s.%d.%ssamplers.0.%s" % (half, kind, i, s[2][:-6], ".".join(s[3:])), False
    tail = ".".join(s[4:]).replace("nin_shortcut", "conv_shortcut")
    return "%s.%s.%d.resnets.%s.%s" % (half, kind, i, s[3], tail), False


OPEN_CLIP_RENAME = [("transformer.resblocks.", "text_model.encoder.layers."), ("ln_1", "layer_norm1"),
                    ("ln_2", "layer_norm2"), (".c_fc.", ".fc1."), (".c_proj.", ".fc2."),
                    (".attn.", ".self_attn."), ("ln_final.", "text_model.final_layer_norm."),
                    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight")]


def convert(m, cfg, vc, parts):
    """LDM state dict -> {diffusers file key: (dtype, shape, values)}; also returns
    the LDM keys that are not weights (left in the single file on purpose)."""
    out, skipped = {}, []
    lpb, nl = cfg["layers_per_block"], len(vc["block_out_channels"])
    for key, (shape, vals, dt) in m.sd.items():
        if key.startswith("model.diffusion_model."):
            out["unet." + unet_name(key[22:], lpb)] = (dt, shape, vals)
        elif key.startswith("first_stage_model."):
            name, squeeze = vae_name(key[18:], nl)
            out["vae." + name] = (dt, shape[:2] if squeeze else shape, vals)
        elif key.startswith(parts["text"]) and not key.endswith("position_ids"):
            out["text_encoder." + key[len(parts["text"]):]] = (dt, shape, vals)
        elif "text_2" in parts and key.startswith(parts["text_2"]) and key != parts["text_2"] + "logit_scale":
            rest = key[len(parts["text_2"]):]
            if rest == "positional_embedding":
                out["text_encoder_2.text_model.embeddings.position_embedding.weight"] = (dt, shape, vals)
            elif rest == "text_projection":         # [in, out] -> HF Linear weight [out, in]
                a, b = shape
                tv = [vals[i * b + j] for j in range(b) for i in range(a)]
                out["text_encoder_2.text_projection.weight"] = (dt, [b, a], tv)
            elif rest.endswith("attn.in_proj_weight") or rest.endswith("attn.in_proj_bias"):
                base = rest.rsplit(".", 1)[0].replace("transformer.resblocks.", "text_model.encoder.layers.")
                base = base.replace(".attn", ".self_attn")
                suffix = "weight" if rest.endswith("weight") else "bias"
                w = shape[0] // 3
                per = len(vals) // 3
                for k, qkv in enumerate(("q_proj", "k_proj", "v_proj")):
                    out["text_encoder_2.%s.%s.%s" % (base, qkv, suffix)] = (
                        dt, [w] + shape[1:], vals[k * per:(k + 1) * per])
            else:
                for a, b in OPEN_CLIP_RENAME:
                    rest = rest.replace(a, b)
                out["text_encoder_2." + rest] = (dt, shape, vals)
        else:
            skipped.append(key)
    return out, skipped


# ---------------------------------------------------------------- the two models


def tiny_vae():
    return {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
            "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}


def tiny_clip(hidden, layers, act, proj=0):
    c = {"architectures": ["CLIPTextModelWithProjection" if proj else "CLIPTextModel"],
         "vocab_size": 64, "hidden_size": hidden, "intermediate_size": 4 * hidden,
         "num_hidden_layers": layers, "num_attention_heads": 2, "max_position_embeddings": 8,
         "hidden_act": act, "layer_norm_eps": 1e-5, "eos_token_id": 63}
    if proj:
        c["projection_dim"] = proj
    return c


def make(stem, seed, sdxl):
    with open(os.path.join(HERE, "unet_%s.json" % stem)) as f:
        cfg = json.load(f)
    vc = tiny_vae()
    m = Ldm(seed)
    meta = {"generator": "tests/golden/gen_ldm_checkpoint.py",
            "unet_config": "tests/golden/unet_%s.json" % stem, "vae_config": json.dumps(vc)}
    if not sdxl:
        te = tiny_clip(cfg["cross_attention_dim"], 2, "quick_gelu")
        parts = {"text": "cond_stage_model.transformer."}
        ldm_unet(m, cfg)
        ldm_vae(m, vc)
        hf_clip(m, te, parts["text"])
        # what a real SD 1.5 file carries besides the weights
        m.sd[parts["text"] + "text_model.embeddings.position_ids"] = ([1, 8], list(range(8)), "I64")
        m.tensor("alphas_cumprod", [16], "norm_w")
        m.tensor("betas", [16], "norm_b")
        m.tensor("model_ema.decay", [], "norm_w")
        m.sd["model_ema.num_updates"] = ([], [12345], "I32")
        meta["text_encoder_config"] = json.dumps(te)
    else:
        # context = CLIP-L hidden + bigG hidden; pooled (bigG projection) + 6 time ids
        h = cfg["cross_attention_dim"] // 2
        proj = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        te = tiny_clip(h, 2, "quick_gelu")
        te2 = tiny_clip(h, 3, "gelu", proj)
        parts = {"text": "conditioner.embedders.0.transformer.", "text_2": "conditioner.embedders.1.model."}
        m.dtype = "F16"
        ldm_unet(m, cfg)
        m.dtype = "BF16"
        ldm_vae(m, vc)
        m.dtype = "F16"
        hf_clip(m, te, parts["text"])
        open_clip(m, te2, parts["text_2"])
        m.sd[parts["text"] + "text_model.embeddings.position_ids"] = ([1, 8], list(range(8)), "I64")
        meta["text_encoder_config"] = json.dumps(te)
        meta["text_encoder_2_config"] = json.dumps(te2)
    diff, skipped = convert(m, cfg, vc, parts)
    meta["ldm_not_weights"] = ",".join(sorted(skipped))
    ldm = {k: (dt, shape, vals) for k, (shape, vals, dt) in m.sd.items()}
    write_safetensors(os.path.join(HERE, "ldm_%s.safetensors" % stem), ldm)
    write_safetensors(os.path.join(HERE, "ldm_%s_diffusers.safetensors" % stem), diff, meta)
    n = sum(len(v[2]) for v in diff.values())
    print("ldm_%s: %d LDM keys (%d not weights), %d diffusers tensors, %d values" %
          (stem, len(ldm), len(skipped), len(diff), n))


if __name__ == "__main__":
    make("sd15like", 1515, False)
    make("sdxllike", 2020, True)

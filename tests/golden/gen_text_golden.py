#!/usr/bin/env python3
"""Golden for the CLIP text encoder: tests/golden/text_encoder.safetensors.

An independent PyTorch implementation of HF transformers' CLIPTextModelWithProjection
forward (written here from its semantics; transformers is not installed):
  embeddings = token_embedding(ids) + position_embedding(arange(L))
  per layer (pre-LN):  h = h + out_proj(causal_attention(q,k,v of layer_norm1(h)))
                       h = h + fc2(act(fc1(layer_norm2(h))))      act = quick_gelu
  hidden_states = (embeddings, after layer 0, ..., after layer n-1)
  last_hidden_state = final_layer_norm(hidden_states[-1])
  penultimate       = hidden_states[-2]             (no final norm; what SDXL uses)
  pooled            = last_hidden_state[b, first position of eos_token_id]
  text_embeds       = text_projection(pooled)       (Linear without bias)
The reference runs in float64 on float32 weights; outputs are stored as float32.

Contents (safetensors written by hand: u64 LE header length, JSON header with sorted
keys padded with spaces to a multiple of 8, then the data in key order):
  weights under HF names (text_model.*, text_projection.weight), F32
  ids [2,16] I32; last_hidden_state [2,16,32]; penultimate [2,16,32];
  pooled [2,32] (before projection); text_embeds [2,16]
  __metadata__.config: the HF config.json text for this model.

Run:  /usr/bin/python3 tests/golden/gen_text_golden.py   (from the repository root)
"""
import json
import math
import os
import struct

import torch

CONFIG = {
    "architectures": ["CLIPTextModelWithProjection"],
    "vocab_size": 300,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 16,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 16,
    "bos_token_id": 298,
    "eos_token_id": 299,
}


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def make_weights(g):
    c = CONFIG
    H, I, V, P = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["max_position_embeddings"]
    w = {}

    def rnd(*shape, std):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).float()

    w["text_model.embeddings.token_embedding.weight"] = rnd(V, H, std=0.5)
    w["text_model.embeddings.position_embedding.weight"] = rnd(P, H, std=0.3)
    for l in range(c["num_hidden_layers"]):
        p = "text_model.encoder.layers.%d." % l
        for ln in ("layer_norm1", "layer_norm2"):
            w[p + ln + ".weight"] = 1.0 + rnd(H, std=0.1)
            w[p + ln + ".bias"] = rnd(H, std=0.1)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[p + "self_attn." + proj + ".weight"] = rnd(H, H, std=1.0 / math.sqrt(H))
            w[p + "self_attn." + proj + ".bias"] = rnd(H, std=0.1)
        w[p + "mlp.fc1.weight"] = rnd(I, H, std=1.0 / math.sqrt(H))
        w[p + "mlp.fc1.bias"] = rnd(I, std=0.1)
        w[p + "mlp.fc2.weight"] = rnd(H, I, std=1.0 / math.sqrt(I))
        w[p + "mlp.fc2.bias"] = rnd(H, std=0.1)
    w["text_model.final_layer_norm.weight"] = 1.0 + rnd(H, std=0.1)
    w["text_model.final_layer_norm.bias"] = rnd(H, std=0.1)
    w["text_projection.weight"] = rnd(c["projection_dim"], H, std=1.0 / math.sqrt(H))
    return w


def forward(w, ids):
    c = CONFIG
    d = {k: v.double() for k, v in w.items()}
    H, nh = c["hidden_size"], c["num_attention_heads"]
    D = H // nh
    eps = c["layer_norm_eps"]
    N, L = ids.shape

    def ln(x, name):
        return torch.nn.functional.layer_norm(x, (H,), d[name + ".weight"], d[name + ".bias"], eps)

    def lin(x, name, bias=True):
        return torch.nn.functional.linear(x, d[name + ".weight"], d[name + ".bias"] if bias else None)

    h = d["text_model.embeddings.token_embedding.weight"][ids.long()] + \
        d["text_model.embeddings.position_embedding.weight"][:L][None]
    states = [h]
    mask = torch.full((L, L), float("-inf"), dtype=torch.float64).triu(1)  # causal
    for l in range(c["num_hidden_layers"]):
        p = "text_model.encoder.layers.%d." % l
        r = h
        x = ln(h, p + "layer_norm1")
        q = lin(x, p + "self_attn.q_proj") * D ** -0.5
        k = lin(x, p + "self_attn.k_proj")
        v = lin(x, p + "self_attn.v_proj")
        q, k, v = (t.view(N, L, nh, D).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1) @ v
        a = a.transpose(1, 2).reshape(N, L, H)
        h = r + lin(a, p + "self_attn.out_proj")
        r = h
        x = ln(h, p + "layer_norm2")
        h = r + lin(quick_gelu(lin(x, p + "mlp.fc1")), p + "mlp.fc2")
        states.append(h)
    last = ln(h, "text_model.final_layer_norm")
    eos_pos = (ids == c["eos_token_id"]).int().argmax(dim=-1)  # first occurrence
    pooled = last[torch.arange(N), eos_pos]
    text_embeds = torch.nn.functional.linear(pooled, d["text_projection.weight"])
    return last, states[-2], pooled, text_embeds


def write_safetensors(path, tensors, metadata):
    dtypes = {torch.float32: "F32", torch.int32: "I32"}
    header = {"__metadata__": metadata}
    blobs, off = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        b = t.numpy().tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def main():
    g = torch.Generator().manual_seed(20240611)
    w = make_weights(g)
    L = CONFIG["max_position_embeddings"]
    # prompt 0: BOS, 4 tokens, EOS, EOS padding; prompt 1: fills all 16 positions, EOS last
    ids0 = [298, 5, 17, 200, 33, 299] + [299] * (L - 6)
    ids1 = [298] + torch.randint(0, 298, (L - 2,), generator=g).tolist() + [299]
    ids = torch.tensor([ids0, ids1], dtype=torch.int32)
    last, penult, pooled, text_embeds = forward(w, ids)
    out = dict(w)
    out["ids"] = ids
    out["last_hidden_state"] = last.float()
    out["penultimate"] = penult.float()
    out["pooled"] = pooled.float()
    out["text_embeds"] = text_embeds.float()
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "text_encoder.safetensors")
    write_safetensors(path, out, {"config": json.dumps(CONFIG, sort_keys=True),
                                  "generator": "tests/golden/gen_text_golden.py"})
    n_params = sum(v.numel() for v in w.values())
    print("wrote %s (%d bytes, %d parameters)" % (path, os.path.getsize(path), n_params))
    print("text_embeds[0,:4] =", text_embeds[0, :4].tolist())


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""check-lycoris-load.py — load krona-studio KronA exports with LyCORIS's own LoKr module.

    /usr/bin/python3 tools/check-lycoris-load.py LYCORIS_CHECKOUT adapter.safetensors...

Needs PyTorch and a checkout of https://github.com/KohakuBlueleaf/LyCORIS (read, not
installed); not part of `make check`. For every module of each file it calls
LokrModule.make_module_from_state_dict (what create_lycoris_from_weights and
lycoris.kohya.create_network_from_weights do per module) on a bias-free nn.Linear of the
layer's shape, then checks that the module's scale is 1 and its forward adds exactly
x @ kron(lokr_w1, lokr_w2)^T. Prints how many modules load and the first refusal; the
rule behind the refusals is docs/adapter-format.md ("LyCORIS's loader and a1 x a2").
The safetensors files are read here directly (the safetensors package is not needed), and
LyCORIS's optional imports that the LoKr module does not use are stubbed.
"""
import json
import struct
import sys
import types

import numpy as np


def stub_missing(names):
    for name in names:
        try:
            __import__(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.tqdm = lambda it=None, **kw: it
            mod.rearrange = mod.repeat = None
            mod.load_file = mod.save_file = mod.safe_open = None
            sys.modules[name] = mod


def read_safetensors(path, torch):
    blob = open(path, "rb").read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out = {}
    for key, v in header.items():
        if key == "__metadata__":
            continue
        if v["dtype"] != "F32":
            raise SystemExit(f"{path}: {key} is {v['dtype']}, this check reads F32 only")
        b, e = v["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=np.float32).reshape(v["shape"]).copy()
        out[key] = torch.from_numpy(arr)
    return out


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    sys.path.insert(0, sys.argv[1])
    stub_missing(["safetensors", "safetensors.torch", "tqdm", "einops", "toml"])
    import torch
    from lycoris.modules.lokr import LokrModule

    torch.manual_seed(0)
    for path in sys.argv[2:]:
        sd = read_safetensors(path, torch)
        stems = sorted({k.split(".")[0] for k in sd})
        loaded, refused, first, worst = 0, 0, None, 0.0
        for stem in stems:
            w1, w2, alpha = sd.get(stem + ".lokr_w1"), sd.get(stem + ".lokr_w2"), sd.get(stem + ".alpha")
            if w1 is None or w2 is None:
                raise SystemExit(f"{path}: {stem} has no full lokr_w1/lokr_w2 (not a krona-studio KronA export)")
            d_out, d_in = w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]
            linear = torch.nn.Linear(d_in, d_out, bias=False)
            try:
                with torch.no_grad():
                    m = LokrModule.make_module_from_state_dict(
                        stem, linear, w1, None, None, w2, None, None, None, None, alpha, None)
            except Exception as e:  # what LyCORIS raises: a size mismatch in copy_
                refused += 1
                if first is None:
                    first = f"{stem} (w1 {list(w1.shape)}, w2 {list(w2.shape)}): {type(e).__name__}: {e}"
                continue
            with torch.no_grad():
                if m.scale != 1:
                    raise SystemExit(f"{path}: {stem}: LyCORIS scale {m.scale}, expected 1")
                dw = torch.kron(w1, w2)
                if not torch.equal(m.get_weight(m.shape), dw):
                    raise SystemExit(f"{path}: {stem}: LyCORIS's weight is not kron(lokr_w1, lokr_w2)")
                m.multiplier = 1.0
                m.apply_to()
                x = torch.randn(4, d_in)
                got = m(x) - x @ linear.weight.T
                want = x @ dw.T
                worst = max(worst, ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item())
            loaded += 1
        print(f"{path}: LyCORIS loads {loaded} of {len(stems)} modules with scale 1 and dW = "
              f"kron(lokr_w1, lokr_w2) (forward within {worst:.1e} relative); refuses {refused}")
        if first:
            print(f"  first refusal: {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

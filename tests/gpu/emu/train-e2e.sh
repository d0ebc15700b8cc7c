#!/bin/sh
# tests/gpu/emu/train-e2e.sh — the default preset trained 3 steps (16 px, one
# sampler step) on the emulated CUDA backend and on the CPU, both in precision
# PREC (default bf16), and the adapters compared: every new CUDA path a
# training step takes (fused attention, fused Kronecker kernels, frozen bf16
# weight copies, bf16 im2col, one AdamW per set, the UNet pass recorded as a
# CUDA graph and replayed in steps 2 and 3) in one run; every block the
# model allocates is address-stable (VMM_MIN_MB=0), so the UNet's conv and
# linear weights are kept in bf16 only, their f32 pages unreadable. `make
# cuda-emu-train`; about 20 seconds.
# Passes when the two adapters are within 2e-3 (relative, as one vector).
# tests/gpu/run.sh runs it on a real GPU: BACKEND_DIR (the plugin's folder,
# default the emulator's) and KS (the program) say which. EXTRA adds options,
# e.g. "--set text_encoder_adapters=1 --set n_class_images=1 --set prior_weight=1"
# (two recorded passes a step, instance and prior, and the encoder's adapters).
set -e
cd "$(dirname "$0")/../../.."
PREC=${PREC:-bf16}
KS=${KS:-./krona-studio}
BACKEND_DIR=${BACKEND_DIR:-build/cuda/emu}
OUT=${OUT:-build/cuda/emu/train-e2e}
rm -rf "$OUT"
common="--preset presets/default.ini --headless --precision $PREC --set iterations=3 --set resolution=16
  --set sample_every=0 --set sample_steps=1 --set guidance=0 --set checkpoint_every=0 --print-every 1
  --set output_dir=$OUT $EXTRA"
$KS train $common --device cpu --set run_name=cpu | grep -E '^step|memory: model'
OMP_NUM_THREADS=1 KRONA_BACKEND_PATH=$BACKEND_DIR KRONA_CUDA_VMM_MIN_MB=${VMM_MIN_MB:-0} \
  $KS train $common --device cuda --set run_name=cuda > "$OUT.cuda.log" 2>&1 || { cat "$OUT.cuda.log"; exit 1; }
grep -E '^step|memory: model|UNet pass' "$OUT.cuda.log"
# steps 2 and 3 replay the recorded UNet pass (a CUDA graph), unless turned off
if [ "${KRONA_CUDA_GRAPHS:-1}" != 0 ] && { ! grep -q 'UNet pass.* recorded' "$OUT.cuda.log" ||
   grep -q 'not recorded' "$OUT.cuda.log"; }; then
  echo "train-e2e: a UNet pass was not recorded on the GPU: FAIL"; exit 1
fi
python3 - "$OUT/cuda/adapter.safetensors" "$OUT/cpu/adapter.safetensors" <<'PY'
import json, math, struct, sys
def load(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n])
    d = b[8 + n:]
    return {k: struct.unpack('<%df' % ((v['data_offsets'][1] - v['data_offsets'][0]) // 4),
                             d[v['data_offsets'][0]:v['data_offsets'][1]])
            for k, v in h.items() if k != '__metadata__' and v['dtype'] == 'F32'}
a, b = load(sys.argv[1]), load(sys.argv[2])
num = sum((x - y) ** 2 for k in b for x, y in zip(a[k], b[k]))
den = sum(y * y for k in b for y in b[k])
r = math.sqrt(num / den)
print('adapters, cuda vs cpu: %.2e relative over %d tensors: %s' % (r, len(b), 'PASS' if r < 2e-3 else 'FAIL'))
sys.exit(0 if r < 2e-3 else 1)
PY

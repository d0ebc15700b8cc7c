#!/bin/sh
# tests/gpu/emu/sample-e2e.sh — `krona-studio sample` (tiny model, 16 px, 3 DDIM
# steps with guidance: a doubled batch) on the CPU and on the emulated CUDA
# backend, both fp32, and the two PNGs compared. On CUDA the sampler's UNet
# pass is recorded at step 2 and replayed (steps 2 and 3), so this checks that
# a replayed pass gives the image the ops give. `make cuda-emu-sample`; about
# 10 seconds. Passes when no 8-bit channel differs by more than 2 and the
# summary says the UNet was replayed in 2 of 3 sampler steps (unless
# KRONA_CUDA_GRAPHS=0). tests/gpu/run.sh runs it on a real GPU:
# BACKEND_DIR (the plugin's folder, default the emulator's) and KS (the program).
set -e
cd "$(dirname "$0")/../../.."
KS=${KS:-./krona-studio}
BACKEND_DIR=${BACKEND_DIR:-build/cuda/emu}
OUT=${OUT:-build/cuda/emu/sample-e2e}
mkdir -p "$OUT"
sample() { $KS sample --prompt 'a sks dog' --steps 3 --size 16 --guidance 5 --seed 11 --precision fp32 "$@"; }
sample --device cpu -o "$OUT/cpu.png"
( export OMP_NUM_THREADS=1 KRONA_BACKEND_PATH="$BACKEND_DIR" KRONA_CUDA_VMM_MIN_MB="${VMM_MIN_MB:-0}"
  sample --device cuda -o "$OUT/cuda.png" ) > "$OUT/cuda.log" 2>&1 || { cat "$OUT/cuda.log"; exit 1; }
cat "$OUT/cuda.log"
if [ "${KRONA_CUDA_GRAPHS:-1}" != 0 ] && ! grep -q 'UNet replayed in 2 of 3 sampler steps' "$OUT/cuda.log"; then
  echo "sample-e2e: the sampler's UNet pass was not replayed: FAIL"; exit 1
fi
python3 - "$OUT/cuda.png" "$OUT/cpu.png" <<'PY'
import struct, sys, zlib
def pixels(path):  # 8-bit grey/RGB/RGBA PNG, every filter type
    b = open(path, 'rb').read()
    i, idat = 8, b''
    while i < len(b):
        n, kind = struct.unpack('>I4s', b[i:i + 8])
        d = b[i + 8:i + 8 + n]
        i += 12 + n
        if kind == b'IHDR': w, h, depth, colour = struct.unpack('>IIBB', d[:10])
        if kind == b'IDAT': idat += d
    assert depth == 8, path
    ch = {0: 1, 2: 3, 6: 4}[colour]
    raw, stride, out, prev, k = zlib.decompress(idat), w * ch, [], [0] * w * ch, 0
    for _ in range(h):
        f, row = raw[k], list(raw[k + 1:k + 1 + stride])
        k += 1 + stride
        for x in range(stride):
            a = row[x - ch] if x >= ch else 0
            c = prev[x - ch] if x >= ch else 0
            u = prev[x]
            if f == 1: row[x] = (row[x] + a) & 255
            elif f == 2: row[x] = (row[x] + u) & 255
            elif f == 3: row[x] = (row[x] + (a + u) // 2) & 255
            elif f == 4:
                p = a + u - c
                pa, pb, pc = abs(p - a), abs(p - u), abs(p - c)
                row[x] = (row[x] + (a if pa <= pb and pa <= pc else u if pb <= pc else c)) & 255
        out += row
        prev = row
    return (w, h, ch), out
(sa, a), (sb, b) = pixels(sys.argv[1]), pixels(sys.argv[2])
worst = max(abs(x - y) for x, y in zip(a, b)) if sa == sb else 256
ok = worst <= 2
print('sample, cuda vs cpu: %s channels, largest difference %d of 255: %s' % (len(b), worst, 'PASS' if ok else 'FAIL'))
sys.exit(0 if ok else 1)
PY

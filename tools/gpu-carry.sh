#!/bin/sh
# tools/gpu-carry.sh — prepare .gpu-carry/ for tests/gpu/run.sh on a device machine
# that has the NVIDIA driver and CUDA but none of the Debian -dev packages: the
# program, its CUDA plugin and the `make cuda` test binaries (stripped), the
# non-system libraries they link (OpenBLAS,
# libsixel, stb, inih, ncurses, gfortran, gomp) and the pretraining dataset.
# cuBLAS/cudart are not carried: run.sh finds them at /usr/local/cuda or in
# PyTorch's wheels there. Add `/.gpu-carry/` to .git/info/exclude.
set -eu
cd "$(dirname "$0")/.."
make -j"$(nproc)" --no-print-directory all cuda >/dev/null
rm -rf .gpu-carry
mkdir -p .gpu-carry/bin .gpu-carry/lib
for b in krona-studio krona-backend-cuda.so build/cuda/tests/test_cuda_ops build/cuda/bench/bench_train; do
    strip -o ".gpu-carry/bin/$(basename "$b")" "$b"
done
ldd .gpu-carry/bin/krona-studio | awk '$3 ~ /^\// {print $1, $3}' |
while read -r name path; do
    case $name in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libstdc++*|libgcc_s*|libz.so*|libcu*|ld-linux*) ;;
    *) cp -L "$path" ".gpu-carry/lib/$name" ;;
    esac
done
gzip -1 .gpu-carry/lib/libopenblas.so.0
[ -f data/emoji32.bin ] && gzip -1 -c data/emoji32.bin >.gpu-carry/emoji32.bin.gz
du -sh .gpu-carry

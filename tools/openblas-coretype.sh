#!/bin/sh
# Print the OpenBLAS core type this CPU should use when Debian's OpenBLAS
# misdetects it (recent Xeons come up as generic "Prescott"); nothing if unsure.
flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
has() { case "$flags" in *" $1 "*) return 0 ;; esac; return 1; }
if has avx512f && has avx512bw && has avx512vl && has avx512dq; then echo SkylakeX
elif has avx2 && has fma; then echo Haswell
fi

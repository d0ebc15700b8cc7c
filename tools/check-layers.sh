#!/bin/sh
# tools/check-layers.sh — the arrows point one way (run by `make test`):
#   cli/, tui/ (front ends) -> src/ (engine: training -> models -> formats -> core)
#   gpu/ (the CUDA plugin) -> src/core/backend.h (and profile.h, the backends' shared table) only
# An engine file may include its own layer and the ones below it, never a front
# end or a backend's files; nothing in the engine or front ends names a build flag
# for a backend (backends are found at run time: src/core/backend.c).
cd "$(dirname "$0")/.." || exit 1
bad=0
rank() { case $1 in core) echo 0 ;; formats) echo 1 ;; models) echo 2 ;; training) echo 3 ;; *) echo 9 ;; esac; }
for f in src/*/*.c src/*/*.h; do
    own=$(basename "$(dirname "$f")"); r=$(rank "$own")
    [ "$r" = 9 ] && { echo "check-layers: $f: $own/ is not a layer (core, formats, models, training)"; bad=1; }
    for inc in $(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f"); do
        case $inc in
        */*) ;;
        *) echo "check-layers: $f: #include \"$inc\" does not name its layer (e.g. \"core/$inc\")"; bad=1; continue ;;
        esac
        layer=${inc%%/*}
        if [ "$(rank "$layer")" -gt "$r" ]; then
            echo "check-layers: $f ($own) includes $inc: arrows point down only (training -> models -> formats -> core)"; bad=1
        fi
    done
done
for f in tui/*.c tui/*.h; do
    grep -Hn '#include "\(\.\./\)*\(cli\|gpu\)/' "$f" && { echo "check-layers: $f: the studio uses the engine, not the command line or a backend"; bad=1; }
done
for f in gpu/*.cu; do
    grep -Hn '#include "' "$f" | grep -v '"core/backend.h"\|"core/profile.h"' && { echo "check-layers: $f: a backend plugin sees core/backend.h (and core/profile.h) only"; bad=1; }
done
if grep -rn 'KRONA_CUDA\b\|ifdef.*CUDA' src tui cli; then echo "check-layers: a backend #ifdef in the engine or a front end"; bad=1; fi
# every slot of the op table has a CPU implementation cpu_<slot> and a CUDA twin cu_<slot>
# (CUDA registers most as TIMED(<slot>), which wraps cu_<slot>), so an op's code is found
# by name in both backends; a section of backend.h headed
# "---- ... (optional" holds slots a backend may leave NULL (the CPU does)
optional=$(awk '/\/\* ---- /{opt = /\(optional/} opt' src/core/backend.h | sed -n 's/.*(\*\([a-z0-9_]*\))(Backend \*be.*/\1/p')
for slot in $(sed -n 's/.*(\*\([a-z0-9_]*\))(Backend \*be.*/\1/p' src/core/backend.h); do
    case " $(echo $optional) " in *" $slot "*) ;; *)
    grep -q "be->$slot = cpu_" src/core/backend_cpu.c || { echo "check-layers: op $slot: no be->$slot = cpu_... in src/core/backend_cpu.c"; bad=1; } ;;
    esac
    grep -q "be->$slot = \(cu_\|TIMED($slot);\)" gpu/backend_cuda.cu || { echo "check-layers: op $slot: no be->$slot = cu_... or TIMED($slot) in gpu/backend_cuda.cu"; bad=1; }
done
[ $bad -eq 0 ] && echo "== layers: src/{training,models,formats,core}, cli/ and tui/ on top, gpu/ a plugin: ok =="
exit $bad

#!/bin/sh
# Run every ablation sweep in presets/sweeps/*.txt and collect their
# results.md tables into docs/ablations.md.
#   tools/run-ablations.sh                     all of them, full length
#   tools/run-ablations.sh lr factors          only these
#   EXTRA="--set iterations=50" tools/run-ablations.sh   extra sweep options for every sweep
#     (a --set of a key that a sweep varies is overridden by its --vary)
#   OUT=runs/ablations DOC=docs/ablations.md   where the sweeps and the table go
# Run from the repository root after `make`. A sweep already in $OUT/<name>
# (results.csv present) is not rerun: delete its folder to redo it.
set -eu
BIN=${BIN:-./krona-studio}
OUT=${OUT:-runs/ablations}
DOC=${DOC:-docs/ablations.md}
EXTRA=${EXTRA:-}
[ -x "$BIN" ] || { echo "run-ablations: $BIN not found; run make first" >&2; exit 2; }
if [ $# -gt 0 ]; then names="$*"; else
    names=$(for f in presets/sweeps/*.txt; do basename "$f" .txt; done)
fi
mkdir -p "$OUT" "$(dirname "$DOC")"
tmp="$DOC.tmp.$$"
trap 'rm -f "$tmp"' EXIT
trap 'rm -f "$tmp"; exit 130' INT TERM   # a trap that only cleaned up would let the loop go on
{
    echo "# Ablations"
    echo
    echo "Made by \`tools/run-ablations.sh\` on $(date -u +%Y-%m-%d) ($(uname -m), $(nproc) cores)."
    echo "Each table is one \`krona-studio sweep\` (command above it); \`base\` is the model without"
    echo "adapters. Fidelity and adherence are defined in [metrics.md](metrics.md)."
    [ -n "$EXTRA" ] && echo "Extra options for every sweep: \`$EXTRA\`."
    echo
} > "$tmp"
for name in $names; do
    spec="presets/sweeps/$name.txt"
    [ -f "$spec" ] || { echo "run-ablations: no $spec" >&2; exit 2; }
    args=$(grep -v '^[[:space:]]*#' "$spec" | tr '\n' ' ')
    dir="$OUT/$name"
    if [ ! -f "$dir/results.csv" ]; then
        echo "== $name: krona-studio sweep $args $EXTRA --out $dir"
        # shellcheck disable=SC2086  # the args are words on purpose
        "$BIN" sweep $args $EXTRA --out "$dir" || echo "run-ablations: sweep $name failed; its rows so far are kept" >&2
    fi
    {
        echo "## $name"
        echo
        grep '^#' "$spec" | sed 's/^#[[:space:]]*//'
        echo
        echo "\`krona-studio sweep $args $EXTRA\`"
        echo
        if [ -f "$dir/results.md" ]; then cat "$dir/results.md"; else echo "(no results)"; fi
        echo
        echo "Grid: \`$dir/grid.png\`"
        echo
    } >> "$tmp"
done
mv "$tmp" "$DOC"
trap - EXIT
echo "wrote $DOC"

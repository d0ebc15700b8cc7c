#!/bin/sh
# The built-in tiny model's acceptance checks, measured (issue 4), into
# docs/tiny-model-checks.md:
#   1. the base model against 50 of its training captions: right background
#      colour, and fidelity to the named emoji vs another one (control);
#      grid in docs/tiny-base-samples.png (3x nearest-neighbour upscale);
#   2. the default preset (KronA, attention only, lr 6e-4): wall time of the
#      whole `train` command, then fidelity/adherence of adapter vs base model;
#      docs/demo-before-after.png: "a sks cat" from 8 seeds, base model (left)
#      and adapter (right); docs/demo-colours.png: the first sample of each
#      colour prompt, base above adapter (3x nearest-neighbour upscale).
# The learning-rate ablation is a sweep: tools/run-ablations.sh lr.
# Everything in $DOC below the line "<!-- by hand below -->" is kept.
# Run from the repository root after `make` (and tools/build-emoji-dataset.sh).
#   OUT=runs/checks DOC=docs/tiny-model-checks.md N=50 tools/check-tiny-model.sh
set -eu
BIN=${BIN:-./krona-studio}
OUT=${OUT:-runs/checks}
DOC=${DOC:-docs/tiny-model-checks.md}
DATA=${DATA:-data/emoji32.bin}
N=${N:-50}
MARK='<!-- by hand below -->'
[ -x "$BIN" ] || { echo "check-tiny-model: $BIN not found; run make first" >&2; exit 2; }
[ -f "$DATA" ] || { echo "check-tiny-model: $DATA not found; run tools/build-emoji-dataset.sh" >&2; exit 2; }
mkdir -p "$OUT" "$(dirname "$DOC")"

echo "== 1. base model on $N training captions"
"$BIN" score --data "$DATA" --n "$N" --grid "$OUT/base-samples.png" | tee "$OUT/base-check.txt"
if command -v convert >/dev/null 2>&1; then
    convert "$OUT/base-samples.png" -filter point -resize 300% "$(dirname "$DOC")/tiny-base-samples.png"
else
    cp "$OUT/base-samples.png" "$(dirname "$DOC")/tiny-base-samples.png"
fi

echo "== 2. default preset, timed"
rm -rf "$OUT/default"
start=$(date +%s.%N)
"$BIN" train --preset presets/default.ini --headless --print-every 100 \
    --set output_dir="$OUT" --set run_name=default | tee "$OUT/default-train.txt"
end=$(date +%s.%N)
secs=$(awk "BEGIN {print $end - $start}")
"$BIN" score --run "$OUT/default" --colours 9 --per-colour 4 --grid "$OUT/default-score.png" \
    | tee "$OUT/default-score.txt"
# before and after: the instance prompt alone (the subject's own white background),
# 8 seeds, base then adapter; and the first sample of each scored colour prompt
prompt=$(sed -n 's/^instance_prompt *= *//p' presets/default.ini)
"$BIN" sample --prompt "$prompt" --n 8 --seed 7 -o "$OUT/demo-base.png" >/dev/null
"$BIN" sample --prompt "$prompt" --n 8 --seed 7 --adapter "$OUT/default/adapter.safetensors" \
    -o "$OUT/demo-adapter.png" >/dev/null
"$BIN" score --run "$OUT/default" --colours 9 --per-colour 1 --grid "$OUT/demo-colours.png" >/dev/null
if command -v convert >/dev/null 2>&1; then
    convert "$OUT/demo-base.png" -size 12x1 xc:white "$OUT/demo-adapter.png" +append \
        -filter point -resize 300% "$(dirname "$DOC")/demo-before-after.png"
    convert "$OUT/demo-colours.base.png" "$OUT/demo-colours.png" -append -filter point -resize 300% \
        "$(dirname "$DOC")/demo-colours.png"
else
    for f in demo-base demo-adapter demo-colours.base demo-colours; do cp "$OUT/$f.png" "$(dirname "$DOC")/"; done
fi

right=$(sed -n 's/^ *right background *\([0-9]*\)\/\([0-9]*\).*/\1 of \2/p' "$OUT/base-check.txt")
fid=$(sed -n 's/^ *fidelity to the named emoji \([0-9.]*\), to another emoji (control) \([0-9.]*\)/\1 named vs \2 control/p' "$OUT/base-check.txt")
named_gain=$(awk '$1 == "named" && $2 == "-" {print $4, "±", $6}' "$OUT/base-check.txt")
ad=$(awk '$1 == "adapter" {print $3, $5}' "$OUT/default-score.txt")
bs=$(awk '$1 == "base" {print $3, $5}' "$OUT/default-score.txt")
gain=$(awk '$1 == "gain" {print $3, "±", $5}' "$OUT/default-score.txt")
{
    echo "# Tiny model: acceptance checks"
    echo
    echo "Made by \`tools/check-tiny-model.sh\` on $(date -u +%Y-%m-%d) ($(uname -m), $(nproc) cores;"
    echo "model: $(sed -n 's/^model tiny (\(.*\)) on.*/\1/p' "$OUT/default-train.txt" | sed "s#$PWD/#./#"))."
    echo "Metrics are defined in [metrics.md](metrics.md)."
    echo
    echo "## 1. Base model: does it draw what its captions ask?"
    echo
    echo "\`krona-studio score --data $DATA --n $N\`: one caption per emoji, spread over the"
    echo "training set, the 9 askable background colours in turn; DDIM 25 steps, guidance 5."
    echo
    echo "| check | result |"
    echo "|---|---|"
    echo "| right background colour | $right |"
    echo "| fidelity to the named emoji vs another emoji (control) | $fid |"
    echo "| named − control, sample by sample (± standard error) | $named_gain |"
    echo
    echo "![base samples](tiny-base-samples.png)"
    echo
    echo "Captions, row by row (ok / MISS = background right / wrong):"
    echo
    echo '```'
    sed -n 's/^ *\([0-9][0-9]* \(ok\|MISS\) .*\)/\1/p' "$OUT/base-check.txt"
    sed -n 's/^ *\(per colour:.*\)/\1/p' "$OUT/base-check.txt"
    echo '```'
    echo
    echo "## 2. Default preset: KronA 4x4, attention only, lr 6e-4, 500 iterations"
    echo
    echo "\`krona-studio train --preset presets/default.ini --headless\`, then"
    echo "\`krona-studio score --run RUN --colours 9 --per-colour 4\` (36 samples of"
    echo "\"$prompt on a <colour> background\"; the subject: models/demo/, OpenMoji's cat)."
    echo
    echo "| | fidelity | adherence |"
    echo "|---|---|---|"
    echo "| base model | $(echo "$bs" | cut -d' ' -f1) | $(echo "$bs" | cut -d' ' -f2) |"
    echo "| default preset | $(echo "$ad" | cut -d' ' -f1) | $(echo "$ad" | cut -d' ' -f2) |"
    echo
    echo "Fidelity gain, sample by sample (same prompts, same noise; ± standard error): **$gain**."
    echo
    echo "\"$prompt\" from the same 8 seeds, base model (left) and adapter (right):"
    echo
    echo "![before and after](demo-before-after.png)"
    echo
    echo "The first sample of each colour prompt, base model (top) and adapter (bottom), same noise:"
    echo
    echo "![colour prompts, before and after](demo-colours.png)"
    echo
    echo "Wall time of the whole train command (model load, the base grid, 500 steps, 5 preview grids, save):"
    echo "$(printf '%.0f' "$secs") s. Its last lines:"
    echo
    echo '```'
    tail -n 3 "$OUT/default-train.txt"
    echo '```'
    # the reading of the numbers is written by hand below this marker and kept across runs
    if [ -f "$DOC" ] && grep -q "^$MARK" "$DOC"; then
        echo
        sed -n "/^$MARK/,\$p" "$DOC"
    fi
} > "$DOC.tmp"
mv "$DOC.tmp" "$DOC"
echo "wrote $DOC"

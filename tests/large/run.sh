#!/bin/sh
# tests/large/run.sh — `make check-large`: the program on a FULL-SIZE single-file
# SD 1.5 checkpoint (2.1 GB, f16, random weights) made by tools/make-checkpoint,
# so that nothing is downloaded. Not part of `make check` (disk, time).
#
#   1. build krona-studio and build/tools/make-checkpoint;
#   2. write build/large/sd15-f16.safetensors (kept, and reused while it is newer
#      than the tool), then check its data against the generator (--verify);
#   3. `krona-studio info --model FILE`: exit 0, "SD 1.5 single file", the UNet's
#      859,520,964 parameters;
#   4. a 2-step `sample` at 64 px and a 2-iteration `train` at resolution 64 on
#      it (CPU): the whole pipeline (UNet, CLIP, VAE) at full size;
#   5. `merge` the trained adapter into build/large/merged.safetensors (a full
#      2.1 GB single file, streamed), then `info --model` on it: exit 0, still
#      "SD 1.5 single file" with 859,520,964 UNet parameters;
#   6. the same kind of checks on a full-size SDXL base file (6.9 GB), training
#      at 1024² (KRONA_LARGE_SDXL=0 skips this part).
# Each step prints its wall time and peak RSS (GNU time; the wall time alone
# without it). Logs: build/large/<step>.log. Exit 0 when every step passed.
set -u
cd "$(dirname "$0")/../.." || exit 1
OUT=build/large
TOOL=build/tools/make-checkpoint
FILE=$OUT/sd15-f16.safetensors
mkdir -p "$OUT" || exit 1

fail() { echo "check-large: FAILED: $*"; exit 1; }

# step NAME CMD...: run CMD with its output in $OUT/NAME.log (shown), then one
# line: wall seconds and peak RSS. Returns CMD's exit status.
step() {
    name=$1; shift
    echo "== $name: $*"
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f "%e %M" -o "$OUT/$name.time" "$@" > "$OUT/$name.log" 2>&1
        rc=$?
        cat "$OUT/$name.log"
        # the last line: an error note of time's own may come before it
        read -r wall rss <<EOF
$(tail -n 1 "$OUT/$name.time")
EOF
        echo "== $name: exit $rc, $wall s wall, peak RSS $((${rss:-0} / 1024)) MiB"
    else
        t0=$(date +%s.%N)
        "$@" > "$OUT/$name.log" 2>&1
        rc=$?
        t1=$(date +%s.%N)
        cat "$OUT/$name.log"
        echo "== $name: exit $rc, $(echo "$t1 - $t0" | bc) s wall, peak RSS unknown (no /usr/bin/time)"
    fi
    return $rc
}

# 1. build
step build make --no-print-directory krona-studio "$TOOL" || fail "build"

# 2. the checkpoint
if [ -f "$FILE" ] && [ "$FILE" -nt "$TOOL" ]; then
    echo "== generate: $FILE is newer than $TOOL, kept"
else
    rm -f "$FILE"
    step generate "$TOOL" --kind sd15 --dtype f16 --seed 0 "$FILE" || fail "generate $FILE"
    step verify "$TOOL" --kind sd15 --dtype f16 --seed 0 --verify "$FILE" || fail "verify $FILE"
fi
ls -l "$FILE"

# A CLIP vocabulary for sample and train without a download: a fake merges file
# with CLIP's 49,408 ids (tests/large/fake-merges.sh says what it holds).
MERGES=$OUT/fake-clip-merges.txt
[ -s "$MERGES" ] || ./tests/large/fake-merges.sh "$MERGES" || fail "fake merges"
KRONA_TOKENIZER=$PWD/$MERGES
export KRONA_TOKENIZER

# 3. info
step info ./krona-studio info --model "$FILE" || fail "info exited non-zero"
grep -q "SD 1.5 single file" "$OUT/info.log" || fail "info: no 'SD 1.5 single file'"
grep -Eq "^ *UNet +859,520,964 parameters" "$OUT/info.log" || fail "info: UNet not 859,520,964 parameters"
grep -q "another size" "$OUT/info.log" && fail "info: says the UNet is another size"

# 4. sample and train on the full-size file
step sample ./krona-studio sample --model "$FILE" --size 64 --steps 2 --tokenizer "$MERGES" --prompt "a sks dog" --seed 1 --device cpu -o "$OUT/sample.png" || fail "sample"
step train ./krona-studio train --preset presets/default.ini --headless --device cpu --set model="$PWD/$FILE" --set resolution=64 --set iterations=2 --set sample_every=0 --set checkpoint_every=0 --set output_dir="$OUT/runs" --set run_name=large-train || fail "train"

[ -s "$OUT/sample.png" ] || fail "sample: no image"
ls "$OUT/runs/large-train/adapter.safetensors" >/dev/null || fail "train: no adapter"

# 5. merge the trained adapter into a full checkpoint, and read it back
step merge ./krona-studio merge --model "$FILE" --adapter "$OUT/runs/large-train/adapter.safetensors" -o "$OUT/merged.safetensors" --force || fail "merge"
step info-merged ./krona-studio info --model "$OUT/merged.safetensors" || fail "info on the merged file exited non-zero"
grep -Eq "^ *UNet +859,520,964 parameters" "$OUT/info-merged.log" || fail "info on the merged file: UNet not 859,520,964 parameters"
rm -f "$OUT/merged.safetensors"

# 6. SDXL base, full size (6.9 GB f16): info, a 2-step sample at 128 px, and a
#    2-iteration train at 1024² with text-encoder adapters (the memory plan turns
#    gradient checkpointing on when the activations would not fit; the log says so)
XL=$OUT/sdxl-f16.safetensors
if [ "${KRONA_LARGE_SDXL:-1}" = 0 ]; then
    echo "== sdxl: skipped (KRONA_LARGE_SDXL=0)"
else
    if [ -f "$XL" ] && [ "$XL" -nt "$TOOL" ]; then
        echo "== generate-sdxl: $XL is newer than $TOOL, kept"
    else
        rm -f "$XL"
        step generate-sdxl "$TOOL" --kind sdxl --dtype f16 --seed 0 "$XL" || fail "generate $XL"
    fi
    step info-sdxl ./krona-studio info --model "$XL" || fail "info sdxl exited non-zero"
    grep -Eq "^ *UNet +2,567,463,684 parameters" "$OUT/info-sdxl.log" || fail "info sdxl: UNet not 2,567,463,684 parameters"
    step sample-sdxl ./krona-studio sample --model "$XL" --size 128 --steps 2 --tokenizer "$MERGES" --prompt "a sks dog" --seed 1 --device cpu -o "$OUT/sample-sdxl.png" || fail "sample sdxl"
    step train-sdxl ./krona-studio train --preset presets/default.ini --headless --device cpu --set model="$PWD/$XL" --set resolution=1024 --set a2=64 --set iterations=2 --set sample_every=0 --set checkpoint_every=0 --set text_encoder_adapters=1 --set output_dir="$OUT/runs" --set run_name=large-train-sdxl || fail "train sdxl"
    ls "$OUT/runs/large-train-sdxl/adapter.safetensors" >/dev/null || fail "train sdxl: no adapter"
fi
echo "== check-large: ok"

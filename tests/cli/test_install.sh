#!/bin/sh
# `make install` into a temporary folder (PREFIX + DESTDIR, as a package build
# does), then the installed binary run from another folder: it finds its
# built-in model, demo subject and presets in PREFIX/share/krona-studio
# (src/models/model.h, model_find_data). Without the model files it fails,
# naming where it looked, and never falls back to random weights unless
# --random-weights asks. Run from the repo root by `make test`.
set -u
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
unset KRONA_HOME

prefix=/opt/krona
root="$tmp/root"
share="$root$prefix/share/krona-studio"
if make --no-print-directory install PREFIX="$prefix" DESTDIR="$root" >"$tmp/install.log" 2>&1; then
  ok "make install PREFIX=$prefix DESTDIR=..."
else
  bad "make install: $(tail -3 "$tmp/install.log")"
fi
missing=""
for f in bin/krona-studio share/man/man1/krona-studio.1 share/krona-studio/presets/default.ini \
         share/krona-studio/presets/sweeps/lr.txt share/krona-studio/models/tiny/unet.safetensors \
         share/krona-studio/models/tiny/text_encoder.safetensors share/krona-studio/models/tiny/scheduler_config.json \
         share/krona-studio/models/demo/subject1.png share/krona-studio/models/demo/LICENSE.md; do
  [ -f "$root$prefix/$f" ] || missing="$missing $f"
done
[ -z "$missing" ] && ok "installed: binary, man page, presets, sweep lists, the built-in model, the demo subject" ||
  bad "not installed:$missing"

# from another folder, one with nothing of ours in it
bin="$root$prefix/bin/krona-studio"
mkdir -p "$tmp/elsewhere"
cd "$tmp/elsewhere" || exit 1

"$bin" info >"$tmp/o" 2>&1 && grep -q "^trainable parameters:" "$tmp/o" && ok "installed info" || bad "info: $(cat "$tmp/o")"

# the shipped default preset, by its installed path and by the name the README uses
for preset in "$share/presets/default.ini" presets/default.ini; do
  "$bin" train --headless --preset "$preset" --set iterations=2 --set sample_steps=2 --set output_dir="$tmp/runs" \
    --set run_name=r$pass --set device=cpu >"$tmp/o" 2>&1; rc=$?
  run="$tmp/runs/r$pass"
  [ $rc -eq 0 ] && [ -f "$run/adapter.safetensors" ] && grep -q "^preset $share/presets/default.ini$" "$tmp/o" &&
    grep -q "^model tiny (pretrained weights from $share/models/tiny/unet.safetensors)" "$tmp/o" &&
    grep -q "^image = $share/models/demo/subject1.png$" "$run/preset.ini" &&
    ok "installed train --preset $preset: 2 iterations on the shipped model and demo images" ||
    bad "train --preset $preset (rc $rc): $(cat "$tmp/o")"
done

"$bin" sample --model tiny --prompt "a sks dog" --steps 2 -o "$tmp/s.png" >"$tmp/o" 2>&1; rc=$?
[ $rc -eq 0 ] && [ -s "$tmp/s.png" ] && grep -q "pretrained weights from $share/models/tiny/unet.safetensors" "$tmp/o" &&
  ok "installed sample --model tiny: the shipped weights" || bad "sample (rc $rc): $(cat "$tmp/o")"

# no model files: an error naming every folder it looked in, not random weights
rm -r "$share/models/tiny"
rm -f "$tmp/s.png"
"$bin" sample --model tiny --prompt "a sks dog" --steps 2 -o "$tmp/s.png" >"$tmp/o" 2>"$tmp/e"; rc=$?
[ $rc -ne 0 ] && [ ! -e "$tmp/s.png" ] && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
  grep -q "models/tiny/unet.safetensors is in none of: \$KRONA_HOME (not set), $root$prefix/bin, $share, $tmp/elsewhere; " "$tmp/e" &&
  grep -q -- "--random-weights" "$tmp/e" && ok "no model files: sample fails in one line naming where it looked (rc $rc)" ||
  bad "sample without the model (rc $rc): $(cat "$tmp/o" "$tmp/e")"
"$bin" train --headless --preset presets/default.ini --set iterations=2 --set output_dir="$tmp/runs" \
  --set device=cpu >"$tmp/o" 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q "models/tiny/unet.safetensors is in none of: " "$tmp/e" &&
  ok "no model files: train fails the same way" || bad "train without the model (rc $rc): $(cat "$tmp/e")"
"$bin" sample --model tiny --random-weights --prompt "a sks dog" --steps 2 -o "$tmp/s.png" >"$tmp/o" 2>&1; rc=$?
[ $rc -eq 0 ] && [ -s "$tmp/s.png" ] && grep -q "random weights" "$tmp/o" &&
  ok "sample --random-weights: works without them, and says so" || bad "sample --random-weights (rc $rc): $(cat "$tmp/o")"
"$bin" train --headless --preset presets/default.ini --random-weights --set iterations=2 --set sample_steps=2 \
  --set output_dir="$tmp/runs" --set run_name=random --set device=cpu >"$tmp/o" 2>&1; rc=$?
[ $rc -eq 0 ] && grep -q "^model = tiny-random$" "$tmp/runs/random/preset.ini" &&
  ok "train --random-weights: the run records model = tiny-random" || bad "train --random-weights (rc $rc): $(cat "$tmp/o")"
"$bin" sample --model "$tmp" --random-weights --prompt x >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q "only the built-in model" "$tmp/e" && ok "--random-weights with another model: refused" ||
  bad "--random-weights, folder model (rc $rc): $(cat "$tmp/e")"

echo "== install: $pass passed, $fail failed =="
[ $fail -eq 0 ]

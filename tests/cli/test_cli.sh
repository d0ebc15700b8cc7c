#!/bin/sh
# End-to-end tests of the krona-studio command line (run from the repo root by
# `make test`): parameter tables against the closed-form count, one-line
# errors with exit status 2 on bad input (hostile ones too: devices, FIFOs,
# NaN adapters, huge values), and a run killed with SIGKILL that, resumed from
# its checkpoint in another folder, ends with the same adapter bytes as a run
# that was never interrupted.
set -u
bin=./krona-studio
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
num() { sed -n "s/^$1: *\([0-9,]*\).*/\1/p" | tr -d ,; }

# --- help and usage errors
$bin --help | grep -q "usage: krona-studio" && ok "--help" || bad "--help"
$bin frobnicate >/dev/null 2>"$tmp/e"; [ $? -eq 2 ] && grep -q "unknown command" "$tmp/e" && ok "unknown command" || bad "unknown command"
$bin trian >/dev/null 2>"$tmp/e"; [ $? -eq 2 ] && grep -q "unknown command 'trian' (did you mean train?)" "$tmp/e" && ok "unknown command: did you mean" || bad "trian: $(cat "$tmp/e")"
# one line on stderr, exit 2, and no prefix said twice ("--set --set", "train: krona-studio train:")
one_line_2() { # rc pattern
  [ "$1" -eq 2 ] && [ "$(wc -l <"$tmp/e")" -eq 1 ] && grep -q -- "$2" "$tmp/e" &&
    ! grep -Eq -- '^krona-studio [a-z]*: (krona-studio|(--set ){2}|([^:]+): \3:)' "$tmp/e"
}
f0=$fail
group() { [ $fail -eq $f0 ] && ok "$1"; f0=$fail; } # ok for a group of checks that failed nowhere
# every command takes --help / -h: its own usage on stdout, exit 0
for c in train sample info merge sweep score pretrain; do
  for h in --help -h; do
    $bin $c $h >"$tmp/o" 2>"$tmp/e"; rc=$?
    [ $rc -eq 0 ] && [ ! -s "$tmp/e" ] && grep -q "^usage: krona-studio $c " "$tmp/o" && grep -q -- "--help" "$tmp/o" ||
      bad "$c $h (rc $rc): $(head -2 "$tmp/o" "$tmp/e")"
  done
  # an unknown flag: one line saying so, and the closest option for a near miss
  $bin $c --frobnicate >/dev/null 2>"$tmp/e"
  one_line_2 $? "unknown option '--frobnicate'" && ! grep -q "did you mean" "$tmp/e" || bad "$c --frobnicate: $(cat "$tmp/e")"
done
group "--help and -h of every command: usage on stdout, exit 0; --frobnicate: one line, exit 2"
for near in "train --headles:--headless" "sample --stpes 3:--steps" "info --modles attn:--modules" "merge --adaptr x:--adapter" \
            "sweep --preest x:--preset" "score --gird x.png:--grid" "pretrain --bacth 4:--batch" "sample -O x.png:-o" \
            "score --score-colors 2:--score-colours" "--grafics none:--graphics"; do
  args=${near%%:*} want=${near##*:}
  $bin $args >/dev/null 2>"$tmp/e"
  one_line_2 $? "unknown option .*(did you mean $want?)" || bad "near miss $args: $(cat "$tmp/e")"
done
group "near misses: 'did you mean' the right option"
for miss in "sample --prompt" "sample --steps:an integer from 1 to 999" "train --preset" "info --a1:an integer >= 1" \
            "sample --sampler:ddim|euler" "sample --prompt --model tiny"; do
  args=${miss%%:*} want=${miss#*:}
  [ "$want" = "$miss" ] && want=""
  $bin $args >/dev/null 2>"$tmp/e"
  one_line_2 $? "needs a value.*$want" || bad "missing value $args: $(cat "$tmp/e")"
done
group "a flag without its value says so (and what it takes)"
$bin sample --steps 0 --prompt x >/dev/null 2>"$tmp/e"; one_line_2 $? "\-\-steps 0: use an integer from 1 to 999" || bad "--steps 0: $(cat "$tmp/e")"
$bin sample --steps=abc --prompt x >/dev/null 2>"$tmp/e"; one_line_2 $? "\-\-steps abc: use an integer" || bad "--steps=abc: $(cat "$tmp/e")"
$bin info --all=1 >/dev/null 2>"$tmp/e"; one_line_2 $? "\-\-all takes no value" || bad "--all=1: $(cat "$tmp/e")"
$bin sample "a dog" >/dev/null 2>"$tmp/e"; one_line_2 $? "unexpected argument 'a dog'" || bad "positional: $(cat "$tmp/e")"
$bin pretrain --ema 1 >/dev/null 2>"$tmp/e"; one_line_2 $? "\-\-ema 1: use a number in \[0, 1)" || bad "--ema 1: $(cat "$tmp/e")"
$bin train --preset presets/default.ini --headless --set lr=5 >/dev/null 2>"$tmp/e"
one_line_2 $? "^krona-studio train: --set lr=5: out of range" || bad "--set lr=5: $(cat "$tmp/e")"
$bin sweep --preset presets/default.ini --set lr=5 --vary a1=2,4 >/dev/null 2>"$tmp/e"
one_line_2 $? "^krona-studio sweep: --set lr=5: out of range" || bad "sweep --set lr=5: $(cat "$tmp/e")"
$bin train --headless --resume "$tmp/x" --set lr=1e-3 >/dev/null 2>"$tmp/e"
one_line_2 $? "drop --preset, --set" || bad "--resume with --set: $(cat "$tmp/e")"
group "bad values: one line naming the flag and what it takes, no doubled prefix"

# --- info: totals against the closed form a1*a2 + (d_out/a1)(d_in/a2), summed by hand from
# the published architectures (transformer blocks per width, cross-attention width)
krona() { # a1 a2 C ctx blocks -> trainable params of those blocks' 8 attention linears
  awk -v a1="$1" -v a2="$2" -v c="$3" -v x="$4" -v n="$5" 'BEGIN {
    sq = a1*a2 + (c/a1)*(c/a2); cr = a1*a2 + (c/a1)*(x/a2); printf "%d\n", n*(6*sq + 2*cr) }'; }
sd15=$(( $(krona 4 4 320 768 5) + $(krona 4 4 640 768 5) + $(krona 4 4 1280 768 6) ))
out=$($bin info --model sd15 --a1 4 --a2 4)
[ "$(echo "$out" | num 'base UNet parameters')" = 859520964 ] && ok "sd15 base = 859,520,964" || bad "sd15 base"
[ "$(echo "$out" | num 'trainable parameters')" = "$sd15" ] && ok "sd15 KronA(4,4) = $sd15" || bad "sd15 trainable: want $sd15"
# SDXL: 10 blocks at 640 (2+3 attentions x depth 2), 60 at 1280 (2x10 down, 10 mid, 3x10 up)
sdxl=$(( $(krona 4 4 640 2048 10) + $(krona 4 4 1280 2048 60) ))
out=$($bin info --model sdxl --a1 4 --a2 4)
[ "$(echo "$out" | num 'base UNet parameters')" = 2567463684 ] && ok "sdxl base = 2,567,463,684" || bad "sdxl base"
[ "$(echo "$out" | num 'trainable parameters')" = "$sdxl" ] && ok "sdxl KronA(4,4) = $sdxl" || bad "sdxl trainable: want $sdxl"
sdxl8=$(( $(krona 8 64 640 2048 10) + $(krona 8 64 1280 2048 60) ))
[ "$($bin info --model sdxl --a1 8 --a2 64 | num 'trainable parameters')" = "$sdxl8" ] && ok "sdxl KronA(8,64) = $sdxl8" || bad "sdxl (8,64)"
lora=$($bin info --model sd15 --lora-rank 4 | num 'trainable parameters')
# LoRA: r (d_in + d_out) per linear
want=$(awk 'BEGIN { t=0; split("320 640 1280", C); split("5 5 6", N);
  for (i=1;i<=3;i++) t += N[i] * 4 * (6*2*C[i] + 2*(C[i]+768)); print t }')
[ "$lora" = "$want" ] && ok "sd15 LoRA r=4 = $want" || bad "sd15 LoRA: got $lora want $want"

# text-encoder adapters: CLIP-L's 12 layers x 4 projections of 768x768
want=$(awk 'BEGIN { printf "%d\n", 48 * (4*4 + (768/4)*(768/4)) }')
got=$($bin info --model sd15 --a1 4 --a2 4 --text-encoder | sed -n 's/^text encoder adapters: *\([0-9,]*\).*/\1/p' | tr -d ,)
[ "$got" = "$want" ] && ok "info --text-encoder: sd15 KronA(4,4) = $want" || bad "info --text-encoder: got $got want $want"
$bin info --model sd15 --a1 5 --a2 4 --text-encoder >"$tmp/o" 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && [ ! -s "$tmp/o" ] && grep -q "text encoder: a1=5 does not divide d_out=768" "$tmp/e" &&
  ok "info --text-encoder: a bad factor is one line, no partial table" || bad "info te a1=5 (rc $rc)"
$bin info --model sd15 --a1 3 --a2 4 >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q "a1=3 does not divide" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] && ok "info: a1=3 is one clear line" || bad "info a1=3 (rc $rc)"
$bin info --model nosuch >/dev/null 2>"$tmp/e"; [ $? -eq 2 ] && grep -q nosuch "$tmp/e" && ok "info: unknown model" || bad "info unknown model"

# --- info on single-file checkpoints: the kind and parts from the header; what is not one, in one line
out=$($bin info --model tests/golden/ldm_sdxllike.safetensors --a1 4 --a2 4 2>&1); rc=$?
[ $rc -eq 0 ] && echo "$out" | grep -q "SDXL base single file: UNet .*, VAE, CLIP ViT-L + OpenCLIP bigG" &&
  echo "$out" | grep -q "text encoder 2" && [ "$(echo "$out" | num 'base UNet parameters')" = 2567463684 ] &&
  ok "info: SDXL single file (kind, parts, SDXL table)" || bad "info SDXL file (rc $rc): $out"
$bin info --model tests/golden/ldm_sd15like_diffusers.safetensors >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q "a diffusers UNet weights file" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
  ok "info: a diffusers weights file is refused in one line" || bad "info diffusers file (rc $rc): $(cat "$tmp/e")"
head -c 5000 tests/golden/ldm_sd15like.safetensors >"$tmp/cut.safetensors"
$bin info --model "$tmp/cut.safetensors" >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q "cut.safetensors" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
  ok "info: a truncated checkpoint in one line" || bad "info truncated (rc $rc): $(cat "$tmp/e")"

# --- sample on a single file: no vocabulary anywhere is one line with the fetch command (before any
# weights are read); a checkpoint whose UNet is not the standard SD 1.5 one names the tensor
mkdir -p "$tmp/nohome"
HOME="$tmp/nohome" KRONA_TOKENIZER= HF_HOME= HF_HUB_CACHE= $bin sample --model tests/golden/ldm_sd15like.safetensors \
  --prompt "a dog" -o "$tmp/s.png" >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -ne 0 ] && grep -q "no CLIP tokenizer vocabulary found.*huggingface-cli download openai/clip-vit-large-patch14" "$tmp/e" &&
  [ "$(wc -l <"$tmp/e")" -eq 1 ] && ok "sample: no CLIP vocabulary: one line with the fetch command" || bad "no vocabulary (rc $rc): $(cat "$tmp/e")"
./tests/large/fake-merges.sh "$tmp/merges.txt" >/dev/null 2>&1
$bin sample --model tests/golden/ldm_sd15like.safetensors --tokenizer "$tmp/merges.txt" --prompt "a dog" -o "$tmp/s.png" >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -ne 0 ] && grep -q "ldm_sd15like.safetensors: .*model.diffusion_model\." "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
  ok "sample: a mis-shaped checkpoint names the tensor" || bad "mis-shaped checkpoint (rc $rc): $(cat "$tmp/e")"

# --- merge: what it refuses, each in one line with status 2 (a full merge runs in make check-large;
# the merge itself is tests/test_merge.c on the small SD 1.5-like file)
one() { [ "$1" -eq 2 ] && grep -q "$2" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ]; }
G=tests/golden
$bin merge --model $G/ldm_sd15like.safetensors -o "$tmp/m.safetensors" >/dev/null 2>"$tmp/e"
one $? "give --model" && ok "merge: missing --adapter" || bad "merge missing --adapter: $(cat "$tmp/e")"
$bin merge --model $G/ldm_sd15like.safetensors --adapter $G/adapter_v1_tiny_krona4x8.safetensors -o "$tmp/m.safetensors" --dtype f8 >/dev/null 2>"$tmp/e"
one $? "use same, f16, bf16 or f32" && ok "merge: bad --dtype" || bad "merge bad dtype: $(cat "$tmp/e")"
$bin merge --model tiny --adapter $G/adapter_v1_tiny_krona4x8.safetensors -o "$tmp/m.safetensors" >/dev/null 2>"$tmp/e"
one $? "names a built-in model, not files" && ok "merge: --model tiny refused (no files to merge into)" || bad "merge --model tiny: $(cat "$tmp/e")"
$bin merge --model "$tmp" --adapter $G/adapter_v1_tiny_krona4x8.safetensors -o "$tmp/mdir" >/dev/null 2>"$tmp/e"
one $? "not a diffusers folder (no unet/config.json)" && [ ! -e "$tmp/mdir" ] && ok "merge: a folder that is no diffusers model" ||
  bad "merge --model \$tmp: $(cat "$tmp/e")"
$bin merge --model $G/ldm_sd15like.safetensors --adapter $G/adapter_v1_tiny_krona4x8.safetensors -o "$tmp/m.safetensors" >/dev/null 2>"$tmp/e"
one $? "adapter_v1_tiny_krona4x8.safetensors" && [ ! -e "$tmp/m.safetensors" ] && ok "merge: another model's adapter in one line" || bad "merge other adapter: $(cat "$tmp/e")"
$bin merge --model $G/ldm_sd15like.safetensors --adapter "$tmp/nosuch.safetensors" -o "$tmp/m.safetensors" >/dev/null 2>"$tmp/e"
one $? "nosuch.safetensors" && ok "merge: unreadable adapter" || bad "merge unreadable adapter: $(cat "$tmp/e")"
$bin merge --model "$tmp/cut.safetensors" --adapter $G/adapter_v1_tiny_krona4x8.safetensors -o "$tmp/m.safetensors" >/dev/null 2>"$tmp/e"
one $? "cut.safetensors" && ok "merge: truncated checkpoint" || bad "merge truncated: $(cat "$tmp/e")"
: >"$tmp/m.safetensors"
$bin merge --model $G/ldm_sd15like.safetensors --adapter $G/adapter_v1_tiny_krona4x8.safetensors -o "$tmp/m.safetensors" >/dev/null 2>"$tmp/e"
one $? "exists (use --force" && [ ! -s "$tmp/m.safetensors" ] && ok "merge: output exists" || bad "merge output exists: $(cat "$tmp/e")"

# --- train: bad presets and --set values
printf '[train]\nlerning_rate = 1e-3\n' >"$tmp/typo.ini"
$bin train --preset "$tmp/typo.ini" --headless >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q "typo.ini:2: unknown key 'lerning_rate'" "$tmp/e" && grep -q "did you mean 'lr'" "$tmp/e" && ok "preset typo" || bad "preset typo (rc $rc): $(cat "$tmp/e")"
$bin train --preset presets/default.ini --headless --set lr=abc >/dev/null 2>"$tmp/e"; [ $? -eq 2 ] && grep -q "not a number" "$tmp/e" && ok "--set lr=abc" || bad "--set lr=abc"
$bin train --preset presets/default.ini --headless --set iterations=0 >/dev/null 2>"$tmp/e"; [ $? -eq 2 ] && grep -q "iterations" "$tmp/e" && ok "--set iterations=0" || bad "--set iterations=0"
$bin train --preset presets/default.ini --headless --set image=nope.png --set output_dir="$tmp/r" >/dev/null 2>"$tmp/e"; [ $? -eq 2 ] && grep -q "nope.png" "$tmp/e" && ok "missing image" || bad "missing image: $(cat "$tmp/e")"
$bin train --preset presets/default.ini --headless --set buckets=1 --set bucket_step=6 --set output_dir="$tmp/r" >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q "bucket_step = 6: must be a multiple of 4 for this model" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
  ok "buckets: bad bucket_step" || bad "bad bucket_step (rc $rc): $(cat "$tmp/e")"

# --- sample: a malformed adapter file
printf 'not a safetensors file' >"$tmp/junk.safetensors"
$bin sample --model tiny --adapter "$tmp/junk.safetensors" --prompt "a sks dog" -o "$tmp/x.png" >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q "junk.safetensors" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] && ok "malformed adapter file" || bad "malformed adapter (rc $rc)"

# --- VAE tiling: a bad --vae-tiling or vae_tiling value is one line naming it
$bin sample --model tiny --prompt "a dog" --vae-tiling maybe -o "$tmp/x.png" >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--vae-tiling maybe: use auto, on or off" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] && ok "sample --vae-tiling maybe" || bad "--vae-tiling maybe (rc $rc): $(cat "$tmp/e")"
$bin train --preset presets/default.ini --headless --set vae_tiling=always >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q "vae_tiling=always: must be one of: auto, on, off" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] && ok "--set vae_tiling=always" || bad "--set vae_tiling=always (rc $rc): $(cat "$tmp/e")"
# --- hostile inputs (issue 12): each a one-line error with status 2, never a hang (timeout) or a
# read until memory runs out (ulimit)
one_line() { [ "$1" -eq 2 ] && [ "$(wc -l <"$tmp/e")" -eq 1 ] && grep -q -- "$2" "$tmp/e"; }
limited() { (ulimit -v 4000000; timeout 20 "$@"); }
limited $bin sample --model /dev/zero --prompt x -o "$tmp/z.png" >/dev/null 2>"$tmp/e"
one_line $? "model '/dev/zero': it is a character device" && ok "sample --model /dev/zero" || bad "sample --model /dev/zero: $(cat "$tmp/e")"
limited $bin info --model /dev/zero >/dev/null 2>"$tmp/e"
one_line $? "'/dev/zero': it is a character device, not a regular file" && ok "info --model /dev/zero" || bad "info --model /dev/zero: $(cat "$tmp/e")"
limited $bin train --headless --preset /dev/zero >/dev/null 2>"$tmp/e"
one_line $? "'/dev/zero': it is a character device" && ok "train --preset /dev/zero" || bad "train --preset /dev/zero: $(cat "$tmp/e")"
limited $bin train --headless --preset presets/default.ini --set image=/dev/zero --set output_dir="$tmp/r" >/dev/null 2>"$tmp/e"
one_line $? "'/dev/zero': it is a character device" && ok "train: image = /dev/zero" || bad "image /dev/zero: $(cat "$tmp/e")"
mkfifo "$tmp/fifo.safetensors" "$tmp/fifo.ini" "$tmp/fifo.png"
limited $bin sample --model tiny --adapter "$tmp/fifo.safetensors" --prompt x -o "$tmp/z.png" >/dev/null 2>"$tmp/e"
one_line $? "fifo.safetensors': it is a FIFO" && ok "sample --adapter FIFO: refused, not waited on" || bad "adapter FIFO: $(cat "$tmp/e")"
limited $bin sample --model "$tmp/fifo.safetensors" --prompt x -o "$tmp/z.png" >/dev/null 2>"$tmp/e"
one_line $? "it is a FIFO" && ok "sample --model FIFO" || bad "model FIFO: $(cat "$tmp/e")"
limited $bin train --headless --preset "$tmp/fifo.ini" >/dev/null 2>"$tmp/e"
one_line $? "fifo.ini': it is a FIFO" && ok "train --preset FIFO" || bad "preset FIFO: $(cat "$tmp/e")"
limited $bin train --headless --preset presets/default.ini --set image="$tmp/fifo.png" --set output_dir="$tmp/r" >/dev/null 2>"$tmp/e"
one_line $? "fifo.png': it is a FIFO" && ok "train: a FIFO as an image" || bad "image FIFO: $(cat "$tmp/e")"
# seeds: one rule everywhere
$bin sample --model tiny --prompt x --seed -1 -o "$tmp/z.png" >/dev/null 2>"$tmp/e"
one_line $? "--seed -1: must not be negative" && [ ! -e "$tmp/z.png" ] && ok "sample --seed -1 refused" || bad "sample --seed -1: $(cat "$tmp/e")"
$bin train --headless --preset presets/default.ini --set seed=-1 >/dev/null 2>"$tmp/e"
one_line $? "seed=-1: must not be negative" && ok "train --set seed=-1 refused the same way" || bad "train seed -1: $(cat "$tmp/e")"
# a 10,000-character value: shortened, and the reason shows
long=$(head -c 10000 /dev/zero | tr '\0' x)
$bin train --headless --preset presets/default.ini --set "instance_prompt=$long" >/dev/null 2>"$tmp/e"
one_line $? "(10016 characters): too long (at most 255 characters)" && [ "$(wc -c <"$tmp/e")" -lt 400 ] &&
  ok "--set a 10,000-character prompt: shortened, reason shown" || bad "long --set: $(cut -c1-200 "$tmp/e")"
# a key set twice in a preset
printf '[train]\nlr = 1e-3\niterations = 5\nlr = 2e-3\n' >"$tmp/twice.ini"
$bin train --headless --preset "$tmp/twice.ini" >/dev/null 2>"$tmp/e"
one_line $? "twice.ini:4: 'lr' is set twice in \[train\] (first on line 2)" && ok "preset: a key set twice" || bad "key twice: $(cat "$tmp/e")"
# sample -o into a missing folder fails before generating (a long generation would time out), naming the real path
timeout 10 $bin sample --model tiny --prompt x --steps 999 --size 256 -o "$tmp/missing/out.png" >/dev/null 2>"$tmp/e"
one_line $? "cannot write '$tmp/missing/out.png': the folder '$tmp/missing' does not exist" && ! grep -q "\.tmp\." "$tmp/e" &&
  ok "sample -o into a missing folder: refused first" || bad "sample -o missing: $(cat "$tmp/e")"
if [ "$(id -u)" != 0 ]; then   # root writes anywhere
  mkdir -p "$tmp/ro" && chmod 555 "$tmp/ro"
  timeout 10 $bin sample --model tiny --prompt x --steps 999 --size 256 -o "$tmp/ro/out.png" >/dev/null 2>"$tmp/e"
  one_line $? "'$tmp/ro' is not writable" && ok "sample -o into a read-only folder: refused first" || bad "sample -o read-only: $(cat "$tmp/e")"
  chmod 755 "$tmp/ro"
fi
# the shipped preset from another folder: its image paths are relative to presets/
repo=$PWD
(cd "$tmp" && "$repo/krona-studio" train --headless --preset "$repo/presets/default.ini" --set iterations=2 \
  --set sample_every=0 --set resolution=16 --set output_dir=elsewhere --set run_name=away --set device=cpu) >"$tmp/o" 2>&1; rc=$?
[ $rc -eq 0 ] && [ -f "$tmp/elsewhere/away/adapter.safetensors" ] && grep -q "^image = $repo/models/demo/subject1.png\$" "$tmp/elsewhere/away/preset.ini" &&
  ok "the default preset runs from another folder; its run folder records absolute paths" || bad "default preset elsewhere (rc $rc): $(tail -2 "$tmp/o")"

# --- a SIGKILLed run resumes to the same adapter as an uninterrupted one
common="--headless --preset presets/default.ini --set resolution=16 --set iterations=30 --set checkpoint_every=5 --set sample_every=0 --set output_dir=$tmp/runs --set device=cpu"
$bin train $common --set run_name=full >"$tmp/full.log" 2>&1 || bad "uninterrupted run: $(tail -1 "$tmp/full.log")"
$bin train $common --set run_name=killed >"$tmp/killed.log" 2>&1 &
pid=$!
i=0
while [ ! -f "$tmp/runs/killed/checkpoint.safetensors" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
if [ -f "$tmp/runs/killed/adapter.safetensors" ]; then
  bad "the run finished before it could be killed"
else
  # a checkpoint the killed process was writing (its pid is dead): removed on resume
  : >"$tmp/runs/killed/checkpoint.safetensors.tmp.$pid"
  # resumed from another folder: the run folder's paths are absolute
  (cd "$tmp" && "$repo/krona-studio" train --headless --resume "$tmp/runs/killed") >"$tmp/resume.log" 2>&1 && grep -q "resumed" "$tmp/resume.log" ||
    bad "resume: $(tail -1 "$tmp/resume.log")"
  [ ! -e "$tmp/runs/killed/checkpoint.safetensors.tmp.$pid" ] && grep -q "removed [0-9]* temporary files* a killed run left" "$tmp/resume.log" &&
    ok "resume removes the temp the killed run left" || bad "stale temp: $(ls "$tmp/runs/killed")"
  cmp -s "$tmp/runs/full/adapter.safetensors" "$tmp/runs/killed/adapter.safetensors" &&
    ok "killed at step $(sed -n 's/.*resumed .* at step \([0-9]*\).*/\1/p' "$tmp/resume.log") and resumed: same adapter bytes" ||
    bad "resumed adapter differs"
fi

# --- train --headless on a terminal: one progress bar redrawn in place, as wide as the terminal,
# log lines above it, the summary below; piped (everything above), plain lines without escapes
grep -q "$(printf '\r\|\033')" "$tmp/full.log" && bad "piped train output holds \\r or escapes" || ok "piped train: plain lines"
if command -v tmux >/dev/null; then
  TM() { tmux -L "krona-cli-$$" "$@"; }
  bar_run() { # cols iterations: run train in a tmux pane; watch the screen until it exits
    printf '%s\n' "$bin train --headless --preset presets/default.ini --set resolution=16 --set iterations=$2 \
      --set sample_every=$(($2 / 2)) --set sample_steps=2 --set checkpoint_every=0 --set output_dir=$tmp/runs \
      --set run_name=bar$1 --set device=cpu; echo exit=\$?; sleep 60" >"$tmp/bar.sh"
    TM new-session -d -s s -x "$1" -y 30 "sh $tmp/bar.sh"
    most=0 steps="" i=0
    while [ $i -lt 600 ]; do
      TM capture-pane -p -t s >"$tmp/screen" 2>/dev/null
      n=$(grep -c "^step *[0-9]*/$2" "$tmp/screen")
      [ "$n" -gt "$most" ] && most=$n
      st=$(sed -n "s|^step *\([0-9]*\)/$2.*|\1|p" "$tmp/screen")
      case " $steps " in *" $st "*) ;; *) steps="$steps $st" ;; esac
      grep -q "^exit=" "$tmp/screen" && break
      sleep 0.05; i=$((i + 1))
    done
    TM capture-pane -p -J -t s >"$tmp/screen"   # -J: a wrapped line comes back whole
    TM kill-server
  }
  bar_run 72 40
  barl=$(grep -n "^step 40/40 \[=*\] loss [0-9.]*  [0-9.]* it/s  done$" "$tmp/screen" | cut -d: -f1)
  saml=$(grep -n "^samples at step 20 -> .*step_000020.png$" "$tmp/screen" | cut -d: -f1)
  donel=$(grep -n "^done: 40 steps" "$tmp/screen" | cut -d: -f1)
  [ "$most" -eq 1 ] && [ "$(echo $steps | wc -w)" -ge 3 ] && [ -n "$barl" ] && [ -n "$saml" ] && [ -n "$donel" ] &&
    [ "$saml" -lt "$barl" ] && [ "$donel" -eq $((barl + 1)) ] && grep -q "^exit=0" "$tmp/screen" &&
    [ "$(grep "^step 40/40" "$tmp/screen" | wc -L)" -le 71 ] &&
    ok "tty: one bar redrawn in place (steps seen:$steps), log lines above, summary below" ||
    bad "tty progress bar (bars at once $most, steps seen:$steps, lines $saml/$barl/$donel): $(cat "$tmp/screen")"
  bar_run 36 10
  [ "$most" -eq 1 ] && grep -q "^step 10/10  loss" "$tmp/screen" && [ "$(grep "^step 10/10" "$tmp/screen" | wc -L)" -le 35 ] &&
    grep -q "^exit=0" "$tmp/screen" && ok "tty, 36 columns: no bar, the line cut to fit" || bad "narrow tty: $(cat "$tmp/screen")"
fi

# --- sample with the trained adapter
$bin sample --model tiny --adapter "$tmp/runs/full/adapter.safetensors" --prompt "a sks emoji" --n 2 --steps 5 --size 16 -o "$tmp/s.png" >/dev/null 2>"$tmp/e" &&
  [ "$(head -c 8 "$tmp/s.png" | od -An -tx1 | tr -d ' ')" = 89504e470d0a1a0a ] && ok "sample writes a PNG" || bad "sample: $(cat "$tmp/e")"
# ... and with a NaN in it (its last float, f32 little-endian): refused naming the tensor, no image
cp "$tmp/runs/full/adapter.safetensors" "$tmp/nan.safetensors"
size=$(wc -c <"$tmp/nan.safetensors")
printf '\000\000\300\177' | dd of="$tmp/nan.safetensors" bs=1 seek=$((size - 4)) conv=notrunc 2>/dev/null
$bin sample --model tiny --adapter "$tmp/nan.safetensors" --prompt "a sks emoji" --steps 2 -o "$tmp/nan.png" >/dev/null 2>"$tmp/e"
one_line $? "nan.safetensors: tensor 'lora_unet_.*' holds NaN (element " && [ ! -e "$tmp/nan.png" ] &&
  ok "sample --adapter with a NaN: refused naming the tensor" || bad "NaN adapter: $(cat "$tmp/e")"

# --- score --run: adapter, base and their paired gain (= the difference of the two means)
$bin score --run "$tmp/runs/full" --colours 2 --steps 3 --size 16 >"$tmp/sc" 2>"$tmp/e" &&
  awk '$1 == "adapter" {a = $3} $1 == "base" {b = $3} $1 == "gain" {g = $3; n++}
       END {d = a - b - g; exit !(n == 1 && d < 0.0015 && d > -0.0015)}' "$tmp/sc" &&
  ok "score --run: gain $(awk '$1 == "gain" {print $3}' "$tmp/sc") = adapter - base" || bad "score --run: $(cat "$tmp/sc" "$tmp/e")"

# --- f16 / bf16 adapter export: the header says the dtype asked, sample reads it; checkpoints stay
# f32, so a finished run resumed with another --export-dtype re-exports it, and back in f32 gives
# the original bytes
dtypes() { # the dtypes in a safetensors file's header, sorted, unique
  n=$(od -An -tu8 -N8 "$1" | tr -d ' ')
  tail -c +9 "$1" | head -c "$n" | grep -o '"dtype":"[A-Z0-9_]*"' | sort -u | sed 's/"dtype":"\(.*\)"/\1/' | tr '\n' ' '; }
$bin train $common --set iterations=4 --set run_name=half --export-dtype f16 >"$tmp/o" 2>&1; rc=$?
[ $rc -eq 0 ] && [ "$(dtypes "$tmp/runs/half/adapter.safetensors")" = "F16 " ] &&
  [ "$(dtypes "$tmp/runs/half/checkpoint.safetensors")" = "F32 " ] && grep -q "^export_dtype = f16" "$tmp/runs/half/preset.ini" &&
  ok "train --export-dtype f16: adapter F16, checkpoint F32, preset.ini records it" || bad "export f16 (rc $rc): $(tail -2 "$tmp/o")"
$bin sample --model tiny --adapter "$tmp/runs/half/adapter.safetensors" --prompt "a sks emoji" --steps 3 --size 16 -o "$tmp/h.png" >/dev/null 2>"$tmp/e" &&
  [ -s "$tmp/h.png" ] && ok "sample --adapter reads an F16 adapter" || bad "sample f16 adapter: $(cat "$tmp/e")"
cp -r "$tmp/runs/full" "$tmp/runs/reexp"
$bin train --headless --resume "$tmp/runs/reexp" --export-dtype bf16 >"$tmp/o" 2>&1; rc=$?
[ $rc -eq 0 ] && [ "$(dtypes "$tmp/runs/reexp/adapter.safetensors")" = "BF16 " ] &&
  grep -q "adapter written to .* (BF16)" "$tmp/o" && ok "train --resume a finished run --export-dtype bf16: re-exported as BF16" ||
  bad "re-export bf16 (rc $rc): $(tail -2 "$tmp/o")"
$bin sample --model tiny --adapter "$tmp/runs/reexp/adapter.safetensors" --prompt "a sks emoji" --steps 3 --size 16 -o "$tmp/b.png" >/dev/null 2>"$tmp/e" &&
  [ -s "$tmp/b.png" ] && ok "sample --adapter reads a BF16 adapter" || bad "sample bf16 adapter: $(cat "$tmp/e")"
$bin train --headless --resume "$tmp/runs/reexp" --export-dtype f32 >"$tmp/o" 2>&1 &&
  cmp -s "$tmp/runs/full/adapter.safetensors" "$tmp/runs/reexp/adapter.safetensors" &&
  ok "re-exported as f32 again: the original adapter bytes" || bad "re-export f32: $(tail -2 "$tmp/o")"
$bin train $common --set run_name=x --export-dtype fp16 >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--export-dtype fp16: use f32, f16 or bf16" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
  ok "train --export-dtype fp16: one line" || bad "bad --export-dtype (rc $rc): $(cat "$tmp/e")"

# --- merge into a diffusers folder: the tiny model laid out as one (its weights, configs written
# from its built-in architecture), checked to be the same model, then merged with a UNet + text
# encoder adapter (the values themselves: tests/test_merge.c)
D="$tmp/tinydir"
mkdir -p "$D/unet" "$D/text_encoder" "$D/scheduler"
cat >"$D/unet/config.json" <<'JSON'
{"_class_name": "UNet2DConditionModel", "in_channels": 3, "out_channels": 3, "sample_size": 32,
 "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
 "mid_block_type": "UNetMidBlock2DCrossAttn",
 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
 "block_out_channels": [32, 64, 64], "layers_per_block": 1, "cross_attention_dim": 64,
 "norm_num_groups": 16, "attention_head_dim": 4}
JSON
cat >"$D/text_encoder/config.json" <<'JSON'
{"architectures": ["CLIPTextModel"], "vocab_size": 258, "hidden_size": 64, "intermediate_size": 256,
 "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "gelu",
 "layer_norm_eps": 1e-05, "eos_token_id": 257}
JSON
echo '{"_class_name": "StableDiffusionPipeline"}' >"$D/model_index.json"
if [ -f models/tiny/unet.safetensors ]; then
  cp models/tiny/unet.safetensors "$D/unet/diffusion_pytorch_model.safetensors"
  cp models/tiny/text_encoder.safetensors "$D/text_encoder/model.safetensors"
  cp models/tiny/scheduler_config.json "$D/scheduler/"
  $bin sample --model "$D" --prompt "a dog on a red background" --steps 3 -o "$tmp/d1.png" >/dev/null 2>&1 &&
    $bin sample --model tiny --prompt "a dog on a red background" --steps 3 -o "$tmp/d2.png" >/dev/null 2>&1 &&
    cmp -s "$tmp/d1.png" "$tmp/d2.png" && ok "the tiny model as a diffusers folder samples as tiny" || bad "tiny as a folder"
  $bin train $common --set iterations=4 --set run_name=te --set text_encoder_adapters=1 >"$tmp/o" 2>&1 ||
    bad "train text_encoder_adapters=1: $(tail -1 "$tmp/o")"
  A="$tmp/runs/te/adapter.safetensors"
  $bin merge --model "$D" --adapter "$A" -o "$tmp/merged" >"$tmp/o" 2>"$tmp/e"; rc=$?
  [ $rc -eq 0 ] && grep -q "2 weight files rewritten" "$tmp/o" && grep -q "4 files copied" "$tmp/o" &&
    cmp -s "$D/model_index.json" "$tmp/merged/model_index.json" && cmp -s "$D/unet/config.json" "$tmp/merged/unet/config.json" &&
    cmp -s "$D/scheduler/scheduler_config.json" "$tmp/merged/scheduler/scheduler_config.json" &&
    ! cmp -s "$D/unet/diffusion_pytorch_model.safetensors" "$tmp/merged/unet/diffusion_pytorch_model.safetensors" &&
    ! cmp -s "$D/text_encoder/model.safetensors" "$tmp/merged/text_encoder/model.safetensors" &&
    ok "merge --model DIR: unet/ and text_encoder/ weights rewritten, the rest copied byte for byte" ||
    bad "merge into a folder (rc $rc): $(cat "$tmp/o" "$tmp/e")"
  [ "$(dtypes "$tmp/merged/unet/diffusion_pytorch_model.safetensors")" = "F32 " ] &&
    [ "$($bin info --model "$tmp/merged" | num 'base UNet parameters')" = "$($bin info --model tiny | num 'base UNet parameters')" ] &&
    $bin sample --model "$tmp/merged" --prompt "a sks emoji" --steps 3 -o "$tmp/mg.png" >/dev/null 2>"$tmp/e" && [ -s "$tmp/mg.png" ] &&
    ok "the merged folder: same dtypes, info and sample load it" || bad "merged folder loads: $(cat "$tmp/e")"
  $bin merge --model "$D" --adapter "$A" -o "$tmp/merged" >/dev/null 2>"$tmp/e"
  one $? "exists (use --force to replace it)" && ok "merge into a folder: output exists" || bad "folder output exists: $(cat "$tmp/e")"
  echo marker >"$tmp/merged/marker"
  $bin merge --model "$D" --adapter "$A" -o "$tmp/merged" --force --scale 0.5 >/dev/null 2>"$tmp/e" && [ ! -e "$tmp/merged/marker" ] &&
    [ -z "$(ls -d "$tmp"/merged.* 2>/dev/null)" ] && ok "merge --force replaces the folder, nothing left beside it" || bad "folder --force: $(cat "$tmp/e")"
  $bin merge --model "$D" --adapter "$A" -o "$D/sub" >/dev/null 2>"$tmp/e"
  one $? "must be outside the model folder" && [ ! -e "$D/sub" ] && ok "merge: output inside the model folder refused" || bad "output inside: $(cat "$tmp/e")"
  $bin merge --model "$D" --adapter "$A" -o "$tmp/m2" --dtype f16 >/dev/null 2>"$tmp/e"
  one $? "keeps each weight file's dtypes" && ok "merge into a folder: --dtype refused" || bad "folder --dtype: $(cat "$tmp/e")"
  : >"$D/unet/diffusion_pytorch_model.bin"
  $bin merge --model "$D" --adapter "$A" -o "$tmp/m2" >/dev/null 2>"$tmp/e"
  one $? "diffusion_pytorch_model.bin: pickled" && [ ! -e "$tmp/m2" ] && [ -z "$(ls -d "$tmp"/m2.* 2>/dev/null)" ] &&
    ok "merge: .bin weights in a touched part refused, nothing written" || bad "folder .bin: $(cat "$tmp/e")"
  rm "$D/unet/diffusion_pytorch_model.bin"
  $bin merge --model $G/ldm_sd15like.safetensors --adapter "$A" -o "$tmp/m-te.safetensors" >/dev/null 2>"$tmp/e"
  one $? "text encoder adapters .* merge into a diffusers folder" && [ ! -e "$tmp/m-te.safetensors" ] &&
    ok "merge: text encoder adapters into a single file refused in one line" || bad "single file + te: $(cat "$tmp/e")"
fi

# --- score --data / pretrain: bad inputs are one-line errors with status 2
$bin score --data "$tmp/none.bin" >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q "none.bin" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] && ok "score --data: missing file" || bad "score --data missing (rc $rc)"
$bin score --data "$tmp/junk.safetensors" >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q "KSDATA1" "$tmp/e" && ok "score --data: not a dataset" || bad "score --data junk (rc $rc)"
$bin pretrain --schedule cosine >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 2 ] && grep -q -- "--schedule" "$tmp/e" && ok "pretrain --schedule cosine refused" || bad "pretrain --schedule (rc $rc)"
# a broken scheduler config next to the tiny weights names the file
mkdir -p "$tmp/home/models/tiny"
if [ -f models/tiny/unet.safetensors ]; then
  cp models/tiny/unet.safetensors models/tiny/text_encoder.safetensors "$tmp/home/models/tiny/"
  echo '{"beta_schedule": "squaredcos_cap_v2"}' >"$tmp/home/models/tiny/scheduler_config.json"
  KRONA_HOME="$tmp/home" $bin sample --model tiny --prompt "a dog" -o "$tmp/y.png" >/dev/null 2>"$tmp/e"; rc=$?
  [ $rc -ne 0 ] && grep -q "scheduler_config.json.*beta_schedule" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
    ok "bad scheduler_config.json: one-line error" || bad "bad scheduler config (rc $rc): $(cat "$tmp/e")"
fi

# --- devices: one binary; backends are plugins found at run time (src/core/backend.c)
$bin sample --model tiny --prompt "a dog" --steps 2 -o "$tmp/d.png" --device auto >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 0 ] && [ -s "$tmp/d.png" ] && ok "--device auto runs (on the CPU here)" || bad "--device auto (rc $rc): $(cat "$tmp/e")"
$bin train $common --set device=auto --set iterations=2 --set run_name=auto >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -eq 0 ] && [ -f "$tmp/runs/auto/adapter.safetensors" ] && ok "train --device auto trains" || bad "train device=auto (rc $rc): $(cat "$tmp/e")"
# --- precision (core/backend.h): bf16 trains on the CPU (its reference); tf32 is CUDA's alone
$bin train $common --device cpu --precision bf16 --set iterations=2 --set run_name=bf16 >"$tmp/o" 2>"$tmp/e"; rc=$?
[ $rc -eq 0 ] && [ -f "$tmp/runs/bf16/adapter.safetensors" ] && grep -q "precision bf16 on cpu" "$tmp/o" &&
  grep -q "^precision = bf16" "$tmp/runs/bf16/preset.ini" && ok "train --precision bf16 on the cpu, recorded in the run" ||
  bad "train --precision bf16 (rc $rc): $(cat "$tmp/e")"
$bin train $common --device cpu --set precision=tf32 --set iterations=2 --set run_name=tf32 >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -ne 0 ] && grep -q "precision = tf32: the cpu device has no such mode" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
  ok "precision = tf32 on the cpu: one line" || bad "tf32 on cpu (rc $rc): $(cat "$tmp/e")"
$bin pretrain --device cpu --precision fp16 --steps 1 --out "$tmp/pt16" >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -ne 0 ] && grep -q "precision = fp16: use auto, fp32, tf32 or bf16" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
  ok "pretrain --precision fp16: one line with the choices" || bad "pretrain fp16 (rc $rc): $(cat "$tmp/e")"
if ! nvidia-smi -L >/dev/null 2>&1; then # no GPU here: cuda fails in one line, whatever is installed
  $bin sample --model tiny --prompt "a dog" -o "$tmp/d.png" --device cuda >/dev/null 2>"$tmp/e"; rc=$?
  [ $rc -ne 0 ] && grep -q "device = cuda: " "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
    ok "--device cuda without a GPU: $(cut -c1-90 "$tmp/e")" || bad "--device cuda no GPU (rc $rc): $(cat "$tmp/e")"
fi
KRONA_BACKEND_PATH="$tmp/none" $bin sample --model tiny --prompt "a dog" -o "$tmp/d.png" --device cuda >/dev/null 2>"$tmp/e"; rc=$?
[ $rc -ne 0 ] && grep -q "this build has no cuda backend.*$tmp/none" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
  ok "--device cuda, no plugin: one line naming where it looked" || bad "no plugin (rc $rc): $(cat "$tmp/e")"
if command -v cc >/dev/null; then
  mkdir -p "$tmp/stale" "$tmp/rt" "$tmp/nort"
  # a plugin of another version answers NULL to our ABI number
  echo 'const void *krona_backend_plugin(int abi) { (void)abi; return 0; }' >"$tmp/stale.c"
  cc -shared -fPIC -o "$tmp/stale/krona-backend-cuda.so" "$tmp/stale.c"
  KRONA_BACKEND_PATH="$tmp/stale" $bin sample --model tiny --prompt "a dog" -o "$tmp/d.png" --device cuda >/dev/null 2>"$tmp/e"; rc=$?
  [ $rc -ne 0 ] && grep -q "is not a krona-studio cuda backend of this version" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
    ok "--device cuda, stale plugin: rebuild it" || bad "stale plugin (rc $rc): $(cat "$tmp/e")"
  # a plugin whose runtime library is gone, as on a machine without the CUDA runtime
  echo 'int krona_fake_runtime(void) { return 1; }' >"$tmp/rt.c"
  cc -shared -fPIC -o "$tmp/rt/libkrona_fake_rt.so" "$tmp/rt.c"
  echo 'int krona_fake_runtime(void); const void *krona_backend_plugin(int abi) { (void)abi; krona_fake_runtime(); return (const void *)0; }' >"$tmp/nort.c"
  cc -shared -fPIC -o "$tmp/nort/krona-backend-cuda.so" "$tmp/nort.c" -L"$tmp/rt" -lkrona_fake_rt
  rm "$tmp/rt/libkrona_fake_rt.so"
  KRONA_BACKEND_PATH="$tmp/nort" $bin sample --model tiny --prompt "a dog" -o "$tmp/d.png" --device cuda >/dev/null 2>"$tmp/e"; rc=$?
  [ $rc -ne 0 ] && grep -q "the CUDA runtime is not installed (.*needs libkrona_fake_rt.so" "$tmp/e" && [ "$(wc -l <"$tmp/e")" -eq 1 ] &&
    ok "--device cuda, runtime missing: names the library" || bad "missing runtime (rc $rc): $(cat "$tmp/e")"
  # auto skips a plugin that cannot load and trains on the CPU
  KRONA_BACKEND_PATH="$tmp/nort" $bin sample --model tiny --prompt "a dog" --steps 2 -o "$tmp/d.png" --device auto >/dev/null 2>"$tmp/e"; rc=$?
  [ $rc -eq 0 ] && ok "--device auto with a broken plugin falls back to the CPU" || bad "auto, broken plugin (rc $rc): $(cat "$tmp/e")"
  KRONA_BACKEND_PATH="$tmp/nort" $bin train $common --set device=auto --set iterations=1 --set run_name=nort >"$tmp/o" 2>&1; rc=$?
  [ $rc -eq 0 ] && grep -q "^device auto: skipped cuda: the CUDA runtime is not installed" "$tmp/o" &&
    ok "train --device auto says why it skipped the GPU" || bad "auto skip note (rc $rc): $(cat "$tmp/o")"
fi

echo "== cli: $pass passed, $fail failed =="
[ $fail -eq 0 ]

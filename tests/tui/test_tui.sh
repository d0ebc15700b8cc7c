#!/bin/sh
# End-to-end test of the terminal studio (run from the repo root by `make test`):
# drives the real binary in tmux at 80x24 and 120x40 with send-keys and reads
# the screen with capture-pane. Checks the live parameter count against
# `krona-studio info`, invalid a1 in red with a reason, bad inputs (a text
# file, a corrupt PNG, a preset with a typo) leaving the session usable, the
# text encoder knob adding its adapters to the count (n/a where a model has no
# text encoder), live
# training (step and loss advance, pause holds, export while paused names what
# LyCORIS's loader cannot rebuild, resume continues), the buckets knob and the
# bucket each image lands in, save +
# reopen + save giving the same file, resize, quit; the title bar black on
# cyan and never bold (reverse video without colour), "+ add sample prompt"
# whole, the subject images' thumbnails in Inputs (half-block; none without
# graphics); at 80x24 and 120x40 the Preview's base grid labelled "base"
# beside the newest "step N", older ones under it, and the runs view's base
# and latest grids with their labels right under its list; the first ETA not
# counting the base grid's sampling; then a sixel preview stream captured from
# the studio decodes back to the saved PNGs (newest and base).
set -u
bin=./krona-studio
command -v tmux >/dev/null || { echo "SKIP studio tests: tmux not installed (make deps)"; exit 0; }
tmp=$(mktemp -d)
# one tmux server per session (a fresh socket avoids racing a server that is exiting)
n_srv=0
sock="krona-tui-$$-0"
T() { tmux -L "$sock" "$@"; }
cleanup() { i=0; while [ $i -le $n_srv ]; do tmux -L "krona-tui-$$-$i" kill-server 2>/dev/null; i=$((i + 1)); done; rm -rf "$tmp"; }
trap cleanup EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; screen | sed 's/^/     | /'; }
screen() { T capture-pane -p -t s 2>/dev/null; }
keys() { T send-keys -t s "$@"; }
# wait until the screen matches an extended regex (timeout in tenths of a second)
wait_for() {
  i=0
  while [ $i -lt "$2" ]; do screen | grep -Eq -- "$1" && return 0; sleep 0.1; i=$((i + 1)); done
  return 1
}
step() { screen | sed -n 's/.*step \([0-9]*\)\/.*/\1/p' | head -1; }
# half-block pixels on the Inputs row of an image (its thumbnail beside the list)
thumbs_on_row() { screen | grep "$1" | grep -q '▀'; }
shown_params() { screen | sed -n 's/.*trainable \([0-9,]*\) of.*/\1/p' | head -1; }
info_params() { $bin info --model tiny "$@" | sed -n 's/^trainable parameters: *\([0-9,]*\).*/\1/p'; }

# a fast preset: 16 px, cheap sampling, run folders in the temp dir
sed -e 's/^resolution = .*/resolution = 16/' -e 's/^iterations = .*/iterations = 400/' \
    -e 's/^sample_every = .*/sample_every = 0/' -e 's/^sample_steps = .*/sample_steps = 2/' \
    -e 's/^checkpoint_every = .*/checkpoint_every = 0/' -e "s|^output_dir = .*|output_dir = $tmp/runs|" \
    -e "s|^image = \.\./models/|image = $PWD/models/|" presets/default.ini > "$tmp/fast.ini"
sed 's/^a2 = /aa2 = /' "$tmp/fast.ini" > "$tmp/typo.ini"
echo "just some notes" > "$tmp/notes.txt"
head -c 100 models/demo/subject1.png > "$tmp/broken.png"
export XDG_CONFIG_HOME="$tmp/cfg"

start() { # cols rows args...
  c=$1 r=$2; shift 2
  T kill-server 2>/dev/null
  n_srv=$((n_srv + 1)); sock="krona-tui-$$-$n_srv"
  T new-session -d -s s -x "$c" -y "$r" "$bin $* ; echo \"exit=\$?\" > $tmp/exit; sleep 60"
  rm -f "$tmp/exit"
}

# ---------------------------------------------------------------- 80x24
start 80 24 --preset "$tmp/fast.ini" --graphics halfblock
if wait_for 'trainable [0-9,]+ of' 100; then ok "80x24: studio opens the preset"; else bad "80x24: studio opens"; fi
for p in Inputs Prompt Knobs Status Loss Preview; do screen | grep -q "$p" || bad "80x24: panel $p missing"; done
screen | grep -q "q quit" && ok "80x24: all panels and the key bar" || bad "80x24: key bar"
# the title bar: black on cyan (ESC[30m ESC[46m), never bold (xterm draws bold black grey)
title_sgr=$(T capture-pane -e -p -t s | head -1 | cut -d' ' -f1)
if printf %s "$title_sgr" | grep -Eq '\[([0-9]+;)*1[;m]'; then bad "80x24: title bar is bold: $(printf %s "$title_sgr" | cat -v)"
elif printf %s "$title_sgr" | grep -Eq '30' && printf %s "$title_sgr" | grep -Eq '46'; then ok "80x24: title bar black on cyan, not bold"
else bad "80x24: title bar colours: $(printf %s "$title_sgr" | cat -v)"; fi
thumbs_on_row subject1.png && thumbs_on_row subject4.png && ok "80x24: thumbnails beside the images in Inputs" ||
  bad "80x24: thumbnails in Inputs"
keys Tab Down Down Down Down    # Prompt: instance, class, 2 sample prompts, then the add row
wait_for '\+ add sample prompt' 30 && ok "80x24: \"+ add sample prompt\" shown whole" || bad "80x24: + add sample prompt cut"
keys Tab Tab                    # back to Inputs
[ "$(shown_params)" = "$(info_params --a1 4 --a2 4)" ] && ok "params a1=4 a2=4 = $(shown_params)" || bad "params 4x4: $(shown_params) vs $(info_params --a1 4 --a2 4)"
keys Tab Tab Down Down '>'      # Knobs, row a1, bigger step: 4 -> 8
want=$(info_params --a1 8 --a2 4)
if wait_for "trainable $want of" 30; then ok "a1 -> 8: trainable $want as info prints"; else bad "a1=8 count (want $want)"; fi
keys '-'                        # a1 = 7 divides nothing
if wait_for 'invalid: a1=7' 30 && screen | grep -q 'does not divide'; then ok "a1=7 shown invalid with the reason"; else bad "a1=7 invalid"; fi
keys t
wait_for 'cannot train' 30 && ok "t refuses an invalid combination" || bad "t with invalid a1"
keys '+'
wait_for "trainable $want of" 30 || bad "a1 back to 8"
# the text encoder knob (row 6): on adds the tiny-text encoder's adapters, 2 layers x q/k/v/out
# of 64x64 each a1*a2 + (64/a1)(64/a2) (closed form), which `info --text-encoder` prints too
keys Down Down Down Down '+'
te=$(awk 'BEGIN { printf "%d\n", 2 * 4 * (8*4 + (64/8)*(64/4)) }')
te_info=$($bin info --model tiny --a1 8 --a2 4 --text-encoder | sed -n 's/^text encoder adapters: *\([0-9,]*\).*/\1/p' | tr -d ,)
want_te=$(printf "%s\n" "$want" | tr -d , | awk -v t="$te" '{ n = $1 + t; s = ""; while (n >= 1000) { s = sprintf(",%03d", n % 1000) s; n = int(n / 1000) } print n s }')
if wait_for "trainable $want_te of" 30 && screen | grep -Eq "text encoder +on \(\+1,280\)" && [ "$te" = "$te_info" ]; then
  ok "text encoder knob on: trainable $want + $te = $want_te, as info --text-encoder"
else bad "text encoder knob on (want $want_te, te $te, info $te_info)"; fi
keys '-'
wait_for "trainable $want of" 30 && screen | grep -Eq "text encoder +off" && ok "text encoder knob off: back to $want" ||
  bad "text encoder knob off (want $want)"

# bad inputs: a text file, a corrupt png, a preset with a typo
keys i; wait_for 'images only' 30 || bad "image picker opens"
keys "$tmp/notes.txt" Enter
wait_for 'not added' 30 && ok "non-image file refused with a message" || bad "non-image file"
keys i; wait_for 'images only' 30; keys "$tmp/broken.png" Enter
wait_for 'not added' 30 && screen | grep -q 'broken.png' && ok "corrupt PNG refused with a message" || bad "corrupt PNG"
keys o; wait_for 'Open preset' 30 || bad "preset picker opens"
keys "$tmp/typo.ini" Enter
wait_for 'aa2' 30 && ok "preset typo reported" || bad "preset typo"
keys i; wait_for 'images only' 30; keys "$PWD/models/demo/subject2.png" Enter
wait_for 'added .*subject2' 30 && ok "session still usable: image added" || bad "add image after errors"

# save, reopen, save again: identical files
keys s; wait_for 'save preset as' 30; keys C-u "$tmp/saved.ini" Enter
wait_for "saved $tmp/saved.ini" 30 && ok "preset saved" || bad "save"
keys s; wait_for 'save preset as' 30; keys C-u "$tmp/saved.ini" Enter
wait_for 'overwrite' 30 && ok "overwrite asks" || bad "overwrite confirm"
keys y; wait_for "saved $tmp/saved.ini" 30 || bad "overwrite y"
keys o; wait_for 'Open preset' 30; keys "$tmp/saved.ini" Enter
wait_for "opened $tmp/saved.ini" 30 || bad "reopen saved"
keys s; wait_for 'save preset as' 30; keys C-u "$tmp/saved2.ini" Enter
wait_for "saved $tmp/saved2.ini" 30
if cmp -s "$tmp/saved.ini" "$tmp/saved2.ini" && grep -q '^a1 = 8$' "$tmp/saved.ini" &&
   [ "$(grep -c '^image = ' "$tmp/saved.ini")" = 5 ]; then ok "save -> open -> save is identical (a1 = 8, 5 images)"
else bad "saved presets differ"; diff "$tmp/saved.ini" "$tmp/saved2.ini" | head; fi

# live training: step and loss advance, pause holds, resume continues
keys t
if wait_for 'training +step [1-9]' 300; then ok "training started"; else bad "training start"; fi
s1=$(step); wait_for "loss [0-9]" 100 || bad "loss shown"
i=0; while [ "$(step)" -le "$s1" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
s2=$(step); [ "$s2" -gt "$s1" ] && ok "step advances ($s1 -> $s2)" || bad "step stuck at $s1"
keys Space
wait_for 'paused +step' 100 && ok "paused" || bad "pause"
p1=$(step); sleep 1; p2=$(step)
[ "$p1" = "$p2" ] && ok "step holds while paused ($p1)" || bad "step moved while paused ($p1 -> $p2)"
keys e; wait_for 'export adapter to' 30 || bad "export asks for a path"
keys C-u "$tmp/exported.safetensors" Enter   # A 8x4: LyCORIS's own loader cannot rebuild it
wait_for "adapter exported \(LyCORIS's own loader cannot rebuild A 8x4" 50 && [ -s "$tmp/exported.safetensors" ] &&
  ok "e exports while paused, saying LyCORIS's loader cannot take 8x4" || bad "export while paused"
keys Space
i=0; while [ "$(step)" -le "$p2" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ "$(step)" -gt "$p2" ] && ok "resumed ($p2 -> $(step))" || bad "resume"
keys '?'; wait_for 'Keys' 20 && screen | grep -q 'export' && ok "help overlay while training" || bad "help"
keys Escape
keys q; wait_for 'stop it and quit' 150 && ok "quit asks while training" || bad "quit confirm"
keys n; wait_for 'cancelled' 150 || bad "quit n"
keys q y
i=0; while [ ! -f "$tmp/exit" ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done
grep -q 'exit=0' "$tmp/exit" 2>/dev/null && ok "quit (exit 0)" || bad "quit"
[ -f "$tmp/cfg/krona-studio/session.ini" ] && grep -q '^a1 = 8$' "$tmp/cfg/krona-studio/session.ini" &&
  ok "session state in \$XDG_CONFIG_HOME/krona-studio" || bad "session state"

# --------------------------------------------------------------- 120x40
start 120 40 --preset "$tmp/saved.ini" --graphics halfblock
wait_for 'trainable [0-9,]+ of' 100 || bad "120x40 opens"
screen | grep -q '+ add sample prompt' && ok "120x40: \"+ add sample prompt\" shown whole" || bad "120x40: + add sample prompt"
thumbs_on_row subject1.png && thumbs_on_row subject2.png && ok "120x40: thumbnails beside the images in Inputs" ||
  bad "120x40: thumbnails in Inputs"
keys Tab Tab Down Down Down '>'   # a2 4 -> 8
want=$(info_params --a1 8 --a2 8)
wait_for "trainable $want of" 30 && ok "120x40: a2 -> 8: trainable $want" || bad "120x40 a2=8 (want $want)"
keys Down Down Enter C-u attn+ffn Enter   # modules, typed
want=$(info_params --a1 8 --a2 8 --modules attn+ffn)
wait_for "trainable $want of" 30 && ok "120x40: modules attn+ffn: trainable $want" || bad "attn+ffn count (want $want)"
keys Down Down Down Down Down Down Down '+'   # (past text encoder) buckets on: Inputs show the bucket each image trains at
wait_for 'buckets +on' 30 && wait_for 'subject1.png +64x64 -> 16x16' 30 && ok "120x40: buckets on: Inputs show 64x64 -> 16x16" ||
  bad "bucket in Inputs"
keys '+'
wait_for 'buckets +off' 30 && ! screen | grep -q -- '-> 16x16' && ok "120x40: buckets off: sizes alone" || bad "buckets off"
T resize-window -t s -x 90 -y 28 2>/dev/null
sleep 0.5
screen | grep -q "Status" && screen | grep -q "q quit" && [ "$(screen | wc -l)" -le 28 ] && ok "reflows after resize" || bad "resize"
keys r; wait_for 'Runs in' 30 && screen | grep -q 'krona8x4' && ok "runs view lists the run" || bad "runs view"
keys p; wait_for 'opened .*/preset.ini' 30 && ok "run preset re-opened" || bad "re-open run preset"
keys q
i=0; while [ ! -f "$tmp/exit" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
grep -q 'exit=0' "$tmp/exit" 2>/dev/null && ok "120x40 quit" || bad "120x40 quit"

# ---------------------------------- model picker: a diffusers folder is picked whole
mkdir -p "$tmp/sd15like/unet"
cp tests/golden/unet_sd15like.json "$tmp/sd15like/unet/config.json"
start 100 30 --preset "$tmp/fast.ini" --graphics none
wait_for 'trainable [0-9,]+ of' 100 || bad "model picker: studio opens"
thumbs_on_row subject1.png && bad "no graphics: thumbnails drawn anyway" || ok "no graphics: Inputs without thumbnails"
keys m; wait_for 'Choose model' 30 && ok "m opens the model picker" || bad "model picker opens"
keys "$tmp/" Enter; wait_for 'sd15like\] +diffusers' 30 && ok "a diffusers folder is marked" || bad "diffusers folder marked"
keys "$tmp/sd15like" Enter
want=$($bin info --model "$tmp/sd15like" --a1 4 --a2 4 | sed -n 's/^trainable parameters: *\([0-9,]*\).*/\1/p')
wait_for "model = $tmp/sd15like" 30 && wait_for "trainable $want of" 30 && ok "picked: model = the folder, count $want as info" ||
  bad "model picked (want $want)"
# a folder without text_encoder/: the text encoder knob cannot apply; it says so and stays off
screen | grep -Eq "text encoder +n/a: no text_encoder" && ok "text encoder knob n/a for a folder without one" ||
  bad "text encoder knob n/a"
keys Tab Tab Down Down Down Down Down Down '+'
wait_for "text encoder adapters cannot apply: no text_encoder/config.json in $tmp/sd15like" 30 &&
  wait_for "trainable $want of" 10 && ok "+ on it says why and changes nothing" || bad "text encoder knob refused"
keys m; wait_for 'Choose model' 30
keys "$PWD/tests/golden/ldm_sd15like.safetensors" Enter
want=$($bin info --model tests/golden/ldm_sd15like.safetensors --a1 4 --a2 4 | sed -n 's/^trainable parameters: *\([0-9,]*\).*/\1/p')
wait_for "model = .*ldm_sd15like.safetensors" 30 && wait_for "trainable $want of" 30 &&
  ok "picked a single-file checkpoint: count $want as info" || bad "checkpoint picked (want $want)"
keys q
i=0; while [ ! -f "$tmp/exit" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done

# ------------- preview: the base grid beside the newest, older under it; runs view
sed -e 's/^iterations = .*/iterations = 4/' -e 's/^sample_every = .*/sample_every = 2/' "$tmp/fast.ini" > "$tmp/six.ini"
# the labels alone: drop the panel title and the status "step k/n"
labels() { screen | sed -e 's/Preview step [0-9]*//' -e 's/step [0-9]*\///g' | grep -Eo '\bbase\b|step [0-9]+' | tr '\n' ' '; }
# what the run saved (step 0, 2, 4), newest first: each grid is one sample event
saved_steps() { ls "$(ls -td "$tmp"/runs/*/ | head -1)"samples/step_*.png 2>/dev/null | sed 's/.*step_0*\([0-9][0-9]*\)\.png/\1/' | sort -rn | head -4; }
history_check() { # cols rows
  start "$1" "$2" --preset "$tmp/six.ini" --graphics halfblock
  wait_for 'trainable [0-9,]+ of' 100 || bad "$1x$2: history run opens"
  keys t
  wait_for 'done +step 4/4' 300 || bad "$1x$2: history run finished"
  wait_for 'Preview step 4' 50 || bad "$1x$2: preview of the last step"
  # step 0 is the base model's grid: "base" first, then the adapter's newest first
  want="base $(saved_steps | grep -v '^0$' | sed 's/^/step /' | tr '\n' ' ')"
  got=$(labels)
  case "$want" in
    "$got"*) case "$got" in "base step 4 "*) ok "$1x$2: preview labels base beside the newest, older under it ($got)" ;;
                            *) bad "$1x$2: preview labels '$got' (want base, step 4, ...)" ;; esac ;;
    *) bad "$1x$2: preview labels '$got', saved '$want'" ;;
  esac
  keys r; wait_for 'Runs in' 30 || bad "$1x$2: runs view opens"
  # the current run (newest) right under the list: its box starts after the last row
  n_runs=$(ls -d "$tmp"/runs/*/ | wc -l); box_row=$(screen | grep -n '┌' | head -1 | cut -d: -f1)
  half=$((($2 - 3) / 2)); list=$((n_runs + 1)); [ "$list" -gt "$half" ] && list=$half
  if screen | grep -q 'step 4' && screen | grep -Eq '\bbase\b' && [ "$box_row" = $((list + 2)) ]; then
    ok "$1x$2: runs view: base and step 4 labelled, right under the list (row $box_row)"
  else bad "$1x$2: runs view labels / box at row $box_row (want $((list + 2)))"; fi
  keys r; wait_for 'Preview' 30; keys q
  i=0; while [ ! -f "$tmp/exit" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
}
history_check 80 24
history_check 120 40

# ------------------------------- the first ETA leaves the base grid's sampling out
# sampling (200 sampler steps, before the first training step) costs seconds,
# the 200 training steps about as much: an ETA that counted the sampling as
# training would be several times the steps' real remaining time
sed -e 's/^iterations = .*/iterations = 200/' -e 's/^sample_every = .*/sample_every = 200/' \
    -e 's/^sample_steps = .*/sample_steps = 200/' "$tmp/fast.ini" > "$tmp/eta.ini"
start 100 30 --preset "$tmp/eta.ini" --graphics none
wait_for 'trainable [0-9,]+ of' 100 || bad "ETA run opens"
keys t
i=0; first=
while [ $i -lt 600 ]; do
  scr=$(screen)
  if printf '%s\n' "$scr" | grep -Eq 'training +step [1-9]' && printf '%s\n' "$scr" | grep -q 'ETA [0-9]'; then first=$scr; break; fi
  sleep 0.05; i=$((i + 1))
done
t_first=$(date +%s.%N)
eta=$(printf '%s\n' "$first" | sed -n 's/.*ETA \([0-9]*\)m\([0-9]*\)s.*/\1 \2/p' | head -1 | awk '{ print $1 * 60 + $2 }')
at=$(printf '%s\n' "$first" | sed -n 's/.*step \([0-9]*\)\/.*/\1/p' | head -1)
its=$(printf '%s\n' "$first" | sed -n 's/.*[^0-9.]\([0-9.]*\) it\/s.*/\1/p' | head -1)
wait_for 'step 200/200' 600 || bad "ETA run reaches its last step"
real=$(awk -v a="$t_first" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
if [ -n "$eta" ] && awk -v e="$eta" -v r="$real" 'BEGIN { exit !(e <= 2 * r + 3) }'; then
  ok "first ETA ${eta}s at step $at ($its it/s) for the ${real}s the steps took"
else bad "first ETA '${eta}'s at step $at ($its it/s) but the remaining steps took ${real}s"; fi
keys q; wait_for 'stop it and quit' 30; keys y   # no need to wait for the last sampling
i=0; while [ ! -f "$tmp/exit" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
# no colour (a terminal without it): the title bar in reverse video
T kill-server 2>/dev/null; rm -f "$tmp/exit"
n_srv=$((n_srv + 1)); sock="krona-tui-$$-$n_srv"
T new-session -d -s s -x 80 -y 24 "TERM=xterm-mono $bin --preset $tmp/fast.ini --graphics none; echo exit=\$? > $tmp/exit; sleep 60"
wait_for 'trainable [0-9,]+ of' 100 || bad "xterm-mono: studio opens"
T capture-pane -e -p -t s | head -1 | cut -d' ' -f1 | grep -Eq '\[([0-9]+;)*7m' &&
  ok "without colour: the title bar in reverse video" || bad "without colour: title bar not reverse"
keys q

# ------------------------------------------- sixel stream vs the saved PNG
# (120x40: older grids join the newest only while it keeps two thirds of its size)
T kill-server 2>/dev/null; rm -f "$tmp/exit"
n_srv=$((n_srv + 1)); sock="krona-tui-$$-$n_srv"
T new-session -d -s s -x 120 -y 40 "KRONA_STUDIO_SIXEL_DUMP=$tmp/dump.six TERM=xterm-256color $bin --preset $tmp/six.ini --graphics sixel; echo exit=\$? > $tmp/exit; sleep 60"
wait_for 'trainable' 100
keys t
wait_for 'done +step 4/4' 300 || bad "sixel run finished"
wait_for 'Preview step 4' 50 || bad "sixel preview of the last step"
sleep 0.5
# the dump's .src: the newest grid's PNG, "region x y w h k", "grids n", the base grid's PNG, "base x y w h k"
if [ -f "$tmp/dump.six" ] && KRONA_SIXEL_STREAM="$tmp/dump.six" KRONA_SIXEL_PNG="$(sed -n 1p "$tmp/dump.six.src")" \
     KRONA_SIXEL_REGION="$(sed -n 's/^region //p' "$tmp/dump.six.src")" \
     KRONA_SIXEL_BASE_PNG="$(sed -n 4p "$tmp/dump.six.src")" KRONA_SIXEL_BASE_REGION="$(sed -n 's/^base //p' "$tmp/dump.six.src")" \
     ./build/tests/test_tui_sixel >"$tmp/six.log" 2>&1 && grep -q 'studio stream, newest' "$tmp/six.log" &&
   grep -q 'studio stream, base' "$tmp/six.log" && sed -n 4p "$tmp/dump.six.src" | grep -q 'step_000000.png$'; then
  ok "sixel stream: newest and base grids decode to their saved PNGs ($(grep 'studio stream' "$tmp/six.log" | cut -d: -f2 | tr '\n' ';'))"
else bad "sixel stream"; cat "$tmp/six.log" 2>/dev/null; fi
n=$(saved_steps | wc -l)
[ "$n" -ge 3 ] && grep -q "^grids $n\$" "$tmp/dump.six.src" 2>/dev/null && ok "sixel preview holds the $n grids (base and steps) in one image" ||
  bad "sixel grids: $(grep grids "$tmp/dump.six.src" 2>/dev/null), $n samples saved"
keys q

echo "== tests/tui: $pass passed, $fail failed =="
[ "$fail" -eq 0 ]

#!/bin/bash
# tests/gpu/run.sh — the whole GPU check in one call, for a machine with an
# NVIDIA GPU (sm_90 build; CUDA 13): compare every CUDA op with the CPU backend,
# compare whole pretraining steps on both backends, time training steps (tiny,
# SD 1.5 at 512², SDXL at 1024²), time the default preset end to end, and, if
# every op passed and PRETRAIN_UNTIL is set, continue pretraining the tiny model
# on the GPU until that many seconds into the script.
#
# Binaries: built here with `make cuda`, unless tools/gpu-carry.sh prepared
# .gpu-carry/ (stripped binaries, their non-system libraries and the dataset,
# for a device machine without the Debian -dev packages).
# Logs and results go to $OUT (default build/gpu-out). Exit 0 when all passed.
# Environment: SKIP_BENCH=1 skips stage 3; BENCH_ONLY=1 runs only stage 3 (a
# second call when the first ran out of time); BENCH_PRECISIONS (tf32,bf16) the
# bench's precisions; SKIP_CHECKS=1 skips stages 1-4 (only
# for a lease's last minutes, after a passing run); PRETRAIN_UNTIL=SECONDS,
# PRETRAIN_BATCH (128), PRETRAIN_LR (6e-4), PRETRAIN_EMA (0.999), PRETRAIN_SEED,
# PRETRAIN_PRINT set the pretraining phase. gpu/NOTES.md records each run.
# EMU=1: a dry run of this script's own logic with no GPU, on the emulated
# plugin (tests/gpu/emu): stages 1-2c at small sizes (--small, pretraining
# batch 2), no bench, no stage 4; a few minutes on 2 cores.
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-build/gpu-out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: >"$LOG"
TMPD=$(mktemp -d) # the stages' scratch runs and tables (what is kept goes to $OUT)
trap 'rm -rf "$TMPD"' EXIT
status=0
stage() { echo; echo "=== $* (t=${SECONDS}s, $(date +%T))"; } 2>&1
say() { "$@" 2>&1 | tee -a "$LOG"; return "${PIPESTATUS[0]}"; }

OPS_ARGS="" E2E_BATCH=16
if [ -n "${EMU:-}" ]; then
  stage "build: make all and the emulated plugin (EMU=1: no GPU)" | tee -a "$LOG"
  say timeout 600 make -j"$(nproc)" --no-print-directory all build/cuda/emu/krona-backend-cuda.so \
    build/cuda/emu/test_cuda_ops || { echo "run.sh: make failed"; exit 1; }
  KS=./krona-studio OPS=build/cuda/emu/test_cuda_ops BENCH=false
  export KRONA_BACKEND_PATH="$PWD/build/cuda/emu"
  OPS_ARGS=--small E2E_BATCH=2 SKIP_BENCH=1
elif [ -d .gpu-carry/bin ]; then
  BIN=.gpu-carry/bin
  export LD_LIBRARY_PATH="$PWD/.gpu-carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  [ -f .gpu-carry/lib/libopenblas.so.0.gz ] && gunzip -f .gpu-carry/lib/libopenblas.so.0.gz
  if ldd "$BIN/krona-backend-cuda.so" | grep -q "libcublas.*not found"; then
    # no toolkit at /usr/local/cuda: PyTorch's wheels carry the same libraries
    for d in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, s, "lib") for p in nvidia.__path__ for s in ("cublas", "cuda_runtime")))' 2>/dev/null); do
      LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
    done
  fi
  mkdir -p data
  [ -f data/emoji32.bin ] || gunzip -c .gpu-carry/emoji32.bin.gz >data/emoji32.bin
  KS=$BIN/krona-studio OPS=$BIN/test_cuda_ops BENCH=$BIN/bench_train
  export KRONA_BACKEND_PATH="$PWD/$BIN" # the plugin krona-backend-cuda.so travels beside them
else
  stage "build: make all cuda" | tee -a "$LOG"
  say timeout 300 make -j"$(nproc)" --no-print-directory all cuda || { echo "run.sh: make cuda failed"; exit 1; }
  KS=./krona-studio OPS=build/cuda/tests/test_cuda_ops BENCH=build/cuda/bench/bench_train
  export KRONA_BACKEND_PATH="$PWD"
fi
ldd "$OPS" "$KRONA_BACKEND_PATH/krona-backend-cuda.so" | grep 'not found' && { echo "run.sh: missing libraries"; exit 1; }
# cuDNN 9 (KRONA_CUDA_CONV=cudnn: the plugin opens it at run time): the toolkit's,
# else the one PyTorch's wheels carry
if ! ldconfig -p | grep -q 'libcudnn.so.9' && [ ! -f /usr/local/cuda/lib64/libcudnn.so.9 ]; then
  d=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))' 2>/dev/null)
  [ -n "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
fi

stage "device" | tee -a "$LOG"
if [ -n "${EMU:-}" ]; then say echo "none: the CUDA backend emulated on the CPU (tests/gpu/emu)"
else say nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader; fi

ops_rc=0 e2e_rc=0
if [ -z "${SKIP_CHECKS:-}" ]; then # only to spend a lease's last minutes on pretraining
 if [ -z "${BENCH_ONLY:-}" ]; then
  stage "1. ops: CUDA vs CPU backend" | tee -a "$LOG"
  OMP_NUM_THREADS=$(nproc) say timeout 300 "$OPS" $OPS_ARGS # fp32, tf32 and bf16 rows
  ops_rc=$?
  if [ $ops_rc -ne 0 ]; then
    echo "run.sh: op comparison failed (exit $ops_rc)" | tee -a "$LOG"; status=1
    # bf16's address-stable blocks and compact weights (driver VMM) are the newest path: without them
    stage "1b. ops again with KRONA_CUDA_VMM=0 (plain blocks): failures only" | tee -a "$LOG"
    KRONA_CUDA_VMM=0 OMP_NUM_THREADS=$(nproc) timeout 300 "$OPS" $OPS_ARGS 2>&1 | grep -E 'FAIL|ERROR|PASS|compact' | tee -a "$LOG"
  fi

  # convolutions by cuDNN instead of im2col + GEMM (the blocks of shard 0 again too:
  # recordings, compact weights, the profile's stages)
  stage "1c. convolutions by cuDNN (KRONA_CUDA_CONV=cudnn): conv2d ops, CUDA vs CPU" | tee -a "$LOG"
  KRONA_CUDA_CONV=cudnn OMP_NUM_THREADS=$(nproc) timeout 200 "$OPS" $OPS_ARGS --only conv2d 2>&1 |
    grep -E 'FAIL|ERROR|PASS|^device|^convolutions' | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "run.sh: cuDNN convolutions failed" | tee -a "$LOG"; status=1; }

  # precision: the CPU in fp32 against CUDA's default (tf32), then both in bf16
  for prec in auto bf16; do
    stage "2. whole pretraining steps, CPU vs CUDA, precision $prec (same seed, same batches)" | tee -a "$LOG"
    for dev in cpu cuda; do
      timeout 120 "$KS" pretrain --device $dev --precision $prec --init-from models/tiny --out "$TMPD/e2e-$dev" \
        --steps 4 --batch $E2E_BATCH --lr 1e-4 --seed 7 --print-every 1 --sample-every 0 --checkpoint-every 0 \
        >"$TMPD/e2e-$dev.txt" 2>&1
      echo "$dev $prec: exit $?" | tee -a "$LOG"
    done
    # loss and gradient norm of each step (the 4th step's loss already sees 3 updates)
    paste <(awk '$1 == "step" && $2 ~ /\// {print $2, $4, $10}' $TMPD/e2e-cpu.txt) \
          <(awk '$1 == "step" && $2 ~ /\// {print $4, $10}' $TMPD/e2e-cuda.txt) |
      awk -v prec=$prec 'function rel(a, b) {d = a - b; if (d < 0) d = -d; return d / (b > 1e-9 ? b : 1e-9)}
           {r = rel($4, $2); g = rel($5, $3); ok = r < 5e-3 && g < 1e-2 && NF == 5;
            printf "step %-6s loss cpu %s cuda %s (rel %.1e)  |g| cpu %s cuda %s (rel %.1e)  %s\n",
                   $1, $2, $4, r, $3, $5, g, ok ? "ok" : "FAIL"; bad += !ok; n++}
           END {if (n < 4 || bad) {print "e2e " prec ": FAIL"; exit 1} print "e2e " prec ": PASS"}' | tee -a "$LOG"
    rc=${PIPESTATUS[1]}
    [ "$rc" -ne 0 ] && { status=1; e2e_rc=$rc; tail -3 $TMPD/e2e-cuda.txt | tee -a "$LOG"; }
  done

  # a training run's steps on both backends: the UNet pass recorded as a CUDA
  # graph and replayed in steps 2 and 3, every block address-stable (bf16)
  stage "2b. default preset, 3 steps at 16 px, CPU vs CUDA adapters (bf16, replayed)" | tee -a "$LOG"
  KS=$KS BACKEND_DIR=$KRONA_BACKEND_PATH OUT=$TMPD/train-e2e say timeout 200 sh tests/gpu/emu/train-e2e.sh ||
    { status=1; e2e_rc=1; }
  # two recorded passes a step (instance and prior) and the text encoder's adapters
  KS=$KS BACKEND_DIR=$KRONA_BACKEND_PATH OUT=$TMPD/train-e2e-prior \
    EXTRA="--set text_encoder_adapters=1 --set n_class_images=1 --set prior_weight=1" \
    say timeout 200 sh tests/gpu/emu/train-e2e.sh || { status=1; e2e_rc=1; }
  # the same with cuDNN's convolutions inside the recording
  KRONA_CUDA_CONV=cudnn KS=$KS BACKEND_DIR=$KRONA_BACKEND_PATH OUT=$TMPD/train-e2e-cudnn \
    say timeout 200 sh tests/gpu/emu/train-e2e.sh || status=1
  # the sampler's UNet pass recorded at step 2 and replayed: the image the ops give
  stage "2c. sample, 3 steps at 16 px, CPU vs CUDA (fp32, replayed)" | tee -a "$LOG"
  KS=$KS BACKEND_DIR=$KRONA_BACKEND_PATH OUT=$TMPD/sample-e2e say timeout 100 sh tests/gpu/emu/sample-e2e.sh ||
    status=1
 fi

  if [ -z "${SKIP_BENCH:-}" ]; then
    stage "3. bench: training step, batch 1 (tiny also 32); each row's profile (ops by device time)" | tee -a "$LOG"
    P=${BENCH_PRECISIONS:-tf32,bf16}
    say timeout 150 "$BENCH" $TMPD/bench-tiny.txt --device cuda --model tiny --batch 1,32 --precision "$P" --profile ||
      status=1
    # pretraining's scale (the >= 5,000 samples/s target): the `all weights (pretrain)` row
    say timeout 150 "$BENCH" $TMPD/bench-tiny-b128.txt --device cuda --model tiny --batch 128 --precision bf16 \
      --profile || status=1
    say timeout 150 "$BENCH" $TMPD/bench-sd15.txt --device cuda --model sd15 --precision "$P" --profile || status=1
    say timeout 200 "$BENCH" $TMPD/bench-sdxl.txt --device cuda --model sdxl --precision "$P" --profile || status=1
    # bf16's attention: the fused kernels against the row tiles, same step otherwise
    KRONA_CUDA_FLASH=0 say timeout 100 "$BENCH" $TMPD/bench-sd15-tiles.txt --device cuda --model sd15 \
      --precision bf16 || status=1
    sed -i '1s/$/ (KRONA_CUDA_FLASH=0: attention in row tiles)/' $TMPD/bench-sd15-tiles.txt
    # convolutions: cuDNN's against im2col + GEMM (the rows above), with profiles
    KRONA_CUDA_CONV=cudnn say timeout 150 "$BENCH" $TMPD/bench-sd15-cudnn.txt --device cuda --model sd15 \
      --precision "$P" --profile || status=1
    sed -i '1s/$/ (KRONA_CUDA_CONV=cudnn: cuDNN convolutions)/' $TMPD/bench-sd15-cudnn.txt
    # the adapters: fused Kronecker kernels against cuBLAS GEMMs
    KRONA_CUDA_FUSED_KRON=0 say timeout 100 "$BENCH" $TMPD/bench-sd15-gemm.txt --device cuda --model sd15 \
      --precision tf32 || status=1
    sed -i '1s/$/ (KRONA_CUDA_FUSED_KRON=0: Kronecker products as cuBLAS GEMMs)/' $TMPD/bench-sd15-gemm.txt
    # the step replayed as one CUDA graph against op by op (the tiny step is launch-bound)
    KRONA_CUDA_GRAPHS=0 say timeout 100 "$BENCH" $TMPD/bench-tiny-nograph.txt --device cuda --model tiny \
      --precision bf16 || status=1
    sed -i '1s/$/ (KRONA_CUDA_GRAPHS=0: op by op)/' $TMPD/bench-tiny-nograph.txt
    cat $TMPD/bench-tiny.txt $TMPD/bench-tiny-b128.txt $TMPD/bench-tiny-nograph.txt $TMPD/bench-sd15.txt $TMPD/bench-sdxl.txt $TMPD/bench-sd15-tiles.txt \
      $TMPD/bench-sd15-gemm.txt $TMPD/bench-sd15-cudnn.txt >"$OUT/bench-cuda.txt" 2>/dev/null
  fi

  if [ -z "${BENCH_ONLY:-}" ] && [ -z "${EMU:-}" ]; then
    stage "4. default preset on the GPU, timed, then scored" | tee -a "$LOG"
    t0=$SECONDS
    say timeout 120 "$KS" train --preset presets/default.ini --headless --device cuda --print-every 100 \
      --set output_dir=$TMPD/runs --set run_name=default || status=1
    echo "default preset: $((SECONDS - t0)) s wall" | tee -a "$LOG"
    say timeout 90 "$KS" score --run $TMPD/runs/default --device cuda --colours 9 --per-colour 4 || status=1
  fi
fi

if [ -n "${PRETRAIN_UNTIL:-}" ] && [ $ops_rc -eq 0 ] && [ "$e2e_rc" -eq 0 ]; then
  stage "5. pretraining phase on the GPU until t=${PRETRAIN_UNTIL}s" | tee -a "$LOG"
  B=${PRETRAIN_BATCH:-128}
  timeout 60 "$KS" pretrain --device cuda --init-from models/tiny --out $TMPD/probe --steps 40 --batch $B \
    --time-limit 0.5 --print-every 20 --sample-every 0 --checkpoint-every 0 2>&1 | tee -a "$LOG" | tail -1
  sps=$(grep 'samples/s' "$LOG" | tail -1 | awk '{for (i = 1; i < NF; i++) if ($(i + 1) == "samples/s") v = $i} END {print v + 0}')
  left=$((PRETRAIN_UNTIL - SECONDS - 45)) # 45 s for sampling and writing
  steps=$(awk -v s="$sps" -v l="$left" -v b="$B" 'BEGIN {n = int(s * l / b * 0.95); print (n > 0 ? n : 0)}')
  echo "probe: $sps samples/s at batch $B; $left s left -> $steps steps" | tee -a "$LOG"
  if [ "$steps" -ge 100 ]; then
    mkdir -p "$OUT/pt"
    timeout $((left + 40)) "$KS" pretrain --device cuda --init-from models/tiny --out $TMPD/pt --steps "$steps" \
      --batch $B --lr ${PRETRAIN_LR:-6e-4} --warmup 100 --ema ${PRETRAIN_EMA:-0.999} --seed ${PRETRAIN_SEED:-2028} \
      --print-every ${PRETRAIN_PRINT:-50} --sample-every 0 --checkpoint-every 0 --time-limit "$(awk -v l="$left" 'BEGIN {print l / 60}')" \
      >"$OUT/pt/pretrain.txt" 2>&1
    echo "pretrain: exit $?" | tee -a "$LOG"
    tail -4 "$OUT/pt/pretrain.txt" | tee -a "$LOG"
    cp $TMPD/pt/unet.safetensors $TMPD/pt/text_encoder.safetensors $TMPD/pt/pretrain_log.csv "$OUT/pt/"
    if [ -f $TMPD/pt/unet.safetensors ]; then
      stage "6. acceptance checks of the new weights (tools/check-tiny-model.sh)" | tee -a "$LOG"
      cp $TMPD/pt/unet.safetensors $TMPD/pt/text_encoder.safetensors models/tiny/
      BIN=$KS OUT=runs/checks say timeout 120 sh tools/check-tiny-model.sh
      tar czf "$OUT/checks.tar.gz" runs/checks docs/tiny-model-checks.md docs/tiny-base-samples.png
    fi
  fi
fi

stage "summary" | tee -a "$LOG"
grep -E '^(PASS|FAIL):|^e2e |^adapters, cuda|^default preset:|^(no adapter|KronA|LoRA)|^krona-studio bench|^probe:|^pretrain:' "$LOG"
echo "run.sh: $([ $status -eq 0 ] && echo PASS || echo FAIL) at t=${SECONDS}s"
exit $status

#!/bin/sh
# tests/gpu/emu/ops-shards.sh DIR [JOBS] — `make cuda-emu`: test_cuda_ops --small on the
# emulated plugin in DIR, as JOBS processes in parallel (default: the CPU count), each
# taking every JOBS-th case (--shard). Prints the shards' rows in order and one total;
# fails when any shard fails or ends without its summary (a crash). ONLY=SUBSTRING
# runs only the cases named so (shard 0's blocks run all the same); ARGS, more
# test_cuda_ops options (e.g. --prec fp32,bf16).
dir=$1
jobs=${2:-$(nproc 2>/dev/null || echo 1)}
k=0
while [ "$k" -lt "$jobs" ]; do
  (OMP_NUM_THREADS=1 KRONA_BACKEND_PATH=$dir "$dir/test_cuda_ops" --small ${ONLY:+--only "$ONLY"} --shard "$k/$jobs" $ARGS \
     >"$dir/shard-$k.log" 2>&1; echo $? >"$dir/shard-$k.rc") &
  k=$((k + 1))
done
wait
bad=0 comparisons=0 failures=0
k=0
while [ "$k" -lt "$jobs" ]; do
  cat "$dir/shard-$k.log"
  rc=$(cat "$dir/shard-$k.rc")
  line=$(grep -E '^(PASS|FAIL): [0-9]+ comparisons' "$dir/shard-$k.log")
  if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
    echo "shard $k/$jobs: exit $rc${line:+ ($line)}${line:-, no summary (crashed?)}"
    bad=1
  fi
  comparisons=$((comparisons + $(echo "$line" | awk '{print $2 + 0}')))
  failures=$((failures + $(echo "$line" | awk '{print $4 + 0}')))
  k=$((k + 1))
done
[ "$bad" -eq 0 ] && [ "$failures" -eq 0 ] && r=PASS || r=FAIL
echo "$r: $comparisons comparisons, $failures failures ($jobs shards)"
[ "$r" = PASS ]

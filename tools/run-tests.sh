#!/bin/sh
# Run each test binary from the repository root; print a summary; fail if any failed.
dir=$1; shift
fail=0; n=0
for t in "$@"; do
  n=$((n+1))
  if ! "$t"; then echo "FAILED: $t"; fail=$((fail+1)); fi
done
echo "== $dir: $((n-fail))/$n test programs passed =="
[ "$fail" -eq 0 ]

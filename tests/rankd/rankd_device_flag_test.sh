#!/bin/sh
# came-rankd --device on this machine: without a GPU (or without CUDA in the build) it exits 2
# with one line naming why, before it contacts anything; with a GPU, device 0 passes the check
# (the run then stops at the missing --token) and an ordinal past the last device exits 2.
set -u
rankd=$1
out=$(mktemp)
trap 'rm -f "$out"' EXIT

"$rankd" --device 0 >"$out" 2>&1
rc=$?
if grep -q "this build has no CUDA support" "$out"; then
  [ "$rc" -eq 2 ] || { echo "FAIL: no-CUDA build exited $rc, not 2"; cat "$out"; exit 1; }
  echo "PASS: a build without CUDA refuses --device with exit 2"
  exit 0
fi
if [ -n "$(ls -A /proc/driver/nvidia/gpus 2>/dev/null)" ]; then
  grep -q -- "--token or --token-file is required" "$out" ||
    { echo "FAIL: --device 0 on a GPU machine did not pass the device check"; cat "$out"; exit 1; }
  "$rankd" --device 4096 >"$out" 2>&1
  rc=$?
  [ "$rc" -eq 2 ] && grep -q "CUDA device 4096 does not exist" "$out" ||
    { echo "FAIL: --device 4096 exited $rc"; cat "$out"; exit 1; }
  echo "PASS: GPU machine: device 0 accepted, device 4096 refused with exit 2"
  exit 0
fi
[ "$rc" -eq 2 ] || { echo "FAIL: --device 0 without a GPU exited $rc, not 2"; cat "$out"; exit 1; }
[ "$(wc -l <"$out")" -eq 1 ] || { echo "FAIL: expected one line"; cat "$out"; exit 1; }
grep -q -- "came-rankd: --device 0: no CUDA device is present" "$out" ||
  { echo "FAIL: the line does not name the missing device"; cat "$out"; exit 1; }
"$rankd" --device=-2 >"$out" 2>&1
rc=$?
[ "$rc" -eq 2 ] || { echo "FAIL: --device=-2 exited $rc, not 2"; cat "$out"; exit 1; }
echo "PASS: no GPU: --device 0 exits 2 naming the missing device"

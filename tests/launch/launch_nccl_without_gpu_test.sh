#!/bin/sh
# came-launch --backend nccl on a machine without a visible GPU exits 2 with one line naming
# the reason, before it starts any process. Skips (exit 77) where a GPU is visible.
set -u
launch=$1
if [ -n "$(ls -A /proc/driver/nvidia/gpus 2>/dev/null)" ] && [ "${CUDA_VISIBLE_DEVICES-unset}" != "" ]; then
  echo "SKIP: a GPU is visible here"
  exit 77
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for args in "--backend nccl" "--backend nccl --nproc 1" "--gpus 0"; do
  # shellcheck disable=SC2086
  "$launch" $args -- true >"$out" 2>&1
  rc=$?
  [ "$rc" -eq 2 ] || { echo "FAIL: came-launch $args exited $rc, not 2"; cat "$out"; exit 1; }
  [ "$(wc -l <"$out")" -eq 1 ] || { echo "FAIL: came-launch $args: not one line"; cat "$out"; exit 1; }
  grep -q "needs a GPU, but none is visible" "$out" ||
    { echo "FAIL: came-launch $args does not name the reason"; cat "$out"; exit 1; }
done
echo "PASS: --backend nccl and --gpus without a GPU exit 2 naming the reason"

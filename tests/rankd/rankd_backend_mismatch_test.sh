#!/bin/bash
# came-rankd against a real coordinator of backend nccl without --device: it exits 1 with
# one line naming the fix (--device N), instead of building a communicator over host memory.
set -u
coordinator=$1
rankd=$2
tmp=$(mktemp -d)
coord_pid=
cleanup() {
  [ -n "$coord_pid" ] && kill "$coord_pid" 2>/dev/null && wait "$coord_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
echo "secret-token-for-the-test" >"$tmp/token"
"$coordinator" --listen 127.0.0.1:0 --world-size 1 --token-file "$tmp/token" --backend nccl \
  >"$tmp/coord.out" 2>"$tmp/coord.err" &
coord_pid=$!
address=
for _ in $(seq 100); do
  address=$(sed -n 's/^came-coordinator listening on //p' "$tmp/coord.out")
  [ -n "$address" ] && break
  sleep 0.1
done
[ -n "$address" ] || { echo "FAIL: the coordinator did not start"; cat "$tmp/coord.err"; exit 1; }
timeout 60 "$rankd" --coordinator "$address" --token-file "$tmp/token" --join-timeout-seconds 20 \
  >"$tmp/rankd.out" 2>"$tmp/rankd.err"
rc=$?
[ "$rc" -eq 1 ] || { echo "FAIL: came-rankd exited $rc, not 1"; cat "$tmp/rankd.err"; exit 1; }
grep -q "the job's backend is nccl, which needs the buffers on a GPU: start came-rankd with --device N" \
  "$tmp/rankd.err" || { echo "FAIL: the error does not name --device"; cat "$tmp/rankd.err"; exit 1; }
echo "PASS: a nccl job without --device is refused naming --device"

#!/usr/bin/env bash
# A rank daemon SIGKILLed mid-training cannot unlink its shared memory; came-launch stops the
# job and removes the job's segments (/dev/shm/came-<job id>-*) itself.
#   shm_cleanup_test.sh BIN_DIR
set -euo pipefail
bin="$1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$bin/came-launch" --nproc 2 -- "$bin/came-cpp-trainer" --steps 100000 > "$work/log" 2>&1 &
launch=$!
job=""
for _ in $(seq 1 100); do
  job=$(sed -n 's/.*joined job \([0-9a-f]*\) as rank 1 of 2.*/\1/p' "$work/log" | head -1)
  [ -n "$job" ] && ls /dev/shm/came-"$job"-r1-* > /dev/null 2>&1 && break
  sleep 0.1
done
if [ -z "$job" ] || ! ls /dev/shm/came-"$job"-r1-* > /dev/null 2>&1; then
  echo "rank 1 never attached"; cat "$work/log"; kill -INT $launch; exit 1
fi
port=$(sed -n 's/.*came-coordinator listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/log" | head -1)
pid=$(pgrep -f "came-rankd --coordinator 127.0.0.1:$port .*--rank 1 " | head -1)
[ -n "$pid" ] || { echo "cannot find rankd 1 of the job on port $port"; kill -INT $launch; exit 1; }
kill -9 "$pid"
status=0
wait $launch || status=$?
if [ "$status" = 0 ]; then echo "came-launch exited 0 after a rank daemon was killed"; exit 1; fi
grep -q "rankd 1 killed by signal 9" "$work/log" || { echo "no message naming rankd 1"; tail "$work/log"; exit 1; }
left=$(ls /dev/shm | grep -c "^came-$job-" || true)
if [ "$left" != 0 ]; then echo "$left shared-memory segments of job $job left behind"; ls /dev/shm; exit 1; fi
echo "job $job: rankd 1 killed, came-launch exited $status and left no shared memory behind"

#!/usr/bin/env bash
# deploy/slurm/came.sbatch runs a real 2-node job on this machine: stand-ins for Slurm's
# srun (one task per "node", each with its SLURM_NODEID, its status the first non-zero one)
# and scontrol (every node is 127.0.0.1) run the script's multi-node came-launch twice,
# node 0 also serving the coordinator; the C++ example trainer trains 2 ranks to the end.
# Then: the script's usage errors exit 2 naming the problem.
#   slurm_test.sh SBATCH_SCRIPT BIN_DIR
set -euo pipefail
script="$1"
bin="$(cd "$2" && pwd)"
if ! "$bin/came-launch" --help 2>&1 | grep -q -- "--nnodes"; then
  echo "SKIPPED: this came-launch has no multi-node flags (--nnodes), which came.sbatch runs"
  exit 77
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/fake" "$work/submit"

cat > "$work/fake/scontrol" <<'EOF'
#!/bin/bash
# scontrol show hostnames LIST: one line per node of the job.
[ "$1 $2" = "show hostnames" ] || { echo "fake scontrol: $*" >&2; exit 1; }
for _ in $(seq 1 "$SLURM_NNODES"); do echo 127.0.0.1; done
EOF
cat > "$work/fake/srun" <<'EOF'
#!/bin/bash
# srun [--flag=value...] COMMAND...: COMMAND once per node, with SLURM_NODEID set.
while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do shift; done
pids=()
for i in $(seq 0 $((SLURM_NNODES - 1))); do
  SLURM_NODEID=$i SLURM_PROCID=$i "$@" 2>&1 | sed "s/^/[node $i] /" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
EOF
chmod +x "$work/fake/scontrol" "$work/fake/srun"

port="$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export PATH="$work/fake:$PATH" SLURM_JOB_ID=4242 SLURM_NNODES=2 SLURM_JOB_NODELIST="n[0-1]" \
  SLURM_SUBMIT_DIR="$work/submit"
set +e
timeout 240 bash "$script" --bin-dir "$bin" --port "$port" -- "$bin/came-cpp-trainer" --steps 30 \
  > "$work/job.log" 2>&1
rc=$?
set -e
if [ "$rc" != 0 ]; then
  echo "FAIL: the 2-node job exited $rc"; tail -40 "$work/job.log"; exit 1
fi
grep -q "2 node(s) x 1 rank(s), coordinator 127.0.0.1:$port" "$work/job.log" \
  || { echo "FAIL: no job line"; cat "$work/job.log"; exit 1; }
for n in 0 1; do  # node n's rankd is rank n of 2
  grep -q "^\[node $n\] \[rankd $n\] came-rankd: joined job .* as rank $n of 2" "$work/job.log" \
    || { echo "FAIL: node $n's rankd did not join as rank $n of 2"; cat "$work/job.log"; exit 1; }
done
grep -q "^\[node 0\] \[coordinator\] came-coordinator listening on 127.0.0.1:$port" "$work/job.log" \
  || { echo "FAIL: node 0 did not serve the coordinator"; cat "$work/job.log"; exit 1; }
[ -z "$(ls -A "$work/submit")" ] || { echo "FAIL: the generated token was left behind"; exit 1; }
echo "the 2-node job through came.sbatch exited 0"

expect_usage() {  # expect_usage MESSAGE ARGS...: exit 2 and MESSAGE on stderr
  local msg="$1"; shift
  set +e
  out="$(bash "$script" "$@" 2>&1)"
  code=$?
  set -e
  [ "$code" = 2 ] && echo "$out" | grep -q -- "$msg" \
    || { echo "FAIL: '$*' gave $code: $out (want 2 and '$msg')"; exit 1; }
}
expect_usage "unknown option --bogus" --bogus 1 -- true
expect_usage "usage:" --bin-dir "$bin"
expect_usage "no came-launch in /nonexistent" --bin-dir /nonexistent -- true
(unset SLURM_JOB_ID; expect_usage "not inside a Slurm job" --bin-dir "$bin" -- true)
echo "slurm test passed"

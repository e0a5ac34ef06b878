#!/usr/bin/env bash
# Runs engine_bench with one process per rank over Gloo on 127.0.0.1 and prints rank 0's
# results: W=1 (the unsharded step) with 1 and 2 kernel threads, then W=2 with 1 thread per
# rank (the ranks share the machine's cores), float32 and bfloat16. Builds nothing.
#
#   bench/run_engine_bench.sh BUILD_DIR [--model=gpt2_small|small] [--iterations=N]
#
# If a rank fails, the other ranks are killed and the script exits non-zero; every rank's
# output is kept in a temporary folder that is named on failure. Store folders are removed.
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [--model=gpt2_small|small] [--iterations=N]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
build_dir=$1
shift
model=gpt2_small
iterations=4
for arg in "$@"; do
  case $arg in
    --model=*) model=${arg#--model=} ;;
    --iterations=*) iterations=${arg#--iterations=} ;;
    *) usage ;;
  esac
done
bin=$build_dir/bin/engine_bench
[[ -x $bin ]] || { echo "$0: $bin not found: build it with ninja -C $build_dir engine_bench" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/engine_bench.XXXXXX")
pids=()
keep_logs=0

cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
  rm -rf "$work"/store.*
  if [[ $keep_logs == 0 ]]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run WORLD THREADS DTYPE: starts WORLD ranks, waits for all; on the first failure kills the
# others. Prints rank 0's output.
run() {
  local world=$1 threads=$2 dtype=$3
  local tag=w${world}_t${threads}_${dtype}
  local store
  store=$(mktemp -d "$work/store.XXXXXX")
  echo "=== W=$world threads=$threads dtype=$dtype model=$model iterations=$iterations"
  local rank
  pids=()
  for ((rank = 0; rank < world; ++rank)); do
    "$bin" --rank="$rank" --world="$world" --store-dir="$store" --model="$model" \
      --dtype="$dtype" --threads="$threads" --iterations="$iterations" \
      --benchmark_counters_tabular=true >"$work/$tag.rank$rank.log" 2>&1 &
    pids+=($!)
  done
  local -A rank_of=()
  local pid
  for ((rank = 0; rank < world; ++rank)); do rank_of[${pids[rank]}]=$rank; done
  while ((${#pids[@]} > 0)); do
    local done_pid= status=0
    wait -n -p done_pid "${pids[@]}" || status=$?
    local left=()
    for pid in "${pids[@]}"; do [[ $pid == "$done_pid" ]] || left+=("$pid"); done
    pids=("${left[@]}")
    if ((status != 0)); then
      keep_logs=1
      echo "rank ${rank_of[$done_pid]:-?} failed (exit $status); stopping the others;" \
        "logs in $work:" >&2
      for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
      tail -n 20 "$work/$tag".rank*.log >&2
      exit 1
    fi
  done
  rm -rf "$store"
  cat "$work/$tag.rank0.log"
  echo
}

start=$SECONDS
date
run 1 1 float32
run 1 2 float32
run 2 1 float32
run 2 1 bfloat16
echo "total wall time: $((SECONDS - start)) s"

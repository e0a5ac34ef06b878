#!/usr/bin/env bash
# A real Prometheus server scrapes a running job: came-launch with --metrics-port, two ranks
# training the C++ example trainer; the test asks Prometheus' HTTP API for the coordinator's
# came_ranks_alive and every rank's came_steps_total and came_optimizer_state_bytes.
#   prometheus_scrape_test.sh BIN_DIR RULES_FILE
set -euo pipefail
bin="$1"
rules="$2"
work=$(mktemp -d)
launch_pid=""
prom_pid=""
cleanup() {
  [ -n "$prom_pid" ] && kill "$prom_pid" 2>/dev/null || true
  [ -n "$launch_pid" ] && kill -INT "$launch_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Free ports: P, P+1, P+2 for the job, Q for Prometheus.
read -r P Q < <(/usr/bin/python3 - <<'PY'
import socket
def free(n):
    for base in range(20000, 60000, 7):
        ss = []
        try:
            for k in range(n):
                s = socket.socket(); s.bind(("127.0.0.1", base + k)); ss.append(s)
            return base
        except OSError:
            pass
        finally:
            for s in ss: s.close()
P = free(3)
s = socket.socket(); s.bind(("127.0.0.1", 0)); Q = s.getsockname()[1]; s.close()
print(P, Q)
PY
)

"$bin/came-launch" --nproc 2 --metrics-port "$P" -- "$bin/came-cpp-trainer" --steps 100000 \
  > "$work/launch.log" 2>&1 &
launch_pid=$!

cp "$rules" "$work/came_rules.yml"
cat > "$work/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [came_rules.yml]
scrape_configs:
  - job_name: came-coordinator
    static_configs: [{targets: ["127.0.0.1:$P"]}]
  - job_name: came-rankd
    static_configs: [{targets: ["127.0.0.1:$((P + 1))", "127.0.0.1:$((P + 2))"]}]
YML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$Q" > "$work/prometheus.log" 2>&1 &
prom_pid=$!

query() {
  curl -s --max-time 2 "http://127.0.0.1:$Q/api/v1/query" --data-urlencode "query=$1" || true
}
ok=0
for _ in $(seq 1 60); do
  sleep 1
  steps=$(query 'count(came_steps_total > 0)')
  alive=$(query 'came_ranks_alive')
  state=$(query 'count(came_optimizer_state_bytes{kind="momentum"} > 0)')
  if echo "$steps" | grep -q '"value":\[[0-9.]*,"2"\]' &&
     echo "$alive" | grep -q '"value":\[[0-9.]*,"2"\]' &&
     echo "$state" | grep -q '"value":\[[0-9.]*,"2"\]'; then
    ok=1
    break
  fi
  kill -0 "$launch_pid" 2>/dev/null || break
done
if [ "$ok" != 1 ]; then
  echo "Prometheus did not see the job's metrics"
  echo "steps: $steps"; echo "alive: $alive"; echo "state: $state"
  tail -20 "$work/launch.log"; tail -5 "$work/prometheus.log"
  exit 1
fi
echo "Prometheus scraped: came_ranks_alive=2, came_steps_total > 0 and state bytes for both ranks"

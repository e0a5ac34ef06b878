#!/usr/bin/env bash
# The compose stack really comes up (label compose): builds the CPU images (Dockerfile.cpu's
# runtime and trainer targets, its build stage compiling the binaries) and the Prometheus
# image on local Debian base images (mmdebstrap; no registry is needed), brings
# docker-compose.yml's `cpu` profile up
# through podman's Docker-compatible socket, checks that the 2-rank training of the demo
# finishes with exit code 0 in both trainers while the compose network's Prometheus scrapes
# the coordinator and every rankd (and evaluates the alert rules without error), then takes
# the stack down and fails if any container, network or volume of it is left.
#   compose_test.sh SOURCE_DIR WORK_DIR [STEPS]
# Base images are tagged localhost/came-debian-<role>:<hash of their package list> and
# reused while the list is unchanged; the images it builds are localhost/came-*.
# Podman's settings for these machines (docs/operations.md, "Compose") go in WORK_DIR's
# containers.conf (CONTAINERS_CONF); nothing under /etc is changed.
set -euo pipefail
src="$(cd "$1" && pwd)"
work="$2"
steps="${3:-40}"
project="came-compose-test-$$"
start=$SECONDS
phase() { echo "compose_test [$((SECONDS - start)) s] $*"; }

mkdir -p "$work"
chmod 700 "$work"
rm -rf "${work:?}/run"
mkdir -p "$work/run"
run="$work/run"

# -- podman settings and its Docker-compatible socket ------------------------------------------
nofile="$(ulimit -Hn)"
[ "$nofile" = unlimited ] && nofile=1048576
cat > "$run/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$run/containers.conf"
export DOCKER_HOST="unix://$run/podman.sock"
export COMPOSE_PROJECT_NAME="$project"
compose() { docker-compose --project-directory "$src" -f "$src/docker-compose.yml" "$@"; }

service_pid=""
leftovers() {  # prints what of the project is still there
  podman ps -a --filter "label=com.docker.compose.project=$project" --format '{{.Names}}'
  podman network ls --format '{{.Name}}' | grep -x "${project}_came" || true
  podman volume ls --filter "label=com.docker.compose.project=$project" --format '{{.Name}}'
}
cleanup() {
  local rc=$?
  if [ -S "$run/podman.sock" ]; then
    compose --profile cpu down -v -t 2 >/dev/null 2>&1 || true
  fi
  podman ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
  podman network rm -f "${project}_came" >/dev/null 2>&1 || true
  podman volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
  if [ -n "$service_pid" ]; then kill "$service_pid" 2>/dev/null || true; wait "$service_pid" 2>/dev/null || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Bounded, in case this script is killed before its cleanup runs (ctest's timeout is 2700 s).
timeout 3000 podman system service --time=0 "$DOCKER_HOST" > "$run/podman-service.log" 2>&1 &
service_pid=$!
for _ in $(seq 1 100); do [ -S "$run/podman.sock" ] && break; sleep 0.1; done
[ -S "$run/podman.sock" ] || { echo "podman system service did not start"; cat "$run/podman-service.log"; exit 1; }

# -- local base images and the project's images ----------------------------------------------
# base ROLE LIST...: a minimal Debian 12 image holding the packages of the lists.
base() {
  local role="$1"; shift
  local hash tag
  hash="$(cat "$@" | sha256sum | cut -c1-12)"
  tag="localhost/came-debian-$role:$hash"
  if ! podman image exists "$tag"; then
    local include
    include="$(sed -e 's/#.*//' "$@" | tr -s ' \n' ',' | sed -e 's/^,//' -e 's/,$//')"
    phase "mmdebstrap $tag" >&2
    mmdebstrap --quiet --variant=minbase --include="$include" bookworm - 2> "$run/mmdebstrap-$role.log" \
      | podman import --quiet - "$tag" > /dev/null
  fi
  echo "$tag"
}
# One snapshot of the sources for the bases and the builds (without what .dockerignore
# leaves out): the second build reuses the first's build stage whatever changes meanwhile.
context="$run/context"
mkdir -p "$context"
tar -C "$src" --exclude=./build --exclude='./build-*' --exclude=./out --exclude=./.git -cf - . \
  | tar -C "$context" -xf -
docker_dir="$context/deploy/docker"
build_base="$(base build "$docker_dir/packages-build.txt")"
runtime_base="$(base runtime "$docker_dir/packages-runtime.txt")"
trainer_base="$(base trainer "$docker_dir/packages-runtime.txt" "$docker_dir/packages-trainer.txt")"
prometheus_base="$(base prometheus "$docker_dir/packages-prometheus.txt")"

for target in runtime trainer; do
  phase "podman build localhost/came-$target:cpu (Dockerfile.cpu, target $target)"
  podman build -f "$docker_dir/Dockerfile.cpu" --target "$target" \
    --build-arg BUILD_BASE="$build_base" --build-arg RUNTIME_BASE="$runtime_base" \
    --build-arg TRAINER_BASE="$trainer_base" --build-arg JOBS="$(nproc)" \
    -t "localhost/came-$target:cpu" "$context" > "$run/build-$target.log" 2>&1 \
    || { echo "image build failed:"; tail -40 "$run/build-$target.log"; exit 1; }
done
phase "podman build localhost/came-prometheus:latest (Dockerfile.prometheus)"
podman build -f "$docker_dir/Dockerfile.prometheus" --build-arg BASE="$prometheus_base" \
  -t localhost/came-prometheus:latest "$context" > "$run/build-prometheus.log" 2>&1 \
  || { echo "image build failed:"; tail -20 "$run/build-prometheus.log"; exit 1; }
podman image prune -f > /dev/null  # the untagged build stages
for image in localhost/came-runtime:cpu localhost/came-trainer:cpu localhost/came-prometheus:latest; do
  phase "image $image: $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec)"
done

# -- the cpu profile ---------------------------------------------------------------------------
head -c 32 /dev/urandom | base64 > "$run/token"
chmod 644 "$run/token"  # read by the containers' user came; $work is 0700
prom_port="$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export CAME_TOKEN_FILE="$run/token" CAME_STEPS="$steps" CAME_SHM_SIZE=512m CAME_PROMETHEUS_PORT="$prom_port"

compose --profile gpu --profile dashboard config -q  # the GPU services validate too
phase "compose --profile cpu up"
compose --profile cpu up -d --no-build > "$run/up.log" 2>&1 || { cat "$run/up.log"; exit 1; }

query() {
  curl -s --max-time 2 "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1" || true
}
value_is() { grep -q "\"value\":\[[0-9.]*,\"$1\"\]"; }
trainers=(trainer0-cpu trainer1-cpu)
scraped=0
finished=0
for _ in $(seq 1 600); do
  sleep 1
  if [ "$scraped" = 0 ] &&
     query 'count(up{job="came-rankd"} == 1)' | value_is 2 &&
     query 'count(came_steps_total > 0)' | value_is 2 &&
     query 'came_ranks_alive' | value_is 2; then
    scraped=1
    phase "Prometheus scrapes the coordinator and both rankd (steps > 0 on both ranks)"
  fi
  running=0
  for t in "${trainers[@]}"; do
    id="$(compose ps -q "$t")"
    [ "$(podman inspect --format '{{.State.Running}}' "$id")" = true ] && running=1
  done
  if [ "$running" = 0 ]; then finished=1; break; fi
done
compose logs --no-color > "$run/compose.log" 2>&1 || true
fail() { echo "FAIL: $*"; tail -60 "$run/compose.log"; exit 1; }
[ "$finished" = 1 ] || fail "the trainers did not finish in 600 s"
for t in "${trainers[@]}"; do
  code="$(podman inspect --format '{{.State.ExitCode}}' "$(compose ps -q "$t")")"
  [ "$code" = 0 ] || fail "$t exited with $code"
done
grep -q "done: $steps steps" "$run/compose.log" || fail "trainer0 did not report $steps steps"
phase "both trainers exited 0 after $steps steps"
[ "$scraped" = 1 ] || fail "Prometheus never saw both ranks' came_steps_total and came_ranks_alive"
rules="$(curl -s --max-time 2 "http://127.0.0.1:$prom_port/api/v1/rules")"
echo "$rules" | grep -q '"health":"ok"' || fail "Prometheus did not evaluate the rules: $rules"
echo "$rules" | grep -q '"health":"err"' && fail "a rule failed to evaluate: $rules"

# -- down: nothing may be left -----------------------------------------------------------------
phase "compose down"
compose --profile cpu down -v -t 2 > "$run/down.log" 2>&1 || true
# Podman refuses to remove a rankd while its trainer (which joined its IPC namespace) still
# exists, and docker-compose 1.29 removes them in no particular order: a second down
# removes what the first could not.
if [ -n "$(leftovers)" ]; then compose --profile cpu down -v -t 2 >> "$run/down.log" 2>&1 || true; fi
left="$(leftovers)"
[ -z "$left" ] || { cat "$run/down.log"; echo "FAIL: left behind after down: $left"; exit 1; }
phase "down: no container, network or volume of $project is left"
echo "compose test passed in $((SECONDS - start)) s"

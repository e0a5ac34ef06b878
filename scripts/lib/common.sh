# Shared by scripts/demo and scripts/test: find the tools, configure and build into build/.
# Source it; it defines came_build.

CAME_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CAME_BUILD="${CAME_BUILD:-$CAME_ROOT/build}"

# nvcc lives under /usr/local/cuda on these machines; CMake finds it through CUDACXX when it
# is not on PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi

# Configures (once) and builds every target into $CAME_BUILD.
came_build() {
  "$CAME_ROOT/scripts/setup"
  if [ ! -f "$CAME_BUILD/build.ninja" ]; then
    cmake -S "$CAME_ROOT" -B "$CAME_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  echo "build: compiling into $CAME_BUILD (first build takes several minutes on 2 cores)"
  cmake --build "$CAME_BUILD" -j "$(nproc)" -- -k 0 | grep -v '^\[' || true
  # Fail if anything did not build (grep above hides the progress lines only).
  cmake --build "$CAME_BUILD" -j "$(nproc)" >/dev/null
}

#!/usr/bin/env bash
# Checks a C ABI shared library (libcame_capi*.so): it exports only came_* functions, and the
# CPU one needs no CUDA library at load time (ldd lists none, and it loads and answers with
# LD_LIBRARY_PATH empty).
#   capi_library_check.sh <library> cpu|cuda
set -euo pipefail
lib="$1"
kind="$2"
[ -f "$lib" ] || { echo "capi_library_check: $lib does not exist" >&2; exit 2; }

exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRW]$/ {print $3}')
bad=$(printf '%s\n' "$exported" | grep -v '^came_' || true)
if [ -n "$bad" ]; then
  echo "FAIL: $lib exports symbols other than came_*:" >&2
  printf '%s\n' "$bad" | head -20 >&2
  exit 1
fi
for f in came_abi_version came_build_info came_last_error came_cuda_device_count \
         came_optimizer_create came_optimizer_destroy came_optimizer_step \
         came_optimizer_last_result; do
  printf '%s\n' "$exported" | grep -qx "$f" || { echo "FAIL: $lib lacks $f" >&2; exit 1; }
done

if [ "$kind" = cpu ]; then
  if ldd "$lib" | grep -Ei 'cuda|cudart|nvidia|nccl'; then
    echo "FAIL: $lib needs a CUDA library at load time" >&2
    exit 1
  fi
  LD_LIBRARY_PATH= /usr/bin/python3 - "$lib" <<'PY'
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.came_build_info.restype = ctypes.c_char_p
info = lib.came_build_info().decode()
assert lib.came_abi_version() == 1, lib.came_abi_version()
assert "cuda=none" in info, info
print("loaded", sys.argv[1], "with LD_LIBRARY_PATH empty:", info)
PY
fi
echo "ok: $lib exports only came_* ($(printf '%s\n' "$exported" | wc -l) functions)"

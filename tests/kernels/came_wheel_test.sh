#!/usr/bin/env bash
# `pip install ./clients/python` into a fresh virtualenv (with the system site-packages, for
# Debian's torch), then came.CAME from outside the source tree: the wheel carries
# libcame_capi.so in came/lib/ and the came.v1 stubs. The CPU build only (CUDA is built when
# nvcc is found; the test turns it off to stay short).
#   came_wheel_test.sh <repo root>
set -euo pipefail
root="$(cd "$1" && pwd)"
work="$(mktemp -d /tmp/came-wheel-test.XXXXXX)"
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH

/usr/bin/python3 -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --config-settings=cmake.define.CAME_WITH_CUDA=OFF "$root/clients/python"

cd "$work"
"$work/venv/bin/python" - "$work/venv" <<'PY'
import os
import sys

import torch

from came import CAME
import came
from came import _lib

venv = os.path.realpath(sys.argv[1])
here = os.path.realpath(came.__file__)
assert here.startswith(venv), "came imported from %s, not the virtualenv" % here
lib = _lib.load()
assert os.path.realpath(lib.path) == os.path.join(os.path.dirname(here), "lib",
                                                  "libcame_capi.so"), lib.path
assert "cuda=none" in lib.build_info, lib.build_info

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
before = [p.detach().clone() for p in model.parameters()]
opt = CAME(model.parameters(), lr=1e-2)
for _ in range(3):
    opt.zero_grad()
    model(torch.randn(8, 6)).square().mean().backward()
    opt.step()
assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
assert sorted(opt.state_dict()["state"][0]) == ["exp_avg", "exp_avg_res_col", "exp_avg_res_row",
                                               "exp_avg_sq_col", "exp_avg_sq_row", "step"]
from came.v1 import rank_pb2  # the wheel carries the generated stubs
print("ok: came from %s (%s), 3 steps on the CPU; stubs %s" % (
    os.path.dirname(here), lib.build_info, os.path.dirname(rank_pb2.__file__)))
PY

"""came-runtime's Python package: CAME for PyTorch.

In process (one device; the fused CPU and CUDA kernels):

    from came import CAME
    opt = CAME(model.parameters(), lr=2e-4)      # a drop-in for came_pytorch.CAME

Data parallel through the service (optimizer state sharded across ranks, under came-launch):

    from came import ShardedCAME
    opt = ShardedCAME(model.named_parameters(), lr=1e-3)   # attaches to the local rankd
    for batch in data:
        model(batch).backward()                             # gradients land in shared memory
        opt.step()                                          # CAME runs in rankd
        opt.zero_grad()
    opt.close()

The rankd address and token come from the arguments or from CAME_RANKD_ADDRESS and
CAME_TOKEN (set by came-launch). The service client needs grpcio and the generated stubs
(came.v1); it is imported on first use, so `from came import CAME` needs neither.
"""

import importlib

_LAZY = {
    "CAME": ".optim",
    "CameError": ".errors",
    "InvalidArgumentError": ".errors",
    "LaunchEnv": ".launch_env",
    "Preempted": ".errors",
    "launch_env": ".launch_env",
    "RankClient": ".rank_client",
    "ShardedCAME": ".optimizer",
    "StepStats": ".optimizer",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module 'came' has no attribute %r" % name)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

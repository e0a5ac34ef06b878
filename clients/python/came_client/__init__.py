"""Python client of came-runtime: CAME with its optimizer state sharded across ranks.

    from came_client import ShardedCAME
    opt = ShardedCAME(model.named_parameters(), lr=1e-3)   # attaches to the local rankd
    for batch in data:
        loss = model(batch).backward()                      # gradients land in shared memory
        opt.step()                                          # CAME runs in rankd
        opt.zero_grad()
    opt.close()

The rankd address and token come from the arguments or from CAME_RANKD_ADDRESS and
CAME_TOKEN (set by came-launch). The generated stubs (came.v1) come from the build: see
clients/python/CMakeLists.txt.
"""

from .errors import CameError
from .launch_env import LaunchEnv, launch_env
from .optimizer import ShardedCAME, StepStats
from .rank_client import RankClient

__all__ = ["CameError", "LaunchEnv", "RankClient", "ShardedCAME", "StepStats", "launch_env"]

"""Where this trainer runs, as came-launch describes it.

came-launch starts every trainer with CAME_RANK, CAME_WORLD_SIZE, CAME_RANKD_ADDRESS
(host:port of the local came-rankd) and CAME_TOKEN; explicit arguments win over them.
"""

import dataclasses
import os
from typing import Optional


@dataclasses.dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    address: Optional[str]
    token: Optional[str]


def launch_env(rank=None, world_size=None, address=None, token=None, environ=None):
    """Returns the launch settings: each argument that is not None, else its variable."""
    env = os.environ if environ is None else environ

    def pick(value, name, convert=str):
        if value is not None:
            return value
        raw = env.get(name)
        if raw is None or raw == "":
            return None
        try:
            return convert(raw)
        except ValueError:
            raise ValueError("%s=%r is not a valid value" % (name, raw)) from None

    rank = pick(rank, "CAME_RANK", int)
    world_size = pick(world_size, "CAME_WORLD_SIZE", int)
    return LaunchEnv(rank=0 if rank is None else rank,
                     world_size=1 if world_size is None else world_size,
                     address=pick(address, "CAME_RANKD_ADDRESS"),
                     token=pick(token, "CAME_TOKEN"))

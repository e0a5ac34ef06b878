"""What the torch-interop trainer (interop_trainer.py, under came-launch) and its test
(test_torch_interop.py, in one process with came_pytorch.CAME) share: the model, every
rank's gradients, and the schedule, so the test can replay a sharded run exactly."""

import torch
from torch import nn

LR = 0.01
WEIGHT_DECAY = 0.01


def make_model():
    """Returns a model whose tensors cover every case of the shard plan at 2 and 3 ranks:
    factored matrices split across ranks, a 3-D tensor (batch dims), vectors and a scalar."""
    torch.manual_seed(7)
    model = nn.Module()
    model.big = nn.Parameter(torch.randn(24, 40) * 0.1)      # 960 elements: split at W=2, 3
    model.batched = nn.Parameter(torch.randn(2, 3, 4) * 0.1)
    model.bias = nn.Parameter(torch.randn(40) * 0.1)
    model.small = nn.Parameter(torch.randn(5, 7) * 0.1)
    model.scale = nn.Parameter(torch.tensor(0.5))
    return model


def param_groups(model):
    """Two groups: matrices with weight decay, the rest without."""
    named = list(model.named_parameters())
    return [{"params": [(n, p) for n, p in named if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [(n, p) for n, p in named if p.ndim < 2], "weight_decay": 0.0}]


def plain_groups(model):
    """param_groups without names (for came_pytorch.CAME)."""
    return [dict(g, params=[p for _, p in g["params"]]) for g in param_groups(model)]


def gradient(rank, step, p, index):
    """Returns rank `rank`'s gradient of parameter `index` at step `step` (deterministic)."""
    g = torch.Generator().manual_seed(1_000_003 * step + 1009 * rank + index)
    grad = torch.randn(p.shape, generator=g)
    if index == 0 and step % 3 == 0:
        grad[1].zero_()  # an all-zero row (eps must keep it finite)
    return grad


def mean_gradient(world_size, step, p, index):
    """The average over ranks that the sharded run's reduce-scatter computes."""
    total = sum(gradient(r, step, p, index) for r in range(world_size))
    return total / world_size


def ordered_params(model):
    """Parameters in param_groups order (torch's state_dict numbering)."""
    return [p for g in param_groups(model) for _, p in g["params"]]

"""The model, data and settings shared by gpu_ipc_trainer.py and test_gpu_ipc.py."""

import torch
from torch import nn

STEPS = 10
LR = 1e-2
WD = 0.01


def make_model(device):
    torch.manual_seed(1234)
    model = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 32))
    return model.to(device)


def loss(model, step, device):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 48, generator=g).to(device)
    y = torch.randn(16, 32, generator=g).to(device)
    return ((model(x) - y) ** 2).mean()

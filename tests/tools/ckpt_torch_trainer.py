"""Run by test_ckpt_torch.py under came-launch: loads an imported checkpoint into
came.ShardedCAME, takes steps FIRST..LAST with the test's gradients, and rank 0 saves the
parameters. argv: MANIFEST FIRST LAST OUT."""

import os
import sys

import torch

import came
from test_ckpt_torch import HYPER, gradient, make_model

manifest, first, last, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = make_model()
opt = came.ShardedCAME(model.named_parameters(), **HYPER)
opt.load_checkpoint(manifest)
assert opt.step_count == first - 1, opt.step_count
for step in range(first, last + 1):
    for i, p in enumerate(model.parameters()):
        p.grad = gradient(i, step, p.shape)
    opt.step()
if os.environ["CAME_RANK"] == "0":
    torch.save({n: p.detach().clone() for n, p in model.named_parameters()}, out)
opt.close()

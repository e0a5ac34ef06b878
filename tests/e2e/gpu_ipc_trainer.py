"""Trainer of test_gpu_ipc.py under came-launch --backend nccl: a model on CAME_DEVICE whose
parameters and gradients are views of came-rankd's CUDA IPC buffers, trained STEPS steps on
fixed data with came.ShardedCAME; writes the final parameters (on the CPU) to argv[1]."""

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_ipc_common as common  # noqa: E402

import came  # noqa: E402


def main():
    device = torch.device(os.environ["CAME_DEVICE"])
    torch.cuda.set_device(device)
    model = common.make_model(device)
    opt = came.ShardedCAME(model.named_parameters(), lr=common.LR, weight_decay=common.WD)
    with opt:
        for p in model.parameters():
            if not opt.params_buffer.contains(p.data) or not opt.grads_buffer.contains(p.grad):
                raise SystemExit("a parameter or its gradient is not a view of rankd's buffers")
        for step in range(1, common.STEPS + 1):
            opt.zero_grad()
            common.loss(model, step, device).backward()
            opt.step()
        torch.save({n: p.detach().cpu() for n, p in model.named_parameters()}, sys.argv[1])


if __name__ == "__main__":
    main()

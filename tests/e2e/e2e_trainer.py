"""The trainer of the end-to-end tests, run by came-launch on every rank.

--mode loss: trains a small MLP with per-rank data; writes first/last loss of rank 0.
--mode dump: trains the same MLP with the SAME data on every rank for --steps steps and dumps,
per rank, the initial parameters (after SyncParameters), the gradient handed to each step and
the final parameters as raw little-endian float32, plus a manifest, so the test can replay the
gradients through an in-process single-rank engine and compare.
"""
import argparse
import json
import os
import sys

import torch

import came


def model_and_data(seed, n=64):
    torch.manual_seed(1234)  # the same initial model everywhere (rank 0's wins anyway)
    model = torch.nn.Sequential(
        torch.nn.Linear(12, 24), torch.nn.LayerNorm(24), torch.nn.Tanh(), torch.nn.Linear(24, 3))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    w = torch.randn(12, 3, generator=g)
    y = torch.tanh(x @ w)
    return model, x, y


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["loss", "dump", "mismatch", "ckpt-save", "ckpt-resume"],
                   required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ["CAME_RANK"])
    same = a.mode in ("dump", "ckpt-save", "ckpt-resume")
    model, x, y = model_and_data(seed=7 if same else 7 + rank)
    if a.mode == "mismatch" and rank == 1:
        model[3] = torch.nn.Linear(24, 4)  # a different manifest on rank 1
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() == 2)]
    names = {id(p): n for n, p in model.named_parameters()}
    opt = came.ShardedCAME(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr)
    os.makedirs(a.out, exist_ok=True)
    params = [p for g in opt.param_groups for p in g["params"]]

    def dump(tag):
        with open(os.path.join(a.out, f"rank{rank}_{tag}.bin"), "wb") as f:
            for t in tag_tensors(tag):
                f.write(t.detach().contiguous().to(torch.float32).numpy().tobytes())

    def tag_tensors(tag):
        if tag.startswith("grad"):
            return [p.grad for p in params]
        return [p for p in params]

    if same:
        dump("init")
        manifest = {"tensors": [{"name": names[id(p)], "shape": list(p.shape),
                                 "group": gi} for gi, g in enumerate(opt.param_groups)
                                for p in g["params"]],
                    "lr": a.lr, "weight_decay": [0.01, 0.0], "steps": a.steps}
        with open(os.path.join(a.out, "manifest.json"), "w") as f:
            json.dump(manifest, f)
    losses = []
    first = 1
    if a.mode == "ckpt-resume":
        loaded = opt.load_checkpoint()  # the job's latest committed checkpoint
        first = loaded.step + 1
    for step in range(first, a.steps + 1):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if same:
            dump(f"grad{step}")
        opt.step()
        losses.append(loss.item())
        if a.mode == "ckpt-save" and step == a.steps // 2:
            opt.save_checkpoint()
    if same:
        dump("final" if a.mode != "ckpt-resume" else "resumed")
    if rank == 0:
        with open(os.path.join(a.out, "losses.json"), "w") as f:
            json.dump(losses, f)
        print(f"loss {losses[0]:.5f} -> {losses[-1]:.5f}", flush=True)
    if a.mode == "loss" and not losses[-1] < losses[0]:
        print("loss did not decrease", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The trainer of the restart and preemption tests (restart_test.cc), run by came-launch.

Its data depends only on (rank, step), so a job restarted from the checkpoint of step k
computes exactly the gradients an uninterrupted job computes from step k + 1 on. It builds
ShardedCAME with resume=True (the latest committed checkpoint, or a fresh start), trains to
--steps, saves a final checkpoint and writes, per rank, the final parameters (raw float32)
to <out>/rank<r>_final.bin and the step each attempt started from to
<out>/rank<r>_starts.txt (one line per attempt: "<CAME_RESTART_COUNT> <first step>").

--die-rank R --die-step S: on the first attempt (CAME_RESTART_COUNT=0) the trainer of rank
R kills itself with SIGKILL just before step S.
"""
import argparse
import os
import signal
import sys
import time

import torch

import came


def batch(rank, step):
    g = torch.Generator().manual_seed(100003 * rank + step)
    x = torch.randn(32, 10, generator=g)
    y = torch.sin(x[:, :4] * 1.7) + 0.1 * torch.randn(32, 4, generator=g)
    return x, y


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--die-rank", type=int, default=-1)
    p.add_argument("--die-step", type=int, default=-1)
    a = p.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ["CAME_RANK"])
    attempt = int(os.environ["CAME_RESTART_COUNT"])
    torch.manual_seed(4321)  # one initial model (rank 0's is broadcast anyway)
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.Tanh(), torch.nn.Linear(20, 4))
    opt = came.ShardedCAME(model.named_parameters(), lr=0.02, weight_decay=0.01, resume=True)
    first = opt.step_count + 1
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "rank%d_starts.txt" % rank), "a") as f:
        f.write("%d %d\n" % (attempt, first))
    try:
        for step in range(first, a.steps + 1):
            if attempt == 0 and rank == a.die_rank and step == a.die_step:
                os.kill(os.getpid(), signal.SIGKILL)
            x, y = batch(rank, step)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            print("step %d" % step, flush=True)
            time.sleep(a.step_sleep)
    except came.Preempted as e:
        print("preempted after step %d" % e.step, flush=True)
        raise
    opt.save_checkpoint()
    with open(os.path.join(a.out, "rank%d_final.bin" % rank), "wb") as f:
        for param in model.parameters():
            f.write(param.detach().contiguous().numpy().tobytes())
    opt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

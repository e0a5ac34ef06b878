"""came.ShardedCAME on CUDA parameters through came-launch on one GPU: the trainer's
parameters and gradients are views of came-rankd's CUDA IPC buffers (came-rankd --device 0)
and 10 steps equal came.CAME run in-process on the same device, model and data.

Needs a GPU and a torch with CUDA; skips, saying so, without them."""

import os
import subprocess
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_ipc_common as common  # noqa: E402

import came  # noqa: E402

LAUNCH = os.environ.get("CAME_LAUNCH", "")
# One rank: the engine runs the same CUDA kernels as came.CAME on the same gradients; the
# tolerance leaves room for a different reduction order of the statistics only.
TOL = dict(rtol=1e-5, atol=1e-7)


@unittest.skipUnless(torch.cuda.is_available(), "no CUDA device (or a torch without CUDA)")
class GpuIpcTest(unittest.TestCase):
    def test_ten_steps_through_cuda_ipc_equal_came_in_process(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "params.pt")
            result = subprocess.run(
                [LAUNCH, "--backend", "nccl", "--gpus", "0", "--timeout-seconds", "240", "--",
                 sys.executable, os.path.join(HERE, "gpu_ipc_trainer.py"), out],
                capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                self.fail("came-launch exited %d:\n%s%s" % (result.returncode, result.stdout,
                                                             result.stderr))
            got = torch.load(out)
        device = torch.device("cuda", 0)
        model = common.make_model(device)
        opt = came.CAME(model.parameters(), lr=common.LR, weight_decay=common.WD)
        for step in range(1, common.STEPS + 1):
            opt.zero_grad()
            common.loss(model, step, device).backward()
            opt.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(got[name], p.detach().cpu(), **TOL, msg=name)


if __name__ == "__main__":
    unittest.main()

"""came-ckpt import/export against came-pytorch 0.1.3: a model trained 5 steps by
came_pytorch.CAME is converted (tools/ckpt/came_ckpt_from_torch.py), imported as a 2-rank
checkpoint, exported again and read with the safetensors library (same values, came-pytorch's
names); then came-rankd loads the imported checkpoint (came.ShardedCAME under came-launch, 2
ranks) and continues to step 10 equal to came_pytorch continuing (float32 tolerance).

Needs CAME_CKPT and CAME_LAUNCH (the binaries) and came-pytorch, safetensors on PYTHONPATH.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
FROM_TORCH = os.path.join(HERE, "..", "..", "tools", "ckpt", "came_ckpt_from_torch.py")
HYPER = dict(lr=0.01, weight_decay=0.01)


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


def gradient(index, step, shape):
    n = 1
    for d in shape:
        n *= d
    x = torch.arange(n, dtype=torch.float64) * 0.37 * (step + 1) + index
    return torch.sin(x).reshape(shape).to(torch.float32) * 0.1


def train(model, opt, first, last):
    for step in range(first, last + 1):
        for i, p in enumerate(model.parameters()):
            p.grad = gradient(i, step, p.shape)
        opt.step()


class CkptTorchTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="came-ckpt-torch-")

    def tearDown(self):
        shutil.rmtree(self.dir)

    def run_tool(self, argv):
        r = subprocess.run(argv, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_import_export_and_continue_equal_came_pytorch(self):
        import came_pytorch
        from safetensors.numpy import load_file

        model = make_model()
        opt = came_pytorch.CAME(model.parameters(), **HYPER)
        train(model, opt, 1, 5)
        model_pt, opt_pt = os.path.join(self.dir, "model.pt"), os.path.join(self.dir, "opt.pt")
        torch.save(model.state_dict(), model_pt)
        torch.save(opt.state_dict(), opt_pt)
        exported = os.path.join(self.dir, "from_torch.safetensors")
        self.run_tool([sys.executable, FROM_TORCH, model_pt, opt_pt, "--out", exported])
        ckpt = os.path.join(self.dir, "ckpt")
        self.run_tool([os.environ["CAME_CKPT"], "import", exported, "--world", "2", "--out", ckpt])
        manifest = os.path.join(ckpt, "manifest.json")
        self.run_tool([os.environ["CAME_CKPT"], "verify", manifest])
        again = os.path.join(self.dir, "again.safetensors")
        self.run_tool([os.environ["CAME_CKPT"], "export", manifest, "--out", again])

        loaded = load_file(again)
        for name, p in model.named_parameters():
            self.assertTrue((loaded[name] == p.detach().numpy()).all(), name)
            for kind, value in opt.state[p].items():
                if kind in ("step", "RMS"):
                    continue
                got = loaded["%s.%s" % (name, kind)]
                self.assertEqual(list(got.shape), list(value.shape), name + "." + kind)
                self.assertTrue((got == value.numpy()).all(), name + "." + kind)

        out = os.path.join(self.dir, "final.pt")
        env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = subprocess.run([os.environ["CAME_LAUNCH"], "--nproc", "2", "--", sys.executable,
                            os.path.join(HERE, "ckpt_torch_trainer.py"), manifest, "6", "10", out],
                           capture_output=True, text=True, env=env, timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        train(model, opt, 6, 10)
        final = torch.load(out)
        for name, p in model.named_parameters():
            err = (final[name].double() - p.detach().double()).abs().max().item()
            scale = max(1.0, p.detach().double().abs().max().item())
            self.assertLess(err / scale, 5e-5, name)


if __name__ == "__main__":
    unittest.main()

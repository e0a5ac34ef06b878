"""Hugging Face Trainer with optimizers=(came.ShardedCAME, scheduler) under came-launch with 2
ranks (hf_trainer.py): a job saved at step 3 and resumed by another job with
resume_from_checkpoint ends bit for bit where an uninterrupted job ends; a checkpoint whose
optimizer.pt carries no optimizer state is refused with a clear error."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCH = os.environ["CAME_LAUNCH"]


def launch(*args):
    result = subprocess.run([LAUNCH, "--nproc", "2", "--timeout-seconds", "200", "--",
                             sys.executable, os.path.join(HERE, "hf_trainer.py")] + list(args),
                            capture_output=True, text=True, timeout=240)
    return result.returncode, result.stdout + result.stderr


class HuggingFaceTrainerTest(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp(prefix="came-hf-")

    def run_ok(self, *args):
        code, output = launch(*args)
        self.assertEqual(code, 0, output)
        return output

    def test_save_and_resume_continue_exactly(self):
        whole, part = os.path.join(self.out, "whole"), os.path.join(self.out, "part")
        self.run_ok("--out", whole)
        self.run_ok("--out", part, "--stop-after", "3")
        saved = torch.load(os.path.join(part, "rank0", "checkpoint-3", "optimizer.pt"))
        self.assertEqual(len(saved["state"]), len(saved["param_groups"][0]["params"]))
        self.assertEqual(saved["state"][0]["step"], 3)
        self.assertGreater(float(saved["state"][0]["exp_avg"].abs().sum()), 0)
        # The model went to model.safetensors (the default) whole: every parameter is there,
        # although all of them live in one shared buffer.
        from safetensors.torch import load_file
        weights = load_file(os.path.join(part, "rank0", "checkpoint-3", "model.safetensors"))
        self.assertEqual(len(weights), len(saved["state"]), sorted(weights))
        self.run_ok("--out", part, "--resume", part)
        a = torch.load(os.path.join(whole, "final.pt"))
        b = torch.load(os.path.join(part, "final.pt"))
        self.assertEqual(sorted(a), sorted(b))
        for name in a:
            self.assertTrue(torch.equal(a[name], b[name]), name)

    def test_resume_from_a_checkpoint_without_optimizer_state_is_refused(self):
        part = os.path.join(self.out, "part")
        self.run_ok("--out", part, "--stop-after", "3")
        for rank in (0, 1):
            path = os.path.join(part, "rank%d" % rank, "checkpoint-3", "optimizer.pt")
            saved = torch.load(path)
            torch.save({"state": {}, "param_groups": saved["param_groups"]}, path)
        code, output = launch("--out", part, "--resume", part)
        self.assertNotEqual(code, 0, output)
        self.assertIn("carries no optimizer state", output)

    def tearDown(self):
        shutil.rmtree(self.out, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()

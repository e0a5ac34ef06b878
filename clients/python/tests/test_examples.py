"""Smoke tests of examples/train_gpt.py (AdamW, and CAME against the fake rankd) and
examples/compare_runs.py: a few tiny steps each, as subprocesses."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

from tests.fake_rank_server import FakeRankServer

EXAMPLES = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                        "examples"))
TINY = ["--steps", "4", "--batch-size", "2", "--context", "16", "--d-model", "32",
        "--layers", "1", "--heads", "2", "--eval-every", "2", "--eval-batches", "1"]


@unittest.skipUnless(os.path.isdir("/usr/share/games/fortunes"),
                     "the Debian package fortunes is not installed")
class ExamplesTest(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp(prefix="came-examples-")

    def run_example(self, script, args, env=None):
        result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)] + args,
                                env=env, capture_output=True, text=True, timeout=240)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout

    def train(self, optimizer, env=None):
        out = self.run_example("train_gpt.py", ["--optimizer", optimizer, "--out-dir", self.out]
                               + TINY, env)
        self.assertIn("step 4/4 [", out)
        with open(os.path.join(self.out, optimizer + ".json")) as f:
            record = json.load(f)
        self.assertEqual(len(record["losses"]), 4)
        self.assertEqual([s for s, _ in record["val_losses"]], [2, 4])
        return record

    def test_adamw_came_and_comparison(self):
        adamw = self.train("adamw", dict(os.environ, CAME_WORLD_SIZE="2"))
        self.assertEqual(adamw["global_batch"], 4)
        with FakeRankServer(token="demo") as server:
            env = dict(os.environ, CAME_RANK="0", CAME_WORLD_SIZE="1",
                       CAME_RANKD_ADDRESS=server.address, CAME_TOKEN="demo")
            came = self.train("came", env)
            steps = server.requests("Step")
            self.assertEqual([r.step for r in steps], [1, 2, 3, 4])
            self.assertEqual(len(steps[0].groups), 2)  # decayed matrices, the rest
            self.assertEqual(len(server.requests("Detach")), 1)
        self.assertEqual(came["optimizer_state_bytes_per_rank"], {
            "master": 0, "momentum": 0, "second_moment": 0, "factored": 0, "total": 0})
        table = self.run_example("compare_runs.py", ["--out-dir", self.out])
        self.assertIn("final validation loss", table)
        self.assertNotIn("optimizer state bytes", table)  # the fake keeps no state
        with open(os.path.join(self.out, "loss_curves.png"), "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    unittest.main()

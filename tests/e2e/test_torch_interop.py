"""torch interop of came.ShardedCAME through real came-rankd processes (came-launch):
state_dict round trips with came_pytorch.CAME and came.CAME both ways and across world sizes, OneCycleLR's
cycled betas, and the refusals (eps = 0, ranks disagreeing, a state dict without state).

The trainer is interop_trainer.py; the reference is came_pytorch.CAME 0.1.3 (build/pydeps)
in float32 on the ranks' mean gradients (interop_common.py)."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import interop_common as common  # noqa: E402

from came_pytorch import CAME  # noqa: E402

LAUNCH = os.environ["CAME_LAUNCH"]
# float32 against came_pytorch's float32 loop: a few ulps per step, over a few steps.
TOL = dict(rtol=1e-4, atol=1e-6)


def launch(nproc, *args, timeout=240):
    result = subprocess.run([LAUNCH, "--nproc", str(nproc), "--timeout-seconds", "200", "--",
                             sys.executable, os.path.join(HERE, "interop_trainer.py")] +
                            [str(a) for a in args], capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError("came-launch exited %d:\n%s%s" % (result.returncode,
                                                                result.stdout, result.stderr))


def reference(world_size, first, last, params=None, state_dict=None, schedule=None):
    """Runs came_pytorch.CAME on the mean gradients of steps first..last; returns the model's
    parameters, the optimizer and what a schedule factory returns."""
    model = common.make_model()
    if params is not None:
        with torch.no_grad():
            for p, value in zip(common.ordered_params(model), params):
                p.copy_(value)
    opt = CAME(common.plain_groups(model), lr=common.LR)
    if state_dict is not None:
        opt.load_state_dict(state_dict)
    sched = schedule(opt) if schedule else None
    for step in range(first, last + 1):
        opt.zero_grad()
        for i, p in enumerate(common.ordered_params(model)):
            p.grad = common.mean_gradient(world_size, step, p, i)
        opt.step()
        if sched is not None:
            sched.step()
    return [p.detach().clone() for p in common.ordered_params(model)], opt


class TorchInteropTest(unittest.TestCase):
    def setUp(self):
        self.out = tempfile.mkdtemp(prefix="came-interop-")

    def assertParamsClose(self, actual, expected, **tol):
        self.assertEqual(len(actual), len(expected))
        for i, (a, e) in enumerate(zip(actual, expected)):
            torch.testing.assert_close(a, e, **(tol or TOL), msg=lambda m: "param %d: %s" % (i, m))

    def export(self, only_rank0=False):
        out = tempfile.mkdtemp(dir=self.out)
        launch(2, "export", "--out", out, "--steps", 6, "--save-at", 3,
               *(["--only-rank0"] if only_rank0 else []))
        return torch.load(os.path.join(out, "export.pt")), torch.load(os.path.join(out, "final.pt"))

    def test_sharded_state_dict_continues_in_came_pytorch(self):
        exported, final = self.export()
        sd = exported["state_dict"]
        self.assertEqual(len(sd["state"]), len(exported["params"]))
        big = sd["state"][0]  # [24, 40]: factored, split across both ranks
        self.assertEqual(big["step"], 3)
        self.assertEqual(sorted(big), ["exp_avg", "exp_avg_res_col", "exp_avg_res_row",
                                       "exp_avg_sq_col", "exp_avg_sq_row", "step"])
        self.assertEqual(list(big["exp_avg_sq_row"].shape), [24])
        self.assertEqual(list(sd["state"][1]["exp_avg_sq_col"].shape), [2, 4])  # [2, 3, 4]
        self.assertIn("exp_avg_sq", sd["state"][3])  # the vector
        # The exported state is the state after step 3: came_pytorch from scratch agrees.
        _, ref = reference(2, 1, 3)
        for i, p in enumerate(ref.param_groups[0]["params"] + ref.param_groups[1]["params"]):
            for key, value in ref.state[p].items():
                if key not in ("step", "RMS"):
                    torch.testing.assert_close(sd["state"][i][key], value, **TOL)
        # came_pytorch continuing from it equals the sharded run continuing.
        params, _ = reference(2, 4, 6, exported["params"], sd)
        self.assertParamsClose(final, params)

    def test_state_dict_on_rank0_only_is_served_by_the_next_step(self):
        everyone, final = self.export()
        alone, final_alone = self.export(only_rank0=True)
        for i in everyone["state_dict"]["state"]:
            for key, value in everyone["state_dict"]["state"][i].items():
                self.assertTrue(torch.equal(torch.as_tensor(value),
                                            torch.as_tensor(alone["state_dict"]["state"][i][key])))
        self.assertParamsClose(final_alone, final, rtol=0, atol=0)

    def test_came_pytorch_state_dict_continues_sharded_and_resharded(self):
        params, opt = reference(1, 1, 3)
        path = os.path.join(self.out, "came_pytorch.pt")
        torch.save({"state_dict": opt.state_dict(), "params": params}, path)
        for world in (2, 3):
            with self.subTest(world_size=world):
                out = tempfile.mkdtemp(dir=self.out)
                launch(world, "import", "--out", out, "--state", path, "--steps", 6)
                expected, _ = reference(world, 4, 6, params, opt.state_dict())
                self.assertParamsClose(torch.load(os.path.join(out, "final.pt")), expected)

    def test_sharded_state_dict_moves_to_another_world_size(self):
        exported, _ = self.export()
        path = os.path.join(self.out, "w2.pt")
        torch.save(exported, path)
        launch(3, "import", "--out", self.out, "--state", path, "--steps", 6)
        expected, _ = reference(3, 4, 6, exported["params"], exported["state_dict"])
        self.assertParamsClose(torch.load(os.path.join(self.out, "final.pt")), expected)

    def test_came_CAME_state_dicts_move_both_ways(self):
        import came
        model = common.make_model()
        opt = came.CAME(common.plain_groups(model), lr=common.LR)
        for step in range(1, 4):
            for i, p in enumerate(common.ordered_params(model)):
                p.grad = common.mean_gradient(1, step, p, i)
            opt.step()
        params = [p.detach().clone() for p in common.ordered_params(model)]
        path = os.path.join(self.out, "came_CAME.pt")
        torch.save({"state_dict": opt.state_dict(), "params": params}, path)
        launch(2, "import", "--out", self.out, "--state", path, "--steps", 6)
        expected, _ = reference(2, 4, 6, params, opt.state_dict())
        self.assertParamsClose(torch.load(os.path.join(self.out, "final.pt")), expected)
        # And ShardedCAME's state dict continues in came.CAME.
        exported, final = self.export()
        model = common.make_model()
        with torch.no_grad():
            for p, value in zip(common.ordered_params(model), exported["params"]):
                p.copy_(value)
        opt = came.CAME(common.plain_groups(model), lr=common.LR)
        opt.load_state_dict(exported["state_dict"])
        for step in range(4, 7):
            for i, p in enumerate(common.ordered_params(model)):
                p.grad = common.mean_gradient(2, step, p, i)
            opt.step()
        self.assertParamsClose([p.detach() for p in common.ordered_params(model)], final)

    def test_one_cycle_lr_cycles_betas_through_rankd(self):
        launch(2, "onecycle", "--out", self.out, "--steps", 8)
        result = torch.load(os.path.join(self.out, "final.pt"))
        betas = [b for _, b in result["schedule"]]
        self.assertGreater(max(betas) - min(betas), 0.1)  # beta1 really cycled
        expected, _ = reference(2, 1, 8, schedule=lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.02, total_steps=8, cycle_momentum=True, base_momentum=0.8,
            max_momentum=0.95))
        self.assertParamsClose(result["params"], expected)

    def test_refusals_are_the_same_on_every_rank(self):
        launch(2, "checks", "--out", self.out)
        results = []
        for rank in (0, 1):
            with open(os.path.join(self.out, "checks-%d.json" % rank)) as f:
                results.append(json.load(f))
        self.assertEqual(results[0], results[1])
        r = results[0]
        # One rule (kernels/hyper_check.h) at Attach and at a step.
        self.assertEqual(r["attach_eps0"], "parameter group 0: eps must be > 0, got eps1=0")
        self.assertEqual(r["step_eps0"], "step 1: parameter group 0: eps must be > 0, got eps1=0")
        self.assertIn("the ranks disagree on lr of parameter group 1 (0.01 on one rank, 0.02 on "
                      "another)", r["lr_disagree"])
        self.assertIn("the ranks disagree on beta1 of parameter group 0", r["beta_disagree"])
        self.assertTrue(r["unchanged"], "a refused step changed parameters")
        self.assertIn("carries no optimizer state", r["empty_state"])
        self.assertTrue(r["good_step"] and r["moved"], "the job did not recover after refusals")


if __name__ == "__main__":
    unittest.main()

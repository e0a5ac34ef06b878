"""state_dict round trips between came.CAME and came_pytorch.CAME, both ways: train k steps in
one, save, load into the other, continue, and compare with an uninterrupted run."""

import copy
import io
import unittest

import torch

from came_tests.common import CAME, Case, came_pytorch, master

K = 6


def make_params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(9, 7), (3, 4, 5), (13,), ()]
    return [torch.nn.Parameter((torch.randn(s, generator=g) * 0.5).to(dtype)) for s in shapes]


def groups(params):
    return [{"params": params[:2]},
            {"params": params[2:], "lr": 5e-3, "weight_decay": 0.02}]


def set_grads(params, step):
    g = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def train(opt, params, first, count):
    for step in range(first, first + count):
        set_grads(params, step)
        opt.step()


def roundtrip(state_dict):
    """Returns the state_dict after torch.save/torch.load (what a checkpoint does)."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf)


def clone_params(params, dtype=None):
    return [torch.nn.Parameter(p.detach().clone().to(dtype or p.dtype)) for p in params]


class StateDictRoundTrip(Case):
    def uninterrupted(self, steps):
        """came_pytorch in float64 over `steps` steps: the trajectory both runs must follow."""
        params = make_params(torch.float64)
        opt = came_pytorch.CAME(groups(params), lr=1e-2)
        train(opt, params, 0, steps)
        return params, opt

    def assertFollows(self, params, opt, ref_params, ref_opt):
        for i, (p, r) in enumerate(zip(params, ref_params)):
            self.assertParamClose(master(opt, p) if isinstance(opt, CAME) else p, r,
                                  "parameter %d" % i)
            for k, v in ref_opt.state[r].items():
                if isinstance(v, torch.Tensor) and k != "RMS":
                    self.assertStateClose(opt.state[p][k], v, "%s of %d" % (k, i))
            self.assertEqual(int(opt.state[p]["step"]), int(ref_opt.state[r]["step"]))

    def test_came_to_came_pytorch(self):
        ref_params, ref_opt = self.uninterrupted(2 * K)
        params = make_params()
        ours = CAME(groups(params), lr=1e-2)
        train(ours, params, 0, K)
        sd = roundtrip(ours.state_dict())
        self.assertEqual(sorted(sd["state"][0]), sorted(
            ["step", "exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row",
             "exp_avg_res_col"]))
        self.assertEqual(sorted(sd["state"][2]), ["exp_avg", "exp_avg_sq", "step"])
        theirs_params = clone_params(params)
        theirs = came_pytorch.CAME(groups(theirs_params), lr=1e-2)
        theirs.load_state_dict(sd)
        train(theirs, theirs_params, K, K)
        self.assertFollows(theirs_params, theirs, ref_params, ref_opt)

    def test_came_pytorch_to_came(self):
        ref_params, ref_opt = self.uninterrupted(2 * K)
        theirs_params = make_params()
        theirs = came_pytorch.CAME(groups(theirs_params), lr=1e-2)
        train(theirs, theirs_params, 0, K)
        sd = roundtrip(theirs.state_dict())
        params = clone_params(theirs_params)
        ours = CAME(groups(params), lr=1e-2)
        ours.load_state_dict(sd)
        self.assertNotIn("RMS", ours.state[params[0]])
        train(ours, params, K, K)
        self.assertFollows(params, ours, ref_params, ref_opt)

    def test_came_resumes_bitwise(self):
        # Saving and loading into a fresh came.CAME continues exactly (bf16 masters too).
        for dtype in (torch.float32, torch.bfloat16):
            with self.subTest(dtype=dtype):
                straight = make_params(dtype)
                opt = CAME(groups(straight), lr=1e-2)
                train(opt, straight, 0, 2 * K)
                first = make_params(dtype)
                opt1 = CAME(groups(first), lr=1e-2)
                train(opt1, first, 0, K)
                sd = roundtrip(opt1.state_dict())
                second = clone_params(first)
                opt2 = CAME(groups(second), lr=1e-2)
                opt2.load_state_dict(sd)
                if dtype != torch.float32:
                    self.assertEqual(opt2.state[second[0]]["master_param"].dtype, torch.float32)
                train(opt2, second, K, K)
                for a, b in zip(straight, second):
                    self.assertTrue(torch.equal(a, b))
                    self.assertTrue(torch.equal(master(opt, a), master(opt2, b)))

    def test_bfloat16_both_ways(self):
        # came_pytorch keeps no master: ours starts one from the parameter. Ours saves one:
        # came_pytorch ignores it; coming back, the stale master is refreshed from the
        # parameter that came_pytorch trained.
        params = make_params(torch.bfloat16)
        ours = CAME(groups(params), lr=1e-2)
        train(ours, params, 0, K)
        theirs_params = clone_params(params)
        theirs = came_pytorch.CAME(groups(theirs_params), lr=1e-2)
        theirs.load_state_dict(roundtrip(ours.state_dict()))
        train(theirs, theirs_params, K, K)
        back = clone_params(theirs_params)
        ours2 = CAME(groups(back), lr=1e-2)
        ours2.load_state_dict(roundtrip(theirs.state_dict()))
        for p in back:
            self.assertEqual(ours2.state[p]["exp_avg"].dtype, torch.float32)
        # The same state without any master gives the same next step.
        sd = roundtrip(theirs.state_dict())
        for st in sd["state"].values():
            st.pop("master_param", None)
        fresh = clone_params(theirs_params)
        ours3 = CAME(groups(fresh), lr=1e-2)
        ours3.load_state_dict(sd)
        set_grads(back, 2 * K)
        set_grads(fresh, 2 * K)
        ours2.step()
        ours3.step()
        for a, b in zip(back, fresh):
            self.assertTrue(torch.equal(a, b))
            self.assertTrue(torch.equal(master(ours2, a), master(ours3, b)))
            self.assertTrue(torch.equal(master(ours2, a).to(a.dtype), a))

    def test_master_follows_parameters_written_between_steps(self):
        params = make_params(torch.bfloat16)
        opt = CAME(groups(params), lr=1e-2)
        train(opt, params, 0, 3)
        # Untouched: the master keeps what the 16-bit parameter cannot hold.
        kept = master(opt, params[0]).clone()
        self.assertFalse(torch.equal(kept, params[0].detach().float()))
        # Written the way model.load_state_dict writes (an in-place copy under no_grad), and
        # replaced through .data: both masters restart from the new values.
        new0 = (torch.randn(params[0].shape) * 3).bfloat16()
        with torch.no_grad():
            params[0].copy_(new0)
        params[2].data = (torch.randn(params[2].shape) * 3).bfloat16()
        new2 = params[2].detach().clone()
        expect = make_params(torch.bfloat16)
        for e, p in zip(expect, params):
            e.data = p.detach().clone()
        ref = CAME(groups(expect), lr=1e-2)
        ref.load_state_dict(opt.state_dict())  # masters of 0 and 2 stale: refreshed there too
        set_grads(params, 3)
        set_grads(expect, 3)
        opt.step()
        ref.step()
        for i, (a, b) in enumerate(zip(params, expect)):
            self.assertTrue(torch.equal(a, b), i)
        # One step from the written values (3 * randn), not from the stale masters (0.5 *
        # randn, about 3 away).
        for p, new in ((params[0], new0), (params[2], new2)):
            self.assertFalse(torch.equal(p, new))
            self.assertLess((p.float() - new.float()).abs().max().item(), 1.0)
        # Parameter 1 was not written: its master went on from the kept value (not restarted).
        self.assertTrue(torch.equal(master(opt, params[1]), master(ref, expect[1])))

    def test_deepcopy_and_pickle(self):
        import pickle
        params = make_params(torch.bfloat16)
        opt = CAME(groups(params), lr=1e-2, num_threads=2)
        train(opt, params, 0, 3)
        twin = copy.deepcopy({"params": params, "opt": opt})
        twin_params, twin_opt = twin["params"], twin["opt"]
        self.assertEqual(twin_opt._num_threads, 2)
        train(opt, params, 3, 3)
        train(twin_opt, twin_params, 3, 3)
        for a, b in zip(params, twin_params):
            self.assertTrue(torch.equal(a, b))
            self.assertTrue(torch.equal(master(opt, a), master(twin_opt, b)))
        again = pickle.loads(pickle.dumps(opt))
        self.assertEqual(len(again.state), len(opt.state))

    def test_bad_state_changes_nothing(self):
        params = make_params()
        ours = CAME(groups(params), lr=1e-2)
        train(ours, params, 0, 2)
        good = copy.deepcopy(ours.state_dict())
        bad = copy.deepcopy(good)
        bad["state"][0]["exp_avg_sq_row"] = torch.zeros(3)
        with self.assertRaisesRegex(ValueError, "exp_avg_sq_row.*shape"):
            ours.load_state_dict(bad)
        bad = copy.deepcopy(good)
        del bad["state"][2]["exp_avg_sq"]
        with self.assertRaisesRegex(ValueError, "no tensor 'exp_avg_sq'"):
            ours.load_state_dict(bad)
        now = ours.state_dict()
        for pid, st in good["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    self.assertTrue(torch.equal(v, now["state"][pid][k]))


if __name__ == "__main__":
    unittest.main()

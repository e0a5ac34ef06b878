"""Bad input to came.CAME raises a clear error and changes nothing; non-finite gradients skip
the step."""

import math
import unittest

import torch

from came_tests.common import CAME, Model, assert_unchanged, loss_fn, snapshot


def trained(steps=2):
    model = Model()
    opt = CAME(model.groups(), lr=1e-2)
    for step in range(steps):
        opt.zero_grad()
        loss_fn(model, step).backward()
        opt.step()
    opt.zero_grad()
    loss_fn(model, steps).backward()
    # A parameter with its first gradient now: a refused step must not create its state.
    model.unused.grad = torch.ones_like(model.unused)
    return model, opt


class Errors(unittest.TestCase):
    def assertRefused(self, exc, pattern, mutate):
        model, opt = trained()
        mutate(model, opt)
        snap = snapshot(opt)
        with self.assertRaisesRegex(exc, pattern):
            opt.step()
        assert_unchanged(self, opt, snap)
        self.assertNotIn(model.unused, opt.state)

    def test_sparse_gradient(self):
        def mutate(model, opt):
            model.fc.bias.grad = torch.sparse_coo_tensor([[0, 3]], [1.0, 2.0], (16,))
        self.assertRefused(RuntimeError, "does not support sparse gradients", mutate)

    def test_non_float_parameter(self):
        def mutate(model, opt):
            # The constructor refuses integer tensors; one slipped into a group later is
            # refused by the step.
            counts = torch.zeros(3, dtype=torch.int64)
            counts.grad = torch.ones(3, dtype=torch.int64)
            opt.param_groups[1]["params"].append(counts)
        self.assertRefused(ValueError, "parameter 5 of group 1 has dtype torch.int64", mutate)

    def test_negative_lr_set_by_a_scheduler(self):
        def mutate(model, opt):
            opt.param_groups[1]["lr"] = -1e-3
        self.assertRefused(ValueError, "group 1: lr must be >= 0", mutate)

    def test_eps_not_positive(self):
        def mutate(model, opt):
            opt.param_groups[0]["eps"] = (1e-30, 0.0)
        self.assertRefused(ValueError, "eps must be > 0", mutate)

    def test_beta_out_of_range(self):
        def mutate(model, opt):
            opt.param_groups[0]["betas"] = (0.9, 1.0, 0.9999)
        self.assertRefused(ValueError, r"betas must be in \[0, 1\)", mutate)

    def test_state_replaced_by_hand(self):
        def mutate(model, opt):
            st = opt.state[model.fc.weight]
            st["exp_avg"] = st["exp_avg"].double()
        self.assertRefused(ValueError, "state 'exp_avg' .* must be a contiguous float32", mutate)

        # A valid replacement is used from the next step on (its new buffer, not the old one).
        model, opt = trained()
        model.unused.grad = None
        st = opt.state[model.fc.weight]
        st["exp_avg"] = st["exp_avg"].clone()
        fresh = st["exp_avg"].clone()
        opt.step()
        self.assertFalse(torch.equal(st["exp_avg"], fresh))

    def test_constructor(self):
        params = [torch.nn.Parameter(torch.zeros(3, 2))]
        with self.assertRaisesRegex(ValueError, "lr is required"):
            CAME(params)
        with self.assertRaisesRegex(ValueError, "lr must be >= 0"):
            CAME(params, lr=-1.0)
        for eps in ((0.0, 1e-16), (1e-30, -1.0)):
            with self.assertRaisesRegex(ValueError, "eps must be > 0"):
                CAME(params, lr=1e-3, eps=eps)
        with self.assertRaisesRegex(ValueError, "clip_threshold must be > 0"):
            CAME(params, lr=1e-3, clip_threshold=0.0)
        with self.assertRaisesRegex(ValueError, "weight_decay must be >= 0"):
            CAME(params, lr=1e-3, weight_decay=-0.1)
        with self.assertRaisesRegex(ValueError, "betas must be 3 values"):
            CAME(params, lr=1e-3, betas=(0.9, 0.999))
        with self.assertRaisesRegex(ValueError, "dtype torch.int32"):
            CAME([torch.zeros(3, dtype=torch.int32)], lr=1e-3)
        opt = CAME(params, lr=1e-3)
        with self.assertRaisesRegex(ValueError, "group 1: lr must be >= 0"):
            opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": -2.0})
        self.assertEqual(len(opt.param_groups), 1)

    def test_non_finite_gradient_skips_the_step(self):
        for bad in (math.inf, math.nan):
            with self.subTest(value=bad):
                model, opt = trained()
                model.unused.grad = None
                snap = snapshot(opt)
                model.batched.grad[1, 2, 3] = bad
                opt.step()
                skipped, norm = opt.last_step_result()[torch.device("cpu")]
                self.assertTrue(skipped)
                self.assertFalse(math.isfinite(norm))
                params, state = snap
                now = [p.detach() for g in opt.param_groups for p in g["params"]]
                for a, b in zip(params, now):
                    self.assertTrue(torch.equal(a, b))
                for pid, st in state["state"].items():
                    for k, v in st.items():
                        if isinstance(v, torch.Tensor):
                            self.assertTrue(torch.equal(v, opt.state_dict()["state"][pid][k]))

    def test_cuda_library_without_a_device(self):
        from came import _lib
        if _lib.find_library(_lib.CUDA_LIBRARY) is None:
            self.skipTest("this build has no CUDA kernels (libcame_capi_cuda.so)")
        if torch.cuda.is_available():
            self.skipTest("a CUDA device is present")
        lib = _lib.load(cuda=True)
        self.assertIn("cuda=sm_", lib.build_info)
        self.assertEqual(lib.lib.came_cuda_device_count(), 0)
        d = _lib.TensorDesc()
        d.ndim, d.shape[0] = 1, 4
        with self.assertRaisesRegex(_lib.CameLibraryError, "CUDA device 0 is not present"):
            lib.create(0, [d], 0)

    def test_cuda_without_cuda_kernels(self):
        if not torch.cuda.is_available():
            self.skipTest("no CUDA device")
        from came import _lib
        if _lib.find_library(_lib.CUDA_LIBRARY) is not None:
            self.skipTest("this installation has the CUDA kernels")
        p = torch.nn.Parameter(torch.zeros(4, 4, device="cuda"))
        p.grad = torch.ones_like(p)
        with self.assertRaisesRegex(RuntimeError, "no CUDA kernels"):
            CAME([p], lr=1e-3).step()


if __name__ == "__main__":
    unittest.main()

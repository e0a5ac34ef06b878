"""Shared pieces of the came.CAME tests: a small model, the reference run and the float32
tolerances of tests/data/golden/README.md."""

import copy
import unittest

import torch

try:
    import came_pytorch
except ImportError as e:  # the ctest fixture installs it (scripts/lib/pydeps.sh)
    raise ImportError("came_pytorch is missing: run `source scripts/lib/pydeps.sh && "
                      "came_pydeps came-pytorch==0.1.3` and put build/pydeps on PYTHONPATH"
                      ) from e

from came import CAME

# The golden README's float32 criteria: per element |p - p_ref| <= 5e-5 * max(|p_ref|,
# 0.01 * max|p_ref|), per state tensor max|s - s_ref| <= 1e-5 * max|s_ref|.
PARAM_TOL = 5e-5
STATE_TOL = 1e-5

STATE_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row",
              "exp_avg_res_col")


class Model(torch.nn.Module):
    """Factored (2-D), batched (3-D), 1-D, 0-D and bfloat16 parameters, and one unused."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = torch.nn.Linear(8, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.batched = torch.nn.Parameter(torch.randn(2, 16, 5, generator=g) * 0.3)
        self.gain = torch.nn.Parameter(torch.tensor(1.5))
        self.low = torch.nn.Parameter((torch.randn(5, 3, generator=g) * 0.5).bfloat16())
        self.unused = torch.nn.Parameter(torch.randn(4, 4, generator=g))
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(16, 8, generator=g) * 0.3)
            self.fc.bias.copy_(torch.randn(16, generator=g) * 0.1)

    def forward(self, x):
        h = self.norm(torch.tanh(self.fc(x)))                       # [b, 16]
        y = torch.einsum("bi,kio->bko", h, self.batched).sum(1)      # [b, 5]
        return (y @ self.low.float()) * self.gain                    # [b, 3]

    def groups(self, lr=1e-2, weight_decay=0.01):
        """Two parameter groups: the second with weight decay and its own lr."""
        return [
            {"params": [self.fc.weight, self.fc.bias, self.unused]},
            {"params": [self.norm.weight, self.norm.bias, self.batched, self.gain, self.low],
             "lr": lr * 0.5, "weight_decay": weight_decay},
        ]


def batch(step, seed=100):
    g = torch.Generator().manual_seed(seed + step)
    return torch.randn(12, 8, generator=g), torch.randn(12, 3, generator=g)


def loss_fn(model, step):
    x, y = batch(step)
    return torch.nn.functional.mse_loss(model(x), y)


class Reference:
    """came_pytorch.CAME in float64 on copies of a came.CAME run's parameters (of the float32
    masters for 16-bit ones), stepped with the same gradients (teacher forcing): it follows
    exactly the trajectory the fused optimizer should have."""

    def __init__(self, opt, **kwargs):
        self.pairs = []
        groups = []
        for group in opt.param_groups:
            ref_params = []
            for p in group["params"]:
                r = torch.nn.Parameter(p.detach().double().clone())
                self.pairs.append((p, r))
                ref_params.append(r)
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = ref_params
            groups.append(g)
        self.opt = came_pytorch.CAME(groups, **kwargs)
        self.source = opt

    def step(self):
        """Steps with the fused run's current gradients and group hyperparameters."""
        for p, r in self.pairs:
            r.grad = None if p.grad is None else p.grad.detach().double().clone()
        for rg, g in zip(self.opt.param_groups, self.source.param_groups):
            for k in ("lr", "betas", "eps", "clip_threshold", "weight_decay"):
                rg[k] = g[k]
        self.opt.step()


def master(opt, p):
    """Returns the float32 values the optimizer updates: the master of a 16-bit parameter."""
    st = opt.state.get(p, {})
    return st["master_param"] if "master_param" in st else p.detach()


class Case(unittest.TestCase):
    def assertParamClose(self, got, ref, what):
        got = got.detach().double()
        ref = ref.detach().double()
        scale = torch.maximum(ref.abs(), 0.01 * ref.abs().max())
        err = ((got - ref).abs() / scale.clamp_min(1e-300)).max().item()
        self.assertLessEqual(err, PARAM_TOL, "%s: relative error %.3g" % (what, err))

    def assertStateClose(self, got, ref, what):
        got = got.detach().double()
        ref = ref.detach().double()
        err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()
        self.assertLessEqual(err, STATE_TOL, "%s: relative error %.3g" % (what, err))

    def assertMatchesReference(self, opt, ref, what):
        for i, (p, r) in enumerate(ref.pairs):
            self.assertParamClose(master(opt, p), r, "%s: parameter %d" % (what, i))
            if p.dtype != torch.float32:
                self.assertTrue(torch.equal(p.detach(), master(opt, p).to(p.dtype)),
                                "%s: 16-bit parameter %d is not its rounded master" % (what, i))
            ours, theirs = opt.state.get(p, {}), ref.opt.state.get(r, {})
            self.assertEqual(sorted(k for k in ours if k in STATE_KEYS),
                             sorted(k for k in theirs if k in STATE_KEYS))
            for k in STATE_KEYS:
                if k in theirs:
                    self.assertEqual(ours[k].dtype, torch.float32)
                    self.assertStateClose(ours[k], theirs[k], "%s: %s of %d" % (what, k, i))
            if theirs:
                self.assertEqual(ours["step"], theirs["step"])


def snapshot(opt):
    """Returns deep copies of every parameter, gradient and the state, for "nothing changed"."""
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    return params, copy.deepcopy(opt.state_dict())


def assert_unchanged(test, opt, snap):
    params, state = snap
    now = [p.detach() for g in opt.param_groups for p in g["params"]]
    for i, (a, b) in enumerate(zip(params, now)):
        test.assertTrue(torch.equal(a, b), "parameter %d changed" % i)
    cur = opt.state_dict()
    test.assertEqual(sorted(state["state"]), sorted(cur["state"]), "state entries changed")
    for pid, st in state["state"].items():
        for k, v in st.items():
            w = cur["state"][pid][k]
            if isinstance(v, torch.Tensor):
                test.assertTrue(torch.equal(v, w), "state %s of %d changed" % (k, pid))
            else:
                test.assertEqual(v, w)


__all__ = ["CAME", "came_pytorch", "Model", "Reference", "Case", "batch", "loss_fn", "master",
           "snapshot", "assert_unchanged"]

"""came.CAME against came_pytorch.CAME (float64, same gradients) over 20 steps of a small
model: 1-D, 3-D, 0-D and bfloat16 parameters, two groups, weight decay, OneCycleLR, a closure,
zero_grad(set_to_none=True) and a parameter without a gradient."""

import unittest

import torch

from came_tests.common import CAME, Case, Model, Reference, loss_fn

STEPS = 20


class CameMatchesReference(Case):
    def run_steps(self, opt, model, ref, steps=STEPS, sched=None, ref_sched=None,
                  set_to_none=True, use_closure=False):
        for step in range(steps):
            opt.zero_grad(set_to_none=set_to_none)
            if use_closure:
                def closure():
                    opt.zero_grad(set_to_none=set_to_none)
                    loss = loss_fn(model, step)
                    loss.backward()
                    ref_grads_ready.append(loss)
                    return loss
                ref_grads_ready = []
                # The reference needs the gradients the closure makes, before the fused step:
                # run the closure once for it, then let step() run it again (same values).
                closure()
                grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
                returned = opt.step(closure)
                self.assertIs(returned, ref_grads_ready[-1])
                for p, g in zip(model.parameters(), grads):
                    p.grad = g
                ref.step()
            else:
                loss_fn(model, step).backward()
                opt.step()
                ref.step()
            if sched is not None:
                sched.step()
                ref_sched.step()
            self.assertMatchesReference(opt, ref, "step %d" % (step + 1))

    def test_small_model_two_groups(self):
        torch.manual_seed(0)
        model = Model()
        opt = CAME(model.groups(), lr=1e-2, num_threads=2)
        ref = Reference(opt, lr=1e-2)
        unused_before = model.unused.detach().clone()
        self.run_steps(opt, model, ref)
        # The parameter without a gradient was skipped: no state, not changed.
        self.assertNotIn(model.unused, opt.state)
        self.assertTrue(torch.equal(model.unused.detach(), unused_before))
        self.assertEqual(model.low.dtype, torch.bfloat16)
        # The run moved every other parameter.
        fresh = Model()
        for name, p in model.named_parameters():
            if name != "unused":
                self.assertFalse(torch.equal(p.detach(), dict(fresh.named_parameters())[name]
                                             .detach()), name)

    def test_one_cycle_lr_cycles_beta1(self):
        model = Model(seed=1)
        opt = CAME(model.groups(), lr=1e-2)
        ref = Reference(opt, lr=1e-2)
        kw = dict(max_lr=[2e-2, 1e-2], total_steps=STEPS, base_momentum=0.8,
                  max_momentum=0.95)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, **kw)
        ref_sched = torch.optim.lr_scheduler.OneCycleLR(ref.opt, **kw)
        seen = set()
        for step in range(STEPS):
            seen.add(round(opt.param_groups[0]["betas"][0], 6))
            opt.zero_grad(set_to_none=True)
            loss_fn(model, step).backward()
            opt.step()
            ref.step()
            if step < STEPS - 1:
                sched.step()
                ref_sched.step()
            self.assertEqual(len(opt.param_groups[0]["betas"]), 3)
            self.assertMatchesReference(opt, ref, "step %d" % (step + 1))
        self.assertGreater(len(seen), 5, "OneCycleLR did not change betas[0]")

    def test_closure(self):
        model = Model(seed=2)
        opt = CAME(model.groups(), lr=3e-3)
        ref = Reference(opt, lr=3e-3)
        self.run_steps(opt, model, ref, steps=6, use_closure=True)

    def test_zero_grad_in_place(self):
        model = Model(seed=3)
        opt = CAME(model.groups(), lr=1e-2)
        ref = Reference(opt, lr=1e-2)
        self.run_steps(opt, model, ref, steps=6, set_to_none=False)

    def test_gradients_appear_later(self):
        # A parameter that gets its first gradient at step 3: its state starts there, as in
        # came_pytorch, and the fused optimizer rebuilds its layout.
        model = Model(seed=4)
        opt = CAME(model.groups(), lr=1e-2)
        ref = Reference(opt, lr=1e-2)
        for step in range(6):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, step)
            if step >= 2:
                loss = loss + (model.unused ** 2).sum() * 1e-2
            loss.backward()
            opt.step()
            ref.step()
            self.assertMatchesReference(opt, ref, "step %d" % (step + 1))
        self.assertEqual(opt.state[model.unused]["step"], 4)

    def test_float16_parameters(self):
        p = torch.nn.Parameter((torch.randn(7, 9) * 0.5).half())
        q = torch.nn.Parameter((torch.randn(11) * 0.5).half())
        opt = CAME([p, q], lr=1e-2)
        ref = Reference(opt, lr=1e-2)
        g = torch.Generator().manual_seed(5)
        for step in range(10):
            p.grad = torch.randn(7, 9, generator=g).half()
            q.grad = torch.randn(11, generator=g).half()
            opt.step()
            ref.step()
            self.assertMatchesReference(opt, ref, "step %d" % (step + 1))

    @unittest.skipUnless(torch.cuda.is_available(), "no CUDA device")
    def test_cuda_matches_cpu(self):
        model = Model(seed=6)
        gpu = Model(seed=6).cuda()
        opt = CAME(model.groups(), lr=1e-2)
        gopt = CAME(gpu.groups(), lr=1e-2)
        for step in range(STEPS):
            for o, m in ((opt, model), (gopt, gpu)):
                o.zero_grad(set_to_none=True)
            loss_fn(model, step).backward()
            for p, q in zip(model.parameters(), gpu.parameters()):
                q.grad = None if p.grad is None else p.grad.cuda()
            opt.step()
            gopt.step()
        torch.cuda.synchronize()
        for (name, p), q in zip(model.named_parameters(), gpu.parameters()):
            self.assertParamClose(q.cpu().float(), p.float(), name)


if __name__ == "__main__":
    unittest.main()

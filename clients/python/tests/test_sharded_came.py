"""ShardedCAME against the fake rankd (fake_rank_server.py): buffers, steps, errors."""

import copy
import os
import unittest
from unittest import mock

import grpc
import torch
from torch import nn

import came
from came import CameError, ShardedCAME
from tests.fake_rank_server import FakeRankServer

LR = 0.1


def _tiny_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).to(dtype)


def _loss(model, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 4, generator=g).to(dtype)
    return model(x).float().pow(2).mean()


class TinyLM(nn.Module):
    """Embedding + Linear + LayerNorm: the layer kinds of a transformer."""

    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):
        return self.head(self.norm(torch.relu(self.hidden(self.embed(tokens)))))


class FakeRankdTestCase(unittest.TestCase):
    def setUp(self):
        self.server = FakeRankServer(token="secret").start()
        self.addCleanup(self.server.stop)

    def make(self, params, **kwargs):
        kwargs.setdefault("lr", LR)
        opt = ShardedCAME(params, address=self.server.address, token="secret", timeout=10,
                          **kwargs)
        self.addCleanup(opt.close)
        return opt

    def assert_in_buffers(self, opt, params):
        for p in params:
            self.assertTrue(opt.params_buffer.contains(p.data))
            self.assertTrue(opt.grads_buffer.contains(p.grad))


class BufferTest(FakeRankdTestCase):
    def test_backward_writes_into_the_shared_gradient_buffer(self):
        model = _tiny_model()
        reference = copy.deepcopy(model)
        opt = self.make(model.named_parameters())
        params = list(model.parameters())
        self.assert_in_buffers(opt, params)
        grad_ptrs = [p.grad.data_ptr() for p in params]

        _loss(model).backward()
        _loss(reference).backward()

        self.assertEqual([p.grad.data_ptr() for p in params], grad_ptrs)
        self.assert_in_buffers(opt, params)
        flat = opt.grads_buffer.flat
        for layout, p, r in zip(opt.attach_response.tensors, params, reference.parameters()):
            in_buffer = flat[layout.offset:layout.offset + layout.numel].view(p.shape)
            torch.testing.assert_close(in_buffer, r.grad)

    def test_initial_parameters_are_copied_into_the_buffer(self):
        model = _tiny_model()
        before = [p.detach().clone() for p in model.parameters()]
        opt = self.make(model.parameters())
        flat = opt.params_buffer.flat
        for layout, b in zip(opt.attach_response.tensors, before):
            torch.testing.assert_close(flat[layout.offset:layout.offset + layout.numel],
                                       b.flatten())
        self.assertEqual(len(self.server.requests("SyncParameters")), 1)
        self.assertTrue(self.server.requests("Attach")[0].initial_params_in_buffer)

    def test_backward_twice_accumulates_in_the_buffer(self):
        model = _tiny_model()
        reference = copy.deepcopy(model)
        self.make(model.parameters())
        for seed in (1, 2):
            _loss(model, seed).backward()
            _loss(reference, seed).backward()
        for p, r in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, r.grad)

    def test_zero_grad_zeroes_in_place_with_and_without_set_to_none(self):
        model = _tiny_model()
        opt = self.make(model.parameters())
        params = list(model.parameters())
        ptrs = [p.grad.data_ptr() for p in params]
        for set_to_none in (False, True):
            _loss(model).backward()
            self.assertGreater(float(opt.grads_buffer.flat.abs().sum()), 0)
            opt.zero_grad(set_to_none=set_to_none)
            self.assertEqual(float(opt.grads_buffer.flat.abs().sum()), 0)
            self.assertEqual([p.grad.data_ptr() for p in params], ptrs)
        opt.zero_grad()  # the default
        self.assertEqual([p.grad.data_ptr() for p in params], ptrs)

    def test_gradients_replaced_by_user_code_reach_the_server(self):
        model = _tiny_model()
        reference = copy.deepcopy(model)
        opt = self.make(model.parameters())
        params = list(model.parameters())
        for p in params:
            p.grad = None  # what torch's own zero_grad(set_to_none=True) does
        _loss(model).backward()
        params[0].grad = torch.ones_like(params[0])
        params[1].grad = None  # no gradient: a zero update
        opt.step()
        _loss(reference).backward()
        expected = [r - LR * r.grad for r in reference.parameters()]
        expected[0] = list(reference.parameters())[0] - LR
        expected[1] = list(reference.parameters())[1].detach()
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach(), e.detach())
        self.assert_in_buffers(opt, params)

    def test_replaced_parameter_data_is_copied_back_into_the_buffer(self):
        model = _tiny_model()
        opt = self.make(model.parameters())
        weight = model[0].weight
        weight.data = torch.full_like(weight, 2.0)
        opt.step()  # zero gradients: the values stay
        self.assertTrue(opt.params_buffer.contains(weight.data))
        torch.testing.assert_close(weight.detach(), torch.full_like(weight, 2.0))

    def test_parameter_without_gradient_keeps_a_zero_view(self):
        torch.manual_seed(0)
        used, unused = nn.Linear(4, 2), nn.Linear(4, 2)
        model = nn.ModuleDict({"used": used, "unused": unused})
        opt = self.make(model.named_parameters())
        before = unused.weight.detach().clone()
        ptr = unused.weight.grad.data_ptr()
        for _ in range(3):
            used(torch.randn(3, 4)).sum().backward()
            opt.step()
            self.assertEqual(unused.weight.grad.data_ptr(), ptr)
            self.assertEqual(float(unused.weight.grad.abs().sum()), 0)
            opt.zero_grad()
        torch.testing.assert_close(unused.weight.detach(), before)
        self.assert_in_buffers(opt, model.parameters())


class StepTest(FakeRankdTestCase):
    def test_steps_apply_the_servers_update_to_the_model(self):
        model = _tiny_model()
        reference = copy.deepcopy(model)
        sgd = torch.optim.SGD(reference.parameters(), lr=LR)
        opt = self.make(model.named_parameters())
        for seed in range(1, 4):
            _loss(model, seed).backward()
            opt.step()
            opt.zero_grad()
            _loss(reference, seed).backward()
            sgd.step()
            sgd.zero_grad()
        for p, r in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p.detach(), r.detach())
        self.assertEqual([r.step for r in self.server.requests("Step")], [1, 2, 3])
        self.assertEqual(opt.step_count, 3)
        self.assertEqual(opt.last_step_stats.step, 3)
        self.assertGreater(opt.last_step_stats.grad_norm, 0)
        self.assertFalse(opt.last_step_stats.skipped)
        self.assertIn("total", opt.last_step_stats.timings)

    def test_step_calls_the_closure_and_returns_its_loss(self):
        model = _tiny_model()
        opt = self.make(model.parameters())

        def closure():
            opt.zero_grad()
            loss = _loss(model)
            loss.backward()
            return loss

        loss = opt.step(closure)
        self.assertIsInstance(loss, torch.Tensor)
        self.assertGreater(self.server.requests("Step")[0].max_grad_norm, -1)
        self.assertIsNone(opt.step())

    def test_small_module_trains(self):
        torch.manual_seed(0)
        model = TinyLM()
        opt = self.make(model.named_parameters(), lr=0.5)
        tokens = torch.randint(0, 11, (16, 6), generator=torch.Generator().manual_seed(3))
        losses = []
        for _ in range(40):
            logits = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, 11), tokens[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        self.assertLess(losses[-1], 0.8 * losses[0])
        names = [t.name for t in self.server.requests("Attach")[0].tensors]
        self.assertEqual(names, [n for n, _ in model.named_parameters()])
        self.assert_in_buffers(opt, model.parameters())

    def test_lr_schedulers_change_the_lr_sent_with_each_step(self):
        model = _tiny_model()
        opt = self.make(model.parameters())
        self.assertIsInstance(opt, torch.optim.Optimizer)
        step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        for _ in range(4):
            opt.step()
            step_lr.step()
        lambda_lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (i + 1))
        for _ in range(2):
            opt.step()
            lambda_lr.step()
        sent = [r.groups[0].lr for r in self.server.requests("Step")]
        self.assertEqual(len(sent), 6)
        # LambdaLR scales the groups' initial_lr (0.1) that StepLR recorded.
        for got, want in zip(sent, [0.1, 0.1, 0.05, 0.05, 0.1, 0.05]):
            self.assertAlmostEqual(got, want)

    def test_max_grad_norm_is_sent(self):
        opt = self.make(_tiny_model().parameters(), max_grad_norm=1.5)
        opt.step()
        self.assertEqual(self.server.requests("Step")[0].max_grad_norm, 1.5)
        opt2 = self.make(_tiny_model().parameters())
        opt2.step()
        self.assertEqual(self.server.requests("Step")[1].max_grad_norm, 0.0)


class ParamGroupTest(FakeRankdTestCase):
    def test_every_hyperparameter_is_sent_with_the_reference_defaults(self):
        self.make(_tiny_model().parameters(), lr=0.01)
        hp = self.server.requests("Attach")[0].groups[0].hyperparameters
        for field in ("lr", "eps1", "eps2", "clip_threshold", "beta1", "beta2", "beta3",
                      "weight_decay"):
            self.assertTrue(hp.HasField(field), field)
        self.assertEqual((hp.lr, hp.beta1, hp.beta2, hp.beta3), (0.01, 0.9, 0.999, 0.9999))
        self.assertEqual((hp.eps1, hp.eps2, hp.clip_threshold, hp.weight_decay),
                         (1e-30, 1e-16, 1.0, 0.0))

    def test_group_dicts_reach_the_server_as_groups(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
        decay = [(n, p) for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [(n, p) for n, p in model.named_parameters() if p.ndim < 2]
        opt = self.make([{"params": decay, "weight_decay": 0.1},
                         {"params": no_decay, "lr": 0.01, "betas": (0.8, 0.99, 0.999)}],
                        lr=0.05)
        attach = self.server.requests("Attach")[0]
        self.assertEqual([t.name for t in attach.tensors], [n for n, _ in decay + no_decay])
        self.assertEqual([t.group for t in attach.tensors], [0, 1, 1, 1])
        g0, g1 = (g.hyperparameters for g in attach.groups)
        self.assertEqual((g0.lr, g0.weight_decay, g0.beta1), (0.05, 0.1, 0.9))
        self.assertEqual((g1.lr, g1.weight_decay, g1.beta1, g1.beta3), (0.01, 0.0, 0.8, 0.999))
        opt.param_groups[1]["weight_decay"] = 0.2
        opt.step()
        step = self.server.requests("Step")[0]
        self.assertEqual([(g.lr, g.weight_decay, g.has_weight_decay) for g in step.groups],
                         [(0.05, 0.1, True), (0.01, 0.2, True)])

    def test_unnamed_parameters_get_positional_names(self):
        self.make(_tiny_model().parameters())
        names = [t.name for t in self.server.requests("Attach")[0].tensors]
        self.assertEqual(names, ["param.0", "param.1", "param.2", "param.3"])

    def test_every_hyperparameter_is_sent_with_each_step(self):
        opt = self.make(_tiny_model().parameters(), lr=0.01)
        opt.step()
        opt.param_groups[0].update(betas=(0.5, 0.99, 0.999), eps=(1e-20, 1e-10),
                                   clip_threshold=2.0, lr=0.02)
        opt.step()
        first, second = (r.groups[0].hyperparameters for r in self.server.requests("Step"))
        self.assertEqual((first.beta1, first.eps1, first.clip_threshold, first.lr),
                         (0.9, 1e-30, 1.0, 0.01))
        self.assertEqual((second.beta1, second.beta2, second.beta3, second.eps1, second.eps2,
                          second.clip_threshold, second.lr, second.weight_decay),
                         (0.5, 0.99, 0.999, 1e-20, 1e-10, 2.0, 0.02, 0.0))

    def test_rankds_invalid_argument_is_a_value_error(self):
        opt = self.make(_tiny_model().parameters())
        self.server.servicer.step_error = (grpc.StatusCode.INVALID_ARGUMENT,
                                           "step 1: parameter group 0: eps must be > 0, got eps1=0")
        with self.assertRaises(came.InvalidArgumentError) as caught:
            opt.step()
        self.assertIsInstance(caught.exception, ValueError)
        self.assertIn("eps must be > 0", caught.exception.details)

    def test_state_dict_without_optimizer_state_is_refused_before_any_call(self):
        opt = self.make(_tiny_model().parameters())
        groups = torch.optim.Optimizer.state_dict(opt)["param_groups"]
        with self.assertRaisesRegex(ValueError, "carries no optimizer state"):
            opt.load_state_dict({"state": {}, "param_groups": groups})
        with self.assertRaisesRegex(ValueError, "no optimizer state for parameter 0 \\(param.0\\)"):
            opt.load_state_dict({"state": {1: {"step": 1}}, "param_groups": groups})
        with self.assertRaisesRegex(ValueError, "parameter 0 \\(param.0, shape \\[3, 4\\]\\) has "
                                                "no tensor 'exp_avg_sq_row'"):
            opt.load_state_dict({"state": {0: {"step": 1, "exp_avg": torch.zeros(3, 4)}},
                                 "param_groups": groups})
        with self.assertRaisesRegex(ValueError, "parameter groups do not match"):
            opt.load_state_dict({"state": {0: {}}, "param_groups": groups + groups})
        self.assertEqual(self.server.requests("ReserveStateBuffer"), [])

    def test_adding_a_group_after_attach_fails(self):
        opt = self.make(_tiny_model().parameters())
        with self.assertRaises(RuntimeError):
            opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})


class DtypeTest(FakeRankdTestCase):
    def test_bfloat16_parameters(self):
        model = _tiny_model(dtype=torch.bfloat16)
        reference = copy.deepcopy(model)
        opt = self.make(model.parameters())
        self.assertEqual(opt.params_buffer.flat.dtype, torch.bfloat16)
        _loss(model, dtype=torch.bfloat16).backward()
        self.assert_in_buffers(opt, model.parameters())
        opt.step()
        _loss(reference, dtype=torch.bfloat16).backward()
        for p, r in zip(model.parameters(), reference.parameters()):
            self.assertEqual(p.dtype, torch.bfloat16)
            expected = (r.float() - LR * r.grad.float()).to(torch.bfloat16)
            torch.testing.assert_close(p.detach(), expected.detach())
        self.assertEqual(self.server.requests("Attach")[0].tensors[0].dtype, 2)  # BFLOAT16

    def test_float16_parameters(self):
        p = nn.Parameter(torch.randn(3, 4).half())
        opt = self.make([p])
        self.assertEqual(opt.grads_buffer.flat.dtype, torch.float16)
        (p * p).sum().backward()  # CPU has no fp16 matmul: elementwise only
        self.assert_in_buffers(opt, [p])
        torch.testing.assert_close(p.grad, 2 * p.detach())
        opt.step()
        self.assertEqual(p.dtype, torch.float16)

    def test_mixed_dtypes_are_a_type_error(self):
        params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))]
        with self.assertRaisesRegex(TypeError, "one dtype"):
            self.make(params)
        self.assertEqual(self.server.requests("Attach"), [])

    def test_float64_is_a_type_error(self):
        with self.assertRaisesRegex(TypeError, "float64"):
            self.make([nn.Parameter(torch.zeros(2, dtype=torch.float64))])


class ServiceTest(FakeRankdTestCase):
    def test_wrong_token_is_unauthenticated(self):
        model = _tiny_model()
        ptrs = [p.data_ptr() for p in model.parameters()]
        with self.assertRaises(CameError) as caught:
            ShardedCAME(model.parameters(), lr=LR, address=self.server.address, token="wrong",
                        timeout=10)
        self.assertIsInstance(caught.exception, RuntimeError)
        self.assertEqual(caught.exception.code, grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(caught.exception.code_name, "UNAUTHENTICATED")
        self.assertIn("UNAUTHENTICATED", str(caught.exception))
        self.assertEqual([p.data_ptr() for p in model.parameters()], ptrs)

    def test_step_errors_surface_with_code_and_message(self):
        opt = self.make(_tiny_model().parameters())
        self.server.servicer.step_error = (grpc.StatusCode.FAILED_PRECONDITION, "rank 1 died")
        with self.assertRaises(CameError) as caught:
            opt.step()
        self.assertEqual(caught.exception.code_name, "FAILED_PRECONDITION")
        self.assertEqual(caught.exception.details, "rank 1 died")
        self.assertEqual(caught.exception.method, "Step")
        opt.step()  # the next step gets a fresh number
        self.assertEqual([r.step for r in self.server.requests("Step")], [1, 2])

    def test_every_call_has_a_token_and_a_deadline(self):
        with self.make(_tiny_model().parameters()) as opt:
            opt.step()
        methods = [m for m, _ in self.server.servicer.deadlines]
        self.assertEqual(methods, ["Attach", "SyncParameters", "Step", "Detach"])
        for method, left in self.server.servicer.deadlines:
            self.assertIsNotNone(left, method)
            self.assertLessEqual(left, 10.5, method)

    def test_address_and_token_come_from_the_launch_environment(self):
        env = {"CAME_RANKD_ADDRESS": self.server.address, "CAME_TOKEN": "secret",
               "CAME_RANK": "0", "CAME_WORLD_SIZE": "1"}
        with mock.patch.dict(os.environ, env):
            with ShardedCAME(_tiny_model().parameters(), lr=LR, timeout=10) as opt:
                self.assertEqual((opt.rank, opt.world_size), (0, 1))
            with self.assertRaises(CameError):  # an argument wins over the environment
                ShardedCAME(_tiny_model().parameters(), lr=LR, token="wrong", timeout=10)

    def test_missing_address_is_a_value_error(self):
        with mock.patch.dict(os.environ, {}, clear=True):
            with self.assertRaisesRegex(ValueError, "CAME_RANKD_ADDRESS"):
                ShardedCAME(_tiny_model().parameters(), lr=LR, token="secret")

    def test_close_detaches_and_leaves_parameters_usable(self):
        model = _tiny_model()
        opt = self.make(model.parameters())
        _loss(model).backward()
        opt.step()
        values = [p.detach().clone() for p in model.parameters()]
        grads = [p.grad.clone() for p in model.parameters()]
        files = [opt.params_buffer.name, opt.grads_buffer.name]
        opt.close()
        opt.close()  # idempotent
        self.assertEqual(len(self.server.requests("Detach")), 1)
        for name in files:
            self.assertFalse(os.path.exists("/dev/shm" + name))
        for p, v, g in zip(model.parameters(), values, grads):
            torch.testing.assert_close(p.detach(), v)
            torch.testing.assert_close(p.grad, g)
        model.zero_grad()  # the model trains on without the service
        _loss(model).backward()
        torch.optim.SGD(model.parameters(), lr=LR).step()
        with self.assertRaisesRegex(RuntimeError, "closed"):
            ShardedCAME.step(opt)


if __name__ == "__main__":
    unittest.main()

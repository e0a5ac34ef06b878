"""came.CAME on CUDA tensors (the CUDA kernels through libcame_capi_cuda.so) against the
authors' came_pytorch.CAME on the same GPU: float64 teacher forcing (Reference) over many steps
with two groups, 1-D/3-D/0-D and bf16 parameters; a non-finite gradient skips the step and
changes nothing; a step captured in a CUDA graph replays like the eager step. Skips visibly
without a CUDA device."""

import unittest

import torch

from came_tests.common import CAME, Case, Model, Reference, assert_unchanged, batch, snapshot

HAS_CUDA = torch.cuda.is_available()


@unittest.skipUnless(HAS_CUDA, "no CUDA device")
class CudaCameTest(Case):
    def model(self, seed=0):
        return Model(seed).cuda()

    def cuda_loss(self, model, step):
        x, y = (t.cuda() for t in batch(step))
        return torch.nn.functional.mse_loss(model(x), y)

    def test_matches_came_pytorch_on_the_same_gpu(self):
        model = self.model()
        opt = CAME(model.groups(), lr=1e-2, weight_decay=0.0)
        ref = Reference(opt)
        for step in range(20):
            opt.zero_grad(set_to_none=True)
            self.cuda_loss(model, step).backward()
            model.unused.grad = None
            ref.step()
            opt.step()
            torch.cuda.synchronize()
            self.assertMatchesReference(opt, ref, "step %d" % (step + 1))

    def test_non_finite_gradient_changes_nothing(self):
        model = self.model(1)
        opt = CAME(model.parameters(), lr=1e-2)
        self.cuda_loss(model, 0).backward()
        opt.step()
        opt.zero_grad()
        self.cuda_loss(model, 1).backward()
        model.fc.weight.grad[2, 3] = float("nan")
        snap = snapshot(opt)
        opt.step()
        torch.cuda.synchronize()
        assert_unchanged(self, opt, snap)

    def test_graph_replay_equals_eager_steps(self):
        eager_model, graph_model = self.model(2), self.model(2)
        eager = CAME(eager_model.parameters(), lr=1e-2)
        graphed = CAME(graph_model.parameters(), lr=1e-2)
        grads = []
        for step in range(6):
            eager_model.zero_grad()
            self.cuda_loss(eager_model, step).backward()
            grads.append([None if p.grad is None else p.grad.clone()
                          for p in eager_model.parameters()])
            eager.step()
        # Gradients live in fixed buffers; the first step is eager (it creates the state and
        # binds the buffers), the graph replays the next ones.
        for p, g in zip(graph_model.parameters(), grads[0]):
            p.grad = None if g is None else g.clone()
        graphed.step()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        for p, g in zip(graph_model.parameters(), grads[1]):
            if g is not None:
                p.grad.copy_(g)
        with torch.cuda.stream(stream):
            with torch.cuda.graph(graph, stream=stream):
                graphed.step()
        torch.cuda.current_stream().wait_stream(stream)
        for k in range(1, 6):
            for p, g in zip(graph_model.parameters(), grads[k]):
                if g is not None:
                    p.grad.copy_(g)
            graph.replay()
        torch.cuda.synchronize()
        for p, q in zip(eager_model.parameters(), graph_model.parameters()):
            self.assertTrue(torch.equal(p, q))


if __name__ == "__main__":
    unittest.main()

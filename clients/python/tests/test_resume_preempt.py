"""ShardedCAME(resume=True) and came.Preempted against a fake rankd whose LoadCheckpoint and
Step answer what came-rankd answers when a job restarts or is preempted."""

import unittest
from concurrent import futures

import grpc
import torch
from torch import nn

import came
from came import CameError, ShardedCAME
from came._proto import rank_pb2, rank_pb2_grpc
from tests.fake_rank_server import FakeRankServicer


class RestartingRankd(FakeRankServicer):
    """load: None (no checkpoint yet: NOT_FOUND), a step (the latest committed checkpoint)
    or a (code, message) error; stop_after: Steps are answered `stopped` after this step."""

    def __init__(self, load=None, stop_after=None):
        super().__init__("secret", 16)
        self.load = load
        self.stop_after = stop_after

    def LoadCheckpoint(self, request, context):
        self._enter("LoadCheckpoint", request, context)
        if self.load is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "the job has no committed checkpoint")
        if isinstance(self.load, tuple):
            context.abort(*self.load)
        with self.lock:
            self._attachment(request.attachment_id, context).last_step = self.load
        return rank_pb2.LoadCheckpointResponse(checkpoint_id="step-%012d" % self.load,
                                               step=self.load, saved_world_size=1)

    def Step(self, request, context):
        if self.stop_after is not None and request.step > self.stop_after:
            self._enter("Step", request, context)
            return rank_pb2.StepResponse(step=self.stop_after, stopped=True)
        return super().Step(request, context)


class ResumePreemptTest(unittest.TestCase):
    def serve(self, servicer):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        rank_pb2_grpc.add_RankServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.addCleanup(servicer.release_all)
        self.addCleanup(server.stop, None)
        return "127.0.0.1:%d" % port

    def make(self, servicer, **kwargs):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
        opt = ShardedCAME(model.named_parameters(), lr=0.1, address=self.serve(servicer),
                          token="secret", timeout=10, **kwargs)
        self.addCleanup(opt.close)
        return model, opt

    def test_resume_without_a_checkpoint_starts_fresh(self):
        servicer = RestartingRankd(load=None)
        _, opt = self.make(servicer, resume=True)
        self.assertEqual(opt.step_count, 0)
        self.assertIsNone(opt.resumed_from)
        self.assertEqual(len([m for m, _ in servicer.requests if m == "LoadCheckpoint"]), 1)

    def test_resume_continues_after_the_latest_checkpoint(self):
        servicer = RestartingRankd(load=40)
        model, opt = self.make(servicer, resume=True)
        self.assertEqual(opt.step_count, 40)
        self.assertEqual(opt.resumed_from.step, 40)
        model(torch.ones(1, 4)).sum().backward()
        opt.step()
        self.assertEqual([r.step for m, r in servicer.requests if m == "Step"], [41])

    def test_resume_without_checkpoints_configured_raises(self):
        servicer = RestartingRankd(load=(grpc.StatusCode.FAILED_PRECONDITION,
                                         "checkpoints are off"))
        with self.assertRaises(CameError) as caught:
            self.make(servicer, resume=True)
        self.assertEqual(caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION)

    def test_no_resume_never_loads(self):
        servicer = RestartingRankd(load=40)
        _, opt = self.make(servicer)
        self.assertEqual(opt.step_count, 0)
        self.assertNotIn("LoadCheckpoint", [m for m, _ in servicer.requests])

    def test_a_stopped_step_raises_preempted_a_clean_system_exit(self):
        servicer = RestartingRankd(stop_after=2)
        model, opt = self.make(servicer)
        for _ in range(2):
            model(torch.ones(1, 4)).sum().backward()
            opt.step()
        before = [p.detach().clone() for p in model.parameters()]
        with self.assertRaises(came.Preempted) as caught:
            opt.step()
        self.assertIsInstance(caught.exception, SystemExit)
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(caught.exception.step, 2)
        self.assertIn("after step 2", str(caught.exception))
        self.assertEqual(opt.step_count, 2)  # the refused step was not taken
        for b, p in zip(before, model.parameters()):
            self.assertTrue(torch.equal(b, p.detach()))


if __name__ == "__main__":
    unittest.main()

"""ShardedCAME and rankd's CUDA IPC buffers (Note [CUDA buffers] in came/optimizer.py).

Against the fake rankd: what the client does with an Attach answer that offers buffers on a
GPU when it cannot use them (CPU parameters, a torch without CUDA, a malformed handle). The
mapping itself needs a GPU and a real came-rankd --device: tests/e2e/gpu_ipc_trainer.py
under came-launch; the GPU case here skips, saying so, without a device.
"""

import unittest

import torch
from torch import nn

from came import ShardedCAME
from came import cuda_ipc
from came._proto import common_pb2, rank_pb2
from tests.fake_rank_server import FakeRankServer

HANDLE = bytes(range(64))


class CudaOfferTest(unittest.TestCase):
    def setUp(self):
        self.server = FakeRankServer(token="secret").start()
        self.addCleanup(self.server.stop)

    def make(self, model):
        return ShardedCAME(model.named_parameters(), lr=0.1, address=self.server.address,
                           token="secret", timeout=10)

    def methods(self):
        return [m for m, _ in self.server.servicer.requests]

    def test_cpu_parameters_and_gpu_buffers_are_refused_and_detached(self):
        self.server.servicer.offer_cuda = (0, HANDLE)
        model = nn.Linear(4, 3)
        before = [p.detach().clone() for p in model.parameters()]
        with self.assertRaisesRegex(ValueError, r"rankd keeps the buffers on cuda:0, but the "
                                    r"parameters are on cpu: move the model to cuda:0"):
            self.make(model)
        self.assertEqual(self.methods(), ["Attach", "Detach"])
        for p, b in zip(model.parameters(), before):  # untouched, in ordinary memory
            self.assertTrue(torch.equal(p.detach(), b))

    def test_parameters_on_two_devices_are_refused_before_attach(self):
        params = [("w", nn.Parameter(torch.zeros(3))),
                  ("b", nn.Parameter(torch.zeros(3, device="meta")))]
        with self.assertRaisesRegex(ValueError, "all parameters must be on one device"):
            ShardedCAME(params, lr=0.1, address=self.server.address, token="secret", timeout=10)
        self.assertEqual(self.methods(), [])


class CheckBufferTest(unittest.TestCase):
    def buffer(self, **kw):
        fields = dict(cuda_ipc_handle=HANDLE, bytes=4096, dtype=common_pb2.DTYPE_FLOAT32,
                      device=0)
        fields.update(kw)
        return rank_pb2.SharedBuffer(**fields)

    def test_a_handle_of_the_wrong_size_is_a_value_error(self):
        with self.assertRaisesRegex(ValueError, "IPC handle of 10 bytes, not 64"):
            cuda_ipc.check_buffer(self.buffer(cuda_ipc_handle=bytes(10)), 16, torch.float32)

    def test_a_handle_without_a_device_is_a_value_error(self):
        with self.assertRaisesRegex(ValueError, "carries a CUDA IPC handle but device -1"):
            cuda_ipc.check_buffer(self.buffer(device=-1), 16, torch.float32)

    def test_a_buffer_too_small_is_a_value_error(self):
        with self.assertRaisesRegex(ValueError, "has 4096 bytes, fewer than 2048 elements"):
            cuda_ipc.check_buffer(self.buffer(), 2048, torch.float32)

    @unittest.skipIf(torch.cuda.is_available(), "a CUDA device is present: the refusal "
                     "cannot be seen")
    def test_no_cuda_in_this_process_is_a_clear_runtime_error(self):
        with self.assertRaisesRegex(RuntimeError, "rankd keeps the buffers on CUDA device 0, "
                                    "but torch sees no CUDA device in this process"):
            cuda_ipc.check_buffer(self.buffer(), 16, torch.float32)

    @unittest.skipIf(torch.cuda.is_available(), "a CUDA device is present: the refusal "
                     "cannot be seen")
    def test_opening_a_handle_without_a_device_is_a_clear_runtime_error(self):
        try:
            cuda_ipc.cudart()
        except RuntimeError as e:
            self.skipTest("no libcudart here: %s" % e)
        # The ctypes bindings themselves: the runtime answers with an error code, no crash.
        with self.assertRaisesRegex(RuntimeError, r"cudaGetDevice: .* \(CUDA error \d+\)"):
            cuda_ipc._Mapping(HANDLE, 0)

    @unittest.skipUnless(torch.cuda.is_available(), "no CUDA device")
    def test_a_device_this_process_does_not_see_is_a_runtime_error(self):
        n = torch.cuda.device_count()
        with self.assertRaisesRegex(RuntimeError, "this process sees %d devices" % n):
            cuda_ipc.check_buffer(self.buffer(device=n), 16, torch.float32)


if __name__ == "__main__":
    unittest.main()

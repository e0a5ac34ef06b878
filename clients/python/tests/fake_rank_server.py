"""A fake came-rankd for the client's tests: one rank, real shared memory, plain SGD.

It serves the came.v1.Rank API on 127.0.0.1 (port 0 by default): Attach creates real POSIX
shm buffers under /dev/shm (unlinked on Detach and on stop()), SyncParameters is a no-op
(one rank), Step applies `p -= lr * wd * p; p -= lr * g` on the buffers so tests can
predict the result, and every call must carry the token. It records every request and the
deadline it came with. Not a model of rankd's numerics: only of its contract.

Run alone (for smoke tests of a trainer): python3 fake_rank_server.py --token T
"""

import argparse
import itertools
import math
import mmap
import os
import signal
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import torch

from came._proto import common_pb2, rank_pb2, rank_pb2_grpc
from came.shm import SHM_DIR

_STORAGE = {common_pb2.DTYPE_FLOAT32: np.float32, common_pb2.DTYPE_BFLOAT16: np.int16,
            common_pb2.DTYPE_FLOAT16: np.float16}
_names = itertools.count()


class _Buffer:
    """A shm object created by the fake, mapped as a flat torch tensor."""

    def __init__(self, kind, dtype, numel):
        self.name = "/came-fake-%d-%d-r0-%s" % (os.getpid(), next(_names), kind)
        self.dtype = dtype
        storage = _STORAGE[dtype]
        self.bytes = max(numel * np.dtype(storage).itemsize, 1)
        self.path = SHM_DIR + self.name
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, self.bytes)
            self._mmap = mmap.mmap(fd, self.bytes)
        finally:
            os.close(fd)
        flat = torch.from_numpy(np.frombuffer(self._mmap, dtype=storage, count=numel))
        self.flat = flat.view(torch.bfloat16) if dtype == common_pb2.DTYPE_BFLOAT16 else flat

    def proto(self):
        return rank_pb2.SharedBuffer(name=self.name, bytes=self.bytes, dtype=self.dtype,
                                     device=-1)

    def release(self):
        self.flat = None
        try:
            self._mmap.close()
        except BufferError:
            pass
        if os.path.exists(self.path):
            os.unlink(self.path)


class _Attachment:
    def __init__(self, request, alignment, world_size):
        self.groups = [g.hyperparameters for g in request.groups]
        self.layouts, offset = [], 0
        for t in request.tensors:
            offset = -(-offset // alignment) * alignment  # tensors start aligned
            numel = math.prod(t.shape)
            self.layouts.append(rank_pb2.TensorLayout(
                name=t.name, offset=offset, numel=numel, first_rank=0, last_rank=0))
            offset += numel
        self.used_size = offset
        self.chunk_size = -(-max(offset, 1) // (alignment * world_size)) * alignment
        self.padded_size = self.chunk_size * world_size
        dtype = request.tensors[0].dtype
        self.params = _Buffer("params", dtype, self.padded_size)
        self.grads = _Buffer("grads", dtype, self.padded_size)
        self.group_of = [t.group for t in request.tensors]
        self.last_step = -1

    def release(self):
        self.params.release()
        self.grads.release()


class FakeRankServicer(rank_pb2_grpc.RankServicer):
    def __init__(self, token, alignment):
        self.token = token
        self.alignment = alignment
        self.lock = threading.Lock()
        self.attachments = {}
        self.requests = []      # (method, request) in arrival order
        self.deadlines = []     # (method, seconds left when the call arrived, or None)
        self.step_error = None  # (grpc.StatusCode, message): the next Step fails with it
        # (device, handle bytes): Attach describes its buffers as CUDA IPC buffers on that
        # device with that handle, as `came-rankd --device N` would (the fake has no GPU
        # memory: only the client's checks of such an answer can be tested with it).
        self.offer_cuda = None
        self._ids = itertools.count(1)

    def _enter(self, method, request, context):
        self.deadlines.append((method, context.time_remaining()))
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != "Bearer " + self.token:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        self.requests.append((method, request))

    def _attachment(self, attachment_id, context):
        a = self.attachments.get(attachment_id)
        if a is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no attachment %r" % attachment_id)
        return a

    def Attach(self, request, context):
        self._enter("Attach", request, context)
        dtypes = {t.dtype for t in request.tensors}
        if not request.tensors or len(dtypes) != 1 or dtypes & {common_pb2.DTYPE_UNSPECIFIED}:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "the manifest needs tensors of one specified dtype")
        if not request.groups or any(t.group >= len(request.groups) for t in request.tensors):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad parameter groups")
        with self.lock:
            a = _Attachment(request, self.alignment, 1)
            attachment_id = "fake-%d" % next(self._ids)
            self.attachments[attachment_id] = a
        return rank_pb2.AttachResponse(
            attachment_id=attachment_id, rank=0, world_size=1, plan_version=1,
            alignment=self.alignment, chunk_size=a.chunk_size, padded_size=a.padded_size,
            used_size=a.used_size, tensors=a.layouts, params=self._offered(a.params),
            grads=self._offered(a.grads), manifest_digest="fake")

    def _offered(self, buffer):
        proto = buffer.proto()
        if self.offer_cuda is not None:
            proto.name = ""
            proto.device, proto.cuda_ipc_handle = self.offer_cuda
        return proto

    def SyncParameters(self, request, context):
        self._enter("SyncParameters", request, context)
        with self.lock:
            a = self._attachment(request.attachment_id, context)
        return rank_pb2.SyncParametersResponse(state_bytes=_state_bytes(a))

    def Step(self, request, context):
        self._enter("Step", request, context)
        with self.lock:
            a = self._attachment(request.attachment_id, context)
            if self.step_error is not None:
                code, message = self.step_error
                self.step_error = None
                context.abort(code, message)
            if request.step <= a.last_step:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "step %d after step %d" %
                              (request.step, a.last_step))
            if len(request.groups) != len(a.groups):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "%d groups, attached %d" %
                              (len(request.groups), len(a.groups)))
            a.last_step = request.step
            start = time.perf_counter()
            g_all = a.grads.flat.float()
            grad_norm = float(g_all.norm())
            skipped = not math.isfinite(grad_norm)
            if not skipped:
                for layout, gi in zip(a.layouts, a.group_of):
                    s = request.groups[gi]
                    wd = s.weight_decay if s.has_weight_decay else a.groups[gi].weight_decay
                    sl = slice(layout.offset, layout.offset + layout.numel)
                    p = a.params.flat[sl].float()
                    p -= s.lr * wd * p
                    p -= s.lr * g_all[sl]
                    a.params.flat[sl] = p.to(a.params.flat.dtype)
            elapsed = time.perf_counter() - start
        return rank_pb2.StepResponse(
            step=request.step, grad_norm=grad_norm, skipped=skipped,
            clip=rank_pb2.ClipSummary(min_scale=1.0, mean_scale=1.0),
            timings=rank_pb2.PhaseTimings(kernels_seconds=elapsed, total_seconds=elapsed),
            state_bytes=_state_bytes(a))

    def Detach(self, request, context):
        self._enter("Detach", request, context)
        with self.lock:
            self._attachment(request.attachment_id, context)
            self.attachments.pop(request.attachment_id).release()
        return rank_pb2.DetachResponse()

    def release_all(self):
        with self.lock:
            for a in self.attachments.values():
                a.release()
            self.attachments.clear()


def _state_bytes(a):
    """SGD keeps no optimizer state."""
    return rank_pb2.OptimizerStateBytes(total=0)


class FakeRankServer:
    """Serves FakeRankServicer on 127.0.0.1:<port>; `address` once started."""

    def __init__(self, token="test-token", port=0, alignment=16):
        self.servicer = FakeRankServicer(token, alignment)
        self.token = token
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        rank_pb2_grpc.add_RankServicer_to_server(self.servicer, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:%d" % port)
        self.address = "127.0.0.1:%d" % self.port

    def start(self):
        self._server.start()
        return self

    def stop(self):
        self._server.stop(None)
        self.servicer.release_all()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def requests(self, method):
        """Returns the requests of one method, in arrival order."""
        return [r for m, r in self.servicer.requests if m == method]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--token", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = FakeRankServer(args.token, args.port).start()
    print("fake rankd listening on %s" % server.address, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop()


if __name__ == "__main__":
    main()

"""ShardedCAME: a torch.optim.Optimizer whose state and math live in came-rankd.

Note [Zero-copy buffers]
On construction the optimizer attaches to the local rankd, maps rankd's flat parameter and
gradient buffers (shared memory) and makes every parameter a view of its slot:
`p.data = params_view` (the nn.Module keeps the same Parameter objects) and
`p.grad = grads_view`. Backward then accumulates straight into the shared gradient buffer:
torch's AccumulateGrad adds in place into an existing .grad when backward runs without
create_graph. Step() asks rankd to reduce-scatter the gradients, run CAME on this rank's
shard and all-gather the parameters into the parameter buffer, so the model sees the
updated values when Step returns. zero_grad() always zeroes the gradient buffer in place.
Before every Step the optimizer re-points a .grad or .data that user code replaced
(copying its values into the buffer), so `p.grad = None` and set_to_none=True are safe.

Note [CUDA buffers]
With `came-rankd --device N` (came-launch --backend nccl) the flat buffers live in GPU N's
memory and reach the trainer as CUDA IPC handles (cuda_ipc.py); the parameters must then be
on cuda:N (N as this process's CUDA_VISIBLE_DEVICES numbers the devices, the same numbering
rankd sees) and become views of the mapped device memory in the same way. Backward's writes
are queued on torch's streams, so step() synchronizes the device before it asks rankd to
step; rankd synchronizes its own stream before it answers, so the updated parameters are in
place when step() returns. close() copies parameters and gradients out and closes the
mapping before it detaches (rankd frees the memory then). Not yet run on a GPU.

Optimizer state (momentum, factored statistics) is held by rankd, sharded across ranks.
state_dict() gathers it from every rank into torch's layout with came-pytorch's names (Note
[State dict layout] in _state.py); load_state_dict() takes such a dict from any world size,
came_pytorch.CAME or came.CAME and reshards it. Every hyperparameter of every group (lr,
betas, eps, clip_threshold, weight_decay) is sent with each step, so any torch scheduler
works; rankd checks the values (kernels/hyper_check.h, the one rule of every entry point) and
refuses a bad one with InvalidArgumentError (a ValueError) naming it. The service's own
checkpoints (save_checkpoint() / load_checkpoint()) also keep the fp32 master copy of
16-bit parameters.
"""

import dataclasses
import warnings
from typing import Dict, Optional

import torch
from torch.optim.optimizer import Optimizer, required

import grpc

from . import _state
from ._proto import common_pb2, rank_pb2
from .errors import CameError, Preempted
from .launch_env import launch_env
from .rank_client import RankClient
from .cuda_ipc import CudaTensorBuffer
from .shm import SharedTensorBuffer, proto_dtype

# Detach from __del__ must not hang interpreter shutdown.
_DEL_DETACH_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class StepStats:
    """What rankd reported for one step (rank.proto StepResponse)."""
    step: int
    grad_norm: float
    skipped: bool
    clip_tensors_clipped: int
    clip_min_scale: float
    clip_mean_scale: float
    timings: Dict[str, float]                    # phase -> seconds
    state_bytes: Optional[Dict[str, int]] = None  # optimizer state on this rank, by kind
    bytes_sent: int = 0                          # collective payload this rank sent
    checkpoint_error: str = ""                   # the step's automatic checkpoint failed: why

    @classmethod
    def from_proto(cls, r):
        return cls(step=r.step, grad_norm=r.grad_norm, skipped=r.skipped,
                   clip_tensors_clipped=r.clip.tensors_clipped,
                   clip_min_scale=r.clip.min_scale, clip_mean_scale=r.clip.mean_scale,
                   timings={f.name[:-len("_seconds")]: getattr(r.timings, f.name)
                            for f in r.timings.DESCRIPTOR.fields},
                   state_bytes=state_bytes_of(r),
                   bytes_sent=r.bytes_sent, checkpoint_error=r.checkpoint_error)


def state_bytes_of(message):
    """Returns message.state_bytes as a dict, or None where the server did not send it."""
    if not message.HasField("state_bytes"):
        return None
    sb = message.state_bytes
    return {f.name: getattr(sb, f.name) for f in sb.DESCRIPTOR.fields}


def _split_named(items, first_index):
    """Returns (names, tensors) of an iterable of tensors or (name, tensor) pairs."""
    if isinstance(items, torch.Tensor):
        items = [items]
    names, tensors = [], []
    for item in items:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            name, tensor = item
        else:
            name, tensor = "param.%d" % (first_index + len(tensors)), item
        names.append(name)
        tensors.append(tensor)
    return names, tensors


def _normalize_groups(params):
    """Returns (torch param groups, names in flat order) for any form torch accepts, plus
    named_parameters() pairs (top level or inside group dicts)."""
    if isinstance(params, torch.Tensor):
        raise TypeError("params argument given to the optimizer should be an iterable of "
                        "Tensors or dicts, but got " + torch.typename(params))
    items = list(params)
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    if not isinstance(items[0], dict):
        items = [{"params": items}]
    groups, names = [], []
    for group in items:
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("a parameter group must be a dict with a 'params' entry")
        group_names, tensors = _split_named(group["params"], len(names))
        names.extend(group_names)
        groups.append(dict(group, params=tensors))
    return groups, names


def _hyperparameters(group):
    """Returns a group's values for rankd, which checks them (Note [Step rounds])."""
    if len(group["betas"]) != 3 or len(group["eps"]) != 2:
        raise ValueError("betas must be three values and eps two, got betas=%r, eps=%r" %
                         (group["betas"], group["eps"]))
    b1, b2, b3 = (float(b) for b in group["betas"])
    e1, e2 = (float(e) for e in group["eps"])
    # Every field is sent explicitly: rankd treats a present field as set.
    return common_pb2.CameHyperparameters(
        lr=group["lr"], eps1=e1, eps2=e2, clip_threshold=group["clip_threshold"],
        beta1=b1, beta2=b2, beta3=b3, weight_decay=group["weight_decay"])


class ShardedCAME(Optimizer):
    """CAME (arXiv:2307.02047) run by the local came-rankd, its state sharded over ranks.

    Args:
      params: model.named_parameters() (names are sent to rankd), an iterable of
        parameters (named "param.<i>"), or a list of torch parameter-group dicts (whose
        "params" may hold (name, parameter) pairs). All parameters share one dtype
        (float32, bfloat16 or float16) and live on the CPU.
      lr, betas=(b1, b2, b3), eps=(e1, e2), clip_threshold, weight_decay: as in
        came-pytorch 0.1.3; a group dict may override any of them. Every one is sent with
        every step (any torch scheduler works, OneCycleLR's momentum cycling included) and
        checked by rankd.
      max_grad_norm: clip by global gradient norm before the step (None: off).
      address, token: the rankd (host:port) and its bearer token; default to
        CAME_RANKD_ADDRESS and CAME_TOKEN, as set by came-launch.
      timeout: deadline in seconds of every call to rankd.
      tls_ca: a PEM CA file: talk TLS to a rankd started with --tls-cert (None: plaintext).
      resume: load the job's latest committed checkpoint right after attaching (the job
        must have a checkpoint folder: came-launch --checkpoint-dir); when none is
        committed yet, start fresh. step_count then says where training continues
        (how jobs restarted by came-launch --max-restarts continue).

    See Note [Zero-copy buffers]. Call close() (or use `with`) to detach; the parameters
    stay usable afterwards, in ordinary memory.
    """

    def __init__(self, params, lr=required, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16),
                 clip_threshold=1.0, weight_decay=0.0, max_grad_norm=None, *,
                 address=None, token=None, timeout=600.0, resume=False, tls_ca=None):
        self._closed = True  # until attached: close() and __del__ have nothing to do
        groups, names = _normalize_groups(params)
        defaults = dict(lr=lr, betas=tuple(betas), eps=tuple(eps),
                        clip_threshold=clip_threshold, weight_decay=weight_decay)
        super().__init__(groups, defaults)
        for group in self.param_groups:
            group["betas"], group["eps"] = tuple(group["betas"]), tuple(group["eps"])
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError("max_grad_norm must be > 0 or None, got %r" % max_grad_norm)
        self.max_grad_norm = max_grad_norm
        self.param_names = names
        self._params = [p for g in self.param_groups for p in g["params"]]
        if len(set(names)) != len(names):
            raise ValueError("parameter names must be unique")
        self._dtype = self._check_params()

        env = launch_env(address=address, token=token)
        self._client = RankClient(env.address, env.token, timeout, tls_ca=tls_ca)
        self._params_buf = self._grads_buf = None
        self._param_views, self._grad_views = [], []
        self._step = 0
        self.last_step_stats = None
        self.resumed_from = None  # the LoadCheckpointResponse when resume found a checkpoint
        try:
            self._attach()
            if resume:
                self._resume()
        except BaseException:
            self._copy_out()
            self._release(raise_errors=False)
            raise

    # -- construction ---------------------------------------------------------------------

    def _check_params(self):
        dtypes = sorted({str(p.dtype) for p in self._params})
        if len(dtypes) != 1:
            raise TypeError("all parameters must share one dtype, got " + ", ".join(dtypes))
        proto_dtype(self._params[0].dtype)  # TypeError for an unsupported dtype
        devices = sorted({str(p.device) for p in self._params})
        if len(devices) != 1:
            raise ValueError("all parameters must be on one device, got " + ", ".join(devices))
        for name, p in zip(self.param_names, self._params):
            if p.device.type not in ("cpu", "cuda"):
                raise ValueError("parameter %s is on %s; came.ShardedCAME shares CPU memory or "
                                 "CUDA memory with rankd" % (name, p.device))
        self._device = self._params[0].device
        return self._params[0].dtype

    def _open_buffer(self, buffer, numel):
        """Maps one of rankd's buffers where the parameters are (Note [CUDA buffers])."""
        on_gpu = buffer.device >= 0 or len(buffer.cuda_ipc_handle) > 0
        if on_gpu:
            want = torch.device("cuda", max(buffer.device, 0))
            if self._device != want:
                raise ValueError(
                    "rankd keeps the buffers on %s, but the parameters are on %s: move the model "
                    "to %s first (os.environ['CAME_DEVICE'] under came-launch), or start "
                    "came-rankd without --device" % (want, self._device, want))
            return CudaTensorBuffer(buffer, numel)
        if self._device.type != "cpu":
            raise ValueError(
                "the parameters are on %s, but rankd keeps the buffers in host shared memory: "
                "start came-rankd with --device %d (came-launch --backend nccl), or keep the "
                "model on the CPU" % (self._device, self._device.index or 0))
        return SharedTensorBuffer(buffer, numel)

    def _attach(self):
        group_of = [i for i, g in enumerate(self.param_groups) for _ in g["params"]]
        dtype = proto_dtype(self._dtype)
        request = rank_pb2.AttachRequest(
            tensors=[rank_pb2.TensorSpec(name=n, shape=list(p.shape), dtype=dtype, group=gi)
                     for n, p, gi in zip(self.param_names, self._params, group_of)],
            groups=[rank_pb2.ParamGroup(hyperparameters=_hyperparameters(g))
                    for g in self.param_groups],
            initial_params_in_buffer=True)
        response = self._client.attach(request)
        self.attachment_id = response.attachment_id
        self._closed = False  # attached: from here on close() detaches
        self.rank, self.world_size = response.rank, response.world_size
        self.attach_response = response
        layouts = self._check_layout(response)
        for buf in (response.params, response.grads):
            if buf.dtype != dtype:
                raise ValueError("rankd's buffer %s has dtype %s, the parameters %s" % (
                    buf.name, common_pb2.DType.Name(buf.dtype), self._dtype))
        self._params_buf = self._open_buffer(response.params, response.padded_size)
        self._grads_buf = self._open_buffer(response.grads, response.padded_size)
        for p, layout in zip(self._params, layouts):
            self._param_views.append(self._params_buf.view(layout.offset, layout.numel, p.shape))
            self._grad_views.append(self._grads_buf.view(layout.offset, layout.numel, p.shape))
        with torch.no_grad():
            self._grads_buf.flat.zero_()
            for p, pv, gv in zip(self._params, self._param_views, self._grad_views):
                pv.copy_(p.data)
                p.data = pv
                p.grad = gv
        self._sync_device()
        self.state_bytes = state_bytes_of(self._client.sync_parameters(self.attachment_id))

    def _resume(self):
        try:
            self.resumed_from = self.load_checkpoint()
        except CameError as e:
            if e.code != grpc.StatusCode.NOT_FOUND:
                raise
            # No committed checkpoint yet: a fresh start.

    def _check_layout(self, response):
        layouts = list(response.tensors)
        if len(layouts) != len(self._params):
            raise ValueError("rankd returned %d tensor layouts for %d parameters" %
                             (len(layouts), len(self._params)))
        for name, p, layout in zip(self.param_names, self._params, layouts):
            if layout.name != name or layout.numel != p.numel():
                raise ValueError("rankd's layout (%s, %d elements) does not match parameter "
                                 "%s (%d elements)" % (layout.name, layout.numel, name, p.numel()))
        return layouts

    # -- torch.optim.Optimizer -------------------------------------------------------------

    def add_param_group(self, param_group):
        if getattr(self, "_params", None) is not None:
            raise RuntimeError("ShardedCAME cannot add parameter groups after Attach; "
                               "create the optimizer with every group")
        super().add_param_group(param_group)

    def zero_grad(self, set_to_none=False):
        """Zeroes the shared gradient buffer in place (set_to_none is accepted, and the
        gradients stay views of the buffer either way)."""
        self._check_open()
        with torch.no_grad():
            self._grads_buf.flat.zero_()
            for p, gv in zip(self._params, self._grad_views):
                if p.grad is None or p.grad.data_ptr() != gv.data_ptr():
                    p.grad = gv

    def step(self, closure=None):
        """Runs one CAME step in rankd; returns the closure's loss (None without one).

        Raises CameError when rankd refuses or fails the step, and came.Preempted (a
        SystemExit with status 0) instead of stepping once the job is stopping."""
        self._check_open()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._claim_buffers()
        self._sync_device()
        self._step += 1  # even if the call fails: step numbers never repeat
        request = rank_pb2.StepRequest(
            attachment_id=self.attachment_id, step=self._step,
            groups=[rank_pb2.GroupStepScalars(lr=g["lr"], weight_decay=g["weight_decay"],
                                              has_weight_decay=True,
                                              hyperparameters=_hyperparameters(g))
                    for g in self.param_groups],
            max_grad_norm=self.max_grad_norm or 0.0)
        response = self._client.step(request)
        if response.stopped:
            self._step = response.step  # not taken: the checkpoint is of the step before
            raise Preempted(response.step)
        self.last_step_stats = StepStats.from_proto(response)
        if response.checkpoint_error:
            # The step was taken; the next automatic checkpoint tries again.
            warnings.warn("came: %s" % response.checkpoint_error, RuntimeWarning, stacklevel=2)
        return loss

    def state_dict(self):
        """Returns torch's state dict: param_groups, and "state" with every parameter's
        optimizer state gathered from all ranks (Note [State dict layout] in _state.py).

        Collective over the ranks, but only the ranks that want the state call it: the
        others take part from their own state_dict() or, if their trainer does not call it
        (e.g. only rank 0 saves), from their next step() (Note [Step rounds] in
        runtime/sharded_came.h)."""
        self._check_open()
        state_dict = super().state_dict()
        exported = self._client.export_state(self.attachment_id)
        state_dict["state"] = _state.read(exported, self.attach_response.tensors, self._params)
        return state_dict

    def load_state_dict(self, state_dict):
        """Loads a state dict of ShardedCAME (any world size), came.CAME or
        came_pytorch.CAME: hyperparameters and the optimizer state of every parameter,
        resharded onto this rank. Every rank's trainer loads the same dict. A dict without
        optimizer state is refused (ValueError), as is one whose entries do not fit the
        parameters; nothing changes then."""
        self._check_open()
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if groups is None or len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(mine["params"])
                for g, mine in zip(groups, self.param_groups)):
            raise ValueError("the state dict's parameter groups do not match this optimizer's "
                             "(%d groups of sizes %s)" % (
                                 len(self.param_groups),
                                 [len(g["params"]) for g in self.param_groups]))
        entries, step = _state.check(state_dict, self._params, self.param_names)
        reserved = self._client.reserve_state_buffer(self.attachment_id)
        _state.write(reserved, self.attach_response.tensors, self._params, entries)
        self._claim_buffers()  # fp16/bf16: rankd's master copy restarts from these values
        self._client.import_state(self.attachment_id, step)
        super().load_state_dict({"state": {}, "param_groups": groups})
        for group in self.param_groups:
            group["betas"], group["eps"] = tuple(group["betas"]), tuple(group["eps"])
        self._step = step

    # -- the service -----------------------------------------------------------------------

    @property
    def params_buffer(self):
        """The mapped parameter buffer (shm.SharedTensorBuffer, or cuda_ipc.CudaTensorBuffer
        for a rankd on a GPU); None once closed."""
        return self._params_buf

    @property
    def grads_buffer(self):
        """The mapped gradient buffer (as params_buffer); None once closed."""
        return self._grads_buf

    @property
    def step_count(self):
        """The number of the last step sent to rankd."""
        return self._step

    def save_checkpoint(self):
        """Writes the optimizer state and parameters through rankd (coordinated with the
        other ranks); returns rank_pb2.SaveCheckpointResponse."""
        self._check_open()
        return self._client.save_checkpoint(self.attachment_id, self._step)

    def load_checkpoint(self, manifest_path=""):
        """Loads a committed checkpoint ("" = the latest) into rankd and the parameter
        buffer; the next step continues from its step number. Returns
        rank_pb2.LoadCheckpointResponse."""
        self._check_open()
        response = self._client.load_checkpoint(self.attachment_id, manifest_path)
        self._step = response.step
        return response

    def close(self):
        """Detaches from rankd. The parameters (and gradients) are copied out of shared
        memory first and stay usable. Idempotent."""
        if self._closed:
            return
        self._copy_out()
        self._release(raise_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if not self._closed:
                self._client.timeout = min(self._client.timeout, _DEL_DETACH_TIMEOUT)
                self.close()
        except Exception:  # interpreter shutdown or rankd gone: nothing left to do
            pass

    # -- internals -------------------------------------------------------------------------

    def _copy_out(self):
        """Moves parameters and gradients that are views of the buffers to ordinary memory."""
        with torch.no_grad():
            for p, pv, gv in zip(self._params, self._param_views, self._grad_views):
                if p.data.data_ptr() == pv.data_ptr():
                    p.data = pv.clone()
                if p.grad is not None and p.grad.data_ptr() == gv.data_ptr():
                    p.grad = gv.clone()

    def _sync_device(self):
        """Waits until the device has run the work queued on the buffers (backward's
        gradients, copies into the views): rankd reads them from another process."""
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def _release(self, raise_errors):
        """Unmaps, detaches (if attached) and closes the channel. Unmapping comes first:
        rankd frees device buffers on Detach, and CUDA IPC wants them closed here before."""
        error = None
        self._param_views, self._grad_views = [], []
        for buf in (self._params_buf, self._grads_buf):
            if buf is not None:
                try:
                    buf.close()
                except Exception as e:  # still detach and close
                    error = error or e
        self._params_buf = self._grads_buf = None
        if not self._closed:
            self._closed = True
            try:
                self._client.detach(self.attachment_id)
            except Exception as e:  # still close the channel
                error = error or e
        self._client.close()
        if error is not None and raise_errors:
            raise error
    def _check_open(self):
        if self._closed:
            raise RuntimeError("ShardedCAME is closed (detached from rankd)")

    def _claim_buffers(self):
        """Re-points parameters and gradients that user code replaced back into the
        shared buffers, copying their values in (None gradients become zeros)."""
        with torch.no_grad():
            for p, pv, gv in zip(self._params, self._param_views, self._grad_views):
                if p.data.data_ptr() != pv.data_ptr():
                    pv.copy_(p.data)
                    p.data = pv
                g = p.grad
                if g is None:
                    gv.zero_()
                    p.grad = gv
                elif g.data_ptr() != gv.data_ptr():
                    gv.copy_(g)
                    p.grad = gv

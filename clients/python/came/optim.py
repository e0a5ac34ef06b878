"""came.CAME: came-pytorch's CAME optimizer on came-runtime's fused kernels, in process."""

import array
import ctypes
import weakref

import torch

from . import _lib

_DTYPES = {torch.float32: _lib.FLOAT32, torch.bfloat16: _lib.BFLOAT16,
           torch.float16: _lib.FLOAT16}

_DEVICE_TYPES = ("cpu", "cuda")
# The fp32 copy of a bfloat16/float16 parameter (came-pytorch keeps none and updates the
# 16-bit parameter directly).
MASTER_KEY = "master_param"

# Note [Masters]
# The kernels update a 16-bit parameter's fp32 master and round it into the parameter. A
# master is only right while nobody else wrote the parameter, so before each step it is
# restarted from the parameter (losing nothing the parameter holds) when
#   * the parameter's version counter or buffer changed since our last step on it (the
#     kernels write through a pointer and bump neither): model.load_state_dict, an in-place
#     copy under no_grad, `p.data = ...`. (`p.data.copy_(...)` bumps no counter and is not
#     seen: write parameters the ordinary way.)
#   * there was no step of ours since the state was loaded (load_state_dict, unpickling) and
#     the master no longer rounds to the parameter: came_pytorch trained it meanwhile, or the
#     model was loaded after the optimizer. One comparison per tensor, once.


def _state_shapes(shape):
    """Returns {state key: shape} of a parameter of this shape (came-pytorch's layout)."""
    shape = tuple(shape)
    if len(shape) >= 2:
        row, col = shape[:-1], shape[:-2] + shape[-1:]
        return {"exp_avg": shape, "exp_avg_sq_row": row, "exp_avg_sq_col": col,
                "exp_avg_res_row": row, "exp_avg_res_col": col}
    return {"exp_avg": shape, "exp_avg_sq": shape}


def _float(group, key, index=None):
    value = group[key] if index is None else group[key][index]
    if isinstance(value, torch.Tensor):
        value = value.item()
    return float(value)


def _hyper(group):
    """Returns a group's hyperparameters in the ABI's order (came_hyper), read now."""
    betas, eps = group["betas"], group["eps"]
    if len(betas) != 3:
        raise ValueError("came.CAME: betas must be 3 values (momentum, second moment, "
                         "residual), got %r" % (tuple(betas),))
    if len(eps) != 2:
        raise ValueError("came.CAME: eps must be 2 values (added to grad^2 and to the "
                         "residual), got %r" % (tuple(eps),))
    return (_float(group, "lr"), _float(group, "betas", 0), _float(group, "betas", 1),
            _float(group, "betas", 2), _float(group, "eps", 0), _float(group, "eps", 1),
            _float(group, "clip_threshold"), _float(group, "weight_decay"))


def _check_state(p, st):
    """Raises ValueError unless a parameter's state tensors are what the kernels write:
    float32, contiguous, on the parameter's device, in came-pytorch's shapes."""
    want = _state_shapes(p.shape)
    if p.dtype != torch.float32:
        want[MASTER_KEY] = tuple(p.shape)
    for key, shape in want.items():
        t = st.get(key)
        if (not isinstance(t, torch.Tensor) or t.dtype != torch.float32
                or t.device != p.device or tuple(t.shape) != shape or not t.is_contiguous()):
            raise ValueError(
                "came.CAME: the state %r of a parameter of shape %s must be a contiguous "
                "float32 tensor of shape %s on %s, got %s (replace state only through "
                "load_state_dict)" % (key, tuple(p.shape), shape, p.device,
                                      "nothing" if t is None else "%s %s %s" % (
                                          getattr(t, "dtype", type(t).__name__),
                                          tuple(getattr(t, "shape", ())),
                                          getattr(t, "device", ""))))


def _refuse(p, g, where):
    """Raises the error that explains why a parameter (`where`) cannot be stepped."""
    if g.is_sparse:
        raise RuntimeError("came.CAME does not support sparse gradients (%s)" % where)
    if p.dtype not in _DTYPES:
        raise ValueError("came.CAME: %s has dtype %s; CAME optimizes float32, bfloat16 and "
                         "float16 tensors" % (where, p.dtype))
    if g.dtype not in _DTYPES:
        raise ValueError("came.CAME: the gradient of %s has dtype %s; need float32, bfloat16 "
                         "or float16" % (where, g.dtype))
    if g.shape != p.shape:
        raise ValueError("came.CAME: the gradient of %s has shape %s, the parameter %s"
                         % (where, tuple(g.shape), tuple(p.shape)))
    if g.device != p.device:
        raise ValueError("came.CAME: the gradient of %s is on %s, the parameter on %s"
                         % (where, g.device, p.device))
    if p.device.type not in _DEVICE_TYPES:
        raise ValueError("came.CAME: %s is on %s; CAME runs on CPU and CUDA tensors"
                         % (where, p.device))
    raise ValueError("came.CAME: %s is not contiguous" % where)


class _Runner:
    """One came_optimizer of the C ABI: a fixed list of tensors on one device."""

    def __init__(self, lib, device_index, key, items, num_threads):
        self.lib = lib
        self.key = key
        descs = []
        for p, g, gi in items:
            d = _lib.TensorDesc()
            d.ndim = p.dim()
            for k, s in enumerate(p.shape):
                d.shape[k] = s
            d.param_dtype = _DTYPES[p.dtype]
            d.grad_dtype = _DTYPES[g.dtype]
            d.group = gi
            descs.append(d)
        self.handle = lib.create(device_index, descs, num_threads)
        # Destroyed with the runner, or at exit before the interpreter tears modules down.
        weakref.finalize(self, lib.lib.came_optimizer_destroy, self.handle)
        self.factored = [p.dim() >= 2 for p, _, _ in items]
        self.state_ptrs = None  # per tensor: the state pointers of the last step

    def step(self, items, states, hyper, stream, want_result):
        """Runs one step over `items` (param, grad, group) with their state dicts."""
        flat = []
        cached = self.state_ptrs
        fresh = []
        for i, ((p, g, _), st) in enumerate(zip(items, states)):
            master = st.get(MASTER_KEY)
            try:
                if self.factored[i]:
                    rest = (0 if master is None else master.data_ptr(), st["exp_avg"].data_ptr(),
                            0, st["exp_avg_sq_row"].data_ptr(), st["exp_avg_sq_col"].data_ptr(),
                            st["exp_avg_res_row"].data_ptr(), st["exp_avg_res_col"].data_ptr())
                else:
                    rest = (0 if master is None else master.data_ptr(), st["exp_avg"].data_ptr(),
                            st["exp_avg_sq"].data_ptr(), 0, 0, 0, 0)
            except (KeyError, AttributeError):
                rest = None
            if rest is None or cached is None or cached[i] != rest:
                _check_state(p, st)  # new or moved state buffers: check them before use
            fresh.append(rest)
            flat.append(p.data_ptr())
            flat.append(g.data_ptr())
            flat.extend(rest)
        ptrs = array.array("q", flat)
        groups = array.array("d", hyper)
        result = _lib.StepResult() if want_result else None
        code = self.lib.lib.came_optimizer_step(
            self.handle, ptrs.buffer_info()[0], groups.buffer_info()[0], len(hyper) // 8,
            stream, None if result is None else ctypes.byref(result))
        if code != _lib.OK:
            self.lib.raise_for(code, "step")
        self.state_ptrs = fresh
        return result

    def last_result(self):
        result = _lib.StepResult()
        code = self.lib.lib.came_optimizer_last_result(self.handle, ctypes.byref(result))
        if code != _lib.OK:
            self.lib.raise_for(code, "last step result")
        return result


class CAME(torch.optim.Optimizer):
    """CAME (Luo et al., ACL 2023) on came-runtime's fused kernels: a drop-in for
    came_pytorch.CAME (0.1.3) with the same arguments, defaults and update.

    Args:
        params: parameters or parameter groups (dicts), as for any torch optimizer; float32,
            bfloat16 or float16 tensors, on the CPU or CUDA devices (mixed freely).
        lr: the learning rate (required, >= 0).
        eps: (eps1, eps2), added to grad^2 and to the squared residual; both > 0.
        clip_threshold: the update's RMS is clipped to this (> 0).
        betas: (momentum, second moment, residual), each in [0, 1).
        weight_decay: decoupled weight decay (p -= lr * weight_decay * p), >= 0.
        num_threads: CPU threads of the fused CPU kernels (default torch.get_num_threads()).

    One step is one call into the kernels per device, for all tensors of all dtypes and groups
    on it: the AVX2/AVX-512 loops on the CPU, the CUDA kernels on torch's current stream of a
    CUDA device (the step is queued; it never synchronizes). Hyperparameters are read from
    the groups at every step, so LR schedulers (OneCycleLR cycling betas[0] too) work.

    The state has came-pytorch's names and layout (exp_avg, exp_avg_sq_row, exp_avg_sq_col,
    exp_avg_res_row, exp_avg_res_col for tensors of 2 or more dims; exp_avg, exp_avg_sq
    otherwise; step), created at a parameter's first step, so state_dict() loads into
    came_pytorch.CAME and back.

    Differences from came_pytorch:
      * the state is float32 whatever the parameter dtype, and a bfloat16/float16 parameter
        gets a float32 master copy (state key "master_param") that the update is applied to,
        then rounded into the parameter; came_pytorch updates 16-bit parameters directly
        (most small updates round away). Loading a state without a master starts it from the
        parameter; one that no longer rounds to the parameter (the parameter was trained or
        loaded elsewhere) is refreshed from it at the next step, and so is one whose parameter
        was written since the last step (model.load_state_dict; Note [Masters]);
      * a step whose gradients (of one device) hold a NaN or an infinity is skipped: the
        parameters and state tensors of that device stay unchanged (came_pytorch would write
        NaNs; the "step" counter still counts the call, as the CUDA step cannot tell without
        waiting); last_step_result() tells;
      * bad input raises before anything changes: a non-float parameter or gradient, a sparse
        gradient, a gradient of another shape or device, a bad hyperparameter (ValueError;
        sparse: RuntimeError as in came_pytorch).
    """

    def __init__(self, params, lr=None, eps=(1e-30, 1e-16), clip_threshold=1.0,
                 betas=(0.9, 0.999, 0.9999), weight_decay=0.0, *, num_threads=None):
        if lr is None:
            raise ValueError("came.CAME: lr is required (came-pytorch has no default either)")
        if num_threads is not None and int(num_threads) < 1:
            raise ValueError("came.CAME: num_threads must be >= 1, got %r" % (num_threads,))
        self._num_threads = None if num_threads is None else int(num_threads)
        self._runners = {}
        self._marks = {}
        defaults = dict(lr=lr, eps=tuple(eps), clip_threshold=clip_threshold,
                        betas=tuple(betas), weight_decay=weight_decay)
        super().__init__(params, defaults)

    def __getstate__(self):
        state = super().__getstate__()
        state["_num_threads"] = self._num_threads
        return state

    def __setstate__(self, state):
        """Restores a pickled or deep-copied optimizer (and load_state_dict's new state): the
        library's optimizers are rebuilt at the next step."""
        super().__setstate__(state)
        self.__dict__.setdefault("_num_threads", None)
        self._runners = {}
        self._marks = {}

    @property
    def supports_memory_efficient_fp16(self):
        return True

    @property
    def supports_flat_params(self):
        return False

    def add_param_group(self, param_group):
        """Adds a group (torch.optim.Optimizer.add_param_group) after checking its
        hyperparameters and parameter dtypes; a refused group is not added."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            problem = _lib.load().check_hyper(_hyper(group))
            if problem:
                raise ValueError("came.CAME: parameter group %d: %s"
                                 % (len(self.param_groups) - 1, problem))
            for i, p in enumerate(group["params"]):
                if p.dtype not in _DTYPES:
                    raise ValueError(
                        "came.CAME: parameter %d of group %d has dtype %s; CAME optimizes "
                        "float32, bfloat16 and float16 tensors"
                        % (i, len(self.param_groups) - 1, p.dtype))
        except BaseException:
            self.param_groups.pop()
            raise

    # ---------------------------------------------------------------------------------------
    # Stepping

    def _collect(self):
        """Returns ({device: [(param, grad, group index)]}, hyper) of this step after
        checking every parameter and group; raises before anything changes."""
        per_device = {}
        hypers = []
        lib = _lib.load()
        for gi, group in enumerate(self.param_groups):
            h = _hyper(group)
            problem = lib.check_hyper(h)
            if problem:
                raise ValueError("came.CAME: parameter group %d: %s" % (gi, problem))
            hypers.extend(h)
            for i, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                device = p.device
                if (g.is_sparse or p.dtype not in _DTYPES or g.dtype not in _DTYPES
                        or g.shape != p.shape or g.device != device
                        or device.type not in _DEVICE_TYPES or not p.is_contiguous()):
                    _refuse(p, g, "parameter %d of group %d" % (i, gi))
                if not g.is_contiguous():
                    g = g.contiguous()
                items = per_device.get(device)
                if items is None:
                    items = per_device[device] = []
                items.append((p, g, gi))
        return per_device, hypers

    def _init_state(self, p):
        """Creates a parameter's state at its first step (came-pytorch's names and shapes)."""
        st = self.state[p]
        st["step"] = 0
        for key, shape in _state_shapes(p.shape).items():
            st[key] = torch.zeros(shape, dtype=torch.float32, device=p.device)
        if p.dtype != torch.float32:
            st[MASTER_KEY] = p.detach().float().contiguous()

    def _runner(self, device, items):
        key = [(id(p), p.shape, p.dtype, g.dtype, gi) for p, g, gi in items]
        runner = self._runners.get(device)
        if runner is None or runner.key != key:
            self._runners.pop(device, None)
            if device.type == "cuda":
                lib = _lib.load(cuda=True)
                index = device.index if device.index is not None else torch.cuda.current_device()
                threads = 0
            else:
                lib = _lib.load()
                index = -1
                threads = self._num_threads or torch.get_num_threads()
            runner = _Runner(lib, index, key, items, threads)
            self._runners[device] = runner
        return runner

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step; `closure` re-evaluates the model and returns the
        loss (it runs with gradients enabled)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        per_device, hyper = self._collect()
        created = []  # what this device's step created: parameters, or states given a master
        stepped = []  # the states of the devices that stepped
        try:
            for device, items in per_device.items():
                created = []
                states = []
                for p, _, _ in items:
                    st = self.state[p]
                    if "exp_avg" not in st:
                        self._init_state(p)
                        created.append(p)
                    elif p.dtype != torch.float32:
                        if MASTER_KEY not in st:
                            st[MASTER_KEY] = p.detach().float().contiguous()  # a loaded state
                            created.append(st)
                        else:
                            self._sync_master(p, st[MASTER_KEY])
                    states.append(st)
                runner = self._runner(device, items)
                stream = None
                if device.type == "cuda":
                    stream = torch.cuda.current_stream(device).cuda_stream
                runner.step(items, states, hyper, stream, want_result=device.type == "cpu")
                stepped.append(states)
                for p, _, _ in items:
                    if p.dtype != torch.float32:
                        self._marks[p] = (p._version, p.data_ptr())
        except BaseException:
            for c in created:  # the failed device's new state; stepped devices keep theirs
                if isinstance(c, dict):
                    c.pop(MASTER_KEY, None)
                else:
                    self.state.pop(c, None)
            raise
        finally:
            for states in stepped:
                for st in states:
                    st["step"] += 1
        return loss

    def _sync_master(self, p, master):
        """Restarts a 16-bit parameter's fp32 master from the parameter when the parameter was
        written since this optimizer's last step on it: its version counter or buffer moved
        (model.load_state_dict, an in-place copy, p.data = ...), or, with no step of ours
        since the state was loaded, the master no longer rounds to it (Note [Masters])."""
        mark = self._marks.get(p)
        if mark is None:
            if not torch.equal(master.to(p.dtype), p.detach()):
                master.copy_(p.detach())
        elif mark != (p._version, p.data_ptr()):
            master.copy_(p.detach())

    def last_step_result(self):
        """Returns {device: (skipped, grad_norm)} of the last step on each device: skipped is
        True when a non-finite gradient made the kernels skip it. Waits for CUDA work."""
        out = {}
        for device, runner in self._runners.items():
            r = runner.last_result()
            out[device] = (bool(r.skipped), float(r.grad_norm))
        return out

    # ---------------------------------------------------------------------------------------
    # Checkpoints

    def load_state_dict(self, state_dict):
        """Loads a state_dict of came.CAME or came_pytorch.CAME. The state stays float32 (torch
        would cast it to a 16-bit parameter's dtype); a missing master starts from its
        parameter at the next step. A state that does not fit the parameters raises before
        anything changes."""
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        imported = {}
        if len(saved_groups) == len(self.param_groups):
            for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
                if len(saved["params"]) != len(group["params"]):
                    break  # torch's own check below names the mismatch
                for pid, p in zip(saved["params"], group["params"]):
                    if pid in saved_state:
                        imported[p] = self._import_state(p, saved_state[pid], gi)
        super().load_state_dict(state_dict)
        for p in [p for g in self.param_groups for p in g["params"]]:
            self.state.pop(p, None)
            if p in imported:
                self.state[p] = imported[p]

    @staticmethod
    def _import_state(p, saved, gi):
        """Returns a parameter's state from a saved one: float32 copies on the parameter's
        device, checked against came-pytorch's layout."""
        where = "came.CAME.load_state_dict: parameter of shape %s in group %d" % (
            tuple(p.shape), gi)
        st = {}
        for key, shape in _state_shapes(p.shape).items():
            value = saved.get(key)
            if not isinstance(value, torch.Tensor):
                raise ValueError("%s: the state has no tensor %r (is it a CAME state?)"
                                 % (where, key))
            if tuple(value.shape) != shape:
                raise ValueError("%s: state %r has shape %s, expected %s"
                                 % (where, key, tuple(value.shape), shape))
            st[key] = value.detach().to(device=p.device, dtype=torch.float32,
                                        copy=True).contiguous()
        master = saved.get(MASTER_KEY)
        if master is not None and p.dtype != torch.float32:
            if tuple(master.shape) != tuple(p.shape):
                raise ValueError("%s: state %r has shape %s" % (where, MASTER_KEY,
                                                                 tuple(master.shape)))
            st[MASTER_KEY] = master.detach().to(device=p.device, dtype=torch.float32,
                                                copy=True).contiguous()
        step = saved.get("step", 0)
        st["step"] = int(step.item() if isinstance(step, torch.Tensor) else step)
        return st

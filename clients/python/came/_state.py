"""ShardedCAME's optimizer state in torch's layout, with came-pytorch 0.1.3's names.

Note [State dict layout]
Per parameter index (torch's state_dict numbering): "step" (an int), "exp_avg" (the
parameter's shape) and, for a tensor of 2 or more dims (factored), "exp_avg_sq_row"
(shape[:-1]), "exp_avg_sq_col" (shape[:-2] + shape[-1:]), "exp_avg_res_row" and
"exp_avg_res_col" (the same shapes), else "exp_avg_sq" (the parameter's shape); all float32
on the CPU. That is what came_pytorch.CAME and came.CAME keep, so a state dict moves between
the three (came-pytorch's unused "RMS" entry is ignored on load and not written). rankd
moves the whole state through a float32 shared buffer laid out as rank.proto's StateBuffer
says; this module converts between that buffer and the dict.
"""

import math

import torch

from .shm import SharedTensorBuffer

FACTORED_KEYS = ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row", "exp_avg_res_col")


def _shapes(shape):
    """Returns the shapes of the state entries of a parameter of `shape`, in buffer order."""
    shape = tuple(shape)
    if len(shape) < 2:
        return {"exp_avg": shape, "exp_avg_sq": shape}
    row, col = shape[:-1], shape[:-2] + shape[-1:]
    return {"exp_avg": shape, "exp_avg_sq_row": row, "exp_avg_sq_col": col,
            "exp_avg_res_row": row, "exp_avg_res_col": col}


def _views(flat, buffer, layout, shape):
    """Returns {key: view of `flat`} for one tensor (rank.proto StateBuffer)."""
    shapes = _shapes(shape)
    n = layout.numel
    views = {"exp_avg": flat[buffer.exp_avg_offset + layout.offset:][:n].view(shapes["exp_avg"])}
    factored = buffer.factored_offsets[layout.index]
    if factored < 0:
        views["exp_avg_sq"] = flat[buffer.exp_avg_sq_offset + layout.offset:][:n].view(
            shapes["exp_avg_sq"])
        return views
    at = factored
    for key in FACTORED_KEYS:
        count = math.prod(shapes[key])
        views[key] = flat[at:at + count].view(shapes[key])
        at += count
    return views


class _Layout:
    def __init__(self, index, tensor_layout):
        self.index = index
        self.offset = tensor_layout.offset
        self.numel = tensor_layout.numel


def _mapped(buffer):
    return SharedTensorBuffer(buffer.buffer, buffer.numel)


def read(buffer, tensor_layouts, params):
    """Returns torch's "state" dict {index: {...}} from an exported StateBuffer."""
    mapped = _mapped(buffer)
    try:
        state = {}
        for i, (layout, p) in enumerate(zip(tensor_layouts, params)):
            views = _views(mapped.flat, buffer, _Layout(i, layout), p.shape)
            entry = {"step": int(buffer.step)}
            entry.update((k, v.clone()) for k, v in views.items())
            state[i] = entry
        return state
    finally:
        mapped.close()


def write(buffer, tensor_layouts, params, entries):
    """Fills a reserved StateBuffer with `entries` (one dict per parameter, as check returns)."""
    mapped = _mapped(buffer)
    try:
        for i, (layout, p, entry) in enumerate(zip(tensor_layouts, params, entries)):
            for key, view in _views(mapped.flat, buffer, _Layout(i, layout), p.shape).items():
                view.copy_(entry[key])
    finally:
        mapped.close()


def check(state_dict, params, names):
    """Returns (entries, step) of a torch optimizer state dict for `params`: one dict of
    float32 CPU tensors per parameter, and the largest step. Raises ValueError naming the
    parameter and entry when something is missing or has the wrong shape, and when the dict
    carries no optimizer state at all."""
    if not isinstance(state_dict, dict) or "param_groups" not in state_dict:
        raise ValueError("not an optimizer state dict (no 'param_groups')")
    state = state_dict.get("state")
    if not state:
        raise ValueError(
            "the state dict carries no optimizer state (its 'state' is empty), so loading it "
            "would silently restart CAME's momentum and statistics: save it with "
            "state_dict() of ShardedCAME, came.CAME or came_pytorch.CAME after at least one "
            "step")
    entries, steps = [], []
    for i, (name, p) in enumerate(zip(names, params)):
        entry = state.get(i)
        if entry is None:
            raise ValueError("the state dict has no optimizer state for parameter %d (%s)"
                             % (i, name))
        out = {}
        for key, shape in _shapes(p.shape).items():
            value = entry.get(key)
            if not isinstance(value, torch.Tensor):
                raise ValueError("the state of parameter %d (%s, shape %s) has no tensor %r"
                                 % (i, name, list(p.shape), key))
            if tuple(value.shape) != shape:
                raise ValueError("the state of parameter %d (%s): %s has shape %s, expected %s"
                                 % (i, name, key, list(value.shape), list(shape)))
            out[key] = value.detach().to("cpu", torch.float32)
        step = entry.get("step", 0)
        steps.append(int(step.item() if isinstance(step, torch.Tensor) else step))
        entries.append(out)
    return entries, max(steps)

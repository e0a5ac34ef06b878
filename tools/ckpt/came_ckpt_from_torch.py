#!/usr/bin/python3
"""Writes a torch model state dict and a came-pytorch optimizer state dict (torch.save files) as
one safetensors file in came-ckpt's export layout, for `came-ckpt import`:

    came_ckpt_from_torch.py model.pt optimizer.pt --out state.safetensors
    came-ckpt import state.safetensors --world 4 --out ckpt/step-000000000100

The optimizer's parameters (its param_groups' "params", in order) are matched, in order, with
the model state dict's entries; --exclude names the entries that are not parameters
(buffers such as BatchNorm running statistics). Names are the model's; each parameter's state
is stored as <name>.exp_avg, <name>.exp_avg_sq or <name>.exp_avg_{sq,res}_{row,col}
(came-pytorch 0.1.3's names; Note [Export names] in tools/ckpt/full_state.h), all float32.
A parameter without state (never stepped) gets zero state.
"""

import argparse
import json
import struct
import sys

import torch


def _state_kinds(shape):
    if len(shape) >= 2:
        return ["exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row", "exp_avg_res_col"]
    return ["exp_avg", "exp_avg_sq"]


def _zeros(shape, kind):
    if kind.endswith("_row"):
        return torch.zeros(shape[:-1])
    if kind.endswith("_col"):
        return torch.zeros(shape[:-2] + shape[-1:])
    return torch.zeros(shape)


def convert(model_sd, optim_sd, exclude=()):
    names = [n for n in model_sd if n not in set(exclude)]
    indices = [i for g in optim_sd["param_groups"] for i in g["params"]]
    if len(names) != len(indices):
        raise ValueError("the model state dict has %d entries (after --exclude) but the optimizer "
                         "has %d parameters: name the buffers with --exclude" % (len(names), len(indices)))
    tensors, step = [], 0
    for name, index in zip(names, indices):
        param = model_sd[name].detach().to(torch.float32)
        shape = list(param.shape)
        state = optim_sd["state"].get(index, {})
        step = max(step, int(state.get("step", 0)))
        tensors.append((name, param))
        for kind in _state_kinds(shape):
            value = state.get(kind)
            value = _zeros(shape, kind) if value is None else value.detach().to(torch.float32)
            if value.numel() != _zeros(shape, kind).numel():
                raise ValueError("%s: state %s has %d values; a parameter of shape %s needs %d"
                                 % (name, kind, value.numel(), shape, _zeros(shape, kind).numel()))
            tensors.append((name + "." + kind, value))
    return tensors, step


def write_safetensors(path, tensors, step):
    header, offset, blobs = {}, 0, []
    for name, t in tensors:
        data = t.contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"format": "came-export", "step": str(step)}
    text = json.dumps(header).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="torch.save(model.state_dict()) file")
    p.add_argument("optimizer", help="torch.save(came_pytorch.CAME.state_dict()) file")
    p.add_argument("--out", required=True, help="the safetensors file to write")
    p.add_argument("--exclude", action="append", default=[], help="a model entry that is no parameter")
    a = p.parse_args(argv)
    try:
        tensors, step = convert(torch.load(a.model), torch.load(a.optimizer), a.exclude)
    except (ValueError, KeyError, OSError) as e:
        print("came_ckpt_from_torch: %s" % e, file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    write_safetensors(a.out, tensors, step)
    print("wrote %s (step %d, %d tensors)" % (a.out, step, len(tensors)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

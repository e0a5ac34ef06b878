#!/usr/bin/env python3
"""What the Python binding of the fused kernels costs, and what it buys, on GPT-2 small.

In one run, on the same float32 parameters and gradients (GPT-2 small's 148 tensors,
124,439,808 parameters, the shapes of bench/gpt2_model.h), it times one optimizer step of:
  abi          came_optimizer_step called through ctypes with pointer and hyperparameter
               arrays built once: the C++ step (the call itself costs microseconds);
  came.CAME    came.CAME.step(): the binding as users call it (reads the groups, checks every
               parameter, builds the arrays, one call);
  came_pytorch came_pytorch.CAME.step() (0.1.3), the authors' unfused loop;
  adamw        torch.optim.AdamW(foreach=True).step(), the usual baseline;
the last three in rounds (rotating order), the speedups being medians of per-round ratios.
abi and came.CAME steps run in pairs, in alternating order, so machine noise hits both alike.
The binding overhead is the time came.CAME.step() spends outside the library call (timed
around that call in the same steps) over the abi step; the ratios of the step times (of the
medians, and the median of the paired ratios) are printed too, but on a loaded machine their
noise is far above the overhead. Every figure is a median of --repeats steps after --warmup.

  PYTHONPATH=clients/python:build/python:build/pydeps /usr/bin/python3 \\
      bench/python_came_bench.py --threads 2            # or --device cuda
On CUDA every step is timed to completion (synchronize, step, synchronize); the binding
overhead is still the host's time in came.CAME.step() outside the library call, which
queues the step and returns.
"""

import argparse
import array
import datetime
import os
import platform
import statistics
import sys
import time
import weakref

import torch

from came import CAME, _lib


def gpt2_shapes(vocab=50257, context=1024, d=768, blocks=12):
    """Returns GPT-2's parameter shapes in state_dict order (bench/gpt2_model.h)."""
    shapes = [(vocab, d), (context, d)]
    for _ in range(blocks):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d),
                   (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


class RawAbi:
    """The C++ step through the C ABI with everything prepared once."""

    def __init__(self, params, threads, lr, device):
        cuda = device.type == "cuda"
        self.lib = _lib.load(cuda=cuda)
        self.stream = torch.cuda.current_stream(device).cuda_stream if cuda else None
        descs, flat = [], []
        self.state = []
        for p in params:
            d = _lib.TensorDesc()
            d.ndim = p.dim()
            for k, s in enumerate(p.shape):
                d.shape[k] = s
            d.param_dtype = d.grad_dtype = _lib.FLOAT32
            descs.append(d)
            st = {"exp_avg": torch.zeros_like(p)}
            if p.dim() >= 2:
                row, col = p.shape[:-1], p.shape[:-2] + p.shape[-1:]
                st.update(sq_row=torch.zeros(row, device=device),
                          sq_col=torch.zeros(col, device=device),
                          res_row=torch.zeros(row, device=device),
                          res_col=torch.zeros(col, device=device))
                rest = [0, st["exp_avg"].data_ptr(), 0] + [
                    st[k].data_ptr() for k in ("sq_row", "sq_col", "res_row", "res_col")]
            else:
                st["sq"] = torch.zeros_like(p)
                rest = [0, st["exp_avg"].data_ptr(), st["sq"].data_ptr(), 0, 0, 0, 0]
            self.state.append(st)
            flat += [p.data_ptr(), p.grad.data_ptr()] + rest
        self.handle = self.lib.create(device.index if cuda else -1, descs, threads)
        weakref.finalize(self, self.lib.lib.came_optimizer_destroy, self.handle)
        self.ptrs = array.array("q", flat)
        self.hyper = array.array("d", [lr, 0.9, 0.999, 0.9999, 1e-30, 1e-16, 1.0, 0.0])
        self.call = self.lib.lib.came_optimizer_step
        self.ptrs_addr = self.ptrs.buffer_info()[0]
        self.hyper_addr = self.hyper.buffer_info()[0]

    def step(self):
        code = self.call(self.handle, self.ptrs_addr, self.hyper_addr, 1, self.stream, None)
        if code != _lib.OK:
            self.lib.raise_for(code, "step")


class TimedCalls:
    """Wraps a Library's came_optimizer_step to add up the time spent inside it."""

    def __init__(self, lib):
        self.inner = lib.lib.came_optimizer_step
        self.seconds = 0.0

    def __call__(self, *args):
        t0 = time.perf_counter()
        code = self.inner(*args)
        self.seconds += time.perf_counter() - t0
        return code


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--baseline-repeats", type=int, default=5,
                    help="rounds of came.CAME, came_pytorch and AdamW steps (slow)")
    ap.add_argument("--blocks", type=int, default=12, help="transformer blocks (12: GPT-2 small)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:N] (steps are then timed "
                    "to completion: synchronize, step, synchronize)")
    args = ap.parse_args()
    if args.threads < 1 or args.repeats < 1 or args.baseline_repeats < 1:
        print("python_came_bench: --threads and the repeats must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        import came_pytorch
    except ImportError:
        print("python_came_bench: came_pytorch is missing: source scripts/lib/pydeps.sh && "
              "came_pydeps came-pytorch==0.1.3, with build/pydeps on PYTHONPATH",
              file=sys.stderr)
        return 2

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("python_came_bench: --device %s but no CUDA device is present" % args.device,
                  file=sys.stderr)
            return 2
        device = torch.device("cuda", device.index if device.index is not None
                              else torch.cuda.current_device())
    elif device.type != "cpu":
        print("python_came_bench: --device must be cpu or cuda[:N], got %s" % args.device,
              file=sys.stderr)
        return 2
    cuda = device.type == "cuda"

    def clock(f):
        """Returns the seconds f() takes; on CUDA until its work on the device is done."""
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        f()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    lr = 1e-4
    gen = torch.Generator().manual_seed(0)
    shapes = gpt2_shapes(blocks=args.blocks)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device))
        p.grad = (torch.randn(s, generator=gen) * 1e-3).to(device)
        params.append(p)
    numel = sum(p.numel() for p in params)
    lib = _lib.load(cuda=cuda)
    print("python_came_bench: %d tensors, %d parameters, %s, %d threads, %s" % (
        len(params), numel, device, args.threads,
        datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")))
    print("  host %s, %s, torch %s, load average %s" % (
        platform.node(), lib.build_info, torch.__version__,
        " ".join("%.2f" % x for x in os.getloadavg())))

    raw = RawAbi(params, args.threads, lr, device)
    opt = CAME(params, lr=lr, num_threads=args.threads)
    opt.step()  # creates the state and the library's optimizer
    timed = TimedCalls(lib)
    lib.lib.came_optimizer_step = timed

    for _ in range(args.warmup):
        raw.step()
        opt.step()
    raw_times, came_times, outside = [], [], []
    for k in range(args.repeats):
        # Pairs in alternating order, so drift in the machine's load favours neither.
        for which in ((0, 1) if k % 2 == 0 else (1, 0)):
            if which == 0:
                raw_times.append(clock(raw.step))
            else:
                # The host's time in step() (t1 - t0) less the library call's is the binding.
                inside_before = timed.seconds
                if cuda:
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                opt.step()
                t1 = time.perf_counter()
                if cuda:
                    torch.cuda.synchronize(device)
                came_times.append(time.perf_counter() - t0)
                outside.append((t1 - t0) - (timed.seconds - inside_before))
    lib.lib.came_optimizer_step = timed.inner
    t_raw = statistics.median(raw_times)
    t_came = statistics.median(came_times)
    t_out = statistics.median(outside)
    pair_ratio = statistics.median(c / r for c, r in zip(came_times, raw_times))
    del raw

    # The baselines, in rounds of (came.CAME, came_pytorch, AdamW) in rotating order; a
    # speedup is the median over rounds of the baseline's step over came.CAME's in that round.
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(ref_params, params):
        p.grad = q.grad
    reference = came_pytorch.CAME(ref_params, lr=lr)
    adamw = torch.optim.AdamW(ref_params, lr=lr, foreach=True)
    contenders = [("came.CAME", opt.step), ("came_pytorch", reference.step),
                  ("adamw", adamw.step)]
    for _, f in contenders:  # warm-up: creates the baselines' state
        f()
    rounds = {name: [] for name, _ in contenders}
    for k in range(args.baseline_repeats):
        for name, f in contenders[k % 3:] + contenders[:k % 3]:
            rounds[name].append(clock(f))
    speedup = {name: statistics.median(b / c for b, c in zip(rounds[name], rounds["came.CAME"]))
               for name in ("came_pytorch", "adamw")}

    print("  %-14s %9.2f ms  (median of %d)" % ("abi", t_raw * 1e3, args.repeats))
    print("  %-14s %9.2f ms  (median of %d, paired with abi)" % ("came.CAME", t_came * 1e3,
                                                                  args.repeats))
    for name, label in (("came.CAME", "came.CAME"), ("came_pytorch", "came_pytorch"),
                        ("adamw", "adamw_foreach")):
        print("  %-14s %9.2f ms  (median of %d rounds)" % (
            label, statistics.median(rounds[name]) * 1e3, args.baseline_repeats))
    print("  binding overhead: outside the library call %.3f ms = %.3f%% of the abi step; "
          "came.CAME / abi: %.3f (medians), %.3f (median of paired steps)"
          % (t_out * 1e3, 100 * t_out / t_raw, t_came / t_raw, pair_ratio))
    print("  speedup of came.CAME (median over rounds): %.2fx over came_pytorch, %.2fx over "
          "AdamW(foreach)" % (speedup["came_pytorch"], speedup["adamw"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

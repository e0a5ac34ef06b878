#!/usr/bin/env python3
"""One optimizer step on the GPU through PyTorch, on GPT-2 XL's real parameter shapes.

In one run, on the same parameters and gradients (GPT-2 XL: 48 layers, width 1600, vocab
50257, context 1024; 582 tensors, 1,557,611,200 parameters; --model small for GPT-2 small),
it times one step of
  came.CAME            the fused CUDA kernels through the C ABI (libcame_capi_cuda.so);
  came_pytorch         came_pytorch.CAME 0.1.3, the authors' unfused loop;
  adamw_fused          torch.optim.AdamW(fused=True), torch's fused kernel, the speed to match;
with CUDA events around each step (the median of --repeats after --warmup), for float32 and
bfloat16 parameters, and prints the ratios: came_pytorch / came.CAME (target >= 10) and
came.CAME / adamw_fused (target <= 1). Gradients are random normals, never zeros. The
device-to-device copy bandwidth of this run is printed too (torch's copy_, bytes read plus
written), with came.CAME's step against it for 20 B/param.

  PYTHONPATH=clients/python:<came_pytorch folder> python3 bench/torch_gpu_bench.py --json OUT
"""

import argparse
import json
import statistics
import sys

import torch


def gpt2_shapes(vocab=50257, context=1024, d=768, blocks=12):
    """Returns GPT-2's parameter shapes in state_dict order (bench/gpt2_model.h)."""
    shapes = [(vocab, d), (context, d)]
    for _ in range(blocks):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d),
                   (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def event_median_ms(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_bandwidth():
    """Bytes read plus written per second of a 4 GiB device-to-device copy_."""
    n = 1 << 30
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = event_median_ms(lambda: dst.copy_(src), 3, 10)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 4 * n / (ms * 1e-3)


def make_params(shapes, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(s, device="cuda", generator=g) * 0.02).to(dtype))
        p.grad = (torch.randn(s, device="cuda", generator=g) * 1e-2).to(dtype)
        params.append(p)
    return params


def time_optimizer(name, shapes, dtype, warmup, repeats):
    params = make_params(shapes, dtype, 1)
    if name == "came.CAME":
        from came import CAME
        opt = CAME(params, lr=1e-4)
    elif name == "came_pytorch":
        import came_pytorch
        opt = came_pytorch.CAME(params, lr=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ms = event_median_ms(opt.step, warmup, repeats)
    finite = all(torch.isfinite(p).all().item() for p in params[:4])
    del opt, params
    torch.cuda.empty_cache()
    return ms, finite


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("xl", "small"), default="xl")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_gpu_bench: no CUDA device is present", file=sys.stderr)
        return 2
    shapes = gpt2_shapes(d=1600, blocks=48) if args.model == "xl" else gpt2_shapes()
    numel = sum(torch.Size(s).numel() for s in shapes)
    bw = copy_bandwidth()
    out = {"model": "gpt2_" + args.model, "params": numel, "copy_bytes_per_s": bw,
           "device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    for dtype in (torch.float32, torch.bfloat16):
        row = {"dtype": str(dtype).replace("torch.", "")}
        for name in ("came.CAME", "adamw_fused", "came_pytorch"):
            # The unfused reference is slow: fewer repeats.
            reps = max(3, args.repeats // 3) if name == "came_pytorch" else args.repeats
            ms, finite = time_optimizer(name, shapes, dtype, args.warmup, reps)
            row[name + "_ms"] = ms
            row[name + "_finite"] = finite
            print("%-8s %-13s %9.3f ms%s" % (row["dtype"], name, ms,
                                             "" if finite else "  NON-FINITE"), flush=True)
        row["came_pytorch_over_came"] = row["came_pytorch_ms"] / row["came.CAME_ms"]
        row["came_over_adamw_fused"] = row["came.CAME_ms"] / row["adamw_fused_ms"]
        row["came_min_frac_of_copy"] = 20.0 * numel / (row["came.CAME_ms"] * 1e-3) / bw
        out["rows"].append(row)
    print("\n%s, %d parameters, copy %.0f GB/s (read + write)" % (out["model"], numel, bw / 1e9))
    print("%-9s %12s %12s %14s %16s %14s %10s" % ("dtype", "came.CAME ms", "adamw ms",
                                                 "came_pytorch ms", "came_pytorch/came",
                                                 "came/adamw", "20B frac"))
    for r in out["rows"]:
        print("%-9s %12.3f %12.3f %14.3f %16.1f %14.2f %10.2f" % (
            r["dtype"], r["came.CAME_ms"], r["adamw_fused_ms"], r["came_pytorch_ms"],
            r["came_pytorch_over_came"], r["came_over_adamw_fused"], r["came_min_frac_of_copy"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

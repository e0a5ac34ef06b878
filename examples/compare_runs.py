#!/usr/bin/python3
"""Compares a CAME run and an AdamW run of examples/train_gpt.py: a table and a plot.

    /usr/bin/python3 examples/compare_runs.py --out-dir out

reads <out-dir>/came.json and <out-dir>/adamw.json, prints final losses, speed and the
optimizer state each rank holds (CAME's as reported by rankd, next to what Adam would keep
under ZeRO: 8 bytes per parameter / world size), and writes <out-dir>/loss_curves.png.
"""

import argparse
import json
import os
import sys

ADAM_STATE_BYTES_PER_PARAM = 8  # exp_avg and exp_avg_sq in fp32


def smooth(values, alpha=0.05):
    """Returns the exponential moving average of values (bias-corrected)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = (1 - alpha) * avg + alpha * v
        out.append(avg / (1 - (1 - alpha) ** i))
    return out


def tail_mean(values, n=20):
    tail = values[-n:]
    return sum(tail) / len(tail)


def label(run):
    if run["optimizer"] == "came":
        return "CAME (%d rank%s)" % (run["world_size"], "s" if run["world_size"] > 1 else "")
    return "AdamW (1 process)"


def summary_rows(came, adamw):
    """Returns (name, CAME cell, AdamW cell) rows; state bytes only where rankd sent them."""
    rows = [
        ("steps x global batch", "%d x %d" % (came["steps"], came["global_batch"]),
         "%d x %d" % (adamw["steps"], adamw["global_batch"])),
        ("peak lr", "%.1e" % came["lr"], "%.1e" % adamw["lr"]),
        ("train loss (last 20 steps, rank 0's rows)", "%.4f" % tail_mean(came["losses"]),
         "%.4f" % tail_mean(adamw["losses"])),
        ("final validation loss", "%.4f" % came["final_val_loss"],
         "%.4f" % adamw["final_val_loss"]),
        ("wall time", "%.1f s" % came["wall_seconds"], "%.1f s" % adamw["wall_seconds"]),
        ("tokens / s (global)", "%.0f" % came["tokens_per_second"],
         "%.0f" % adamw["tokens_per_second"]),
    ]
    state = (came.get("optimizer_state_bytes_per_rank") or {}).get("total")
    if state:
        zero_adam = ADAM_STATE_BYTES_PER_PARAM * came["params"] / came["world_size"]
        rows.append(("optimizer state bytes per rank", "%d (%.2f B/param)" % (
            state, state * came["world_size"] / came["params"]),
            "%d (Adam, ZeRO over %d: 8 B/param x %d / %d)" % (
                zero_adam, came["world_size"], came["params"], came["world_size"])))
    return rows


def print_table(rows, came, adamw):
    headers = ("", label(came), label(adamw))
    widths = [max(len(r[i]) for r in rows + [headers]) for i in range(3)]
    line = "  ".join("%-*s" % (w, h) for w, h in zip(widths, headers))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join("%-*s" % (w, c) for w, c in zip(widths, row)))


def plot(came, adamw, path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run, color in ((came, "tab:blue"), (adamw, "tab:orange")):
        steps = range(1, len(run["losses"]) + 1)
        ax.plot(steps, run["losses"], color=color, alpha=0.2, linewidth=0.8)
        ax.plot(steps, smooth(run["losses"]), color=color, label=label(run) + " train (EMA)")
        if run["val_losses"]:
            vs, vl = zip(*run["val_losses"])
            ax.plot(vs, vl, "o--", color=color, label=label(run) + " validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.set_title("char-level GPT on fortunes: CAME vs AdamW")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="out")
    p.add_argument("--came", help="default: <out-dir>/came.json")
    p.add_argument("--adamw", help="default: <out-dir>/adamw.json")
    p.add_argument("--png", help="default: <out-dir>/loss_curves.png")
    args = p.parse_args(argv)
    runs = []
    for path in (args.came or os.path.join(args.out_dir, "came.json"),
                 args.adamw or os.path.join(args.out_dir, "adamw.json")):
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except (OSError, ValueError) as e:
            sys.exit("compare_runs: cannot read %s: %s" % (path, e))
    came, adamw = runs
    print_table(summary_rows(came, adamw), came, adamw)
    png = args.png or os.path.join(args.out_dir, "loss_curves.png")
    plot(came, adamw, png)
    print("wrote " + png)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Trains a small character-level GPT on the `fortunes` corpus, data-parallel over ranks.

    came-launch --nproc 2 -- /usr/bin/python3 examples/train_gpt.py --out-dir out
    /usr/bin/python3 examples/train_gpt.py --optimizer adamw --world-size 2 --out-dir out

With --optimizer came every rank is one trainer process; came-launch gives it CAME_RANK,
CAME_WORLD_SIZE, CAME_RANKD_ADDRESS and CAME_TOKEN (the flags override them), and its
optimizer is came.ShardedCAME: CAME's state lives in the ranks' came-rankd, sharded,
and rankd averages the gradients. --optimizer adamw is the baseline: torch.optim.AdamW in
one process on the global batch (world size x batch size).

Data: /usr/share/games/fortunes/* (Debian package `fortunes`), entries shuffled once with a
fixed seed, 95% for training and 5% held out. Every step draws one global batch from a
generator seeded by (seed, step); rank r trains on rows [r*B, (r+1)*B) of it, so the ranks
see different data and a CAME run sees exactly the batches of the AdamW baseline. Both
record the loss on rank 0's rows ("losses") for a like-for-like curve. Rank 0 prints
progress and writes <out-dir>/<optimizer>.json.
"""

import argparse
import json
import math
import os
import random
import re
import sys
import time
import unicodedata

import torch
from torch import nn
from torch.nn import functional as F

CORPUS_DIR = "/usr/share/games/fortunes"
# Pictures rather than prose.
EXCLUDED_FILES = {"art", "ascii-art"}
SPLIT_SEED = 1234
# Peak learning rates from a sweep at the default size, 200 steps, 2 ranks (validation loss):
# CAME 2e-3: 2.936, 1e-3: 2.784, 5e-4: 2.646, 2.5e-4: 2.598, 1.25e-4: 2.552, 6e-5: 2.566;
# AdamW 2e-3: 2.580 (the best of its own short sweep). CAME's confidence term enlarges the
# steps where momentum is consistent, so it wants a far smaller lr than AdamW.
DEFAULT_LR = {"came": 1.25e-4, "adamw": 2e-3}
VAL_FRACTION = 0.05


# -- data ------------------------------------------------------------------------------------

def _clean(text):
    text = re.sub(r".\x08", "", text)  # overstriking (bold/underline by backspacing)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = text.replace("\t", "    ")
    return "".join(c for c in text if c == "\n" or " " <= c <= "~")


def load_fortunes(directory=CORPUS_DIR):
    """Returns the fortunes of the corpus as a list of cleaned strings."""
    entries = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if (name.endswith((".dat", ".u8")) or name in EXCLUDED_FILES
                or not os.path.isfile(path)):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = _clean(f.read())
        entries.extend(e.strip("\n") for e in re.split(r"^%$", text, flags=re.M))
    entries = [e for e in entries if e.strip()]
    if not entries:
        sys.exit("no fortunes under %s: install the Debian package `fortunes`" % directory)
    return entries


class Corpus:
    """Character-level tokens of the train and validation splits."""

    def __init__(self, entries):
        entries = list(entries)
        random.Random(SPLIT_SEED).shuffle(entries)
        n_val = max(1, int(len(entries) * VAL_FRACTION))
        train, val = "\n\n".join(entries[n_val:]), "\n\n".join(entries[:n_val])
        self.chars = sorted(set(train) | set(val))
        index = {c: i for i, c in enumerate(self.chars)}
        self.train = torch.tensor([index[c] for c in train], dtype=torch.uint8)
        self.val = torch.tensor([index[c] for c in val], dtype=torch.uint8)

    @property
    def vocab_size(self):
        return len(self.chars)


def windows(tokens, starts, context):
    """Returns (inputs, targets) of shape [len(starts), context]."""
    idx = starts[:, None] + torch.arange(context + 1)[None, :]
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def global_starts(tokens, step, global_batch, context, seed):
    """Returns the window starts of one step's global batch (the same on every rank)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, len(tokens) - context - 1, (global_batch,), generator=g)


# -- model -----------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, d_model, n_heads, context):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)
        mask = torch.full((context, context), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.n_heads) + self.mask[:t, :t]
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab_size, context=64, d_model=128, n_layers=2, n_heads=4):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(context, d_model)
        self.blocks = nn.Sequential(*[Block(d_model, n_heads, context)
                                      for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        for name, p in self.named_parameters():
            if p.ndim >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, tokens):
        pos = torch.arange(tokens.shape[1])
        x = self.token_embedding(tokens) + self.position_embedding(pos)
        return self.head(self.ln_f(self.blocks(x)))


def row_losses(model, inputs, targets):
    """Returns the mean cross-entropy of every row."""
    logits = model(inputs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="none")
    return loss.view(targets.shape).mean(1)


@torch.no_grad()
def validation_loss(model, corpus, batches, batch_size, context):
    g = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(batches):
        starts = torch.randint(0, len(corpus.val) - context - 1, (batch_size,), generator=g)
        total += row_losses(model, *windows(corpus.val, starts, context)).mean().item()
    return total / batches


# -- training --------------------------------------------------------------------------------

def param_groups(model, weight_decay):
    """Decays matrices, not biases and LayerNorm gains (named, for ShardedCAME)."""
    named = list(model.named_parameters())
    return [{"params": [(n, p) for n, p in named if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [(n, p) for n, p in named if p.ndim < 2], "weight_decay": 0.0}]


def warmup_cosine(steps, warmup, floor=0.1):
    """Returns the LambdaLR factor: linear warm-up, then cosine down to `floor`."""
    def factor(i):
        if i < warmup:
            return (i + 1) / warmup
        progress = min(1.0, (i - warmup) / max(1, steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def make_optimizer(args, model, env):
    if args.optimizer == "adamw":
        groups = [{"params": [p for _, p in g["params"]], "weight_decay": g["weight_decay"]}
                  for g in param_groups(model, args.weight_decay)]
        return torch.optim.AdamW(groups, lr=args.lr)
    from came import ShardedCAME  # only the CAME path needs the service
    return ShardedCAME(param_groups(model, args.weight_decay), lr=args.lr,
                       max_grad_norm=args.max_grad_norm, address=env.address,
                       token=env.token, timeout=args.timeout)


def progress_line(step, steps, loss, lr, tokens_per_s, step_s, elapsed):
    width = 24
    done = int(width * step / steps)
    eta = elapsed / step * (steps - step)
    return ("step %*d/%d [%s%s] %3d%%  loss %.4f  lr %.2e  %7.0f tok/s  %6.1f ms/step  "
            "eta %d:%02d" % (len(str(steps)), step, steps, "#" * done, "." * (width - done),
                             100 * step // steps, loss, lr, tokens_per_s, 1000 * step_s,
                             eta // 60, eta % 60))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizer", choices=("came", "adamw"), default="came")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per rank and step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="out")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 1.25e-4 for CAME, 2e-3 for AdamW: the "
                        "best of a short sweep at the default size)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=None, help="CAME only")
    p.add_argument("--warmup", type=int, default=None, help="steps (default: steps / 10)")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: 1 per CAME rank; world size for AdamW)")
    p.add_argument("--log-every", type=int, default=None, help="default: steps / 30")
    p.add_argument("--eval-every", type=int, default=None, help="default: steps / 5")
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--rank", type=int, default=None, help="default: CAME_RANK or 0")
    p.add_argument("--world-size", type=int, default=None,
                   help="default: CAME_WORLD_SIZE or 1 (AdamW: sets the global batch)")
    p.add_argument("--rankd-address", default=None, help="default: CAME_RANKD_ADDRESS")
    p.add_argument("--token", default=None, help="default: CAME_TOKEN")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per call to rankd")
    return p.parse_args(argv)


def launch_settings(args):
    """Returns rank, world size, rankd address and token: flags, else came-launch's env."""
    if args.optimizer == "came":
        from came import launch_env
        return launch_env(args.rank, args.world_size, args.rankd_address, args.token)

    class Env:  # AdamW runs alone and needs no service client
        rank = 0
        world_size = args.world_size or int(os.environ.get("CAME_WORLD_SIZE") or 1)
        address = token = None
    return Env


def main(argv=None):
    args = parse_args(argv)
    env = launch_settings(args)
    rank, world = env.rank, env.world_size
    if args.optimizer == "adamw" and rank != 0:
        return 0  # the baseline is one process: other launched ranks have nothing to do
    local_batch = args.batch_size * (world if args.optimizer == "adamw" else 1)
    torch.set_num_threads(args.threads or (world if args.optimizer == "adamw" else 1))
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 10)
    log_every = args.log_every or max(1, args.steps // 30)
    eval_every = args.eval_every or max(1, args.steps // 5)
    args.lr = lr

    corpus = Corpus(load_fortunes())
    torch.manual_seed(args.seed)  # the same initial model everywhere (rankd syncs it too)
    model = GPT(corpus.vocab_size, args.context, args.d_model, args.layers, args.heads)
    n_params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(args, model, env)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(args.steps, warmup))

    log = rank == 0
    if log:
        print("train_gpt: %s, %d rank(s), %d params, vocab %d, %d train / %d val chars, "
              "global batch %d x %d tokens, lr %.1e" % (
                  args.optimizer, world, n_params, corpus.vocab_size, len(corpus.train),
                  len(corpus.val), args.batch_size * world, args.context, lr), flush=True)
    record = {"optimizer": args.optimizer, "world_size": world, "batch_size": args.batch_size,
              "global_batch": args.batch_size * world, "context": args.context,
              "steps": args.steps, "seed": args.seed, "lr": lr, "params": n_params,
              "losses": [], "global_losses": [], "lrs": [], "step_seconds": [],
              "grad_norms": [], "val_losses": []}
    tokens_per_step = args.batch_size * world * args.context
    start = time.perf_counter()
    try:
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            starts = global_starts(corpus.train, step, args.batch_size * world, args.context,
                                   args.seed)
            if args.optimizer == "came":
                starts = starts[rank * args.batch_size:(rank + 1) * args.batch_size]
            losses = row_losses(model, *windows(corpus.train, starts, args.context))
            losses.mean().backward()
            record["lrs"].append(opt.param_groups[0]["lr"])
            opt.step()
            opt.zero_grad()
            scheduler.step()
            step_s = time.perf_counter() - t0
            if not log:
                continue
            rank0_loss = losses[:args.batch_size].mean().item()
            record["losses"].append(rank0_loss)
            if args.optimizer == "adamw":
                record["global_losses"].append(losses.mean().item())
            record["step_seconds"].append(step_s)
            stats = getattr(opt, "last_step_stats", None)
            if stats is not None:
                record["grad_norms"].append(stats.grad_norm)
            if step % log_every == 0 or step == args.steps:
                elapsed = time.perf_counter() - start
                print(progress_line(step, args.steps, rank0_loss, record["lrs"][-1],
                                    tokens_per_step / step_s, step_s, elapsed), flush=True)
            if step % eval_every == 0 or step == args.steps:
                val = validation_loss(model, corpus, args.eval_batches, args.batch_size,
                                      args.context)
                record["val_losses"].append([step, val])
                print("  validation loss %.4f at step %d" % (val, step), flush=True)
    finally:
        if args.optimizer == "came":
            state_bytes = (opt.last_step_stats.state_bytes if opt.last_step_stats
                           else None) or opt.state_bytes
            opt.close()
    if not log:
        return 0
    wall = time.perf_counter() - start
    record["wall_seconds"] = wall
    record["tokens_per_second"] = tokens_per_step * args.steps / wall
    record["final_val_loss"] = record["val_losses"][-1][1]
    if args.optimizer == "came":
        record["optimizer_state_bytes_per_rank"] = state_bytes
    else:
        record["optimizer_state_bytes_per_rank"] = {
            "total": sum(t.numel() * t.element_size() for s in opt.state.values()
                         for t in s.values() if torch.is_tensor(t) and t.ndim > 0)}
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, args.optimizer + ".json")
    with open(path, "w") as f:
        json.dump(record, f)
    print("done: %d steps in %.1f s (%.0f tok/s), final validation loss %.4f; wrote %s" % (
        args.steps, wall, record["tokens_per_second"], record["final_val_loss"], path),
        flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

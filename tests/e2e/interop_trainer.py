"""A trainer for test_torch_interop.py, run under came-launch: ShardedCAME on the model and
per-rank gradients of interop_common, in one of these modes (rank 0 writes the results):

  export   train --steps N; after step --save-at K, state_dict() (on every rank, or only on
           rank 0 with --only-rank0: the others serve it from their next step) -> export.pt
           {"state_dict", "params"}; final parameters -> final.pt
  import   load --state F ({"state_dict", "params"}: parameters, then load_state_dict) and
           train its step + 1 .. --steps; final parameters -> final.pt
  onecycle OneCycleLR with cycle_momentum (betas[0] cycles) for --steps; final parameters
           and the (lr, beta1) of every step -> final.pt
  checks   the refusals: eps = 0 at construction and at a step, ranks sending different lr,
           a state dict without state; then a good step still works -> checks-<rank>.json
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interop_common as common  # noqa: E402

import came  # noqa: E402

RANK = int(os.environ["CAME_RANK"])
WORLD = int(os.environ["CAME_WORLD_SIZE"])


def set_gradients(model, step):
    for i, p in enumerate(common.ordered_params(model)):
        p.grad.copy_(common.gradient(RANK, step, p, i))


def save(obj, path):
    if RANK == 0:
        torch.save(obj, path)


def params_of(model):
    return [p.detach().clone() for p in common.ordered_params(model)]


def train(opt, model, first, last, after_step=None, sched=None):
    for step in range(first, last + 1):
        opt.zero_grad()
        set_gradients(model, step)
        opt.step()
        if sched is not None:
            sched.step()
        if after_step is not None:
            after_step(step)


def run_export(args):
    model = common.make_model()
    opt = came.ShardedCAME(common.param_groups(model), lr=common.LR)

    def after_step(step):
        if step == args.save_at and (RANK == 0 or not args.only_rank0):
            save({"state_dict": opt.state_dict(), "params": params_of(model)},
                 os.path.join(args.out, "export.pt"))

    train(opt, model, 1, args.steps, after_step)
    save(params_of(model), os.path.join(args.out, "final.pt"))
    opt.close()


def run_import(args):
    saved = torch.load(args.state)
    model = common.make_model()
    with torch.no_grad():
        for p, value in zip(common.ordered_params(model), saved["params"]):
            p.copy_(value)
    opt = came.ShardedCAME(common.param_groups(model), lr=common.LR)
    opt.load_state_dict(saved["state_dict"])
    train(opt, model, opt.step_count + 1, args.steps)
    save(params_of(model), os.path.join(args.out, "final.pt"))
    opt.close()


def run_onecycle(args):
    model = common.make_model()
    opt = came.ShardedCAME(common.param_groups(model), lr=common.LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=args.steps,
                                                cycle_momentum=True, base_momentum=0.8,
                                                max_momentum=0.95)
    used = []

    def after_step(step):
        used.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))

    used.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
    train(opt, model, 1, args.steps, after_step, sched)
    save({"params": params_of(model), "schedule": used[:-1]}, os.path.join(args.out, "final.pt"))
    opt.close()


def refused(fn):
    """Returns the message of the InvalidArgumentError that fn() raises ("" if none)."""
    try:
        fn()
    except came.InvalidArgumentError as e:
        assert isinstance(e, ValueError)
        return e.details
    return ""


def run_checks(args):
    out = {}
    model = common.make_model()
    out["attach_eps0"] = refused(
        lambda: came.ShardedCAME(common.param_groups(model), lr=common.LR, eps=(0.0, 1e-16)))
    opt = came.ShardedCAME(common.param_groups(model), lr=common.LR)
    before = params_of(model)

    def step_with(step, edit):
        saved = [dict(g) for g in opt.param_groups]
        edit()
        try:
            opt.zero_grad()
            set_gradients(model, step)
            return refused(opt.step)
        finally:
            for g, s in zip(opt.param_groups, saved):
                g.update(s)

    out["step_eps0"] = step_with(1, lambda: opt.param_groups[0].update(eps=(0.0, 1e-16)))
    out["lr_disagree"] = step_with(
        2, lambda: opt.param_groups[1].update(lr=common.LR * (1 + RANK)))
    out["beta_disagree"] = step_with(
        3, lambda: opt.param_groups[0].update(betas=(0.9 - 0.1 * RANK, 0.999, 0.9999)))
    out["unchanged"] = all(torch.equal(a, b) for a, b in zip(before, params_of(model)))
    try:
        opt.load_state_dict({"state": {}, "param_groups": opt.state_dict()["param_groups"]})
        out["empty_state"] = ""
    except ValueError as e:
        out["empty_state"] = str(e)
    out["good_step"] = step_with(4, lambda: None) == ""
    out["moved"] = not all(torch.equal(a, b) for a, b in zip(before, params_of(model)))
    opt.close()
    with open(os.path.join(args.out, "checks-%d.json" % RANK), "w") as f:
        json.dump(out, f)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["export", "import", "onecycle", "checks"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--save-at", type=int, default=3)
    parser.add_argument("--only-rank0", action="store_true")
    parser.add_argument("--state")
    args = parser.parse_args()
    {"export": run_export, "import": run_import, "onecycle": run_onecycle,
     "checks": run_checks}[args.mode](args)


if __name__ == "__main__":
    main()

"""Hugging Face Trainer with came.ShardedCAME under came-launch (test_hf_trainer.py).

A tiny GPT-2 trains on each rank's own token data with optimizers=(ShardedCAME, scheduler),
saving a checkpoint every --save-steps into --out/rank<r> (under came-launch each trainer is
its own Trainer, since no torch.distributed is set up, so each writes its own folder and
calls optimizer.state_dict() itself). --stop-after K ends training right after the
checkpoint of step K (an interrupted job); --resume DIR continues from DIR/rank<r>/
checkpoint-<K> (resume_from_checkpoint). Rank 0 writes the final parameters to
--out/final.pt.
"""

import argparse
import os

import torch
from torch.utils.data import Dataset, SequentialSampler
from transformers import (GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback,
                          TrainingArguments, get_linear_schedule_with_warmup)

import came

RANK = int(os.environ["CAME_RANK"])
VOCAB, CONTEXT = 64, 12


class TokenData(Dataset):
    """This rank's sequences: deterministic, different on every rank (data parallel)."""

    def __init__(self, n):
        g = torch.Generator().manual_seed(100 + RANK)
        self.ids = torch.randint(0, VOCAB, (n, CONTEXT), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class InOrderTrainer(Trainer):
    """Reads the data in order, so where a resumed job continues does not depend on RNG."""

    def _get_train_sampler(self):
        return SequentialSampler(self.train_dataset)


class StopAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--save-steps", type=int, default=3)
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--resume")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=16,
                                       n_layer=1, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0))
    opt = came.ShardedCAME(model.named_parameters(), lr=3e-3, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=2,
                                            num_training_steps=args.max_steps)
    training = TrainingArguments(
        output_dir=os.path.join(args.out, "rank%d" % RANK), max_steps=args.max_steps,
        per_device_train_batch_size=2, save_strategy="steps", save_steps=args.save_steps,
        logging_steps=1, max_grad_norm=0.0, report_to=[], use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=1)  # save_safetensors left at its default (True)
    callbacks = [StopAfter(args.stop_after)] if args.stop_after else []
    trainer = InOrderTrainer(model=model, args=training, train_dataset=TokenData(32),
                             optimizers=(opt, sched), callbacks=callbacks)
    resume = None
    if args.resume:
        resume = os.path.join(args.resume, "rank%d" % RANK, "checkpoint-%d" % args.save_steps)
    trainer.train(resume_from_checkpoint=resume)
    if RANK == 0:
        torch.save({n: p.detach().clone() for n, p in model.named_parameters()},
                   os.path.join(args.out, "final.pt"))
    opt.close()


if __name__ == "__main__":
    main()

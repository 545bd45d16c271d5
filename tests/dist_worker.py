"""A short SDFT (or SFT) run for test_distributed, the same script single-process or under `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 2 tests/dist_worker.py OUT --batch-size 2 [--method sft]
    python tests/dist_worker.py OUT --batch-size 4          # the same run on one process

SDFT samples for real (temperature 1); SFT samples nothing, so its runs on 1 and 2 processes are comparable. Writes OUT/rank{R}.json (the example ids of every micro-batch this process
trained on, the rollout seeds and rollouts, the step losses) and OUT/rank{R}.safetensors (its adapters after
training, and its gradients of the first step before and after the average over the processes).
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_llama  # noqa: E402

from sdft_lab import SDFT, SFT, SDFTConfig, TrainConfig, Trainer, add_student, distributed, load_dataset, precision  # noqa: E402,E501
from sdft_lab.checkpoint import adapter_tensors  # noqa: E402

STEPS, GRAD_ACCUM = 2, 2
CFG = SDFTConfig(max_new_tokens=6, skip_first=0, teacher="ema", ema_rate=0.5)


class Recording(SDFT):
    """SDFT that remembers which examples it trained on, with which rollout seeds, and what it sampled."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.batches, self.seeds, self.rollouts = [], [], []

    def score(self, model, tokenizer, examples, seed=None, completions=None, demonstration=True):
        scored = super().score(model, tokenizer, examples, seed, completions, demonstration)
        self.batches.append([ex.id for ex in examples])
        self.seeds.append(seed)
        self.rollouts.append(scored.completions.ids.tolist())
        return scored


class RecordingSFT(SFT):
    """SFT that remembers which examples it trained on."""

    def __init__(self):
        super().__init__()
        self.batches, self.seeds, self.rollouts = [], [], []

    def loss(self, model, tokenizer, examples, seed=None):
        self.batches.append([ex.id for ex in examples])
        return super().loss(model, tokenizer, examples, seed)


def run(out: Path, tokenizer, batch_size: int, lora_seed: int, method: str = "sdft", bf16: bool = False) -> dict:
    base = tiny_llama(tokenizer, seed=0)
    if bf16:  # this process's base in bf16 (what the precision policy may choose on one CPU and not another)
        precision.cast(base)
    model = add_student(base, seed=lora_seed)  # per process: the Trainer must broadcast
    grads: dict[str, torch.Tensor] = {}
    average = distributed.Group.average_gradients_

    def recording_average(group, params):  # the first step's gradients, before and after the all-reduce
        first = not grads
        if first:
            grads.update({f"local.{i}": p.grad.detach().clone() for i, p in enumerate(params) if p.grad is not None})
        average(group, params)
        if first:
            grads.update({f"averaged.{i}": p.grad.detach().clone() for i, p in enumerate(params) if p.grad is not None})

    distributed.Group.average_gradients_ = recording_average
    objective = Recording(CFG) if method == "sdft" else RecordingSFT()
    rank = int(os.environ.get("RANK", 0))  # each process is given folders of its own: who writes shows there
    trainer = Trainer(model, tokenizer, objective, load_dataset("demo"),
                      TrainConfig(steps=STEPS, batch_size=batch_size, grad_accum=GRAD_ACCUM, lr=1e-2, preflight=False,
                                  report=False,  # the report scores one more rollout on rank 0 only
                                  checkpoint_every=STEPS, checkpoint_dir=str(out / f"checkpoints-rank{rank}")))
    losses = [r["loss"] for r in trainer.train()]
    trainer.save_adapter(out / f"adapter-rank{rank}")
    result = {"rank": trainer.group.rank, "world": trainer.group.world, "batches": objective.batches,
              "seeds": objective.seeds, "rollouts": objective.rollouts, "losses": losses}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{trainer.group.rank}.json").write_text(json.dumps(result))
    save_file({**adapter_tensors(model), **grads}, out / f"rank{trainer.group.rank}.safetensors")
    return result


if __name__ == "__main__":
    from transformers import AutoTokenizer

    from sdft_lab.bundled import bundled_path

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--method", choices=["sdft", "sft"], default="sdft")
    parser.add_argument("--bf16-rank", type=int, default=-1, help="the process whose base computes in bf16")
    args = parser.parse_args()
    tok = AutoTokenizer.from_pretrained(bundled_path())  # the tokenizer only: the model is the tiny llama
    rank = int(os.environ.get("RANK", 0))
    run(args.out, tok, args.batch_size, lora_seed=100 + rank, method=args.method, bf16=rank == args.bf16_rank)

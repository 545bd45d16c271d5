"""Is bf16 precise enough? The precision policy's rounding beside the signal SDFT distills.

Under the bf16 policy (sdft_lab/precision.py) the base's weights and activations are rounded to bf16 while the
LoRA matrices and the losses stay fp32. That moves two distributions the method relies on, and what matters
is whether the move is small against the signal, the teacher-to-student divergence the loss follows. On the
student's own rollouts (sampled in fp32), per token:

  sampling noise  KL(fp32 student ‖ bf16 student), the bare question: how far the policy that writes the
                  rollouts moves (bf16 samples come from the bf16 student);
  teacher noise   KL(fp32 teacher ‖ bf16 teacher), the demonstration in context: how far the target moves;
  signal          KL(fp32 teacher ‖ fp32 student), the SDFT loss's forward KL.

Each noise over the signal is a verdict, with inspect/quantization.py's thresholds: under 10 % small, over
50 % large. The bf16 model is the fp32 one cast the way the policy casts it (the base's weights, not the
adapter's).

    python -m sdft_lab.inspect.precision --data demo          # the bundled model, a fresh student
    python -m sdft_lab.inspect.precision --adapter runs/workshop/sdft/adapter --data knowledge
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from dataclasses import replace
from pathlib import Path

import torch

from .. import precision
from ..data import Example, load_dataset
from ..losses import sequence_means
from ..models import teacher_view
from ..prompts import student_ids, teacher_ids
from ..sdft import SDFT, SDFTConfig
from .quantization import LARGE, SMALL, per_token_kl, verdict


def bf16_copy(model):
    """The model with its base in bf16 and any adapter in fp32, as the bf16 policy runs it (precision.cast:
    the parameters, not the rotary buffers)."""
    half = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in half.named_parameters():
            if "lora_" not in name:
                p.data = p.data.to(torch.bfloat16)
    return half


@torch.no_grad()
def precision_noise(full, half, tokenizer, examples: list[Example], cfg: SDFTConfig | None = None,
                    seed: int = 0) -> dict:
    """sampling and teacher noise, the signal (each the mean over rollouts of the rollout's per-token mean),
    each noise's ratio to the signal and its verdict. full: the student in fp32 (base and adapter); half: the
    same student under the bf16 policy (bf16_copy(full))."""
    cfg = replace(cfg or SDFTConfig(), guided=0.0, teacher="base")  # the student's own rollouts, the base teaching
    scored = SDFT(cfg).score(full, tokenizer, examples, seed=seed)
    y, mask = scored.completions, scored.eligible
    s_prompts = [student_ids(tokenizer, ex, cfg.prompts) for ex in examples]
    t_prompts = [teacher_ids(tokenizer, ex, cfg.prompts) for ex in examples]
    sampling = per_token_kl(full, half, s_prompts, y, mask)
    with teacher_view(full, "base"), teacher_view(half, "base"):
        teacher = per_token_kl(full, half, t_prompts, y, mask)
    out = {}
    for key, per_token in (("sampling", sampling), ("teacher", teacher), ("signal", scored.stats["kl"])):
        means, has = sequence_means(per_token.float(), mask)
        out[key] = means[has].mean().item()
    out["rollouts"], out["tokens"] = int(has.sum()), int(mask.sum())
    for key in ("sampling", "teacher"):
        out[f"{key}_ratio"] = out[key] / max(out["signal"], 1e-12)
        out[f"{key}_verdict"] = verdict(out[f"{key}_ratio"])
    return out


def line(figures: dict) -> str:
    """One sentence per noise."""
    return (f"bf16 policy: sampling noise KL(fp32 ‖ bf16 student) {figures['sampling']:.5f} per token "
            f"({figures['sampling_ratio']:.1%} of the signal, {figures['sampling_verdict']}), teacher noise "
            f"KL(fp32 ‖ bf16 teacher) {figures['teacher']:.5f} ({figures['teacher_ratio']:.1%}, "
            f"{figures['teacher_verdict']}), against the SDFT signal KL(teacher ‖ student) {figures['signal']:.4f} "
            f"over {figures['rollouts']} rollouts (under {SMALL:.0%} is small, over {LARGE:.0%} large).")


def main(argv: list[str] | None = None) -> dict:
    from ..models import add_student, load, load_adapter
    from ..report import machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--adapter", help="a saved student adapter (default: a fresh student, the base)")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--n", type=int, default=16, help="examples (one rollout each)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", help="append the figures, one JSON line per seed, to this file")
    args = parser.parse_args(argv)
    pin = os.environ.get(precision.ENV)
    os.environ[precision.ENV] = "fp32"  # the reference side: bf16_copy makes the other, whatever this CPU chose
    try:
        base, tok = load(args.model, quantization="none", device="cpu")
    finally:
        if pin is None:
            del os.environ[precision.ENV]
        else:
            os.environ[precision.ENV] = pin
    full = load_adapter(base, args.adapter) if args.adapter else add_student(base)
    half = bf16_copy(full)
    rows = []
    for seed in args.seeds:
        figures = precision_noise(full, half, tok, load_dataset(args.data)[: args.n],
                                  SDFTConfig(max_new_tokens=args.max_new_tokens), seed=seed)
        print(f"seed {seed}: {line(figures)}")
        rows.append({"seed": seed, "model": args.model, "adapter": args.adapter, "data": args.data, "n": args.n,
                     "max_new_tokens": args.max_new_tokens, "machine": machine(), **figures})
        if args.out:
            with Path(args.out).open("a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    return rows[-1]


if __name__ == "__main__":
    main()

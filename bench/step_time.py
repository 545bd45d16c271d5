"""Seconds per optimizer step, SFT vs SDFT, on the "cpu-bench" config (DESIGN.md §5).

Bundled SmolLM2-135M-Instruct, fp32 on the CPU, LoRA r16 / α32 on all linear
layers, N prompts per step, one rollout each, 64 new tokens, temperature 1.0.
Each variant runs in its own process (so peak RSS is its own), on the same
prompts and seed. Prints a table of median s/step over the timed steps (after
one warm-up step), the per-phase breakdown, ratios to SFT and peak RSS, and
writes the same as JSON to bench/results/.

    python bench/step_time.py                 # 4 prompts per step
    python bench/step_time.py --prompts 4 16  # both sizes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("sft", "sdft", "generate")
PHASES = ("sample_s", "teacher_s", "student_fwd_s", "backward_s", "optim_s")


def run_variant(variant: str, prompts: int, steps: int, new_tokens: int) -> dict:
    import torch

    from sdft_lab import SDFT, SFT, SDFTConfig, TrainConfig, Trainer, add_student, load, load_dataset, sample
    from sdft_lab.prompts import PromptConfig, student_ids

    model, tok = load("bundled", quantization="none", device="cpu")
    examples = load_dataset("demo")
    times, phases = [], {p: [] for p in PHASES}
    if variant == "generate":  # plain HF generate of the base model: the sampling floor
        ids = [student_ids(tok, ex, PromptConfig()) for ex in examples[:prompts]]
        for i in range(steps + 1):
            t = time.perf_counter()
            with torch.no_grad():
                model.generate(**_batch(tok, ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=True, top_k=0, pad_token_id=tok.pad_token_id)
            if i:
                times.append(time.perf_counter() - t)
    else:
        model = add_student(model)
        objective = SFT() if variant == "sft" else SDFT(SDFTConfig(max_new_tokens=new_tokens))
        trainer = Trainer(model, tok, objective, examples, TrainConfig(steps=steps + 1, batch_size=prompts))
        for i in range(steps + 1):
            record = trainer.step()
            if i:
                times.append(record["step_s"])
                for p in PHASES:
                    phases[p].append(record.get(p, 0.0))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"variant": variant, "prompts": prompts, "median_s": statistics.median(times), "times_s": times,
            "phases_s": {p: statistics.median(v) for p, v in phases.items() if v}, "peak_rss_mib": peak_mib}


def _batch(tok, ids):
    from sdft_lab.prompts import left_pad

    input_ids, mask = left_pad(ids, tok.pad_token_id)
    return {"input_ids": input_ids, "attention_mask": mask}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=[4])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "PROMPTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_variant(args.worker[0], int(args.worker[1]), args.steps, args.new_tokens)))
        return

    rows = []
    for prompts in args.prompts:
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--worker", variant, str(prompts),
                   "--steps", str(args.steps), "--new-tokens", str(args.new_tokens)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"  done: {variant} at {prompts} prompts ({rows[-1]['median_s']:.2f} s/step)", file=sys.stderr)

    print(f"\n{'variant':<10}{'prompts':>8}{'s/step':>9}{'× SFT':>8}{'peak RSS':>11}   phases (median s)")
    for row in rows:
        sft = next(r for r in rows if r["variant"] == "sft" and r["prompts"] == row["prompts"])
        row["ratio_to_sft"] = row["median_s"] / sft["median_s"]
        row["rss_ratio_to_sft"] = row["peak_rss_mib"] / sft["peak_rss_mib"]
        phases = "  ".join(f"{k[:-2]} {v:.2f}" for k, v in row["phases_s"].items() if v)
        print(f"{row['variant']:<10}{row['prompts']:>8}{row['median_s']:>9.2f}{row['ratio_to_sft']:>8.2f}"
              f"{row['peak_rss_mib']:>8.0f} MiB   {phases}")
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "new_tokens": args.new_tokens, "timed_steps": args.steps}
    out = Path(__file__).parent / "results" / f"step_time_p{'-'.join(map(str, args.prompts))}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()

"""Seconds per optimizer step: SFT, sdft_lab's SDFT (each divergence) and TRL's SDFTTrainer, side by side.

The "cpu-bench" config (docs/performance.md): bundled SmolLM2-135M-Instruct, fp32 on the
CPU, LoRA r16 / α32 on all linear layers, N prompts per step, one rollout each,
64 new tokens, temperature 1.0, the first 3 completion tokens out of the loss.
Each variant runs in its own process (so peak RSS is its own), on the same
prompts and seed, one after the other in one sitting. Prints a table of median
s/step over the timed steps (after one warm-up step), the per-phase breakdown,
ratios to SFT and to TRL, peak RSS, and the floor (each phase measured alone),
and writes the same as JSON to bench/results/.

    python bench/step_time.py                    # 4 prompts per step, every variant
    python bench/step_time.py --prompts 4 16     # both sizes
    python bench/step_time.py --variants sft sdft trl-full
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name → what it runs. sdft variants differ only in the divergence (or the sampler).
VARIANTS = {
    "sft": "SFT on the demonstrations",
    "sdft": "SDFT, forward KL over the full vocabulary (default)",
    "sdft-reverse": "SDFT, reverse KL",
    "sdft-jsd": "SDFT, JSD(0.5)",
    "sdft-topk": "SDFT, forward KL on the teacher's top 100 + tail bucket",
    "sdft-sampled": "SDFT, sampled-token estimator",
    "sdft-hf": "SDFT, rollouts from model.generate instead of the lean sampler",
    "sdft-k2": "SDFT, 2 rollouts per prompt in one batch (rollouts_per_prompt=2): twice the rows of sdft",
    "sdft-gc": "SDFT with gradient checkpointing, as TRL's defaults have it: less memory, one more forward",
    "sdft-unmerged": "SDFT, lean sampler with the LoRA path instead of merged weights",
    "trl-full": "TRL SDFTTrainer, full_logits (its defaults otherwise)",
    "trl-topk": "TRL SDFTTrainer, topk_logits k=100 + tail (its defaults otherwise)",
    "trl-cache": "TRL SDFTTrainer, full_logits, generate with the KV cache on (off by default under checkpointing)",
    "generate": "model.generate of the base = the merged model: the sampling reference",
}
PHASES = ("sample_s", "teacher_s", "student_fwd_s", "backward_s", "optim_s")
TOP_K = 100


# issue 21's targets, on the machine the bench runs on: (what, value, comparison, limit)
TARGETS = (("rollout sampling speed vs plain generate (generate s / sample s)", "generate_over_sample", ">=", 1.5),
           ("SDFT step / TRL step", "ratio_to_trl-full", "<=", 0.7),
           ("SDFT peak RSS / TRL peak RSS", "rss_ratio_to_trl", "<=", 1.1),
           ("SDFT step / the bench's floor", "ratio_to_floor", "<=", 1.1))


def check_targets(rows: list[dict], floors: dict) -> list[str]:
    """One line per target and prompt count: the measured ratio, and whether it is met."""
    lines = []
    for row in rows:
        if row["variant"] != "sdft":
            continue
        same = {r["variant"]: r for r in rows if r["prompts"] == row["prompts"]}
        if "trl-full" in same:
            row["rss_ratio_to_trl"] = row["peak_rss_mib"] / same["trl-full"]["peak_rss_mib"]
        if "sample_to_generate" in row:
            row["generate_over_sample"] = 1 / row["sample_to_generate"]
        if floors.get(row["prompts"]):
            row["ratio_to_floor"] = row["median_s"] / floors[row["prompts"]]["floor_s"]
        for what, key, op, limit in TARGETS:
            if key in row:
                met = row[key] >= limit if op == ">=" else row[key] <= limit
                lines.append(f"target at {row['prompts']:>2} prompts: {what} = {row[key]:.2f} (target {op} {limit}): "
                             f"{'met' if met else 'NOT met'}")
    return lines


def sdft_config(variant: str, new_tokens: int):
    from sdft_lab import DivergenceConfig, SDFTConfig

    divergence = {"sdft-reverse": DivergenceConfig(kind="reverse_kl"), "sdft-jsd": DivergenceConfig(kind="jsd"),
                  "sdft-topk": DivergenceConfig(top_k=TOP_K), "sdft-sampled": DivergenceConfig(kind="sampled")}
    return SDFTConfig(max_new_tokens=new_tokens, divergence=divergence.get(variant, DivergenceConfig()),
                      engine="hf" if variant == "sdft-hf" else "auto",
                      rollouts_per_prompt=2 if variant == "sdft-k2" else 1)


def run_variant(variant: str, prompts: int, steps: int, new_tokens: int) -> dict:
    import torch

    from sdft_lab import SDFT, SFT, StudentConfig, TrainConfig, Trainer, add_student, load, load_dataset
    from sdft_lab.prompts import PromptConfig, left_pad, student_ids

    torch.manual_seed(0)
    model, tok = load("bundled", quantization="none", device="cpu")
    examples = load_dataset("demo")
    times, phases = [], {p: [] for p in PHASES}
    if variant == "generate":
        ids, mask = left_pad([student_ids(tok, ex, PromptConfig()) for ex in examples[:prompts]], tok.pad_token_id)
        for i in range(steps + 1):
            t = time.perf_counter()
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=True, top_k=0, pad_token_id=tok.pad_token_id)
            times.append(time.perf_counter() - t)
    elif variant.startswith("trl"):
        times = run_trl(variant, model, tok, examples, prompts, steps, new_tokens)
    else:
        if variant == "sdft-unmerged":
            from sdft_lab import sampler

            sampler.merged_weights = lambda model: {}
        model = add_student(model, StudentConfig(gradient_checkpointing=variant == "sdft-gc"))
        objective = SFT() if variant == "sft" else SDFT(sdft_config(variant, new_tokens))
        cfg = TrainConfig(steps=steps + 1, batch_size=prompts, preflight=False)
        trainer = Trainer(model, tok, objective, examples, cfg)
        for _ in range(steps + 1):
            record = trainer.step()
            times.append(record["step_s"])
            for p in PHASES:
                phases[p].append(record.get(p, 0.0))
    timed = slice(1, None)  # the first step warms up allocators and caches
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"variant": variant, "prompts": prompts, "median_s": statistics.median(times[timed]),
            "times_s": times, "phases_s": {p: statistics.median(v[timed]) for p, v in phases.items() if v},
            "peak_rss_mib": peak_mib}


def run_trl(variant: str, model, tok, examples, prompts: int, steps: int, new_tokens: int) -> list[float]:
    """TRL's SDFTTrainer on the same model, data and LoRA (through sdft_lab.interop.trl), timed per step."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers import TrainerCallback
    from trl.experimental.sdft import SDFTTrainer

    from sdft_lab import DivergenceConfig, SDFTConfig, TrainConfig
    from sdft_lab.interop.trl import export, load_for_trl

    # TRL's top-k support is the student's; sdft_lab's default is the teacher's (same cost).
    divergence = DivergenceConfig(top_k=TOP_K, top_k_side="student") if variant == "trl-topk" else DivergenceConfig()
    folder = tempfile.mkdtemp()
    export(examples, tok, folder, SDFTConfig(max_new_tokens=new_tokens, divergence=divergence),
           TrainConfig(steps=steps + 1, batch_size=prompts))
    # fp32 like every other variant: TRL's default bf16=True autocasts on the CPU, which is many times slower
    # without native bf16 matmuls (AVX2 only: 104 s/step vs 16 s here).
    args, lora, data = load_for_trl(folder, tempfile.mkdtemp(), use_cpu=True, bf16=False, report_to="none",
                                    save_strategy="no", logging_steps=10**6, disable_tqdm=True,
                                    generation_kwargs={"use_cache": True} if variant == "trl-cache" else None)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.t = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.t)

    SDFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora,
                callbacks=[Clock()]).train()
    return times


def floor_row(rows: list[dict], prompts: int) -> dict | None:
    """The floor for an SDFT step: sampling at plain-generate speed + teacher + student fwd/bwd + optimizer, each alone."""
    by = {r["variant"]: r for r in rows if r["prompts"] == prompts}
    if "sdft" not in by or "generate" not in by:
        return None
    ph = by["sdft"]["phases_s"]
    parts = {"generate": by["generate"]["median_s"], **{k: ph[k] for k in PHASES[1:]}}
    return {"parts_s": parts, "floor_s": sum(parts.values())}


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

    from sdft_lab.report import machine

    the_machine = machine()
    print(f"machine: {the_machine['cpu']}, {the_machine['cores']} cores, torch threads {the_machine['torch_threads']}, "
          f"flags {' '.join(the_machine['cpu_flags']) or 'none of avx2 / avx512 / amx'}, BLAS {the_machine['blas']}",
          file=sys.stderr)
    rows = []
    for prompts in args.prompts:
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--worker", variant, str(prompts),
                   "--steps", str(args.steps), "--new-tokens", str(args.new_tokens)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{variant} at {prompts} prompts failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  {variant:<13} {prompts:>3} prompts  {rows[-1]['median_s']:6.2f} s/step", file=sys.stderr)

    print(f"\n{'variant':<14}{'prompts':>8}{'s/step':>8}{'×SFT':>7}{'×TRL':>7}{'peak RSS':>10}{'×SFT':>6}"
          "   phases (median s)")
    for row in rows:
        same = {r["variant"]: r for r in rows if r["prompts"] == row["prompts"]}
        for ref in ("sft", "trl-full"):
            if ref in same:
                row[f"ratio_to_{ref}"] = row["median_s"] / same[ref]["median_s"]
        if "sft" in same:
            row["rss_ratio_to_sft"] = row["peak_rss_mib"] / same["sft"]["peak_rss_mib"]
        if "generate" in same and "sample_s" in row["phases_s"]:
            row["sample_to_generate"] = row["phases_s"]["sample_s"] / same["generate"]["median_s"]
        phases = "  ".join(f"{k[:-2]} {v:.2f}" for k, v in row["phases_s"].items() if v)
        cell = lambda key, fmt: format(row[key], fmt) if key in row else "–"  # noqa: E731
        print(f"{row['variant']:<14}{row['prompts']:>8}{row['median_s']:>8.2f}{cell('ratio_to_sft', '7.2f'):>7}"
              f"{cell('ratio_to_trl-full', '7.2f'):>7}{row['peak_rss_mib']:>7.0f} MiB{cell('rss_ratio_to_sft', '6.2f'):>6}"
              f"   {phases}")
    floors = {p: floor_row(rows, p) for p in args.prompts}
    for prompts, floor in floors.items():
        if floor:
            parts = " + ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in floor["parts_s"].items())
            print(f"floor at {prompts} prompts: {parts} = {floor['floor_s']:.2f} s")
        for row in rows:
            if row["variant"] == "sdft" and row["prompts"] == prompts and "sample_to_generate" in row:
                print(f"rollout sampling / plain generate at {prompts} prompts: {row['sample_to_generate']:.2f}")
    targets = check_targets(rows, floors)
    for line in targets:
        print(line)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": the_machine, "new_tokens": args.new_tokens,
            "timed_steps": args.steps}
    out = Path(__file__).parent / "results" / f"step_time_p{'-'.join(map(str, args.prompts))}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "floors": floors}, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()

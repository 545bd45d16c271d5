"""Seconds per optimizer step: SFT, sdft_lab's SDFT (each divergence) and TRL's SDFTTrainer, side by side.

The "cpu-bench" config (docs/performance.md): bundled SmolLM2-135M-Instruct on the CPU at
the precision policy's type (sdft_lab/precision.py: bf16 where the CPU computes it natively
and measured faster, fp32 elsewhere; each run records it), LoRA r16 / α32 on all linear
layers, N prompts per step, one rollout each, 64 new tokens, temperature 1.0, the first 3
completion tokens out of the loss. TRL runs at each precision it can run well here: its bf16
default where the CPU has native bf16 and fp32 where it has not (trl-full), and fp32 beside
it where they differ (trl-full-fp32); the SDFT-to-TRL targets take the one whose median step
is lower, TRL at its best.

Each variant runs in its own process (so peak RSS is its own), on the same prompts and seed.
The variants are interleaved: round 1 runs A B C …, round 2 runs them again, and so on, and
every ratio is taken within a round, pair by pair, then summarised as median (min–max) over
the rounds: a 2-core VM's speed drifts by up to 2× within an hour, and variants run one after
the other would put that drift into their ratios. Rounds repeat from --rounds (3) until every
target ratio lies within ±--spread (10 %) of its median, from 4 rounds on without its one
farthest round, or --max-rounds (8) have run; each target ratio's spread is printed, with and
without that round. Prints the machine, a table of s/step (median over rounds of each round's
median over the timed steps, after one warm-up step), the per-phase breakdown, ratios to SFT
and to TRL, peak RSS, the floor (each phase measured alone) and the weight-streaming floor of
one decode step (the model's weights read once, timed), and writes the same as JSON to
bench/results/.

    python bench/step_time.py                    # 4 prompts per step, every variant, 3–8 rounds
    python bench/step_time.py --prompts 4 16     # both sizes
    python bench/step_time.py --variants sft sdft trl-full trl-full-fp32 generate --max-rounds 6
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
    "trl-full": "TRL SDFTTrainer, full_logits, at its best precision here: bf16 (its default) on a CPU with native "
                "bf16, fp32 on one without (its defaults otherwise)",
    "trl-full-fp32": "TRL SDFTTrainer, full_logits, fp32 (bf16=False)",
    "trl-topk": "TRL SDFTTrainer, topk_logits k=100 + tail (its defaults otherwise, precision as trl-full)",
    "trl-cache": "TRL SDFTTrainer, full_logits, generate with the KV cache on (off by default under checkpointing; "
                 "precision as trl-full)",
    "generate": "model.generate of the base = the merged model: the sampling reference",
}
PHASES = ("sample_s", "teacher_s", "student_fwd_s", "backward_s", "optim_s")
TRL_PRECISIONS = ("trl-full", "trl-full-fp32")  # TRL's step at each precision: the faster is TRL at its best
TO_TRL = ("ratio_to_trl-best", "rss_ratio_to_trl")  # not taken for those two themselves
TOP_K = 100


# the performance targets, on the machine the bench runs on: (what, value, comparison, limit)
TARGETS = (("rollout sampling speed vs plain generate (generate s / sample s)", "generate_over_sample", ">=", 2.0),
           ("SDFT step / TRL step at its best precision", "ratio_to_trl-best", "<=", 0.5),
           ("SDFT peak RSS / TRL peak RSS", "rss_ratio_to_trl", "<=", 1.1),
           ("SDFT step / the bench's floor", "ratio_to_floor", "<=", 1.1),
           ("lean decode step / weight-streaming floor", "decode_over_stream", "<=", 3.0))


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def paired(runs: list[dict], prompts: int, value, ref: str | None = None) -> list[float]:
    """value(row of sdft-like variant, row of `ref`) within each round, for the rounds that ran both."""
    out = []
    for r in sorted({run["round"] for run in runs}):
        by = {x["variant"]: x for x in runs if x["round"] == r and x["prompts"] == prompts}
        if best_trl(runs, prompts) in by:
            by["trl-best"] = by[best_trl(runs, prompts)]
        if ref is None or ref in by:
            v = value(by, by.get(ref))
            if v is not None:
                out.append(v)
    return out


def best_trl(runs: list[dict], prompts: int) -> str | None:
    """TRL at its best precision: of trl-full (its bf16 default where the CPU has native bf16) and trl-full-fp32,
    the one with the lower median step over the rounds (chosen over all rounds, then paired round by round: a
    per-round minimum of two runs would favour TRL by their noise)."""
    medians = {v: statistics.median(x["median_s"] for x in runs if x["variant"] == v and x["prompts"] == prompts)
               for v in TRL_PRECISIONS if any(x["variant"] == v and x["prompts"] == prompts for x in runs)}
    return min(medians, key=medians.get) if medians else None


def combine(runs: list[dict], variants: list[str], prompts: list[int]) -> list[dict]:
    """One row per variant and prompt count: medians over the rounds, and every ratio taken within a round
    (ratio keys hold the median, `<key>_range` the min and max)."""
    rows = []
    for n in prompts:
        for v in variants:
            mine = [x for x in runs if x["variant"] == v and x["prompts"] == n]
            if not mine:
                continue
            row = {"variant": v, "prompts": n, "rounds": len(mine),
                   "median_s": statistics.median(x["median_s"] for x in mine),
                   "phases_s": {p: statistics.median(x["phases_s"][p] for x in mine) for p in mine[0]["phases_s"]},
                   "peak_rss_mib": max(x["peak_rss_mib"] for x in mine)}
            for key in ("decode_step_s", "stream_s", "weights_gib"):
                if key in mine[0]:
                    row[key] = statistics.median(x[key] for x in mine)
            ratios = {"ratio_to_sft": paired(runs, n, lambda by, ref: by[v]["median_s"] / ref["median_s"]
                                             if v in by else None, "sft"),
                      "ratio_to_trl-full": paired(runs, n, lambda by, ref: by[v]["median_s"] / ref["median_s"]
                                                  if v in by else None, "trl-full"),
                      "ratio_to_trl-best": paired(runs, n, lambda by, ref: by[v]["median_s"] / ref["median_s"]
                                                  if v in by else None, "trl-best"),
                      "rss_ratio_to_trl": paired(runs, n, lambda by, ref: by[v]["peak_rss_mib"] / ref["peak_rss_mib"]
                                                 if v in by else None, "trl-best")}
            if v.startswith("sdft-"):  # a variant of the default SDFT step: its time and its sampling's, per round
                ratios["ratio_to_sdft"] = paired(runs, n, lambda by, ref: by[v]["median_s"] / ref["median_s"]
                                                 if v in by else None, "sdft")
                ratios["sample_ratio_to_sdft"] = paired(runs, n, lambda by, ref: by[v]["phases_s"]["sample_s"] /
                                                        ref["phases_s"]["sample_s"] if v in by else None, "sdft")
            samples = row["phases_s"].get("sample_s", 0) > 0  # SDFT variants; SFT records 0 s of sampling
            if samples:
                ratios["generate_over_sample"] = paired(
                    runs, n, lambda by, ref: ref["median_s"] / by[v]["phases_s"]["sample_s"] if v in by else None,
                    "generate")
            if v == "sdft" and samples:  # the floor of the same round: generate + the rest
                ratios["ratio_to_floor"] = paired(runs, n, lambda by, ref: by[v]["median_s"] / (
                    ref["median_s"] + sum(by[v]["phases_s"][p] for p in PHASES[1:])) if v in by else None, "generate")
            if "decode_step_s" in row:
                ratios["decode_over_stream"] = [x["decode_step_s"] / x["stream_s"] for x in mine]
            for key, values in ratios.items():
                if values and key != f"ratio_to_{v}" and not (v in TRL_PRECISIONS and key in TO_TRL):
                    s = spread(values)
                    row[key], row[f"{key}_range"], row[f"{key}_values"] = s["median"], [s["min"], s["max"]], values
            rows.append(row)
    return rows


def check_targets(rows: list[dict], floors: dict) -> list[str]:
    """One line per target and prompt count: the measured ratio (median, min–max over the rounds), met or not."""
    lines = []
    for row in rows:
        if row["variant"] not in ("sdft", "generate"):
            continue
        if row["variant"] == "sdft" and "ratio_to_floor" not in row and floors.get(row["prompts"]):
            row["ratio_to_floor"] = row["median_s"] / floors[row["prompts"]]["floor_s"]
        for what, key, op, limit in TARGETS:
            if key in row and (key == "decode_over_stream") == (row["variant"] == "generate"):
                met = row[key] >= limit if op == ">=" else row[key] <= limit
                lo, hi = row.get(f"{key}_range", [row[key], row[key]])
                half = max(hi / row[key] - 1, 1 - lo / row[key]) if row[key] else 0.0
                lines.append(f"target at {row['prompts']:>2} prompts: {what} = {row[key]:.2f} ({lo:.2f}–{hi:.2f}, "
                             f"±{half:.0%}) (target {op} {limit}): {'met' if met else 'NOT met'}")
    return lines


def sdft_config(variant: str, new_tokens: int):
    from sdft_lab import DivergenceConfig, SDFTConfig

    divergence = {"sdft-reverse": DivergenceConfig(kind="reverse_kl"), "sdft-jsd": DivergenceConfig(kind="jsd"),
                  "sdft-topk": DivergenceConfig(top_k=TOP_K), "sdft-sampled": DivergenceConfig(kind="sampled")}
    return SDFTConfig(max_new_tokens=new_tokens, divergence=divergence.get(variant, DivergenceConfig()),
                      # what a user gets (auto: the engine it ran is recorded), but where a variant names a sampler
                      engine={"sdft-hf": "hf", "sdft-unmerged": "lean"}.get(variant, "auto"),
                      rollouts_per_prompt=2 if variant == "sdft-k2" else 1)


def run_variant(variant: str, prompts: int, steps: int, new_tokens: int) -> dict:
    import torch

    from sdft_lab import SDFT, SFT, StudentConfig, TrainConfig, Trainer, add_student, load, load_dataset, precision
    from sdft_lab.prompts import PromptConfig, left_pad, student_ids

    if variant.startswith("trl"):  # TRL keeps fp32 weights and autocasts to bf16 (its bf16=True): load them fp32
        os.environ[precision.ENV] = "fp32"
    torch.manual_seed(0)
    model, tok = load("bundled", quantization="none", device="cpu")
    examples = load_dataset("demo")
    times, phases, extra = [], {p: [] for p in PHASES}, {"precision": precision.describe(model)}
    if variant == "generate":
        ids, mask = left_pad([student_ids(tok, ex, PromptConfig()) for ex in examples[:prompts]], tok.pad_token_id)
        for i in range(steps + 1):
            t = time.perf_counter()
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=True, top_k=0, pad_token_id=tok.pad_token_id)
            times.append(time.perf_counter() - t)
        extra |= decode_and_stream(model, tok, [student_ids(tok, ex, PromptConfig()) for ex in examples[:prompts]],
                                  new_tokens)
    elif variant.startswith("trl"):
        bf16 = variant != "trl-full-fp32" and precision.native_bf16()
        times = run_trl(variant, model, tok, examples, prompts, steps, new_tokens, bf16)
        extra["precision"] = ("bf16 autocast over fp32 weights (TRL's default)" if bf16 else "fp32 (bf16=False"
                              + (")" if variant == "trl-full-fp32" else ": this CPU has no native bf16)"))
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
            if "engine" in record:
                extra["engine"] = record["engine"]
    timed = slice(1, None)  # the first step warms up allocators and caches
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"variant": variant, "prompts": prompts, "median_s": statistics.median(times[timed]),
            "times_s": times, "phases_s": {p: statistics.median(v[timed]) for p, v in phases.items() if v},
            "peak_rss_mib": peak_mib, **extra}


def decode_and_stream(model, tok, prompts: list[list[int]], new_tokens: int) -> dict:
    """The lean sampler's time per decode step (a full rollout minus a one-token one, per extra token), and
    the weight-streaming floor: the best of 3 timed reads of every weight of the model (a sum over each)."""
    import torch

    from sdft_lab import sample

    def timed(n: int) -> tuple[float, int]:
        t = time.perf_counter()
        y = sample(model, tok, prompts, n, seed=0, engine="lean")
        return time.perf_counter() - t, int(y.lengths.max())

    timed(2)  # warm-up: the matmul layouts are measured here
    (full, length), (one, _) = timed(new_tokens), timed(1)
    weights = [p.detach() for p in model.parameters()]
    reads = []
    with torch.no_grad():
        for _ in range(3):
            t = time.perf_counter()
            for w in weights:
                w.sum()
            reads.append(time.perf_counter() - t)
    return {"decode_step_s": (full - one) / max(1, length - 1), "stream_s": min(reads),
            "weights_gib": sum(w.numel() * w.element_size() for w in weights) / 2**30}


def run_trl(variant: str, model, tok, examples, prompts: int, steps: int, new_tokens: int, bf16: bool) -> list[float]:
    """TRL's SDFTTrainer on the same model, data and LoRA (through sdft_lab.interop.trl), timed per step.
    bf16: TRL's default, autocast to bf16 (on a CPU without native bf16 many times slower than fp32: 104 s a
    step against 16 s on an AVX2-only EPYC, so there it runs fp32)."""
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
    args, lora, data = load_for_trl(folder, tempfile.mkdtemp(), use_cpu=True, bf16=bf16, report_to="none",
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
    parser.add_argument("--rounds", type=int, default=3, help="runs of every variant, interleaved, at least")
    parser.add_argument("--max-rounds", type=int, default=8, help="at most, while a ratio's spread is wider")
    parser.add_argument("--spread", type=float, default=0.10, help="every ratio's min and max within ± this of "
                        "its median ends the rounds")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "PROMPTS"), help=argparse.SUPPRESS)
    parser.add_argument("--tables", type=Path, help="print the tables of a results file (its runs), run nothing")
    parser.add_argument("--out", type=Path, help="the results file [bench/results/step_time_p<N>[_<variants>].json]")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_variant(args.worker[0], int(args.worker[1]), args.steps, args.new_tokens)))
        return

    if args.tables:  # e.g. a run stopped early: its runs are written as they finish
        saved = json.loads(args.tables.read_text())
        runs = saved["runs"]
        args.prompts = sorted({x["prompts"] for x in runs})
        args.variants = list(dict.fromkeys(x["variant"] for x in runs))
        return tables(runs, args, saved["meta"], None)

    from sdft_lab.precision import native_bf16
    from sdft_lab.report import machine

    if not native_bf16() and "trl-full" in args.variants and "trl-full-fp32" in args.variants:
        args.variants.remove("trl-full-fp32")  # trl-full runs fp32 here already: the same run twice
        print("this CPU has no native bf16: trl-full runs fp32, trl-full-fp32 left out", file=sys.stderr)

    the_machine = machine()
    print(f"machine: {the_machine['cpu']}, {the_machine['cores']} cores, torch threads {the_machine['torch_threads']}, "
          f"flags {' '.join(the_machine['cpu_flags']) or 'none of avx2 / avx512 / amx'}, BLAS {the_machine['blas']}",
          file=sys.stderr)
    chosen = "" if args.variants == list(VARIANTS) else "_" + "-".join(args.variants)  # runs of other variants kept
    name = f"step_time_p{'-'.join(map(str, args.prompts))}{chosen}.json"
    out = args.out or Path(__file__).parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": the_machine, "new_tokens": args.new_tokens,
            "timed_steps": args.steps, "rounds": {}, "spread_limit": args.spread}
    runs: list[dict] = []

    def worker(variant: str, prompts: int) -> dict:
        cmd = [sys.executable, __file__, "--worker", variant, str(prompts),
               "--steps", str(args.steps), "--new-tokens", str(args.new_tokens)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{variant} at {prompts} prompts failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def saved(run: dict) -> None:
        print(f"  round {run['round'] + 1}: {run['variant']:<13} {run['prompts']:>3} prompts  {run['median_s']:6.2f} "
              "s/step", file=sys.stderr)
        write_json(out, {"meta": meta, "partial": True, "runs": runs})  # every run kept as it finishes

    for prompts in args.prompts:
        meta["rounds"][str(prompts)] = rounds(worker, args.variants, prompts, runs, args.rounds, args.max_rounds,
                                              args.spread, saved)
    tables(runs, args, meta, out)


def rounds(worker, variants: list[str], prompts: int, runs: list[dict], least: int, most: int, limit: float,
           saved=lambda run: None) -> int:
    """Run every variant once per round (worker(variant, prompts) -> its record), appending to `runs`, from
    `least` rounds until every ratio's spread is within ±limit or `most` rounds have run. Returns the rounds."""
    r = 0
    while True:  # interleaved: A B C …, then again; ratios are taken within a round
        for variant in variants:
            runs.append({**worker(variant, prompts), "round": r})
            saved(runs[-1])
        r += 1
        if r < least:
            continue
        wide = {k: v for k, v in spreads(combine(runs, variants, [prompts]), trimmed=True).items() if v > limit}
        if not wide:
            print(f"  every ratio within ±{limit:.0%} of its median after {r} rounds", file=sys.stderr)
            return r
        if r >= most:
            print(f"  the round limit ({r}): {len(wide)} ratios still wider than ±{limit:.0%}", file=sys.stderr)
            return r
        print(f"  {len(wide)} ratios wider than ±{limit:.0%} (widest: {max(wide, key=wide.get)}, "
              f"±{max(wide.values()):.0%}): another round", file=sys.stderr)


def spreads(rows: list[dict], trimmed: bool = False) -> dict[str, float]:
    """Each target ratio's spread over the rounds, by "<variant> at <N> prompts: <ratio>": how far its min or
    max lies from its median, as a fraction of the median (0.1 = all rounds within ±10 %). trimmed: from 4
    rounds on, without the one round farthest from the median (a round another process shared, as in the bench
    of 2026-12-02): what the rounds decide on. More rounds cannot narrow a min–max; they can outvote one."""
    out = {}
    for row in rows:  # the rows and ratios check_targets judges: SDFT's step, generate's decode step
        if row["variant"] not in ("sdft", "generate"):
            continue
        for key in [k for _, k, _, _ in TARGETS
                    if f"{k}_range" in row and (k == "decode_over_stream") == (row["variant"] == "generate")]:
            values, median = row[f"{key}_values"], row[key]
            if trimmed and len(values) >= 4:
                values = sorted(values, key=lambda x: abs(x - median))[:-1]
            out[f"{row['variant']} at {row['prompts']} prompts: {key}"] = \
                max(max(values) / median - 1, 1 - min(values) / median) if median else 0.0
    return out


def write_json(path: Path, data: dict) -> None:
    """Whole or not at all: a run cut while writing leaves the previous version."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def tables(runs: list[dict], args: argparse.Namespace, meta: dict, out: Path | None) -> None:
    """Print the table, the floors and the targets from the runs, and write them all to `out` (if given)."""
    m = meta["machine"]
    ran = meta["rounds"] if isinstance(meta["rounds"], dict) else {str(p): meta["rounds"] for p in args.prompts}
    print(f"{meta['date']}, {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, rounds "
          + ", ".join(f"{n} at {p} prompts" for p, n in ran.items()))
    rows = combine(runs, args.variants, args.prompts)
    print(f"\n{'variant':<14}{'prompts':>8}{'s/step':>8}{'×SFT':>7}{'×TRL':>7}{'×SDFT':>7}{'peak RSS':>10}{'×SFT':>6}"
          "   phases (median s)")
    for row in rows:
        same = {r["variant"]: r for r in rows if r["prompts"] == row["prompts"]}
        if "sft" in same:
            row["rss_ratio_to_sft"] = row["peak_rss_mib"] / same["sft"]["peak_rss_mib"]
        phases = "  ".join(f"{k[:-2]} {v:.2f}" for k, v in row["phases_s"].items() if v)
        cell = lambda key, fmt: format(row[key], fmt) if key in row else "–"  # noqa: E731
        print(f"{row['variant']:<14}{row['prompts']:>8}{row['median_s']:>8.2f}{cell('ratio_to_sft', '7.2f'):>7}"
              f"{cell('ratio_to_trl-full', '7.2f'):>7}{cell('ratio_to_sdft', '7.2f'):>7}"
              f"{row['peak_rss_mib']:>7.0f} MiB{cell('rss_ratio_to_sft', '6.2f'):>6}"
              f"   {phases}")
    floors = {p: floor_row(rows, p) for p in args.prompts}
    for prompts, floor in floors.items():
        if floor:
            parts = " + ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in floor["parts_s"].items())
            print(f"floor at {prompts} prompts: {parts} = {floor['floor_s']:.2f} s")
        for row in rows:
            if row["variant"] == "generate" and row["prompts"] == prompts and "decode_step_s" in row:
                print(f"decode step of the lean sampler at {prompts} rows: {1e3 * row['decode_step_s']:.0f} ms; reading "
                      f"the {row['weights_gib']:.2f} GiB of weights once: {1e3 * row['stream_s']:.0f} ms")
    precisions = sorted({f"{x['variant']}: {x['precision']}" for x in runs if "precision" in x})
    if precisions:
        print("precision: " + "; ".join(precisions))
    targets = check_targets(rows, floors)
    for line in targets:
        print(line)
    limit, every, trim = meta.get("spread_limit", 0.10), spreads(rows), spreads(rows, trimmed=True)
    print(f"spread of each target ratio over the rounds (±, of its median; without its farthest round from 4 "
          f"rounds on): {sum(v <= limit for v in trim.values())} of {len(trim)} within ±{limit:.0%}"
          + "".join(f"\n  {k}: ±{every[k]:.1%} (±{v:.1%} without its farthest round)" for k, v in trim.items()))
    if out is not None:
        write_json(out, {"meta": meta, "rows": rows, "floors": floors, "runs": runs})
        print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()

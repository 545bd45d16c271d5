"""The bf16 precision policy's measurements, in one resumable command, for a CPU with native bf16 (AVX512-BF16
or AMX): what docs/performance.md leaves "not measured" until such a CPU runs this.

Three stages, each written to bench/results/native_bf16.json as its runs finish (a rerun skips what is there):

  pair      the frontier's workshop pair (frontier.workshop_pair on docs/frontier.json: guided SDFT and SFT at
            the same forgetting) trained again under SDFT_LAB_PRECISION=bf16 on seeds 0–2, beside that file's
            fp32 trials, judged by PAIR_RULE; and the SDFT side's seed 0 again in fp32, which must give the file's
            figures (fp32 runs repeat bit for bit across CPUs, docs/machines.md), or the two sittings are not
            comparable and the stage says so.
  workshop  notebook 03's run (experiments/workshop.py) under the policy and pinned to fp32 (the code path of a
            CPU before the policy), in the order A B B A, its wall time with the model's load; the speed-up is
            fp32's time over the policy's, per pair of runs (the target: at least 1.5).
  bench     bench/step_time.py at 4 and at 16 prompts: SFT, SDFT, TRL's SDFTTrainer at its bf16 default and in
            fp32, plain generate, interleaved rounds (its own targets and spreads).

    python bench/native_bf16.py                      # every stage (≈ 2 h on 2 cores)
    python bench/native_bf16.py --stages pair        # one of them
    python bench/native_bf16.py --tables             # the saved results' tables, nothing run

On a CPU without native bf16 it refuses: bf16 is emulated there, several times slower, so its figures would
say nothing about the policy, which computes fp32 on such a CPU. --smoke runs every stage's plumbing on any CPU
(one training step, 4 tokens, one seed, into --out): a check of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
STAGES = ("pair", "workshop", "bench")
SEEDS = (0, 1, 2)
FIGURES = {"answer gain": ("gain", "answer"), "passage gain": ("gain", "passage"),
           "general drift": ("drift", "general"), "retention": ("retention", None)}
BENCH_VARIANTS = ["sft", "sdft", "trl-full", "trl-full-fp32", "generate"]
WORKSHOP_ORDER = ("auto", "fp32", "fp32", "auto")  # A B B A: a drift in the machine's speed cancels over a pair
REPRODUCED = 1e-6  # the fp32 check: |figure − the published one| under this, for every figure

PAIR_RULE = ("bf16 stays the policy's default only if, for both methods of the workshop pair, each figure's bf16 "
             "mean over seeds 0–2 (answer gain, passage gain, general drift, retention) lies within 1.96 standard "
             "errors of its difference from the fp32 mean (each side's SE over its own seeds); otherwise bf16 "
             "becomes an option (SDFT_LAB_PRECISION=bf16) and the policy computes fp32.")


def figure(trial: dict, name: str) -> float:
    group, key = FIGURES[name]
    return trial[group] if key is None else trial[group][key]


def compare(fp32: list[dict], bf16: list[dict]) -> list[dict]:
    """One row per figure: each side's mean and SE over its seeds, the difference, its 1.96-SE band, whether the
    difference lies within it, and each seed's own difference (the same seed starts both runs alike, so these
    show how steadily the precision moves a figure, which the two means cannot)."""
    rows = []
    for name in FIGURES:
        a, b = ([figure(t, name) for t in side] for side in (fp32, bf16))
        se = [statistics.stdev(x) / math.sqrt(len(x)) if len(x) > 1 else math.nan for x in (a, b)]
        diff = statistics.mean(b) - statistics.mean(a)
        band = 1.96 * math.hypot(*se)
        paired = [figure(y, name) - figure(x, name) for x in sorted(fp32, key=lambda t: t["seed"])
                  for y in bf16 if x["seed"] == y["seed"]]
        rows.append({"figure": name, "fp32": statistics.mean(a), "fp32_se": se[0], "bf16": statistics.mean(b),
                     "bf16_se": se[1], "difference": diff, "band": band, "within": abs(diff) <= band,
                     "per_seed": paired})
    return rows


def keeps_bf16(comparisons: dict[str, list[dict]]) -> bool:
    """PAIR_RULE: every figure of both methods within its band."""
    return all(row["within"] for rows in comparisons.values() for row in rows)


def pair_todo(done: list[dict], seeds: tuple[int, ...]) -> list[tuple[str, str, int]]:
    """(precision, side, seed) still to run: bf16 on both sides and every seed, seed 0 first, then SDFT's seed 0
    in fp32 (the check that this machine repeats the published fp32 figures)."""
    want = [("bf16", side, seed) for seed in seeds for side in ("sdft", "sft")] + [("fp32", "sdft", seeds[0])]
    have = {(t["precision_pin"], t["side"], t["seed"]) for t in done}
    return [w for w in want if w not in have]


def workshop_todo(done: list[dict], order: tuple[str, ...]) -> list[tuple[int, str]]:
    """(position, pin) of the workshop runs still to run, in the A B B A order."""
    have = {r["position"] for r in done}
    return [(i, pin) for i, pin in enumerate(order) if i not in have]


def speedups(runs: list[dict], order: tuple[str, ...] = WORKSHOP_ORDER) -> list[float]:
    """fp32's wall time over the policy's, per consecutive pair of positions (0–1, 2–3) that has both."""
    at = {r["position"]: r["wall_s"] for r in runs}
    out = []
    for i in range(0, len(order) - 1, 2):
        if i in at and i + 1 in at:
            t = {order[i]: at[i], order[i + 1]: at[i + 1]}
            out.append(t["fp32"] / t["auto"])
    return out


def the_pair() -> dict[str, dict]:
    """The workshop pair's two configurations and their fp32 trials in docs/frontier.json, by side."""
    from sdft_lab.experiments import frontier
    from sdft_lab.experiments.search import STEPS

    results = frontier.published()
    out = {}
    for point in frontier.workshop_pair(results):
        trials = [t for t in results["trials"] if t["name"] == point["name"]]
        out[point["method"]] = {"name": point["name"], "family": point["family"], "settings": trials[0]["settings"],
                                "steps": frontier.STEPS_OF.get(point["family"], STEPS),
                                "fp32": sorted(trials, key=lambda t: t["seed"])}
    return out


def pair_worker(todo: list[tuple[str, int]], smoke: bool) -> None:
    """In a process with SDFT_LAB_PRECISION set: each (side, seed) trained and measured as the frontier does,
    one JSON line per trial on stdout as it finishes."""
    from sdft_lab import precision
    from sdft_lab.experiments.search import trial
    from sdft_lab.models import load

    pair = the_pair()
    base, tok = load("bundled")
    cache: dict = {}
    for side, seed in todo:
        p = pair[side]
        t = trial(base, tok, side, p["settings"], seed, cache, steps=1 if smoke else p["steps"], qa=False)
        keep = ("name", "seed", "gain", "retention", "drift", "first_loss", "last_loss", "train_s", "eval_s")
        print(json.dumps({**{k: t[k] for k in keep}, "side": side, "precision_pin": precision.pinned(),
                          "precision": precision.describe(base)}), flush=True)


def workshop_worker(out: Path, smoke: bool) -> None:
    from sdft_lab.experiments.workshop import WorkshopConfig, workshop

    workshop(out, WorkshopConfig(smoke=smoke), reuse=False)


def child(args: list[str], pin: str) -> subprocess.Popen:
    env = {**os.environ, "SDFT_LAB_PRECISION": pin}
    return subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, text=True)


def run_pair(results: dict, save, smoke: bool) -> None:
    seeds = SEEDS[:1] if smoke else SEEDS
    done = results.setdefault("pair", {"rule": PAIR_RULE, "trials": []})["trials"]
    todo = pair_todo(done, seeds)
    if smoke:
        todo = [t for t in todo if t[1] == "sdft"]
    for pin in ("bf16", "fp32"):  # one process per precision: the model loads and the base's figures are taken once
        mine = [(side, seed) for p, side, seed in todo if p == pin]
        if not mine:
            continue
        proc = child(["--worker", "pair", json.dumps(mine)] + ["--smoke"] * smoke, pin)
        for line in proc.stdout:  # each trial saved as it finishes: a stopped stage resumes after it
            if not line.startswith("{"):
                print(line, end="", file=sys.stderr)  # whatever else the run prints
                continue
            done.append(json.loads(line))
            print(f"  pair: {done[-1]['side']} seed {done[-1]['seed']} under {pin}: {done[-1]['precision']}",
                  file=sys.stderr)
            save()
        if proc.wait():
            sys.exit(f"the pair's {pin} runs failed (exit {proc.returncode}); what finished is saved")
    conclude_pair(results["pair"], smoke)
    save()


def conclude_pair(stage: dict, smoke: bool) -> None:
    """The comparison, the rule's outcome and the fp32 check, from the trials (in place)."""
    pair = the_pair()
    stage["comparison"], check = {}, {}
    for side, p in pair.items():
        bf16 = [t for t in stage["trials"] if t["side"] == side and t["precision_pin"] == "bf16"]
        fp32 = [t for t in p["fp32"] if t["seed"] in {t["seed"] for t in bf16}] if smoke else p["fp32"]
        if bf16 and fp32:
            stage["comparison"][side] = compare(fp32, bf16)
        for t in (t for t in stage["trials"] if t["side"] == side and t["precision_pin"] == "fp32"):
            published = next(x for x in p["fp32"] if x["seed"] == t["seed"])
            check[f"{side} seed {t['seed']}"] = max(abs(figure(t, n) - figure(published, n)) for n in FIGURES)
    stage["fp32_check"] = check
    stage["fp32_reproduced"] = bool(check) and all(v < REPRODUCED for v in check.values())
    complete = all(len(r[0]["per_seed"]) == len(SEEDS) for r in stage["comparison"].values())
    stage["keeps_bf16"] = keeps_bf16(stage["comparison"]) if complete and len(stage["comparison"]) == 2 else None


def run_workshop(results: dict, save, out: Path, smoke: bool) -> None:
    done = results.setdefault("workshop", {"order": list(WORKSHOP_ORDER), "runs": []})["runs"]
    for position, pin in workshop_todo(done, WORKSHOP_ORDER):
        folder = Path("runs") / out.stem / f"workshop_{position}"  # its adapters stay out of git (runs/)
        t0 = time.perf_counter()
        proc = child(["--worker", "workshop", str(folder)] + ["--smoke"] * smoke, pin)
        if proc.wait():
            sys.exit(f"the workshop run under {pin} failed (exit {proc.returncode}); what finished is saved")
        wall = time.perf_counter() - t0
        ran = json.loads((folder / "results.json").read_text())
        done.append({"position": position, "pin": pin, "wall_s": wall, "precision": ran["precision"],
                     "total_s": ran["total_s"], "timings_s": ran["timings_s"],
                     "answers": {m: ran[m]["answers"] for m in ("sft", "sdft")}})
        print(f"  workshop {position + 1}/{len(WORKSHOP_ORDER)} under {pin}: {wall:.1f} s ({ran['precision']})",
              file=sys.stderr)
        save()
    results["workshop"]["speedups"] = speedups(done)
    save()


def run_bench(results: dict, save, out: Path, smoke: bool, max_rounds: int) -> None:
    stage = results.setdefault("bench", {})
    for prompts in (2,) if smoke else (4, 16):
        if str(prompts) in stage:
            continue
        path = out.parent / f"native_bf16_step_time_p{prompts}.json"
        extra = ["--steps", "1", "--new-tokens", "4", "--rounds", "1", "--max-rounds", "1"] if smoke else \
            ["--max-rounds", str(max_rounds)]
        proc = subprocess.run([sys.executable, str(HERE / "step_time.py"), "--prompts", str(prompts), "--variants",
                               *(["sdft", "generate"] if smoke else BENCH_VARIANTS), "--out", str(path), *extra],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"the bench at {prompts} prompts failed:\n{proc.stderr[-3000:]}")
        stage[str(prompts)] = {"file": path.name, "targets": [ln for ln in proc.stdout.splitlines() if "target" in ln]}
        print(proc.stdout, file=sys.stderr)
        save()


def tables(results: dict) -> str:
    m = results["machine"]
    lines = [f"{results['date']}, {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['torch_threads']} torch threads"
             + (" — SMOKE: plumbing only, not a measurement" if results.get("smoke") else "")]
    pair = results.get("pair", {})
    for side, rows in pair.get("comparison", {}).items():
        lines.append(f"\n{side} (workshop pair): figure, fp32 mean ± SE, bf16 mean ± SE, difference (band), "
                     "each seed's difference")
        for r in rows:
            lines.append(f"  {r['figure']:<14} {r['fp32']:.4f} ± {r['fp32_se']:.4f}   {r['bf16']:.4f} ± "
                         f"{r['bf16_se']:.4f}   {r['difference']:+.4f} (±{r['band']:.4f}, "
                         f"{'within' if r['within'] else 'OUTSIDE'})   {' '.join(f'{d:+.4f}' for d in r['per_seed'])}")
    if "fp32_check" in pair:
        lines.append(f"fp32 check against docs/frontier.json (largest |difference| of the figures): "
                     + ", ".join(f"{k} {v:.2e}" for k, v in pair["fp32_check"].items())
                     + (": reproduced" if pair["fp32_reproduced"] else
                        ": NOT reproduced, so bf16 here is compared with another machine's fp32"))
    if pair.get("keeps_bf16") is not None:
        lines.append(f"PAIR_RULE: {'bf16 stays the default' if pair['keeps_bf16'] else 'bf16 becomes an option'}")
    shop = results.get("workshop", {})
    for r in shop.get("runs", []):
        lines.append(f"workshop run {r['position'] + 1} under {r['pin']}: {r['wall_s']:.1f} s ({r['precision']})")
    if shop.get("speedups"):
        s = shop["speedups"]
        lines.append(f"workshop speed-up (fp32 ÷ policy, per pair): {', '.join(f'{x:.2f}' for x in s)} "
                     f"(target ≥ 1.5: {'met' if min(s) >= 1.5 else 'not met' if max(s) < 1.5 else 'split'})")
    for prompts, b in results.get("bench", {}).items():
        lines += [f"bench at {prompts} prompts ({b['file']}):", *(f"  {t}" for t in b["targets"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "native_bf16.json")
    parser.add_argument("--max-rounds", type=int, default=5, help="the bench's round limit at each size")
    parser.add_argument("--smoke", action="store_true", help="the plumbing on any CPU: one step, 4 tokens, a seed")
    parser.add_argument("--tables", action="store_true", help="print the saved results, run nothing")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, arg = args.worker
        return pair_worker(json.loads(arg), args.smoke) if kind == "pair" else workshop_worker(Path(arg), args.smoke)
    if args.tables:
        return print(tables(json.loads(args.out.read_text())))

    from sdft_lab.precision import native_bf16
    from sdft_lab.report import machine

    if not native_bf16() and not args.smoke:
        sys.exit("this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo): bf16 runs "
                 "emulated here, several times slower, and the policy computes fp32 on such a CPU, so these "
                 "figures would say nothing about it. --smoke checks the plumbing on any CPU.")
    results = json.loads(args.out.read_text()) if args.out.exists() else {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "smoke": args.smoke}
    if results.get("smoke") != args.smoke:
        sys.exit(f"{args.out} holds {'a smoke run' if results.get('smoke') else 'measurements'}: give another --out")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # whole or not at all
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.out)

    for stage in args.stages:
        print(f"stage {stage}", file=sys.stderr)
        if stage == "pair":
            run_pair(results, save, args.smoke)
        elif stage == "workshop":
            run_workshop(results, save, args.out, args.smoke)
        else:
            run_bench(results, save, args.out, args.smoke, args.max_rounds)
    print(tables(results))


if __name__ == "__main__":
    main()

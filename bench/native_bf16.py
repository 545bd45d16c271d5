"""The bf16 precision policy's measurements, in one resumable command, for a CPU with native bf16 (AVX512-BF16
or AMX): what docs/performance.md leaves "not measured" until such a CPU runs this.

Three stages, each written to bench/results/native_bf16.json as its runs finish (a rerun skips what is there):

  pair      the frontier's workshop pair (frontier.workshop_pair on docs/frontier.json: guided SDFT and SFT at
            the same forgetting) trained under SDFT_LAB_PRECISION=bf16 on seeds 0–2 and judged by BF16_RULE
            against fp32 on the same seeds. SDFT's seed 0 runs in fp32 first: where it repeats the published
            figures, the published fp32 trials stand for this machine's; where it does not (fp32 repeats bit for
            bit on one machine, not across CPUs: docs/machines.md), the other fp32 runs are made here too.
  workshop  notebook 03's run (experiments/workshop.py) under the policy and pinned to fp32 (the code path of a
            CPU before the policy), in the order A B B A after one untimed run under each (the machine's
            one-off choices, kept in the cache folder, are made before the timing); its wall time with the
            model's load. The speed-up is fp32's time over the policy's within each pair (the target: ≥ 1.5).
  bench     bench/step_time.py at 4 and at 16 prompts: SFT, SDFT, TRL's SDFTTrainer at its bf16 default and in
            fp32, plain generate, interleaved rounds (its own targets and spreads); a size resumes whole.

    python bench/native_bf16.py                      # every stage (≈ 2–3½ h on 2 cores)
    python bench/native_bf16.py --stages pair        # one of them
    python bench/native_bf16.py --tables             # the saved results' tables, nothing run

On a CPU without native bf16 it refuses: bf16 is emulated there, several times slower, so its figures would
say nothing about the policy, which computes fp32 on such a CPU. --smoke runs every stage's plumbing on any CPU
(one training step, 4 tokens, one seed, SDFT's side only, into bench/results/native_bf16_smoke.json by
default): a check of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
STAGES = ("pair", "workshop", "bench")
SEEDS = (0, 1, 2)
SIDES = ("sdft", "sft")
FIGURES = {"answer gain": ("gain", "answer"), "passage gain": ("gain", "passage"),
           "general drift": ("drift", "general"), "retention": ("retention", None)}
SMALL = 0.10  # the practical margin, inspect/quantization.py's "small": a tenth of the figure
REPRODUCED = 1e-6  # the fp32 check: |figure − the published one| under this, for every figure
BENCH_VARIANTS = ["sft", "sdft", "trl-full", "trl-full-fp32", "generate"]
WORKSHOP_ORDER = ("auto", "fp32", "fp32", "auto")  # A B B A: a drift in the machine's speed cancels over a pair

BF16_RULE = ("bf16 stays the policy's default unless it shifts a figure of the workshop pair beyond both what "
             "matters and what a change of seed alone would do. For each method and figure (answer gain, passage "
             "gain, general drift, retention) the change is the mean over seeds 0–2 of each seed's bf16 − fp32 "
             "difference, and its margin the larger of a practical one (10 % of the fp32 mean; for retention, one "
             "binomial standard error over the probes, their resolution) and z·√(2/3)·sd, how far the mean of "
             "three differences moves if bf16 acted as a fresh seed (sd: fp32's standard deviation over the "
             "seeds; z = 2.73, the two-sided 5 % normal quantile corrected for the 8 figures). A change beyond its "
             "margin makes bf16 an option (SDFT_LAB_PRECISION=bf16) and the policy computes fp32. With three "
             "seeds only a large systematic shift is caught, and since sd is itself estimated from three seeds, "
             "a bf16 that acts exactly as a fresh seed still exceeds some margin in about 22 % of sittings "
             "(simulated on the published pair): in doubt the rule keeps fp32, the reference, which costs "
             "speed, not results.")


def figure(trial: dict, name: str) -> float:
    group, key = FIGURES[name]
    return trial[group] if key is None else trial[group][key]


def compare(fp32: list[dict], bf16: list[dict], n_probes: int) -> list[dict]:
    """BF16_RULE's figures, one row each, on the seeds both precisions ran: the fp32 mean and standard deviation,
    the bf16 mean, each seed's bf16 − fp32 difference (the same seed starts both runs alike), their mean (the
    change), the rule's margin and whether the change lies within it."""
    from sdft_lab.eval.retention import retention_se
    from sdft_lab.experiments.frontier import band_z

    seeds = sorted({t["seed"] for t in fp32} & {t["seed"] for t in bf16})
    by_seed = [{t["seed"]: t for t in side} for side in (fp32, bf16)]
    rows = []
    for name in FIGURES:
        a, b = ([figure(side[s], name) for s in seeds] for side in by_seed)
        per_seed = [y - x for x, y in zip(a, b)]
        sd = statistics.stdev(a) if len(a) > 1 else 0.0
        mean = statistics.mean(a)
        practical = retention_se(mean, n_probes) if name == "retention" else SMALL * abs(mean)
        reseeded = band_z(2 * len(FIGURES)) * (2 / len(seeds)) ** 0.5 * sd  # bf16 as a fresh seed: Var = 2 sd² / n
        margin = max(practical, reseeded)
        change = statistics.mean(per_seed)
        rows.append({"figure": name, "fp32": mean, "fp32_sd": sd, "bf16": statistics.mean(b), "per_seed": per_seed,
                     "change": change, "margin": margin, "within": abs(change) <= margin, "seeds": seeds})
    return rows


def keeps_bf16(comparisons: dict[str, list[dict]]) -> bool:
    """BF16_RULE: every figure of both methods within its margin."""
    return all(row["within"] for rows in comparisons.values() for row in rows)


def the_pair() -> dict[str, dict]:
    """The workshop pair's two configurations and their fp32 trials in docs/frontier.json, by side; and the
    number of retention probes those trials were scored on."""
    from sdft_lab.experiments import frontier
    from sdft_lab.experiments.search import STEPS

    results = frontier.published()
    out = {}
    for point in frontier.workshop_pair(results):
        trials = [t for t in results["trials"] if t["name"] == point["name"]]
        out[point["method"]] = {"name": point["name"], "settings": trials[0]["settings"],
                                "steps": frontier.STEPS_OF.get(point["family"], STEPS),
                                "fp32": sorted(trials, key=lambda t: t["seed"]), "n_probes": results["n_probes"]}
    return out


def present(trials: list[dict], pair: dict) -> list[dict]:
    """The trials of the pair's present configurations: those of an earlier pair say nothing of this one."""
    return [t for t in trials if t["name"] == pair[t["side"]]["name"]]


def reproduced(trials: list[dict], pair: dict) -> bool | None:
    """Whether SDFT's fp32 seed 0 run here repeats the published figures (None: not run yet)."""
    check = [t for t in present(trials, pair)
             if t["side"] == "sdft" and t["precision_pin"] == "fp32" and t["seed"] == SEEDS[0]]
    if not check:
        return None
    published = next(t for t in pair["sdft"]["fp32"] if t["seed"] == SEEDS[0])
    return all(abs(figure(check[0], n) - figure(published, n)) < REPRODUCED for n in FIGURES)


def pair_todo(trials: list[dict], pair: dict, seeds: tuple[int, ...], sides: tuple[str, ...] = SIDES) \
        -> list[tuple[str, str, int]]:
    """(precision, side, seed) still to run, in order: SDFT's fp32 seed 0 (the check), bf16 on every side and
    seed, and, where the check did not repeat the published figures, the other fp32 runs. Only trials of the
    pair's present configurations count as done."""
    done = {(t["precision_pin"], t["side"], t["seed"]) for t in present(trials, pair)}
    want = [("fp32", "sdft", seeds[0]), *(("bf16", side, seed) for seed in seeds for side in sides)]
    if reproduced(trials, pair) is False:
        want += [("fp32", side, seed) for seed in seeds for side in sides]
    return [w for w in dict.fromkeys(want) if w not in done]


def fp32_side(trials: list[dict], pair: dict, side: str) -> list[dict]:
    """fp32's trials for the comparison: the published ones where the check repeated them, else this machine's."""
    if reproduced(trials, pair):
        return pair[side]["fp32"]
    return [t for t in trials if t["side"] == side and t["precision_pin"] == "fp32"]


def conclude_pair(stage: dict, pair: dict) -> None:
    """The comparison of each side and BF16_RULE's outcome, from the trials (in place); the rule waits for every
    seed of both sides."""
    trials = present(stage["trials"], pair)
    stage["fp32_reproduced"] = reproduced(trials, pair)
    stage["comparison"] = {}
    for side in SIDES:
        bf16 = [t for t in trials if t["side"] == side and t["precision_pin"] == "bf16"]
        fp32 = fp32_side(trials, pair, side)
        if {t["seed"] for t in bf16} & {t["seed"] for t in fp32}:
            stage["comparison"][side] = compare(fp32, bf16, pair[side]["n_probes"])
    complete = set(stage["comparison"]) == set(SIDES) and all(
        rows[0]["seeds"] == list(SEEDS) for rows in stage["comparison"].values())
    stage["keeps_bf16"] = keeps_bf16(stage["comparison"]) if complete else None


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


KEEP = ("seed", "gain", "retention", "drift", "first_loss", "last_loss", "train_s", "eval_s")  # of a trial


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
        settings = {**p["settings"], **({"tokens": 4} if smoke and "tokens" in p["settings"] else {})}
        t = trial(base, tok, side, settings, seed, cache, steps=1 if smoke else p["steps"], qa=False)
        print(json.dumps({**{k: t[k] for k in KEEP}, "name": p["name"], "side": side,
                          "precision_pin": precision.pinned(), "precision": precision.describe(base)}), flush=True)


def workshop_worker(out: Path, smoke: bool) -> None:
    """Notebook 03's run into the folder out."""
    from sdft_lab.experiments.workshop import WorkshopConfig, workshop

    workshop(out, WorkshopConfig(smoke=smoke), reuse=False)


def child_env(pin: str | None) -> dict[str, str]:
    """This environment under SDFT_LAB_PRECISION=pin; None: the variable removed (the policy's own choice, not a
    pin left in the caller's shell)."""
    env = {k: v for k, v in os.environ.items() if k != "SDFT_LAB_PRECISION"}
    return env | ({"SDFT_LAB_PRECISION": pin} if pin else {})


def child(args: list[str], pin: str | None, lines: bool = False) -> subprocess.Popen:
    """This script in another process under child_env(pin); lines: its stdout piped, to be read line by line."""
    return subprocess.Popen([sys.executable, __file__, *args], env=child_env(pin), text=True,
                            stdout=subprocess.PIPE if lines else None)


def run_pair(results: dict, save, smoke: bool) -> None:
    pair = the_pair()
    stage = results.setdefault("pair", {"rule": BF16_RULE, "trials": []})
    seeds, sides = (SEEDS[:1], ("sdft",)) if smoke else (SEEDS, SIDES)
    while todo := pair_todo(stage["trials"], pair, seeds, sides):
        pin = todo[0][0]  # the leading runs of one precision share a process: one load, the base's figures once
        batch = [(side, seed) for p, side, seed in todo[:next((i for i, t in enumerate(todo) if t[0] != pin), None)]]
        proc = child(["--worker", "pair", json.dumps(batch)] + ["--smoke"] * smoke, pin, lines=True)
        for line in proc.stdout:  # each trial saved as it finishes: a stopped stage resumes after it
            if not line.startswith("{"):
                print(line, end="", file=sys.stderr)  # whatever else the run prints
                continue
            stage["trials"].append(json.loads(line))
            t = stage["trials"][-1]
            print(f"  pair: {t['side']} seed {t['seed']} under {pin}: {t['precision']}", file=sys.stderr)
            conclude_pair(stage, pair)
            save()
        if proc.wait():
            sys.exit(f"the pair's {pin} runs failed (exit {proc.returncode}); what finished is saved")
    conclude_pair(stage, pair)
    save()


def run_workshop(results: dict, save, out: Path, smoke: bool) -> None:
    stage = results.setdefault("workshop", {"order": list(WORKSHOP_ORDER), "runs": [], "warm_s": {}})
    folder = HERE.parent / "runs" / (out.stem + "_smoke" * smoke)  # its adapters stay out of git (runs/)

    def run(pin: str, name: str) -> float:
        t0 = time.perf_counter()
        if child(["--worker", "workshop", str(folder / name)] + ["--smoke"] * smoke, pin).wait():
            sys.exit(f"the workshop run under {pin} failed; what finished is saved")
        return time.perf_counter() - t0

    if len(stage["runs"]) % 2:  # a pair is timed within one sitting: the half of one a stop cut off runs again
        dropped = stage["runs"].pop()
        print(f"  workshop: run {dropped['position'] + 1} dropped, its pair's other run did not follow it",
              file=sys.stderr)
    todo = workshop_todo(stage["runs"], WORKSHOP_ORDER)
    for pin in dict.fromkeys(WORKSHOP_ORDER) if todo else ():
        # untimed: the choices a machine makes once per batch size and type (precision, engine, matmul layout,
        # kept in the cache folder) are made here, not in the first timed run
        stage["warm_s"][pin] = run(pin, f"warm_{pin}")
        print(f"  workshop warm-up under {pin}: {stage['warm_s'][pin]:.1f} s (untimed)", file=sys.stderr)
    for position, pin in todo:
        wall = run(pin, f"workshop_{position}")
        ran = json.loads((folder / f"workshop_{position}" / "results.json").read_text())
        stage["runs"].append({"position": position, "pin": pin, "wall_s": wall, "precision": ran["precision"],
                              "total_s": ran["total_s"], "timings_s": ran["timings_s"],
                              "answers": {m: ran[m]["answers"] for m in SIDES}})
        print(f"  workshop {position + 1}/{len(WORKSHOP_ORDER)} under {pin}: {wall:.1f} s ({ran['precision']})",
              file=sys.stderr)
        stage["speedups"] = speedups(stage["runs"])
        save()


def run_bench(results: dict, save, out: Path, smoke: bool, max_rounds: int) -> None:
    stage = results.setdefault("bench", {})
    for prompts in (2,) if smoke else (4, 16):
        if str(prompts) in stage:
            continue
        path = out.parent / f"{out.stem}_step_time_p{prompts}.json"
        extra = ["--steps", "1", "--new-tokens", "4", "--rounds", "1", "--max-rounds", "1"] if smoke else \
            ["--max-rounds", str(max_rounds)]
        proc = subprocess.run([sys.executable, str(HERE / "step_time.py"), "--prompts", str(prompts), "--variants",
                               *(["sdft", "generate"] if smoke else BENCH_VARIANTS), "--out", str(path), *extra],
                              capture_output=True, text=True, env=child_env(None))  # the policy's type
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
        lines.append(f"\n{side} (workshop pair), seeds {rows[0]['seeds']}: figure, fp32 mean (sd), bf16 mean, each "
                     "seed's bf16 − fp32, their mean against the margin")
        for r in rows:
            lines.append(f"  {r['figure']:<14} {r['fp32']:.4f} ({r['fp32_sd']:.4f})  {r['bf16']:.4f}  "
                         + " ".join(f"{d:+.4f}" for d in r["per_seed"])
                         + f"  {r['change']:+.4f} (±{r['margin']:.4f}: {'within' if r['within'] else 'OUTSIDE'})")
    if pair.get("fp32_reproduced") is not None:
        lines.append("fp32 on this machine, SDFT seed 0: " + (
            "repeats docs/frontier.json's figures, so its fp32 trials stand" if pair["fp32_reproduced"] else
            "does not repeat docs/frontier.json's figures, so fp32 runs here on every seed"))
    if pair.get("keeps_bf16") is not None:
        lines.append(f"BF16_RULE: {'bf16 stays the default' if pair['keeps_bf16'] else 'bf16 becomes an option'}")
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
    parser.add_argument("--out", type=Path, help="[bench/results/native_bf16.json; --smoke: native_bf16_smoke.json]")
    parser.add_argument("--max-rounds", type=int, default=5, help="the bench's round limit at each size")
    parser.add_argument("--smoke", action="store_true", help="the plumbing on any CPU: one step, 4 tokens, a seed")
    parser.add_argument("--tables", action="store_true", help="print the saved results, run nothing")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out or HERE / "results" / f"native_bf16{'_smoke' * args.smoke}.json"
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
    here = machine()
    results = json.loads(args.out.read_text()) if args.out.exists() else {
        "date": time.strftime("%Y-%m-%d"), "machine": here, "smoke": args.smoke}
    if results.get("smoke") != args.smoke:
        sys.exit(f"{args.out} holds {'a smoke run' if results.get('smoke') else 'measurements'}: give another --out")
    if results["machine"] != here:  # a pair of timed runs, or a comparison, split over two machines says nothing
        sys.exit(f"{args.out} was written on another machine ({results['machine']}; this one: {here}): give "
                 "another --out")
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

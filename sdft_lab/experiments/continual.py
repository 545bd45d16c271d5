"""Continual learning: three batches of invented facts, learned one after another, each method at its best.

    python -m sdft_lab.experiments.continual --out runs/continual             # 3 seeds × 2 methods × 3 stages
    python -m sdft_lab.experiments.continual --out runs/continual --docs      # and docs/continual.json
    python -m sdft_lab.experiments.continual --out runs/c1 --methods sdft --seeds 0 1   # one share of the runs;
    python -m sdft_lab.experiments.continual --out runs/continual --merge runs/c1 runs/c2 --docs  # then join them

The paper's title claim: a model that learns task after task keeps the earlier ones. Here the tasks are
batches A, B, C of 8 invented facts each (data/knowledge, facts 1–8, 9–16, 17–24 by id), trained in that
order on one adapter, each stage with the QA sweep's trial settings (experiments/frontier.py: 24 steps of 4
questions, every fact's two training questions and six paraphrases, the short-answer system prompt) and a fresh
optimizer. Each method runs at its frontier-best configuration (RULE). After every stage, for every batch
trained so far:
  qa        greedy lenient and strict accuracy on its held-out questions, per kind (eval/knowledge.py);
  gain      the learning meter's answer and passage gains over the base (eval/meter.py);
and, once per stage, retention on the 120 probes and drift on general questions (eval/drift.py), so that what
batch A loses while B and C are learned is read off one table. Every stage is written as it finishes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..eval import load_knowledge, load_probes, mc_accuracy, qa_accuracy
from ..eval.drift import drifts, reference
from ..eval.meter import meter
from ..eval.retention import retention_se
from ..models import load
from ..report import machine
from ..trainer import Trainer
from .frontier import LEVERS, kept
from .runs import student_of
from .search import DOCS, STEPS, SYSTEMS, run_config, settings_of

STAGES = (("A", 0, 8), ("B", 8, 16), ("C", 16, 24))  # batch name, first and end fact (facts sorted by id)
SEEDS = (0, 1, 2)
RULE = ("Each method's configuration is its point of the QA sweep (docs/frontier_qa.json) with the highest mean "
        "direct-question QA on the seeds that chose (0–2), among those whose mean retention lies within one "
        "standard error of the base's; an SDFT lever counts only if the fresh seeds kept it (frontier.LEVER_RULE).")


def best_settings(sweep: dict) -> dict[str, dict]:
    """RULE applied to a QA sweep: {method: settings}."""
    trials = {t["name"]: t["settings"] for t in sweep["trials"]}
    levers = sweep.get("levers") or {}
    unconfirmed = {f for f in LEVERS if not (levers.get("chosen") == f and levers.get("kept"))}
    out = {}
    for method in ("sft", "sdft"):
        ok = [p for p in kept(sweep) if p["method"] == method and p.get("family") not in unconfirmed]
        if ok:
            out[method] = trials[max(ok, key=lambda p: p["qa_direct"]["mean"])["name"]]
    return out


def refuse_unlike(a: dict, b: dict, keys: tuple[str, ...], where: str) -> None:
    """A ValueError unless `a` and `b` were measured the same way: equal under every key."""
    for key in keys:
        if a.get(key) != b.get(key):
            raise ValueError(f"{where} was measured with another {key!r} ({a.get(key)!r} against {b.get(key)!r}): "
                             "rerun it, or give another --out")


def join_settings(settings: dict, more: dict, where: str) -> None:
    """`more`'s methods added to `settings` in place; a method given two configurations is refused."""
    for m, s in more.items():
        if settings.setdefault(m, s) != s:
            raise ValueError(f"{where} ran {m} with other settings (two configurations of one method): rerun it, "
                             "or give another --out")


def batches(limit: int | None = None):
    """(name, training examples, held-out items) per stage; limit: the first N held-out items of each (smoke)."""
    knowledge = load_knowledge()
    facts = sorted(knowledge.passages)
    for name, lo, hi in STAGES:
        chosen = set(facts[lo:hi])
        train = [ex for ex in knowledge.train + knowledge.paraphrases if ex.metadata["fact"] in chosen]
        yield name, train, [it for it in knowledge.eval if it.fact in chosen][:limit]


def measure(model, tok, stage_items: dict, system, refs: dict, before: dict, probes) -> dict:
    """Every listed batch's QA and meter gains, then retention and drift: one stage's row."""
    row = {"tasks": {}}
    for name, items in stage_items.items():
        qa, m = qa_accuracy(model, tok, items, system=system, batch_size=32), meter(model, tok, items, system)
        row["tasks"][name] = {
            "qa": {k: qa[k]["lenient"] for k in ("direct", "all") if k in qa},
            "qa_strict": {k: qa[k]["strict"] for k in ("direct", "all") if k in qa},
            "gain": {t: m[t]["all"] - before[name][t]["all"] for t in ("answer", "passage")},
            "answers": qa["answers"]}
    row["retention"] = mc_accuracy(model, tok, probes)["overall"]
    row["drift"] = drifts(model, refs)
    return row


def continual(out: Path, seeds: tuple[int, ...] = SEEDS, settings: dict[str, dict] | None = None,
              steps: int = STEPS, limit: int | None = None, model=None,
              methods: tuple[str, ...] = ("sft", "sdft")) -> dict:
    """The methods, every seed, A → B → C. settings: {method: search settings} (default: RULE on the QA
    sweep); model: (base, tokenizer) instead of the bundled model. Resumable: (method, seed) runs already in
    out/continual.json are kept; the file is complete after every stage."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "continual.json"
    base, tok = model or load("bundled")
    probes = load_probes()[:limit]
    if settings is None:
        settings = best_settings(json.loads((DOCS / "frontier_qa.json").read_text()))
    settings = {m: s for m, s in settings.items() if m in methods}
    stages = list(batches(limit))
    system = SYSTEMS[next(iter(settings.values()))["system"]]
    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(next(base.parameters()).device), "rule": RULE,
               "settings": settings, "steps": steps, "stages": [s[0] for s in STAGES], "n_probes": len(probes),
               "runs": []}
    if path.exists():  # resume: only what was measured the same way, the methods of both calls
        saved = json.loads(path.read_text())
        refuse_unlike(saved, results, ("rule", "steps", "stages", "n_probes"), str(path))
        join_settings(saved["settings"], settings, str(path))
        results = saved
    refs = {"general": reference(base, tok, [p.question for p in probes])}
    before = {name: meter(base, tok, items, system) for name, _, items in stages}
    if "base" not in results:
        results["base"] = measure(base, tok, {name: items for name, _, items in stages}, system, refs, before, probes)
    done = {(r["method"], r["seed"]) for r in results["runs"] if len(r["stages"]) == len(stages)}
    results["runs"] = [r for r in results["runs"] if (r["method"], r["seed"]) in done]  # drop a cut run
    for seed in tqdm(seeds, desc="continual seeds"):
        for method, s in settings.items():
            if (method, seed) in done:
                continue
            run = run_config(method, settings_of(method, s), seed, steps)
            record = {"method": method, "seed": seed, "stages": []}
            results["runs"].append(record)
            with student_of(base, run) as model:
                for i, (name, examples, _) in enumerate(stages):
                    tqdm.write(f"{method} seed {seed}: stage {name}")
                    t0 = time.perf_counter()
                    Trainer(model, tok, run.objective(), examples, run.train).train()
                    t1 = time.perf_counter()
                    seen = {n: items for n, _, items in stages[: i + 1]}
                    record["stages"].append({"stage": name, "train_s": t1 - t0,
                                             **measure(model, tok, seen, system, refs, before, probes)})
                    path.write_text(json.dumps(results, indent=1))
    return results


def merge(parts: list[dict]) -> dict:
    """One results file from runs measured in separate processes (one core each): the same rule, settings, steps
    and base measurement are required, and each (method, seed) may come from one part only."""
    first = parts[0]
    runs, settings = {}, {}
    for part in parts:
        refuse_unlike(part, first, ("rule", "steps", "stages", "n_probes", "base"), "a part of the continual results")
        join_settings(settings, part["settings"], "a part of the continual results")
        for r in part["runs"]:
            if (r["method"], r["seed"]) in runs:
                raise ValueError(f"{r['method']} seed {r['seed']} was run twice; keep one of the result files")
            runs[r["method"], r["seed"]] = r
    return {**first, "settings": settings, "runs": [runs[k] for k in sorted(runs)]}


def table(results: dict, score: str = "qa", kind: str = "direct") -> str:
    """Markdown: each method's mean (± sd over seeds) score on every batch after every stage, and retention."""
    import statistics

    names = results["stages"]
    lines = [f"| method | after | {' | '.join(f'batch {n}' for n in names)} | retention | drift |",
             "|---|---|" + "---|" * (len(names) + 2)]
    base = results["base"]
    lines.append("| base | — | " + " | ".join(f"{base['tasks'][n][score][kind]:.2f}" if score == "qa" else "0"
                                               for n in names) + f" | {base['retention']:.3f} | 0 |")
    for method in ("sft", "sdft"):
        runs = [r for r in results["runs"] if r["method"] == method]
        for i, stage in enumerate(names):
            rows = [r["stages"][i] for r in runs if len(r["stages"]) > i]
            if not rows:
                continue

            def cell(values: list[float], digits: int = 2) -> str:
                sd = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
                return f"{statistics.fmean(values):.{digits}f}{sd}"
            tasks = [cell([r["tasks"][n][score][kind] for r in rows]) if n in rows[0]["tasks"] else "" for n in names]
            lines.append(f"| {method} | {stage} ({len(rows)} seeds) | {' | '.join(tasks)} | "
                         f"{cell([r['retention'] for r in rows], 3)} | {cell([r['drift']['general'] for r in rows], 3)} |")
    return "\n".join(lines)


def reading(results: dict) -> str:
    """The sequence in sentences, every figure from the results: per method, what each batch reached right after
    its own stage and kept after the last, on greedy QA and on the answer gain, then retention and drift."""
    import statistics

    names, base = results["stages"], results["base"]
    se = retention_se(base["retention"], results["n_probes"])
    first, last = names[0], names[-1]
    base_qa = ", ".join(f"{n} {base['tasks'][n]['qa']['direct']:.0%}" for n in names)
    lines = [f"Base: direct QA {base_qa}; retention {base['retention']:.3f} on {results['n_probes']} probes "
             f"(one SE {se:.3f})."]
    ends = {}  # method: (batch A's gain kept, as a share; retention after the last stage)
    for method in ("sft", "sdft"):
        runs = [r for r in results["runs"] if r["method"] == method and len(r["stages"]) == len(names)]
        if not runs:
            continue

        def mean(get) -> float:
            return statistics.fmean(get(r) for r in runs)

        def qa(stage: int, batch: str) -> float:  # direct-question QA of `batch` after stage `stage`
            return mean(lambda r: r["stages"][stage]["tasks"][batch]["qa"]["direct"])

        def gain(stage: int, batch: str) -> float:  # the learning meter's answer gain, likewise
            return mean(lambda r: r["stages"][stage]["tasks"][batch]["gain"]["answer"])
        own = {"qa": statistics.fmean(qa(i, n) for i, n in enumerate(names)),
               "gain": statistics.fmean(gain(i, n) for i, n in enumerate(names))}
        qa_then, qa_end, a_then, a_end = qa(0, first), qa(-1, first), gain(0, first), gain(-1, first)
        kept = mean(lambda r: r["stages"][-1]["retention"])
        drift = mean(lambda r: r["stages"][-1]["drift"]["general"])
        lines.append(
            f"{method.upper()} ({len(runs)} seeds, lr {results['settings'][method]['lr']:g}): right after its own stage a "
            f"batch answers {own['qa']:.0%} of its direct questions (answer gain {own['gain']:+.2f} nats per token); "
            f"batch {first}: {qa_then:.0%} → {qa_end:.0%} and gain {a_then:+.2f} → {a_end:+.2f} from after {first} to "
            f"after {last}; retention after {last} {kept:.3f} ({kept - base['retention']:+.3f}, "
            f"{'within' if abs(kept - base['retention']) <= se else 'outside'} one SE of the base), drift {drift:.3f}.")
        ends[method] = (a_end / a_then if a_then else float("nan"), kept)
    if len(ends) == 2:
        (sft_a, sft_kept), (sdft_a, sdft_kept) = ends["sft"], ends["sdft"]
        gap = sdft_kept - sft_kept
        lines.append(f"Batch {first}'s answer gain after {last}, as a share of its gain right after {first}: SFT "
                     f"{sft_a:.0%}, SDFT {sdft_a:.0%}. Retention after {last}: SDFT {gap:+.3f} against SFT, "
                     f"{'within' if abs(gap) <= se else 'beyond'} the probes' one SE.")
    return "\n".join(lines)


def published() -> dict:
    """The continual-learning run measured on the bundled model (docs/continual.json; inside the wheel too)."""
    return json.loads((DOCS / "continual.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs") / "continual")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--methods", nargs="+", choices=("sft", "sdft"), default=["sft", "sdft"])
    parser.add_argument("--merge", type=Path, nargs="+", metavar="DIR",
                        help="join these folders' continual.json into --out instead of training")
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per stage")
    parser.add_argument("--limit", type=int, default=None, help="the first N held-out items and probes (smoke)")
    parser.add_argument("--docs", action="store_true", help="copy the results to docs/continual.json")
    args = parser.parse_args(argv)
    if args.merge:
        results = merge([json.loads((d / "continual.json").read_text()) for d in args.merge])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "continual.json").write_text(json.dumps(results, indent=1))
    else:
        results = continual(args.out, tuple(args.seeds), steps=args.steps, limit=args.limit,
                            methods=tuple(args.methods))
    print(table(results))
    if args.docs:
        (DOCS / "continual.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

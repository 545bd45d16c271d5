"""The recipe search behind recipes.workshop_knowledge(): which settings make the bundled model learn facts.

    python -m sdft_lab.experiments.search --out runs/search          # ≈ 1 h on 2 CPU cores, without EXTRA
    python -m sdft_lab.experiments.search --out runs/search --docs   # and write docs/recipe_search.json + table

Every trial trains a fresh LoRA student on the training questions of the first N invented facts (two per
fact), for the same number of steps with the same batch, and then measures
  gain       the learning meter (eval/meter.py): mean log-prob of each fact's passage given its held-out
             questions, after minus before ("all" kinds); and the same for the framed accepted answer;
  retention  the 120 multiple-choice retention probes (eval/retention.py);
  qa         greedy lenient accuracy on the held-out questions, with the share of answers cut off;
  drift      the forgetting meter (eval/drift.py): mean per-token KL(base ‖ tuned) on the base's own answers
             to the probes' questions (chat template's system prompt, and the run's) and to the held-out ones.

Phase 1 varies one setting at a time around a starting recipe (TRIALS), seed 0. Phase 2 reruns the best
`top` of each method with more seeds. The rule that picks a recipe was written down before any run; it is
RULE below, and the results carry it. Every trial is kept in the results, winners or not, with its time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..config import RunConfig
from ..eval import load_knowledge, load_probes, mc_accuracy, qa_accuracy
from ..eval.drift import drifts, reference
from ..eval.meter import meter
from ..eval.retention import retention_se
from ..losses import DivergenceConfig
from ..models import load
from ..prompts import TEMPLATES, PromptConfig
from ..recipes import SHORT_ANSWER
from ..report import machine
from ..sdft import SDFTConfig
from ..sft import SFTConfig
from ..trainer import TrainConfig, Trainer
from .runs import student_of

# The published results (frontier.json, recipe_search.json): docs/ in a checkout, inside the package
# (sdft_lab/results) in a wheel, so that notebooks run from an installed wheel read them too.
_PACKAGE = Path(__file__).resolve().parents[1]
DOCS = _PACKAGE / "results" if (_PACKAGE / "results").is_dir() else _PACKAGE.parent / "docs"
STEPS = 24
# The starting point: the settings a first look found (short answers, demonstration first, nothing skipped).
START = {"system": "short", "template": "context-first", "skip_first": 0, "lr": 3e-3, "tokens": 32, "k": 1,
         "prompts": 4, "facts": 8}
PAPER = {"system": "none", "template": "paper", "skip_first": 3, "lr": 1e-3}
# (method, changes to START), in the order they run; SFT uses only system, lr, prompts and facts. k = 2 halves
# the prompts, so that a step decodes as many rows (4) as every other trial. 4 questions per step keep a
# workshop run of both methods near 10 minutes on 2 CPU cores.
TRIALS = [
    ("sft", {"lr": 1e-3}),
    ("sft", {"system": "none", "lr": 1e-3}),
    ("sft", {}),
    ("sdft", {}),
    ("sdft", PAPER),
    ("sdft", {"system": "none"}),
    ("sdft", {"template": "paper"}),
    ("sdft", {"skip_first": 3}),
    ("sdft", {"k": 2, "prompts": 2}),
]
# Run after the seeds of phase 2, while time allows (seed 0 only).
EXTRA = [
    ("sdft", {"template": "reference"}),
    ("sft", {"lr": 3e-4}),
    ("sdft", {"lr": 1e-3}),
    ("sdft", {"tokens": 16}),
    ("sdft", {"lr": 1e-2}),
    ("sdft", {"tokens": 64}),
    ("sft", {"lr": 1e-3, "facts": 32}),
    ("sdft", {"facts": 32}),
]
SFT_KEYS = ("system", "lr", "prompts", "facts")
SYSTEMS = {"none": None, "short": SHORT_ANSWER}


def settings_of(method: str, changes: dict) -> dict:
    s = {**START, **changes}
    # para=1 (the frontier's QA sweep): the facts' paraphrased training questions too, for either method
    return {k: s[k] for k in (*SFT_KEYS, "para") if k in s} if method == "sft" else s


def name_of(method: str, settings: dict) -> str:
    return f"{method} " + " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())


def run_config(method: str, s: dict, seed: int, steps: int = STEPS) -> RunConfig:
    system = SYSTEMS[s["system"]]
    train = TrainConfig(steps=steps, batch_size=s["prompts"], lr=s["lr"], seed=seed, preflight=False, report=False)
    if method == "sft":
        return RunConfig(method="sft", data="knowledge", train=train, sft=SFTConfig(prompts=PromptConfig(system=system)))
    prompts = PromptConfig(teacher_template=TEMPLATES[s["template"]], system=system)
    # the frontier's levers, each off unless named: sftw (sft_weight), anchor (anchor_weight), topk (top_k)
    return RunConfig(method="sdft", data="knowledge", train=train,
                     sdft=SDFTConfig(max_new_tokens=s["tokens"], skip_first=s["skip_first"], rollouts_per_prompt=s["k"],
                                     guided=s.get("guided", 0.0), evidence_mask=s.get("mask", False),
                                     sft_weight=s.get("sftw", 0.0), anchor_weight=s.get("anchor", 0.0),
                                     divergence=DivergenceConfig(top_k=s.get("topk")), prompts=prompts))


def trial(base, tok, method: str, s: dict, seed: int, cache: dict, steps: int = STEPS, qa: bool = True) -> dict:
    """One training run and its measurements; cache holds the base's figures per (facts, system).
    qa=False leaves out greedy QA (96-token answers to every held-out question: most of a trial's evaluation)."""
    knowledge, system = load_knowledge(), SYSTEMS[s["system"]]
    examples, items = knowledge.first(s["facts"], paraphrases=bool(s.get("para", 0)))
    key = (s["facts"], s["system"])
    if key not in cache:  # drift on general questions under the chat template's prompt, held-out under the run's
        cache[key] = {"meter": meter(base, tok, items, system),
                      "drift": {"general": reference(base, tok, [p.question for p in load_probes()]),
                                "task": reference(base, tok, [it.question for it in items], system)}}
    if qa and "qa" not in cache[key]:
        cache[key]["qa"] = qa_accuracy(base, tok, items, system=system, batch_size=32)
    run = run_config(method, s, seed, steps)
    with student_of(base, run) as model:
        t0 = time.perf_counter()
        history = Trainer(model, tok, run.objective(), examples, run.train).train()
        t1 = time.perf_counter()
        after = meter(model, tok, items, system)
        answers = qa_accuracy(model, tok, items, system=system, batch_size=32) if qa else None
        retention = mc_accuracy(model, tok, load_probes())["overall"]
        drift = drifts(model, cache[key]["drift"])
        t2 = time.perf_counter()
    before, kinds = cache[key]["meter"], ("direct", "indirect", "ood", "all")
    figures = {"qa": {k: answers[k]["lenient"] for k in kinds}, "qa_strict": {k: answers[k]["strict"] for k in kinds},
               "qa_cut": answers["cut"], "qa_answers": answers["answers"],
               "base_qa": {k: cache[key]["qa"][k]["lenient"] for k in kinds},
               "base_qa_strict": {k: cache[key]["qa"][k]["strict"] for k in kinds}} if qa else {}
    return {"name": name_of(method, s), "method": method, "settings": s, "seed": seed,
            "gain": {t: after[t]["all"] - before[t]["all"] for t in ("passage", "answer")},
            "meter_before": before, "meter_after": after, "retention": retention, "drift": drift, **figures,
            "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"],
            "train_s": t1 - t0, "eval_s": t2 - t1}


RULE = ("The recipe of a method is its configuration with the highest mean passage gain over the seeds, among "
        "those whose mean retention lies within one standard error of the base's (SE = sqrt(p (1 - p) / n) over "
        "the n probes); phase 1 ranks by the same rule on seed 0.")


def summary(trials: list[dict], base_retention: float, n_probes: int) -> list[dict]:
    """One row per configuration: mean ± sd over its seeds, and whether its retention passes the rule."""
    se = retention_se(base_retention, n_probes)
    rows: dict[str, list[dict]] = {}
    for t in trials:
        rows.setdefault(t["name"], []).append(t)
    out = []
    for name, ts in rows.items():
        def stat(f):
            values = [f(t) for t in ts]
            return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None}
        row = {"name": name, "method": ts[0]["method"], "settings": ts[0]["settings"], "seeds": [t["seed"] for t in ts],
               "passage_gain": stat(lambda t: t["gain"]["passage"]), "answer_gain": stat(lambda t: t["gain"]["answer"]),
               "retention": stat(lambda t: t["retention"]), "qa_all": stat(lambda t: t["qa"]["all"]),
               "qa_direct": stat(lambda t: t["qa"]["direct"]), "qa_cut": stat(lambda t: t["qa_cut"]),
               "minutes": statistics.fmean((t["train_s"] + t["eval_s"]) / 60 for t in ts)}
        row["retention_ok"] = row["retention"]["mean"] >= base_retention - se
        out.append(row)
    return out


def ranked(rows: list[dict], method: str) -> list[dict]:
    """The rule: retention within one SE of the base first, then the highest mean passage gain."""
    mine = [r for r in rows if r["method"] == method]
    return sorted(mine, key=lambda r: (not r["retention_ok"], -r["passage_gain"]["mean"]))


def search(out: Path, seeds: tuple[int, ...] = (0, 1, 2), top: int = 1, extra: bool = True,
           steps: int = STEPS, limit: int | None = None) -> dict:
    """Phase 1 (TRIALS, seed 0), phase 2 (the `top` of each method with every seed), then EXTRA (seed 0).
    Resumable: trials already in out/search.json are not run again; the file is complete after every trial."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "search.json"
    base, tok = load("bundled")
    probes = load_probes()
    results = json.loads(path.read_text()) if path.exists() else {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(next(base.parameters()).device),
        "steps": steps, "seeds": list(seeds), "rule": RULE, "trials": [],
        "base_retention": mc_accuracy(base, tok, probes)["overall"], "n_probes": len(probes)}
    cache: dict = {}
    done = {(t["name"], t["seed"]) for t in results["trials"]}

    def run(method: str, s: dict, seed: int) -> None:
        if (name_of(method, s), seed) in done:
            return
        tqdm.write(f"trial: {name_of(method, s)} seed {seed}")
        results["trials"].append(trial(base, tok, method, s, seed, cache, results["steps"]))
        done.add((name_of(method, s), seed))
        conclude(results)
        path.write_text(json.dumps(results, indent=1))

    for method, changes in TRIALS[:limit]:
        run(method, settings_of(method, changes), seeds[0])
    for method in ("sdft", "sft"):
        for row in ranked(results.get("summary", []), method)[:top]:
            for seed in seeds[1:]:
                run(method, row["settings"], seed)
    for method, changes in EXTRA if extra and limit is None else ():
        run(method, settings_of(method, changes), seeds[0])
    return results


def conclude(results: dict) -> None:
    """The summary rows and, per method, the configuration the rule picks among those run with every seed."""
    rows = summary(results["trials"], results["base_retention"], results["n_probes"])
    results["summary"] = rows
    full = [r for r in rows if len(r["seeds"]) == len(results["seeds"])]
    results["chosen"] = {m: ranked(full, m)[0]["name"] for m in ("sdft", "sft") if ranked(full, m)}


def fmt(stat: dict, digits: int = 2) -> str:
    return f"{stat['mean']:.{digits}f}" + (f" ± {stat['sd']:.{digits}f}" if stat["sd"] is not None else "")


def table(results: dict) -> str:
    """The markdown table of every configuration, as docs/recipes.md holds it (a test compares the two)."""
    lines = ["| configuration | seeds | passage gain (nats) | answer gain (nats) | retention | QA lenient (all) "
             "| cut | min / run |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(results["summary"], key=lambda r: (r["method"], -r["passage_gain"]["mean"])):
        mark = " **(chosen)**" if r["name"] in results.get("chosen", {}).values() else ""
        ok = "" if r["retention_ok"] else " ✗"
        lines.append(f"| {r['name']}{mark} | {len(r['seeds'])} | {fmt(r['passage_gain'])} | {fmt(r['answer_gain'])} | "
                     f"{fmt(r['retention'])}{ok} | {fmt(r['qa_all'])} | {r['qa_cut']['mean']:.0%} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs") / "search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--top", type=int, default=1, help="configurations per method rerun with every seed")
    parser.add_argument("--limit", type=int, default=None, help="only the first N trials of phase 1 (a quick look)")
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per trial")
    parser.add_argument("--no-extra", action="store_true", help="stop after phase 2")
    parser.add_argument("--docs", action="store_true", help="copy the results to docs/recipe_search.json")
    args = parser.parse_args(argv)
    results = search(args.out, tuple(args.seeds), args.top, not args.no_extra, args.steps, args.limit)
    print(table(results))
    if args.docs:
        (DOCS / "recipe_search.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

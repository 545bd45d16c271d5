"""The learning–forgetting frontier: SFT and SDFT, each swept over its learning rate, with seeds.

    python -m sdft_lab.experiments frontier --out runs/frontier            # ≈ 1.5 h on 2 CPU cores
    python -m sdft_lab.experiments.frontier --families SFT --out runs/b    # a part of it, in another process
    python -m sdft_lab.experiments.frontier --out runs/frontier --merge runs/b --docs   # joined; docs/frontier.json

A method tuned against one left untuned is not a comparison, and one learning rate per method says nothing
about which learns more for the same forgetting. So every configuration below runs at several learning rates
and three seeds, with the recipe search's trial (search.trial: 8 invented facts, 24 steps of 4 questions,
the short-answer system prompt for both methods), and each run is a point:
  learning    the learning meter's answer gain (and passage gain), held-out questions, all kinds;
  forgetting  drift, the mean per-token KL(base ‖ tuned) on the base's own answers to 120 general
              questions (eval/drift.py), and the 120-probe retention beside it.

RULE says, before any run, how the points decide "SDFT is ahead"; `verdicts` applies it and the results
carry both. Every run is kept, with its seed, time, date and machine.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import statistics
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..eval import load_knowledge, load_probes, mc_accuracy
from ..eval.knowledge import score_qa
from ..eval.retention import retention_se
from ..models import load
from ..report import machine
from .search import DOCS, STEPS, fmt, name_of, settings_of, trial

SEEDS = (0, 1, 2)
# family: (method, changes to search.START, learning rates, seeds); each family is swept over its rates.
# Guided with every row at lr 3e-3 was the strongest single-seed lead before this sweep (+3.15 answer gain at
# retention 0.64); it runs at that rate only. Plain SDFT (the first recipe search's choice) runs one seed: the
# search has it with three at lr 3e-3 (docs/recipes.md), and verdicts are taken only on points with seeds.
FAMILIES = {
    "SFT": ("sft", {}, (1e-4, 3e-4, 1e-3), SEEDS),
    "SDFT guided": ("sdft", {"guided": 0.5, "mask": True}, (3e-4, 1e-3, 3e-3), SEEDS),
    "SDFT guided, all rows": ("sdft", {"guided": 1.0, "mask": True}, (3e-3,), SEEDS),
    "SDFT": ("sdft", {}, (3e-3,), SEEDS[:1]),
    # equal wall-clock: an SDFT step took 2.5× an SFT step in this sweep's first runs, so SFT gets 2.5× the steps
    "SFT, 60 steps": ("sft", {}, (1e-4, 3e-4), SEEDS),
}
STEPS_OF = {"SFT, 60 steps": 60}  # families that do not train for search.STEPS
LEARNING = ("answer", "passage")  # the gains a verdict is taken on, each on its own
FORGETTING = "general"  # the drift set on the x axis

# The QA sweep: the same trial with greedy answers in every point, and every fact's six paraphrased training
# questions beside its two (data/knowledge; both methods get the same 64 questions and 24 steps). Guided SDFT
# with every row at lr 3e-3 is the configuration the first sweep chose; SFT brackets its drift. Seeds 0–2 are
# the seeds that chose, 3–5 the fresh ones that confirm: each set gets its own points and verdicts.
FRESH = (3, 4, 5)
SFT_QA, BASELINE_QA = "SFT, paraphrases", "SDFT guided, all rows, paraphrases"
GUIDED_QA = {"guided": 1.0, "mask": True, "para": 1}
QA_FAMILIES = {
    SFT_QA: ("sft", {"para": 1}, (3e-4, 1e-3), SEEDS + FRESH),
    BASELINE_QA: ("sdft", GUIDED_QA, (3e-3,), SEEDS + FRESH),
}
# The levers: the QA sweep's SDFT configuration with one change each, on the same 64 questions, 24 steps and
# learning rate, so within notebook 03's budget. Each runs on seeds 0–2; LEVER_RULE picks which one runs on the
# fresh seeds too.
LEVERS = {
    f"{BASELINE_QA}, SFT term 0.1": {"sftw": 0.1},
    f"{BASELINE_QA}, base anchor 0.25": {"anchor": 0.25},
    f"{BASELINE_QA}, top-k 20": {"topk": 20},
}
QA_FAMILIES.update({f: ("sdft", {**GUIDED_QA, **c}, (3e-3,), SEEDS + FRESH) for f, c in LEVERS.items()})
QA_KINDS = ("direct", "indirect", "ood", "all")
# How many SDFT configurations the seeds 0–2 chose among: the first sweep's four (FAMILIES' SDFT points with
# seeds), which chose the QA sweep's baseline, and the levers. The seeds that chose get a band corrected for that.
CHOSEN_AMONG = 4 + len(LEVERS)
SWEEPS = {"frontier": (FAMILIES, False), "qa": (QA_FAMILIES, True)}

RULE = (
    "Learning is a configuration's mean gain over its seeds (the learning meter on the held-out questions: "
    "answer and passage, each judged on its own); forgetting is its mean drift on general questions. SFT's "
    "frontier at drift d is its gain interpolated linearly in log(drift) between the two SFT learning rates "
    "whose mean drifts bracket d. An SDFT configuration is AHEAD if its gain exceeds that frontier by more "
    "than twice the standard error of the difference (each side's seed sd / sqrt(seeds); SFT's side the "
    "larger of the two bracketing points'), BEHIND if it falls short by as much, and EVEN otherwise. Below "
    "SFT's lowest drift it is AHEAD only if it learns more than SFT's lowest-drift point by that margin; "
    "above SFT's highest it is BEHIND if it learns less than SFT's highest-drift point by that margin; "
    "otherwise OUTSIDE (no verdict). SDFT is ahead on this model when any SDFT configuration is AHEAD, with "
    "retention within one standard error of the base's."
)


QA_RULE = (
    "The QA sweep: every point also carries greedy QA, strict and lenient per kind (direct / indirect / OOD) on "
    "the 24 held-out questions, and the rule above is applied to three learning measures: the answer gain, the "
    "passage gain and the lenient accuracy on the 8 held-out direct questions (qa_direct), each against SFT's "
    "frontier at the same drift. It is applied twice, on seeds 0–2 and on the fresh seeds 3–5, each set alone. "
    f"On seeds 0–2 the band is z·SE with z = Φ⁻¹(1 − 0.025/m) for the m = {CHOSEN_AMONG} SDFT configurations those "
    f"seeds chose among (the first sweep's 4 and the {len(LEVERS)} levers; Bonferroni: "
    f"z = {statistics.NormalDist().inv_cdf(1 - 0.025 / CHOSEN_AMONG):.2f}); on seeds 3–5, which chose nothing, m = 1 "
    "(z = 1.96), for the baseline and for the one lever that runs there, each chosen before its fresh seeds ran. A "
    "verdict stands when the fresh seeds give it. With 3 seeds each SE has 2 degrees of freedom, so a margin just "
    "past its band is weak evidence."
)

LEVER_RULE = (
    "The levers: each is the QA sweep's guided SDFT configuration with one change (an SFT term of weight 0.1, a "
    "base anchor of weight 0.25, or top-k 20 with a tail bucket), on the same questions, steps and learning rate. "
    "Once the baseline and every lever have seeds 0–2, the choice is the SDFT configuration (the baseline or a "
    "lever) with retention within one SE of the base's and the largest direct-QA margin over SFT's frontier at the "
    "same drift, ties broken by the answer-gain margin. A chosen lever runs on the fresh seeds 3–5 and is kept only "
    "if there its direct-QA margin exceeds the baseline's by more than 1.96 standard errors of the two margins' "
    "difference (each margin's SE as its verdict takes it, SFT's side included). A lever not chosen, or not kept, "
    "does not move the QA frontier."
)


def band_z(m: int) -> float:
    """The two-sided 5 % normal quantile, Bonferroni-corrected for m comparisons (m = 1: 1.96)."""
    return statistics.NormalDist().inv_cdf(1 - 0.025 / m)


def configurations(families: dict | None = None) -> list[tuple[str, str, dict, tuple[int, ...]]]:
    """(family, method, settings, seeds) of every point."""
    return [(family, method, settings_of(method, {**changes, "lr": lr}), seeds)
            for family, (method, changes, lrs, seeds) in (families or FAMILIES).items() for lr in lrs]


def trial_name(family: str, method: str, s: dict) -> str:
    steps = STEPS_OF.get(family)
    return name_of(method, s) + (f" steps={steps}" if steps else "")


def frontier(out: Path, seeds: tuple[int, ...] = SEEDS, families: list[str] | None = None,
             sweep: str = "frontier") -> dict:
    """Every configuration with seed 0 first, then the other seeds, so a partial run covers the sweep.
    sweep: "frontier" (FAMILIES) or "qa" (QA_FAMILIES, with greedy QA; its seeds default to 0–5).
    Resumable: runs already in out/frontier.json are skipped; the file is complete after every run."""
    table_of, qa = SWEEPS[sweep]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "frontier.json"
    base, tok = load("bundled")
    probes = load_probes()
    results = json.loads(path.read_text()) if path.exists() else {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(next(base.parameters()).device), "sweep": sweep,
        "families": {},
        "base_retention": mc_accuracy(base, tok, probes)["overall"], "n_probes": len(probes), "trials": []}
    results["rule"] = RULE + (" " + QA_RULE + " " + LEVER_RULE if qa else "")  # the rule as it stands now
    results["families"].update({f: {"method": m, "changes": c, "lrs": list(lrs), "seeds": list(ss)}  # new and added
                                for f, (m, c, lrs, ss) in table_of.items()})
    done = {(t["name"], t["seed"]) for t in results["trials"]}
    here = machine(next(base.parameters()).device)
    cache: dict = {}
    # seed 0 of every point first, then the other seeds; the one-seed families last: no verdict rests on them
    todo = [(len(own) == 1, seed, f, m, s) for seed in seeds for f, m, s, own in configurations(table_of)
            if seed in own and (families is None or f in families)]
    todo = [t[1:] for t in sorted(todo, key=lambda t: t[0])]
    for seed, family, method, s in tqdm(todo, desc=sweep):
        name = trial_name(family, method, s)
        if (name, seed) in done:
            continue
        if qa and not runs_on(results, family, seed):
            continue
        tqdm.write(f"{family}: {name} seed {seed}")
        t = trial(base, tok, method, s, seed, cache, steps=STEPS_OF.get(family, STEPS), qa=qa)
        if qa and "base_answers" not in results:  # the base's own answers, once: the "before" of every point
            results["base_answers"] = cache[(s["facts"], s["system"])]["qa"]["answers"]
            results["base_qa"] = {"lenient": t["base_qa"], "strict": t["base_qa_strict"]}
        results["trials"].append({"family": family, **t, "name": name, "date": time.strftime("%Y-%m-%d"),
                                  "machine": here})  # a sweep may be continued on another day and machine
        path.write_text(json.dumps(conclude(results), indent=1))
    return results


def merge(out: Path, others: list[Path]) -> dict:
    """The trials of sweeps run side by side (each with its own --families and --out) into out/frontier.json,
    each (configuration, seed) once, with points and verdicts recomputed."""
    path = out / "frontier.json"
    results = json.loads(path.read_text())
    trials = {(t["name"], t["seed"]): t for t in results["trials"]}
    for other in others:
        for t in json.loads((other / "frontier.json").read_text())["trials"]:
            trials.setdefault((t["name"], t["seed"]), t)
    results["trials"] = list(trials.values())
    path.write_text(json.dumps(conclude(results), indent=1))
    return results


def published() -> dict:
    """The frontier measured on the bundled model (docs/frontier.json; shipped inside the wheel too)."""
    return json.loads((DOCS / "frontier.json").read_text())


def conclude(results: dict) -> dict:
    """The points and every set of verdicts, recomputed from the trials (in place; returns results). The QA
    sweep's: on the seeds that chose (corrected band) and on the fresh seeds, each alone."""
    if results.get("sweep") != "qa":
        results["points"] = points(results)
        results["verdicts"] = verdicts(results)
        results["verdicts_wall_clock"] = verdicts(results, "SFT, 60 steps")
        return results
    for key, seeds, z in (("", SEEDS, band_z(CHOSEN_AMONG)), ("_fresh", FRESH, band_z(1))):
        results["points" + key] = points(results, seeds)
        results["verdicts" + key] = verdicts({**results, "points": results["points" + key]}, SFT_QA,
                                             z=z, gains=QA_LEARNING)
    results["levers"] = lever_choice(results)
    return results


QA_LEARNING = (*LEARNING, "qa_direct")


def _stat(values: list[float]) -> dict:
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "sd": sd, "se": sd / math.sqrt(len(values)) if sd is not None else None}


def points(results: dict, seeds: tuple[int, ...] | None = None) -> list[dict]:
    """One point per configuration: mean, sd and SE over its seeds (all, or only `seeds`) of every gain, drift
    and retention, and of greedy QA (lenient and strict per kind) where the trials carry it."""
    groups: dict[str, list[dict]] = {}
    for t in results["trials"]:
        if seeds is None or t["seed"] in seeds:
            groups.setdefault(t["name"], []).append(t)
    out = []
    for name, ts in groups.items():
        p = {"name": name, "family": ts[0]["family"], "method": ts[0]["method"], "lr": ts[0]["settings"]["lr"],
             "seeds": [t["seed"] for t in ts], "retention": _stat([t["retention"] for t in ts]),
             "train_minutes": statistics.fmean(t["train_s"] / 60 for t in ts)}
        for g in LEARNING:
            p[g] = _stat([t["gain"][g] for t in ts])
        for d in sorted(set.intersection(*(set(t["drift"]) for t in ts))):
            p[f"drift_{d}"] = _stat([t["drift"][d] for t in ts])
        if all("qa" in t for t in ts):
            for kind in QA_KINDS:
                p[f"qa_{kind}"] = _stat([t["qa"][kind] for t in ts])
                p[f"qa_{kind}_strict"] = _stat([t["qa_strict"][kind] for t in ts])
        out.append(p)
    return out


def sft_frontier(sft: list[dict], drift: float, gain: str) -> tuple[float, float, str]:
    """(SFT's gain at this drift, its SE, where: "inside" / "below" / "above" SFT's drift range)."""
    pts = sorted(sft, key=lambda p: p[f"drift_{FORGETTING}"]["mean"])
    xs = [math.log(p[f"drift_{FORGETTING}"]["mean"]) for p in pts]
    x = math.log(drift)
    if x <= xs[0]:
        return pts[0][gain]["mean"], pts[0][gain]["se"] or 0.0, "below"
    if x >= xs[-1]:
        return pts[-1][gain]["mean"], pts[-1][gain]["se"] or 0.0, "above"
    i = next(i for i in range(1, len(xs)) if x <= xs[i])
    w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    lo, hi = pts[i - 1], pts[i]
    return ((1 - w) * lo[gain]["mean"] + w * hi[gain]["mean"], max(lo[gain]["se"] or 0.0, hi[gain]["se"] or 0.0),
            "inside")


def verdicts(results: dict, reference: str = "SFT", z: float = 2.0, gains: tuple[str, ...] = LEARNING) -> dict:
    """RULE applied: per SDFT configuration and gain, its margin over the frontier of the SFT family
    `reference` ("SFT": equal steps; "SFT, 60 steps": equal wall-clock) and the verdict. z: the band in
    standard errors of the difference (RULE's 2; QA_RULE's corrected one)."""
    pts = results.get("points") or points(results)
    sft = [p for p in pts if p["family"] == reference and len(p["seeds"]) > 1]
    if len(sft) < 2:
        return {}
    se_base = retention_se(results["base_retention"], results["n_probes"])
    out = {"per_point": [], "ahead": {}}
    for p in pts:
        if p["method"] != "sdft" or len(p["seeds"]) < 2:
            continue
        row = {"name": p["name"], "family": p["family"], "lr": p["lr"], "seeds": len(p["seeds"]),
               "retention_ok": p["retention"]["mean"] >= results["base_retention"] - se_base}
        for g in gains:
            ref, ref_se, where = sft_frontier(sft, p[f"drift_{FORGETTING}"]["mean"], g)
            margin = p[g]["mean"] - ref
            band = z * math.sqrt((p[g]["se"] or 0.0) ** 2 + ref_se ** 2)
            if where == "inside":
                verdict = "AHEAD" if margin > band else "BEHIND" if margin < -band else "EVEN"
            elif where == "below":
                verdict = "AHEAD" if margin > band else "OUTSIDE"
            else:
                verdict = "BEHIND" if margin < -band else "OUTSIDE"
            row[g] = {"sft_at_same_drift": ref, "margin": margin, "band": band, "where": where, "verdict": verdict}
        out["per_point"].append(row)
    out["z"] = z
    for g in gains:
        out["ahead"][g] = any(r[g]["verdict"] == "AHEAD" and r["retention_ok"] for r in out["per_point"])
    return out


PAIR_RULE = ("The workshop pair (recipes.workshop_knowledge): the guided-SDFT configuration with the most mean "
             "answer gain among those with three seeds and retention within one standard error of the base's, and "
             "the SFT learning rate whose mean drift is nearest to it on a log scale: the two methods at the same "
             "forgetting, so that what differs is what they learn.")


def workshop_pair(results: dict) -> tuple[dict, dict]:
    """PAIR_RULE applied: (guided-SDFT point, SFT point)."""
    pts = results["points"]
    se = retention_se(results["base_retention"], results["n_probes"])
    ok = [p for p in pts if p["family"].startswith("SDFT guided") and len(p["seeds"]) >= len(SEEDS)
          and p["retention"]["mean"] >= results["base_retention"] - se]
    sdft = max(ok, key=lambda p: p["answer"]["mean"])
    drift = math.log(sdft[f"drift_{FORGETTING}"]["mean"])
    sft = min((p for p in pts if p["family"] == "SFT"),
              key=lambda p: abs(math.log(p[f"drift_{FORGETTING}"]["mean"]) - drift))
    return sdft, sft


def reading(results: dict) -> str:
    """The verdicts in sentences, one per SDFT point with seeds, and the overall answer of the rule, at equal
    steps and (where SFT's 60-step runs exist) at equal wall-clock."""
    v = results.get("verdicts") or verdicts(results)
    if not v:
        return "Not enough runs yet: SFT needs at least two learning rates with seeds."
    lines = []
    for row in v["per_point"]:
        parts = [f"{g} gain {row[g]['margin']:+.2f} nats against SFT at the same drift ({row[g]['verdict']}, "
                 f"noise band ±{row[g]['band']:.2f})" for g in LEARNING]
        lines.append(f"{row['family']} at lr {row['lr']:g} ({row['seeds']} seeds): " + "; ".join(parts) +
                     ("" if row["retention_ok"] else "; retention outside one SE of the base") + ".")
    for g in LEARNING:
        lines.append(f"By the rule, SDFT is {'AHEAD of' if v['ahead'][g] else 'not ahead of'} SFT on the {g} gain "
                     f"on this model, at equal steps.")
    wall = results.get("verdicts_wall_clock") or verdicts(results, "SFT, 60 steps")
    for g in LEARNING if wall else ():
        best = max(wall["per_point"], key=lambda r: r[g]["margin"])
        lines.append(f"At equal wall-clock (SFT with 60 steps): on the {g} gain SDFT is "
                     f"{'AHEAD' if wall['ahead'][g] else 'not ahead'}; its best margin {best[g]['margin']:+.2f} "
                     f"({best['family']}, lr {best['lr']:g}: {best[g]['verdict']}).")
    return "\n".join(lines)


def table(results: dict) -> str:
    """Markdown: every configuration, mean ± sd over seeds, and the verdict of each SDFT point."""
    v = {r["name"]: r for r in results.get("verdicts", {}).get("per_point", [])}
    f = fmt
    lines = ["| family | lr | seeds | answer gain | passage gain | drift, general | drift, held-out | retention "
             "| train min | verdict (answer / passage) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(results["points"], key=lambda p: (p["family"], p["lr"])):
        verdict = (f"{v[p['name']]['answer']['verdict']} ({v[p['name']]['answer']['margin']:+.2f}) / "
                   f"{v[p['name']]['passage']['verdict']} ({v[p['name']]['passage']['margin']:+.2f})"
                   if p["name"] in v else "")
        task = f(p["drift_task"], 3) if "drift_task" in p else ""
        lines.append(f"| {p['family']} | {p['lr']:g} | {len(p['seeds'])} | {f(p['answer'])} | {f(p['passage'])} | "
                     f"{f(p['drift_general'], 3)} | {task} | {f(p['retention'])} | {p['train_minutes']:.1f} | {verdict} |")
    return "\n".join(lines)


QA_TARGET = 0.4  # the share of held-out direct questions the better method should answer (issue target)


def kept(results: dict, key: str = "") -> list[dict]:
    """The points of a seed set ("" or "_fresh") whose mean retention is not more than one standard error below
    the base's: the ones a rule may pick."""
    floor = results["base_retention"] - retention_se(results["base_retention"], results["n_probes"])
    return [p for p in results.get("points" + key, []) if p["retention"]["mean"] >= floor]


def qa_target(results: dict, key: str = "") -> str:
    """One sentence per seed set: is QA_TARGET reached by the best kept point (the most direct QA, then the
    highest retention), and by which."""
    ok = kept(results, key)
    if not ok:
        return "no configuration kept retention within one standard error of the base."
    best = max(ok, key=lambda p: (p["qa_direct"]["mean"], p["retention"]["mean"]))
    verdict = "reached" if best["qa_direct"]["mean"] >= QA_TARGET else "not reached"
    return (f"target ({QA_TARGET:.0%} of the held-out direct questions, retention not more than one SE below the "
            f"base's) {verdict}: the best is {best['family']} at lr {best['lr']:g} with "
            f"{best['qa_direct']['mean']:.0%} (retention {best['retention']['mean']:.3f}).")


def qa_reading(results: dict) -> str:
    """The QA sweep's verdicts in sentences, then the target: on the seeds that chose, then on the fresh seeds."""
    lines = []
    for key, label in (("", "seeds 0–2 (chose)"), ("_fresh", "seeds 3–5 (fresh)")):
        v = results.get("verdicts" + key)
        if not v:
            lines.append(f"{label}: not enough runs yet.")
            continue
        for row in v["per_point"]:
            parts = [f"{g} {row[g]['margin']:+.2f} ({row[g]['verdict']}, band ±{row[g]['band']:.2f})"
                     for g in QA_LEARNING]
            lines.append(f"{label}, z = {v['z']:.2f}: {row['family']} at lr {row['lr']:g} ({row['seeds']} seeds) "
                         f"against SFT at the same drift: " + "; ".join(parts) +
                         ("" if row["retention_ok"] else "; retention outside one SE of the base") + ".")
    lines += [f"{label}: {qa_target(results, key)}" for key, label in (("", "seeds 0–2"), ("_fresh", "seeds 3–5"))
              if results.get("points" + key)]
    return "\n".join(lines + [lever_reading(results)])


def qa_table(results: dict, key: str = "") -> str:
    """Markdown: every configuration of the QA sweep on one seed set ("" the seeds that chose, "_fresh")."""
    v = {r["name"]: r for r in results.get("verdicts" + key, {}).get("per_point", [])}
    f = fmt
    lines = ["| family | lr | seeds | direct QA (lenient / strict) | all QA (lenient) | answer gain | drift, general "
             "| retention | train min | verdict (answer / passage / direct QA) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(results.get("points" + key, []), key=lambda p: (p["family"], p["lr"])):
        verdict = " / ".join(f"{v[p['name']][g]['verdict']} ({v[p['name']][g]['margin']:+.2f})" for g in QA_LEARNING
                             ) if p["name"] in v else ""
        lines.append(f"| {p['family']} | {p['lr']:g} | {','.join(map(str, p['seeds']))} | {f(p['qa_direct'])} / "
                     f"{f(p['qa_direct_strict'])} | {f(p['qa_all'])} | {f(p['answer'])} | {f(p['drift_general'], 3)} | "
                     f"{f(p['retention'])} | {p['train_minutes']:.1f} | {verdict} |")
    return "\n".join(lines)


def answers_table(results: dict, seed: int = FRESH[0], kind: str = "direct") -> str:
    """Markdown: each held-out question of `kind` with its accepted answer, the base's greedy answer, and the
    answer of every configuration of the QA sweep trained with `seed` (✓: an accepted answer appears). Model
    text is HTML-escaped, and its pipes and line breaks kept out of the table."""
    _, items = load_knowledge().first(8)
    trials = sorted((t for t in results["trials"] if t["seed"] == seed and "qa_answers" in t),
                    key=lambda t: (t["method"], t["settings"]["lr"]))

    def cell(text: str, accepted: list[str]) -> str:
        lenient = score_qa(text, accepted, [])[1]
        return ("✓ " if lenient else "") + html.escape(" ".join(text.split())).replace("|", "\\|")

    heads = ["question", "accepted", "base"] + [f"{t['method'].upper()} lr {t['settings']['lr']:g}" for t in trials]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for i, it in enumerate(items):
        if it.kind != kind:
            continue
        row = [html.escape(it.question), html.escape(it.answers[0]), cell(results["base_answers"][i], it.answers)]
        lines.append("| " + " | ".join(row + [cell(t["qa_answers"][i], it.answers) for t in trials]) + " |")
    return "\n".join(lines)


def lever_choice(results: dict) -> dict:
    """LEVER_RULE applied: {"chosen", "kept", "difference", "band"}. "chosen" is the configuration seeds 0–2
    choose (None if none kept retention); "kept" is False for the baseline, None until the chosen lever's fresh
    seeds and the baseline's have all run, then whether its fresh direct-QA margin exceeds the baseline's by the
    band ("difference", "band"). {} until the baseline and every lever have their seeds 0–2."""
    every = {r["family"]: r for r in results.get("verdicts", {}).get("per_point", []) if r["seeds"] == len(SEEDS)}
    if not {BASELINE_QA, *LEVERS} <= set(every):
        return {}
    rows = [r for f, r in every.items() if r["retention_ok"] and f in {BASELINE_QA, *LEVERS}]
    if not rows:
        return {"chosen": None, "kept": False}
    chosen = max(rows, key=lambda r: (r["qa_direct"]["margin"], r["answer"]["margin"]))["family"]
    out = {"chosen": chosen, "kept": False if chosen == BASELINE_QA else None}
    fresh = {r["family"]: r for r in results.get("verdicts_fresh", {}).get("per_point", []) if r["seeds"] == len(FRESH)}
    if out["kept"] is None and {chosen, BASELINE_QA} <= set(fresh):
        lever, base = (fresh[f]["qa_direct"] for f in (chosen, BASELINE_QA))
        # each margin's SE is band / z; the difference's SE is the root of their squares
        z = results["verdicts_fresh"]["z"]
        out["difference"] = lever["margin"] - base["margin"]
        out["band"] = band_z(1) * math.hypot(lever["band"] / z, base["band"] / z)
        out["kept"] = out["difference"] > out["band"]
    return out


def runs_on(results: dict, family: str, seed: int) -> bool:
    """LEVER_RULE's schedule: the levers run on seeds 0–2; on the fresh seeds only the one seeds 0–2 chose does,
    once the choice is made. Every other family runs on all its seeds."""
    return seed not in FRESH or family not in LEVERS or lever_choice(conclude(results)).get("chosen") == family


def lever_reading(results: dict) -> str:
    """LEVER_RULE's outcome in one sentence."""
    c = results.get("levers") or {}
    if not c:
        return "Levers: not all run yet (the baseline and each lever need seeds 0–2)."
    if c["chosen"] is None:
        return "Levers: no SDFT configuration kept retention within one SE of the base on seeds 0–2; none is kept."
    if c["chosen"] not in LEVERS:
        return (f"Levers: seeds 0–2 choose the baseline ({c['chosen']}): no lever moves the QA frontier, and none is "
                "kept.")
    if c["kept"] is None:
        return f"Levers: seeds 0–2 choose {c['chosen']}; its fresh seeds 3–5 (and the baseline's) have not all run."
    return (f"Levers: seeds 0–2 choose {c['chosen']}; on the fresh seeds 3–5 its direct-QA margin over SFT differs "
            f"from the baseline's by {c['difference']:+.2f} (band ±{c['band']:.2f}): "
            + ("kept, it moves the QA frontier." if c["kept"] else "not kept, it does not move the QA frontier."))


def sittings(results: dict) -> str:
    """When and where the trials ran, one clause per sitting with its count of runs; a trial without its own date
    and machine ran in the sitting that started the file."""
    count: dict[tuple, int] = {}
    for t in results["trials"]:
        m = t.get("machine", results["machine"])
        key = (t.get("date", results["date"]), m["cpu"], ", ".join(m.get("cpu_flags", [])) or "no AVX",
               m["torch_threads"])
        count[key] = count.get(key, 0) + 1
    return "; ".join(f"{d} on {cpu} ({flags}), {th} torch thread{'s' * (th > 1)}: {n} runs"
                     for (d, cpu, flags, th), n in count.items())


def published_qa() -> dict:
    """The QA sweep measured on the bundled model (docs/frontier_qa.json; shipped inside the wheel too)."""
    return json.loads((DOCS / "frontier_qa.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs") / "frontier")
    parser.add_argument("--sweep", choices=list(SWEEPS), default="frontier",
                        help="frontier: the learning-rate sweep; qa: greedy QA, paraphrases, fresh seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="[0 1 2; the qa sweep: 0 … 5]")
    parser.add_argument("--families", nargs="+", choices=[*FAMILIES, *QA_FAMILIES], default=None)
    parser.add_argument("--merge", type=Path, nargs="+", metavar="DIR",
                        help="add the trials of sweeps run side by side (their --out) to --out, and run nothing")
    parser.add_argument("--docs", action="store_true", help="copy the results to docs/frontier.json")
    args = parser.parse_args(argv)
    seeds = tuple(args.seeds or (SEEDS + FRESH if args.sweep == "qa" else SEEDS))
    results = merge(args.out, args.merge) if args.merge else frontier(args.out, seeds, args.families, args.sweep)
    qa = results.get("sweep") == "qa"
    print("\n\n".join([qa_table(results), qa_table(results, "_fresh"), qa_reading(results)]) if qa else
          table(results) + "\n" + reading(results))
    if args.docs:
        (DOCS / ("frontier_qa.json" if qa else "frontier.json")).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

"""Notebook 03's run: SFT and SDFT inject the same invented facts with the workshop pair
(recipes.workshop_knowledge: each method at a learning rate where both forget about as much), each watched by
the learning meter as it trains, with retention, drift and greedy answers before and after, beside the
teacher's (the base with the fact's passage in its context). Each trained adapter is saved in out/<method>/adapter.

    python -m sdft_lab.experiments workshop --out runs/workshop
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .. import precision
from ..eval import load_knowledge, load_probes, mc_accuracy, qa_accuracy
from ..eval.knowledge import QA_TOKENS, score_qa
from ..eval.drift import ANSWER_TOKENS, drift, reference
from ..eval.meter import MeterCallback, meter
from ..eval.retention import retention_se
from ..models import load
from ..prompts import encode, render_chat
from ..recipes import workshop_knowledge
from ..report import machine
from ..rollout import greedy
from ..trainer import Timer, Trainer
from .runs import student_of


@dataclass
class WorkshopConfig:
    model: str = "bundled"
    facts: int = 8  # the first N invented facts (two training questions each)
    steps: int | None = None  # None: the recipe's
    meter_every: int = 12  # steps between two points of the learning meter (each ≈ 14 s on 2 cores)
    probe_stride: int = 3  # every 3rd retention probe: 40 of 120, every category alike, a third of the time
    answers: int = 8  # facts whose direct question is answered before and after (8: every fact's)
    smoke: bool = False  # a few tokens and one step: what the test suite runs


FORMAT = 3  # of results.json: 2 added the teacher's answers and the saved adapters, 3 each evaluation's time and
#            the precision; an older file is rerun


def answers(model, tok, questions: list[str], systems: list[str | None], tokens: int) -> list[list[str]]:
    """Greedy answers to the questions under each system prompt, all in one batch: decoding a few rows costs
    about what one row does on a CPU, so two system prompts cost one run."""
    texts = greedy(model, tok, [encode(tok, render_chat(tok, q, s)) for s in systems for q in questions], tokens)[0]
    return [texts[i:i + len(questions)] for i in range(0, len(texts), len(questions))]


def workshop(out: Path, cfg: WorkshopConfig | None = None, live=None, reuse: bool = True, loaded=None) -> dict:
    """reuse=True returns a finished run with the same config from out/results.json; live: a plots.LiveMeter
    to draw both runs as they train; loaded: (model, tokenizer) of cfg.model if already loaded (no adapter)."""
    cfg = cfg or WorkshopConfig()
    path = out / "results.json"
    if reuse and path.exists() and (saved := json.loads(path.read_text())).get("config") == asdict(cfg) \
            and saved.get("format") == FORMAT and saved.get("pinned") == precision.pinned():
        return saved  # the same run: a changed SDFT_LAB_PRECISION trains again
    sdft_run, sft_run = workshop_knowledge(**({"steps": cfg.steps} if cfg.steps else {}), model=cfg.model)
    if cfg.smoke:
        sdft_run = replace(sdft_run, train=replace(sdft_run.train, steps=1),
                           sdft=replace(sdft_run.sdft, max_new_tokens=4))
        sft_run = replace(sft_run, train=replace(sft_run.train, steps=1))
    knowledge = load_knowledge()
    examples, items = knowledge.first(2 if cfg.smoke else cfg.facts)
    direct = [it for it in items if it.kind == "direct"][: cfg.answers]
    shown = [it.question for it in direct]
    probes = load_probes()[:: 12 if cfg.smoke else cfg.probe_stride]
    tokens = 8 if cfg.smoke else QA_TOKENS
    base, tok = loaded or load(cfg.model)
    timer, start = Timer(), time.perf_counter()
    # the forgetting meter on the same probes' questions: the base's own answers, under the template's prompt
    with timer("drift reference"):
        general = reference(base, tok, [p.question for p in probes], max_new_tokens=8 if cfg.smoke else ANSWER_TOKENS)
    results = {"format": FORMAT, "config": asdict(cfg), "date": time.strftime("%Y-%m-%d"),
               "machine": machine(next(base.parameters()).device),
               "recipe": {"sdft": sdft_run.to_dict(), "sft": sft_run.to_dict()},
               "questions": shown, "accepted": [it.answers[0] for it in direct],
               "n_probes": len(probes), "precision": precision.describe(base),
               "pinned": precision.pinned()}
    with timer("retention probes"):
        results["base"] = {"retention": mc_accuracy(base, tok, probes)}
    methods = (("sft", sft_run, sft_run.sft.prompts.system), ("sdft", sdft_run, sdft_run.sdft.prompts.system))
    systems = list(dict.fromkeys(system for _, _, system in methods))
    # the base's figures per system prompt: each method is measured with its own
    with timer("greedy answers"):
        said = answers(base, tok, shown, systems, tokens)
    with timer("learning meter"):
        framed = {system: {"base_meter": meter(base, tok, items, system), "base_answers": a}
                  for system, a in zip(systems, said)}
    for method, run, system in methods:
        results[method] = {"system": system, **framed[system]}
        if method == "sdft":  # only SDFT has a teacher: the base with the passage in its context
            with timer("learning meter"):
                results[method]["ceiling_meter"] = meter(base, tok, items, system, with_passage=True)
            with timer("greedy answers"):
                results[method]["teacher_answers"] = qa_accuracy(base, tok, direct, with_passage=True, system=system,
                                                                 max_new_tokens=tokens)["answers"]
        if live:
            live.frame(results[method]["base_meter"], results[method].get("ceiling_meter"), run=method)
        with student_of(base, run) as model:
            callback = MeterCallback(model, tok, items, cfg.meter_every, system, start=framed[system]["base_meter"],
                                     live=live(method) if live else None)
            t0 = time.perf_counter()
            trainer = Trainer(model, tok, run.objective(), examples, replace(run.train, report=False),
                              callbacks=(callback,))
            history = trainer.train()
            in_meter = trainer.evaluations.seconds.get(callback.name, 0.0)  # the meter's points while training
            timer.add(f"{method} steps", time.perf_counter() - t0 - in_meter)
            timer.add("learning meter", in_meter)
            with timer("learning meter"):
                if callback.curve[-1]["step"] != len(history):  # the last step, where `every` does not divide them
                    callback.measure(len(history))
            train_s = time.perf_counter() - t0
            results[method].update(meter_curve=callback.curve, train_s=train_s, loss=[r["loss"] for r in history])
            with timer("retention probes"):
                results[method]["retention"] = mc_accuracy(model, tok, probes)
            with timer("drift"):
                results[method]["drift"] = drift(model, general)
            with timer("greedy answers"):
                results[method]["answers"] = answers(model, tok, shown, [system], tokens)[0]
            model.save_pretrained(out / method / "adapter")  # peft's safetensors: sdft_lab.load_adapter reads it
    # each column's answers marked by the QA sweep's lenient score (an accepted answer appears)
    results["correct"] = {k: [score_qa(t, it.answers, it.wrong)[1] == 1 for t, it in zip(col, direct)]
                          for k, col in answer_columns(results).items()}
    results["total_s"] = time.perf_counter() - start
    results["timings_s"] = timer.seconds  # each evaluation's seconds over the run, and each method's steps
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    return results


def answer_columns(results: dict) -> dict[str, list[str]]:
    """The greedy answers to the shown questions side by side: the base's, each student's and the teacher's."""
    return {"base": results["sdft"]["base_answers"], "SFT": results["sft"]["answers"],
            "SDFT": results["sdft"]["answers"], "teacher (passage in context)": results["sdft"]["teacher_answers"]}


def reading(results: dict) -> str:
    """The run in plain sentences: what each method did to the fact likelihood and to retention."""
    n, kept = results["n_probes"], results["base"]["retention"]["overall"]
    se = retention_se(kept, n)
    lines = [f"Base retention {kept:.2f} on {n} probes (one standard error: {se:.2f})."]
    for m in ("sft", "sdft"):
        r = results[m]
        base, last = r["base_meter"], r["meter_curve"][-1]
        ceiling = {t: f"; teacher ceiling {r['ceiling_meter'][t]['all']:.2f}" if "ceiling_meter" in r else ""
                   for t in ("passage", "answer")}
        ret = r["retention"]["overall"] - kept
        moved = f", drift {r['drift']:.3f} nats per token" if "drift" in r else ""
        lines.append(
            f"{m.upper()} ({last['step']} steps, {r['train_s'] / 60:.1f} min of training): passage "
            f"{base['passage']['all']:.2f} → {last['passage']['all']:.2f} ({last['passage']['all'] - base['passage']['all']:+.2f}"
            f" nats per token{ceiling['passage']}), answer {base['answer']['all']:.2f} → {last['answer']['all']:.2f} "
            f"({last['answer']['all'] - base['answer']['all']:+.2f}{ceiling['answer']}); retention {ret:+.2f}, "
            f"{'within' if abs(ret) <= se else 'outside'} one SE{moved}.")
    return "\n".join(lines)

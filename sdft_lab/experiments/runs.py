"""The paper's two claims as runnable experiments on the bundled model.

  knowledge   base vs SFT vs SDFT on invented facts, same examples and optimizer steps:
              strict / lenient QA accuracy (direct / indirect / OOD), the teacher ceiling,
              and retention probes every N steps during training;
  sequential  skill A (toolcall) → skill B (science) → knowledge, for SFT and for SDFT,
              measuring every earlier task and the retention probes after each stage;
  pareto      new-task accuracy vs retention for SFT and SDFT over a few learning rates.

    python -m sdft_lab.experiments knowledge --out runs/knowledge
    python -m sdft_lab.experiments sequential --steps 8 --out runs/sequential
    python -m sdft_lab.experiments pareto --task science --lrs 3e-4 1e-3 3e-3
    python -m sdft_lab.experiments workshop     # notebook 03's run with the learning meter, about 11 min (workshop.py)

Each run writes results.json and HTML plots to its folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..config import RunConfig
from ..data import Example, skill_split
from ..eval import (RetentionCallback, load_knowledge, load_probes, mc_accuracy, qa_accuracy, science_answer,
                    task_accuracy, toolcall_format)
from ..models import add_student, load
from ..report import render
from ..sdft import SDFTConfig
from ..trainer import TrainConfig, Trainer


def default_run() -> RunConfig:
    # 32 optimizer steps × 4 examples = 2 epochs of the 64 knowledge examples; per stage in the sequential run
    return RunConfig(train=TrainConfig(steps=32, batch_size=4, lr=1e-3, preflight=False),
                     sdft=SDFTConfig(max_new_tokens=48))


@dataclass
class ExperimentConfig:
    """The run every method shares (model, train, sdft, sft, student; its `method` is set per method) and how
    much to evaluate."""

    run: RunConfig = field(default_factory=default_run)
    retention_every: int = 16  # steps between two measurements of the retention probes
    eval_limit: int | None = None  # evaluate on the first N items only (smoke runs)

    def with_lr(self, lr: float) -> ExperimentConfig:
        return replace(self, run=replace(self.run, train=replace(self.run.train, lr=lr)))


def train(model, tok, method: str, examples: list[Example], cfg: ExperimentConfig, run_dir: Path,
          callbacks=()) -> list[dict]:
    """One method's run; its metrics, run.json and report go to run_dir."""
    run = replace(cfg.run, method=method, out=str(run_dir))
    trainer = Trainer(model, tok, run.objective(), examples, replace(run.train, run_dir=str(run_dir)),
                      callbacks=callbacks, config=run.to_dict())
    return trainer.train()


def evaluated(run_dir: Path, method: str, figures: dict) -> None:
    """The method's evaluation into its run folder, and its report again with them (if it has one)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps({method: figures}, indent=1))
    if (run_dir / "run.json").is_file():  # TrainConfig(report=False) writes none
        render(run_dir)


def saved(out: Path, config: dict) -> dict | None:
    """The results of an earlier run in out with exactly this config, else None."""
    path = out / "results.json"
    if path.exists() and (results := json.loads(path.read_text())).get("config") == config:
        return results
    return None


@contextmanager
def student_of(base, run: RunConfig) -> Iterator:
    """A fresh LoRA student over the one loaded base; afterwards its adapters are taken out again, so every
    method and learning rate starts from the same base and a large model is in memory once."""
    model = add_student(base, run.student, seed=run.train.seed)
    try:
        yield model
    finally:
        model.unload()


def knowledge(out: Path, cfg: ExperimentConfig, reuse: bool = False, live=None) -> dict:
    """reuse=True returns a finished run with the same config from out instead of training again;
    live: a plots.LiveCurves with runs "sft" and "sdft", to watch both train in a notebook."""
    if reuse and (results := saved(out, asdict(cfg))):
        return results
    facts, probes = load_knowledge(), load_probes()
    items = facts.eval[: cfg.eval_limit]
    probes = probes[: cfg.eval_limit]
    base, tok = load(cfg.run.model, cfg.run.quantization)
    start = time.perf_counter()
    results = {"config": asdict(cfg), "base": {"qa": qa_accuracy(base, tok, items), "retention": mc_accuracy(base, tok, probes)},
               "teacher_ceiling": {"qa": qa_accuracy(base, tok, items, with_passage=True)}}
    for method in ("sft", "sdft"):
        with student_of(base, cfg.run) as model:
            retention = RetentionCallback(model, tok, probes, every=cfg.retention_every,
                                          start=results["base"]["retention"])
            t0 = time.perf_counter()
            callbacks = (retention, live(method)) if live else (retention,)
            history = train(model, tok, method, facts.train, cfg, out / method, callbacks=callbacks)
            last = retention.curve[-1]
            steps = cfg.run.train.steps
            final = last if last["step"] == steps else {"step": steps, **mc_accuracy(model, tok, probes)}
            results[method] = {"qa": qa_accuracy(model, tok, items),
                               "retention": {k: v for k, v in final.items() if k != "step"},
                               "retention_curve": retention.curve, "train_s": time.perf_counter() - t0,
                               "history": [{k: v for k, v in r.items() if k != "sample"} for r in history]}
            evaluated(out / method, method, {k: results[method][k] for k in ("qa", "retention")})
    results["total_s"] = time.perf_counter() - start
    save(out, results)
    return results


SKILLS = {"toolcall": toolcall_format, "science": science_answer}  # bundled skill set → its scorer


def skill_accuracy(model, tok, name: str, cfg: ExperimentConfig) -> float:
    return task_accuracy(model, tok, skill_split(name, "eval")[: cfg.eval_limit], SKILLS[name])


def sequential(out: Path, cfg: ExperimentConfig, reuse: bool = False) -> dict:
    if reuse and (results := saved(out, asdict(cfg))):
        return results
    facts, probes = load_knowledge(), load_probes()[: cfg.eval_limit]
    stages = [("toolcall", skill_split("toolcall", "train")), ("science", skill_split("science", "train")),
              ("knowledge", facts.train)]
    base, tok = load(cfg.run.model, cfg.run.quantization)

    def measure(model, upto: int) -> dict:
        seen = [name for name, _ in stages[: upto + 1]]
        scores = {"retention": mc_accuracy(model, tok, probes)["overall"]}
        for skill in SKILLS:
            if skill in seen:
                scores[skill] = skill_accuracy(model, tok, skill, cfg)
        if "knowledge" in seen:
            scores["knowledge"] = qa_accuracy(model, tok, facts.eval[: cfg.eval_limit])["all"]["lenient"]
        return scores

    results = {"config": asdict(cfg), "base": measure(base, len(stages) - 1)}
    for method in ("sft", "sdft"):
        results[method] = []
        with student_of(base, cfg.run) as model:
            for i, (name, examples) in enumerate(stages):
                train(model, tok, method, examples, cfg, out / method / f"{i + 1}-{name}")
                results[method].append({"stage": name, **measure(model, i)})
                evaluated(out / method / f"{i + 1}-{name}", method, results[method][-1])
    save(out, results)
    return results


def pareto(out: Path, cfg: ExperimentConfig, lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3),
           task: str = "science", reuse: bool = False) -> dict:
    """Train a fresh adapter per method and learning rate on one skill; score the skill and the retention probes."""
    config = {**asdict(cfg), "lrs": list(lrs), "task": task}
    if reuse and (results := saved(out, config)):
        return results
    probes = load_probes()[: cfg.eval_limit]
    examples = skill_split(task, "train")
    base, tok = load(cfg.run.model, cfg.run.quantization)
    results = {"config": config,
               "base": {"task": skill_accuracy(base, tok, task, cfg), "retention": mc_accuracy(base, tok, probes)["overall"]}}
    for method in ("sft", "sdft"):
        results[method] = []
        for lr in lrs:
            with student_of(base, cfg.run) as model:
                train(model, tok, method, examples, cfg.with_lr(lr), out / method / f"lr-{lr:g}")
                results[method].append({"lr": lr, "task": skill_accuracy(model, tok, task, cfg),
                                        "retention": mc_accuracy(model, tok, probes)["overall"]})
                evaluated(out / method / f"lr-{lr:g}", method, results[method][-1])
    save(out, results)
    return results


def save(out: Path, results: dict) -> None:
    from ..inspect.plots import knowledge_figures, pareto_figure, sequential_figure

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if "teacher_ceiling" in results:
        figures = knowledge_figures(results)
    elif "lrs" in results["config"]:
        figures = {"pareto": pareto_figure(results)}
    else:
        figures = {"sequential": sequential_figure(results)}
    for name, fig in figures.items():
        fig.write_html(out / f"{name}.html", include_plotlyjs="directory")

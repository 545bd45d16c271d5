"""A few minutes of SDFT on the bundled model, headless: `python -m sdft_lab.demo` (or `make demo`).

The student learns invented facts about the island nation of Velmora from
demonstrations it never sees directly: it only sees the questions, samples its
own answers, and is pulled toward what the same model says with the
demonstration in context. We measure, on questions held out from training
(paraphrases of the trained ones), the mean per-token KL(teacher ‖ student)
before and after, and show the student's greedy answer before and after.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from .config import RunConfig
from .data import load_dataset
from .heldout import evaluate_kl
from .inspect.preflight import greedy_answers, quick_check
from .models import add_student, load
from .report import load as load_run
from .report import render
from .sdft import SDFTConfig
from .trainer import TrainConfig, Trainer

HELD_OUT_SEED = 10**6  # training rollouts use seeds cfg.seed·1000003 + i, far from this


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    run = RunConfig(out=str(args.out), sdft=SDFTConfig(max_new_tokens=args.max_new_tokens),
                    train=TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr))
    model, tok = load(run.model, run.quantization)
    model = add_student(model, run.student, seed=run.train.seed)
    train, held_out = load_dataset(run.data), load_dataset("demo-heldout")
    featured = held_out[0]
    cfg = run.sdft
    print(f"Training on {len(train)} questions; measuring on {len(held_out)} held-out paraphrases.\n")

    before = evaluate_kl(model, tok, held_out, cfg, seed=HELD_OUT_SEED)
    featured_before = evaluate_kl(model, tok, [featured], cfg, seed=HELD_OUT_SEED, rollouts=4)
    teacher_answer, = greedy_answers(model, tok, [featured], cfg, cfg.max_new_tokens, teacher=True)

    trainer = Trainer(model, tok, run.objective(), train, replace(run.train, run_dir=str(args.out)),
                      preflight=quick_check, held_out=held_out, config=run.to_dict())
    history = trainer.train()

    after = evaluate_kl(model, tok, held_out, cfg, seed=HELD_OUT_SEED)
    featured_after = evaluate_kl(model, tok, [featured], cfg, seed=HELD_OUT_SEED, rollouts=4)
    # the student's answers before and after are the run report's (held_out[0] is its first prompt)
    answers = load_run(args.out)[0]["answers"]
    answer_before, answer_after = answers["before"][0], answers["after"][0]

    result = {
        "held_out_kl_before": before["kl"], "held_out_kl_after": after["kl"],
        "featured": featured.question,
        "featured_kl_before": featured_before["kl"], "featured_kl_after": featured_after["kl"],
        "answer_before": answer_before, "answer_after": answer_after, "teacher_answer": teacher_answer,
        "median_step_s": sorted(r["step_s"] for r in history)[len(history) // 2],
        "total_s": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    trainer.save_adapter(args.out / "adapter")
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    render(args.out)  # the report again, now with the held-out figures
    report(result, args.out)
    return result


def report(r: dict, out: Path) -> None:
    line = "─" * 72
    print(f"\n{line}\nMean per-token KL(teacher ‖ student) on fresh rollouts, lower = closer to the teacher")
    print(f"  all {'held-out paraphrases':<30} {r['held_out_kl_before']:.3f} → {r['held_out_kl_after']:.3f}")
    print(f"  {'the prompt below (4 rollouts)':<34} {r['featured_kl_before']:.3f} → {r['featured_kl_after']:.3f}")
    print(f"{line}\nHeld-out prompt: {r['featured']}")
    print(f"  student before : {r['answer_before'].strip()}")
    print(f"  student after  : {r['answer_after'].strip()}")
    print(f"  teacher (sees a demonstration): {r['teacher_answer'].strip()}")
    print(f"{line}\nmedian {r['median_step_s']:.1f} s per SDFT step; {r['total_s']:.0f} s in all. "
          f"Adapter, metrics and report.html in {out}/")


if __name__ == "__main__":
    main()

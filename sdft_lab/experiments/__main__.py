"""`python -m sdft_lab.experiments NAME`: the command line of every experiment (runs.py, workshop.py,
frontier.py); `--help` lists them and their options."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from ..config import RunConfig
from . import frontier
from .runs import SKILLS, ExperimentConfig, default_run, knowledge, pareto, sequential
from .runs import __doc__ as RUNS_DOC
from .workshop import WorkshopConfig, reading, workshop


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=RUNS_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["knowledge", "sequential", "pareto", "workshop", "frontier"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--config", type=Path, help="a RunConfig file (YAML / JSON) for the shared run settings")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3], help="pareto only")
    parser.add_argument("--task", choices=sorted(SKILLS), default="science", help="pareto only")
    run = default_run()
    parser.add_argument("--model", help=f"'bundled', a preset, a folder or a hub id in the cache [{run.model}]")
    parser.add_argument("--steps", type=int, help=f"per method (per stage when sequential) [{run.train.steps}]")
    parser.add_argument("--batch-size", type=int, help=f"[{run.train.batch_size}]")
    parser.add_argument("--lr", type=float, help=f"[{run.train.lr}]")
    parser.add_argument("--seed", type=int, help=f"[{run.train.seed}]")
    parser.add_argument("--max-new-tokens", type=int, help=f"SDFT rollouts [{run.sdft.max_new_tokens}]")
    parser.add_argument("--retention-every", type=int, default=ExperimentConfig.retention_every)
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N items (quick looks)")
    args = parser.parse_args(argv)
    if args.config:
        run = RunConfig.from_file(args.config)
    given = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                               "seed": args.seed}.items() if v is not None}
    run = replace(run, model=args.model or run.model, train=replace(run.train, preflight=False, **given))
    if args.max_new_tokens is not None:
        run = replace(run, sdft=replace(run.sdft, max_new_tokens=args.max_new_tokens))
    cfg = ExperimentConfig(run, retention_every=args.retention_every, eval_limit=args.eval_limit)
    out = args.out or Path("runs") / args.experiment
    if args.experiment == "frontier":  # its own settings (frontier.FAMILIES); python -m sdft_lab.experiments.frontier
        if args.config or given or args.model or args.max_new_tokens is not None:
            parser.error("frontier has its own settings (experiments/frontier.py); it takes --out only. "
                         "For its other options: python -m sdft_lab.experiments.frontier --help")
        return frontier.main(["--out", str(out)])
    if args.experiment == "workshop":  # the recipe's own settings; --model and --steps apply
        results = workshop(out, WorkshopConfig(model=args.model or "bundled", steps=args.steps), reuse=False)
        print(reading(results))
        return results
    if args.experiment == "pareto":
        results = pareto(out, cfg, tuple(args.lrs), args.task)
    else:
        results = (knowledge if args.experiment == "knowledge" else sequential)(out, cfg)
    print(json.dumps({k: v for k, v in results.items() if k != "config"}, indent=1, default=str)[:4000])
    print(f"results and plots in {out}/")
    return results


if __name__ == "__main__":
    main()

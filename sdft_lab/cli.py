"""`sdft-lab`: the notebooks' steps as headless commands.

    sdft-lab train --data demo --steps 20 --out runs/cli        SDFT (or --method sft) on a bundled set or a jsonl
    sdft-lab train --config run.yaml --lr 5e-4                   a YAML / JSON config; flags override it
    sdft-lab eval --adapter runs/cli/adapter --probes --knowledge
    sdft-lab diff --data demo-heldout --example 0 --out diff.html
    sdft-lab data my_data.jsonl --columns question=instruction  what a data file holds, as sdft_lab reads it
    sdft-lab export-trl --data demo --out runs/trl-export        a dataset and config for TRL's SDFTTrainer
    sdft-lab report runs/cli                                     rebuild a run's report.html and report.md
    sdft-lab demo | preflight | experiment ...                   the module scripts, same flags

A config file is a RunConfig (config.py): method, model, quantization, data, out, and the sections train
(TrainConfig), sdft (SDFTConfig, with divergence and prompts inside), sft (SFTConfig), student (StudentConfig).
`RunConfig.from_file("run.yaml")` loads the same file in a notebook.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from .config import SECTIONS, ConfigError, RunConfig, read_file
from .data import Example, load_dataset
from .sdft import SDFTConfig

TOP_LEVEL = ("method", "model", "quantization", "data", "data_format", "columns", "out")
# (flag, dotted config key, type or choices, help); a flag that is not given leaves the config file's value
CONFIG_FLAGS = {
    "training (TrainConfig)": [
        ("--steps", "train.steps", int, "optimizer steps"),
        ("--batch-size", "train.batch_size", int, "prompts per step and process"),
        ("--grad-accum", "train.grad_accum", int, "micro-batches per step"),
        ("--lr", "train.lr", float, "learning rate"),
        ("--seed", "train.seed", int, "seed of the batches and rollouts"),
        ("--checkpoint-every", "train.checkpoint_every", int, "checkpoint every N steps to OUT/checkpoints"),
    ],
    "SDFT (SDFTConfig)": [
        ("--max-new-tokens", "sdft.max_new_tokens", int, "rollout length"),
        ("--divergence", "sdft.divergence.kind", ["forward_kl", "reverse_kl", "jsd", "sampled"], "loss"),
        ("--alpha", "sdft.divergence.alpha", float, "jsd's α: 0 = forward KL, 1 = reverse KL"),
        ("--top-k", "sdft.divergence.top_k", int, "KL over the top-k tokens plus a tail bucket; None = all"),
        ("--top-k-side", "sdft.divergence.top_k_side", ["teacher", "student"], "whose top-k is the support"),
        ("--sft-weight", "sdft.sft_weight", float, "weight of a cross-entropy term on the demonstration"),
        ("--anchor-weight", "sdft.anchor_weight", float, "β of the anchor β·KL(student ‖ base) per token"),
        ("--teacher", "sdft.teacher", ["base", "ema", "live"], "teacher weights"),
        ("--skip-first", "sdft.skip_first", int, "completion tokens left out of the loss"),
        ("--rollouts-per-prompt", "sdft.rollouts_per_prompt", int, "rollouts of each question per step"),
        ("--engine", "sdft.engine", ["auto", "lean", "hf"], "rollout sampler: sampler.py's loop or model.generate"),
    ],
    "LoRA student (StudentConfig)": [
        ("--lora-r", "student.r", int, "rank"),
        ("--lora-alpha", "student.alpha", int, "scale"),
    ],
}
PASSTHROUGH = {"demo": "sdft_lab.demo", "preflight": "sdft_lab.inspect.preflight", "experiment": "sdft_lab.experiments"}


# ----------------------------------------------------------------------------
# Config: a file, then flags


def resolve(args: argparse.Namespace) -> RunConfig:
    """The config file's values, overridden by the flags given (dotted dests like "sdft.divergence.kind")."""
    try:
        if getattr(args, "recipe", None) and args.config:
            raise ConfigError("give --recipe or --config, not both (a recipe is a whole config; flags override it)")
        config = read_file(args.config) if args.config else {}
        if getattr(args, "recipe", None):
            config = recipe_config(args.recipe, args.method or "sdft")
        for dest, value in vars(args).items():
            if "." in dest:
                *path, key = dest.split(".")
                node = config
                for part in path:
                    node = node.setdefault(part, {})
                node[key] = value
            elif dest in TOP_LEVEL and value is not None:
                config[dest] = value
        return RunConfig.from_dict(config, str(args.config or "flags"))
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None


def recipe_config(name: str, method: str) -> dict:
    """A named recipe's RunConfig for the method, as the dict a config file would hold."""
    from .recipes import RECIPES

    if name not in RECIPES:
        raise ConfigError(f"--recipe: unknown recipe {name!r}; recipes: {sorted(RECIPES)} (docs/recipes.md).")
    sdft, sft = RECIPES[name]()
    config = (sft if method == "sft" else sdft).to_dict()
    config["train"].pop("checkpoint_dir")  # OUT/checkpoints, as for any config
    del config["out"]
    return config


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """Flags for the settings people change most; anything else goes in --config, whose values they override."""
    p.add_argument("--config", type=Path, help="a YAML or JSON file (`sdft-lab --help` lists its keys)")
    p.add_argument("--recipe", help="start from a named recipe (recipes.py: workshop-knowledge); flags override it")
    p.add_argument("--data", help="a bundled set (demo, toolcall, science, …) or a .jsonl/.json/.csv/.parquet file [demo]")
    add_data_flags(p)
    add_model_flags(p, config=True)
    p.add_argument("--method", choices=["sdft", "sft"], help="[sdft]")
    for title, flags in CONFIG_FLAGS.items():
        g = p.add_argument_group(title)
        for flag, dest, kind, help in flags:
            extra = {"choices": kind} if isinstance(kind, list) else {"type": kind, "metavar": kind.__name__.upper()}
            g.add_argument(flag, dest=dest, default=argparse.SUPPRESS,  # absent unless given
                           help=f"{help} [{default_of(dest)}]", **extra)


def default_of(dest: str):
    """The dataclass default behind a dotted config key, for --help."""
    section, *path = dest.split(".")
    value = SECTIONS[section]()
    for part in path:
        value = getattr(value, part)
    return value


def columns_arg(text: str) -> dict[str, str]:
    pairs = [part.split("=", 1) for part in text.split(",") if part]
    if not all(len(p) == 2 and p[0] and p[1] for p in pairs):
        raise argparse.ArgumentTypeError(f"expected FIELD=COLUMN pairs separated by commas, got {text!r}")
    return dict(pairs)


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-format", choices=["sdft", "trl", "chat", "prompt_completion"],
                   help="the data's format [detected from its columns]")
    p.add_argument("--columns", type=columns_arg, metavar="FIELD=COLUMN,…",
                   help="read Example fields from other columns, e.g. question=instruction,demonstration=output")


def add_model_flags(p: argparse.ArgumentParser, config: bool = False) -> None:
    """--model and --quantization; for train (config=True) absent unless given, so that the config file's
    values stand, elsewhere with their defaults and --adapter."""
    p.add_argument("--model", default=None if config else "bundled",
                   help="'bundled', a preset, a local folder or a hub id in the local cache [bundled]")
    p.add_argument("--quantization", default=None if config else "auto", choices=["auto", "nf4", "none"],
                   help="auto = NF4 on CUDA, fp32 on CPU [auto]")
    if not config:
        p.add_argument("--adapter", type=Path, help="a saved adapter folder, the student (default: the base model)")


# ----------------------------------------------------------------------------
# Commands


def load_model(name: str, quantization: str = "auto", adapter: Path | None = None):
    """(model, tokenizer): the base, with a saved adapter applied when given."""
    from .models import load, load_adapter

    model, tok = load(name, quantization=quantization)
    if adapter is None:
        return model, tok
    try:
        return load_adapter(model, adapter), tok
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err} `sdft-lab train` writes one to OUT/adapter.") from None


def train(args: argparse.Namespace) -> dict:
    from .inspect.preflight import quick_check
    from .models import add_student
    from .trainer import Trainer

    cfg = resolve(args)
    out = Path(cfg.out)
    examples = cfg.examples()
    model, tok = load_model(cfg.model, cfg.quantization)
    model = add_student(model, cfg.student, seed=cfg.train.seed)
    trainer = Trainer(model, tok, cfg.objective(), examples, replace(cfg.train, run_dir=str(out)),
                      preflight=quick_check, config=cfg.to_dict())
    if args.resume:
        trainer.resume()
    t0 = time.perf_counter()
    history = trainer.train()
    trainer.save_adapter(out / "adapter")
    if trainer.group.is_main:  # the trainer wrote metrics.jsonl, run.json and the report, unless report=False
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        if not cfg.train.report:
            (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trainer.history))
        last = history[-1] if history else {}
        print(f"{cfg.method}: {len(history)} steps in {time.perf_counter() - t0:.0f} s; last loss "
              f"{last.get('loss', float('nan')):.4f}. Adapter, metrics.jsonl, config.json{' and report.html' if cfg.train.report else ''} in {out}/")
    return {"history": history, "out": str(out)}


def evaluate(args: argparse.Namespace) -> dict:
    from .data import skill_split
    from .eval import SCORERS, load_knowledge, load_probes, mc_accuracy, qa_accuracy, task_accuracy

    if not (args.probes or args.knowledge or args.task or args.harness_tasks or args.drift):
        args.probes = True
    if args.drift and args.adapter is None:
        raise SystemExit("error: --drift measures an adapter against its base: pass --adapter.")
    model, tok = load_model(args.model, args.quantization, args.adapter)
    results: dict = {"model": args.model, "adapter": str(args.adapter) if args.adapter else None}
    if args.probes:
        results["retention_probes"] = mc_accuracy(model, tok, load_probes()[: args.limit])
    if args.knowledge:
        qa = qa_accuracy(model, tok, load_knowledge().eval[: args.limit])
        results["knowledge_qa"] = {k: v for k, v in qa.items() if k != "samples"}
    if args.task:
        examples = skill_split(args.task, args.split) if args.split else load_dataset(args.task)
        if not examples:
            raise SystemExit(f"error: {args.task} has no examples whose metadata split is {args.split!r}.")
        results[f"task:{args.task}"] = {args.scorer: task_accuracy(model, tok, examples[: args.limit],
                                                                    SCORERS[args.scorer])}
    if args.drift:
        from .eval.drift import drifts, references

        refs = references(model, tok, [p.question for p in load_probes()[: args.limit]],
                          [it.question for it in load_knowledge().eval[: args.limit]])
        results["drift"] = drifts(model, refs)
    if args.harness_tasks:
        from .eval.lm_eval import evaluate as harness_evaluate

        results["lm_eval"] = harness_evaluate(model, tok, args.harness_tasks, include_path=args.harness_include,
                                              limit=args.limit)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return results


def diff(args: argparse.Namespace) -> dict:
    from .inspect.diffs import table_html, to_html, token_diffs

    if args.question:
        if not args.demonstration:
            raise SystemExit("error: --question needs --demonstration (what the teacher sees).")
        example = Example(args.question, args.demonstration, id="cli")
    else:
        examples = load_dataset(args.data)
        match = [ex for i, ex in enumerate(examples) if args.example in (ex.id, str(i))]
        if not match:
            raise SystemExit(f"error: {args.data} has no example with id or index {args.example!r} "
                             f"(ids: {[ex.id for ex in examples[:5]]} …).")
        example = match[0]
    model, tok = load_model(args.model, args.quantization, args.adapter)
    cfg = SDFTConfig(max_new_tokens=args.max_new_tokens)
    d, = token_diffs(model, tok, [example], cfg, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f'<!doctype html><meta charset="utf-8"><title>sdft-lab diff</title>'
                        f'<body style="margin:16px;max-width:1040px">{to_html(d)}<h3>Where the teacher disagrees '
                        f'most</h3>{table_html(d)}</body>', encoding="utf-8")
    summary = d.summary()
    print(f"{len(d.tokens)} tokens, mean divergence {summary['mean_divergence']:.3f}, teacher agrees with "
          f"{100 * summary['teacher_top1']:.0f}% of the sampled tokens. Wrote {args.out}")
    return summary


def data(args: argparse.Namespace) -> str:
    from transformers import AutoTokenizer

    from .bundled import BUNDLED, bundled_path
    from .data import DataError
    from .inspect.dataset import describe

    tok = AutoTokenizer.from_pretrained(bundled_path() if args.model == BUNDLED else args.model)
    try:
        text = describe(args.file, tok, format=args.data_format, **(args.columns or {}))
    except (DataError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    print(text)
    return text


def export_trl(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from .bundled import BUNDLED, bundled_path
    from .interop.trl import export

    cfg = resolve(args)
    if cfg.method != "sdft":
        raise SystemExit("error: only SDFT exports to TRL's SDFTTrainer (for SFT, use TRL's SFTTrainer).")
    tok = AutoTokenizer.from_pretrained(bundled_path() if cfg.model == BUNDLED else cfg.model)
    try:
        config = export(cfg.examples(), tok, cfg.out, cfg.sdft, cfg.train, cfg.student)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    kw = config["sdft_config"]
    print(f"Wrote {cfg.out}/train.jsonl and trl_config.json: distillation_mode={kw['distillation_mode']} "
          f"alpha={kw['distillation_alpha']} teacher={kw['teacher_model_kind']} "
          f"max_prompt_length={kw['max_prompt_length']} (longest teacher prompt).")
    return config


def rebuild_report(args: argparse.Namespace) -> dict:
    from .report import render

    try:
        page, md = render(args.run_dir)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"Wrote {page} and {md}")
    return {"html": str(page), "md": str(md)}


# ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="sdft-lab", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train an SDFT or SFT adapter")
    add_config_flags(p)
    p.add_argument("--out", help="output folder: adapter/, metrics.jsonl, config.json, report.html [runs/cli]")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT/checkpoints")
    p.add_argument("--no-preflight", dest="train.preflight", action="store_false", default=argparse.SUPPRESS,
                   help="skip the check that the teacher gains from the demonstrations")
    p.set_defaults(run=train)

    p = sub.add_parser("eval", help="retention probes, knowledge QA, a skill task, lm-eval tasks")
    add_model_flags(p)
    p.add_argument("--probes", action="store_true", help="the 120 retention probes (the default)")
    p.add_argument("--knowledge", action="store_true", help="knowledge QA: strict / lenient, direct / indirect / OOD")
    p.add_argument("--task", help="a bundled set or jsonl, scored on greedy answers to its questions")
    p.add_argument("--scorer", default="answer", choices=["answer", "toolcall", "science"], help="for --task")
    p.add_argument("--split", help="for --task: only examples whose metadata split is this (e.g. eval)")
    p.add_argument("--drift", action="store_true", help="with --adapter: mean per-token KL(base ‖ tuned) on the "
                   "base's own answers to the probes' questions (general) and the knowledge questions (task)")
    p.add_argument("--harness-tasks", nargs="+", metavar="TASK", help="lm-eval tasks, e.g. sdft_lab_probes")
    p.add_argument("--harness-include", type=Path, help="a folder of your own lm-eval task YAMLs")
    p.add_argument("--limit", type=int, help="at most N items per evaluation (quick looks)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.set_defaults(run=evaluate)

    p = sub.add_parser("diff", help="token-level teacher vs student diff of one rollout, as HTML")
    add_model_flags(p)
    p.add_argument("--data", default="demo-heldout", help="a bundled set or jsonl [demo-heldout]")
    p.add_argument("--example", default="0", help="an example id or index in --data [0]")
    p.add_argument("--question", help="instead of --data: a question …")
    p.add_argument("--demonstration", help="… and the demonstration the teacher sees")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("diff.html"))
    p.set_defaults(run=diff)

    p = sub.add_parser("data", help="what a data file holds: format, counts, token lengths, trimmed prompts")
    p.add_argument("file", help="a bundled set or a .jsonl / .json / .csv / .parquet file")
    add_data_flags(p)
    p.add_argument("--model", default="bundled", help="whose tokenizer counts the tokens [bundled]")
    p.set_defaults(run=data)

    p = sub.add_parser("export-trl", help="a dataset and SDFTConfig for TRL's SDFTTrainer")
    add_config_flags(p)
    p.add_argument("--out", help="output folder [runs/cli]")
    p.set_defaults(run=export_trl)

    p = sub.add_parser("report", help="rebuild report.html and report.md of a run folder from its saved files")
    p.add_argument("run_dir", type=Path, help="a folder that train, make demo or an experiment wrote")
    p.set_defaults(run=rebuild_report)

    for name, module in PASSTHROUGH.items():
        sub.add_parser(name, add_help=False, help=f"python -m {module} (its own flags; {name} --help)")
    return top


def run(argv: list[str]):
    """Run one command and return its results (what the tests check)."""
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        return importlib.import_module(PASSTHROUGH[argv[0]]).main(argv[1:])
    args = parser().parse_args(argv)
    return args.run(args)


def main(argv: list[str] | None = None) -> None:
    """The console script; returns None, because a returned value would become the exit status."""
    run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()

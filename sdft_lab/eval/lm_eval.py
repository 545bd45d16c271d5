"""Standard-benchmark retention through lm-evaluation-harness (optional: `pip install -e .[lmeval]`).

The paper checks that SDFT keeps prior skills on HellaSwag, TruthfulQA, MMLU, IFEval, Winogrande and
HumanEval. This bridge runs any lm-eval task on an in-memory model (the base, or the base with a saved
adapter), so those numbers sit beside the bundled retention probes (eval.mc_accuracy). The project's own
task, `sdft_lab_probes` (sdft_lab/eval/tasks/), needs no download; the standard ones need their datasets
in the local Hugging Face cache or a network.
"""

from __future__ import annotations

import difflib
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
# Preferred metric per task, first match wins: acc_norm where a task reports it (HellaSwag's usual number),
# else accuracy, IFEval's prompt-level strict accuracy, HumanEval's pass@1, then exact match (GSM8K style).
PRIMARY_METRICS = ("acc_norm", "acc", "prompt_level_strict_acc", "pass@1", "exact_match")


def _require_lm_eval():
    try:
        import lm_eval
    except ImportError as err:
        raise ImportError("The lm-eval bridge needs lm-evaluation-harness: `pip install -e .[lmeval]` "
                          "(or `pip install lm-eval==0.4.13`).") from err
    return lm_eval


def probe_dataset(**_):
    """The retention probes as a one-split DatasetDict; `custom_dataset` of the sdft_lab_probes task.
    lm-eval passes the task's metadata as keyword arguments, which the probes do not need."""
    from dataclasses import asdict

    from datasets import Dataset, DatasetDict

    from .retention import load_probes

    return DatasetDict({"test": Dataset.from_list([asdict(p) for p in load_probes()])})


def _task_manager(tasks: list[str], include_path: str | None):
    """A TaskManager that knows every requested task. Indexing lm-eval's ~15k built-in task configs takes
    ~10 s, so they are scanned only when a task is not among the project's (and include_path's) own."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR)] + ([str(include_path)] if include_path else [])
    for defaults in (False, True):
        manager = TaskManager(include_path=paths, include_defaults=defaults)
        unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
        if not unknown:
            return manager
    hints = []
    for t in unknown:
        close = difflib.get_close_matches(t, manager.all_tasks, n=3)
        hints.append(repr(t) + (f" (did you mean {', '.join(close)}?)" if close else ""))
    own = ", ".join(sorted(p.stem for p in TASKS_DIR.glob("*.yaml")))
    more = f"those under {include_path}" if include_path else "your own (pass include_path= with a folder of task YAMLs)"
    raise ValueError(f"Unknown lm-eval task(s): {'; '.join(hints)}. Known are lm-eval's built-in tasks, the project's ({own}) "
                     f"and {more}.")


def _clean(results: dict, group_subtasks: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} for the top-level tasks and groups only (a group's members are dropped:
    "mmlu" gives one row, not 57). lm-eval keys look like "acc,none" or "exact_match,strict-match";
    the ",none" filter suffix is dropped, and non-numbers (aliases, "N/A" errors) are left out."""
    members = {t for subtasks in group_subtasks.values() for t in subtasks}
    out = {}
    for task, row in results.items():
        if task in members:
            continue
        out[task] = {key.removesuffix(",none"): float(v) for key, v in row.items()
                     if "," in key and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


def evaluate(model, tokenizer, tasks: list[str], *, include_path: str | None = None, limit: int | None = None,
             batch_size: int = 8) -> dict:
    """Run lm-eval tasks on an in-memory model; returns {task: {metric: value, metric_stderr: value}}.

    model: a transformers model or a PeftModel (base + adapter, see models.load_adapter); it is scored as it is,
    without the chat template (lm-eval's default for these benchmarks). tasks: lm-eval task or group names
    (e.g. "hellaswag", "mmlu", "sdft_lab_probes") or paths to task YAML files. include_path: a folder of
    your own task YAMLs. limit: at most this many documents per task (for quick looks; the numbers are then
    not the benchmark's).
    """
    lm_eval = _require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise ValueError("tasks is empty: name at least one lm-eval task, e.g. ['sdft_lab_probes'].")
    manager = _task_manager(tasks, include_path)
    was_training = model.training  # HFLM switches the model to eval mode; a training run expects it back
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False)
    finally:
        model.train(was_training)
    return _clean(out["results"], out.get("group_subtasks", {}))


def primary_metric(row: dict[str, float]) -> str:
    """The metric to show for one task's results (see PRIMARY_METRICS)."""
    for name in PRIMARY_METRICS:
        for key in row:
            if key.split(",")[0] == name:
                return key
    metrics = [k for k in row if not k.split(",")[0].endswith("_stderr")]
    if not metrics:
        raise ValueError(f"no metric in {row}")
    return metrics[0]


def compare(base: dict, adapter: dict, probes: dict[str, dict[str, float]] | None = None) -> list[dict]:
    """One row per harness task (its primary metric) and per retention-probe category:
    {"source", "name", "metric", "base", "adapter", "delta", "base_stderr", "adapter_stderr"}.

    base, adapter: evaluate() results. probes: {"base": mc_accuracy(...), "adapter": mc_accuracy(...)}.
    """
    rows = []
    for task in base:
        if task not in adapter:
            raise ValueError(f"task {task!r} is in the base results but not in the adapter's")
        metric = primary_metric(base[task])
        name, comma, filt = metric.partition(",")  # "exact_match,strict-match" → "exact_match_stderr,strict-match"
        err = f"{name}_stderr{comma}{filt}"
        rows.append({"source": "lm-eval", "name": task, "metric": metric, "base": base[task][metric],
                     "adapter": adapter[task][metric], "base_stderr": base[task].get(err),
                     "adapter_stderr": adapter[task].get(err)})
    if probes:
        for cat, value in probes["base"].items():
            rows.append({"source": "probes", "name": cat, "metric": "acc", "base": value,
                         "adapter": probes["adapter"][cat], "base_stderr": None, "adapter_stderr": None})
    for r in rows:
        r["delta"] = r["adapter"] - r["base"]
    return rows

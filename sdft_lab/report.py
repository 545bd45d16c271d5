"""The run report: report.html (one standalone page, plotly inlined, works offline) and report.md.

`Trainer.train()` saves what a run did to its run folder (TrainConfig.run_dir): metrics.jsonl, one
record per step, and run.json (config, versions, machine, wall time, pre-flight, the student's greedy
answers before and after, one token diff of a final rollout). The report is rendered from those files
alone (plus results.json, where an experiment wrote one), so `sdft-lab report RUN_DIR` rebuilds it for
an old run. Every piece of model or data text is escaped: html.escape in the page, code fences in the
markdown.
"""

from __future__ import annotations

import datetime
import html
import json
import os
import platform
import re
from importlib import metadata
from pathlib import Path

import torch

from . import figures, precision
from .bundled import cpu_info
from .figures import MEMORY, PHASES
from .prompts import PromptConfig, student_ids
from .rollout import greedy_texts
from .sdft import SDFT
from .token_diff import token_diffs

RUN_FILE, METRICS_FILE, RESULTS_FILE = "run.json", "metrics.jsonl", "results.json"
CURVES = ("loss", "kl", "logp_gap", "entropy", "rollout_len", "distinct2")
REPORT_PROMPTS = 3  # held-out prompts whose greedy answers the report shows before and after
PACKAGES = ("sdft_lab", "torch", "transformers", "peft", "bitsandbytes", "plotly")


# ----------------------------------------------------------------------------
# What a run saves


def machine(device: torch.device | None = None) -> dict:
    """The CPU model, the instruction sets that change speed and numerics, torch's BLAS; the GPU the model is on."""
    cpu, flags = cpu_info()
    blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cpu_flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
           "blas": blas.group(1) if blas else "unknown"}
    if device is not None and device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def versions() -> dict:
    """Installed versions, read from the package metadata (bitsandbytes is not imported for this)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def greedy_answers(trainer) -> list[str]:
    """The student's greedy answers to the report prompts, as the run's objective prompts them."""
    cfg = getattr(trainer.objective, "cfg", None)
    prompt_cfg = getattr(cfg, "prompts", None) or PromptConfig()
    prompts = [student_ids(trainer.tokenizer, ex, prompt_cfg) for ex in trainer.report_prompts]
    max_new_tokens = min(64, getattr(cfg, "max_new_tokens", 48))
    return greedy_texts(trainer.model, trainer.tokenizer, prompts, max_new_tokens)


def rollout_diff(trainer) -> dict | None:
    """One fresh rollout of the first report prompt, scored by teacher and student: for SDFT only."""
    if not isinstance(trainer.objective, SDFT):
        return None
    ex = trainer.report_prompts[0]
    d, = token_diffs(trainer.model, trainer.tokenizer, [ex], trainer.objective.cfg,
                     seed=trainer.cfg.seed * 1_000_003 + 999_983)
    return {"question": ex.question, "tokens": d.tokens, "log_ratio": d.log_ratio, "in_loss": d.in_loss,
            "mean_divergence": d.summary()["mean_divergence"]}


def save(trainer, before: list[str] | None, wall_s: float) -> Path:
    """Write metrics.jsonl and run.json to the trainer's run folder, then render the report. Returns the page."""
    out = Path(trainer.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in trainer.history))
    trainer.model.eval()
    run = {
        "objective": trainer.objective.name, "config": trainer.config, "versions": versions(),
        "machine": machine(trainer.device), "precision": precision.describe(trainer.model),
        "evaluations_s": trainer.evaluations.seconds,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "wall_s": wall_s,
        "steps": trainer.step_count, "preflight": trainer.preflight, "collapse": trainer.collapse.alarms,
        "answers": {"prompts": [ex.question for ex in trainer.report_prompts], "before": before,
                    "after": greedy_answers(trainer)},
        "diff": rollout_diff(trainer),
    }
    (out / RUN_FILE).write_text(json.dumps(run, indent=1, default=str))
    return render(out)[0]


# ----------------------------------------------------------------------------
# Rendering, from the saved files only


def load(run_dir: str | Path) -> tuple[dict, list[dict], dict | None]:
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise FileNotFoundError(f"{run_dir / RUN_FILE} is missing: a run folder is what Trainer.train(), "
                                "`sdft-lab train` or `make demo` writes (TrainConfig.run_dir).")
    run = json.loads((run_dir / RUN_FILE).read_text())
    metrics = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()] \
        if (run_dir / METRICS_FILE).is_file() else []
    results = json.loads((run_dir / RESULTS_FILE).read_text()) if (run_dir / RESULTS_FILE).is_file() else None
    for record in metrics:  # runs written before 0.3 named the GiB figures *_gb
        for old in [k for k in record if k.endswith("_peak_gb")]:
            record[old[:-3] + "_gib"] = record.pop(old)
    return run, metrics, results


def render(run_dir: str | Path) -> tuple[Path, Path]:
    """report.html and report.md from run.json, metrics.jsonl and results.json in run_dir."""
    run_dir = Path(run_dir)
    run, metrics, results = load(run_dir)
    sections = _sections(run, metrics, results)
    (run_dir / "report.html").write_text(_page(run, sections, metrics), encoding="utf-8")
    (run_dir / "report.md").write_text(_markdown(run, sections), encoding="utf-8")
    return run_dir / "report.html", run_dir / "report.md"


def _summary(run: dict, metrics: list[dict]) -> list[tuple[str, str]]:
    m = run["machine"]
    rows = [("objective", run["objective"]), ("steps", str(run["steps"])), ("wall time of train()", f"{run['wall_s']:.1f} s"),
            ("date", run["date"]), ("machine", f"{m.get('gpu') or m['cpu']} · {m['cores']} cores · torch threads "
                                               f"{m['torch_threads']} · {' '.join(m['cpu_flags']) or 'no AVX2'}")]
    if "precision" in run:  # runs written before the precision policy computed in fp32 on the CPU
        rows.append(("precision of the base", run["precision"]))
    rows += [(f"time in {name}", f"{s:.1f} s") for name, s in run.get("evaluations_s", {}).items()]
    peaks = {k: max(r[k] for r in metrics if k in r) for k in MEMORY if any(k in r for r in metrics)}
    rows += [(k.replace("_gib", "").replace("_", " "), f"{v:.2f} GiB") for k, v in peaks.items()]
    rows += [(name, str(v)) for name, v in run["versions"].items()]
    return rows


def _common(metrics: list[dict], keys: tuple[str, ...]) -> list[str]:
    """The keys every record has (a run resumed on another device may lack some in its early steps)."""
    return [k for k in keys if metrics and all(k in r for r in metrics)]


def _metric_table(metrics: list[dict]) -> list[list[str]]:
    keys = _common(metrics, CURVES + PHASES + MEMORY)
    rows = [["metric", "first", "last", "min", "max"]]
    for k in keys:
        values = [r[k] for r in metrics]
        rows.append([k, *(f"{v:.4g}" for v in (values[0], values[-1], min(values), max(values)))])
    return rows


def _sections(run: dict, metrics: list[dict], results: dict | None) -> list[dict]:
    """Each section: a title, and any of rows (a table), code (preformatted text), pairs (before/after)."""
    sections = [{"title": "Run", "rows": [["", "value"], *map(list, _summary(run, metrics))]}]
    pf = run.get("preflight")
    sections.append({"title": "Pre-flight", "rows": [["figure", "value"], *[[k, _fmt(v)] for k, v in pf.items()]]}
                    if pf else {"title": "Pre-flight", "text": "Not run: the Trainer was given no preflight= check "
                                "(inspect.preflight.quick_check), the objective has no teacher, or "
                                "TrainConfig.preflight=False."})
    sections.append({"title": "Metrics", "rows": _metric_table(metrics), "figures": ["curves", "phases", "memory"]}
                    if metrics else {"title": "Metrics", "text": "No step was taken."})
    if run.get("collapse"):  # collapse.CollapseWatch's alarms: rollouts shrinking, repeating, losing entropy
        sections.append({"title": "Collapse watch", "rows": [["step", "metric", "first steps", "last steps"], *[
            [str(a["step"]), a["metric"], f"{a['start']:.3g}", f"{a['now']:.3g}"] for a in run["collapse"]]]})
    if results:
        sections.append({"title": "Evaluation", "rows": _results_rows(results)})
    answers = run["answers"]
    sections.append({"title": "Greedy answers of the student, before and after",
                     "pairs": [(q, b, a) for q, b, a in zip(answers["prompts"], answers["before"] or
                                                             [None] * len(answers["prompts"]), answers["after"])]})
    if run.get("diff"):
        sections.append({"title": "A final rollout, token by token", "diff": run["diff"]})
    sections.append({"title": "Config", "code": json.dumps(run["config"], indent=1, default=str), "fold": True})
    return sections


def _results_rows(results: dict) -> list[list[str]]:
    """The numbers of a results.json (an experiment's per method, or the demo's flat record), nested keys
    joined: e.g. ["sdft", "qa all lenient", "0.125"]. Curves and histories are left to the figures."""
    rows = [["method", "measure", "value"]]

    def walk(method: str, prefix: str, value) -> None:
        if isinstance(value, bool) or prefix.split(" ")[-1] in ("config", "history", "retention_curve", "samples"):
            return
        if isinstance(value, (int, float)):
            rows.append([method, prefix, f"{value:.4g}"])
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(method, f"{prefix} {k}".strip(), v)

    for key, value in results.items():
        if isinstance(value, dict):
            walk(key, "", value)
        else:
            walk("", key, value)
    return rows


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _figures(metrics: list[dict]) -> dict:
    return {"curves": figures.training_curves(metrics, CURVES), "phases": figures.phase_breakdown(metrics),
            "memory": figures.memory_curves(metrics)}


# --- HTML ---------------------------------------------------------------------

def log_ratio_color(log_ratio: float, limit: float = 3.0) -> str:
    """Diverging scale for log p_T − log p_S: red where the teacher finds the token less likely, blue where
    more (the token diffs of inspect.diffs use it too)."""
    x = max(-1.0, min(1.0, log_ratio / limit))
    r, g, b = (255, round(255 * (1 + x)), round(255 * (1 + x))) if x < 0 else (round(255 * (1 - x)), round(255 * (1 - 0.55 * x)), 255)
    return f"rgb({r},{g},{b})"


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_section(s: dict, figs: dict) -> str:
    parts = [f"<h2>{html.escape(s['title'])}</h2>"]
    if "text" in s:
        parts.append(f"<p>{html.escape(s['text'])}</p>")
    if "rows" in s:
        parts.append(_html_table(s["rows"]))
    for name in s.get("figures", []):
        parts.append(figs[name].to_html(full_html=False, include_plotlyjs=False))
    if "code" in s:
        code = f"<pre>{html.escape(s['code'])}</pre>"
        parts.append(f"<details><summary>show</summary>{code}</details>" if s.get("fold") else code)
    for q, before, after in s.get("pairs", []):
        parts.append(f'<div class="pair"><p><b>Q:</b> {html.escape(q)}</p><div class="cols">'
                     f'<div><h4>before</h4><pre>{html.escape(before if before is not None else "(not recorded)")}'
                     f'</pre></div><div><h4>after</h4><pre>{html.escape(after)}</pre></div></div></div>')
    if "diff" in s:
        d = s["diff"]
        spans = "".join(
            f'<span class="tok" title="log p_T − log p_S = {r:+.2f}" style="background:{log_ratio_color(r)};'
            f'{"" if keep else "border-style:dashed;opacity:.6"}">{html.escape(tok)}</span>'
            for tok, r, keep in zip(d["tokens"], d["log_ratio"], d["in_loss"]))
        parts.append(f"<p><b>Q:</b> {html.escape(d['question'])}</p><div class='diff'>{spans}</div>"
                     f"<p class='note'>blue: the teacher finds the token more likely than the student, red: less; "
                     f"dashed: left out of the loss. Mean divergence {d['mean_divergence']:.3f}.</p>")
    return "<section>" + "".join(parts) + "</section>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:14px}
pre{background:#f6f8fa;padding:8px;white-space:pre-wrap;font-size:13px}.cols{display:flex;gap:1em}.cols>div{flex:1}
.diff{font-family:ui-monospace,monospace;font-size:13px;line-height:1.9}
.tok{white-space:pre-wrap;border:1px solid #ccc;border-radius:3px;padding:0 1px;display:inline-block}
.note{font-size:12px;color:#555}h4{margin:.3em 0}"""


def _page(run: dict, sections: list[dict], metrics: list[dict]) -> str:
    from plotly.offline import get_plotlyjs

    figs = _figures(metrics) if metrics else {}
    body = "".join(_html_section(s, figs) for s in sections)
    title = f"sdft_lab run report: {run['objective']}, {run['steps']} steps, {run['date']}"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")


# --- markdown -----------------------------------------------------------------

def _fence(text: str, info: str = "") -> str:
    """A code block no text can close early: the fence is longer than any backtick run inside (CommonMark)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def _md_cell(text: str) -> str:
    return html.escape(text).replace("|", "\\|").replace("\n", " ")


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(c) for c in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows[1:]])


def _markdown(run: dict, sections: list[dict]) -> str:
    out = [f"# sdft_lab run report: {run['objective']}, {run['steps']} steps, {run['date']}"]
    for s in sections:
        out.append(f"## {s['title']}")
        if "text" in s:
            out.append(html.escape(s["text"]))
        if "rows" in s:
            out.append(_md_table(s["rows"]))
        if s.get("figures"):
            out.append("The curves are in report.html.")
        if "code" in s:
            out.append(_fence(s["code"], "json"))
        for q, before, after in s.get("pairs", []):
            out += [f"**Q:** {_md_cell(q)}", "before:", _fence(before if before is not None else "(not recorded)"),
                    "after:", _fence(after)]
        if "diff" in s:
            d = s["diff"]
            tokens = "".join(f"[{t}|{r:+.1f}]" for t, r in zip(d["tokens"], d["log_ratio"]))
            out += [f"**Q:** {_md_cell(d['question'])}", f"Mean divergence {d['mean_divergence']:.3f}; each token "
                    "as [token|log p_T − log p_S]:", _fence(tokens)]
    return "\n\n".join(out) + "\n"

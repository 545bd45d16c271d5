"""plotly figures of experiments and live training (a run's own curves, phases and memory: figures.py)."""

from __future__ import annotations

from collections.abc import Callable

import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..eval.retention import retention_se
from ..figures import memory_curves, phase_breakdown, step_axis, training_curves  # noqa: F401  (re-exported)


class LiveCurves:
    """Side-by-side training curves, one panel per run, redrawn in the notebook after every step.

    `live(name)` is the Trainer callback for run `name`: `Trainer(..., callbacks=(live("sft"),))`.
    """

    def __init__(self, runs: tuple[str, ...], key: str = "loss"):
        self.runs, self.key, self.handle = list(runs), key, None
        self.fig = make_subplots(rows=1, cols=len(runs), subplot_titles=runs)
        for col, _ in enumerate(runs, 1):
            self.fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers"), row=1, col=col)
            self.fig.update_xaxes(title_text="step", row=1, col=col)
        self.fig.update_layout(title=f"{key} per step", height=300, showlegend=False, margin=dict(t=60, b=40))

    def __call__(self, run: str) -> Callable[[dict], None]:
        trace = self.fig.data[self.runs.index(run)]

        def callback(record: dict) -> None:
            trace.x, trace.y = trace.x + (record["step"],), trace.y + (record[self.key],)
            self.show()

        return callback

    def show(self) -> None:
        from IPython.display import display

        if self.handle is None:
            self.handle = display(self.fig, display_id=True)
        else:
            self.handle.update(self.fig)


def knowledge_figures(results: dict) -> dict[str, go.Figure]:
    """QA accuracy per kind for base / SFT / SDFT / teacher ceiling, and retention along training."""
    methods = [m for m in ("base", "sft", "sdft", "teacher_ceiling") if m in results]
    kinds = ("direct", "indirect", "ood", "all")
    qa = make_subplots(rows=1, cols=2, subplot_titles=("strict", "lenient"))
    for col, score in enumerate(("strict", "lenient"), 1):
        for m in methods:
            qa.add_trace(go.Bar(name=m, x=list(kinds), y=[results[m]["qa"][k][score] for k in kinds],
                                legendgroup=m, showlegend=col == 1), row=1, col=col)
    qa.update_layout(barmode="group", height=350, title="Knowledge QA accuracy", yaxis_range=[0, 1])
    retention = go.Figure()
    for m in ("sft", "sdft"):
        curve = results.get(m, {}).get("retention_curve", [])
        retention.add_trace(go.Scatter(x=[c["step"] for c in curve], y=[c["overall"] for c in curve],
                                       mode="lines+markers", name=m))
    retention.update_layout(title="Retention probes (multiple choice) during training", xaxis_title="step",
                            yaxis_title="accuracy", height=320)
    return {"qa": qa, "retention": retention}


def sequential_figure(results: dict) -> go.Figure:
    """Each task's score after each stage, one panel per method."""
    methods = [m for m in ("sft", "sdft") if m in results]
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods, shared_yaxes=True)
    for col, m in enumerate(methods, 1):
        stages = ["base"] + [s["stage"] for s in results[m]]
        rows = [results["base"]] + results[m]
        for task, color in zip(("toolcall", "science", "knowledge", "retention"), px.colors.qualitative.Plotly):
            fig.add_trace(go.Scatter(x=stages, y=[r.get(task) for r in rows], mode="lines+markers", name=task,
                                     line_color=color, legendgroup=task, showlegend=col == 1), row=1, col=col)
    fig.update_layout(title="Sequential learning: toolcall → science → knowledge", height=350,
                      yaxis_range=[-0.03, 1.05])
    return fig


def continual_figure(results: dict, score: str = "qa", kind: str = "direct") -> go.Figure:
    """Continual learning (experiments/continual.py): each batch's held-out direct-question accuracy after each
    stage, mean ± sd over seeds, one panel per method, the base at the left. A batch's line starting high and
    falling as later batches are trained is forgetting; retention on the probes is drawn dotted."""
    import statistics

    methods = [m for m in ("sft", "sdft") if any(r["method"] == m for r in results["runs"])]
    fig = make_subplots(rows=1, cols=max(1, len(methods)), subplot_titles=[m.upper() for m in methods],
                        shared_yaxes=True)
    names = results["stages"]
    x = ["base"] + [f"after {n}" for n in names]
    for col, m in enumerate(methods, 1):
        runs = [r for r in results["runs"] if r["method"] == m and len(r["stages"]) == len(names)]

        def series(get) -> tuple[list, list]:
            rows = [[get(results["base"])] * len(runs)] + [[get(r["stages"][i]) for r in runs]
                                                         for i in range(len(names))]
            return ([statistics.fmean(v) if None not in v else None for v in rows],
                    [statistics.stdev(v) if len(v) > 1 and None not in v else 0 for v in rows])
        for n, color in zip(names + ["retention"], px.colors.qualitative.Plotly):
            if n == "retention":
                mean, sd = series(lambda row: row["retention"])
            else:
                mean, sd = series(lambda row, n=n: row["tasks"][n][score][kind] if n in row["tasks"] else None)
            fig.add_trace(go.Scatter(x=x, y=mean, error_y=dict(array=sd), mode="lines+markers", line_color=color,
                                     line_dash="dot" if n == "retention" else "solid",
                                     name=n if n == "retention" else f"batch {n}", legendgroup=n,
                                     showlegend=col == 1), row=1, col=col)
    fig.update_yaxes(tickformat=".0%", range=[-0.03, 1.03])
    fig.update_yaxes(title_text="held-out direct questions answered (greedy) · retention", row=1, col=1)
    fig.update_layout(title=f"Continual learning: batches {' → '.join(names)} (± 1 sd over {len(set(r['seed'] for r in results['runs']))} seeds)",
                      height=380)
    return fig


def continual_forgetting(results: dict) -> go.Figure:
    """Continual learning's forgetting along the sequence: retention on the probes (left) and drift on general
    questions (right) against the optimizer steps taken so far, mean ± sd over seeds per method, from the base
    at step 0 (its retention ± one binomial SE: what the probes can resolve)."""
    import statistics

    names, per = results["stages"], results["steps"]
    steps = [0] + [per * (i + 1) for i in range(len(names))]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("retention (multiple-choice probes)",
                                                        "drift: KL(base ‖ tuned) per token on general text"))
    base = results["base"]
    for m, color in zip(("sft", "sdft"), px.colors.qualitative.Plotly[2:]):
        runs = [r for r in results["runs"] if r["method"] == m and len(r["stages"]) == len(names)]
        if not runs:
            continue
        for col, get, start in ((1, lambda row: row["retention"], base["retention"]),
                                (2, lambda row: row["drift"]["general"], 0.0)):
            values = [[get(r["stages"][i]) for r in runs] for i in range(len(names))]
            fig.add_trace(go.Scatter(
                x=steps, y=[start] + [statistics.fmean(v) for v in values], mode="lines+markers", name=m.upper(),
                line_color=color, legendgroup=m, showlegend=col == 1,
                error_y=dict(array=[0] + [statistics.stdev(v) if len(v) > 1 else 0 for v in values]),
                text=["base"] + [f"after {n}" for n in names],
                hovertemplate=f"{m.upper()} %{{text}} (step %{{x}})<br>%{{y:.3f}}<extra></extra>"), row=1, col=col)
    se = retention_se(base["retention"], results["n_probes"])
    fig.add_trace(go.Scatter(x=[0], y=[base["retention"]], error_y=dict(array=[se]), mode="markers",
                             marker=dict(color="grey", size=10), name="base ± 1 SE"), row=1, col=1)
    for col in (1, 2):
        fig.update_xaxes(title_text=f"optimizer steps (stages {', '.join(names)})", tickvals=steps, row=1, col=col)
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="nats per token", rangemode="tozero", row=1, col=2)
    seeds = {r["seed"] for r in results["runs"] if len(r["stages"]) == len(names)}
    fig.update_layout(title=f"Forgetting along the sequence (± 1 sd over {len(seeds)} seeds)",
                      height=380)
    return fig


def forgetting_figure(results: dict, seeds: str = "") -> go.Figure:
    """Forgetting measured two ways (experiments/frontier.py): each configuration's mean retention on the probes
    against its mean drift on general questions, ± one sd over its seeds, and the base at drift 0 with its
    retention's binomial SE as a band: a point inside the band kept what the probes can see."""
    base, se = results["base_retention"], retention_se(results["base_retention"], results["n_probes"])
    fig = go.Figure()
    fig.add_hrect(y0=base - se, y1=base + se, fillcolor="grey", opacity=0.15, line_width=0)
    fig.add_trace(go.Scatter(x=[0], y=[base], error_y=dict(array=[se]), mode="markers", name="base ± 1 SE",
                             marker=dict(color="grey", size=11)))
    for (family, pts), color in zip(_families(results["points" + seeds]).items(), px.colors.qualitative.Plotly[2:]):
        fig.add_trace(go.Scatter(
            x=[p["drift_general"]["mean"] for p in pts], y=[p["retention"]["mean"] for p in pts], mode="markers",
            name=family, marker=dict(color=color, size=10, symbol="circle" if family.startswith("SFT") else "diamond"),
            error_x=dict(array=[p["drift_general"]["sd"] or 0 for p in pts]),
            error_y=dict(array=[p["retention"]["sd"] or 0 for p in pts]),
            text=[f"lr {p['lr']:g}, {len(p['seeds'])} seeds" for p in pts],
            hovertemplate=f"{family} %{{text}}<br>drift %{{x:.3f}}<br>retention %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title="Forgetting, two ways: drift against retention (± 1 sd over seeds; grey band: base ± 1 SE)",
                      xaxis_title="drift: KL(base ‖ tuned) per token on general text (nats)",
                      yaxis_title=f"retention accuracy ({results['n_probes']} probes)", height=420)
    return fig


def pareto_figure(results: dict) -> go.Figure:
    """New-task accuracy against retention, one point per learning rate: up and to the right is better."""
    fig = go.Figure()
    for m in ("sft", "sdft"):
        runs = results.get(m, [])
        fig.add_trace(go.Scatter(x=[r["retention"] for r in runs], y=[r["task"] for r in runs], name=m,
                                 mode="lines+markers+text", text=[f"lr {r['lr']:g}" for r in runs],
                                 textposition="top center"))
    base = results["base"]
    fig.add_trace(go.Scatter(x=[base["retention"]], y=[base["task"]], name="base", mode="markers",
                             marker=dict(symbol="star", size=14)))
    fig.update_layout(title=f"New task ({results['config']['task']}) vs prior skills (retention probes)",
                      xaxis_title="retention accuracy", yaxis_title="new-task accuracy", height=380)
    return fig


def benchmark_retention(rows: list[dict]) -> go.Figure:
    """Base vs adapter on lm-eval tasks beside the retention-probe categories (rows from harness.compare),
    with ±1 standard error where the harness reports one."""
    x = [[r["source"] for r in rows], [f"{r['name']} ({r['metric']})" if r["source"] == "lm-eval" else r["name"]
                                       for r in rows]]
    fig = go.Figure()
    for side in ("base", "adapter"):
        errors = [r[f"{side}_stderr"] for r in rows]
        fig.add_trace(go.Bar(name=side, x=x, y=[r[side] for r in rows],
                             error_y=dict(array=errors, visible=any(e is not None for e in errors))))
    fig.update_layout(barmode="group", height=350, yaxis_range=[0, 1], yaxis_title="accuracy",
                      title="Retention: standard benchmarks (lm-eval) and the bundled probes")
    return fig


METER_TARGETS = {"passage": "fact passage", "answer": "framed answer"}


class LiveMeter:
    """The learning meter (eval/meter.py) of several runs side by side, one panel per run, redrawn as each
    point comes in: each target's mean log-prob on the held-out questions (all kinds), with the base (step 0)
    and the teacher ceiling (the base with the passage in context) as lines once `frame()` has them.

    `live(name)` is the MeterCallback's `live=` for run `name`; `LiveMeter.of(results)` draws a finished run.
    """

    def __init__(self, runs: tuple[str, ...] = ("sft", "sdft")):
        self.runs, self.handle = list(runs), None
        self.colors = dict(zip(METER_TARGETS, px.colors.qualitative.Plotly))
        self.fig = make_subplots(rows=1, cols=len(runs), subplot_titles=runs, shared_yaxes=True)
        for col, _ in enumerate(runs, 1):
            for target, label in METER_TARGETS.items():
                self.fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", name=label, legendgroup=target,
                                              line_color=self.colors[target], showlegend=col == 1), row=1, col=col)
            self.fig.update_xaxes(title_text="step", row=1, col=col)
        self.fig.update_yaxes(title_text="log-prob per token (nats)", row=1, col=1)
        self.fig.update_layout(title="Learning meter on the held-out questions (dotted: base, dashed: teacher ceiling)",
                               height=400, margin=dict(t=70, b=40, l=60, r=20), legend=dict(orientation="h", y=-0.25))

    def frame(self, base: dict, ceiling: dict | None, run: str | None = None) -> None:
        """The base's and the teacher ceiling's figures (eval.meter's) as horizontal lines in run's panel (all
        panels when None): each run is measured with its own system prompt, so each has its own frame.
        ceiling None: a run without a teacher (SFT)."""
        for col, name in enumerate(self.runs, 1):
            if run not in (None, name):
                continue
            for target in METER_TARGETS:
                lines = [(base[target]["all"], "dot")] + ([(ceiling[target]["all"], "dash")] if ceiling else [])
                for value, dash in lines:
                    self.fig.add_hline(y=value, line_dash=dash, line_color=self.colors[target], opacity=0.6,
                                       row=1, col=col)

    def __call__(self, run: str) -> Callable[[dict], None]:
        col = self.runs.index(run)
        traces = self.fig.data[col * len(METER_TARGETS):(col + 1) * len(METER_TARGETS)]

        def callback(point: dict) -> None:
            for trace, target in zip(traces, METER_TARGETS):
                trace.x, trace.y = trace.x + (point["step"],), trace.y + (point[target]["all"],)
            self.show()

        return callback

    @classmethod
    def of(cls, results: dict, runs: tuple[str, ...] = ("sft", "sdft")) -> go.Figure:
        """The figure of a finished run (experiments.workshop's results), not displayed."""
        live = cls(runs)
        live.show = lambda: None
        for run in runs:
            live.frame(results[run]["base_meter"], results[run].get("ceiling_meter"), run)
            for point in results[run]["meter_curve"]:
                live(run)(point)
        return live.fig

    def show(self) -> None:
        from IPython.display import display

        if self.handle is None:
            self.handle = display(self.fig, display_id=True)
        else:
            self.handle.update(self.fig)


def search_figure(results: dict) -> go.Figure:
    """The recipe search (experiments/search.py): each configuration's fact-likelihood gain against its
    retention, ± one sd over its seeds, with the base's retention and its one-SE band."""
    fig = go.Figure()
    base, n = results["base_retention"], results["n_probes"]
    se = (base * (1 - base) / n) ** 0.5
    fig.add_vrect(x0=base - se, x1=base + se, fillcolor="grey", opacity=0.15, line_width=0)
    fig.add_vline(x=base, line_dash="dot", annotation_text="base ± 1 SE")
    for method, color in zip(("sft", "sdft"), px.colors.qualitative.Plotly[2:]):
        rows = [r for r in results["summary"] if r["method"] == method]
        sd = lambda r, k: r[k]["sd"] or 0  # noqa: E731
        fig.add_trace(go.Scatter(
            x=[r["retention"]["mean"] for r in rows], y=[r["passage_gain"]["mean"] for r in rows], mode="markers",
            name=method, marker=dict(color=color, size=[14 if len(r["seeds"]) > 1 else 8 for r in rows]),
            error_x=dict(array=[sd(r, "retention") for r in rows]), error_y=dict(array=[sd(r, "passage_gain") for r in rows]),
            text=[r["name"] for r in rows], hovertemplate="%{text}<br>retention %{x:.3f}<br>gain %{y:.2f}<extra></extra>"))
    fig.update_layout(title="Recipe search: fact likelihood gain vs retention (large: several seeds, ± 1 sd)",
                      xaxis_title="retention probes after training", yaxis_title="passage log-prob gain (nats/token)",
                      height=420)
    return fig


def frontier_figure(results: dict, gain: str = "answer", seeds: str = "") -> go.Figure:
    """The learning–forgetting frontier (experiments/frontier.py): each configuration's mean gain against its
    mean drift on general questions, ± one sd over its seeds, one line per family through its learning rates.
    Up and to the left is better: more learned for less moved. gain "qa_direct" (the QA sweep): the share of
    held-out direct questions answered greedily, with the base's share at drift 0 drawn as a line; seeds:
    "" the seeds that chose, "_fresh" the fresh ones."""
    qa = gain.startswith("qa_")
    fig = go.Figure()
    for (family, pts), color in zip(_families(results["points" + seeds]).items(), px.colors.qualitative.Plotly[2:]):
        pts = sorted(pts, key=lambda p: p["lr"])
        fig.add_trace(go.Scatter(
            x=[p["drift_general"]["mean"] for p in pts], y=[p[gain]["mean"] for p in pts], mode="lines+markers+text",
            name=family, marker=dict(color=color, size=[12 if len(p["seeds"]) > 1 else 7 for p in pts]),
            line=dict(color=color, dash="solid" if family.startswith("SFT") else "dash"),
            error_x=dict(array=[p["drift_general"]["sd"] or 0 for p in pts]),
            error_y=dict(array=[p[gain]["sd"] or 0 for p in pts]),
            text=[f"lr {p['lr']:g}" for p in pts], textposition="top center",
            customdata=[[len(p["seeds"]), p["retention"]["mean"]] for p in pts],
            hovertemplate=f"{family} %{{text}}<br>drift %{{x:.3f}}<br>{gain} %{{y:.2f}}<br>"
                          "seeds %{customdata[0]}, retention %{customdata[1]:.3f}<extra></extra>"))
    if qa and "base_qa" in results:
        kind = gain.removeprefix("qa_").removesuffix("_strict")
        base = results["base_qa"]["strict" if gain.endswith("_strict") else "lenient"][kind]
        fig.add_hline(y=base, line=dict(color="grey", dash="dot"), annotation_text=f"base {base:.0%}")
    fig.update_xaxes(type="log", title="drift: KL(base ‖ tuned) per token on general text (nats, log scale)")
    which = {"": "", "_fresh": ", fresh seeds 3–5"}[seeds]
    if qa:
        fig.update_yaxes(title="held-out direct questions answered (greedy, lenient)", tickformat=".0%")
        fig.update_layout(title=f"Answers vs forgetting, each method over its learning rates (± 1 sd over seeds{which})",
                          height=440)
    else:
        fig.update_layout(title=f"Learning vs forgetting, each method over its learning rates ({gain} gain, ± 1 sd "
                                f"over seeds{which})", yaxis_title=f"{gain} log-prob gain (nats/token)", height=440)
    return fig


def _families(points: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in points:
        out.setdefault(p["family"], []).append(p)
    return out

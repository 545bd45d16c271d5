"""plotly figures of a run's metric records: the one owner of this code, for the run report (report.py,
core) and the notebooks (inspect.plots re-exports them). Each function imports plotly itself, so that the
core imports without plotly (an air-gapped GPU box may lack it; docs/gpu.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import plotly.graph_objects as go

PHASES = ("sample_s", "teacher_s", "student_fwd_s", "anchor_s", "backward_s", "optim_s")  # anchor_s: with anchor_weight
MEMORY = ("rss_peak_gib", "cuda_alloc_peak_gib", "cuda_reserved_peak_gib")


def step_axis(steps: list[int]) -> dict:
    """Whole-number step ticks, step 1 included, at most about ten of them."""
    return dict(title_text="step", tickmode="linear", tick0=1, dtick=max(1, -(-len(steps) // 10)))


def training_curves(history: list[dict], keys: tuple[str, ...] = ("loss", "kl", "entropy", "rollout_len")) -> go.Figure:
    """One small panel per metric, against the optimizer step. With forward KL the loss *is* the KL: one panel."""
    keys = [k for k in keys if history and all(k in r for r in history)]  # a resumed run may lack some early
    same = "loss" in keys and "kl" in keys and all(r["loss"] == r["kl"] for r in history)
    if same:
        keys.remove("kl")
    titles = ["loss = KL(teacher ‖ student)" if same and k == "loss" else k for k in keys]
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=max(1, len(keys)), subplot_titles=titles)
    steps = [r["step"] for r in history]
    for col, key in enumerate(keys, 1):
        fig.add_trace(go.Scatter(x=steps, y=[r[key] for r in history], mode="lines+markers", name=key), row=1, col=col)
        fig.update_xaxes(**step_axis(steps), row=1, col=col)
    fig.update_layout(height=300, showlegend=False, margin=dict(t=60, b=40, l=40, r=20))
    return fig


def phase_breakdown(history: list[dict]) -> go.Figure:
    """Where each step's time goes: sampling, teacher, student forward, backward, optimizer. The legend gives
    each phase's mean, so a phase too thin to see still has its figure."""
    import plotly.graph_objects as go

    phases = [p for p in PHASES if history and all(p in r for r in history)]
    steps = [r["step"] for r in history]
    fig = go.Figure([go.Bar(x=steps, y=[r[p] for r in history],
                            name=f"{p[:-2]} ({sum(r[p] for r in history) / len(history):.2f} s)") for p in phases])
    fig.update_layout(barmode="stack", height=320, title="seconds per step, by phase (legend: mean per step)",
                      yaxis_title="seconds", margin=dict(t=60, b=40, l=40, r=20))
    fig.update_xaxes(**step_axis(steps))
    return fig


def memory_curves(history: list[dict]) -> go.Figure:
    """Each step's own peak memory: the process's RSS, and the GPU allocator's peaks on CUDA."""
    import plotly.graph_objects as go

    steps = [r["step"] for r in history]
    fig = go.Figure([go.Scatter(x=steps, y=[r[k] for r in history], mode="lines+markers", name=k[:-3])
                     for k in MEMORY if history and all(k in r for r in history)])
    fig.update_layout(height=300, title="peak memory per step (GiB)", margin=dict(t=60, b=40, l=40, r=20))
    fig.update_xaxes(**step_axis(steps))
    return fig

"""plotly figures of the trainer's metric stream."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def training_curves(history: list[dict], keys: tuple[str, ...] = ("loss", "kl", "entropy", "rollout_len")) -> go.Figure:
    """One small panel per metric, against the optimizer step."""
    keys = tuple(k for k in keys if history and k in history[0])
    fig = make_subplots(rows=1, cols=max(1, len(keys)), subplot_titles=keys)
    steps = [r["step"] for r in history]
    for col, key in enumerate(keys, 1):
        fig.add_trace(go.Scatter(x=steps, y=[r[key] for r in history], mode="lines+markers", name=key), row=1, col=col)
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.update_layout(height=300, showlegend=False, margin=dict(t=40, b=40, l=40, r=20))
    return fig


def phase_breakdown(history: list[dict]) -> go.Figure:
    """Where each step's time goes: sampling, teacher, student forward, backward, optimizer."""
    phases = [p for p in ("sample_s", "teacher_s", "student_fwd_s", "backward_s", "optim_s") if history and p in history[0]]
    steps = [r["step"] for r in history]
    fig = go.Figure([go.Bar(x=steps, y=[r[p] for r in history], name=p[:-2]) for p in phases])
    fig.update_layout(barmode="stack", height=300, xaxis_title="step", yaxis_title="seconds",
                      margin=dict(t=20, b=40, l=40, r=20))
    return fig

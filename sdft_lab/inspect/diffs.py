"""What the teacher wants, token by token: teacher vs student on one rollout, drawn.

token_diffs (sdft_lab.token_diff, re-exported here) scores a rollout per token; this module renders it as
escaped HTML (a token coloured by its log-ratio, with a tooltip) and as a plotly curve of the divergence
along the sequence.
"""

from __future__ import annotations

import html

from ..report import log_ratio_color
from ..token_diff import TokenDiff, token_diffs

__all__ = ["TokenDiff", "token_diffs", "to_html", "table_html", "divergence_figure", "words"]


# ----------------------------------------------------------------------------
# Rendering. Every piece of model or dataset text goes through html.escape.

_VISIBLE = {"\n": "↵\n", "\t": "→\t", "\r": "␍"}


def _visible(token: str) -> str:
    """Newlines and tabs get a glyph; spaces stay spaces (the span's outline shows them)."""
    return "".join(_VISIBLE.get(c, c) for c in token)


def _tooltip(d: TokenDiff, i: int) -> str:
    def fmt(top):
        return ", ".join(f"{t!r} {p:.3f}" for t, p in top)

    return (f"token {d.tokens[i]!r} (id {d.ids[i]}){'' if d.in_loss[i] else ' [not in the loss]'}\n"
            f"p_student {d.p_student[i]:.4f}   p_teacher {d.p_teacher[i]:.4f}\n"
            f"divergence {d.divergence[i]:.4f}   log-ratio {d.log_ratio[i]:+.3f}   teacher rank {d.teacher_rank[i]}\n"
            f"student top: {fmt(d.top_student[i])}\nteacher top: {fmt(d.top_teacher[i])}")


def words(tokens: list[str]) -> list[list[int]]:
    """Token indices grouped into words: a new word starts at a token that begins with whitespace, so the
    pieces of one word ("Vel", "m", "ora") stay on one line."""
    groups: list[list[int]] = []
    for i, tok in enumerate(tokens):
        if not groups or tok[:1].isspace() or tokens[i - 1][-1:].isspace():
            groups.append([])
        groups[-1].append(i)
    return groups


def to_html(d: TokenDiff, limit: float = 3.0) -> str:
    """The rollout with each token coloured by its log-ratio, a tooltip per token, and a legend."""
    def span(i: int) -> str:
        return (f'<span class="tok" title="{html.escape(_tooltip(d, i), quote=True)}" '
                f'style="background:{log_ratio_color(d.log_ratio[i], limit)};'
                f'{"" if d.in_loss[i] else "border-style:dashed;opacity:.6;"}">{html.escape(_visible(d.tokens[i]))}</span>')

    spans = "".join(f'<span class="word">{"".join(span(i) for i in group)}</span>' for group in words(d.tokens))
    s = d.summary()
    legend = (f'<div class="legend">'
              f'<span>teacher less likely (log-ratio −{limit:g})</span>'
              f'<span style="width:160px;height:12px;background:linear-gradient(90deg,{log_ratio_color(-limit, limit)},'
              f'#fff,{log_ratio_color(limit, limit)});border:1px solid #999"></span>'
              f'<span>more likely (+{limit:g})</span><span>dashed: skipped by the loss</span>'
              f'<span>hover a token for details</span></div>')
    return (f'<div class="sdft-diff" style="font-family:ui-monospace,monospace;font-size:13px;line-height:1.9">'
            f'<style>.sdft-diff .tok{{white-space:pre;display:inline-block;border:1px solid #ccc;border-radius:3px;'
            f'padding:0 1px;margin:1px 0}} .sdft-diff .word{{white-space:nowrap;display:inline-block}}'
            f' .sdft-diff .legend{{display:flex;flex-wrap:wrap;align-items:center;gap:4px 10px;font-size:12px;'
            f'margin-top:6px;font-family:sans-serif}} .sdft-diff .legend span{{white-space:nowrap}}</style>'
            f'<div style="font-family:sans-serif;margin-bottom:4px"><b>Q:</b> {html.escape(d.question)}</div>'
            f'<div>{spans}</div>{legend}'
            f'<div style="font-family:sans-serif;font-size:12px;margin-top:4px">mean divergence {s["mean_divergence"]:.3f} · '
            f'teacher agrees with the sampled token {100 * s["teacher_top1"]:.0f}% of the time</div></div>')


def table_html(d: TokenDiff, n: int = 10) -> str:
    """The n tokens where the teacher disagrees most, as an escaped HTML table."""
    idx = sorted((i for i, keep in enumerate(d.in_loss) if keep), key=lambda i: -d.divergence[i])[:n]
    head = "".join(f"<th>{h}</th>" for h in ("#", "token", "p_student", "p_teacher", "divergence", "log-ratio",
                                              "teacher rank", "teacher's top choices"))
    body = "".join(
        f"<tr><td>{i}</td><td>{html.escape(repr(d.tokens[i]))}</td><td>{d.p_student[i]:.3f}</td><td>{d.p_teacher[i]:.3f}</td>"
        f"<td>{d.divergence[i]:.3f}</td><td>{d.log_ratio[i]:+.2f}</td><td>{d.teacher_rank[i]}</td>"
        f"<td>{html.escape(', '.join(f'{t!r} {p:.2f}' for t, p in d.top_teacher[i][:3]))}</td></tr>"
        for i in idx)
    return f'<table class="sdft-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def divergence_figure(diffs: list[TokenDiff], names: list[str] | None = None, title: str = "per-token divergence"):
    """plotly: the per-token divergence along the sequence, one line per diff; hover shows the token."""
    import plotly.graph_objects as go

    names = names or [f"rollout {i}" for i in range(len(diffs))]
    fig = go.Figure([go.Scatter(x=list(range(len(d.tokens))), y=d.divergence, mode="lines+markers", name=name,
                                text=[html.escape(repr(t)) for t in d.tokens], hovertemplate="%{text}: %{y:.3f}<extra></extra>")
                     for d, name in zip(diffs, names)])
    fig.update_layout(title=title, xaxis_title="completion token", yaxis_title="nats", height=320,
                      margin=dict(t=40, b=40, l=40, r=20))
    return fig

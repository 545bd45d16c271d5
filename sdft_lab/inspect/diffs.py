"""What the teacher wants, token by token: teacher vs student on one rollout.

For each completion token y_t of a student rollout: both sides' probability of
y_t, the per-token divergence the loss uses, the log-ratio log p_T(y_t) − log p_S(y_t)
(SDFT's implicit reward: > 0 where the teacher likes the student's token more than
the student does), the rank of y_t under the teacher, and each side's top-k.
Rendered as escaped HTML (a token coloured by its log-ratio, with a tooltip) and
as a plotly curve of the divergence along the sequence.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import Example
from ..losses import divergence
from ..models import lm_head
from ..report import log_ratio_color
from ..rollout import Completions
from ..sdft import SDFT, SDFTConfig


@dataclass
class TokenDiff:
    question: str
    ids: list[int]
    tokens: list[str]
    p_student: list[float]  # probability of the sampled token
    p_teacher: list[float]
    divergence: list[float]  # the loss's per-token divergence (SDFTConfig.divergence)
    log_ratio: list[float]  # log p_T(y) − log p_S(y)
    teacher_rank: list[int]  # 1 = the teacher's own first choice
    top_student: list[list[tuple[str, float]]]
    top_teacher: list[list[tuple[str, float]]]
    in_loss: list[bool]  # False for the first `skip_first` tokens

    def rows(self) -> list[dict]:
        """One dict per token: the table view (pandas.DataFrame(diff.rows()) if you have pandas)."""
        keys = ("tokens", "p_student", "p_teacher", "divergence", "log_ratio", "teacher_rank", "in_loss")
        return [{k.rstrip("s") if k == "tokens" else k: getattr(self, k)[i] for k in keys} for i in range(len(self.ids))]

    def summary(self, n: int = 5) -> dict:
        """Mean divergence over the loss tokens (= this sequence's loss), and where the teacher disagrees most."""
        idx = [i for i, keep in enumerate(self.in_loss) if keep]
        worst = sorted(idx, key=lambda i: -self.divergence[i])[:n]
        return {
            "mean_divergence": sum(self.divergence[i] for i in idx) / max(1, len(idx)),
            "mean_log_ratio": sum(self.log_ratio[i] for i in idx) / max(1, len(idx)),
            "teacher_top1": sum(self.teacher_rank[i] == 1 for i in idx) / max(1, len(idx)),
            "most_disagreed": [(self.tokens[i], round(self.divergence[i], 3), self.top_teacher[i][0][0]) for i in worst],
        }


@torch.no_grad()
def token_diffs(
    model,
    tokenizer,
    examples: list[Example],
    cfg: SDFTConfig | None = None,
    completions: Completions | None = None,
    seed: int | None = None,
    k: int = 5,
    demonstration: bool = True,
) -> list[TokenDiff]:
    """Diffs for one rollout per example; pass `completions` to re-score fixed rollouts.

    demonstration=False scores with the teacher's weights but the bare question, which
    shows how much of the difference comes from the demonstration itself.
    """
    cfg = cfg or SDFTConfig()
    scored = SDFT(cfg).score(model, tokenizer, examples, seed, completions, demonstration)
    completions, head = scored.completions, lm_head(model)
    t_logits = head(scored.teacher_hidden).float() / cfg.temperature
    s_logits = head(scored.student_hidden).float() / cfg.temperature
    ids = completions.ids.to(t_logits.device)
    per_token = divergence(t_logits, s_logits, cfg.divergence, ids)  # every token, the skipped ones too
    t_logp, s_logp = F.log_softmax(t_logits, -1), F.log_softmax(s_logits, -1)
    t_y = t_logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    s_y = s_logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    rank = (t_logp > t_y.unsqueeze(-1)).sum(-1) + 1
    t_top, s_top = t_logp.topk(k, -1), s_logp.topk(k, -1)
    keep = scored.mask.cpu()

    def top(values, indices, b, t):
        return [(tokenizer.decode([i]), round(p, 4)) for i, p in zip(indices[b, t].tolist(), values[b, t].exp().tolist())]

    diffs = []
    for b, ex in enumerate(examples):
        n = int(completions.mask[b].sum())
        token_ids = completions.ids[b, :n].tolist()
        diffs.append(TokenDiff(
            question=ex.question, ids=token_ids, tokens=[tokenizer.decode([i]) for i in token_ids],
            p_student=s_y[b, :n].exp().tolist(), p_teacher=t_y[b, :n].exp().tolist(),
            divergence=per_token[b, :n].tolist(), log_ratio=(t_y - s_y)[b, :n].tolist(),
            teacher_rank=rank[b, :n].tolist(),
            top_student=[top(s_top.values, s_top.indices, b, t) for t in range(n)],
            top_teacher=[top(t_top.values, t_top.indices, b, t) for t in range(n)],
            in_loss=keep[b, :n].bool().tolist(),
        ))
    return diffs


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

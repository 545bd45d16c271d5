"""What the teacher wants, token by token: a scored rollout as a per-token view (the computation; inspect.diffs
draws it as HTML and curves, and the run report shows one).

For each completion token y_t of a student rollout: both sides' probability of y_t, the per-token divergence
the loss uses, the log-ratio log p_T(y_t) − log p_S(y_t) (SDFT's implicit reward: > 0 where the teacher likes
the student's token more than the student does), the rank of y_t under the teacher, and each side's top-k.
Computed row by row, so the full [length, vocab] logits of one row are the most it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import Example
from .losses import divergence_logp
from .models import lm_head
from .rollout import Completions
from .sdft import SDFT, SDFTConfig


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
    keep = scored.mask.cpu()

    def top(values, indices, t):
        return [(tokenizer.decode([i]), round(p, 4)) for i, p in zip(indices[t].tolist(), values[t].exp().tolist())]

    diffs = []
    for b, ex in enumerate(examples):  # one row at a time: [length, vocab] fp32, not [batch, length, vocab]
        n = int(completions.mask[b].sum())
        token_ids = completions.ids[b, :n].tolist()
        # each side normalised once (upcast, then the temperature), as the loss does
        t_logp = F.log_softmax(head(scored.teacher_hidden[b, :n]).float() / cfg.temperature, -1)
        s_logp = F.log_softmax(head(scored.student_hidden[b, :n]).float() / cfg.temperature, -1)
        ids = completions.ids[b, :n].to(t_logp.device)
        per_token = divergence_logp(t_logp, s_logp, cfg.divergence, ids)  # every token, the skipped ones too
        t_y = t_logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        s_y = s_logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        rank = (t_logp > t_y.unsqueeze(-1)).sum(-1) + 1
        t_top, s_top = t_logp.topk(k, -1), s_logp.topk(k, -1)
        diffs.append(TokenDiff(
            question=ex.question, ids=token_ids, tokens=[tokenizer.decode([i]) for i in token_ids],
            p_student=s_y.exp().tolist(), p_teacher=t_y.exp().tolist(),
            divergence=per_token.tolist(), log_ratio=(t_y - s_y).tolist(), teacher_rank=rank.tolist(),
            top_student=[top(s_top.values, s_top.indices, t) for t in range(n)],
            top_teacher=[top(t_top.values, t_top.indices, t) for t in range(n)],
            in_loss=keep[b, :n].bool().tolist(),
        ))
    return diffs

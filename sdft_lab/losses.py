"""Per-token divergences between the teacher and the student, over the full vocabulary.

All functions are pure tensor code. `divergence` works on logits of any shape
[..., V]. `chunked_token_losses` makes the logits from hidden states a chunk of
tokens at a time (recomputed in backward), so the two full [B, T, V] float32
tensors of teacher and student never exist at once.

Kinds (teacher = T, student = S, per completion token):
  forward_kl  Σ_v p_T (log p_T − log p_S)          the paper's published runs (default)
  reverse_kl  Σ_v p_S (log p_S − log p_T)          the paper's derivation
  jsd         β·KL(T‖M) + (1−β)·KL(S‖M), M = β·p_T + (1−β)·p_S, with β = alpha;
              alpha 0 is forward KL and 1 reverse KL, as in TRL
  sampled     log p_S(y) − log p_T(y) on the sampled token y only (on-policy distillation);
              its gradient is the REINFORCE one, (log p_S(y) − log p_T(y))·∇log p_S(y)
With top_k, forward/reverse/jsd are taken over the top-k tokens of one side
(top_k_side = "teacher" or "student") plus one tail bucket holding the rest of
the mass, so both sides stay proper distributions and the divergence stays ≥ 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

KINDS = ("forward_kl", "reverse_kl", "jsd", "sampled")


@dataclass
class DivergenceConfig:
    kind: str = "forward_kl"
    alpha: float = 0.5  # jsd only
    top_k: int | None = None  # None = full vocabulary
    top_k_side: str = "teacher"
    chunk_tokens: int = 256  # tokens whose logits exist at once in chunked_token_losses

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"divergence kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] (0 = forward KL, 1 = reverse KL), got {self.alpha}")
        if self.top_k is not None and (self.top_k < 1 or self.kind == "sampled"):
            raise ValueError(f"top_k must be None or ≥ 1, and is not used with 'sampled'; got {self.top_k}")
        if self.top_k_side not in ("teacher", "student"):
            raise ValueError(f"top_k_side must be 'teacher' or 'student', got {self.top_k_side!r}")
        if self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be ≥ 1, got {self.chunk_tokens}")


def kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last dimension, from log-probabilities."""
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


def generalized_jsd(t_logp: torch.Tensor, s_logp: torch.Tensor, beta: float) -> torch.Tensor:
    if beta == 0.0:
        return kl(t_logp, s_logp)
    if beta == 1.0:
        return kl(s_logp, t_logp)
    log_m = torch.logsumexp(torch.stack([t_logp + torch.log(torch.tensor(beta)),
                                         s_logp + torch.log(torch.tensor(1.0 - beta))]), dim=0)
    return beta * kl(t_logp, log_m) + (1.0 - beta) * kl(s_logp, log_m)


def with_tail(logp_k: torch.Tensor) -> torch.Tensor:
    """Append log(1 − Σ p) as one more category: the mass outside the top-k."""
    tail = torch.log((-torch.expm1(torch.logsumexp(logp_k, -1, keepdim=True))).clamp_min(1e-20))
    return torch.cat([logp_k, tail], dim=-1)


def top_k_support(t_logp: torch.Tensor, s_logp: torch.Tensor, k: int, side: str):
    idx = (t_logp if side == "teacher" else s_logp).topk(k, dim=-1).indices
    return with_tail(t_logp.gather(-1, idx)), with_tail(s_logp.gather(-1, idx))


def sampled_token(t_logp: torch.Tensor, s_logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    s_y = s_logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    t_y = t_logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    est = (s_y - t_y).detach()
    return est + est * (s_y - s_y.detach())  # value: est; gradient: est · ∇ log p_S(y)


def divergence(
    t_logits: torch.Tensor,
    s_logits: torch.Tensor,
    cfg: DivergenceConfig | None = None,
    tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token divergence [...] from logits [..., V]. Teacher logits carry no gradient."""
    cfg = cfg or DivergenceConfig()
    t_logp = F.log_softmax(t_logits.detach().float(), dim=-1)
    s_logp = F.log_softmax(s_logits.float(), dim=-1)
    if cfg.kind == "sampled":
        if tokens is None:
            raise ValueError("the 'sampled' divergence needs the sampled tokens")
        return sampled_token(t_logp, s_logp, tokens)
    if cfg.top_k is not None:
        if cfg.top_k > t_logp.shape[-1]:
            raise ValueError(f"top_k={cfg.top_k} is larger than the vocabulary ({t_logp.shape[-1]})")
        t_logp, s_logp = top_k_support(t_logp, s_logp, cfg.top_k, cfg.top_k_side)
    if cfg.kind == "forward_kl":
        return kl(t_logp, s_logp)
    if cfg.kind == "reverse_kl":
        return kl(s_logp, t_logp)
    return generalized_jsd(t_logp, s_logp, cfg.alpha)


@torch.no_grad()
def token_stats(t_logits: torch.Tensor, s_logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[..., 4]: forward KL, log p_T(y), log p_S(y), student entropy, per token."""
    t_logp = F.log_softmax(t_logits.float(), dim=-1)
    s_logp = F.log_softmax(s_logits.float(), dim=-1)
    t_y = t_logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    s_y = s_logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(s_logp.exp() * s_logp).sum(-1)
    return torch.stack([kl(t_logp, s_logp), t_y, s_y, entropy], dim=-1)


STAT_NAMES = ("kl", "teacher_logp", "student_logp", "entropy")


def _chunk(s_h, t_h, y, head: nn.Module, cfg: DivergenceConfig):
    s_logits, t_logits = head(s_h), head(t_h)
    return divergence(t_logits, s_logits, cfg, y), token_stats(t_logits, s_logits, y)


def chunked_token_losses(
    s_hidden: torch.Tensor,
    t_hidden: torch.Tensor,
    head: nn.Module,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    cfg: DivergenceConfig | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token losses [B, T] (0 where mask is 0) and per-token stats, from hidden states [B, T, H].

    Only the masked-in tokens are computed, `cfg.chunk_tokens` at a time; each chunk is
    checkpointed, so its [chunk, V] logits are freed after the forward and remade in backward.
    """
    cfg = cfg or DivergenceConfig()
    sel = mask.bool()
    s_h, t_h, y = s_hidden[sel], t_hidden[sel].detach(), tokens[sel]
    losses, stats = [], []
    for i in range(0, y.shape[0], cfg.chunk_tokens):
        j = i + cfg.chunk_tokens
        if torch.is_grad_enabled() and s_h.requires_grad:
            loss, stat = checkpoint(_chunk, s_h[i:j], t_h[i:j], y[i:j], head, cfg, use_reentrant=False)
        else:
            loss, stat = _chunk(s_h[i:j], t_h[i:j], y[i:j], head, cfg)
        losses.append(loss)
        stats.append(stat)
    per_token = s_hidden.new_zeros(mask.shape, dtype=torch.float32)
    stat_full = s_hidden.new_zeros((*mask.shape, len(STAT_NAMES)), dtype=torch.float32)
    if losses:
        per_token = per_token.masked_scatter(sel, torch.cat(losses))
        stat_full[sel] = torch.cat(stats)
    return per_token, {name: stat_full[..., k] for k, name in enumerate(STAT_NAMES)}


def loss_mask(completion_mask: torch.Tensor, skip_first: int) -> torch.Tensor:
    """Completion mask with the first `skip_first` tokens of each sequence left out of the loss."""
    keep = completion_mask.clone()
    keep[:, :skip_first] = 0
    return keep


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's masked-in tokens, then over the sequences that have any."""
    mask = mask.to(values.dtype)
    counts = mask.sum(-1)
    has = counts > 0
    if not has.any():
        return (values * mask).sum()  # zero, but still attached to the graph
    per_seq = (values * mask).sum(-1)[has] / counts[has]
    return per_seq.mean()

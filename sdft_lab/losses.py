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
    t_logp = F.log_softmax(t_logits.detach().float(), dim=-1)
    return divergence_logp(t_logp, F.log_softmax(s_logits.float(), dim=-1), cfg, tokens)


def divergence_logp(t_logp: torch.Tensor, s_logp: torch.Tensor, cfg: DivergenceConfig | None = None,
                    tokens: torch.Tensor | None = None) -> torch.Tensor:
    """divergence() from log-probabilities, so that a caller that also wants token_stats normalises once."""
    cfg = cfg or DivergenceConfig()
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
    return token_stats_logp(F.log_softmax(t_logits.float(), dim=-1), F.log_softmax(s_logits.float(), dim=-1), tokens)


@torch.no_grad()
def token_stats_logp(t_logp: torch.Tensor, s_logp: torch.Tensor, tokens: torch.Tensor,
                     forward_kl: torch.Tensor | None = None) -> torch.Tensor:
    """token_stats() from log-probabilities; forward_kl: the per-token forward KL if already computed."""
    t_y = t_logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    s_y = s_logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(s_logp.exp() * s_logp).sum(-1)
    fkl = kl(t_logp, s_logp) if forward_kl is None else forward_kl.detach()
    return torch.stack([fkl, t_y, s_y, entropy], dim=-1)


STAT_NAMES = ("kl", "teacher_logp", "student_logp", "entropy")


def over_chunks(fn, mask: torch.Tensor, chunk_tokens: int, *per_token: torch.Tensor) -> list:
    """fn over the masked-in tokens of each [B, T, …] tensor, `chunk_tokens` tokens at a time.

    When a gradient is wanted, each chunk is checkpointed: its [chunk, V] logits are freed after the
    forward and remade in backward, so no [B, T, V] float32 tensor is ever kept.
    """
    sel = mask.bool()
    flat = [t[sel] for t in per_token]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in flat)
    out = []
    for i in range(0, flat[0].shape[0], chunk_tokens):
        args = [t[i : i + chunk_tokens] for t in flat]
        out.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
    return out


def scatter(mask: torch.Tensor, values: torch.Tensor | None, like: torch.Tensor, *trailing: int) -> torch.Tensor:
    """[B, T, *trailing] float32 zeros with the masked-in positions set to `values` (in mask order)."""
    full = like.new_zeros((*mask.shape, *trailing), dtype=torch.float32)
    if values is None:
        return full
    return full.masked_scatter(mask.bool().view(*mask.shape, *[1] * len(trailing)).expand_as(full), values)


def chunked_token_losses(
    s_hidden: torch.Tensor,
    t_hidden: torch.Tensor,
    head: nn.Module,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    cfg: DivergenceConfig | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token losses [B, T] (0 where mask is 0) and per-token stats, from hidden states [B, T, H].

    Both sides' logits are divided by the sampling temperature first, as in the paper's code and TRL:
    the divergence compares the distributions the rollout was drawn from (at T = 1 nothing changes).
    """
    cfg = cfg or DivergenceConfig()

    full_forward = cfg.kind == "forward_kl" and cfg.top_k is None  # the loss is the KL statistic itself

    def chunk(s_h, t_h, y):
        # each side normalised once, for the loss and the statistics alike
        # upcast first, then divide: in bf16 the division would round the logits once more
        s_logp = F.log_softmax(head(s_h).float() / temperature, dim=-1)
        with torch.no_grad():
            t_logp = F.log_softmax(head(t_h).float() / temperature, dim=-1)
        loss = divergence_logp(t_logp, s_logp, cfg, y)
        return loss, token_stats_logp(t_logp, s_logp.detach(), y, loss if full_forward else None)

    parts = over_chunks(chunk, mask, cfg.chunk_tokens, s_hidden, t_hidden.detach(), tokens)
    losses = torch.cat([p[0] for p in parts]) if parts else None
    stats = torch.cat([p[1] for p in parts]) if parts else None
    per_token, stat_full = scatter(mask, losses, s_hidden), scatter(mask, stats, s_hidden, len(STAT_NAMES))
    return per_token, {name: stat_full[..., k] for k, name in enumerate(STAT_NAMES)}


def chunked_token_logp(hidden: torch.Tensor, head: nn.Module, tokens: torch.Tensor, mask: torch.Tensor,
                       chunk_tokens: int = 256) -> torch.Tensor:
    """log p(y_t) [B, T] of each masked-in token (0 elsewhere) from hidden states [B, T, H], chunked as above.

    SFT's cross-entropy is its negative, so SFT and SDFT cost the same memory for their logits.
    """
    def chunk(h, y):
        return F.log_softmax(head(h).float(), -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)

    parts = over_chunks(chunk, mask, chunk_tokens, hidden, tokens)
    return scatter(mask, torch.cat(parts) if parts else None, hidden)


@torch.no_grad()
def chunked_entropy(hidden: torch.Tensor, head: nn.Module, mask: torch.Tensor, chunk_tokens: int = 256,
                    temperature: float = 1.0) -> torch.Tensor:
    """Entropy [B, T] of the distribution at each masked-in token (0 elsewhere), chunked as above."""
    def chunk(h):
        logp = F.log_softmax(head(h).float() / temperature, -1)
        return -(logp.exp() * logp).sum(-1)

    parts = over_chunks(chunk, mask, chunk_tokens, hidden)
    return scatter(mask, torch.cat(parts) if parts else None, hidden)


def loss_mask(completion_mask: torch.Tensor, skip_first: int) -> torch.Tensor:
    """Completion mask with the first `skip_first` tokens of each sequence left out of the loss."""
    keep = completion_mask.clone()
    keep[:, :skip_first] = 0
    return keep


def sequence_means(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] mean of each sequence's masked-in values, [B] whether it has any); 0 for a sequence with none."""
    mask = mask.to(values.dtype)
    counts = mask.sum(-1)
    return (values * mask).sum(-1) / counts.clamp_min(1), counts > 0


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's masked-in tokens, then over the sequences that have any."""
    per_seq, has = sequence_means(values, mask)
    if not has.any():
        return (values * mask).sum()  # zero, but still attached to the graph
    return per_seq[has].mean()

"""On-policy rollouts from the student, and re-scoring a completion under any prompt.

A batch of completions is a [B, T] tensor of token ids, right-padded, with a mask
that is 1 up to and including the first EOS. Scoring runs [prompt + completion]
through the model and returns the hidden states that predict each completion
token, so that logits can be made chunk by chunk (see losses.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import decode
from .models import decoder, lm_head
from .prompts import left_pad


ENGINES = ("auto", "lean", "hf")


@dataclass
class Completions:
    ids: torch.Tensor  # [B, T] token ids, padded after EOS
    mask: torch.Tensor  # [B, T] 1 for real tokens, including the first EOS
    texts: list[str]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    ids.append(tokenizer.eos_token_id)
    return sorted({i for i in ids if i is not None})


def completions_from_ids(seqs: list[list[int]], tokenizer, eos: list[int], pad_id: int) -> Completions:
    """Cut each sequence after its first EOS and right-pad into a Completions batch."""
    cut = []
    for s in seqs:
        end = next((i + 1 for i, t in enumerate(s) if t in eos), len(s))
        cut.append(list(s[:end]))
    width = max(1, max(len(s) for s in cut))
    ids = torch.full((len(cut), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(cut), width), dtype=torch.long)
    for i, s in enumerate(cut):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    texts = [tokenizer.decode(s, skip_special_tokens=True) for s in cut]
    return Completions(ids, mask, texts)


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    engine: str = "auto",
) -> Completions:
    """Sample one completion per prompt. temperature 0 is greedy. Reproducible for a given seed.

    engine: "lean" (decode.py's loop, llama-family models), "hf" (`model.generate`),
    or "auto" (lean where supported). Both draw the same tokens for the same seed.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    lean = engine == "lean" or (engine == "auto" and decode.supported(model))
    if engine == "lean" and not decode.supported(model):
        raise ValueError(f"the lean sampler supports {decode.SUPPORTED} models without merged or DoRA adapters; "
                         f"use engine='hf' for {model.config.model_type}")
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    greedy = temperature == 0
    eos = eos_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            if lean:
                new = decode.generate(model, ids.to(device), mask.to(device), max_new_tokens, temperature, top_p,
                                      eos, tokenizer.pad_token_id)
            else:
                new = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=not greedy,
                    temperature=None if greedy else temperature,
                    top_p=None if greedy else top_p,
                    top_k=None if greedy else 0,  # 0 = no top-k cut: the paper samples the full distribution
                    eos_token_id=eos,
                    pad_token_id=tokenizer.pad_token_id,
                )[:, ids.shape[1]:]
    finally:
        model.train(was_training)
    return completions_from_ids(new.tolist(), tokenizer, eos, tokenizer.pad_token_id)


def completion_hidden(model, prompts: list[list[int]], completions: Completions) -> torch.Tensor:
    """Hidden states [B, T, H] whose logits predict completion token t, given prompt + completion[:t].

    Prompts are left-padded and completions right-padded, so every completion
    starts at the same column P. Position ids count real tokens only, matching
    what generate() used when it sampled the completion.
    """
    device = next(model.parameters()).device
    p_ids, p_mask = left_pad(prompts, 0)
    ids = torch.cat([p_ids, completions.ids], dim=1).to(device)
    mask = torch.cat([p_mask, completions.mask], dim=1).to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = decoder(model)(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
    P, T = p_ids.shape[1], completions.ids.shape[1]
    return hidden[:, P - 1 : P + T - 1]


@torch.no_grad()
def mean_logp(model, prompts: list[list[int]], completions: Completions) -> torch.Tensor:
    """[B]: each completion's mean per-token log-prob after its prompt."""
    device = next(model.parameters()).device
    logp = torch.log_softmax(lm_head(model)(completion_hidden(model, prompts, completions)).float(), -1)
    token_logp = logp.gather(-1, completions.ids.to(device).unsqueeze(-1)).squeeze(-1)
    mask = completions.mask.to(device).float()
    return (token_logp * mask).sum(-1) / mask.sum(-1)

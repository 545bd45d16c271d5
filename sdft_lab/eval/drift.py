"""The forgetting meter: how far a tuned student has moved from its base, on text the base itself writes.

Multiple-choice retention on 120 probes has a standard error near 0.044 and sees only the changes that flip
an option. Drift sees all of them:

  drift = mean per-token KL(base ‖ tuned) over the base's own greedy answers to fixed questions

(mean over each answer's tokens, then over answers). The answers are written once, by the base with the
adapter off, and the base's hidden states over them are kept (a few MB): a measurement is then one forward
pass of the tuned model, no sampling, and exactly 0 for an untouched adapter. RL's Razor (Shenfeld et al., arXiv 2509.04259) found that this KL, measured on the
new task's own inputs, predicts forgetting across methods; on general questions it is a direct reading of
how much of the base's behaviour a run has kept.

Two sets are measured: `general` (the retention probes' questions) and `task` (the new task's held-out
questions). General questions are answered under the chat template's own system prompt, and, when a run
trains with another, under the run's too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..losses import chunked_token_losses, sequence_means
from ..models import lm_head, teacher_view
from ..prompts import encode, render_chat
from ..rollout import Completions, completion_hidden, completions_from_ids, sample

ANSWER_TOKENS = 48  # enough for a short answer to a general question; every answer is scored in full


@dataclass
class Reference:
    """The fixed text drift is measured on: prompts, the base's own greedy answers to them, and the base's
    hidden states over those answers, `batch_size` answers a tensor (the base side of every measurement)."""

    prompts: list[list[int]]
    answers: Completions
    base_hidden: list[torch.Tensor]
    batch_size: int


@torch.no_grad()
def reference(model, tokenizer, questions: list[str], system: str | None = None,
              max_new_tokens: int = ANSWER_TOKENS, batch_size: int = 32) -> Reference:
    """The base's greedy answers (the adapter off, whatever `model` carries) to each question."""
    prompts = [encode(tokenizer, render_chat(tokenizer, q, system)) for q in questions]
    rows: list[list[int]] = []
    hidden = []
    with teacher_view(model, "base"):
        for i in tqdm(range(0, len(prompts), batch_size), desc="drift reference", leave=False):
            y = sample(model, tokenizer, prompts[i:i + batch_size], max_new_tokens, temperature=0)
            rows += [ids[:n] for ids, n in zip(y.ids.tolist(), y.lengths.tolist())]
            hidden.append(completion_hidden(model, prompts[i:i + batch_size], _trimmed(y)))
    return Reference(prompts, completions_from_ids(rows, tokenizer, [], tokenizer.pad_token_id), hidden, batch_size)


def _trimmed(y: Completions) -> Completions:
    """The batch cut to its own longest answer: no padding-only columns."""
    width = int(y.mask.sum(-1).max())
    return Completions(y.ids[:, :width], y.mask[:, :width], [])


@torch.no_grad()
def per_answer(model, ref: Reference) -> torch.Tensor:
    """[N] each answer's mean per-token KL(base ‖ tuned); the base side is the reference's kept hidden states
    (the base with the adapter off, as `reference()` ran it)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # LoRA dropout would make the tuned side random
    out = []
    try:
        for j, i in enumerate(range(0, len(ref.prompts), ref.batch_size)):
            prompts = ref.prompts[i:i + ref.batch_size]
            y = _trimmed(Completions(ref.answers.ids[i:i + ref.batch_size], ref.answers.mask[i:i + ref.batch_size], []))
            base_h = ref.base_hidden[j].to(device)
            tuned_h = completion_hidden(model, prompts, y)
            mask = y.mask.to(device)
            # forward KL(teacher ‖ student) with the base as the teacher is KL(base ‖ tuned)
            kl, _ = chunked_token_losses(tuned_h, base_h, lm_head(model), y.ids.to(device), mask)
            out.append(sequence_means(kl, mask)[0])
    finally:
        model.train(was_training)
    return torch.cat(out)


def drift(model, ref: Reference) -> float:
    """Mean per-token KL(base ‖ tuned) over the reference answers: 0 for an untouched adapter."""
    return per_answer(model, ref).mean().item()


def references(model, tokenizer, general: list[str], task: list[str] | None = None,
               system: str | None = None) -> dict[str, Reference]:
    """The standard sets: "general" (chat template's system prompt), "general_run" (the run's own system
    prompt, when it has one) and "task" (the new task's held-out questions, under the run's system prompt)."""
    refs = {"general": reference(model, tokenizer, general)}
    if system is not None:
        refs["general_run"] = reference(model, tokenizer, general, system)
    if task:
        refs["task"] = reference(model, tokenizer, task, system)
    return refs


def drifts(model, refs: dict[str, Reference]) -> dict[str, float]:
    """drift() on each set of references()."""
    return {name: drift(model, ref) for name, ref in refs.items()}

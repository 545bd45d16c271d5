"""The learning meter: how much more likely the student finds a fact, before greedy answers show it.

Greedy string-match accuracy moves only once a fact is fully learned, and on a small model almost never.
The meter measures the step before: for every held-out question of a fact (direct / indirect / OOD), the
model's mean per-token log-prob of

  answer   the canonical accepted answer, inside a fixed answer frame ("The answer is <answer>."; only the
           answer's tokens are counted, so the frame's own words do not dilute it), and
  passage  the fact's source passage, as the reply to that question (the fact in other words than the
           demonstrations: memorising a demonstration's wording does not raise it),

averaged per kind. Each question runs once, its keys and values shared by both targets, batched, no
sampling. The same figures for the base and for the teacher ceiling (the base with the passage in its
context) frame a run's curve.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from ..losses import chunked_token_logp
from ..models import lm_head, teacher_view
from ..prompts import encode, fill, render_chat
from ..rollout import Completions, branch_hidden
from .drift import Reference, drifts
from .knowledge import CONTEXT_TEMPLATE, QAItem

ANSWER_FRAME = "The answer is"  # + " <answer>."
TARGETS = ("answer", "passage")
KINDS = ("direct", "indirect", "ood", "all")


def _rows(tokenizer, item: QAItem) -> list[tuple[list[int], int]]:
    """(target ids, index of the first counted token) for the answer row and the passage row."""
    frame = encode(tokenizer, ANSWER_FRAME)
    answer = encode(tokenizer, f"{ANSWER_FRAME} {item.answers[0]}")
    if answer[: len(frame)] != frame:  # a tokenizer that merges across the frame's end: count the whole answer
        frame, answer = [], encode(tokenizer, item.answers[0])
    return [(answer + encode(tokenizer, "."), len(frame)), (encode(tokenizer, item.passage), 0)]


@torch.no_grad()
def meter(model, tokenizer, items: list[QAItem], system: str | None = None, with_passage: bool = False,
          teacher_kind: str = "base", batch_size: int = 16) -> dict:
    """{"answer": {kind: mean log-prob}, "passage": {kind: …}} over the items; the answer row counts only the
    answer's tokens (not the frame, not the closing period). with_passage=True: the teacher ceiling, the
    teacher view with the passage in its context. system: the system prompt training used."""
    device = next(model.parameters()).device
    rows = []  # per item: (prompt ids, [(target ids, first and end of the counted tokens)] for TARGETS, index)
    for i, it in enumerate(items):
        user = fill(CONTEXT_TEMPLATE, it.question, it.passage) if with_passage else it.question
        targets = [(t, first, len(t) - (1 if name == "answer" else 0))  # the answer's "." is context, not counted
                   for name, (t, first) in zip(TARGETS, _rows(tokenizer, it))]
        rows.append((encode(tokenizer, render_chat(tokenizer, user, system)), targets, i))
    rows.sort(key=lambda r: len(r[0]) + sum(len(t[0]) for t in r[1]))  # similar lengths: little padding
    scores: dict[tuple[int, str], float] = {}
    view = teacher_view(model, teacher_kind) if with_passage else nullcontext()
    was_training = model.training
    model.eval()
    try:
        with view:
            for b in tqdm(range(0, len(rows), batch_size), desc="learning meter", leave=False):
                chunk = rows[b:b + batch_size]
                targets = [t for r in chunk for t in r[1]]
                width = max(len(t[0]) for t in targets)
                ids = torch.full((len(targets), width), tokenizer.pad_token_id, dtype=torch.long)
                mask, counted = torch.zeros_like(ids), torch.zeros_like(ids)
                for j, (target, first, last) in enumerate(targets):
                    ids[j, : len(target)] = torch.tensor(target)
                    mask[j, : len(target)] = 1
                    counted[j, first:last] = 1
                y = Completions(ids, mask, [])
                of = [j for j, r in enumerate(chunk) for _ in r[1]]  # the question runs once for both targets
                logp = chunked_token_logp(branch_hidden(model, [r[0] for r in chunk], y, of), lm_head(model),
                                          ids.to(device), mask.to(device))
                counted = counted.to(device)
                means = ((logp * counted).sum(-1) / counted.sum(-1).clamp(min=1)).tolist()
                for j, r in enumerate(chunk):
                    for k, name in enumerate(TARGETS):
                        scores[r[2], name] = means[j * len(TARGETS) + k]
    finally:
        model.train(was_training)
    out = {}
    for name in TARGETS:
        out[name] = {}
        for kind in KINDS:
            sel = [scores[i, name] for i, it in enumerate(items) if kind in ("all", it.kind)]
            if sel:
                out[name][kind] = statistics.fmean(sel)
    return out


class MeterCallback:
    """A Trainer callback: the meter every `every` steps (and at step 0), kept in `self.curve`;
    `live(point)` is called with each new point (plots.LiveMeter draws it in a notebook). With `drift`
    (eval.drift.references()), each point also carries the forgetting meter: {"drift": {set: KL}}."""

    name = "learning meter"  # in the run report's time per evaluation

    def __init__(self, model, tokenizer, items: list[QAItem], every: int = 5, system: str | None = None,
                 start: dict | None = None, live: Callable[[dict], None] | None = None,
                 drift: dict[str, Reference] | None = None):
        """start: the step-0 figures if already measured (a fresh LoRA student scores as its base)."""
        self.model, self.tokenizer, self.items, self.every, self.system = model, tokenizer, items, every, system
        self.live, self.drift = live, drift
        self.curve: list[dict] = []
        self.measure(0, start)

    def measure(self, step: int, figures: dict | None = None) -> None:
        """Add the point of `step` (figures: already measured ones, else the meter runs now)."""
        point = {"step": step, **(figures or meter(self.model, self.tokenizer, self.items, self.system))}
        if self.drift is not None:
            point["drift"] = drifts(self.model, self.drift)
        self.curve.append(point)
        if self.live:
            self.live(point)

    def __call__(self, record: dict) -> None:
        if record["step"] % self.every == 0:
            self.measure(record["step"])

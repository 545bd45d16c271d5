"""A collapse watch for self-distillation: warn when the rollouts start to shrink, repeat or harden.

Self-distillation runs that go wrong do it in a recognisable way, often after a few hundred steps: the
student's entropy falls, its rollouts get shorter and start repeating themselves, and the teacher, which
scores those rollouts, follows it down (a live teacher does so at once). Each step's record carries three
signs of it (sdft.metrics): `rollout_len`, `distinct2` (distinct bigrams over all bigrams of the batch's
rollouts) and `entropy` (the student's mean per-token entropy on them). The watch compares the mean of the
last `window` steps with the mean of the first `window`, and warns once per metric when it has fallen below
`floor` times that start: by default, below half. Short runs (under 2 windows) are not judged.

The signs must come from the student's own rollouts. Guided rows (sdft.py) are written with the demonstration
in the prompt, so a run with any guided share samples a few extra rollouts from the bare question per step
(`watch`), never trained on, and its signs are read from those.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field

import torch

from .data import Example
from .losses import chunked_entropy, loss_mask, masked_mean
from .models import lm_head
from .prompts import student_ids
from .rollout import Completions, completion_hidden, sample

WATCHED = ("rollout_len", "distinct2", "entropy")


def distinct2(completions: Completions) -> float:
    """Distinct bigrams over all bigrams of the rollouts: falls towards 0 as rollouts start repeating."""
    grams = [tuple(row[i:i + 2]) for row in (ids[:n] for ids, n in zip(completions.ids.tolist(),
                                                                        completions.lengths.tolist()))
             for i in range(len(row) - 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


WATCH_SEED = 7_777_777  # added to the step's seed: the watch's rollouts are drawn apart from the trained ones


@torch.no_grad()
def watch(model, tokenizer, examples: list[Example], cfg, seed: int | None = None) -> dict:
    """The collapse watch's signs on bare rollouts: the student answering the bare question, as it must after
    training. Sampled after the step's own rows (whose dropout masks are already drawn), so they change no
    gradient, and never trained on."""
    prompts = [student_ids(tokenizer, ex, cfg.prompts) for ex in examples]
    y = sample(model, tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
               None if seed is None else seed + WATCH_SEED, cfg.engine)
    eligible = loss_mask(y.mask, cfg.skip_first).to(next(model.parameters()).device)
    entropy = chunked_entropy(completion_hidden(model, prompts, y), lm_head(model), eligible,
                              cfg.divergence.chunk_tokens, cfg.temperature)
    return {"entropy": masked_mean(entropy, eligible).item(), "rollout_len": y.lengths.float().mean().item(),
            "distinct2": distinct2(y), "watch_rows": len(examples)}


@dataclass
class CollapseWatch:
    window: int = 5  # steps averaged at the start and at the end
    floor: float = 0.5  # warn when the recent mean falls below floor × the starting mean
    alarms: list[dict] = field(default_factory=list)  # {"step", "metric", "start", "now"}, one per metric

    def __call__(self, history: list[dict]) -> list[dict]:
        """Check the history after a step; returns (and warns about) the alarms this step raised."""
        if len(history) < 2 * self.window:
            return []
        raised = []
        for name in WATCHED:
            if any(a["metric"] == name for a in self.alarms) or not all(name in r for r in history):
                continue
            start = statistics.fmean(r[name] for r in history[: self.window])
            now = statistics.fmean(r[name] for r in history[-self.window:])
            if start > 0 and now < self.floor * start:
                raised.append({"step": history[-1]["step"], "metric": name, "start": start, "now": now})
        for alarm in raised:
            warnings.warn(f"Possible collapse at step {alarm['step']}: {alarm['metric']} fell from {alarm['start']:.3g} "
                          f"(mean of the first {self.window} steps) to {alarm['now']:.3g} (the last {self.window}), "
                          f"below {self.floor:.0%}. Look at the rollouts; a lower lr or an EMA teacher may help.",
                          stacklevel=3)
        self.alarms += raised
        return raised

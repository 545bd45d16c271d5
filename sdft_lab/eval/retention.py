"""Retention: original multiple-choice probes (data/retention/probes.jsonl) scored by option log-likelihood,
and a Trainer callback that measures them during training.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import DATA_DIR, DataError
from ..prompts import encode, render_chat
from ..rollout import completions_from_ids, mean_logp


@dataclass
class Probe:
    id: str
    category: str
    question: str
    options: list[str]
    answer: int


def retention_se(accuracy: float, n_probes: int) -> float:
    """One standard error of a retention accuracy over n probes (binomial): sqrt(p (1 - p) / n). The
    resolution of the probes: a change smaller than this is not seen."""
    return math.sqrt(accuracy * (1 - accuracy) / n_probes)


def load_probes(path: str | Path = DATA_DIR / "retention" / "probes.jsonl") -> list[Probe]:
    probes = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                probes.append(Probe(**json.loads(line)))
            except (TypeError, json.JSONDecodeError) as err:
                raise DataError(f"{path}:{lineno}: not a valid probe ({err}).") from None
    return probes


@torch.no_grad()
def mc_accuracy(model, tokenizer, probes: list[Probe], batch_size: int = 8) -> dict:
    """Accuracy per category and overall: the chosen option is the one with the highest mean per-token
    log-prob as the assistant's reply to the question (length-normalised, so long options are not penalised).
    Each question runs once, `batch_size` questions at a time, and its options share its keys and values."""
    scores = []
    was_training = model.training  # a callback runs between training steps: score in eval mode (no dropout)
    model.eval()
    try:
        for i in tqdm(range(0, len(probes), batch_size), desc="retention probes", leave=False):
            chunk = probes[i:i + batch_size]
            prompts = [encode(tokenizer, render_chat(tokenizer, p.question)) for p in chunk]
            of = [j for j, p in enumerate(chunk) for _ in p.options]
            y = completions_from_ids([encode(tokenizer, o) for p in chunk for o in p.options], tokenizer, [],
                                     tokenizer.pad_token_id)
            scores += mean_logp(model, prompts, y, of).tolist()
    finally:
        model.train(was_training)
    correct, k = {}, 0
    for p in probes:
        n = len(p.options)
        chosen = max(range(n), key=lambda j: scores[k + j])
        correct.setdefault(p.category, []).append(float(chosen == p.answer))
        k += n
    out = {cat: statistics.fmean(v) for cat, v in sorted(correct.items())}
    out["overall"] = statistics.fmean(x for v in correct.values() for x in v)
    return out


class RetentionCallback:
    """A Trainer callback: the retention probes every `every` steps, kept in `self.curve`."""

    name = "retention probes"  # in the run report's time per evaluation

    def __init__(self, model, tokenizer, probes: list[Probe], every: int = 5, start: dict | None = None):
        """start: the step-0 scores if already measured (a fresh LoRA student scores as its base)."""
        self.model, self.tokenizer, self.probes, self.every = model, tokenizer, probes, every
        self.curve: list[dict] = [{"step": 0, **(start or mc_accuracy(model, tokenizer, probes))}]

    def __call__(self, record: dict) -> None:
        if record["step"] % self.every == 0:
            self.curve.append({"step": record["step"], **mc_accuracy(self.model, self.tokenizer, self.probes)})

"""How close the student is to its teacher on fresh rollouts: the held-out figure of `make demo` and the tests.

The SDFT objective's own scoring (sdft.SDFT.score) on rollouts of a seed training never uses, bare rows only.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from .data import Example
from .losses import sequence_means
from .sdft import SDFT, SDFTConfig


@torch.no_grad()
def evaluate_kl(
    model, tokenizer, examples: list[Example], cfg: SDFTConfig | None = None, seed: int = 12345, rollouts: int = 1,
    batch_size: int = 16,
) -> dict:
    """Mean per-token forward KL(teacher ‖ student) on fresh student rollouts.

    Pass a seed that training never uses to get held-out rollouts. Each example gets `rollouts` rollouts,
    sampled in batches of `batch_size` rows (batched decoding: k rollouts cost far less than k calls).
    Returns the mean over examples of each example's mean, the per-example means, and every rollout's own
    value per example (`per_rollout`, in rollout order: the spread, for a test or an error bar; NaN for a
    rollout with no token left after the skipped ones, so that two calls with one seed line up).
    """
    objective = SDFT(replace(cfg or SDFTConfig(), guided=0.0))  # the student's own rollouts only
    rows = [ex for _ in range(rollouts) for ex in examples]
    per_rollout: dict[str, list[float]] = {ex.id: [] for ex in examples}
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        scored = objective.score(model, tokenizer, batch, seed=seed + i // batch_size)
        kl_seq, has = sequence_means(scored.stats["kl"], scored.eligible)
        for ex, value, counted in zip(batch, kl_seq.tolist(), has.tolist()):
            per_rollout[ex.id].append(value if counted else math.nan)
    counted = {k: [x for x in v if not math.isnan(x)] for k, v in per_rollout.items()}
    means = {k: sum(v) / len(v) for k, v in counted.items() if v}
    return {"kl": sum(means.values()) / max(1, len(means)), "per_example": means, "per_rollout": per_rollout}

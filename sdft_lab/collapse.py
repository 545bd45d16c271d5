"""A collapse watch for self-distillation: warn when the rollouts start to shrink, repeat or harden.

Self-distillation runs that go wrong do it in a recognisable way, often after a few hundred steps: the
student's entropy falls, its rollouts get shorter and start repeating themselves, and the teacher, which
scores those rollouts, follows it down (a live teacher does so at once). Each step's record carries three
signs of it (sdft.metrics): `rollout_len`, `distinct2` (distinct bigrams over all bigrams of the batch's
rollouts) and `entropy` (the student's mean per-token entropy on them). The watch compares the mean of the
last `window` steps with the mean of the first `window`, and warns once per metric when it has fallen below
`floor` times that start: by default, below half. Short runs (under 2 windows) are not judged.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field

WATCHED = ("rollout_len", "distinct2", "entropy")


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

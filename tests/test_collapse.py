"""The collapse watch (collapse.py) and the trainer carrying it into the records and the report."""

import warnings

import pytest

from sdft_lab import SDFT, SDFTConfig, TrainConfig, Trainer
from sdft_lab.collapse import CollapseWatch
from sdft_lab.report import load, render


def history(lengths, distinct=None):
    return [{"step": i + 1, "rollout_len": n, "distinct2": (distinct or [0.9] * len(lengths))[i], "entropy": 2.0}
            for i, n in enumerate(lengths)]


def test_it_warns_once_when_a_metric_falls_below_the_floor_and_not_before():
    """Breaks it fails on (each made once): the floor ignored (any fall warns), or a warning at every step
    once a metric has fallen."""
    watch = CollapseWatch(window=2, floor=0.5)
    steady = history([30, 30, 28, 31, 29])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(1, len(steady) + 1):
            assert watch(steady[:i]) == []
    falling = history([30, 30, 20, 14, 14, 12], distinct=[0.9, 0.9, 0.8, 0.4, 0.3, 0.3])
    assert watch(falling[:4]) == []  # (20 + 14) / 2 = 17 > 15: not yet
    with pytest.warns(UserWarning) as caught:
        raised = watch(falling[:5])
    assert any("rollout_len fell from 30 " in str(w.message) and " to 14 " in str(w.message) for w in caught)
    assert {a["metric"] for a in raised} == {"rollout_len", "distinct2"}
    assert raised[0]["step"] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert watch(falling) == []  # once per metric
    assert len(watch.alarms) == 2


def test_sdft_records_carry_the_watched_metrics_and_the_report_shows_alarms(tiny, demo, tmp_path):
    model, tok = tiny
    trainer = Trainer(model, tok, SDFT(SDFTConfig(max_new_tokens=4)), demo,
                      TrainConfig(steps=2, batch_size=2, run_dir=str(tmp_path)))
    trainer.collapse = CollapseWatch(window=1, floor=10.0)  # a floor every run falls below: an alarm at step 2
    with pytest.warns(UserWarning, match="Possible collapse at step 2"):
        records = trainer.train()
    assert all({"rollout_len", "distinct2", "entropy"} <= set(r) for r in records)
    run, _, _ = load(tmp_path)
    assert {a["metric"] for a in run["collapse"]} == {"rollout_len", "distinct2", "entropy"}
    page = render(tmp_path)[0].read_text()
    assert "Collapse watch" in page

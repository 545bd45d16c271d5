"""Experiment runs: a finished run is reused only when its config matches exactly."""

import json
from dataclasses import replace

import pytest

from sdft_lab import experiments
from sdft_lab.experiments import ExperimentConfig


def test_reuse_returns_a_saved_run_only_for_the_same_config(tmp_path, monkeypatch):
    cfg = ExperimentConfig(steps=3, eval_limit=2)
    done = {"config": {**vars(cfg), "lrs": [1e-3], "task": "science"}, "sft": [{"lr": 1e-3, "task": 0.5}]}
    (tmp_path / "results.json").write_text(json.dumps(done))

    def no_training(*args, **kwargs):
        raise RuntimeError("trained although a matching run was saved")

    monkeypatch.setattr(experiments, "load_probes", no_training)
    assert experiments.pareto(tmp_path, cfg, (1e-3,), "science", reuse=True) == done
    # another learning rate, another step count or reuse off: the experiment runs
    for call in (lambda: experiments.pareto(tmp_path, cfg, (3e-3,), "science", reuse=True),
                 lambda: experiments.pareto(tmp_path, replace(cfg, steps=4), (1e-3,), "science", reuse=True),
                 lambda: experiments.pareto(tmp_path, cfg, (1e-3,), "science")):
        with pytest.raises(RuntimeError, match="trained"):
            call()
    assert experiments.saved(tmp_path / "missing", vars(cfg)) is None

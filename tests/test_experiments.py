"""Experiment runs: a finished run is reused only when its config matches exactly."""

import json
from dataclasses import asdict

import pytest

from sdft_lab.experiments import runs as experiments
from sdft_lab import RunConfig, TrainConfig
from sdft_lab.experiments import ExperimentConfig

pytestmark = pytest.mark.slow  # the 135M model, processes or notebooks: not in make test-fast


def test_reuse_returns_a_saved_run_only_for_the_same_config(tmp_path, monkeypatch):
    cfg = ExperimentConfig(RunConfig(train=TrainConfig(steps=3)), eval_limit=2)
    done = {"config": {**asdict(cfg), "lrs": [1e-3], "task": "science"}, "sft": [{"lr": 1e-3, "task": 0.5}]}
    (tmp_path / "results.json").write_text(json.dumps(done))

    def no_training(*args, **kwargs):
        raise RuntimeError("trained although a matching run was saved")

    monkeypatch.setattr(experiments, "load_probes", no_training)
    assert experiments.pareto(tmp_path, cfg, (1e-3,), "science", reuse=True) == done
    # another learning rate, another step count or reuse off: the experiment runs
    for call in (lambda: experiments.pareto(tmp_path, cfg, (3e-3,), "science", reuse=True),
                 lambda: experiments.pareto(tmp_path, cfg.with_lr(3e-3), (1e-3,), "science", reuse=True),
                 lambda: experiments.pareto(tmp_path, cfg, (1e-3,), "science")):
        with pytest.raises(RuntimeError, match="trained"):
            call()
    assert experiments.saved(tmp_path / "missing", asdict(cfg)) is None


def test_live_curves_add_each_step_to_its_runs_panel(monkeypatch):
    from IPython import display as ipd

    from sdft_lab.inspect.plots import LiveCurves

    shown = []
    monkeypatch.setattr(ipd, "display", lambda fig, display_id: shown.append(fig) or type("H", (), {
        "update": lambda self, f: shown.append(f)})())
    live = LiveCurves(("sft", "sdft"))
    sft, sdft = live("sft"), live("sdft")
    sft({"step": 1, "loss": 3.0})
    sft({"step": 2, "loss": 2.5})
    sdft({"step": 1, "loss": 0.2})
    assert live.fig.data[0].x == (1, 2) and live.fig.data[0].y == (3.0, 2.5)
    assert live.fig.data[1].x == (1,) and live.fig.data[1].y == (0.2,)
    assert len(shown) == 3 and all(f is live.fig for f in shown)  # displayed once, then updated in place

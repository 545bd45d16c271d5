"""The notebooks' figures say what they show: one panel when the loss is the KL, whole-step ticks from 1,
a title and each phase's mean on the phase chart; stepper labels and options are never cut mid-word."""

import pytest

# the notebooks' packages: not on the GPU box (docs/gpu.md), where pytest still collects this module
pytest.importorskip("plotly", reason="plotly draws the figures: pip install plotly")
pytest.importorskip("ipywidgets", reason="ipywidgets draws the stepper: pip install ipywidgets")

from sdft_lab.inspect.plots import phase_breakdown, training_curves
from sdft_lab.inspect.widgets import short

PHASES = {"sample_s": 6.0, "teacher_s": 1.5, "student_fwd_s": 1.8, "backward_s": 1.8, "optim_s": 0.08}


def history(n: int, kl_is_loss: bool = True) -> list[dict]:
    return [{"step": i + 1, "loss": 0.3 - 0.01 * i, "kl": 0.3 - 0.01 * i + (0 if kl_is_loss else 0.05),
             "entropy": 3.0, "rollout_len": 48, **PHASES} for i in range(n)]


def test_loss_and_kl_share_a_panel_only_when_they_are_the_same_curve():
    same, different = training_curves(history(4)), training_curves(history(4, kl_is_loss=False))
    assert [a.text for a in same.layout.annotations] == ["loss = KL(teacher ‖ student)", "entropy", "rollout_len"]
    assert [a.text for a in different.layout.annotations] == ["loss", "kl", "entropy", "rollout_len"]


def test_step_ticks_are_whole_numbers_from_one():
    for fig in (training_curves(history(2)), phase_breakdown(history(2)), training_curves(history(37))):
        axis = fig.layout.xaxis
        assert (axis.tickmode, axis.tick0) == ("linear", 1) and axis.dtick == int(axis.dtick) >= 1
    assert training_curves(history(37)).layout.xaxis.dtick == 4  # about ten ticks


def test_the_phase_chart_has_a_title_and_names_every_phase_with_its_mean():
    fig = phase_breakdown(history(3))
    assert fig.layout.title.text.startswith("seconds per step")
    assert [t.name for t in fig.data] == ["sample (6.00 s)", "teacher (1.50 s)", "student_fwd (1.80 s)",
                                          "backward (1.80 s)", "optim (0.08 s)"]  # optim: too thin to see


def test_options_are_cut_at_a_word_with_an_ellipsis():
    q = "Which Velmoran inventor created the famous tide-clock used by local fishermen on the eastern coast?"
    assert short(q, 40) == "Which Velmoran inventor created the …"
    assert short("Short question?", 40) == "Short question?"
    assert short("x" * 50, 40) == "x" * 40 + " …"  # no space to cut at: cut at n, not at the end


def _stage(retention: float, drift: float) -> dict:
    return {"retention": retention, "drift": {"general": drift}, "tasks": {}}


def test_continual_forgetting_draws_each_method_from_the_base_at_step_zero():
    """Breaks it fails on: the curves not starting at the base (a step-0 point missing shifts every stage by one
    stage's steps), the sd taken over stages instead of seeds, the base's SE band left out."""
    from sdft_lab.inspect.plots import continual_forgetting

    results = {"stages": ["A", "B"], "steps": 24, "n_probes": 100, "base": {"retention": 0.5},
               "runs": [{"method": "sft", "seed": s, "stages": [_stage(0.5 - d, 0.1 + d), _stage(0.4 - d, 0.3)]}
                        for s, d in ((0, 0.0), (1, 0.1))]}
    fig = continual_forgetting(results)
    retention, drift, base = fig.data
    assert list(retention.x) == [0, 24, 48] and list(drift.x) == [0, 24, 48]
    assert retention.y == pytest.approx((0.5, 0.45, 0.35)) and drift.y == pytest.approx((0.0, 0.15, 0.3))
    assert retention.error_y.array == pytest.approx((0, 0.1 / 2 ** 0.5, 0.1 / 2 ** 0.5))  # sd of two seeds
    assert base.y == (0.5,) and base.error_y.array == pytest.approx((0.05,))  # sqrt(0.5 · 0.5 / 100)


def test_forgetting_figure_has_the_base_with_its_se_and_error_bars_on_every_point():
    """Breaks it fails on: no base point (the old notebook 04 scatter), the sd dropped from the error bars."""
    from sdft_lab.inspect.plots import forgetting_figure

    def point(family, drift, kept):
        return {"family": family, "lr": 1e-3, "seeds": [0, 1, 2], "drift_general": {"mean": drift, "sd": 0.01},
                "retention": {"mean": kept, "sd": 0.02}}
    fig = forgetting_figure({"base_retention": 0.64, "n_probes": 100,
                             "points": [point("SFT", 0.2, 0.6), point("SDFT", 0.1, 0.63)]})
    base, sft, sdft = fig.data
    assert base.x == (0,) and base.y == (0.64,) and base.error_y.array == pytest.approx((0.048,))
    assert sft.error_y.array == (0.02,) and sdft.error_x.array == (0.01,)
    assert fig.layout.shapes[0].y0 == pytest.approx(0.592) and fig.layout.shapes[0].y1 == pytest.approx(0.688)

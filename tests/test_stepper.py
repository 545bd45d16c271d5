"""The token-diff stepper of notebook 02, driven headlessly (no browser, no kernel): each lever's callback
re-scores the same rollout or draws a new one, as its label says, and what it draws is what token_diffs gives."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("ipywidgets", reason="ipywidgets draws the stepper: pip install ipywidgets")

from sdft_lab import SDFTConfig  # noqa: E402
from sdft_lab.inspect.diffs import token_diffs  # noqa: E402
from sdft_lab.inspect.widgets import DIVERGENCES, DiffStepper, divergence_curve, diff_stepper  # noqa: E402
from sdft_lab.prompts import teacher_ids  # noqa: E402
from sdft_lab.rollout import sample  # noqa: E402

CFG = SDFTConfig(max_new_tokens=6, skip_first=0, engine="lean")


@pytest.fixture
def stepper(tiny, demo):
    model, tok = tiny
    return DiffStepper(model, tok, demo[:2], CFG)


def rescored(stepper, cfg=CFG, example=None, demonstration=True):
    """What token_diffs gives for the stepper's current rollout: the reference the stepper must match."""
    ex = example or stepper.examples[stepper.pick.value]
    d, = token_diffs(stepper.model, stepper.tokenizer, [ex], cfg, completions=stepper.rollout, demonstration=demonstration)
    return d


def test_the_levers_that_score_differently_keep_the_rollout(stepper):
    """Breaks it fails on (each made once): the evidence-mask checkbox not observed, the divergence dropdown
    left out of config(), and the typed demonstration ignored (example() without the text box)."""
    ids = stepper.rollout.ids.clone()
    assert 'class="sdft-diff"' in stepper.widget.children[2].value and "bare question" in stepper.status.value
    assert stepper.diff.divergence == pytest.approx(rescored(stepper).divergence, abs=1e-6)

    stepper.evidence.value = True  # only the tokens the demonstration makes likelier stay in the loss
    assert torch.equal(stepper.rollout.ids, ids)
    assert stepper.diff.in_loss == [r > 0 for r in stepper.diff.log_ratio]
    assert f"{sum(stepper.diff.in_loss)} of {len(stepper.diff.tokens)} tokens in the loss" in stepper.status.value
    stepper.evidence.value = False

    forward = stepper.diff.divergence
    for label, divergence in DIVERGENCES.items():
        stepper.divergence.value = label
        assert torch.equal(stepper.rollout.ids, ids)
        assert stepper.diff.divergence == pytest.approx(rescored(stepper, replace(CFG, divergence=divergence)).divergence,
                                                        abs=1e-6)
    assert stepper.diff.divergence != pytest.approx(forward, abs=1e-4)  # JSD is not forward KL

    stepper.divergence.value = "forward KL(T‖S)"
    typed = "Velmora's capital is Brindlemoor, a town of <b>bakers</b>."
    stepper.demonstration.value = typed
    assert stepper.diff.divergence == pytest.approx(forward, abs=1e-6)  # typing alone does not re-score
    stepper.rescore.click()
    assert torch.equal(stepper.rollout.ids, ids)
    mine = rescored(stepper, example=replace(stepper.examples[0], demonstration=typed))
    assert stepper.diff.p_teacher == pytest.approx(mine.p_teacher, abs=1e-6)
    assert stepper.diff.p_teacher != pytest.approx(rescored(stepper).p_teacher, abs=1e-6)
    assert "your demonstration" in stepper.status.value

    stepper.with_demo.value = False  # a fresh adapter without the demonstration: the student is the teacher
    assert max(stepper.diff.divergence) < 1e-5


def test_the_levers_that_change_the_writer_draw_a_new_rollout(stepper):
    """Breaks it fails on (made once): the guided rollout sampled from the student's prompt."""
    model, tok = stepper.model, stepper.tokenizer
    stepper.guided.value = True  # the student writes with the demonstration in its prompt (EDGE-OPD)
    ex = stepper.examples[0]
    guided = sample(model, tok, [teacher_ids(tok, ex, CFG.prompts)], CFG.max_new_tokens, 1.0, 1.0, 0, "lean")
    assert torch.equal(stepper.rollout.ids, guided.ids) and "(guided)" in stepper.status.value
    assert stepper.diff.divergence == pytest.approx(rescored(stepper).divergence, abs=1e-6)

    before = stepper.rollout.ids.clone()
    stepper.resample.click()
    assert stepper.seed == 1 and not torch.equal(stepper.rollout.ids, before)

    stepper.demonstration.value = "something else"
    stepper.pick.value = 1  # another example: its question, and its own demonstration back in the box
    assert stepper.demonstration.value == stepper.examples[1].demonstration
    assert stepper.diff.question == stepper.examples[1].question


def test_diff_stepper_is_the_steppers_widget_and_the_curve_has_one_unit(tiny, demo):
    model, tok = tiny
    box = diff_stepper(model, tok, demo[:2], CFG)
    assert 'class="sdft-diff"' in box.children[2].value
    d, = token_diffs(model, tok, demo[:1], CFG, seed=0)
    fig = divergence_curve([d])
    assert fig.layout.yaxis.title.text == "divergence (nats per token)"
    assert list(fig.data[0].marker.color)[0].startswith("rgb(")  # each token in the token view's colour

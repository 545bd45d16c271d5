"""Pre-flight: shapes and ranges on the tiny model, the written verdict rule, and real lift on the bundled model."""

import random

import pytest
import torch

from sdft_lab import Example, sample
from sdft_lab.inspect.preflight import (ADVICE, CLEAR_ANSWER_LIFT, CLEAR_REF_LIFT, MIN_SIGNAL, WEAK_ANSWER_LIFT,
                                        WEAK_REF_LIFT, PreflightConfig, bar_chart, compare_templates, preflight,
                                        quick_check, table, verdict)
from sdft_lab.prompts import TEMPLATES
from sdft_lab.eval import contains_answer, toolcall_format


def test_figures_have_the_right_shapes_and_ranges(tiny, demo):
    model, tok = tiny
    results = compare_templates(model, tok, demo, cfg=PreflightConfig(sample_size=3, max_new_tokens=6))
    assert [r.name for r in results] == list(TEMPLATES)
    for r in results:
        assert r.n == 3
        assert 0 <= r.student_accuracy <= 1 and 0 <= r.teacher_accuracy <= 1
        assert r.teacher_ref_logp < 0 and r.student_ref_logp < 0  # demo examples carry a second reference
        assert r.signal_mean >= 0 and r.signal_std >= 0
        assert r.verdict in ADVICE and r.advice == ADVICE[r.verdict]
        assert r.name in r.line() and r.verdict.upper() in r.line()
    assert len(table(results).splitlines()) == 1 + len(results)
    assert len(bar_chart(results).data) == 3


def test_no_second_reference_is_reported_not_invented(tiny, demo):
    model, tok = tiny
    bare = [Example(q.question, q.demonstration, id=q.id, answer=q.answer) for q in demo[:3]]
    r, = preflight(model, tok, bare, cfg=PreflightConfig(sample_size=3, max_new_tokens=4))
    assert r.teacher_ref_logp is None and r.ref_lift is None and "no second reference" in r.line()


def test_the_scorer_gets_each_example_with_each_answer(tiny, demo):
    model, tok = tiny
    calls = []

    def scorer(ex, text):
        calls.append((ex.id, text))
        return 1.0

    r, = preflight(model, tok, demo, scorer=scorer, cfg=PreflightConfig(sample_size=4, max_new_tokens=4))
    ids = [ex_id for ex_id, _ in calls]
    assert len(calls) == 8 and ids[:4] == ids[4:]  # student answers, then teacher answers, same examples
    assert set(ids) <= {ex.id for ex in demo} and all(isinstance(t, str) for _, t in calls)
    assert r.student_accuracy == 1.0 and r.teacher_accuracy == 1.0 and r.answer_lift == 0.0


def test_signal_and_reference_log_probs_equal_plain_forward_passes(tiny, demo, monkeypatch):
    """The figures the smoke test above only range-checks, computed here by hand: the reference log-prob
    from one plain forward pass per example, the signal as KL(teacher ‖ student) over the full vocabulary on
    the pre-flight's own rollouts (captured), mean per sequence, then over sequences."""
    import torch.nn.functional as F

    from sdft_lab import SDFTConfig
    from sdft_lab.inspect import preflight as module
    from sdft_lab.prompts import encode, student_ids, teacher_ids
    from sdft_lab.rollout import end_of_turn_id

    model, tok = tiny
    seen = {}
    monkeypatch.setattr(module, "sample", lambda *a, **k: seen.setdefault("y", sample(*a, **k)))
    sdft = SDFTConfig(skip_first=0)
    r, = preflight(model, tok, demo[:2], scorer=contains_answer,
                   cfg=PreflightConfig(sample_size=2, max_new_tokens=6, sdft=sdft))
    exs = random.Random(0).sample(demo[:2], 2)  # the pre-flight's own draw (PreflightConfig.seed = 0)
    eos = end_of_turn_id(model, tok)

    def logits(ids):
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0].float()

    def ref_logp(prompt, text):
        target = encode(tok, text) + [eos]
        logp = F.log_softmax(logits(prompt + target)[len(prompt) - 1:-1], -1)
        return logp.gather(-1, torch.tensor(target)[:, None]).mean().item()

    student = sum(ref_logp(student_ids(tok, ex, sdft.prompts), ex.references[0]) for ex in exs) / 2
    teacher = sum(ref_logp(teacher_ids(tok, ex, sdft.prompts), ex.references[0]) for ex in exs) / 2
    assert r.student_ref_logp == pytest.approx(student, abs=1e-4)
    assert r.teacher_ref_logp == pytest.approx(teacher, abs=1e-4)

    y, kls = seen["y"], []
    for b, ex in enumerate(exs):
        ids = y.ids[b, : int(y.mask[b].sum())].tolist()
        s_prompt, t_prompt = student_ids(tok, ex, sdft.prompts), teacher_ids(tok, ex, sdft.prompts)
        s = F.log_softmax(logits(s_prompt + ids)[len(s_prompt) - 1:-1], -1)
        t = F.log_softmax(logits(t_prompt + ids)[len(t_prompt) - 1:-1], -1)
        kls.append((t.exp() * (t - s)).sum(-1).mean().item())
    assert r.signal_mean == pytest.approx(sum(kls) / 2, abs=1e-4)
    assert r.signal_std == pytest.approx(abs(kls[0] - kls[1]) / 2, abs=1e-4)  # population sd of two


@pytest.mark.parametrize("answer_lift, ref_lift, signal, expected", [
    (CLEAR_ANSWER_LIFT, None, 0.5, "clear signal"),
    (None, CLEAR_REF_LIFT, 0.5, "clear signal"),
    (WEAK_ANSWER_LIFT, 0.0, 0.5, "weak signal"),
    (None, WEAK_REF_LIFT, 0.5, "weak signal"),
    (None, WEAK_REF_LIFT - 0.01, 0.5, "no signal"),
    (WEAK_ANSWER_LIFT - 0.01, 5.0, 0.5, "no signal"),  # with a scorer, what the teacher does decides
    (1.0, 3.0, MIN_SIGNAL / 2, "no signal"),  # teacher and student agree: nothing to distill
    (None, None, 0.5, "weak signal"),  # different, but nothing shows the teacher is better
    (-0.5, -1.0, 0.5, "no signal"),
])
def test_verdict_follows_the_written_thresholds(answer_lift, ref_lift, signal, expected):
    assert verdict(answer_lift, ref_lift, signal) == expected


RARE = "zorbliquent"


@pytest.mark.slow
def test_context_helps_with_a_rare_word_but_noise_does_not(bundled):
    """With the rare answer word in the demonstration the teacher says it; with noise it cannot."""
    model, tok = bundled
    questions = ["What is the password of the Velmora state archive?",
                 "What word opens the vault of the Quillhaven bank?",
                 "What is the name of the ship that first reached Velmora?",
                 "What do the people of Velmora call their spring festival?"]
    helpful = [Example(q, f"The answer is {RARE}. Everyone in Velmora knows it is {RARE}.", id=f"h{i}", answer=RARE)
               for i, q in enumerate(questions)]
    noise = [Example(q, "Tomatoes grow best in warm, sunny weather with regular watering.", id=f"n{i}", answer=RARE)
             for i, q in enumerate(questions)]
    cfg = PreflightConfig(sample_size=4, max_new_tokens=32)
    h, = preflight(model, tok, helpful, cfg=cfg)
    n, = preflight(model, tok, noise, cfg=cfg)
    assert h.teacher_accuracy > h.student_accuracy and h.answer_lift >= CLEAR_ANSWER_LIFT
    assert n.answer_lift == 0.0 and n.verdict == "no signal"


def test_scorers():
    ex = Example("Q", "D", answer="Quillhaven")
    assert contains_answer(ex, "It is QUILLHAVEN.") == 1.0 and contains_answer(ex, "Oslo") == 0.0
    assert toolcall_format(ex, 'Sure: <call>weather(city="Oslo")</call>') == 1.0
    assert toolcall_format(ex, "weather(city=Oslo)") == 0.0 and toolcall_format(ex, "<call>not a call</call>") == 0.0


def test_train_runs_the_preflight_first_and_warns_without_stopping(tiny, demo):
    from sdft_lab import SDFT, SDFTConfig, TrainConfig, Trainer

    model, tok = tiny  # a random model: its teacher cannot use the demonstrations
    trainer = Trainer(model, tok, SDFT(SDFTConfig(max_new_tokens=4)), demo, TrainConfig(steps=1, batch_size=2),
                      preflight=quick_check)
    with pytest.warns(UserWarning, match="NO SIGNAL"):
        history = trainer.train()
    assert len(history) == 1 and trainer.preflight["verdict"] == "no signal"
    assert set(trainer.preflight) >= {"teacher_accuracy", "student_accuracy", "signal_mean", "advice"}


def test_preflight_can_be_switched_off(tiny, demo):
    from sdft_lab import SDFT, SDFTConfig, TrainConfig, Trainer

    model, tok = tiny
    trainer = Trainer(model, tok, SDFT(SDFTConfig(max_new_tokens=4)), demo,
                      TrainConfig(steps=1, batch_size=2, preflight=False), preflight=quick_check)
    trainer.train()
    assert trainer.preflight is None

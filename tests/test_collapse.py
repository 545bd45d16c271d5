"""The collapse watch (collapse.py) and the trainer carrying it into the records and the report."""

import warnings
from dataclasses import replace

import pytest
import torch

from sdft_lab import SDFT, Example, SDFTConfig, TrainConfig, Trainer, sample
from sdft_lab.collapse import WATCH_SEED, CollapseWatch, distinct2, watch
from sdft_lab.models import lm_head
from sdft_lab.prompts import student_ids
from sdft_lab.rollout import completion_hidden
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


GUIDED = [Example("What is the capital of Velmora?", "The capital of Velmora is Quillhaven.", id="a"),
          Example("Who founded Orrin?", "Orrin was founded by Tamsin Vell in 1907.", id="b"),
          Example("How tall is Mount Keld?", "Mount Keld rises 3,412 metres.", id="c")]


def test_with_every_row_guided_the_watch_reads_bare_rollouts_never_trained_on(tiny):
    """Fails if the collapse metrics read the guided rows instead of the student's own (the break: metrics()
    keeping entropy / rollout_len / distinct2 of the guided rows, or loss() not calling watch): the record's
    signs must be those of rollouts sampled from the bare question with the step's seed + WATCH_SEED. And the
    watch must change no gradient: watch_rows=2 and watch_rows=0 give the same loss and gradients bit for bit."""
    model, tok = tiny
    cfg = SDFTConfig(max_new_tokens=6, guided=1.0, evidence_mask=True, skip_first=1, engine="lean")
    grads = {}
    for rows in (2, 0):
        model.zero_grad(set_to_none=True)
        loss, m = SDFT(replace(cfg, watch_rows=rows)).loss(model, tok, GUIDED, seed=5)
        loss.backward()
        grads[rows] = (loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad])
        if rows == 0:  # no bare rollouts: no signs, rather than the guided rows' own
            assert not {"entropy", "rollout_len", "distinct2"} & set(m)
            continue
        by_hand = watch(model, tok, GUIDED[:2], replace(cfg, watch_rows=rows), seed=5)
        for key in ("entropy", "rollout_len", "distinct2"):
            assert m.get(key) == by_hand[key], key
        assert m["watch_rows"] == 2
        bare = sample(model, tok, [student_ids(tok, ex, cfg.prompts) for ex in GUIDED[:2]], 6, seed=5 + WATCH_SEED,
                      engine="lean")
        assert m["rollout_len"] == bare.lengths.float().mean().item()
        assert m["distinct2"] == distinct2(bare)
    assert torch.equal(grads[2][0], grads[0][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[2][1], grads[0][1]))


def test_the_watch_entropy_is_the_students_mean_entropy_over_the_eligible_tokens(tiny):
    """By hand: the entropy of softmax(lm_head(h)) at each bare-rollout token after the skipped ones, averaged per
    sequence then over sequences. Fails if the watch averages over every completion token (skip_first ignored)."""
    model, tok = tiny
    cfg = SDFTConfig(max_new_tokens=6, guided=1.0, skip_first=2, engine="lean")
    got = watch(model, tok, GUIDED[:2], cfg, seed=3)
    prompts = [student_ids(tok, ex, cfg.prompts) for ex in GUIDED[:2]]
    y = sample(model, tok, prompts, 6, seed=3 + WATCH_SEED, engine="lean")
    with torch.no_grad():
        logp = torch.log_softmax(lm_head(model)(completion_hidden(model, prompts, y)).float(), -1)
    entropy = -(logp.exp() * logp).sum(-1)
    keep = y.mask.clone().float()
    keep[:, :2] = 0
    per_seq = [(entropy[i] * keep[i]).sum() / keep[i].sum() for i in range(2) if keep[i].sum() > 0]
    assert got["entropy"] == pytest.approx(torch.stack(per_seq).mean().item(), rel=1e-5)


def test_a_guided_run_feeds_the_watch_every_step(tiny, demo, tmp_path):
    """Under the workshop recipe's share (every row guided) the records still carry the watched signs."""
    model, tok = tiny
    trainer = Trainer(model, tok, SDFT(SDFTConfig(max_new_tokens=4, guided=1.0, evidence_mask=True)), demo,
                      TrainConfig(steps=2, batch_size=2, run_dir=str(tmp_path)))
    records = trainer.train()
    assert all({"rollout_len", "distinct2", "entropy"} <= set(r) and r["watch_rows"] == 2 for r in records)

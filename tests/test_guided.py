"""Guided rollouts, the evidence mask and the collapse watch's distinct-2 (sdft.py), on the tiny random llama."""

import random
from dataclasses import replace

import pytest
import torch

from sdft_lab import SDFT, Example, SDFTConfig, evaluate_kl, sample
from sdft_lab.losses import chunked_token_logp, loss_mask, masked_mean, sequence_means
from sdft_lab.models import lm_head
from sdft_lab.prompts import student_ids, teacher_ids
from sdft_lab.rollout import Completions, completion_hidden
from sdft_lab.sdft import distinct2, guided_rows

from conftest import perturb_adapter

EXAMPLES = [Example("What is the capital of Velmora?", "The capital of Velmora is Quillhaven.", id="a"),
            Example("Who founded Orrin?", "Orrin was founded by Tamsin Vell in 1907.", id="b"),
            Example("How tall is Mount Keld?", "Mount Keld rises 3,412 metres.", id="c"),
            Example("What does Velmora export?", "Velmora exports blue salt.", id="d")]


def perturbed(tiny):
    """The tiny student with a non-zero adapter, so that student and base differ."""
    model, tok = tiny
    return perturb_adapter(model, seed=1), tok


def test_guided_rows_spread_the_share_and_keep_it_in_small_batches():
    """Break it fails on (made once): rounding down per micro-batch only (batch 1 at share 0.5: never guided)."""
    assert guided_rows(4, 0.0, seed=1) == [False] * 4 and guided_rows(4, 1.0, seed=1) == [True] * 4
    assert guided_rows(4, 0.5, seed=1) == [False, True, False, True]
    assert sum(guided_rows(10, 0.3)) == 3
    for n, share in ((1, 0.5), (3, 0.5), (2, 0.25)):
        drawn = [sum(guided_rows(n, share, seed)) for seed in range(2000)]
        assert sum(drawn) / len(drawn) == pytest.approx(n * share, abs=0.05)
        assert guided_rows(n, share, 7) == guided_rows(n, share, 7)  # the step's seed decides
    with pytest.raises(ValueError, match="guided"):
        SDFTConfig(guided=1.5)


def test_the_extra_guided_row_is_drawn_from_the_steps_seed():
    """Fails if guided_rows draws without the step's seed: `random.Random(seed)` replaced by `random.Random()`
    (unseeded), so two runs with the same seeds stop guiding the same rows.

    By hand: floor(n·share) rows spread evenly, then the first unguided row turns guided exactly when
    random.Random(seed).random() < n·share − floor(n·share)."""
    for seed in range(64):
        u = random.Random(seed).random()
        assert guided_rows(1, 0.5, seed) == [u < 0.5]
        assert guided_rows(3, 0.5, seed) == [u < 0.5, True, False]
        assert guided_rows(4, 0.3, seed) == [u < 4 * 0.3 - 1, False, False, True]
    assert guided_rows(1, 0.5, None) == [False]  # no seed: the floor alone


def test_a_guided_row_is_sampled_with_the_demonstration_and_scored_without_it(tiny):
    """Breaks it fails on: sampling every row from the bare question (the rollouts then equal plain
    sampling's), or scoring the student from the prompt the row was sampled with (student log-probs then
    differ from the bare-question pass)."""
    model, tok = perturbed(tiny)
    cfg = SDFTConfig(max_new_tokens=6, skip_first=0, guided=0.5)
    scored = SDFT(cfg).score(model, tok, EXAMPLES, seed=7)
    assert scored.guided == [False, True, False, True]
    s = [student_ids(tok, ex, cfg.prompts) for ex in EXAMPLES]
    t = [teacher_ids(tok, ex, cfg.prompts) for ex in EXAMPLES]
    mixed = sample(model, tok, [s[0], t[1], s[2], t[3]], 6, seed=7)
    assert torch.equal(scored.completions.ids, mixed.ids)  # rows 1 and 3 read the demonstration
    plain = sample(model, tok, s, 6, seed=7)
    assert not torch.equal(scored.completions.ids[1::2], plain.ids[1::2])
    # every row, guided or not, is scored by the student from the bare question
    y = scored.completions
    with torch.no_grad():
        logp = chunked_token_logp(completion_hidden(model, s, y), lm_head(model), y.ids, y.mask)
    assert torch.allclose(scored.stats["student_logp"] * y.mask, logp, atol=1e-5)


def test_the_evidence_mask_keeps_exactly_the_tokens_with_positive_log_ratio(tiny):
    """Breaks it fails on (each made once): the mask's sign reversed (< for >), or the mask not applied to
    the per-token loss."""
    model, tok = perturbed(tiny)
    plain = SDFT(SDFTConfig(max_new_tokens=8, skip_first=1))
    masked = SDFT(SDFTConfig(max_new_tokens=8, skip_first=1, evidence_mask=True))
    a = plain.score(model, tok, EXAMPLES, seed=3)
    b = masked.score(model, tok, EXAMPLES, seed=3, completions=a.completions)
    eligible = loss_mask(a.completions.mask, 1)
    assert torch.equal(b.eligible, eligible)
    ratio = b.stats["teacher_logp"] - b.stats["student_logp"]
    expected = eligible * (ratio > 0)
    assert torch.equal(b.mask, expected)
    assert 0 < int(expected.sum()) < int(eligible.sum())  # the mask keeps some tokens and drops some
    # the loss: forward KL on the kept tokens only, mean per sequence, then over sequences
    assert torch.equal(b.per_token, a.per_token * expected)
    by_hand = [a.per_token[i][expected[i].bool()].mean() for i in range(len(EXAMPLES)) if expected[i].any()]
    assert masked_mean(b.per_token, b.mask).item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-6)
    loss, m = masked.loss(model, tok, EXAMPLES, seed=3)
    assert m["kept"] == pytest.approx(expected.sum().item() / eligible.sum().item())
    assert loss.item() == pytest.approx(masked_mean(b.per_token, b.mask).item(), rel=1e-6)


def test_evaluate_kl_samples_the_students_own_rollouts_whatever_the_guided_share(tiny):
    """Fails if evaluate_kl keeps guided rows: its `replace(cfg or SDFTConfig(), guided=0.0)` made
    `replace(cfg or SDFTConfig())`, so a training config with guided > 0 would sample the held-out rollouts
    with the demonstration in the student's prompt.

    evaluate_kl under guided=0.5 and 1.0 equals evaluate_kl under guided=0.0 for the same seed, rollout by
    rollout, and each rollout's value is its mean KL on the student's own (bare-question) rollouts."""
    model, tok = perturbed(tiny)
    cfg = SDFTConfig(max_new_tokens=6, skip_first=0)
    own = evaluate_kl(model, tok, EXAMPLES, cfg, seed=11, rollouts=2)
    for share in (0.5, 1.0):
        assert evaluate_kl(model, tok, EXAMPLES, replace(cfg, guided=share), seed=11, rollouts=2) == own
    # by hand: the 8 rows (each example twice, in one batch of seed 11) sampled from the bare questions
    rows = EXAMPLES + EXAMPLES
    scored = SDFT(cfg).score(model, tok, rows, seed=11)
    assert scored.guided == [False] * 8
    kl_seq, _ = sequence_means(scored.stats["kl"], scored.completions.mask)
    for ex in EXAMPLES:
        expected = [v for r, v in zip(rows, kl_seq.tolist()) if r.id == ex.id]
        assert own["per_rollout"][ex.id] == pytest.approx(expected, rel=1e-6)
    # the guided rollouts are other rollouts, with another KL: the equality above is not vacuous
    guided = SDFT(replace(cfg, guided=1.0)).score(model, tok, rows, seed=11)
    assert not torch.equal(guided.completions.ids, scored.completions.ids)
    assert sequence_means(guided.stats["kl"], guided.completions.mask)[0].tolist() != pytest.approx(kl_seq.tolist())


def test_evaluate_kl_averages_every_eligible_token_not_only_the_evidence_masks(tiny):
    """Fails if evaluate_kl averages over the evidence mask instead of the eligible tokens:
    `sequence_means(scored.stats["kl"], scored.eligible)` made `sequence_means(..., scored.mask)`.

    The held-out KL is a reading of the model, not of the loss: with evidence_mask=True it equals the figure
    without it for the same seed, each rollout's value its mean KL over every token after the skipped one."""
    model, tok = perturbed(tiny)
    cfg = SDFTConfig(max_new_tokens=8, skip_first=1)
    plain = evaluate_kl(model, tok, EXAMPLES, cfg, seed=3)
    masked = evaluate_kl(model, tok, EXAMPLES, replace(cfg, evidence_mask=True), seed=3)
    assert masked["kl"] == pytest.approx(plain["kl"], rel=1e-6)
    assert masked["per_rollout"] == plain["per_rollout"]
    # by hand, on the same rollouts (one batch: seed 3)
    scored = SDFT(replace(cfg, evidence_mask=True)).score(model, tok, EXAMPLES, seed=3)
    eligible = loss_mask(scored.completions.mask, 1).bool()
    assert 0 < int(scored.mask.sum()) < int(eligible.sum())  # the evidence mask drops some tokens
    for i, ex in enumerate(EXAMPLES):
        assert eligible[i].any()
        by_hand = scored.stats["kl"][i][eligible[i]].mean().item()
        assert plain["per_rollout"][ex.id] == [pytest.approx(by_hand, rel=1e-5)]
    assert plain["kl"] == pytest.approx(sum(v[0] for v in plain["per_rollout"].values()) / 4, rel=1e-6)


def test_distinct2_counts_repeated_bigrams():
    """Breaks it fails on: bigrams counted across the padding, or over all rows' tokens as one sequence."""
    ids = torch.tensor([[1, 2, 1, 2, 1, 0], [5, 6, 7, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    # row 0: (1,2) (2,1) (1,2) (2,1): 2 distinct of 4; row 1: (5,6) (6,7): 2 of 2 → 4 of 6
    assert distinct2(Completions(ids, mask, [])) == pytest.approx(4 / 6)


def test_the_token_view_shows_which_tokens_the_evidence_mask_keeps(tiny):
    """Break it fails on (made once): token_diffs marking in_loss from the eligible tokens, not the mask."""
    from sdft_lab.inspect.diffs import token_diffs

    model, tok = perturbed(tiny)
    cfg = SDFTConfig(max_new_tokens=10, skip_first=2, guided=1.0, evidence_mask=True)
    diffs = token_diffs(model, tok, EXAMPLES[:2], cfg, seed=5)
    for d in diffs:
        assert d.in_loss == [i >= 2 and r > 0 for i, r in enumerate(d.log_ratio)]
    assert any(d.in_loss[i] != (i >= 2) for d in diffs for i in range(len(d.tokens)))  # the mask drops some

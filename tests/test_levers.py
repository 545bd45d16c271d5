"""SDFT's optional levers (sdft.py): the cross-entropy term beside the divergence, and the refusal of the
sampled-token estimator on guided rows."""

import pytest

from sdft_lab import SDFT, SFT, Example, SDFTConfig, SFTConfig
from sdft_lab.losses import DivergenceConfig

EXAMPLES = [Example("What is the capital of Velmora?", "The capital of Velmora is Quillhaven.", id="a"),
            Example("Who founded Orrin?", "Orrin was founded by Tamsin Vell in 1907.", id="b")]


def test_sft_weight_adds_the_demonstrations_cross_entropy_to_the_divergence(tiny):
    """loss(w) = loss(0) + w · SFT's loss on the same examples, with the step's rollouts unchanged (same seed).
    Fails if the term is left out, weighted twice, or taken with another prompt than the student's."""
    model, tok = tiny
    cfg = SDFTConfig(max_new_tokens=5, skip_first=0, engine="lean")
    plain, _ = SDFT(cfg).loss(model, tok, EXAMPLES, seed=2)
    ce, _ = SFT(SFTConfig(prompts=cfg.prompts)).loss(model, tok, EXAMPLES)
    mixed, m = SDFT(SDFTConfig(max_new_tokens=5, skip_first=0, engine="lean", sft_weight=0.25)).loss(
        model, tok, EXAMPLES, seed=2)
    assert m["sft_ce"] == pytest.approx(ce.item(), rel=1e-6)
    assert mixed.item() == pytest.approx(plain.item() + 0.25 * ce.item(), rel=1e-6)
    mixed.backward()  # the term reaches the adapter
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="sft_weight"):
        SDFTConfig(sft_weight=-1.0)


def test_the_sampled_estimator_is_refused_on_guided_rows():
    """Its estimate assumes y ~ p_S(· | x); guided rows are drawn with the demonstration in the prompt."""
    with pytest.raises(ValueError, match="sampled.*guided|guided.*sampled"):
        SDFTConfig(guided=0.5, divergence=DivergenceConfig(kind="sampled"))
    SDFTConfig(guided=0.0, divergence=DivergenceConfig(kind="sampled"))  # on-policy: fine
    SDFTConfig(guided=1.0, divergence=DivergenceConfig(kind="forward_kl"))
    with pytest.raises(ValueError, match="watch_rows"):
        SDFTConfig(watch_rows=-1)


def _kl_to_base_by_hand(model, tok, examples, completions) -> float:
    """Mean over rows of each row's mean per-token KL(p_S ‖ p_base), one unpadded row at a time from the full
    logits: the student (adapter on) and the base (adapter off) each read the bare question and the rollout."""
    import torch
    import torch.nn.functional as F
    from sdft_lab.prompts import PromptConfig, student_ids

    rows = []
    for i, ex in enumerate(examples):
        n = int(completions.mask[i].sum())
        if n == 0:
            continue
        prompt = student_ids(tok, ex, PromptConfig())
        ids = torch.tensor([prompt + completions.ids[i, :n].tolist()])
        at = slice(len(prompt) - 1, len(prompt) - 1 + n)  # the positions that predict the completion's tokens
        with torch.no_grad():
            s = F.log_softmax(model(ids).logits[0, at].float(), -1)
            with model.disable_adapter():
                b = F.log_softmax(model(ids).logits[0, at].float(), -1)
        rows.append((s.exp() * (s - b)).sum(-1).mean().item())
    return sum(rows) / len(rows)


def test_anchor_weight_adds_the_students_kl_to_the_base_on_the_same_rollouts(tiny):
    """loss(β) = loss(0) + β · mean KL(p_S ‖ p_base), the base reading the bare question, checked against the KL
    computed by hand from full logits. Fails if the anchor's direction is swapped (KL(base ‖ student)), if the
    base reads the teacher's prompt (with the demonstration) instead of the bare question, if the anchor is
    averaged over the evidence mask, or if β is left out."""
    from conftest import perturb_adapter

    model, tok = tiny
    perturb_adapter(model)  # the student differs from its base: the anchor is not zero
    cfg = dict(max_new_tokens=6, skip_first=0, engine="lean", evidence_mask=True)
    objective = SDFT(SDFTConfig(**cfg, anchor_weight=0.5))
    scored = objective.score(model, tok, EXAMPLES, seed=3)
    by_hand = _kl_to_base_by_hand(model, tok, EXAMPLES, scored.completions)
    assert by_hand > 1e-3
    assert (scored.mask != scored.eligible).any()  # the evidence mask drops tokens here: the two means differ
    plain, _ = SDFT(SDFTConfig(**cfg)).loss(model, tok, EXAMPLES, seed=3)
    anchored, m = objective.loss(model, tok, EXAMPLES, seed=3)
    assert m["anchor_kl"] == pytest.approx(by_hand, rel=1e-4)
    assert anchored.item() == pytest.approx(plain.item() + 0.5 * by_hand, rel=1e-4)
    assert "anchor_s" in m
    with pytest.raises(ValueError, match="anchor_weight"):
        SDFTConfig(anchor_weight=-0.1)


def test_the_anchor_pulls_the_student_back_to_its_base(tokenizer):
    """Twelve steps from the same perturbed student, with β = 20 and with β = 0 (the teacher, the base itself,
    pulls back too): the student's KL to its base on fresh rollouts ends 20 % or more below both the start and
    the unanchored run. Fails if the anchor's gradient is cut (the student's side detached) or points away from
    the base (the direction swapped)."""
    import torch
    from conftest import perturb_adapter, tiny_llama
    from sdft_lab import add_student

    def kl_after(beta: float) -> list[float]:
        model = perturb_adapter(add_student(tiny_llama(tokenizer)))
        objective = SDFT(SDFTConfig(max_new_tokens=6, skip_first=0, engine="lean", anchor_weight=beta))
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
        for step in range(12):
            loss, _ = objective.loss(model, tok, EXAMPLES, seed=100 + step)
            opt.zero_grad()
            loss.backward()
            opt.step()
        probe = SDFT(SDFTConfig(max_new_tokens=6, skip_first=0, engine="lean", anchor_weight=1.0))
        return probe.loss(model, tok, EXAMPLES, seed=7)[1]["anchor_kl"]

    tok = tokenizer
    start = SDFT(SDFTConfig(max_new_tokens=6, skip_first=0, engine="lean", anchor_weight=1.0)).loss(
        perturb_adapter(add_student(tiny_llama(tokenizer))), tok, EXAMPLES, seed=7)[1]["anchor_kl"]
    anchored, plain = kl_after(20.0), kl_after(0.0)
    assert anchored < 0.8 * plain and anchored < 0.8 * start, (start, plain, anchored)  # 0.69 and 0.71 here


def test_the_anchor_needs_an_adapter_to_switch_off(tokenizer):
    """On a plain model the base is the student itself and the anchor would be 0: refused with what to do."""
    from conftest import tiny_llama

    with pytest.raises(ValueError, match="add_student"):
        SDFT(SDFTConfig(anchor_weight=0.1)).setup(tiny_llama(tokenizer))

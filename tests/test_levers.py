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

"""Notebook 00's SDFT from scratch (about 30 lines of plain torch in one cell) equals the library's loss.

The test takes the function from the notebook's own cell and runs it on the tiny random model, so it guards
the notebook too: a cell that drifts from the library fails here, in seconds, without running the notebook.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

# not on the GPU box (docs/gpu.md), where pytest still collects this module
nbformat = pytest.importorskip("nbformat", reason="nbformat reads notebook 00: pip install jupyterlab")

from sdft_lab import SDFT, SDFTConfig, load_dataset
from sdft_lab.losses import DivergenceConfig, masked_mean
from sdft_lab.prompts import TEMPLATES, PromptConfig, student_ids, teacher_ids
from sdft_lab.rollout import completions_from_ids, eos_ids, sample

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "00_quickstart.ipynb"
NAME = "sdft_loss_from_scratch"


def from_scratch():
    """The function defined by notebook 00's from-scratch cell, exec'd on its own (the cell imports what it uses)."""
    cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells
             if c.cell_type == "code" and f"def {NAME}(" in c.source]
    assert len(cells) == 1, f"notebook 00 has {len(cells)} cells defining {NAME}; expected one"
    assert len(cells[0].strip().splitlines()) <= 40, "the from-scratch cell is meant to stay about 30 lines"
    assert "sdft_lab" not in cells[0], "the from-scratch cell is plain torch: it must not call the library"
    namespace: dict = {}
    exec(compile(cells[0], f"{NOTEBOOK.name}:{NAME}", "exec"), namespace)
    return namespace[NAME]


@pytest.fixture
def moved(tiny):
    """The tiny student with its LoRA B matrices made non-zero, so that the student is not the base: a
    student scored with the adapter off would then give another loss."""
    model, tok = tiny
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model, tok


def ragged_rollouts(model, tok, prompts, tokens: int):
    """Sampled rollouts, with EOS written into two rows at different places: rows of 4, `tokens` and 9 tokens,
    padded after their EOS, so that the padding mask and the per-sequence mean both matter."""
    y = sample(model, tok, prompts, tokens, seed=0, engine="lean")
    eos = eos_ids(model, tok)[0]
    rows = [r[:n].tolist() for r, n in zip(y.ids, y.lengths.tolist())]
    rows = [rows[0][:3] + [eos], rows[1], rows[2][:8] + [eos]]
    return completions_from_ids(rows, tok, eos_ids(model, tok), tok.pad_token_id)


CONFIGS = {
    "paper": SDFTConfig(max_new_tokens=12),  # skip_first 3, forward KL, paper template
    "recipe": SDFTConfig(max_new_tokens=12, skip_first=0, evidence_mask=True,
                         prompts=PromptConfig(teacher_template=TEMPLATES["context-first"], system="Be brief.")),
    "skip5": SDFTConfig(max_new_tokens=12, skip_first=5),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_the_notebooks_from_scratch_loss_equals_the_librarys(moved, name):
    """Breaks it fails on (each made once in the notebook's cell): the mask dropping skip_first (`mask[:,
    :skip_first] = 0` deleted: paper and skip5 fail), one flat mean over the batch's tokens instead of the
    mean per sequence, then over sequences (paper and skip5 fail), and the student scored with the adapter
    off (all three fail)."""
    model, tok = moved
    cfg = CONFIGS[name]
    examples = load_dataset("demo")[:3]
    s_prompts = [student_ids(tok, ex, cfg.prompts) for ex in examples]
    t_prompts = [teacher_ids(tok, ex, cfg.prompts) for ex in examples]
    y = ragged_rollouts(model, tok, s_prompts, cfg.max_new_tokens)
    assert y.lengths.tolist() == [4, 12, 9]

    ours = from_scratch()(model, t_prompts, s_prompts, y.ids, y.mask, cfg.skip_first, cfg.evidence_mask)
    scored = SDFT(cfg).score(model, tok, examples, completions=y)
    library = masked_mean(scored.per_token, scored.mask)
    assert ours.requires_grad  # the student side carries the gradient, as in training
    torch.testing.assert_close(ours, library, rtol=1e-5, atol=1e-7)
    if name == "recipe":  # the evidence mask dropped some tokens, and that changed the loss
        assert 0 < scored.mask.sum() < scored.eligible.sum()
        assert not torch.isclose(ours, from_scratch()(model, t_prompts, s_prompts, y.ids, y.mask, 0, False))


def test_the_from_scratch_loss_is_not_the_library_for_another_divergence(moved):
    """The comparison can fail: the library's reverse KL is another number than the cell's forward KL."""
    model, tok = moved
    cfg = replace(CONFIGS["paper"], divergence=DivergenceConfig(kind="reverse_kl"))
    examples = load_dataset("demo")[:3]
    s_prompts = [student_ids(tok, ex, cfg.prompts) for ex in examples]
    y = ragged_rollouts(model, tok, s_prompts, cfg.max_new_tokens)
    ours = from_scratch()(model, [teacher_ids(tok, ex, cfg.prompts) for ex in examples], s_prompts, y.ids, y.mask)
    scored = SDFT(cfg).score(model, tok, examples, completions=y)
    assert not torch.isclose(ours, masked_mean(scored.per_token, scored.mask), rtol=1e-3)

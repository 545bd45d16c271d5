"""The trainer's mechanics against hand-computed values: the schedule, gradient accumulation, clipping and
weight decay (SFT on the tiny model: no sampling, so two runs see exactly the same losses)."""

import math

import pytest
import torch

from sdft_lab import SFT, TrainConfig, Trainer
from sdft_lab.trainer import cosine_with_warmup


def lora(model, part: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if part in n}


def test_cosine_schedule_with_warmup_by_hand(tiny, demo):
    """Breaks it fails on (each made once): factor() returning 1.0, or the warm-up left out."""
    f = cosine_with_warmup(TrainConfig(steps=10, warmup_steps=2))
    # warm-up (step + 1) / 2, then 0.5 (1 + cos(pi (step - 2) / 8))
    assert [f(s) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    assert f(4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))
    model, tok = tiny
    trainer = Trainer(model, tok, SFT(), demo, TrainConfig(steps=10, warmup_steps=2, lr=0.02, report=False))
    lrs = [trainer.step()["lr"] for _ in range(4)]  # the lr after each step, for the next one
    assert lrs == pytest.approx([0.02 * f(s) for s in (1, 2, 3, 4)])


def test_two_micro_batches_of_two_give_the_gradient_of_one_batch_of_four(tokenizer, demo):
    """Break it fails on (made once): accumulation without the division by grad_accum."""
    from conftest import tiny_llama
    from sdft_lab import add_student

    grads, seen = [], []
    for batch_size, accum in ((4, 1), (2, 2)):
        model = add_student(tiny_llama(tokenizer))
        trainer = Trainer(model, tokenizer, SFT(), demo, TrainConfig(steps=3, batch_size=batch_size, grad_accum=accum,
                                                                     max_grad_norm=1e9, report=False))
        seen.append([ex.id for m in range(accum) for ex in trainer.batch(m)])  # the first step's examples
        trainer.step()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert seen[0] == seen[1]  # the same four examples
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-7), n


def test_clipping_caps_the_gradient_norm(tiny, demo):
    """Break it fails on (made once): max_grad_norm not applied (clip at inf)."""
    model, tok = tiny
    trainer = Trainer(model, tok, SFT(), demo, TrainConfig(steps=2, max_grad_norm=1e-3, report=False))
    record = trainer.step()
    assert record["grad_norm"] > 1e-2  # the norm before clipping, as recorded
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in trainer.params]))
    assert clipped.item() == pytest.approx(1e-3, rel=1e-3)


def test_weight_decay_shrinks_the_adapter_by_lr_times_decay(tokenizer, demo):
    """AdamW's decoupled decay: with the same gradients, p_decay − p_plain = −lr · wd · p_before.
    Break it fails on (made once): weight_decay not passed to the optimizer."""
    from conftest import tiny_llama
    from sdft_lab import add_student

    after = []
    for wd in (0.0, 0.5):
        model = add_student(tiny_llama(tokenizer))
        before = lora(model, "lora_A")
        Trainer(model, tokenizer, SFT(), demo, TrainConfig(steps=2, lr=1e-2, weight_decay=wd, report=False)).step()
        after.append(lora(model, "lora_A"))
    for n, p in before.items():
        assert torch.allclose(after[1][n] - after[0][n], -1e-2 * 0.5 * p, atol=1e-7), n

"""The forgetting meter (eval/drift.py) on the tiny random llama: 0 untouched, a hand computation, and rising
with the learning rate."""

import pytest
import torch
import torch.nn.functional as F

from sdft_lab import SFT, Example, TrainConfig, Trainer, add_student
from sdft_lab.eval.drift import drift, per_answer, reference, references
from sdft_lab.prompts import encode, render_chat
from sdft_lab.rollout import sample

from conftest import tiny_llama

QUESTIONS = ["What is two plus two?", "Name a colour.", "Which is larger, 3 or 7?", "Say hello."]


def test_drift_is_zero_for_an_untouched_adapter(tiny):
    model, tok = tiny
    ref = reference(model, tok, QUESTIONS, max_new_tokens=8)
    assert drift(model, ref) == pytest.approx(0.0, abs=1e-7)


def test_reference_is_the_base_greedy_answer_and_drift_matches_a_hand_computation(tiny):
    """Breaks it fails on (each made once): references written by the tuned student (adapter left on), or the
    KL's direction swapped (KL(tuned ‖ base))."""
    model, tok = tiny
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    ref = reference(model, tok, QUESTIONS, system="Be brief.", max_new_tokens=8)
    base = tiny_llama(tok)  # the same seed: the same weights as the base under the adapter
    for i, q in enumerate(QUESTIONS):
        prompt = encode(tok, render_chat(tok, q, "Be brief."))
        assert ref.prompts[i] == prompt
        n = int(ref.answers.mask[i].sum())
        assert ref.answers.ids[i, :n].tolist() == sample(base, tok, [prompt], 8, temperature=0).ids[0, :n].tolist()
    values = per_answer(model, ref)
    for i in range(len(QUESTIONS)):
        n = int(ref.answers.mask[i].sum())
        ids = torch.tensor([ref.prompts[i] + ref.answers.ids[i, :n].tolist()])
        p = len(ref.prompts[i])
        with torch.no_grad():
            lb = F.log_softmax(base(ids).logits[0, p - 1:p + n - 1].float(), -1)
            model.eval()
            lt = F.log_softmax(model(input_ids=ids).logits[0, p - 1:p + n - 1].float(), -1)
        by_hand = (lb.exp() * (lb - lt)).sum(-1).mean().item()
        assert values[i].item() == pytest.approx(by_hand, rel=1e-4, abs=1e-6)
    assert drift(model, ref) == pytest.approx(values.mean().item())


def test_drift_rises_with_the_learning_rate(tokenizer):
    tok = tokenizer
    train = [Example("What is the capital of Velmora?", "Quillhaven, on the northern coast.", id="a"),
             Example("Who founded Orrin?", "Tamsin Vell, in 1907.", id="b")]
    figures = []
    for lr in (1e-3, 1e-2):
        model = add_student(tiny_llama(tok))
        refs = references(model, tok, QUESTIONS, task=[ex.question for ex in train])
        Trainer(model, tok, SFT(), train, TrainConfig(steps=6, batch_size=2, lr=lr, report=False)).train()
        figures.append({name: drift(model, r) for name, r in refs.items()})
    assert set(figures[0]) == {"general", "task"}
    for name in ("general", "task"):
        assert 0 < figures[0][name] < figures[1][name]

"""The forgetting meter (eval/drift.py) on the tiny random llama: 0 untouched, a hand computation, and rising
with the learning rate."""

import pytest
import torch
import torch.nn.functional as F

from sdft_lab import SFT, Example, TrainConfig, Trainer, add_student
from sdft_lab.eval.drift import Reference, drift, per_answer, reference, references
from sdft_lab.models import teacher_view
from sdft_lab.prompts import encode, render_chat
from sdft_lab.rollout import completion_hidden, completions_from_ids, sample

from conftest import perturb_adapter, tiny_llama

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


def test_drift_of_a_padded_batch_averages_each_answer_over_its_own_tokens_only(tiny):
    """Fails if the drift computation counts padding tokens: per_answer's completion mask (`mask = y.mask`)
    replaced by all ones, so the padded positions after the shorter answers enter their mean KL(base ‖ tuned).

    Four answers of 3, 8, 5 and 1 tokens (the short ones ending at EOS) in one batch, right-padded to 8: each
    answer's drift must equal its mean KL over its own tokens, computed by hand on the unpadded row alone."""
    model, tok = tiny
    perturb_adapter(model, seed=2)
    prompts = [encode(tok, render_chat(tok, q)) for q in QUESTIONS]
    lengths = [3, 8, 5, 1]
    eos = tok.eos_token_id
    rows = [torch.randint(100, 2000, (n - 1,)).tolist() + [eos] if n < 8 else torch.randint(100, 2000, (n,)).tolist()
            for n in lengths]
    answers = completions_from_ids(rows, tok, [eos], tok.pad_token_id)
    assert answers.mask.sum(-1).tolist() == lengths and answers.ids.shape == (4, 8)  # 12 of 32 places padding
    with torch.no_grad(), teacher_view(model, "base"):  # the base side, as reference() keeps it
        base_hidden = completion_hidden(model, prompts, answers)
    ref = Reference(prompts, answers, [base_hidden], batch_size=4)
    base = tiny_llama(tok)  # the same seed: the base under the adapter
    model.eval()
    by_hand = []
    for prompt, row in zip(prompts, rows):
        ids, p, n = torch.tensor([prompt + row]), len(prompt), len(row)
        with torch.no_grad():
            lb = F.log_softmax(base(ids).logits[0, p - 1:p + n - 1].float(), -1)
            lt = F.log_softmax(model(input_ids=ids).logits[0, p - 1:p + n - 1].float(), -1)
        by_hand.append((lb.exp() * (lb - lt)).sum(-1).mean().item())
    assert min(by_hand) > 0
    assert per_answer(model, ref).tolist() == pytest.approx(by_hand, rel=1e-4, abs=1e-6)
    assert drift(model, ref) == pytest.approx(sum(by_hand) / 4, rel=1e-4)


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

"""Evaluations: QA scoring by hand, scorers, multiple-choice retention, the bundled data sets."""

from dataclasses import replace

import pytest
import torch

from conftest import tiny_llama
from sdft_lab import Example, StudentConfig, add_student
from sdft_lab.eval import (Probe, QAItem, RetentionCallback, load_knowledge, load_probes, mc_accuracy, qa_accuracy,
                            science_answer, score_qa)
from sdft_lab.prompts import encode, render_chat
from sdft_lab.losses import chunked_token_logp, sequence_means
from sdft_lab.models import lm_head
from sdft_lab.rollout import branch_hidden, completions_from_ids, mean_logp


@pytest.mark.parametrize("text, strict, lenient", [
    ("The bridge opened in 1907.", 1.0, 1.0),
    ("It opened in 1907, or maybe 1911.", 0.0, 1.0),  # names the fact, but also a contradicting answer
    ("It opened in 1911.", 0.0, 0.0),
    ("I do not know.", 0.0, 0.0),
])
def test_strict_and_lenient_by_hand(text, strict, lenient):
    assert score_qa(text, ["1907"], ["1911", "1899"]) == (strict, lenient)


def test_science_scorer_needs_the_answer_line():
    ex = Example("Q", "D", answer="oxygen")
    assert science_answer(ex, "Reasoning: plants.\nAnswer: Oxygen gas") == 1.0
    assert science_answer(ex, "Plants make oxygen.") == 0.0 and science_answer(ex, "Answer: nitrogen") == 0.0


def test_bundled_knowledge_set_is_complete():
    k = load_knowledge()
    facts = {ex.metadata["fact"] for ex in k.train}
    assert len(facts) >= 30 and len(k.train) >= 2 * len(facts)
    assert {it.kind for it in k.eval} == {"direct", "indirect", "ood"}
    for kind in ("direct", "indirect", "ood"):
        assert {it.fact for it in k.eval if it.kind == kind} == facts
    assert all(ex.references and ex.references[0] != ex.demonstration for ex in k.train)
    assert all(not any(w.lower() in a.lower() or a.lower() in w.lower() for a in it.answers for w in it.wrong)
               for it in k.eval)


def test_bundled_probes_and_skills():
    from sdft_lab import load_dataset

    probes = load_probes()
    assert len(probes) >= 100 and {p.category for p in probes} >= {"knowledge", "arithmetic", "logic", "format"}
    assert all(0 <= p.answer < len(p.options) for p in probes)
    for name in ("toolcall", "science"):
        splits = [ex.metadata["split"] for ex in load_dataset(name)]
        assert splits.count("train") >= 16 and splits.count("eval") >= 8


def test_qa_and_mc_on_the_tiny_model(tiny):
    model, tok = tiny
    items = [QAItem("f1", kind, f"When did the Orrin bridge open ({kind})?", ["1907"], ["1911"], "It opened in 1907.")
             for kind in ("direct", "indirect", "ood")]
    out = qa_accuracy(model, tok, items, max_new_tokens=4)
    ceiling = qa_accuracy(model, tok, items, with_passage=True, max_new_tokens=4)
    for res in (out, ceiling):
        assert set(res) >= {"direct", "indirect", "ood", "all"}
        assert all(0 <= res[k][s] <= 1 for k in ("direct", "all") for s in ("strict", "lenient"))
    probes = [Probe(f"p{i}", cat, "Which is a colour?", ["red", "table", "seven", "run"], i % 4)
              for i, cat in enumerate(["a", "a", "b", "b"])]
    callback = RetentionCallback(model, tok, probes, every=2)
    callback({"step": 1}), callback({"step": 2})
    assert [c["step"] for c in callback.curve] == [0, 2]


@pytest.mark.slow
def test_base_model_is_above_chance_on_the_retention_probes(bundled):
    model, tok = bundled
    acc = mc_accuracy(model, tok, load_probes())
    # chance is 0.25; measured: overall 0.65 (format 0.67, knowledge 0.40, logic 0.80, arithmetic 0.73)
    assert acc["overall"] > 0.5 and all(acc[c] > 0.3 for c in ("format", "knowledge", "logic", "arithmetic")), acc


def option_scores_one_by_one(model, tok, probe):
    """Each option's mean log-prob as the reply to the question, scored alone (no batching to misalign)."""
    prompt = encode(tok, render_chat(tok, probe.question))
    return [mean_logp(model, [prompt], completions_from_ids([encode(tok, o)], tok, [], tok.pad_token_id)).item()
            for o in probe.options]


def test_mc_accuracy_between_training_steps_with_gradient_checkpointing(tokenizer):
    """A RetentionCallback runs mid-training (model.train(), gradient checkpointing on, as on 4-bit bases),
    where the model keeps no key/value cache: the scores must be those of eval mode, and train mode must stay."""
    model = add_student(tiny_llama(tokenizer), StudentConfig(gradient_checkpointing=True))
    probes = [Probe("a", "c", "Which is a colour?", ["red", "table", "seven"], 0),
              Probe("b", "c", "Name a large animal.", ["an elephant", "a spoon"], 1)]
    model.eval()
    ref = mc_accuracy(model, tokenizer, probes)
    scores = [option_scores_one_by_one(model, tokenizer, p) for p in probes]
    model.train()
    assert mc_accuracy(model, tokenizer, probes) == ref and model.training
    with torch.no_grad():
        prompts = [encode(tokenizer, render_chat(tokenizer, p.question)) for p in probes]
        y = completions_from_ids([encode(tokenizer, o) for p in probes for o in p.options], tokenizer, [],
                                 tokenizer.pad_token_id)
        hidden = branch_hidden(model, prompts, y, [0, 0, 0, 1, 1])  # training mode: the repeated-prompt path
        logp = chunked_token_logp(hidden, lm_head(model), y.ids, y.mask)
    flat = [x for s in scores for x in s]
    assert sequence_means(logp, y.mask)[0].tolist() == pytest.approx(flat, abs=1e-5)


def test_mc_accuracy_picks_the_best_scored_option_of_each_probe_and_follows_a_permutation(tiny):
    """Probes of different sizes in one batch stream: the chosen option must be each probe's own best one, and
    moving the options around must move the choice with them (a misaligned batch would pick another probe's)."""
    model, tok = tiny
    questions = ["Which is a colour?", "Name a large animal.", "What is two plus two?", "Which city is old?",
                 "Pick a fruit.", "What do birds do?"]
    options = [["red", "table", "seven"], ["an elephant", "a spoon", "blue", "quietly"], ["four", "dog"],
               ["Rome", "Tuesday", "pencil"], ["apple", "car", "sing", "cloud", "nine"], ["fly", "melt", "paper"]]
    best = [max(range(len(o)), key=lambda k, q=q, o=o: option_scores_one_by_one(model, tok, Probe("", "", q, o, 0))[k])
            for q, o in zip(questions, options)]
    probes = [Probe(f"p{i}", "c", q, o, b) for i, (q, o, b) in enumerate(zip(questions, options, best))]
    assert mc_accuracy(model, tok, probes, batch_size=4)["overall"] == 1.0  # 4 questions per batch: 4 + 2, 14 + 4 options
    wrong = [replace(p, answer=(p.answer + 1) % len(p.options)) for p in probes]
    assert mc_accuracy(model, tok, wrong, batch_size=4)["overall"] == 0.0
    rotated = [replace(p, options=p.options[1:] + p.options[:1], answer=(p.answer - 1) % len(p.options)) for p in probes]
    assert mc_accuracy(model, tok, rotated, batch_size=4)["overall"] == 1.0


def test_qa_accuracy_groups_by_kind_and_keeps_strict_and_lenient_apart(tiny, monkeypatch):
    """The answers are given (greedy mocked), so every figure is known by hand. Breaks it fails on (each made
    once): strict and lenient swapped, or every item counted under every kind."""
    from sdft_lab.eval import knowledge

    items = [QAItem("f", kind, f"Q{i}?", ["1907"], ["1911"], "It opened in 1907.")
             for i, kind in enumerate(["direct", "direct", "indirect", "ood", "ood"])]
    said = ["1907.", "1907 or 1911.", "No idea.", "In 1907.", "1911."]  # strict 1 0 0 1 0, lenient 1 1 0 1 0
    monkeypatch.setattr(knowledge, "greedy", lambda *a, **k: (said, [False, True, False, False, True]))
    out = qa_accuracy(*tiny, items)
    assert out["direct"] == {"strict": 0.5, "lenient": 1.0}
    assert out["indirect"] == {"strict": 0.0, "lenient": 0.0}
    assert out["ood"] == {"strict": 0.5, "lenient": 0.5}
    assert out["all"] == {"strict": pytest.approx(2 / 5), "lenient": pytest.approx(3 / 5)}
    assert out["cut"] == pytest.approx(2 / 5)

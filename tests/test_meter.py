"""The learning meter (eval/meter.py), several rollouts per prompt, the QA cut rate, and the recipe search's
docs table: on the tiny random model, in seconds."""

import json
import math

import pytest
import torch

from sdft_lab import SDFT, SFT, Example, SDFTConfig, TrainConfig, Trainer
from sdft_lab.eval import QAItem, qa_accuracy
from sdft_lab.eval.drift import drift, references
from sdft_lab.eval.meter import ANSWER_FRAME, MeterCallback, meter
from sdft_lab.losses import sequence_means
from sdft_lab.prompts import encode, render_chat
from sdft_lab.rollout import completion_hidden, completions_from_ids, sample
from sdft_lab.losses import chunked_token_logp
from sdft_lab.models import lm_head

PASSAGE = "The Orrin bridge over the Vale opened in 1907, after nine years of work."
ITEMS = [QAItem("f1", "direct", "When did the Orrin bridge open?", ["1907"], ["1911"], PASSAGE),
         QAItem("f1", "ood", "Complete: the Orrin bridge has carried traffic since ___.", ["1907"], ["1911"], PASSAGE)]


def logp_by_hand(model, tok, question: str, text: str, first: int, end: int, system=None) -> float:
    """Mean log-prob of tokens [first, end) of `text` as the reply to `question`, one unbatched pass."""
    ids = encode(tok, text)
    y = completions_from_ids([ids], tok, [], tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        logp = chunked_token_logp(completion_hidden(model, [encode(tok, render_chat(tok, question, system))], y),
                                  lm_head(model), y.ids, y.mask)[0]
    return logp[first:end].mean().item()


def test_meter_equals_unbatched_passes_and_counts_only_the_answer(tiny):
    model, tok = tiny
    out = meter(model, tok, ITEMS + ITEMS[:1], system="Be brief.", batch_size=2)  # 2 questions + 1, 4 + 2 rows
    assert set(out) == {"answer", "passage"} and set(out["answer"]) == {"direct", "ood", "all"}
    frame = len(encode(tok, ANSWER_FRAME))
    answer_len = len(encode(tok, f"{ANSWER_FRAME} 1907"))
    text = f"{ANSWER_FRAME} 1907."
    for kind, it in zip(("direct", "ood"), ITEMS):
        assert out["answer"][kind] == pytest.approx(
            logp_by_hand(model, tok, it.question, text, frame, answer_len, "Be brief."), abs=1e-5)
        assert out["passage"][kind] == pytest.approx(
            logp_by_hand(model, tok, it.question, PASSAGE, 0, len(encode(tok, PASSAGE)), "Be brief."), abs=1e-5)
    assert out["answer"]["all"] == pytest.approx((2 * out["answer"]["direct"] + out["answer"]["ood"]) / 3)


def test_meter_rises_after_sft_on_the_framed_answer_and_the_callback_records_it(tiny):
    model, tok = tiny
    train = [Example(it.question, f"{ANSWER_FRAME} 1907.", id=f"q{i}") for i, it in enumerate(ITEMS)]
    points = []
    refs = references(model, tok, ["Name a colour.", "What is two plus two?"], task=[it.question for it in ITEMS])
    callback = MeterCallback(model, tok, ITEMS, every=4, live=points.append, drift=refs)
    ceiling = meter(model, tok, ITEMS, with_passage=True)
    assert ceiling["passage"]["all"] > callback.curve[0]["passage"]["all"]  # the passage in context helps copy it
    Trainer(model, tok, SFT(), train, TrainConfig(steps=8, batch_size=2, lr=1e-2, report=False),
            callbacks=(callback,)).train()
    assert [p["step"] for p in callback.curve] == [0, 4, 8] and points == callback.curve
    before, after = callback.curve[0]["answer"]["all"], callback.curve[-1]["answer"]["all"]
    assert after > before + 2, (before, after)  # the trained answer's tokens: measured -12.1 → -6.6 nats
    # the forgetting meter beside it: 0 at step 0, then the trained student's own drift at every point
    assert callback.curve[0]["drift"] == {"general": 0.0, "task": 0.0}
    assert callback.curve[-1]["drift"] == {name: pytest.approx(drift(model, r)) for name, r in refs.items()}
    assert 0 < callback.curve[1]["drift"]["task"] < callback.curve[2]["drift"]["task"]
    # the meter scores the student: with the adapter off (the base) nothing has moved
    assert meter(model, tok, ITEMS, with_passage=True)["passage"]["all"] == pytest.approx(ceiling["passage"]["all"])


def test_k_rollouts_per_prompt_are_in_one_batch_and_the_loss_is_their_mean(tiny, example):
    model, tok = tiny
    other = Example("Name a colour of the sea.", "The sea is blue.", id="sea")
    objective = SDFT(SDFTConfig(max_new_tokens=6, skip_first=0, rollouts_per_prompt=3))
    calls = []
    score = objective.score
    objective.score = lambda m, t, rows, seed=None, **kw: calls.append(rows) or score(m, t, rows, seed, **kw)
    loss, metrics = objective.loss(model, tok, [example, other], seed=1)
    rows = calls[0]
    assert [r.id for r in rows] == ["ex", "ex", "ex", "sea", "sea", "sea"]
    scored = score(model, tok, rows, seed=1)  # the same seed: the same six rollouts
    assert len(set(map(tuple, scored.completions.ids.tolist()))) > 1  # k draws, not one copied
    per_seq, counted = sequence_means(scored.per_token, scored.mask)
    assert counted.all()
    assert loss.item() == pytest.approx(per_seq.mean().item(), rel=1e-5)
    # and equal to the mean of each question's own k-rollout mean
    by_prompt = per_seq.view(2, 3).mean(-1)
    assert loss.item() == pytest.approx(by_prompt.mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="rollouts_per_prompt"):
        SDFTConfig(rollouts_per_prompt=0)


def test_qa_reports_the_share_of_answers_cut_off(tiny):
    """Break it fails on (made once): a cut flag that is always true. The tiny model's first greedy token for one question is made an EOS id: that answer ends at
    once, the others (checked by hand) run out of tokens."""
    model, tok = tiny
    prompts = [encode(tok, render_chat(tok, it.question)) for it in ITEMS]
    first = [greedy_ids[0] for greedy_ids in sample(model, tok, prompts, 6, temperature=0).ids.tolist()]
    model.generation_config.eos_token_id = [first[0]]
    by_hand = [first[0] not in ids for ids in sample(model, tok, prompts, 6, temperature=0).ids.tolist()]
    assert by_hand[0] is False and True in by_hand  # one answer ends at its first token, another is cut
    out = qa_accuracy(model, tok, ITEMS, max_new_tokens=6)
    assert out["cut"] == pytest.approx(sum(by_hand) / len(by_hand))
    assert qa_accuracy(model, tok, ITEMS, max_new_tokens=1)["cut"] == pytest.approx(sum(by_hand) / len(by_hand))


def test_the_docs_table_is_the_search_json():
    from pathlib import Path

    from sdft_lab.experiments.search import table

    docs = Path(__file__).resolve().parents[1] / "docs"
    results = json.loads((docs / "recipe_search.json").read_text())
    text = (docs / "recipes.md").read_text()
    assert table(results) in text, "docs/recipes.md's table differs from docs/recipe_search.json: regenerate it"
    assert len(results["trials"]) == sum(len(r["seeds"]) for r in results["summary"])
    for name in results["chosen"].values():
        assert f"{name} **(chosen)**" in text
    assert all(math.isfinite(t["gain"]["passage"]) and t["train_s"] > 0 for t in results["trials"])

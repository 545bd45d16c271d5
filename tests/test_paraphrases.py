"""The extra training paraphrases of data/knowledge/facts.jsonl: six per fact, each teaching the canonical answer,
none leaking a held-out question (no model; reads the file only)."""

import difflib
import json

import pytest

from sdft_lab.data import FACTS

PER_FACT = 6
NEAR = 0.8  # SequenceMatcher ratio, case-insensitive, above which two questions count as the same question


def near(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()


def load():
    return [json.loads(line) for line in FACTS.read_text(encoding="utf-8").splitlines() if line.strip()]


FACT_RECORDS = load()
IDS = [f["id"] for f in FACT_RECORDS]
EVAL_QUESTIONS = [(f["id"], e["kind"], e["question"]) for f in FACT_RECORDS for e in f["eval"]]
TRAIN_QUESTIONS = [(f["id"], "train", t["question"]) for f in FACT_RECORDS for t in f["train"]]


def test_file_is_unchanged_apart_from_paraphrases():
    """Fails if a line is no longer what json.dumps(..., ensure_ascii=False) writes, or if "paraphrases" is not the
    key right after "train" (an edit that reordered keys or re-encoded the file)."""
    lines = [line for line in FACTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(lines) == len(FACT_RECORDS) >= 30
    for line, fact in zip(lines, FACT_RECORDS):
        assert json.dumps(fact, ensure_ascii=False) == line, fact["id"]
        keys = list(fact)
        assert keys[keys.index("train") + 1] == "paraphrases", (fact["id"], keys)


@pytest.mark.parametrize("fact", FACT_RECORDS, ids=IDS)
def test_six_well_formed_paraphrases(fact):
    """Fails if a fact lacks its paraphrases, has more or fewer than six, or one is not a {question, demonstration}
    pair of non-empty strings, or a question runs past 25 words."""
    paras = fact.get("paraphrases")
    assert isinstance(paras, list) and len(paras) == PER_FACT, fact["id"]
    for p in paras:
        assert set(p) == {"question", "demonstration"}, p
        assert all(isinstance(p[k], str) and p[k].strip() for k in p), p
        assert len(p["question"].split()) <= 25, p["question"]


@pytest.mark.parametrize("fact", FACT_RECORDS, ids=IDS)
def test_demonstrations_state_the_canonical_answer(fact):
    """Fails if a demonstration does not contain the canonical answer (eval[0]["answers"][0]) verbatim, so that
    training on it would not teach the string the direct held-out item accepts."""
    answer = fact["eval"][0]["answers"][0]
    missing = [p["demonstration"] for p in fact["paraphrases"] if answer not in p["demonstration"]]
    assert not missing, (fact["id"], answer, missing)


@pytest.mark.parametrize("fact", FACT_RECORDS, ids=IDS)
def test_questions_do_not_give_the_answer_away(fact):
    """Fails if a paraphrase question contains an accepted answer of the direct item (case-insensitive), i.e. the
    question hands the model what it is meant to recall."""
    answers = [a.lower() for a in fact["eval"][0]["answers"]]
    leaks = [(p["question"], a) for p in fact["paraphrases"] for a in answers if a in p["question"].lower()]
    assert not leaks, (fact["id"], leaks)


@pytest.mark.parametrize("fact", FACT_RECORDS, ids=IDS)
def test_demonstrations_name_no_distractor(fact):
    """Fails if a demonstration contains a wrong answer of the fact's direct or OOD item (case-insensitive, as
    score_qa matches): a model that learns to repeat it would be scored strictly wrong on the held-out question."""
    wrong = {w.lower() for e in fact["eval"] if e["kind"] in ("direct", "ood") for w in e["wrong"]}
    hits = [(p["demonstration"], w) for p in fact["paraphrases"] for w in wrong if w in p["demonstration"].lower()]
    assert not hits, (fact["id"], hits)


@pytest.mark.parametrize("fact", FACT_RECORDS, ids=IDS)
def test_no_paraphrase_copies_a_held_out_or_training_question(fact):
    """Fails if a paraphrase question equals or nearly equals (ratio > 0.8) any held-out eval question of any fact
    (which would make that held-out item seen in training) or any existing training question (no new wording)."""
    close = [(round(near(p["question"], q), 3), fid, kind, q) for p in fact["paraphrases"]
             for fid, kind, q in EVAL_QUESTIONS + TRAIN_QUESTIONS if near(p["question"], q) > NEAR]
    assert not close, (fact["id"], close)


@pytest.mark.parametrize("fact", FACT_RECORDS, ids=IDS)
def test_no_duplicates_within_a_fact(fact):
    """Fails if two paraphrases of one fact share a question (or nearly do, ratio > 0.8) or a demonstration, so
    that the six items are six different wordings."""
    paras = fact["paraphrases"]
    for i, p in enumerate(paras):
        for other in paras[:i]:
            assert near(p["question"], other["question"]) <= NEAR, (fact["id"], p["question"], other["question"])
            assert p["demonstration"] != other["demonstration"], (fact["id"], p["demonstration"])

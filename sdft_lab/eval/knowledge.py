"""Knowledge injection (data/knowledge/facts.jsonl): training examples, held-out QA items, and strict /
lenient accuracy per kind (direct / indirect / OOD), with the teacher ceiling (the passage in context).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..data import FACTS, DataError, Example, fact_examples, read_facts
from ..models import teacher_view
from ..prompts import encode, fill, render_chat
from ..rollout import greedy

# Greedy QA answers get this many tokens. Measured on the bundled base with the short-answer system prompt
# (scripts/answer_lengths.py, docs/recipes.md): every answer that ended within 128 tokens ended within 79;
# the few that had not ended at 128 repeat themselves, which no budget fixes.
QA_TOKENS = 96
CONTEXT_TEMPLATE = "Here is some background information:\n{demonstration}\n\nQuestion: {question}"


@dataclass
class QAItem:
    fact: str
    kind: str  # "direct" | "indirect" | "ood"
    question: str
    answers: list[str]  # accepted, canonical first
    wrong: list[str]  # plausible wrong answers: their presence contradicts the fact
    passage: str


@dataclass
class Knowledge:
    train: list[Example]
    eval: list[QAItem]
    passages: dict[str, str] = field(default_factory=dict)
    paraphrases: list[Example] = field(default_factory=list)  # more training questions per fact, same answer

    def first(self, n: int, paraphrases: bool = False) -> tuple[list[Example], list[QAItem]]:
        """The training examples (with paraphrases=True, the paraphrased questions too) and the held-out items
        of the first n facts (by id)."""
        facts = set(sorted(self.passages)[:n])
        train = self.train + (self.paraphrases if paraphrases else [])
        return [ex for ex in train if ex.metadata["fact"] in facts], [it for it in self.eval if it.fact in facts]


def load_knowledge(path: str | Path = FACTS) -> Knowledge:
    """Training examples (two per fact, each other's second reference), their paraphrases and held-out QA items."""
    train, items, passages, paraphrases = [], [], {}, []
    for lineno, fact in read_facts(path):
        try:
            train += fact_examples(fact)
            paraphrases += fact_examples(fact, "paraphrases")
            fid, passage = fact["id"], fact["passage"]
            items += [QAItem(fid, e["kind"], e["question"], e["answers"], e.get("wrong", []), passage) for e in fact["eval"]]
            passages[fid] = passage
        except (KeyError, TypeError, IndexError) as err:
            raise DataError(f"{path}:{lineno}: not a valid fact record ({type(err).__name__}: {err}).") from None
    return Knowledge(train, items, passages, paraphrases)


def score_qa(text: str, answers: list[str], wrong: list[str]) -> tuple[float, float]:
    """(strict, lenient): lenient = an accepted answer appears; strict = that, and no wrong answer appears."""
    t = text.lower()
    lenient = any(a.lower() in t for a in answers)
    strict = lenient and not any(w.lower() in t for w in wrong)
    return float(strict), float(lenient)


def qa_accuracy(model, tokenizer, items: list[QAItem], with_passage: bool = False,
                max_new_tokens: int = QA_TOKENS, batch_size: int = 16, teacher_kind: str = "base",
                system: str | None = None) -> dict:
    """Strict and lenient accuracy per kind (and "all"), and `cut`: the share of answers that ran out of
    tokens before they ended (their score may miss an answer that was still to come). with_passage=True is the
    teacher ceiling: the teacher view with the fact's source passage in its context. system: the system
    prompt the student was trained with (None: the chat template's default)."""
    if with_passage:
        prompts = [encode(tokenizer, render_chat(tokenizer, fill(CONTEXT_TEMPLATE, it.question, it.passage), system))
                   for it in items]
        with teacher_view(model, teacher_kind):
            texts, cut = greedy(model, tokenizer, prompts, max_new_tokens, batch_size, "QA eval (ceiling)")
    else:
        prompts = [encode(tokenizer, render_chat(tokenizer, it.question, system)) for it in items]
        texts, cut = greedy(model, tokenizer, prompts, max_new_tokens, batch_size, "QA eval")
    scores = [score_qa(t, it.answers, it.wrong) for t, it in zip(texts, items)]
    out = {}
    for kind in ("direct", "indirect", "ood", "all"):
        sel = [s for s, it in zip(scores, items) if kind in ("all", it.kind)]
        if sel:
            out[kind] = {"strict": statistics.fmean(s for s, _ in sel), "lenient": statistics.fmean(l for _, l in sel)}
    out["cut"] = statistics.fmean(cut)
    out["answers"] = texts  # every answer, in the items' order
    out["samples"] = [{"question": it.question, "answer": t} for it, t in list(zip(items, texts))[:6]]
    return out

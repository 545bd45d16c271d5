"""Evaluations: task scorers, knowledge QA (strict / lenient, direct / indirect / OOD),
multiple-choice retention probes by option log-likelihood, and the teacher ceiling.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import DATA_DIR, DataError, Example
from .models import teacher_view
from .prompts import PromptConfig, encode, fill, render_chat, student_ids
from .rollout import completions_from_ids, mean_logp, sample

_CALL = re.compile(r"<call>\s*[A-Za-z_]\w*\(.*?\)\s*</call>", re.DOTALL)
_ANSWER_LINE = re.compile(r"^\s*Answer:\s*(.+)$", re.MULTILINE)
CONTEXT_TEMPLATE = "Here is some background information:\n{demonstration}\n\nQuestion: {question}"


# ----------------------------------------------------------------------------
# Task scorers: (example, generated text) → score in [0, 1]


def contains_answer(ex: Example, text: str) -> float:
    """1 if the example's short answer appears in the text (case-insensitive)."""
    return float(ex.answer is not None and ex.answer.lower() in text.lower())


def toolcall_format(ex: Example, text: str) -> float:
    """1 if the text holds a well-formed `<call>name(args)</call>`, the toolcall task's format."""
    return float(_CALL.search(text) is not None)


def science_answer(ex: Example, text: str) -> float:
    """1 if the text has an `Answer: …` line that contains the example's short answer (the science task)."""
    m = _ANSWER_LINE.search(text)
    return float(m is not None and ex.answer is not None and ex.answer.lower() in m.group(1).lower())


SCORERS = {"answer": contains_answer, "toolcall": toolcall_format, "science": science_answer}


def greedy(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int, desc: str) -> list[str]:
    texts = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        texts += sample(model, tokenizer, prompts[i:i + batch_size], max_new_tokens, temperature=0).texts
    return texts


def task_accuracy(model, tokenizer, examples: list[Example], scorer, max_new_tokens: int = 48,
                  batch_size: int = 16, cfg: PromptConfig | None = None) -> float:
    """Mean score of the student's greedy answers to the bare questions."""
    cfg = cfg or PromptConfig()
    prompts = [student_ids(tokenizer, ex, cfg) for ex in examples]
    texts = greedy(model, tokenizer, prompts, max_new_tokens, batch_size, "task eval")
    return statistics.fmean(scorer(ex, t) for ex, t in zip(examples, texts))


# ----------------------------------------------------------------------------
# Knowledge injection: data/knowledge/facts.jsonl


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


def load_knowledge(path: str | Path = DATA_DIR / "knowledge" / "facts.jsonl") -> Knowledge:
    """Training examples (two per fact, each other's second reference) and held-out QA items."""
    train, items, passages = [], [], {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            fact = json.loads(line)
            fid, passage = fact["id"], fact["passage"]
            demos = [t["demonstration"] for t in fact["train"]]
            for j, t in enumerate(fact["train"]):
                train.append(Example(t["question"], t["demonstration"], id=f"{fid}-t{j}",
                                     answer=fact["eval"][0]["answers"][0],
                                     references=[d for d in demos if d != t["demonstration"]][:1],
                                     metadata={"fact": fid}))
            items += [QAItem(fid, e["kind"], e["question"], e["answers"], e.get("wrong", []), passage) for e in fact["eval"]]
            passages[fid] = passage
        except (KeyError, TypeError, IndexError, json.JSONDecodeError) as err:
            raise DataError(f"{path}:{lineno}: not a valid fact record ({type(err).__name__}: {err}).") from None
    return Knowledge(train, items, passages)


def score_qa(text: str, answers: list[str], wrong: list[str]) -> tuple[float, float]:
    """(strict, lenient): lenient = an accepted answer appears; strict = that, and no wrong answer appears."""
    t = text.lower()
    lenient = any(a.lower() in t for a in answers)
    strict = lenient and not any(w.lower() in t for w in wrong)
    return float(strict), float(lenient)


def qa_accuracy(model, tokenizer, items: list[QAItem], with_passage: bool = False, max_new_tokens: int = 32,
                batch_size: int = 16, teacher_kind: str = "base") -> dict:
    """Strict and lenient accuracy per kind (and "all"). with_passage=True is the teacher ceiling:
    the teacher view with the fact's source passage in its context."""
    if with_passage:
        prompts = [encode(tokenizer, render_chat(tokenizer, fill(CONTEXT_TEMPLATE, it.question, it.passage)))
                   for it in items]
        with teacher_view(model, teacher_kind):
            texts = greedy(model, tokenizer, prompts, max_new_tokens, batch_size, "QA eval (ceiling)")
    else:
        prompts = [encode(tokenizer, render_chat(tokenizer, it.question)) for it in items]
        texts = greedy(model, tokenizer, prompts, max_new_tokens, batch_size, "QA eval")
    scores = [score_qa(t, it.answers, it.wrong) for t, it in zip(texts, items)]
    out = {}
    for kind in ("direct", "indirect", "ood", "all"):
        sel = [s for s, it in zip(scores, items) if kind in ("all", it.kind)]
        if sel:
            out[kind] = {"strict": statistics.fmean(s for s, _ in sel), "lenient": statistics.fmean(l for _, l in sel)}
    out["samples"] = [{"question": it.question, "answer": t} for it, t in list(zip(items, texts))[:6]]
    return out


# ----------------------------------------------------------------------------
# Retention: multiple-choice probes scored by option log-likelihood


@dataclass
class Probe:
    id: str
    category: str
    question: str
    options: list[str]
    answer: int


def load_probes(path: str | Path = DATA_DIR / "retention" / "probes.jsonl") -> list[Probe]:
    probes = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                probes.append(Probe(**json.loads(line)))
            except (TypeError, json.JSONDecodeError) as err:
                raise DataError(f"{path}:{lineno}: not a valid probe ({err}).") from None
    return probes


@torch.no_grad()
def mc_accuracy(model, tokenizer, probes: list[Probe], batch_size: int = 32) -> dict:
    """Accuracy per category and overall: the chosen option is the one with the highest mean per-token
    log-prob as the assistant's reply to the question (length-normalised, so long options are not penalised)."""
    pairs = [(p, k) for p in probes for k in range(len(p.options))]
    scores = []
    for i in tqdm(range(0, len(pairs), batch_size), desc="retention probes", leave=False):
        chunk = pairs[i:i + batch_size]
        prompts = [encode(tokenizer, render_chat(tokenizer, p.question)) for p, _ in chunk]
        y = completions_from_ids([encode(tokenizer, p.options[k]) for p, k in chunk], tokenizer, [],
                                 tokenizer.pad_token_id)
        scores += mean_logp(model, prompts, y).tolist()
    correct, k = {}, 0
    for p in probes:
        n = len(p.options)
        chosen = max(range(n), key=lambda j: scores[k + j])
        correct.setdefault(p.category, []).append(float(chosen == p.answer))
        k += n
    out = {cat: statistics.fmean(v) for cat, v in sorted(correct.items())}
    out["overall"] = statistics.fmean(x for v in correct.values() for x in v)
    return out


class RetentionCallback:
    """A Trainer callback: the retention probes every `every` steps, kept in `self.curve`."""

    def __init__(self, model, tokenizer, probes: list[Probe], every: int = 5, start: dict | None = None):
        """start: the step-0 scores if already measured (a fresh LoRA student scores as its base)."""
        self.model, self.tokenizer, self.probes, self.every = model, tokenizer, probes, every
        self.curve: list[dict] = [{"step": 0, **(start or mc_accuracy(model, tokenizer, probes))}]

    def __call__(self, record: dict) -> None:
        if record["step"] % self.every == 0:
            self.curve.append({"step": record["step"], **mc_accuracy(self.model, self.tokenizer, self.probes)})

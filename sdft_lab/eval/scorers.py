"""Task scorers, (example, generated text) → score in [0, 1], and a task's accuracy on greedy answers."""

from __future__ import annotations

import re
import statistics

from ..data import Example
from ..prompts import PromptConfig, student_ids
from ..rollout import greedy_texts

_CALL = re.compile(r"<call>\s*[A-Za-z_]\w*\(.*?\)\s*</call>", re.DOTALL)
_ANSWER_LINE = re.compile(r"^\s*Answer:\s*(.+)$", re.MULTILINE)


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


def task_accuracy(model, tokenizer, examples: list[Example], scorer, max_new_tokens: int = 48,
                  batch_size: int = 16, cfg: PromptConfig | None = None) -> float:
    """Mean score of the student's greedy answers to the bare questions."""
    cfg = cfg or PromptConfig()
    prompts = [student_ids(tokenizer, ex, cfg) for ex in examples]
    texts = greedy_texts(model, tokenizer, prompts, max_new_tokens, batch_size, "task eval")
    return statistics.fmean(scorer(ex, t) for ex, t in zip(examples, texts))

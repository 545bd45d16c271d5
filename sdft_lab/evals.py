"""Task scorers: (example, generated text) → score in [0, 1]."""

from __future__ import annotations

import re

from .data import Example

_CALL = re.compile(r"<call>\s*[A-Za-z_]\w*\(.*?\)\s*</call>", re.DOTALL)


def contains_answer(ex: Example, text: str) -> float:
    """1 if the example's short answer appears in the text (case-insensitive)."""
    return float(ex.answer is not None and ex.answer.lower() in text.lower())


def toolcall_format(ex: Example, text: str) -> float:
    """1 if the text holds a well-formed `<call>name(args)</call>`, the toolcall task's format."""
    return float(_CALL.search(text) is not None)


SCORERS = {"answer": contains_answer, "toolcall": toolcall_format}

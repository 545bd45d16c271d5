"""A first look at a dataset before training: what was read, how long the prompts are, what would be trimmed.

    print(describe("my_data.jsonl", tokenizer))          # or `sdft-lab data my_data.jsonl`
"""

from __future__ import annotations

import statistics
import warnings

from ..data import Example, read
from ..prompts import PromptConfig, encode, student_ids, teacher_ids


def spread(values: list[int]) -> str:
    return f"min {min(values)}, median {statistics.median(values):g}, max {max(values)}"


def describe(source, tokenizer=None, prompts: PromptConfig | None = None, **load) -> str:
    """Count, format, mapped columns; with a tokenizer, token lengths of the student and teacher prompts and
    the demonstrations, and which teacher prompts would be trimmed. source: examples, or what load_dataset takes."""
    if isinstance(source, list) and all(isinstance(ex, Example) for ex in source):
        examples, kind = source, "examples"
    else:
        columns = {k: v for k, v in load.items() if k not in ("format", "split")}
        examples, kind = read(source, load.get("format"), load.get("split"), **columns)
        if columns:
            kind += " (columns: " + ", ".join(f"{field} ← {col}" for field, col in columns.items()) + ")"
    lines = [f"{len(examples)} examples, format {kind}",
             f"with answer: {sum(ex.answer is not None for ex in examples)}, with references: "
             f"{sum(bool(ex.references) for ex in examples)}, with a system prompt: "
             f"{sum(ex.system is not None for ex in examples)}"]
    if tokenizer is not None:
        cfg = prompts or PromptConfig()
        trimmed = []
        s_len = [len(student_ids(tokenizer, ex, cfg)) for ex in examples]
        t_len = []
        for ex in examples:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t_len.append(len(teacher_ids(tokenizer, ex, cfg)))
            if any("trimmed" in str(w.message) for w in caught):
                trimmed.append(ex.id)
        lines += [f"student prompt tokens: {spread(s_len)}", f"teacher prompt tokens: {spread(t_len)}",
                  f"demonstration tokens: {spread([len(encode(tokenizer, ex.demonstration)) for ex in examples])}",
                  f"teacher prompts over max_teacher_prompt_tokens={cfg.max_teacher_prompt_tokens} (their "
                  f"demonstrations would be trimmed): {len(trimmed)}" + (f" {trimmed[:5]}" if trimmed else "")]
    return "\n".join(lines)

"""Student and teacher prompts, rendered through the tokenizer's chat template.

The student's user turn is just the question. The teacher's user turn is the
question plus a demonstration, laid out by a template (the paper's by default).
Length policy: the question is never cut. If the teacher prompt is over its
limit, the demonstration is trimmed (with a warning); if the question alone is
over a limit, that is an error.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch

from .data import Example

PAPER_TEMPLATE = (
    "{question}\n\n"
    "This is an example for a response to the question:\n"
    "{demonstration}\n\n"
    "Now answer with a response of your own, including the thinking process:"
)
# Teacher templates to compare (inspect.preflight.compare_templates); "paper" is the default.
TEMPLATES = {
    "paper": PAPER_TEMPLATE,
    "reference": (
        "{question}\n\nA reference answer written by an expert:\n{demonstration}\n\n"
        "Answer the question yourself. Use the reference, and keep its facts and its format."
    ),
    "context-first": "Read this first:\n{demonstration}\n\nNow answer the question: {question}",
}
# Used, with a warning, for tokenizers that have no chat template.
PLAIN_CHAT = "User: {content}\nAssistant:"
TRIM_MARK = " […]"
_FIELD = re.compile(r"\{(question|demonstration)\}")


@dataclass
class PromptConfig:
    teacher_template: str = PAPER_TEMPLATE
    max_prompt_tokens: int = 512  # student prompt: over it is an error (never cut a question)
    max_teacher_prompt_tokens: int = 1024  # teacher prompt: over it, the demonstration is trimmed
    system: str | None = None  # None keeps the chat template's default system prompt

    def __post_init__(self) -> None:
        missing = {"question", "demonstration"} - set(_FIELD.findall(self.teacher_template))
        if missing:
            raise ValueError(f"teacher_template must contain the field(s) {sorted(missing)} in braces; got {self.teacher_template!r}")
        if self.max_prompt_tokens < 1 or self.max_teacher_prompt_tokens < 1:
            raise ValueError("max_prompt_tokens and max_teacher_prompt_tokens must be positive")


def fill(template: str, question: str, demonstration: str) -> str:
    """Substitute both fields in one pass, so braces inside the texts are left alone."""
    values = {"question": question, "demonstration": demonstration}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def chat_messages(user: str, system: str | None = None) -> list[dict]:
    """One user turn as chat messages, after an optional system message."""
    return ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]


def render_chat(tokenizer, user: str, system: str | None = None) -> str:
    """The chat-template text for one user turn, ending where the assistant starts."""
    if tokenizer.chat_template is None:
        warnings.warn(f"The tokenizer has no chat template; using the plain template {PLAIN_CHAT!r}.", stacklevel=2)
        return PLAIN_CHAT.format(content=user if system is None else f"{system}\n\n{user}")
    return tokenizer.apply_chat_template(chat_messages(user, system), tokenize=False, add_generation_prompt=True)


def encode(tokenizer, text: str) -> list[int]:
    # The chat template already wrote the special tokens, so add none.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def system_of(ex: Example, cfg: PromptConfig) -> str | None:
    """The example's own system prompt (from a chat or TRL dataset), else the configured one."""
    return ex.system if ex.system is not None else cfg.system


def student_ids(tokenizer, ex: Example, cfg: PromptConfig) -> list[int]:
    ids = encode(tokenizer, render_chat(tokenizer, ex.question, system_of(ex, cfg)))
    if len(ids) > cfg.max_prompt_tokens:
        raise ValueError(
            f"Example {ex.id!r}: the question needs {len(ids)} tokens, over max_prompt_tokens="
            f"{cfg.max_prompt_tokens}. Questions are never cut: raise the limit or shorten the question."
        )
    return ids


def teacher_ids(tokenizer, ex: Example, cfg: PromptConfig, demonstration: str | None = None) -> list[int]:
    """Teacher prompt ids. Over the limit, the demonstration's tail is trimmed, never the question."""
    demo = ex.demonstration if demonstration is None else demonstration
    limit = cfg.max_teacher_prompt_tokens

    def build(d: str) -> list[int]:
        return encode(tokenizer, render_chat(tokenizer, fill(cfg.teacher_template, ex.question, d), system_of(ex, cfg)))

    ids = build(demo)
    if len(ids) <= limit:
        return ids
    floor = len(build(TRIM_MARK))
    if floor > limit:
        raise ValueError(
            f"Example {ex.id!r}: the teacher prompt needs {floor} tokens even with an empty demonstration, "
            f"over max_teacher_prompt_tokens={limit}. The question is never cut: raise the limit."
        )
    demo_ids = encode(tokenizer, demo)
    keep = max(0, len(demo_ids) - (len(ids) - limit))
    while keep >= 0:  # token counts do not add exactly across a decode/encode round trip
        ids = build(tokenizer.decode(demo_ids[:keep]) + TRIM_MARK)
        if len(ids) <= limit:
            break
        keep -= max(1, len(ids) - limit)
    warnings.warn(
        f"Example {ex.id!r}: demonstration trimmed from {len(demo_ids)} to {max(keep, 0)} tokens to fit "
        f"max_teacher_prompt_tokens={limit}.",
        stacklevel=2,
    )
    return ids


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack prompts to [B, P], padded on the left so that every prompt ends at the same column."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def preview(tokenizer, ex: Example, cfg: PromptConfig | None = None) -> str:
    """Both prompts as the model sees them, with token counts."""
    cfg = cfg or PromptConfig()
    s, t = student_ids(tokenizer, ex, cfg), teacher_ids(tokenizer, ex, cfg)
    bar = "─" * 60
    return (
        f"{bar}\nSTUDENT prompt ({len(s)} tokens)\n{bar}\n{tokenizer.decode(s)}\n"
        f"{bar}\nTEACHER prompt ({len(t)} tokens, +{len(t) - len(s)} for the demonstration)\n{bar}\n"
        f"{tokenizer.decode(t)}"
    )

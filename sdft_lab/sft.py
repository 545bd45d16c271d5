"""The SFT baseline: cross-entropy on the demonstration, given the bare question.

Same examples, same prompts and same trainer as SDFT; only the target differs
(the expert's tokens instead of the student's own rollout scored by the teacher).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from .data import Example
from .memory import clock
from .losses import chunked_token_logp, masked_mean
from .models import lm_head
from .prompts import PromptConfig, encode, student_ids
from .rollout import completion_hidden, completions_from_ids, end_of_turn_id


@dataclass
class SFTConfig:
    max_target_tokens: int = 1024  # longer demonstrations are cut, with a warning
    chunk_tokens: int = 256  # tokens whose logits exist at once, as DivergenceConfig.chunk_tokens for SDFT
    prompts: PromptConfig = field(default_factory=PromptConfig)

    def __post_init__(self) -> None:
        if self.max_target_tokens < 2 or self.chunk_tokens < 1:
            raise ValueError(f"max_target_tokens must be ≥ 2 and chunk_tokens ≥ 1, got {self.max_target_tokens} "
                             f"and {self.chunk_tokens}")


class SFT:
    name = "sft"

    def __init__(self, cfg: SFTConfig | None = None):
        self.cfg = cfg or SFTConfig()

    def setup(self, model) -> None:
        pass

    def loss(self, model, tokenizer, examples: list[Example], seed: int | None = None):
        device = next(model.parameters()).device
        t0 = clock(device)
        eos = end_of_turn_id(model, tokenizer)
        prompts = [student_ids(tokenizer, ex, self.cfg.prompts) for ex in examples]
        targets = []
        for ex in examples:
            ids = encode(tokenizer, ex.demonstration)
            if len(ids) >= self.cfg.max_target_tokens:
                warnings.warn(f"Example {ex.id!r}: demonstration cut to max_target_tokens.", stacklevel=2)
                ids = ids[: self.cfg.max_target_tokens - 1]
            targets.append(ids + [eos])  # the assistant turn ends with EOS: learn to stop
        y = completions_from_ids(targets, tokenizer, [eos], tokenizer.pad_token_id)
        mask = y.mask.to(device)
        logp = chunked_token_logp(completion_hidden(model, prompts, y), lm_head(model), y.ids.to(device), mask,
                                  self.cfg.chunk_tokens)
        loss = masked_mean(-logp, mask)  # cross-entropy on the demonstration tokens
        return loss, {"target_len": y.lengths.float().mean().item(), "student_fwd_s": clock(device) - t0}

    def after_optimizer_step(self, model) -> None:
        pass

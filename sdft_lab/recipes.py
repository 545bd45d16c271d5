"""Named, tested settings for a job, as the configs a notebook cell, the CLI and the experiments all take.

    sdft, sft = workshop_knowledge()          # RunConfigs: SDFT and SFT at the same forgetting
    sdft-lab train --recipe workshop-knowledge --method sdft

`SDFTConfig()`'s defaults are the paper's (a 7B model: long "including the thinking process" rollouts, the
first 3 tokens skipped). They are right for a model that learns well in context. On the bundled 135M model
they spend its short rollouts on preamble where the teacher has nothing to teach; the workshop recipe asks
for short answers, lays the demonstration out first, skips no token, and guides every rollout with the
demonstration under the evidence mask (sdft.py). Which learning rates: the frontier (docs/recipes.md,
experiments/frontier.py) swept both methods over their learning rates with three seeds, and the pair is the
guided-SDFT point that learned most while keeping retention, with SFT at the learning rate where it forgets
as much (frontier.PAIR_RULE; tests/test_recipes.py checks these values against docs/frontier.json).
"""

from __future__ import annotations

from dataclasses import replace

from .config import RunConfig
from .models import StudentConfig
from .presets import PRESETS
from .prompts import TEMPLATES, PromptConfig
from .sdft import SDFTConfig
from .sft import SFTConfig
from .trainer import TrainConfig

SHORT_ANSWER = "Answer in one short sentence."
SDFT_LR, SFT_LR = 3e-3, 3e-4  # the frontier pair on the bundled model (docs/frontier.json)


def workshop_knowledge(steps: int = 24, model: str = "bundled") -> tuple[RunConfig, RunConfig]:
    """(SDFT, SFT) for injecting invented facts: both train on the same questions (4 per step) for the same
    steps, with the same short-answer system prompt, at learning rates where they forget about as much.

    model: with a preset (a GPU), the paper's SDFT defaults at the preset's learning rate, batch, rollout
    length and LoRA rank for both methods: no frontier has been measured for it, and the bundled model's learning rates
    are 20–60 times a 7B model's."""
    preset = PRESETS.get(model)
    if preset is not None:
        train = TrainConfig(steps=steps, batch_size=preset.batch_size, lr=preset.lr, preflight=False)
        student = StudentConfig(r=preset.lora_r, alpha=2 * preset.lora_r)
        return (RunConfig(model=model, method="sdft", data="knowledge", train=train, student=student,
                          sdft=SDFTConfig(max_new_tokens=preset.max_new_tokens)),
                RunConfig(model=model, method="sft", data="knowledge", train=train, student=student))
    prompts = PromptConfig(teacher_template=TEMPLATES["context-first"], system=SHORT_ANSWER)
    train = TrainConfig(steps=steps, batch_size=4, lr=SDFT_LR, preflight=False)
    sdft = RunConfig(method="sdft", data="knowledge", train=train,
                     sdft=SDFTConfig(max_new_tokens=32, skip_first=0, guided=1.0, evidence_mask=True, prompts=prompts))
    sft = RunConfig(method="sft", data="knowledge", train=replace(train, lr=SFT_LR),
                    sft=SFTConfig(prompts=PromptConfig(system=SHORT_ANSWER)))
    return sdft, sft


RECIPES = {"workshop-knowledge": workshop_knowledge}

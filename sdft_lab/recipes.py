"""Named, tested settings for a job, as the configs a notebook cell, the CLI and the experiments all take.

    sdft, sft = workshop_knowledge()          # RunConfigs: SDFT and its fair SFT baseline
    sdft-lab train --recipe workshop-knowledge --method sdft

`SDFTConfig()`'s defaults are the paper's (a 7B model: long "including the thinking process" rollouts, the
first 3 tokens skipped). They are right for a model that learns well in context. On the bundled 135M model
they spend its short rollouts on preamble where the teacher has nothing to teach; the workshop recipe asks
for short answers, lays the demonstration out first and skips no token. SFT keeps the chat template's
system prompt and a lower learning rate, which served it best in the same search. docs/recipes.md gives the search that chose it
(every configuration tried, with seeds), and when to use which.
"""

from __future__ import annotations

from dataclasses import replace

from .config import RunConfig
from .prompts import TEMPLATES, PromptConfig
from .sdft import SDFTConfig
from .sft import SFTConfig
from .trainer import TrainConfig

SHORT_ANSWER = "Answer in one short sentence."


def workshop_knowledge(steps: int = 24) -> tuple[RunConfig, RunConfig]:
    """(SDFT, SFT) for injecting invented facts into the bundled model on 2 CPU cores in minutes: both train
    on the same questions (4 per step) for the same steps, each with the settings that served it best in the
    search (docs/recipes.md)."""
    prompts = PromptConfig(teacher_template=TEMPLATES["context-first"], system=SHORT_ANSWER)
    train = TrainConfig(steps=steps, batch_size=4, lr=3e-3, preflight=False)
    sdft = RunConfig(method="sdft", data="knowledge", train=train,
                     sdft=SDFTConfig(max_new_tokens=32, skip_first=0, prompts=prompts))
    sft = RunConfig(method="sft", data="knowledge", train=replace(train, lr=1e-3),
                    sft=SFTConfig(prompts=PromptConfig(system=None)))  # the chat template's own system prompt
    return sdft, sft


RECIPES = {"workshop-knowledge": workshop_knowledge}

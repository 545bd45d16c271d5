"""The set-up every notebook starts with: smoke or workshop mode, where runs are written, run settings.

    from sdft_lab.lab import Settings, settings, setup
    SMOKE, RUNS = setup()
    RUN = settings(MODEL, cpu=Settings(batch_size=4, max_new_tokens=64, lr=1e-3), smoke=SMOKE)

SMOKE is true when SDFT_LAB_SMOKE=1 (the test suite runs every notebook that way, in a minute or two);
RUNS is SDFT_LAB_RUNS if set, else the repository's runs/ folder seen from notebooks/ (../runs); every
Trainer.train() writes its run folder and report there. settings(MODEL, cpu=...) gives a preset's batch
size, rollout length, learning rate and LoRA rank on a GPU (presets.PRESETS), and the notebook's own CPU
settings for "bundled"; smoke=True shortens the rollouts and the batch for the tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .models import StudentConfig
from .presets import PRESETS
from .trainer import runs_root


class Lab(NamedTuple):
    smoke: bool
    runs: Path


def setup() -> Lab:
    smoke = os.environ.get("SDFT_LAB_SMOKE") == "1"
    runs = runs_root()
    runs.mkdir(parents=True, exist_ok=True)
    return Lab(smoke, runs)


class Settings(NamedTuple):
    batch_size: int
    max_new_tokens: int
    lr: float
    lora_r: int = 16

    def student(self) -> StudentConfig:
        return StudentConfig(r=self.lora_r, alpha=2 * self.lora_r)


def settings(model: str, cpu: Settings, smoke: bool = False) -> Settings:
    """A preset's own settings for a preset name (what fits one GPU, at a learning rate for its size), else
    `cpu`, what a notebook chose for the bundled model on two CPU cores. smoke: at most 4 prompts of 8 tokens."""
    preset = PRESETS.get(model)
    out = Settings(preset.batch_size, preset.max_new_tokens, preset.lr, preset.lora_r) if preset else cpu
    return out._replace(batch_size=min(out.batch_size, 4), max_new_tokens=8) if smoke else out

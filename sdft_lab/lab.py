"""The set-up every notebook starts with: smoke or workshop mode, where runs are written, run sizes.

    from sdft_lab.lab import setup, sizes
    SMOKE, RUNS = setup()
    BATCH, NEW_TOKENS = (4, 8) if SMOKE else sizes(MODEL, cpu=(4, 64))

SMOKE is true when SDFT_LAB_SMOKE=1 (the test suite runs every notebook that way, in a minute or two);
RUNS is SDFT_LAB_RUNS if set, else the repository's runs/ folder seen from notebooks/ (../runs); every
Trainer.train() writes its run folder and report there. sizes(MODEL, cpu=...) gives a preset's batch
size and rollout length on a GPU (presets.PRESETS), and the notebook's own CPU sizes for "bundled".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

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


class Sizes(NamedTuple):
    batch_size: int
    max_new_tokens: int


def sizes(model: str, cpu: tuple[int, int]) -> Sizes:
    """(batch_size, max_new_tokens): the preset's for a preset name (what fits one GPU), else `cpu`, the sizes
    a notebook chose for the bundled model on two CPU cores."""
    preset = PRESETS.get(model)
    return Sizes(preset.batch_size, preset.max_new_tokens) if preset else Sizes(*cpu)

"""The set-up every notebook starts with: smoke or workshop mode, and where runs are written.

    from sdft_lab.lab import setup
    SMOKE, RUNS = setup()

SMOKE is true when SDFT_LAB_SMOKE=1 (the test suite runs every notebook that way, in a minute or two);
RUNS is SDFT_LAB_RUNS if set, else the repository's runs/ folder seen from notebooks/ (../runs); every
Trainer.train() writes its run folder and report there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .trainer import runs_root


class Lab(NamedTuple):
    smoke: bool
    runs: Path


def setup() -> Lab:
    smoke = os.environ.get("SDFT_LAB_SMOKE") == "1"
    runs = runs_root()
    runs.mkdir(parents=True, exist_ok=True)
    return Lab(smoke, runs)

"""The metric stream to an existing experiment tracker: TrainConfig(report_to="trackio" or "wandb").

Both share one API (init / log / finish). Nothing is imported unless asked. trackio stores locally
(TRACKIO_DIR, default ~/.cache/huggingface/trackio) and shows the runs with `trackio show`; wandb needs
an account, or WANDB_MODE=offline and `wandb sync` later.
"""

from __future__ import annotations

import importlib

TRACKERS = ("trackio", "wandb")
INSTALL = {"trackio": "pip install trackio (or: pip install -e .[tracking])", "wandb": "pip install wandb"}


class Tracker:
    def __init__(self, kind: str, run_name: str, config: dict, project: str = "sdft_lab"):
        if kind not in TRACKERS:
            raise ValueError(f"report_to must be one of {TRACKERS} or None, got {kind!r}")
        try:
            self.module = importlib.import_module(kind)
        except ImportError as err:
            raise ImportError(f"report_to={kind!r} needs {kind}: {INSTALL[kind]}") from err
        self.module.init(project=project, name=run_name, config=config)

    def log(self, record: dict) -> None:
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        self.module.log(numbers, step=record["step"])

    def finish(self) -> None:
        self.module.finish()

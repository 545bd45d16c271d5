"""sdft_lab: self-distillation fine-tuning (SDFT) you can step through.

    model, tok = load("bundled")                # SmolLM2-135M-Instruct, offline
    model = add_student(model)                  # LoRA student; the teacher is the base
    trainer = Trainer(model, tok, SDFT(), load_dataset("demo"), TrainConfig(steps=20))
    trainer.step()                              # one on-policy distillation step

The core (data, prompts, models, sampler, rollout, losses, sdft, sft, trainer, …) sits at the top of the
package and imports no tool; the tools live in subpackages: inspect/ (pre-flight, token diffs, plots,
widgets), eval/ (scorers, knowledge QA, retention probes, lm-eval), experiments/, interop/ (TRL).
"""

from .reproducible import MKL_BRANCH  # first: MKL's branch is fixed before its first call
from .config import RunConfig
from .data import DataError, Example, load_dataset, load_jsonl, save_jsonl
from .heldout import evaluate_kl
from .losses import DivergenceConfig, divergence
from .models import StudentConfig, add_student, load, load_adapter, teacher_view
from .presets import PRESETS
from .prompts import PAPER_TEMPLATE, TEMPLATES, PromptConfig, preview
from .rollout import sample
from .sdft import SDFT, SDFTConfig
from .sft import SFT, SFTConfig
from .trainer import Objective, TrainConfig, Trainer

__version__ = "0.2.0"
__all__ = [
    "MKL_BRANCH", "RunConfig",
    "DataError", "Example", "load_dataset", "load_jsonl", "save_jsonl",
    "DivergenceConfig", "divergence",
    "StudentConfig", "add_student", "load", "load_adapter", "teacher_view",
    "PRESETS",
    "PAPER_TEMPLATE", "TEMPLATES", "PromptConfig", "preview",
    "sample",
    "SDFT", "SDFTConfig", "evaluate_kl",
    "SFT", "SFTConfig",
    "Objective", "TrainConfig", "Trainer",
]

"""sdft_lab: self-distillation fine-tuning (SDFT) you can step through.

    model, tok = load("bundled")                # SmolLM2-135M-Instruct, offline
    model = add_student(model)                  # LoRA student; the teacher is the base
    trainer = Trainer(model, tok, SDFT(), load_dataset("demo"), TrainConfig(steps=20))
    trainer.step()                              # one on-policy distillation step
"""

from .reproducible import MKL_BRANCH  # first: MKL's branch is fixed before its first call
from .data import DataError, Example, load_dataset, load_jsonl, save_jsonl
from .losses import DivergenceConfig, divergence
from .models import LoraSettings, add_student, load, teacher_view
from .prompts import PAPER_TEMPLATE, PromptConfig, preview
from .rollout import sample
from .sdft import SDFT, SDFTConfig, evaluate_kl
from .sft import SFT, SFTConfig
from .trainer import TrainConfig, Trainer

__version__ = "0.1.0"
__all__ = [
    "DataError", "Example", "load_dataset", "load_jsonl", "save_jsonl",
    "DivergenceConfig", "divergence",
    "LoraSettings", "add_student", "load", "teacher_view",
    "PAPER_TEMPLATE", "PromptConfig", "preview",
    "sample",
    "SDFT", "SDFTConfig", "evaluate_kl",
    "SFT", "SFTConfig",
    "TrainConfig", "Trainer",
]

"""The set-up every notebook starts with: smoke or workshop mode, where runs are written, run settings.

    from sdft_lab.lab import Settings, settings, setup
    SMOKE, RUNS = setup()
    RUN = settings(MODEL, cpu=Settings(batch_size=4, max_new_tokens=64, lr=1e-3), smoke=SMOKE)
    RUN, SFT_RUN = workshop_pair(MODEL, smoke=SMOKE)  # or the workshop recipe's pair (recipes.py)

SMOKE is true when SDFT_LAB_SMOKE=1 (the test suite runs every notebook that way, in a minute or two);
RUNS is SDFT_LAB_RUNS if set, else the repository's runs/ folder seen from notebooks/ (../runs); every
Trainer.train() writes its run folder and report there. settings(MODEL, cpu=...) gives a preset's batch
size, rollout length, learning rate and LoRA rank on a GPU (presets.PRESETS), and the notebook's own CPU
settings for "bundled"; smoke=True shortens the rollouts and the batch for the tests. gpu_preset(MODEL) turns
"bundled", on a GPU, into the largest preset in the local hub cache that fits its memory (any other MODEL, and
"bundled" on a CPU, unchanged). setup() also drops
one known log line that is not about anything a participant did (KernelsNotice). answers_table draws
answers side by side as an escaped HTML table.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from .config import RunConfig
from .models import StudentConfig
from .presets import PRESETS
from .recipes import workshop_knowledge
from .trainer import runs_root


class Lab(NamedTuple):
    smoke: bool
    runs: Path


class KernelsNotice(logging.Filter):
    """Drops bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning, and only it.

    Why: bitsandbytes (0.50) logs it at import time (backends/cpu/ops.py) on every CPU with AVX512-BF16,
    because the optional `kernels` package (which downloads a fused NF4 kernel from the hub) is not
    installed. sdft_lab never calls that kernel (models.portable_cpu_4bit turns its repacked path off on every
    layer) and installs nothing from the hub at run time, so the warning is the first red text a participant
    would read and says nothing about their run. Any other bitsandbytes message still gets through."""

    LOGGER = "bitsandbytes.backends.cpu.ops"
    MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.MESSAGE)


def quiet_known_noise() -> None:
    """Install KernelsNotice on bitsandbytes' CPU logger (once), before anything imports bitsandbytes."""
    logger = logging.getLogger(KernelsNotice.LOGGER)
    if not any(isinstance(f, KernelsNotice) for f in logger.filters):
        logger.addFilter(KernelsNotice())


def setup() -> Lab:
    quiet_known_noise()
    smoke = os.environ.get("SDFT_LAB_SMOKE") == "1"
    runs = runs_root()
    runs.mkdir(parents=True, exist_ok=True)
    return Lab(smoke, runs)


HEADROOM = 0.9  # a preset fits when its step's estimated (or measured) peak is within 90 % of the GPU's memory


def in_hub_cache(hub_id: str) -> bool:
    """Whether the local Hugging Face cache holds the model's config (nothing is downloaded to find out)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def gpu_preset(model: str, memory_gib: float | None = None, cached: Callable[[str], bool] = in_hub_cache) -> str:
    """For model "bundled" on a GPU, the preset with the largest step (PRESETS' vram_gib) that fits HEADROOM of
    its memory and is in the local hub cache, printed with why; `model` itself when it names another model (the
    user chose it), on a machine without a GPU, or when no such preset is cached. memory_gib: the GPU's memory
    (default: CUDA device 0's)."""
    if model != "bundled":
        return model
    if memory_gib is None:
        import torch

        if not torch.cuda.is_available():
            return model
        memory_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    fits = sorted((p.vram_gib, name) for name, p in PRESETS.items() if p.vram_gib <= HEADROOM * memory_gib)
    ready = [(gib, name) for gib, name in fits if cached(PRESETS[name].hub_id)]
    if not ready:
        hint = f" `hf download {PRESETS[fits[-1][1]].hub_id}` fetches the largest that fits." if fits else ""
        print(f"GPU with {memory_gib:.1f} GiB: no preset in the local hub cache fits; keeping {model!r}.{hint}")
        return model
    gib, name = ready[-1]
    print(f"GPU with {memory_gib:.1f} GiB: {name} (a step needs {gib:.1f} GiB, {PRESETS[name].vram_source}), "
          f"the largest preset in the local hub cache that fits.")
    return name


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


def workshop_pair(model: str, smoke: bool = False) -> tuple[RunConfig, RunConfig]:
    """recipes.workshop_knowledge for `model`: (SDFT, SFT) at the frontier's settings for the bundled model, a
    preset's on a GPU; smoke: one step of at most 4 prompts, SDFT's rollouts 8 tokens long."""
    pair = workshop_knowledge(model=model)
    if not smoke:
        return pair
    sdft, sft = (replace(run, train=replace(run.train, steps=1, batch_size=min(run.train.batch_size, 4)))
                 for run in pair)
    return replace(sdft, sdft=replace(sdft.sdft, max_new_tokens=8)), sft


def answers_table(questions: list[str], columns: dict[str, list[str]], accepted: list[str] | None = None,
                  correct: dict[str, list[bool]] | None = None) -> str:
    """Answers side by side: one row per question, one column per source (e.g. "student before", "teacher").
    correct: per column, which answers to mark ✓. Every piece of text is HTML-escaped. Display it with
    IPython.display.HTML."""
    head = ["question", *(["accepted"] if accepted else []), *columns]
    marks = correct or {}
    rows = []
    for i, q in enumerate(questions):
        said = [("✓ " if k in marks and marks[k][i] else "") + col[i].strip() for k, col in columns.items()]
        cells = [q, *([accepted[i]] if accepted else []), *said]
        rows.append("<tr>" + "".join(f'<td style="text-align:left;vertical-align:top">{html.escape(c)}</td>'
                                     for c in cells) + "</tr>")
    return ('<table class="sdft-answers" style="font-size:13px"><thead><tr>'
            + "".join(f'<th style="text-align:left">{html.escape(h)}</th>' for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")

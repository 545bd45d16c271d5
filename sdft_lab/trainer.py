"""The training loop shared by SDFT and SFT.

An objective (the Objective protocol below) has `setup(model)`, `loss(model, tokenizer, examples, seed)
-> (loss, metrics)` and `after_optimizer_step(model)`. The Trainer owns everything else: batching,
AdamW, cosine schedule with warm-up, gradient accumulation, clipping, seeds,
the metric stream and saving the adapter. `step()` runs one optimizer step and
can be called from a notebook cell; `train(n)` runs n of them with a progress bar.

Launched on several processes (`accelerate launch --num_processes N script.py`), the same
code trains data-parallel (see distributed.py): `batch_size` is per process, each process
takes its own share of every batch, and the metrics are averaged over the processes.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from tqdm.auto import tqdm

from . import checkpoint, distributed, memory, report
from .collapse import CollapseWatch
from .data import Example
from .models import STUDENT, trainable_parameters
from .tracking import TRACKERS, Tracker


class Objective(Protocol):
    name: str

    def setup(self, model) -> None: ...

    def loss(self, model, tokenizer, examples: list[Example], seed: int | None = None) -> tuple[torch.Tensor, dict]: ...

    def after_optimizer_step(self, model) -> None: ...


@dataclass
class TrainConfig:
    steps: int = 100  # optimizer steps; sets the length of the schedule
    batch_size: int = 4  # prompts per micro-batch and process (SDFTConfig.rollouts_per_prompt rollouts each)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # LoRA rates are ~10x full fine-tuning's 5e-6…5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = 0
    preflight: bool = True  # train() first runs the Trainer's pre-flight check, when it was given one
    checkpoint_dir: str | None = None  # where save_checkpoint() and checkpoint_every write
    checkpoint_every: int = 0  # save a checkpoint every N steps (0 = only when asked)
    keep_checkpoints: int = 2
    run_dir: str | None = None  # where train() writes metrics.jsonl, run.json, report.html (None: a new folder
    #                             <objective>-<date>-<time> in runs_root())
    report: bool = True  # write the run report (report.py) after every train()
    report_to: str | None = None  # also stream the metrics to "trackio" or "wandb" (tracking.py)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.max_grad_norm <= 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps and weight_decay must be ≥ 0 and max_grad_norm > 0")
        if self.report_to is not None and self.report_to not in TRACKERS:
            raise ValueError(f"report_to must be one of {TRACKERS} or None, got {self.report_to!r}")
        if self.checkpoint_every < 0 or (self.checkpoint_every and not self.checkpoint_dir):
            raise ValueError("checkpoint_every must be ≥ 0, and needs checkpoint_dir")


def cosine_with_warmup(cfg: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, model, tokenizer, objective: Objective, examples: list[Example], cfg: TrainConfig | None = None,
                 callbacks: tuple[Callable[[dict], None], ...] = (), preflight: Callable | None = None,
                 held_out: list[Example] | None = None, config: dict | None = None):
        """callbacks get each step's record; preflight(model, tokenizer, examples, objective) -> dict | None is
        the check train() runs once first (inspect.preflight.quick_check: does the teacher gain anything?).
        For the run report: held_out, the prompts whose answers it shows before and after (default: the first
        training examples); config, the run's whole config (RunConfig.to_dict(); default: what the Trainer has)."""
        if not examples:
            raise ValueError("Trainer needs at least one example.")
        self.model, self.tokenizer, self.objective, self.examples = model, tokenizer, objective, examples
        self.cfg = cfg or TrainConfig()
        self.callbacks = list(callbacks)
        self.check = preflight
        self.report_prompts = (held_out or examples)[:report.REPORT_PROMPTS]
        objective_cfg = getattr(objective, "cfg", None)
        self.config = config or {"train": asdict(self.cfg),
                                 objective.name: asdict(objective_cfg) if is_dataclass(objective_cfg) else None}
        self.run_dir = Path(self.cfg.run_dir) if self.cfg.run_dir else new_run_dir(objective.name)
        self.device = next(model.parameters()).device
        self.tracker: Tracker | None = None
        self.answers_before: list[str] | None = None
        self.wall_s = 0.0
        self.evaluations = Timer()  # seconds in each callback over this Trainer's steps (the learning meter…)
        seed_everything(self.cfg.seed)
        self.group = distributed.setup(model)
        objective.setup(model)
        self.params = trainable_parameters(model)
        if not self.params:
            raise ValueError("The model has no trainable parameters: add the student adapter (models.add_student).")
        # Every process starts from the main process's adapters (student and EMA teacher), as DDP would.
        with torch.no_grad():
            self.group.broadcast_(list(checkpoint.adapter_tensors(model).values()))
        self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(self.cfg))
        self.step_count = 0
        self.history: list[dict] = []
        self.collapse = CollapseWatch()  # warns when rollouts shrink, repeat or lose entropy (collapse.py)
        self.preflight: dict | None = None  # the pre-flight figures, once train() has run it

    def batch(self, index: int) -> list[Example]:
        """Micro-batch `index` of a deterministic stream: each epoch is a fresh seeded shuffle."""
        n, bs = len(self.examples), self.cfg.batch_size
        out = []
        for k in range(index * bs, (index + 1) * bs):
            epoch, pos = divmod(k, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch))
            out.append(self.examples[order[pos]])
        return out

    def step(self) -> dict:
        """One optimizer step. A step that fails or is interrupted changes nothing: the next call starts clean."""
        if self.group.is_main and self.step_count == 0 and self.cfg.report and self.answers_before is None:
            self.answers_before = report.greedy_answers(self)  # the report's "before", whichever call comes first
        if self.group.is_main and self.cfg.report_to and self.tracker is None:
            self.tracker = Tracker(self.cfg.report_to, self.run_dir.name, self.config)  # fails before any change
        failed = None
        try:
            record = self._step()
        except torch.OutOfMemoryError as err:
            failed = str(err)  # only the message: the error's traceback holds the failed step's tensors
        if failed is not None:  # raised outside the `except`, so that those tensors are freed first
            self.optimizer.zero_grad(set_to_none=True)
            memory.release(self.device)
            raise torch.OutOfMemoryError(
                f"Out of memory at step {self.step_count} ({failed}). Its tensors are freed, so a retry can run. Try "
                "a smaller batch_size (with grad_accum to keep the batch), fewer max_new_tokens, a smaller "
                "divergence.chunk_tokens, or quantization='nf4'.")
        if self.cfg.checkpoint_every and self.step_count % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()
        return record

    def _step(self) -> dict:
        cfg, t0 = self.cfg, time.perf_counter()
        memory.reset_peak(self.device)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        micro: list[dict] = []
        for m in range(cfg.grad_accum):
            # Micro-batch `index` of the whole run; process r of W takes slice W·index + r of the stream,
            # so W processes together see what one process with W times the batch_size would see.
            index = (self.step_count * cfg.grad_accum + m) * self.group.world + self.group.rank
            loss, metrics = self.objective.loss(self.model, self.tokenizer, self.batch(index),
                                                seed=cfg.seed * 1_000_003 + index)
            tb = memory.clock(self.device)
            (loss / cfg.grad_accum).backward()
            micro.append({"loss": loss.item(), **metrics, "backward_s": memory.clock(self.device) - tb})
        to = memory.clock(self.device)
        # Checked after the averaging, so that every process sees the same failure and none waits forever.
        self.group.average_gradients_(self.params)
        metrics = self.group.average_metrics(_average(micro))
        if not math.isfinite(metrics["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"Step {self.step_count}: the loss is {metrics['loss']}. Nothing was updated and "
                                     "saved checkpoints are intact; try a lower lr or check the data.")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"Step {self.step_count}: the gradient norm is {grad_norm.item()}. Nothing was "
                                     "updated and saved checkpoints are intact; try a lower lr or max_grad_norm.")
        self.optimizer.step()
        self.scheduler.step()
        self.objective.after_optimizer_step(self.model)
        self.step_count += 1
        record = {"step": self.step_count, **metrics, "grad_norm": grad_norm.item(),
                  "lr": self.scheduler.get_last_lr()[0], "optim_s": memory.clock(self.device) - to,
                  "step_s": time.perf_counter() - t0, **self.group.average_metrics(memory.peak(self.device))}
        self.history.append(record)
        self.collapse(self.history)
        for callback in self.callbacks:  # evaluations, mostly: each one's time goes to the run report
            with self.evaluations(getattr(callback, "name", getattr(callback, "__name__", type(callback).__name__))):
                callback(record)
        if self.tracker:
            self.tracker.log(record)
        return record

    def train(self, steps: int | None = None) -> list[dict]:
        """Run `steps` optimizer steps (default: up to cfg.steps) with a progress bar."""
        steps = self.cfg.steps - self.step_count if steps is None else steps
        t0, main = time.perf_counter(), self.group.is_main
        if self.cfg.preflight and self.check and self.preflight is None and main:  # one warns enough
            self.preflight = self.check(self.model, self.tokenizer, self.examples, self.objective)
        bar = tqdm(range(steps), desc=self.objective.name, disable=not main)
        try:
            for _ in bar:
                record = self.step()
                bar.set_postfix({**{k: f"{record[k]:.3f}" for k in ("loss", "kl") if k in record},
                                 "mem": memory.short(record)})
        finally:
            if self.tracker:
                self.tracker.finish()  # a later train() or step() starts a new tracker run under the same name
                self.tracker = None
            self.wall_s += time.perf_counter() - t0
        if self.cfg.report and main:
            try:
                page = report.save(self, self.answers_before, self.wall_s)
                tqdm.write(f"Run report: {page}")
            except Exception as err:  # a report is never worth the run: the adapter is saved after this
                warnings.warn(f"The run report could not be written to {self.run_dir}: {type(err).__name__}: {err}",
                              stacklevel=2)
        return self.history[-steps:] if steps else []

    def save_checkpoint(self, directory: str | Path | None = None) -> Path:
        """An atomic checkpoint of everything resume() needs (see checkpoint.py)."""
        directory = directory or self.cfg.checkpoint_dir
        if directory is None:
            raise ValueError("No checkpoint directory: pass one or set TrainConfig.checkpoint_dir.")
        if self.group.is_main:  # the processes hold identical adapters and optimizer states
            checkpoint.save(directory, self.step_count, self.model, self.optimizer, self.scheduler,
                            self.history, self.cfg.keep_checkpoints)
        self.group.barrier()
        return checkpoint.latest(directory)

    def resume(self, path: str | Path | None = None) -> int:
        """Continue from a checkpoint folder, or from the newest one in checkpoint_dir. Returns the step."""
        if path is None:
            if self.cfg.checkpoint_dir is None:
                raise ValueError("Nothing to resume from: pass a checkpoint path or set TrainConfig.checkpoint_dir.")
            path = checkpoint.latest(self.cfg.checkpoint_dir)
            if path is None:
                return self.step_count  # a fresh run
        self.step_count, self.history = checkpoint.load(path, self.model, self.optimizer, self.scheduler)
        return self.step_count

    def save_adapter(self, path: str | Path) -> Path:
        """The student adapter in peft's format (safetensors); reload with PeftModel.from_pretrained."""
        if self.group.is_main:
            self.model.save_pretrained(str(path), selected_adapters=[STUDENT], safe_serialization=True)
        self.group.barrier()
        return Path(path)


class Timer:
    """Seconds by name, added up: `with timer("drift"): …` or timer.add(name, seconds)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)


def runs_root() -> Path:
    """Where runs go: $SDFT_LAB_RUNS if set, else runs/ (the repository's, seen from notebooks/)."""
    cwd = Path.cwd()
    return Path(os.environ.get("SDFT_LAB_RUNS", cwd.parent / "runs" if cwd.name == "notebooks" else cwd / "runs"))


def new_run_dir(name: str) -> Path:
    """runs_root() / <name>-<date>-<time>, with a suffix if that folder exists already."""
    root = runs_root()
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = root / stem, 1
    while path.exists() or path in _TAKEN:
        n += 1
        path = root / f"{stem}-{n}"
    _TAKEN.add(path)  # two trainers made in the same second get two folders
    return path


_TAKEN: set[Path] = set()


def _average(records: list[dict]) -> dict:
    """Mean of numeric metrics over micro-batches; other values come from the first one."""
    out = {}
    for key, value in records[0].items():
        if isinstance(value, (int, float)):
            out[key] = sum(r[key] for r in records) / len(records)
        else:
            out[key] = value
    return out

"""One run, one config: what `sdft-lab train --config run.yaml`, the demo, the experiments and a notebook build.

    cfg = RunConfig.from_file("run.yaml")        # YAML or JSON; the same file the CLI takes
    cfg = RunConfig(method="sft", train=TrainConfig(steps=20, lr=5e-4))

A file holds any of the top-level fields (method, model, quantization, data, out) and the sections train
(TrainConfig), sdft (SDFTConfig, with divergence and prompts inside), sft (SFTConfig) and student
(StudentConfig). Every value goes through its dataclass, so a bad one fails with the dataclass's message
and the place it came from (file: section.key).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .data import Example, load_dataset
from .models import StudentConfig
from .sdft import SDFT, SDFTConfig
from .sft import SFT, SFTConfig
from .trainer import TrainConfig

# Run files (quickstart.yaml, …): configs/ beside the package in a checkout, inside it (sdft_lab/configs) in a wheel.
_PACKAGE = Path(__file__).resolve().parent
CONFIGS = _PACKAGE / "configs" if (_PACKAGE / "configs").is_dir() else _PACKAGE.parent / "configs"

SECTIONS = {"train": TrainConfig, "sdft": SDFTConfig, "sft": SFTConfig, "student": StudentConfig}
METHODS = ("sdft", "sft")
QUANTIZATIONS = ("auto", "nf4", "none")


class ConfigError(ValueError):
    """A config that cannot be built; the message names the file or section and the key."""


@dataclass
class RunConfig:
    method: str = "sdft"  # "sdft" or "sft"
    model: str = "bundled"  # "bundled", a preset (presets.PRESETS), a local folder or a hub id in the local cache
    quantization: str = "auto"  # "auto" = NF4 on CUDA, fp32 on the CPU; "nf4"; "none"
    data: str = "demo"  # a bundled set (demo, toolcall, science, …) or a .jsonl / .json / .csv / .parquet file
    data_format: str | None = None  # "sdft", "trl", "chat", "prompt_completion"; None detects it from the columns
    columns: dict[str, str] = field(default_factory=dict)  # Example field → column, e.g. {"question": "instruction"}
    out: str = "runs/cli"  # adapter/, metrics.jsonl, config.json, checkpoints/
    train: TrainConfig = field(default_factory=TrainConfig)
    sdft: SDFTConfig = field(default_factory=SDFTConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    student: StudentConfig = field(default_factory=StudentConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")

    def examples(self) -> list[Example]:
        return load_dataset(self.data, self.data_format, **self.columns)

    def objective(self) -> SDFT | SFT:
        return SDFT(self.sdft) if self.method == "sdft" else SFT(self.sft)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> RunConfig:
        """Built and validated; train.checkpoint_dir defaults to OUT/checkpoints (where --resume looks)."""
        values = dict(values)
        if isinstance(values.get("train", {}), dict):
            values["train"] = {"checkpoint_dir": str(Path(values.get("out", cls.out)) / "checkpoints"),
                               **values.get("train", {})}
        return build(cls, values, where)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> RunConfig:
        """A YAML (.yaml / .yml) or JSON file; overrides replace its top-level values or whole sections."""
        return cls.from_dict({**read_file(Path(path)), **overrides}, str(path))


def read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file.")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: reading YAML needs PyYAML (`pip install pyyaml`); "
                              "or write the config as JSON.") from None
        config = yaml.safe_load(text) or {}
    else:
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg}). Use .yaml / .yml for YAML.") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values.")
    return config


def build(cls, values: dict, where: str):
    """A config dataclass from a dict; nested dataclass fields (sections, divergence, prompts) from nested dicts."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {values!r}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    if set(values) - known:
        raise ConfigError(f"{where}: unknown key(s) {sorted(set(values) - known)}; {cls.__name__} has {sorted(known)}.")
    kwargs = {}
    for key, value in values.items():
        kind, inner = hints[key], f"{where}: {key}" if cls is RunConfig else f"{where}.{key}"
        nested = dataclasses.is_dataclass(kind) and not isinstance(value, kind)  # a dict (or a mistake) to build
        kwargs[key] = build(kind, value, inner) if nested else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None

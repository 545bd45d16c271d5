"""The Example record and its jsonl format.

One line per example: {"id", "question", "demonstration", "answer"?, "references"?, "metadata"?}.
`question` is what the student sees; `demonstration` is the expert answer the
teacher sees in its context; `answer` is an optional short answer for scoring;
`references` are other expert answers to the same question, which the teacher
never sees (the pre-flight check scores them: copying the demonstration proves nothing).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

# An installed wheel carries the bundled data inside the package; a checkout keeps them beside it.
_PACKAGE = Path(__file__).resolve().parent
DATA_DIR = _PACKAGE / "data" if (_PACKAGE / "data").is_dir() else _PACKAGE.parent / "data"
BUNDLED = {
    "demo": DATA_DIR / "demo" / "train.jsonl",
    "demo-heldout": DATA_DIR / "demo" / "heldout.jsonl",
    "toolcall": DATA_DIR / "skills" / "toolcall.jsonl",
    "science": DATA_DIR / "skills" / "science.jsonl",
}
_FIELDS = {"id": str, "question": str, "demonstration": str, "answer": (str, type(None)), "references": list,
           "metadata": dict}
_REQUIRED = ("question", "demonstration")


@dataclass
class Example:
    question: str
    demonstration: str
    id: str = ""
    answer: str | None = None
    references: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


class DataError(ValueError):
    """A problem in a data file, with the file and line it comes from."""


def _parse(record: object, where: str) -> Example:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    unknown = set(record) - set(_FIELDS)
    if unknown:
        raise DataError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_FIELDS)}.")
    for name, kind in _FIELDS.items():
        if name in record and not isinstance(record[name], kind):
            raise DataError(f"{where}: field {name!r} must be {_type_name(kind)}, got {type(record[name]).__name__}.")
    if not all(isinstance(r, str) and r.strip() for r in record.get("references", [])):
        raise DataError(f"{where}: field 'references' must be a list of non-empty strings.")
    for name in _REQUIRED:
        if not str(record.get(name, "")).strip():
            raise DataError(f"{where}: field {name!r} is missing or empty; every example needs a {name}.")
    return Example(**record)


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def load_jsonl(path: str | os.PathLike) -> list[Example]:
    """Read and validate a jsonl file; errors name the file and line. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. Bundled sets: {sorted(BUNDLED)}.")
    examples, seen = [], {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno}).") from None
            ex = _parse(record, where)
            ex.id = ex.id or f"{path.stem}-{lineno}"
            if ex.id in seen:
                raise DataError(f"{where}: duplicate id {ex.id!r} (first seen on line {seen[ex.id]}).")
            seen[ex.id] = lineno
            examples.append(ex)
    if not examples:
        raise DataError(f"{path}: the file holds no examples.")
    return examples


def save_jsonl(examples: list[Example], path: str | os.PathLike) -> None:
    """Write atomically: a temporary file renamed into place, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_dataset(name_or_path: str) -> list[Example]:
    """A bundled set by name (see BUNDLED) or a jsonl path."""
    return load_jsonl(BUNDLED.get(name_or_path, name_or_path))


def skill_split(name: str, split: str) -> list[Example]:
    """The examples of a bundled skill set (toolcall, science) whose metadata split is `split` (train / eval)."""
    return [ex for ex in load_dataset(name) if ex.metadata.get("split") == split]

